//! Reading and checking what the reconciler finds in the cluster: the onboarding Secret, the
//! output Secret, the pending key, and the other DeviceIdCredentials. Pure functions.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::plan::Invalid;
use crate::api::DeviceIdCredential;
use crate::pki::{self, CertInfo, KeyAlgorithm};

pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const API_KEY: &str = "apiKey";
/// In the pending Secret: the CSR sent with the pending key, and the key's type.
pub const TLS_CSR: &str = "tls.csr";
pub const KEY_ALGORITHM: &str = "algorithm";

/// A client certificate, its key and the `apiKey` to call with.
#[derive(Clone)]
pub struct Credentials {
    pub cert_pem: String,
    pub key_pem: String,
    pub api_key: String,
    pub info: CertInfo,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("fingerprint", &self.info.fingerprint)
            .field("key_pem", &"<redacted>")
            .field("api_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A Secret's data as text (values that are not UTF-8 are left out).
pub fn secret_data(secret: &Secret) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in secret.data.iter().flatten() {
        if let Ok(s) = String::from_utf8(v.0.clone()) {
            out.insert(k.clone(), s);
        }
    }
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// The onboarding Secret: `tls.crt`, `tls.key` (matching) and `apiKey`, all required.
pub fn read_onboarding(name: &str, secret: Option<&Secret>) -> Result<Credentials, Invalid> {
    let data = secret.map(secret_data).ok_or_else(|| {
        Invalid::new(
            "OnboardingSecretNotFound",
            format!("onboarding Secret {name} not found"),
        )
    })?;
    let get = |key: &str| {
        data.get(key)
            .filter(|v| !v.trim().is_empty())
            .cloned()
            .ok_or_else(|| {
                Invalid::new(
                    "MissingKey",
                    format!("onboarding Secret {name} has no {key}"),
                )
            })
    };
    let (cert_pem, key_pem, api_key) = (get(TLS_CRT)?, get(TLS_KEY)?, get(API_KEY)?);
    let info = check_pair(&cert_pem, &key_pem)
        .map_err(|e| Invalid::new(e.reason(), format!("onboarding Secret {name}: {e}")))?;
    Ok(Credentials {
        cert_pem,
        key_pem,
        api_key: api_key.trim().to_string(),
        info,
    })
}

fn check_pair(cert_pem: &str, key_pem: &str) -> Result<CertInfo, pki::PkiError> {
    let chain = pki::parse_chain(cert_pem)?;
    pki::check_key_matches(cert_pem, key_pem)?;
    chain.into_iter().next().ok_or(pki::PkiError::NoCertificate)
}

/// The output Secret's certificate, key and `apiKey`, when they form a usable pair. Anything
/// else (absent, damaged, edited by hand) counts as "nothing published".
pub fn read_output(secret: Option<&Secret>) -> Option<Credentials> {
    let data = secret.map(secret_data)?;
    let cert_pem = data.get(TLS_CRT)?.clone();
    let key_pem = data.get(TLS_KEY)?.clone();
    let info = check_pair(&cert_pem, &key_pem).ok()?;
    Some(Credentials {
        cert_pem,
        key_pem,
        api_key: data.get(API_KEY).cloned().unwrap_or_default(),
        info,
    })
}

/// An existing output Secret that certrotor must not write over: another type (the apply would
/// fail after the vendor has issued the certificate), or one another controller owns.
pub fn output_conflict(name: &str, secret: Option<&Secret>, our_uid: &str) -> Option<Invalid> {
    let secret = secret?;
    if let Some(type_) = secret.type_.as_deref()
        && type_ != "kubernetes.io/tls"
    {
        return Some(Invalid::new(
            "OutputSecretConflict",
            format!(
                "Secret {name} exists with type {type_}; the output must be kubernetes.io/tls (a Secret's type cannot change): delete it or choose another secretName"
            ),
        ));
    }
    let foreign = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.uid != our_uid)?;
    Some(Invalid::new(
        "OutputSecretConflict",
        format!(
            "Secret {name} is controlled by {} {}; certrotor does not write over another controller's Secret: choose another secretName",
            foreign.kind, foreign.name
        ),
    ))
}

pub fn algorithm_name(alg: KeyAlgorithm) -> String {
    format!("{alg:?}")
}

/// The pending key to reuse: of the wanted type, and not the key already published (which
/// is what a crash between writing the output Secret and deleting the pending one leaves).
pub fn reusable_pending_key(
    secret: Option<&Secret>,
    alg: KeyAlgorithm,
    published: Option<&CertInfo>,
) -> Option<String> {
    let data = secret.map(secret_data)?;
    if data.get(KEY_ALGORITHM) != Some(&algorithm_name(alg)) {
        return None;
    }
    let key = data.get(TLS_KEY)?;
    let public = pki::private_key_public_der(key).ok()?;
    if published.is_some_and(|p| p.public_key_der == public) {
        return None;
    }
    Some(key.clone())
}

/// Endpoints compared without a trailing slash or case differences in scheme and host.
pub fn normalize_endpoint(endpoint: &str) -> String {
    endpoint.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// What two DeviceIdCredentials may not share: each is one registry at the vendor (its
/// budget, its two-certificate window), or one output Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// The same endpoint and onboarding certificate: one budget, one two-certificate window.
    OnboardingCredentials,
    /// The same endpoint and certName: refreshes of one would evict the other's certificates.
    CertName,
    /// The same output Secret in one namespace: each would overwrite the other's credential.
    OutputSecret,
}

impl Shared {
    pub fn reason(self) -> &'static str {
        match self {
            Shared::OnboardingCredentials => "SharedOnboardingCredentials",
            Shared::CertName => "SharedCertName",
            Shared::OutputSecret => "SharedOutputSecret",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Shared::OnboardingCredentials => {
                "the same endpoint and onboarding certificate; two resources refreshing with one credential would evict each other's certificates. Onboard a separate credential for this one"
            }
            Shared::CertName => {
                "the same endpoint and certName; refreshes under one name would evict each other's certificates. Give this one its own certName"
            }
            Shared::OutputSecret => {
                "the same output secretName in this namespace; each would overwrite the other's credential. Give this one its own secretName"
            }
        }
    }
}

