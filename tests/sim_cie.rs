//! The CIE client against the CIE simulator, over real mutual TLS on 127.0.0.1.

use std::time::Duration;

use certrotor::cie::{CieClient, CieError, RefreshMethod};
use certrotor::pki::{self, CsrSubject, KeyAlgorithm};
use certrotor::sim::cie::{CieSim, CieSimConfig, ONBOARDING_CERT_NAME, Operation, run_until};

const HOUR: Duration = Duration::from_secs(3600);

async fn start() -> CieSim {
    CieSim::start("127.0.0.1:0".parse().unwrap(), CieSimConfig::default())
        .await
        .unwrap()
}

fn client(sim: &CieSim, cert_pem: &str, key_pem: &str, api_key: &str) -> CieClient {
    CieClient::new(&sim.url(), cert_pem, key_pem, api_key, Some(&sim.ca_pem())).unwrap()
}

fn onboarding_client(sim: &CieSim) -> CieClient {
    let onboarding = sim.onboarding();
    client(
        sim,
        &onboarding.cert_pem,
        &onboarding.key_pem,
        &onboarding.api_key,
    )
}

/// A fresh key and a CSR for it.
fn key_and_csr(common_name: &str) -> (String, String) {
    let key = pki::generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let subject = CsrSubject {
        common_name: Some(common_name.into()),
        organization: Some("Acme Inc".into()),
        ..CsrSubject::default()
    };
    let csr = pki::generate_csr(&key, &subject).unwrap();
    (key, csr)
}

/// The credentials in use: a certificate, its key, and the API token.
struct Creds {
    cert: String,
    key: String,
    api_key: String,
}

impl Creds {
    fn onboarding(sim: &CieSim) -> Creds {
        let o = sim.onboarding();
        Creds {
            cert: o.cert_pem,
            key: o.key_pem,
            api_key: o.api_key,
        }
    }

    fn client(&self, sim: &CieSim) -> CieClient {
        client(sim, &self.cert, &self.key, &self.api_key)
    }

    /// `cert:refresh` as a careful controller does it: switch to the new certificate at once.
    async fn refresh_cert(&mut self, sim: &CieSim, name: &str) -> Result<String, CieError> {
        let (key, csr) = key_and_csr(name);
        let refreshed = self.client(sim).refresh_certificate(&csr, name).await?;
        self.cert = refreshed.cert;
        self.key = key;
        Ok(refreshed.deleted_cert_name)
    }

    async fn refresh_token(&mut self, sim: &CieSim) -> Result<String, CieError> {
        let refreshed = self.client(sim).refresh_token().await?;
        self.api_key = refreshed.token;
        Ok(refreshed.deleted_token)
    }
}

/// The server counts a refused handshake just after the client sees it fail.
async fn wait_for_handshake_failures(sim: &CieSim, expected: usize) {
    for _ in 0..100 {
        if sim.handshake_failures() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sim.handshake_failures(), expected);
}

/// A refused TLS handshake: the client knows nothing was processed.
fn assert_handshake_refused(err: &CieError) {
    assert_eq!(err.reason(), "HandshakeRefused", "{err:?}");
    assert!(err.certainly_not_sent());
    assert!(!err.outcome_may_have_happened());
}

#[tokio::test]
async fn refresh_returns_a_certificate_signed_for_the_csr_key() {
    let sim = start().await;
    let (key, csr) = key_and_csr("acme-iot");
    let refreshed = onboarding_client(&sim)
        .refresh_certificate(&csr, "acme-1")
        .await
        .unwrap();

    assert_eq!(refreshed.deleted_cert_name, "");
    pki::check_key_matches(&refreshed.cert, &key).unwrap();
    let leaf = &pki::parse_chain(&refreshed.cert).unwrap()[0];
    assert!(leaf.subject.contains("CN=acme-iot"), "{}", leaf.subject);
    assert!(leaf.issuer.contains("client CA"), "{}", leaf.issuer);
    let validity = leaf.not_after.duration_since(leaf.not_before);
    assert!(
        validity >= jiff::SignedDuration::from_hours(24 * 30),
        "{validity:?}"
    );
    assert!(sim.is_valid(&refreshed.cert));
    assert_eq!(sim.valid_cert_names(), [ONBOARDING_CERT_NAME, "acme-1"]);

    // The new certificate authenticates.
    let with_new = client(&sim, &refreshed.cert, &key, &sim.onboarding().api_key);
    with_new.refresh_token().await.unwrap();
    let calls = sim.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].method, "GET", "cert:refresh is a GET by default");
    assert_eq!(calls[0].cert_name.as_deref(), Some("acme-1"));
    assert_eq!(calls[1].client_cert_name.as_deref(), Some("acme-1"));
    sim.shutdown().await;
}

