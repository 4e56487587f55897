//! The contract's edge: turns a `pb::CreditApplication` into the scoring core's
//! [`ApplicationInput`] (field by field, judging nothing: validation is the core's), and the
//! core's results (decisions, models, errors' violations) into messages.
//!
//! The accepted ranges are those of [`cra_model::input`] (also in the proto comments and the
//! README). Proto3 scalars cannot be absent: an unset `age` arrives as 0 and is refused as 0.

use std::time::Duration;

use cra_model::{
    bundle,
    explain::{Explanation, FeatureValue},
    input::CategoryValue,
    Application, ApplicationInput, Category, Decision, EmploymentStatus, FieldViolation,
    HomeOwnership, LoanPurpose, ModelBundle, RiskLevel,
};

use super::pb;
use crate::scoring::{registry::ReloadStatus, ModelSet, Role, ShadowStats};

/// The scoring core's input of a contract application, moved out of the message.
pub fn input_from_pb(a: pb::CreditApplication) -> ApplicationInput {
    let opt_int = |v: Option<i32>| v.map(f64::from);
    ApplicationInput {
        decode_errors: Vec::new(),
        application_id: a.application_id,
        age: Some(f64::from(a.age)),
        income: Some(a.income),
        employment_length: Some(a.employment_length),
        credit_score: opt_int(a.credit_score),
        num_credit_lines: opt_int(a.num_credit_lines),
        credit_utilization: a.credit_utilization,
        debt_to_income: Some(a.debt_to_income),
        total_debt: Some(a.total_debt),
        savings: Some(a.savings),
        loan_amount: Some(a.loan_amount),
        loan_term: Some(f64::from(a.loan_term)),
        num_late_payments: opt_int(a.num_late_payments),
        num_bankruptcies: opt_int(a.num_bankruptcies),
        inquiries_last_6m: opt_int(a.inquiries_last_6m),
        employment_status: Category::Code(a.employment_status),
        home_ownership: Category::Code(a.home_ownership),
        loan_purpose: Category::Code(a.loan_purpose),
    }
}

/// Checks every field of `a`: the domain application, or every violation (for tools and
/// tests; the server goes through the scoring core).
pub fn validate(a: &pb::CreditApplication) -> Result<Application, Vec<FieldViolation>> {
    input_from_pb(a.clone()).validate()
}

/// The proto value of a domain category (1-based position in `ALL`, 0 when absent).
fn proto_code<T: CategoryValue>(v: Option<T>) -> i32 {
    v.map_or(0, T::code)
}

/// The contract form of a domain application (the inverse of [`validate`] for valid input).
/// Missing numbers become absent optional fields.
pub fn application_to_pb(
    a: &Application,
    application_id: impl Into<String>,
) -> pb::CreditApplication {
    let opt = |v: f64| (!v.is_nan()).then_some(v.round() as i32);
    pb::CreditApplication {
        application_id: application_id.into(),
        age: a.age.round() as i32,
        income: a.income,
        employment_length: a.employment_length,
        credit_score: opt(a.credit_score),
        num_credit_lines: opt(a.num_credit_lines),
        credit_utilization: (!a.credit_utilization.is_nan()).then_some(a.credit_utilization),
        debt_to_income: a.debt_to_income,
        total_debt: a.total_debt,
        savings: a.savings,
        loan_amount: a.loan_amount,
        loan_term: a.loan_term.round() as i32,
        num_late_payments: opt(a.num_late_payments),
        num_bankruptcies: opt(a.num_bankruptcies),
        inquiries_last_6m: opt(a.inquiries_last_6m),
        employment_status: proto_code::<EmploymentStatus>(a.employment_status),
        home_ownership: proto_code::<HomeOwnership>(a.home_ownership),
        loan_purpose: proto_code::<LoanPurpose>(a.loan_purpose),
    }
}

pub fn risk_level_to_pb(level: RiskLevel) -> pb::RiskLevel {
    match level {
        RiskLevel::Low => pb::RiskLevel::Low,
        RiskLevel::Medium => pb::RiskLevel::Medium,
        RiskLevel::High => pb::RiskLevel::High,
    }
}

