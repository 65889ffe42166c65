//! Behaviour of the public pki API, end to end through real keys and certificates.

use jiff::{SignedDuration, Timestamp};

use super::ca::Ca;
use super::*;

fn hours(h: i64) -> SignedDuration {
    SignedDuration::from_hours(h)
}

fn window() -> (Timestamp, Timestamp) {
    let now = Timestamp::now();
    (now - hours(1), now + hours(24 * 30))
}

fn pem_blocks_of(chain: &str) -> Vec<String> {
    chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .map(str::to_owned)
        .collect()
}

struct Fixture {
    root: Ca,
    chain: String,
    key: String,
}

fn fixture() -> Fixture {
    let root = Ca::new("Test Root").unwrap();
    let inter = root.intermediate("Test Intermediate").unwrap();
    let (nb, na) = window();
    let (chain, key) = inter
        .issue(
            "login.example.com",
            &["login.example.com", "10.0.0.1"],
            nb,
            na,
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
    Fixture { root, chain, key }
}

#[test]
fn parses_a_three_certificate_chain_leaf_first() {
    let f = fixture();
    let infos = check_chain(&f.chain, Timestamp::now()).unwrap();
    assert_eq!(infos.len(), 3);
    assert_eq!(infos[0].subject, "CN=login.example.com");
    assert_eq!(infos[0].issuer, "CN=Test Intermediate");
    assert_eq!(infos[1].issuer, "CN=Test Root");
    assert_eq!(infos[2].subject, infos[2].issuer);
    assert_eq!(
        infos[0].subject_alternative_names,
        ["login.example.com", "10.0.0.1"]
    );
    assert_eq!(
        [infos[0].is_ca, infos[1].is_ca, infos[2].is_ca],
        [false, true, true]
    );
    assert!(infos[0].fingerprint.starts_with("sha256:"));
    assert_eq!(infos[0].fingerprint.len(), "sha256:".len() + 64);
    assert_eq!(fingerprint_of_leaf(&f.chain).unwrap(), infos[0].fingerprint);
    assert!(
        infos[0]
            .serial_number
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_ne!(infos[0].serial_number, infos[1].serial_number);
    assert_eq!(parse_chain(&f.chain).unwrap(), infos);
    assert_eq!(f.root.chain_pem(), f.root.cert_pem());
}

#[test]
fn validity_is_the_requested_window() {
    let root = Ca::new("Root").unwrap();
    let nb = Timestamp::from_second(1_900_000_000).unwrap();
    let na = Timestamp::from_second(1_900_086_400).unwrap();
    let (chain, _) = root
        .issue("a.example.com", &[], nb, na, KeyAlgorithm::EcdsaP256)
        .unwrap();
    let leaf = &parse_chain(&chain).unwrap()[0];
    assert_eq!((leaf.not_before, leaf.not_after), (nb, na));
    assert!(leaf.subject_alternative_names.is_empty());
}

#[test]
fn no_certificate_and_invalid_pem() {
    assert_eq!(parse_chain("hello"), Err(PkiError::NoCertificate));
    assert_eq!(parse_chain(""), Err(PkiError::NoCertificate));
    let f = fixture();
    // A key alone is not a chain.
    assert_eq!(parse_chain(&f.key), Err(PkiError::NoCertificate));
    let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        parse_chain(bad_base64),
        Err(PkiError::InvalidPem(_))
    ));
    let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        check_chain(not_der, Timestamp::now()),
        Err(PkiError::InvalidPem(_))
    ));
    let truncated = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n";
    assert!(matches!(
        parse_chain(truncated),
        Err(PkiError::InvalidPem(_))
    ));
    assert_eq!(PkiError::InvalidPem(String::new()).reason(), "InvalidPem");
}

#[test]
fn reversed_chain_is_leaf_not_first() {
    let f = fixture();
    let reversed: String = pem_blocks_of(&f.chain).into_iter().rev().collect();
    let err = check_chain(&reversed, Timestamp::now()).unwrap_err();
    assert_eq!(err, PkiError::LeafNotFirst);
    assert_eq!(err.reason(), "LeafNotFirst");
}

#[test]
fn missing_intermediate_or_foreign_issuer_breaks_the_chain() {
    let f = fixture();
    let blocks = pem_blocks_of(&f.chain);
    let skipped = format!("{}{}", blocks[0], blocks[2]);
    let err = check_chain(&skipped, Timestamp::now()).unwrap_err();
    assert_eq!(err, PkiError::ChainBroken { index: 0 });
    assert_eq!(err.reason(), "ChainBroken");

    // Same names, different key: only the signature check can notice.
    let impostor = Ca::new("Test Root").unwrap();
    let forged = format!("{}{}{}", blocks[0], blocks[1], impostor.cert_pem());
    assert_eq!(
        check_chain(&forged, Timestamp::now()),
        Err(PkiError::ChainBroken { index: 1 })
    );
}

