//! Rate limits per client, counted in applications (a unary call is one, a batch or a stream
//! round as many as it holds), by the generic cell rate algorithm (GCRA, as governor and
//! Redis' `CL.THROTTLE` use it): one word of state per client, its "theoretical arrival
//! time", no background task.
//!
//! Unlike governor's limiters, a take here can *reserve* a turn in the future: a call over its
//! client's limit may wait for its turn (up to `--rate-limit-wait`, as nginx's `limit_req`
//! queues a burst) instead of being refused at once. That is what keeps one client at full
//! speed from hurting another: a client whose calls wait sends no more than its rate, where one
//! whose calls are refused at once sends refusals as fast as the server can answer them, and
//! those answers are other clients' CPU. Waiters do not poll: each knows its turn when it
//! reserves it.
//!
//! A client's limit is its own in the keys file, else the default (`--rate-limit`, `--burst`);
//! without either it is not limited. A caller with no identity (no keys, no client
//! certificates configured) is limited by its IP address under the default.
use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
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

    /// Nanoseconds per application (at least 1).
    fn interval(self) -> u64 {
        let period = self.rate.per.duration() / self.rate.count;
        (period.as_nanos() as u64).max(1)
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

/// Nanoseconds since this process's first use of a limiter: the clock of every limiter.
fn now() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A turn taken from a bucket: how long the caller waits for it (zero: it goes now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    pub wait: Duration,
}

/// One GCRA step on the state `tat` (the time, in [`now`]'s nanoseconds, at which the bucket
/// is full again): takes `n` applications at `now`, waiting at most `max_wait` for them.
/// On refusal the state is unchanged and the error says when the take would pass.
fn take(
    limit: Limit,
    tat: &mut u64,
    now: u64,
    n: usize,
    max_wait: Duration,
) -> Result<Turn, RateLimited> {
    if n == 0 {
        return Ok(Turn {
            wait: Duration::ZERO,
        });
    }
    if n > limit.burst.get() as usize {
        return Err(RateLimited::OverBurst { n, limit });
    }
    let interval = limit.interval();
    // The bucket holds `burst` applications: it may run that far ahead of the clock.
    let tolerance = interval.saturating_mul(u64::from(limit.burst.get()));
    let after = (*tat)
        .max(now)
        .saturating_add(interval.saturating_mul(n as u64));
    let wait = Duration::from_nanos(after.saturating_sub(tolerance).saturating_sub(now));
    if wait > max_wait {
        return Err(RateLimited::Wait {
            limit,
            retry_after: wait,
        });
    }
    *tat = after;
    Ok(Turn { wait })
}

/// One client's limiter (a client with a limit of its own in the keys file).
#[derive(Debug)]
pub struct Limiter {
    limit: Limit,
    tat: Mutex<u64>,
}

impl Limiter {
    pub fn new(limit: Limit) -> Limiter {
        Limiter {
            limit,
            tat: Mutex::new(0),
        }
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }

    fn take(&self, n: usize, max_wait: Duration) -> Result<Turn, RateLimited> {
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        take(self.limit, &mut tat, now(), n, max_wait)
    }
}

/// The states of many callers under one limit, by key; a caller whose bucket is full again is
/// the same as one never seen, so [`Keyed::forget_idle`] drops it.
#[derive(Debug)]
struct Keyed<K> {
    tat: Mutex<HashMap<K, u64>>,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new() -> Keyed<K> {
        Keyed {
            tat: Mutex::new(HashMap::new()),
        }
    }

    fn take(
        &self,
        limit: Limit,
        key: &K,
        n: usize,
        max_wait: Duration,
    ) -> Result<Turn, RateLimited> {
        let mut states = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let now = now();
        match states.get_mut(key) {
            Some(tat) => take(limit, tat, now, n, max_wait),
            None => {
                let mut tat = 0;
                let turn = take(limit, &mut tat, now, n, max_wait)?;
                states.insert(key.clone(), tat);
                Ok(turn)
            }
        }
    }

    fn forget_idle(&self) {
        let mut states = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let now = now();
        states.retain(|_, tat| *tat > now);
        states.shrink_to_fit();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tat.lock().unwrap().len()
    }
}

/// The limiters of the clients under the default limit, by client id, and of anonymous callers,
/// by IP address.
#[derive(Debug)]
pub struct SharedLimiters {
    limit: Limit,
    by_client: Keyed<ClientId>,
    by_ip: Keyed<IpAddr>,
}

impl SharedLimiters {
    pub fn new(limit: Limit) -> SharedLimiters {
        SharedLimiters {
            limit,
            by_client: Keyed::new(),
            by_ip: Keyed::new(),
        }
    }

    /// Forgets the clients and addresses whose bucket is full again (memory stays bounded by
    /// the callers of the last moments).
    pub fn forget_idle(&self) {
        self.by_client.forget_idle();
        self.by_ip.forget_idle();
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

    /// Takes `n` applications from the bucket, now or in a turn at most `max_wait` away (the
    /// turn is the caller's: nobody else can take it); else says when to retry.
    pub fn reserve(&self, n: usize, max_wait: Duration) -> Result<Turn, RateLimited> {
        match self {
            Bucket::Own(l) => l.take(n, max_wait),
            Bucket::Client(s, id) => s.by_client.take(s.limit, id, n, max_wait),
            Bucket::Ip(s, ip) => s.by_ip.take(s.limit, ip, n, max_wait),
        }
    }

    /// Takes `n` applications from the bucket now, or says when to retry.
    pub fn charge(&self, n: usize) -> Result<(), RateLimited> {
        self.reserve(n, Duration::ZERO).map(|_| ())
    }

    /// Waits until `n` applications may go, taking them a burst at a time: the back-pressure
    /// of a stream.
    pub async fn pace(&self, mut n: usize) {
        let burst = self.limit().burst.get() as usize;
        while n > 0 {
            let take = n.min(burst);
            // A take of at most the burst always fits in an unbounded wait.
            if let Ok(turn) = self.reserve(take, Duration::MAX) {
                if !turn.wait.is_zero() {
                    tokio::time::sleep(turn.wait).await;
                }
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

    #[test]
    fn a_take_over_the_limit_reserves_the_next_turn_within_the_wait() {
        let limit = Limit::new("100/s".parse().unwrap(), Some(5)).unwrap();
        let b = Bucket::Own(Arc::new(Limiter::new(limit)));
        let ms = Duration::from_millis;
        assert_eq!(b.reserve(5, ms(50)).unwrap().wait, Duration::ZERO);
        // The burst is used up: the next turns are 10 ms apart, each reserved for its taker.
        let first = b.reserve(1, ms(50)).unwrap().wait;
        let second = b.reserve(1, ms(50)).unwrap().wait;
        assert!(first > ms(5) && first <= ms(10), "{first:?}");
        assert!(second > first + ms(9) && second <= ms(20), "{second:?}");
        // A take whose turn is further away than the wait is refused, and reserves nothing:
        // 4 more would be due in about 60 ms; the next single one is due in about 30 ms.
        let refused = b.reserve(4, ms(35)).unwrap_err();
        let retry = refused.retry_after().unwrap();
        assert!(retry > ms(35) && retry <= ms(60), "{retry:?}");
        let third = b.reserve(1, ms(35)).unwrap().wait;
        assert!(third > second + ms(9) && third <= ms(30), "{third:?}");
        // Without a wait, the same take is refused at once (the synchronous charge).
        assert!(b.charge(1).is_err());
    }

    #[test]
    fn a_caller_whose_bucket_is_full_again_is_forgotten() {
        let limits = RateLimits::new(Some(
            Limit::new("1000/s".parse().unwrap(), Some(1)).unwrap(),
        ));
        let shared = limits.shared().unwrap().clone();
        let a = limits.for_client(&ClientId::new("a")).unwrap();
        let b = limits.for_client(&ClientId::new("b")).unwrap();
        a.charge(1).unwrap();
        b.charge(1).unwrap();
        assert_eq!(shared.by_client.len(), 2);
        std::thread::sleep(Duration::from_millis(5));
        shared.forget_idle();
        assert_eq!(shared.by_client.len(), 0, "both buckets are full again");
        a.charge(1)
            .expect("a forgotten client starts with a full bucket");
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
