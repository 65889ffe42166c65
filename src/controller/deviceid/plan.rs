//! The DeviceIdCredential decision, as pure functions: observed state and the clock in, the next
//! step out; and the status bookkeeping around each vendor call. No I/O here.
//!
//! Invariants the plan keeps:
//! - A call is made only when [`budget`] allows it, after a 429 wait and after a 409 backoff.
//! - Nothing is ever retried because a call failed: the next call happens only because a
//!   certificate (or token) is due, and only within the budget.
//! - After a `cert:refresh` whose outcome is unknown, the vendor may hold a certificate we never
//!   received; the next refresh would then evict the *published* certificate. So while a
//!   certificate is published and a refresh is unconfirmed, refreshing is deferred until the
//!   published certificate is close to its end anyway ([`defer_until`]) or a person asks for it
//!   with the renew annotation.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::api::{
    DeviceIdCredentialSpec, DeviceIdCredentialStatus, KeyAlgorithm as SpecAlgorithm, Rejection,
    parse_duration,
};
use crate::cie::budget::{self, CERT_REFRESH, TOKEN_REFRESH};
use crate::pki::{CertInfo, KeyAlgorithm};

/// The shortest lead before `notAfter` at which a deferred refresh (see the module docs) goes
/// ahead anyway: after the burst one call per hour (plus margin) is allowed, so three hours
/// leave room for the refresh, a 409 or 429 wait, and one more try before the end.
pub const UNCONFIRMED_MIN_LEAD: Duration = Duration::from_secs(3 * 3600);
/// The deferred refresh goes ahead in the last tenth of the published certificate's lifetime
/// (or [`UNCONFIRMED_MIN_LEAD`], if longer).
pub const UNCONFIRMED_LEAD_DIVISOR: u32 = 10;
/// The pause after a call that failed without a verdict from the vendor (no connection, a 5xx,
/// a lost response) before the next one, even where the budget would allow it at once: the
/// next call is a new decision, made after the vendor had time to finish whatever it was doing.
pub const FAILURE_PAUSE: Duration = Duration::from_secs(30);
/// How often a settled resource is looked at again even when nothing is due.
pub const RESYNC: Duration = Duration::from_secs(3600);

/// Input that stops everything before any vendor call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Which client certificate (and `apiKey`) authenticates a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// The onboarding Secret's: only until a certificate of our own is published.
    Onboarding,
    /// The output Secret's: the published certificate, while it is valid.
    Published,
}

pub struct Observation<'a> {
    pub spec: &'a DeviceIdCredentialSpec,
    pub status: &'a DeviceIdCredentialStatus,
    pub generation: Option<i64>,
    /// The renew annotation's value, if set.
    pub renew_annotation: Option<&'a str>,
    /// The onboarding certificate (already checked against its key).
    pub onboarding: &'a CertInfo,
    /// False when the onboarding Secret is missing or unreadable and `onboarding` stands in
    /// for it: it is needed only while no valid certificate of ours is published.
    pub onboarding_available: bool,
    /// The output Secret's certificate, when its key matches (it may have expired).
    pub published: Option<&'a CertInfo>,
    pub now: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    RefreshCert {
        credential: Credential,
        /// `Initial`, `Renewal`, `Expired`, `RenewRequested` or `Deferred` (see module docs).
        reason: &'static str,
    },
    RefreshToken,
    /// Nothing to call now; look again at `recheck` (`None`: only when something changes).
    Wait {
        ready: bool,
        reconciling: bool,
        stalled: bool,
        reason: &'static str,
        message: String,
        recheck: Option<Timestamp>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub step: Step,
    /// When the `cert:refresh` budget (and 409/429 waits) next allow a call.
    pub next_attempt_time: Timestamp,
    /// When the published certificate is due for refresh.
    pub renewal_time: Option<Timestamp>,
}

/// `spec.privateKey` as a key type; other sizes are refused before any call.
pub fn key_algorithm(spec: &DeviceIdCredentialSpec) -> Result<KeyAlgorithm, Invalid> {
    let size = spec.private_key.size;
    match (spec.private_key.algorithm, size) {
        (SpecAlgorithm::ECDSA, 256) => Ok(KeyAlgorithm::EcdsaP256),
        (SpecAlgorithm::ECDSA, 384) => Ok(KeyAlgorithm::EcdsaP384),
        (SpecAlgorithm::RSA, 2048) => Ok(KeyAlgorithm::Rsa2048),
        (SpecAlgorithm::RSA, 3072) => Ok(KeyAlgorithm::Rsa3072),
        (SpecAlgorithm::RSA, 4096) => Ok(KeyAlgorithm::Rsa4096),
        (alg, _) => Err(Invalid::new(
            "InvalidPrivateKey",
            format!(
                "privateKey {alg:?} size {size} is not supported: use ECDSA 256|384 or RSA 2048|3072|4096"
            ),
        )),
    }
}

