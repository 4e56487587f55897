//! Explanations over gRPC: the --explain policy, the client's switch on Score and ScoreBatch,
//! contributions that add up to the margin, the reason rules, and the decision log's copy.
use std::time::Duration;

use cra::{
    decision_log::{DecisionLog, DecisionLogConfig},
    grpc::pb::{self, batch_result::Result as Item, ScoreBatchRequest, ScoreRequest},
    scoring::ExplainPolicy,
};

use crate::common::pg::TestDb;
use crate::helpers::{config, example, spawn_app_with, TestApp};

/// An applicant the default model declines: a thin, delinquent file and heavy payments.
fn risky() -> pb::CreditApplication {
    let mut a = example();
    a.application_id = "risky-1".into();
    a.credit_score = Some(480);
    a.num_late_payments = Some(6);
    a.debt_to_income = 0.9;
    a.credit_utilization = Some(0.95);
    a.savings = 100.0;
    a.income = 21_000.0;
    a.loan_amount = 40_000.0;
    a.inquiries_last_6m = Some(9);
    a
}

async fn spawn(policy: ExplainPolicy) -> TestApp {
    let mut cfg = config();
    cfg.explain = policy;
    let app = spawn_app_with(cfg, |b| b).await;
    app.wait_ready().await;
    app
}

async fn score(app: &mut TestApp, a: pb::CreditApplication, explain: bool) -> pb::RiskScore {
    app.client
        .score(ScoreRequest {
            application: Some(a),
            explain,
        })
        .await
        .expect("scored")
        .into_inner()
        .score
        .unwrap()
}

/// The explanation is whole: one contribution per model feature, which with the baseline add
/// up to the margin; reasons toward default only, largest first, at most four plus the fifth
/// factor, each the sum of its features' contributions.
fn check_explanation(s: &pb::RiskScore) -> &pb::Explanation {
    let e = s.explanation.as_ref().expect("an explanation");
    assert_eq!(e.contributions.len(), cra_model::NUM_FEATURES);
    let total = e.base_margin + e.contributions.iter().map(|c| c.contribution).sum::<f64>();
    assert!(
        (total - s.margin).abs() < 1e-4,
        "{total} vs margin {}",
        s.margin
    );
    let principal: Vec<&pb::Reason> = e.reasons.iter().filter(|r| !r.fifth_factor).collect();
    assert!(principal.len() <= 4, "{principal:?}");
    assert!(e.reasons.iter().filter(|r| r.fifth_factor).count() <= 1);
    for w in principal.windows(2) {
        assert!(
            w[0].contribution >= w[1].contribution,
            "ranked: {principal:?}"
        );
    }
    for r in &e.reasons {
        assert!(r.contribution > 0.0, "{r:?}");
        assert!(!r.description.is_empty() && !r.features.is_empty());
        let sum: f64 = e
            .contributions
            .iter()
            .filter(|c| r.features.contains(&c.feature))
            .map(|c| c.contribution)
            .sum();
        assert!((sum - r.contribution).abs() < 1e-9, "{r:?} vs {sum}");
    }
    if let Some(fifth) = e.reasons.iter().find(|r| r.fifth_factor) {
        assert_eq!(fifth.code, "R10", "only inquiries are a fifth factor");
        assert_eq!(principal.len(), 4);
    }
    let values: Vec<(&str, Option<f64>, &str)> = e
        .contributions
        .iter()
        .map(|c| (c.feature.as_str(), c.value, c.category.as_str()))
        .collect();
    assert!(
        values.contains(&("employment_status", None, "employed")),
        "{values:?}"
    );
    e
}

#[tokio::test]
async fn by_default_declined_applications_carry_their_reasons_and_approved_ones_do_not() {
    let mut app = spawn(ExplainPolicy::Declined).await;
    let declined = score(&mut app, risky(), false).await;
    assert_eq!(declined.prediction, 1, "the risky applicant is declined");
    let e = check_explanation(&declined);
    assert!(!e.reasons.is_empty());
    let codes: Vec<&str> = e.reasons.iter().map(|r| r.code.as_str()).collect();
    assert!(
        codes.contains(&"R01") || codes.contains(&"R02") || codes.contains(&"R03"),
        "{codes:?}"
    );
    let approved = score(&mut app, example(), false).await;
    assert_eq!(approved.prediction, 0);
    assert!(approved.explanation.is_none());
    // Asked for: explained whatever the decision.
    let asked = score(&mut app, example(), true).await;
    check_explanation(&asked);
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn never_and_always_policies() {
    let mut app = spawn(ExplainPolicy::Never).await;
    assert!(score(&mut app, risky(), false).await.explanation.is_none());
    check_explanation(&score(&mut app, risky(), true).await);
    app.handle.shutdown().await.unwrap();
    let mut app = spawn(ExplainPolicy::Always).await;
    check_explanation(&score(&mut app, example(), false).await);
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn score_batch_explains_per_message() {
    let mut app = spawn(ExplainPolicy::Never).await;
    let messages = vec![
        ScoreBatchRequest {
            applications: vec![example(), risky()],
            explain: true,
        },
        ScoreBatchRequest {
            applications: vec![example(), risky()],
            explain: false,
        },
    ];
    let mut inbound = app
        .client
        .score_batch(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let mut results = Vec::new();
    while let Some(m) = inbound.message().await.unwrap() {
        results.extend(m.results);
    }
    let scores: Vec<pb::RiskScore> = results
        .into_iter()
        .map(|r| match r.result.unwrap() {
            Item::Score(s) => s,
            Item::Error(e) => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(scores.len(), 4);
    check_explanation(&scores[0]);
    check_explanation(&scores[1]);
    assert!(scores[2].explanation.is_none() && scores[3].explanation.is_none());
    app.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_log_keeps_the_explanation_given() {
    let db = TestDb::create("cra_api_test").await;
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = DecisionLogConfig::new(db.url(), spool.path().to_owned());
    cfg.flush_interval = Duration::from_millis(20);
    let log = DecisionLog::start(cfg).await.unwrap();
    let recorder = log.clone();
    let mut app = spawn_app_with(config(), move |b| b.decision_log(recorder)).await;
    app.wait_ready().await;
    let declined = score(&mut app, risky(), false).await;
    let approved = score(&mut app, example(), false).await;
    db.wait_for_rows(2, Duration::from_secs(20)).await;
    let c = db.client().await;
    let rows = c
        .query(
            "SELECT decision_id::text, explanation FROM decisions ORDER BY decided_at",
            &[],
        )
        .await
        .unwrap();
    let stored: std::collections::HashMap<String, Option<serde_json::Value>> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(stored[&approved.decision_id], None);
    let json = stored[&declined.decision_id].clone().expect("kept");
    let e = declined.explanation.unwrap();
    let codes: Vec<&str> = json["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    let given: Vec<&str> = e.reasons.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(codes, given, "the notice can be rebuilt from the log");
    assert_eq!(
        json["reasons"][0]["description"].as_str().unwrap(),
        e.reasons[0].description
    );
    assert!((json["base_margin"].as_f64().unwrap() - e.base_margin).abs() < 1e-12);
    for c in &e.contributions {
        let stored = json["contributions"][&c.feature].as_f64().unwrap();
        assert!((stored - c.contribution).abs() < 1e-12, "{}", c.feature);
    }
    app.handle.shutdown().await.unwrap();
    log.shutdown().await;
}
