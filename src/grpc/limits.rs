//! Per-method message limits of `creditrisk.v1.CreditRiskService`, applied to the request body
//! as it arrives, before tonic buffers or decodes a message.
//!
//! tonic has one receive limit per service; Score needs a small one and ScoreBatch a large one
//! plus a cap on the applications per message. [`MessageLimits::wrap`] puts a scanner in front
//! of the generated service that reads each gRPC frame header (5 bytes: compression flag and
//! length) and refuses a message over its method's limit before any of it is buffered. For
//! ScoreBatch it also walks the top-level protobuf fields of each message as the bytes pass by
//! and counts the `applications` entries (field 1), so a message of millions of tiny
//! applications is refused after the first `max_batch_items + 1` of them: nothing is decoded,
//! validated, scored or recorded. The scanner keeps a few bytes of state per call and never
//! copies the body.
//!
//! The largest answer follows from the cap: see [`MAX_BATCH_RESULT_BYTES`] and
//! [`batch_response_limit`].
use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::{
    body::Body,
    codegen::{http, Service},
    server::NamedService,
    Status,
};

use super::status::ServeError;

/// Path of the unary Score method.
pub const SCORE_PATH: &str = "/creditrisk.v1.CreditRiskService/Score";
/// Path of the ScoreBatch stream.
pub const SCORE_BATCH_PATH: &str = "/creditrisk.v1.CreditRiskService/ScoreBatch";

/// Upper bound on the encoded size of one `BatchResult` (and of one `RiskScore` or `ItemError`)
/// that this server sends: the application id echoed only when it is at most 256 bytes, the
/// request id at most 128, the model version at most [`MAX_MODEL_VERSION_BYTES`], item error
/// messages at most [`super::status::MAX_ITEM_MESSAGE_BYTES`], and violation descriptions that
/// write numbers compactly. A unit test builds the largest result it can and checks it fits.
pub const MAX_BATCH_RESULT_BYTES: usize = 4096;

/// Longest model version a bundle may have to be served (it is in every answer).
pub use crate::scoring::registry::MAX_MODEL_VERSION_BYTES;

/// Largest allowed `--max-batch-items`: keeps the largest answer message near 400 MiB.
pub const MAX_BATCH_ITEMS_LIMIT: usize = 100_000;

/// Smallest send limit, for GetModelInfo (a few KiB) and small caps.
const MIN_SEND_LIMIT: usize = 4 << 20;

/// The largest ScoreBatch answer message to a request message of at most `items` applications:
/// each result is at most [`MAX_BATCH_RESULT_BYTES`] plus 3 bytes of tag and length.
pub fn batch_response_limit(items: usize) -> usize {
    items
        .saturating_mul(MAX_BATCH_RESULT_BYTES + 3)
        .max(MIN_SEND_LIMIT)
}

/// The receive limits of the scoring service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    /// Largest Score / GetModelInfo request message, in bytes.
    pub unary_message_bytes: usize,
    /// Largest ScoreBatch request message, in bytes.
    pub batch_message_bytes: usize,
    /// Most applications in one ScoreBatch request message.
    pub batch_items: usize,
    /// Most bytes of ScoreBatch messages being received at once, over every stream: each
    /// message reserves its length when its header arrives and gives it back once it has
    /// passed whole (tonic then decodes it), so one client opening many streams cannot make
    /// the server buffer `streams × max message` bytes.
    pub buffered_bytes: usize,
}

/// The bytes of ScoreBatch messages being received, shared by every request body.
#[derive(Debug, Clone)]
struct Budget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl Budget {
    fn try_take(&self, n: usize) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(n) > self.limit {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

impl MessageLimits {
    /// The largest message any method accepts (tonic's own, service-wide limit).
    pub fn largest_message(&self) -> usize {
        self.unary_message_bytes.max(self.batch_message_bytes)
    }

    /// `service` with these limits applied to every request body.
    pub fn wrap<S>(self, service: S) -> Limited<S> {
        Limited {
            inner: service,
            limits: self,
            budget: self.budget(),
        }
    }

    fn budget(&self) -> Budget {
        Budget {
            used: Arc::new(AtomicUsize::new(0)),
            limit: self.buffered_bytes,
        }
    }

    fn scanner(&self, path: &str, budget: &Budget) -> FrameScanner {
        if path == SCORE_BATCH_PATH {
            let mut s = FrameScanner::new(
                "ScoreBatch",
                self.batch_message_bytes,
                "max-message-bytes",
                Some(self.batch_items),
            );
            s.budget = Some(budget.clone());
            s
        } else {
            let method = if path == SCORE_PATH { "Score" } else { "unary" };
            FrameScanner::new(
                method,
                self.unary_message_bytes,
                "max-unary-message-bytes",
                None,
            )
        }
    }
}

/// A gRPC service whose request bodies pass through a [`FrameScanner`].
#[derive(Debug, Clone)]
pub struct Limited<S> {
    inner: S,
    limits: MessageLimits,
    budget: Budget,
}

impl<S: NamedService> NamedService for Limited<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Limited<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let scanner = self.limits.scanner(req.uri().path(), &self.budget);
        self.inner.call(req.map(|body| {
            Body::new(ScannedBody {
                inner: body,
                scanner,
                failed: false,
            })
        }))
    }
}

