//! One reconciler per kind plus the shared context, error policy, finalizers and events.

pub mod clients;
pub mod deviceid;
pub mod events;
pub mod patch;
pub mod tenant;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::aic::CallObserver;
use crate::api::{DeviceIdCredential, TenantCertificate};
use crate::certmanager;
use crate::ops::admin::Health;
use crate::ops::metrics::{self, Metrics, ReconcileOutcome};
use crate::ops::namespaces::watch_scoped;
pub use clients::AicClients;
pub use tenant::plan::PollPolicy;

/// Errors that end a reconcile early. Tenant and input problems are not errors: they are written
/// to status and requeued by the reconciler itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// Cleanup has more to do (waiting for `live` to turn false, the 500 window): not a failure.
    #[error("cleanup in progress: {0}")]
    CleanupPending(String),
    /// Cleanup failed at the tenant: retry after the failure policy's backoff.
    #[error("cleanup failed at the tenant; next attempt in {}s", .0.as_secs())]
    CleanupBackoff(std::time::Duration),
    #[error("object has no namespace")]
    NoNamespace,
    #[error("serialising status: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// One of [`metrics::FAILURE_LABELS`], or `cleanup_pending` (not a failure).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::CleanupBackoff(_) => "tenant",
            Error::CleanupPending(_) => "cleanup_pending",
            Error::NoNamespace => "no_namespace",
            Error::Serialize(_) => "serialize",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub poll: PollPolicy,
    /// Backoff after a failed tenant call: base doubles per consecutive failure, up to max.
    pub failure_backoff_base: Duration,
    pub failure_backoff_max: Duration,
    /// Reconciles running at once per kind.
    pub concurrency: u16,
    /// Only resources whose labels match this selector (both kinds): several deployments, each
    /// with its own Lease, can split one cluster's resources.
    pub selector: Option<String>,
    /// Requests per second to one AIC tenant at most (a token bucket holding a second's worth);
    /// 0 turns the limit off.
    pub tenant_rate_limit: f64,
    /// TenantCertificate deletion: how long cleanup may wait for tenant credentials that are
    /// gone (namespace teardown) before the finalizer is released anyway, with a Warning naming
    /// the ids left in the tenant.
    pub cleanup_timeout: Duration,
    /// Use cert-manager's CertificateRequests when the cluster serves them (`issuerRef`).
    pub cert_manager: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            poll: PollPolicy::default(),
            failure_backoff_base: Duration::from_secs(5),
            failure_backoff_max: Duration::from_secs(600),
            concurrency: 8,
            selector: None,
            tenant_rate_limit: DEFAULT_TENANT_RATE_LIMIT,
            cleanup_timeout: Duration::from_secs(300),
            cert_manager: true,
        }
    }
}

/// AIC documents no rate limit; this keeps a fleet well below what a shared SaaS front door
/// tolerates while letting 1,000 certificates on one tenant upload in about 20 s.
pub const DEFAULT_TENANT_RATE_LIMIT: f64 = 50.0;

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: events::EventRecorder,
    pub aic: AicClients,
    pub options: Options,
    /// DeviceIdCredential: per-credential call locks and the resources' store.
    pub deviceid: deviceid::Shared,
    pub metrics: Arc<Metrics>,
    /// TenantCertificate uid → when its last tenant mutation returned in this process. A tenant
    /// list that started after that (or, with none, after this context was made: anything a
    /// previous process did came before) shows everything the resource did.
    pub tenant_mutations: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    pub created: std::time::Instant,
    /// Tenant URL → TenantCertificate uids waiting for `live` there (`None`), or that stopped
    /// waiting within the last `poll.max` (when): they share one list, so their polls speed up
    /// together (see `tenant::plan::poll_after`). One whose certificate just went live still
    /// counts for a while, so the stragglers of a wave keep the wave's pace instead of slowing
    /// down just as their peers go live (the last 1 % of 1,000 was seen a tick or two late).
    pub waiting_live: std::sync::Mutex<
        std::collections::HashMap<
            String,
            std::collections::HashMap<String, Option<std::time::Instant>>,
        >,
    >,
    /// Tenant URL → how long it takes to make a certificate live, as seen here
    /// (`tenant::plan::next_live_delay`): polls of a new certificate start at half of it.
    pub live_delays: std::sync::Mutex<std::collections::HashMap<String, std::time::Duration>>,
    /// TenantCertificate uids this process has reconciled: the first reconcile after a restart
    /// of a settled certificate makes no tenant call.
    pub looked: std::sync::Mutex<std::collections::HashSet<u128>>,
    /// The cluster serves cert-manager's CertificateRequest (found at start).
    pub cert_manager: std::sync::atomic::AtomicBool,
}

