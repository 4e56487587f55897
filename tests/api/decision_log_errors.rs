//! The decision log when PostgreSQL refuses rows or cannot write for a while, against the real
//! PostgreSQL: a row it refuses is set aside alone, an over-long id is recorded bounded, a
//! transient failure is retried until every decision is stored, and no spool segment is ever
//! moved aside because of its rows.
use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use cra::{
    bench::random_applications,
    decision_log::{copy_row as tuple, DatabaseUrl, DecisionLog, DecisionLogConfig},
    grpc::pb::{self, batch_result::Result as Item, ScoreBatchRequest, ScoreRequest},
};
use uuid::Uuid;

use crate::common::pg::TestDb;
use crate::helpers::{config, spawn_app_with, TestApp};

/// The in-process server with a decision log writing to `url`; batches are cut every
/// `flush`, so that what a test sends together lands in one batch.
async fn spawn_audited(url: DatabaseUrl, spool: &Path, flush: Duration) -> (TestApp, DecisionLog) {
    let mut cfg = DecisionLogConfig::new(url, spool.to_owned());
    cfg.flush_interval = flush;
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.write_timeout = Duration::from_secs(5);
    cfg.retry_interval = Duration::from_millis(100);
    cfg.retry_max_interval = Duration::from_millis(800);
    let audit = DecisionLog::start(cfg).await.expect("decision log starts");
    let recorder = audit.clone();
    let app = spawn_app_with(config(), move |b| b.decision_log(recorder)).await;
    app.wait_ready().await;
    (app, audit)
}

/// `n` characters that PostgreSQL cannot compress (so an index entry holds all of them).
fn incompressible(n: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// Segments the spool moved aside (`quarantine-*`), which replay no longer looks at.
fn quarantined(spool: &Path) -> Vec<String> {
    std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("quarantine"))
        .collect()
}

/// One stream message of `apps`; the decision ids of the scored ones, and the items refused.
async fn stream_once(
    app: &mut TestApp,
    apps: Vec<pb::CreditApplication>,
) -> (Vec<Uuid>, Vec<pb::BatchResult>) {
    let mut inbound = app
        .client
        .score_batch(tokio_stream::iter(vec![ScoreBatchRequest {
            applications: apps,
            explain: false,
        }]))
        .await
        .unwrap()
        .into_inner();
    let (mut ids, mut refused) = (Vec::new(), Vec::new());
    while let Some(m) = inbound.message().await.unwrap() {
        for r in m.results {
            match &r.result {
                Some(Item::Score(s)) => ids.push(s.decision_id.parse().unwrap()),
                _ => refused.push(r),
            }
        }
    }
    (ids, refused)
}

/// Streams the next `n` applications, all of which must be scored; their decision ids.
async fn send(
    app: &mut TestApp,
    apps: &mut impl Iterator<Item = pb::CreditApplication>,
    n: usize,
) -> Vec<Uuid> {
    let (got, refused) = stream_once(app, apps.take(n).collect()).await;
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(got.len(), n, "scoring goes on");
    got
}

