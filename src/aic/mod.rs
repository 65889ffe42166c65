//! PingOne Advanced Identity Cloud client: tokens, CSR and certificate endpoints, typed errors.
//!
//! One `AicClient` per tenant and credential: it caches one access token and renews it shortly
//! before it expires. Idempotent calls (GET, PATCH `active`, DELETE) are retried on 429/5xx and
//! transport errors with backoff and jitter, honouring `Retry-After`; creating calls (POST, and
//! PATCH of a CSR with its chain) are retried only on 429, when the tenant has certainly not acted —
//! after an ambiguous failure the controller lists and adopts instead of creating twice.

mod error;
pub mod limit;
mod retry;
mod token;
mod types;

pub use error::AicError;
pub use retry::{RetryPolicy, parse_retry_after};
pub use token::{Credentials, assertion, audience};
pub use types::{Certificate, Csr, CsrRequest};

/// Every parser of what a tenant sends back, run on `body` (for the fuzz targets).
#[doc(hidden)]
pub fn parse_any_response(body: &[u8]) {
    let _ = serde_json::from_slice::<Vec<Certificate>>(body);
    let _ = serde_json::from_slice::<Certificate>(body);
    let _ = serde_json::from_slice::<Vec<Csr>>(body);
    let _ = serde_json::from_slice::<Csr>(body);
    let _ = serde_json::from_slice::<token::TokenResponse>(body);
    let _ = serde_json::from_slice::<types::ErrorBody>(body);
    let _ = oauth_or_text(body);
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = parse_retry_after(text, jiff::Timestamp::UNIX_EPOCH);
    }
}

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use token::{CachedToken, TokenResponse};
use types::{ErrorBody, UploadCertificate};

/// The scope certrotor asks for: everything it does is within it.
pub const SCOPE: &str = "fr:idc:certificate:*";

/// Receives one call per HTTP request made to a tenant (metrics, tests).
pub trait CallObserver: Send + Sync {
    fn observe(&self, operation: &'static str, outcome: &str, elapsed: Duration);
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    /// JWT assertion lifetime (≤ 15 min).
    pub assertion_lifetime: Duration,
    /// Requests in flight to this tenant at most, so one slow tenant ties up only its own share
    /// of the reconcilers' time and a burst of resources does not hammer one tenant.
    pub max_in_flight: usize,
    /// Requests per second to this tenant at most (shared by every client of the tenant).
    pub limiter: Option<Arc<limit::RateLimiter>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            assertion_lifetime: Duration::from_secs(180),
            max_in_flight: 4,
            limiter: None,
        }
    }
}

pub struct AicClient {
    base: Url,
    http: reqwest::Client,
    credentials: Credentials,
    options: ClientOptions,
    token: Mutex<Option<CachedToken>>,
    observer: Option<Arc<dyn CallObserver>>,
    in_flight: tokio::sync::Semaphore,
    /// The newest certificate list request, shared by every caller that began after it started.
    latest_list: std::sync::Mutex<Option<SharedList>>,
}

type ListFuture = futures::future::Shared<
    futures::future::BoxFuture<'static, Result<Arc<Vec<Certificate>>, AicError>>,
>;

struct SharedList {
    started: Instant,
    result: ListFuture,
}

impl std::fmt::Debug for AicClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AicClient")
            .field("base", &self.base.as_str())
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
struct Op {
    name: &'static str,
    /// Safe to send again after an ambiguous failure.
    idempotent: bool,
}

impl AicClient {
    /// `url` is the tenant environment base URL; https is required except for loopback hosts.
    pub fn new(
        url: &str,
        credentials: Credentials,
        ca_bundle: Option<&str>,
        options: ClientOptions,
    ) -> Result<Self, AicError> {
        let base = parse_base_url(url)?;
        let mut builder = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("certrotor/", env!("CARGO_PKG_VERSION")));
        if let Some(bundle) = ca_bundle.filter(|b| !b.trim().is_empty()) {
            let certs = reqwest::Certificate::from_pem_bundle(bundle.as_bytes())
                .map_err(|e| AicError::Config(format!("caBundle is not valid PEM: {e}")))?;
            if certs.is_empty() {
                return Err(AicError::Config("caBundle holds no certificate".into()));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| AicError::Config(format!("HTTP client: {e}")))?;
        let in_flight = tokio::sync::Semaphore::new(options.max_in_flight.max(1));
        Ok(Self {
            base,
            http,
            credentials,
            options,
            token: Mutex::new(None),
            observer: None,
            in_flight,
            latest_list: std::sync::Mutex::new(None),
        })
    }

