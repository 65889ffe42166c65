//! PingOne AIC tenant simulator (`certrotor sim aic`): one tenant per server, following
//! ../shared/API-NOTES.md, with knobs for the faults a real tenant shows.

mod http;
mod tenant;
mod token;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::pki::{self, KeyAlgorithm, ca::Ca, jwk::RsaJwk};
use tenant::{CertEntry, CsrEntry};

/// Start-up settings; most can be changed later through [`Knobs`].
#[derive(Debug, Clone)]
pub struct AicSimConfig {
    /// Time for `live` to follow `active` (observed: about 60 s).
    pub live_delay: Duration,
    /// How long DELETE answers an empty 500 after `live` turned false (observed: about 17 s).
    pub delete_500_window: Duration,
    /// Access-token lifetime (fixed at 899 s on real tenants).
    pub token_lifetime: Duration,
    /// Added to every request.
    pub latency: Duration,
    /// Scopes of the service account.
    pub scopes: Vec<String>,
    /// Start with an active, live certificate added by the vendor's support team.
    pub support_certificate: bool,
    /// Requests per second this tenant accepts (a bucket holding a second's worth); beyond it,
    /// 429 with `Retry-After`. None: unlimited (AIC documents no limit).
    pub rate_limit: Option<f64>,
}

impl Default for AicSimConfig {
    fn default() -> Self {
        AicSimConfig {
            live_delay: Duration::from_secs(60),
            delete_500_window: Duration::from_secs(17),
            token_lifetime: Duration::from_secs(899),
            latency: Duration::ZERO,
            scopes: vec![token::SCOPE_ALL.to_owned(), token::SCOPE_READ.to_owned()],
            support_certificate: true,
            rate_limit: None,
        }
    }
}

