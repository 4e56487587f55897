//! Partition upkeep of the decision log against the real PostgreSQL (see `tests/common/pg.rs`):
//! rows that land in the DEFAULT partition are moved into their monthly partitions by the
//! server's upkeep (`db::ensure_partitions`), and retention removes the old ones.
mod common;

use std::time::Duration;

use cra::decision_log::db;
use tokio_postgres::Client;

use common::pg::TestDb;

/// A database with the decision log schema, and a client to it.
async fn migrated() -> (TestDb, Client) {
    let db = TestDb::new("cra_partitions_test");
    let mut c = db.client().await; // creates the database
    db::migrate(&mut c).await.expect("migrations apply");
    (db, c)
}

/// Inserts `n` rejected decisions decided at `now() + offset` (a PostgreSQL interval).
async fn insert_at(c: &Client, n: i32, offset: &str) {
    c.execute(
        "INSERT INTO decisions (decision_id, request_id, rpc, received_at, decided_at, \
         model_version, model_sha256, latency_us, outcome) \
         SELECT gen_random_uuid(), 'r' || g, 'unary', t, t, 'v', 's', 1, 'invalid' \
         FROM generate_series(1, $1) g, (SELECT now() + $2::text::interval AS t) x",
        &[&n, &offset],
    )
    .await
    .unwrap();
}

/// Rows per partition, by partition name.
async fn rows_by_partition(c: &Client) -> Vec<(String, i64)> {
    c.query(
        "SELECT tableoid::regclass::text, count(*) FROM decisions GROUP BY 1 ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// The name of the monthly partition of `now() + offset`.
async fn partition_of(c: &Client, offset: &str) -> String {
    c.query_one(
        "SELECT to_char((now() + $1::text::interval) AT TIME ZONE 'UTC', \
         '\"decisions_y\"YYYY\"m\"MM')",
        &[&offset],
    )
    .await
    .unwrap()
    .get(0)
}

async fn default_rows(c: &Client) -> i64 {
    c.query_one("SELECT count(*) FROM decisions_default", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn upkeep_moves_rows_of_a_past_month_out_of_the_default_partition() {
    let (_db, c) = migrated().await;
    // Months with no partition: their rows land in DEFAULT (an insert is never rejected).
    insert_at(&c, 40, "-5 months").await;
    insert_at(&c, 7, "-14 months").await;
    insert_at(&c, 3, "+15 months").await;
    assert_eq!(
        default_rows(&c).await,
        50,
        "{:?}",
        rows_by_partition(&c).await
    );

    // The server's start-up and hourly upkeep.
    let created = db::ensure_partitions(&c).await.unwrap();
    assert_eq!(created, 3, "one partition per month that DEFAULT held");
    assert_eq!(
        default_rows(&c).await,
        0,
        "{:?}",
        rows_by_partition(&c).await
    );
    let mut expected = vec![
        (partition_of(&c, "-5 months").await, 40),
        (partition_of(&c, "-14 months").await, 7),
        (partition_of(&c, "+15 months").await, 3),
    ];
    expected.sort();
    assert_eq!(rows_by_partition(&c).await, expected);
    // They are real partitions of `decisions`, with its primary key.
    let (attached, with_pkey): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT 1 FROM pg_index x \
                   WHERE x.indrelid = i.inhrelid AND x.indisprimary)) \
                 FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid \
                 WHERE i.inhparent = 'decisions'::regclass AND p.relname = ANY($1)",
                &[&expected.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>()],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((attached, with_pkey), (3, 3));
    // A second upkeep has nothing to do.
    assert_eq!(db::ensure_partitions(&c).await.unwrap(), 0);
    // New rows of those months now go straight to their partitions.
    insert_at(&c, 1, "-5 months").await;
    assert_eq!(default_rows(&c).await, 0);
}

#[tokio::test]
async fn retention_removes_old_rows_of_the_default_partition() {
    let (_db, c) = migrated().await;
    insert_at(&c, 11, "-30 months").await;
    insert_at(&c, 5, "-26 months").await;
    insert_at(&c, 4, "-3 months").await;
    assert_eq!(default_rows(&c).await, 20);

    let dropped: i32 = c
        .query_one(
            "SELECT cra_drop_partitions_before(now() - interval '25 months')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dropped, 0, "no monthly partition was old enough");
    let old: i64 = c
        .query_one(
            "SELECT count(*) FROM decisions WHERE decided_at < now() - interval '25 months'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(old, 0, "{:?}", rows_by_partition(&c).await);
    // The recent rows are kept, in their own month's partition: nothing is left in DEFAULT.
    assert_eq!(
        rows_by_partition(&c).await,
        [(partition_of(&c, "-3 months").await, 4)]
    );
}

#[tokio::test]
async fn retention_drops_a_partition_made_of_moved_rows() {
    let (_db, c) = migrated().await;
    insert_at(&c, 6, "-27 months").await;
    assert_eq!(db::ensure_partitions(&c).await.unwrap(), 1);
    let dropped: i32 = c
        .query_one(
            "SELECT cra_drop_partitions_before(now() - interval '25 months')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dropped, 1);
    assert_eq!(rows_by_partition(&c).await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_while_the_upkeep_moves_rows_are_all_kept() {
    let (db, c) = migrated().await;
    insert_at(&c, 20_000, "-4 months").await;
    // Writers keep inserting, into this month's partition and into DEFAULT, during the move.
    let writers: Vec<_> = (0..2)
        .map(|i| {
            let url = db.url();
            tokio::spawn(async move {
                let c = db::connect(&url, Duration::from_secs(5)).await.unwrap();
                let offset = if i == 0 { "0 days" } else { "-9 months" };
                for _ in 0..50 {
                    insert_at(&c, 10, offset).await;
                }
            })
        })
        .collect();
    db::ensure_partitions(&c).await.unwrap();
    for w in writers {
        w.await.unwrap();
    }
    db::ensure_partitions(&c).await.unwrap();
    let total: i64 = c
        .query_one("SELECT count(*) FROM decisions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 20_000 + 2 * 50 * 10);
    assert_eq!(
        default_rows(&c).await,
        0,
        "{:?}",
        rows_by_partition(&c).await
    );
}
