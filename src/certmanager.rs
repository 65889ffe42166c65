//! The few fields of cert-manager's `CertificateRequest` (`cert-manager.io/v1`) that certrotor
//! uses, typed here rather than through a crate: no maintained crate of cert-manager types builds
//! against kube 5 and k8s-openapi 0.29. The fields and their meaning follow cert-manager's API
//! reference (https://cert-manager.io/docs/reference/api-docs/#cert-manager.io/v1.CertificateRequest):
//! `spec.request`, `status.certificate` and `status.ca` are PEM, base64-encoded (Go `[]byte`);
//! `status.conditions` carries `Approved`, `Denied` and `Ready` (reason `Issued`, `Pending`,
//! `Failed` or `Denied`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "cert-manager.io";
/// Marks the CertificateRequests certrotor creates; its watch sees only these.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The uid of the TenantCertificate a request belongs to.
pub const OWNER_LABEL: &str = "certrotor.io/owner-uid";

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "CertificateRequest",
    namespaced,
    status = "CertificateRequestStatus",
    shortname = "cr"
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestSpec {
    /// The PEM CSR, base64-encoded.
    pub request: String,
    pub issuer_ref: ObjectReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usages: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<RequestCondition>,
    /// The signed certificate (and possibly its chain), PEM, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The CA that signed it, PEM, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_time: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RequestCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// Where a CertificateRequest stands, as certrotor acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestState {
    /// Not approved yet (approver-policy, or cert-manager's internal approver).
    AwaitingApproval,
    /// Approved; the issuer has not answered yet.
    Issuing,
    /// Signed: the chain, leaf first, with the CA appended when the issuer left it out.
    Issued {
        chain: String,
    },
    Denied {
        reason: String,
        message: String,
    },
    Failed {
        reason: String,
        message: String,
    },
}

impl CertificateRequest {
    fn condition(&self, type_: &str) -> Option<&RequestCondition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }

    pub fn state(&self) -> RequestState {
        let holds = |type_| self.condition(type_).is_some_and(|c| c.status == "True");
        let text = |c: Option<&RequestCondition>| {
            (
                c.and_then(|c| c.reason.clone()).unwrap_or_default(),
                c.and_then(|c| c.message.clone()).unwrap_or_default(),
            )
        };
        if holds("Denied") {
            let (reason, message) = text(self.condition("Denied"));
            return RequestState::Denied { reason, message };
        }
        let ready = self.condition("Ready");
        if let Some(c) =
            ready.filter(|c| c.status == "False" && c.reason.as_deref() == Some("Failed"))
        {
            let (reason, message) = text(Some(c));
            return RequestState::Failed { reason, message };
        }
        if ready.is_some_and(|c| c.status == "True") {
            let status = self.status.as_ref();
            let decode = |v: Option<&String>| {
                v.and_then(|b| STANDARD.decode(b.trim()).ok())
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default()
            };
            let cert = decode(status.and_then(|s| s.certificate.as_ref()));
            let ca = decode(status.and_then(|s| s.ca.as_ref()));
            return RequestState::Issued {
                chain: with_ca(&cert, &ca),
            };
        }
        if holds("Approved") {
            RequestState::Issuing
        } else {
            RequestState::AwaitingApproval
        }
    }
}

/// The chain with the CA appended unless it already ends with it.
pub fn with_ca(chain: &str, ca: &str) -> String {
    let ca = ca.trim();
    if ca.is_empty() || chain.contains(ca) {
        return chain.to_string();
    }
    let mut out = chain.trim_end().to_string();
    out.push('\n');
    out.push_str(ca);
    out.push('\n');
    out
}

/// The request's name: the resource's name and a digest of the CSR id, so each tenant CSR has
/// exactly one CertificateRequest and a crash between creating it and recording it finds it again.
pub fn request_name(resource: &str, csr_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(csr_id.as_bytes());
    let short: String = digest[..5].iter().map(|b| format!("{b:02x}")).collect();
    let base: String = resource.chars().take(253 - 11).collect();
    format!("{}-{short}", base.trim_end_matches(['-', '.']))
}

pub fn encode(pem: &str) -> String {
    STANDARD.encode(pem.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_conditions(conditions: &[(&str, &str, &str)]) -> CertificateRequest {
        let mut cr = CertificateRequest::new("r", CertificateRequestSpec::default());
        cr.status = Some(CertificateRequestStatus {
            conditions: conditions
                .iter()
                .map(|(t, s, r)| RequestCondition {
                    type_: t.to_string(),
                    status: s.to_string(),
                    reason: Some(r.to_string()),
                    message: Some(format!("{t} {r}")),
                    last_transition_time: None,
                })
                .collect(),
            certificate: Some(encode("LEAF\n")),
            ca: Some(encode("CA\n")),
            failure_time: None,
        });
        cr
    }

    #[test]
    fn states_follow_cert_managers_conditions() {
        assert_eq!(with_conditions(&[]).state(), RequestState::AwaitingApproval);
        assert_eq!(
            with_conditions(&[
                ("Approved", "True", "policy"),
                ("Ready", "False", "Pending")
            ])
            .state(),
            RequestState::Issuing
        );
        assert_eq!(
            with_conditions(&[("Approved", "True", "p"), ("Ready", "True", "Issued")]).state(),
            RequestState::Issued {
                chain: "LEAF\nCA\n".into()
            }
        );
        assert!(matches!(
            with_conditions(&[("Denied", "True", "Policy"), ("Ready", "False", "Denied")]).state(),
            RequestState::Denied { .. }
        ));
        assert!(matches!(
            with_conditions(&[("Approved", "True", "p"), ("Ready", "False", "Failed")]).state(),
            RequestState::Failed { .. }
        ));
    }

    #[test]
    fn names_are_deterministic_and_bounded() {
        assert_eq!(request_name("idp", "csr-1"), request_name("idp", "csr-1"));
        assert_ne!(request_name("idp", "csr-1"), request_name("idp", "csr-2"));
        assert!(request_name(&"a".repeat(300), "x").len() <= 253);
        assert_eq!(with_ca("L\nC\n", "C"), "L\nC\n");
    }
}