/// Faults and timings, settable while the simulator runs (also via `POST /__sim/knobs`).
#[derive(Debug, Default)]
pub struct Knobs {
    latency_ms: AtomicU64,
    live_delay_ms: AtomicU64,
    delete_500_window_ms: AtomicU64,
    token_lifetime_secs: AtomicU64,
    fail_next_5xx: AtomicU32,
    fail_next_empty_500: AtomicU32,
    rate_limit_next: AtomicU32,
    /// The next lists of certificates leave out every certificate but the support team's, as a
    /// list lagging behind the tenant would.
    lists_lag_next: AtomicU32,
    /// The next uploads answer 400, as a tenant refusing a chain it will always refuse.
    reject_uploads_next: AtomicU32,
    /// The next uploads answer 503 (the rest of the API works): a failing step after a good list.
    fail_uploads_next: AtomicU32,
    /// The next creating calls (upload, CSR) take effect but their answers are lost.
    lose_creates_next: AtomicU32,
    /// The next PATCHes take effect but answer with the certificate as it was before.
    stale_patch_answers_next: AtomicU32,
    retry_after_secs: AtomicU64,
    /// Tokens remember the generation they were issued in; bumping it invalidates them all.
    token_generation: AtomicU64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Takes one from a fault counter; true when a fault should fire.
fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl Knobs {
    fn from_config(config: &AicSimConfig) -> Knobs {
        let knobs = Knobs::default();
        knobs.set_latency(config.latency);
        knobs.set_live_delay(config.live_delay);
        knobs.set_delete_500_window(config.delete_500_window);
        knobs.set_token_lifetime(config.token_lifetime);
        knobs.retry_after_secs.store(1, Ordering::SeqCst);
        knobs
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::SeqCst))
    }
    pub fn set_latency(&self, latency: Duration) {
        self.latency_ms.store(millis(latency), Ordering::SeqCst);
    }
    pub fn live_delay(&self) -> Duration {
        Duration::from_millis(self.live_delay_ms.load(Ordering::SeqCst))
    }
    /// Applies to every transition, including ones already under way.
    pub fn set_live_delay(&self, delay: Duration) {
        self.live_delay_ms.store(millis(delay), Ordering::SeqCst);
    }
    pub fn delete_500_window(&self) -> Duration {
        Duration::from_millis(self.delete_500_window_ms.load(Ordering::SeqCst))
    }
    pub fn set_delete_500_window(&self, window: Duration) {
        self.delete_500_window_ms
            .store(millis(window), Ordering::SeqCst);
    }
    pub fn token_lifetime(&self) -> Duration {
        Duration::from_secs(self.token_lifetime_secs.load(Ordering::SeqCst))
    }
    /// For tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.token_lifetime_secs
            .store(lifetime.as_secs(), Ordering::SeqCst);
    }
    /// The next `n` `/environment` requests answer 503 `{code, message}`.
    pub fn set_fail_next_5xx(&self, n: u32) {
        self.fail_next_5xx.store(n, Ordering::SeqCst);
    }
    /// The next `n` `/environment` requests answer 500 with an empty body.
    pub fn set_fail_next_empty_500(&self, n: u32) {
        self.fail_next_empty_500.store(n, Ordering::SeqCst);
    }
    /// The next `n` `/environment` requests answer 429 with `Retry-After: retry_after_secs`.
    pub fn set_rate_limit_next(&self, n: u32, retry_after_secs: u64) {
        self.retry_after_secs
            .store(retry_after_secs, Ordering::SeqCst);
        self.rate_limit_next.store(n, Ordering::SeqCst);
    }
    /// The next `n` `GET /environment/certificates` leave out every certificate the API made
    /// (a lagging list); `GET` by id still finds them.
    pub fn set_lists_lag_next(&self, n: u32) {
        self.lists_lag_next.store(n, Ordering::SeqCst);
    }
    pub(crate) fn take_list_lag(&self) -> bool {
        self.lists_lag_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
    /// The next `n` `POST /environment/certificates` answer 400 `Invalid certificate chain`.
    pub fn set_reject_uploads_next(&self, n: u32) {
        self.reject_uploads_next.store(n, Ordering::SeqCst);
    }
    pub(crate) fn take_upload_rejection(&self) -> bool {
        self.reject_uploads_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
    /// The next `n` `POST /environment/certificates` answer 503 before doing anything.
    pub fn set_fail_uploads_next(&self, n: u32) {
        self.fail_uploads_next.store(n, Ordering::SeqCst);
    }
    pub(crate) fn take_upload_failure(&self) -> bool {
        take_one(&self.fail_uploads_next)
    }
    /// The next `n` creating calls (`POST /environment/certificates`, `POST /environment/csrs`)
    /// take effect, but the answer breaks off (a 200 with a truncated body).
    pub fn set_lose_creates_next(&self, n: u32) {
        self.lose_creates_next.store(n, Ordering::SeqCst);
    }
    pub(crate) fn take_lost_create(&self) -> bool {
        take_one(&self.lose_creates_next)
    }
    /// The next `n` `PATCH /environment/certificates/{id}` take effect but answer with the
    /// certificate as it was before (a lagging read replica).
    pub fn set_stale_patch_answers_next(&self, n: u32) {
        self.stale_patch_answers_next.store(n, Ordering::SeqCst);
    }
    pub(crate) fn take_stale_patch_answer(&self) -> bool {
        take_one(&self.stale_patch_answers_next)
    }
    /// Every token issued so far becomes invalid (401).
    pub fn expire_tokens_now(&self) {
        self.token_generation.fetch_add(1, Ordering::SeqCst);
    }

    fn snapshot(&self) -> KnobsView {
        KnobsView {
            latency_ms: Some(self.latency_ms.load(Ordering::SeqCst)),
            live_delay_ms: Some(self.live_delay_ms.load(Ordering::SeqCst)),
            delete_500_window_ms: Some(self.delete_500_window_ms.load(Ordering::SeqCst)),
            token_lifetime_secs: Some(self.token_lifetime_secs.load(Ordering::SeqCst)),
            fail_next_5xx: Some(self.fail_next_5xx.load(Ordering::SeqCst)),
            fail_next_empty_500: Some(self.fail_next_empty_500.load(Ordering::SeqCst)),
            rate_limit_next: Some(self.rate_limit_next.load(Ordering::SeqCst)),
            retry_after_secs: Some(self.retry_after_secs.load(Ordering::SeqCst)),
            expire_tokens: None,
        }
    }

    fn apply(&self, update: &KnobsView) {
        let ms = Duration::from_millis;
        if let Some(v) = update.latency_ms {
            self.set_latency(ms(v));
        }
        if let Some(v) = update.live_delay_ms {
            self.set_live_delay(ms(v));
        }
        if let Some(v) = update.delete_500_window_ms {
            self.set_delete_500_window(ms(v));
        }
        if let Some(v) = update.token_lifetime_secs {
            self.set_token_lifetime(Duration::from_secs(v));
        }
        if let Some(v) = update.fail_next_5xx {
            self.set_fail_next_5xx(v);
        }
        if let Some(v) = update.fail_next_empty_500 {
            self.set_fail_next_empty_500(v);
        }
        if let Some(v) = update.retry_after_secs {
            self.retry_after_secs.store(v, Ordering::SeqCst);
        }
        if let Some(v) = update.rate_limit_next {
            self.rate_limit_next.store(v, Ordering::SeqCst);
        }
        if update.expire_tokens == Some(true) {
            self.expire_tokens_now();
        }
    }
}

/// The JSON of `GET`/`POST /__sim/knobs`; absent fields are left unchanged.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct KnobsView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_500_window_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_lifetime_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_next_5xx: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_next_empty_500: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_next: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    /// `true` expires every issued token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire_tokens: Option<bool>,
}

