//! DeviceIdCredential scenarios: the real controller against the Kubernetes API stand-in and the
//! CIE simulator, over loopback. Each test has its own simulator, hence its own budget (3
//! refreshes, then one per hour): a test can observe at most three refreshes in real time.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::oneshot;

use certrotor::api::{self, DeviceIdCredential};
use certrotor::cie::CieClient;
use certrotor::controller::Options;
use certrotor::sim::cie::{CieSim, CieSimConfig, Operation};
use certrotor::sim::kube::StandIn;

const NS: &str = "default";

struct Env {
    standin: StandIn,
    client: Client,
    sim: CieSim,
    stop: Option<oneshot::Sender<()>>,
    operator: Option<tokio::task::JoinHandle<()>>,
    /// A second operator that also believes it leads (a frozen old leader, a second cluster).
    second: Option<tokio::task::JoinHandle<()>>,
}

impl Env {
    async fn new(config: CieSimConfig) -> Env {
        Self::new_with(config, Default::default()).await
    }

    async fn new_with(config: CieSimConfig, options: certrotor::sim::kube::Options) -> Env {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let standin = StandIn::start_with("127.0.0.1:0".parse().unwrap(), options)
            .await
            .unwrap();
        let client = standin.client();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in api::crds() {
            crds.create(&PostParams::default(), &crd).await.unwrap();
        }
        let sim = CieSim::start("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        let env = Env {
            standin,
            client,
            sim,
            stop: None,
            operator: None,
            second: None,
        };
        let onboarding = env.sim.onboarding();
        env.put_secret(
            "onboarding",
            &onboarding.cert_pem,
            &onboarding.key_pem,
            &onboarding.api_key,
        )
        .await;
        env
    }

    fn start_operator(&mut self) {
        let (tx, rx) = oneshot::channel::<()>();
        let client = self.client.clone();
        self.operator = Some(tokio::spawn(async move {
            certrotor::controller::run(client, Options::default(), None, async move {
                let _ = rx.await;
            })
            .await;
        }));
        self.stop = Some(tx);
    }

    fn start_second_operator(&mut self) {
        let client = self.client.clone();
        self.second = Some(tokio::spawn(async move {
            certrotor::controller::run(client, Options::default(), None, std::future::pending())
                .await;
        }));
    }

    /// Stops the operator abruptly, as a crash would.
    async fn kill_operator(&mut self) {
        if let Some(handle) = self.operator.take() {
            handle.abort();
            let _ = handle.await;
        }
        self.stop = None;
    }

    async fn shutdown(mut self) {
        if let Some(second) = self.second.take() {
            second.abort();
            let _ = second.await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.operator.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
        }
        self.sim.shutdown().await;
    }