/// Everything in the spec that can be wrong without asking anyone.
pub fn validate_spec(spec: &DeviceIdCredentialSpec) -> Result<(), Invalid> {
    key_algorithm(spec)?;
    if let Some(i) = &spec.token_refresh_interval {
        parse_duration(i)
            .map_err(|e| Invalid::new("InvalidSpec", format!("spec.tokenRefreshInterval: {e}")))?;
    }
    if let Some(rb) = &spec.renew_before {
        parse_duration(rb).map_err(|e| Invalid::new("InvalidRenewBefore", e.to_string()))?;
        if spec.renew_before_percentage.is_some() {
            return Err(Invalid::new(
                "InvalidRenewBefore",
                "set renewBefore or renewBeforePercentage, not both",
            ));
        }
    }
    if let Some(p) = spec.renew_before_percentage
        && !(1..=99).contains(&p)
    {
        return Err(Invalid::new(
            "InvalidRenewBefore",
            format!("renewBeforePercentage {p} is not within 1-99"),
        ));
    }
    if spec.cert_name.trim().is_empty() || spec.secret_name.trim().is_empty() {
        return Err(Invalid::new(
            "InvalidSpec",
            "certName and secretName must not be empty",
        ));
    }
    // Known before any call: a refresh whose result cannot be stored is a refresh spent.
    if spec.secret_name == spec.onboarding_secret_ref.name {
        return Err(Invalid::new(
            "OutputIsOnboardingSecret",
            format!(
                "secretName {} is the onboarding Secret: publishing there would overwrite the onboarding credential; choose another secretName",
                spec.secret_name
            ),
        ));
    }
    if spec.secret_name.len() + PENDING_SUFFIX.len() > MAX_SECRET_NAME {
        return Err(Invalid::new(
            "SecretNameTooLong",
            format!(
                "secretName is {} characters; the pending key is kept in Secret <secretName>{PENDING_SUFFIX}, which may be at most {MAX_SECRET_NAME}: use at most {}",
                spec.secret_name.len(),
                MAX_SECRET_NAME - PENDING_SUFFIX.len()
            ),
        ));
    }
    Ok(())
}

/// The Secret that holds the key and CSR of a refresh in flight is `<secretName>` plus this.
pub const PENDING_SUFFIX: &str = "-pending";
/// certrotor's own copy of the credential in use (owner-referenced, not for mounting): the
/// output Secret is restored from it with no vendor call. No longer than `PENDING_SUFFIX`.
pub const HELD_SUFFIX: &str = "-held";
/// A Secret name is a DNS subdomain: at most 253 characters.
pub const MAX_SECRET_NAME: usize = 253;

fn lifetime(cert: &CertInfo) -> SignedDuration {
    cert.not_after
        .duration_since(cert.not_before)
        .max(SignedDuration::ZERO)
}

fn minus(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_sub(d).unwrap_or(Timestamp::MIN)
}

/// `notAfter − renewBefore`, or the percentage of the lifetime, or a third of it. A renewBefore
/// as long as the lifetime or longer would refresh on every budget slot; it falls back to the
/// default third instead.
pub fn renewal_time(spec: &DeviceIdCredentialSpec, cert: &CertInfo) -> Timestamp {
    let life = lifetime(cert);
    let third = life / 3;
    let before = match (&spec.renew_before, spec.renew_before_percentage) {
        (Some(rb), _) => parse_duration(rb)
            .ok()
            .and_then(|d| SignedDuration::try_from(d).ok())
            .map(|d| d.min(renew_before_ceiling(life)))
            .unwrap_or(third),
        (None, Some(p)) => life * p.clamp(1, 99) / 100,
        (None, None) => third,
    };
    minus(cert.not_after, before.max(renew_before_floor(life)))
}

/// The shortest lead used: an hour, since the vendor allows one `cert:refresh` an hour and a
/// shorter lead leaves no room for a retry before expiry — for certificates that live at least
/// three hours (shorter ones keep what was asked).
fn renew_before_floor(life: SignedDuration) -> SignedDuration {
    if life >= SignedDuration::from_hours(3) {
        SignedDuration::from_hours(1)
    } else {
        SignedDuration::ZERO
    }
}

/// Whether `spec.renewBefore` is shorter than the floor for this certificate (for status).
pub fn renew_before_floored(spec: &DeviceIdCredentialSpec, cert: &CertInfo) -> bool {
    spec.renew_before
        .as_deref()
        .and_then(|rb| parse_duration(rb).ok())
        .and_then(|d| SignedDuration::try_from(d).ok())
        .is_some_and(|d| d < renew_before_floor(lifetime(cert)))
}