/// A request body checked by its scanner; the first violation ends it with that status.
struct ScannedBody {
    inner: Body,
    scanner: FrameScanner,
    failed: bool,
}

impl HttpBody for ScannedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame {
            if let Some(data) = frame.data_ref() {
                if let Err(status) = this.scanner.scan(data) {
                    this.failed = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Follows the gRPC framing of one request body: checks each message's length against the
/// method's limit and, for ScoreBatch, counts the applications of each message.
#[derive(Debug)]
struct FrameScanner {
    method: &'static str,
    max_message_bytes: usize,
    size_flag: &'static str,
    max_items: Option<usize>,
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message not yet seen; 0 between messages.
    remaining: usize,
    /// The current message's field walk (ScoreBatch, uncompressed messages only).
    fields: Option<FieldWalk>,
    /// The server-wide receive budget (ScoreBatch), and what the current message holds of it.
    budget: Option<Budget>,
    held: usize,
}

impl Drop for FrameScanner {
    fn drop(&mut self) {
        self.release();
    }
}

impl FrameScanner {
    fn new(
        method: &'static str,
        max_message_bytes: usize,
        size_flag: &'static str,
        max_items: Option<usize>,
    ) -> Self {
        FrameScanner {
            method,
            max_message_bytes,
            size_flag,
            max_items,
            header: [0; 5],
            header_len: 0,
            remaining: 0,
            fields: None,
            budget: None,
            held: 0,
        }
    }

    /// Gives the current message's share of the budget back.
    fn release(&mut self) {
        if let Some(b) = &self.budget {
            if self.held > 0 {
                b.give_back(self.held);
            }
        }
        self.held = 0;
    }

    fn scan(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining == 0 {
                // Between messages: collect the 5-byte frame header.
                self.header[self.header_len] = data[0];
                self.header_len += 1;
                data = &data[1..];
                if self.header_len < 5 {
                    continue;
                }
                self.header_len = 0;
                let compressed = self.header[0] != 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                if len > self.max_message_bytes {
                    return Err(ServeError::MessageTooLarge {
                        method: self.method,
                        bytes: len,
                        limit: self.max_message_bytes,
                        flag: self.size_flag,
                    }
                    .into());
                }
                if let Some(b) = &self.budget {
                    if !b.try_take(len) {
                        return Err(ServeError::BufferBudget { limit: b.limit }.into());
                    }
                    self.held = len;
                }
                self.remaining = len;
                // A compressed message cannot be walked; tonic refuses it (no compression is
                // enabled), and its decompressed size is capped by the message limit anyway.
                self.fields = match self.max_items {
                    Some(_) if !compressed && len > 0 => Some(FieldWalk::default()),
                    _ => None,
                };
                continue;
            }
            let take = self.remaining.min(data.len());
            if let (Some(walk), Some(max)) = (&mut self.fields, self.max_items) {
                walk.walk(&data[..take]);
                if walk.items > max {
                    return Err(ServeError::TooManyItems {
                        limit: max,
                        field: "applications",
                    }
                    .into());
                }
            }
            self.remaining -= take;
            data = &data[take..];
            if self.remaining == 0 {
                self.fields = None;
                self.release();
            }
        }
        Ok(())
    }
}

/// Where a walk over protobuf fields is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WalkState {
    /// Reading a field key (varint).
    Key { value: u64, shift: u32 },
    /// Skipping a varint value.
    Varint,
    /// Reading the length of a length-delimited field.
    Len { value: u64, shift: u32 },
    /// Skipping this many bytes of a value.
    Skip(u64),
    /// The message is malformed in a way prost refuses: stop counting, decoding fails anyway.
    Broken,
}

/// Walks the top-level fields of one ScoreBatchRequest, chunk by chunk, and counts the
/// entries of field 1 (`applications`, length-delimited) outside any group: exactly the
/// number of applications prost would decode from a message it accepts.
#[derive(Debug, Clone, Copy)]
struct FieldWalk {
    state: WalkState,
    /// Depth of nested (deprecated) groups; fields inside a group are not applications.
    depth: u32,
    items: usize,
}

impl Default for FieldWalk {
    fn default() -> Self {
        FieldWalk {
            state: WalkState::Key { value: 0, shift: 0 },
            depth: 0,
            items: 0,
        }
    }
}

impl FieldWalk {
    fn walk(&mut self, mut data: &[u8]) {
        const KEY: WalkState = WalkState::Key { value: 0, shift: 0 };
        while let Some(&b) = data.first() {
            match &mut self.state {
                WalkState::Broken => return,
                WalkState::Skip(n) => {
                    let take = (*n).min(data.len() as u64);
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = KEY;
                    }
                    continue;
                }
                WalkState::Varint => {
                    if b & 0x80 == 0 {
                        self.state = KEY;
                    }
                }
                WalkState::Key { value, shift } | WalkState::Len { value, shift } => {
                    if *shift > 63 {
                        self.state = WalkState::Broken;
                        return;
                    }
                    *value |= u64::from(b & 0x7f) << *shift;
                    *shift += 7;
                    if b & 0x80 == 0 {
                        let value = *value;
                        let was_key = matches!(self.state, WalkState::Key { .. });
                        self.state = if was_key {
                            self.field(value)
                        } else if value == 0 {
                            KEY
                        } else {
                            WalkState::Skip(value)
                        };
                    }
                }
            }
            data = &data[1..];
        }
    }

