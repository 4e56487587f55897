//! Rate limits per client, counted in applications (a unary call is one, a batch or a stream
//! round as many as it holds), with governor's GCRA limiters: one state word per client, no
//! background task, no lock on the scoring path.
//!
//! A client's limit is its own in the keys file, else the default (`--rate-limit`, `--burst`);
//! without either it is not limited. A caller with no identity (no keys, no client
//! certificates configured) is limited by its IP address under the default.
use std::{collections::HashMap, net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    clock::{Clock, DefaultClock},
    DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota,
};

use super::caller::ClientId;

/// A rate of applications: `N/s`, `N/m` or `N/h` (N a positive integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rate {
    pub count: u32,
    pub per: Per,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Per {
    Second,
    Minute,
    Hour,
}

impl Per {
    fn duration(self) -> Duration {
        match self {
            Per::Second => Duration::from_secs(1),
            Per::Minute => Duration::from_secs(60),
            Per::Hour => Duration::from_secs(3600),
        }
    }
}

impl Rate {
    /// Applications per second.
    pub fn per_second(self) -> f64 {
        f64::from(self.count) / self.per.duration().as_secs_f64()
    }
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        let bad = || {
            format!("`{s}` is not a rate; write N/s, N/m or N/h with N a positive whole number, e.g. 100/s")
        };
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(bad());
        }
        let per = match unit.trim() {
            "s" => Per::Second,
            "m" => Per::Minute,
            "h" => Per::Hour,
            _ => return Err(bad()),
        };
        Ok(Rate { count, per })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per {
            Per::Second => "s",
            Per::Minute => "m",
            Per::Hour => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl TryFrom<String> for Rate {
    type Error = String;
    fn try_from(s: String) -> Result<Rate, String> {
        s.parse()
    }
}

impl From<Rate> for String {
    fn from(r: Rate) -> String {
        r.to_string()
    }
}

/// A rate and the burst allowed above it (applications that may go at once after a pause).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    pub rate: Rate,
    pub burst: NonZeroU32,
}

impl Limit {
    /// `rate` with `burst`, by default one second's worth of the rate (at least 1).
    pub fn new(rate: Rate, burst: Option<u32>) -> Result<Limit, String> {
        let burst = match burst {
            Some(b) => NonZeroU32::new(b).ok_or("a burst must be at least 1")?,
            None => NonZeroU32::new(rate.per_second().ceil().clamp(1.0, u32::MAX as f64) as u32)
                .unwrap_or(NonZeroU32::MIN),
        };
        Ok(Limit { rate, burst })
    }

    fn quota(self) -> Quota {
        let period = self.rate.per.duration() / self.rate.count;
        Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(self.burst)
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (burst {})", self.rate, self.burst)
    }
}

/// Why a call was not admitted under its client's limit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RateLimited {
    /// Over the limit now; `retry_after` is when the call would pass.
    #[error("the client's rate limit of {limit} is used up; retry after {retry_after:?}")]
    Wait { limit: Limit, retry_after: Duration },
    /// A batch larger than the client's burst can never pass at once.
    #[error("a batch of {n} applications is larger than the client's burst of {burst} ({limit}): send smaller batches, or raise the burst (--burst, or the client's burst in the keys file)", burst = .limit.burst)]
    OverBurst { n: usize, limit: Limit },
}

impl RateLimited {
    /// When the client may retry, if a retry can pass at all.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RateLimited::Wait { retry_after, .. } => Some(*retry_after),
            RateLimited::OverBurst { .. } => None,
        }
    }
}

/// One client's limiter (a client with a limit of its own in the keys file).
#[derive(Debug)]
pub struct Limiter {
    limit: Limit,
    state: DefaultDirectRateLimiter,
}

impl Limiter {
    pub fn new(limit: Limit) -> Limiter {
        Limiter {
            limit,
            state: governor::RateLimiter::direct(limit.quota()),
        }
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }
}