#[tokio::test]
async fn mutual_tls_is_required() {
    let sim = start().await;

    // No client certificate at all.
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().as_bytes()).unwrap();
    let bare = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let result = bare
        .get(format!("{}/api/v1/token/token:refresh", sim.url()))
        .header("apiKey", sim.onboarding().api_key)
        .send()
        .await;
    assert!(result.is_err(), "answered without a client certificate");
    wait_for_handshake_failures(&sim, 1).await;

    // A certificate from a foreign CA.
    let foreign = pki::ca::Ca::new("foreign CA").unwrap();
    let now = jiff::Timestamp::now();
    let (cert, key) = foreign
        .issue_client(
            "intruder",
            &[],
            now - jiff::SignedDuration::from_hours(1),
            now + jiff::SignedDuration::from_hours(1),
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
    let err = client(&sim, &cert, &key, &sim.onboarding().api_key)
        .refresh_token()
        .await
        .unwrap_err();
    assert_handshake_refused(&err);
    wait_for_handshake_failures(&sim, 2).await;
    assert!(sim.calls().is_empty(), "no request got past TLS");

    // And the client refuses an endpoint it cannot verify: nothing is sent.
    let o = sim.onboarding();
    let err = CieClient::new(
        &sim.url(),
        &o.cert_pem,
        &o.key_pem,
        &o.api_key,
        Some(&foreign.cert_pem()),
    )
    .unwrap()
    .refresh_token()
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "TlsVerificationFailed", "{err:?}");
    assert!(!err.outcome_may_have_happened());
    assert!(err.certainly_not_sent() && err.needs_human());
    sim.shutdown().await;
}

#[tokio::test]
async fn wrong_api_key_is_unauthorized() {
    let sim = start().await;
    let o = sim.onboarding();
    let err = client(&sim, &o.cert_pem, &o.key_pem, "not-the-key")
        .refresh_token()
        .await
        .unwrap_err();
    let CieError::Unauthorized { code, message } = &err else {
        panic!("expected 401, got {err:?}");
    };
    assert_eq!(code, "UNAUTHORIZED");
    assert!(message.contains("apiKey"), "{message}");
    assert!(!err.outcome_may_have_happened());
    assert!(!err.to_string().contains(&o.api_key));
    assert_eq!(sim.calls()[0].status, 401);
    sim.shutdown().await;
}

