//! Every validation rule, one bad field at a time, then many at once.
use cra::grpc::pb::{self, ScoreRequest};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::helpers::{example, spawn_app};

/// The fields named by the status's google.rpc.BadRequest details.
pub fn bad_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

type Mutate = fn(&mut pb::CreditApplication);

/// (field, a bad value) pairs covering every rule: ranges, finiteness, enums.
fn bad_cases() -> Vec<(&'static str, Mutate)> {
    vec![
        ("application_id", |a| a.application_id = "x".repeat(257)),
        ("age", |a| a.age = 17),
        ("age", |a| a.age = 121),
        ("age", |a| a.age = 0),
        ("income", |a| a.income = 0.0),
        ("income", |a| a.income = -1.0),
        ("income", |a| a.income = f64::NAN),
        ("income", |a| a.income = f64::INFINITY),
        ("income", |a| a.income = 2e9),
        ("employment_length", |a| a.employment_length = -0.5),
        ("employment_length", |a| a.employment_length = 81.0),
        ("employment_length", |a| a.employment_length = f64::NAN),
        ("credit_score", |a| a.credit_score = Some(299)),
        ("credit_score", |a| a.credit_score = Some(851)),
        ("num_credit_lines", |a| a.num_credit_lines = Some(-1)),
        ("credit_utilization", |a| a.credit_utilization = Some(-0.1)),
        ("credit_utilization", |a| a.credit_utilization = Some(10.5)),
        ("credit_utilization", |a| {
            a.credit_utilization = Some(f64::NAN)
        }),
        ("debt_to_income", |a| a.debt_to_income = -0.1),
        ("debt_to_income", |a| a.debt_to_income = 101.0),
        ("debt_to_income", |a| a.debt_to_income = f64::NEG_INFINITY),
        ("total_debt", |a| a.total_debt = -1.0),
        ("total_debt", |a| a.total_debt = f64::NAN),
        ("savings", |a| a.savings = -1.0),
        ("savings", |a| a.savings = f64::INFINITY),
        ("loan_amount", |a| a.loan_amount = 0.0),
        ("loan_amount", |a| a.loan_amount = -5.0),
        ("loan_amount", |a| a.loan_amount = f64::NAN),
        ("loan_term", |a| a.loan_term = 0),
        ("loan_term", |a| a.loan_term = 481),
        ("num_late_payments", |a| a.num_late_payments = Some(-1)),
        ("num_bankruptcies", |a| a.num_bankruptcies = Some(-1)),
        ("inquiries_last_6m", |a| a.inquiries_last_6m = Some(-2)),
        ("employment_status", |a| a.employment_status = 0),
        ("employment_status", |a| a.employment_status = 6),
        ("employment_status", |a| a.employment_status = -1),
        ("home_ownership", |a| a.home_ownership = 0),
        ("home_ownership", |a| a.home_ownership = 99),
        ("loan_purpose", |a| a.loan_purpose = 0),
        ("loan_purpose", |a| a.loan_purpose = 9),
    ]
}

#[tokio::test]
async fn each_rule_rejects_its_field_with_bad_request_details() {
    let mut app = spawn_app().await;
    for (i, (field, mutate)) in bad_cases().into_iter().enumerate() {
        let mut a = example();
        mutate(&mut a);
        let status = app
            .client
            .score(ScoreRequest {
                application: Some(a),
                explain: false,
            })
            .await
            .expect_err(&format!("case {i} ({field}) must be rejected"));
        assert_eq!(status.code(), Code::InvalidArgument, "case {i} ({field})");
        assert_eq!(bad_fields(&status), [field], "case {i}");
        assert!(
            status.message().contains(field),
            "case {i}: {}",
            status.message()
        );
    }
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn boundary_values_and_absent_optionals_are_accepted() {
    let mut app = spawn_app().await;
    let cases: Vec<Mutate> = vec![
        |a| a.age = 18,
        |a| a.age = 120,
        |a| a.employment_length = 0.0,
        |a| a.employment_length = 80.0,
        |a| a.credit_score = Some(300),
        |a| a.credit_score = Some(850),
        |a| a.credit_score = None,
        |a| a.num_credit_lines = None,
        |a| a.credit_utilization = None,
        |a| a.credit_utilization = Some(10.0),
        |a| a.debt_to_income = 0.0,
        |a| a.debt_to_income = 100.0,
        |a| a.total_debt = 0.0,
        |a| a.savings = 0.0,
        |a| a.loan_term = 1,
        |a| a.loan_term = 480,
        |a| a.num_late_payments = None,
        |a| a.num_bankruptcies = None,
        |a| a.inquiries_last_6m = None,
        |a| a.application_id = String::new(),
    ];
    for (i, mutate) in cases.into_iter().enumerate() {
        let mut a = example();
        mutate(&mut a);
        let r = app
            .client
            .score(ScoreRequest {
                application: Some(a),
                explain: false,
            })
            .await;
        let s = r
            .unwrap_or_else(|e| panic!("case {i} must be accepted: {e:?}"))
            .into_inner()
            .score
            .unwrap();
        assert!((0.0..=1.0).contains(&s.probability_default), "case {i}");
    }
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn several_bad_fields_are_all_named() {
    let mut app = spawn_app().await;
    let mut a = example();
    a.age = 7;
    a.income = f64::NAN;
    a.credit_score = Some(900);
    a.loan_term = 0;
    a.loan_purpose = 0;
    a.home_ownership = 42;
    let status = app
        .client
        .score(ScoreRequest {
            application: Some(a),
            explain: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        bad_fields(&status),
        [
            "age",
            "income",
            "credit_score",
            "loan_term",
            "home_ownership",
            "loan_purpose"
        ]
    );
    // An all-default message (nothing set) is rejected without a panic, every required field named.
    let status = app
        .client
        .score(ScoreRequest {
            application: Some(pb::CreditApplication::default()),
            explain: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status).len(), 7, "{:?}", bad_fields(&status));
    app.handle.shutdown().await.unwrap();
}
