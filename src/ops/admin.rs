//! The admin HTTP server: `/metrics`, `/healthz` and `/readyz` on one port.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::metrics::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/readyz` answers from. Leading and standing by are both ready states, reached at
/// different moments: a leader once its caches have synced, a standby once it watches the lease.
#[derive(Debug)]
pub struct Health {
    leader_election: bool,
    watching_lease: AtomicBool,
    leading: AtomicBool,
    caches_synced: AtomicBool,
}

impl Health {
    pub fn new(leader_election: bool) -> Self {
        Self {
            leader_election,
            watching_lease: AtomicBool::new(false),
            leading: AtomicBool::new(false),
            caches_synced: AtomicBool::new(false),
        }
    }

    pub fn set_watching_lease(&self, watching: bool) {
        self.watching_lease.store(watching, Ordering::SeqCst);
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
    }

    pub fn set_caches_synced(&self, synced: bool) {
        self.caches_synced.store(synced, Ordering::SeqCst);
    }

    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    pub fn is_ready(&self) -> bool {
        readiness(
            self.leader_election,
            self.watching_lease.load(Ordering::SeqCst),
            self.leading.load(Ordering::SeqCst),
            self.caches_synced.load(Ordering::SeqCst),
        )
    }
}

/// Without leader election the controllers always run, so only synced caches count.
fn readiness(leader_election: bool, watching_lease: bool, leading: bool, synced: bool) -> bool {
    if !leader_election {
        return synced;
    }
    watching_lease && (!leading || synced)
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed").into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.health.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::readiness;

    #[test]
    fn readiness_by_role() {
        // No leader election: ready exactly when synced.
        assert!(!readiness(false, false, false, false));
        assert!(readiness(false, false, false, true));
        // Not yet watching the lease: never ready.
        assert!(!readiness(true, false, false, true));
        // A standby watching the lease is ready; a leader only once synced.
        assert!(readiness(true, true, false, false));
        assert!(!readiness(true, true, true, false));
        assert!(readiness(true, true, true, true));
    }
}
