//! The tenant's certificates and CSRs, and the decisions the API makes about them. Time is a
//! parameter: `live` is computed from the last `active` flip, never by a background task.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::pki::{self, CsrSubject, KeyAlgorithm};

/// A CSR as the tenant keeps it, including the key that never leaves the tenant.
pub(crate) struct CsrEntry {
    pub id: String,
    pub algorithm: &'static str,
    pub created: jiff::Timestamp,
    pub request: String,
    pub key_pem: String,
    pub subject: String,
    pub subject_alternative_names: Vec<String>,
    pub certificate_id: Option<String>,
    pub deleted: bool,
}

pub(crate) struct CertEntry {
    pub id: String,
    pub active: bool,
    /// When `live` catches up with the last change of `active`: the load balancer's delay is
    /// fixed when the change is made. `None` means `live` has always equalled `active`.
    pub settles_at: Option<Instant>,
    /// `live` just before that flip: it stays so until the load balancer catches up.
    pub live_before_flip: bool,
    pub fingerprint: String,
    pub subject: String,
    pub issuer: String,
    pub subject_alternative_names: Vec<String>,
    pub not_before: jiff::Timestamp,
    pub not_after: jiff::Timestamp,
    pub created_by_support: bool,
    pub csr_id: Option<String>,
    pub deleted: bool,
}

/// `live` follows `active` once the delay in force at the last flip has passed.
pub(crate) fn live_at(cert: &CertEntry, now: Instant) -> bool {
    match cert.settles_at {
        None => cert.active,
        Some(at) if now >= at => cert.active,
        Some(_) => cert.live_before_flip,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeleteOutcome {
    Deleted,
    /// 400: still active.
    Active,
    /// 500 with an empty body: the load balancer has not let go of it yet.
    StillDetaching,
}

/// Observed: deleting an active certificate is refused; deleting one that was live until
/// recently fails with an empty 500 for `window` after `live` turned false.
pub(crate) fn delete_outcome(cert: &CertEntry, now: Instant, window: Duration) -> DeleteOutcome {
    if cert.active {
        return DeleteOutcome::Active;
    }
    match cert.settles_at {
        Some(unlive_at) if cert.live_before_flip => {
            if now < unlive_at || now.saturating_duration_since(unlive_at) < window {
                DeleteOutcome::StillDetaching
            } else {
                DeleteOutcome::Deleted
            }
        }
        _ => DeleteOutcome::Deleted,
    }
}

/// Sets `active`, starting a new `live` transition only when it changes.
pub(crate) fn set_active(cert: &mut CertEntry, active: bool, now: Instant, live_delay: Duration) {
    if cert.active != active {
        cert.live_before_flip = live_at(cert, now);
        cert.active = active;
        cert.settles_at = Some(now + live_delay);
    }
}

/// The certificate object of the API. SANs are `null`, not `[]`, when there are none.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CertificateView {
    id: String,
    active: bool,
    live: bool,
    expire_time: String,
    valid_from_time: String,
    issuer: String,
    subject: String,
    subject_alternative_names: Option<Vec<String>>,
}

pub(crate) fn certificate_view(cert: &CertEntry, now: Instant) -> CertificateView {
    CertificateView {
        id: cert.id.clone(),
        active: cert.active,
        live: live_at(cert, now),
        expire_time: cert.not_after.to_string(),
        valid_from_time: cert.not_before.to_string(),
        issuer: cert.issuer.clone(),
        subject: cert.subject.clone(),
        subject_alternative_names: (!cert.subject_alternative_names.is_empty())
            .then(|| cert.subject_alternative_names.clone()),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CsrView {
    id: String,
    algorithm: &'static str,
    created_date: String,
    request: String,
    subject: String,
    subject_alternative_names: Vec<String>,
    #[serde(rename = "certificateID", skip_serializing_if = "Option::is_none")]
    certificate_id: Option<String>,
}

pub(crate) fn csr_view(csr: &CsrEntry) -> CsrView {
    CsrView {
        id: csr.id.clone(),
        algorithm: csr.algorithm,
        created_date: csr.created.to_string(),
        request: csr.request.clone(),
        subject: csr.subject.clone(),
        subject_alternative_names: csr.subject_alternative_names.clone(),
        certificate_id: csr.certificate_id.clone(),
    }
}

/// A 400 with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadRequest(pub String);

fn optional_string(body: &Value, field: &str) -> Result<Option<String>, BadRequest> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(BadRequest(format!("{field} must be a string"))),
    }
}

fn is_country_code(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// A validated `POST /environment/csrs` body: the subject and the key algorithm. Unknown
/// fields are ignored; street, postal code and EV fields are accepted but not encoded.
pub(crate) fn parse_csr_request(body: &Value) -> Result<(CsrSubject, KeyAlgorithm), BadRequest> {
    if !body.is_object() {
        return Err(BadRequest("body must be a JSON object".to_owned()));
    }
    for field in [
        "streetAddress",
        "postalCode",
        "businessCategory",
        "serialNumber",
        "jurisdictionCity",
        "jurisdictionState",
        "jurisdictionCountry",
    ] {
        optional_string(body, field)?;
    }
    let country = optional_string(body, "country")?;
    if let Some(country) = country.as_deref().filter(|c| !is_country_code(c)) {
        return Err(BadRequest(format!(
            "country {country:?} must be two capital letters"
        )));
    }
    let sans = match body.get("subjectAlternativeNames") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| BadRequest("subjectAlternativeNames must be strings".to_owned()))?,
        Some(_) => {
            return Err(BadRequest(
                "subjectAlternativeNames must be an array".to_owned(),
            ));
        }
    };
    if let Some(wildcard) = sans.iter().find(|s| s.contains('*')) {
        return Err(BadRequest(format!(
            "Wildcards are not permitted in subject alternative names: {wildcard}"
        )));
    }
    let algorithm = match optional_string(body, "algorithm")?.as_deref() {
        None | Some("rsa") => KeyAlgorithm::Rsa2048,
        Some("ecdsa") => KeyAlgorithm::EcdsaP256,
        Some(other) => return Err(BadRequest(format!("unknown algorithm {other:?}"))),
    };
    let subject = CsrSubject {
        common_name: optional_string(body, "commonName")?,
        organization: optional_string(body, "organization")?,
        organizational_unit: optional_string(body, "organizationalUnit")?,
        country,
        state: optional_string(body, "state")?,
        city: optional_string(body, "city")?,
        email: optional_string(body, "email")?,
        subject_alternative_names: sans,
    };
    Ok((subject, algorithm))
}

