//! Running the operator in a cluster: leader election, the admin server (`/metrics`,
//! `/healthz`, `/readyz`), metrics, and the namespaces to watch.

pub mod admin;
pub mod leader;
pub mod metrics;
pub mod namespaces;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::FutureExt;

use crate::aic::CallObserver;
use crate::controller::{self, Options, Wiring};
use admin::Health;
use leader::LeaderConfig;
use metrics::Metrics;

/// How `certrotor run` operates.
#[derive(Default)]
pub struct Operator {
    pub options: Options,
    /// Hold this lease to run the controllers; without one they always run.
    pub leader: Option<LeaderConfig>,
    /// Watch only these namespaces; every namespace when empty.
    pub namespaces: Vec<String>,
    /// Also receives every AIC call (tests).
    pub observer: Option<Arc<dyn CallObserver>>,
}

/// Serves the admin endpoints on `admin` and runs the controllers (as leader, if configured)
/// until `shutdown`; then stops them gracefully, releases the lease and returns.
pub async fn run(
    client: kube::Client,
    operator: Operator,
    admin: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(operator.leader.is_some()));
    let shutdown = shutdown.shared();
    let addr = admin.local_addr().context("admin listener address")?;
    let server = tokio::spawn(admin::serve(
        admin,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    tracing::info!(%addr, "admin server listening (/metrics, /healthz, /readyz)");
    let wiring = {
        let (metrics, health) = (metrics.clone(), health.clone());
        let (namespaces, observer) = (operator.namespaces.clone(), operator.observer.clone());
        move || Wiring {
            observer: observer.clone(),
            metrics: Some(metrics.clone()),
            health: Some(health.clone()),
            namespaces: namespaces.clone(),
        }
    };
    let result = match operator.leader {
        Some(config) => {
            let options = operator.options.clone();
            let controllers_client = client.clone();
            leader::run(client, config, health, shutdown.clone(), move |stop| {
                controller::run_with(controllers_client.clone(), options.clone(), wiring(), stop)
                    .boxed()
            })
            .await
            .map_err(anyhow::Error::msg)
        }
        None => {
            controller::run_with(client, operator.options, wiring(), shutdown.clone()).await;
            Ok(())
        }
    };
    if result.is_err() {
        server.abort();
        return result;
    }
    // The server stops on the same signal; don't let a stuck scrape hold the exit.
    shutdown.await;
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "admin server failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "admin server task failed"),
        Ok(Ok(Ok(()))) | Err(_) => {}
    }
    result
}