#[test]
fn single_self_signed_or_lone_leaf_is_accepted() {
    let root = Ca::new("Lonely").unwrap();
    assert_eq!(
        check_chain(&root.cert_pem(), Timestamp::now())
            .unwrap()
            .len(),
        1
    );
    let f = fixture();
    let leaf = pem_blocks_of(&f.chain).remove(0);
    assert_eq!(check_chain(&leaf, Timestamp::now()).unwrap().len(), 1);
}

#[test]
fn expired_and_not_yet_valid_leaves() {
    let f = fixture();
    let leaf = &parse_chain(&f.chain).unwrap()[0];
    let err = check_chain(&f.chain, leaf.not_after + hours(1)).unwrap_err();
    assert_eq!(
        err,
        PkiError::Expired {
            not_after: leaf.not_after.to_string()
        }
    );
    assert_eq!(err.reason(), "CertificateExpired");
    let err = check_chain(&f.chain, leaf.not_before - hours(1)).unwrap_err();
    assert!(matches!(err, PkiError::NotYetValid { .. }));
    assert_eq!(err.reason(), "CertificateNotYetValid");
}

#[test]
fn key_matching() {
    let f = fixture();
    check_key_matches(&f.chain, &f.key).unwrap();
    let other = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let err = check_key_matches(&f.chain, &other).unwrap_err();
    assert_eq!(err, PkiError::KeyMismatch);
    assert_eq!(err.reason(), "KeyMismatch");
    let err = check_key_matches(&f.chain, "not a key").unwrap_err();
    assert!(matches!(err, PkiError::InvalidKey(_)));
    assert_eq!(err.reason(), "InvalidKey");
}

#[test]
fn rsa_chain_matches_its_key() {
    let root = Ca::new("Root").unwrap();
    let (nb, na) = window();
    let (chain, key) = root
        .issue(
            "rsa.example.com",
            &["rsa.example.com"],
            nb,
            na,
            KeyAlgorithm::Rsa2048,
        )
        .unwrap();
    check_chain(&chain, Timestamp::now()).unwrap();
    check_key_matches(&chain, &key).unwrap();
}

/// Wraps DER as PEM with the given label.
fn pem(label: &str, der: &[u8]) -> String {
    super::keys::tests_support::pem_encode(label, der)
}

