//! `certrotor demo`: the whole story on one machine with no cluster and no tenant. Starts the
//! Kubernetes API stand-in, the tenant simulators and the operator, applies the examples in
//! `deploy/examples/` (the same files the README shows, pointed at the simulators), plays the
//! part of the CA and of cert-manager, prints a timeline, rotates each kind once, and exits 0 when
//! everything is Ready.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use crate::api::{self, DeviceIdCredential, TenantCertificate};
use crate::certmanager::{CertificateRequest, RequestState};
use crate::controller::{Options, PollPolicy};
use crate::pki::{KeyAlgorithm, ca::Ca};
use crate::sim::aic::{AicSim, AicSimConfig};
use crate::sim::certmanager::CertManager;
use crate::sim::cie::{CieSim, CieSimConfig};
use crate::sim::kube::StandIn;

const LOCAL_EXAMPLE: &str = include_str!("../deploy/examples/tenantcertificate-local.yaml");
/// The Issuer and the TenantCertificate that names it; the demo applies the latter and plays the
/// former (a simulated cert-manager with a CA issuer).
const CERT_MANAGER_EXAMPLE: &str =
    include_str!("../deploy/examples/tenantcertificate-cert-manager.yaml");
const DEVICE_ID_EXAMPLE: &str = include_str!("../deploy/examples/deviceidcredential.yaml");

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stay up after the story, for kubectl.
    pub keep: bool,
    pub kubeconfig: PathBuf,
    /// Give up after this long.
    pub timeout: Duration,
    /// The simulated load balancer's delay between `active` and `live`.
    pub live_delay: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            keep: false,
            kubeconfig: std::env::temp_dir().join("certrotor-demo.kubeconfig"),
            timeout: Duration::from_secs(120),
            live_delay: Duration::from_secs(3),
        }
    }
}

struct Demo {
    client: Client,
    ca: Ca,
    started: Instant,
    /// What was last printed per resource, to print only changes.
    seen: BTreeMap<String, String>,
}

pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let standin = StandIn::start("127.0.0.1:0".parse()?).await?;
    let aic = AicSim::start(
        "127.0.0.1:0".parse()?,
        AicSimConfig {
            live_delay: options.live_delay,
            delete_500_window: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await?;
    let cie = CieSim::start("127.0.0.1:0".parse()?, CieSimConfig::default()).await?;
    let client = standin.client();
    println!(
        "certrotor demo — Kubernetes API stand-in at {}, AIC tenant simulator at {}, CIE Device-ID simulator at {}",
        standin.url(),
        aic.url(),
        cie.url()
    );

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in api::crds() {
        crds.create(&PostParams::default(), &crd)
            .await
            .context("applying CRDs")?;
    }
    // cert-manager: its CertificateRequest CRD, and a CA issuer that approves and signs.
    {
        use kube::CustomResourceExt;
        crds.create(&PostParams::default(), &CertificateRequest::crd())
            .await
            .context("applying cert-manager's CertificateRequest CRD")?;
    }
    let _cert_manager = CertManager::start_with_pace(
        client.clone(),
        std::sync::Arc::new(Ca::new("certrotor demo issuer (corp-ca)")?),
        Duration::from_millis(700),
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in ["identity", "deviceid"] {
        let obj = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces.create(&PostParams::default(), &obj).await?;
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let operator_client = client.clone();
    let operator = tokio::spawn(async move {
        let options = Options {
            poll: PollPolicy {
                min: Duration::from_millis(500),
                max: Duration::from_secs(2),
                resync: Duration::from_secs(600),
                ..Default::default()
            },
            ..Default::default()
        };
        crate::controller::run(operator_client, options, None, async move {
            let _ = stop_rx.await;
        })
        .await;
    });

    let mut demo = Demo {
        client: client.clone(),
        ca: Ca::new("certrotor demo CA")?,
        started,
        seen: BTreeMap::new(),
    };
    let result = tokio::time::timeout(options.timeout, demo.story(&aic, &cie)).await;
    let outcome = match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(anyhow::anyhow!(
            "not everything was Ready within {}s",
            options.timeout.as_secs()
        )),
    };
    match &outcome {
        Ok(()) => println!(
            "\n[{:>5.1}s] all resources Ready; one rotation of each done.",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!("\ndemo failed: {e:#}");
            demo.print_all().await;
        }
    }
    if options.keep {
        standin.write_kubeconfig(&options.kubeconfig)?;
        println!(
            "\nStill running. Try:\n  export KUBECONFIG={}\n  kubectl get tcert -A\n  kubectl describe tcert -n identity login-example-com\nCtrl-C to stop.",
            options.kubeconfig.display()
        );
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => demo.timeline().await,
            }
        }
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), operator).await;
    aic.shutdown().await;
    cie.shutdown().await;
    standin.shutdown().await;
    outcome
}