/// A protobuf Duration from a std one.
pub fn duration_to_pb(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A protobuf Timestamp from a system time (times before 1970 clamp to the epoch).
pub fn timestamp_to_pb(t: std::time::SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Everything in a `RiskScore` besides the decision itself.
#[derive(Debug, Clone, Copy)]
pub struct ScoreContext<'a> {
    pub request_id: &'a str,
    pub application_id: &'a str,
    /// Empty when the decision log is off.
    pub decision_id: &'a str,
    pub model_version: &'a str,
    pub model_role: Role,
    pub explanation: Option<&'a Explanation>,
    pub processing_time: Duration,
    pub scored_at: std::time::SystemTime,
}

/// The contract form of one decision.
pub fn risk_score_to_pb(d: &Decision, ctx: &ScoreContext<'_>) -> pb::RiskScore {
    pb::RiskScore {
        request_id: ctx.request_id.to_owned(),
        application_id: ctx.application_id.to_owned(),
        decision_id: ctx.decision_id.to_owned(),
        prediction: i32::from(d.prediction),
        risk_score: d.risk_score,
        risk_level: risk_level_to_pb(d.risk_level) as i32,
        probability_default: d.probability_default,
        probability_repayment: 1.0 - d.probability_default,
        margin: f64::from(d.margin),
        model_version: ctx.model_version.to_owned(),
        model_role: role_to_pb(ctx.model_role) as i32,
        explanation: ctx.explanation.map(explanation_to_pb),
        processing_time: Some(duration_to_pb(ctx.processing_time)),
        scored_at: Some(timestamp_to_pb(ctx.scored_at)),
    }
}

/// The contract form of an explanation.
pub fn explanation_to_pb(e: &Explanation) -> pb::Explanation {
    pb::Explanation {
        base_margin: e.base_margin,
        contributions: e
            .contributions
            .iter()
            .map(|c| pb::FeatureContribution {
                feature: c.feature.to_owned(),
                value: match c.value {
                    FeatureValue::Number(v) => Some(v),
                    _ => None,
                },
                category: match c.value {
                    FeatureValue::Category(name) => name.to_owned(),
                    _ => String::new(),
                },
                contribution: c.contribution,
            })
            .collect(),
        reasons: e
            .reasons
            .iter()
            .map(|r| pb::Reason {
                code: r.code.clone(),
                description: r.description.clone(),
                features: r.features.clone(),
                contribution: r.contribution,
                fifth_factor: r.fifth_factor,
            })
            .collect(),
    }
}

pub fn role_to_pb(role: Role) -> pb::ModelRole {
    match role {
        Role::Champion => pb::ModelRole::Champion,
        Role::Challenger => pb::ModelRole::Challenger,
        Role::Shadow => pb::ModelRole::Shadow,
    }
}

fn opt_timestamp(t: Option<std::time::SystemTime>) -> Option<prost_types::Timestamp> {
    t.map(timestamp_to_pb)
}

/// The GetModelInfo answer: the champion, every model of the set, the registry's history.
pub fn model_info_response(
    set: &ModelSet,
    source: &str,
    status: &ReloadStatus,
    shadows: &ShadowStats,
) -> pb::GetModelInfoResponse {
    use std::sync::atomic::Ordering::Relaxed;
    pb::GetModelInfoResponse {
        model: Some(model_info_to_pb(&set.champion().bundle)),
        models: set
            .members()
            .map(|m| pb::LoadedModel {
                role: role_to_pb(m.role) as i32,
                weight: m.weight,
                path: m.dir.display().to_string(),
                info: Some(model_info_to_pb(&m.bundle)),
            })
            .collect(),
        registry: Some(pb::RegistryStatus {
            source: source.to_owned(),
            generation: set.generation,
            loaded_at: Some(timestamp_to_pb(set.loaded_at)),
            reloads: status.reloads,
            refusals: status.refusals,
            last_reload_at: opt_timestamp(status.last_reload_at),
            last_error: status.last_error.clone().unwrap_or_default(),
            last_error_at: opt_timestamp(status.last_error_at),
            shadow_scored: shadows.scored.load(Relaxed),
            shadow_dropped: shadows.dropped.load(Relaxed),
            shadow_unrecorded: shadows.unrecorded.load(Relaxed),
            shadow_failed: shadows.failed.load(Relaxed),
        }),
    }
}

/// The contract form of field violations.
pub fn violations_to_pb(v: &[FieldViolation]) -> Vec<pb::FieldViolation> {
    v.iter()
        .map(|v| pb::FieldViolation {
            field: v.field.to_string(),
            description: v.description.clone(),
        })
        .collect()
}

/// Describes a loaded model bundle for GetModelInfo.
pub fn model_info_to_pb(b: &ModelBundle) -> pb::ModelInfo {
    let m = &b.manifest;
    pb::ModelInfo {
        model_version: m.model_version.clone(),
        artifact_sha256: m.artifact_sha256.clone(),
        training_data_sha256: m.training_data_sha256.clone(),
        trained_at: Some(prost_types::Timestamp {
            seconds: m.trained_at.timestamp(),
            nanos: m.trained_at.timestamp_subsec_nanos() as i32,
        }),
        features: m
            .features
            .iter()
            .map(|f: &bundle::FeatureSpec| pb::FeatureSpec {
                name: f.name.clone(),
                kind: f.kind.clone(),
                transform: f.transform.clone(),
                nullable: f.nullable,
            })
            .collect(),
        thresholds: Some(pb::Thresholds {
            decision_threshold: m.thresholds.decision_threshold,
            low_max: m.thresholds.low_max,
            medium_max: m.thresholds.medium_max,
        }),
        metrics: b.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        hyperparameters: m
            .hyperparameters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        xgboost_version: m.xgboost_version.clone(),
        num_trees: b.num_trees() as u32,
        training_rows: m.training_rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> pb::CreditApplication {
        application_to_pb(&Application::example(), "a-1")
    }

    #[test]
    fn the_example_round_trips() {
        assert_eq!(validate(&example()).unwrap(), Application::example());
    }

    #[test]
    fn proto_enum_values_line_up_with_the_domain_enums() {
        for (i, v) in EmploymentStatus::ALL.iter().enumerate() {
            let name = pb::EmploymentStatus::try_from(i as i32 + 1)
                .unwrap()
                .as_str_name();
            assert_eq!(
                name,
                format!("EMPLOYMENT_STATUS_{}", v.as_str().to_uppercase())
            );
        }
        for (i, v) in HomeOwnership::ALL.iter().enumerate() {
            let name = pb::HomeOwnership::try_from(i as i32 + 1)
                .unwrap()
                .as_str_name();
            assert_eq!(
                name,
                format!("HOME_OWNERSHIP_{}", v.as_str().to_uppercase())
            );
        }
        for (i, v) in LoanPurpose::ALL.iter().enumerate() {
            let name = pb::LoanPurpose::try_from(i as i32 + 1)
                .unwrap()
                .as_str_name();
            assert_eq!(name, format!("LOAN_PURPOSE_{}", v.as_str().to_uppercase()));
        }
        assert!(pb::LoanPurpose::try_from(LoanPurpose::ALL.len() as i32 + 1).is_err());
    }

    #[test]
    fn numbers_in_descriptions_stay_short() {
        let a = pb::CreditApplication {
            income: f64::MIN,
            ..example()
        };
        let v = validate(&a).unwrap_err();
        assert!(
            v[0].description.ends_with("got -1.7976931348623157e308"),
            "{v:?}"
        );
    }

    #[test]
    fn absent_optionals_are_missing_not_errors() {
        let mut a = example();
        a.credit_score = None;
        a.credit_utilization = None;
        let app = validate(&a).unwrap();
        assert!(app.credit_score.is_nan() && app.credit_utilization.is_nan());
    }

    #[test]
    fn every_bad_field_is_reported() {
        let a = pb::CreditApplication {
            income: f64::NAN,
            credit_utilization: Some(f64::INFINITY),
            employment_status: 99,
            ..Default::default()
        };
        let fields: Vec<_> = validate(&a)
            .unwrap_err()
            .iter()
            .map(|v| v.field.to_string())
            .collect();
        assert_eq!(
            fields,
            [
                "age",
                "income",
                "credit_utilization",
                "loan_amount",
                "loan_term",
                "employment_status",
                "home_ownership",
                "loan_purpose"
            ]
        );
    }
}
