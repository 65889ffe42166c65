//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager): only the leader runs
//! the controllers. A standby takes the lease once it has expired; a leader that loses it (or can
//! no longer renew it) stops its controllers and stands by again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::admin::Health;

/// The lease to hold and who we are.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub lease_namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
}

/// Resolves when the controllers must stop.
pub type StopSignal = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// The identity in the lease: the pod name when running in a pod (unique, and what `kubectl get
/// lease` readers recognise), else the hostname plus a random suffix, so that two processes on
/// one machine never share an identity.
pub fn identity(pod_name: Option<String>, hostname: Option<String>, suffix: &str) -> String {
    match pod_name.filter(|p| !p.is_empty()) {
        Some(pod) => pod,
        None => format!(
            "{}-{suffix}",
            hostname
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "certrotor".into())
        ),
    }
}

/// Lease duration and renewal grace, in whole seconds as the Lease stores them. The leader
/// renews a third of the duration before expiry, which leaves room for a slow API server.
pub fn lease_seconds(duration: Duration) -> Result<(u64, u64), String> {
    let seconds = duration.as_secs();
    if seconds < 2 {
        return Err(format!(
            "the lease duration must be at least 2s, got {duration:?}"
        ));
    }
    Ok((seconds, (seconds / 3).max(1)))
}

async fn build(client: &Client, config: &LeaderConfig) -> Result<LeaseManager, String> {
    let (duration, grace) = lease_seconds(config.lease_duration)?;
    LeaseManagerBuilder::new(client.clone(), &config.lease_name)
        .with_namespace(&config.lease_namespace)
        .with_identity(&config.identity)
        .with_field_manager(format!("certrotor-{}", config.identity))
        .with_duration(duration)
        .with_grace(grace)
        .build()
        .await
        .map_err(|e| e.to_string())
}

/// Running controllers and the way to stop them.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

fn start(run: &mut impl FnMut(StopSignal) -> BoxFuture<'static, ()>) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(Box::pin(async move {
        let _ = stopped.await;
    })));
    Running { stop, task }
}

/// Asks the controllers to finish their reconciles and waits for them.
async fn stop(running: Option<Running>) {
    if let Some(Running { stop, task }) = running {
        let _ = stop.send(());
        if let Err(e) = task.await {
            tracing::error!(error = %e, "controllers ended abnormally");
        }
    }
}

/// How one lease manager's life ended.
enum Ended {
    Shutdown,
    /// The lease could not be read or renewed; start over with a fresh manager.
    Failed(String),
}

/// Runs `run` (the controllers) while this process holds the lease, until `shutdown`; then stops
/// the controllers gracefully (still renewing meanwhile) and releases the lease.
pub async fn run(
    client: Client,
    config: LeaderConfig,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send,
    mut run: impl FnMut(StopSignal) -> BoxFuture<'static, ()> + Send,
) -> Result<(), String> {
    // Bad parameters are a configuration error, not something to retry.
    lease_seconds(config.lease_duration)?;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut retry = Duration::from_secs(1);
    loop {
        let built = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            built = build(&client, &config) => built,
        };
        let manager = match built {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, lease = %config.lease_name, "cannot use the lease; retrying");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(retry) => {},
                }
                retry = (retry * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        retry = Duration::from_secs(1);
        health.set_watching_lease(true);
        tracing::info!(identity = %config.identity, lease = %config.lease_name, "standing by for the lease");
        let ended = hold(&manager, &health, shutdown.as_mut(), &mut run).await;
        health.set_leading(false);
        match ended {
            Ended::Shutdown => {
                if let Err(e) = manager.release().await {
                    tracing::warn!(error = %e, "could not release the lease; it expires on its own");
                }
                return Ok(());
            }
            Ended::Failed(e) => {
                health.set_watching_lease(false);
                tracing::warn!(error = %e, "lease renewal failed; standing by afresh");
                // Best effort: if the API answers again, let a standby take over at once.
                let _ = manager.release().await;
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(retry) => {},
                }
            }
        }
    }
}

async fn hold(
    manager: &LeaseManager,
    health: &Health,
    mut shutdown: Pin<&mut (impl Future<Output = ()> + Send)>,
    run: &mut impl FnMut(StopSignal) -> BoxFuture<'static, ()>,
) -> Ended {
    let mut running: Option<Running> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => {
                if let Some(r) = running.take() {
                    tracing::info!("stopping the controllers, then releasing the lease");
                    drain(manager, r).await;
                }
                return Ended::Shutdown;
            }
            changed = manager.changed() => match changed {
                Ok(true) => {
                    tracing::info!("acquired the lease; starting the controllers");
                    health.set_caches_synced(false);
                    health.set_leading(true);
                    running = Some(start(run));
                }
                Ok(false) => {
                    tracing::warn!("lost the lease; stopping the controllers");
                    health.set_leading(false);
                    stop(running.take()).await;
                }
                Err(e) => {
                    health.set_leading(false);
                    stop(running.take()).await;
                    return Ended::Failed(e.to_string());
                }
            },
            _ = ended(&mut running) => {
                // Controllers only end when told to; anything else is a fault. Hand the lease
                // to someone else rather than hold it with nothing running.
                health.set_leading(false);
                return Ended::Failed("the controllers ended unexpectedly".into());
            }
        }
    }
}

/// Resolves if the controllers end by themselves; never while none run.
async fn ended(running: &mut Option<Running>) {
    match running.as_mut() {
        Some(r) => {
            let _ = (&mut r.task).await;
        }
        None => std::future::pending().await,
    }
}

/// Stops the controllers while the lease keeps being renewed, so that no standby starts
/// reconciling before our in-flight reconciles have finished.
async fn drain(manager: &LeaseManager, running: Running) {
    let renew = async {
        loop {
            if manager.changed().await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    tokio::select! {
        _ = stop(Some(running)) => {},
        _ = renew => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_prefers_the_pod_name() {
        assert_eq!(
            identity(Some("certrotor-7d9f".into()), Some("node".into()), "x1"),
            "certrotor-7d9f"
        );
        assert_eq!(identity(None, Some("laptop".into()), "x1"), "laptop-x1");
        assert_eq!(identity(Some(String::new()), None, "x1"), "certrotor-x1");
    }

    #[test]
    fn lease_seconds_need_room_for_a_grace_period() {
        assert_eq!(lease_seconds(Duration::from_secs(15)), Ok((15, 5)));
        assert_eq!(lease_seconds(Duration::from_secs(2)), Ok((2, 1)));
        assert!(lease_seconds(Duration::from_millis(1500)).is_err());
    }
}
