//! The one concurrency limit of the process, shared by every transport: a call (gRPC unary,
//! REST, Open Inference Protocol) or an open ScoreBatch stream holds a slot while it runs, and
//! a call beyond the limit is refused at once (gRPC RESOURCE_EXHAUSTED, HTTP 429) instead of
//! queueing behind the others.
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::scoring::ScoreError;

#[derive(Debug)]
pub struct Admission {
    /// One permit per call in flight, whatever its transport.
    calls: Arc<Semaphore>,
    max_calls: usize,
    /// One permit per stream, taken on top of a call permit: fewer than `max_calls`, so open
    /// streams always leave slots to single calls.
    streams: Arc<Semaphore>,
    max_streams: usize,
}

impl Admission {
    pub fn new(max_calls: usize, max_streams: usize) -> Admission {
        let max_calls = max_calls.max(1);
        Admission {
            calls: Arc::new(Semaphore::new(max_calls)),
            max_calls,
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
        }
    }

    /// Takes a call slot or refuses at once.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ScoreError> {
        self.calls
            .clone()
            .try_acquire_owned()
            .map_err(|_| ScoreError::Overloaded {
                limit: self.max_calls,
                what: "calls",
                flag: "max-concurrent-requests",
            })
    }

    /// Takes a stream slot and a call slot, or refuses at once.
    pub fn admit_stream(&self) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), ScoreError> {
        let stream =
            self.streams
                .clone()
                .try_acquire_owned()
                .map_err(|_| ScoreError::Overloaded {
                    limit: self.max_streams,
                    what: "streams",
                    flag: "max-concurrent-streams",
                })?;
        Ok((stream, self.admit()?))
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.max_calls - self.calls.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_beyond_the_limit_is_refused_and_a_freed_slot_is_reused() {
        let a = Admission::new(2, 1);
        let first = a.admit().unwrap();
        let (_stream, _call) = a.admit_stream().unwrap();
        assert_eq!(a.in_flight(), 2);
        assert!(matches!(
            a.admit(),
            Err(ScoreError::Overloaded { limit: 2, .. })
        ));
        drop(first);
        assert!(a.admit().is_ok());
        assert!(matches!(
            a.admit_stream(),
            Err(ScoreError::Overloaded {
                what: "streams",
                ..
            })
        ));
    }
}