/// One request the simulator answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub method: String,
    /// The route template, e.g. `PATCH /environment/certificates/{id}`.
    pub route: String,
    pub status: u16,
}

/// A certificate as the simulator sees it, including what the API never returns.
#[derive(Debug, Clone, PartialEq)]
pub struct SimCertificate {
    pub id: String,
    pub active: bool,
    pub live: bool,
    pub fingerprint: String,
    pub subject: String,
    pub issuer: String,
    pub subject_alternative_names: Vec<String>,
    pub not_before: jiff::Timestamp,
    pub not_after: jiff::Timestamp,
    pub created_by_support: bool,
    /// Set when the certificate came from `PATCH /environment/csrs/{id}`.
    pub csr_id: Option<String>,
    pub deleted: bool,
}

/// A CSR as the simulator sees it. The tenant's key is not exposed.
#[derive(Debug, Clone, PartialEq)]
pub struct SimCsr {
    pub id: String,
    pub algorithm: String,
    pub subject: String,
    pub subject_alternative_names: Vec<String>,
    pub request: String,
    pub certificate_id: Option<String>,
    pub deleted: bool,
}

struct IssuedToken {
    scopes: Vec<String>,
    expires_at: Instant,
    generation: u64,
}

#[derive(Default)]
struct State {
    csrs: Vec<CsrEntry>,
    certs: Vec<CertEntry>,
    tokens: HashMap<String, IssuedToken>,
    seen_jtis: HashSet<String>,
    calls: Vec<CallRecord>,
}

struct Inner {
    service_account_id: String,
    private_key: RsaJwk,
    public_modulus: Vec<u8>,
    public_exponent: Vec<u8>,
    scopes: Vec<String>,
    knobs: Knobs,
    ca: Ca,
    state: Mutex<State>,
    /// The tenant's request-rate limit, when it has one.
    limit: Option<Mutex<crate::aic::limit::Bucket>>,
}

impl Inner {
    /// The state lock; a panic while holding it must not take the simulator down with it.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn issue_token(&self, scopes: Vec<String>) -> (String, Duration) {
        let lifetime = self.knobs.token_lifetime();
        let token = format!(
            "simaic.{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let issued = IssuedToken {
            scopes,
            expires_at: Instant::now() + lifetime,
            generation: self.knobs.token_generation.load(Ordering::SeqCst),
        };
        self.state().tokens.insert(token.clone(), issued);
        (token, lifetime)
    }

    /// The scopes of a bearer token that is still valid.
    fn token_scopes(&self, token: &str) -> Option<Vec<String>> {
        let generation = self.knobs.token_generation.load(Ordering::SeqCst);
        let state = self.state();
        let issued = state.tokens.get(token)?;
        (issued.generation == generation && Instant::now() < issued.expires_at)
            .then(|| issued.scopes.clone())
    }
}