/// The limiters of the clients under the default limit, by client id, and of anonymous callers,
/// by IP address.
#[derive(Debug)]
pub struct SharedLimiters {
    limit: Limit,
    by_client: DefaultKeyedRateLimiter<ClientId>,
    by_ip: DefaultKeyedRateLimiter<IpAddr>,
}

impl SharedLimiters {
    pub fn new(limit: Limit) -> SharedLimiters {
        SharedLimiters {
            limit,
            by_client: governor::RateLimiter::keyed(limit.quota()),
            by_ip: governor::RateLimiter::keyed(limit.quota()),
        }
    }

    /// Forgets the clients and addresses whose state is back to a full burst (memory stays
    /// bounded by the callers of the last moments).
    pub fn forget_idle(&self) {
        self.by_client.retain_recent();
        self.by_client.shrink_to_fit();
        self.by_ip.retain_recent();
        self.by_ip.shrink_to_fit();
    }
}

/// The bucket a call is charged to.
#[derive(Debug, Clone)]
pub enum Bucket {
    Own(Arc<Limiter>),
    Client(Arc<SharedLimiters>, ClientId),
    Ip(Arc<SharedLimiters>, IpAddr),
}

impl Bucket {
    pub fn limit(&self) -> Limit {
        match self {
            Bucket::Own(l) => l.limit,
            Bucket::Client(s, _) | Bucket::Ip(s, _) => s.limit,
        }
    }

    fn check(&self, n: NonZeroU32) -> Result<(), RateLimited> {
        let limit = self.limit();
        let r = match self {
            Bucket::Own(l) => l.state.check_n(n),
            Bucket::Client(s, id) => s.by_client.check_key_n(id, n),
            Bucket::Ip(s, ip) => s.by_ip.check_key_n(ip, n),
        };
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(RateLimited::Wait {
                limit,
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }),
            Err(_) => Err(RateLimited::OverBurst {
                n: n.get() as usize,
                limit,
            }),
        }
    }

    /// Takes `n` applications from the bucket now, or says when to retry.
    pub fn charge(&self, n: usize) -> Result<(), RateLimited> {
        let Some(n) = u32::try_from(n).ok().and_then(NonZeroU32::new) else {
            return if n == 0 {
                Ok(())
            } else {
                Err(RateLimited::OverBurst {
                    n,
                    limit: self.limit(),
                })
            };
        };
        self.check(n)
    }

    /// Waits until `n` applications may go, taking them a burst at a time: the back-pressure
    /// of a stream.
    pub async fn pace(&self, mut n: usize) {
        let burst = self.limit().burst.get() as usize;
        while n > 0 {
            let take = n.min(burst);
            let count = NonZeroU32::new(take as u32).unwrap_or(NonZeroU32::MIN);
            // A take of at most the burst always fits, so the only refusal is "not yet".
            let r = match self {
                Bucket::Own(l) => l.state.until_n_ready(count).await.map(|_| ()),
                Bucket::Client(s, id) => s.by_client.until_key_n_ready(id, count).await.map(|_| ()),
                Bucket::Ip(s, ip) => s.by_ip.until_key_n_ready(ip, count).await.map(|_| ()),
            };
            if r.is_err() {
                return;
            }
            n -= take;
        }
    }
}

/// Every limit of the server: the default one's shared limiters, and the limiters of the
/// clients with a limit of their own (kept across reloads of the keys file while their limit
/// stays the same, so that a reload gives no client a fresh burst).
#[derive(Debug, Default)]
pub struct RateLimits {
    shared: Option<Arc<SharedLimiters>>,
    own: std::sync::Mutex<HashMap<ClientId, Arc<Limiter>>>,
}

impl RateLimits {
    /// With `default` (`--rate-limit`, `--burst`) for clients without a limit of their own;
    /// `None`: those are not limited.
    pub fn new(default: Option<Limit>) -> RateLimits {
        RateLimits {
            shared: default.map(|l| Arc::new(SharedLimiters::new(l))),
            own: Default::default(),
        }
    }

