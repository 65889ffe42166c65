//! The AIC client against the AIC simulator, every fault knob included.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certrotor::aic::{AicClient, AicError, CallObserver, ClientOptions, Credentials, CsrRequest};
use certrotor::pki::{KeyAlgorithm, ca::Ca};
use certrotor::sim::aic::{AicSim, AicSimConfig};

#[derive(Default)]
struct Recorder(Mutex<Vec<(String, String)>>);

impl CallObserver for Recorder {
    fn observe(&self, operation: &'static str, outcome: &str, _elapsed: Duration) {
        self.0
            .lock()
            .unwrap()
            .push((operation.into(), outcome.into()));
    }
}

async fn sim() -> AicSim {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = AicSimConfig {
        live_delay: Duration::from_millis(200),
        delete_500_window: Duration::from_millis(400),
        ..Default::default()
    };
    AicSim::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

fn client_for(sim: &AicSim) -> (AicClient, Arc<Recorder>) {
    let data = sim
        .credentials_secret_data()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    let recorder = Arc::new(Recorder::default());
    let client = AicClient::new(
        &sim.url(),
        Credentials::from_secret_data(&data).unwrap(),
        None,
        ClientOptions::default(),
    )
    .unwrap()
    .with_observer(recorder.clone());
    (client, recorder)
}

fn tokens(sim: &AicSim) -> usize {
    sim.calls()
        .iter()
        .filter(|c| c.route.contains("access_token"))
        .count()
}

fn leaf(names: &[&str]) -> (String, String) {
    let ca = Ca::new("Client Test CA").unwrap();
    let now = jiff::Timestamp::now();
    ca.issue(
        names[0],
        names,
        now - jiff::SignedDuration::from_hours(1),
        now + jiff::SignedDuration::from_hours(48),
        KeyAlgorithm::EcdsaP256,
    )
    .unwrap()
}

#[tokio::test]
async fn one_token_serves_many_calls_and_is_renewed_when_rejected() {
    let sim = sim().await;
    let (client, _) = client_for(&sim);
    for _ in 0..5 {
        client.list_certificates().await.unwrap();
    }
    assert_eq!(tokens(&sim), 1);
    sim.knobs().expire_tokens_now();
    client.list_certificates().await.unwrap();
    assert_eq!(tokens(&sim), 2, "401 → one new token, call succeeds");
}

#[tokio::test]
async fn short_token_lifetime_is_renewed_before_expiry() {
    let sim = sim().await;
    sim.knobs().set_token_lifetime(Duration::from_secs(2));
    let (client, _) = client_for(&sim);
    client.list_certificates().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    client.list_certificates().await.unwrap();
    assert_eq!(tokens(&sim), 2);
    let unauthorized = sim.calls().iter().filter(|c| c.status == 401).count();
    assert_eq!(
        unauthorized, 0,
        "renewed before the tenant had to refuse it"
    );
}

#[tokio::test]
async fn upload_activate_live_deactivate_delete() {
    let sim = sim().await;
    let (client, _) = client_for(&sim);
    let (chain, key) = leaf(&["a.example.com"]);
    let created = client
        .create_certificate(&chain, &key, false)
        .await
        .unwrap();
    assert!(created.id.starts_with("ccrt-") && !created.active && !created.live);
    let active = client.set_active(&created.id, true).await.unwrap();
    assert!(active.active);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        client
            .get_certificate(&created.id)
            .await
            .unwrap()
            .unwrap()
            .live
    );
    match client.delete_certificate(&created.id).await {
        Err(AicError::BadRequest { message, .. }) => {
            assert!(message.contains("active"), "{message}")
        }
        other => panic!("deleting an active certificate: {other:?}"),
    }
    // A short window: the client's retries (full jitter, 4 attempts) can sum to little.
    sim.knobs()
        .set_delete_500_window(Duration::from_millis(100));
    client.set_active(&created.id, false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Inside the empty-500 window: the client retries (idempotent) until the window closes.
    client.delete_certificate(&created.id).await.unwrap();
    assert!(
        client.get_certificate(&created.id).await.unwrap().is_none(),
        "404 with empty body → None"
    );
    // Deleting it again: 404, as for any unknown id (the controllers take it as "gone").
    assert!(matches!(
        client.delete_certificate(&created.id).await,
        Err(AicError::NotFound)
    ));
}

#[tokio::test]
async fn csr_round_trip() {
    let sim = sim().await;
    let (client, _) = client_for(&sim);
    let request = CsrRequest {
        common_name: "idp.example.com".into(),
        subject_alternative_names: vec!["idp.example.com".into()],
        ..Default::default()
    };
    let csr = client.create_csr(&request).await.unwrap();
    assert!(csr.request.contains("BEGIN CERTIFICATE REQUEST"));
    assert_eq!(client.list_csrs().await.unwrap().len(), 1);
    let ca = Ca::new("CSR CA").unwrap();
    let now = jiff::Timestamp::now();
    let chain = ca
        .sign_csr(
            &csr.request,
            now - jiff::SignedDuration::from_hours(1),
            now + jiff::SignedDuration::from_hours(24),
        )
        .unwrap();
    let done = client.complete_csr(&csr.id, &chain).await.unwrap();
    let id = done.certificate_id.unwrap();
    assert!(client.get_certificate(&id).await.unwrap().is_some());
    assert_eq!(
        client
            .get_csr(&csr.id)
            .await
            .unwrap()
            .unwrap()
            .certificate_id
            .as_deref(),
        Some(id.as_str())
    );
}

#[tokio::test]
async fn wildcard_csr_is_a_typed_bad_request() {
    let sim = sim().await;
    let (client, _) = client_for(&sim);
    let request = CsrRequest {
        common_name: "x".into(),
        subject_alternative_names: vec!["*.example.com".into()],
        ..Default::default()
    };
    assert!(matches!(
        client.create_csr(&request).await,
        Err(AicError::BadRequest { .. })
    ));
}

#[tokio::test]
async fn server_errors_are_retried_for_reads_not_for_creates() {
    let sim = sim().await;
    let (client, recorder) = client_for(&sim);
    client.list_certificates().await.unwrap();
    sim.knobs().set_fail_next_5xx(2);
    client.list_certificates().await.unwrap();
    let outcomes: Vec<_> = recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(op, _)| op == "list_certificates")
        .map(|(_, o)| o.clone())
        .collect();
    assert_eq!(
        outcomes,
        ["ok", "TenantServerError", "TenantServerError", "ok"]
    );

    sim.knobs().set_fail_next_empty_500(1);
    let (chain, key) = leaf(&["b.example.com"]);
    match client.create_certificate(&chain, &key, false).await {
        Err(AicError::Server { status: 500, .. }) => {}
        other => panic!("create must not be retried blindly: {other:?}"),
    }
}