/// Makes the tenant-side key and CSR.
pub(crate) fn new_csr(
    subject: &CsrSubject,
    algorithm: KeyAlgorithm,
    created: jiff::Timestamp,
) -> Result<CsrEntry, BadRequest> {
    let key_pem = pki::generate_key(algorithm).map_err(|e| BadRequest(e.to_string()))?;
    let request = pki::generate_csr(&key_pem, subject).map_err(|e| BadRequest(e.to_string()))?;
    let info = pki::csr_info(&request).map_err(|e| BadRequest(e.to_string()))?;
    Ok(CsrEntry {
        id: uuid::Uuid::new_v4().to_string(),
        algorithm: match algorithm {
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => "SHA256-ECDSA",
            _ => "SHA256-RSA",
        },
        created,
        request,
        key_pem,
        subject: info.subject,
        subject_alternative_names: info.subject_alternative_names,
        certificate_id: None,
        deleted: false,
    })
}

/// A new, inactive certificate from a chain whose leaf carries `key_pem`'s public key.
pub(crate) fn new_certificate(chain_pem: &str, key_pem: &str) -> Result<CertEntry, BadRequest> {
    let chain = pki::parse_chain(chain_pem).map_err(|e| BadRequest(e.to_string()))?;
    pki::check_key_matches(chain_pem, key_pem).map_err(|e| BadRequest(e.to_string()))?;
    let leaf = &chain[0];
    Ok(CertEntry {
        id: format!("ccrt-{}", uuid::Uuid::new_v4()),
        active: false,
        settles_at: None,
        live_before_flip: false,
        fingerprint: leaf.fingerprint.clone(),
        subject: leaf.subject.clone(),
        issuer: leaf.issuer.clone(),
        subject_alternative_names: leaf.subject_alternative_names.clone(),
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        created_by_support: false,
        csr_id: None,
        deleted: false,
    })
}

