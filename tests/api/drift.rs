//! Drift, live and from the decision log: 2,000 applications drawn like the training data (the
//! synthetic generator, another seed) are scored through the real gRPC API (unary calls and a
//! ScoreBatch stream), once with income halved and once as drawn. The live PSI is scraped from
//! /metrics and `cra drift`'s computation runs on the same decision log (the library function,
//! then the binary with --json).
//!
//! Halving income moves `income` and the one feature computed from it, `payment_to_income`
//! (the monthly payment over monthly income, which doubles). Every other feature is an input
//! the applicant states (debt_to_income included: it is received, not derived) and must stay
//! stable. The score moves too (the model uses both), and is reported.
use std::{collections::BTreeMap, path::Path, time::Duration};

use cra::{
    config::DatabaseArgs,
    decision_log::{DecisionLog, DecisionLogConfig},
    drift::{from_log, DriftArgs},
    grpc::{
        convert::application_to_pb,
        pb::{ScoreBatchRequest, ScoreRequest},
    },
};
use cra_model::{
    synthetic::{generate, GeneratorParams},
    Application, ModelBundle,
};

use crate::common::pg::TestDb;
use crate::helpers::{config, spawn_app_with};

const ROWS: usize = 2_000;
/// The features computed from income (see the module documentation).
const FROM_INCOME: [&str; 2] = ["income", "payment_to_income"];

/// Applications drawn like the training data, with another seed.
fn traffic(seed: u64, halve_income: bool) -> Vec<Application> {
    let mut rows = generate(&GeneratorParams {
        rows: ROWS,
        seed,
        ..Default::default()
    })
    .unwrap()
    .rows;
    if halve_income {
        for a in &mut rows {
            a.income = (a.income / 2.0).round();
        }
    }
    rows
}

/// The value of every `name{...}` sample of the model's version, by its `feature` label (or
/// "" without one).
fn gauges(text: &str, name: &str, version: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| l.contains(&format!("model_version=\"{version}\"")))
        .map(|l| {
            let feature = l
                .split("feature=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_owned();
            let v: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
            (feature, v)
        })
        .collect()
}

/// Checks one set of PSIs: with the shift, the income features above 0.25 and the others
/// below 0.1; without, all below 0.1 (the score too).
fn check(what: &str, score: f64, features: &BTreeMap<String, f64>, shifted: bool) {
    assert_eq!(features.len(), 19, "{what}: every feature: {features:?}");
    for (name, psi) in features {
        if shifted && FROM_INCOME.contains(&name.as_str()) {
            assert!(
                *psi > 0.25,
                "{what}: {name} PSI {psi} should be significant"
            );
        } else {
            assert!(*psi < 0.1, "{what}: {name} PSI {psi} should be stable");
        }
    }
    assert!(score.is_finite(), "{what}: score PSI {score}");
    if !shifted {
        assert!(score < 0.1, "{what}: score PSI {score} should be stable");
    }
    eprintln!("{what}: score {score:.4}, features {features:?}");
}

async fn scenario(model: &str, seed: u64, shifted: bool) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(model);
    let bundle = ModelBundle::load(&dir).unwrap();
    let version = bundle.version().to_owned();
    let db = TestDb::create("drift").await;
    let spool = tempfile::tempdir().unwrap();
    let mut log_cfg = DecisionLogConfig::new(db.url(), spool.path().to_owned());
    log_cfg.flush_interval = Duration::from_millis(20);
    let log = DecisionLog::start(log_cfg)
        .await
        .expect("decision log starts");
    let mut cfg = config();
    cfg.model = dir.clone();
    let app = spawn_app_with(cfg, move |b| b.decision_log(log)).await;
    app.wait_ready().await;

    let apps = traffic(seed, shifted);
    let (unary, streamed) = apps.split_at(300);
    let mut client = app.client.clone();
    for (i, a) in unary.iter().enumerate() {
        client
            .score(ScoreRequest {
                application: Some(application_to_pb(a, format!("u{i}"))),
                explain: false,
            })
            .await
            .expect("scored");
    }
    let messages: Vec<ScoreBatchRequest> = streamed
        .chunks(250)
        .enumerate()
        .map(|(k, chunk)| ScoreBatchRequest {
            applications: chunk
                .iter()
                .enumerate()
                .map(|(i, a)| application_to_pb(a, format!("s{k}-{i}")))
                .collect(),
            explain: false,
        })
        .collect();
    let mut inbound = client
        .score_batch(tokio_stream::iter(messages))
        .await
        .expect("stream accepted")
        .into_inner();
    let mut answered = 0;
    while let Some(m) = inbound.message().await.expect("no stream error") {
        answered += m.results.len();
    }
    assert_eq!(answered, streamed.len());

    // Live: /metrics.
    let text = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let window = gauges(&text, "cra_drift_window_decisions", &version);
    assert_eq!(window.get(""), Some(&(ROWS as f64)), "{window:?}");
    assert_eq!(
        gauges(&text, "cra_drift_available", &version).get(""),
        Some(&1.0)
    );
    let score = gauges(&text, "cra_drift_score_psi", &version)[""];
    let live = gauges(&text, "cra_drift_feature_psi", &version);
    check(&format!("{model} live"), score, &live, shifted);

    // From the decision log: the function `cra drift` runs, on the same decisions.
    db.wait_for_rows(ROWS as i64, Duration::from_secs(30)).await;
    let args = DriftArgs {
        database: DatabaseArgs {
            database_url: db.url(),
        },
        model: dir.clone(),
        model_version: None,
        since: Some(Duration::from_secs(3600)),
        from: None,
        to: None,
        json: true,
        html: None,
    };
    let client = db.client().await;
    let logged = from_log(
        &client,
        &bundle,
        &args,
        chrono::Utc::now() + chrono::Duration::seconds(5),
    )
    .await
    .unwrap();
    assert_eq!(logged.psi.rows, ROWS as u64);
    let features: BTreeMap<String, f64> = logged
        .psi
        .features
        .iter()
        .map(|(n, v)| (n.to_string(), *v))
        .collect();
    check(
        &format!("{model} log"),
        logged.psi.score_psi,
        &features,
        shifted,
    );
    // The log holds what the window held: the same PSI, to rounding.
    for (name, v) in &features {
        assert!(
            (v - live[name]).abs() < 1e-9,
            "{name}: log {v} live {}",
            live[name]
        );
    }

    // The binary, with --json: one object, the same figures.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cra"))
        .args(["drift", "--model"])
        .arg(&dir)
        .args([
            "--database-url",
            db.url().expose(),
            "--since",
            "1h",
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(json["rows"], ROWS as u64);
    assert_eq!(json["model_version"], version.as_str());
    assert!((json["score_psi"].as_f64().unwrap() - logged.psi.score_psi).abs() < 1e-9);
    for (name, v) in &features {
        assert!(
            (json["features"][name].as_f64().unwrap() - v).abs() < 1e-9,
            "{name}"
        );
    }
    app.handle.shutdown().await.unwrap();
}

/// Income halved: income and payment_to_income significant, every other feature stable, live
/// and from the log (the challenger model: no other test of this process serves it as
/// champion, so its gauges are this test's alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halved_income_drifts_income_and_nothing_else_live_and_from_the_log() {
    scenario("challenger", 2026, true).await;
}

/// The same traffic without the shift: everything stable, the score too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unshifted_traffic_is_stable_live_and_from_the_log() {
    scenario("default", 2027, false).await;
}
