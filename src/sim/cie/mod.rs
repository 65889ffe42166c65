//! Prisma Access CIE Third-Party Device-ID simulator (`certrotor sim cie`).
//!
//! Follows the documented behaviour (shared/API-NOTES.md): HTTPS that requires a client
//! certificate issued by the simulator's CA *and* still valid — by the simulator's clock and its
//! list of valid certificates (an evicted certificate passes the TLS handshake, then gets 401) —
//! plus an `apiKey` header matching a current token. Per tenant+vendor (the simulator is one):
//! at most two valid certificates and two tokens, the oldest evicted and named; `cert:refresh`
//! 3 attempts then 1 per hour, `token:refresh` 5 then 2 per hour, else 429 `{code, message}`
//! (the counting rule is in `tenant.rs`). Fault knobs: 409, 5xx, a lost response, latency.
//!
//! Order of checks in a refresh: client certificate, `apiKey`, request body (400 does not count
//! as an attempt), budget (429), then the fault knobs (409 and 5xx do count), then the refresh.

mod tenant;
mod tls;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use std::{fmt, fs};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use jiff::{SignedDuration, Timestamp};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cie::budget::{CERT_REFRESH, TOKEN_REFRESH};
use crate::cie::{CERT_REFRESH_PATH, TOKEN_REFRESH_PATH};
use crate::pki;
use tenant::{Tenant, Token, ValidCert, admit};
use tls::{ClientCa, Peer, TlsListener};

/// The name of the certificate handed out at onboarding.
pub const ONBOARDING_CERT_NAME: &str = "onboarding";
/// Issued certificates start this long before "now", as real CAs do for clock skew.
const BACKDATE: Duration = Duration::from_secs(300);
/// How long `shutdown` waits for open connections before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Behaviour fixed at start.
#[derive(Clone, Debug)]
pub struct CieSimConfig {
    /// Validity of issued certificates (the real value is unsettled).
    pub cert_validity: Duration,
    /// Lifetime of API tokens (the real value is unsettled).
    pub token_validity: Duration,
    /// Delay before every answer (adjustable later through [`Knobs::set_latency`]).
    pub latency: Duration,
}

impl Default for CieSimConfig {
    fn default() -> Self {
        CieSimConfig {
            cert_validity: Duration::from_secs(30 * 24 * 3600),
            token_validity: Duration::from_secs(30 * 24 * 3600),
            latency: Duration::ZERO,
        }
    }
}

/// The simulator's notion of now: real time plus an offset that tests move forward. It drives
/// certificate validity (in the TLS handshake too), token expiry, eviction and the budget.
#[derive(Debug, Default)]
pub struct SimClock {
    offset_ms: AtomicI64,
}

impl SimClock {
    pub fn now(&self) -> Timestamp {
        let offset = SignedDuration::from_millis(self.offset_ms.load(Ordering::SeqCst));
        Timestamp::now()
            .saturating_add(offset)
            .unwrap_or(Timestamp::MAX)
    }

    /// Moves the simulated time forward.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

/// Faults to inject; each counter applies to that many of the next refresh calls.
#[derive(Debug, Default)]
pub struct Knobs {
    conflict_next: AtomicU32,
    drop_next_response: AtomicU32,
    fail_next_5xx: AtomicU32,
    latency_ms: AtomicU64,
}

impl Knobs {
    /// Answer the next `n` refreshes (that pass authentication and the budget) with 409.
    pub fn set_conflict_next(&self, n: u32) {
        self.conflict_next.store(n, Ordering::SeqCst);
    }

    /// Carry out the next `n` successful refreshes, then close the connection without a response.
    pub fn set_drop_next_response(&self, n: u32) {
        self.drop_next_response.store(n, Ordering::SeqCst);
    }

    /// Answer the next `n` refreshes (that pass authentication and the budget) with 500.
    pub fn set_fail_next_5xx(&self, n: u32) {
        self.fail_next_5xx.store(n, Ordering::SeqCst);
    }

    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.latency_ms.store(ms, Ordering::SeqCst);
    }

    fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::SeqCst))
    }

    /// Uses up one count of `counter`; false when it is zero.
    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Which endpoint a call went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    CertRefresh,
    TokenRefresh,
    Other,
}

