//! The decision log against a real PostgreSQL (default `postgres://postgres@127.0.0.1:5432`,
//! override with `CRA_TEST_PG`). Each test creates its own database and drops it at the end.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use cra::decision_log::spool::{Spool, SpoolConfig};
use cra::decision_log::{
    db, new_decision_id, DatabaseUrl, DecisionLog, DecisionLogConfig, DecisionLogError,
    DecisionRow, Outcome, RecordedInputs, Rpc, ScoredResult, Violation,
};
use uuid::Uuid;

mod common;
use common::pg::{dead_url, Proxy, TestDb};

fn config(url: DatabaseUrl, spool: &Path) -> DecisionLogConfig {
    let mut cfg = DecisionLogConfig::new(url, spool.to_owned());
    cfg.flush_interval = Duration::from_millis(20);
    cfg.connect_timeout = Duration::from_millis(1000);
    cfg.write_timeout = Duration::from_secs(2);
    cfg.retry_interval = Duration::from_millis(200);
    cfg
}

/// A varied record: scored, or rejected with out-of-range/NaN/absent inputs.
fn sample(i: u64) -> DecisionRow {
    let now = Utc::now();
    let scored = i % 4 != 3;
    let stream = i.is_multiple_of(3);
    DecisionRow {
        decision_id: new_decision_id(),
        request_id: format!("req-{i}"),
        application_id: if i.is_multiple_of(10) {
            String::new()
        } else {
            format!("app-{i}\0x")
        },
        rpc: if stream { Rpc::Stream } else { Rpc::Unary },
        stream_id: stream.then(Uuid::new_v4),
        stream_position: stream.then_some(i as i64),
        received_at: now - chrono::Duration::microseconds(37),
        decided_at: now,
        peer: Some(format!("127.0.0.1:{}", 40000 + i % 1000)),
        client_id: None,
        model_version: "cra-test-v1".into(),
        model_sha256: "ab".repeat(32),
        inputs: RecordedInputs {
            age: Some(if scored { 20 + (i % 60) as i32 } else { 7 }),
            income: Some(if scored { 1000.0 * i as f64 } else { f64::NAN }),
            employment_length: Some(3.5),
            credit_score: (!i.is_multiple_of(5)).then_some(300 + (i % 550) as i32),
            num_credit_lines: (!i.is_multiple_of(7)).then_some(4),
            credit_utilization: (!i.is_multiple_of(11)).then_some(0.25),
            debt_to_income: Some(if scored { 12.5 } else { f64::INFINITY }),
            total_debt: Some(5000.0),
            savings: Some(100.0),
            loan_amount: Some(15000.0),
            loan_term: Some(36),
            num_late_payments: Some(0),
            num_bankruptcies: None,
            inquiries_last_6m: Some(1),
            employment_status: Some(if scored { "employed" } else { "unspecified" }.into()),
            home_ownership: Some("rent".into()),
            loan_purpose: if scored { Some("auto".into()) } else { None },
        },
        outcome: if scored {
            Outcome::Scored(ScoredResult {
                monthly_payment: 450.75,
                payment_to_income: 0.05,
                margin: -1.25 + (i % 100) as f64 / 50.0,
                probability_default: 0.2,
                risk_score: (i % 10_000) as f64 / 100.0,
                risk_level: "low".into(),
                prediction: (i % 2) as i16,
            })
        } else {
            Outcome::Invalid(vec![
                Violation {
                    field: "age".into(),
                    description: "must be 18 to 120, got 7".into(),
                },
                Violation {
                    field: "income".into(),
                    description: "must be finite".into(),
                },
            ])
        },
        latency_us: (i % 500) as i64,
        model_role: match i % 7 {
            0 => "shadow",
            1 => "challenger",
            _ => "champion",
        }
        .into(),
        shadow_of: i.is_multiple_of(7).then(Uuid::now_v7),
        explanation: (scored && i.is_multiple_of(4)).then(|| {
            format!(
                r#"{{"base_margin":-1.25,"contributions":{{"age":0.{i},"credit_score":-0.5}},"reasons":[{{"code":"R13","description":"Age of applicant","features":["age"],"contribution":0.{i},"fifth_factor":false}}]}}"#
            )
        }),        // Some rows have a trace id; those of the "larger ids" (see the full-spool test) all do,
        // so that none is smaller than a row that was refused.
        trace_id: (i % 5 == 1 || i >= 1_000_000).then(|| format!("{:032x}", i + 1)),
    }
}

fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

fn same_f64(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => x.to_bits() == y.to_bits() || (x - y).abs() < 1e-12,
        _ => false,
    }
}

/// Every record is stored exactly once, with the values it was recorded with.
async fn assert_stored_exactly(db: &TestDb, records: &[DecisionRow]) {
    let c = db.client().await;
    let rows = c
        .query(
            "SELECT decision_id, request_id, application_id, rpc, stream_id, stream_position, \
             received_at, decided_at, peer, model_version, age, income, credit_score, \
             debt_to_income, num_bankruptcies, employment_status, loan_purpose, margin, \
             risk_score, prediction, latency_us, outcome, violations, model_role, shadow_of, \
             explanation, trace_id FROM decisions",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), records.len(), "row count");
    let by_id: HashMap<Uuid, &tokio_postgres::Row> =
        rows.iter().map(|r| (r.get::<_, Uuid>(0), r)).collect();
    assert_eq!(by_id.len(), records.len(), "distinct decision ids");
    for rec in records {
        let row = by_id
            .get(&rec.decision_id)
            .unwrap_or_else(|| panic!("decision {} missing", rec.decision_id));
        let ctx = &rec.request_id;
        assert_eq!(row.get::<_, String>(1), rec.request_id);
        assert_eq!(
            row.get::<_, String>(2),
            rec.application_id.replace('\0', "\u{FFFD}"),
            "{ctx}"
        );
        assert_eq!(row.get::<_, String>(3), rec.rpc.as_str(), "{ctx}");
        assert_eq!(row.get::<_, Option<Uuid>>(4), rec.stream_id, "{ctx}");
        assert_eq!(row.get::<_, Option<i64>>(5), rec.stream_position, "{ctx}");
        assert_eq!(
            row.get::<_, DateTime<Utc>>(6),
            micros(rec.received_at),
            "{ctx}"
        );
        assert_eq!(
            row.get::<_, DateTime<Utc>>(7),
            micros(rec.decided_at),
            "{ctx}"
        );
        assert_eq!(row.get::<_, Option<String>>(8), rec.peer, "{ctx}");
        assert_eq!(row.get::<_, String>(9), rec.model_version, "{ctx}");
        assert_eq!(row.get::<_, Option<i32>>(10), rec.inputs.age, "{ctx}");
        assert!(
            same_f64(row.get(11), rec.inputs.income),
            "{ctx}: income {:?}",
            row.get::<_, Option<f64>>(11)
        );
        assert_eq!(
            row.get::<_, Option<i32>>(12),
            rec.inputs.credit_score,
            "{ctx}"
        );
        assert!(same_f64(row.get(13), rec.inputs.debt_to_income), "{ctx}");
        assert_eq!(
            row.get::<_, Option<i32>>(14),
            rec.inputs.num_bankruptcies,
            "{ctx}"
        );
        assert_eq!(
            row.get::<_, Option<String>>(15),
            rec.inputs.employment_status,
            "{ctx}"
        );
        assert_eq!(
            row.get::<_, Option<String>>(16),
            rec.inputs.loan_purpose,
            "{ctx}"
        );
        assert_eq!(row.get::<_, i64>(20), rec.latency_us, "{ctx}");
        assert_eq!(row.get::<_, String>(23), rec.model_role, "{ctx}");
        assert_eq!(row.get::<_, Option<Uuid>>(24), rec.shadow_of, "{ctx}");
        assert_eq!(
            row.get::<_, Option<serde_json::Value>>(25),
            rec.explanation
                .as_deref()
                .map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap()),
            "{ctx}"
        );
        assert_eq!(row.get::<_, Option<String>>(26), rec.trace_id, "{ctx}");
        assert_eq!(row.get::<_, String>(21), rec.outcome.as_str(), "{ctx}");
        match &rec.outcome {
            Outcome::Scored(s) => {
                assert!(same_f64(row.get(17), Some(s.margin)), "{ctx}");
                assert!(same_f64(row.get(18), Some(s.risk_score)), "{ctx}");
                assert_eq!(row.get::<_, Option<i16>>(19), Some(s.prediction), "{ctx}");
                assert_eq!(row.get::<_, Option<serde_json::Value>>(22), None, "{ctx}");
            }
            Outcome::Invalid(v) => {
                assert_eq!(row.get::<_, Option<i16>>(19), None, "{ctx}");
                let json: serde_json::Value = row.get(22);
                let back: Vec<Violation> = serde_json::from_value(json).unwrap();
                assert_eq!(&back, v, "{ctx}");
            }
        }
    }
}

