//! End to end: the real `certrotor run` binary against the Kubernetes API stand-in and the AIC
//! simulator, over loopback — including `kill -9` mid-flow and a restart.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use kube::api::{Patch, PatchParams};

struct Operator {
    child: Child,
}

impl Operator {
    fn spawn(kubeconfig: &std::path::Path) -> Operator {
        let child = Command::new(env!("CARGO_BIN_EXE_certrotor"))
            .args([
                "run",
                "--live-poll-min",
                "100ms",
                "--live-poll-max",
                "500ms",
                "--resync",
                "10m",
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn certrotor run");
        Operator { child }
    }

    /// SIGKILL: no graceful anything.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn stop(mut self) {
        // SIGTERM, then wait for the graceful shutdown.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..50 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("certrotor run did not stop on SIGTERM within 5 s");
    }
}

fn ours(env: &Env) -> Vec<certrotor::sim::aic::SimCertificate> {
    env.aic
        .certificates()
        .into_iter()
        .filter(|c| !c.created_by_support && !c.deleted)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_binary_reconciles_survives_kill_9_and_cleans_up() {
    let env = Env::new(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    env.standin.write_kubeconfig(&kubeconfig).unwrap();
    let operator = Operator::spawn(&kubeconfig);

    // Apply → Ready.
    let (chain, key) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain, &key).await;
    env.apply(&with_url(
        &local_yaml(
            "login",
            "login-tls",
            "  deletionPolicy: Delete\n  revisionHistoryLimit: 0\n",
        ),
        &env,
    ))
    .await;
    let first = env
        .wait_ready("login")
        .await
        .status
        .unwrap()
        .certificate_id
        .unwrap();

    // kill -9 while a rotation is in flight (uploaded, not yet live), then restart.
    env.aic.knobs().set_live_delay(Duration::from_secs(2));
    let (chain2, key2) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain2, &key2).await;
    let fp2 = fingerprint(&chain2);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !ours(&env).iter().any(|c| c.fingerprint == fp2) {
        assert!(
            std::time::Instant::now() < deadline,
            "rotation upload never happened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    operator.kill9();
    let operator = Operator::spawn(&kubeconfig);
    let t = env
        .wait_for("login", 30, "rotated after restart", |t| {
            t.status.as_ref().is_some_and(|s| {
                s.fingerprint.as_deref() == Some(fp2.as_str())
                    && s.previous_certificate_ids.is_empty()
            }) && is_ready(t)
        })
        .await;
    assert_ne!(t.status.unwrap().certificate_id.unwrap(), first);
    let uploads_of_fp2 = env
        .aic
        .certificates()
        .iter()
        .filter(|c| c.fingerprint == fp2)
        .count();
    assert_eq!(uploads_of_fp2, 1, "no duplicate after kill -9");
    assert_eq!(ours(&env).len(), 1, "old one deleted, nothing else left");

    // The renew annotation, through the binary.
    env.aic.knobs().set_live_delay(Duration::from_millis(300));
    let before = env
        .get("login")
        .await
        .status
        .unwrap()
        .certificate_id
        .unwrap();
    let patch = serde_json::json!({"metadata": {"annotations": {"certrotor.io/renew": "e2e"}}});
    env.tcerts()
        .patch("login", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    env.wait_for("login", 30, "renewed", |t| {
        t.status
            .as_ref()
            .is_some_and(|s| s.certificate_id.as_deref() != Some(before.as_str()))
            && is_ready(t)
    })
    .await;

    // Delete under deletionPolicy Delete: nothing of ours is left in the tenant.
    env.delete("login").await;
    env.wait_gone("login", 30).await;
    assert!(ours(&env).is_empty(), "{:?}", ours(&env));
    assert!(
        env.aic
            .certificates()
            .iter()
            .any(|c| c.created_by_support && !c.deleted)
    );
    operator.stop();
}