impl Context {
    pub fn new(
        client: Client,
        options: Options,
        observer: Option<Arc<dyn CallObserver>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            recorder: events::EventRecorder::new(
                client.clone(),
                "certrotor",
                std::env::var("POD_NAME").ok(),
            ),
            client,
            aic: AicClients::with_rate_limit(
                Some(tee(observer, metrics.aic_observer())),
                options.tenant_rate_limit,
            ),
            options,
            deviceid: deviceid::Shared::default(),
            metrics,
            tenant_mutations: Default::default(),
            created: std::time::Instant::now(),
            waiting_live: Default::default(),
            live_delays: Default::default(),
            looked: Default::default(),
            cert_manager: Default::default(),
        })
    }

    /// Notes that this process looks at `uid` now; whether it had before.
    pub fn record_look(&self, uid: &str) -> bool {
        let mut looked = self.looked.lock().unwrap_or_else(|e| e.into_inner());
        !looked.insert(uid_key(uid))
    }

    /// Forgets a TenantCertificate that is gone or going: what this process remembered of it.
    pub fn forget_tenant_certificate(&self, obj: &TenantCertificate) {
        let uid = obj.metadata.uid.as_deref().unwrap_or_default();
        self.set_waiting_for_live(&obj.spec.tenant.url, uid, false, true);
        self.forget_look(uid);
    }

    /// Forgets `uid` (the resource is gone): what this process remembered of it.
    pub fn forget_look(&self, uid: &str) {
        self.looked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&uid_key(uid));
        self.tenant_mutations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    /// How many certificates of `tenant` share its polls now: those waiting for `live`, those
    /// that stopped within the last `poll.max`, and `uid` itself.
    pub fn waiting_for_live(&self, tenant: &str, uid: &str) -> usize {
        let now = std::time::Instant::now();
        let wave = self.options.poll.max;
        let waiting = self.waiting_live.lock().unwrap_or_else(|e| e.into_inner());
        let others = waiting.get(tenant).map_or(0, |m| {
            m.iter()
                .filter(|(u, stopped)| {
                    u.as_str() != uid && stopped.is_none_or(|t| now.duration_since(t) < wave)
                })
                .count()
        });
        others + 1
    }

    /// What this process expects of `tenant`'s next `live` delay.
    pub fn live_delay(&self, tenant: &str) -> Option<std::time::Duration> {
        let delays = self.live_delays.lock().unwrap_or_else(|e| e.into_inner());
        delays.get(tenant).copied()
    }

    /// A certificate of `tenant` was found live `took` after its activation.
    pub fn saw_live_after(&self, tenant: &str, took: std::time::Duration) {
        let mut delays = self.live_delays.lock().unwrap_or_else(|e| e.into_inner());
        let next = tenant::plan::next_live_delay(delays.get(tenant).copied(), took);
        delays.insert(tenant.to_string(), next);
    }

    /// Records whether `uid` waits for `live` on `tenant` (`gone`: the resource is deleted, so
    /// forget it at once), and forgets what is older than a wave.
    pub fn set_waiting_for_live(&self, tenant: &str, uid: &str, waiting: bool, gone: bool) {
        let now = std::time::Instant::now();
        let wave = self.options.poll.max;
        let mut map = self.waiting_live.lock().unwrap_or_else(|e| e.into_inner());
        if waiting {
            map.entry(tenant.to_string())
                .or_default()
                .insert(uid.to_string(), None);
            return;
        }
        let Some(m) = map.get_mut(tenant) else {
            return;
        };
        if gone {
            m.remove(uid);
        } else if let Some(stopped) = m.get_mut(uid) {
            stopped.get_or_insert(now);
        }
        m.retain(|_, stopped| stopped.is_none_or(|t| now.duration_since(t) < wave));
        if m.is_empty() {
            map.remove(tenant);
        }
    }

    /// A list of the tenant that started at or after this shows everything `uid` did there.
    pub fn tenant_state_since(&self, uid: &str) -> std::time::Instant {
        let mutations = self
            .tenant_mutations
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        mutations.get(uid).copied().unwrap_or(self.created)
    }

    pub fn record_tenant_mutation(&self, uid: &str) {
        let mut mutations = self
            .tenant_mutations
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        mutations.insert(uid.to_string(), std::time::Instant::now());
    }

    /// Records one call to a CIE tenant (the AIC client reports its own calls).
    pub fn cie_call<T, E>(
        &self,
        operation: &'static str,
        result: &Result<T, E>,
        reason: impl Fn(&E) -> &'static str,
        started: Instant,
    ) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => reason(e),
        };
        self.metrics
            .tenant_call(metrics::CIE, operation, outcome, started.elapsed());
    }

    /// Publishes an Event about `obj`; a failure to record is logged, never fatal.
    pub async fn event<K>(&self, obj: &K, type_: EventType, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        if let Err(e) = self
            .recorder
            .publish(&obj.object_ref(&()), type_, reason, &note)
            .await
        {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}

/// Reacts to what users change (spec, annotations, deletion), not to our own status writes,
/// which would otherwise cost one extra reconcile (and tenant call) per write.
fn user_intent<K: Resource>(obj: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    predicates::generation(obj).hash(&mut hasher);
    predicates::annotations(obj).hash(&mut hasher);
    predicates::finalizers(obj).hash(&mut hasher);
    obj.meta()
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut hasher);
    obj.meta().uid.hash(&mut hasher);
    Some(hasher.finish())
}

