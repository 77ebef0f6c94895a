//! Rate limits: a token bucket per client address and one per identity (requests per
//! second, bursts of twice that), and a throttle on failed logins per address and per
//! account. Over a limit a client gets 429 with `Retry-After` and the OCI
//! TOOMANYREQUESTS code. [`Concurrency`] bounds the requests in flight per client
//! address and per identity.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, header};
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
