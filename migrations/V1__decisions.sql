-- The decision log: one row per scored (or rejected) application, partitioned by month of
-- decided_at so that retention drops whole partitions. Applied by refinery; every statement is
-- also safe to re-run by hand.

CREATE TABLE IF NOT EXISTS decisions (
    decision_id          uuid             NOT NULL,  -- UUID v7: its timestamp is decided_at
    request_id           text             NOT NULL,
    application_id       text             NOT NULL DEFAULT '',
    rpc                  text             NOT NULL CHECK (rpc IN ('unary', 'stream')),
    stream_id            uuid,                       -- NULL for unary calls
    stream_position      bigint,                     -- zero-based position in the stream
    received_at          timestamptz      NOT NULL,
    decided_at           timestamptz      NOT NULL,
    peer                 text,                       -- caller address
    client_id            text,                       -- authenticated client (later)
    model_version        text             NOT NULL,
    model_sha256         text             NOT NULL,
    -- The 17 inputs exactly as received. All nullable: a rejected request may lack any of them.
    age                  integer,
    income               double precision,
    employment_length    double precision,
    credit_score         integer,
    num_credit_lines     integer,
    credit_utilization   double precision,
    debt_to_income       double precision,
    total_debt           double precision,
    savings              double precision,
    loan_amount          double precision,
    loan_term            integer,
    num_late_payments    integer,
    num_bankruptcies     integer,
    inquiries_last_6m    integer,
    employment_status    text,
    home_ownership       text,
    loan_purpose         text,
    -- Derived features (NULL when the request was rejected before preprocessing).
    monthly_payment      double precision,
    payment_to_income    double precision,
    -- Model output (NULL for rejected requests).
    margin               double precision,
    probability_default  double precision,
    risk_score           double precision,
    risk_level           text,
    prediction           smallint,
    latency_us           bigint           NOT NULL,
    outcome              text             NOT NULL CHECK (outcome IN ('ok', 'invalid')),
    violations           jsonb,                      -- [{field, description}] when invalid
    CONSTRAINT decisions_outcome_result CHECK ((outcome = 'ok') = (prediction IS NOT NULL)),
    PRIMARY KEY (decision_id, decided_at)
) PARTITION BY RANGE (decided_at);

CREATE INDEX IF NOT EXISTS decisions_application_id_idx ON decisions (application_id);
CREATE INDEX IF NOT EXISTS decisions_decided_at_idx ON decisions (decided_at);

-- Rows whose month has no partition land here, so an insert is never rejected.
CREATE TABLE IF NOT EXISTS decisions_default PARTITION OF decisions DEFAULT;

-- Creates the monthly partitions from the current month to `months_ahead` months ahead.
-- If the DEFAULT partition already holds rows of a month being created, they are moved into
-- the new partition in the same transaction. Returns the number of partitions created.
CREATE OR REPLACE FUNCTION cra_ensure_partitions(months_ahead integer DEFAULT 2)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    first_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    lo date;
    hi date;
    part text;
    created integer := 0;
BEGIN
    FOR i IN 0..greatest(months_ahead, 0) LOOP
        lo := (first_month + make_interval(months => i))::date;
        hi := (lo + interval '1 month')::date;
        part := format('decisions_y%sm%s', to_char(lo, 'YYYY'), to_char(lo, 'MM'));
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        IF EXISTS (SELECT 1 FROM decisions_default
                   WHERE decided_at >= lo::timestamp AT TIME ZONE 'UTC'
                     AND decided_at < hi::timestamp AT TIME ZONE 'UTC') THEN
            EXECUTE format('CREATE TABLE %I (LIKE decisions INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
            EXECUTE format(
                'WITH moved AS (DELETE FROM decisions_default WHERE decided_at >= %L AND decided_at < %L RETURNING *) '
                'INSERT INTO %I SELECT * FROM moved',
                lo::timestamp AT TIME ZONE 'UTC', hi::timestamp AT TIME ZONE 'UTC', part);
            EXECUTE format('ALTER TABLE decisions ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                part, lo::timestamp AT TIME ZONE 'UTC', hi::timestamp AT TIME ZONE 'UTC');
        ELSE
            EXECUTE format('CREATE TABLE %I PARTITION OF decisions FOR VALUES FROM (%L) TO (%L)',
                part, lo::timestamp AT TIME ZONE 'UTC', hi::timestamp AT TIME ZONE 'UTC');
        END IF;
        created := created + 1;
    END LOOP;
    RETURN created;
END;
$$;

-- Retention: drops the monthly partitions that end on or before `cutoff` (e.g. now() - 25 months).
-- Returns the number of partitions dropped.
CREATE OR REPLACE FUNCTION cra_drop_partitions_before(cutoff timestamptz)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    r record;
    dropped integer := 0;
BEGIN
    FOR r IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'decisions'::regclass
          AND c.relname ~ '^decisions_y[0-9]{4}m[0-9]{2}$'
    LOOP
        IF (to_date(substr(r.relname, 12, 4) || substr(r.relname, 17, 2), 'YYYYMM')
            + interval '1 month') AT TIME ZONE 'UTC' <= cutoff THEN
            EXECUTE format('DROP TABLE %I', r.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END;
$$;