/// The oldest other resource (in any namespace, paused ones included) that shares a vendor
/// registry or the output Secret with `me`, and what it shares. The older one keeps it; the
/// newer is stopped before any call.
pub fn older_sharing<'a>(
    me: &DeviceIdCredential,
    onboarding_fingerprint: &str,
    others: impl IntoIterator<Item = &'a DeviceIdCredential>,
) -> Option<(String, Shared)> {
    let endpoint = normalize_endpoint(&me.spec.endpoint);
    let key = |d: &DeviceIdCredential| {
        (
            d.creation_timestamp().map(|t| t.0),
            d.namespace().unwrap_or_default(),
            d.name_any(),
        )
    };
    let mine = key(me);
    let shares = |o: &DeviceIdCredential| {
        let same_endpoint = normalize_endpoint(&o.spec.endpoint) == endpoint;
        if same_endpoint
            && o.status
                .as_ref()
                .and_then(|s| s.onboarding_fingerprint.as_deref())
                == Some(onboarding_fingerprint)
        {
            Some(Shared::OnboardingCredentials)
        } else if same_endpoint && o.spec.cert_name == me.spec.cert_name {
            Some(Shared::CertName)
        } else if o.namespace() == me.namespace() && o.spec.secret_name == me.spec.secret_name {
            Some(Shared::OutputSecret)
        } else {
            None
        }
    };
    others
        .into_iter()
        .filter(|o| o.uid() != me.uid())
        .filter(|o| key(o) < mine)
        .filter_map(|o| shares(o).map(|what| (key(o), o, what)))
        .min_by_key(|(k, _, _)| k.clone())
        .map(|(_, o, what)| {
            (
                format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()),
                what,
            )
        })
}

