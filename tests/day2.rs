//! The day-2 commands (`status`, `renew`, `pause`, `resume`, `inspect`, `completion`) as a user
//! types them: the real binary against the stand-in, with kubectl's connection flags, and as the
//! kubectl plugin through a real kubectl. Statuses are written as the operator would write them.

#[path = "common/kubectl.rs"]
mod kubectl;
use kubectl::kubectl_or_skip;

use std::path::{Path, PathBuf};
use std::process::Command;

use certrotor::api::{self, DeviceIdCredential, TenantCertificate};
use certrotor::pki::{self, KeyAlgorithm, ca::Ca};
use certrotor::sim::kube::StandIn;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_certrotor");

struct Cluster {
    standin: StandIn,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

/// Two contexts: `identity` (current, namespace identity) and `plain` (namespace default).
fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: standin
  cluster: {{server: {url}}}
contexts:
- name: identity
  context: {{cluster: standin, user: me, namespace: identity}}
- name: plain
  context: {{cluster: standin, user: me, namespace: default}}
current-context: identity
users:
- name: me
  user: {{}}
"
    )
}

impl Cluster {
    async fn new() -> Cluster {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let standin = StandIn::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let client = standin.client();
        for crd in api::crds() {
            Api::<CustomResourceDefinition>::all(client.clone())
                .create(&PostParams::default(), &crd)
                .await
                .unwrap();
        }
        for ns in ["identity", "deviceid"] {
            let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
            Api::<Namespace>::all(client.clone())
                .create(&PostParams::default(), &ns)
                .await
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_text(&standin)).unwrap();
        Cluster {
            standin,
            dir,
            kubeconfig,
        }
    }

    /// Runs the binary with `args` (blocking is fine: the stand-in runs on other threads).
    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env("KUBECONFIG", &self.kubeconfig);
        run_command(cmd).await
    }

    fn client(&self) -> kube::Client {
        self.standin.client()
    }
}

fn kubeconfig_text(s: &StandIn) -> String {
    kubeconfig(&s.url())
}

async fn run_command(mut cmd: Command) -> (i32, String, String) {
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("the binary runs"))
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> serde_json::Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-11-26T08:00:00Z", "observedGeneration": 1})
}

