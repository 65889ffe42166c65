//! The custom resources (`TenantCertificate`, `DeviceIdCredential`) and what they share:
//! condition helpers, Secret references, Go-style durations, annotations.

mod conditions;
mod device_id_credential;
mod duration;
mod tenant_certificate;

pub use conditions::*;
pub use device_id_credential::*;
pub use duration::{DurationError, format_duration, parse_duration};
pub use tenant_certificate::*;

use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "certrotor.io";
/// CEL: a Go duration such as `720h` or `1h30m` (`[.]`, since CEL strings have no `\.` escape).
const DURATION_RULE: &str = "self.matches('^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$')";
/// Rotate now, once per distinct value (like `cmctl renew`).
pub const RENEW_ANNOTATION: &str = "certrotor.io/renew";
/// `"true"`: make no tenant calls.
pub const PAUSED_ANNOTATION: &str = "certrotor.io/paused";
pub const FINALIZER: &str = "certrotor.io/cleanup";
/// Field manager for everything the operator writes.
pub const MANAGER: &str = "certrotor";

/// A Secret in the resource's own namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretReference {
    /// A Secret name: a DNS subdomain, at most 253 characters.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Every CRD this operator serves, in a stable order.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![TenantCertificate::crd(), DeviceIdCredential::crd()]
}

/// `certrotor crd`: every CRD as multi-document YAML. `crds/` holds exactly this.
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(|crd| {
            let yaml = serde_saphyr::to_string(crd).expect("a CRD always serialises");
            format!("---\n{yaml}")
        })
        .collect()
}

pub fn is_paused(meta: &kube::api::ObjectMeta) -> bool {
    annotation(meta, PAUSED_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

pub fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}
