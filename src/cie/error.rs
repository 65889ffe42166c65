//! Typed errors of the Device-ID API, keeping the vendor's `{code, message}`.

use std::time::Duration;

/// Why a Device-ID call failed. Messages never contain the `apiKey`, tokens or keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CieError {
    /// 400: the vendor rejected the request (bad CSR or `certName`, or a proxy dropped the body).
    #[error("invalid request (code {code:?}): {message}")]
    BadRequest { code: String, message: String },
    /// 401/403: the client certificate or `apiKey` is not (or no longer) accepted. The vendor's
    /// advice is to regenerate the API certificate in the Cloud Identity Engine console — a human
    /// step; retrying cannot help.
    #[error(
        "unauthorized (code {code:?}): {message}; regenerate the API certificate in the Cloud Identity Engine console and update the onboarding Secret"
    )]
    Unauthorized { code: String, message: String },
    /// 409: another update/delete job is running; retry after it ends (with backoff).
    #[error("conflict, another update or delete job is running (code {code:?}): {message}")]
    Conflict { code: String, message: String },
    /// 429: the refresh budget is spent; wait at least an hour (or `Retry-After`, if longer).
    #[error("too many requests (code {code:?}): {message}")]
    RateLimited {
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// 5xx: the vendor failed; the request reached it, so the refresh may have happened.
    #[error("server error {status} (code {code:?}): {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    /// Any other status (404, a redirect, ...): most likely a wrong endpoint.
    #[error("unexpected status {status} (code {code:?}): {message}")]
    Unexpected {
        status: u16,
        code: String,
        message: String,
    },
    /// No connection was made (DNS, TCP or TLS handshake failed — including the server refusing
    /// our certificate — or the connect timed out): the request was certainly not processed.
    #[error("could not connect: {0}")]
    Connect(String),
    /// The endpoint's certificate failed our verification (a wrong or missing `caBundle`, a
    /// proxy intercepting TLS): nothing was sent. Needs a person.
    #[error("the endpoint's TLS certificate is not trusted: {0}")]
    TlsVerification(String),
    /// The server refused our client certificate during the handshake (evicted, expired, or
    /// not this tenant's): nothing was processed. Needs a person.
    #[error("the endpoint refused our client certificate in the TLS handshake: {0}")]
    HandshakeRefused(String),
    /// The request may have been sent but no (complete) response came back, including timeouts:
    /// the refresh MAY have happened.
    #[error("transport error: {0}")]
    Transport(String),
    /// A success status with a body we cannot use: the refresh DID happen.
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    /// The client could not be built from the given endpoint, certificate, key, apiKey or CA bundle.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl CieError {
    /// A CamelCase reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CieError::BadRequest { .. } => "BadRequest",
            CieError::Unauthorized { .. } => "Unauthorized",
            CieError::Conflict { .. } => "Conflict",
            CieError::RateLimited { .. } => "RateLimited",
            CieError::Server { .. } => "ServerError",
            CieError::Unexpected { .. } => "UnexpectedStatus",
            CieError::Connect(_) => "ConnectFailed",
            CieError::TlsVerification(_) => "TlsVerificationFailed",
            CieError::HandshakeRefused(_) => "HandshakeRefused",
            CieError::Transport(_) => "TransportError",
            CieError::InvalidResponse(_) => "InvalidResponse",
            CieError::Config(_) => "InvalidConfig",
        }
    }

    /// Whether the vendor may have carried out the call although we got no usable answer. For
    /// `cert:refresh` that means a certificate may have been issued (and the oldest evicted): the
    /// caller must not retry blindly, and must assume one more valid certificate exists.
    pub fn outcome_may_have_happened(&self) -> bool {
        matches!(
            self,
            CieError::Transport(_) | CieError::Server { .. } | CieError::InvalidResponse(_)
        )
    }

    /// Whether the request certainly never reached the vendor (no connection, or a TLS
    /// handshake that failed): it is no attempt against the budget.
    pub fn certainly_not_sent(&self) -> bool {
        matches!(
            self,
            CieError::Connect(_)
                | CieError::TlsVerification(_)
                | CieError::HandshakeRefused(_)
                | CieError::Config(_)
        )
    }

    /// Whether a person must act before calls can succeed (condition `Stalled`).
    pub fn needs_human(&self) -> bool {
        matches!(
            self,
            CieError::Unauthorized { .. }
                | CieError::BadRequest { .. }
                | CieError::Config(_)
                | CieError::TlsVerification(_)
                | CieError::HandshakeRefused(_)
        )
    }
}
