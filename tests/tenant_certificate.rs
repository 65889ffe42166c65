//! TenantCertificate scenarios: the real controller against the Kubernetes API stand-in and the
//! AIC simulator, over loopback.

mod common;

use std::time::Duration;

use certrotor::aic::{AicClient, ClientOptions, Credentials};
use certrotor::api::TenantCertificate;
use certrotor::controller::Options;
use certrotor::sim::aic::AicSimConfig;
use common::*;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};

/// Tenant calls made for one resource, with the support team's certificate excluded.
fn summarize(calls: &[String]) -> String {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for c in calls {
        *counts.entry(c.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, v)| format!("{v}× {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_certificate_becomes_ready() {
    let env = Env::start(sim_config()).await;
    let (chain, key) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain, &key).await;
    env.apply(&with_url(&local_yaml("login", "login-tls", ""), &env))
        .await;
    let t = env.wait_ready("login").await;
    let status = t.status.unwrap();
    assert_eq!(
        status.fingerprint.as_deref(),
        Some(fingerprint(&chain).as_str())
    );
    assert_eq!((status.active, status.live), (Some(true), Some(true)));
    assert_eq!(status.subject_alternative_names, ["login.example.com"]);
    let ours: Vec<_> = env
        .aic
        .certificates()
        .into_iter()
        .filter(|c| !c.created_by_support && !c.deleted)
        .collect();
    assert_eq!(ours.len(), 1, "exactly one upload");
    assert!(ours[0].active && ours[0].live);
    let calls = env.tenant_calls();
    println!(
        "Local apply→Ready tenant calls ({}): {}",
        calls.len(),
        summarize(&calls)
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("POST /am/oauth2"))
            .count(),
        1,
        "one token"
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("POST /environment/certificates"))
            .count(),
        1
    );
    env.wait_event("login", "Normal", "Uploaded").await;
    env.wait_event("login", "Normal", "Ready").await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_csr_flow_becomes_ready_once_the_chain_appears() {
    let env = Env::start(sim_config()).await;
    let yaml = with_url(
        &tenant_yaml(
            "idp",
            "{commonName: idp.example.com, organization: Acme Inc, country: US, subjectAlternativeNames: [idp.example.com], algorithm: ecdsa}",
            "",
        ),
        &env,
    );
    env.apply(&yaml).await;
    let t = env
        .wait_for("idp", 20, "CSR published", |t| {
            t.status.as_ref().is_some_and(|s| s.csr.is_some())
        })
        .await;
    assert_eq!(
        condition(&t, "Ready").unwrap(),
        ("False".into(), "AwaitingSignedChain".into())
    );
    let csr = t.status.unwrap().csr.unwrap();
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(env.client.clone(), NS);
    let cm = cms.get("idp-csr").await.unwrap();
    assert_eq!(cm.data.unwrap()["tls.csr"], csr.request);

    // A CA signs it; the chain lands in the Secret (key stays in the tenant).
    let now = jiff::Timestamp::now();
    let chain = env
        .ca
        .sign_csr(
            &csr.request,
            now - jiff::SignedDuration::from_hours(1),
            now + jiff::SignedDuration::from_hours(24 * 90),
        )
        .unwrap();
    env.put_secret("idp-tls", [("tls.crt".to_string(), chain.clone())].into())
        .await;
    let t = env.wait_ready("idp").await;
    assert_eq!(
        t.status.unwrap().fingerprint.as_deref(),
        Some(fingerprint(&chain).as_str())
    );
    let calls = env.tenant_calls();
    println!(
        "Tenant apply→Ready tenant calls ({}): {}",
        calls.len(),
        summarize(&calls)
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("POST /environment/csrs"))
            .count(),
        1
    );
    assert_eq!(env.chain_uploads(), 1);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_never_leaves_the_domain_without_a_live_certificate() {
    let env = Env::start(sim_config()).await;
    let first = env
        .ready_local(
            "login",
            &["login.example.com"],
            "  revisionHistoryLimit: 0\n",
        )
        .await;

    // Watch the tenant while cert-manager "renews" the Secret.
    let sim = env.aic.clone();
    let watcher = tokio::spawn(async move {
        let mut gaps = 0;
        for _ in 0..400 {
            if !sim
                .certificates()
                .iter()
                .any(|c| !c.created_by_support && !c.deleted && c.live)
            {
                gaps += 1;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        gaps
    });
    let (chain2, key2) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain2, &key2).await;
    let fp2 = fingerprint(&chain2);
    let t = env
        .wait_for("login", 30, "rotated and old one deleted", |t| {
            let s = t.status.as_ref().unwrap();
            s.fingerprint.as_deref() == Some(fp2.as_str())
                && s.previous_certificate_ids.is_empty()
                && is_ready(t)
        })
        .await;
    let second = t.status.unwrap().certificate_id.unwrap();
    assert_ne!(first, second);
    assert!(
        env.aic
            .certificates()
            .iter()
            .all(|c| c.id != first || c.deleted),
        "old certificate deleted"
    );
    assert_eq!(
        watcher.await.unwrap(),
        0,
        "the domain was without a live certificate of ours"
    );
    env.wait_event("login", "Normal", "Deactivated").await;
    env.wait_event("login", "Normal", "Deleted").await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_annotation_rotates_once_per_value() {
    let env = Env::start(sim_config()).await;
    let first = env.ready_local("login", &["login.example.com"], "").await;
    let patch = serde_json::json!({"metadata": {"annotations": {"certrotor.io/renew": "1"}}});
    env.tcerts()
        .patch("login", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let t = env
        .wait_for("login", 30, "renewed", |t| {
            let s = t.status.as_ref().unwrap();
            s.certificate_id.as_deref() != Some(first.as_str())
                && is_ready(t)
                && s.last_renew_request.as_deref() == Some("1")
        })
        .await;
    let s = t.status.unwrap();
    assert_eq!(
        s.previous_certificate_ids,
        std::slice::from_ref(&first),
        "history of one kept"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let uploads = env
        .tenant_calls()
        .iter()
        .filter(|c| c.starts_with("POST /environment/certificates"))
        .count();
    assert_eq!(uploads, 2, "one upload per renew value");
    env.shutdown().await;
}

fn ours_in_tenant(env: &Env) -> Vec<String> {
    env.aic
        .certificates()
        .into_iter()
        .filter(|c| !c.created_by_support && !c.deleted)
        .map(|c| c.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_upload_answer_is_adopted_after_a_crash_not_duplicated() {
    let mut env = Env::new(sim_config()).await;
    // A backoff long enough for the test to see the failure and crash the process before the
    // retry; the next process honours what is left of it.
    let mut options = fast_options();
    options.failure_backoff_base = Duration::from_secs(3);
    options.failure_backoff_max = Duration::from_secs(4);
    env.start_operator_with(options);
    // The upload takes effect; its answer is lost. Then the process dies before retrying.
    env.aic.knobs().set_lose_creates_next(1);
    let (chain, key) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain, &key).await;
    env.apply(&with_url(&local_yaml("login", "login-tls", ""), &env))
        .await;
    // The upload took effect (its answer lost): crash now. (A reconcile already queued may have
    // adopted it in the meantime; then the restart has nothing left to adopt, which is fine.)
    for _ in 0..400 {
        if ours_in_tenant(&env).len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.kill_operator().await;
    let uploaded = ours_in_tenant(&env);
    assert_eq!(uploaded.len(), 1);
    let status = env.get("login").await.status.unwrap_or_default();
    if status.certificate_id.is_none() && status.pending.is_none() {
        let intent = status
            .intent
            .expect("the intent was written before the call");
        assert_eq!(
            intent.fingerprint.as_deref(),
            Some(fingerprint(&chain).as_str())
        );
    }

    env.start_operator();
    let t = env.wait_ready("login").await;
    let status = t.status.unwrap();
    assert_eq!(status.certificate_id.as_deref(), Some(uploaded[0].as_str()));
    assert_eq!(status.intent, None, "done with");
    assert_eq!(ours_in_tenant(&env), uploaded, "no duplicate upload");
    env.wait_event("login", "Normal", "Adopted").await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_certificate_that_existed_before_is_never_adopted() {
    let mut env = Env::new(sim_config()).await;
    let (chain, key) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain, &key).await;
    // The same chain, uploaded and made live before this resource existed: by the vendor's
    // support team, or by this resource's twin in another cluster.
    let client = sim_client(&env);
    let key8 = certrotor::pki::private_key_to_pkcs8_pem(&key).unwrap();
    let foreign = client
        .create_certificate(&chain, &key8, true)
        .await
        .unwrap();
    env.apply(&with_url(
        &local_yaml(
            "login",
            "login-tls",
            "  deletionPolicy: Delete\n  revisionHistoryLimit: 0\n",
        ),
        &env,
    ))
    .await;
    env.start_operator();
    let t = env.wait_ready("login").await;
    let ours = t.status.unwrap().certificate_id.unwrap();
    assert_ne!(ours, foreign.id, "its own upload, not the look-alike");
    // Deleting the resource removes its own certificate only.
    env.delete("login").await;
    env.wait_gone("login", 30).await;
    assert_eq!(ours_in_tenant(&env), vec![foreign.id.clone()]);
    let kept = env
        .aic
        .certificates()
        .into_iter()
        .find(|c| c.id == foreign.id)
        .unwrap();
    assert!(kept.active && kept.live, "never touched");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_csr_answer_is_adopted_and_a_foreign_csr_is_not() {
    let mut env = Env::new(sim_config()).await;
    let yaml = with_url(
        &tenant_yaml(
            "idp",
            "{commonName: idp.example.com, subjectAlternativeNames: [idp.example.com]}",
            "",
        ),
        &env,
    );
    env.apply(&yaml).await;
    // Someone made the same CSR by hand before.
    let client = sim_client(&env);
    let spec = env.get("idp").await.spec.csr.unwrap();
    let foreign = client.create_csr(&(&spec).into()).await.unwrap();
    // Ours is made, but its answer is lost.
    env.aic.knobs().set_lose_creates_next(1);
    env.start_operator();
    let t = env
        .wait_for("idp", 20, "CSR recorded", |t| {
            t.status.as_ref().is_some_and(|s| s.csr.is_some())
        })
        .await;
    let csr = t.status.unwrap().csr.unwrap().id;
    assert_ne!(csr, foreign.id, "the look-alike is not adopted");
    let live: Vec<_> = env.aic.csrs().into_iter().filter(|c| !c.deleted).collect();
    assert_eq!(
        live.len(),
        2,
        "the hand-made one and ours; no third: {live:?}"
    );
    assert!(live.iter().any(|c| c.id == csr));
    env.wait_event("idp", "Normal", "Adopted").await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_resources_with_the_same_chain_each_own_their_certificate() {
    let env = Env::start(sim_config()).await;
    let (chain, key) = env.issue(&["login.example.com"], 90);
    env.put_tls("old-tls", &chain, &key).await;
    env.put_tls("new-tls", &chain, &key).await;
    // A migration: the same certificate managed from two places.
    env.apply(&with_url(
        &local_yaml(
            "old",
            "old-tls",
            "  deletionPolicy: Delete\n  revisionHistoryLimit: 0\n",
        ),
        &env,
    ))
    .await;
    let old = env
        .wait_ready("old")
        .await
        .status
        .unwrap()
        .certificate_id
        .unwrap();
    env.apply(&with_url(
        &local_yaml(
            "new",
            "new-tls",
            "  deletionPolicy: Delete\n  revisionHistoryLimit: 0\n",
        ),
        &env,
    ))
    .await;
    let new = env
        .wait_ready("new")
        .await
        .status
        .unwrap()
        .certificate_id
        .unwrap();
    assert_ne!(old, new, "each its own id");

    let sim = env.aic.clone();
    let new_id = new.clone();
    let watcher = tokio::spawn(async move {
        let mut gaps = 0;
        for _ in 0..120 {
            if !sim
                .certificates()
                .iter()
                .any(|c| c.id == new_id && !c.deleted && c.live)
            {
                gaps += 1;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        gaps
    });
    env.delete("old").await;
    env.wait_gone("old", 30).await;
    assert_eq!(
        watcher.await.unwrap(),
        0,
        "the other's certificate stayed live throughout"
    );
    assert_eq!(ours_in_tenant(&env), vec![new]);
    let t = env.get("new").await;
    assert!(is_ready(&t));
    env.shutdown().await;
}

async fn ready_then_delete(policy: &str) -> (Env, String) {
    let env = Env::start(sim_config()).await;
    let (chain, key) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain, &key).await;
    env.apply(&with_url(
        &local_yaml(
            "login",
            "login-tls",
            &format!("  deletionPolicy: {policy}\n"),
        ),
        &env,
    ))
    .await;
    let id = env
        .wait_ready("login")
        .await
        .status
        .unwrap()
        .certificate_id
        .unwrap();
    env.delete("login").await;
    env.wait_gone("login", 30).await;
    (env, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_retain_leaves_the_certificate_live() {
    let (env, id) = ready_then_delete("Retain").await;
    let c = env
        .aic
        .certificates()
        .into_iter()
        .find(|c| c.id == id && !c.deleted)
        .expect("kept");
    assert!(c.active && c.live);
    env.shutdown().await;
}

/// Retain has nothing to clean up: no finalizer, so deleting never waits on certrotor (here it
/// is stopped). A policy that cleans up gets the finalizer, and loses it again when the policy
/// goes back to Retain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_policy_that_cleans_up_holds_a_finalizer() {
    let mut env = Env::start(sim_config()).await;
    let has_finalizer = |t: &TenantCertificate| {
        t.finalizers()
            .iter()
            .any(|f| f == certrotor::api::FINALIZER)
    };
    env.ready_local("kept", &["kept.example.com"], "").await;
    assert!(
        !has_finalizer(&env.get("kept").await),
        "Retain (the default): none"
    );

    let policy = |p: &str| serde_json::json!({"spec": {"deletionPolicy": p}});
    let patch = |p: &str| {
        let api = env.tcerts();
        let body = policy(p);
        async move {
            api.patch("kept", &PatchParams::default(), &Patch::Merge(&body))
                .await
                .unwrap();
        }
    };
    patch("Delete").await;
    env.wait_for("kept", 30, "the finalizer", has_finalizer)
        .await;
    patch("Retain").await;
    env.wait_for("kept", 30, "no finalizer", |t| !has_finalizer(t))
        .await;

    // With the operator stopped, a Retain resource goes at once and its certificate stays.
    let id = env
        .get("kept")
        .await
        .status
        .unwrap()
        .certificate_id
        .unwrap();
    env.kill_operator().await;
    env.delete("kept").await;
    env.wait_gone("kept", 5).await;
    assert!(
        env.aic
            .certificates()
            .iter()
            .any(|c| c.id == id && c.live && !c.deleted)
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_deactivate_leaves_it_inactive() {
    let (env, id) = ready_then_delete("Deactivate").await;
    let c = env
        .aic
        .certificates()
        .into_iter()
        .find(|c| c.id == id && !c.deleted)
        .expect("kept");
    assert!(!c.active);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_delete_removes_it_riding_out_the_500_window() {
    let (env, id) = ready_then_delete("Delete").await;
    assert!(
        env.aic
            .certificates()
            .iter()
            .all(|c| c.id != id || c.deleted),
        "deleted"
    );
    assert!(
        env.aic.certificates().iter().any(|c| c.created_by_support),
        "support's certificate untouched"
    );
    env.shutdown().await;
}

/// Bad input: Stalled with a reason, a Warning event, and not one tenant call.
async fn assert_stalls_without_tenant_calls(env: &Env, name: &str, reason: &str) {
    let t = env
        .wait_for(name, 20, reason, |t| stalled_reason(t).is_some())
        .await;
    assert_eq!(stalled_reason(&t).as_deref(), Some(reason));
    assert_eq!(condition(&t, "Ready").unwrap().0, "False");
    env.wait_event(name, "Warning", reason).await;
    assert!(
        env.tenant_calls().is_empty(),
        "tenant calls made: {:?}",
        env.tenant_calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_local_input_stalls_without_tenant_calls() {
    let env = Env::start(sim_config()).await;
    let (chain, key) = env.issue(&["a.example.com"], 90);
    let (other_chain, other_key) = env.issue(&["b.example.com"], 90);
    let now = jiff::Timestamp::now();
    let (expired, expired_key) = env
        .ca
        .issue(
            "old.example.com",
            &["old.example.com"],
            now - jiff::SignedDuration::from_hours(48),
            now - jiff::SignedDuration::from_hours(1),
            certrotor::pki::KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
    let (wild, wild_key) = env
        .ca
        .issue(
            "wild",
            &["*.example.com"],
            now - jiff::SignedDuration::from_hours(1),
            now + jiff::SignedDuration::from_hours(100),
            certrotor::pki::KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
    let leaf_last = {
        let blocks: Vec<&str> = chain
            .split_inclusive("-----END CERTIFICATE-----\n")
            .collect();
        blocks
            .iter()
            .rev()
            .map(|s| s.to_string())
            .collect::<String>()
    };
    /// (name, Secret's tls.crt and tls.key if the Secret exists, expected reason)
    type Case<'a> = (&'a str, Option<(String, Option<String>)>, &'a str);
    let cases: Vec<Case> = vec![
        ("missing-secret", None, "SecretNotFound"),
        ("missing-key", Some((chain.clone(), None)), "MissingKey"),
        (
            "invalid-pem",
            Some((
                "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".into(),
                Some(key.clone()),
            )),
            "InvalidPem",
        ),
        (
            "key-mismatch",
            Some((chain.clone(), Some(other_key.clone()))),
            "KeyMismatch",
        ),
        (
            "leaf-not-first",
            Some((leaf_last, Some(key.clone()))),
            "LeafNotFirst",
        ),
        (
            "expired",
            Some((expired, Some(expired_key))),
            "CertificateExpired",
        ),
        (
            "wildcard",
            Some((wild, Some(wild_key))),
            "WildcardSubjectAlternativeName",
        ),
    ];
    let _ = other_chain;
    for (name, secret, reason) in cases {
        if let Some((crt, key)) = secret {
            let mut data = std::collections::BTreeMap::from([("tls.crt".to_string(), crt)]);
            if let Some(k) = key {
                data.insert("tls.key".into(), k);
            }
            env.put_secret(&format!("{name}-tls"), data).await;
        }
        env.apply(&with_url(
            &local_yaml(name, &format!("{name}-tls"), ""),
            &env,
        ))
        .await;
        assert_stalls_without_tenant_calls(&env, name, reason).await;
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_csr_stalls_without_tenant_calls() {
    // A current API server refuses it at apply time, with the CRD rule's message...
    let env = Env::start(sim_config()).await;
    let yaml = with_url(
        &tenant_yaml(
            "wild",
            "{commonName: login.example.com, subjectAlternativeNames: ['*.example.com']}",
            "",
        ),
        &env,
    );
    let obj: TenantCertificate = serde_saphyr::from_str(&yaml).unwrap();
    match env.tcerts().create(&PostParams::default(), &obj).await {
        Err(kube::Error::Api(s)) => assert!(
            s.message.ends_with("spec.csr.subjectAlternativeNames: Invalid value: \"array\": wildcard subjectAlternativeNames are rejected by the tenant"),
            "{}",
            s.message
        ),
        other => panic!("a wildcard SAN must be refused at apply: {other:?}"),
    }
    env.shutdown().await;
    // ...and on a server without CEL rules (before 1.25) the operator refuses it itself.
    let mut env = Env::new_with(
        sim_config(),
        certrotor::sim::kube::Options {
            validation_rules: false,
            ..Default::default()
        },
    )
    .await;
    env.start_operator();
    env.apply(&yaml).await;
    assert_stalls_without_tenant_calls(&env, "wild", "WildcardSubjectAlternativeName").await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_not_matching_the_csr_stalls_before_upload() {
    let env = Env::start(sim_config()).await;
    let yaml = with_url(
        &tenant_yaml(
            "idp",
            "{commonName: idp.example.com, subjectAlternativeNames: [idp.example.com]}",
            "",
        ),
        &env,
    );
    env.apply(&yaml).await;
    env.wait_for("idp", 20, "CSR", |t| {
        t.status.as_ref().is_some_and(|s| s.csr.is_some())
    })
    .await;
    let (chain, _) = env.issue(&["idp.example.com"], 90);
    env.put_secret("idp-tls", [("tls.crt".to_string(), chain)].into())
        .await;
    let t = env
        .wait_for("idp", 20, "stalled", |t| stalled_reason(t).is_some())
        .await;
    assert_eq!(stalled_reason(&t).as_deref(), Some("ChainDoesNotMatchCsr"));
    assert_eq!(env.chain_uploads(), 0, "chain not uploaded");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_missing_a_requested_name_stalls_before_upload() {
    let env = Env::start(sim_config()).await;
    let yaml = with_url(
        &tenant_yaml(
            "idp",
            "{commonName: idp.example.com, subjectAlternativeNames: [idp.example.com, sso.example.com]}",
            "",
        ),
        &env,
    );
    env.apply(&yaml).await;
    let t = env
        .wait_for("idp", 20, "CSR", |t| {
            t.status.as_ref().is_some_and(|s| s.csr.is_some())
        })
        .await;
    let csr = t.status.unwrap().csr.unwrap();
    // The CA signs the tenant's key, but its policy dropped one of the names.
    let now = jiff::Timestamp::now();
    let chain = env
        .ca
        .sign_csr_naming(
            &csr.request,
            Some(&["idp.example.com"]),
            now - jiff::SignedDuration::from_hours(1),
            now + jiff::SignedDuration::from_hours(24 * 90),
        )
        .unwrap();
    env.put_secret("idp-tls", [("tls.crt".to_string(), chain)].into())
        .await;
    let t = env
        .wait_for("idp", 20, "stalled", |t| stalled_reason(t).is_some())
        .await;
    assert_eq!(stalled_reason(&t).as_deref(), Some("ChainDoesNotCoverCsr"));
    let status = t.status.as_ref().unwrap();
    let stalled = certrotor::api::condition(&status.conditions, "Stalled").unwrap();
    assert!(
        stalled.message.contains("sso.example.com"),
        "{}",
        stalled.message
    );
    assert_eq!(env.chain_uploads(), 0, "chain not uploaded");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_resource_makes_no_tenant_calls() {
    let env = Env::start(sim_config()).await;
    let (chain, key) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain, &key).await;
    let yaml = with_url(&local_yaml("login", "login-tls", ""), &env).replace(
        "metadata: {name: login, namespace: default}",
        "metadata: {name: login, namespace: default, annotations: {certrotor.io/paused: 'true'}}",
    );
    env.apply(&yaml).await;
    let t = env
        .wait_for("login", 20, "Paused", |t| {
            condition(t, "Ready").is_some_and(|(_, r)| r == "Paused")
        })
        .await;
    assert!(!is_ready(&t));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.tenant_calls().is_empty());
    // Unpause: it proceeds.
    let patch = serde_json::json!({"metadata": {"annotations": {"certrotor.io/paused": null}}});
    env.tcerts()
        .patch("login", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    env.wait_ready("login").await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_certificate_is_never_touched() {
    let env = Env::start(sim_config()).await;
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
    env.delete("login").await;
    env.wait_gone("login", 30).await;
    let support: Vec<_> = env
        .aic
        .certificates()
        .into_iter()
        .filter(|c| c.created_by_support)
        .collect();
    assert_eq!(support.len(), 1);
    assert!(support[0].active && support[0].live);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_resource_is_quiet_one_event_per_change() {
    let env = Env::start(sim_config()).await;
    let (chain, key) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain, &key).await;
    env.apply(&with_url(&local_yaml("login", "login-tls", ""), &env))
        .await;
    env.wait_ready("login").await;
    let writes = env
        .standin
        .stats()
        .writes_to("tenantcertificates.certrotor.io");
    let calls = env.tenant_calls().len();
    // Unrelated changes to the referenced Secret's metadata reconcile, but change nothing.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(env.client.clone(), NS);
    let patch = serde_json::json!({"metadata": {"labels": {"team": "identity"}}});
    secrets
        .patch("login-tls", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.standin
            .stats()
            .writes_to("tenantcertificates.certrotor.io"),
        writes,
        "no status write when nothing changed"
    );
    assert!(
        env.tenant_calls().len() <= calls + 1,
        "at most one look at the tenant"
    );
    let events = env.events("login").await;
    let mut reasons: Vec<_> = events.iter().map(|(_, r)| r.clone()).collect();
    reasons.dedup();
    assert_eq!(
        reasons.len(),
        events.len(),
        "one Event per state change: {events:?}"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_mode_starts_a_new_csr_when_renewal_is_due_and_rotates() {
    let env = Env::start(sim_config()).await;
    let yaml = with_url(
        &tenant_yaml(
            "idp",
            "{commonName: idp.example.com, subjectAlternativeNames: [idp.example.com], algorithm: ecdsa}",
            "  renewBefore: 20s\n  revisionHistoryLimit: 0\n",
        ),
        &env,
    );
    env.apply(&yaml).await;
    let sign = |request: &str| {
        let now = jiff::Timestamp::now();
        env.ca
            .sign_csr(
                request,
                now - jiff::SignedDuration::from_secs(5),
                now + jiff::SignedDuration::from_secs(25),
            )
            .unwrap()
    };
    let t = env
        .wait_for("idp", 20, "CSR", |t| {
            t.status.as_ref().is_some_and(|s| s.csr.is_some())
        })
        .await;
    let first_csr = t.status.unwrap().csr.unwrap();
    env.put_secret(
        "idp-tls",
        [("tls.crt".to_string(), sign(&first_csr.request))].into(),
    )
    .await;
    let t = env.wait_ready("idp").await;
    let first_id = t.status.as_ref().unwrap().certificate_id.clone().unwrap();
    assert!(t.status.unwrap().renewal_time.is_some());

    // 25 s lifetime, renewBefore 20 s: a new CSR about 5 s after issue, while the first stays live.
    let t = env
        .wait_for("idp", 20, "renewal CSR", |t| {
            t.status
                .as_ref()
                .and_then(|s| s.csr.as_ref())
                .is_some_and(|c| c.id != first_csr.id)
        })
        .await;
    assert!(
        is_ready(&t),
        "still Ready on the old certificate while the new CSR waits"
    );
    assert_eq!(
        t.status.as_ref().unwrap().pending.as_ref().unwrap().reason,
        "Renewal"
    );
    let second_csr = t.status.unwrap().csr.unwrap();
    env.put_secret(
        "idp-tls",
        [("tls.crt".to_string(), sign(&second_csr.request))].into(),
    )
    .await;
    let t = env
        .wait_for("idp", 20, "rotated", |t| {
            t.status.as_ref().is_some_and(|s| {
                s.certificate_id.as_deref() != Some(first_id.as_str())
                    && s.previous_certificate_ids.is_empty()
            }) && is_ready(t)
        })
        .await;
    assert!(
        env.aic
            .certificates()
            .iter()
            .any(|c| c.id == first_id && c.deleted),
        "old one deleted"
    );
    assert!(t.status.unwrap().pending.is_none());
    env.shutdown().await;
}

/// A tenant that answers 429 beyond 8 requests per second, and a fleet on it. With the
/// operator's per-tenant limit below the tenant's, the tenant never has to say 429; without
/// it, the tenant does, and every certificate still gets Ready (Retry-After honoured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_rate_limit_keeps_a_fleet_under_the_tenants_limit() {
    for (operator_limit, expect_429) in [(6.0, false), (0.0, true)] {
        let mut env = Env::new(AicSimConfig {
            rate_limit: Some(8.0),
            ..sim_config()
        })
        .await;
        env.start_operator_with(Options {
            tenant_rate_limit: operator_limit,
            ..fast_options()
        });
        let names: Vec<String> = (0..12).map(|i| format!("fleet-{i}")).collect();
        for name in &names {
            let (chain, key) = env.issue(&[&format!("{name}.example.com")], 90);
            env.put_tls(&format!("{name}-tls"), &chain, &key).await;
            env.apply(&with_url(
                &local_yaml(name, &format!("{name}-tls"), ""),
                &env,
            ))
            .await;
        }
        for name in &names {
            let t = env.wait_for(name, 90, "Ready=True", is_ready).await;
            let status = t.status.unwrap();
            assert!(
                !certrotor::api::is_true(&status.conditions, certrotor::api::STALLED),
                "{name}"
            );
        }
        let answered_429 = env.aic.calls().iter().filter(|c| c.status == 429).count();
        let calls = env.aic.calls().len();
        println!(
            "operator limit {operator_limit}/s against a tenant limited to 8/s: {calls} calls, {answered_429} answered 429"
        );
        if expect_429 {
            assert!(answered_429 > 0, "the tenant's limit was never reached");
        } else {
            assert_eq!(
                answered_429, 0,
                "the operator stayed under the tenant's limit"
            );
        }
        env.shutdown().await;
    }
}

/// A restart of a settled fleet costs nothing: no tenant call and no Kubernetes write until the
/// shared resync tick; a change made after it is still acted on at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_of_a_settled_fleet_makes_no_calls_and_no_writes() {
    let mut env = Env::start(sim_config()).await;
    let names: Vec<String> = (0..6).map(|i| format!("settled-{i}")).collect();
    for name in &names {
        let (chain, key) = env.issue(&[&format!("{name}.example.com")], 90);
        env.put_tls(&format!("{name}-tls"), &chain, &key).await;
        env.apply(&with_url(
            &local_yaml(name, &format!("{name}-tls"), ""),
            &env,
        ))
        .await;
    }
    for name in &names {
        env.wait_for(name, 30, "Ready and settled", |t| {
            t.status.as_ref().is_some_and(|s| {
                certrotor::api::is_true(&s.conditions, certrotor::api::READY)
                    && !certrotor::api::is_true(&s.conditions, certrotor::api::RECONCILING)
            })
        })
        .await;
    }
    env.kill_operator().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls_before = env.aic.calls().len();
    let writes_before = env.standin.stats().writes();
    env.start_operator();
    // Every resource is reconciled once at start; none of them calls the tenant or writes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.aic.calls().len(),
        calls_before,
        "no tenant call: {:?}",
        &env.aic.calls()[calls_before..]
    );
    assert_eq!(env.standin.stats().writes(), writes_before, "no write");
    // Not asleep: a renewed Secret is installed at once.
    let (chain, key) = env.issue(&["settled-0.example.com"], 90);
    env.put_tls("settled-0-tls", &chain, &key).await;
    let renewed = fingerprint(&chain);
    env.wait_for("settled-0", 30, "the renewed certificate installed", |t| {
        t.status.as_ref().is_some_and(|s| {
            s.fingerprint.as_deref() == Some(renewed.as_str()) && s.pending.is_none()
        })
    })
    .await;
    env.shutdown().await;
}

fn sim_client(env: &Env) -> AicClient {
    let creds: std::collections::BTreeMap<String, Vec<u8>> = env
        .aic
        .credentials_secret_data()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    AicClient::new(
        &env.aic.url(),
        Credentials::from_secret_data(&creds).unwrap(),
        None,
        ClientOptions::default(),
    )
    .unwrap()
}

/// Deleting the old certificate right after it stops being live meets the tenant's empty-500
/// window: an expected wait, so no Warning and no failure count; the old one goes once the
/// window closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_empty_500_window_after_deactivation_is_a_quiet_wait() {
    let env = Env::start(AicSimConfig {
        delete_500_window: Duration::from_millis(1500),
        ..sim_config()
    })
    .await;
    let first = env
        .ready_local(
            "quiet",
            &["quiet.example.com"],
            "  revisionHistoryLimit: 0\n",
        )
        .await;
    let (chain2, key2) = env.issue(&["quiet.example.com"], 90);
    env.put_tls("quiet-tls", &chain2, &key2).await;
    env.wait_for("quiet", 30, "old certificate deleted", |t| {
        t.status.as_ref().is_some_and(|s| {
            s.certificate_id.as_deref() != Some(first.as_str())
                && s.previous_certificate_ids.is_empty()
        })
    })
    .await;
    assert!(
        env.aic
            .certificates()
            .iter()
            .any(|c| c.id == first && c.deleted),
        "the old certificate is deleted"
    );
    let refused = env
        .aic
        .calls()
        .iter()
        .filter(|c| c.route == "DELETE /environment/certificates/{id}" && c.status == 500)
        .count();
    assert!(refused > 0, "the test met the 500 window");
    let events = env.events("quiet").await;
    assert!(
        events.iter().all(|(t, _)| t == "Normal"),
        "no Warning for an expected wait: {events:?}"
    );
    let t = env.get("quiet").await;
    assert_eq!(t.status.unwrap().failures, None, "not counted as a failure");
    env.shutdown().await;
}

/// A CSR someone deleted in the tenant (or whose DELETE answer was lost) is gone: deleting the
/// resource with `deletionPolicy: Delete` succeeds instead of holding the finalizer for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_already_gone_does_not_hold_the_finalizer() {
    let env = Env::start(sim_config()).await;
    let yaml = with_url(
        &tenant_yaml(
            "gone",
            "{commonName: gone.example.com, subjectAlternativeNames: [gone.example.com]}",
            "  deletionPolicy: Delete\n",
        ),
        &env,
    );
    env.apply(&yaml).await;
    let t = env
        .wait_for("gone", 20, "CSR", |t| {
            t.status
                .as_ref()
                .and_then(|s| s.pending.as_ref())
                .and_then(|p| p.csr.as_ref())
                .is_some()
        })
        .await;
    let csr = t.status.unwrap().pending.unwrap().csr.unwrap().id;
    sim_client(&env).delete_csr(&csr).await.unwrap();
    env.delete("gone").await;
    env.wait_gone("gone", 20).await;
    env.shutdown().await;
}

/// A list that lags behind the tenant (it leaves out our certificate) does not make the
/// operator forget its certificate and upload another: it asks for the id, and keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_list_never_makes_a_certificate_vanish() {
    let env = Env::start(sim_config()).await;
    let id = env.ready_local("lag", &["lag.example.com"], "").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.aic.knobs().set_lists_lag_next(5);
    let calls_before = env.aic.calls().len();
    // Touch the source Secret (same certificate): a reconcile that must look at the tenant.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(env.client.clone(), NS);
    let touch = serde_json::json!({"metadata": {"labels": {"touched": "yes"}}});
    secrets
        .patch("lag-tls", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !env.aic.calls()[calls_before..]
        .iter()
        .any(|c| c.route == "GET /environment/certificates")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no list after the touch"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ours: Vec<_> = env
        .aic
        .certificates()
        .into_iter()
        .filter(|c| !c.created_by_support && !c.deleted)
        .collect();
    assert_eq!(ours.len(), 1, "no second upload: {ours:?}");
    let t = env.get("lag").await;
    assert_eq!(
        t.status.unwrap().certificate_id.as_deref(),
        Some(id.as_str())
    );
    assert!(
        env.aic.calls()[calls_before..]
            .iter()
            .any(|c| c.route == "GET /environment/certificates/{id}"),
        "confirmed by id"
    );
    env.shutdown().await;
}

/// A 400 the tenant would give again (it refuses the chain) is `Stalled` with the tenant's
/// message and not sent again until the Secret, the spec or the renew request changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_is_not_retried_until_something_changes() {
    let env = Env::start(sim_config()).await;
    env.aic.knobs().set_reject_uploads_next(2);
    let (chain, key) = env.issue(&["refused.example.com"], 90);
    env.put_tls("refused-tls", &chain, &key).await;
    env.apply(&with_url(&local_yaml("refused", "refused-tls", ""), &env))
        .await;
    let uploads = |env: &Env| {
        env.aic
            .calls()
            .iter()
            .filter(|c| c.route == "POST /environment/certificates")
            .count()
    };
    let t = env
        .wait_for("refused", 20, "Stalled", |t| stalled_reason(t).is_some())
        .await;
    assert_eq!(stalled_reason(&t).as_deref(), Some("TenantRejected"));
    let message = t
        .status
        .as_ref()
        .and_then(|s| certrotor::api::condition(&s.conditions, "Stalled"))
        .map(|c| c.message.clone())
        .unwrap();
    assert!(message.contains("Invalid certificate chain"), "{message}");
    env.wait_event("refused", "Warning", "TenantRejected").await;
    // Reconciles come and go (the Secret is touched); the refused upload is not sent again.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(env.client.clone(), NS);
    let touch = serde_json::json!({"metadata": {"labels": {"touched": "yes"}}});
    secrets
        .patch(
            "refused-tls",
            &PatchParams::default(),
            &Patch::Merge(&touch),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(uploads(&env), 1, "one refused upload, not one per backoff");
    // A renew request is a new try (refused once more), a new certificate in the Secret another.
    let renew =
        serde_json::json!({"metadata": {"annotations": {"certrotor.io/renew": "try-again"}}});
    env.tcerts()
        .patch("refused", &PatchParams::default(), &Patch::Merge(&renew))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while uploads(&env) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renew request was not a new try"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(uploads(&env), 2);
    let (chain2, key2) = env.issue(&["refused.example.com"], 90);
    env.put_tls("refused-tls", &chain2, &key2).await;
    env.wait_ready("refused").await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_never_goes_live_stalls_and_a_newer_secret_supersedes_it() {
    let mut env = Env::new(sim_config()).await;
    let mut options = fast_options();
    options.poll.live_timeout = Duration::from_secs(2);
    env.start_operator_with(options);
    let first = env.ready_local("login", &["login.example.com"], "").await;

    // The tenant stops making certificates live.
    env.aic.knobs().set_live_delay(Duration::from_secs(3600));
    let (chain2, key2) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain2, &key2).await;
    let t = env
        .wait_for("login", 20, "LiveTimeout", |t| {
            stalled_reason(t).as_deref() == Some("LiveTimeout")
        })
        .await;
    let wedged = t
        .status
        .as_ref()
        .unwrap()
        .pending
        .clone()
        .unwrap()
        .certificate_id
        .unwrap();
    assert!(
        is_ready(&t),
        "the first certificate is still live and in use"
    );
    assert_eq!(
        t.status.as_ref().unwrap().certificate_id.as_deref(),
        Some(first.as_str())
    );
    env.wait_event("login", "Warning", "LiveTimeout").await;

    // The tenant recovers, and a newer Secret supersedes the wedged certificate: it is taken
    // out of the tenant, not left behind, and the newest one is rolled in.
    env.aic.knobs().set_live_delay(Duration::from_millis(200));
    let (chain3, key3) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain3, &key3).await;
    let fp3 = fingerprint(&chain3);
    let t = env
        .wait_for("login", 30, "rotated to the newest Secret", |t| {
            t.status.as_ref().unwrap().fingerprint.as_deref() == Some(fp3.as_str()) && is_ready(t)
        })
        .await;
    let sim_wedged = env
        .aic
        .certificates()
        .into_iter()
        .find(|c| c.id == wedged)
        .unwrap();
    assert!(sim_wedged.deleted, "the superseded certificate is deleted");
    assert!(
        !t.status
            .as_ref()
            .unwrap()
            .previous_certificate_ids
            .contains(&wedged),
        "and forgotten"
    );
    env.wait_event("login", "Normal", "Superseded").await;
    assert_eq!(stalled_reason(&t), None);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_spec_change_rotates_and_observed_generation_waits_for_it() {
    let env = Env::start(sim_config()).await;
    let yaml = with_url(
        &tenant_yaml(
            "idp",
            "{commonName: idp.example.com, subjectAlternativeNames: [idp.example.com]}",
            "",
        ),
        &env,
    );
    env.apply(&yaml).await;
    let sign = |request: &str| {
        let now = jiff::Timestamp::now();
        env.ca
            .sign_csr(
                request,
                now - jiff::SignedDuration::from_hours(1),
                now + jiff::SignedDuration::from_hours(24 * 90),
            )
            .unwrap()
    };
    let t = env
        .wait_for("idp", 20, "CSR", |t| {
            t.status.as_ref().is_some_and(|s| s.csr.is_some())
        })
        .await;
    let chain = sign(&t.status.unwrap().csr.unwrap().request);
    env.put_secret("idp-tls", [("tls.crt".to_string(), chain)].into())
        .await;
    let t = env.wait_ready("idp").await;
    let generation = t.metadata.generation.unwrap();
    assert_eq!(
        t.status.as_ref().unwrap().observed_generation,
        Some(generation)
    );
    let first_csr = t.status.unwrap().csr.unwrap().id;

    // The SANs change: a new CSR that asks for them, while the old certificate stays live.
    let patch = serde_json::json!({"spec": {"csr": {"subjectAlternativeNames": ["idp.example.com", "sso.example.com"]}}});
    env.tcerts()
        .patch("idp", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let t = env
        .wait_for("idp", 20, "a new CSR", |t| {
            t.status
                .as_ref()
                .and_then(|s| s.csr.as_ref())
                .is_some_and(|c| c.id != first_csr)
        })
        .await;
    let status = t.status.clone().unwrap();
    assert_eq!(status.pending.as_ref().unwrap().reason, "SpecChanged");
    assert!(is_ready(&t), "the old certificate is still live");
    assert_eq!(
        status.observed_generation,
        Some(generation),
        "not observed until a certificate reflects it"
    );
    let ready = certrotor::api::condition(&status.conditions, "Ready").unwrap();
    assert_eq!(ready.observed_generation, Some(generation));
    let info = certrotor::pki::csr_info(&status.csr.as_ref().unwrap().request).unwrap();
    assert!(
        info.subject_alternative_names
            .contains(&"sso.example.com".to_string())
    );

    let chain = sign(&status.csr.unwrap().request);
    env.put_secret("idp-tls", [("tls.crt".to_string(), chain.clone())].into())
        .await;
    let t = env
        .wait_for("idp", 30, "rotated", |t| {
            t.status.as_ref().unwrap().fingerprint.as_deref() == Some(fingerprint(&chain).as_str())
                && is_ready(t)
        })
        .await;
    let status = t.status.unwrap();
    assert_eq!(status.observed_generation, t.metadata.generation);
    assert!(
        status
            .subject_alternative_names
            .contains(&"sso.example.com".to_string())
    );
    env.shutdown().await;
}

async fn delete_secret(env: &Env, name: &str) {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(env.client.clone(), NS);
    secrets.delete(name, &Default::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_teardown_cleans_up_with_the_cached_token() {
    let env = Env::start(sim_config()).await;
    let id = env
        .ready_local(
            "login",
            &["login.example.com"],
            "  deletionPolicy: Delete\n",
        )
        .await;
    // The credentials go first, as in a namespace teardown; then the resource.
    delete_secret(&env, "aic-creds").await;
    env.delete("login").await;
    env.wait_gone("login", 30).await;
    assert!(
        env.aic
            .certificates()
            .iter()
            .all(|c| c.id != id || c.deleted),
        "cleaned up with the token still held"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_without_credentials_or_token_is_released_after_the_timeout() {
    let mut env = Env::start(sim_config()).await;
    let id = env
        .ready_local(
            "login",
            &["login.example.com"],
            "  deletionPolicy: Delete\n",
        )
        .await;
    // A new process holds no token; the credentials are gone.
    env.kill_operator().await;
    delete_secret(&env, "aic-creds").await;
    let mut options = fast_options();
    options.cleanup_timeout = Duration::from_secs(2);
    env.start_operator_with(options);
    env.delete("login").await;
    // (The restarted operator may first stall the resource for its missing credentials as
    // such; the deletion's own stall says it cannot clean up.)
    let t = env
        .wait_for("login", 10, "waiting for credentials", |t| {
            stalled_reason(t).as_deref() == Some("CredentialsNotFound")
                && t.status.as_ref().is_some_and(|s| {
                    certrotor::api::condition(&s.conditions, "Stalled")
                        .is_some_and(|c| c.message.contains("cannot clean up"))
                })
        })
        .await;
    let status = t.status.unwrap();
    let stalled = certrotor::api::condition(&status.conditions, "Stalled").unwrap();
    assert!(stalled.message.contains(&id), "{}", stalled.message);
    env.wait_gone("login", 30).await;
    env.wait_event("login", "Warning", "CleanupAbandoned").await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client.clone(), NS);
    let note = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("CleanupAbandoned"))
        .and_then(|e| e.note)
        .unwrap();
    assert!(note.contains(&id), "the Warning names what is left: {note}");
    assert!(
        env.aic
            .certificates()
            .iter()
            .any(|c| c.id == id && !c.deleted),
        "no tenant call was possible: the certificate is left, and said so"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_backs_off_even_while_lists_succeed() {
    let env = Env::start(sim_config()).await;
    // Uploads answer 503 for good; lists keep working.
    env.aic.knobs().set_fail_uploads_next(u32::MAX);
    let (chain, key) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain, &key).await;
    env.apply(&with_url(&local_yaml("login", "login-tls", ""), &env))
        .await;
    // fast_options: backoff from 200 ms doubling to 2 s. In 8 s that is at most about
    // 200+400+800+1600 ms, then one every 1.6–2 s: 4 + 4 attempts, plus the client's own
    // retries of each (it does not retry a non-idempotent upload).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let uploads = env
        .tenant_calls()
        .iter()
        .filter(|c| c.starts_with("POST /environment/certificates"))
        .count();
    assert!(uploads >= 3, "it does retry: {uploads}");
    assert!(
        uploads <= 9,
        "{uploads} uploads in 8 s: the backoff did not grow"
    );
    let t = env.get("login").await;
    let status = t.status.unwrap();
    assert!(status.failures.unwrap_or(0) >= 3, "{:?}", status.failures);
    assert!(status.next_attempt_time.is_some());
    // The tenant recovers: the next attempt succeeds and the streak is over.
    env.aic.knobs().set_fail_uploads_next(0);
    let t = env.wait_ready("login").await;
    let status = t.status.unwrap();
    assert_eq!(status.failures, None);
    assert_eq!(status.next_attempt_time, None);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_the_same_mutation_twice_in_one_reconcile() {
    let env = Env::start(sim_config()).await;
    let first = env.ready_local("login", &["login.example.com"], "").await;
    // From now on the tenant answers each PATCH with the certificate as it was before.
    env.aic.knobs().set_stale_patch_answers_next(u32::MAX);
    let (chain2, key2) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain2, &key2).await;
    let fp2 = fingerprint(&chain2);
    env.wait_for("login", 30, "rotated, old one inactive", |t| {
        let s = t.status.as_ref().unwrap();
        s.fingerprint.as_deref() == Some(fp2.as_str()) && is_ready(t)
    })
    .await;
    for _ in 0..100 {
        if env
            .aic
            .certificates()
            .iter()
            .any(|c| c.id == first && !c.active)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Several more reconciles at the test's fast poll: each sees the truth in its list.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sim = env.aic.certificates();
    assert!(!sim.iter().find(|c| c.id == first).unwrap().active);
    let patches = env
        .tenant_calls()
        .iter()
        .filter(|c| c.starts_with("PATCH /environment/certificates/"))
        .count();
    assert_eq!(
        patches,
        1,
        "deactivated once, then looked again: {:?}",
        env.tenant_calls()
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_answer_was_lost_is_cleaned_up_after_the_secret_changes() {
    let env = Env::start(sim_config()).await;
    env.aic.knobs().set_lose_creates_next(1);
    let (chain, key) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain, &key).await;
    env.apply(&with_url(
        &local_yaml("login", "login-tls", "  revisionHistoryLimit: 0\n"),
        &env,
    ))
    .await;
    env.wait_for("login", 20, "the lost answer recorded", |t| {
        t.status.as_ref().is_some_and(|s| s.failures.is_some())
    })
    .await;
    let lost = ours_in_tenant(&env);
    assert_eq!(lost.len(), 1);
    // Before the retry, cert-manager writes a new chain.
    let (chain2, key2) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain2, &key2).await;
    let fp2 = fingerprint(&chain2);
    let t = env
        .wait_for(
            "login",
            30,
            "the new chain in place, the lost upload gone",
            |t| {
                let s = t.status.as_ref().unwrap();
                s.fingerprint.as_deref() == Some(fp2.as_str())
                    && s.previous_certificate_ids.is_empty()
                    && is_ready(t)
            },
        )
        .await;
    let current = t.status.unwrap().certificate_id.unwrap();
    assert_eq!(
        ours_in_tenant(&env),
        vec![current],
        "nothing of ours left behind"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_honours_the_backoff_of_a_failing_resource() {
    let mut env = Env::new(sim_config()).await;
    let mut options = fast_options();
    options.failure_backoff_base = Duration::from_secs(30);
    options.failure_backoff_max = Duration::from_secs(60);
    env.start_operator_with(options.clone());
    env.aic.knobs().set_fail_uploads_next(u32::MAX);
    let (chain, key) = env.issue(&["login.example.com"], 90);
    env.put_tls("login-tls", &chain, &key).await;
    env.apply(&with_url(&local_yaml("login", "login-tls", ""), &env))
        .await;
    env.wait_for("login", 20, "a failure recorded", |t| {
        t.status.as_ref().is_some_and(|s| s.failures.is_some())
    })
    .await;
    let uploads = |env: &Env| {
        env.tenant_calls()
            .iter()
            .filter(|c| c.starts_with("POST /environment/certificates"))
            .count()
    };
    assert_eq!(uploads(&env), 1);
    env.kill_operator().await;
    env.start_operator_with(options);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        uploads(&env),
        1,
        "the new process waits for the next attempt time"
    );
    env.shutdown().await;
}