/// One HTTP request that passed the TLS handshake.
#[derive(Clone, Debug)]
pub struct CallRecord {
    /// Simulated time of arrival.
    pub at: Timestamp,
    pub operation: Operation,
    pub method: String,
    /// The status answered (or that would have been, for a dropped response).
    pub status: u16,
    /// Name of the valid certificate the client authenticated with.
    pub client_cert_name: Option<String>,
    /// `certName` requested by a `cert:refresh`.
    pub cert_name: Option<String>,
    pub response_dropped: bool,
}

/// What a vendor's console hands out at onboarding: the first certificate, its key, the token.
#[derive(Clone)]
pub struct Onboarding {
    pub cert_pem: String,
    pub key_pem: String,
    pub api_key: String,
}

impl fmt::Debug for Onboarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Onboarding")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("api_key", &"<redacted>")
            .finish()
    }
}

struct Shared {
    clock: Arc<SimClock>,
    knobs: Knobs,
    config: CieSimConfig,
    client_ca: ClientCa,
    tenant: Mutex<Tenant>,
    calls: Mutex<Vec<CallRecord>>,
    handshake_failures: Arc<AtomicUsize>,
    rate_limited: AtomicUsize,
}

/// A running simulator on its own port.
pub struct CieSim {
    addr: SocketAddr,
    ca_pem: String,
    onboarding: Onboarding,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    acceptor: Option<JoinHandle<()>>,
}

