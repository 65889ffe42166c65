//! `DeviceIdCredential`: a Prisma Access CIE Third-Party Device-ID client certificate, refreshed
//! through `cert:refresh` inside the vendor's rate-limit budget.

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
    kind = "DeviceIdCredential",
    namespaced,
    shortname = "didc",
    category = "certrotor",
    status = "DeviceIdCredentialStatus",
    doc = "A Prisma Access CIE Third-Party Device-ID client certificate, refreshed before it expires and published as a kubernetes.io/tls Secret.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.notAfter"),
    printcolumn(name = "Renewal", type_ = "string", json_path = ".status.renewalTime"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#
    ),
    printcolumn(
        name = "Next Attempt",
        type_ = "string",
        json_path = ".status.nextAttemptTime",
        priority = "1"
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
#[x_kube(validation = Rule::new("!(has(self.renewBefore) && has(self.renewBeforePercentage))").message("set renewBefore or renewBeforePercentage, not both"))]
#[x_kube(validation = Rule::new("self.secretName != self.onboardingSecretRef.name").message("secretName must not be the onboarding Secret: publishing there would overwrite the onboarding credential"))]
#[serde(rename_all = "camelCase")]
pub struct DeviceIdCredentialSpec {
    /// Regional base URL, e.g. https://us.device-identity-broker.services-edge.paloaltonetworks.com
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://')").message("endpoint must be https:// (mutual TLS)"))]
    pub endpoint: String,
    /// Optional PEM bundle of CAs to trust for the endpoint. At most 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub ca_bundle: Option<String>,
    /// `tls.crt`, `tls.key` and `apiKey` from onboarding in the Cloud Identity Engine console.
    pub onboarding_secret_ref: SecretReference,
    /// The certificate name sent with each `cert:refresh`.
    #[schemars(length(min = 1, max = 253))]
    pub cert_name: String,
    #[serde(default)]
    pub subject: DeviceIdSubject,
    #[serde(default)]
    pub private_key: PrivateKeySpec,
    /// Output Secret (type kubernetes.io/tls): `tls.crt`, `tls.key`, `apiKey`. At most 245
    /// characters: a refresh in flight keeps its key in `<secretName>-pending`.
    #[schemars(length(min = 1, max = 245))]
    pub secret_name: String,
    /// Refresh this long before `notAfter` (Go duration). Default: a third of the lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("renewBefore must be a duration such as 240h"))]
    pub renew_before: Option<String>,
    /// Refresh when this percentage of the lifetime remains (1-99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub renew_before_percentage: Option<i32>,
    /// Also keep the API token fresh with `token:refresh`.
    #[serde(default)]
    pub refresh_token: bool,
    /// With `refreshToken`: how long a token whose expiry the vendor did not state (the
    /// onboarding apiKey, or an expiry in a format not understood) is used before it is
    /// refreshed (Go duration). Default 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("tokenRefreshInterval must be a duration such as 24h"))]
    pub token_refresh_interval: Option<String>,
    /// HTTP method of `cert:refresh`: GET with a JSON body, as the vendor documents (default),
    /// or POST, for proxies that drop the body of a GET.
    #[serde(default)]
    pub refresh_method: RefreshMethod,
}

#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[schemars(extend("maxLength" = 4))]
pub enum RefreshMethod {
    #[default]
    GET,
    POST,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceIdSubject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub common_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub organization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub organizational_unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Z]{2}$')").message("country must be two capital letters"))]
    #[schemars(length(max = 2))]
    pub country: Option<String>,
}

