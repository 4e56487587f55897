//! The contract's edge: checks every field of a `pb::CreditApplication` and turns it into the
//! domain [`Application`], and turns domain results (decisions, the model bundle) into messages.
//!
//! Accepted ranges (also in the proto comments and the README):
//!
//! | field                                   | accepted                                  |
//! |-----------------------------------------|-------------------------------------------|
//! | application_id                          | at most 256 bytes (optional)              |
//! | age                                     | 18 to 120                                 |
//! | income                                  | greater than 0, at most 1e9               |
//! | employment_length                       | 0 to 80                                   |
//! | credit_score (optional)                 | 300 to 850                                |
//! | num_credit_lines (optional)             | 0 to 1000                                 |
//! | credit_utilization (optional)           | 0 to 10                                   |
//! | debt_to_income                          | 0 to 100                                  |
//! | total_debt, savings                     | 0 to 1e10                                 |
//! | loan_amount                             | greater than 0, at most 1e9               |
//! | loan_term                               | 1 to 480 months                           |
//! | num_late_payments, inquiries_last_6m    | 0 to 1000 (optional)                      |
//! | num_bankruptcies                        | 0 to 100 (optional)                       |
//! | employment_status, home_ownership, loan_purpose | a known value, not UNSPECIFIED    |
//!
//! Every number must be finite. Absent optional fields become "missing" (NaN) for the model.

use std::time::Duration;

use super::pb;
use crate::data::{Application, EmploymentStatus, HomeOwnership, LoanPurpose};
use crate::model::{bundle, Decision, ModelBundle, RiskLevel};

/// Longest accepted `application_id`, in bytes.
pub const MAX_APPLICATION_ID_BYTES: usize = 256;

/// One invalid field of a request, as in `google.rpc.BadRequest.FieldViolation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Field name as in the contract, e.g. "credit_score".
    pub field: &'static str,
    /// What is wrong and what is accepted.
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: &'static str, description: impl Into<String>) -> Self {
        FieldViolation {
            field,
            description: description.into(),
        }
    }
}

/// A client's number as written in a violation: plain when that is short, else in exponent
/// form, so that a description stays short whatever was sent (`{}` writes 1e300 in 301 digits).
fn compact(v: f64) -> String {
    let plain = v.to_string();
    if plain.len() <= 24 {
        plain
    } else {
        format!("{v:e}")
    }
}

/// Collects violations while the fields are checked one by one.
struct Checker {
    violations: Vec<FieldViolation>,
}

impl Checker {
    /// A real number within `[min, max]` (`min_exclusive` makes the lower bound strict).
    fn real(
        &mut self,
        field: &'static str,
        v: f64,
        min: f64,
        min_exclusive: bool,
        max: f64,
    ) -> f64 {
        let ok = v.is_finite() && (if min_exclusive { v > min } else { v >= min }) && v <= max;
        if !ok {
            let lower = if min_exclusive {
                format!("greater than {min}")
            } else {
                format!("at least {min}")
            };
            let what = if v.is_finite() {
                compact(v)
            } else {
                "not a finite number".to_string()
            };
            self.violations.push(FieldViolation::new(
                field,
                format!("must be a finite number {lower} and at most {max}; got {what}"),
            ));
        }
        v
    }

    /// An integer within `[min, max]`.
    fn int(&mut self, field: &'static str, v: i32, min: i32, max: i32) -> f64 {
        if v < min || v > max {
            self.violations.push(FieldViolation::new(
                field,
                format!("must be between {min} and {max}; got {v}"),
            ));
        }
        f64::from(v)
    }

    /// An optional integer: absent means missing (NaN); present must be within `[min, max]`.
    fn opt_int(&mut self, field: &'static str, v: Option<i32>, min: i32, max: i32) -> f64 {
        v.map_or(f64::NAN, |v| self.int(field, v, min, max))
    }