/// Whether the output certificate is usable at `now`.
pub fn is_valid(info: &CertInfo, now: Timestamp) -> bool {
    info.not_before <= now && now < info.not_after
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DeviceIdCredentialStatus;
    use crate::pki::ca::Ca;
    use k8s_openapi::ByteString;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn issued() -> (String, String) {
        let ca = Ca::new("Vendor CA").unwrap();
        let now = Timestamp::now();
        ca.issue_client(
            "acme",
            &[],
            now - jiff::SignedDuration::from_hours(1),
            now + jiff::SignedDuration::from_hours(24),
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap()
    }

    #[test]
    fn onboarding_needs_all_three_and_a_matching_pair() {
        let (crt, key) = issued();
        let (_, other_key) = issued();
        assert_eq!(
            read_onboarding("o", None).unwrap_err().reason,
            "OnboardingSecretNotFound"
        );
        let missing = secret(&[(TLS_CRT, &crt), (TLS_KEY, &key)]);
        let err = read_onboarding("o", Some(&missing)).unwrap_err();
        assert_eq!(err.reason, "MissingKey");
        assert!(err.message.contains("apiKey"));
        let bad = secret(&[(TLS_CRT, "not pem"), (TLS_KEY, &key), (API_KEY, "k")]);
        assert_eq!(
            read_onboarding("o", Some(&bad)).unwrap_err().reason,
            "NoCertificate"
        );
        let mismatch = secret(&[(TLS_CRT, &crt), (TLS_KEY, &other_key), (API_KEY, "k")]);
        assert_eq!(
            read_onboarding("o", Some(&mismatch)).unwrap_err().reason,
            "KeyMismatch"
        );
        let good = secret(&[(TLS_CRT, &crt), (TLS_KEY, &key), (API_KEY, "k")]);
        let creds = read_onboarding("o", Some(&good)).unwrap();
        assert_eq!(
            creds.info.fingerprint,
            pki::fingerprint_of_leaf(&crt).unwrap()
        );
        assert!(!format!("{creds:?}").contains("PRIVATE"));
    }

    #[test]
    fn pending_key_is_reused_only_when_of_the_right_type_and_not_published() {
        let (crt, key) = issued();
        let info = pki::parse_chain(&crt).unwrap().remove(0);
        let p256 = algorithm_name(KeyAlgorithm::EcdsaP256);
        let pending = secret(&[(TLS_KEY, &key), (KEY_ALGORITHM, &p256)]);
        assert_eq!(
            reusable_pending_key(Some(&pending), KeyAlgorithm::EcdsaP256, None),
            Some(key.clone())
        );
        assert_eq!(
            reusable_pending_key(Some(&pending), KeyAlgorithm::EcdsaP384, None),
            None
        );
        assert_eq!(
            reusable_pending_key(Some(&pending), KeyAlgorithm::EcdsaP256, Some(&info)),
            None
        );
    }

    #[test]
    fn the_oldest_resource_keeps_shared_onboarding_credentials() {
        let make = |ns: &str, name: &str, created: i64, fp: Option<&str>| {
            let mut d = DeviceIdCredential::new(
                name,
                serde_json::from_value(serde_json::json!({
                    "endpoint": "https://cie.test/", "onboardingSecretRef": {"name": "o"},
                    "certName": format!("{ns}-{name}"), "secretName": "s"
                }))
                .unwrap(),
            );
            d.metadata.namespace = Some(ns.into());
            d.metadata.uid = Some(format!("{ns}/{name}"));
            d.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::from_second(created).unwrap(),
                ));
            d.status = Some(DeviceIdCredentialStatus {
                onboarding_fingerprint: fp.map(str::to_string),
                ..Default::default()
            });
            d
        };
        let old = make("a", "old", 100, Some("fp"));
        let new = make("b", "new", 200, Some("fp"));
        let unrelated = make("c", "other", 50, Some("other-fp"));
        let all = [old.clone(), new.clone(), unrelated];
        assert_eq!(
            older_sharing(&new, "fp", &all),
            Some(("a/old".into(), Shared::OnboardingCredentials))
        );
        assert_eq!(older_sharing(&old, "fp", &all), None);
        let mut other_endpoint = make("d", "elsewhere", 10, Some("fp"));
        other_endpoint.spec.endpoint = "https://eu.cie.test".into();
        assert_eq!(older_sharing(&old, "fp", [&other_endpoint]), None);
        // Other onboarding credentials, but the same certName on the same endpoint.
        let mut same_name = make("e", "same-name", 10, Some("fp2"));
        same_name.spec.cert_name = old.spec.cert_name.clone();
        assert_eq!(
            older_sharing(&old, "fp", [&same_name]),
            Some(("e/same-name".into(), Shared::CertName))
        );
        // The same output Secret in the same namespace, whatever else differs.
        let mut same_secret = make("a", "same-secret", 10, Some("fp3"));
        same_secret.spec.endpoint = "https://eu.cie.test".into();
        assert_eq!(
            older_sharing(&old, "fp", [&same_secret]),
            Some(("a/same-secret".into(), Shared::OutputSecret))
        );
    }
}
