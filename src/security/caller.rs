//! [`Caller`]: who a call comes from, established once by the authentication layer of its port
//! and handed to the scoring path, which records the client id in every decision row and
//! charges the caller's rate limit.
use std::{sync::Arc, time::Duration};

use super::rate::{Bucket, RateLimited};

/// A client's id: the client of an API key, or the identity of a client certificate (its
/// subject CN, else its first DNS name). It is the `client_id` of the decision rows.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    pub fn new(id: &str) -> ClientId {
        ClientId(Arc::from(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// Nothing is configured to prove (no `--api-keys`, no `--tls-client-ca`): anonymous.
    None,
    ApiKey,
    Certificate,
}

impl Credential {
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::None => "none",
            Credential::ApiKey => "api_key",
            Credential::Certificate => "certificate",
        }
    }
}

/// Who a call comes from, and the rate-limit bucket it is charged to.
#[derive(Debug, Clone)]
pub struct Caller {
    client_id: Option<ClientId>,
    credential: Credential,
    bucket: Option<Bucket>,
}

impl Caller {
    /// A caller without identity or limit: `cra score`, and tests that build a context by hand.
    pub const ANONYMOUS: Caller = Caller {
        client_id: None,
        credential: Credential::None,
        bucket: None,
    };

    /// [`Caller::ANONYMOUS`], borrowed for as long as needed.
    pub fn anonymous() -> &'static Caller {
        static ANONYMOUS: Caller = Caller::ANONYMOUS;
        &ANONYMOUS
    }

    pub fn new(
        client_id: Option<ClientId>,
        credential: Credential,
        bucket: Option<Bucket>,
    ) -> Self {
        Caller {
            client_id,
            credential,
            bucket,
        }
    }

    /// The client id recorded in the decision rows; `None` for an anonymous caller.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_ref().map(ClientId::as_str)
    }

    pub fn id(&self) -> Option<&ClientId> {
        self.client_id.as_ref()
    }

    pub fn credential(&self) -> Credential {
        self.credential
    }

    /// Takes `n` applications from the caller's rate limit now, or says when to retry.
    pub fn charge(&self, n: usize) -> Result<(), RateLimited> {
        match &self.bucket {
            Some(b) => b.charge(n),
            None => Ok(()),
        }
    }

    /// Reserves `n` applications under the caller's rate limit, now or in a turn at most
    /// `max_wait` away, and says how long to wait for it. The caller is then paid up for this
    /// call: it carries no bucket any more, so the scoring core charges it nothing.
    pub fn reserve(&mut self, n: usize, max_wait: Duration) -> Result<Duration, RateLimited> {
        let Some(bucket) = &self.bucket else {
            return Ok(Duration::ZERO);
        };
        let turn = bucket.reserve(n, max_wait)?;
        self.bucket = None;
        Ok(turn.wait)
    }

    /// Waits until the caller's rate limit lets `n` more applications go (streams).
    pub async fn pace(&self, n: usize) {
        if let Some(b) = &self.bucket {
            b.pace(n).await;
        }
    }

    /// Whether a rate limit applies to this caller.
    pub fn is_limited(&self) -> bool {
        self.bucket.is_some()
    }
}
