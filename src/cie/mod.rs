//! Prisma Access CIE Third-Party Device-ID client: mutual TLS + `apiKey`, `cert:refresh`, `token:refresh`.
//!
//! The client makes exactly one HTTP request per call: no retries (not even reqwest's protocol
//! NACK retries), no redirects, no pooled connections. A repeated `cert:refresh` can evict the
//! certificate in use, so whether to call again is the controller's decision, made against the
//! budget (`controller::deviceid::budget`) and [`CieError::outcome_may_have_happened`].

pub mod budget;
mod error;

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Certificate, Identity, Method, StatusCode, Url};
use serde::{Deserialize, Serialize};

pub use error::CieError;

/// Path of `cert:refresh` below the regional base URL.
pub const CERT_REFRESH_PATH: &str = "/api/v1/token/cert:refresh";
/// Path of `token:refresh` below the regional base URL.
pub const TOKEN_REFRESH_PATH: &str = "/api/v1/token/token:refresh";
/// Bound on DNS + TCP + TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a whole call, response body included. The budget's margin accounts for it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Responses are a certificate or a token; anything much larger is not the Device-ID API.
const MAX_BODY: usize = 1 << 20;
/// How much of a non-JSON error body goes into an error message.
const MAX_ERROR_TEXT: usize = 200;

/// The HTTP method of `cert:refresh`. The documentation says GET with a JSON body; some proxies
/// drop bodies on GET, and a vendor fix may move it to POST — so it is one switch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RefreshMethod {
    #[default]
    Get,
    Post,
}

impl RefreshMethod {
    fn as_method(self) -> Method {
        match self {
            RefreshMethod::Get => Method::GET,
            RefreshMethod::Post => Method::POST,
        }
    }
}

/// The result of `cert:refresh`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertRefresh {
    /// The new certificate (PEM), issued for the CSR's key.
    pub cert: String,
    /// The certificate the service evicted to stay at two valid ones; empty if none.
    pub deleted_cert_name: String,
}

/// The result of `token:refresh`.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRefresh {
    /// The new API token, for the `apiKey` header.
    pub token: String,
    /// When the token expires, exactly as the vendor wrote it (its format is unsettled).
    pub expiry: String,
    /// The token the service evicted to stay at two; empty if none.
    pub deleted_token: String,
}

impl fmt::Debug for TokenRefresh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRefresh")
            .field("token", &"<redacted>")
            .field("expiry", &self.expiry)
            .field("deleted_token", &"<redacted>")
            .finish()
    }
}

/// A client for one tenant+vendor, authenticated with one certificate and one `apiKey`. Build a
/// new client after a refresh to use the new certificate or token.
#[derive(Clone)]
pub struct CieClient {
    http: reqwest::Client,
    endpoint: String,
    api_key: HeaderValue,
    refresh_method: RefreshMethod,
    request_timeout: Duration,
}

impl fmt::Debug for CieClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CieClient")
            .field("endpoint", &self.endpoint)
            .field("refresh_method", &self.refresh_method)
            .field("request_timeout", &self.request_timeout)
            .field("api_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CertRefreshRequest<'a> {
    pem_csr: &'a str,
    cert_name: &'a str,
}