    pub fn with_observer(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Whether a token obtained earlier is still good to use (no token request needed).
    pub async fn has_fresh_token(&self) -> bool {
        self.token
            .lock()
            .await
            .as_ref()
            .is_some_and(|t| t.is_fresh(Instant::now()))
    }

    pub async fn list_certificates(&self) -> Result<Vec<Certificate>, AicError> {
        self.call(
            Op {
                name: "list_certificates",
                idempotent: true,
            },
            Method::GET,
            "/environment/certificates",
            None,
        )
        .await
    }

    /// The tenant's certificates as seen by a list request that started no earlier than `since`.
    /// Callers that began at about the same time share one request: polling `live` for all of a
    /// tenant's certificates costs one call, not one per certificate. Passing the time the caller
    /// began keeps it exact: the list reflects everything that caller did before.
    pub async fn list_certificates_since(
        self: &Arc<Self>,
        since: Instant,
    ) -> Result<Arc<Vec<Certificate>>, AicError> {
        self.list_certificates_shared(since)
            .await
            .map(|(_, list)| list)
    }

    /// As [`AicClient::list_certificates_since`], also saying when the list request started.
    pub async fn list_certificates_shared(
        self: &Arc<Self>,
        since: Instant,
    ) -> Result<(Instant, Arc<Vec<Certificate>>), AicError> {
        use futures::FutureExt;
        let (started, result) = {
            let mut latest = self.latest_list.lock().unwrap_or_else(|e| e.into_inner());
            match latest.as_ref().filter(|l| l.started >= since) {
                Some(list) => (list.started, list.result.clone()),
                None => {
                    let client = self.clone();
                    let result = async move { client.list_certificates().await.map(Arc::new) }
                        .boxed()
                        .shared();
                    let started = Instant::now();
                    *latest = Some(SharedList {
                        started,
                        result: result.clone(),
                    });
                    (started, result)
                }
            }
        };
        Ok((started, result.await?))
    }

    /// `None` when the tenant does not know the id.
    pub async fn get_certificate(&self, id: &str) -> Result<Option<Certificate>, AicError> {
        let path = format!("/environment/certificates/{}", encode(id));
        not_found_as_none(
            self.call(
                Op {
                    name: "get_certificate",
                    idempotent: true,
                },
                Method::GET,
                &path,
                None,
            )
            .await,
        )
    }

    /// Uploads a chain (leaf first) and its unencrypted PKCS#8 key. `active: true` starts the
    /// install in the same call.
    pub async fn create_certificate(
        &self,
        chain_pem: &str,
        key_pkcs8_pem: &str,
        active: bool,
    ) -> Result<Certificate, AicError> {
        let body = serde_json::to_value(UploadCertificate {
            certificate: chain_pem,
            private_key: key_pkcs8_pem,
            active,
        })
        .map_err(|e| AicError::InvalidResponse(e.to_string()))?;
        self.call(
            Op {
                name: "create_certificate",
                idempotent: false,
            },
            Method::POST,
            "/environment/certificates",
            Some(body),
        )
        .await
    }

    pub async fn set_active(&self, id: &str, active: bool) -> Result<Certificate, AicError> {
        let path = format!("/environment/certificates/{}", encode(id));
        let body = serde_json::json!({ "active": active });
        self.call(
            Op {
                name: "set_active",
                idempotent: true,
            },
            Method::PATCH,
            &path,
            Some(body),
        )
        .await
    }

    /// Idempotent: deleting an unknown id succeeds.
    pub async fn delete_certificate(&self, id: &str) -> Result<(), AicError> {
        let path = format!("/environment/certificates/{}", encode(id));
        self.call_empty(
            Op {
                name: "delete_certificate",
                idempotent: true,
            },
            Method::DELETE,
            &path,
        )
        .await
    }

    pub async fn list_csrs(&self) -> Result<Vec<Csr>, AicError> {
        self.call(
            Op {
                name: "list_csrs",
                idempotent: true,
            },
            Method::GET,
            "/environment/csrs",
            None,
        )
        .await
    }

    pub async fn get_csr(&self, id: &str) -> Result<Option<Csr>, AicError> {
        let path = format!("/environment/csrs/{}", encode(id));
        not_found_as_none(
            self.call(
                Op {
                    name: "get_csr",
                    idempotent: true,
                },
                Method::GET,
                &path,
                None,
            )
            .await,
        )
    }

    pub async fn create_csr(&self, request: &CsrRequest) -> Result<Csr, AicError> {
        let body =
            serde_json::to_value(request).map_err(|e| AicError::InvalidResponse(e.to_string()))?;
        self.call(
            Op {
                name: "create_csr",
                idempotent: false,
            },
            Method::POST,
            "/environment/csrs",
            Some(body),
        )
        .await
    }

    /// Uploads the signed chain for a tenant-made CSR; the result carries `certificateID`.
    pub async fn complete_csr(&self, id: &str, chain_pem: &str) -> Result<Csr, AicError> {
        let path = format!("/environment/csrs/{}", encode(id));
        let body = serde_json::json!({ "certificate": chain_pem });
        self.call(
            Op {
                name: "complete_csr",
                idempotent: false,
            },
            Method::PATCH,
            &path,
            Some(body),
        )
        .await
    }

    pub async fn delete_csr(&self, id: &str) -> Result<(), AicError> {
        let path = format!("/environment/csrs/{}", encode(id));
        self.call_empty(
            Op {
                name: "delete_csr",
                idempotent: true,
            },
            Method::DELETE,
            &path,
        )
        .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        op: Op,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, AicError> {
        let bytes = self.send(op, method, path, body).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| AicError::InvalidResponse(format!("{}: {e}", op.name)))
    }

    async fn call_empty(&self, op: Op, method: Method, path: &str) -> Result<(), AicError> {
        self.send(op, method, path, None).await.map(drop)
    }

    /// One logical call: token, request, bounded retries.
    async fn send(
        &self,
        op: Op,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Vec<u8>, AicError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| AicError::Config(e.to_string()))?;
        let mut attempt = 0;
        let mut refreshed_token = false;
        loop {
            attempt += 1;
            let token = self.access_token().await?;
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(&token);
            if let Some(body) = &body {
                request = request.json(body);
            }
            if let Some(limiter) = &self.options.limiter {
                limiter.acquire().await;
            }
            let permit = self
                .in_flight
                .acquire()
                .await
                .map_err(|_| AicError::Transport("client closed".into()))?;
            let started = Instant::now();
            let result = match request.send().await {
                Ok(response) => read_response(response).await,
                Err(e) => Err(AicError::Transport(describe_transport(&e))),
            };
            drop(permit);
            self.observe(op.name, &result, started.elapsed());
            let err = match result {
                Ok(bytes) => return Ok(bytes),
                Err(err) => err,
            };
            // A rejected token is renewed once (it may have been revoked or the clock skewed).
            if matches!(err, AicError::Unauthorized { status: 401, .. })
                && !refreshed_token
                && matches!(self.credentials, Credentials::ServiceAccount { .. })
            {
                refreshed_token = true;
                *self.token.lock().await = None;
                continue;
            }
            if let (AicError::RateLimited { .. }, Some(limiter)) = (&err, &self.options.limiter) {
                // The tenant is busy for everyone: hold every caller, not only this one.
                limiter.pause_for(err.retry_after().unwrap_or(Duration::from_secs(1)));
            }
            let retryable = match &err {
                AicError::RateLimited { .. } => true,
                AicError::Server { .. } | AicError::Transport(_) => op.idempotent,
                _ => false,
            };
            if !retryable {
                return Err(err);
            }
            match self
                .options
                .retry
                .delay(attempt, err.retry_after(), fastrand::f64())
            {
                Some(wait) => {
                    tracing::debug!(operation = op.name, attempt, ?wait, error = %err, "retrying tenant call");
                    tokio::time::sleep(wait).await;
                }
                None => return Err(err),
            }
        }
    }

