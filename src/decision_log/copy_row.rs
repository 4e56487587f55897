//! A decision as one row of PostgreSQL's binary `COPY` format: the journal frame's payload,
//! and what the writers stream to the database as is.
//!
//! The server encodes each decision once, straight from its borrowed view of the call
//! ([`encode_view`]): no owned record, no second encoding. The same bytes are appended to the
//! write-ahead journal, queued, and concatenated into the `COPY … FROM STDIN (FORMAT binary)`
//! body ([`copy_body`]). [`decode`] reads a row back, for replay checks, tests and inspection.
//!
//! A row is `i16 field count`, then per column in [`COLUMNS`] order `i32 length` (−1 for NULL)
//! and the value in PostgreSQL's binary send format, all big-endian.

use std::borrow::Cow;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::row::{pg_safe, DecisionRow, Outcome, RecordedInputs, Rpc, ScoredResult, Violation};
use crate::scoring::record as srv;
use cra_model::{explain::Explanation, EmploymentStatus, HomeOwnership, LoanPurpose};

/// The `decisions` columns a row carries, in order, with their types.
pub const COLUMNS: &[(&str, Type)] = &[
    ("decision_id", Type::UUID),
    ("request_id", Type::TEXT),
    ("application_id", Type::TEXT),
    ("rpc", Type::TEXT),
    ("stream_id", Type::UUID),
    ("stream_position", Type::INT8),
    ("received_at", Type::TIMESTAMPTZ),
    ("decided_at", Type::TIMESTAMPTZ),
    ("peer", Type::TEXT),
    ("client_id", Type::TEXT),
    ("model_version", Type::TEXT),
    ("model_sha256", Type::TEXT),
    ("age", Type::INT4),
    ("income", Type::FLOAT8),
    ("employment_length", Type::FLOAT8),
    ("credit_score", Type::INT4),
    ("num_credit_lines", Type::INT4),
    ("credit_utilization", Type::FLOAT8),
    ("debt_to_income", Type::FLOAT8),
    ("total_debt", Type::FLOAT8),
    ("savings", Type::FLOAT8),
    ("loan_amount", Type::FLOAT8),
    ("loan_term", Type::INT4),
    ("num_late_payments", Type::INT4),
    ("num_bankruptcies", Type::INT4),
    ("inquiries_last_6m", Type::INT4),
    ("employment_status", Type::TEXT),
    ("home_ownership", Type::TEXT),
    ("loan_purpose", Type::TEXT),
    ("monthly_payment", Type::FLOAT8),
    ("payment_to_income", Type::FLOAT8),
    ("margin", Type::FLOAT8),
    ("probability_default", Type::FLOAT8),
    ("risk_score", Type::FLOAT8),
    ("risk_level", Type::TEXT),
    ("prediction", Type::INT2),
    ("latency_us", Type::INT8),
    ("outcome", Type::TEXT),
    ("violations", Type::JSONB),
    ("model_role", Type::TEXT),
    ("shadow_of", Type::UUID),
    ("explanation", Type::JSONB),
    ("trace_id", Type::TEXT),
];

const FIELDS: i16 = 43;
/// Rows journaled by older builds: before `model_role`, `shadow_of` and `explanation` existed
/// (migrations V5 and V6) they have the first 39 columns, and are read as the champion's live,
/// unexplained decisions; before `trace_id` (V7), the first 42, read as decisions without a
/// trace.
pub const LEGACY_FIELDS: [i16; 2] = [39, 42];

/// True when `row` starts with the field count of an older build's row.
pub fn is_legacy(row: &[u8]) -> bool {
    row.get(..2)
        .is_some_and(|n| LEGACY_FIELDS.iter().any(|l| n == l.to_be_bytes()))
}
const _: () = assert!(COLUMNS.len() == FIELDS as usize);

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// The header every binary `COPY` stream starts with (signature, flags, extension length).
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Longest client-supplied text (`application_id`, `request_id`) recorded as is, in bytes: the
/// contract's limit for an application id. Longer values are recorded bounded (see
/// [`bounded_id`]), so that no client can make a row PostgreSQL cannot index
/// (`decisions_application_id_idx` refuses an entry over 2,704 bytes).
pub const MAX_RECORDED_ID_BYTES: usize = cra_model::input::MAX_APPLICATION_ID_BYTES;