/// What the binary adds around the controllers: metrics, readiness, and the namespaces to watch.
#[derive(Default)]
pub struct Wiring {
    /// Also receives every AIC call (tests count calls with it).
    pub observer: Option<Arc<dyn CallObserver>>,
    /// Where reconciles, tenant calls and the caches are reported; a private registry if unset.
    pub metrics: Option<Arc<Metrics>>,
    /// Told when both controllers' caches have synced.
    pub health: Option<Arc<Health>>,
    /// Watch only these namespaces; every namespace when empty.
    pub namespaces: Vec<String>,
}

/// Both observers see every call.
struct Tee(Arc<dyn CallObserver>, Arc<dyn CallObserver>);

impl CallObserver for Tee {
    fn observe(&self, operation: &'static str, outcome: &str, elapsed: Duration) {
        self.0.observe(operation, outcome, elapsed);
        self.1.observe(operation, outcome, elapsed);
    }
}

fn tee(
    first: Option<Arc<dyn CallObserver>>,
    metrics: Arc<dyn CallObserver>,
) -> Arc<dyn CallObserver> {
    match first {
        Some(first) => Arc::new(Tee(first, metrics)),
        None => metrics,
    }
}

fn outcome_of(result: &Result<Action, Error>) -> ReconcileOutcome {
    match result {
        Ok(_) => ReconcileOutcome::Success,
        Err(Error::CleanupPending(_)) => ReconcileOutcome::CleanupPending,
        Err(e) => ReconcileOutcome::Error(e.metric_label()),
    }
}

/// `reconcile`, counted and timed under `kind`.
async fn measured<K, F, Fut>(
    kind: &'static str,
    reconcile: F,
    obj: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, Error>
where
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, Error>>,
{
    let started = Instant::now();
    let result = reconcile(obj, ctx.clone()).await;
    ctx.metrics
        .reconciled(kind, outcome_of(&result), started.elapsed());
    result
}

/// The caches keep what reconciles read; `managedFields` (often most of an object on a real
/// server) is never read, and dropping it keeps memory flat at 10,000 resources.
fn drop_managed_fields<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// A uid as 128 bits: a set of 10,000 of them costs 160 KiB instead of a megabyte of strings.
/// Kubernetes uids are UUIDs; anything else is hashed.
fn uid_key(uid: &str) -> u128 {
    uuid::Uuid::parse_str(uid)
        .map(|u| u.as_u128())
        .unwrap_or_else(|_| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            uid.hash(&mut h);
            u128::from(h.finish())
        })
}

/// The watch of our own resources: all of them, or the partition `--selector` names.
fn resource_watch(options: &Options) -> watcher::Config {
    match options.selector.as_deref().filter(|s| !s.trim().is_empty()) {
        Some(selector) => watcher::Config::default().labels(selector),
        None => watcher::Config::default(),
    }
}

/// Runs the controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    options: Options,
    observer: Option<Arc<dyn CallObserver>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let wiring = Wiring {
        observer,
        ..Default::default()
    };
    run_with(client, options, wiring, shutdown).await;
}