    fn observe(
        &self,
        operation: &'static str,
        result: &Result<Vec<u8>, AicError>,
        elapsed: Duration,
    ) {
        if let Some(observer) = &self.observer {
            let outcome = match result {
                Ok(_) => "ok",
                Err(e) => e.reason(),
            };
            observer.observe(operation, outcome, elapsed);
        }
    }

    /// The cached token, or a new one. The lock is held while fetching, so concurrent
    /// reconciles of one tenant share one token request.
    async fn access_token(&self) -> Result<String, AicError> {
        let (id, key) = match &self.credentials {
            Credentials::AccessToken(token) => return Ok(token.clone()),
            Credentials::ServiceAccount { id, key } => (id, key),
        };
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| t.is_fresh(Instant::now())) {
            return Ok(token.value.clone());
        }
        let audience = audience(&self.base);
        let url = self
            .base
            .join("/am/oauth2/access_token")
            .map_err(|e| AicError::Config(e.to_string()))?;
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            // A fresh assertion (new jti) per attempt: the tenant rejects a replayed jti.
            let jwt = assertion(
                id,
                key,
                &audience,
                jiff::Timestamp::now(),
                self.options.assertion_lifetime,
            )?;
            let form = [
                ("client_id", "service-account"),
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", jwt.as_str()),
                ("scope", SCOPE),
            ];
            if let Some(limiter) = &self.options.limiter {
                limiter.acquire().await;
            }
            let started = Instant::now();
            let obtained = Instant::now();
            let result = match self.http.post(url.clone()).form(&form).send().await {
                Ok(response) => read_response(response).await,
                Err(e) => Err(AicError::Transport(describe_transport(&e))),
            };
            self.observe("token", &result, started.elapsed());
            match result {
                Ok(bytes) => break (bytes, obtained),
                Err(
                    err @ (AicError::RateLimited { .. }
                    | AicError::Server { .. }
                    | AicError::Transport(_)),
                ) => {
                    match self
                        .options
                        .retry
                        .delay(attempt, err.retry_after(), fastrand::f64())
                    {
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => return Err(err),
                    }
                }
                Err(
                    AicError::BadRequest { code, message }
                    | AicError::Unauthorized { code, message, .. },
                ) => {
                    return Err(AicError::Unauthorized {
                        status: 400,
                        code,
                        message,
                    });
                }
                Err(err) => return Err(AicError::Token(err.to_string())),
            }
        };
        let (bytes, obtained) = response;
        let parsed: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|_| AicError::Token("token response is not JSON with access_token".into()))?;
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(899));
        let token = CachedToken::new(parsed.access_token, lifetime, obtained);
        let value = token.value.clone();
        *cached = Some(token);
        Ok(value)
    }
}