struct Server {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A running simulator. Cheap to clone; every clone talks to the same tenant.
#[derive(Clone)]
pub struct AicSim {
    inner: Arc<Inner>,
    addr: SocketAddr,
    server: Arc<Mutex<Option<Server>>>,
}

impl fmt::Debug for AicSim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AicSim")
            .field("url", &self.url())
            .field("service_account_id", &self.inner.service_account_id)
            .finish_non_exhaustive()
    }
}

fn support_certificate(ca: &Ca) -> anyhow::Result<CertEntry> {
    let now = jiff::Timestamp::now();
    let (chain, key) = ca.issue(
        "support-managed.example.com",
        &["support-managed.example.com"],
        now - jiff::SignedDuration::from_hours(24),
        now + jiff::SignedDuration::from_hours(24 * 60),
        KeyAlgorithm::EcdsaP256,
    )?;
    let mut cert = tenant::new_certificate(&chain, &key).map_err(|e| anyhow::anyhow!(e.0))?;
    cert.active = true;
    cert.created_by_support = true;
    Ok(cert)
}

impl AicSim {
    /// Binds `addr` (port 0 picks a free port) and serves until [`AicSim::shutdown`].
    pub async fn start(addr: SocketAddr, config: AicSimConfig) -> anyhow::Result<AicSim> {
        let private_key = pki::jwk::generate_rsa_jwk(2048)?;
        let (public_modulus, public_exponent) = pki::jwk::rsa_public_components(&private_key)?;
        let ca = Ca::new("certrotor AIC simulator CA")?;
        let mut state = State::default();
        if config.support_certificate {
            state.certs.push(support_certificate(&ca)?);
        }
        let inner = Arc::new(Inner {
            service_account_id: uuid::Uuid::new_v4().to_string(),
            private_key,
            public_modulus,
            public_exponent,
            scopes: config.scopes.clone(),
            knobs: Knobs::from_config(&config),
            limit: config.rate_limit.filter(|r| *r > 0.0).map(|r| {
                Mutex::new(crate::aic::limit::Bucket::new(
                    r,
                    r.ceil() as u32,
                    std::time::Instant::now(),
                ))
            }),
            ca,
            state: Mutex::new(state),
        });
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the AIC simulator to {addr}"))?;
        let addr = listener.local_addr()?;
        let (shutdown, stop) = oneshot::channel::<()>();
        let app = http::router(inner.clone());
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "AIC simulator stopped with an error");
            }
        });
        Ok(AicSim {
            inner,
            addr,
            server: Arc::new(Mutex::new(Some(Server { shutdown, task }))),
        })
    }

    /// `http://127.0.0.1:PORT` (or the bound address when it is not a wildcard).
    pub fn url(&self) -> String {
        let ip = if self.addr.ip().is_unspecified() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            self.addr.ip()
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn service_account_id(&self) -> String {
        self.inner.service_account_id.clone()
    }

    /// The service account's private key, as the console hands it to the admin.
    pub fn private_key_jwk(&self) -> RsaJwk {
        self.inner.private_key.clone()
    }

    /// The data of a credentials Secret: `serviceAccountId` and `privateKey` (the JWK JSON).
    pub fn credentials_secret_data(&self) -> BTreeMap<String, String> {
        let jwk = serde_json::to_string(&self.inner.private_key).unwrap_or_default();
        BTreeMap::from([
            ("serviceAccountId".to_owned(), self.service_account_id()),
            ("privateKey".to_owned(), jwk),
        ])
    }

    /// A token with only `fr:idc:certificate:read`, as if obtained out of band.
    pub fn issue_read_only_token(&self) -> String {
        self.inner.issue_token(vec![token::SCOPE_READ.to_owned()]).0
    }

    pub fn knobs(&self) -> &Knobs {
        &self.inner.knobs
    }

    /// The CA the simulator signs its own certificates with; tests may sign CSRs with it.
    pub fn ca(&self) -> &Ca {
        &self.inner.ca
    }

    /// Signs a CSR PEM with [`AicSim::ca`], valid from an hour ago for `days`.
    pub fn sign_csr_for_test(&self, csr_pem: &str, days: i64) -> anyhow::Result<String> {
        let now = jiff::Timestamp::now();
        Ok(self.inner.ca.sign_csr(
            csr_pem,
            now - jiff::SignedDuration::from_hours(1),
            now + jiff::SignedDuration::from_hours(24 * days),
        )?)
    }

    /// Every request answered so far, in order (the `/__sim` control routes excluded).
    pub fn calls(&self) -> Vec<CallRecord> {
        self.inner.state().calls.clone()
    }

    /// Every certificate, deleted ones included.
    pub fn certificates(&self) -> Vec<SimCertificate> {
        let now = Instant::now();
        self.inner
            .state()
            .certs
            .iter()
            .map(|c| SimCertificate {
                id: c.id.clone(),
                active: c.active,
                live: tenant::live_at(c, now),
                fingerprint: c.fingerprint.clone(),
                subject: c.subject.clone(),
                issuer: c.issuer.clone(),
                subject_alternative_names: c.subject_alternative_names.clone(),
                not_before: c.not_before,
                not_after: c.not_after,
                created_by_support: c.created_by_support,
                csr_id: c.csr_id.clone(),
                deleted: c.deleted,
            })
            .collect()
    }

    /// Every CSR, deleted ones included.
    pub fn csrs(&self) -> Vec<SimCsr> {
        self.inner
            .state()
            .csrs
            .iter()
            .map(|c| SimCsr {
                id: c.id.clone(),
                algorithm: c.algorithm.to_owned(),
                subject: c.subject.clone(),
                subject_alternative_names: c.subject_alternative_names.clone(),
                request: c.request.clone(),
                certificate_id: c.certificate_id.clone(),
                deleted: c.deleted,
            })
            .collect()
    }

    /// Stops serving and waits for the server task. Other clones stop working too.
    pub async fn shutdown(self) {
        let server = self
            .server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(server) = server {
            let _ = server.shutdown.send(());
            let _ = server.task.await;
        }
    }
}

