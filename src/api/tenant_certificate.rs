//! `TenantCertificate`: a certificate installed on a PingOne Advanced Identity Cloud tenant.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{DURATION_RULE, SecretReference};

// Each printcolumn repeats `type_`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "certrotor.io",
    version = "v1alpha1",
    kind = "TenantCertificate",
    namespaced,
    shortname = "tcert",
    category = "certrotor",
    status = "TenantCertificateStatus",
    doc = "A certificate kept installed, active and rotated on a PingOne Advanced Identity Cloud tenant.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "Active", type_ = "boolean", json_path = ".status.active"),
    printcolumn(name = "Live", type_ = "boolean", json_path = ".status.live"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.notAfter"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].message"#,
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.keySource != 'Tenant' || has(self.csr)").message("keySource Tenant needs csr: the tenant makes the key and CSR from it"))]
#[x_kube(validation = Rule::new("!has(self.issuerRef) || self.keySource == 'Tenant'").message("issuerRef needs keySource Tenant: cert-manager signs the tenant's CSR (with keySource Local, cert-manager's Certificate writes the Secret)"))]
#[serde(rename_all = "camelCase")]
pub struct TenantCertificateSpec {
    /// The AIC tenant environment and how to authenticate to it.
    pub tenant: TenantSpec,
    /// `Local`: upload `tls.crt` and `tls.key` from `secretRef`. `Tenant`: the tenant makes the
    /// key and CSR; the signed chain is read from `secretRef`'s `tls.crt` once someone puts it there.
    #[serde(default)]
    pub key_source: KeySource,
    /// Secret (same namespace) with `tls.crt` (chain: leaf, intermediates, CA) and, for `Local`, `tls.key`.
    pub secret_ref: SecretReference,
    /// CSR fields, used with `keySource: Tenant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<CsrSpec>,
    /// Whether the certificate should be active on the tenant's load balancer. Default true.
    #[serde(default = "default_true")]
    pub active: bool,
    /// Tenant mode: start a new CSR this long before `notAfter` (Go duration). Default 720h, or a
    /// third of the lifetime when that is shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("renewBefore must be a duration such as 720h or 1h30m"))]
    pub renew_before: Option<String>,
    /// What happens in the tenant when this resource is deleted. Default Retain.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Old certificates kept (inactive) in the tenant after a rotation, and old cert-manager
    /// CertificateRequests kept. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 20))]
    pub revision_history_limit: Option<i32>,
    /// Tenant mode: have cert-manager sign each tenant CSR through a CertificateRequest for this
    /// Issuer or ClusterIssuer, so issuance and renewal need nobody.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerReference>,
    /// With `issuerRef`: the certificate duration to ask cert-manager for (Go duration, e.g.
    /// 2160h). Default: the issuer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("duration must be a duration such as 2160h"))]
    pub duration: Option<String>,
}

/// A cert-manager issuer.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerReference {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (same namespace, the default) or `ClusterIssuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self == 'Issuer' || self == 'ClusterIssuer'").message("issuerRef.kind must be Issuer or ClusterIssuer"))]
    pub kind: Option<String>,
    /// Default `cert-manager.io`; another group names an external issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub group: Option<String>,
}

fn default_true() -> bool {
    true
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Tenant environment base URL, e.g. https://openam-acme-use1.id.forgerock.io
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://127.0.0.1') || self.startsWith('http://localhost') || self.startsWith('http://[::1]')").message("tenant url must be https:// (plain http only for loopback)"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("tenant.url is immutable: create a new TenantCertificate for another tenant (deletionPolicy applies to the old one)"))]
    pub url: String,
    /// Secret with `serviceAccountId` + `privateKey` (the JWK JSON), or `accessToken`.
    pub credentials_secret_ref: SecretReference,
    /// Optional PEM bundle of CAs to trust for the tenant (proxies, simulators). At most 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub ca_bundle: Option<String>,
}

#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[schemars(extend("maxLength" = 6))]
pub enum KeySource {
    #[default]
    Local,
    Tenant,
}

#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[schemars(extend("maxLength" = 10))]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Deactivate,
    Delete,
}

