//! One reconciler per kind plus the shared context, error policy, finalizers and events.

pub mod clients;
pub mod deviceid;
pub mod patch;
pub mod tenant;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::aic::CallObserver;
use crate::api::{DeviceIdCredential, TenantCertificate};
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
    #[error("object has no namespace")]
    NoNamespace,
    #[error("serialising status: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
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
}

impl Default for Options {
    fn default() -> Self {
        Self {
            poll: PollPolicy::default(),
            failure_backoff_base: Duration::from_secs(5),
            failure_backoff_max: Duration::from_secs(300),
            concurrency: 8,
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub aic: AicClients,
    pub options: Options,
    /// DeviceIdCredential: per-credential call locks and the resources' store.
    pub deviceid: deviceid::Shared,
}

impl Context {
    pub fn new(
        client: Client,
        options: Options,
        observer: Option<Arc<dyn CallObserver>>,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: "certrotor".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            aic: AicClients::new(observer),
            options,
            deviceid: deviceid::Shared::default(),
        })
    }

    /// Publishes an Event about `obj`; a failure to record is logged, never fatal.
    pub async fn event<K>(&self, obj: &K, type_: EventType, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
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

/// Runs the controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    options: Options,
    observer: Option<Arc<dyn CallObserver>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ctx = Context::new(client.clone(), options.clone(), observer);
    // Both controllers stop on the same signal.
    let shutdown = futures::FutureExt::shared(shutdown);
    let stopped = shutdown.clone();
    let tcerts: Api<TenantCertificate> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(tcerts, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .predicate_filter(user_intent, Default::default());
    let controller = Controller::for_stream(stream, reader.clone());
    // Only metadata of Secrets is watched (names and resourceVersions), mapped to the resources
    // that reference them.
    let secrets = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();
    let store = reader.clone();
    let tenant_certificates = controller
        .with_config(kube::runtime::controller::Config::default().concurrency(options.concurrency))
        .watches_stream(secrets, move |secret| {
            let ns = secret.namespace();
            let name = secret.name_any();
            store
                .state()
                .into_iter()
                .filter(|t| t.namespace() == ns && tenant::references_secret(t, &name))
                .map(|t| ObjectRef::from_obj(&*t))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(tenant::reconcile, tenant::error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
                Err(e) => tracing::warn!(error = %e, "reconcile failed"),
            }
        });
    futures::join!(
        tenant_certificates,
        run_deviceid(client, options, ctx, stopped)
    );
}

/// The DeviceIdCredential controller, built like the TenantCertificate one.
async fn run_deviceid(
    client: Client,
    options: Options,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let didcs: Api<DeviceIdCredential> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    ctx.deviceid.set_store(reader.clone());
    let stream = reflector(writer, watcher(didcs, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .predicate_filter(user_intent, Default::default());
    let secrets = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();
    let store = reader.clone();
    Controller::for_stream(stream, reader)
        .with_config(kube::runtime::controller::Config::default().concurrency(options.concurrency))
        .watches_stream(secrets, move |secret| {
            let ns = secret.namespace();
            let name = secret.name_any();
            store
                .state()
                .into_iter()
                .filter(|d| d.namespace() == ns && deviceid::references_secret(d, &name))
                .map(|d| ObjectRef::from_obj(&*d))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(deviceid::reconcile, deviceid::error_policy, ctx)
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