async fn set_aside_rows(db: &TestDb) -> Vec<(Option<Uuid>, String, Vec<u8>)> {
    db.client()
        .await
        .query(
            "SELECT decision_id, sqlstate, row_copy FROM decisions_set_aside",
            &[],
        )
        .await
        .expect("decisions_set_aside exists")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_application_id_is_recorded_bounded_and_blocks_no_other_decision() {
    let db = TestDb::create("cra_api_test").await;
    let spool = tempfile::tempdir().unwrap();
    let (mut app, audit) = spawn_audited(db.url(), spool.path(), Duration::from_millis(400)).await;

    // ~3 KB: over PostgreSQL's 2,704-byte limit for an entry of decisions_application_id_idx.
    let long_id = incompressible(3000, 42);
    let mut apps = random_applications(60, 7);
    for (i, a) in apps.iter_mut().enumerate() {
        a.application_id = format!("ok-{i}");
    }
    apps[30].application_id = long_id.clone();
    // A unary call with the same over-long id, in the same batch window.
    let mut unary = apps[0].clone();
    unary.application_id = format!("{long_id}-unary");
    let mut client = app.client.clone();
    let call = tokio::spawn(async move {
        client
            .score(ScoreRequest {
                application: Some(unary),
                explain: false,
            })
            .await
    });
    let (ids, refused) = stream_once(&mut app, apps).await;
    let status = call.await.unwrap().expect_err("an over-long id is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(ids.len(), 59, "every other application is scored");
    assert_eq!(refused.len(), 1);
    match &refused[0].result {
        Some(Item::Error(e)) => assert!(
            e.field_violations
                .iter()
                .any(|v| v.field == "application_id"),
            "{e:?}"
        ),
        other => panic!("refused item: {other:?}"),
    }

    db.assert_each_once(&ids, Duration::from_secs(20)).await;
    let c = db.client().await;
    for id in [long_id.clone(), format!("{long_id}-unary")] {
        let bounded = tuple::bounded_id(&id).into_owned();
        assert!(bounded.len() < 256, "{}", bounded.len());
        let deadline = Instant::now() + Duration::from_secs(10);
        let rows = loop {
            let rows = c
                .query(
                    "SELECT outcome, violations FROM decisions WHERE application_id = $1",
                    &[&bounded],
                )
                .await
                .unwrap();
            if !rows.is_empty() || Instant::now() > deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(rows.len(), 1, "the refusal is recorded once, bounded");
        assert_eq!(rows[0].get::<_, String>(0), "invalid");
        let v: serde_json::Value = rows[0].get(1);
        assert!(
            v.to_string().contains("application_id"),
            "the violation is kept: {v}"
        );
    }
    let TestApp { handle, .. } = app;
    handle.shutdown().await.unwrap();
    audit.shutdown().await;
    let (rows, distinct) = db.counts().await;
    assert_eq!(
        (rows, distinct),
        (61, 61),
        "59 scored + 2 refused, each once"
    );
    assert!(
        quarantined(spool.path()).is_empty(),
        "{:?}",
        quarantined(spool.path())
    );
    assert_eq!(audit.stats().set_aside, 0);
    assert!(set_aside_rows(&db).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_postgres_refuses_is_set_aside_alone_and_the_rest_of_its_batch_is_stored() {
    let db = TestDb::create("cra_api_test").await;
    let spool = tempfile::tempdir().unwrap();
    let (mut app, audit) = spawn_audited(db.url(), spool.path(), Duration::from_millis(300)).await;
    // A rule of this test's database that one row of the batch breaks (SQLSTATE 23514).
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE decisions ADD CONSTRAINT test_no_poison \
             CHECK (application_id <> 'poison')",
        )
        .await
        .unwrap();

    let mut apps = random_applications(200, 11);
    for (i, a) in apps.iter_mut().enumerate() {
        a.application_id = format!("app-{i}");
    }
    apps[137].application_id = "poison".into();
    let (ids, refused) = stream_once(&mut app, apps).await;
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(ids.len(), 200);
    let poison = ids[137];
    let others: Vec<Uuid> = ids.iter().copied().filter(|id| *id != poison).collect();

    db.assert_each_once(&others, Duration::from_secs(20)).await;
    let TestApp { handle, .. } = app;
    handle.shutdown().await.unwrap();
    audit.shutdown().await;
    let (rows, _) = db.counts().await;
    assert_eq!(rows, 199, "all but the refused row are stored");
    assert_eq!(audit.stats().set_aside, 1, "{:?}", audit.stats());
    let aside = set_aside_rows(&db).await;
    assert_eq!(aside.len(), 1, "only the refused row is set aside");
    let (id, sqlstate, row) = &aside[0];
    assert_eq!(*id, Some(poison));
    assert_eq!(sqlstate, "23514");
    let rec = tuple::decode(row).expect("the raw row is kept whole");
    assert_eq!(rec.decision_id, poison);
    assert_eq!(rec.application_id, "poison");
    assert!(
        quarantined(spool.path()).is_empty(),
        "{:?}",
        quarantined(spool.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_is_retried_until_every_decision_is_stored() {
    let db = TestDb::create("cra_api_test").await;
    let spool = tempfile::tempdir().unwrap();
    let (mut app, audit) = spawn_audited(db.url(), spool.path(), Duration::from_millis(20)).await;
    let saw_down = Arc::new(AtomicBool::new(false));
    let mut status = audit.subscribe().unwrap();
    let saw = saw_down.clone();
    tokio::spawn(async move {
        loop {
            if !status.borrow_and_update().database_up {
                saw.store(true, Ordering::SeqCst);
            }
            if status.changed().await.is_err() {
                break;
            }
        }
    });

    let mut ids = Vec::new();
    let mut apps = random_applications(300, 5).into_iter();
    ids.extend(send(&mut app, &mut apps, 50).await);
    db.assert_each_once(&ids, Duration::from_secs(20)).await;

    // A failover to a standby, as the writers see it: their sessions end, and new ones are
    // read-only (SQLSTATE 25006 on every write).
    let admin = db.client().await;
    let dbname = &db.name;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{dbname}\" SET default_transaction_read_only = on"
        ))
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[dbname],
        )
        .await
        .unwrap();
    ids.extend(send(&mut app, &mut apps, 50).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while audit.status().database_up {
        assert!(
            Instant::now() < deadline,
            "readiness never showed the failing writes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Decisions go on while writes fail: they are journaled in the spool.
    for _ in 0..4 {
        ids.extend(send(&mut app, &mut apps, 25).await);
        assert!(audit.status().accepting);
        assert!(app.handle.readiness().is_ready(), "still ready");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!audit.status().database_up, "writes still fail");

    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{dbname}\" RESET default_transaction_read_only"
        ))
        .await
        .unwrap();
    ids.extend(send(&mut app, &mut apps, 50).await);
    db.assert_each_once(&ids, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !audit.status().database_up {
        assert!(Instant::now() < deadline, "database_up never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let TestApp { handle, .. } = app;
    handle.shutdown().await.unwrap();
    audit.shutdown().await;
    let (rows, _) = db.counts().await;
    assert_eq!(
        rows as usize,
        ids.len(),
        "no decision beyond those answered"
    );
    assert!(saw_down.load(Ordering::SeqCst));
    let st = audit.stats();
    assert_eq!((st.set_aside, st.lost), (0, 0), "{st:?}");
    assert!(
        st.spooled > 0,
        "the outage was absorbed by the spool: {st:?}"
    );
    assert!(set_aside_rows(&db).await.is_empty());
    assert!(
        quarantined(spool.path()).is_empty(),
        "{:?}",
        quarantined(spool.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_on_a_live_connection_is_retried_not_quarantined() {
    let db = TestDb::create("cra_api_test").await;
    let spool = tempfile::tempdir().unwrap();
    let (mut app, audit) = spawn_audited(db.url(), spool.path(), Duration::from_millis(20)).await;
    let saw_down = Arc::new(AtomicBool::new(false));
    let mut status = audit.subscribe().unwrap();
    let saw = saw_down.clone();
    tokio::spawn(async move {
        loop {
            if !status.borrow_and_update().database_up {
                saw.store(true, Ordering::SeqCst);
            }
            if status.changed().await.is_err() {
                break;
            }
        }
    });
    let mut ids = Vec::new();
    let mut apps = random_applications(300, 9).into_iter();
    ids.extend(send(&mut app, &mut apps, 50).await);
    db.assert_each_once(&ids, Duration::from_secs(20)).await;

    // New sessions get a 200 ms statement timeout, and another session holds a lock that
    // blocks inserts but not reads: every COPY is canceled (SQLSTATE 57014) on a connection
    // that stays open.
    let admin = db.client().await;
    let dbname = &db.name;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{dbname}\" SET statement_timeout = '200ms'"
        ))
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[dbname],
        )
        .await
        .unwrap();
    let mut locker = db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("SET LOCAL statement_timeout = 0; LOCK TABLE decisions IN SHARE MODE")
        .await
        .unwrap();
    ids.extend(send(&mut app, &mut apps, 50).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while audit.status().database_up {
        assert!(
            Instant::now() < deadline,
            "readiness never showed the failing writes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        ids.extend(send(&mut app, &mut apps, 25).await);
        assert!(audit.status().accepting);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    lock.rollback().await.unwrap();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{dbname}\" RESET statement_timeout"
        ))
        .await
        .unwrap();
    ids.extend(send(&mut app, &mut apps, 50).await);
    db.assert_each_once(&ids, Duration::from_secs(30)).await;
    let TestApp { handle, .. } = app;
    handle.shutdown().await.unwrap();
    audit.shutdown().await;
    let (rows, _) = db.counts().await;
    assert_eq!(
        rows as usize,
        ids.len(),
        "no decision beyond those answered"
    );
    assert!(saw_down.load(Ordering::SeqCst));
    assert!(
        quarantined(spool.path()).is_empty(),
        "{:?}",
        quarantined(spool.path())
    );
    let st = audit.stats();
    assert_eq!((st.set_aside, st.lost), (0, 0), "{st:?}");
    assert!(set_aside_rows(&db).await.is_empty());
}