#[tokio::test]
async fn rate_limits_honour_retry_after() {
    let sim = sim().await;
    let (client, _) = client_for(&sim);
    client.list_certificates().await.unwrap();
    sim.knobs().set_rate_limit_next(1, 1);
    let started = Instant::now();
    client.list_certificates().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited {:?}",
        started.elapsed()
    );
    // A create is retried on 429: the tenant refused it, so it certainly did not happen.
    sim.knobs().set_rate_limit_next(1, 1);
    let (chain, key) = leaf(&["c.example.com"]);
    client
        .create_certificate(&chain, &key, false)
        .await
        .unwrap();
    // A Retry-After longer than the client waits inside one call goes back to the caller.
    sim.knobs().set_rate_limit_next(1, 120);
    match client.list_certificates().await {
        Err(AicError::RateLimited { retry_after }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(120)))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn latency_beyond_the_timeout_is_a_transport_error() {
    let sim = sim().await;
    let data = sim
        .credentials_secret_data()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    let options = ClientOptions {
        timeout: Duration::from_millis(300),
        retry: certrotor::aic::RetryPolicy {
            attempts: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let client = AicClient::new(
        &sim.url(),
        Credentials::from_secret_data(&data).unwrap(),
        None,
        options,
    )
    .unwrap();
    client.list_certificates().await.unwrap();
    sim.knobs().set_latency(Duration::from_millis(600));
    assert!(matches!(
        client.list_certificates().await,
        Err(AicError::Transport(_))
    ));
    sim.knobs().set_latency(Duration::ZERO);
    client.list_certificates().await.unwrap();
}

#[tokio::test]
async fn read_only_token_cannot_write() {
    let sim = sim().await;
    let data = [(
        "accessToken".to_string(),
        sim.issue_read_only_token().into_bytes(),
    )]
    .into();
    let client = AicClient::new(
        &sim.url(),
        Credentials::from_secret_data(&data).unwrap(),
        None,
        ClientOptions::default(),
    )
    .unwrap();
    client.list_certificates().await.unwrap();
    let (chain, key) = leaf(&["d.example.com"]);
    match client.create_certificate(&chain, &key, false).await {
        Err(e @ AicError::Unauthorized { status: 403, .. }) => assert!(e.needs_person()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn support_certificate_is_listed() {
    let sim = sim().await;
    let (client, _) = client_for(&sim);
    let list = client.list_certificates().await.unwrap();
    assert!(
        list.iter().any(|c| c.active && c.live),
        "the support-added certificate is listed"
    );
}

#[tokio::test]
async fn ca_bundle_must_be_pem_and_https_is_required() {
    let data = [("accessToken".to_string(), b"t".to_vec())].into();
    let creds = Credentials::from_secret_data(&data).unwrap();
    assert!(matches!(
        AicClient::new(
            "https://t.example.com",
            creds.clone(),
            Some("garbage"),
            ClientOptions::default()
        ),
        Err(AicError::Config(_))
    ));
    let ca = Ca::new("Bundle CA").unwrap();
    AicClient::new(
        "https://t.example.com",
        creds.clone(),
        Some(&ca.cert_pem()),
        ClientOptions::default(),
    )
    .unwrap();
    assert!(matches!(
        AicClient::new(
            "http://t.example.com",
            creds,
            None,
            ClientOptions::default()
        ),
        Err(AicError::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_began_together_share_one_list() {
    let sim = sim().await;
    let (client, _) = client_for(&sim);
    let client = Arc::new(client);
    client.list_certificates().await.unwrap(); // token
    sim.knobs().set_latency(Duration::from_millis(200));
    let began = Instant::now();
    let lists: Vec<_> = (0..20)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.list_certificates_since(began).await.unwrap().len() })
        })
        .collect();
    for l in lists {
        assert_eq!(l.await.unwrap(), 1);
    }
    let count = || {
        sim.calls()
            .iter()
            .filter(|c| c.route == "GET /environment/certificates")
            .count()
    };
    assert_eq!(count(), 2, "the token warm-up plus one shared list");
    // A caller that began after that list started must not get it: it may miss its own writes.
    let later = Instant::now();
    client.list_certificates_since(later).await.unwrap();
    assert_eq!(count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_one_tenant_are_limited_in_flight() {
    let sim = sim().await;
    let data = sim
        .credentials_secret_data()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    let options = ClientOptions {
        max_in_flight: 2,
        ..Default::default()
    };
    let client = Arc::new(
        AicClient::new(
            &sim.url(),
            Credentials::from_secret_data(&data).unwrap(),
            None,
            options,
        )
        .unwrap(),
    );
    client.list_certificates().await.unwrap();
    sim.knobs().set_latency(Duration::from_millis(300));
    let started = Instant::now();
    let gets: Vec<_> = (0..6)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move {
                c.get_certificate(&format!("ccrt-missing-{i}"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for g in gets {
        assert!(g.await.unwrap().is_none());
    }
    // Six requests, two at a time, 300 ms each: at least three rounds.
    assert!(
        started.elapsed() >= Duration::from_millis(880),
        "{:?}",
        started.elapsed()
    );
}