    /// The state after a complete field key.
    fn field(&mut self, key: u64) -> WalkState {
        const KEY: WalkState = WalkState::Key { value: 0, shift: 0 };
        let (number, wire_type) = (key >> 3, key & 7);
        if number == 0 {
            return WalkState::Broken;
        }
        match wire_type {
            0 => WalkState::Varint,
            1 => WalkState::Skip(8),
            2 => {
                if number == 1 && self.depth == 0 {
                    self.items += 1;
                }
                WalkState::Len { value: 0, shift: 0 }
            }
            3 => {
                self.depth += 1;
                KEY
            }
            4 if self.depth > 0 => {
                self.depth -= 1;
                KEY
            }
            5 => WalkState::Skip(4),
            _ => WalkState::Broken,
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::{
        grpc::{
            convert::{self as validate, risk_score_to_pb, ScoreContext},
            pb,
            status::{invalid_item_error, GrpcError, ServeError},
        },
        scoring::{RecordError, Role},
    };
    use cra_model::{input::MAX_APPLICATION_ID_BYTES, Application, Decision, RiskLevel};

    /// gRPC frames (uncompressed) of `messages`.
    fn frames(messages: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            out.push(0);
            out.extend_from_slice(&(m.len() as u32).to_be_bytes());
            out.extend_from_slice(m);
        }
        out
    }

    fn limits(max_bytes: usize, max_items: usize, buffered: usize) -> MessageLimits {
        MessageLimits {
            unary_message_bytes: 100,
            batch_message_bytes: max_bytes,
            batch_items: max_items,
            buffered_bytes: buffered,
        }
    }

    fn batch_scanner(max_bytes: usize, max_items: usize) -> FrameScanner {
        let l = limits(max_bytes, max_items, usize::MAX);
        l.scanner(SCORE_BATCH_PATH, &l.budget())
    }

    #[test]
    fn messages_being_received_share_one_byte_budget() {
        let l = limits(1 << 20, 10, 1500);
        let budget = l.budget();
        let header = |len: u32| {
            let mut h = vec![0u8];
            h.extend_from_slice(&len.to_be_bytes());
            h
        };
        // Stream 1 announces 1,000 bytes and sends half of them: 1,000 are held.
        let mut a = l.scanner(SCORE_BATCH_PATH, &budget);
        a.scan(&header(1000)).unwrap();
        a.scan(&[0u8; 500]).unwrap();
        assert_eq!(budget.used.load(Ordering::SeqCst), 1000);
        // Stream 2's 1,000-byte message does not fit beside it: refused before it is read.
        let mut b = l.scanner(SCORE_BATCH_PATH, &budget);
        let err = b.scan(&header(1000)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(
            err.message().contains("--max-buffered-message-bytes"),
            "{err:?}"
        );
        // Once stream 1's message has passed whole, its share is back.
        a.scan(&[0u8; 500]).unwrap();
        assert_eq!(budget.used.load(Ordering::SeqCst), 0);
        let mut c = l.scanner(SCORE_BATCH_PATH, &budget);
        c.scan(&header(1000)).unwrap();
        assert_eq!(budget.used.load(Ordering::SeqCst), 1000);
        // A stream that ends mid-message gives its share back too.
        drop(c);
        assert_eq!(budget.used.load(Ordering::SeqCst), 0);
        // Unary calls do not use the budget.
        let mut u = l.scanner(SCORE_PATH, &budget);
        u.scan(&header(50)).unwrap();
        assert_eq!(budget.used.load(Ordering::SeqCst), 0);
    }

    /// Feeds `bytes` to the scanner in chunks of `chunk` bytes.
    fn scan_in_chunks(s: &mut FrameScanner, bytes: &[u8], chunk: usize) -> Result<(), Status> {
        bytes.chunks(chunk).try_for_each(|c| s.scan(c))
    }

    fn counted(message: &[u8]) -> usize {
        let mut w = FieldWalk::default();
        w.walk(message);
        w.items
    }

    #[test]
    fn the_walk_counts_exactly_what_prost_decodes() {
        let apps = validate::application_to_pb(&Application::example(), "id-1");
        for n in [0, 1, 2, 7, 300] {
            let msg = pb::ScoreBatchRequest {
                explain: false,
                applications: vec![apps.clone(); n],
            }
            .encode_to_vec();
            assert_eq!(counted(&msg), n);
            // Byte by byte, the same.
            let mut w = FieldWalk::default();
            for b in &msg {
                w.walk(std::slice::from_ref(b));
            }
            assert_eq!(w.items, n);
        }
        // Empty applications: 2 bytes each.
        assert_eq!(counted(&[0x0a, 0x00].repeat(1000)), 1000);
        // Unknown fields of every wire type are skipped, not counted.
        let mut msg = vec![];
        msg.extend([0x10, 0x96, 0x01]); // field 2, varint
        msg.extend([0x19, 1, 2, 3, 4, 5, 6, 7, 8]); // field 3, fixed64
        msg.extend([0x25, 1, 2, 3, 4]); // field 4, fixed32
        msg.extend([0x2a, 0x03, 0x0a, 0x00, 0x00]); // field 5, bytes holding a field-1 lookalike
        msg.extend([0x0a, 0x00]); // one application
        msg.extend([0x33, 0x0a, 0x00, 0x34]); // a group (field 6) holding a field 1
        msg.extend([0x0a, 0x02, 0x10, 0x01]); // a second application (age 1)
        assert_eq!(counted(&msg), 2);
        let decoded = pb::ScoreBatchRequest::decode(msg.as_slice()).unwrap();
        assert_eq!(decoded.applications.len(), 2);
    }

    #[test]
    fn a_message_over_the_item_cap_is_refused_as_soon_as_the_cap_is_passed() {
        let ok = frames(&[[0x0a, 0x00].repeat(10)]);
        let mut s = batch_scanner(1 << 20, 10);
        scan_in_chunks(&mut s, &ok, 3).unwrap();
        // Two messages at the cap are fine: the count is per message.
        let mut s = batch_scanner(1 << 20, 10);
        scan_in_chunks(
            &mut s,
            &frames(&[[0x0a, 0x00].repeat(10), [0x0a, 0x00].repeat(10)]),
            7,
        )
        .unwrap();

        let over = frames(&[[0x0a, 0x00].repeat(4_000_000)]);
        let mut s = batch_scanner(16 << 20, 10);
        let mut seen = 0;
        let err = over
            .chunks(16 * 1024)
            .try_for_each(|c| {
                seen += c.len();
                s.scan(c)
            })
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("--max-batch-items"), "{err:?}");
        assert_eq!(seen, 16 * 1024, "refused in the first chunk");
    }

    #[test]
    fn a_message_over_its_methods_size_limit_is_refused_from_its_header() {
        let mut s = batch_scanner(1000, 10);
        let err = s.scan(&[0, 0, 0, 0x03, 0xe9]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("--max-message-bytes"), "{err:?}");

        let limits = MessageLimits {
            unary_message_bytes: 64 * 1024,
            batch_message_bytes: 16 << 20,
            batch_items: 10,
            buffered_bytes: 16 << 20,
        };
        let budget = limits.budget();
        let mut s = limits.scanner(SCORE_PATH, &budget);
        // Split header: 12 MB.
        s.scan(&[0, 0]).unwrap();
        let err = s.scan(&[0xb7, 0x1b, 0x00]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("--max-unary-message-bytes")
                && err.message().contains("12000000"),
            "{err:?}"
        );
        // A unary message of millions of fields is not walked (Score has one application).
        let mut s = limits.scanner(SCORE_PATH, &budget);
        scan_in_chunks(&mut s, &frames(&[[0x0a, 0x00].repeat(1000)]), 100).unwrap();
    }

    /// The largest result this server can send for one application, built field by field from
    /// the worst case of each part.
    fn largest_results() -> Vec<pb::BatchResult> {
        let long_id = "é".repeat(MAX_APPLICATION_ID_BYTES / 2);
        assert_eq!(long_id.len(), MAX_APPLICATION_ID_BYTES);
        // Every field invalid, each with the longest description the validator writes.
        let mut worst_violations = Vec::new();
        for (int, real, enumerated) in [
            (i32::MIN, f64::MIN, i32::MIN),
            (i32::MAX, f64::MAX, i32::MAX),
            (-1, -f64::MIN_POSITIVE, -1),
            (-1, -5e-324, 99),
            (-1, f64::NAN, 0),
            (-1, -1.2345678901234567e-300, -1_000_000_000),
        ] {
            let a = pb::CreditApplication {
                application_id: "x".repeat(1 << 20),
                age: int,
                income: real,
                employment_length: real,
                credit_score: Some(int),
                num_credit_lines: Some(int),
                credit_utilization: Some(real),
                debt_to_income: real,
                total_debt: real,
                savings: real,
                loan_amount: real,
                loan_term: int,
                num_late_payments: Some(int),
                num_bankruptcies: Some(int),
                inquiries_last_6m: Some(int),
                employment_status: enumerated,
                home_ownership: enumerated,
                loan_purpose: enumerated,
            };
            let v = validate::validate(&a).unwrap_err();
            assert_eq!(v.len(), 18, "every field is reported");
            worst_violations.push(v);
        }
        let decision = Decision {
            probability_default: -f64::MIN_POSITIVE,
            margin: f32::MIN,
            risk_score: f64::MAX,
            prediction: 1,
            risk_level: RiskLevel::High,
        };
        let request_id = "r".repeat(128);
        let model_version = "m".repeat(MAX_MODEL_VERSION_BYTES);
        let decision_id = uuid::Uuid::max().to_string();
        let score = risk_score_to_pb(
            &decision,
            &ScoreContext {
                request_id: &request_id,
                application_id: &long_id,
                decision_id: &decision_id,
                model_version: &model_version,
                model_role: Role::Challenger,
                explanation: None,
                processing_time: std::time::Duration::MAX,
                scored_at: std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(u32::MAX as u64 * 100),
            },
        );
        let mut results = Vec::new();
        let result = |r| pb::BatchResult {
            position: u64::MAX,
            application_id: long_id.clone(),
            result: Some(r),
        };
        results.push(result(pb::batch_result::Result::Score(score)));
        for v in &worst_violations {
            results.push(result(pb::batch_result::Result::Error(invalid_item_error(
                v,
            ))));
        }
        let unrecorded = ServeError::Unrecorded(RecordError("é".repeat(100_000)));
        results.push(result(pb::batch_result::Result::Error(
            unrecorded.to_item_error(),
        )));
        results
    }

    #[test]
    fn every_result_fits_the_bound_the_send_limit_is_derived_from() {
        let mut largest = 0;
        for r in largest_results() {
            let len = r.encoded_len();
            assert!(
                len <= MAX_BATCH_RESULT_BYTES,
                "a result of {len} bytes is over MAX_BATCH_RESULT_BYTES ({MAX_BATCH_RESULT_BYTES})"
            );
            largest = largest.max(len);
        }
        eprintln!("largest BatchResult: {largest} bytes");
        // A full answer message to the largest allowed request fits the send limit.
        let worst = largest_results()
            .into_iter()
            .max_by_key(|r| r.encoded_len())
            .unwrap();
        let items = 1_000;
        let answer = pb::ScoreBatchResponse {
            results: vec![worst; items],
        };
        assert!(answer.encoded_len() <= items * (MAX_BATCH_RESULT_BYTES + 3));
        assert!(answer.encoded_len() <= batch_response_limit(items));
    }
}