/// The longest `renewBefore` used: two thirds of the certificate's lifetime. Longer would refresh
/// soon after each issue, spending the budget and evicting certificates for nothing.
fn renew_before_ceiling(life: SignedDuration) -> SignedDuration {
    life * 2 / 3
}

/// Whether `spec.renewBefore` is longer than the ceiling for this certificate (for status).
pub fn renew_before_capped(spec: &DeviceIdCredentialSpec, cert: &CertInfo) -> bool {
    spec.renew_before
        .as_deref()
        .and_then(|rb| parse_duration(rb).ok())
        .and_then(|d| SignedDuration::try_from(d).ok())
        .is_some_and(|d| d > renew_before_ceiling(lifetime(cert)))
}

/// When a refresh deferred because of an unconfirmed one goes ahead anyway.
pub fn defer_until(cert: &CertInfo) -> Timestamp {
    let lead = (lifetime(cert) / UNCONFIRMED_LEAD_DIVISOR as i32)
        .max(SignedDuration::try_from(UNCONFIRMED_MIN_LEAD).unwrap_or(SignedDuration::ZERO));
    minus(cert.not_after, lead).max(cert.not_before)
}

fn parse_time(s: Option<&str>) -> Option<Timestamp> {
    s.and_then(|s| s.parse().ok())
}

/// The latest of the budget, the 429 wait and the 409 backoff for `cert:refresh`.
pub fn cert_next_allowed(status: &DeviceIdCredentialStatus, now: Timestamp) -> Timestamp {
    let attempts = budget::parse_attempts(&status.attempts, now);
    let mut at = budget::next_allowed(&CERT_REFRESH, &attempts, now);
    for wait in [&status.rate_limited_until, &status.conflict_until] {
        if let Some(t) = parse_time(wait.as_deref()) {
            at = at.max(t);
        }
    }
    // A refusal is its own gate (nothing is sent until what it depends on changes): once a
    // person has fixed that, the next attempt is not held back by the pause as well.
    if status.rejected.is_none()
        && let Some(t) = failure_pause_end(status)
    {
        at = at.max(t);
    }
    at
}

fn failure_pause_end(status: &DeviceIdCredentialStatus) -> Option<Timestamp> {
    parse_time(status.last_failure_time.as_deref())
        .map(|t| t.checked_add(FAILURE_PAUSE).unwrap_or(Timestamp::MAX))
}

/// The same for `token:refresh`.
pub fn token_next_allowed(status: &DeviceIdCredentialStatus, now: Timestamp) -> Timestamp {
    let attempts = budget::parse_attempts(&status.token_attempts, now);
    let at = budget::next_allowed(&TOKEN_REFRESH, &attempts, now);
    parse_time(status.token_wait_until.as_deref()).map_or(at, |t| at.max(t))
}

/// The vendor's token expiry: RFC 3339, or Unix seconds or milliseconds (its format is unsettled).
pub fn parse_token_expiry(expiry: &str) -> Option<Timestamp> {
    let expiry = expiry.trim();
    if let Ok(t) = expiry.parse::<Timestamp>() {
        return Some(t);
    }
    let n: i64 = expiry.parse().ok()?;
    if n > 100_000_000_000 {
        Timestamp::from_millisecond(n).ok()
    } else {
        Timestamp::from_second(n).ok()
    }
}

/// The renew annotation's value when it has not been acted on yet.
pub fn pending_renew<'a>(obs: &Observation<'a>) -> Option<&'a str> {
    obs.renew_annotation
        .filter(|v| Some(*v) != obs.status.last_renew_request.as_deref())
}

/// What a 400/401 refused, so that the same call is not made again until something changes.
pub fn rejection(
    obs: &Observation<'_>,
    credential: Credential,
    reason: &str,
    message: String,
) -> Rejection {
    Rejection {
        reason: reason.to_string(),
        message,
        generation: obs.generation,
        credential: credential_fingerprint(obs, credential),
        renew_request: obs.renew_annotation.map(str::to_string),
        onboarding: Some(obs.onboarding.fingerprint.clone()),
    }
}

/// The vendor refused the published certificate (401, or in the handshake) and the onboarding
/// Secret now holds another certificate than then: a person re-onboarded in the console, as the
/// vendor advises. The next allowed attempt uses it.
fn reonboarded(obs: &Observation<'_>, published: &CertInfo) -> bool {
    obs.onboarding_available
        && obs.status.rejected.as_ref().is_some_and(|r| {
            matches!(r.reason.as_str(), "Unauthorized" | "HandshakeRefused")
                && r.credential == published.fingerprint
                && r.onboarding
                    .as_deref()
                    .is_some_and(|o| o != obs.onboarding.fingerprint)
        })
}