/// Runs the controllers until `shutdown` resolves, wired as `wiring` says.
pub async fn run_with(
    client: Client,
    options: Options,
    wiring: Wiring,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let metrics = wiring.metrics.unwrap_or_default();
    let namespaces = wiring.namespaces;
    let ctx = Context::new(
        client.clone(),
        options.clone(),
        wiring.observer,
        metrics.clone(),
    );
    // Both controllers stop on the same signal.
    let shutdown = futures::FutureExt::shared(shutdown);
    let stopped = shutdown.clone();
    let (reader, writer) = reflector::store();
    metrics.caches().set_tenant(Some(reader.clone()));
    let forget = ctx.clone();
    let stream = reflector(
        writer,
        watch_scoped::<TenantCertificate>(&client, &namespaces, resource_watch(&options))
            .modify(drop_managed_fields),
    )
    // A resource deleted without a finalizer (deletionPolicy: Retain) is never reconciled again.
    .inspect_ok(move |event| {
        if let watcher::Event::Delete(obj) = event {
            forget.forget_tenant_certificate(obj);
        }
    })
    .touched_objects()
    .predicate_filter(user_intent, Default::default());
    let controller = Controller::for_stream(stream, reader.clone());
    // Only metadata of Secrets is watched (names and resourceVersions), once for both
    // controllers, and mapped to the resources that reference them.
    let secrets =
        watch_scoped::<PartialObjectMeta<Secret>>(&client, &namespaces, watcher::Config::default())
            .touched_objects();
    let [tenant_secrets, device_secrets] = fan_out(secrets);
    let store = reader.clone();
    let mut controller = controller
        .with_config(kube::runtime::controller::Config::default().concurrency(options.concurrency))
        .watches_shared_stream(
            tenant_secrets,
            referencing(store, tenant::references_secret),
        );
    // cert-manager's CertificateRequests, when the cluster serves them: only those certrotor
    // made (by label), metadata only, each waking the TenantCertificate that owns it.
    let gvk = kube::api::GroupVersionKind::gvk(certmanager::GROUP, "v1", "CertificateRequest");
    let served = if options.cert_manager {
        kube::discovery::pinned_kind(&client, &gvk).await.map(drop)
    } else {
        Err(kube::Error::Discovery(
            kube::error::DiscoveryError::MissingKind("turned off (--cert-manager=false)".into()),
        ))
    };
    match served {
        Ok(_) => {
            ctx.cert_manager
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let requests = watch_scoped::<PartialObjectMeta<certmanager::CertificateRequest>>(
                &client,
                &namespaces,
                watcher::Config::default().labels(&format!(
                    "{}={}",
                    certmanager::MANAGED_BY_LABEL,
                    crate::api::MANAGER
                )),
            )
            .touched_objects();
            controller = controller.owns_stream(requests);
        }
        Err(e) => tracing::info!(
            error = %e,
            "cert-manager's CertificateRequest is not served: TenantCertificates with issuerRef will be Stalled"
        ),
    }
    let tenant_certificates = controller
        .graceful_shutdown_on(shutdown)
        .run(
            |obj, ctx| measured(metrics::TENANT_CERTIFICATE, tenant::reconcile, obj, ctx),
            tenant::error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
                Err(e) => tracing::warn!(error = %e, "reconcile failed"),
            }
        });
    let (didc_reader, didc_writer) = reflector::store();
    metrics.caches().set_deviceid(Some(didc_reader.clone()));
    let synced = {
        let (tenant, deviceid) = (reader.clone(), didc_reader.clone());
        let health = wiring.health.clone();
        async move {
            if tenant.wait_until_ready().await.is_ok() && deviceid.wait_until_ready().await.is_ok()
            {
                tracing::info!("caches synced");
                if let Some(health) = health {
                    health.set_caches_synced(true);
                }
            }
        }
    };
    // The sync watch ends with the controllers (their writers drop), or never resolves if they
    // stop first; either way it must not keep `run_with` alive.
    let controllers = futures::future::join(
        tenant_certificates,
        run_deviceid(
            client,
            options,
            ctx,
            &namespaces,
            device_secrets,
            (didc_reader, didc_writer),
            stopped,
        ),
    );
    tokio::select! {
        _ = controllers => {},
        _ = async { synced.await; std::future::pending::<()>().await } => {},
    }
    metrics.caches().set_tenant(None);
    metrics.caches().set_deviceid(None);
    if let Some(health) = wiring.health {
        health.set_caches_synced(false);
    }
}