/// Bytes of an over-long id kept before the hash (cut back to a UTF-8 character boundary).
pub const BOUNDED_ID_PREFIX_BYTES: usize = 200;

/// A client-supplied id as recorded: unchanged up to [`MAX_RECORDED_ID_BYTES`]; beyond, its
/// first [`BOUNDED_ID_PREFIX_BYTES`] bytes (at a character boundary), then `…sha256:` and the
/// first 32 hex digits (128 bits) of the SHA-256 of the whole id. At most 242 bytes, so a
/// bounded id always fits the index, and the hash still tells two long ids apart and lets an
/// operator find one a client quotes (`application_id LIKE '%…sha256:' ||
/// left(encode(sha256(convert_to($1, 'UTF8')), 'hex'), 32)`).
pub fn bounded_id(id: &str) -> Cow<'_, str> {
    use sha2::{Digest, Sha256};
    if id.len() <= MAX_RECORDED_ID_BYTES {
        return Cow::Borrowed(id);
    }
    let mut cut = BOUNDED_ID_PREFIX_BYTES;
    while !id.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = Sha256::digest(id.as_bytes());
    Cow::Owned(format!(
        "{}…sha256:{}",
        &id[..cut],
        &hex::encode(digest)[..32]
    ))
}

/// The comma-separated column list, for the `COPY` statements.
pub fn column_list() -> String {
    COLUMNS
        .iter()
        .map(|(c, _)| *c)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Appends rows to a buffer.
struct W<'a>(&'a mut Vec<u8>);

