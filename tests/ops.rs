//! Operations: leader election between two real `certrotor run` processes, the admin server's
//! `/metrics` (exactly the documented names), `/readyz` following the cache sync, `--namespaces`,
//! and SIGTERM — against the Kubernetes API stand-in and the AIC simulator.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};

use certrotor::api::{self, DeviceIdCredential, TenantCertificate};
use certrotor::ops::{self, Operator};
use certrotor::sim::kube::StandIn;

const LEASE: &str = "certrotor-leader";
const LEASE_SECONDS: u64 = 3;

/// A `certrotor run` process with its admin address (read from its JSON log).
struct Process {
    child: Child,
    admin: SocketAddr,
}

impl Process {
    fn spawn(kubeconfig: &std::path::Path, pod: &str) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_certrotor"))
            .args([
                "--log-format",
                "json",
                "run",
                "--live-poll-min",
                "100ms",
                "--live-poll-max",
                "500ms",
                "--resync",
                "10m",
                "--metrics-addr",
                "127.0.0.1:0",
                "--lease-duration",
                &format!("{LEASE_SECONDS}s"),
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", pod)
            .env("POD_NAMESPACE", NS)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn certrotor run");
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        // Keeps draining the log so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(addr) = v["fields"]["addr"].as_str()
                {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(20)) else {
            panic!(
                "no admin address in the log of {}; exited: {:?}",
                env!("CARGO_BIN_EXE_certrotor"),
                child.try_wait()
            );
        };
        Process {
            child,
            admin: addr.parse().unwrap(),
        }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends `sig` (`-STOP`, `-CONT`, `-TERM`, …) with kill(1).
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// SIGTERM; the exit status once it has stopped.
    fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

async fn status_of(admin: SocketAddr, path: &str) -> u16 {
    match reqwest::get(format!("http://{admin}{path}")).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn is_200(admin: SocketAddr, path: &str) -> bool {
    status_of(admin, path).await == 200
}

async fn scrape(admin: SocketAddr) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn wait_until<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `who` holds the lease.
async fn wait_for_leader(client: &kube::Client, who: &str, secs: u64) {
    wait_until(secs, &format!("{who} leads"), || async {
        holder(client).await.as_deref() == Some(who)
    })
    .await;
}

async fn holder(client: &kube::Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    leases
        .get_opt(LEASE)
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// The sum of a metric's samples (0 when it has none).
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_a_standby_takes_over_and_sigterm_exits_0() {
    let env = Env::new(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    env.standin.write_kubeconfig(&kubeconfig).unwrap();

    let a = Process::spawn(&kubeconfig, "op-a");
    wait_for_leader(&env.client, "op-a", 20).await;
    wait_until(20, "op-a ready", || is_200(a.admin, "/readyz")).await;
    let b = Process::spawn(&kubeconfig, "op-b");
    // A standby is ready as soon as it watches the lease.
    wait_until(20, "op-b ready", || is_200(b.admin, "/readyz")).await;
    assert_eq!(status_of(b.admin, "/healthz").await, 200);

    let (chain, key) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain, &key).await;
    env.apply(&with_url(&local_yaml("login", "login-tls", ""), &env))
        .await;
    let first = env.wait_ready("login").await.status.unwrap();

    // The gauges come from the leader's cache, which sees the Ready status a moment after we do.
    let expiry = r#"certrotor_certificate_expiry_timestamp_seconds{kind="TenantCertificate",namespace="default",name="login"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !scrape(a.admin).await.contains(expiry) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ma, mb) = (scrape(a.admin).await, scrape(b.admin).await);
    assert!(total(&ma, "certrotor_tenant_calls_total") > 0.0, "{ma}");
    assert!(total(&ma, "certrotor_reconcile_total") > 0.0, "{ma}");
    assert_eq!(total(&mb, "certrotor_tenant_calls_total"), 0.0, "{mb}");
    assert_eq!(total(&mb, "certrotor_reconcile_total"), 0.0, "{mb}");
    // A standby has no caches, so no per-object gauges.
    assert_eq!(total(&mb, "certrotor_resource_condition"), 0.0, "{mb}");
    assert!(ma.contains(r#"certrotor_certificate_expiry_timestamp_seconds{kind="TenantCertificate",namespace="default",name="login"}"#));
    assert_eq!(holder(&env.client).await.as_deref(), Some("op-a"));

    // The leader dies without releasing the lease: the standby takes over once it expires.
    a.kill9();
    let killed = Instant::now();
    wait_for_leader(&env.client, "op-b", LEASE_SECONDS + 5).await;
    let takeover = killed.elapsed();
    // The lease expires at most LEASE_SECONDS after the last renewal; kube-lease-manager then
    // waits up to 1 s at random before taking it (to avoid colliding with other standbys).
    assert!(
        takeover <= Duration::from_secs(LEASE_SECONDS) + Duration::from_millis(1500),
        "took over after {takeover:?}"
    );

    // The new leader reconciles: a renewal through the annotation.
    let patch = serde_json::json!({"metadata": {"annotations": {api::RENEW_ANNOTATION: "ops"}}});
    env.tcerts()
        .patch("login", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    env.wait_for("login", 30, "renewed by op-b", |t| {
        t.status
            .as_ref()
            .is_some_and(|s| s.certificate_id != first.certificate_id)
            && is_ready(t)
    })
    .await;
    let mb = scrape(b.admin).await;
    assert!(total(&mb, "certrotor_tenant_calls_total") > 0.0, "{mb}");
    assert_eq!(status_of(b.admin, "/readyz").await, 200);

    // SIGTERM: graceful stop, the lease released for the next replica, exit 0.
    let status = b.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(holder(&env.client).await, None);
}

/// The names `docs/metrics.md` lists in its table.
fn documented_names() -> BTreeSet<String> {
    let doc = include_str!("../docs/metrics.md");
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(String::from)
        .collect()
}

/// The names a scrape exposes with the `certrotor_` prefix, as users query them (counters with
/// `_total`).
fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split(' ');
            let (name, type_) = (parts.next()?, parts.next()?);
            Some(if type_ == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            })
        })
        .filter(|n| n.starts_with("certrotor_"))
        .collect()
}

/// An operator in this process without leader election, its admin server on port 0.
async fn start_in_process(
    client: kube::Client,
    namespaces: Vec<String>,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let operator = Operator {
        options: fast_options(),
        namespaces,
        ..Default::default()
    };
    start_operator(client, operator).await
}

async fn start_operator(
    client: kube::Client,
    operator: Operator,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        ops::run(client, operator, listener, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (admin, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exactly_the_documented_ones() {
    let env = Env::new(sim_config()).await;
    let (admin, _stop) = start_in_process(env.client.clone(), vec![]).await;
    let (chain, key) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain, &key).await;
    env.apply(&with_url(&local_yaml("login", "login-tls", ""), &env))
        .await;
    let login = env.wait_ready("login").await.status.unwrap();
    // Tenant mode has a planned renewal: CSR in the tenant, chain signed by "the CA".
    env.apply(&with_url(
        "apiVersion: certrotor.io/v1alpha1
kind: TenantCertificate
metadata: {name: idp, namespace: default}
spec:
  tenant: {url: URL, credentialsSecretRef: {name: aic-creds}}
  keySource: Tenant
  secretRef: {name: idp-tls}
  csr: {commonName: idp.example.com, subjectAlternativeNames: [idp.example.com], algorithm: ecdsa}
",
        &env,
    ))
    .await;
    let csr = env
        .wait_for("idp", 20, "CSR published", |t| {
            t.status.as_ref().is_some_and(|s| s.csr.is_some())
        })
        .await
        .status
        .unwrap()
        .csr
        .unwrap();
    let now = jiff::Timestamp::now();
    let chain = env
        .ca
        .sign_csr(
            &csr.request,
            now - jiff::SignedDuration::from_hours(1),
            now + jiff::SignedDuration::from_hours(24 * 90),
        )
        .unwrap();
    env.put_secret("idp-tls", [("tls.crt".to_string(), chain)].into())
        .await;
    let idp = env.wait_ready("idp").await.status.unwrap();
    let seconds = |t: &Option<String>| {
        t.as_deref()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second()
    };
    // A Device-ID credential whose onboarding Secret is missing: it stalls without any call,
    // and still has its budget reported.
    let didc: DeviceIdCredential = serde_saphyr::from_str(&format!(
        "apiVersion: certrotor.io/v1alpha1
kind: DeviceIdCredential
metadata: {{name: device, namespace: {NS}}}
spec:
  endpoint: https://127.0.0.1:1
  onboardingSecretRef: {{name: missing}}
  certName: device
  subject: {{commonName: device}}
  secretName: device-client
"
    ))
    .unwrap();
    Api::<DeviceIdCredential>::namespaced(env.client.clone(), NS)
        .create(&PostParams::default(), &didc)
        .await
        .unwrap();

    let documented = documented_names();
    assert_eq!(documented.len(), ops::metrics::names::ALL.len());
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = scrape(admin).await;
        if text.contains("certrotor_deviceid_refresh_budget_remaining{") {
            break text;
        }
        assert!(Instant::now() < deadline, "no budget in /metrics:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(exposed_names(&text), documented, "{text}");
    for name in ops::metrics::names::ALL {
        assert!(documented.contains(*name), "{name} is not documented");
    }
    let sample = |s: &str| assert!(text.contains(s), "missing {s} in\n{text}");
    sample(&format!(
        r#"certrotor_certificate_expiry_timestamp_seconds{{kind="TenantCertificate",namespace="default",name="login"}} {}"#,
        seconds(&login.not_after)
    ));
    sample(&format!(
        r#"certrotor_certificate_renewal_timestamp_seconds{{kind="TenantCertificate",namespace="default",name="idp"}} {}"#,
        seconds(&idp.renewal_time)
    ));
    sample(
        r#"certrotor_resource_condition{kind="TenantCertificate",namespace="default",name="login",condition="Ready"} 1"#,
    );
    sample(
        r#"certrotor_resource_condition{kind="DeviceIdCredential",namespace="default",name="device",condition="Ready"} 0"#,
    );
    sample(r#"certrotor_deviceid_refresh_budget_remaining{namespace="default",name="device"} 3"#);
    sample(r#"certrotor_reconcile_total{kind="TenantCertificate",outcome="success"}"#);
    sample(r#"certrotor_reconcile_duration_seconds_count{kind="TenantCertificate"}"#);
    sample(
        r#"certrotor_tenant_calls_total{vendor="aic",operation="create_certificate",outcome="ok"} 1"#,
    );
    sample(r#"certrotor_tenant_call_duration_seconds_count{vendor="aic",operation="token"}"#);

    // A deleted object drops out of the next scrape.
    env.delete("login").await;
    env.wait_gone("login", 30).await;
    wait_until(10, "login gone from /metrics", || async {
        !scrape(admin).await.contains(r#"name="login""#)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_ready_once_the_caches_have_synced() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // No CRDs yet: the watches fail, so the caches cannot sync.
    let standin = StandIn::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = standin.client();
    let (admin, _stop) = start_in_process(client.clone(), vec![]).await;
    wait_until(10, "healthz", || is_200(admin, "/healthz")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status_of(admin, "/readyz").await, 503);
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in api::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    wait_until(30, "readyz 200 after the CRDs exist", || {
        is_200(admin, "/readyz")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_limit_what_is_watched() {
    let env = Env::new(sim_config()).await;
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    for ns in ["team-a", "team-b"] {
        let obj = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &obj)
            .await
            .unwrap();
    }
    let (admin, _stop) =
        start_in_process(env.client.clone(), vec!["team-a".into(), "team-b".into()]).await;

    // The same resource in a watched namespace and in `default` (not watched).
    let (chain, key) = env.issue(&["login.example.com"], 90);
    let secret = |name: &str, ns: &str, data: &[(&str, &str)]| k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    };
    let creds: Vec<(String, String)> = env.aic.credentials_secret_data().into_iter().collect();
    let creds: Vec<(&str, &str)> = creds
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (name, data) in [
        ("aic-creds", creds.clone()),
        (
            "login-tls",
            vec![("tls.crt", chain.as_str()), ("tls.key", key.as_str())],
        ),
    ] {
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(env.client.clone(), "team-a")
            .patch(
                name,
                &PatchParams::apply("test"),
                &Patch::Apply(secret(name, "team-a", &data)),
            )
            .await
            .unwrap();
    }
    env.put_tls("login-tls", &chain, &key).await;
    let yaml = with_url(&local_yaml("login", "login-tls", ""), &env);
    env.apply(&yaml).await;
    let mut team_a: TenantCertificate =
        serde_saphyr::from_str(&yaml.replace("namespace: default", "namespace: team-a")).unwrap();
    team_a.metadata.namespace = Some("team-a".into());
    let team_a_api: Api<TenantCertificate> = Api::namespaced(env.client.clone(), "team-a");
    team_a_api
        .create(&PostParams::default(), &team_a)
        .await
        .unwrap();

    wait_until(30, "team-a/login Ready", || async {
        team_a_api.get("login").await.is_ok_and(|t| is_ready(&t))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        env.get("login").await.status.is_none(),
        "default/login must not be reconciled"
    );
    let text = scrape(admin).await;
    assert!(
        text.contains(r#"namespace="team-a",name="login""#),
        "{text}"
    );
    assert!(!text.contains(r#"namespace="default""#), "{text}");
}

/// Sets the Lease's holder as another replica would when it takes the lease over.
async fn set_holder(client: &kube::Client, holder: Option<&str>) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
    let patch = serde_json::json!({"spec": {
        "holderIdentity": holder,
        "renewTime": holder.map(|_| now),
        "leaseDurationSeconds": holder.map(|_| 60),
    }});
    leases
        .patch(LEASE, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_the_lease_stops_reconciling_until_it_wins_it_back() {
    let env = Env::new(sim_config()).await;
    let operator = Operator {
        options: fast_options(),
        leader: Some(ops::leader::LeaderConfig {
            lease_name: LEASE.into(),
            lease_namespace: NS.into(),
            identity: "op-a".into(),
            lease_duration: Duration::from_secs(LEASE_SECONDS),
        }),
        ..Default::default()
    };
    let (admin, stop) = start_operator(env.client.clone(), operator).await;
    let (chain, key) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain, &key).await;
    env.apply(&with_url(&local_yaml("login", "login-tls", ""), &env))
        .await;
    env.wait_ready("login").await;
    assert_eq!(holder(&env.client).await.as_deref(), Some("op-a"));
    let gauge = r#"certrotor_resource_condition{kind="TenantCertificate",namespace="default",name="login",condition="Ready"} 1"#;
    assert!(scrape(admin).await.contains(gauge));

    // Another replica takes the lease: at its next renewal op-a sees that, stops its
    // controllers (their caches go, and with them the per-object gauges) and stands by.
    set_holder(&env.client, Some("intruder")).await;
    wait_until(LEASE_SECONDS + 3, "op-a stands by", || async {
        !scrape(admin).await.contains(gauge)
    })
    .await;
    assert!(is_200(admin, "/readyz").await, "a standby is ready");
    let calls = env.tenant_calls().len();
    let patch =
        serde_json::json!({"metadata": {"annotations": {api::RENEW_ANNOTATION: "while-standby"}}});
    env.tcerts()
        .patch("login", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        env.tenant_calls().len(),
        calls,
        "a standby must not call the tenant"
    );

    // The intruder lets go: op-a takes the lease back and acts on what it missed.
    set_holder(&env.client, None).await;
    wait_for_leader(&env.client, "op-a", LEASE_SECONDS + 3).await;
    env.wait_for("login", 30, "renewed after winning the lease back", |t| {
        t.status
            .as_ref()
            .and_then(|s| s.last_renew_request.as_deref())
            == Some("while-standby")
            && is_ready(t)
    })
    .await;
    assert!(env.tenant_calls().len() > calls);
    let _ = stop.send(());
}

/// A frozen leader (SIGSTOP: a long GC pause, a stalled node) wakes up after a standby took
/// over and rotated a certificate. Whatever its stale caches and queued reconciles still hold,
/// it must not upload the rotation again, touch the new certificate, or take the lease back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_that_wakes_up_after_a_takeover_changes_nothing() {
    let env = Env::new(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    env.standin.write_kubeconfig(&kubeconfig).unwrap();
    let uploads = |env: &Env| {
        env.tenant_calls()
            .iter()
            .filter(|c| c.as_str() == "POST /environment/certificates")
            .count()
    };

    let a = Process::spawn(&kubeconfig, "op-a");
    wait_for_leader(&env.client, "op-a", 20).await;
    let b = Process::spawn(&kubeconfig, "op-b");
    wait_until(20, "op-b ready", || is_200(b.admin, "/readyz")).await;
    let (chain, key) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain, &key).await;
    env.apply(&with_url(
        &local_yaml("login", "login-tls", "  deletionPolicy: Delete\n"),
        &env,
    ))
    .await;
    let first = env.wait_ready("login").await.status.unwrap();
    assert_eq!(uploads(&env), 1);

    // Frozen: op-b takes over once the lease expires, and rotates to a new Secret.
    a.signal("-STOP");
    wait_for_leader(&env.client, "op-b", LEASE_SECONDS + 5).await;
    let (chain2, key2) = env.issue(&["login.example.com"], 91);
    env.put_tls("login-tls", &chain2, &key2).await;
    let second = env
        .wait_for("login", 30, "rotated by op-b", |t| {
            t.status
                .as_ref()
                .is_some_and(|s| s.certificate_id != first.certificate_id && s.pending.is_none())
                && is_ready(t)
        })
        .await
        .status
        .unwrap();
    assert_eq!(uploads(&env), 2);
    let calls = env.tenant_calls().len();

    // op-a wakes with everything it had queued; give it time to act on it.
    a.signal("-CONT");
    tokio::time::sleep(Duration::from_secs(LEASE_SECONDS + 2)).await;
    assert_eq!(uploads(&env), 2, "the rotation was not uploaded again");
    let after = env.get("login").await;
    let status = after.status.clone().unwrap();
    assert_eq!(status.certificate_id, second.certificate_id);
    assert!(is_ready(&after));
    let live = env
        .aic
        .certificates()
        .into_iter()
        .find(|c| Some(&c.id) == second.certificate_id.as_ref())
        .unwrap();
    assert!(live.active && live.live && !live.deleted);
    assert_eq!(holder(&env.client).await.as_deref(), Some("op-b"));
    let late: Vec<String> = env.tenant_calls()[calls..].to_vec();
    assert!(
        late.iter()
            .all(|c| c.starts_with("GET ") || c.contains("access_token")),
        "op-a (or anyone) changed the tenant after waking: {late:?}"
    );
    a.kill9();
    b.kill9();
}