impl fmt::Debug for CieSim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CieSim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl CieSim {
    /// Binds `addr` (use port 0 in tests) and serves until [`CieSim::shutdown`] or drop.
    pub async fn start(addr: SocketAddr, config: CieSimConfig) -> anyhow::Result<CieSim> {
        let clock = Arc::new(SimClock::default());
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let addr = tcp.local_addr()?;

        // The endpoint's certificate is checked by clients against the real clock.
        let server_ca = pki::ca::Ca::new("certrotor CIE simulator server CA")?;
        let mut sans = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        if !addr.ip().is_unspecified() {
            sans.push(addr.ip().to_string());
        }
        let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
        let real_now = Timestamp::now();
        let (server_chain, server_key) = server_ca.issue(
            "localhost",
            &sans,
            real_now - SignedDuration::from_hours(1),
            real_now + SignedDuration::from_hours(24 * 365 * 10),
            pki::KeyAlgorithm::EcdsaP256,
        )?;

        let client_ca = ClientCa::new("certrotor CIE simulator client CA")?;
        let now = whole_second(clock.now());
        let (cert_pem, key_pem) = client_ca.issue(
            ONBOARDING_CERT_NAME,
            now - BACKDATE,
            now + config.cert_validity,
        )?;
        let api_key = new_token()?;
        let mut tenant = Tenant::default();
        tenant.add_cert(ValidCert {
            name: ONBOARDING_CERT_NAME.into(),
            der: leaf_der(&cert_pem).context("onboarding certificate")?,
            not_after: now + config.cert_validity,
        });
        tenant.add_token(Token {
            value: api_key.clone(),
            expires: now + config.token_validity,
        });

        let handshake_failures = Arc::new(AtomicUsize::new(0));
        let tls_config = tls::server_config(&server_chain, &server_key, &client_ca, clock.clone())?;
        let (listener, acceptor) = TlsListener::start(tcp, tls_config, handshake_failures.clone())?;

        let knobs = Knobs::default();
        knobs.set_latency(config.latency);
        let shared = Arc::new(Shared {
            clock,
            knobs,
            config,
            client_ca,
            tenant: Mutex::new(tenant),
            calls: Mutex::new(Vec::new()),
            handshake_failures,
            rate_limited: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route(CERT_REFRESH_PATH, any(cert_refresh))
            .route(TOKEN_REFRESH_PATH, any(token_refresh))
            .fallback(not_found)
            .with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "cie sim: server stopped");
            }
        });
        tracing::info!(%addr, "cie sim: listening");
        Ok(CieSim {
            addr,
            ca_pem: server_ca.chain_pem(),
            onboarding: Onboarding {
                cert_pem,
                key_pem,
                api_key,
            },
            shared,
            stop: Some(stop),
            server: Some(server),
            acceptor: Some(acceptor),
        })
    }

    /// `https://127.0.0.1:PORT` (loopback when bound to an unspecified address).
    pub fn url(&self) -> String {
        let ip = match self.addr.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        format!("https://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// The CA that signed the endpoint's certificate: the client's `caBundle`.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    pub fn onboarding(&self) -> Onboarding {
        self.onboarding.clone()
    }

    /// What a person re-onboarding in the console gets: a new onboarding certificate, key and
    /// apiKey. Every certificate and token valid before is invalidated (their calls get 401).
    pub fn reonboard(&self) -> anyhow::Result<Onboarding> {
        let now = whole_second(self.shared.clock.now());
        let validity = self.shared.config.cert_validity;
        let (cert_pem, key_pem) =
            self.shared
                .client_ca
                .issue(ONBOARDING_CERT_NAME, now - BACKDATE, now + validity)?;
        let api_key = new_token()?;
        let mut tenant = Tenant::default();
        {
            let old = lock(&self.shared.tenant);
            tenant.cert_attempts = old.cert_attempts.clone();
            tenant.token_attempts = old.token_attempts.clone();
        }
        tenant.add_cert(ValidCert {
            name: ONBOARDING_CERT_NAME.into(),
            der: leaf_der(&cert_pem).context("onboarding certificate")?,
            not_after: now + validity,
        });
        tenant.add_token(Token {
            value: api_key.clone(),
            expires: now + self.shared.config.token_validity,
        });
        *lock(&self.shared.tenant) = tenant;
        Ok(Onboarding {
            cert_pem,
            key_pem,
            api_key,
        })
    }

    pub fn clock(&self) -> &SimClock {
        &self.shared.clock
    }

    pub fn knobs(&self) -> &Knobs {
        &self.shared.knobs
    }

    /// Every request that passed the TLS handshake, in order.
    pub fn calls(&self) -> Vec<CallRecord> {
        lock(&self.shared.calls).clone()
    }

    /// Names of the currently valid certificates, oldest first.
    pub fn valid_cert_names(&self) -> Vec<String> {
        let now = self.shared.clock.now();
        let mut tenant = lock(&self.shared.tenant);
        tenant.forget_expired(now);
        tenant.certs.iter().map(|c| c.name.clone()).collect()
    }

    /// Whether the service would accept `cert_pem` (its first certificate) now.
    pub fn is_valid(&self, cert_pem: &str) -> bool {
        let Some(der) = leaf_der(cert_pem) else {
            return false;
        };
        let now = self.shared.clock.now();
        lock(&self.shared.tenant).valid_cert(&der, now).is_some()
    }

    /// How many calls were answered 429.
    pub fn count_429(&self) -> usize {
        self.shared.rate_limited.load(Ordering::SeqCst)
    }

    /// How many TLS handshakes were refused (no, foreign or expired client certificate).
    pub fn handshake_failures(&self) -> usize {
        self.shared.handshake_failures.load(Ordering::SeqCst)
    }

    /// Writes what onboarding in the vendor's console would give: `tls.crt`, `tls.key`, `apiKey`,
    /// `ca.crt` (for the endpoint), `endpoint`, and `onboarding-secret.yaml`, a Secret holding the
    /// first three, ready for `kubectl apply`. Key and token files are readable by the owner only.
    pub fn write_onboarding_bundle(&self, dir: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let onboarding = &self.onboarding;
        write_file(dir, "tls.crt", &onboarding.cert_pem, false)?;
        write_file(dir, "tls.key", &onboarding.key_pem, true)?;
        write_file(dir, "apiKey", &onboarding.api_key, true)?;
        write_file(dir, "ca.crt", &self.ca_pem, false)?;
        write_file(dir, "endpoint", &self.url(), false)?;
        write_file(
            dir,
            "onboarding-secret.yaml",
            &onboarding_secret(onboarding)?,
            true,
        )?;
        Ok(())
    }

    /// Stops accepting, lets open requests finish (briefly), and stops.
    pub async fn shutdown(mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.abort();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
                .await
                .is_err()
        {
            server.abort();
        }
    }
}