/// The DeviceIdCredential controller, built like the TenantCertificate one.
async fn run_deviceid(
    client: Client,
    options: Options,
    ctx: Arc<Context>,
    namespaces: &[String],
    secrets: futures::channel::mpsc::Receiver<Arc<PartialObjectMeta<Secret>>>,
    (reader, writer): (
        reflector::Store<DeviceIdCredential>,
        reflector::store::Writer<DeviceIdCredential>,
    ),
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    ctx.deviceid.set_store(reader.clone());
    let stream = reflector(
        writer,
        watch_scoped::<DeviceIdCredential>(&client, namespaces, resource_watch(&options))
            .modify(drop_managed_fields),
    )
    .touched_objects()
    .predicate_filter(user_intent, Default::default());
    let store = reader.clone();
    Controller::for_stream(stream, reader)
        .with_config(kube::runtime::controller::Config::default().concurrency(options.concurrency))
        .watches_shared_stream(secrets, referencing(store, deviceid::references_secret))
        .graceful_shutdown_on(shutdown)
        .run(
            |obj, ctx| measured(metrics::DEVICE_ID_CREDENTIAL, deviceid::reconcile, obj, ctx),
            deviceid::error_policy,
            ctx,
        )
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
                Err(kube::runtime::controller::Error::ReconcilerFailed(
                    Error::CleanupPending(why),
                    obj,
                )) => {
                    tracing::debug!(object = %obj, why, "cleanup in progress")
                }
                Err(e) => tracing::warn!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

/// One watch, two consumers: both controllers follow the same Secret events without each
/// listing every Secret in the cluster. A bounded channel per consumer: a slow controller slows
/// the watch down rather than buffering without limit. Watch errors are retried by the watcher's
/// backoff; the task ends when both consumers are gone.
fn fan_out<S, K>(stream: S) -> [futures::channel::mpsc::Receiver<Arc<K>>; 2]
where
    S: futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    K: Send + Sync + 'static,
{
    use futures::SinkExt;
    let (mut a_tx, a_rx) = futures::channel::mpsc::channel(1024);
    let (mut b_tx, b_rx) = futures::channel::mpsc::channel(1024);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(obj) => {
                    let obj = Arc::new(obj);
                    let a = a_tx.send(obj.clone()).await;
                    let b = b_tx.send(obj).await;
                    if a.is_err() && b.is_err() {
                        break;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watching Secrets"),
            }
        }
    });
    [a_rx, b_rx]
}

/// Maps a Secret event to the resources (from the controller's cache) that reference it.
fn referencing<K>(
    store: kube::runtime::reflector::Store<K>,
    references: fn(&K, &str) -> bool,
) -> impl Fn(Arc<PartialObjectMeta<Secret>>) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    move |secret| {
        let ns = secret.namespace();
        let name = secret.name_any();
        store
            .state()
            .into_iter()
            .filter(|obj| obj.namespace() == ns && references(obj, &name))
            .map(|obj| ObjectRef::from_obj(&*obj))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_labels_cover_the_failures() {
        let serialize = serde_json::from_str::<i32>("x").unwrap_err();
        for e in [
            Error::Finalizer("f".into()),
            Error::NoNamespace,
            Error::Serialize(serialize),
            Error::CleanupBackoff(Duration::from_secs(1)),
            Error::Kube(kube::Error::LinesCodecMaxLineLengthExceeded),
        ] {
            assert!(metrics::FAILURE_LABELS.contains(&e.metric_label()), "{e}");
        }
        let pending = Error::CleanupPending("p".into());
        assert!(!metrics::FAILURE_LABELS.contains(&pending.metric_label()));
        assert_eq!(outcome_of(&Err(pending)), ReconcileOutcome::CleanupPending);
        assert_eq!(
            outcome_of(&Err(Error::NoNamespace)),
            ReconcileOutcome::Error("no_namespace")
        );
    }

    /// The stragglers of a wave keep the wave's pace for `poll.max` after their peers went
    /// live; a deleted resource stops counting at once.
    #[tokio::test]
    async fn a_wave_counts_its_peers_for_a_while_after_they_went_live() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let mut options = Options::default();
        options.poll.max = Duration::from_millis(200);
        let ctx = Context::new(client, options, None, Arc::default());
        let t = "https://openam-acme.id.forgerock.io";
        for uid in ["a", "b", "c", "d"] {
            ctx.set_waiting_for_live(t, uid, true, false);
        }
        assert_eq!(ctx.waiting_for_live(t, "a"), 4);
        ctx.set_waiting_for_live(t, "b", false, false);
        ctx.set_waiting_for_live(t, "c", false, false);
        assert_eq!(
            ctx.waiting_for_live(t, "a"),
            4,
            "b and c went live just now"
        );
        ctx.set_waiting_for_live(t, "d", false, true);
        assert_eq!(ctx.waiting_for_live(t, "a"), 3, "d is gone");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(ctx.waiting_for_live(t, "a"), 1, "the wave is over");
        ctx.set_waiting_for_live(t, "a", false, false);
        assert!(
            ctx.waiting_live
                .lock()
                .unwrap()
                .get(t)
                .is_some_and(|m| m.len() == 1)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        ctx.set_waiting_for_live(t, "a", false, false);
        assert!(
            ctx.waiting_live.lock().unwrap().get(t).is_none(),
            "nothing kept"
        );
    }
}
