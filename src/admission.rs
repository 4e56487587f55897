//! The one concurrency limit of the process, shared by every transport: a call (gRPC unary,
//! REST, Open Inference Protocol) or an open ScoreBatch stream holds a slot while it runs, and
//! a call beyond the limit is refused at once (gRPC RESOURCE_EXHAUSTED, HTTP 429) instead of
//! queueing behind the others.
//!
//! It also gives each call its turn under its client's rate limit ([`Admission::turn`]): a
//! call over the limit waits for its turn, up to `--rate-limit-wait`, holding no slot while it
//! waits, or is refused with when to retry.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{scoring::ScoreError, security::Caller};

#[derive(Debug)]
pub struct Admission {
    /// One permit per call in flight, whatever its transport.
    calls: Arc<Semaphore>,
    max_calls: usize,
    /// One permit per stream, taken on top of a call permit: fewer than `max_calls`, so open
    /// streams always leave slots to single calls.
    streams: Arc<Semaphore>,
    max_streams: usize,
    /// How long a call over its client's rate limit may wait for its turn.
    rate_limit_wait: Duration,
}

impl Admission {
    pub fn new(max_calls: usize, max_streams: usize) -> Admission {
        let max_calls = max_calls.max(1);
        Admission {
            calls: Arc::new(Semaphore::new(max_calls)),
            max_calls,
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            rate_limit_wait: Duration::ZERO,
        }
    }

    /// With calls over their client's rate limit waiting up to `wait` for their turn.
    pub fn with_rate_limit_wait(mut self, wait: Duration) -> Admission {
        self.rate_limit_wait = wait;
        self
    }

    /// Reserves the caller's turn for `n` applications under its rate limit: now, or within
    /// `--rate-limit-wait` and before `deadline`; past that the call is refused with when to
    /// retry. Returns how long to wait for the turn ([`Admission::wait_turn`]); the caller is
    /// then paid up, and the scoring core charges it nothing more.
    pub fn turn(
        &self,
        caller: &mut Caller,
        n: usize,
        deadline: Option<Instant>,
    ) -> Result<Duration, ScoreError> {
        if !caller.is_limited() {
            return Ok(Duration::ZERO);
        }
        let until_deadline = deadline.map_or(Duration::MAX, |at| {
            at.saturating_duration_since(Instant::now())
        });
        caller
            .reserve(n, self.rate_limit_wait.min(until_deadline))
            .map_err(|e| crate::scoring::rate_limited(caller, e))
    }

    /// Waits `wait` out (a turn from [`Admission::turn`]) without holding `permit`'s slot, which
    /// another client's call may use meanwhile, then takes a slot again. Without a wait the
    /// permit is kept.
    pub async fn wait_turn(
        &self,
        wait: Duration,
        permit: OwnedSemaphorePermit,
    ) -> Result<OwnedSemaphorePermit, ScoreError> {
        if wait.is_zero() {
            return Ok(permit);
        }
        drop(permit);
        tokio::time::sleep(wait).await;
        self.admit()
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