impl Drop for CieSim {
    fn drop(&mut self) {
        for task in [self.acceptor.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

/// `certrotor sim cie --listen ADDR`: serve until Ctrl-C or SIGTERM. With `onboarding_out`, the
/// onboarding bundle is written there (the credentials are never printed).
pub async fn run_cli(
    listen: SocketAddr,
    config: CieSimConfig,
    onboarding_out: Option<PathBuf>,
) -> anyhow::Result<()> {
    run_until(listen, config, onboarding_out, wait_for_stop_signal()).await
}

/// [`run_cli`] with the stop signal given, so the command's behaviour can be tested.
pub async fn run_until(
    listen: SocketAddr,
    config: CieSimConfig,
    onboarding_out: Option<PathBuf>,
    stop: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let sim = CieSim::start(listen, config).await?;
    println!("CIE Device-ID simulator listening on {}", sim.url());
    match &onboarding_out {
        Some(dir) => {
            sim.write_onboarding_bundle(dir)?;
            println!(
                "onboarding bundle (tls.crt, tls.key, apiKey, ca.crt, onboarding-secret.yaml) in {}",
                dir.display()
            );
        }
        None => println!("no onboarding bundle written (pass an output directory to get one)"),
    }
    let stopped = stop.await;
    sim.shutdown().await;
    stopped
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

// ---- requests ------------------------------------------------------------------------------

/// An answer before it becomes an HTTP response, so the call record sees its status.
struct Reply {
    status: StatusCode,
    body: serde_json::Value,
    retry_after: Option<Duration>,
}

impl Reply {
    fn ok(body: serde_json::Value) -> Reply {
        Reply {
            status: StatusCode::OK,
            body,
            retry_after: None,
        }
    }

    /// The vendor's error shape, `{code, message}`.
    fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Reply {
        Reply {
            status,
            body: json!({ "code": code, "message": message.into() }),
            retry_after: None,
        }
    }

    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(wait) = self.retry_after {
            // Rounded up: retrying at the advertised time must succeed.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CertRefreshBody {
    pem_csr: String,
    cert_name: String,
}

async fn cert_refresh(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared
        .answer(Operation::CertRefresh, &peer, &method, |record, now| {
            shared.cert_refresh(&peer, &headers, &body, now, record)
        })
        .await
}

async fn token_refresh(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    shared
        .answer(Operation::TokenRefresh, &peer, &method, |record, now| {
            shared.token_refresh(&peer, &headers, now, record)
        })
        .await
}

async fn not_found(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    method: Method,
) -> Response {
    shared
        .answer(Operation::Other, &peer, &method, |_, _| {
            Reply::error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such API")
        })
        .await
}

impl Shared {
    /// Waits the latency, runs `handle` at the simulated now, records the call, and either
    /// answers or — when the drop knob says so — cuts the connection after a success.
    async fn answer(
        &self,
        operation: Operation,
        peer: &Peer,
        method: &Method,
        handle: impl FnOnce(&mut CallRecord, Timestamp) -> Reply,
    ) -> Response {
        tokio::time::sleep(self.knobs.latency()).await;
        let now = self.clock.now();
        let mut record = CallRecord {
            at: now,
            operation,
            method: method.to_string(),
            status: 0,
            client_cert_name: None,
            cert_name: None,
            response_dropped: false,
        };
        let reply = handle(&mut record, now);
        record.status = reply.status.as_u16();
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            self.rate_limited.fetch_add(1, Ordering::SeqCst);
        }
        if reply.status.is_success() && Knobs::take(&self.knobs.drop_next_response) {
            peer.cut_connection();
            record.response_dropped = true;
        }
        tracing::info!(
            ?operation,
            status = record.status,
            dropped = record.response_dropped,
            client = %peer.addr,
            "cie sim: call"
        );
        lock(&self.calls).push(record);
        reply.into_response()
    }

    /// The client certificate and the `apiKey` must both be valid now; returns the
    /// certificate's name.
    fn authenticate(
        tenant: &Tenant,
        peer: &Peer,
        headers: &HeaderMap,
        now: Timestamp,
    ) -> Result<String, Reply> {
        let cert = peer
            .client_cert
            .as_deref()
            .and_then(|der| tenant.valid_cert(der, now))
            .ok_or_else(|| {
                Reply::error(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "the client certificate is not valid (evicted, expired or unknown); try regenerating your API certificate",
                )
            })?;
        let api_key = headers.get("apiKey").and_then(|v| v.to_str().ok());
        if !api_key.is_some_and(|key| tenant.token_is_valid(key, now)) {
            return Err(Reply::error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "the apiKey is missing, unknown or expired",
            ));
        }
        Ok(cert.name.clone())
    }

    /// The 409/5xx knobs, applied to a call that has been counted.
    fn injected_fault(&self) -> Option<Reply> {
        if Knobs::take(&self.knobs.conflict_next) {
            return Some(Reply::error(
                StatusCode::CONFLICT,
                "CONFLICT",
                "another update or delete job is running; try again after it finishes",
            ));
        }
        if Knobs::take(&self.knobs.fail_next_5xx) {
            return Some(Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "internal error",
            ));
        }
        None
    }

    fn cert_refresh(
        &self,
        peer: &Peer,
        headers: &HeaderMap,
        body: &[u8],
        now: Timestamp,
        record: &mut CallRecord,
    ) -> Reply {
        let mut tenant = lock(&self.tenant);
        tenant.forget_expired(now);
        match Self::authenticate(&tenant, peer, headers, now) {
            Ok(name) => record.client_cert_name = Some(name),
            Err(reply) => return reply,
        }
        let request: CertRefreshBody = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(_) => {
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    "the body must be JSON {\"pemCsr\": ..., \"certName\": ...}",
                );
            }
        };
        record.cert_name = Some(request.cert_name.clone());
        if request.cert_name.trim().is_empty() {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "certName is empty",
            );
        }
        if pki::csr_info(&request.pem_csr).is_err() {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "pemCsr is not a valid certificate signing request",
            );
        }
        if let Err(wait) = admit(&CERT_REFRESH, &mut tenant.cert_attempts, now) {
            return rate_limited(wait, "certificate refresh attempts exhausted; one per hour");
        }
        if let Some(fault) = self.injected_fault() {
            return fault;
        }
        let now_s = whole_second(now);
        let not_after = now_s + self.config.cert_validity;
        let signed = self.client_ca.sign_csr(
            &request.pem_csr,
            &request.cert_name,
            now_s - BACKDATE,
            not_after,
        );
        let Some((cert, der)) = signed
            .ok()
            .and_then(|cert| leaf_der(&cert).map(|der| (cert, der)))
        else {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "the certificate signing request cannot be signed",
            );
        };
        let deleted = tenant.add_cert(ValidCert {
            name: request.cert_name,
            der,
            not_after,
        });
        Reply::ok(json!({ "cert": cert, "deletedCertName": deleted }))
    }

    fn token_refresh(
        &self,
        peer: &Peer,
        headers: &HeaderMap,
        now: Timestamp,
        record: &mut CallRecord,
    ) -> Reply {
        let mut tenant = lock(&self.tenant);
        tenant.forget_expired(now);
        match Self::authenticate(&tenant, peer, headers, now) {
            Ok(name) => record.client_cert_name = Some(name),
            Err(reply) => return reply,
        }
        if let Err(wait) = admit(&TOKEN_REFRESH, &mut tenant.token_attempts, now) {
            return rate_limited(wait, "token refresh attempts exhausted; two per hour");
        }
        if let Some(fault) = self.injected_fault() {
            return fault;
        }
        let Ok(token) = new_token() else {
            return Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "no randomness",
            );
        };
        let expires = whole_second(now) + self.config.token_validity;
        let deleted = tenant.add_token(Token {
            value: token.clone(),
            expires,
        });
        Reply::ok(json!({
            "token": token,
            "expiry": expires.to_string(),
            "deletedToken": deleted,
        }))
    }
}

