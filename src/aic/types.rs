//! Wire types of the AIC certificate API. Tolerant: unknown fields are ignored, `null` SANs
//! read as empty, and every field the tenant may omit is optional.

use serde::{Deserialize, Deserializer, Serialize};

/// `GET /environment/certificates[/{id}]`. The API never returns the PEM, serial or fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    pub id: String,
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub live: bool,
    #[serde(default)]
    pub expire_time: Option<String>,
    #[serde(default)]
    pub valid_from_time: Option<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub subject_alternative_names: Vec<String>,
}

/// `GET /environment/csrs[/{id}]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Csr {
    pub id: String,
    #[serde(default)]
    pub algorithm: Option<String>,
    /// Set once a signed chain has been uploaded to the CSR.
    #[serde(default, rename = "certificateID", alias = "certificateId")]
    pub certificate_id: Option<String>,
    #[serde(default)]
    pub created_date: Option<String>,
    /// The CSR PEM.
    #[serde(default)]
    pub request: String,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub subject_alternative_names: Vec<String>,
}

/// `POST /environment/csrs`. Unused fields are omitted rather than sent empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CsrRequest {
    pub common_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organizational_unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub street_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub business_category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// The seed's example says `jurisdictionLocality`; the spec and real clients use this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jurisdiction_city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jurisdiction_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jurisdiction_country: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alternative_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
}

impl From<&crate::api::CsrSpec> for CsrRequest {
    fn from(spec: &crate::api::CsrSpec) -> Self {
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        Self {
            common_name: spec.common_name.clone(),
            organization: nonempty(&spec.organization),
            organizational_unit: nonempty(&spec.organizational_unit),
            country: nonempty(&spec.country),
            state: nonempty(&spec.state),
            city: nonempty(&spec.city),
            street_address: nonempty(&spec.street_address),
            postal_code: nonempty(&spec.postal_code),
            email: nonempty(&spec.email),
            business_category: nonempty(&spec.business_category),
            serial_number: nonempty(&spec.serial_number),
            jurisdiction_city: nonempty(&spec.jurisdiction_city),
            jurisdiction_state: nonempty(&spec.jurisdiction_state),
            jurisdiction_country: nonempty(&spec.jurisdiction_country),
            subject_alternative_names: spec.subject_alternative_names.clone(),
            algorithm: Some(
                match spec.algorithm {
                    crate::api::CsrAlgorithm::Rsa => "rsa",
                    crate::api::CsrAlgorithm::Ecdsa => "ecdsa",
                }
                .to_string(),
            ),
        }
    }
}

/// `POST /environment/certificates`. Debug never shows the key.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UploadCertificate<'a> {
    pub certificate: &'a str,
    pub private_key: &'a str,
    pub active: bool,
}

/// The vendor's error body.
#[derive(Debug, Clone, Deserialize, Default)]
pub(crate) struct ErrorBody {
    #[serde(default, deserialize_with = "code_as_string")]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// `code` is a number on some endpoints and a string on others.
fn code_as_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_tolerates_null_sans_and_unknown_fields() {
        let c: Certificate = serde_json::from_str(
            r#"{"id":"ccrt-1","active":true,"live":false,"subjectAlternativeNames":null,"somethingNew":42}"#,
        )
        .unwrap();
        assert!(c.subject_alternative_names.is_empty());
        assert!(c.active && !c.live);
    }

    #[test]
    fn csr_reads_certificate_id() {
        let c: Csr = serde_json::from_str(
            r#"{"id":"u","request":"pem","certificateID":"ccrt-9","subjectAlternativeNames":["a"]}"#,
        )
        .unwrap();
        assert_eq!(c.certificate_id.as_deref(), Some("ccrt-9"));
    }

    #[test]
    fn csr_request_omits_unused_fields() {
        let spec = crate::api::CsrSpec {
            common_name: "login.example.com".into(),
            organization: Some("".into()),
            jurisdiction_city: Some("Springfield".into()),
            ..Default::default()
        };
        let json = serde_json::to_value(CsrRequest::from(&spec)).unwrap();
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["algorithm", "commonName", "jurisdictionCity"]);
        assert!(!json.to_string().contains("jurisdictionLocality"));
    }

    #[test]
    fn error_code_may_be_number_or_string() {
        let a: ErrorBody = serde_json::from_str(r#"{"code":400,"message":"m"}"#).unwrap();
        let b: ErrorBody = serde_json::from_str(r#"{"code":"BAD","message":"m"}"#).unwrap();
        assert_eq!(a.code.as_deref(), Some("400"));
        assert_eq!(b.code.as_deref(), Some("BAD"));
    }
}
