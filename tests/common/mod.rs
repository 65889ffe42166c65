//! Shared harness: the Kubernetes API stand-in, the AIC simulator and the real controllers, all
//! in process over loopback.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::oneshot;

use certrotor::api::{self, TenantCertificate};
use certrotor::controller::{Options, PollPolicy};
use certrotor::pki::{self, KeyAlgorithm, ca::Ca};
use certrotor::sim::aic::{AicSim, AicSimConfig};
use certrotor::sim::kube::StandIn;

pub const NS: &str = "default";

pub struct Env {
    pub standin: StandIn,
    pub client: Client,
    pub aic: AicSim,
    pub ca: Ca,
    stop: Option<oneshot::Sender<()>>,
    operator: Option<tokio::task::JoinHandle<()>>,
}

pub fn fast_options() -> Options {
    Options {
        poll: PollPolicy {
            min: Duration::from_millis(100),
            max: Duration::from_millis(400),
            resync: Duration::from_secs(600),
            ..Default::default()
        },
        failure_backoff_base: Duration::from_millis(200),
        failure_backoff_max: Duration::from_secs(2),
        ..Default::default()
    }
}

pub fn sim_config() -> AicSimConfig {
    AicSimConfig {
        live_delay: Duration::from_millis(300),
        delete_500_window: Duration::from_millis(500),
        ..Default::default()
    }
}

impl Env {
    /// Stand-in + CRDs + AIC simulator + credentials Secret; the operator is not started yet.
    pub async fn new(config: AicSimConfig) -> Env {
        Self::new_with(config, certrotor::sim::kube::Options::default()).await
    }

    /// As `new`, on a stand-in with these options (e.g. a pre-1.25 server without CEL rules).
    pub async fn new_with(config: AicSimConfig, options: certrotor::sim::kube::Options) -> Env {
        if std::env::var_os("RUST_LOG").is_some() {
            certrotor::telemetry::init(certrotor::telemetry::LogFormat::Text, "info");
        }
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let standin = StandIn::start_with("127.0.0.1:0".parse().unwrap(), options)
            .await
            .unwrap();
        let client = standin.client();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in api::crds() {
            crds.create(&PostParams::default(), &crd).await.unwrap();
        }
        let aic = AicSim::start("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        let env = Env {
            standin,
            client,
            aic,
            ca: Ca::new("Test Root CA").unwrap(),
            stop: None,
            operator: None,
        };
        env.put_secret("aic-creds", env.aic.credentials_secret_data())
            .await;
        env
    }

    pub async fn start(config: AicSimConfig) -> Env {
        let mut env = Env::new(config).await;
        env.start_operator();
        env
    }

    pub fn start_operator(&mut self) {
        self.start_operator_with(fast_options());
    }

    pub fn start_operator_with(&mut self, options: Options) {
        let (tx, rx) = oneshot::channel::<()>();
        let client = self.client.clone();
        self.operator = Some(tokio::spawn(async move {
            certrotor::controller::run(client, options, None, async move {
                let _ = rx.await;
            })
            .await;
        }));
        self.stop = Some(tx);
    }

    /// Stops the operator abruptly (as a crash would: no graceful drain).
    pub async fn kill_operator(&mut self) {
        if let Some(handle) = self.operator.take() {
            handle.abort();
            let _ = handle.await;
        }
        self.stop = None;
    }