/// The fingerprint of the certificate a call with `credential` authenticates with.
pub fn credential_fingerprint(obs: &Observation<'_>, credential: Credential) -> String {
    match (credential, obs.published) {
        (Credential::Published, Some(p)) => p.fingerprint.clone(),
        _ => obs.onboarding.fingerprint.clone(),
    }
}

/// The step to take now.
pub fn plan(obs: &Observation<'_>) -> Plan {
    let now = obs.now;
    let status = obs.status;
    let next_attempt_time = cert_next_allowed(status, now);
    let renewal = obs.published.map(|p| renewal_time(obs.spec, p));
    let step = cert_step(obs, next_attempt_time, renewal);
    Plan {
        step,
        next_attempt_time,
        renewal_time: renewal,
    }
}

fn cert_step(obs: &Observation<'_>, next_allowed: Timestamp, renewal: Option<Timestamp>) -> Step {
    let now = obs.now;
    let status = obs.status;
    let renew = pending_renew(obs);
    let valid = obs.published.filter(|p| p.not_after > now);
    // Never Ready while the published certificate, or its apiKey, may have been evicted.
    let ready = valid.is_some()
        && status.published_may_be_evicted.is_none()
        && status.api_key_may_be_evicted.is_none()
        && !token_stalled(obs);

    // What is due, with which credential, and until when nothing is.
    let (reason, credential, due_at) = match (obs.published, valid) {
        (None, _) => ("Initial", Credential::Onboarding, now),
        (Some(_), None) => ("Expired", Credential::Onboarding, now),
        (Some(_), Some(p)) if reonboarded(obs, p) => ("Reonboarded", Credential::Onboarding, now),
        // Two lost answers in a row: stop until a person looks (a third lost answer would
        // evict the published certificate for sure). A renew request is that look: refresh
        // with the published certificate (a success gives a certificate again, a 401 asks for
        // a re-onboarding).
        (Some(_), Some(p)) if status.published_may_be_evicted.is_some() => {
            if renew.is_none() {
                if let Some(token) = token_first(obs) {
                    return token;
                }
                return Step::Wait {
                    ready: false,
                    reconciling: false,
                    stalled: true,
                    reason: "RefreshOutcomeUnknown",
                    message: format!(
                        "two cert:refresh answers in a row were lost (the last at {}): the vendor may hold two certificates certrotor never received, which evicts the published one (serial {}). Check whether it still works (a call with it gets no 401); set {} to refresh with it, or re-onboard in the Cloud Identity Engine console and update the onboarding Secret",
                        status
                            .published_may_be_evicted
                            .as_deref()
                            .unwrap_or_default(),
                        p.serial_number,
                        crate::api::RENEW_ANNOTATION
                    ),
                    recheck: None,
                };
            }
            ("RenewRequested", Credential::Published, now)
        }
        (Some(_), Some(p)) => {
            let deferred = status.unconfirmed_refresh.is_some();
            let due = if deferred {
                renewal.unwrap_or(now).max(defer_until(p))
            } else {
                renewal.unwrap_or(now)
            };
            match renew {
                Some(_) => ("RenewRequested", Credential::Published, now),
                None if deferred && now >= due => ("Deferred", Credential::Published, due),
                None => ("Renewal", Credential::Published, due),
            }
        }
    };

    if let Some(r) = &status.rejected
        && rejection_applies(obs, r, credential)
    {
        if let Some(token) = token_first(obs) {
            return token;
        }
        return Step::Wait {
            // Not Ready while the credential in use is the one refused.
            ready: ready && !published_refused(obs),
            reconciling: false,
            stalled: true,
            reason: static_reason(&r.reason),
            message: r.message.clone(),
            recheck: token_recheck(obs),
        };
    }
    if credential == Credential::Onboarding
        && status.onboarding_evicted.as_deref() == Some(obs.onboarding.fingerprint.as_str())
    {
        return Step::Wait {
            ready: false,
            reconciling: false,
            stalled: true,
            reason: "OnboardingEvicted",
            message: format!(
                "no valid certificate of ours is published (the output Secret {} and certrotor's copy are gone or expired), and the vendor has evicted the onboarding certificate: calling with it would only get a 401. Re-onboard in the Cloud Identity Engine console and put the new bundle in the onboarding Secret {}",
                obs.spec.secret_name, obs.spec.onboarding_secret_ref.name
            ),
            recheck: None,
        };
    }
    if credential == Credential::Onboarding && !obs.onboarding_available {
        return Step::Wait {
            ready: false,
            reconciling: false,
            stalled: true,
            reason: "OnboardingSecretNotFound",
            message: format!(
                "no valid certificate is published and the onboarding Secret {} is missing or unreadable: restore it (tls.crt, tls.key, apiKey from the Cloud Identity Engine console)",
                obs.spec.onboarding_secret_ref.name
            ),
            recheck: None,
        };
    }
    if credential == Credential::Onboarding && obs.onboarding.not_after <= now {
        return Step::Wait {
            ready: false,
            reconciling: false,
            stalled: true,
            reason: "OnboardingExpired",
            message: format!(
                "no valid certificate is published and the onboarding certificate expired at {}: re-onboard in the Cloud Identity Engine console and update Secret {}",
                obs.onboarding.not_after, obs.spec.onboarding_secret_ref.name
            ),
            recheck: None,
        };
    }

    if now < due_at {
        if let (true, Some(p)) = (status.unconfirmed_refresh.is_some(), valid) {
            if let Some(token) = token_first(obs) {
                return token;
            }
            return Step::Wait {
                ready,
                reconciling: true,
                stalled: false,
                reason: "RefreshOutcomeUnknown",
                message: format!(
                    "a cert:refresh at {} got no answer: the vendor may hold a newer certificate we never received, so another refresh could evict the published one (serial {}). Refreshing is deferred until {due_at}, close to its expiry; set the {} annotation to refresh now",
                    status.unconfirmed_refresh.as_deref().unwrap_or_default(),
                    p.serial_number,
                    crate::api::RENEW_ANNOTATION,
                ),
                recheck: Some(token_recheck(obs).map_or(due_at, |t| t.min(due_at))),
            };
        }
        return token_step(obs).unwrap_or_else(|| Step::Wait {
            ready,
            reconciling: false,
            stalled: false,
            reason: "Valid",
            message: format!(
                "certificate (serial {}) is valid; next refresh at {due_at}{}",
                valid.map(|p| p.serial_number.as_str()).unwrap_or_default(),
                if valid.is_some_and(|p| renew_before_capped(obs.spec, p)) {
                    " (renewBefore is longer than two thirds of the certificate's lifetime and is capped there)"
                } else if valid.is_some_and(|p| renew_before_floored(obs.spec, p)) {
                    " (renewBefore is shorter than the 1h floor and is raised to it: the vendor allows one refresh an hour)"
                } else {
                    ""
                }
            ),
            recheck: Some(token_recheck(obs).map_or(due_at, |t| t.min(due_at))),
        });
    }

    if now < next_allowed {
        if let Some(token) = token_first(obs) {
            return token;
        }
        let (why, text) = match (
            parse_time(status.rate_limited_until.as_deref()),
            parse_time(status.conflict_until.as_deref()),
        ) {
            (Some(t), _) if t >= next_allowed => ("RateLimited", "the vendor answered 429"),
            (_, Some(t)) if t >= next_allowed => (
                "Conflict",
                "the vendor answered 409 (another job is running)",
            ),
            _ if status.unconfirmed_refresh.is_some() && !ready => (
                "RefreshOutcomeUnknown",
                "the last cert:refresh got no answer; nothing is published yet, so the next call is made once the budget and the pause after a failure allow",
            ),
            _ if failure_pause_end(status).is_some_and(|t| t >= next_allowed) => (
                "RefreshFailed",
                "the last call failed; pausing before the next",
            ),
            _ => ("RateLimited", "the refresh budget is spent for now"),
        };
        return Step::Wait {
            ready,
            reconciling: true,
            stalled: false,
            reason: why,
            message: format!("{reason} refresh due: {text}; next call allowed at {next_allowed}"),
            recheck: Some(token_recheck(obs).map_or(next_allowed, |t| t.min(next_allowed))),
        };
    }
    Step::RefreshCert { credential, reason }
}

