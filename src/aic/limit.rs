//! A per-tenant request-rate limit: a token bucket beside the in-flight limit, so a fleet of
//! certificates on one tenant never sends faster than the tenant accepts. A 429's `Retry-After`
//! holds every caller of that tenant, not only the one that met it, and (adaptive buckets, the
//! operator's) halves the rate, which then grows back by a twentieth of the limit per second:
//! a tenant whose real limit is below ours gets about its limit, not a 429 storm.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The bucket's arithmetic, apart from the clock: `take` either spends a token or says how long
/// until one is there.
#[derive(Debug, Clone)]
pub struct Bucket {
    per_second: f64,
    /// The configured rate; an adaptive bucket's `per_second` moves below it.
    max_per_second: f64,
    max_burst: f64,
    adaptive: bool,
    burst: f64,
    tokens: f64,
    last: Instant,
    blocked_until: Option<Instant>,
}

impl Bucket {
    /// Full at first: `burst` requests may go at once, then `per_second`.
    pub fn new(per_second: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        let per_second = per_second.max(f64::MIN_POSITIVE);
        Self {
            per_second,
            max_per_second: per_second,
            max_burst: burst,
            adaptive: false,
            burst,
            tokens: burst,
            last: now,
            blocked_until: None,
        }
    }

    /// Halves on every 429 and grows back (additive increase, multiplicative decrease).
    pub fn adaptive(mut self) -> Self {
        self.adaptive = true;
        self
    }

    /// The rate it allows now.
    pub fn rate(&self) -> f64 {
        self.per_second
    }

    /// Spends one token, or returns how long to wait before asking again.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if let Some(until) = self.blocked_until {
            if now < until {
                return Err(until - now);
            }
            // Resume gently after a tenant's 429: one request, then the rate from here.
            self.blocked_until = None;
            self.last = self.last.max(until);
            self.tokens = 1.0;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        if self.adaptive && self.per_second < self.max_per_second {
            self.per_second =
                (self.per_second + elapsed * self.max_per_second / 20.0).min(self.max_per_second);
            self.burst = self.per_second.ceil().clamp(1.0, self.max_burst);
        }
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }

    /// Nothing goes before `until` (the tenant said so with `Retry-After`).
    pub fn block_until(&mut self, until: Instant) {
        let already = self.blocked_until.is_some_and(|b| b >= until);
        self.blocked_until = Some(self.blocked_until.map_or(until, |b| b.max(until)));
        // One halving per 429 episode: callers that meet the same pause do not compound it.
        if self.adaptive && !already {
            self.per_second = (self.per_second / 2.0).max(self.max_per_second / 64.0);
            self.burst = self.per_second.ceil().clamp(1.0, self.max_burst);
            self.tokens = self.tokens.min(self.burst);
        }
    }
}

/// The shared, async face of a [`Bucket`].
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Mutex<Bucket>,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            bucket: Mutex::new(Bucket::new(per_second, burst, Instant::now()).adaptive()),
        }
    }

    /// Waits until a request may go.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
                match bucket.take(Instant::now()) {
                    Ok(()) => return,
                    Err(wait) => wait,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    pub fn pause_for(&self, wait: Duration) {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.block_until(Instant::now() + wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, 3, t0);
        for _ in 0..3 {
            assert_eq!(b.take(t0), Ok(()));
        }
        assert_eq!(b.take(t0), Err(Duration::from_millis(500)));
        assert_eq!(b.take(t0 + Duration::from_millis(500)), Ok(()));
        b.block_until(t0 + Duration::from_secs(5));
        assert_eq!(
            b.take(t0 + Duration::from_secs(2)),
            Err(Duration::from_secs(3))
        );
        assert_eq!(
            b.take(t0 + Duration::from_secs(5)),
            Ok(()),
            "one token kept"
        );
        assert!(b.take(t0 + Duration::from_secs(5)).is_err());
    }

    #[test]
    fn adaptive_bucket_halves_on_429_and_grows_back() {
        let t0 = Instant::now();
        let mut b = Bucket::new(40.0, 40, t0).adaptive();
        b.block_until(t0 + Duration::from_secs(1));
        assert_eq!(b.rate(), 20.0);
        // The same pause met by another caller does not halve it again.
        b.block_until(t0 + Duration::from_secs(1));
        assert_eq!(b.rate(), 20.0);
        b.block_until(t0 + Duration::from_secs(2));
        assert_eq!(b.rate(), 10.0);
        assert!(b.take(t0 + Duration::from_secs(2)).is_ok());
        // Two seconds without a 429: +2 per second each (a twentieth of 40).
        let _ = b.take(t0 + Duration::from_secs(4));
        assert!((b.rate() - 14.0).abs() < 1e-9, "{}", b.rate());
        let _ = b.take(t0 + Duration::from_secs(60));
        assert_eq!(b.rate(), 40.0, "back to the limit, never above");
        // Never below a 64th of the limit.
        for i in 0..20 {
            b.block_until(t0 + Duration::from_secs(100 + i));
        }
        assert_eq!(b.rate(), 40.0 / 64.0);
        // A fixed bucket (the simulator's) does not move.
        let mut fixed = Bucket::new(10.0, 10, t0);
        fixed.block_until(t0 + Duration::from_secs(1));
        assert_eq!(fixed.rate(), 10.0);
    }

    proptest! {
        /// Over any window, no more than burst + rate × window requests go through.
        #[test]
        fn never_more_than_burst_plus_rate_times_window(
            rate in 1u32..50, burst in 1u32..20,
            gaps in proptest::collection::vec(0u64..400, 1..300),
        ) {
            let t0 = Instant::now();
            let mut b = Bucket::new(f64::from(rate), burst, t0);
            let mut now = t0;
            let mut sent = Vec::new();
            for gap in gaps {
                now += Duration::from_millis(gap);
                if b.take(now).is_ok() {
                    sent.push(now);
                }
            }
            for (i, start) in sent.iter().enumerate() {
                for (j, end) in sent.iter().enumerate().skip(i) {
                    let window = end.duration_since(*start).as_secs_f64();
                    let allowed = f64::from(burst) + f64::from(rate) * window + 1e-9;
                    prop_assert!((j - i + 1) as f64 <= allowed,
                        "{} requests in {window}s with rate {rate} burst {burst}", j - i + 1);
                }
            }
        }
    }
}