/// The `active` value of a certificate PATCH body, which may hold nothing else.
pub(crate) fn parse_active_patch(body: &Value) -> Result<bool, BadRequest> {
    let object = body
        .as_object()
        .ok_or_else(|| BadRequest("body must be a JSON object".to_owned()))?;
    if let Some(other) = object.keys().find(|k| *k != "active") {
        return Err(BadRequest(format!(
            "Only 'active' can be updated, not '{other}'"
        )));
    }
    object
        .get("active")
        .and_then(Value::as_bool)
        .ok_or_else(|| BadRequest("active must be a boolean".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cert(active: bool) -> CertEntry {
        CertEntry {
            id: "ccrt-1".into(),
            active,
            settles_at: None,
            live_before_flip: false,
            fingerprint: String::new(),
            subject: String::new(),
            issuer: String::new(),
            subject_alternative_names: Vec::new(),
            not_before: jiff::Timestamp::UNIX_EPOCH,
            not_after: jiff::Timestamp::UNIX_EPOCH,
            created_by_support: false,
            csr_id: None,
            deleted: false,
        }
    }

    const DELAY: Duration = Duration::from_secs(60);
    const WINDOW: Duration = Duration::from_secs(17);

    #[test]
    fn live_follows_active_after_the_delay() {
        let t0 = Instant::now();
        let mut c = cert(false);
        assert!(!live_at(&c, t0));
        set_active(&mut c, true, t0, DELAY);
        assert!(!live_at(&c, t0 + Duration::from_secs(59)));
        assert!(live_at(&c, t0 + DELAY));
        // Setting the same value again does not restart the transition.
        set_active(&mut c, true, t0 + Duration::from_secs(61), DELAY);
        assert!(live_at(&c, t0 + Duration::from_secs(61)));
        let t1 = t0 + Duration::from_secs(100);
        set_active(&mut c, false, t1, DELAY);
        assert!(live_at(&c, t1 + Duration::from_secs(59)));
        assert!(!live_at(&c, t1 + DELAY));
    }

    #[test]
    fn delete_is_refused_while_active_and_fails_while_detaching() {
        let t0 = Instant::now();
        let mut c = cert(true);
        assert_eq!(delete_outcome(&c, t0, WINDOW), DeleteOutcome::Active);
        set_active(&mut c, false, t0, DELAY);
        assert_eq!(
            delete_outcome(&c, t0, WINDOW),
            DeleteOutcome::StillDetaching
        );
        let unlive = t0 + DELAY;
        assert_eq!(
            delete_outcome(&c, unlive + Duration::from_secs(16), WINDOW),
            DeleteOutcome::StillDetaching
        );
        assert_eq!(
            delete_outcome(&c, unlive + WINDOW, WINDOW),
            DeleteOutcome::Deleted
        );
        // Never live: nothing to detach.
        assert_eq!(
            delete_outcome(&cert(false), t0, WINDOW),
            DeleteOutcome::Deleted
        );
    }

    #[test]
    fn csr_request_validation() {
        let (subject, alg) = parse_csr_request(&json!({
            "commonName": "a.example.com", "country": "US", "subjectAlternativeNames": ["a.example.com"],
            "jurisdictionCity": "Wilmington", "somethingNew": 1
        }))
        .unwrap();
        assert_eq!(alg, KeyAlgorithm::Rsa2048);
        assert_eq!(subject.country.as_deref(), Some("US"));
        assert_eq!(
            parse_csr_request(&json!({"algorithm": "ecdsa"})).unwrap().1,
            KeyAlgorithm::EcdsaP256
        );
        for bad in [
            json!({"country": "us"}),
            json!({"country": "USA"}),
            json!({"subjectAlternativeNames": ["*.example.com"]}),
            json!({"subjectAlternativeNames": "a"}),
            json!({"algorithm": "dsa"}),
            json!({"commonName": 5}),
            json!([]),
        ] {
            assert!(parse_csr_request(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patch_takes_active_only() {
        assert_eq!(parse_active_patch(&json!({"active": true})), Ok(true));
        assert!(parse_active_patch(&json!({"active": true, "certificate": "x"})).is_err());
        assert!(parse_active_patch(&json!({"active": "yes"})).is_err());
        assert!(parse_active_patch(&json!({})).is_err());
    }

    #[test]
    fn views_hide_the_pem_and_null_empty_sans() {
        let view = serde_json::to_value(certificate_view(&cert(false), Instant::now())).unwrap();
        assert_eq!(view["subjectAlternativeNames"], Value::Null);
        assert!(view.get("certificate").is_none() && view.get("fingerprint").is_none());
        let mut with_sans = cert(true);
        with_sans.subject_alternative_names = vec!["a".into()];
        let view = serde_json::to_value(certificate_view(&with_sans, Instant::now())).unwrap();
        assert_eq!(view["subjectAlternativeNames"], json!(["a"]));
        assert_eq!(view["live"], json!(true));
    }
}