/// A refusal stays in force while nothing a person could change has changed.
fn rejection_applies(obs: &Observation<'_>, r: &Rejection, credential: Credential) -> bool {
    r.generation == obs.generation
        && r.credential == credential_fingerprint(obs, credential)
        && r.renew_request.as_deref() == obs.renew_annotation
}

/// How long a token of unknown expiry is used before it is refreshed, unless the spec says.
pub const DEFAULT_TOKEN_REFRESH_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// `token:refresh` when asked for and due, with the published certificate; `None` when not due.
/// Planned on its own: a certificate refresh that waits (deferred, rate-limited, rejected) does not
/// hold it back while the published certificate is valid.
///
/// The schedule: a third of the token's life before its expiry; after a lost answer, only in
/// the last tenth (another call could evict the apiKey in use if its answer were lost too). A
/// token whose expiry is unknown (the onboarding apiKey, or a format not understood) is refreshed
/// `tokenRefreshInterval` (default 24h) after it was obtained — or after the lost answer. Two lost
/// answers in a row stop token refreshes (`Stalled`) until a person acts.
fn token_step(obs: &Observation<'_>) -> Option<Step> {
    let now = obs.now;
    let status = obs.status;
    let published = obs.published.filter(|p| p.not_after > now)?;
    if !obs.spec.refresh_token {
        return None;
    }
    if let Some(r) = &status.token_rejected
        && rejection_applies(obs, r, Credential::Published)
    {
        return Some(Step::Wait {
            // The apiKey in the output Secret may have been evicted.
            ready: false,
            reconciling: false,
            stalled: true,
            reason: "TokenOutcomeUnknown",
            message: r.message.clone(),
            recheck: None,
        });
    }
    let due = token_due(obs, published);
    if now < due {
        return None;
    }
    let allowed = token_next_allowed(status, now);
    if now < allowed {
        return Some(Step::Wait {
            ready: status.api_key_may_be_evicted.is_none()
                && status.published_may_be_evicted.is_none(),
            reconciling: true,
            stalled: false,
            reason: "TokenRateLimited",
            message: format!("token:refresh due; next call allowed at {allowed}"),
            recheck: Some(allowed.min(renewal_time(obs.spec, published))),
        });
    }
    Some(Step::RefreshToken)
}

