//! One tenant+vendor as the Device-ID service keeps it: valid certificates (at most two), API
//! tokens (at most two), and the attempt counters — pure, with the simulated time passed in.
//!
//! The simulator reads the documented limits literally: the first `burst` attempts are free, and
//! after that at most `per_window` attempts in any rolling hour, burst attempts included. The
//! counter never resets (the documentation does not say it does). Calls refused with 429 do not
//! count; calls answered 409 or 5xx do (they reached the service).

use std::time::Duration;

use jiff::Timestamp;

use crate::cie::budget::Limits;

/// A certificate the service accepts for mutual TLS.
#[derive(Clone, Debug)]
pub(super) struct ValidCert {
    pub(super) name: String,
    pub(super) der: Vec<u8>,
    pub(super) not_after: Timestamp,
}

#[derive(Clone)]
pub(super) struct Token {
    pub(super) value: String,
    pub(super) expires: Timestamp,
}

#[derive(Default)]
pub(super) struct Tenant {
    /// Oldest first.
    pub(super) certs: Vec<ValidCert>,
    /// Oldest first.
    pub(super) tokens: Vec<Token>,
    pub(super) cert_attempts: Vec<Timestamp>,
    pub(super) token_attempts: Vec<Timestamp>,
}

/// At most this many valid certificates and tokens per tenant+vendor.
pub(super) const MAX_VALID: usize = 2;

impl Tenant {
    /// Expired certificates and tokens are no longer valid; they leave without being "deleted".
    pub(super) fn forget_expired(&mut self, now: Timestamp) {
        self.certs.retain(|c| c.not_after > now);
        self.tokens.retain(|t| t.expires > now);
    }

    pub(super) fn valid_cert(&self, der: &[u8], now: Timestamp) -> Option<&ValidCert> {
        self.certs
            .iter()
            .find(|c| c.der == der && c.not_after > now)
    }

    pub(super) fn token_is_valid(&self, value: &str, now: Timestamp) -> bool {
        self.tokens
            .iter()
            .any(|t| t.value == value && t.expires > now)
    }

    /// Adds a certificate; returns the name of the one evicted to stay at two, or "".
    pub(super) fn add_cert(&mut self, cert: ValidCert) -> String {
        self.certs.push(cert);
        evict_oldest(&mut self.certs)
            .map(|c| c.name)
            .unwrap_or_default()
    }

    /// Adds a token; returns the evicted one, or "".
    pub(super) fn add_token(&mut self, token: Token) -> String {
        self.tokens.push(token);
        evict_oldest(&mut self.tokens)
            .map(|t| t.value)
            .unwrap_or_default()
    }
}

fn evict_oldest<T>(items: &mut Vec<T>) -> Option<T> {
    (items.len() > MAX_VALID).then(|| items.remove(0))
}

/// Counts an attempt if the documented limit allows it now; otherwise how long until it would.
pub(super) fn admit(
    limits: &Limits,
    attempts: &mut Vec<Timestamp>,
    now: Timestamp,
) -> Result<(), Duration> {
    if attempts.len() >= limits.burst {
        let window_start = now - limits.window;
        let mut in_window: Vec<Timestamp> = attempts
            .iter()
            .copied()
            .filter(|&t| t > window_start)
            .collect();
        if in_window.len() >= limits.per_window {
            in_window.sort_unstable();
            // Allowed again once enough of the window's attempts have left it.
            let leaves = in_window[in_window.len() - limits.per_window];
            let wait = (leaves + limits.window).duration_since(now);
            return Err(Duration::try_from(wait).unwrap_or_default());
        }
    }
    attempts.push(now);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cie::budget::{CERT_REFRESH, TOKEN_REFRESH};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn cert_refresh_three_then_one_per_rolling_hour() {
        let mut attempts = Vec::new();
        for t in 0..3 {
            assert_eq!(admit(&CERT_REFRESH, &mut attempts, at(t)), Ok(()));
        }
        assert_eq!(
            admit(&CERT_REFRESH, &mut attempts, at(10)),
            Err(Duration::from_secs(3600 - 8))
        );
        assert_eq!(attempts.len(), 3, "a refused attempt does not count");
        assert_eq!(admit(&CERT_REFRESH, &mut attempts, at(3602)), Ok(()));
        assert!(admit(&CERT_REFRESH, &mut attempts, at(3700)).is_err());
        assert_eq!(admit(&CERT_REFRESH, &mut attempts, at(7202)), Ok(()));
    }

    #[test]
    fn token_refresh_five_then_two_per_rolling_hour() {
        let mut attempts = Vec::new();
        for t in 0..5 {
            assert_eq!(admit(&TOKEN_REFRESH, &mut attempts, at(t)), Ok(()));
        }
        assert!(admit(&TOKEN_REFRESH, &mut attempts, at(100)).is_err());
        assert_eq!(admit(&TOKEN_REFRESH, &mut attempts, at(3604)), Ok(()));
        assert_eq!(admit(&TOKEN_REFRESH, &mut attempts, at(3605)), Ok(()));
        assert!(admit(&TOKEN_REFRESH, &mut attempts, at(3606)).is_err());
    }

    #[test]
    fn third_certificate_evicts_the_oldest_and_names_it() {
        let cert = |name: &str| ValidCert {
            name: name.into(),
            der: name.as_bytes().to_vec(),
            not_after: at(1000),
        };
        let mut tenant = Tenant::default();
        assert_eq!(tenant.add_cert(cert("a")), "");
        assert_eq!(tenant.add_cert(cert("b")), "");
        assert_eq!(tenant.add_cert(cert("c")), "a");
        assert!(tenant.valid_cert(b"a", at(0)).is_none());
        assert!(tenant.valid_cert(b"c", at(0)).is_some());
        assert!(tenant.valid_cert(b"c", at(1000)).is_none(), "expired");
        tenant.forget_expired(at(1000));
        assert!(tenant.certs.is_empty());
    }
}