fn parse_base_url(url: &str) -> Result<Url, AicError> {
    let base = Url::parse(url.trim_end_matches('/'))
        .map_err(|e| AicError::Config(format!("tenant url {url:?}: {e}")))?;
    let loopback = match base.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match base.scheme() {
        "https" => {}
        "http" if loopback => {}
        other => {
            return Err(AicError::Config(format!(
                "tenant url must use https (plain {other} is allowed only for loopback hosts)"
            )));
        }
    }
    if base.host().is_none() {
        return Err(AicError::Config("tenant url has no host".into()));
    }
    Ok(base)
}

/// Maps a response to bytes or a typed error. 404 and 500 may come with an empty body.
async fn read_response(response: reqwest::Response) -> Result<Vec<u8>, AicError> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
    let bytes = response
        .bytes()
        .await
        .map_err(|e| AicError::Transport(describe_transport(&e)))?;
    if status.is_success() {
        return Ok(bytes.to_vec());
    }
    let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
        code: None,
        // OAuth errors use {error, error_description}; keep a short, printable excerpt.
        message: Some(oauth_or_text(&bytes)),
    });
    let code = body.code.unwrap_or_else(|| status.as_u16().to_string());
    let message = body.message.unwrap_or_default();
    Err(match status {
        StatusCode::BAD_REQUEST => AicError::BadRequest { code, message },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => AicError::Unauthorized {
            status: status.as_u16(),
            code,
            message,
        },
        StatusCode::NOT_FOUND => AicError::NotFound,
        StatusCode::TOO_MANY_REQUESTS => AicError::RateLimited { retry_after },
        s if s.is_server_error() => AicError::Server {
            status: s.as_u16(),
            code,
            message,
        },
        s => AicError::Unexpected {
            status: s.as_u16(),
            code,
            message,
        },
    })
}

fn oauth_or_text(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct OAuthError {
        error: String,
        #[serde(default)]
        error_description: Option<String>,
    }
    if let Ok(e) = serde_json::from_slice::<OAuthError>(bytes) {
        return match e.error_description {
            Some(d) => format!("{}: {d}", e.error),
            None => e.error,
        };
    }
    String::from_utf8_lossy(bytes).chars().take(200).collect()
}

fn not_found_as_none<T>(result: Result<T, AicError>) -> Result<Option<T>, AicError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(AicError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Transport errors without the URL's query or anything from the request body.
fn describe_transport(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body failed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

fn encode(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_required_except_loopback() {
        for ok in [
            "https://t.example.com",
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:9",
        ] {
            assert!(parse_base_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://t.example.com",
            "ftp://127.0.0.1",
            "not a url",
            "http://10.0.0.1",
        ] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }
}