/// When the token is next due (see [`token_step`]), with `published` the valid certificate.
fn token_due(obs: &Observation<'_>, published: &CertInfo) -> Timestamp {
    let status = obs.status;
    let expiry = status.token_expiry.as_deref().and_then(parse_token_expiry);
    let obtained = parse_time(status.token_obtained_time.as_deref());
    let unconfirmed = parse_time(status.unconfirmed_token_refresh.as_deref());
    match (expiry, obtained) {
        (Some(exp), Some(got)) => {
            let life = exp.duration_since(got).max(SignedDuration::ZERO);
            if unconfirmed.is_some() {
                minus(exp, life / UNCONFIRMED_LEAD_DIVISOR as i32)
            } else {
                minus(exp, life / 3)
            }
        }
        (Some(exp), None) => exp,
        (None, _) => {
            let interval = obs
                .spec
                .token_refresh_interval
                .as_deref()
                .and_then(|d| parse_duration(d).ok())
                .unwrap_or(DEFAULT_TOKEN_REFRESH_INTERVAL);
            let base = unconfirmed.or(obtained).unwrap_or(published.not_before);
            base.checked_add(SignedDuration::try_from(interval).unwrap_or(SignedDuration::MAX))
                .unwrap_or(Timestamp::MAX)
        }
    }
}

/// When to look again for the token's sake, if token refresh is on.
fn token_recheck(obs: &Observation<'_>) -> Option<Timestamp> {
    let published = obs.published.filter(|p| p.not_after > obs.now)?;
    if !obs.spec.refresh_token
        || published_refused(obs)
        || obs
            .status
            .token_rejected
            .as_ref()
            .is_some_and(|r| rejection_applies(obs, r, Credential::Published))
    {
        return None;
    }
    // Due already: when the token's budget next allows a call (never a time in the past).
    Some(
        token_due(obs, published)
            .max(token_next_allowed(obs.status, obs.now))
            .max(obs.now + SignedDuration::from_secs(1)),
    )
}

/// A token refresh to make before waiting on the certificate, if one is due and the credential
/// it would use has not been refused.
fn token_first(obs: &Observation<'_>) -> Option<Step> {
    if published_refused(obs) {
        return None;
    }
    match token_step(obs) {
        Some(Step::RefreshToken) => Some(Step::RefreshToken),
        _ => None,
    }
}

/// Token refreshes are stopped after two lost answers: the apiKey in use may be evicted.
fn token_stalled(obs: &Observation<'_>) -> bool {
    obs.spec.refresh_token
        && obs
            .status
            .token_rejected
            .as_ref()
            .is_some_and(|r| rejection_applies(obs, r, Credential::Published))
}

/// Whether the vendor refused the published credential itself (401, or our certificate refused
/// in the handshake): a token call with it would be refused too. Other refusals concern the
/// certificate request only.
fn published_refused(obs: &Observation<'_>) -> bool {
    obs.status.rejected.as_ref().is_some_and(|r| {
        matches!(r.reason.as_str(), "Unauthorized" | "HandshakeRefused")
            && rejection_applies(obs, r, Credential::Published)
    })
}

