//! Tenant-mode keys signed through cert-manager: the real controller against the stand-in (which
//! serves cert-manager's CertificateRequest CRD), the AIC simulator and a simulated cert-manager
//! with a CA issuer.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use certrotor::certmanager::{CertificateRequest, OWNER_LABEL};
use certrotor::sim::certmanager::CertManager;
use common::*;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

const CSR: &str = "{commonName: idp.example.com, subjectAlternativeNames: [idp.example.com]}";

/// Stand-in with cert-manager's CRD, the CA issuer running, then the operator.
async fn env_with_cert_manager() -> (Env, CertManager) {
    let mut env = Env::new(sim_config()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    crds.create(&PostParams::default(), &CertificateRequest::crd())
        .await
        .unwrap();
    let cm = CertManager::start(
        env.client.clone(),
        Arc::new(certrotor::pki::ca::Ca::new("cert-manager CA").unwrap()),
    );
    env.start_operator();
    (env, cm)
}

fn issued_yaml(env: &Env, name: &str, extra: &str) -> String {
    with_url(
        &tenant_yaml(
            name,
            CSR,
            &format!("  issuerRef: {{name: ca-issuer}}\n  duration: 2160h\n{extra}"),
        ),
        env,
    )
}

fn requests(env: &Env) -> Api<CertificateRequest> {
    Api::namespaced(env.client.clone(), NS)
}

async fn request_names(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = requests(env)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .collect();
    names.sort();
    names
}

fn ready_reason(t: &certrotor::api::TenantCertificate) -> String {
    condition(t, "Ready").map(|(_, r)| r).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_key_is_issued_through_cert_manager_and_renewed_with_nobody() {
    let (env, cm) = env_with_cert_manager().await;
    env.apply(&issued_yaml(&env, "idp", "  revisionHistoryLimit: 0\n"))
        .await;
    let t = env.wait_ready("idp").await;
    let status = t.status.clone().unwrap();
    let first_request = status.certificate_request.clone().unwrap();
    let cr = requests(&env).get(&first_request).await.unwrap();
    // Owned, labelled, and asking for what the issue says.
    assert_eq!(
        cr.metadata.owner_references.as_ref().unwrap()[0].uid,
        t.metadata.uid.clone().unwrap()
    );
    assert_eq!(
        cr.metadata.labels.as_ref().unwrap()[OWNER_LABEL],
        t.metadata.uid.clone().unwrap()
    );
    assert_eq!(cr.spec.issuer_ref.name, "ca-issuer");
    assert_eq!(cr.spec.issuer_ref.kind.as_deref(), Some("Issuer"));
    assert_eq!(cr.spec.issuer_ref.group.as_deref(), Some("cert-manager.io"));
    assert_eq!(cr.spec.duration.as_deref(), Some("2160h"));
    assert_eq!(
        cr.spec.usages,
        ["server auth", "digital signature", "key encipherment"]
    );
    // The chain is in the Secret, with the CA appended, and is what the tenant serves.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(env.client.clone(), NS);
    let secret = secrets.get("idp-tls").await.unwrap();
    let chain = String::from_utf8(secret.data.unwrap()["tls.crt"].0.clone()).unwrap();
    assert_eq!(
        certrotor::pki::parse_chain(&chain).unwrap().len(),
        2,
        "leaf and CA"
    );
    assert_eq!(
        status.fingerprint.as_deref(),
        Some(fingerprint(&chain).as_str())
    );
    env.wait_event("idp", "Normal", "CertificateRequestCreated")
        .await;
    assert_eq!(cm.knobs.signed.load(Ordering::SeqCst), 1);

    // Renewal with nobody: a new tenant CSR, a new request, the old request gone (history 0).
    let patch = serde_json::json!({"metadata": {"annotations": {"certrotor.io/renew": "r1"}}});
    env.tcerts()
        .patch("idp", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let first_id = status.certificate_id.unwrap();
    let t = env
        .wait_for("idp", 30, "renewed", |t| {
            let s = t.status.as_ref().unwrap();
            is_ready(t)
                && s.certificate_id.as_deref() != Some(first_id.as_str())
                && s.pending.is_none()
        })
        .await;
    let second_request = t.status.unwrap().certificate_request.unwrap();
    assert_ne!(second_request, first_request);
    for _ in 0..50 {
        if request_names(&env).await == [second_request.clone()] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(request_names(&env).await, [second_request]);
    assert_eq!(cm.knobs.signed.load(Ordering::SeqCst), 2);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unapproved_request_waits_with_awaiting_approval() {
    let (env, cm) = env_with_cert_manager().await;
    cm.knobs.hold.store(true, Ordering::SeqCst);
    env.apply(&issued_yaml(&env, "idp", "")).await;
    let t = env
        .wait_for("idp", 20, "AwaitingApproval", |t| {
            ready_reason(t) == "AwaitingApproval"
        })
        .await;
    assert!(!is_ready(&t));
    cm.knobs.hold.store(false, Ordering::SeqCst);
    env.wait_ready("idp").await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_request_stalls_until_a_renew_request() {
    let (env, cm) = env_with_cert_manager().await;
    cm.knobs.deny_next.store(1, Ordering::SeqCst);
    env.apply(&issued_yaml(&env, "idp", "")).await;
    let t = env
        .wait_for("idp", 20, "denied", |t| stalled_reason(t).is_some())
        .await;
    assert_eq!(
        stalled_reason(&t).as_deref(),
        Some("CertificateRequestDenied")
    );
    let status = t.status.unwrap();
    let stalled = certrotor::api::condition(&status.conditions, "Stalled").unwrap();
    assert!(
        stalled.message.contains("denied by policy"),
        "{}",
        stalled.message
    );
    env.wait_event("idp", "Warning", "CertificateRequestDenied")
        .await;
    // It does not try again on its own...
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(request_names(&env).await.len(), 1);
    // ...but on a renew request: a new CSR and a new request.
    let patch = serde_json::json!({"metadata": {"annotations": {"certrotor.io/renew": "again"}}});
    env.tcerts()
        .patch("idp", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    env.wait_ready("idp").await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_stalls_with_cert_managers_reason() {
    let (env, cm) = env_with_cert_manager().await;
    cm.knobs.fail_next.store(1, Ordering::SeqCst);
    env.apply(&issued_yaml(&env, "idp", "")).await;
    let t = env
        .wait_for("idp", 20, "failed", |t| stalled_reason(t).is_some())
        .await;
    assert_eq!(
        stalled_reason(&t).as_deref(),
        Some("CertificateRequestFailed")
    );
    let status = t.status.unwrap();
    let stalled = certrotor::api::condition(&status.conditions, "Stalled").unwrap();
    assert!(
        stalled.message.contains("CA is unavailable"),
        "{}",
        stalled.message
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_for_another_key_is_refused_before_upload() {
    let (env, cm) = env_with_cert_manager().await;
    cm.knobs.wrong_key_next.store(1, Ordering::SeqCst);
    env.apply(&issued_yaml(&env, "idp", "")).await;
    let t = env
        .wait_for("idp", 20, "stalled", |t| stalled_reason(t).is_some())
        .await;
    assert_eq!(stalled_reason(&t).as_deref(), Some("ChainDoesNotMatchCsr"));
    assert_eq!(env.chain_uploads(), 0, "nothing uploaded");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_creating_the_request_and_recording_it_makes_no_second_one() {
    let (mut env, cm) = env_with_cert_manager().await;
    cm.knobs.hold.store(true, Ordering::SeqCst);
    env.apply(&issued_yaml(&env, "idp", "")).await;
    env.wait_for("idp", 20, "AwaitingApproval", |t| {
        ready_reason(t) == "AwaitingApproval"
    })
    .await;
    env.kill_operator().await;
    // The status write that recorded the request is lost.
    let patch = serde_json::json!({"status": {"certificateRequest": null}});
    env.tcerts()
        .patch_status("idp", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    env.start_operator();
    cm.knobs.hold.store(false, Ordering::SeqCst);
    let t = env.wait_ready("idp").await;
    assert_eq!(
        request_names(&env).await.len(),
        1,
        "the same request, found again"
    );
    assert!(t.status.unwrap().certificate_request.is_some());
    assert_eq!(cm.knobs.signed.load(Ordering::SeqCst), 1);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cert_manager_an_issuer_ref_stalls_with_no_tenant_call() {
    let env = Env::start(sim_config()).await;
    env.apply(&issued_yaml(&env, "idp", "")).await;
    let t = env
        .wait_for("idp", 20, "stalled", |t| stalled_reason(t).is_some())
        .await;
    assert_eq!(
        stalled_reason(&t).as_deref(),
        Some("CertManagerNotInstalled")
    );
    let status = t.status.unwrap();
    let stalled = certrotor::api::condition(&status.conditions, "Stalled").unwrap();
    assert!(
        stalled.message.contains("cert-manager is not installed"),
        "{}",
        stalled.message
    );
    assert!(env.tenant_calls().is_empty(), "{:?}", env.tenant_calls());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_ref_needs_tenant_mode() {
    let env = Env::start(sim_config()).await;
    let yaml = with_url(
        &local_yaml("login", "login-tls", "  issuerRef: {name: ca-issuer}\n"),
        &env,
    );
    let obj: certrotor::api::TenantCertificate = serde_saphyr::from_str(&yaml).unwrap();
    match env.tcerts().create(&PostParams::default(), &obj).await {
        Err(kube::Error::Api(s)) => {
            assert!(
                s.message.contains("issuerRef needs keySource Tenant"),
                "{}",
                s.message
            )
        }
        other => panic!("refused at apply: {other:?}"),
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_at_renew_before_needs_nobody() {
    let (env, cm) = env_with_cert_manager().await;
    // Short-lived certificates (issued 1 min back-dated, for 6 s) renewed 2 s before expiry.
    let yaml = with_url(
        &tenant_yaml(
            "idp",
            CSR,
            "  issuerRef: {name: ca-issuer, kind: ClusterIssuer}\n  duration: 6s\n  renewBefore: 2s\n  revisionHistoryLimit: 0\n",
        ),
        &env,
    );
    env.apply(&yaml).await;
    let first = env.wait_ready("idp").await.status.unwrap();
    let t = env
        .wait_for("idp", 30, "renewed at renewBefore", |t| {
            let s = t.status.as_ref().unwrap();
            is_ready(t)
                && s.certificate_id != first.certificate_id
                && s.pending.is_none()
                && s.previous_certificate_ids.is_empty()
        })
        .await;
    let status = t.status.unwrap();
    assert!(
        status.not_after > first.not_after,
        "a newer certificate: {:?} after {:?}",
        status.not_after,
        first.not_after
    );
    assert!(cm.knobs.signed.load(Ordering::SeqCst) >= 2);
    let cr = requests(&env)
        .get(status.certificate_request.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(cr.spec.issuer_ref.kind.as_deref(), Some("ClusterIssuer"));
    env.shutdown().await;
}
