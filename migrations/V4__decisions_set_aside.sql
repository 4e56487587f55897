-- Decisions PostgreSQL refused to store (a data error: a violated constraint, a value too large
-- for an index, a malformed row). The writer finds them by splitting the refused batch in halves
-- down to single rows, stores every other row of the batch in `decisions`, and keeps each refused
-- row here, as the raw binary COPY row it tried to write, so that nothing is lost and an
-- operator can repair and re-insert it. Applied by refinery; safe to re-run by hand.

CREATE TABLE IF NOT EXISTS decisions_set_aside (
    decision_id   uuid,                                -- NULL when the row is too malformed to say
    set_aside_at  timestamptz  NOT NULL DEFAULT now(),
    sqlstate      text         NOT NULL,               -- e.g. 54000, 23514, 22P03
    error         text         NOT NULL,               -- PostgreSQL's message (and detail)
    row_copy      bytea        NOT NULL                -- one row of PostgreSQL's binary COPY format
);

-- A row set aside again (a replay after a crash) is stored once.
CREATE UNIQUE INDEX IF NOT EXISTS decisions_set_aside_row_idx ON decisions_set_aside (md5(row_copy));
CREATE INDEX IF NOT EXISTS decisions_set_aside_decision_id_idx ON decisions_set_aside (decision_id);