/// The message of the stall after two `token:refresh` answers in a row were lost.
pub fn token_outcome_unknown_message(secret: &str) -> String {
    format!(
        "two token:refresh answers in a row were lost: the vendor may have issued two tokens certrotor never received, which evicts the apiKey in Secret {secret}. Check that it still works (a call with it gets no 401); if it does not, re-onboard in the Cloud Identity Engine console and update the onboarding Secret. Set {} to let certrotor refresh the token again",
        crate::api::RENEW_ANNOTATION
    )
}

/// How a call ended, as far as the bookkeeping cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A certificate (or token) was received and persisted.
    Received,
    /// 429, with the vendor's `Retry-After`.
    RateLimited(Option<Duration>),
    /// 409.
    Conflict,
    /// 400/401: a person must act; what was refused, to stop further calls like it.
    Rejected(Rejection),
    /// The request was certainly not processed (no connection, bad client configuration).
    NotSent,
    /// 5xx, transport failure, unusable success body: it may have happened.
    Unknown,
}

/// Bookkeeping before a `cert:refresh`: the attempt and the unconfirmed marker, to be persisted
/// before the call. Returns the previous marker, which a call that certainly did not issue
/// anything puts back.
/// A refresh made for another reason (the first one, or one for an expired certificate) also
/// serves a renew request pending when the attempt is recorded: the certificate it brings is
/// newer than the request. GitOps often applies the annotation together with the resource, and
/// it must not cost a second `cert:refresh`. Recorded with the attempt, so a crash after the call
/// cannot turn it into another call. A `RenewRequested` refresh consumes its value by outcome
/// (the executor: success, unknown or rejected), so that a 409 or 429 leaves it pending.
pub fn consume_renew_request(
    status: &mut DeviceIdCredentialStatus,
    reason: &str,
    renew_annotation: Option<&str>,
) {
    if reason != "RenewRequested" && renew_annotation.is_some() {
        status.last_renew_request = renew_annotation.map(str::to_string);
    }
}

pub fn record_cert_attempt(
    status: &mut DeviceIdCredentialStatus,
    now: Timestamp,
) -> Option<String> {
    let mut attempts = budget::parse_attempts(&status.attempts, now);
    attempts.push(now);
    status.attempts = budget::prune(&CERT_REFRESH, &attempts, now)
        .iter()
        .map(Timestamp::to_string)
        .collect();
    let previous = status.unconfirmed_refresh.clone();
    // The oldest unconfirmed call is the one to remember: it is what may hold a certificate.
    status.unconfirmed_refresh = Some(previous.clone().unwrap_or_else(|| now.to_string()));
    previous
}

/// Bookkeeping after a `cert:refresh`. `jitter` in `[0, 1)` spreads 409 backoffs (±20%).
pub fn after_cert_call(
    status: &mut DeviceIdCredentialStatus,
    outcome: &Outcome,
    previous_unconfirmed: Option<String>,
    now: Timestamp,
    jitter: f64,
) {
    let definitive_no = |status: &mut DeviceIdCredentialStatus| {
        status.unconfirmed_refresh = previous_unconfirmed.clone();
    };
    match outcome {
        Outcome::Received => {
            status.published_may_be_evicted = None;
            // The apiKey published with the first certificate (the onboarding one) has no
            // known age: its clock, for the token schedule, starts when certrotor publishes it.
            if status.token_obtained_time.is_none() {
                status.token_obtained_time = Some(now.to_string());
            }
            status.unconfirmed_refresh = None;
            status.consecutive_conflicts = None;
            status.conflict_until = None;
            status.rate_limited_until = None;
            status.rejected = None;
            status.last_failure_time = None;
        }
        Outcome::RateLimited(retry_after) => {
            definitive_no(status);
            status.consecutive_conflicts = None;
            status.conflict_until = None;
            status.rate_limited_until =
                Some(budget::after_rate_limited_with(*retry_after, now).to_string());
            status.last_failure_time = Some(now.to_string());
        }
        Outcome::Conflict => {
            definitive_no(status);
            let n = status.consecutive_conflicts.unwrap_or(0).saturating_add(1);
            status.consecutive_conflicts = Some(n);
            let until = budget::conflict_backoff(u32::try_from(n).unwrap_or(1), now);
            status.conflict_until = Some(jittered(now, until, jitter).to_string());
            status.last_failure_time = Some(now.to_string());
        }
        Outcome::Rejected(rejection) => {
            definitive_no(status);
            status.rejected = Some(rejection.clone());
            status.last_failure_time = Some(now.to_string());
        }
        Outcome::NotSent => {
            definitive_no(status);
            status.last_failure_time = Some(now.to_string());
        }
        Outcome::Unknown => {
            if previous_unconfirmed.is_some() {
                // Two certificates we never received may exist: the published one may be gone.
                status.published_may_be_evicted = Some(now.to_string());
            }
            status.last_failure_time = Some(now.to_string());
        }
    }
}

