//! Rate limits: a token bucket per client address and one per identity (requests per
//! second, bursts of twice that), and a throttle on failed logins per address and per
//! account. Over a limit a client gets 429 with `Retry-After` and the OCI
//! TOOMANYREQUESTS code. [`Concurrency`] bounds the requests in flight per client
//! address and per identity. [`ProjectLimiter`] holds a token bucket per project
//! that has a request limit (set through Raft; each node counts its own requests).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, header};
use berth_consensus::tenancy::ProjectLimits;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::oci::error::{Code, OciError};

/// Most throttled keys remembered at once.
const BLOCKED_KEYS_MAX: usize = 100_000;

pub struct Limits {
    requests: Option<DefaultKeyedRateLimiter<String>>,
    failed: DefaultKeyedRateLimiter<String>,
    blocked: Mutex<HashMap<String, Instant>>,
}

impl Limits {
    /// `rps`: requests per second per address and per identity (`None`: unlimited);
    /// `failed_per_minute`: failed logins per minute per address and per account.
    pub fn new(rps: Option<u32>, failed_per_minute: u32) -> Limits {
        let requests = rps.and_then(NonZeroU32::new).map(|r| {
            let burst = r.saturating_mul(NonZeroU32::new(2).expect("2 is not zero"));
            RateLimiter::keyed(Quota::per_second(r).allow_burst(burst))
        });
        let failed = NonZeroU32::new(failed_per_minute.max(1)).expect("at least 1");
        Limits {
            requests,
            failed: RateLimiter::keyed(Quota::per_minute(failed).allow_burst(failed)),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    fn check(&self, key: String) -> Option<Duration> {
        let limiter = self.requests.as_ref()?;
        limiter
            .check_key(&key)
            .err()
            .map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Counts one request from `addr`; `Some(wait)` when over the limit.
    pub fn address(&self, addr: &str) -> Option<Duration> {
        self.check(format!("addr:{addr}"))
    }

    /// Counts one request of identity `name`; `Some(wait)` when over the limit.
    pub fn identity(&self, name: &str) -> Option<Duration> {
        if name == "anonymous" {
            return None;
        }
        self.check(format!("id:{name}"))
    }

    /// Whether logins from `addr` or to `account` are blocked after failures.
    pub fn login_blocked(&self, addr: &str, account: &str) -> Option<Duration> {
        let now = Instant::now();
        let blocked = self.blocked.lock().expect("throttle lock poisoned");
        [format!("addr:{addr}"), format!("id:{account}")]
            .iter()
            .filter_map(|k| blocked.get(k))
            .filter(|until| **until > now)
            .map(|until| *until - now)
            .max()
    }

    /// Counts a failed login; blocks the address or account once over the quota.
    pub fn login_failed(&self, addr: &str, account: &str) {
        let clock = DefaultClock::default();
        for key in [format!("addr:{addr}"), format!("id:{account}")] {
            if let Err(not_until) = self.failed.check_key(&key) {
                let wait = not_until.wait_time_from(clock.now());
                let mut blocked = self.blocked.lock().expect("throttle lock poisoned");
                if blocked.len() >= BLOCKED_KEYS_MAX {
                    let now = Instant::now();
                    blocked.retain(|_, until| *until > now);
                }
                if blocked.len() < BLOCKED_KEYS_MAX {
                    blocked.insert(key, Instant::now() + wait);
                }
            }
        }
    }

    /// Forgets idle buckets (called periodically).
    pub fn shrink(&self) {
        if let Some(r) = &self.requests {
            r.retain_recent();
        }
        self.failed.retain_recent();
        let now = Instant::now();
        self.blocked
            .lock()
            .expect("throttle lock poisoned")
            .retain(|_, until| *until > now);
    }
}

/// 429 TOOMANYREQUESTS with `Retry-After` in whole seconds (at least 1).
pub fn too_many(wait: Duration) -> OciError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    OciError::new(Code::TooManyRequests, "too many requests; retry later").with_header(
        header::RETRY_AFTER,
        HeaderValue::from_str(&secs.max(1).to_string()).unwrap_or(HeaderValue::from_static("1")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_are_limited_and_failed_logins_block() {
        let l = Limits::new(Some(5), 3);
        let refused = (0..20).filter(|_| l.address("1.2.3.4").is_some()).count();
        assert!(
            refused >= 10,
            "a burst of 20 at 5/s (burst 10) refused {refused}"
        );
        assert!(
            l.address("5.6.7.8").is_none(),
            "another address has its own bucket"
        );
        assert!(Limits::new(None, 3).address("x").is_none());

        assert!(l.login_blocked("1.2.3.4", "bob").is_none());
        for _ in 0..4 {
            l.login_failed("1.2.3.4", "bob");
        }
        assert!(
            l.login_blocked("9.9.9.9", "bob").is_some(),
            "account blocked"
        );
        assert!(
            l.login_blocked("1.2.3.4", "alice").is_some(),
            "address blocked"
        );
        assert!(l.login_blocked("9.9.9.9", "alice").is_none());
    }
}

/// Most keys [`Concurrency`] tracks at once (keys at zero are removed).
const CONCURRENCY_KEYS_MAX: usize = 100_000;
/// The `Retry-After` of a request refused for concurrency.
pub const CONCURRENCY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Requests in flight per key (`addr:...`, `id:...`), each at most `max`.
pub struct Concurrency {
    max: u32,
    in_flight: std::sync::Arc<Mutex<HashMap<String, u32>>>,
}

/// One admitted request; its slots are given back when it drops.
pub struct ConcurrencyGuard {
    keys: Vec<String>,
    in_flight: std::sync::Arc<Mutex<HashMap<String, u32>>>,
}

impl Concurrency {
    pub fn new(max: u32) -> Concurrency {
        Concurrency {
            max: max.max(1),
            in_flight: std::sync::Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Admits a request counted under every key in `keys`, or refuses it when one of
    /// them is at the limit (or the table is full).
    pub fn acquire(&self, keys: Vec<String>) -> Option<ConcurrencyGuard> {
        let mut map = self.in_flight.lock().expect("concurrency lock poisoned");
        let full = keys
            .iter()
            .any(|k| map.get(k).copied().unwrap_or(0) >= self.max)
            || map.len() + keys.len() > CONCURRENCY_KEYS_MAX;
        if full {
            return None;
        }
        for k in &keys {
            *map.entry(k.clone()).or_insert(0) += 1;
        }
        Some(ConcurrencyGuard {
            keys,
            in_flight: self.in_flight.clone(),
        })
    }
}

impl Drop for ConcurrencyGuard {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().expect("concurrency lock poisoned");
        for k in &self.keys {
            if let Some(n) = map.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(k);
                }
            }
        }
    }
}

#[cfg(test)]
mod concurrency_tests {
    use super::*;

    #[test]
    fn concurrency_is_bounded_per_key_and_released_on_drop() {
        let c = Concurrency::new(2);
        let a1 = c.acquire(vec!["addr:a".into(), "id:alice".into()]).unwrap();
        let _a2 = c.acquire(vec!["addr:a".into()]).unwrap();
        assert!(c.acquire(vec!["addr:a".into()]).is_none());
        // Another address of the same identity: alice holds one slot.
        let _b1 = c.acquire(vec!["addr:b".into(), "id:alice".into()]).unwrap();
        assert!(
            c.acquire(vec!["addr:c".into(), "id:alice".into()])
                .is_none()
        );
        drop(a1);
        assert!(c.acquire(vec!["addr:a".into()]).is_some());
        assert!(
            c.acquire(vec!["addr:c".into(), "id:alice".into()])
                .is_some()
        );
    }
}

/// How long a node uses the project limits it read before reading them again (a
/// limit set through another node takes effect here within this time).
pub const PROJECT_LIMITS_REFRESH: Duration = Duration::from_secs(5);

/// A token bucket of one project on this node: `requests_per_second` tokens a
/// second, at most `bucket()` held, full when made.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limits: ProjectLimits,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(limits: ProjectLimits, now: Instant) -> TokenBucket {
        TokenBucket {
            limits,
            tokens: f64::from(limits.bucket()),
            at: now,
        }
    }

    /// Takes one token at `now`; `Err(wait)` (until one is back) when empty.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(self.limits.requests_per_second);
        let size = f64::from(self.limits.bucket());
        if now > self.at {
            let refill = (now - self.at).as_secs_f64() * rate;
            self.tokens = (self.tokens + refill).min(size);
            self.at = now;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// The per-project request limits on this node: the limits as last read from
/// metadata and one [`TokenBucket`] per limited project. Buckets exist only for
/// projects that have a limit, so the memory is bounded by the limited projects; a
/// project deleted or made unlimited loses its bucket at the next read.
#[derive(Default)]
pub struct ProjectLimiter {
    state: Mutex<ProjectLimiterState>,
}

#[derive(Default)]
struct ProjectLimiterState {
    limits: HashMap<String, ProjectLimits>,
    read_at: Option<Instant>,
    buckets: HashMap<String, TokenBucket>,
}

impl ProjectLimiter {
    /// Whether the limits are due to be read again; marks them read, so of many
    /// callers at once only one reads.
    pub fn due(&self, now: Instant) -> bool {
        let mut s = self.state.lock().expect("project limiter lock poisoned");
        let due = s
            .read_at
            .is_none_or(|at| now.saturating_duration_since(at) >= PROJECT_LIMITS_REFRESH);
        if due {
            s.read_at = Some(now);
        }
        due
    }

    /// Makes the next request read the limits again (after this node changed one).
    pub fn invalidate(&self) {
        self.state
            .lock()
            .expect("project limiter lock poisoned")
            .read_at = None;
    }

    /// Replaces the limits with those read from metadata. Buckets of projects
    /// without a limit now are dropped; a changed limit starts a full bucket.
    pub fn set_limits(&self, limits: Vec<(String, ProjectLimits)>) {
        let mut s = self.state.lock().expect("project limiter lock poisoned");
        s.limits = limits.into_iter().collect();
        let ProjectLimiterState {
            limits, buckets, ..
        } = &mut *s;
        buckets.retain(|p, b| limits.get(p) == Some(&b.limits));
    }

    /// Counts one request for `project` at `now`; `Some(wait)` when over its limit.
    pub fn check(&self, project: &str, now: Instant) -> Option<Duration> {
        let mut s = self.state.lock().expect("project limiter lock poisoned");
        let limits = *s.limits.get(project)?;
        s.buckets
            .entry(project.to_owned())
            .or_insert_with(|| TokenBucket::new(limits, now))
            .take(now)
            .err()
    }

    /// Buckets held (for tests of the memory bound).
    pub fn buckets(&self) -> usize {
        self.state
            .lock()
            .expect("project limiter lock poisoned")
            .buckets
            .len()
    }
}

#[cfg(test)]
mod project_tests {
    use super::*;

    fn limits(rps: u32, burst: Option<u32>) -> ProjectLimits {
        ProjectLimits {
            requests_per_second: rps,
            burst,
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(limits(2, Some(4)), t0);
        for _ in 0..4 {
            assert!(b.take(t0).is_ok());
        }
        let wait = b.take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(b.take(t0 + Duration::from_millis(499)).is_err());
        assert!(b.take(t0 + Duration::from_millis(1000)).is_ok());
        // A long pause refills to the burst, never beyond.
        let later = t0 + Duration::from_secs(60);
        let allowed = (0..10).filter(|_| b.take(later).is_ok()).count();
        assert_eq!(allowed, 4);
        // Without a burst, the bucket holds one second's worth.
        let mut one = TokenBucket::new(limits(3, None), t0);
        assert_eq!((0..10).filter(|_| one.take(t0).is_ok()).count(), 3);
    }

    #[test]
    fn projects_have_their_own_buckets_and_unlimited_ones_hold_none() {
        let l = ProjectLimiter::default();
        let t0 = Instant::now();
        assert!(l.due(t0));
        assert!(!l.due(t0 + Duration::from_secs(1)));
        l.set_limits(vec![
            ("a".into(), limits(1, Some(2))),
            ("b".into(), limits(1, Some(2))),
        ]);
        assert!(l.check("a", t0).is_none());
        assert!(l.check("a", t0).is_none());
        assert!(l.check("a", t0).is_some(), "a is over its burst");
        assert!(l.check("b", t0).is_none(), "b has its own bucket");
        for _ in 0..100 {
            assert!(l.check("c", t0).is_none(), "c has no limit");
        }
        assert_eq!(l.buckets(), 2);
        // `a` deleted (its limit gone), `b` changed: a's bucket goes, b starts full.
        l.set_limits(vec![("b".into(), limits(1, Some(3)))]);
        assert_eq!(l.buckets(), 0);
        assert_eq!((0..5).filter(|_| l.check("b", t0).is_none()).count(), 3);
        assert!(l.check("a", t0).is_none());
        assert!(l.due(t0 + PROJECT_LIMITS_REFRESH));
        l.invalidate();
        assert!(l.due(t0));
    }
}