impl Demo {
    async fn story(&mut self, aic: &AicSim, cie: &CieSim) -> anyhow::Result<()> {
        self.put_secret(
            "identity",
            "aic-service-account",
            aic.credentials_secret_data(),
            "Opaque",
        )
        .await?;

        // Device-ID: the onboarding bundle from the console, then the example resource.
        let onboarding = cie.onboarding();
        let mut device: DeviceIdCredential =
            serde_saphyr::from_str(DEVICE_ID_EXAMPLE).context("parsing the Device-ID example")?;
        device.spec.endpoint = cie.url();
        device.spec.ca_bundle = Some(cie.ca_pem());
        let data = [
            ("tls.crt".into(), onboarding.cert_pem),
            ("tls.key".into(), onboarding.key_pem),
            ("apiKey".into(), onboarding.api_key),
        ];
        self.put_secret(
            "deviceid",
            &device.spec.onboarding_secret_ref.name,
            data.into(),
            "Opaque",
        )
        .await?;
        Api::<DeviceIdCredential>::namespaced(self.client.clone(), "deviceid")
            .create(&PostParams::default(), &device)
            .await?;
        self.say(&format!(
            "applied DeviceIdCredential deviceid/{} (certName {})",
            device.name_any(),
            device.spec.cert_name
        ));

        // Local: a key and chain kept in Kubernetes, as cert-manager would.
        let local: TenantCertificate = example(LOCAL_EXAMPLE, &aic.url())?;
        self.put_tls(
            "identity",
            &local.spec.secret_ref.name,
            &["login.example.com"],
        )
        .await?;
        self.apply(&local).await?;
        // Tenant: the tenant makes the key; cert-manager signs its CSR through a CertificateRequest.
        let tenant: TenantCertificate =
            example(tenant_certificate_of(CERT_MANAGER_EXAMPLE), &aic.url())?;
        self.apply(&tenant).await?;

        let local_id = self.wait("identity", &local.name_any(), |_| true).await?;
        let tenant_id = self.wait("identity", &tenant.name_any(), |_| true).await?;

        self.say("rotation: cert-manager renews the Local certificate's Secret");
        self.put_tls(
            "identity",
            &local.spec.secret_ref.name,
            &["login.example.com"],
        )
        .await?;
        self.wait("identity", &local.name_any(), |id| id != local_id)
            .await?;

        self.say(&format!(
            "rotation: `kubectl annotate tcert {} certrotor.io/renew=1` (a new tenant CSR, signed through cert-manager with nobody involved)",
            tenant.name_any()
        ));
        let patch = serde_json::json!({"metadata": {"annotations": {api::RENEW_ANNOTATION: "1"}}});
        self.tcerts("identity")
            .patch(
                &tenant.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        self.wait("identity", &tenant.name_any(), |id| id != tenant_id)
            .await?;

        let serial = self
            .wait_device("deviceid", &device.name_any(), None)
            .await?;
        self.say("rotation: `kubectl annotate didc acme-iot certrotor.io/renew=1` (inside the refresh budget)");
        Api::<DeviceIdCredential>::namespaced(self.client.clone(), "deviceid")
            .patch(
                &device.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        self.wait_device("deviceid", &device.name_any(), Some(&serial))
            .await?;
        Ok(())
    }

    /// Waits until the Device-ID credential is Ready with a serial other than `not`.
    async fn wait_device(
        &mut self,
        ns: &str,
        name: &str,
        not: Option<&str>,
    ) -> anyhow::Result<String> {
        let api: Api<DeviceIdCredential> = Api::namespaced(self.client.clone(), ns);
        loop {
            self.timeline().await;
            let status = api.get(name).await?.status.unwrap_or_default();
            if let Some(c) =
                api::condition(&status.conditions, api::STALLED).filter(|c| c.status == "True")
            {
                bail!("{ns}/{name} is Stalled: {}: {}", c.reason, c.message);
            }
            let ready = api::is_true(&status.conditions, api::READY);
            if let Some(serial) = status
                .serial_number
                .filter(|s| ready && Some(s.as_str()) != not)
            {
                return Ok(serial);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn tcerts(&self, ns: &str) -> Api<TenantCertificate> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn say(&self, what: &str) {
        println!("[{:>5.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    async fn apply(&mut self, obj: &TenantCertificate) -> anyhow::Result<()> {
        let ns = obj.namespace().unwrap_or_default();
        self.tcerts(&ns).create(&PostParams::default(), obj).await?;
        self.say(&format!(
            "applied TenantCertificate {ns}/{} (keySource {:?})",
            obj.name_any(),
            obj.spec.key_source
        ));
        Ok(())
    }

    async fn put_secret(
        &self,
        ns: &str,
        name: &str,
        data: BTreeMap<String, String>,
        type_: &str,
    ) -> anyhow::Result<()> {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            string_data: Some(data),
            type_: Some(type_.into()),
            ..Default::default()
        };
        Api::<Secret>::namespaced(self.client.clone(), ns)
            .patch(
                name,
                &PatchParams::apply("certrotor-demo").force(),
                &Patch::Apply(&secret),
            )
            .await?;
        Ok(())
    }

    async fn put_tls(&self, ns: &str, name: &str, names: &[&str]) -> anyhow::Result<()> {
        let now = jiff::Timestamp::now();
        let (chain, key) = self.ca.issue(
            names[0],
            names,
            now - jiff::SignedDuration::from_mins(5),
            now + jiff::SignedDuration::from_hours(24 * 90),
            KeyAlgorithm::EcdsaP256,
        )?;
        self.say(&format!(
            "cert-manager: issued {} into Secret {ns}/{name}",
            names.join(",")
        ));
        self.put_secret(
            ns,
            name,
            [("tls.crt".into(), chain), ("tls.key".into(), key)].into(),
            "kubernetes.io/tls",
        )
        .await
    }

    /// Waits for Ready with a certificate id accepted by `pred`; prints the timeline meanwhile.
    async fn wait(
        &mut self,
        ns: &str,
        name: &str,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        loop {
            self.timeline().await;
            let t = self.tcerts(ns).get(name).await?;
            let status = t.status.unwrap_or_default();
            if let Some(reason) =
                api::condition(&status.conditions, api::STALLED).filter(|c| c.status == "True")
            {
                bail!(
                    "{ns}/{name} is Stalled: {}: {}",
                    reason.reason,
                    reason.message
                );
            }
            if api::is_true(&status.conditions, api::READY)
                && status.pending.is_none()
                && let Some(id) = status.certificate_id.filter(|id| pred(id))
            {
                return Ok(id);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Prints what changed since the last look, one line per change.
    async fn timeline(&mut self) {
        let mut lines = vec![];
        if let Ok(list) = Api::<TenantCertificate>::all(self.client.clone())
            .list(&Default::default())
            .await
        {
            lines.extend(list.into_iter().map(|t| {
                (
                    format!(
                        "tcert {}/{}",
                        t.namespace().unwrap_or_default(),
                        t.name_any()
                    ),
                    describe(&t),
                )
            }));
        }
        if let Ok(list) = Api::<DeviceIdCredential>::all(self.client.clone())
            .list(&Default::default())
            .await
        {
            lines.extend(list.into_iter().map(|d| {
                (
                    format!(
                        "didc {}/{}",
                        d.namespace().unwrap_or_default(),
                        d.name_any()
                    ),
                    describe_device(&d),
                )
            }));
        }
        if let Ok(list) = Api::<CertificateRequest>::all(self.client.clone())
            .list(&Default::default())
            .await
        {
            lines.extend(list.into_iter().map(|r| {
                let state = match r.state() {
                    RequestState::AwaitingApproval => "created, awaiting approval".to_string(),
                    RequestState::Issuing => "approved, issuing".to_string(),
                    RequestState::Issued { .. } => "issued by the CA issuer".to_string(),
                    RequestState::Denied { reason, .. } => format!("denied ({reason})"),
                    RequestState::Failed { reason, .. } => format!("failed ({reason})"),
                };
                (
                    format!(
                        "CertificateRequest {}/{}",
                        r.namespace().unwrap_or_default(),
                        r.name_any()
                    ),
                    state,
                )
            }));
        }
        for (key, line) in lines {
            if self.seen.get(&key) != Some(&line) {
                println!(
                    "[{:>5.1}s] {key:<36} {line}",
                    self.started.elapsed().as_secs_f64()
                );
                self.seen.insert(key, line);
            }
        }
    }

    async fn print_all(&self) {
        if let Ok(list) = Api::<TenantCertificate>::all(self.client.clone())
            .list(&Default::default())
            .await
        {
            for t in list {
                eprintln!(
                    "{}/{}: {}",
                    t.namespace().unwrap_or_default(),
                    t.name_any(),
                    serde_json::to_string(&t.status).unwrap_or_default()
                );
            }
        }
    }
}

fn describe_device(d: &DeviceIdCredential) -> String {
    let Some(s) = &d.status else {
        return "(no status yet)".into();
    };
    let mut line = match api::condition(&s.conditions, api::READY) {
        Some(c) => format!("Ready={} {:<20}", c.status, c.reason),
        None => "Ready=? ".into(),
    };
    if let Some(serial) = &s.serial_number {
        line.push_str(&format!(
            " serial={serial} notAfter={}",
            s.not_after.as_deref().unwrap_or("?")
        ));
    }
    if let Some(evicted) = s.deleted_cert_name.as_deref().filter(|n| !n.is_empty()) {
        line.push_str(&format!(" evicted={evicted}"));
    }
    line.push_str(&format!(" refreshes={}", s.attempts.len()));
    line
}

fn describe(t: &TenantCertificate) -> String {
    let Some(s) = &t.status else {
        return "(no status yet)".into();
    };
    let ready = api::condition(&s.conditions, api::READY);
    let mut line = match ready {
        Some(c) => format!("Ready={} {:<20}", c.status, c.reason),
        None => "Ready=? ".into(),
    };
    if let Some(id) = &s.certificate_id {
        line.push_str(&format!(
            " cert={id} active={} live={}",
            s.active.unwrap_or(false),
            s.live.unwrap_or(false)
        ));
    }
    if !s.previous_certificate_ids.is_empty() {
        line.push_str(&format!(
            " previous={}",
            s.previous_certificate_ids.join(",")
        ));
    }
    if let Some(p) = &s.pending {
        match (&p.certificate_id, &p.csr) {
            (Some(id), _) => line.push_str(&format!(" next={id} ({})", p.reason)),
            (None, Some(csr)) => line.push_str(&format!(" csr={} ({})", csr.id, p.reason)),
            _ => {}
        }
    }
    line
}

/// The TenantCertificate document of a multi-document example.
fn tenant_certificate_of(yaml: &str) -> &str {
    yaml.split("\n---\n")
        .find(|doc| doc.contains("kind: TenantCertificate"))
        .unwrap_or(yaml)
}

/// An example resource, pointed at the simulator.
fn example(yaml: &str, url: &str) -> anyhow::Result<TenantCertificate> {
    let mut obj: TenantCertificate = serde_saphyr::from_str(yaml).context("parsing an example")?;
    obj.spec.tenant.url = url.to_string();
    Ok(obj)
}