#[test]
fn pkcs1_and_sec1_keys_are_accepted_and_converted() {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};

    // SEC1 EC key.
    let ec = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_ASN1_SIGNING).unwrap();
    let sec1 = ec.private_key().as_der().unwrap();
    let sec1_pem = pem("EC PRIVATE KEY", sec1.as_ref());
    let pkcs8 = private_key_to_pkcs8_pem(&sec1_pem).unwrap();
    assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert_eq!(
        private_key_public_der(&pkcs8).unwrap(),
        private_key_public_der(&sec1_pem).unwrap()
    );
    let spki = private_key_public_der(&sec1_pem).unwrap();
    assert!(spki.ends_with(ec.public_key().as_ref()));

    // PKCS#1 RSA key, built from a JWK.
    let jwk = jwk::generate_rsa_jwk(2048).unwrap();
    let pkcs1_pem = pem("RSA PRIVATE KEY", &jwk::rsa_jwk_to_pkcs1_der(&jwk).unwrap());
    let pkcs8 = private_key_to_pkcs8_pem(&pkcs1_pem).unwrap();
    assert_eq!(
        private_key_public_der(&pkcs8).unwrap(),
        private_key_public_der(&pkcs1_pem).unwrap()
    );

    // A CSR made from the PKCS#1 form carries the same public key.
    let csr = generate_csr(
        &pkcs1_pem,
        &CsrSubject {
            common_name: Some("x".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(super::keys::same_public_key(
        &csr_info(&csr).unwrap().public_key_der,
        &private_key_public_der(&pkcs8).unwrap()
    ));
}

#[test]
fn bad_keys_are_refused_with_the_right_variant() {
    assert!(matches!(
        private_key_public_der("nothing here"),
        Err(PkiError::InvalidKey(_))
    ));
    let garbage = pem("PRIVATE KEY", b"garbage");
    assert!(matches!(
        private_key_to_pkcs8_pem(&garbage),
        Err(PkiError::InvalidKey(_))
    ));
    let garbage = pem("RSA PRIVATE KEY", b"garbage");
    assert!(matches!(
        private_key_public_der(&garbage),
        Err(PkiError::InvalidKey(_))
    ));
    let encrypted = pem("ENCRYPTED PRIVATE KEY", b"whatever");
    let err = private_key_to_pkcs8_pem(&encrypted).unwrap_err();
    assert!(matches!(err, PkiError::Unsupported(_)));
    assert_eq!(err.reason(), "Unsupported");
}

#[test]
fn csr_for_every_algorithm_keeps_subject_sans_and_key() {
    let subject = CsrSubject {
        common_name: Some("login.example.com".into()),
        organization: Some("Acme, Inc".into()),
        organizational_unit: Some("Platform".into()),
        country: Some("DE".into()),
        state: Some("Berlin".into()),
        city: Some("Berlin".into()),
        email: Some("pki@example.com".into()),
        subject_alternative_names: vec!["login.example.com".into(), "192.0.2.7".into()],
    };
    for alg in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
    ] {
        let key = generate_key(alg).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{alg:?}");
        let csr = generate_csr(&key, &subject).unwrap();
        let info = csr_info(&csr).unwrap();
        assert_eq!(
            info.subject,
            "emailAddress=pki@example.com,CN=login.example.com,OU=Platform,O=Acme\\, Inc,L=Berlin,ST=Berlin,C=DE",
            "{alg:?}"
        );
        assert_eq!(
            info.subject_alternative_names,
            ["login.example.com", "192.0.2.7"]
        );
        assert_eq!(
            info.public_key_der,
            private_key_public_der(&key).unwrap(),
            "{alg:?}"
        );
    }
}

#[test]
fn wildcards_are_refused_before_anything_is_generated() {
    let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let subject = CsrSubject {
        subject_alternative_names: vec!["ok.example.com".into(), "*.example.com".into()],
        ..Default::default()
    };
    let err = generate_csr(&key, &subject).unwrap_err();
    assert_eq!(err, PkiError::WildcardName("*.example.com".into()));
    assert_eq!(err.reason(), "WildcardName");
    let subject = CsrSubject {
        common_name: Some("*.example.com".into()),
        ..Default::default()
    };
    assert!(matches!(
        generate_csr(&key, &subject),
        Err(PkiError::WildcardName(_))
    ));
}

#[test]
fn csr_info_rejects_tampered_and_missing_requests() {
    assert!(matches!(csr_info("nope"), Err(PkiError::InvalidPem(_))));
    let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = generate_csr(
        &key,
        &CsrSubject {
            common_name: Some("a".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let der = super::x509::pem_blocks(&csr).unwrap().remove(0).contents;
    let mut tampered = der.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let tampered = pem("CERTIFICATE REQUEST", &tampered);
    assert!(matches!(csr_info(&tampered), Err(PkiError::InvalidPem(_))));
    assert!(matches!(
        Ca::new("r")
            .unwrap()
            .sign_csr(&tampered, Timestamp::now(), Timestamp::now() + hours(1)),
        Err(PkiError::InvalidPem(_))
    ));
}

#[test]
fn sign_csr_keeps_subject_and_sans_and_builds_a_valid_chain() {
    let root = Ca::new("Root").unwrap();
    let inter = root.intermediate("Inter").unwrap();
    let key = generate_key(KeyAlgorithm::Rsa2048).unwrap();
    let subject = CsrSubject {
        common_name: Some("login.example.com".into()),
        organization: Some("Acme Inc".into()),
        subject_alternative_names: vec!["login.example.com".into(), "id.example.com".into()],
        ..Default::default()
    };
    let csr = generate_csr(&key, &subject).unwrap();
    let (nb, na) = window();
    let chain = inter.sign_csr(&csr, nb, na).unwrap();
    let infos = check_chain(&chain, Timestamp::now()).unwrap();
    assert_eq!(infos.len(), 3);
    assert_eq!(infos[0].subject, "CN=login.example.com,O=Acme Inc");
    assert_eq!(
        infos[0].subject_alternative_names,
        ["login.example.com", "id.example.com"]
    );
    assert!(!infos[0].is_ca);
    check_key_matches(&chain, &key).unwrap();
    assert!(chain.ends_with(&inter.chain_pem()));
}

#[test]
fn client_certificates_carry_client_auth() {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let root = Ca::new("Root").unwrap();
    let (nb, na) = window();
    let (chain, key) = root
        .issue_client("vendor", &[], nb, na, KeyAlgorithm::EcdsaP256)
        .unwrap();
    check_key_matches(&chain, &key).unwrap();
    let der = super::x509::pem_blocks(&chain).unwrap().remove(0).contents;
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    let (server, _) = root
        .issue("s", &[], nb, na, KeyAlgorithm::EcdsaP256)
        .unwrap();
    let der = super::x509::pem_blocks(&server).unwrap().remove(0).contents;
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert!(
        cert.extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .server_auth
    );
}

#[test]
fn every_reason_is_camel_case_and_distinct() {
    let all = [
        PkiError::InvalidPem(String::new()),
        PkiError::NoCertificate,
        PkiError::LeafNotFirst,
        PkiError::ChainBroken { index: 0 },
        PkiError::InvalidKey(String::new()),
        PkiError::KeyMismatch,
        PkiError::Expired {
            not_after: String::new(),
        },
        PkiError::NotYetValid {
            not_before: String::new(),
        },
        PkiError::WildcardName(String::new()),
        PkiError::Unsupported(String::new()),
    ];
    let reasons: std::collections::BTreeSet<_> = all.iter().map(PkiError::reason).collect();
    assert_eq!(reasons.len(), all.len());
    assert!(
        reasons
            .iter()
            .all(|r| r.chars().all(char::is_alphanumeric) && r.starts_with(char::is_uppercase))
    );
}