    fn didcs(&self) -> Api<DeviceIdCredential> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn put_secret(&self, name: &str, crt: &str, key: &str, api_key: &str) {
        let data: BTreeMap<String, String> = [
            ("tls.crt".to_string(), crt.to_string()),
            ("tls.key".to_string(), key.to_string()),
            ("apiKey".to_string(), api_key.to_string()),
        ]
        .into();
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            string_data: Some(data),
            ..Default::default()
        };
        self.secrets()
            .patch(
                name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&secret),
            )
            .await
            .unwrap();
    }

    async fn apply(&self, name: &str, extra: &str) -> DeviceIdCredential {
        self.apply_with(name, "onboarding", extra).await
    }

    async fn apply_with(&self, name: &str, onboarding: &str, extra: &str) -> DeviceIdCredential {
        let obj = self.manifest(name, onboarding, extra);
        self.didcs()
            .create(&PostParams::default(), &obj)
            .await
            .unwrap()
    }

    fn manifest(&self, name: &str, onboarding: &str, extra: &str) -> DeviceIdCredential {
        let ca = self.sim.ca_pem().replace('\n', "\\n");
        let yaml = format!(
            "apiVersion: certrotor.io/v1alpha1
kind: DeviceIdCredential
metadata: {{name: {name}, namespace: {NS}}}
spec:
  endpoint: {url}
  caBundle: \"{ca}\"
  onboardingSecretRef: {{name: {onboarding}}}
  certName: {name}
  subject: {{commonName: {name}, organization: Acme Inc}}
  secretName: {name}-client
{extra}",
            url = self.sim.url()
        );
        serde_saphyr::from_str(&yaml).unwrap()
    }

    async fn annotate(&self, name: &str, key: &str, value: &str) {
        let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
        self.didcs()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    async fn wait_for(
        &self,
        name: &str,
        secs: u64,
        what: &str,
        pred: impl Fn(&DeviceIdCredential) -> bool,
    ) -> DeviceIdCredential {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(Some(d)) = self.didcs().get_opt(name).await {
                if pred(&d) {
                    return d;
                }
                if tokio::time::Instant::now() > deadline {
                    panic!(
                        "timed out waiting for {name}: {what}; status: {}",
                        serde_json::to_string_pretty(&d.status).unwrap()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The output Secret's (tls.crt, tls.key, apiKey).
    async fn output(&self, name: &str) -> Option<(String, String, String)> {
        let secret = self.secrets().get_opt(name).await.unwrap()?;
        let data = secret.data.unwrap_or_default();
        let get = |k: &str| {
            data.get(k)
                .map(|v| String::from_utf8(v.0.clone()).unwrap())
                .unwrap_or_default()
        };
        Some((get("tls.crt"), get("tls.key"), get("apiKey")))
    }

    fn cert_refreshes(&self) -> Vec<(u16, bool)> {
        self.sim
            .calls()
            .into_iter()
            .filter(|c| c.operation == Operation::CertRefresh)
            .map(|c| (c.status, c.response_dropped))
            .collect()
    }

    /// `token:refresh` calls that reached the vendor.
    fn token_refreshes(&self) -> usize {
        self.sim
            .calls()
            .iter()
            .filter(|c| c.operation == Operation::TokenRefresh)
            .count()
    }

    async fn events(&self, name: &str) -> Vec<(String, String, String)> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), NS);
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The events about `name`, once one matches `pred` (they follow the status write).
    async fn wait_event(
        &self,
        name: &str,
        pred: impl Fn(&(String, String, String)) -> bool,
    ) -> Vec<(String, String, String)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.events(name).await;
            if events.iter().any(&pred) {
                return events;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no such event for {name}: {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits a little and checks that no further call reached the simulator.
    async fn assert_quiet(&self, secs: u64) {
        let before = self.sim.calls().len();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        assert_eq!(self.sim.calls().len(), before, "unexpected vendor calls");
    }
}

fn condition(d: &DeviceIdCredential, type_: &str) -> Option<(String, String, String)> {
    let status = d.status.as_ref()?;
    api::condition(&status.conditions, type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn is_ready(d: &DeviceIdCredential) -> bool {
    condition(d, api::READY).is_some_and(|(s, _, _)| s == "True")
}

fn reason(d: &DeviceIdCredential) -> String {
    condition(d, api::READY).map(|c| c.1).unwrap_or_default()
}

fn stalled(d: &DeviceIdCredential) -> Option<String> {
    condition(d, api::STALLED)
        .filter(|(s, _, _)| s == "True")
        .map(|(_, r, _)| r)
}

fn status(d: &DeviceIdCredential) -> api::DeviceIdCredentialStatus {
    d.status.clone().unwrap_or_default()
}

fn next_attempt(d: &DeviceIdCredential) -> jiff::Timestamp {
    status(d).next_attempt_time.unwrap().parse().unwrap()
}

fn report(what: &str, env: &Env, refreshes: usize) {
    let calls = env.cert_refreshes().len();
    println!(
        "{what}: {calls} cert:refresh calls for {refreshes} refresh(es) ({:.2} per refresh), {} answered 429",
        calls as f64 / refreshes.max(1) as f64,
        env.sim.count_429()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_refresh_uses_onboarding_and_publishes_the_certificate() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.start_operator();
    env.apply("acme", "").await;
    let d = env.wait_for("acme", 30, "Ready", is_ready).await;
    let s = status(&d);
    let (crt, key, api_key) = env.output("acme-client").await.expect("output Secret");
    assert!(
        env.sim.is_valid(&crt),
        "the vendor accepts the published certificate"
    );
    certrotor::pki::check_key_matches(&crt, &key).unwrap();
    assert_eq!(
        api_key,
        env.sim.onboarding().api_key,
        "apiKey in use copied"
    );
    assert_eq!(
        s.published_fingerprint.as_deref(),
        Some(certrotor::pki::fingerprint_of_leaf(&crt).unwrap().as_str())
    );
    assert_eq!(s.attempts.len(), 1);
    assert_eq!(s.unconfirmed_refresh, None);
    assert_eq!(s.deleted_cert_name.as_deref(), Some(""));
    assert!(s.not_after.is_some() && s.renewal_time.is_some() && s.serial_number.is_some());
    let calls = env.sim.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].client_cert_name.as_deref(), Some("onboarding"));
    // Output Secret: managed-by label, no owner; the pending Secret is gone.
    let out = env.secrets().get("acme-client").await.unwrap();
    assert_eq!(out.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(
        out.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("certrotor")
    );
    assert!(out.owner_references().is_empty());
    assert!(
        env.secrets()
            .get_opt("acme-client-pending")
            .await
            .unwrap()
            .is_none()
    );
    env.wait_event("acme", |(t, r, n)| {
        t == "Normal" && r == "Refreshed" && n.contains("evicted nothing")
    })
    .await;
    // Nothing further is due: no more calls, and a reconcile that finds nothing to do leaves
    // status exactly as it was.
    env.assert_quiet(2).await;
    let before = env.didcs().get("acme").await.unwrap().status;
    env.annotate("acme", "example.com/touch", "1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.didcs().get("acme").await.unwrap().status, before);
    report("first refresh", &env, 1);
    assert_eq!(env.sim.count_429(), 0);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_refresh_authenticates_with_the_published_certificate() {
    let mut env = Env::new(CieSimConfig {
        cert_validity: Duration::from_secs(12),
        ..Default::default()
    })
    .await;
    env.start_operator();
    // Refresh 6 s before notAfter: about 6 s after each issue.
    env.apply("acme", "  renewBefore: 6s\n").await;
    let first = env.wait_for("acme", 20, "Ready", is_ready).await;
    let first_fp = status(&first).published_fingerprint.unwrap();
    let d = env
        .wait_for("acme", 30, "refreshed on schedule", |d| {
            status(d)
                .published_fingerprint
                .is_some_and(|f| f != first_fp)
                && is_ready(d)
        })
        .await;
    let (crt, _, _) = env.output("acme-client").await.unwrap();
    assert!(env.sim.is_valid(&crt));
    let calls = env.sim.calls();
    assert_eq!(calls[0].client_cert_name.as_deref(), Some("onboarding"));
    assert_ne!(
        calls[1].client_cert_name.as_deref(),
        Some("onboarding"),
        "{calls:?}"
    );
    // The second refresh evicted the onboarding certificate, the one before the published one.
    assert_eq!(status(&d).deleted_cert_name.as_deref(), Some("onboarding"));
    assert_eq!(env.sim.count_429(), 0);
    // Events follow the status write (repeats are folded into one Event series by kube's
    // Recorder, so the second refresh does not add a second object).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = env.wait_event("acme", |(_, r, _)| r == "Refreshed").await;
    assert!(
        events.iter().all(|(_, r, _)| r != "Adopted"),
        "our own refresh taken for an adoption: {events:?}"
    );
    report("scheduled refresh", &env, 2);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_response_before_anything_is_published_recovers_within_the_budget() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.sim.knobs().set_drop_next_response(1);
    env.start_operator();
    env.apply("acme", "").await;
    // No certificate published yet: nothing to protect, so the call is made again once the
    // budget and the pause after a failure (30 s) allow.
    let d = env
        .wait_for("acme", 60, "Ready after a lost response", is_ready)
        .await;
    let refreshes = env.cert_refreshes();
    assert_eq!(refreshes.len(), 2, "{refreshes:?}");
    assert!(refreshes[0].1, "first response dropped");
    let (crt, _, _) = env.output("acme-client").await.unwrap();
    assert!(env.sim.is_valid(&crt));
    assert_eq!(status(&d).unconfirmed_refresh, None);
    assert_eq!(status(&d).attempts.len(), 2, "both calls recorded");
    let calls = env.sim.calls();
    let gap = calls[1].at.duration_since(calls[0].at);
    assert!(
        gap >= jiff::SignedDuration::from_secs(29),
        "retried after {gap:?}"
    );
    assert_eq!(env.sim.count_429(), 0);
    report(
        "lost response then recovery (nothing published yet)",
        &env,
        1,
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_renewal_defers_further_refreshes_until_a_person_asks() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.start_operator();
    env.apply("acme", "").await;
    env.wait_for("acme", 20, "Ready", is_ready).await;
    // A renewal whose response is lost must not be followed by another refresh that could
    // evict the published certificate.
    env.sim.knobs().set_drop_next_response(1);
    env.annotate("acme", api::RENEW_ANNOTATION, "1").await;
    let d = env
        .wait_for("acme", 30, "outcome unknown", |d| {
            status(d).unconfirmed_refresh.is_some() && reason(d) == "RefreshOutcomeUnknown"
        })
        .await;
    assert!(is_ready(&d), "the published certificate is still valid");
    let (_, _, message) = condition(&d, api::READY).unwrap();
    assert!(message.contains(api::RENEW_ANNOTATION), "{message}");
    env.assert_quiet(3).await;
    let (crt, _, _) = env.output("acme-client").await.unwrap();
    assert!(env.sim.is_valid(&crt), "published certificate not evicted");
    assert_eq!(env.sim.valid_cert_names().len(), 2);
    // A person asks again: one more refresh, which settles the unknown outcome.
    env.annotate("acme", api::RENEW_ANNOTATION, "2").await;
    let d = env
        .wait_for("acme", 60, "refreshed after the person's request", |d| {
            status(d).unconfirmed_refresh.is_none()
                && status(d).last_renew_request.as_deref() == Some("2")
                && is_ready(d)
        })
        .await;
    let (crt, _, _) = env.output("acme-client").await.unwrap();
    assert!(env.sim.is_valid(&crt));
    assert_eq!(env.cert_refreshes().len(), 3);
    assert_eq!(status(&d).attempts.len(), 3, "every call recorded");
    assert_eq!(env.sim.count_429(), 0);
    report("lost renewal, deferred, then renewed on request", &env, 2);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_refresh_spends_no_extra_budget() {
    let mut env = Env::new(CieSimConfig::default()).await;
    // Slow answers: the operator is killed while the call is in flight (after it was recorded).
    env.sim.knobs().set_latency(Duration::from_secs(2));
    env.start_operator();
    env.apply("acme", "").await;
    env.wait_for("acme", 20, "attempt recorded", |d| {
        !status(d).attempts.is_empty()
    })
    .await;
    let pending = env.secrets().get("acme-client-pending").await.unwrap();
    assert!(
        pending
            .owner_references()
            .iter()
            .any(|o| o.kind == "DeviceIdCredential")
    );
    let pending_key = String::from_utf8(pending.data.unwrap()["tls.key"].0.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.kill_operator().await;
    env.sim.knobs().set_latency(Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.start_operator();
    let d = env
        .wait_for("acme", 30, "Ready after restart", is_ready)
        .await;
    let refreshes = env.cert_refreshes();
    // Every call reached the vendor only after being recorded.
    assert!(
        refreshes.len() <= status(&d).attempts.len(),
        "{refreshes:?}"
    );
    assert!(refreshes.len() <= 2, "{refreshes:?}");
    let (crt, key, _) = env.output("acme-client").await.unwrap();
    assert!(env.sim.is_valid(&crt));
    assert_eq!(
        key, pending_key,
        "the key persisted before the crash was reused"
    );
    assert_eq!(env.sim.count_429(), 0);
    report("restart mid-refresh", &env, 1);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_waits_an_hour() {
    let env = Env::new(CieSimConfig::default()).await;
    // Someone else spent the budget with these credentials: three refreshes, each with the
    // certificate the previous one issued. The last one becomes this resource's onboarding.
    let onboarding = env.sim.onboarding();
    let (mut crt, mut key) = (onboarding.cert_pem.clone(), onboarding.key_pem.clone());
    for _ in 0..3 {
        let client = CieClient::new(
            &env.sim.url(),
            &crt,
            &key,
            &onboarding.api_key,
            Some(&env.sim.ca_pem()),
        )
        .unwrap();
        let new_key =
            certrotor::pki::generate_key(certrotor::pki::KeyAlgorithm::EcdsaP256).unwrap();
        let csr = certrotor::pki::generate_csr(&new_key, &Default::default()).unwrap();
        crt = client
            .refresh_certificate(&csr, "other")
            .await
            .unwrap()
            .cert;
        key = new_key;
    }
    env.put_secret("spent", &crt, &key, &onboarding.api_key)
        .await;
    let mut env = env;
    env.start_operator();
    env.apply_with("acme", "spent", "").await;
    let d = env
        .wait_for("acme", 20, "RateLimited", |d| reason(d) == "RateLimited")
        .await;
    assert_eq!(env.sim.count_429(), 1);
    let wait = next_attempt(&d).duration_since(jiff::Timestamp::now());
    assert!(wait >= jiff::SignedDuration::from_mins(59), "{wait:?}");
    assert!(!is_ready(&d));
    env.assert_quiet(3).await;
    let ours = env.cert_refreshes().len() - 3;
    println!(
        "429: the operator made {ours} cert:refresh call after the budget was spent elsewhere; {} answered 429; next attempt in {}s",
        env.sim.count_429(),
        wait.as_secs()
    );
    assert_eq!(ours, 1);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_backs_off() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.sim.knobs().set_conflict_next(1);
    env.start_operator();
    env.apply("acme", "").await;
    let d = env
        .wait_for("acme", 20, "Conflict", |d| reason(d) == "Conflict")
        .await;
    assert_eq!(status(&d).consecutive_conflicts, Some(1));
    let wait = next_attempt(&d).duration_since(jiff::Timestamp::now());
    // A minute ±20%, minus the time spent getting here.
    assert!(wait >= jiff::SignedDuration::from_secs(40), "{wait:?}");
    assert_eq!(
        status(&d).unconfirmed_refresh,
        None,
        "409: nothing was issued"
    );
    env.assert_quiet(3).await;
    assert_eq!(env.cert_refreshes(), [(409, false)]);
    report("409", &env, 0);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_stalls_with_the_vendors_advice() {
    let mut env = Env::new(CieSimConfig::default()).await;
    let onboarding = env.sim.onboarding();
    env.put_secret(
        "wrong-key",
        &onboarding.cert_pem,
        &onboarding.key_pem,
        "not-the-token",
    )
    .await;
    env.start_operator();
    env.apply_with("acme", "wrong-key", "").await;
    let d = env
        .wait_for("acme", 20, "Stalled", |d| stalled(d).is_some())
        .await;
    assert_eq!(stalled(&d).as_deref(), Some("Unauthorized"));
    let (_, _, message) = condition(&d, api::STALLED).unwrap();
    assert!(
        message.contains("regenerate the API certificate"),
        "{message}"
    );
    assert!(!message.contains("not-the-token"));
    env.assert_quiet(3).await;
    assert_eq!(env.cert_refreshes().len(), 1);
    let events = env.events("acme").await;
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "Unauthorized"),
        "{events:?}"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_stalls_without_calling() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.start_operator();
    env.apply_with("missing", "no-such-secret", "").await;
    let onboarding = env.sim.onboarding();
    env.put_secret(
        "garbled",
        "not a pem",
        &onboarding.key_pem,
        &onboarding.api_key,
    )
    .await;
    env.apply_with("garbled", "garbled", "").await;
    let other_key = certrotor::pki::generate_key(certrotor::pki::KeyAlgorithm::EcdsaP256).unwrap();
    env.put_secret(
        "mismatch",
        &onboarding.cert_pem,
        &other_key,
        &onboarding.api_key,
    )
    .await;
    env.apply_with("mismatch", "mismatch", "").await;
    // A key size the vendor refuses never reaches the operator: the CRD's rule refuses it at
    // apply time (the planner's own check, for clusters before 1.25, is in plan_tests).
    let mut badsize: DeviceIdCredential = serde_saphyr::from_str(&format!(
        "apiVersion: certrotor.io/v1alpha1
kind: DeviceIdCredential
metadata: {{name: badsize, namespace: {NS}}}
spec:
  endpoint: {url}
  onboardingSecretRef: {{name: onboarding}}
  certName: badsize
  secretName: badsize-client
",
        url = env.sim.url()
    ))
    .unwrap();
    badsize.spec.private_key.algorithm = certrotor::api::KeyAlgorithm::RSA;
    badsize.spec.private_key.size = 1024;
    match env.didcs().create(&PostParams::default(), &badsize).await {
        Err(kube::Error::Api(s)) => assert_eq!(
            s.message,
            "DeviceIdCredential.certrotor.io \"badsize\" is invalid: spec.privateKey: Invalid value: \"object\": ECDSA takes size 256 or 384; RSA takes 2048, 3072 or 4096"
        ),
        other => panic!("a 1024-bit RSA key must be refused at apply: {other:?}"),
    }
    for (name, want) in [
        ("missing", "OnboardingSecretNotFound"),
        ("garbled", "NoCertificate"),
        ("mismatch", "KeyMismatch"),
    ] {
        let d = env.wait_for(name, 20, want, |d| stalled(d).is_some()).await;
        assert_eq!(stalled(&d).as_deref(), Some(want), "{name}");
        assert!(!is_ready(&d));
        env.wait_event(name, |(t, r, _)| t == "Warning" && r == want)
            .await;
    }
    assert!(env.sim.calls().is_empty());
    // Fixing the input (the Secret appears) is picked up through the Secret watch.
    env.put_secret(
        "no-such-secret",
        &onboarding.cert_pem,
        &onboarding.key_pem,
        &onboarding.api_key,
    )
    .await;
    env.wait_for("missing", 20, "Ready once fixed", is_ready)
        .await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_onboarding_credentials_stall_the_newer_resource() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.start_operator();
    env.apply("first", "").await;
    env.wait_for("first", 20, "Ready", is_ready).await;
    env.apply("second", "").await;
    let d = env
        .wait_for("second", 20, "Stalled", |d| stalled(d).is_some())
        .await;
    assert_eq!(stalled(&d).as_deref(), Some("SharedOnboardingCredentials"));
    let (_, _, message) = condition(&d, api::STALLED).unwrap();
    assert!(message.contains("default/first"), "{message}");
    env.assert_quiet(2).await;
    assert_eq!(
        env.cert_refreshes().len(),
        1,
        "only the first resource called"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refresh_keeps_the_api_key_fresh_only_in_the_output_secret() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.start_operator();
    env.apply("acme", "  refreshToken: true\n  tokenRefreshInterval: 1s\n")
        .await;
    let d = env
        .wait_for("acme", 30, "token refreshed", |d| {
            status(d).token_expiry.is_some()
        })
        .await;
    let (crt, _, api_key) = env.output("acme-client").await.unwrap();
    assert_ne!(
        api_key,
        env.sim.onboarding().api_key,
        "new token in the output Secret"
    );
    assert!(env.sim.is_valid(&crt));
    let status_json = serde_json::to_string(&d.status).unwrap();
    assert!(!status_json.contains(&api_key), "token leaked into status");
    for (_, _, note) in env.events("acme").await {
        assert!(!note.contains(&api_key), "token leaked into an event");
    }
    // The new apiKey works with the published certificate.
    let client = CieClient::new(
        &env.sim.url(),
        &crt,
        &env.output("acme-client").await.unwrap().1,
        &api_key,
        Some(&env.sim.ca_pem()),
    )
    .unwrap();
    client.refresh_token().await.unwrap();
    let tokens = env.token_refreshes();
    assert_eq!(tokens, 2, "the operator's one, and ours");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_makes_no_calls() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.start_operator();
    let mut obj: DeviceIdCredential = env.apply("acme", "").await;
    env.wait_for("acme", 20, "Ready", is_ready).await;
    env.annotate("acme", api::PAUSED_ANNOTATION, "true").await;
    env.annotate("acme", api::RENEW_ANNOTATION, "now").await;
    env.wait_for("acme", 20, "Paused", |d| reason(d) == "Paused")
        .await;
    env.assert_quiet(2).await;
    assert_eq!(env.cert_refreshes().len(), 1);
    obj = env.didcs().get(&obj.name_any()).await.unwrap();
    assert!(is_ready(&obj));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_storm_causes_no_429() {
    let mut env = Env::new(CieSimConfig {
        cert_validity: Duration::from_secs(8),
        ..Default::default()
    })
    .await;
    // Always nearly due: every restart finds a refresh it would like to make.
    env.apply("acme", "  renewBefore: 7s\n").await;
    for i in 0..25 {
        env.start_operator();
        tokio::time::sleep(Duration::from_millis(150 + 40 * (i % 5))).await;
        env.kill_operator().await;
    }
    env.start_operator();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d = env.didcs().get("acme").await.unwrap();
    let refreshes = env.cert_refreshes();
    println!(
        "restart storm: 26 operator starts, {} cert:refresh calls, {} answered 429, attempts in status {}",
        refreshes.len(),
        env.sim.count_429(),
        status(&d).attempts.len()
    );
    assert_eq!(env.sim.count_429(), 0);
    assert!(refreshes.len() <= 3, "{refreshes:?}");
    assert!(!status(&d).attempts.is_empty());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_private_key_is_generated_as_asked() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.start_operator();
    env.apply("acme", "  privateKey: {algorithm: RSA, size: 2048}\n")
        .await;
    env.wait_for("acme", 30, "Ready", is_ready).await;
    let (crt, key, _) = env.output("acme-client").await.unwrap();
    let pair = rcgen::KeyPair::from_pem(&key).unwrap();
    assert!(
        pair.is_compatible(&rcgen::PKCS_RSA_SHA256),
        "not an RSA key"
    );
    assert!(env.sim.is_valid(&crt));
    let subject = &certrotor::pki::parse_chain(&crt).unwrap()[0].subject;
    assert!(subject.contains("CN=acme"), "{subject}");
    env.shutdown().await;
}

/// GitOps applies the renew annotation together with the resource: the first refresh consumes
/// it, so it costs no second `cert:refresh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_annotation_present_at_creation_is_consumed_by_the_first_refresh() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.start_operator();
    let mut obj = env.manifest("gitops", "onboarding", "");
    obj.metadata.annotations = Some(
        [(api::RENEW_ANNOTATION.to_string(), "2026-11-01".to_string())]
            .into_iter()
            .collect(),
    );
    env.didcs()
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
    let d = env.wait_for("gitops", 30, "Ready", is_ready).await;
    assert_eq!(
        status(&d).last_renew_request.as_deref(),
        Some("2026-11-01"),
        "the first refresh records the annotation it served"
    );
    env.assert_quiet(3).await;
    assert_eq!(env.cert_refreshes().len(), 1, "one refresh, not two");
    // A new value is a new request.
    env.annotate("gitops", api::RENEW_ANNOTATION, "2026-11-02")
        .await;
    env.wait_for("gitops", 30, "renewed", |d| {
        status(d).last_renew_request.as_deref() == Some("2026-11-02")
    })
    .await;
    assert_eq!(env.cert_refreshes().len(), 2);
    env.shutdown().await;
}

/// `spec.refreshMethod: POST` for proxies that drop the body of a GET: the vendor sees POST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_method_post_is_used_when_the_spec_says_so() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.start_operator();
    env.apply("posted", "  refreshMethod: POST\n").await;
    env.wait_for("posted", 30, "Ready", is_ready).await;
    let methods: Vec<String> = env
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.operation == Operation::CertRefresh)
        .map(|c| c.method)
        .collect();
    assert_eq!(methods, ["POST"]);
    env.shutdown().await;
}

/// An output Secret that exists with another type (a Secret's type cannot change, so writing the
/// refreshed certificate there would fail after the vendor issued it), or that another
/// controller owns, stalls the resource before any vendor call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_secret_that_cannot_be_written_stalls_before_any_call() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.start_operator();
    let opaque: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "taken-client", "namespace": NS},
        "type": "Opaque",
        "stringData": {"note": "someone else's"}
    }))
    .unwrap();
    env.secrets()
        .create(&PostParams::default(), &opaque)
        .await
        .unwrap();
    let owned: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "owned-client", "namespace": NS,
                     "ownerReferences": [{"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                                          "name": "other", "uid": "0b1c2d3e-0000-4000-8000-000000000001",
                                          "controller": true}]},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": "", "tls.key": ""}
    }))
    .unwrap();
    env.secrets()
        .create(&PostParams::default(), &owned)
        .await
        .unwrap();
    env.apply("taken", "").await;
    env.apply("owned", "").await;
    for (name, want) in [
        ("taken", "type Opaque"),
        ("owned", "controlled by Certificate other"),
    ] {
        let d = env
            .wait_for(name, 20, "Stalled", |d| stalled(d).is_some())
            .await;
        assert_eq!(
            stalled(&d).as_deref(),
            Some("OutputSecretConflict"),
            "{name}"
        );
        let (_, _, message) = condition(&d, api::STALLED).unwrap();
        assert!(message.contains(want), "{name}: {message}");
    }
    assert!(env.sim.calls().is_empty(), "no vendor call");
    env.shutdown().await;
}

/// The onboarding Secret is needed only while no valid certificate of ours is published: once
/// one is, removing the onboarding Secret (a fair thing to do with a credential the vendor has
/// evicted) is a Warning, and renewals go on with the published certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_onboarding_secret_does_not_stop_renewals() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.start_operator();
    env.apply("kept", "").await;
    let d = env.wait_for("kept", 30, "Ready", is_ready).await;
    let first_serial = status(&d).serial_number.unwrap();
    env.secrets()
        .delete("onboarding", &Default::default())
        .await
        .unwrap();
    env.annotate("kept", api::RENEW_ANNOTATION, "after-onboarding-gone")
        .await;
    let d = env
        .wait_for("kept", 30, "renewed without onboarding", |d| {
            status(d).last_renew_request.as_deref() == Some("after-onboarding-gone")
                && status(d).serial_number.as_deref() != Some(first_serial.as_str())
        })
        .await;
    assert!(is_ready(&d), "still Ready");
    assert!(stalled(&d).is_none(), "not stalled");
    assert!(status(&d).onboarding_secret_missing.is_some());
    env.wait_event("kept", |(t, r, _)| {
        t == "Warning" && r == "OnboardingSecretMissing"
    })
    .await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_that_both_believe_they_lead_make_one_call_per_request() {
    // Status writes take 300 ms to land: both operators read the same ledger before either
    // records its attempt, as a frozen leader and its successor would.
    let mut env = Env::new_with(
        CieSimConfig::default(),
        certrotor::sim::kube::Options {
            status_write_delay: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await;
    env.start_operator();
    env.start_second_operator();
    let obj = env.manifest("iot", "onboarding", "");
    env.didcs()
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
    env.wait_for("iot", 30, "Ready", is_ready).await;
    env.assert_quiet(2).await;
    assert_eq!(
        env.cert_refreshes().len(),
        1,
        "one call, not one per writer"
    );
    env.annotate("iot", api::RENEW_ANNOTATION, "once").await;
    env.wait_for("iot", 30, "renewed", |d| {
        status(d).last_renew_request.as_deref() == Some("once")
    })
    .await;
    env.assert_quiet(2).await;
    assert_eq!(
        env.cert_refreshes().len(),
        2,
        "one call for the renew request"
    );
    assert_eq!(env.sim.count_429(), 0, "the budget was not overrun");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_bundle_stalls_spends_nothing_and_a_fix_is_used_at_once() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.start_operator();
    let mut obj = env.manifest("iot", "onboarding", "");
    // A CA that did not sign the endpoint's certificate.
    obj.spec.ca_bundle = Some(
        certrotor::pki::ca::Ca::new("someone else's CA")
            .unwrap()
            .cert_pem(),
    );
    env.didcs()
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
    let d = env
        .wait_for("iot", 30, "Stalled", |d| stalled(d).is_some())
        .await;
    assert_eq!(stalled(&d).as_deref(), Some("TlsVerificationFailed"));
    let (_, _, message) = condition(&d, "Stalled").unwrap();
    assert!(
        message.contains("caBundle"),
        "the condition says what to fix: {message}"
    );
    assert!(
        status(&d).attempts.is_empty(),
        "no attempt spent: {:?}",
        status(&d).attempts
    );
    assert!(env.cert_refreshes().is_empty());
    // The fix is picked up at once, not after a pause.
    let patch = serde_json::json!({"spec": {"caBundle": env.sim.ca_pem()}});
    env.didcs()
        .patch("iot", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    env.wait_for("iot", 10, "Ready", is_ready).await;
    println!("caBundle fix → Ready in {:?}", started.elapsed());
    assert_eq!(env.cert_refreshes().len(), 1);
    assert_eq!(
        status(&env.didcs().get("iot").await.unwrap())
            .attempts
            .len(),
        1
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lost_token_answers_in_a_row_stop_token_refreshes() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.start_operator();
    env.apply("acme", "  refreshToken: true\n  tokenRefreshInterval: 5s\n")
        .await;
    env.wait_for("acme", 30, "Ready", is_ready).await;
    // The next two answers (the token refreshes) are lost after the vendor carried them out.
    env.sim.knobs().set_drop_next_response(2);
    let d = env
        .wait_for("acme", 30, "Stalled", |d| stalled(d).is_some())
        .await;
    assert_eq!(stalled(&d).as_deref(), Some("TokenOutcomeUnknown"));
    let (_, _, message) = condition(&d, "Stalled").unwrap();
    assert!(message.contains("acme-client"), "{message}");
    assert!(
        !is_ready(&d),
        "not Ready: the apiKey in the output Secret may have been evicted"
    );
    env.assert_quiet(3).await;
    let tokens = env.token_refreshes();
    assert_eq!(tokens, 2, "no third call after two lost answers");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_401_a_console_reonboarding_is_used_at_the_next_attempt() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.start_operator();
    env.apply("acme", "").await;
    env.wait_for("acme", 30, "Ready", is_ready).await;
    // A person re-onboards in the console: every credential valid before is now refused.
    let fresh = env.sim.reonboard().unwrap();
    env.annotate("acme", api::RENEW_ANNOTATION, "after-reonboarding")
        .await;
    let d = env
        .wait_for("acme", 30, "401", |d| stalled(d).is_some())
        .await;
    assert_eq!(stalled(&d).as_deref(), Some("Unauthorized"));
    assert!(
        !is_ready(&d),
        "Ready=False while the credential in use is refused"
    );
    let (_, _, message) = condition(&d, api::STALLED).unwrap();
    assert!(message.contains("re-onboard"), "{message}");
    // The new bundle goes into the onboarding Secret: the next attempt uses it.
    env.put_secret(
        "onboarding",
        &fresh.cert_pem,
        &fresh.key_pem,
        &fresh.api_key,
    )
    .await;
    let d = env
        .wait_for("acme", 30, "Ready again", |d| {
            is_ready(d) && stalled(d).is_none()
        })
        .await;
    let (crt, _, api_key) = env.output("acme-client").await.unwrap();
    assert!(env.sim.is_valid(&crt), "a certificate the vendor holds");
    assert_eq!(
        api_key, fresh.api_key,
        "the output Secret gets the new apiKey"
    );
    assert_eq!(status(&d).rejected, None);
    assert_eq!(env.cert_refreshes().len(), 3);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_certificate_is_kept_and_published_when_the_secret_can_be_written_again() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.start_operator();
    env.apply("acme", "").await;
    env.wait_for("acme", 30, "Ready", is_ready).await;
    let (first, _, _) = env.output("acme-client").await.unwrap();
    // An admission webhook starts refusing writes to the output Secret; then a renewal.
    env.standin
        .deny_writes("secrets", "acme-client", "secrets must carry team labels");
    env.annotate("acme", api::RENEW_ANNOTATION, "r1").await;
    let d = env
        .wait_for("acme", 30, "PublishFailed", |d| {
            reason(d) == "PublishFailed"
        })
        .await;
    let kept = status(&d).received_certificate.expect("kept in status");
    assert!(env.sim.is_valid(&kept), "the certificate the vendor issued");
    assert!(
        is_ready(&d),
        "the first certificate is still published and valid"
    );
    let (_, _, message) = condition(&d, api::READY).unwrap();
    assert!(message.contains("team labels"), "{message}");
    env.assert_quiet(3).await;
    assert_eq!(env.cert_refreshes().len(), 2, "no further vendor call");
    // The webhook lets it through again: published from status, with no vendor call.
    env.standin.allow_writes("secrets", "acme-client");
    let d = env
        .wait_for("acme", 60, "published", |d| {
            status(d).received_certificate.is_none() && reason(d) != "PublishFailed"
        })
        .await;
    let (crt, _, _) = env.output("acme-client").await.unwrap();
    assert_ne!(crt, first);
    assert_eq!(
        certrotor::pki::fingerprint_of_leaf(&crt).unwrap(),
        certrotor::pki::fingerprint_of_leaf(&kept).unwrap()
    );
    assert!(is_ready(&d));
    assert_eq!(
        env.cert_refreshes().len(),
        2,
        "published with no vendor call"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_edited_output_secret_is_restored_from_certrotors_copy() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.start_operator();
    env.apply("acme", "").await;
    env.wait_for("acme", 30, "Ready", is_ready).await;
    let (crt, key, api_key) = env.output("acme-client").await.unwrap();
    // Deleted (a person, "delete it to reissue"): put back, no vendor call.
    env.secrets()
        .delete("acme-client", &Default::default())
        .await
        .unwrap();
    for _ in 0..100 {
        if env.output("acme-client").await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        env.output("acme-client").await,
        Some((crt.clone(), key.clone(), api_key.clone()))
    );
    // Edited (a restore from an old backup): put back too.
    env.put_secret("acme-client", &crt, &key, "an-old-api-key")
        .await;
    for _ in 0..100 {
        if env.output("acme-client").await.map(|o| o.2) == Some(api_key.clone()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(env.output("acme-client").await.unwrap().2, api_key);
    env.assert_quiet(2).await;
    assert_eq!(
        env.cert_refreshes().len(),
        1,
        "restored with no vendor call"
    );
    let events = env.events("acme").await;
    assert!(events.iter().any(|(_, r, _)| r == "Restored"), "{events:?}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_onboarding_certificate_is_never_used_again() {
    let mut env = Env::new(CieSimConfig::default()).await;
    env.start_operator();
    env.apply("acme", "").await;
    env.wait_for("acme", 30, "Ready", is_ready).await;
    // A second refresh: the vendor evicts the onboarding certificate (two-certificate window).
    env.annotate("acme", api::RENEW_ANNOTATION, "r1").await;
    let d = env
        .wait_for("acme", 30, "renewed", |d| {
            status(d).last_renew_request.as_deref() == Some("r1") && is_ready(d)
        })
        .await;
    assert!(status(&d).onboarding_evicted.is_some(), "{:?}", status(&d));
    // Everything of ours is lost (output Secret and copy): no fallback to the evicted onboarding.
    env.secrets()
        .delete("acme-client-held", &Default::default())
        .await
        .unwrap();
    env.secrets()
        .delete("acme-client", &Default::default())
        .await
        .unwrap();
    let d = env
        .wait_for("acme", 30, "Stalled", |d| stalled(d).is_some())
        .await;
    assert_eq!(stalled(&d).as_deref(), Some("OnboardingEvicted"));
    env.assert_quiet(2).await;
    assert_eq!(
        env.cert_refreshes().len(),
        2,
        "no call with the evicted certificate"
    );
    // A console re-onboarding gives a new bundle: used at once.
    let fresh = env.sim.reonboard().unwrap();
    env.put_secret(
        "onboarding",
        &fresh.cert_pem,
        &fresh.key_pem,
        &fresh.api_key,
    )
    .await;
    env.wait_for("acme", 30, "Ready again", is_ready).await;
    let (crt, _, api_key) = env.output("acme-client").await.unwrap();
    assert!(env.sim.is_valid(&crt));
    assert_eq!(api_key, fresh.api_key);
    env.shutdown().await;
}