    pub fn tcerts(&self) -> Api<TenantCertificate> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub async fn put_secret(&self, name: &str, data: BTreeMap<String, String>) {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), NS);
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            string_data: Some(data),
            type_: Some("kubernetes.io/tls".into()),
            ..Default::default()
        };
        secrets
            .patch(
                name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&secret),
            )
            .await
            .unwrap();
    }

    /// A leaf for `names` signed by the test CA: (chain, key).
    pub fn issue(&self, names: &[&str], days: i64) -> (String, String) {
        let now = jiff::Timestamp::now();
        let nb = now - jiff::SignedDuration::from_hours(1);
        let na = now + jiff::SignedDuration::from_hours(24 * days);
        self.ca
            .issue(names[0], names, nb, na, KeyAlgorithm::EcdsaP256)
            .unwrap()
    }

    pub async fn put_tls(&self, name: &str, chain: &str, key: &str) {
        self.put_secret(
            name,
            [
                ("tls.crt".to_string(), chain.to_string()),
                ("tls.key".to_string(), key.to_string()),
            ]
            .into(),
        )
        .await;
    }

    pub async fn apply(&self, yaml: &str) -> TenantCertificate {
        let obj: TenantCertificate = serde_saphyr::from_str(yaml).unwrap();
        self.tcerts()
            .create(&PostParams::default(), &obj)
            .await
            .unwrap()
    }

    pub async fn get(&self, name: &str) -> TenantCertificate {
        self.tcerts().get(name).await.unwrap()
    }

    /// Waits until `pred` holds for the resource; panics with its last status after `secs`.
    pub async fn wait_for(
        &self,
        name: &str,
        secs: u64,
        what: &str,
        pred: impl Fn(&TenantCertificate) -> bool,
    ) -> TenantCertificate {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(Some(t)) = self.tcerts().get_opt(name).await {
                if pred(&t) {
                    return t;
                }
                if tokio::time::Instant::now() > deadline {
                    panic!(
                        "timed out waiting for {name}: {what}; status: {}",
                        serde_json::to_string_pretty(&t.status).unwrap()
                    );
                }
            } else if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {name}: {what}; object missing");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A Local certificate for `names`, in Secret `<name>-tls`, applied as `name` with `extra`
    /// spec lines, and waited for until Ready: its certificate id.
    pub async fn ready_local(&self, name: &str, names: &[&str], extra: &str) -> String {
        let (chain, key) = self.issue(names, 90);
        let secret = format!("{name}-tls");
        self.put_tls(&secret, &chain, &key).await;
        self.apply(&with_url(&local_yaml(name, &secret, extra), self))
            .await;
        self.wait_ready(name)
            .await
            .status
            .and_then(|s| s.certificate_id)
            .expect("Ready with a certificate id")
    }

    /// Chains uploaded to tenant CSRs so far.
    pub fn chain_uploads(&self) -> usize {
        self.tenant_calls()
            .iter()
            .filter(|c| c.starts_with("PATCH /environment/csrs"))
            .count()
    }

    pub async fn wait_ready(&self, name: &str) -> TenantCertificate {
        self.wait_for(name, 60, "Ready=True", is_ready).await
    }

    pub async fn wait_gone(&self, name: &str, secs: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while self.tcerts().get_opt(name).await.unwrap().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} still exists"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn delete(&self, name: &str) {
        self.tcerts()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    /// Calls to `/environment/*` and the token endpoint, as "METHOD route".
    pub fn tenant_calls(&self) -> Vec<String> {
        self.aic.calls().into_iter().map(|c| c.route).collect()
    }

    pub async fn events(&self, name: &str) -> Vec<(String, String)> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), NS);
        let mut out: Vec<(String, String)> = events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
            .collect();
        out.sort();
        out
    }

    /// Events are published right after the status write: wait for them rather than race.
    pub async fn wait_event(&self, name: &str, type_: &str, reason: &str) -> Vec<(String, String)> {
        let wanted = (type_.to_string(), reason.to_string());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.events(name).await;
            if events.contains(&wanted) {
                return events;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {type_} {reason} event for {name}: {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.operator.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
        }
    }
}

pub fn condition(t: &TenantCertificate, type_: &str) -> Option<(String, String)> {
    let status = t.status.as_ref()?;
    api::condition(&status.conditions, type_).map(|c| (c.status.clone(), c.reason.clone()))
}

pub fn is_ready(t: &TenantCertificate) -> bool {
    condition(t, api::READY).is_some_and(|(s, _)| s == "True")
}

pub fn stalled_reason(t: &TenantCertificate) -> Option<String> {
    condition(t, api::STALLED)
        .filter(|(s, _)| s == "True")
        .map(|(_, r)| r)
}

pub fn local_yaml(name: &str, secret: &str, extra: &str) -> String {
    format!(
        "apiVersion: certrotor.io/v1alpha1
kind: TenantCertificate
metadata: {{name: {name}, namespace: {NS}}}
spec:
  tenant: {{url: URL, credentialsSecretRef: {{name: aic-creds}}}}
  keySource: Local
  secretRef: {{name: {secret}}}
{extra}"
    )
}

/// A Tenant-mode resource reading its chain from Secret `<name>-tls`; `csr` is the flow mapping
/// of `spec.csr`, `extra` more spec lines (indented two spaces).
pub fn tenant_yaml(name: &str, csr: &str, extra: &str) -> String {
    format!(
        "apiVersion: certrotor.io/v1alpha1
kind: TenantCertificate
metadata: {{name: {name}, namespace: {NS}}}
spec:
  tenant: {{url: URL, credentialsSecretRef: {{name: aic-creds}}}}
  keySource: Tenant
  secretRef: {{name: {name}-tls}}
{extra}  csr: {csr}
"
    )
}

pub fn with_url(yaml: &str, env: &Env) -> String {
    yaml.replace("URL", &env.aic.url())
}

pub fn fingerprint(chain: &str) -> String {
    pki::fingerprint_of_leaf(chain).unwrap()
}

pub fn name_of(t: &TenantCertificate) -> String {
    t.name_any()
}
