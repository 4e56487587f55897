-- The time index as BRIN instead of a B-tree: decided_at grows with insertion order (UUID v7
-- decisions are written as they are made), so a BRIN index answers time-range queries over
-- months of rows while costing almost nothing per insert. This keeps the decision log's write
-- cost, which shares the machine with scoring, down to the primary key and application_id.
DROP INDEX IF EXISTS decisions_decided_at_idx;
CREATE INDEX IF NOT EXISTS decisions_decided_at_brin ON decisions USING brin (decided_at);
