-- Upkeep of the DEFAULT partition.
--
-- A row whose month has no partition lands in decisions_default, so that an insert is never
-- rejected (a clock far off, the server down over a month boundary, partitions dropped by hand).
-- V1's cra_ensure_partitions moved such rows out only for the months it was creating (this month
-- and the next ones), so the rows of a past month stayed in DEFAULT for ever, and retention, which
-- drops whole monthly partitions, never removed them. From this version on:
--   * cra_move_default_rows() moves every row of DEFAULT into the partition of its month,
--     creating that partition;
--   * cra_ensure_partitions() (start-up and hourly upkeep of the server) calls it after creating
--     the partitions ahead, so DEFAULT is emptied at least every hour;
--   * cra_drop_partitions_before() deletes the rows of DEFAULT under the same rule as the
--     partitions it drops (a month that ends on or before the cut-off), then moves the rest out.
--
-- Locks: each function first takes SHARE UPDATE EXCLUSIVE on `decisions` (so two of them never
-- run at once), and only then touches `decisions_default`: the parent before the partition, as an
-- insert does, so they cannot deadlock with the writers or with each other. While rows are moved,
-- inserts that would land in DEFAULT wait (SHARE ROW EXCLUSIVE on it); inserts into the monthly
-- partitions and reads go on.

-- Moves the rows of the DEFAULT partition into the partitions of their months (UTC), creating
-- each missing partition in the same transaction: PostgreSQL refuses to create a partition whose
-- range holds rows of DEFAULT, so the rows go into a new standalone table which is then attached
-- as that month's partition. Rows outside the years 1 to 9999 (or ±infinity) cannot be given a
-- partition name and stay in DEFAULT; retention deletes the old ones. Returns the number of
-- partitions created.
CREATE OR REPLACE FUNCTION cra_move_default_rows()
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    first_ok CONSTANT timestamptz := '0001-01-01 00:00:00+00';
    end_ok CONSTANT timestamptz := '10000-01-01 00:00:00+00';
    m date;
    lo timestamptz;
    hi timestamptz;
    part text;
    created integer := 0;
BEGIN
    -- The parent first (ATTACH takes this lock on it anyway), then DEFAULT: no insert may land
    -- in DEFAULT between the move of a month's rows and the attachment of their partition.
    LOCK TABLE decisions IN SHARE UPDATE EXCLUSIVE MODE;
    IF NOT EXISTS (SELECT 1 FROM decisions_default
                   WHERE decided_at >= first_ok AND decided_at < end_ok) THEN
        RETURN 0;
    END IF;
    LOCK TABLE decisions_default IN SHARE ROW EXCLUSIVE MODE;
    FOR m IN
        SELECT DISTINCT date_trunc('month', decided_at AT TIME ZONE 'UTC')::date
        FROM decisions_default
        WHERE decided_at >= first_ok AND decided_at < end_ok
        ORDER BY 1
    LOOP
        lo := m::timestamp AT TIME ZONE 'UTC';
        hi := (m + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        part := format('decisions_y%sm%s', to_char(m, 'YYYY'), to_char(m, 'MM'));
        IF to_regclass(part) IS NOT NULL THEN
            -- A table of that name that is not the month's partition (an attached partition
            -- would have received these rows): detached by hand, e.g. for archiving. Leave both.
            RAISE WARNING 'cra_move_default_rows: % exists but is not the partition of its month; '
                          'its rows in decisions_default stay there', part;
            CONTINUE;
        END IF;
        EXECUTE format('CREATE TABLE %I (LIKE decisions INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       part);
        EXECUTE format(
            'WITH moved AS (DELETE FROM decisions_default WHERE decided_at >= %L AND decided_at < %L '
            'RETURNING *) INSERT INTO %I SELECT * FROM moved',
            lo, hi, part);
        EXECUTE format('ALTER TABLE decisions ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       part, lo, hi);
        created := created + 1;
    END LOOP;
    RETURN created;
END;
$$;

-- Creates the monthly partitions from the current month to `months_ahead` months ahead (moving
-- into each new one the rows of its month that DEFAULT holds), then moves every other row of
-- DEFAULT into the partition of its month (cra_move_default_rows). Returns the number of
-- partitions created.
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
    LOCK TABLE decisions IN SHARE UPDATE EXCLUSIVE MODE;
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
    RETURN created + cra_move_default_rows();
END;
$$;

-- Retention: drops the monthly partitions that end on or before `cutoff` (e.g. now() - 25
-- months), deletes the rows of DEFAULT whose month ends on or before `cutoff` (the same rule),
-- and moves the remaining rows of DEFAULT into their monthly partitions, so that no old row
-- stays behind. Returns the number of partitions dropped; the number of DEFAULT rows deleted is
-- reported as a NOTICE.
CREATE OR REPLACE FUNCTION cra_drop_partitions_before(cutoff timestamptz)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    r record;
    dropped integer := 0;
    deleted bigint;
BEGIN
    LOCK TABLE decisions IN SHARE UPDATE EXCLUSIVE MODE;
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
    -- A row's month ends on or before the cut-off exactly when the row is older than the start
    -- of the cut-off's month.
    DELETE FROM decisions_default
    WHERE decided_at < date_trunc('month', cutoff AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    GET DIAGNOSTICS deleted = ROW_COUNT;
    IF deleted > 0 THEN
        RAISE NOTICE 'cra_drop_partitions_before: deleted % rows of decisions_default', deleted;
    END IF;
    PERFORM cra_move_default_rows();
    RETURN dropped;
END;
$$;