#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[schemars(extend("maxLength" = 5))]
pub enum KeyAlgorithm {
    #[default]
    ECDSA,
    RSA,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.algorithm == 'ECDSA' ? (self.size == 256 || self.size == 384) : (self.size == 2048 || self.size == 3072 || self.size == 4096)").message("ECDSA takes size 256 or 384; RSA takes 2048, 3072 or 4096"))]
pub struct PrivateKeySpec {
    #[serde(default)]
    pub algorithm: KeyAlgorithm,
    #[serde(default = "default_key_size")]
    pub size: i32,
}

impl Default for PrivateKeySpec {
    fn default() -> Self {
        Self {
            algorithm: KeyAlgorithm::ECDSA,
            size: default_key_size(),
        }
    }
}

fn default_key_size() -> i32 {
    256
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceIdCredentialStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
    /// What the service evicted on the last refresh ("" when nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_cert_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expiry: Option<String>,
    /// Every `cert:refresh` call (RFC 3339), kept for the budget window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<String>,
    /// Every `token:refresh` call, kept for its budget window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_attempts: Vec<String>,
    /// When the budget next allows a call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<String>,
    /// The last `certrotor.io/renew` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_renew_request: Option<String>,
    /// Set (to the attempt time) before a `cert:refresh` whose outcome we have not learned yet;
    /// cleared only once a certificate is received. While set, the vendor may hold a newer
    /// certificate we never got, so a further refresh could evict the published one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed_refresh: Option<String>,
    /// Set when a second `cert:refresh` in a row got no answer: the vendor may have issued two
    /// certificates we never received, which evicts the published one. Not Ready until a
    /// certificate is received again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_may_be_evicted: Option<String>,
    /// The output Secret's resourceVersion after certrotor last wrote it: another means someone
    /// else changed it, and certrotor's copy is compared (read only then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_resource_version: Option<String>,
    /// Fingerprint of the onboarding certificate once the vendor evicted it (named in a
    /// refresh's `deletedCertName`): it is never authenticated with again; a new onboarding
    /// bundle is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onboarding_evicted: Option<String>,
    /// Set when a second `token:refresh` in a row got no answer: the apiKey in the output
    /// Secret may have been evicted. Not Ready until a token is received again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_may_be_evicted: Option<String>,
    /// The same for `token:refresh`: a token we never received may exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed_token_refresh: Option<String>,
    /// SHA-256 fingerprint of the onboarding certificate, to detect two resources sharing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onboarding_fingerprint: Option<String>,
    /// Fingerprint of the certificate in the output Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_fingerprint: Option<String>,
    /// The onboarding Secret is missing or unreadable; refreshes go on with the published
    /// certificate while it is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onboarding_secret_missing: Option<String>,
    /// 409 answers in a row (for the conflict backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_conflicts: Option<i32>,
    /// No `cert:refresh` before this time: the wait after a 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict_until: Option<String>,
    /// No `cert:refresh` before this time: the wait after a 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_until: Option<String>,
    /// No `token:refresh` before this time (after a 409 or 429 on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_wait_until: Option<String>,
    /// When the current token was obtained (its lifetime is `tokenExpiry` minus this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_obtained_time: Option<String>,
    /// The vendor refused a call in a way only a person can fix (400, 401); no further call is
    /// made with the same spec and credentials until the spec, the credentials or the renew
    /// annotation change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejection>,
    /// A certificate received from `cert:refresh` (public, PEM) that could not be written to the
    /// output Secret yet: recorded the moment it arrives, published from here (with the key in
    /// `<secretName>-pending`) with no further vendor call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_certificate: Option<String>,
    /// Failed attempts to publish `receivedCertificate`, for the retry backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_failures: Option<i32>,
    /// `token:refresh` is stopped until a person acts (two lost answers in a row), as
    /// `rejected` is for `cert:refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_rejected: Option<Rejection>,
}

/// A refusal by the vendor that needs a person.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    /// CamelCase reason, e.g. `Unauthorized`.
    pub reason: String,
    pub message: String,
    /// The spec generation the refusal was for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Fingerprint of the client certificate the call was made with.
    pub credential: String,
    /// The renew annotation value at the time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_request: Option<String>,
    /// Fingerprint of the onboarding certificate at the time: a new one (a console
    /// re-onboarding) is used at the next allowed attempt after a 401.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onboarding: Option<String>,
}
