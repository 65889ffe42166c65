use std::time::Duration;

/// What went wrong talking to a tenant. Keeps the vendor's `{code, message}`; never holds a
/// token, key or assertion.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AicError {
    #[error("tenant rejected the request (400 {code}): {message}")]
    BadRequest { code: String, message: String },
    #[error("tenant refused the credentials ({status} {code}): {message}")]
    Unauthorized {
        status: u16,
        code: String,
        message: String,
    },
    #[error("not found")]
    NotFound,
    #[error("tenant is rate limiting (429); retry after {retry_after:?}")]
    RateLimited { retry_after: Option<Duration> },
    #[error("tenant error {status} {code}: {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected status {status} {code}: {message}")]
    Unexpected {
        status: u16,
        code: String,
        message: String,
    },
    #[error("could not reach the tenant: {0}")]
    Transport(String),
    #[error("tenant sent an unreadable response: {0}")]
    InvalidResponse(String),
    #[error("token request failed: {0}")]
    Token(String),
    #[error("invalid tenant configuration: {0}")]
    Config(String),
}

impl AicError {
    /// CamelCase, for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AicError::BadRequest { .. } => "TenantRejected",
            AicError::Unauthorized { .. } => "TenantUnauthorized",
            AicError::NotFound => "TenantNotFound",
            AicError::RateLimited { .. } => "TenantRateLimited",
            AicError::Server { .. } => "TenantServerError",
            AicError::Unexpected { .. } => "TenantUnexpectedStatus",
            AicError::Transport(_) => "TenantUnreachable",
            AicError::InvalidResponse(_) => "TenantInvalidResponse",
            AicError::Token(_) => "TenantTokenFailed",
            AicError::Config(_) => "InvalidTenantConfig",
        }
    }

    /// Worth trying again later without a person (as opposed to bad input or refused credentials).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AicError::RateLimited { .. }
                | AicError::Server { .. }
                | AicError::Transport(_)
                | AicError::InvalidResponse(_)
        )
    }

    /// Needs a person: credentials refused or the configuration is unusable.
    pub fn needs_person(&self) -> bool {
        matches!(
            self,
            AicError::Unauthorized { .. } | AicError::Config(_) | AicError::Token(_)
        )
    }

    /// Retry-After the tenant asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AicError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}
