//! The decision log as the server's [`DecisionRecorder`]: turns the server's borrowed view of a
//! decision into an owned [`DecisionRecord`] and hands it to the [`AuditLog`] without waiting.

use chrono::{DateTime, Utc};

use super::record::{DecisionRecord, Outcome, RecordedInputs, Rpc, ScoredResult, Violation};
use super::writer::AuditLog;
use crate::contract::pb;
use crate::server::recorder as srv;

/// The snake_case name of a proto enum value (`EMPLOYMENT_STATUS_SELF_EMPLOYED` →
/// `self_employed`, `…_UNSPECIFIED` → `unspecified`), or `unknown(<n>)` for a value the
/// contract does not define.
fn enum_name(name: Option<&'static str>, prefix: &str, raw: i32) -> String {
    match name {
        Some(n) => n.strip_prefix(prefix).unwrap_or(n).to_ascii_lowercase(),
        None => format!("unknown({raw})"),
    }
}

/// The 17 inputs of a request exactly as received.
pub fn recorded_inputs(a: &pb::CreditApplication) -> RecordedInputs {
    RecordedInputs {
        age: Some(a.age),
        income: Some(a.income),
        employment_length: Some(a.employment_length),
        credit_score: a.credit_score,
        num_credit_lines: a.num_credit_lines,
        credit_utilization: a.credit_utilization,
        debt_to_income: Some(a.debt_to_income),
        total_debt: Some(a.total_debt),
        savings: Some(a.savings),
        loan_amount: Some(a.loan_amount),
        loan_term: Some(a.loan_term),
        num_late_payments: a.num_late_payments,
        num_bankruptcies: a.num_bankruptcies,
        inquiries_last_6m: a.inquiries_last_6m,
        employment_status: Some(enum_name(
            pb::EmploymentStatus::try_from(a.employment_status)
                .ok()
                .map(|v| v.as_str_name()),
            "EMPLOYMENT_STATUS_",
            a.employment_status,
        )),
        home_ownership: Some(enum_name(
            pb::HomeOwnership::try_from(a.home_ownership)
                .ok()
                .map(|v| v.as_str_name()),
            "HOME_OWNERSHIP_",
            a.home_ownership,
        )),
        loan_purpose: Some(enum_name(
            pb::LoanPurpose::try_from(a.loan_purpose)
                .ok()
                .map(|v| v.as_str_name()),
            "LOAN_PURPOSE_",
            a.loan_purpose,
        )),
    }
}

/// The owned record of one decision as the server describes it.
pub fn to_record(r: &srv::DecisionRecord<'_>) -> DecisionRecord {
    let (rpc, stream_id, stream_position) = match r.rpc {
        srv::Rpc::Unary => (Rpc::Unary, None, None),
        srv::Rpc::Stream {
            stream_id,
            position,
        } => (
            Rpc::Stream,
            Some(stream_id),
            Some(i64::try_from(position).unwrap_or(i64::MAX)),
        ),
    };
    let outcome = match r.outcome {
        srv::Outcome::Scored {
            application,
            decision,
        } => {
            let (monthly_payment, payment_to_income) = r.model.preprocessor().derived(application);
            Outcome::Scored(ScoredResult {
                monthly_payment,
                payment_to_income,
                margin: decision.margin as f64,
                probability_default: decision.probability_default,
                risk_score: decision.risk_score,
                risk_level: decision.risk_level.as_str().to_owned(),
                prediction: decision.prediction as i16,
            })
        }
        srv::Outcome::Invalid { violations } => Outcome::Invalid(
            violations
                .iter()
                .map(|v| Violation {
                    field: v.field.to_owned(),
                    description: v.description.clone(),
                })
                .collect(),
        ),
    };
    DecisionRecord {
        decision_id: r.decision_id,
        request_id: r.request_id.to_owned(),
        application_id: r
            .input
            .map(|a| a.application_id.clone())
            .unwrap_or_default(),
        rpc,
        stream_id,
        stream_position,
        received_at: DateTime::<Utc>::from(r.received_at),
        decided_at: DateTime::<Utc>::from(r.decided_at),
        peer: r.peer.map(|p| p.to_string()),
        client_id: None,
        model_version: r.model.version().to_owned(),
        model_sha256: r.model.manifest.artifact_sha256.clone(),
        inputs: r.input.map(recorded_inputs).unwrap_or_default(),
        outcome,
        latency_us: i64::try_from(r.latency.as_micros()).unwrap_or(i64::MAX),
    }
}

/// Keeps the server's readiness condition `name` equal to "decisions can be recorded" (false
/// when PostgreSQL is down and the spool is full or failing). `None` when the log is disabled.
pub fn follow_readiness(
    log: &AuditLog,
    readiness: crate::server::Readiness,
    name: &'static str,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut rx = log.subscribe()?;
    Some(tokio::spawn(async move {
        loop {
            let accepting = rx.borrow_and_update().accepting;
            if !accepting {
                tracing::error!(
                    "the decision log cannot record decisions: readiness is NOT_SERVING"
                );
            }
            readiness.set(name, accepting).await;
            if rx.changed().await.is_err() {
                break;
            }
        }
    }))
}

impl srv::DecisionRecorder for AuditLog {
    fn record(&self, record: &srv::DecisionRecord<'_>) -> Result<(), srv::RecordError> {
        AuditLog::record(self, to_record(record)).map_err(|e| srv::RecordError(e.to_string()))
    }

    fn record_chunk(&self, records: &[srv::DecisionRecord<'_>]) -> Result<(), srv::RecordError> {
        self.record_many(records.iter().map(to_record).collect())
            .map_err(|e| srv::RecordError(e.to_string()))
    }

    fn backlogged(&self) -> bool {
        AuditLog::backlogged(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_are_recorded_by_name_even_when_invalid() {
        let a = pb::CreditApplication {
            employment_status: pb::EmploymentStatus::SelfEmployed as i32,
            home_ownership: 0,
            loan_purpose: 42,
            credit_score: None,
            age: 7,
            ..Default::default()
        };
        let i = recorded_inputs(&a);
        assert_eq!(i.employment_status.as_deref(), Some("self_employed"));
        assert_eq!(i.home_ownership.as_deref(), Some("unspecified"));
        assert_eq!(i.loan_purpose.as_deref(), Some("unknown(42)"));
        assert_eq!(i.credit_score, None);
        assert_eq!(i.age, Some(7));
        for p in [
            pb::LoanPurpose::DebtConsolidation,
            pb::LoanPurpose::HomeImprovement,
        ] {
            let name = enum_name(Some(p.as_str_name()), "LOAN_PURPOSE_", p as i32);
            assert!(
                crate::data::application::LoanPurpose::parse(&name).is_some(),
                "{name}"
            );
        }
    }
}