    pub fn default_limit(&self) -> Option<Limit> {
        self.shared.as_ref().map(|s| s.limit)
    }

    pub fn shared(&self) -> Option<&Arc<SharedLimiters>> {
        self.shared.as_ref()
    }

    /// The limiter of a client with `limit` of its own: the one it had if its limit is the
    /// same, else a new one. Clients not named in `keep` are forgotten (after a reload).
    pub fn own(&self, client: &ClientId, limit: Limit) -> Arc<Limiter> {
        let mut own = self.own.lock().unwrap_or_else(|p| p.into_inner());
        match own.get(client) {
            Some(l) if l.limit == limit => l.clone(),
            _ => {
                let l = Arc::new(Limiter::new(limit));
                own.insert(client.clone(), l.clone());
                l
            }
        }
    }

    /// Forgets the own limiters of clients not in `keep` (after a reload of the keys file).
    pub fn retain_own(&self, keep: &dyn Fn(&ClientId) -> bool) {
        let mut own = self.own.lock().unwrap_or_else(|p| p.into_inner());
        own.retain(|id, _| keep(id));
    }

    /// The bucket of a client under the default limit.
    pub fn for_client(&self, client: &ClientId) -> Option<Bucket> {
        self.shared
            .as_ref()
            .map(|s| Bucket::Client(s.clone(), client.clone()))
    }

    /// The bucket of an anonymous caller at `ip`.
    pub fn for_ip(&self, ip: IpAddr) -> Option<Bucket> {
        self.shared.as_ref().map(|s| Bucket::Ip(s.clone(), ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print_back() {
        for s in ["100/s", "6000/m", "1/h"] {
            assert_eq!(s.parse::<Rate>().unwrap().to_string(), s);
        }
        for bad in ["", "100", "0/s", "-1/s", "1.5/s", "10/d", "x/s"] {
            let e = bad.parse::<Rate>().unwrap_err();
            assert!(e.contains("N/s"), "{bad}: {e}");
        }
        let l = Limit::new("250/s".parse().unwrap(), None).unwrap();
        assert_eq!(
            l.burst.get(),
            250,
            "the default burst is one second's worth"
        );
        let l = Limit::new("10/m".parse().unwrap(), None).unwrap();
        assert_eq!(l.burst.get(), 1);
        assert!(Limit::new("10/s".parse().unwrap(), Some(0)).is_err());
    }

    #[test]
    fn a_bucket_admits_its_burst_then_says_when_to_retry() {
        let limit = Limit::new("10/s".parse().unwrap(), Some(5)).unwrap();
        let b = Bucket::Own(Arc::new(Limiter::new(limit)));
        b.charge(3).unwrap();
        b.charge(2).unwrap();
        let e = b.charge(1).unwrap_err();
        let wait = e
            .retry_after()
            .expect("a single application can pass later");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(matches!(
            b.charge(6),
            Err(RateLimited::OverBurst { n: 6, .. })
        ));
        assert!(b.charge(0).is_ok());
    }

    #[test]
    fn shared_limiters_keep_clients_apart() {
        let limits = RateLimits::new(Some(Limit::new("1/h".parse().unwrap(), Some(2)).unwrap()));
        let a = limits.for_client(&ClientId::new("a")).unwrap();
        let b = limits.for_client(&ClientId::new("b")).unwrap();
        a.charge(2).unwrap();
        assert!(a.charge(1).is_err());
        b.charge(2).expect("another client has its own bucket");
        let ip = limits.for_ip("127.0.0.1".parse().unwrap()).unwrap();
        ip.charge(2).unwrap();
        assert!(ip.charge(1).is_err());
    }

    #[tokio::test]
    async fn pace_waits_instead_of_refusing() {
        let limit = Limit::new("200/s".parse().unwrap(), Some(10)).unwrap();
        let b = Bucket::Own(Arc::new(Limiter::new(limit)));
        let started = std::time::Instant::now();
        b.pace(30).await; // 10 at once, then 20 more at 200/s: about 100 ms
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(80), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}
