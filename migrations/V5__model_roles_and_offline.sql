-- The model registry (champion, challengers, shadows) and offline scoring.
--
-- model_role: which role the deciding model had: 'champion' or 'challenger' for a live decision
--             (the answer the client got), 'shadow' for a shadow decision (never answered).
-- shadow_of:  for a shadow decision, the decision_id of the live decision it shadows (same
--             application, same call). NULL for live decisions.
-- rpc:        'offline' for rows scored by `cra score --database-url` (stream_id is the run,
--             stream_position the row number); 'rest' and 'v2' are reserved for the HTTP APIs.
-- Applied by refinery; every statement is safe to re-run by hand.

ALTER TABLE decisions ADD COLUMN IF NOT EXISTS model_role text NOT NULL DEFAULT 'champion';
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS shadow_of uuid;

ALTER TABLE decisions DROP CONSTRAINT IF EXISTS decisions_model_role_check;
ALTER TABLE decisions ADD CONSTRAINT decisions_model_role_check
    CHECK (model_role IN ('champion', 'challenger', 'shadow'));
ALTER TABLE decisions DROP CONSTRAINT IF EXISTS decisions_shadow_link;
ALTER TABLE decisions ADD CONSTRAINT decisions_shadow_link
    CHECK (model_role = 'shadow' OR shadow_of IS NULL);

ALTER TABLE decisions DROP CONSTRAINT IF EXISTS decisions_rpc_check;
ALTER TABLE decisions ADD CONSTRAINT decisions_rpc_check
    CHECK (rpc IN ('unary', 'stream', 'offline', 'rest', 'v2'));

-- Finding the shadows of a live decision, and comparing models over time.
CREATE INDEX IF NOT EXISTS decisions_shadow_of_idx ON decisions (shadow_of) WHERE shadow_of IS NOT NULL;
CREATE INDEX IF NOT EXISTS decisions_model_version_idx ON decisions (model_version, decided_at);
