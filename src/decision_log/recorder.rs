//! The decision log as the server's [`DecisionRecorder`]: encodes the server's borrowed view of
//! a decision once, as a row (see [`super::copy_row`]), and hands it to the [`DecisionLog`] without
//! waiting.

use super::copy_row;
use super::spool::Frames;
use super::writer::DecisionLog;
use crate::scoring::record as srv;

/// Room for one encoded row (a scored decision takes about 560 bytes).
const ROW_BYTES: usize = 640;

/// Keeps the server's readiness condition `name` equal to "decisions can be recorded" (false
/// when PostgreSQL is down and the spool is full or failing). `None` when the log is disabled.
pub fn follow_readiness(
    log: &DecisionLog,
    readiness: crate::readiness::Readiness,
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
            readiness.set(name, accepting);
            if rx.changed().await.is_err() {
                break;
            }
        }
    }))
}

impl srv::DecisionRecorder for DecisionLog {
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
                    frames.push(|out| copy_row::encode_view(r, out));
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
        DecisionLog::backlogged(self)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::{Duration, SystemTime};

    use chrono::{DateTime, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::decision_log::row::{
        DecisionRow, Outcome, RecordedInputs, Rpc, ScoredResult, Violation,
    };
    use cra_model::{
        ApplicationInput, Category, EmploymentStatus, FieldViolation, HomeOwnership, LoanPurpose,
        ModelBundle,
    };

    use crate::scoring::Role;

    fn whole(v: Option<f64>) -> Option<i32> {
        v.filter(|x| x.fract() == 0.0 && x.abs() <= f64::from(i32::MAX))
            .map(|x| x as i32)
    }

    /// The 17 inputs of a request exactly as received.
    pub fn recorded_inputs(a: &ApplicationInput) -> RecordedInputs {
        RecordedInputs {
            age: whole(a.age),
            income: a.income,
            employment_length: a.employment_length,
            credit_score: whole(a.credit_score),
            num_credit_lines: whole(a.num_credit_lines),
            credit_utilization: a.credit_utilization,
            debt_to_income: a.debt_to_income,
            total_debt: a.total_debt,
            savings: a.savings,
            loan_amount: a.loan_amount,
            loan_term: whole(a.loan_term),
            num_late_payments: whole(a.num_late_payments),
            num_bankruptcies: whole(a.num_bankruptcies),
            inquiries_last_6m: whole(a.inquiries_last_6m),
            employment_status: a
                .employment_status
                .recorded::<EmploymentStatus>()
                .map(Into::into),
            home_ownership: a.home_ownership.recorded::<HomeOwnership>().map(Into::into),
            loan_purpose: a.loan_purpose.recorded::<LoanPurpose>().map(Into::into),
        }
    }

    /// The owned record of one decision as the scoring core describes it.
    pub fn to_record(r: &srv::DecisionRecord<'_>) -> DecisionRow {
        let rpc = match r.rpc {
            srv::Rpc::Unary => Rpc::Unary,
            srv::Rpc::Stream { .. } => Rpc::Stream,
            srv::Rpc::Offline { .. } => Rpc::Offline,
            srv::Rpc::Rest { .. } => Rpc::Rest,
            srv::Rpc::V2 { .. } => Rpc::V2,
        };
        let (stream_id, stream_position) = match r.rpc.stream() {
            Some((id, p)) => (Some(id), Some(i64::try_from(p).unwrap_or(i64::MAX))),
            None => (None, None),
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
                        field: v.field.to_string(),
                        description: v.description.clone(),
                    })
                    .collect(),
            ),
        };
        DecisionRow {
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
            client_id: r.client_id.map(str::to_owned),
            model_version: r.model.version().to_owned(),
            model_sha256: r.model.manifest.artifact_sha256.clone(),
            inputs: r.input.map(recorded_inputs).unwrap_or_default(),
            outcome,
            latency_us: i64::try_from(r.latency.as_micros()).unwrap_or(i64::MAX),
            model_role: r.role.as_str().to_owned(),
            shadow_of: r.shadow_of,
            explanation: r.explanation.map(copy_row::explanation_json),
            trace_id: r.trace_id.map(|t| t.to_string()),
        }
    }

    fn model() -> ModelBundle {
        ModelBundle::load(concat!(env!("CARGO_MANIFEST_DIR"), "/models/default")).unwrap()
    }

    /// The fast encoder writes byte for byte what the owned record of the same view encodes
    /// to, for scored, rejected, streamed, offline, shadow, application-less and odd-category
    /// decisions.
    #[test]
    fn view_rows_equal_owned_record_rows() {
        let model = model();
        let mut good =
            ApplicationInput::from_application(&cra_model::Application::example(), "app-\0-1");
        good.num_bankruptcies = None;
        good.employment_status = Category::Code(2);
        let app = good.validate().unwrap();
        let decision = model.score(&app);
        let odd = ApplicationInput {
            income: Some(f64::NAN),
            age: Some(30.5),
            loan_purpose: Category::Code(42),
            home_ownership: Category::Code(0),
            employment_status: Category::Name("astronaut".into()),
            ..good.clone()
        };
        let violations = vec![
            FieldViolation {
                field: "income".into(),
                description: "must be finite".into(),
            },
            FieldViolation {
                field: "loan_purpose".into(),
                description: "unknown value 42 \"quoted\"".into(),
            },
        ];
        let peer: SocketAddr = "[::1]:50123".parse().unwrap();
        let now = SystemTime::now();
        let base = srv::DecisionRecord {
            decision_id: crate::decision_log::new_decision_id(),
            request_id: "req-1",
            rpc: srv::Rpc::Unary,
            peer: Some(peer),
            client_id: Some("acme"),
            received_at: now - Duration::from_micros(7),
            decided_at: now,
            latency: Duration::from_nanos(6_900),
            model: &model,
            role: Role::Champion,
            shadow_of: None,
            input: Some(&good),
            outcome: srv::Outcome::Scored {
                application: &app,
                decision: &decision,
            },
            explanation: None,
            trace_id: None,
        };
        let explainer = model.explainer().unwrap();
        let explained = explainer.explain(model.preprocessor(), &app, &mut explainer.scratch());
        let views = [
            base,
            srv::DecisionRecord {
                rpc: srv::Rpc::Stream {
                    stream_id: Uuid::now_v7(),
                    position: 12,
                },
                peer: None,
                client_id: None,
                role: Role::Challenger,
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
            srv::DecisionRecord {
                rpc: srv::Rpc::Offline {
                    run_id: Uuid::now_v7(),
                    position: 99,
                },
                role: Role::Shadow,
                shadow_of: Some(Uuid::now_v7()),
                ..base
            },
            srv::DecisionRecord {
                explanation: Some(&explained),
                ..base
            },
            srv::DecisionRecord {
                trace_id: Some(crate::scoring::TraceId([
                    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e,
                    0x0e, 0x47, 0x36,
                ])),
                ..base
            },
        ];
        for v in &views {
            let mut fast = Vec::new();
            copy_row::encode_view(v, &mut fast);
            let mut reference = Vec::new();
            copy_row::encode(&to_record(v), &mut reference);
            assert_eq!(fast, reference, "{:?}", copy_row::decode(&fast));
        }
        let row = |v: &srv::DecisionRecord<'_>| {
            let mut b = Vec::new();
            copy_row::encode_view(v, &mut b);
            copy_row::decode(&b).unwrap()
        };
        let odd_row = row(&views[2]);
        let i = &odd_row.inputs;
        assert_eq!(i.employment_status.as_deref(), Some("unknown:astronaut"));
        assert_eq!(i.home_ownership.as_deref(), Some("unspecified"));
        assert_eq!(i.loan_purpose.as_deref(), Some("unknown(42)"));
        assert!(i.income.unwrap().is_nan());
        assert_eq!(
            i.age, None,
            "a fractional age is not an integer column value"
        );
        assert_eq!(i.num_bankruptcies, None);
        assert_eq!(odd_row.application_id, "app-\u{FFFD}-1");
        assert_eq!(odd_row.peer.as_deref(), Some("[::1]:50123"));
        assert_eq!(odd_row.client_id.as_deref(), Some("acme"));
        assert_eq!(row(&views[1]).client_id, None);
        assert_eq!(odd_row.latency_us, 6);
        assert_eq!(
            row(&views[6]).trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(row(&views[0]).trace_id, None);
        assert_eq!(
            row(&views[0]).inputs.employment_status.as_deref(),
            Some("self_employed")
        );
        let shadow = row(&views[4]);
        assert_eq!(shadow.model_role, "shadow");
        assert_eq!(shadow.shadow_of, views[4].shadow_of);
        assert_eq!(shadow.stream_position, Some(99));
        let json: serde_json::Value =
            serde_json::from_str(row(&views[5]).explanation.as_deref().unwrap()).unwrap();
        assert_eq!(json["contributions"].as_object().unwrap().len(), 19);
        let sum: f64 = json["base_margin"].as_f64().unwrap()
            + json["contributions"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_f64().unwrap())
                .sum::<f64>();
        assert!((sum - f64::from(decision.margin)).abs() < 1e-4, "{sum}");
        assert!(row(&views[0]).explanation.is_none());
    }

    /// A row journaled by a build before V5 (39 columns) is read as a live champion decision,
    /// and one from before V7 (42 columns) as a decision without a trace.
    #[test]
    fn legacy_rows_are_upgraded() {
        let model = model();
        let input = ApplicationInput::from_application(&cra_model::Application::example(), "a");
        let app = input.validate().unwrap();
        let decision = model.score(&app);
        let view = srv::DecisionRecord {
            decision_id: Uuid::now_v7(),
            request_id: "r",
            rpc: srv::Rpc::Unary,
            peer: None,
            client_id: None,
            received_at: SystemTime::now(),
            decided_at: SystemTime::now(),
            latency: Duration::from_micros(3),
            model: &model,
            role: Role::Champion,
            shadow_of: None,
            input: Some(&input),
            outcome: srv::Outcome::Scored {
                application: &app,
                decision: &decision,
            },
            explanation: None,
            trace_id: None,
        };
        let mut today = Vec::new();
        copy_row::encode_view(&view, &mut today);
        // The same row as the older builds wrote it: 42 fields, without the trace id (NULL: 4
        // bytes); 39 fields, without the role, the link and the explanation too.
        for (fields, cut) in [(42i16, 4), (39, 4 + 4 + "champion".len() + 4 + 4)] {
            let mut legacy = today[..today.len() - cut].to_vec();
            legacy[..2].copy_from_slice(&fields.to_be_bytes());
            assert!(copy_row::is_legacy(&legacy));
            let mut upgraded = Vec::new();
            copy_row::upgrade_legacy(&legacy, &mut upgraded).unwrap();
            assert_eq!(upgraded, today, "{fields} fields");
        }
        assert!(!copy_row::is_legacy(&today));
        assert!(copy_row::upgrade_legacy(&today, &mut Vec::new()).is_err());
    }
}