// Unknown fields are ignored; only what we use must be there.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CertRefreshResponse {
    cert: String,
    #[serde(default)]
    deleted_cert_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRefreshResponse {
    token: String,
    #[serde(default)]
    expiry: Option<serde_json::Value>,
    #[serde(default)]
    deleted_token: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct VendorError {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
}

impl CieClient {
    /// `endpoint`: the regional base URL (https). `client_cert_pem`: the currently valid
    /// certificate (chain, leaf first) and `client_key_pem` its key. `ca_bundle`: PEM CAs to trust
    /// for the endpoint *instead of* the system roots; `None` uses the system roots.
    pub fn new(
        endpoint: &str,
        client_cert_pem: &str,
        client_key_pem: &str,
        api_key: &str,
        ca_bundle: Option<&str>,
    ) -> Result<Self, CieError> {
        let endpoint = parse_endpoint(endpoint)?;
        let api_key = api_key_header(api_key)?;
        if !client_cert_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(CieError::Config(
                "client certificate PEM holds no certificate".into(),
            ));
        }
        let identity =
            Identity::from_pem(format!("{client_cert_pem}\n{client_key_pem}").as_bytes())
                // reqwest's message does not quote the PEM, but say it in our words to be sure.
                .map_err(|_| {
                    CieError::Config("client certificate or key PEM cannot be read".into())
                })?;

        let mut builder = reqwest::Client::builder()
            .identity(identity)
            .https_only(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            // Calls are hours apart; a fresh connection per call avoids stale pooled ones.
            .pool_max_idle_per_host(0)
            .user_agent(concat!("certrotor/", env!("CARGO_PKG_VERSION")));
        if let Some(bundle) = ca_bundle.filter(|b| !b.trim().is_empty()) {
            let roots = Certificate::from_pem_bundle(bundle.as_bytes())
                .map_err(|e| CieError::Config(format!("CA bundle is not valid PEM: {e}")))?;
            if roots.is_empty() {
                return Err(CieError::Config("CA bundle holds no certificate".into()));
            }
            builder = builder.tls_certs_only(roots);
        }
        let http = builder.build().map_err(|e| {
            // Building fails on a key that does not match the certificate, among others.
            CieError::Config(format!(
                "cannot build the HTTPS client: {}",
                error_chain(&e)
            ))
        })?;
        Ok(CieClient {
            http,
            endpoint,
            api_key,
            refresh_method: RefreshMethod::default(),
            request_timeout: REQUEST_TIMEOUT,
        })
    }

    /// Send `cert:refresh` with this method instead of the documented GET.
    pub fn with_refresh_method(mut self, method: RefreshMethod) -> Self {
        self.refresh_method = method;
        self
    }

    /// A shorter bound on each call than [`REQUEST_TIMEOUT`]; longer ones are capped, because the
    /// budget's margin assumes a call reaches the vendor within it.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout.min(REQUEST_TIMEOUT);
        self
    }

    /// The base URL, without a trailing slash.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `cert:refresh`: ask for a certificate for `pem_csr`. On success the service may have
    /// evicted its oldest valid certificate (named in `deleted_cert_name`). Never retried here.
    pub async fn refresh_certificate(
        &self,
        pem_csr: &str,
        cert_name: &str,
    ) -> Result<CertRefresh, CieError> {
        let request = self
            .http
            .request(
                self.refresh_method.as_method(),
                format!("{}{CERT_REFRESH_PATH}", self.endpoint),
            )
            .json(&CertRefreshRequest { pem_csr, cert_name });
        let body = self.send(request).await.map_err(|e| match e {
            // Which method was used is the first thing to check when a proxy ate the body.
            CieError::BadRequest { code, message } => CieError::BadRequest {
                code,
                message: format!(
                    "{message} (cert:refresh was sent as {}; spec.refreshMethod switches between GET and POST)",
                    self.refresh_method.as_method()
                ),
            },
            other => other,
        })?;
        parse_cert_refresh(&body)
    }

    /// `token:refresh`: a new API token; the service keeps at most two.
    pub async fn refresh_token(&self) -> Result<TokenRefresh, CieError> {
        let request = self
            .http
            .get(format!("{}{TOKEN_REFRESH_PATH}", self.endpoint));
        let body = self.send(request).await?;
        parse_token_refresh(&body)
    }

    /// Sends once; returns the body of a 2xx response or the typed error.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Vec<u8>, CieError> {
        let mut response = request
            .header("apiKey", self.api_key.clone())
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status();
        let retry_after = retry_after(response.headers(), jiff::Timestamp::now());
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY {
                        return Err(if status.is_success() {
                            CieError::InvalidResponse("response body too large".into())
                        } else {
                            status_error(status, b"", retry_after)
                        });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                // The status line arrived, so the request was processed; a cut-off success body
                // means the refresh happened but its result is lost.
                Err(e) if status.is_success() => {
                    return Err(CieError::InvalidResponse(format!(
                        "response body cut off: {}",
                        error_chain(&e)
                    )));
                }
                Err(_) => return Err(status_error(status, b"", retry_after)),
            }
        }
        if status.is_success() {
            Ok(body)
        } else {
            Err(status_error(status, &body, retry_after))
        }
    }
}