impl W<'_> {
    fn null(&mut self) {
        self.0.extend_from_slice(&(-1i32).to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(&(v.len() as i32).to_be_bytes());
        self.0.extend_from_slice(v);
    }
    /// Text with NUL (which PostgreSQL text cannot hold) replaced by U+FFFD.
    fn text(&mut self, v: &str) {
        if v.as_bytes().contains(&0) {
            self.bytes(pg_safe(v).as_bytes());
        } else {
            self.bytes(v.as_bytes());
        }
    }
    fn opt_text(&mut self, v: Option<&str>) {
        match v {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }
    /// A trace id as text: 32 lowercase hex digits.
    fn trace_id(&mut self, t: &crate::telemetry::traces::TraceId) {
        self.0.extend_from_slice(&32i32.to_be_bytes());
        self.0.extend_from_slice(&t.hex());
    }
    /// A value written by `f`, with its length filled in afterwards.
    fn with_len(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        f(self.0);
        let len = (self.0.len() - at - 4) as i32;
        self.0[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    fn uuid(&mut self, v: &Uuid) {
        self.bytes(v.as_bytes());
    }
    fn opt_uuid(&mut self, v: Option<&Uuid>) {
        match v {
            Some(u) => self.uuid(u),
            None => self.null(),
        }
    }
    fn i16(&mut self, v: i16) {
        self.bytes(&v.to_be_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.bytes(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.bytes(&v.to_be_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.bytes(&v.to_bits().to_be_bytes());
    }
    fn opt_i32(&mut self, v: Option<i32>) {
        match v {
            Some(x) => self.i32(x),
            None => self.null(),
        }
    }
    fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            Some(x) => self.i64(x),
            None => self.null(),
        }
    }
    fn opt_f64(&mut self, v: Option<f64>) {
        match v {
            Some(x) => self.f64(x),
            None => self.null(),
        }
    }
    /// timestamptz: microseconds since 2000-01-01 UTC (sub-microsecond digits are dropped, as
    /// PostgreSQL would).
    fn time_us(&mut self, unix_us: i64) {
        self.i64(unix_us - PG_EPOCH_US);
    }
    /// jsonb: version 1, then the JSON text.
    fn opt_jsonb_text(&mut self, v: Option<&str>) {
        match v {
            Some(text) => self.with_len(|out| {
                out.push(1);
                out.extend_from_slice(text.as_bytes());
            }),
            None => self.null(),
        }
    }
    fn explanation(&mut self, e: Option<&Explanation>) {
        match e {
            Some(e) => self.with_len(|out| {
                out.push(1);
                serde_json::to_writer(&mut *out, &ExplanationJson(e))
                    .expect("writing JSON to a Vec cannot fail");
            }),
            None => self.null(),
        }
    }
    fn violations<'v>(&mut self, v: impl Iterator<Item = (&'v str, &'v str)>) {
        #[derive(Serialize)]
        struct V<'a> {
            field: Cow<'a, str>,
            description: Cow<'a, str>,
        }
        let list: Vec<V<'_>> = v
            .map(|(f, d)| V {
                field: pg_safe(f),
                description: pg_safe(d),
            })
            .collect();
        self.with_len(|out| {
            out.push(1);
            serde_json::to_writer(&mut *out, &list).expect("writing JSON to a Vec cannot fail");
        });
    }
}

/// The `explanation` column of an explained decision: `{"base_margin": …, "contributions":
/// {"feature": …, …}, "reasons": [{"code", "description", "features", "contribution",
/// "fifth_factor"}, …]}`. Everything a notice needs, with `model_version`, from the log alone.
struct ExplanationJson<'a>(&'a Explanation);

impl Serialize for ExplanationJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Contributions<'a>(&'a Explanation);
        impl Serialize for Contributions<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(
                    self.0
                        .contributions
                        .iter()
                        .map(|c| (c.feature, c.contribution)),
                )
            }
        }
        #[derive(Serialize)]
        struct ReasonJson<'a> {
            code: Cow<'a, str>,
            description: Cow<'a, str>,
            features: &'a [String],
            contribution: f64,
            fifth_factor: bool,
        }
        let reasons: Vec<ReasonJson<'_>> = self
            .0
            .reasons
            .iter()
            .map(|r| ReasonJson {
                code: pg_safe(&r.code),
                description: pg_safe(&r.description),
                features: &r.features,
                contribution: r.contribution,
                fifth_factor: r.fifth_factor,
            })
            .collect();
        let mut st = s.serialize_struct("Explanation", 3)?;
        st.serialize_field("base_margin", &self.0.base_margin)?;
        st.serialize_field("contributions", &Contributions(self.0))?;
        st.serialize_field("reasons", &reasons)?;
        st.end()
    }
}

/// The `explanation` column's JSON text of `e`.
pub fn explanation_json(e: &Explanation) -> String {
    serde_json::to_string(&ExplanationJson(e)).expect("writing JSON to a String cannot fail")
}