/// A Kubernetes Secret manifest holding the simulator's service-account credentials.
pub fn credentials_secret_manifest(sim: &AicSim) -> anyhow::Result<String> {
    let data = sim.credentials_secret_data();
    // JSON strings are valid YAML double-quoted scalars, so values need no YAML library.
    let quote = |key: &str| serde_json::to_string(data.get(key).map_or("", String::as_str));
    Ok(format!(
        "# credentials for the certrotor AIC simulator at {url}\n\
         apiVersion: v1\n\
         kind: Secret\n\
         metadata:\n  name: aic-service-account\n\
         type: Opaque\n\
         stringData:\n  serviceAccountId: {id}\n  privateKey: {key}\n",
        url = sim.url(),
        id = quote("serviceAccountId")?,
        key = quote("privateKey")?,
    ))
}

/// `certrotor sim aic`: serve one tenant until Ctrl-C. The credentials Secret goes to
/// `credentials_out`, or to stdout: it is a throwaway key of a simulator.
pub async fn run_cli(
    listen: SocketAddr,
    config: AicSimConfig,
    credentials_out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let sim = AicSim::start(listen, config).await?;
    println!("AIC simulator listening on {}", sim.url());
    let manifest = credentials_secret_manifest(&sim)?;
    match credentials_out {
        Some(path) => {
            tokio::fs::write(&path, manifest)
                .await
                .with_context(|| format!("writing credentials to {}", path.display()))?;
            println!("credentials Secret written to {}", path.display());
        }
        None => print!("---\n{manifest}"),
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    sim.shutdown().await;
    Ok(())
}