/// `until` moved by ±20% of the wait, never before `now`.
fn jittered(now: Timestamp, until: Timestamp, jitter: f64) -> Timestamp {
    let wait = until.duration_since(now);
    let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    let secs = (wait.as_secs_f64() * factor).max(0.0);
    now.checked_add(SignedDuration::from_secs_f64(secs))
        .unwrap_or(until)
        .max(now)
}

/// Takes back an attempt recorded at `at` whose request certainly never reached the vendor
/// (no connection, a failed TLS handshake): it spent nothing of the budget.
pub fn uncount_attempt(attempts: &mut Vec<String>, at: Timestamp) {
    let at = at.to_string();
    if let Some(i) = attempts.iter().rposition(|a| *a == at) {
        attempts.remove(i);
    }
}

/// The token counterparts of [`record_cert_attempt`] and [`after_cert_call`].
pub fn record_token_attempt(
    status: &mut DeviceIdCredentialStatus,
    now: Timestamp,
) -> Option<String> {
    let mut attempts = budget::parse_attempts(&status.token_attempts, now);
    attempts.push(now);
    status.token_attempts = budget::prune(&TOKEN_REFRESH, &attempts, now)
        .iter()
        .map(Timestamp::to_string)
        .collect();
    let previous = status.unconfirmed_token_refresh.clone();
    status.unconfirmed_token_refresh = Some(previous.clone().unwrap_or_else(|| now.to_string()));
    previous
}

pub fn after_token_call(
    status: &mut DeviceIdCredentialStatus,
    outcome: &Outcome,
    previous_unconfirmed: Option<String>,
    now: Timestamp,
) {
    match outcome {
        Outcome::Received => {
            status.unconfirmed_token_refresh = None;
            status.token_rejected = None;
            status.api_key_may_be_evicted = None;
            status.token_wait_until = None;
            status.token_obtained_time = Some(now.to_string());
        }
        Outcome::RateLimited(retry_after) => {
            status.unconfirmed_token_refresh = previous_unconfirmed;
            status.token_wait_until =
                Some(budget::after_rate_limited_with(*retry_after, now).to_string());
        }
        Outcome::Conflict => {
            status.unconfirmed_token_refresh = previous_unconfirmed;
            status.token_wait_until = Some(budget::conflict_backoff(1, now).to_string());
        }
        Outcome::Rejected(_) | Outcome::NotSent => {
            status.unconfirmed_token_refresh = previous_unconfirmed;
            // Tokens are a convenience next to the certificate: try again after a pause.
            status.token_wait_until = Some(budget::after_rate_limited(now).to_string());
        }
        Outcome::Unknown => {
            if previous_unconfirmed.is_some() {
                status.api_key_may_be_evicted = Some(now.to_string());
            }
        }
    }
}

/// The status fields that describe the published certificate. A certificate in the output
/// Secret that status does not know yet was received after a crash before status was written:
/// it settles the unconfirmed refresh (we hold the newest certificate again). Returns whether
/// such a certificate was adopted.
pub fn describe_published(
    status: &mut DeviceIdCredentialStatus,
    spec: &DeviceIdCredentialSpec,
    published: Option<&CertInfo>,
) -> bool {
    let Some(p) = published else {
        status.published_fingerprint = None;
        status.serial_number = None;
        status.not_before = None;
        status.not_after = None;
        status.renewal_time = None;
        return false;
    };
    let adopted = status
        .published_fingerprint
        .as_deref()
        .is_some_and(|f| f != p.fingerprint)
        || (status.published_fingerprint.is_none() && status.unconfirmed_refresh.is_some());
    if adopted {
        status.unconfirmed_refresh = None;
    }
    status.published_fingerprint = Some(p.fingerprint.clone());
    status.serial_number = Some(p.serial_number.clone());
    status.not_before = Some(p.not_before.to_string());
    status.not_after = Some(p.not_after.to_string());
    status.renewal_time = Some(renewal_time(spec, p).to_string());
    status.cert_name = Some(spec.cert_name.clone());
    adopted
}

/// Verdict reasons are `&'static str`; those read back from status come from this fixed set.
pub fn static_reason(reason: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "Unauthorized",
        "BadRequest",
        "InvalidConfig",
        "UnexpectedStatus",
        "TlsVerificationFailed",
        "HandshakeRefused",
    ];
    KNOWN
        .iter()
        .copied()
        .find(|k| *k == reason)
        .unwrap_or("Rejected")
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