fn system_time_us(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

fn chrono_us(t: &DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// An `integer` column from a number as received: NULL unless it is a whole number that fits
/// (a fractional or huge value was refused, and its violation names it).
fn recorded_i32(v: Option<f64>) -> Option<i32> {
    v.filter(|x| x.fract() == 0.0 && *x >= f64::from(i32::MIN) && *x <= f64::from(i32::MAX))
        .map(|x| x as i32)
}

/// Appends the row of one decision as the scoring core describes it (the hot path: no
/// allocation but the violations' JSON of a rejected request and unknown category spellings).
pub fn encode_view(r: &srv::DecisionRecord<'_>, out: &mut Vec<u8>) {
    let mut w = W(out);
    w.0.extend_from_slice(&FIELDS.to_be_bytes());
    w.uuid(&r.decision_id);
    w.text(&bounded_id(r.request_id));
    w.text(&bounded_id(
        r.input.map_or("", |a| a.application_id.as_str()),
    ));
    w.text(r.rpc.as_str());
    match r.rpc.stream() {
        None => {
            w.null();
            w.null();
        }
        Some((stream_id, position)) => {
            w.uuid(&stream_id);
            w.i64(i64::try_from(position).unwrap_or(i64::MAX));
        }
    }
    w.time_us(system_time_us(r.received_at));
    w.time_us(system_time_us(r.decided_at));
    match r.peer {
        Some(p) => w.with_len(|out| {
            let _ = write!(out, "{p}");
        }),
        None => w.null(),
    }
    match r.client_id {
        Some(id) => w.text(id),
        None => w.null(),
    }
    w.text(r.model.version());
    w.text(&r.model.manifest.artifact_sha256);
    match r.input {
        Some(a) => {
            w.opt_i32(recorded_i32(a.age));
            w.opt_f64(a.income);
            w.opt_f64(a.employment_length);
            w.opt_i32(recorded_i32(a.credit_score));
            w.opt_i32(recorded_i32(a.num_credit_lines));
            w.opt_f64(a.credit_utilization);
            w.opt_f64(a.debt_to_income);
            w.opt_f64(a.total_debt);
            w.opt_f64(a.savings);
            w.opt_f64(a.loan_amount);
            w.opt_i32(recorded_i32(a.loan_term));
            w.opt_i32(recorded_i32(a.num_late_payments));
            w.opt_i32(recorded_i32(a.num_bankruptcies));
            w.opt_i32(recorded_i32(a.inquiries_last_6m));
            w.opt_text(
                a.employment_status
                    .recorded::<EmploymentStatus>()
                    .as_deref(),
            );
            w.opt_text(a.home_ownership.recorded::<HomeOwnership>().as_deref());
            w.opt_text(a.loan_purpose.recorded::<LoanPurpose>().as_deref());
        }
        None => (0..17).for_each(|_| w.null()),
    }
    let outcome = match r.outcome {
        srv::Outcome::Scored {
            application,
            decision,
        } => {
            let (monthly_payment, payment_to_income) = r.model.preprocessor().derived(application);
            w.f64(monthly_payment);
            w.f64(payment_to_income);
            w.f64(decision.margin as f64);
            w.f64(decision.probability_default);
            w.f64(decision.risk_score);
            w.text(decision.risk_level.as_str());
            w.i16(decision.prediction as i16);
            None
        }
        srv::Outcome::Invalid { violations } => {
            (0..7).for_each(|_| w.null());
            Some(violations)
        }
    };
    w.i64(i64::try_from(r.latency.as_micros()).unwrap_or(i64::MAX));
    match outcome {
        None => {
            w.text("ok");
            w.null();
        }
        Some(v) => {
            w.text("invalid");
            w.violations(v.iter().map(|x| (x.field.as_ref(), x.description.as_str())));
        }
    }
    w.text(r.role.as_str());
    w.opt_uuid(r.shadow_of.as_ref());
    w.explanation(r.explanation);
    match r.trace_id {
        Some(t) => w.trace_id(&t),
        None => w.null(),
    }
}

/// A row of one of the [`LEGACY_FIELDS`] counts (journaled by an older build) as a row of
/// today's columns, the missing ones filled as that build meant them: a live decision of the
/// champion, unexplained, without a trace.
pub fn upgrade_legacy(buf: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let mut r = R(buf);
    let n = i16::from_be_bytes(r.take(2)?.try_into().expect("2 bytes"));
    if !LEGACY_FIELDS.contains(&n) {
        return Err(DecodeError::FieldCount(n));
    }
    for _ in 0..n {
        r.field()?;
    }
    if !r.0.is_empty() {
        return Err(DecodeError::Invalid("trailing bytes"));
    }
    let mut w = W(out);
    w.0.extend_from_slice(&FIELDS.to_be_bytes());
    w.0.extend_from_slice(&buf[2..]);
    if n == 39 {
        w.text("champion");
        w.null();
        w.null();
    }
    w.null();
    Ok(())
}

/// Appends the row of an owned record (the API of [`super::DecisionLog::record`], and spool
/// segments written in the older record format).
pub fn encode(r: &DecisionRow, out: &mut Vec<u8>) {
    let mut w = W(out);
    w.0.extend_from_slice(&FIELDS.to_be_bytes());
    w.uuid(&r.decision_id);
    w.text(&bounded_id(&r.request_id));
    w.text(&bounded_id(&r.application_id));
    w.text(r.rpc.as_str());
    w.opt_uuid(r.stream_id.as_ref());
    w.opt_i64(r.stream_position);
    w.time_us(chrono_us(&r.received_at));
    w.time_us(chrono_us(&r.decided_at));
    w.opt_text(r.peer.as_deref());
    w.opt_text(r.client_id.as_deref());
    w.text(&r.model_version);
    w.text(&r.model_sha256);
    let i = &r.inputs;
    w.opt_i32(i.age);
    w.opt_f64(i.income);
    w.opt_f64(i.employment_length);
    w.opt_i32(i.credit_score);
    w.opt_i32(i.num_credit_lines);
    w.opt_f64(i.credit_utilization);
    w.opt_f64(i.debt_to_income);
    w.opt_f64(i.total_debt);
    w.opt_f64(i.savings);
    w.opt_f64(i.loan_amount);
    w.opt_i32(i.loan_term);
    w.opt_i32(i.num_late_payments);
    w.opt_i32(i.num_bankruptcies);
    w.opt_i32(i.inquiries_last_6m);
    w.opt_text(i.employment_status.as_deref());
    w.opt_text(i.home_ownership.as_deref());
    w.opt_text(i.loan_purpose.as_deref());
    match &r.outcome {
        Outcome::Scored(s) => {
            w.f64(s.monthly_payment);
            w.f64(s.payment_to_income);
            w.f64(s.margin);
            w.f64(s.probability_default);
            w.f64(s.risk_score);
            w.text(&s.risk_level);
            w.i16(s.prediction);
        }
        Outcome::Invalid(_) => (0..7).for_each(|_| w.null()),
    }
    w.i64(r.latency_us);
    w.text(r.outcome.as_str());
    match &r.outcome {
        Outcome::Scored(_) => w.null(),
        Outcome::Invalid(v) => {
            w.violations(v.iter().map(|x| (x.field.as_str(), x.description.as_str())))
        }
    }
    w.text(&r.model_role);
    w.opt_uuid(r.shadow_of.as_ref());
    w.opt_jsonb_text(r.explanation.as_deref());
    w.opt_text(r.trace_id.as_deref());
}

/// Why a row could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("row ends early")]
    Truncated,
    #[error("row has {0} fields, expected {FIELDS}")]
    FieldCount(i16),
    #[error("invalid {0} in row")]
    Invalid(&'static str),
}

/// Reads the fields of a row in order.
struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    /// The next field's bytes; `None` for NULL.
    fn field(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        let len = i32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes"));
        match len {
            -1 => Ok(None),
            n if n < 0 => Err(DecodeError::Invalid("field length")),
            n => self.take(n as usize).map(Some),
        }
    }
    fn fixed<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<Option<[u8; N]>, DecodeError> {
        self.field()?
            .map(|b| b.try_into().map_err(|_| DecodeError::Invalid(what)))
            .transpose()
    }
    fn opt_uuid(&mut self) -> Result<Option<Uuid>, DecodeError> {
        Ok(self.fixed::<16>("uuid")?.map(Uuid::from_bytes))
    }
    fn opt_i16(&mut self) -> Result<Option<i16>, DecodeError> {
        Ok(self.fixed::<2>("int2")?.map(i16::from_be_bytes))
    }
    fn opt_i32(&mut self) -> Result<Option<i32>, DecodeError> {
        Ok(self.fixed::<4>("int4")?.map(i32::from_be_bytes))
    }
    fn opt_i64(&mut self) -> Result<Option<i64>, DecodeError> {
        Ok(self.fixed::<8>("int8")?.map(i64::from_be_bytes))
    }
    fn opt_f64(&mut self) -> Result<Option<f64>, DecodeError> {
        Ok(self
            .fixed::<8>("float8")?
            .map(|b| f64::from_bits(u64::from_be_bytes(b))))
    }
    fn opt_text(&mut self) -> Result<Option<String>, DecodeError> {
        self.field()?
            .map(|b| {
                std::str::from_utf8(b)
                    .map(str::to_owned)
                    .map_err(|_| DecodeError::Invalid("utf-8"))
            })
            .transpose()
    }
    fn opt_time(&mut self) -> Result<Option<DateTime<Utc>>, DecodeError> {
        self.opt_i64()?
            .map(|us| {
                us.checked_add(PG_EPOCH_US)
                    .and_then(DateTime::from_timestamp_micros)
                    .ok_or(DecodeError::Invalid("timestamp"))
            })
            .transpose()
    }
}

fn required<T>(v: Option<T>, what: &'static str) -> Result<T, DecodeError> {
    v.ok_or(DecodeError::Invalid(what))
}

/// The decision id of a row (its first field), if the row has one; for setting a row aside.
pub fn decision_id_of(row: &[u8]) -> Option<Uuid> {
    let mut r = R(row);
    let n = i16::from_be_bytes(r.take(2).ok()?.try_into().ok()?);
    if n != FIELDS {
        return None;
    }
    r.opt_uuid().ok()?
}

/// Checks that `buf` is exactly one well-formed row of [`FIELDS`] fields (lengths only).
pub fn check(buf: &[u8]) -> Result<(), DecodeError> {
    let mut r = R(buf);
    let n = i16::from_be_bytes(r.take(2)?.try_into().expect("2 bytes"));
    if n != FIELDS {
        return Err(DecodeError::FieldCount(n));
    }
    for _ in 0..FIELDS {
        r.field()?;
    }
    if !r.0.is_empty() {
        return Err(DecodeError::Invalid("trailing bytes"));
    }
    Ok(())
}

/// Reads one row back into a record (timestamps at PostgreSQL's microsecond precision).
pub fn decode(buf: &[u8]) -> Result<DecisionRow, DecodeError> {
    let mut r = R(buf);
    let n = i16::from_be_bytes(r.take(2)?.try_into().expect("2 bytes"));
    if n != FIELDS {
        return Err(DecodeError::FieldCount(n));
    }
    let decision_id = required(r.opt_uuid()?, "decision_id")?;
    let request_id = required(r.opt_text()?, "request_id")?;
    let application_id = required(r.opt_text()?, "application_id")?;
    let rpc = match required(r.opt_text()?, "rpc")?.as_str() {
        "unary" => Rpc::Unary,
        "stream" => Rpc::Stream,
        "offline" => Rpc::Offline,
        "rest" => Rpc::Rest,
        "v2" => Rpc::V2,
        _ => return Err(DecodeError::Invalid("rpc")),
    };
    let stream_id = r.opt_uuid()?;
    let stream_position = r.opt_i64()?;
    let received_at = required(r.opt_time()?, "received_at")?;
    let decided_at = required(r.opt_time()?, "decided_at")?;
    let peer = r.opt_text()?;
    let client_id = r.opt_text()?;
    let model_version = required(r.opt_text()?, "model_version")?;
    let model_sha256 = required(r.opt_text()?, "model_sha256")?;
    let inputs = RecordedInputs {
        age: r.opt_i32()?,
        income: r.opt_f64()?,
        employment_length: r.opt_f64()?,
        credit_score: r.opt_i32()?,
        num_credit_lines: r.opt_i32()?,
        credit_utilization: r.opt_f64()?,
        debt_to_income: r.opt_f64()?,
        total_debt: r.opt_f64()?,
        savings: r.opt_f64()?,
        loan_amount: r.opt_f64()?,
        loan_term: r.opt_i32()?,
        num_late_payments: r.opt_i32()?,
        num_bankruptcies: r.opt_i32()?,
        inquiries_last_6m: r.opt_i32()?,
        employment_status: r.opt_text()?,
        home_ownership: r.opt_text()?,
        loan_purpose: r.opt_text()?,
    };
    let monthly_payment = r.opt_f64()?;
    let payment_to_income = r.opt_f64()?;
    let margin = r.opt_f64()?;
    let probability_default = r.opt_f64()?;
    let risk_score = r.opt_f64()?;
    let risk_level = r.opt_text()?;
    let prediction = r.opt_i16()?;
    let latency_us = required(r.opt_i64()?, "latency_us")?;
    let outcome_text = required(r.opt_text()?, "outcome")?;
    let violations = r.field()?;
    let model_role = required(r.opt_text()?, "model_role")?;
    let shadow_of = r.opt_uuid()?;
    let explanation = match r.field()? {
        None => None,
        Some(json) => {
            let (&1, text) = json.split_first().ok_or(DecodeError::Invalid("jsonb"))? else {
                return Err(DecodeError::Invalid("jsonb version"));
            };
            Some(
                String::from_utf8(text.to_vec())
                    .map_err(|_| DecodeError::Invalid("explanation"))?,
            )
        }
    };
    let trace_id = r.opt_text()?;
    if !r.0.is_empty() {
        return Err(DecodeError::Invalid("trailing bytes"));
    }
    let outcome = match outcome_text.as_str() {
        "ok" => Outcome::Scored(ScoredResult {
            monthly_payment: required(monthly_payment, "monthly_payment")?,
            payment_to_income: required(payment_to_income, "payment_to_income")?,
            margin: required(margin, "margin")?,
            probability_default: required(probability_default, "probability_default")?,
            risk_score: required(risk_score, "risk_score")?,
            risk_level: required(risk_level, "risk_level")?,
            prediction: required(prediction, "prediction")?,
        }),
        "invalid" => {
            let json = required(violations, "violations")?;
            let (&1, text) = json.split_first().ok_or(DecodeError::Invalid("jsonb"))? else {
                return Err(DecodeError::Invalid("jsonb version"));
            };
            Outcome::Invalid(
                serde_json::from_slice::<Vec<Violation>>(text)
                    .map_err(|_| DecodeError::Invalid("violations"))?,
            )
        }
        _ => return Err(DecodeError::Invalid("outcome")),
    };
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
        model_role,
        shadow_of,
        explanation,
        trace_id,
    })
}

