//! A stand-in for cert-manager with a CA issuer, for the demo and the tests: it approves each
//! CertificateRequest (as cert-manager's internal approver does), then signs it with its CA and
//! marks it Ready, writing the conditions cert-manager writes. Knobs make it hold requests
//! unapproved, deny them, fail them, or sign a key other than the request's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};

use crate::certmanager::{
    CertificateRequest, CertificateRequestStatus, RequestCondition, RequestState, encode,
};
use crate::pki::{self, ca::Ca};

#[derive(Default)]
pub struct Knobs {
    /// Leave requests unapproved (an approver-policy that has not decided).
    pub hold: AtomicBool,
    pub deny_next: AtomicU32,
    pub fail_next: AtomicU32,
    /// Sign a fresh key with the request's names instead of the request's key.
    pub wrong_key_next: AtomicU32,
    /// Requests signed so far.
    pub signed: AtomicU32,
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

pub struct CertManager {
    pub knobs: Arc<Knobs>,
    pub ca: Arc<Ca>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CertManager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CertManager {
    /// Starts working on every CertificateRequest in the cluster `client` talks to, a step
    /// (approve, then sign) every 100 ms.
    pub fn start(client: kube::Client, ca: Arc<Ca>) -> CertManager {
        Self::start_with_pace(client, ca, Duration::from_millis(100))
    }

    /// As [`Self::start`], a step every `pace` (the demo slows it down so each step shows).
    pub fn start_with_pace(client: kube::Client, ca: Arc<Ca>, pace: Duration) -> CertManager {
        let knobs = Arc::new(Knobs::default());
        let (k, c) = (knobs.clone(), ca.clone());
        let task = tokio::spawn(async move {
            let api: Api<CertificateRequest> = Api::all(client.clone());
            loop {
                if let Ok(list) = api.list(&ListParams::default()).await {
                    for cr in list.items {
                        let _ = step(&client, &cr, &k, &c).await;
                    }
                }
                tokio::time::sleep(pace).await;
            }
        });
        CertManager { knobs, ca, task }
    }
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> RequestCondition {
    RequestCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: Some(jiff::Timestamp::now().to_string()),
    }
}

async fn step(
    client: &kube::Client,
    cr: &CertificateRequest,
    knobs: &Knobs,
    ca: &Ca,
) -> anyhow::Result<()> {
    let ns = cr.metadata.namespace.clone().unwrap_or_default();
    let name = cr.metadata.name.clone().unwrap_or_default();
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), &ns);
    let mut status = cr.status.clone().unwrap_or_default();
    match cr.state() {
        RequestState::AwaitingApproval => {
            if knobs.hold.load(Ordering::SeqCst) {
                return Ok(());
            }
            if take(&knobs.deny_next) {
                status.conditions = vec![
                    condition(
                        "Denied",
                        "True",
                        "PolicyDenied",
                        "denied by policy: names not allowed",
                    ),
                    condition(
                        "Ready",
                        "False",
                        "Denied",
                        "The CertificateRequest was denied by an approval controller",
                    ),
                ];
            } else {
                status.conditions = vec![condition(
                    "Approved",
                    "True",
                    "cert-manager.io",
                    "Certificate request has been approved by cert-manager.io",
                )];
            }
        }
        RequestState::Issuing => {
            if take(&knobs.fail_next) {
                status.conditions.push(condition(
                    "Ready",
                    "False",
                    "Failed",
                    "Failed to sign certificate: the CA is unavailable",
                ));
                status.failure_time = Some(jiff::Timestamp::now().to_string());
            } else {
                let request = base64_pem(&cr.spec.request)?;
                let request = if take(&knobs.wrong_key_next) {
                    let info = pki::csr_info(&request)?;
                    let key = pki::generate_key(pki::KeyAlgorithm::EcdsaP256)?;
                    pki::generate_csr(
                        &key,
                        &pki::CsrSubject {
                            common_name: info
                                .subject
                                .split(',')
                                .find_map(|p| p.strip_prefix("CN="))
                                .map(str::to_string),
                            subject_alternative_names: info.subject_alternative_names,
                            ..Default::default()
                        },
                    )?
                } else {
                    request
                };
                let lifetime = cr
                    .spec
                    .duration
                    .as_deref()
                    .and_then(|d| crate::api::parse_duration(d).ok())
                    .unwrap_or(Duration::from_secs(90 * 24 * 3600));
                let now = jiff::Timestamp::now();
                let chain = ca.sign_csr(
                    &request,
                    now - jiff::SignedDuration::from_mins(1),
                    now + jiff::SignedDuration::try_from(lifetime)?,
                )?;
                // cert-manager puts the leaf (and intermediates) in `certificate`, the root in `ca`.
                let leaf_end = chain.find("-----END CERTIFICATE-----").unwrap_or(0)
                    + "-----END CERTIFICATE-----\n".len();
                status.certificate = Some(encode(&chain[..leaf_end.min(chain.len())]));
                status.ca = Some(encode(&ca.cert_pem()));
                status.conditions.push(condition(
                    "Ready",
                    "True",
                    "Issued",
                    "Certificate fetched from issuer successfully",
                ));
                knobs.signed.fetch_add(1, Ordering::SeqCst);
            }
        }
        _ => return Ok(()),
    }
    let patch = serde_json::json!({ "status": CertificateRequestStatus { ..status } });
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

fn base64_pem(b64: &str) -> anyhow::Result<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim())?;
    Ok(String::from_utf8(bytes)?)
}
