//! Bounded retries with exponential backoff and full jitter, honouring `Retry-After`.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
    /// A `Retry-After` longer than this is not waited out inside one reconcile: the error goes
    /// back to the controller, which requeues.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The ceiling of the wait before attempt `attempt + 1` (attempt counts from 1).
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        exp.min(self.cap)
    }

    /// How long to wait after a failed attempt, or `None` to give up. `retry_after` from the
    /// tenant wins over the computed backoff; `jitter` is a number in [0, 1).
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        if attempt >= self.attempts {
            return None;
        }
        match retry_after {
            Some(wait) if wait > self.max_retry_after => None,
            Some(wait) => Some(wait),
            None => Some(
                self.backoff_ceiling(attempt)
                    .mul_f64(jitter.clamp(0.0, 1.0)),
            ),
        }
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let secs = when.as_second() - now.as_second();
    Some(Duration::from_secs(secs.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff_ceiling(1), Duration::from_millis(200));
        assert_eq!(p.backoff_ceiling(2), Duration::from_millis(400));
        assert_eq!(p.backoff_ceiling(3), Duration::from_millis(800));
        assert_eq!(p.backoff_ceiling(30), Duration::from_secs(5));
    }

    #[test]
    fn gives_up_after_the_last_attempt_or_a_long_retry_after() {
        let p = RetryPolicy::default();
        assert!(p.delay(4, None, 0.5).is_none());
        assert!(p.delay(1, Some(Duration::from_secs(31)), 0.5).is_none());
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3)), 0.5),
            Some(Duration::from_secs(3))
        );
    }

    proptest::proptest! {
        #[test]
        fn jittered_delay_never_exceeds_the_ceiling(attempt in 1u32..4, jitter in 0.0f64..1.0) {
            let p = RetryPolicy::default();
            let d = p.delay(attempt, None, jitter).unwrap();
            proptest::prop_assert!(d <= p.backoff_ceiling(attempt));
        }
    }

    #[test]
    fn retry_after_as_seconds_or_date() {
        let now = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = jiff::Timestamp::from_second(1_700_000_010).unwrap();
        let date = jiff::fmt::rfc2822::to_string(&later.to_zoned(jiff::tz::TimeZone::UTC)).unwrap();
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
