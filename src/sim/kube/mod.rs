//! In-process Kubernetes API stand-in: a **test double** and the embedded default for
//! `certrotor demo`. It is not a Kubernetes API server and must never be used as one.
//!
//! There is no cluster and no container engine where certrotor is developed and tested, so this
//! module serves the slice of the Kubernetes API that the unmodified operator (kube's `Client`,
//! `Api<K>`, `Controller`, `watcher`, `reflector`, `events::Recorder`) and `kubectl` use, over
//! plain HTTP on loopback with no authentication:
//!
//! - Resources: `namespaces`, `secrets`, `configmaps`, `events` (core `v1` and `events.k8s.io/v1`,
//!   one store seen two ways), `leases`, `customresourcedefinitions`, and every kind an applied
//!   CRD declares (its scope, versions, status subresource, schema and printer columns).
//! - Verbs: get, list, watch, create, update (PUT), patch, delete, deletecollection, with
//!   label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!`) and field selectors (any
//!   dotted scalar path with `=`, `==`, `!=`). `limit`/`continue` are accepted; every list is
//!   answered in one page.
//! - Object semantics: `uid`, `creationTimestamp`, one global increasing `resourceVersion`,
//!   `generation` bumped only when something outside `metadata` (and `status`, for kinds with a
//!   status subresource) changes, 409 on stale `resourceVersion`, finalizers with
//!   `deletionTimestamp`, no-op writes that change nothing (no new resourceVersion, no watch
//!   event), Secret `stringData` folded into `data`, and background deletion of dependents whose
//!   every owner is gone (garbage collection by `ownerReferences`).
//! - Namespaces must exist before objects are created in them (`default`, `kube-system`,
//!   `kube-public` and `kube-node-lease` exist from the start), as on a real cluster.
//! - Patches: see [`patch`] for how strategic merge and server-side apply are approximated.
//! - Watch: newline-delimited `{type, object}` events replayed from a bounded history, 410 (an
//!   ERROR event) for a compacted `resourceVersion`, bookmarks, `timeoutSeconds`, selector
//!   transitions as ADDED/DELETED, streaming lists (`sendInitialEvents=true`).
//! - Discovery (legacy and aggregated v2), Table output for `kubectl get`, metadata-only
//!   (`PartialObjectMetadata`) responses, and validation/pruning against CRD schemas (see
//!   [`schema`] for what is and is not checked).
//!
//! kubectl (checked with 1.32 in `tests/standin_kubectl.rs`): aggregated discovery, Tables for
//! `get` (CRD printer columns, `-A`, `-l`, `-w`), `describe` with Events, client-side and
//! server-side `apply`, `create secret|configmap|namespace` (protobuf bodies), `label`,
//! `annotate`, `patch`, `wait --for=condition`, `delete` (which waits via a watch), and
//! `explain` for CRD kinds via a minimal `/openapi/v3` that also tells kubectl the server
//! validates fields itself (unknown fields are pruned, not rejected, whatever
//! `fieldValidation` says).
//!
//! Not served: authentication and authorization (every request is allowed), protobuf (except
//! the Secret, ConfigMap and Namespace bodies `kubectl create` sends; answers are JSON),
//! admission webhooks, conversion webhooks (CRD versions are assumed compatible),
//! `managedFields`, `resourceVersion` semantics on get and on a first list page (always the
//! latest state), and every kind not listed above.
//!
//! Served as a real server does, because a double less strict than the server hides bugs: CEL
//! validation rules (CRD cost and boundedness checks on write; rules, transition rules included,
//! on every object write: [`cel`]), schema bounds (lengths, counts, ranges, patterns), and list
//! pagination (`limit`/`continue` over a consistent snapshot, 410 Expired once compacted).

pub mod cel;
mod convert;
mod discovery;
mod error;
pub mod patch;
mod protobuf;
mod resources;
pub mod schema;
mod selector;
mod server;
mod store;
mod table;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::RwLock;

use server::App;

/// Knobs for tests; [`StandIn::start`] uses the defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
    /// How many changes watches can replay; older resourceVersions get 410 Gone.
    pub history_limit: usize,
    /// CEL validation rules (`x-kubernetes-validations`), on by default as on every server
    /// since 1.25. Off plays an older server, which ignores them: for testing what the
    /// operator itself checks.
    pub validation_rules: bool,
    /// Each write to a `status` subresource waits this long before it is applied (against the
    /// object as it is then): two writers that read the same version race, as a frozen leader
    /// and its successor do.
    pub status_write_delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(30),
            history_limit: 4096,
            validation_rules: true,
            status_write_delay: Duration::ZERO,
        }
    }
}

/// Request kinds, as counted in [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
    Discovery,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
            Verb::Discovery => "discovery",
        }
    }

    pub fn is_write(self) -> bool {
        matches!(
            self,
            Verb::Create | Verb::Update | Verb::Patch | Verb::Delete | Verb::DeleteCollection
        )
    }
}

/// Request counts by verb and resource (`secrets`, `leases.coordination.k8s.io`,
/// `tenantcertificates.certrotor.io`; discovery requests have resource `""`). Failed requests
/// count too: they cost the real API server as much.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: BTreeMap<(Verb, String), u64>,
}