/// The body of a `COPY … FROM STDIN (FORMAT binary)` holding `rows` (concatenated rows).
pub fn copy_body(rows: impl IntoIterator<Item = impl AsRef<[u8]>>, size_hint: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(COPY_HEADER.len() + size_hint + 2);
    body.extend_from_slice(COPY_HEADER);
    for r in rows {
        body.extend_from_slice(r.as_ref());
    }
    body.extend_from_slice(&(-1i16).to_be_bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision_log::row::tests::sample;

    /// `r` as PostgreSQL stores it: microsecond timestamps, NUL replaced in text.
    fn as_stored(r: &DecisionRow) -> DecisionRow {
        let mut r = r.clone();
        let us = |t: DateTime<Utc>| DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap();
        r.received_at = us(r.received_at);
        r.decided_at = us(r.decided_at);
        if let Outcome::Invalid(v) = &mut r.outcome {
            for x in v {
                x.description = pg_safe(&x.description).into_owned();
            }
        }
        r
    }

    #[test]
    fn rows_round_trip_every_value_including_nan() {
        for i in 0..6 {
            let r = sample(i);
            let mut buf = Vec::new();
            encode(&r, &mut buf);
            check(&buf).unwrap();
            let back = decode(&buf).unwrap();
            let want = as_stored(&r);
            assert_eq!(
                want.inputs.income.map(f64::to_bits),
                back.inputs.income.map(f64::to_bits)
            );
            let (mut a, mut b) = (want, back);
            a.inputs.income = None;
            b.inputs.income = None;
            assert_eq!(a, b);
        }
    }

    #[test]
    fn truncated_and_trailing_rows_are_rejected() {
        let mut buf = Vec::new();
        encode(&sample(1), &mut buf);
        for cut in [0, 1, 2, 17, buf.len() - 1] {
            assert!(check(&buf[..cut]).is_err(), "cut at {cut}");
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        buf.push(0);
        assert!(check(&buf).is_err());
        assert!(decode(&buf).is_err());
    }

    #[test]
    fn over_long_ids_are_recorded_bounded_and_short_ones_as_is() {
        assert!(matches!(bounded_id("app-1"), Cow::Borrowed("app-1")));
        let max = "x".repeat(MAX_RECORDED_ID_BYTES);
        assert_eq!(bounded_id(&max), max);
        // A multi-byte character straddles the 200-byte cut: the prefix stops before it.
        let long = format!("{}é{}", "a".repeat(199), "z".repeat(3000));
        let b = bounded_id(&long);
        assert!(b.len() <= 242, "{}", b.len());
        assert!(b.starts_with(&"a".repeat(199)), "{b}");
        let hash = b
            .strip_prefix(&format!("{}…sha256:", "a".repeat(199)))
            .unwrap();
        assert_eq!(hash.len(), 32);
        assert!(hash.bytes().all(|c| c.is_ascii_hexdigit()));
        // Two long ids that share their prefix stay apart.
        let other = format!("{}é{}", "a".repeat(199), "y".repeat(3000));
        assert_ne!(bounded_id(&other), b);

        let mut rec = sample(3);
        rec.application_id = long.clone();
        rec.request_id = "r".repeat(5000);
        let mut buf = Vec::new();
        encode(&rec, &mut buf);
        let back = decode(&buf).unwrap();
        assert_eq!(back.application_id, b);
        assert_eq!(back.request_id, bounded_id(&rec.request_id));
        assert!(back.request_id.len() <= 242);
        assert_eq!(decision_id_of(&buf), Some(rec.decision_id));
        assert_eq!(decision_id_of(&buf[..10]), None);
    }

    #[test]
    fn copy_body_has_header_and_trailer() {
        let mut row = Vec::new();
        encode(&sample(0), &mut row);
        let body = copy_body([&row, &row], 2 * row.len());
        assert!(body.starts_with(b"PGCOPY\n\xff\r\n\0"));
        assert_eq!(body.len(), 19 + 2 * row.len() + 2);
        assert_eq!(&body[body.len() - 2..], &[0xff, 0xff]);
    }

    /// Found while writing the fuzz target `spool_rows`, which panicked on this input
    /// (`fuzz/corpus/spool_rows/crash-timestamp-overflow`, one payload after its 2-byte length,
    /// a row of 42 columns, today read as an older build's): a timestamp near the end of `i64`
    /// overflowed when PostgreSQL's epoch was added (a panic with overflow checks, a wrong time
    /// without).
    #[test]
    fn a_timestamp_beyond_any_date_is_refused_not_an_overflow() {
        let found = include_bytes!("../../fuzz/corpus/spool_rows/crash-timestamp-overflow");
        let mut today = Vec::new();
        upgrade_legacy(&found[2..], &mut today).expect("a row of 42 columns");
        let row = &today[..];
        check(row).expect("well-formed");
        assert!(
            matches!(decode(row), Err(DecodeError::Invalid("timestamp"))),
            "{:?}",
            decode(row)
        );
    }
}