fn rate_limited(wait: Duration, message: &str) -> Reply {
    Reply {
        retry_after: Some(wait),
        ..Reply::error(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS", message)
    }
}

// ---- helpers -------------------------------------------------------------------------------

/// A poisoned lock only means a handler panicked; the state itself stays usable for a double.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Certificates carry whole seconds; so does everything compared with them.
fn whole_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// DER of the first certificate in `pem`.
fn leaf_der(pem: &str) -> Option<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()
        .map(|der| der.to_vec())
}

/// A random API token (192 bits, URL-safe base64).
fn new_token() -> anyhow::Result<String> {
    use base64::Engine;
    let mut bytes = [0u8; 24];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn write_file(dir: &Path, name: &str, contents: &str, private: bool) -> anyhow::Result<()> {
    let path = dir.join(name);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut file, contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A `kubernetes.io/tls` Secret named `cie-onboarding` with `tls.crt`, `tls.key` and `apiKey`,
/// the form `DeviceIdCredential.spec.onboardingSecretRef` expects.
fn onboarding_secret(onboarding: &Onboarding) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("cie-onboarding".into()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        string_data: Some(BTreeMap::from([
            ("tls.crt".to_string(), onboarding.cert_pem.clone()),
            ("tls.key".to_string(), onboarding.key_pem.clone()),
            ("apiKey".to_string(), onboarding.api_key.clone()),
        ])),
        ..Secret::default()
    };
    serde_saphyr::to_string(&secret).context("serialising the onboarding Secret")
}