fn parse_endpoint(endpoint: &str) -> Result<String, CieError> {
    let url = Url::parse(endpoint.trim())
        .map_err(|e| CieError::Config(format!("endpoint is not a URL: {e}")))?;
    if url.scheme() != "https" {
        return Err(CieError::Config(
            "endpoint must be https:// (mutual TLS)".into(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(CieError::Config(
            "endpoint must be a plain base URL (no query, fragment or credentials)".into(),
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn api_key_header(api_key: &str) -> Result<HeaderValue, CieError> {
    let api_key = api_key.trim();
    if api_key.is_empty() {
        return Err(CieError::Config("apiKey is empty".into()));
    }
    let mut value = HeaderValue::from_str(api_key)
        .map_err(|_| CieError::Config("apiKey holds characters not allowed in a header".into()))?;
    // Keeps it out of HTTP/2 header compression tables and out of hyper's debug output.
    value.set_sensitive(true);
    Ok(value)
}

fn transport_error(e: &reqwest::Error) -> CieError {
    // Connect errors (including a connect timeout) happen before the request is written; TLS
    // failures are told apart because a person must act on them.
    if server_certificate_rejected(e) {
        CieError::TlsVerification(error_chain(e))
    } else if handshake_refused(e) {
        CieError::HandshakeRefused(error_chain(e))
    } else if e.is_connect() {
        CieError::Connect(error_chain(e))
    } else {
        CieError::Transport(error_chain(e))
    }
}

/// The rustls error in an error's chain, if any.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // An io::Error's `source()` skips the error it wraps: look inside (io errors nest).
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if let Some(tls) = rustls_error(inner) {
                return Some(tls);
            }
        }
        current = err.source();
    }
    None
}

/// Whether our verification of the server's certificate failed (untrusted issuer, wrong name,
/// expired): the handshake stopped on our side, before any request.
fn server_certificate_rejected(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(rustls_error(e), Some(rustls::Error::InvalidCertificate(_)))
}

/// Whether the server refused our certificate with a fatal TLS alert. With TLS 1.3 the client
/// considers the handshake done before the server has checked its certificate, so the refusal
/// surfaces as an error on the request rather than on connect — but nothing was processed.
fn handshake_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        rustls_error(e),
        Some(rustls::Error::AlertReceived(
            A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::CertificateRequired
                | A::HandshakeFailure
        ))
    )
}

/// An error and its sources on one line: reqwest's top-level message alone ("error sending
/// request") hides the cause (a TLS alert, a reset, a timeout).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn status_error(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> CieError {
    let (code, message) = vendor_error(body);
    match status.as_u16() {
        400 => CieError::BadRequest { code, message },
        401 | 403 => CieError::Unauthorized { code, message },
        409 => CieError::Conflict { code, message },
        429 => CieError::RateLimited {
            code,
            message,
            retry_after,
        },
        s if status.is_server_error() => CieError::Server {
            status: s,
            code,
            message,
        },
        s => CieError::Unexpected {
            status: s,
            code,
            message,
        },
    }
}

/// The vendor's `{code, message}`; `code` may be a number or a string. A body that is not that
/// JSON (a proxy's error page) becomes the message, shortened.
fn vendor_error(body: &[u8]) -> (String, String) {
    match serde_json::from_slice::<VendorError>(body) {
        Ok(VendorError { code, message }) => (
            code.map(json_text).unwrap_or_default(),
            message.unwrap_or_default(),
        ),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let short: String = text.chars().take(MAX_ERROR_TEXT).collect();
            (String::new(), short)
        }
    }
}

fn json_text(value: serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap, now: jiff::Timestamp) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    static HTTP_DATE: jiff::fmt::rfc2822::DateTimeParser =
        jiff::fmt::rfc2822::DateTimeParser::new();
    let at = HTTP_DATE.parse_timestamp(value).ok()?;
    Some(Duration::try_from(at.duration_since(now)).unwrap_or_default())
}

/// Every parser of what the vendor sends back, run on `body` (for the fuzz targets).
#[doc(hidden)]
pub fn parse_any_response(body: &[u8]) {
    let _ = parse_cert_refresh(body);
    let _ = parse_token_refresh(body);
    let _ = vendor_error(body);
}

fn parse_cert_refresh(body: &[u8]) -> Result<CertRefresh, CieError> {
    let parsed: CertRefreshResponse = serde_json::from_slice(body).map_err(|e| {
        CieError::InvalidResponse(format!(
            "cert:refresh response is not the documented JSON: {e}"
        ))
    })?;
    if !parsed.cert.contains("-----BEGIN CERTIFICATE-----") {
        return Err(CieError::InvalidResponse(
            "cert:refresh response holds no PEM certificate".into(),
        ));
    }
    Ok(CertRefresh {
        cert: parsed.cert,
        deleted_cert_name: parsed.deleted_cert_name.unwrap_or_default(),
    })
}