async fn tenant_certificate(c: &Cluster, name: &str, ready: bool) {
    let obj: TenantCertificate = serde_json::from_value(json!({
        "apiVersion": "certrotor.io/v1alpha1", "kind": "TenantCertificate",
        "metadata": {"name": name, "namespace": "identity"},
        "spec": {"tenant": {"url": "https://openam-acme.id.forgerock.io",
                            "credentialsSecretRef": {"name": "aic"}},
                 "secretRef": {"name": format!("{name}-tls")}}
    }))
    .unwrap();
    let api: Api<TenantCertificate> = Api::namespaced(c.client(), "identity");
    api.create(&PostParams::default(), &obj).await.unwrap();
    let (status, reason, message) = if ready {
        ("True", "Live", "certificate ccrt-second is active and live")
    } else {
        (
            "False",
            "WaitingForLive",
            "certificate ccrt-second is active; waiting for live",
        )
    };
    let patch = json!({"status": {
        "conditions": [condition("Ready", status, reason, message),
                       condition("Stalled", "False", reason, message)],
        "certificateId": "ccrt-second", "active": true, "live": ready,
        "notAfter": "2099-01-30T00:00:00Z", "renewalTime": "2098-12-31T00:00:00Z",
        "subject": "CN=login.example.com", "previousCertificateIds": ["ccrt-first"],
        "pending": {"certificateId": "ccrt-third", "reason": "SecretChanged",
                    "since": "2026-11-26T08:00:00Z"}
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn device_id_credential(c: &Cluster, name: &str, attempts: &[jiff::Timestamp]) {
    let obj: DeviceIdCredential = serde_json::from_value(json!({
        "apiVersion": "certrotor.io/v1alpha1", "kind": "DeviceIdCredential",
        "metadata": {"name": name, "namespace": "deviceid"},
        "spec": {"endpoint": "https://cie.example", "onboardingSecretRef": {"name": "onboarding"},
                 "certName": name, "secretName": format!("{name}-client")}
    }))
    .unwrap();
    let api: Api<DeviceIdCredential> = Api::namespaced(c.client(), "deviceid");
    api.create(&PostParams::default(), &obj).await.unwrap();
    let attempts: Vec<String> = attempts.iter().map(|t| t.to_string()).collect();
    let patch = json!({"status": {
        "conditions": [condition("Ready", "True", "Valid", "certificate (serial 0a) is valid")],
        "certName": name, "serialNumber": "0a", "notAfter": "2099-01-01T00:00:00Z",
        "tokenExpiry": "2099-01-01T00:00:00Z", "attempts": attempts
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

fn annotation(meta: &kube::api::ObjectMeta, key: &str) -> Option<String> {
    api::annotation(meta, key).map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_conditions_certificates_events_and_exits_by_readiness() {
    let c = Cluster::new().await;
    tenant_certificate(&c, "login", true).await;
    tenant_certificate(&c, "waiting", false).await;
    // Events as the operator records them: the newest names the current certificate.
    let recorder = certrotor::controller::events::EventRecorder::new(c.client(), "certrotor", None);
    let login = Api::<TenantCertificate>::namespaced(c.client(), "identity")
        .get("login")
        .await
        .unwrap();
    use kube::Resource as _;
    for note in [
        "certificate ccrt-first is active and live",
        "certificate ccrt-second is active and live",
    ] {
        recorder
            .publish(
                &login.object_ref(&()),
                certrotor::controller::events::EventType::Normal,
                "Ready",
                note,
            )
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The context's namespace (identity) is the default, as in kubectl.
    let (code, out, err) = c.run(&["status", "tcert", "login"]).await;
    assert_eq!(code, 0, "Ready exits 0: {out}{err}");
    for want in [
        "TenantCertificate identity/login",
        "Ready        True    Live",
        "current   ccrt-second",
        "2099-01-30T00:00:00Z (in ",
        "pending   ccrt-third",
        "SecretChanged since",
        "previous  ccrt-first",
        "Renewal:  2098-12-31T00:00:00Z",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    let events: Vec<&str> = out
        .lines()
        .skip_while(|l| *l != "Events:")
        .skip(1)
        .collect();
    assert_eq!(events.len(), 2, "{out}");
    assert!(
        events[1].ends_with("certificate ccrt-second is active and live"),
        "{out}"
    );

    let (code, out, _) = c
        .run(&["status", "tenantcertificate", "waiting", "-n", "identity"])
        .await;
    assert_eq!(code, 1, "not Ready exits 1: {out}");
    assert!(out.contains("Ready        False   WaitingForLive"), "{out}");

    // Errors: one line on stderr, exit 2.
    for (args, want) in [
        (
            vec!["status", "tcert", "missing"],
            "error: TenantCertificate identity/missing not found",
        ),
        (
            vec!["status", "widget", "x"],
            "error: invalid value 'widget' for '<KIND>'",
        ),
        (
            vec!["status", "tcert", "login", "--context", "nope"],
            "error: ",
        ),
        (
            vec!["status", "tcert", "login", "--context", "plain"],
            "error: TenantCertificate default/login not found",
        ),
    ] {
        let (code, out, err) = c.run(&args).await;
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.starts_with(want), "{args:?}: {err}");
    }
    let mut cmd = Command::new(BIN);
    cmd.args(["status", "tcert", "login"])
        .env("KUBECONFIG", c.dir.path().join("absent"));
    let (code, _, err) = run_command(cmd).await;
    assert_eq!(code, 2);
    assert!(err.starts_with("error: no kubeconfig"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_id_status_shows_the_budget_and_renew_respects_it() {
    let c = Cluster::new().await;
    let now = jiff::Timestamp::now();
    device_id_credential(&c, "fresh", &[]).await;
    device_id_credential(&c, "spent", &[now, now, now]).await;

    let (code, out, _) = c.run(&["status", "didc", "spent", "-n", "deviceid"]).await;
    assert_eq!(code, 0, "{out}");
    for want in [
        "Refresh budget (cert:refresh: 3 at once, then 1 per 60m):",
        "attempts recorded  3",
        "calls allowed now  0",
        "Token:    expires 2099-01-01T00:00:00Z",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    assert!(
        out.lines()
            .any(|l| l.contains("next allowed") && l.contains("(in ")),
        "{out}"
    );

    let didcs: Api<DeviceIdCredential> = Api::namespaced(c.client(), "deviceid");
    // The budget allows a call: renewed.
    let (code, out, _) = c.run(&["renew", "didc", "fresh", "-n", "deviceid"]).await;
    assert_eq!(code, 0, "{out}");
    let fresh = didcs.get("fresh").await.unwrap();
    assert!(annotation(&fresh.metadata, api::RENEW_ANNOTATION).is_some());
    // Spent: refused with the next allowed time, nothing written; --force writes it.
    let (code, out, _) = c.run(&["renew", "didc", "spent", "-n", "deviceid"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("allows the next cert:refresh at") && out.contains("--force"),
        "{out}"
    );
    let spent = didcs.get("spent").await.unwrap();
    assert_eq!(annotation(&spent.metadata, api::RENEW_ANNOTATION), None);
    let (code, _, _) = c
        .run(&["renew", "didc", "spent", "-n", "deviceid", "--force"])
        .await;
    assert_eq!(code, 0);
    let spent = didcs.get("spent").await.unwrap();
    assert!(annotation(&spent.metadata, api::RENEW_ANNOTATION).is_some());

    // No token expiry known: the status says why, for either setting of refreshToken.
    let no_expiry = json!({"status": {"tokenExpiry": null}});
    didcs
        .patch_status("fresh", &PatchParams::default(), &Patch::Merge(&no_expiry))
        .await
        .unwrap();
    for (refresh_token, want) in [
        (
            false,
            "Token:    not refreshed by certrotor (spec.refreshToken is false)",
        ),
        (
            true,
            "Token:    expiry unknown (refreshed every spec.tokenRefreshInterval",
        ),
    ] {
        let spec = json!({"spec": {"refreshToken": refresh_token}});
        didcs
            .patch("fresh", &PatchParams::default(), &Patch::Merge(&spec))
            .await
            .unwrap();
        let (_, out, _) = c.run(&["status", "didc", "fresh", "-n", "deviceid"]).await;
        assert!(out.contains(want), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_all_pause_and_resume_set_the_annotations() {
    let c = Cluster::new().await;
    tenant_certificate(&c, "a", true).await;
    tenant_certificate(&c, "b", true).await;
    device_id_credential(&c, "elsewhere", &[]).await;
    let tcerts: Api<TenantCertificate> = Api::namespaced(c.client(), "identity");

    let (code, out, _) = c.run(&["renew", "tcert", "--all"]).await;
    assert_eq!(code, 0, "{out}");
    let first = annotation(
        &tcerts.get("a").await.unwrap().metadata,
        api::RENEW_ANNOTATION,
    );
    assert!(first.is_some());
    assert_eq!(
        first,
        annotation(
            &tcerts.get("b").await.unwrap().metadata,
            api::RENEW_ANNOTATION
        )
    );
    // A fresh value each time: a second renew is a second request.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    c.run(&["renew", "tcert", "a"]).await;
    let second = annotation(
        &tcerts.get("a").await.unwrap().metadata,
        api::RENEW_ANNOTATION,
    );
    assert_ne!(first, second);
    // -A reaches every namespace.
    let (code, out, _) = c.run(&["renew", "didc", "--all", "-A"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("deviceid/elsewhere: renewal requested"),
        "{out}"
    );
    let (code, _, err) = c.run(&["renew", "tcert"]).await;
    assert_eq!(code, 2, "a name or --all: {err}");

    let (code, out, _) = c.run(&["pause", "tcert", "a"]).await;
    assert_eq!(code, 0, "{out}");
    let a = tcerts.get("a").await.unwrap();
    assert!(api::is_paused(&a.metadata));
    let (code, _, _) = c.run(&["resume", "tcert", "a"]).await;
    assert_eq!(code, 0);
    let a = tcerts.get("a").await.unwrap();
    assert_eq!(annotation(&a.metadata, api::PAUSED_ANNOTATION), None);
    let (code, _, err) = c.run(&["pause", "tcert", "nope"]).await;
    assert_eq!(
        (code, err.trim()),
        (2, "error: TenantCertificate identity/nope not found")
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_runs_the_operators_checks_on_files_and_secrets() {
    let c = Cluster::new().await;
    let ca = Ca::new("Inspect Root CA").unwrap();
    let now = jiff::Timestamp::now();
    let (chain, key) = ca
        .issue(
            "login.example.com",
            &["login.example.com"],
            now,
            now.checked_add(jiff::SignedDuration::from_hours(24 * 90))
                .unwrap(),
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
    let leaf = pki::parse_chain(&chain)
        .map(|_| {
            chain
                .split_inclusive("-----END CERTIFICATE-----\n")
                .next()
                .unwrap()
                .to_string()
        })
        .unwrap();
    let other_key = pki::generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let dir = c.dir.path();

    let good = write(dir, "good.pem", &format!("{chain}{key}"));
    let (code, out, _) = c.run(&["inspect", "file", good.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    for want in [
        "Chain: 2 certificate(s)",
        "[0] leaf",
        "subject  CN=login.example.com",
        "SANs     login.example.com",
        "issuer   CN=Inspect Root CA",
        "[1] CA",
        "Key:   matches the leaf",
        "Verdict: accepted by the TenantCertificate checks (keySource Local)",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    assert!(!out.contains("PRIVATE KEY"), "never prints the key: {out}");

    let upside_down = write(dir, "reversed.pem", &format!("{}{leaf}", ca.cert_pem()));
    let (code, out, _) = c
        .run(&["inspect", "file", upside_down.to_str().unwrap()])
        .await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Verdict: refused (keySource Tenant): LeafNotFirst"),
        "{out}"
    );

    let chain_only = write(dir, "chain.pem", &chain);
    let wrong_key = write(dir, "wrong.key", &other_key);
    let (code, out, _) = c
        .run(&[
            "inspect",
            "file",
            chain_only.to_str().unwrap(),
            "--key",
            wrong_key.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Verdict: refused (keySource Local): KeyMismatch"),
        "{out}"
    );

    let (code, _, err) = c
        .run(&["inspect", "file", dir.join("absent.pem").to_str().unwrap()])
        .await;
    assert_eq!(code, 2);
    assert!(err.starts_with("error: reading "), "{err}");

    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "login-tls", "namespace": "identity"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": chain, "tls.key": key}
    }))
    .unwrap();
    Api::<Secret>::namespaced(c.client(), "identity")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let (code, out, _) = c.run(&["inspect", "secret", "login-tls"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("Secret identity/login-tls"), "{out}");
    assert!(out.contains("Verdict: accepted"), "{out}");
    let (code, _, err) = c.run(&["inspect", "secret", "absent"]).await;
    assert_eq!(
        (code, err.trim()),
        (2, "error: Secret identity/absent not found")
    );
}

#[tokio::test]
async fn completion_scripts_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let mut cmd = Command::new(BIN);
        cmd.args(["completion", shell]);
        let (code, out, _) = run_command(cmd).await;
        assert_eq!(code, 0, "{shell}");
        for sub in ["status", "renew", "pause", "resume", "inspect"] {
            assert!(out.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let mut cmd = Command::new(BIN);
    cmd.args(["completion", "tcsh"]);
    let (code, _, err) = run_command(cmd).await;
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// `kubectl certrotor …`: kubectl finds `kubectl-certrotor` on PATH and runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_as_a_kubectl_plugin() {
    let Some(kubectl) = kubectl_or_skip("the plugin test") else {
        return;
    };
    let c = Cluster::new().await;
    tenant_certificate(&c, "login", true).await;
    let plugins = c.dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::os::unix::fs::symlink(BIN, plugins.join("kubectl-certrotor")).unwrap();
    let path = format!(
        "{}:{}",
        plugins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kubectl_run = |args: &[&str]| {
        let mut cmd = Command::new(&kubectl);
        cmd.args(args)
            .env("KUBECONFIG", &c.kubeconfig)
            .env("PATH", &path);
        run_command(cmd)
    };
    let (code, out, err) = kubectl_run(&["plugin", "list"]).await;
    assert!(out.contains("kubectl-certrotor"), "{code} {out}{err}");
    let (code, out, err) = kubectl_run(&["certrotor", "status", "tcert", "login"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("TenantCertificate identity/login"), "{out}");
    let (code, out, _) = kubectl_run(&["certrotor", "--help"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("Usage: kubectl certrotor"), "{out}");
    let (code, _, err) = kubectl_run(&["certrotor", "status", "tcert", "absent"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("error: TenantCertificate identity/absent not found"),
        "{err}"
    );
}

/// `status --from-tenant` asks the tenant (one read-only list, the resource's credentials) about
/// every id in status: the current one, and pending and previous ones status says nothing of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_from_the_tenant_shows_every_id_as_the_tenant_sees_it() {
    use certrotor::aic::{AicClient, ClientOptions, Credentials};
    use certrotor::sim::aic::{AicSim, AicSimConfig};
    let c = Cluster::new().await;
    let aic = AicSim::start(
        "127.0.0.1:0".parse().unwrap(),
        AicSimConfig {
            support_certificate: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let creds = aic.credentials_secret_data();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "aic", "namespace": "identity"},
        "stringData": creds
    }))
    .unwrap();
    Api::<Secret>::namespaced(c.client(), "identity")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let data = creds
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    let client = AicClient::new(
        &aic.url(),
        Credentials::from_secret_data(&data).unwrap(),
        None,
        ClientOptions::default(),
    )
    .unwrap();
    let ca = Ca::new("Status CA").unwrap();
    let now = jiff::Timestamp::now();
    let upload = |days: i64| {
        ca.issue(
            "login.example.com",
            &["login.example.com"],
            now,
            now.checked_add(jiff::SignedDuration::from_hours(24 * days))
                .unwrap(),
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap()
    };
    let (chain1, key1) = upload(90);
    let (chain2, key2) = upload(60);
    let current = client
        .create_certificate(&chain1, &key1, true)
        .await
        .unwrap();
    let previous = client
        .create_certificate(&chain2, &key2, false)
        .await
        .unwrap();

    let obj: TenantCertificate = serde_json::from_value(json!({
        "apiVersion": "certrotor.io/v1alpha1", "kind": "TenantCertificate",
        "metadata": {"name": "login", "namespace": "identity"},
        "spec": {"tenant": {"url": aic.url(), "credentialsSecretRef": {"name": "aic"}},
                 "secretRef": {"name": "login-tls"}}
    }))
    .unwrap();
    let api: Api<TenantCertificate> = Api::namespaced(c.client(), "identity");
    api.create(&PostParams::default(), &obj).await.unwrap();
    let patch = json!({"status": {
        "conditions": [condition("Ready", "True", "Live", "ok")],
        "certificateId": current.id, "active": true, "live": true,
        "previousCertificateIds": [previous.id, "ccrt-gone"]
    }});
    api.patch_status("login", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let calls_before = aic.calls().len();
    let (code, out, err) = c.run(&["status", "tcert", "login", "--from-tenant"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let line = |id: &str| {
        out.lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("no line for {id} in\n{out}"))
            .to_string()
    };
    let prev = line(&previous.id);
    assert!(
        prev.contains("false"),
        "the previous one is inactive: {prev}"
    );
    assert!(prev.contains(" (in "), "with its notAfter: {prev}");
    assert!(line("ccrt-gone").contains("(not in the tenant)"), "{out}");
    assert!(out.contains("as the tenant reports them now"), "{out}");
    let calls: Vec<_> = aic.calls()[calls_before..]
        .iter()
        .map(|c| c.route.clone())
        .collect();
    assert_eq!(
        calls,
        [
            "POST /am/oauth2/access_token",
            "GET /environment/certificates"
        ],
        "one token and one read-only list"
    );
    // Without the flag: no tenant call at all.
    let before = aic.calls().len();
    let (code, out, _) = c.run(&["status", "tcert", "login"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("--from-tenant asks the tenant"), "{out}");
    assert_eq!(aic.calls().len(), before);
}
