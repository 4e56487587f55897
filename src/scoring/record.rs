//! The hook for the decision log: the scoring core hands every decision, valid or rejected,
//! live or shadow, whatever the entry point, to a [`DecisionRecorder`] before the client sees
//! the answer. The view is neutral: no transport type appears in it.
use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use cra_model::{
    explain::Explanation, Application, ApplicationInput, Decision, FieldViolation, ModelBundle,
};
use uuid::Uuid;

use super::registry::Role;

/// Which entry point produced a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// gRPC `Score`.
    Unary,
    /// An item of a gRPC `ScoreBatch` stream, at `position` (zero-based, across the stream).
    Stream { stream_id: Uuid, position: u64 },
    /// A row of a file scored by `cra score`, at `position` (the zero-based row number); the
    /// run is the "stream".
    Offline { run_id: Uuid, position: u64 },
    /// REST `POST /predict` (`batch: None`), or the item at a position of a
    /// `POST /predict/batch` call (the call is the "stream").
    Rest { batch: Option<(Uuid, u64)> },
    /// A row of an Open Inference Protocol `ModelInfer` call (gRPC or HTTP), at `position`
    /// along the batch dimension; the call is the "stream".
    V2 { call_id: Uuid, position: u64 },
}

impl Rpc {
    /// The value of the `rpc` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Rpc::Unary => "unary",
            Rpc::Stream { .. } => "stream",
            Rpc::Offline { .. } => "offline",
            Rpc::Rest { .. } => "rest",
            Rpc::V2 { .. } => "v2",
        }
    }

    /// The stream (or run) id and the position in it, for the `stream_id` and
    /// `stream_position` columns.
    pub fn stream(self) -> Option<(Uuid, u64)> {
        match self {
            Rpc::Unary => None,
            Rpc::Stream {
                stream_id,
                position,
            } => Some((stream_id, position)),
            Rpc::Offline { run_id, position } => Some((run_id, position)),
            Rpc::Rest { batch } => batch,
            Rpc::V2 { call_id, position } => Some((call_id, position)),
        }
    }

    /// The same entry point, `n` items further on.
    pub fn advanced(self, n: u64) -> Rpc {
        match self {
            Rpc::Unary => Rpc::Unary,
            Rpc::Stream {
                stream_id,
                position,
            } => Rpc::Stream {
                stream_id,
                position: position + n,
            },
            Rpc::Offline { run_id, position } => Rpc::Offline {
                run_id,
                position: position + n,
            },
            Rpc::Rest { batch } => Rpc::Rest {
                batch: batch.map(|(id, position)| (id, position + n)),
            },
            Rpc::V2 { call_id, position } => Rpc::V2 {
                call_id,
                position: position + n,
            },
        }
    }
}

/// The result for one application.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    Scored {
        application: &'a Application,
        decision: &'a Decision,
    },
    Invalid {
        violations: &'a [FieldViolation],
    },
}

/// Everything known about one decision at the moment it is made. Borrowed: a recorder copies
/// what it keeps.
#[derive(Debug, Clone, Copy)]
pub struct DecisionRecord<'a> {
    /// The id returned to the client (UUID v7).
    pub decision_id: Uuid,
    pub request_id: &'a str,
    pub rpc: Rpc,
    pub peer: Option<SocketAddr>,
    /// The authenticated client (`None`: anonymous; see `security`).
    pub client_id: Option<&'a str>,
    pub received_at: SystemTime,
    pub decided_at: SystemTime,
    /// Server time spent on the item (for a stream: on its chunk).
    pub latency: Duration,
    /// The model that decided (for an invalid application: the one it would have gone to).
    pub model: &'a ModelBundle,
    pub role: Role,
    /// For a shadow decision, the live decision it shadows.
    pub shadow_of: Option<Uuid>,
    /// The application exactly as received; `None` when the request had none.
    pub input: Option<&'a ApplicationInput>,
    pub outcome: Outcome<'a>,
    /// The trace of the call (W3C trace id), when it has one.
    pub trace_id: Option<super::TraceId>,
    /// The explanation given (or kept) with the decision, if it was explained.
    pub explanation: Option<&'a Explanation>,
}

/// A record could be neither written nor spooled.
#[derive(Debug, thiserror::Error)]
#[error("decision log unavailable: {0}")]
pub struct RecordError(pub String);

/// Receives every decision. Implementations must not wait on I/O: enqueue and return. An error
/// means the decision cannot be made (the client gets UNAVAILABLE).
pub trait DecisionRecorder: Send + Sync + std::fmt::Debug + 'static {
    /// Records one decision.
    fn record(&self, record: &DecisionRecord<'_>) -> Result<(), RecordError>;

    /// Records the decisions of one stream chunk; an error fails every item of the chunk, so an
    /// implementation should take all or none (the default records them one by one).
    fn record_chunk(&self, records: &[DecisionRecord<'_>]) -> Result<(), RecordError> {
        records.iter().try_for_each(|r| self.record(r))
    }

    /// True while the recorder's backlog is above its high-water mark and it is catching up.
    /// A stream then pauses before its next round, so that a long batch job slows down to the
    /// rate the log can store instead of filling the spool and being refused.
    fn backlogged(&self) -> bool {
        false
    }
}
