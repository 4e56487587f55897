//! One row of the decision log, as the server builds it: the inputs exactly as the client sent
//! them (so rejected requests can be recorded too), the model's output and the outcome.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Which RPC produced the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// `Score`.
    Unary,
    /// One item of a `ScoreBatch` stream.
    Stream,
    /// One row of a file scored by `cra score`.
    Offline,
    /// REST `/predict` or an item of `/predict/batch`.
    Rest,
    /// A row of an Open Inference Protocol `ModelInfer` call.
    V2,
}

impl Rpc {
    /// The spelling stored in the `rpc` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Rpc::Unary => "unary",
            Rpc::Stream => "stream",
            Rpc::Offline => "offline",
            Rpc::Rest => "rest",
            Rpc::V2 => "v2",
        }
    }
}

/// The 17 inputs exactly as received. `None` means the client did not send the field (proto3
/// `optional` fields, or no application at all); out-of-range values are kept as they came.
/// Categoricals hold the enum's snake_case name, or e.g. `"unspecified"` / `"unknown(42)"`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordedInputs {
    pub age: Option<i32>,
    pub income: Option<f64>,
    pub employment_length: Option<f64>,
    pub credit_score: Option<i32>,
    pub num_credit_lines: Option<i32>,
    pub credit_utilization: Option<f64>,
    pub debt_to_income: Option<f64>,
    pub total_debt: Option<f64>,
    pub savings: Option<f64>,
    pub loan_amount: Option<f64>,
    pub loan_term: Option<i32>,
    pub num_late_payments: Option<i32>,
    pub num_bankruptcies: Option<i32>,
    pub inquiries_last_6m: Option<i32>,
    pub employment_status: Option<String>,
    pub home_ownership: Option<String>,
    pub loan_purpose: Option<String>,
}

/// What the model said about a valid application.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredResult {
    pub monthly_payment: f64,
    pub payment_to_income: f64,
    /// Raw margin (log-odds).
    pub margin: f64,
    pub probability_default: f64,
    /// probability_default × 100, as returned to the client.
    pub risk_score: f64,
    /// `"low"`, `"medium"` or `"high"`.
    pub risk_level: String,
    /// 0 or 1.
    pub prediction: i16,
}

/// One invalid field of a rejected application, as returned to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

/// How the request ended: scored, or rejected with every bad field.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Scored(ScoredResult),
    Invalid(Vec<Violation>),
}

impl Outcome {
    /// The spelling stored in the `outcome` column.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Scored(_) => "ok",
            Outcome::Invalid(_) => "invalid",
        }
    }
}

/// One decision, scored or rejected; the unit the audit log stores exactly once.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRow {
    /// UUID v7 (see [`new_decision_id`]); with `decided_at` it is the row's key.
    pub decision_id: Uuid,
    pub request_id: String,
    /// The client's application_id; empty when it sent none.
    pub application_id: String,
    pub rpc: Rpc,
    /// `Some` for stream items.
    pub stream_id: Option<Uuid>,
    /// Zero-based position of the item in its stream.
    pub stream_position: Option<i64>,
    pub received_at: DateTime<Utc>,
    pub decided_at: DateTime<Utc>,
    /// Caller address, e.g. `"127.0.0.1:53422"`.
    pub peer: Option<String>,
    /// The authenticated client, once there is authentication.
    pub client_id: Option<String>,
    pub model_version: String,
    pub model_sha256: String,
    pub inputs: RecordedInputs,
    pub outcome: Outcome,
    /// Server time for this decision, in microseconds.
    pub latency_us: i64,
    /// `champion`, `challenger` or `shadow`.
    pub model_role: String,
    /// For a shadow decision, the live decision it shadows.
    pub shadow_of: Option<Uuid>,
    /// The explanation's JSON (see `copy_row::explanation_json`), when it was explained.
    pub explanation: Option<String>,
    /// The W3C trace id of the call (32 hex digits), when it had one.
    pub trace_id: Option<String>,
}

/// A fresh decision id: UUID v7, so the id sorts by time and carries its creation instant.
pub fn new_decision_id() -> Uuid {
    Uuid::now_v7()
}