#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "lowercase")]
#[schemars(extend("maxLength" = 5))]
pub enum CsrAlgorithm {
    #[default]
    Rsa,
    Ecdsa,
}

/// The AIC CSR request fields. Unused fields are omitted from the request.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CsrSpec {
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("!self.contains('*')").message("wildcards are not allowed"))]
    pub common_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub organization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub organizational_unit: Option<String>,
    /// Two capital letters (ISO 3166-1 alpha-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Z]{2}$')").message("country must be two capital letters, e.g. US"))]
    #[schemars(length(max = 2))]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub street_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 40))]
    pub postal_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub business_category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub serial_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub jurisdiction_city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub jurisdiction_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Z]{2}$')").message("jurisdictionCountry must be two capital letters"))]
    #[schemars(length(max = 2))]
    pub jurisdiction_country: Option<String>,
    /// DNS names, at most 100 of at most 253 characters.
    #[serde(default)]
    #[schemars(length(max = 100), inner(length(min = 1, max = 253)))]
    #[x_kube(validation = Rule::new("self.all(n, !n.contains('*'))").message("wildcard subjectAlternativeNames are rejected by the tenant"))]
    pub subject_alternative_names: Vec<String>,
    #[serde(default)]
    pub algorithm: CsrAlgorithm,
}

/// Written only by the operator.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TenantCertificateStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The certificate this resource currently serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alternative_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
    /// sha256 of the leaf we uploaded: the API never returns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Tenant mode: the CSR the current (or, while rotating, the next) certificate comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<CsrStatus>,
    /// A certificate being rolled in; it becomes `certificateId` once live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingCertificate>,
    /// Certificates this resource served before, newest first; deactivated, then deleted beyond
    /// `revisionHistoryLimit`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_certificate_ids: Vec<String>,
    /// The last `certrotor.io/renew` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_renew_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<String>,
    /// Consecutive failures, for the retry backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<i32>,
    /// The tenant refused a step for good (a 400): the same step is not tried again until the
    /// Secret, the spec or the renew request changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<TenantRejection>,
    /// Digest of what the current certificate was made from (`keySource`, and `spec.csr` in
    /// Tenant mode), and the generation that asked for it: while the spec asks for something
    /// else, a rotation is due and `observedGeneration` stays at that generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_for: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_generation: Option<i64>,
    /// Written before each creating call (an upload, a CSR): what is about to be made and which
    /// matching ids the tenant already had. After a lost answer or a crash, only something new
    /// since the intent that matches it is adopted; never what existed before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<CreateIntent>,
    /// With `issuerRef`: the cert-manager CertificateRequest for the pending CSR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_request: Option<String>,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CsrStatus {
    pub id: String,
    /// The CSR PEM, for the CA that signs it.
    pub request: String,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PendingCertificate {
    /// Set once the tenant has the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_id: Option<String>,
    /// sha256 of the leaf being rolled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Tenant mode: the CSR the pending certificate will come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<CsrStatus>,
    /// Why: `Renewal`, `SecretChanged`, `RenewRequested`, `SpecChanged`, `Initial`.
    pub reason: String,
    pub since: String,
    /// Digest of what the certificate is made from (`keySource`, and `spec.csr` in Tenant
    /// mode) when it was started: a change to the spec supersedes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_for: Option<String>,
}

/// A creating call about to be made (see `status.intent`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CreateIntent {
    /// `Certificate` (an upload) or `Csr`.
    pub kind: String,
    /// Certificate: the leaf's sha256 fingerprint, and its validity (with
    /// `subjectAlternativeNames`, how the tenant's list shows it: it never returns the PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// CSR: the common name asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    /// The SANs of the leaf, or those the CSR asks for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alternative_names: Vec<String>,
    /// Ids of matching certificates or CSRs the tenant held just before: never adopted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub existing: Vec<String>,
    pub since: String,
}

pub const INTENT_CERTIFICATE: &str = "Certificate";
pub const INTENT_CSR: &str = "Csr";

/// What the tenant refused, and the inputs it refused: a change to any of them is a new try.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TenantRejection {
    /// The tenant's answer.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The source certificate's fingerprint at the time (none: no chain yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_request: Option<String>,
}
