//! Reading and checking what the user gave us (spec and source Secret): pure functions, so bad
//! input is caught before any tenant call.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;

use super::plan::{Invalid, Source, SourceCert};
use crate::api::{KeySource, TenantCertificateSpec, parse_duration};
use crate::pki;

pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

/// What the CRD's CEL rules say, checked again here: an API server without CEL (or an object
/// stored before the rules existed) must not reach the tenant with it.
pub fn validate_spec(spec: &TenantCertificateSpec) -> Result<(), Invalid> {
    let invalid = |reason, message: String| Err(Invalid { reason, message });
    if spec.secret_ref.name.trim().is_empty() {
        return invalid("InvalidSpec", "spec.secretRef.name is required".into());
    }
    if spec.tenant.credentials_secret_ref.name.trim().is_empty() {
        return invalid(
            "InvalidSpec",
            "spec.tenant.credentialsSecretRef.name is required".into(),
        );
    }
    if let Some(rb) = &spec.renew_before
        && let Err(e) = parse_duration(rb)
    {
        return invalid("InvalidRenewBefore", format!("spec.renewBefore: {e}"));
    }
    if spec.revision_history_limit.is_some_and(|l| l < 0) {
        return invalid(
            "InvalidSpec",
            "spec.revisionHistoryLimit must not be negative".into(),
        );
    }
    if spec.issuer_ref.is_some() && spec.key_source != KeySource::Tenant {
        return invalid(
            "IssuerRefNeedsTenant",
            "spec.issuerRef needs keySource Tenant: cert-manager signs the tenant's CSR".into(),
        );
    }
    if let Some(d) = &spec.duration
        && let Err(e) = parse_duration(d)
    {
        return invalid("InvalidSpec", format!("spec.duration: {e}"));
    }
    match (&spec.key_source, &spec.csr) {
        (KeySource::Tenant, None) => {
            invalid("CsrRequired", "keySource Tenant needs spec.csr".into())
        }
        (KeySource::Tenant, Some(csr)) => {
            if csr.common_name.trim().is_empty() {
                return invalid("InvalidCsr", "spec.csr.commonName is required".into());
            }
            let names = std::iter::once(&csr.common_name).chain(&csr.subject_alternative_names);
            if let Some(wild) = names.into_iter().find(|n| n.contains('*')) {
                return invalid(
                    "WildcardSubjectAlternativeName",
                    format!("{wild:?}: the tenant rejects wildcard names; list each name"),
                );
            }
            for (field, value) in [
                ("country", &csr.country),
                ("jurisdictionCountry", &csr.jurisdiction_country),
            ] {
                if let Some(v) = value
                    && (v.len() != 2 || !v.chars().all(|c| c.is_ascii_uppercase()))
                {
                    return invalid(
                        "InvalidCsr",
                        format!("spec.csr.{field} {v:?} must be two capital letters, e.g. US"),
                    );
                }
            }
            Ok(())
        }
        (KeySource::Local, _) => Ok(()),
    }
}

/// The smallest spec that [`read_source`] can check a Secret against, outside a resource: what
/// `certrotor inspect` and the fuzz targets use.
pub fn spec_for_checks(key_source: KeySource, secret_name: &str) -> TenantCertificateSpec {
    use crate::api::{SecretReference, TenantSpec};
    TenantCertificateSpec {
        tenant: TenantSpec {
            url: "https://tenant.invalid".into(),
            credentials_secret_ref: SecretReference {
                name: "unused".into(),
            },
            ca_bundle: None,
        },
        key_source,
        secret_ref: SecretReference {
            name: secret_name.to_string(),
        },
        csr: None,
        active: true,
        renew_before: None,
        deletion_policy: Default::default(),
        revision_history_limit: None,
        issuer_ref: None,
        duration: None,
    }
}

/// Reads the source Secret. Local: chain and key must be present and consistent. Tenant: no
/// chain yet is normal (a CA has not signed the CSR); a chain present must be well formed.
pub fn read_source(
    spec: &TenantCertificateSpec,
    secret: Option<&Secret>,
    now: Timestamp,
) -> Result<Source, Invalid> {
    let name = &spec.secret_ref.name;
    let data = secret.map(secret_data);
    let chain = data
        .as_ref()
        .and_then(|d| d.get(TLS_CRT))
        .filter(|v| !v.trim().is_empty());
    let chain = match (spec.key_source, secret, chain) {
        (KeySource::Tenant, _, None) => return Ok(Source::NoChain),
        (KeySource::Local, None, _) => {
            return Err(Invalid {
                reason: "SecretNotFound",
                message: format!("Secret {name} not found"),
            });
        }
        (KeySource::Local, Some(_), None) => {
            return Err(Invalid {
                reason: "MissingKey",
                message: format!("Secret {name} has no {TLS_CRT}"),
            });
        }
        (_, _, Some(chain)) => chain.clone(),
    };
    let infos = pki::check_chain(&chain, now).map_err(|e| Invalid {
        reason: e.reason(),
        message: format!("Secret {name} {TLS_CRT}: {e}"),
    })?;
    let leaf = infos.into_iter().next().ok_or(Invalid {
        reason: "NoCertificate",
        message: format!("Secret {name} {TLS_CRT} holds no certificate"),
    })?;
    if let Some(wild) = leaf
        .subject_alternative_names
        .iter()
        .find(|n| n.contains('*'))
    {
        return Err(Invalid {
            reason: "WildcardSubjectAlternativeName",
            message: format!(
                "Secret {name}: the leaf names {wild:?}; the tenant rejects wildcard names"
            ),
        });
    }
    let key_pem = match spec.key_source {
        KeySource::Tenant => None,
        KeySource::Local => {
            let key = data
                .as_ref()
                .and_then(|d| d.get(TLS_KEY))
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| Invalid {
                    reason: "MissingKey",
                    message: format!("Secret {name} has no {TLS_KEY}"),
                })?;
            pki::check_key_matches(&chain, key).map_err(|e| Invalid {
                reason: e.reason(),
                message: format!("Secret {name}: {e}"),
            })?;
            Some(pki::private_key_to_pkcs8_pem(key).map_err(|e| Invalid {
                reason: e.reason(),
                message: format!("Secret {name} {TLS_KEY}: {e}"),
            })?)
        }
    };
    Ok(Source::Present(Box::new(SourceCert {
        chain_pem: chain,
        key_pem,
        leaf,
    })))
}

/// A Secret's data and stringData as text (non-UTF-8 values are dropped).
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