    /// A proto enum value that is neither UNSPECIFIED (0) nor unknown to this build.
    fn category<T: Copy>(
        &mut self,
        field: &'static str,
        v: i32,
        all: &[T],
        names: fn() -> Vec<&'static str>,
    ) -> Option<T> {
        // Proto values are 1..=N in the order of the domain enum's ALL (checked by a unit test).
        let found = usize::try_from(v)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| all.get(i).copied());
        if found.is_none() {
            let why = if v == 0 {
                "is missing (UNSPECIFIED)".to_string()
            } else {
                format!("has unknown value {v}")
            };
            self.violations.push(FieldViolation::new(
                field,
                format!("{why}; must be one of {}", names().join(", ")),
            ));
        }
        found
    }
}

/// Checks every field of `a` and returns the domain application, or all the violations found.
pub fn validate(a: &pb::CreditApplication) -> Result<Application, Vec<FieldViolation>> {
    let mut c = Checker {
        violations: Vec::new(),
    };
    if a.application_id.len() > MAX_APPLICATION_ID_BYTES {
        c.violations.push(FieldViolation::new(
            "application_id",
            format!(
                "must be at most {MAX_APPLICATION_ID_BYTES} bytes; got {}",
                a.application_id.len()
            ),
        ));
    }
    let app = Application {
        age: c.int("age", a.age, 18, 120),
        income: c.real("income", a.income, 0.0, true, 1e9),
        employment_length: c.real("employment_length", a.employment_length, 0.0, false, 80.0),
        credit_score: c.opt_int("credit_score", a.credit_score, 300, 850),
        num_credit_lines: c.opt_int("num_credit_lines", a.num_credit_lines, 0, 1000),
        credit_utilization: a.credit_utilization.map_or(f64::NAN, |v| {
            c.real("credit_utilization", v, 0.0, false, 10.0)
        }),
        debt_to_income: c.real("debt_to_income", a.debt_to_income, 0.0, false, 100.0),
        total_debt: c.real("total_debt", a.total_debt, 0.0, false, 1e10),
        savings: c.real("savings", a.savings, 0.0, false, 1e10),
        loan_amount: c.real("loan_amount", a.loan_amount, 0.0, true, 1e9),
        loan_term: c.int("loan_term", a.loan_term, 1, 480),
        num_late_payments: c.opt_int("num_late_payments", a.num_late_payments, 0, 1000),
        num_bankruptcies: c.opt_int("num_bankruptcies", a.num_bankruptcies, 0, 100),
        inquiries_last_6m: c.opt_int("inquiries_last_6m", a.inquiries_last_6m, 0, 1000),
        employment_status: c.category(
            "employment_status",
            a.employment_status,
            EmploymentStatus::ALL,
            EmploymentStatus::names,
        ),
        home_ownership: c.category(
            "home_ownership",
            a.home_ownership,
            HomeOwnership::ALL,
            HomeOwnership::names,
        ),
        loan_purpose: c.category(
            "loan_purpose",
            a.loan_purpose,
            LoanPurpose::ALL,
            LoanPurpose::names,
        ),
    };
    if c.violations.is_empty() {
        Ok(app)
    } else {
        Err(c.violations)
    }
}

/// The proto value of a domain category (1-based position in `ALL`).
fn proto_code<T: PartialEq>(v: Option<T>, all: &[T]) -> i32 {
    v.and_then(|v| all.iter().position(|x| *x == v))
        .map_or(0, |i| i as i32 + 1)
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
        employment_status: proto_code(a.employment_status, EmploymentStatus::ALL),
        home_ownership: proto_code(a.home_ownership, HomeOwnership::ALL),
        loan_purpose: proto_code(a.loan_purpose, LoanPurpose::ALL),
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
        processing_time: Some(duration_to_pb(ctx.processing_time)),
        scored_at: Some(timestamp_to_pb(ctx.scored_at)),
    }
}

/// The contract form of field violations.
pub fn violations_to_pb(v: &[FieldViolation]) -> Vec<pb::FieldViolation> {
    v.iter()
        .map(|v| pb::FieldViolation {
            field: v.field.to_owned(),
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
        assert_eq!(compact(42.5), "42.5");
        assert_eq!(compact(-1e300), "-1e300");
        assert_eq!(compact(5e-324), "5e-324");
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
        let fields: Vec<_> = validate(&a).unwrap_err().iter().map(|v| v.field).collect();
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