fn parse_token_refresh(body: &[u8]) -> Result<TokenRefresh, CieError> {
    // serde_json's message can quote the offending input, which may be the token: keep only
    // the position.
    let parsed: TokenRefreshResponse = serde_json::from_slice(body).map_err(|e| {
        CieError::InvalidResponse(format!(
            "token:refresh response is not the documented JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if parsed.token.trim().is_empty() {
        return Err(CieError::InvalidResponse(
            "token:refresh response holds an empty token".into(),
        ));
    }
    Ok(TokenRefresh {
        token: parsed.token,
        expiry: parsed.expiry.map(json_text).unwrap_or_default(),
        deleted_token: parsed.deleted_token.map(json_text).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_refresh_tolerates_unknown_fields_and_missing_deleted_name() {
        let parsed = parse_cert_refresh(
            br#"{"cert":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n","extra":1}"#,
        )
        .unwrap();
        assert_eq!(parsed.deleted_cert_name, "");
        assert!(parsed.cert.starts_with("-----BEGIN CERTIFICATE-----\nMIIB"));
    }

    #[test]
    fn cert_refresh_without_a_certificate_is_invalid_and_did_happen() {
        let err = parse_cert_refresh(br#"{"cert":"","deletedCertName":"old"}"#).unwrap_err();
        assert_eq!(err.reason(), "InvalidResponse");
        assert!(err.outcome_may_have_happened());
        assert!(parse_cert_refresh(b"not json").is_err());
    }

    #[test]
    fn token_refresh_keeps_expiry_as_given_and_never_quotes_the_token() {
        let parsed = parse_token_refresh(
            br#"{"token":"s3cret","expiry":1767225600,"deletedToken":"old-one","x":null}"#,
        )
        .unwrap();
        assert_eq!(parsed.expiry, "1767225600");
        assert_eq!(parsed.deleted_token, "old-one");
        let debug = format!("{parsed:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("old-one"),
            "{debug}"
        );

        let err = parse_token_refresh(br#"{"token": s3cret-unquoted}"#).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn statuses_map_to_typed_errors_with_the_vendor_code_and_message() {
        let body = br#"{"code":"E409","message":"job running"}"#;
        let cases = [
            (400, "BadRequest", false),
            (401, "Unauthorized", false),
            (403, "Unauthorized", false),
            (409, "Conflict", false),
            (429, "RateLimited", false),
            (500, "ServerError", true),
            (503, "ServerError", true),
            (404, "UnexpectedStatus", false),
        ];
        for (status, reason, may_have_happened) in cases {
            let err = status_error(StatusCode::from_u16(status).unwrap(), body, None);
            assert_eq!(err.reason(), reason, "{status}");
            assert_eq!(
                err.outcome_may_have_happened(),
                may_have_happened,
                "{status}"
            );
            assert!(err.to_string().contains("job running"), "{err}");
            assert!(err.to_string().contains("E409"), "{err}");
        }
    }

    #[test]
    fn numeric_codes_and_non_json_bodies_are_kept_readable() {
        let err = status_error(
            StatusCode::CONFLICT,
            br#"{"code":409,"message":"busy"}"#,
            None,
        );
        assert_eq!(
            err,
            CieError::Conflict {
                code: "409".into(),
                message: "busy".into()
            }
        );
        let page = "<html>".to_string() + &"x".repeat(1000);
        let err = status_error(StatusCode::BAD_GATEWAY, page.as_bytes(), None);
        let CieError::Server { message, .. } = err else {
            panic!("not a server error: {err:?}")
        };
        assert_eq!(message.chars().count(), MAX_ERROR_TEXT);
    }

    #[test]
    fn retry_after_as_seconds_or_http_date() {
        let now: jiff::Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers, now), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3600"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(3600)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Mon, 23 Nov 2026 10:30:00 GMT"),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(1800)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers, now), None);
    }

    #[test]
    fn config_is_checked_and_debug_redacts_the_api_key() {
        let err = CieClient::new("http://example.test", "x", "y", "k", None).unwrap_err();
        assert_eq!(err.reason(), "InvalidConfig");
        let err = CieClient::new("https://example.test", "no pem", "y", "k", None).unwrap_err();
        assert_eq!(err.reason(), "InvalidConfig");
        assert_eq!(
            parse_endpoint("https://h.test/base/").unwrap(),
            "https://h.test/base"
        );
        assert!(api_key_header(" ").is_err());
        assert!(api_key_header("bad\nkey").is_err());
        let key = api_key_header("top-secret-key").unwrap();
        assert!(key.is_sensitive());
    }
}