#[tokio::test]
async fn third_certificate_evicts_the_oldest_which_then_gets_401() {
    let sim = start().await;
    let onboarding = Creds::onboarding(&sim);
    let (_, csr) = key_and_csr("acme");
    let first = onboarding
        .client(&sim)
        .refresh_certificate(&csr, "acme-1")
        .await
        .unwrap();
    assert_eq!(first.deleted_cert_name, "");
    let second = onboarding
        .client(&sim)
        .refresh_certificate(&csr, "acme-2")
        .await
        .unwrap();
    assert_eq!(second.deleted_cert_name, ONBOARDING_CERT_NAME);
    assert_eq!(sim.valid_cert_names(), ["acme-1", "acme-2"]);
    assert!(!sim.is_valid(&onboarding.cert));

    // The evicted certificate still passes the TLS handshake, and is refused by the service.
    let err = onboarding.client(&sim).refresh_token().await.unwrap_err();
    assert_eq!(err.reason(), "Unauthorized", "{err:?}");
    assert_eq!(sim.handshake_failures(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn cert_refresh_budget_is_three_then_one_per_hour() {
    let sim = start().await;
    let mut creds = Creds::onboarding(&sim);
    for i in 1..=3 {
        creds
            .refresh_cert(&sim, &format!("acme-{i}"))
            .await
            .unwrap();
    }
    let err = creds.refresh_cert(&sim, "acme-4").await.unwrap_err();
    let CieError::RateLimited { retry_after, .. } = &err else {
        panic!("expected 429, got {err:?}");
    };
    let retry_after = retry_after.expect("the simulator sends Retry-After");
    assert!(retry_after <= HOUR && retry_after > HOUR - Duration::from_secs(60));
    assert_eq!(sim.count_429(), 1);

    sim.clock().advance(Duration::from_secs(30 * 60));
    assert!(matches!(
        creds.refresh_cert(&sim, "acme-4").await,
        Err(CieError::RateLimited { .. })
    ));
    sim.clock().advance(Duration::from_secs(31 * 60));
    creds.refresh_cert(&sim, "acme-4").await.unwrap();
    assert!(matches!(
        creds.refresh_cert(&sim, "acme-5").await,
        Err(CieError::RateLimited { .. })
    ));
    sim.clock().advance(HOUR);
    creds.refresh_cert(&sim, "acme-5").await.unwrap();
    assert_eq!(sim.count_429(), 3);
    assert_eq!(sim.valid_cert_names(), ["acme-4", "acme-5"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn conflict_knob_answers_409_and_costs_an_attempt() {
    let sim = start().await;
    sim.knobs().set_conflict_next(1);
    let mut creds = Creds::onboarding(&sim);
    let err = creds.refresh_cert(&sim, "acme-1").await.unwrap_err();
    let CieError::Conflict { code, message } = &err else {
        panic!("expected 409, got {err:?}");
    };
    assert_eq!(code, "CONFLICT");
    assert!(message.contains("another update"), "{message}");
    assert!(!err.outcome_may_have_happened());
    assert_eq!(sim.valid_cert_names(), [ONBOARDING_CERT_NAME]);

    creds.refresh_cert(&sim, "acme-1").await.unwrap();
    creds.refresh_cert(&sim, "acme-2").await.unwrap();
    // The 409 reached the service, so it counted: this is the 4th attempt.
    assert!(matches!(
        creds.refresh_cert(&sim, "acme-3").await,
        Err(CieError::RateLimited { .. })
    ));
    sim.shutdown().await;
}

#[tokio::test]
async fn server_error_knob_is_a_500_that_may_have_happened() {
    let sim = start().await;
    sim.knobs().set_fail_next_5xx(1);
    let err = onboarding_client(&sim).refresh_token().await.unwrap_err();
    assert!(
        matches!(err, CieError::Server { status: 500, .. }),
        "{err:?}"
    );
    assert!(err.outcome_may_have_happened());
    sim.shutdown().await;
}

#[tokio::test]
async fn dropped_response_is_a_transport_error_and_the_sim_holds_the_cert() {
    let sim = start().await;
    sim.knobs().set_drop_next_response(1);
    let (_, csr) = key_and_csr("acme");
    let err = onboarding_client(&sim)
        .refresh_certificate(&csr, "acme-lost")
        .await
        .unwrap_err();
    assert!(matches!(err, CieError::Transport(_)), "{err:?}");
    assert_eq!(err.reason(), "TransportError");
    assert!(err.outcome_may_have_happened());

    assert_eq!(sim.valid_cert_names(), [ONBOARDING_CERT_NAME, "acme-lost"]);
    let calls = sim.calls();
    assert_eq!(calls.len(), 1, "the client must not retry: {calls:?}");
    assert!(calls[0].response_dropped);
    assert_eq!(calls[0].operation, Operation::CertRefresh);
    sim.shutdown().await;
}

#[tokio::test]
async fn token_refresh_keeps_two_tokens_and_its_own_budget() {
    let sim = start().await;
    let mut creds = Creds::onboarding(&sim);
    let onboarding_key = creds.api_key.clone();

    let refreshed = creds.client(&sim).refresh_token().await.unwrap();
    assert_eq!(refreshed.deleted_token, "");
    let expiry: jiff::Timestamp = refreshed.expiry.parse().unwrap();
    assert!(expiry > sim.clock().now());
    assert!(!format!("{refreshed:?}").contains(&refreshed.token));
    // Two tokens are valid: the onboarding one still works.
    creds.client(&sim).refresh_token().await.unwrap(); // 2nd attempt, evicts the onboarding one
    let err = creds.client(&sim).refresh_token().await.unwrap_err();
    assert_eq!(err.reason(), "Unauthorized", "{err:?}");

    creds.api_key = refreshed.token.clone();
    for _ in 3..=5 {
        creds.refresh_token(&sim).await.unwrap();
    }
    assert!(matches!(
        creds.refresh_token(&sim).await,
        Err(CieError::RateLimited { .. })
    ));
    sim.clock().advance(HOUR);
    creds.refresh_token(&sim).await.unwrap();
    creds.refresh_token(&sim).await.unwrap();
    assert!(matches!(
        creds.refresh_token(&sim).await,
        Err(CieError::RateLimited { .. })
    ));
    assert_eq!(sim.count_429(), 2);
    assert_ne!(creds.api_key, onboarding_key);
    sim.shutdown().await;
}

#[tokio::test]
async fn certificates_expire_by_the_simulated_clock() {
    let sim = start().await;
    sim.clock().advance(Duration::from_secs(31 * 24 * 3600));
    let err = onboarding_client(&sim).refresh_token().await.unwrap_err();
    assert_handshake_refused(&err);
    wait_for_handshake_failures(&sim, 1).await;
    assert!(sim.valid_cert_names().is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn refresh_method_can_be_post() {
    let sim = start().await;
    let (_, csr) = key_and_csr("acme");
    onboarding_client(&sim)
        .with_refresh_method(RefreshMethod::Post)
        .refresh_certificate(&csr, "acme-1")
        .await
        .unwrap();
    assert_eq!(sim.calls()[0].method, "POST");
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_csr_is_400_and_costs_no_attempt() {
    let sim = start().await;
    let client = onboarding_client(&sim);
    for _ in 0..4 {
        let err = client
            .refresh_certificate("not a csr", "acme-1")
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "BadRequest", "{err:?}");
    }
    let (_, csr) = key_and_csr("acme");
    client.refresh_certificate(&csr, "acme-1").await.unwrap();
    sim.shutdown().await;
}

#[tokio::test]
async fn client_debug_shows_no_secrets() {
    let sim = start().await;
    let o = sim.onboarding();
    let debug = format!("{:?} {:?}", onboarding_client(&sim), o);
    assert!(!debug.contains(&o.api_key), "{debug}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    sim.shutdown().await;
}

#[tokio::test]
async fn onboarding_bundle_holds_working_credentials() {
    let sim = start().await;
    let dir = tempfile::tempdir().unwrap();
    sim.write_onboarding_bundle(dir.path()).unwrap();
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();

    let o = sim.onboarding();
    assert_eq!(read("tls.crt"), o.cert_pem);
    assert_eq!(read("tls.key"), o.key_pem);
    assert_eq!(read("apiKey"), o.api_key);
    assert_eq!(read("ca.crt"), sim.ca_pem());
    assert_eq!(read("endpoint"), sim.url());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for private in ["tls.key", "apiKey", "onboarding-secret.yaml"] {
            let mode = std::fs::metadata(dir.path().join(private))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{private} is readable by others");
        }
    }

    let secret: k8s_openapi::api::core::v1::Secret =
        serde_saphyr::from_str(&read("onboarding-secret.yaml")).unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = secret.string_data.unwrap();
    assert_eq!(data["apiKey"], o.api_key);

    let from_files = CieClient::new(
        &read("endpoint"),
        &data["tls.crt"],
        &data["tls.key"],
        &data["apiKey"],
        Some(&read("ca.crt")),
    )
    .unwrap();
    from_files.refresh_token().await.unwrap();
    sim.shutdown().await;
}

#[tokio::test]
async fn latency_knob_delays_answers_and_a_client_timeout_may_have_refreshed() {
    let sim = start().await;
    sim.knobs().set_latency(Duration::from_millis(300));
    let started = std::time::Instant::now();
    onboarding_client(&sim).refresh_token().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));

    let (_, csr) = key_and_csr("acme");
    let err = onboarding_client(&sim)
        .with_request_timeout(Duration::from_millis(100))
        .refresh_certificate(&csr, "acme-1")
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "TransportError", "{err:?}");
    assert!(err.outcome_may_have_happened());
    sim.shutdown().await;
}

#[tokio::test]
async fn tokens_expire_by_the_simulated_clock() {
    let config = CieSimConfig {
        token_validity: HOUR,
        ..CieSimConfig::default()
    };
    let sim = CieSim::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let refreshed = onboarding_client(&sim).refresh_token().await.unwrap();
    let expiry: jiff::Timestamp = refreshed.expiry.parse().unwrap();
    let lifetime = expiry.duration_since(sim.clock().now());
    assert!(
        lifetime <= jiff::SignedDuration::from_hours(1),
        "{lifetime:?}"
    );

    sim.clock().advance(2 * HOUR);
    let err = onboarding_client(&sim).refresh_token().await.unwrap_err();
    let CieError::Unauthorized { message, .. } = &err else {
        panic!("expected 401, got {err:?}");
    };
    assert!(message.contains("apiKey"), "{message}");
    sim.shutdown().await;
}

#[tokio::test]
async fn the_sim_command_writes_a_bundle_that_works_and_stops_on_signal() {
    let dir = tempfile::tempdir().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let command = tokio::spawn(run_until(
        "127.0.0.1:0".parse().unwrap(),
        CieSimConfig::default(),
        Some(dir.path().to_path_buf()),
        async move {
            let _ = stopped.await;
            Ok(())
        },
    ));
    let secret_path = dir.path().join("onboarding-secret.yaml");
    for _ in 0..250 {
        if secret_path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let client = CieClient::new(
        &read("endpoint"),
        &read("tls.crt"),
        &read("tls.key"),
        &read("apiKey"),
        Some(&read("ca.crt")),
    )
    .unwrap();
    client.refresh_token().await.unwrap();

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), command)
        .await
        .expect("the command stops")
        .unwrap()
        .unwrap();
    let err = client.refresh_token().await.unwrap_err();
    assert_eq!(err.reason(), "ConnectFailed", "{err:?}");
}
