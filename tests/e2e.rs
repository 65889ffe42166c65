//! End to end: the real `certrotor run` binary against the Kubernetes API stand-in and the AIC
//! simulator, over loopback — including `kill -9` mid-flow and a restart.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use kube::api::{Api, Patch, PatchParams};

struct Operator {
    child: Child,
}

impl Operator {
    fn spawn(kubeconfig: &std::path::Path) -> Operator {
        Self::spawn_with(kubeconfig, &[], "")
    }

    /// With more `run` flags, and `POD_NAME` (the Events' reportingInstance) when not empty.
    fn spawn_with(kubeconfig: &std::path::Path, extra: &[&str], pod_name: &str) -> Operator {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_certrotor"));
        if !pod_name.is_empty() {
            cmd.env("POD_NAME", pod_name);
        }
        let child = cmd
            .args([
                "run",
                "--live-poll-min",
                "100ms",
                "--live-poll-max",
                "500ms",
                "--resync",
                "10m",
                // Each test runs its own operator: its own admin port, and a short lease so a
                // restart after kill -9 takes the lease over quickly.
                "--metrics-addr",
                "127.0.0.1:0",
                "--lease-duration",
                "2s",
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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

/// A failing test must not leave an operator running.
impl Drop for Operator {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_binary_applies_each_deletion_policy() {
    let env = Env::new(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    env.standin.write_kubeconfig(&kubeconfig).unwrap();
    let operator = Operator::spawn(&kubeconfig);
    let mut ids = std::collections::BTreeMap::new();
    for policy in ["Retain", "Deactivate", "Delete"] {
        let name = policy.to_lowercase();
        let (chain, key) = env.issue(&[&format!("{name}.example.com")], 90);
        env.put_tls(&format!("{name}-tls"), &chain, &key).await;
        env.apply(&with_url(
            &local_yaml(
                &name,
                &format!("{name}-tls"),
                &format!("  deletionPolicy: {policy}\n"),
            ),
            &env,
        ))
        .await;
    }
    for policy in ["Retain", "Deactivate", "Delete"] {
        let name = policy.to_lowercase();
        ids.insert(
            policy,
            env.wait_ready(&name)
                .await
                .status
                .unwrap()
                .certificate_id
                .unwrap(),
        );
        env.delete(&name).await;
    }
    for policy in ["Retain", "Deactivate", "Delete"] {
        env.wait_gone(&policy.to_lowercase(), 30).await;
    }
    let find = |id: &str| {
        env.aic
            .certificates()
            .into_iter()
            .find(|c| c.id == id)
            .unwrap()
    };
    let retained = find(&ids["Retain"]);
    assert!(
        retained.active && !retained.deleted,
        "Retain keeps it active"
    );
    let deactivated = find(&ids["Deactivate"]);
    assert!(
        !deactivated.active && !deactivated.deleted,
        "Deactivate keeps it, inactive"
    );
    assert!(find(&ids["Delete"]).deleted, "Delete removes it");
    operator.stop();
}

/// Device-ID: `kill -9` while a refresh may be in flight, restart: no 429, calls never more than
/// the attempts recorded, and the output Secret still holds a certificate the service accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_binary_kill_9_mid_refresh_overspends_nothing() {
    use certrotor::sim::cie::{CieSim, CieSimConfig, Operation};
    use k8s_openapi::api::core::v1::Secret;

    let env = Env::new(sim_config()).await;
    let cie = CieSim::start("127.0.0.1:0".parse().unwrap(), CieSimConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    env.standin.write_kubeconfig(&kubeconfig).unwrap();
    let mut operator = Operator::spawn(&kubeconfig);
    let didcs = apply_device(&env, &cie, "iot").await;
    wait_device_refreshes(&didcs, "iot", 1).await;

    // Renew with a slow vendor, and kill the operator in the middle; then restart, several times.
    cie.knobs().set_latency(Duration::from_millis(800));
    let patch = serde_json::json!({"metadata": {"annotations": {"certrotor.io/renew": "storm"}}});
    didcs
        .patch("iot", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..5 {
        operator.kill9();
        operator = Operator::spawn(&kubeconfig);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    cie.knobs().set_latency(Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let status = didcs.get("iot").await.unwrap().status.unwrap();
    let refreshes = cie
        .calls()
        .iter()
        .filter(|c| c.operation == Operation::CertRefresh)
        .count();
    assert_eq!(cie.count_429(), 0, "no 429 in a restart storm");
    assert!(
        refreshes <= status.attempts.len(),
        "{refreshes} calls but only {} attempts recorded",
        status.attempts.len()
    );
    assert!(
        status.attempts.len() <= 3,
        "the burst of three is never exceeded within the hour: {:?}",
        status.attempts
    );
    let secrets: kube::Api<Secret> = kube::Api::namespaced(env.client.clone(), NS);
    let out = secrets.get("iot-client").await.unwrap();
    let crt = String::from_utf8(out.data.unwrap()["tls.crt"].0.clone()).unwrap();
    assert!(
        cie.is_valid(&crt),
        "the published certificate is one the service still accepts"
    );
    println!(
        "restart storm: {refreshes} cert:refresh calls, {} attempts recorded, {} 429s",
        status.attempts.len(),
        cie.count_429()
    );
    operator.stop();
    cie.shutdown().await;
}

/// The contract the chart's RBAC is checked against (tests/packaging/check_rbac.py), read back:
/// (group, resource[/subresource]) → verbs.
fn rbac_contract()
-> std::collections::BTreeMap<(String, String), std::collections::BTreeSet<String>> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/packaging/check_rbac.py"
    ))
    .unwrap();
    let mut out = std::collections::BTreeMap::new();
    let verbs = |set: &str| {
        set.split(',')
            .map(|v| v.trim().trim_matches('"').to_string())
            .filter(|v| !v.is_empty())
            .collect()
    };
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("(\"") {
            // ("group", "resource"): {"get", "list"},
            let (group, rest) = rest.split_once("\", \"").unwrap();
            let (resource, rest) = rest.split_once("\"): {").unwrap();
            let set = rest.trim_end_matches(',').trim_end_matches('}');
            out.insert((group.to_string(), resource.to_string()), verbs(set));
        } else if let Some(set) = line.strip_prefix("LEASE_VERBS = {") {
            out.insert(
                ("coordination.k8s.io".into(), "leases".into()),
                verbs(set.trim_end_matches('}')),
            );
        }
    }
    assert!(out.len() >= 9, "could not read the RBAC contract: {out:?}");
    out
}

/// The real binary, through every flow (Local rotation and Delete, Tenant CSR, Device-ID refresh and
/// renew, leader election): the calls it makes are exactly what the chart's RBAC grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_calls_are_exactly_what_the_rbac_contract_grants() {
    use certrotor::sim::cie::{CieSim, CieSimConfig};
    let env = Env::new(sim_config()).await;
    let cie = CieSim::start("127.0.0.1:0".parse().unwrap(), CieSimConfig::default())
        .await
        .unwrap();
    // cert-manager is installed: its CRD, and a CA issuer.
    {
        use kube::CustomResourceExt;
        let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
            Api::all(env.client.clone());
        crds.create(
            &Default::default(),
            &certrotor::certmanager::CertificateRequest::crd(),
        )
        .await
        .unwrap();
    }
    let _cert_manager = certrotor::sim::certmanager::CertManager::start(
        env.client.clone(),
        std::sync::Arc::new(certrotor::pki::ca::Ca::new("issuer").unwrap()),
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    env.standin.write_kubeconfig(&kubeconfig).unwrap();
    let operator = Operator::spawn(&kubeconfig);

    // Tenant mode through cert-manager, renewed once (the first request then goes).
    env.apply(&with_url(
        &tenant_yaml(
            "sso",
            "{commonName: sso.example.com, subjectAlternativeNames: [sso.example.com]}",
            "  issuerRef: {name: ca-issuer}\n  revisionHistoryLimit: 0\n",
        ),
        &env,
    ))
    .await;
    let first = env.wait_ready("sso").await.status.unwrap().certificate_id;
    let patch = serde_json::json!({"metadata": {"annotations": {"certrotor.io/renew": "rbac"}}});
    env.tcerts()
        .patch("sso", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    env.wait_for("sso", 60, "renewed through cert-manager", |t| {
        is_ready(t) && t.status.as_ref().unwrap().certificate_id != first
    })
    .await;

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
    env.wait_ready("login").await;
    let (chain2, key2) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain2, &key2).await;
    let fp2 = fingerprint(&chain2);
    env.wait_for("login", 60, "rotated", |t| {
        t.status.as_ref().is_some_and(|s| {
            s.fingerprint.as_deref() == Some(fp2.as_str()) && s.previous_certificate_ids.is_empty()
        })
    })
    .await;
    env.apply(&with_url(
        &tenant_yaml(
            "idp",
            "{commonName: idp.example.com, subjectAlternativeNames: [idp.example.com]}",
            "",
        ),
        &env,
    ))
    .await;
    env.wait_for("idp", 60, "CSR", |t| {
        t.status.as_ref().is_some_and(|s| s.csr.is_some())
    })
    .await;
    let didcs = apply_device(&env, &cie, "iot").await;
    wait_device_refreshes(&didcs, "iot", 1).await;
    let patch = serde_json::json!({"metadata": {"annotations": {"certrotor.io/renew": "rbac"}}});
    didcs
        .patch("iot", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_device_refreshes(&didcs, "iot", 2).await;
    env.delete("login").await;
    env.delete("idp").await;
    env.wait_gone("login", 60).await;
    env.wait_gone("idp", 60).await;
    operator.stop();

    let contract = rbac_contract();
    let observed: std::collections::BTreeSet<(String, String, String)> = env
        .standin
        .calls_by("certrotor/")
        .into_iter()
        .map(|(verb, resource)| {
            let (resource, sub) = match resource.split_once('/') {
                Some((r, s)) => (r.to_string(), format!("/{s}")),
                None => (resource, String::new()),
            };
            let (plural, group) = resource
                .split_once('.')
                .map(|(p, g)| (p.to_string(), g.to_string()))
                .unwrap_or((resource, String::new()));
            (group, format!("{plural}{sub}"), verb.as_str().to_string())
        })
        .collect();
    assert!(
        !observed.is_empty(),
        "the operator's User-Agent was not seen"
    );
    let granted = |g: &str, r: &str, v: &str| {
        contract
            .get(&(g.to_string(), r.to_string()))
            .is_some_and(|vs| vs.contains(v))
    };
    let missing: Vec<_> = observed
        .iter()
        .filter(|(g, r, v)| !granted(g, r, v))
        .collect();
    assert!(
        missing.is_empty(),
        "calls the RBAC contract does not grant: {missing:?}"
    );
    // No more than needed: every granted verb is used, except `update` on `*/finalizers`, which
    // is an authorization check (ownerReferences with blockOwnerDeletion), never a call of its own,
    // and `create` on what we write with server-side apply (an apply may create the object).
    let unused: Vec<_> = contract
        .iter()
        .flat_map(|((g, r), vs)| vs.iter().map(move |v| (g.clone(), r.clone(), v.clone())))
        .filter(|(g, r, v)| {
            // `patch` on events extends the series of an identical repeated Event, which this
            // scenario does not produce; tests/standin_kubectl.rs shows the patch.
            let exempt = (r.ends_with("/finalizers") && v == "update")
                || (g.is_empty() && (r == "secrets" || r == "configmaps") && v == "create")
                || (g == "events.k8s.io" && r == "events" && v == "patch");
            !exempt && !observed.contains(&(g.clone(), r.clone(), v.clone()))
        })
        .collect();
    assert!(
        unused.is_empty(),
        "granted but never used: {unused:?}\nobserved: {observed:?}"
    );
    cie.shutdown().await;
}

async fn apply_device(
    env: &Env,
    cie: &certrotor::sim::cie::CieSim,
    name: &str,
) -> kube::Api<certrotor::api::DeviceIdCredential> {
    let onboarding = cie.onboarding();
    env.put_secret(
        &format!("{name}-onboarding"),
        [
            ("tls.crt".to_string(), onboarding.cert_pem),
            ("tls.key".to_string(), onboarding.key_pem),
            ("apiKey".to_string(), onboarding.api_key),
        ]
        .into(),
    )
    .await;
    let mut device: certrotor::api::DeviceIdCredential = serde_saphyr::from_str(&format!(
        "apiVersion: certrotor.io/v1alpha1
kind: DeviceIdCredential
metadata: {{name: {name}, namespace: default}}
spec:
  endpoint: https://placeholder
  onboardingSecretRef: {{name: {name}-onboarding}}
  certName: {name}
  secretName: {name}-client
"
    ))
    .unwrap();
    device.spec.endpoint = cie.url();
    device.spec.ca_bundle = Some(cie.ca_pem());
    let didcs: kube::Api<certrotor::api::DeviceIdCredential> =
        kube::Api::namespaced(env.client.clone(), NS);
    didcs.create(&Default::default(), &device).await.unwrap();
    didcs
}

/// Waits until the credential is Ready after `n` recorded refreshes.
async fn wait_device_refreshes(
    didcs: &kube::Api<certrotor::api::DeviceIdCredential>,
    name: &str,
    n: usize,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let d = didcs.get(name).await.unwrap();
        let s = d.status.unwrap_or_default();
        if certrotor::api::is_true(&s.conditions, certrotor::api::READY)
            && s.attempts.len() >= n
            && s.serial_number.is_some()
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: not Ready after {n} refreshes: {:?}",
            s.conditions
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `--selector` splits one cluster's resources between deployments, each with its own Lease:
/// two operator processes with disjoint selectors over 200 resources, each reconciled by exactly
/// one of them (the one whose instance name is on all of its Events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disjoint_selectors_partition_the_resources() {
    let env = Env::new(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    env.standin.write_kubeconfig(&kubeconfig).unwrap();
    // A selector the API server refuses stops the operator at start-up with its answer.
    let refused = Command::new(env!("CARGO_BIN_EXE_certrotor"))
        .args([
            "run",
            "--selector",
            "shard in (a",
            "--leader-election=false",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--selector"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let shard_a = Operator::spawn_with(
        &kubeconfig,
        &[
            "--selector",
            "certrotor.io/shard=a",
            "--lease-name",
            "certrotor-a",
        ],
        "operator-a",
    );
    let shard_b = Operator::spawn_with(
        &kubeconfig,
        &[
            "--selector",
            "certrotor.io/shard=b",
            "--lease-name",
            "certrotor-b",
        ],
        "operator-b",
    );
    let names: Vec<(String, &str)> = (0..200)
        .map(|i| (format!("cert-{i:03}"), if i % 2 == 0 { "a" } else { "b" }))
        .collect();
    for (name, shard) in &names {
        let (chain, key) = env.issue(&[&format!("{name}.example.com")], 90);
        env.put_tls(&format!("{name}-tls"), &chain, &key).await;
        let yaml = with_url(&local_yaml(name, &format!("{name}-tls"), ""), &env).replace(
            &format!("metadata: {{name: {name}, namespace: {NS}}}"),
            &format!(
                "metadata: {{name: {name}, namespace: {NS}, labels: {{certrotor.io/shard: {shard}}}}}"
            ),
        );
        env.apply(&yaml).await;
    }
    for (name, _) in &names {
        env.wait_for(name, 120, "Ready=True", is_ready).await;
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client.clone(), NS);
    let events = events.list(&Default::default()).await.unwrap().items;
    for (name, shard) in &names {
        let reporters: std::collections::BTreeSet<String> = events
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str()))
            .filter_map(|e| e.reporting_instance.clone())
            .collect();
        assert_eq!(
            reporters,
            [format!("operator-{shard}")].into_iter().collect(),
            "{name} (shard {shard}) was reconciled by {reporters:?}"
        );
    }
    // One upload per certificate: neither operator touched the other's.
    assert_eq!(ours(&env).len(), 200);
    shard_a.stop();
    shard_b.stop();
    env.shutdown().await;
}
