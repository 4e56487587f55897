-- The W3C trace id of the call that made each decision (32 lowercase hex digits), so that a
-- trace in the tracing backend leads to its decisions and a decision to its trace. NULL when
-- the call had no trace (no traceparent from the caller and no OTLP export). Applied by
-- refinery; safe to re-run.

ALTER TABLE decisions ADD COLUMN IF NOT EXISTS trace_id text;