impl Stats {
    /// Requests with this verb on this resource.
    pub fn count(&self, verb: Verb, resource: &str) -> u64 {
        self.requests
            .get(&(verb, resource.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// All writes (create, update, patch, delete, deletecollection).
    pub fn writes(&self) -> u64 {
        self.sum(|v, _| v.is_write())
    }

    /// Writes to one resource.
    pub fn writes_to(&self, resource: &str) -> u64 {
        self.sum(|v, r| v.is_write() && r == resource)
    }

    /// All reads (get, list, watch; not discovery).
    pub fn reads(&self) -> u64 {
        self.sum(|v, _| !v.is_write() && v != Verb::Discovery)
    }

    fn sum(&self, pick: impl Fn(Verb, &str) -> bool) -> u64 {
        self.requests
            .iter()
            .filter(|((v, r), _)| pick(*v, r))
            .map(|(_, n)| n)
            .sum()
    }
}

impl App {
    fn count(&self, verb: Verb, resource: &str) {
        if let Ok(mut stats) = self.stats.lock() {
            *stats
                .requests
                .entry((verb, resource.to_string()))
                .or_insert(0) += 1;
        }
    }
}

/// A running stand-in. Cheap to clone; [`StandIn::shutdown`] stops it for every clone.
/// Dropping the handles does not stop it (a client may outlive them); it serves until
/// `shutdown` or until its Tokio runtime ends.
#[derive(Clone)]
pub struct StandIn {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    app: Arc<App>,
    client: kube::Client,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for StandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandIn")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl StandIn {
    /// Starts serving on `addr` (port 0 picks a free port).
    pub async fn start(addr: SocketAddr) -> anyhow::Result<StandIn> {
        Self::start_with(addr, Options::default()).await
    }

    pub async fn start_with(addr: SocketAddr, options: Options) -> anyhow::Result<StandIn> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the Kubernetes API stand-in to {addr}"))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let app = Arc::new(App {
            state: RwLock::new(
                store::State::new(options.history_limit)
                    .with_validation_rules(options.validation_rules),
            ),
            stats: Mutex::new(Stats::default()),
            audit: Mutex::new(Default::default()),
            shutdown: stopped.clone(),
            stop,
            bookmark_interval: options.bookmark_interval,
            status_write_delay: options.status_write_delay,
            denied_writes: Mutex::new(Default::default()),
        });
        let router = axum::Router::new()
            .fallback(server::handle)
            // The real server's request limit (3 MiB), not axum's 2 MB default: a Secret may
            // hold up to 1 MiB of base64 data.
            .layer(axum::extract::DefaultBodyLimit::max(3 * 1024 * 1024))
            .with_state(app.clone());
        let mut stopped_signal = stopped;
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    // The sender lives in `App`, which this server owns: only an explicit
                    // stop ends it.
                    let _ = stopped_signal.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "Kubernetes API stand-in stopped with an error");
            }
        });
        let url = format!("http://{addr}");
        let config = kube::Config::new(url.parse().context("stand-in URL")?);
        let client =
            kube::Client::try_from(config).context("building a client for the stand-in")?;
        tracing::info!(%url, "Kubernetes API stand-in listening");
        Ok(StandIn {
            inner: Arc::new(Inner {
                addr,
                app,
                client,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// `http://127.0.0.1:PORT`.
    /// Writes to `plural/name` (e.g. `secrets/acme-client`) are refused from now on, as an
    /// admission webhook would refuse them, with `message`.
    pub fn deny_writes(&self, plural: &str, name: &str, message: &str) {
        self.inner
            .app
            .denied_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(format!("{plural}/{name}"), message.to_string());
    }

    /// Undoes [`Self::deny_writes`].
    pub fn allow_writes(&self, plural: &str, name: &str) {
        self.inner
            .app
            .denied_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&format!("{plural}/{name}"));
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A client for this stand-in, with default namespace `default`.
    pub fn client(&self) -> kube::Client {
        self.inner.client.clone()
    }

    /// A kubeconfig pointing at this stand-in (context `certrotor-standin`, namespace
    /// `default`, no credentials), for `kubectl` and `certrotor run` via `KUBECONFIG`.
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, kubeconfig(&self.url()))
            .with_context(|| format!("writing kubeconfig {}", path.display()))
    }

    /// Request counts so far.
    pub fn stats(&self) -> Stats {
        self.inner
            .app
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The kinds of call (verb, `resource[.group][/subresource]`) made by clients whose
    /// User-Agent starts with `agent`.
    pub fn calls_by(&self, agent: &str) -> std::collections::BTreeSet<(Verb, String)> {
        self.inner
            .app
            .audit
            .lock()
            .map(|a| {
                a.iter()
                    .filter(|(ua, _, _)| ua.starts_with(agent))
                    .map(|(_, v, r)| (*v, r.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ends every watch and stops serving.
    pub async fn shutdown(self) {
        let _ = self.inner.app.stop.send(true);
        let task = self.inner.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let abort = task.abort_handle();
            // Idle keep-alive connections held by clients can delay a graceful end; don't wait
            // for them forever.
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: certrotor-standin
  cluster:
    server: {url}
contexts:
- name: certrotor-standin
  context:
    cluster: certrotor-standin
    user: certrotor-standin
    namespace: default
current-context: certrotor-standin
users:
- name: certrotor-standin
  user: {{}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_split_reads_and_writes() {
        let mut s = Stats::default();
        s.requests.insert((Verb::Patch, "secrets".into()), 2);
        s.requests.insert((Verb::Create, "configmaps".into()), 1);
        s.requests.insert((Verb::Watch, "secrets".into()), 4);
        s.requests.insert((Verb::Discovery, String::new()), 9);
        assert_eq!(s.writes(), 3);
        assert_eq!(s.writes_to("secrets"), 2);
        assert_eq!(s.reads(), 4);
        assert_eq!(s.count(Verb::Watch, "secrets"), 4);
        assert_eq!(s.count(Verb::Get, "secrets"), 0);
    }

    #[test]
    fn kubeconfig_names_the_server() {
        let k = kubeconfig("http://127.0.0.1:1234");
        assert!(k.contains("server: http://127.0.0.1:1234"));
        assert!(k.contains("current-context: certrotor-standin"));
    }
}
