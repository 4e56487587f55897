//! The hook for the decision log: the server hands every scored item, valid or rejected, unary
//! or streamed, to a [`DecisionRecorder`] before the client sees the answer.
use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use uuid::Uuid;

use crate::{
    contract::{pb, validate::FieldViolation},
    data::Application,
    model::{Decision, ModelBundle},
};

/// Which RPC produced a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Unary,
    /// An item of a ScoreBatch stream, at `position` (zero-based, across the stream).
    Stream {
        stream_id: Uuid,
        position: u64,
    },
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
    /// The id returned to the client in `RiskScore.decision_id` (UUID v7).
    pub decision_id: Uuid,
    pub request_id: &'a str,
    pub rpc: Rpc,
    pub peer: Option<SocketAddr>,
    pub received_at: SystemTime,
    pub decided_at: SystemTime,
    /// Server time spent on the item (for a stream: on its chunk).
    pub latency: Duration,
    pub model: &'a ModelBundle,
    /// The application exactly as received; `None` when the request had none.
    pub input: Option<&'a pb::CreditApplication>,
    pub outcome: Outcome<'a>,
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
    /// A ScoreBatch stream then pauses before its next round, so that a long batch job slows
    /// down to the rate the log can store instead of filling the spool and being refused.
    fn backlogged(&self) -> bool {
        false
    }
}
