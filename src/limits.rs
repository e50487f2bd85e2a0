//! Rate limits: token buckets for joins and client events, per connection and
//! per user (all of a user's connections share one bucket).
//!
//! Excess is refused with an error reply (`{reason: "rate_limited"}` for events),
//! never dropped silently.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;

/// A bucket of `burst` tokens refilled at `per_s` per second.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_s: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_s: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            tokens: burst as f64,
            burst: burst as f64,
            per_s: per_s as f64,
            last: Instant::now(),
        }
    }

    /// Take one token if there is one.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_s;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Take one token if there is one (`None`); else how long until there is.
    pub fn take_or_wait(&mut self) -> Option<Duration> {
        if self.take() {
            return None;
        }
        let missing = 1.0 - self.tokens;
        Some(Duration::from_secs_f64(missing / self.per_s.max(1e-9)))
    }

    fn idle_for(&self) -> Duration {
        self.last.elapsed()
    }
}

/// One bucket per user, shared by all of the user's connections.
pub struct UserLimits {
    buckets: DashMap<String, Mutex<TokenBucket>>,
    per_s: u32,
    burst: u32,
}

impl UserLimits {
    pub fn new(per_s: u32, burst: u32) -> UserLimits {
        UserLimits {
            buckets: DashMap::new(),
            per_s,
            burst,
        }
    }

    /// Take one of `user`'s tokens.
    pub fn take(&self, user: &str) -> bool {
        if let Some(bucket) = self.buckets.get(user) {
            return bucket.lock().take();
        }
        let bucket = self
            .buckets
            .entry(user.to_string())
            .or_insert_with(|| Mutex::new(TokenBucket::new(self.per_s, self.burst)));
        bucket.lock().take()
    }

    /// Forget buckets unused for long enough to have refilled (janitor).
    pub fn sweep(&self) {
        let full_after = Duration::from_secs_f64(self.burst as f64 / (self.per_s.max(1) as f64))
            + Duration::from_secs(1);
        self.buckets.retain(|_, b| b.lock().idle_for() < full_after);
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_empty_bucket_says_how_long_to_wait() {
        let mut b = TokenBucket::new(10, 1);
        assert_eq!(b.take_or_wait(), None);
        let wait = b.take_or_wait().expect("empty");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
    }

    use super::*;

    #[test]
    fn buckets_empty_then_refill() {
        let mut b = TokenBucket::new(1000, 2);
        assert!(b.take() && b.take());
        assert!(!b.take(), "burst of 2");
        std::thread::sleep(Duration::from_millis(5));
        assert!(b.take(), "refilled at 1000/s");
    }

    #[test]
    fn users_share_a_bucket_and_idle_ones_are_forgotten() {
        let users = UserLimits::new(1000, 1);
        assert!(users.take("alice"));
        assert!(!users.take("alice"));
        assert!(users.take("bob"), "each user has their own");
        std::thread::sleep(Duration::from_millis(1100));
        users.sweep();
        assert!(users.is_empty());
    }
}
