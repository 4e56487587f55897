//! The decision log as the server's [`DecisionRecorder`]: encodes the server's borrowed view of
//! a decision once, as a row (see [`super::tuple`]), and hands it to the [`AuditLog`] without
//! waiting.

use super::spool::Frames;
use super::tuple;
use super::writer::AuditLog;
use crate::server::recorder as srv;

/// Room for one encoded row (a scored decision takes about 560 bytes).
const ROW_BYTES: usize = 640;

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
        self.record_chunk(std::slice::from_ref(record))
    }

    fn record_chunk(&self, records: &[srv::DecisionRecord<'_>]) -> Result<(), srv::RecordError> {
        if !self.is_enabled() {
            return Ok(());
        }
        // One encoding buffer per thread, reused: recording allocates nothing per decision.
        thread_local! {
            static FRAMES: std::cell::RefCell<Frames> = std::cell::RefCell::new(Frames::with_capacity(64 * ROW_BYTES));
        }
        FRAMES
            .with(|cell| {
                let mut frames = cell.borrow_mut();
                frames.clear();
                for r in records {
                    frames.push(|out| tuple::encode_view(r, out));
                }
                let result = self.record_frames(&frames);
                if frames.as_bytes().len() > 1024 * ROW_BYTES {
                    // Do not keep a large stream chunk's buffer alive on the thread.
                    *frames = Frames::with_capacity(64 * ROW_BYTES);
                }
                result
            })
            // The client sees a plain message, never the spool's paths or sizes (those are
            // logged by the log itself).
            .map_err(|_| srv::RecordError(super::writer::UNAVAILABLE_MESSAGE.to_owned()))
    }

    fn backlogged(&self) -> bool {
        AuditLog::backlogged(self)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::{Duration, SystemTime};

    use chrono::{DateTime, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::audit::record::{
        DecisionRecord, Outcome, RecordedInputs, Rpc, ScoredResult, Violation,
    };
    use crate::contract::pb;
    use crate::contract::validate::FieldViolation;
    use crate::model::ModelBundle;

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
                let (monthly_payment, payment_to_income) =
                    r.model.preprocessor().derived(application);
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

    fn model() -> ModelBundle {
        ModelBundle::load(concat!(env!("CARGO_MANIFEST_DIR"), "/models/default")).unwrap()
    }

    /// The fast encoder writes byte for byte what the owned record of the same view encodes
    /// to, for scored, rejected, streamed, application-less and odd-enum decisions.
    #[test]
    fn view_rows_equal_owned_record_rows() {
        let model = model();
        let good = pb::CreditApplication {
            application_id: "app-\0-1".into(),
            age: 45,
            income: 75_000.0,
            employment_length: 10.0,
            credit_score: Some(720),
            num_credit_lines: Some(5),
            credit_utilization: Some(0.3),
            debt_to_income: 0.35,
            total_debt: 25_000.0,
            savings: 15_000.0,
            loan_amount: 20_000.0,
            loan_term: 36,
            num_late_payments: Some(0),
            num_bankruptcies: None,
            inquiries_last_6m: Some(1),
            employment_status: pb::EmploymentStatus::SelfEmployed as i32,
            home_ownership: pb::HomeOwnership::Mortgage as i32,
            loan_purpose: pb::LoanPurpose::DebtConsolidation as i32,
        };
        let app = crate::contract::validate::validate(&good).unwrap();
        let decision = model.score(&app);
        let odd = pb::CreditApplication {
            income: f64::NAN,
            loan_purpose: 42,
            home_ownership: 0,
            ..good.clone()
        };
        let violations = vec![
            FieldViolation {
                field: "income",
                description: "must be finite".into(),
            },
            FieldViolation {
                field: "loan_purpose",
                description: "unknown value 42 \"quoted\"".into(),
            },
        ];
        let peer: SocketAddr = "[::1]:50123".parse().unwrap();
        let now = SystemTime::now();
        let base = srv::DecisionRecord {
            decision_id: crate::audit::new_decision_id(),
            request_id: "req-1",
            rpc: srv::Rpc::Unary,
            peer: Some(peer),
            received_at: now - Duration::from_micros(7),
            decided_at: now,
            latency: Duration::from_nanos(6_900),
            model: &model,
            input: Some(&good),
            outcome: srv::Outcome::Scored {
                application: &app,
                decision: &decision,
            },
        };
        let views = [
            base,
            srv::DecisionRecord {
                rpc: srv::Rpc::Stream {
                    stream_id: Uuid::now_v7(),
                    position: 12,
                },
                peer: None,
                ..base
            },
            srv::DecisionRecord {
                input: Some(&odd),
                outcome: srv::Outcome::Invalid {
                    violations: &violations,
                },
                ..base
            },
            srv::DecisionRecord {
                input: None,
                outcome: srv::Outcome::Invalid {
                    violations: &violations[..1],
                },
                ..base
            },
        ];
        for v in &views {
            let mut fast = Vec::new();
            tuple::encode_view(v, &mut fast);
            let mut reference = Vec::new();
            tuple::encode(&to_record(v), &mut reference);
            assert_eq!(fast, reference, "{:?}", tuple::decode(&fast));
        }
        let odd_row = {
            let mut b = Vec::new();
            tuple::encode_view(&views[2], &mut b);
            tuple::decode(&b).unwrap()
        };
        let i = &odd_row.inputs;
        assert_eq!(i.employment_status.as_deref(), Some("self_employed"));
        assert_eq!(i.home_ownership.as_deref(), Some("unspecified"));
        assert_eq!(i.loan_purpose.as_deref(), Some("unknown(42)"));
        assert!(i.income.unwrap().is_nan());
        assert_eq!(i.num_bankruptcies, None);
        assert_eq!(odd_row.application_id, "app-\u{FFFD}-1");
        assert_eq!(odd_row.peer.as_deref(), Some("[::1]:50123"));
        assert_eq!(odd_row.latency_us, 6);
    }

    #[test]
    fn enum_names_parse_back_as_categories() {
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
