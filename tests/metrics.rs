//! `GET /metrics` of the in-process server: the Prometheus text exposition, its counters moving
//! with the calls (exactly: this test binary holds this one test, so no other test's calls
//! share the process-wide recorder), and `promtool check metrics` finding nothing to fix.
use std::{collections::HashMap, io::Write, path::Path, process::Stdio, time::Duration};

use cra::{
    app::App,
    config::ServeConfig,
    grpc::{
        convert::application_to_pb,
        pb::{credit_risk_service_client::CreditRiskServiceClient, ScoreRequest},
    },
};
use serde_json::json;

/// Every sample of an exposition: `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn get(s: &HashMap<String, f64>, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_the_calls_and_promtool_accepts_them() {
    let mut cfg = ServeConfig::with_listen("127.0.0.1:0".parse().unwrap());
    cfg.model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    let handle = App::build(cfg).await.expect("the app builds").spawn();
    let http = reqwest::Client::new();
    let base = format!("http://{}", handle.http_addr());
    let scrape = || async {
        let resp = http.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/plain"), "{ct}");
        resp.text().await.unwrap()
    };
    // Wait until ready (the HTTP port's own health).
    for _ in 0..100 {
        if http
            .get(format!("{base}/health"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = samples(&scrape().await);

    let app = json!({
        "age": 45, "income": 75000, "employment_length": 10, "credit_score": 720,
        "num_credit_lines": 5, "credit_utilization": 0.3, "debt_to_income": 0.35,
        "total_debt": 25000, "savings": 15000, "loan_amount": 20000, "loan_term": 36,
        "num_late_payments": 0, "num_bankruptcies": 0, "inquiries_last_6m": 1,
        "employment_status": "employed", "home_ownership": "mortgage",
        "loan_purpose": "debt_consolidation"
    });
    for _ in 0..5 {
        let r = http
            .post(format!("{base}/predict"))
            .json(&app)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let mut bad = app.clone();
    bad["age"] = json!(12);
    let r = http
        .post(format!("{base}/predict"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let mut grpc = CreditRiskServiceClient::connect(format!("http://{}", handle.local_addr()))
        .await
        .unwrap();
    for _ in 0..3 {
        grpc.score(ScoreRequest {
            application: Some(application_to_pb(&cra_model::Application::example(), "m")),
            explain: false,
        })
        .await
        .unwrap();
    }

    let text = scrape().await;
    let after = samples(&text);
    let delta = |k: &str| get(&after, k) - get(&before, k);
    assert_eq!(
        delta(r#"cra_requests_total{transport="rest",rpc="/predict",code="200"}"#),
        5.0,
        "{text}"
    );
    assert_eq!(
        delta(r#"cra_requests_total{transport="rest",rpc="/predict",code="400"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"cra_requests_total{transport="grpc",rpc="Score",code="Ok"}"#),
        3.0
    );
    // The histogram counts every call of its route, whatever the status.
    assert_eq!(
        delta(r#"cra_request_duration_seconds_count{transport="rest",rpc="/predict"}"#),
        6.0
    );
    assert_eq!(
        delta(r#"cra_request_duration_seconds_count{transport="grpc",rpc="Score"}"#),
        3.0
    );
    let version =
        cra_model::ModelBundle::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default"))
            .unwrap()
            .version()
            .to_owned();
    let ok =
        format!(r#"cra_decisions_total{{model_version="{version}",role="champion",outcome="ok"}}"#);
    let invalid = format!(
        r#"cra_decisions_total{{model_version="{version}",role="champion",outcome="invalid"}}"#
    );
    assert_eq!(delta(&ok), 8.0, "{text}");
    assert_eq!(delta(&invalid), 1.0);
    let by_level: f64 = ["low", "medium", "high"]
        .iter()
        .map(|l| {
            delta(&format!(
                r#"cra_decisions_by_risk_level_total{{risk_level="{l}"}}"#
            ))
        })
        .sum();
    assert_eq!(by_level, 8.0);
    assert_eq!(
        get(
            &after,
            &format!(r#"cra_model_info{{model_version="{version}",role="champion"}}"#)
        ),
        1.0
    );
    assert!(get(&after, "cra_process_resident_memory_bytes") > 1e6);
    assert!(get(&after, "cra_process_open_fds") > 0.0);
    assert!(get(&after, "cra_process_threads") >= 1.0);

    // Drift: the window holds the 8 scored decisions; no PSI under 100 of them. After 120 more
    // (all the same application, so far from the training distribution), every PSI is there.
    let labels = format!(r#"model_version="{version}",role="champion""#);
    assert_eq!(
        get(&after, &format!("cra_drift_available{{{labels}}}")),
        1.0
    );
    assert_eq!(
        get(&after, &format!("cra_drift_window_decisions{{{labels}}}")),
        8.0,
        "{text}"
    );
    assert!(!text.contains("cra_drift_score_psi{"), "{text}");
    for _ in 0..120 {
        grpc.score(ScoreRequest {
            application: Some(application_to_pb(&cra_model::Application::example(), "d")),
            explain: false,
        })
        .await
        .unwrap();
    }
    let text = scrape().await;
    let after = samples(&text);
    assert_eq!(
        get(&after, &format!("cra_drift_window_decisions{{{labels}}}")),
        128.0
    );
    assert!(
        get(&after, &format!("cra_drift_score_psi{{{labels}}}")) > 0.25,
        "{text}"
    );
    let features: Vec<&String> = after
        .keys()
        .filter(|k| k.starts_with("cra_drift_feature_psi{") && k.contains(&labels))
        .collect();
    assert_eq!(features.len(), 19, "{features:?}");
    assert!(
        get(
            &after,
            &format!(r#"cra_drift_feature_psi{{{labels},feature="income"}}"#)
        ) > 0.25,
        "{text}"
    );

    // promtool (Debian's prometheus package; scripts/setup.sh --test installs it).
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (run scripts/setup.sh --test, which installs Debian's prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    handle.shutdown().await.unwrap();
}