/// Postgres `text` and `jsonb` cannot hold NUL; client strings are stored with NUL replaced.
pub(crate) fn pg_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Binary encoding of a record for the on-disk spool: versioned, exact for every value
/// (NaN and infinities included), and fast. Not a stable interchange format.
pub(crate) mod codec {
    use super::*;

    const VERSION: u8 = 1;

    /// Why a spooled payload could not be decoded.
    #[derive(Debug, thiserror::Error)]
    pub enum DecodeError {
        #[error("payload ends early")]
        Truncated,
        #[error("unknown record version {0}")]
        Version(u8),
        #[error("invalid {0} in payload")]
        Invalid(&'static str),
    }

    #[cfg(test)]
    struct W<'a>(&'a mut Vec<u8>);

    #[cfg(test)]
    impl W<'_> {
        fn u8(&mut self, v: u8) {
            self.0.push(v);
        }
        fn i64(&mut self, v: i64) {
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        fn f64(&mut self, v: f64) {
            self.0.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        fn i32(&mut self, v: i32) {
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        fn str(&mut self, v: &str) {
            self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
            self.0.extend_from_slice(v.as_bytes());
        }
        fn uuid(&mut self, v: &Uuid) {
            self.0.extend_from_slice(v.as_bytes());
        }
        fn time(&mut self, v: &DateTime<Utc>) {
            self.i64(v.timestamp());
            self.0
                .extend_from_slice(&v.timestamp_subsec_nanos().to_le_bytes());
        }
        fn opt<T>(&mut self, v: &Option<T>, f: impl FnOnce(&mut Self, &T)) {
            match v {
                None => self.u8(0),
                Some(x) => {
                    self.u8(1);
                    f(self, x)
                }
            }
        }
    }

    struct R<'a>(&'a [u8]);

    impl R<'_> {
        fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
            if self.0.len() < n {
                return Err(DecodeError::Truncated);
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Ok(a)
        }
        fn arr<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
            Ok(self.take(N)?.try_into().expect("length checked"))
        }
        fn u8(&mut self) -> Result<u8, DecodeError> {
            Ok(self.take(1)?[0])
        }
        fn i64(&mut self) -> Result<i64, DecodeError> {
            Ok(i64::from_le_bytes(self.arr()?))
        }
        fn f64(&mut self) -> Result<f64, DecodeError> {
            Ok(f64::from_bits(u64::from_le_bytes(self.arr()?)))
        }
        fn i32(&mut self) -> Result<i32, DecodeError> {
            Ok(i32::from_le_bytes(self.arr()?))
        }
        fn str(&mut self) -> Result<String, DecodeError> {
            let n = u32::from_le_bytes(self.arr()?) as usize;
            String::from_utf8(self.take(n)?.to_vec()).map_err(|_| DecodeError::Invalid("utf-8"))
        }
        fn uuid(&mut self) -> Result<Uuid, DecodeError> {
            Ok(Uuid::from_bytes(self.arr()?))
        }
        fn time(&mut self) -> Result<DateTime<Utc>, DecodeError> {
            let secs = self.i64()?;
            let nanos = u32::from_le_bytes(self.arr()?);
            DateTime::from_timestamp(secs, nanos).ok_or(DecodeError::Invalid("timestamp"))
        }
        fn opt<T>(
            &mut self,
            f: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
        ) -> Result<Option<T>, DecodeError> {
            match self.u8()? {
                0 => Ok(None),
                1 => f(self).map(Some),
                _ => Err(DecodeError::Invalid("option tag")),
            }
        }
    }

    /// Appends the encoding of `r` to `out` (the spool's format before rows of PostgreSQL's
    /// COPY format replaced it; kept to test that such segments are still read).
    #[cfg(test)]
    pub fn encode(r: &DecisionRow, out: &mut Vec<u8>) {
        let mut w = W(out);
        w.u8(VERSION);
        w.uuid(&r.decision_id);
        w.str(&r.request_id);
        w.str(&r.application_id);
        w.u8(match r.rpc {
            Rpc::Unary => 0,
            Rpc::Stream => 1,
            // Never written: this codec is read only, for spools of older builds.
            Rpc::Offline | Rpc::Rest | Rpc::V2 => 2,
        });
        w.opt(&r.stream_id, |w, v| w.uuid(v));
        w.opt(&r.stream_position, |w, v| w.i64(*v));
        w.time(&r.received_at);
        w.time(&r.decided_at);
        w.opt(&r.peer, |w, v| w.str(v));
        w.opt(&r.client_id, |w, v| w.str(v));
        w.str(&r.model_version);
        w.str(&r.model_sha256);
        let i = &r.inputs;
        w.opt(&i.age, |w, v| w.i32(*v));
        w.opt(&i.income, |w, v| w.f64(*v));
        w.opt(&i.employment_length, |w, v| w.f64(*v));
        w.opt(&i.credit_score, |w, v| w.i32(*v));
        w.opt(&i.num_credit_lines, |w, v| w.i32(*v));
        w.opt(&i.credit_utilization, |w, v| w.f64(*v));
        w.opt(&i.debt_to_income, |w, v| w.f64(*v));
        w.opt(&i.total_debt, |w, v| w.f64(*v));
        w.opt(&i.savings, |w, v| w.f64(*v));
        w.opt(&i.loan_amount, |w, v| w.f64(*v));
        w.opt(&i.loan_term, |w, v| w.i32(*v));
        w.opt(&i.num_late_payments, |w, v| w.i32(*v));
        w.opt(&i.num_bankruptcies, |w, v| w.i32(*v));
        w.opt(&i.inquiries_last_6m, |w, v| w.i32(*v));
        w.opt(&i.employment_status, |w, v| w.str(v));
        w.opt(&i.home_ownership, |w, v| w.str(v));
        w.opt(&i.loan_purpose, |w, v| w.str(v));
        match &r.outcome {
            Outcome::Scored(s) => {
                w.u8(0);
                w.f64(s.monthly_payment);
                w.f64(s.payment_to_income);
                w.f64(s.margin);
                w.f64(s.probability_default);
                w.f64(s.risk_score);
                w.str(&s.risk_level);
                w.i32(s.prediction as i32);
            }
            Outcome::Invalid(v) => {
                w.u8(1);
                w.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
                for x in v {
                    w.str(&x.field);
                    w.str(&x.description);
                }
            }
        }
        w.i64(r.latency_us);
    }

    /// Decodes one payload written by [`encode`].
    pub fn decode(buf: &[u8]) -> Result<DecisionRow, DecodeError> {
        let mut r = R(buf);
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let decision_id = r.uuid()?;
        let request_id = r.str()?;
        let application_id = r.str()?;
        let rpc = match r.u8()? {
            0 => Rpc::Unary,
            1 => Rpc::Stream,
            _ => return Err(DecodeError::Invalid("rpc")),
        };
        let stream_id = r.opt(|r| r.uuid())?;
        let stream_position = r.opt(|r| r.i64())?;
        let received_at = r.time()?;
        let decided_at = r.time()?;
        let peer = r.opt(|r| r.str())?;
        let client_id = r.opt(|r| r.str())?;
        let model_version = r.str()?;
        let model_sha256 = r.str()?;
        let inputs = RecordedInputs {
            age: r.opt(|r| r.i32())?,
            income: r.opt(|r| r.f64())?,
            employment_length: r.opt(|r| r.f64())?,
            credit_score: r.opt(|r| r.i32())?,
            num_credit_lines: r.opt(|r| r.i32())?,
            credit_utilization: r.opt(|r| r.f64())?,
            debt_to_income: r.opt(|r| r.f64())?,
            total_debt: r.opt(|r| r.f64())?,
            savings: r.opt(|r| r.f64())?,
            loan_amount: r.opt(|r| r.f64())?,
            loan_term: r.opt(|r| r.i32())?,
            num_late_payments: r.opt(|r| r.i32())?,
            num_bankruptcies: r.opt(|r| r.i32())?,
            inquiries_last_6m: r.opt(|r| r.i32())?,
            employment_status: r.opt(|r| r.str())?,
            home_ownership: r.opt(|r| r.str())?,
            loan_purpose: r.opt(|r| r.str())?,
        };
        let outcome = match r.u8()? {
            0 => Outcome::Scored(ScoredResult {
                monthly_payment: r.f64()?,
                payment_to_income: r.f64()?,
                margin: r.f64()?,
                probability_default: r.f64()?,
                risk_score: r.f64()?,
                risk_level: r.str()?,
                prediction: i16::try_from(r.i32()?)
                    .map_err(|_| DecodeError::Invalid("prediction"))?,
            }),
            1 => {
                let n = u32::from_le_bytes(r.arr()?) as usize;
                let mut v = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    v.push(Violation {
                        field: r.str()?,
                        description: r.str()?,
                    });
                }
                Outcome::Invalid(v)
            }
            _ => return Err(DecodeError::Invalid("outcome")),
        };
        let latency_us = r.i64()?;
        if !r.0.is_empty() {
            return Err(DecodeError::Invalid("trailing bytes"));
        }
        Ok(DecisionRow {
            decision_id,
            request_id,
            application_id,
            rpc,
            stream_id,
            stream_position,
            received_at,
            decided_at,
            peer,
            client_id,
            model_version,
            model_sha256,
            inputs,
            outcome,
            latency_us,
            model_role: "champion".into(),
            shadow_of: None,
            explanation: None,
            trace_id: None,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A varied record for tests: scored when `i` is even, rejected with NaN inputs when odd.
    pub fn sample(i: u64) -> DecisionRow {
        let now = Utc::now();
        let scored = i.is_multiple_of(2);
        DecisionRow {
            decision_id: new_decision_id(),
            request_id: format!("req-{i}"),
            application_id: format!("app-{i}"),
            rpc: if i.is_multiple_of(3) {
                Rpc::Stream
            } else {
                Rpc::Unary
            },
            stream_id: i.is_multiple_of(3).then(Uuid::new_v4),
            stream_position: i.is_multiple_of(3).then_some(i as i64),
            received_at: now,
            decided_at: now,
            peer: Some("127.0.0.1:1234".into()),
            client_id: None,
            model_version: "v1".into(),
            model_sha256: "ab".repeat(32),
            inputs: RecordedInputs {
                age: Some(30 + (i % 50) as i32),
                income: Some(if scored { 50_000.0 } else { f64::NAN }),
                credit_score: (!i.is_multiple_of(5)).then_some(700),
                employment_status: Some(if scored { "employed" } else { "unknown(42)" }.into()),
                ..Default::default()
            },
            outcome: if scored {
                Outcome::Scored(ScoredResult {
                    monthly_payment: 300.5,
                    payment_to_income: 0.07,
                    margin: -1.5,
                    probability_default: 0.18,
                    risk_score: 18.24,
                    risk_level: "low".into(),
                    prediction: 0,
                })
            } else {
                Outcome::Invalid(vec![Violation {
                    field: "income".into(),
                    description: "must be finite\0".into(),
                }])
            },
            latency_us: 42,
            model_role: "champion".into(),
            shadow_of: None,
            explanation: None,
            trace_id: i
                .is_multiple_of(3)
                .then(|| format!("4bf92f3577b34da6a3ce929d0e0e{:04x}", i % 0x10000)),
        }
    }

    #[test]
    fn codec_round_trips_every_value_including_nan() {
        for i in 0..6 {
            // The older codec predates trace ids.
            let r = DecisionRow {
                trace_id: None,
                ..sample(i)
            };
            let mut buf = Vec::new();
            codec::encode(&r, &mut buf);
            let back = codec::decode(&buf).unwrap();
            // NaN != NaN, so compare the bit patterns of income separately.
            assert_eq!(
                r.inputs.income.map(f64::to_bits),
                back.inputs.income.map(f64::to_bits)
            );
            let mut a = r.clone();
            let mut b = back;
            a.inputs.income = None;
            b.inputs.income = None;
            assert_eq!(a, b);
        }
    }

    #[test]
    fn codec_rejects_truncated_and_trailing_payloads() {
        let mut buf = Vec::new();
        codec::encode(&sample(1), &mut buf);
        for cut in [0, 1, 17, buf.len() - 1] {
            assert!(codec::decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        buf.push(0);
        assert!(codec::decode(&buf).is_err());
    }

    #[test]
    fn pg_safe_replaces_nul() {
        assert_eq!(pg_safe("a\0b"), "a\u{FFFD}b");
        assert!(matches!(pg_safe("ab"), std::borrow::Cow::Borrowed(_)));
    }
}