/// The decision row is defined once: the table the migrations build has exactly the columns the
/// COPY encoder writes and the decoder reads, in the same order, with the same types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migrated_table_is_the_row_the_encoder_writes() {
    use cra::decision_log::copy_row::{self, COLUMNS};
    let db = TestDb::new("cra_audit_test");
    let mut c = db.client().await;
    db::migrate(&mut c).await.unwrap();
    let table: Vec<(String, String)> = c
        .query(
            "SELECT column_name::text, udt_name::text FROM information_schema.columns \
             WHERE table_name = 'decisions' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let encoder: Vec<(String, String)> = COLUMNS
        .iter()
        .map(|(name, ty)| (name.to_string(), ty.name().to_string()))
        .collect();
    assert_eq!(table, encoder);
    // And a row encoded, stored and read back by PostgreSQL decodes to what was encoded.
    let records: Vec<DecisionRow> = (0..6).map(sample).collect();
    let mut w = db::Writer::new(c).await.unwrap();
    assert_eq!(w.write(&records, Duration::from_secs(5)).await.unwrap(), 6);
    let c = db.client().await;
    let copied = c
        .query_one(
            &format!(
                "SELECT count(*) FROM decisions WHERE ({}) IS NOT NULL OR true",
                copy_row::column_list()
            ),
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(copied, 6);
    assert_stored_exactly(&db, &records).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_partitions_exist() {
    let db = TestDb::new("cra_audit_test");
    let mut c = db.client().await; // creates the database
    let first = db::migrate(&mut c).await.unwrap();
    let names: Vec<&str> = first.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "decisions",
            "brin_time_index",
            "default_partition_upkeep",
            "decisions_set_aside",
            "model_roles_and_offline",
            "explanations",
            "trace_id"
        ],
        "{first:?}"
    );
    let indexes: Vec<String> = c
        .query(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'decisions' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        indexes,
        [
            "decisions_application_id_idx",
            "decisions_decided_at_brin",
            "decisions_model_version_idx",
            "decisions_pkey",
            "decisions_shadow_of_idx"
        ]
    );
    let second = db::migrate(&mut c).await.unwrap();
    assert!(second.is_empty(), "{second:?}");
    let parts: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'decisions'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // DEFAULT + this month + PARTITION_MONTHS_AHEAD months.
    assert_eq!(parts, 2 + db::PARTITION_MONTHS_AHEAD as i64);
    assert_eq!(db::ensure_partitions(&c).await.unwrap(), 0);
    // A decision far in the future lands in the DEFAULT partition instead of failing.
    let mut r = sample(1);
    r.decided_at = Utc::now() + chrono::Duration::days(400);
    let mut w = db::Writer::new(c).await.unwrap();
    assert_eq!(w.write(&[r], Duration::from_secs(5)).await.unwrap(), 1);
    let c = db.client().await;
    let part: String = c
        .query_one("SELECT tableoid::regclass::text FROM decisions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(part, "decisions_default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_records_give_exactly_n_rows_with_their_values() {
    let db = TestDb::new("cra_audit_test");
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(db.url(), spool.path());
    cfg.batch_size = 500;
    let log = DecisionLog::start(cfg).await.unwrap();
    assert!(log.status().database_up);
    let records: Vec<_> = (0..5000).map(sample).collect();
    for r in &records {
        log.record(r.clone()).unwrap();
    }
    log.shutdown().await;
    let st = log.stats();
    assert_eq!(st.accepted, 5000);
    assert_eq!(st.written, 5000, "{st:?}");
    assert_eq!(st.lost, 0);
    assert_stored_exactly(&db, &records).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_records_already_stored_never_duplicates() {
    let db = TestDb::new("cra_audit_test");
    let spool = tempfile::tempdir().unwrap();
    let records: Vec<_> = (0..1000).map(sample).collect();
    let log = DecisionLog::start(config(db.url(), spool.path()))
        .await
        .unwrap();
    for r in &records {
        log.record(r.clone()).unwrap();
    }
    log.shutdown().await;
    assert_eq!(db.counts().await, (1000, 1000));

    // The same records again: in a spool segment left from "an earlier run" (twice over),
    // and recorded live once more.
    {
        let s = Spool::open(SpoolConfig {
            dir: spool.path().to_owned(),
            max_bytes: 1 << 30,
            segment_bytes: 1 << 20,
        })
        .unwrap();
        s.append(&records, u64::MAX, true).unwrap();
        s.append(&records[..10], u64::MAX, true).unwrap();
    }
    let log = DecisionLog::start(config(db.url(), spool.path()))
        .await
        .unwrap();
    for r in &records {
        log.record(r.clone()).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while log.stats().replayed < 1010 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log.shutdown().await;
    let st = log.stats();
    assert_eq!(st.replayed, 1010, "{st:?}");
    assert_eq!(st.written, 0, "nothing new was written: {st:?}");
    assert_eq!(log.spool_bytes(), 0);
    assert_stored_exactly(&db, &records).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_records_keep_being_accepted_and_land_exactly_once() {
    let db = TestDb::new("cra_audit_test");
    let spool = tempfile::tempdir().unwrap();
    let _ = db.client().await; // create the database directly
    let proxy = Proxy::start(true).await;
    let mut cfg = config(db.url_via(proxy.addr), spool.path());
    cfg.batch_size = 200;
    let log = DecisionLog::start(cfg).await.unwrap();
    assert!(log.status().database_up);

    let mut records = Vec::new();
    let mut produce = |log: &DecisionLog, n: u64| {
        for _ in 0..n {
            let r = sample(records.len() as u64);
            log.record(r.clone())
                .expect("record() must accept during an outage");
            records.push(r);
        }
    };
    // Before, during and after the outage, in small bursts like a live server.
    for _ in 0..10 {
        produce(&log, 300);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut();
    for _ in 0..20 {
        produce(&log, 300);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.status().database_up && Instant::now() < deadline {
        produce(&log, 50);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!log.status().database_up, "the outage was noticed");
    assert!(log.is_healthy(), "still accepting while the spool has room");
    for _ in 0..10 {
        produce(&log, 300);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(log.stats().spooled > 0, "{:?}", log.stats());
    proxy.restore();
    for _ in 0..10 {
        produce(&log, 300);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n = records.len() as i64;
    let counts = db.wait_for_rows(n, Duration::from_secs(30)).await;
    assert_eq!(counts, (n, n), "stats {:?}", log.stats());
    assert!(log.status().database_up);
    log.shutdown().await;
    assert_eq!(log.stats().lost, 0);
    assert_stored_exactly(&db, &records).await;
}

/// The child process of `spooled_records_survive_a_crash_and_are_replayed_on_start`: records
/// decisions with PostgreSQL unreachable, prints the id of each one `record()` accepted, then
/// waits to be killed. Does nothing unless that test runs it.
#[test]
fn crash_child_records_then_waits_to_be_killed() {
    let (Ok(spool), Ok(url)) = (
        std::env::var("CRA_CRASH_CHILD_SPOOL"),
        std::env::var("CRA_CRASH_CHILD_URL"),
    ) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let log = DecisionLog::start(config(url.parse().unwrap(), Path::new(&spool)))
            .await
            .unwrap();
        assert!(!log.status().database_up);
        let mut out = std::io::stdout().lock();
        for i in 0..3000 {
            let r = sample(i);
            log.record(r.clone()).unwrap();
            writeln!(out, "ACCEPTED {}", r.decision_id).unwrap();
        }
        writeln!(out, "ALL ACCEPTED").unwrap();
        out.flush().unwrap();
        drop(out);
        std::future::pending::<()>().await;
    });
}

#[test]
fn spooled_records_survive_a_crash_and_are_replayed_on_start() {
    let db = TestDb::new("cra_audit_test");
    let spool = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dead = rt.block_on(dead_url(&db));

    // Run 1, in a child process: PostgreSQL unreachable; 3000 decisions accepted, then the
    // process is killed (SIGKILL): nothing is flushed, unmapped, cut or synced.
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_records_then_waits_to_be_killed",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("CRA_CRASH_CHILD_SPOOL", spool.path())
        .env("CRA_CRASH_CHILD_URL", dead.expose())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut accepted = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // (The test harness may print its own words before the first line.)
        if line.ends_with("ALL ACCEPTED") {
            break;
        } else if let Some((_, id)) = line.split_once("ACCEPTED ") {
            accepted.push(id.parse::<Uuid>().unwrap());
        }
    }
    assert_eq!(accepted.len(), 3000, "the child accepted every decision");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // The killed process was also writing one more frame into its active segment: half of it
    // is there, right after the last whole frame, followed by the segment's zeroed tail.
    let mut active = None;
    for e in std::fs::read_dir(spool.path()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "spool") {
            let data = std::fs::read(&p).unwrap();
            let c = cra::decision_log::spool::decode_segment(&data);
            if !c.frames.is_empty() {
                assert!(active.is_none(), "one segment holds the 3000 records");
                active = Some((p, data.len(), c));
            }
        }
    }
    let (seg, size, c) = active.expect("the journal segment is on disk");
    assert_eq!(
        (c.frames.len(), c.skipped_bytes, c.torn_bytes),
        (3000, 0, 0)
    );
    let end = 8 + c.frames.as_bytes().len(); // magic + frames
    let torn = sample(999_999);
    let mut frame = Vec::new();
    cra::decision_log::spool::encode_frames(std::slice::from_ref(&torn), &mut frame);
    assert!(size > end + frame.len(), "the segment has its zeroed tail");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&frame[..frame.len() / 2], end as u64)
            .unwrap();
    }
    let c = cra::decision_log::spool::decode_segment(&std::fs::read(&seg).unwrap());
    assert_eq!(c.frames.len(), 3000);
    assert!(c.torn_bytes > 0 && !c.is_damaged(), "{c:?}");

    // Run 2: PostgreSQL is there; start-up replays the segment: every accepted decision once,
    // the torn one not at all, and the segment is deleted, not set aside.
    rt.block_on(async {
        let log = DecisionLog::start(config(db.url(), spool.path()))
            .await
            .unwrap();
        db.assert_each_once(&accepted, Duration::from_secs(30))
            .await;
        log.shutdown().await;
        let st = log.stats();
        assert_eq!(st.replayed, 3000, "{st:?}");
        assert_eq!((st.segments_set_aside, st.corrupt_bytes), (0, 0), "{st:?}");
        assert_eq!(log.spool_bytes(), 0, "replayed segments are deleted");
        assert_eq!(db.counts().await, (3000, 3000));
        assert!(db.occurrences(&[torn.decision_id]).await.is_empty());
    });
    let left: Vec<_> = std::fs::read_dir(spool.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".spool"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_frame_costs_only_itself_and_its_segment_is_set_aside() {
    let db = TestDb::new("cra_audit_test");
    let spool = tempfile::tempdir().unwrap();
    let records: Vec<_> = (0..200).map(sample).collect();
    // A segment left by an earlier run, in which one frame in the middle is corrupt.
    let seg = {
        let s = Spool::open(SpoolConfig {
            dir: spool.path().to_owned(),
            max_bytes: 1 << 30,
            segment_bytes: 1 << 20,
        })
        .unwrap();
        s.append(&records, u64::MAX, true).unwrap();
        s.seal_active();
        let segs = s.sealed_segments();
        assert_eq!(segs.len(), 1);
        spool.path().join(format!("seg-{:020}.spool", segs[0]))
    };
    let mut data = std::fs::read(&seg).unwrap();
    let mut before = Vec::new();
    cra::decision_log::spool::encode_frames(&records[..100], &mut before);
    let mut bad = Vec::new();
    cra::decision_log::spool::encode_frames(&records[100..101], &mut bad);
    data[8 + before.len() + 40] ^= 0x5a;
    std::fs::write(&seg, &data).unwrap();

    let log = DecisionLog::start(config(db.url(), spool.path()))
        .await
        .unwrap();
    assert_eq!(
        db.wait_for_rows(199, Duration::from_secs(30)).await,
        (199, 199)
    );
    log.shutdown().await;
    let st = log.stats();
    assert_eq!(st.replayed, 199, "{st:?}");
    assert_eq!(st.segments_set_aside, 1, "{st:?}");
    assert_eq!(st.corrupt_bytes, bad.len() as u64, "{st:?}");
    let mut kept = records.clone();
    kept.remove(100);
    assert_stored_exactly(&db, &kept).await;
    // Kept for an operator, out of the replay and of the size cap.
    assert!(!seg.exists());
    let aside: Vec<_> = std::fs::read_dir(spool.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(log.spool_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_up_a_decision_the_journal_cannot_take_is_refused() {
    let db = TestDb::new("cra_audit_test");
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(db.url(), spool.path());
    cfg.spool_max_bytes = 256 * 1024;
    cfg.spool_segment_bytes = 64 * 1024;
    // Nothing leaves the queue before shutdown, so the journal copies stay and fill the spool.
    cfg.flush_interval = Duration::from_secs(60);
    cfg.batch_size = 100_000;
    let log = DecisionLog::start(cfg).await.unwrap();
    assert!(log.status().database_up);
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for i in 0..10_000 {
        let r = sample(i);
        match log.record(r.clone()) {
            Ok(()) => accepted.push(r),
            Err(e) => {
                assert!(matches!(e, DecisionLogError::Unavailable(_)), "{e}");
                // What a client may see says nothing of the spool's internals.
                let msg = e.to_string();
                assert!(!msg.contains("spool") && !msg.contains("bytes"), "{msg}");
                assert!(!msg.contains(&spool.path().display().to_string()), "{msg}");
                refused.push(r);
                if refused.len() == 10 {
                    break;
                }
            }
        }
    }
    assert!(
        !refused.is_empty(),
        "the journal was full and PostgreSQL up: decisions must be refused, not queued alone"
    );
    assert!(
        !log.is_healthy(),
        "readiness reports it: {:?}",
        log.status()
    );
    log.shutdown().await;
    let st = log.stats();
    assert_eq!(st.accepted, accepted.len() as u64, "{st:?}");
    assert_eq!(st.refused, refused.len() as u64, "{st:?}");
    assert_stored_exactly(&db, &accepted).await;
    let ids: Vec<_> = refused.iter().map(|r| r.decision_id).collect();
    assert!(
        db.occurrences(&ids).await.is_empty(),
        "refused decisions are not recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_database_flushes_the_queue_to_the_spool() {
    let db = TestDb::new("cra_audit_test");
    let spool = tempfile::tempdir().unwrap();
    let records: Vec<_> = (0..2000).map(sample).collect();
    let mut cfg = config(dead_url(&db).await, spool.path());
    cfg.flush_interval = Duration::from_secs(60); // nothing leaves the queue before shutdown
    cfg.batch_size = 100_000;
    let log = DecisionLog::start(cfg).await.unwrap();
    for r in &records {
        log.record(r.clone()).unwrap();
    }
    assert_eq!(log.stats().spooled, 0);
    log.shutdown().await;
    assert_eq!(log.stats().spooled, records.len() as u64);
    // After shutdown the spool is closed (its directory free for the next process): a late
    // record is refused, not accepted.
    let late = sample(5000);
    assert!(matches!(
        log.record(late),
        Err(DecisionLogError::Unavailable(_))
    ));

    let log = DecisionLog::start(config(db.url(), spool.path()))
        .await
        .unwrap();
    let n = records.len() as i64;
    assert_eq!(db.wait_for_rows(n, Duration::from_secs(30)).await, (n, n));
    log.shutdown().await;
    assert_stored_exactly(&db, &records).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_without_database_refuses_with_unavailable_and_loses_nothing() {
    let db = TestDb::new("cra_audit_test");
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(dead_url(&db).await, spool.path());
    cfg.spool_max_bytes = 256 * 1024;
    // Few segments: the prepared ones are always ready, so the refusal is the full spool's.
    cfg.spool_segment_bytes = 64 * 1024;
    cfg.queue_capacity = 64;
    cfg.batch_size = 32;
    cfg.pool_size = 1;
    let log = DecisionLog::start(cfg).await.unwrap();
    assert!(log.is_healthy());

    let mut accepted = Vec::new();
    let mut refused = None;
    let mut i = 0;
    while i < 100_000 {
        let r = sample(i);
        match log.record(r.clone()) {
            Ok(()) => accepted.push(r),
            // On a loaded machine the next segment may not be prepared yet: that refusal is
            // the disk not keeping up, not the full spool this test is about. The same record
            // is tried again once the preparer has had a moment.
            Err(DecisionLogError::Unavailable(why))
                if why.contains("no prepared spool segment") =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
        if i.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
        i += 1;
    }
    let err = refused.expect("record() never refused although the spool is capped");
    assert!(matches!(err, DecisionLogError::Unavailable(_)), "{err}");
    assert!(
        matches!(&err, DecisionLogError::Unavailable(why) if why.contains("spool is full")),
        "{err:?}"
    );
    assert!(
        !log.is_healthy(),
        "readiness reports it: {:?}",
        log.status()
    );
    for k in 0..10 {
        // (Larger ids make slightly larger records, which cannot fit where the last did not.)
        assert!(log.record(sample(1_000_000 + k)).is_err(), "keeps refusing");
    }
    log.shutdown().await;
    let st = log.stats();
    assert_eq!(st.lost, 0, "{st:?}");
    assert_eq!(st.accepted, accepted.len() as u64);
    assert!(log.spool_bytes() <= 256 * 1024);

    // Everything that was accepted reaches PostgreSQL once it is there.
    let log = DecisionLog::start(config(db.url(), spool.path()))
        .await
        .unwrap();
    let n = accepted.len() as i64;
    assert_eq!(db.wait_for_rows(n, Duration::from_secs(30)).await, (n, n));
    assert!(log.is_healthy());
    log.shutdown().await;
    assert_stored_exactly(&db, &accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_many_takes_all_or_none() {
    let db = TestDb::new("cra_audit_test");
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(db.url(), spool.path());
    cfg.queue_capacity = 8; // a 50-record chunk never fits: it goes to the spool whole
    let log = DecisionLog::start(cfg).await.unwrap();
    let chunks: Vec<Vec<DecisionRow>> = (0..20)
        .map(|c| (0..50).map(|i| sample(c * 50 + i)).collect())
        .collect();
    for chunk in &chunks {
        log.record_many(chunk.clone()).unwrap();
    }
    let small: Vec<_> = (5000..5005).map(sample).collect();
    log.record_many(small.clone()).unwrap();
    let n = 20 * 50 + 5;
    assert_eq!(db.wait_for_rows(n, Duration::from_secs(30)).await, (n, n));
    log.shutdown().await;
    let st = log.stats();
    assert_eq!(st.accepted, n as u64);
    assert!(st.overflowed >= 50, "{st:?}");
    let mut all: Vec<_> = chunks.into_iter().flatten().collect();
    all.extend(small);
    assert_stored_exactly(&db, &all).await;

    // Without a database and with a full spool, a chunk is refused whole.
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(dead_url(&db).await, spool.path());
    cfg.spool_max_bytes = 64 * 1024;
    cfg.queue_capacity = 8;
    let log = DecisionLog::start(cfg).await.unwrap();
    let mut refused = false;
    for c in 0..1000 {
        let chunk: Vec<_> = (0..50).map(|i| sample(c * 50 + i)).collect();
        if log.record_many(chunk).is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused);
    log.shutdown().await;
    let st = log.stats();
    assert_eq!(st.refused % 50, 0, "{st:?}");
    assert_eq!(st.accepted % 50, 0, "{st:?}");
    assert_eq!(st.lost, 0, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_database_fails_start_when_unreachable() {
    let db = TestDb::new("cra_audit_test");
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(dead_url(&db).await, spool.path());
    cfg.require_database = true;
    let err = DecisionLog::start(cfg).await.unwrap_err();
    assert!(matches!(err, DecisionLogError::Database(_)), "{err}");
}

/// Throughput of the three paths. Run with
/// `cargo test --release --test audit -- --ignored --nocapture bench_`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_decision_log_throughput() {
    const N: u64 = 200_000;
    let records: Vec<_> = (0..N).map(sample).collect();

    // 0. The cost of record() itself (clone included), with nothing draining the queue.
    let db = TestDb::new("cra_audit_test");
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(db.url(), spool.path());
    cfg.queue_capacity = N as usize;
    cfg.batch_size = 2 * N as usize;
    cfg.flush_interval = Duration::from_secs(600);
    let log = DecisionLog::start(cfg).await.unwrap();
    let t = Instant::now();
    for r in &records {
        log.record(r.clone()).unwrap();
    }
    let alone = t.elapsed();
    let t = Instant::now();
    let mut sink = 0usize;
    for r in &records {
        sink += std::hint::black_box(r.clone()).request_id.len();
    }
    let clone_only = t.elapsed();
    log.shutdown().await;
    println!(
        "record(): {:.0} ns per call including a {:.0} ns clone of the record (queue not drained) [{sink}]",
        alone.as_nanos() as f64 / N as f64,
        clone_only.as_nanos() as f64 / N as f64,
    );
    drop(db);

    // 1. Live path: record() → queue → binary COPY.
    let db = TestDb::new("cra_audit_test");
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(db.url(), spool.path());
    cfg.queue_capacity = N as usize;
    cfg.batch_size = 4096;
    let log = DecisionLog::start(cfg).await.unwrap();
    let t = Instant::now();
    for r in &records {
        log.record(r.clone()).unwrap();
    }
    let enqueue = t.elapsed();
    while log.stats().written < N {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let live = t.elapsed();
    log.shutdown().await;
    println!(
        "live:   {N} records: record() {:.0} ns each; written to PostgreSQL in {:.2} s = {:.0} records/s",
        enqueue.as_nanos() as f64 / N as f64,
        live.as_secs_f64(),
        N as f64 / live.as_secs_f64()
    );
    drop(db);

    // 2. Spool path: PostgreSQL unreachable; writers spool fsync'd batches.
    let db = TestDb::new("cra_audit_test");
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(dead_url(&db).await, spool.path());
    cfg.queue_capacity = N as usize;
    cfg.batch_size = 4096;
    let log = DecisionLog::start(cfg).await.unwrap();
    let t = Instant::now();
    for r in &records {
        log.record(r.clone()).unwrap();
    }
    loop {
        let st = log.stats();
        if st.spooled + st.overflowed >= N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let spooled = t.elapsed();
    log.shutdown().await;
    let bytes = log.spool_bytes();
    println!(
        "spool:  {N} records ({:.1} MB, {} B/record) spooled in {:.2} s = {:.0} records/s",
        bytes as f64 / 1e6,
        bytes / N,
        spooled.as_secs_f64(),
        N as f64 / spooled.as_secs_f64()
    );

    // 3. Replay: start with PostgreSQL reachable.
    let t = Instant::now();
    let log = DecisionLog::start(config(db.url(), spool.path()))
        .await
        .unwrap();
    while log.stats().replayed < N {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let replay = t.elapsed();
    log.shutdown().await;
    assert_eq!(db.counts().await, (N as i64, N as i64));
    println!(
        "replay: {N} records replayed in {:.2} s = {:.0} records/s",
        replay.as_secs_f64(),
        N as f64 / replay.as_secs_f64()
    );
}
