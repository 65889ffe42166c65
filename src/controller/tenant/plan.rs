//! The TenantCertificate decision, as a pure function: observed state and the clock in, the
//! next step and the bookkeeping it implies out. No I/O here, so every case is a table test.
//!
//! Invariants the plan keeps:
//! - A new certificate (`pending`) becomes the current one only once it is live (when the spec
//!   wants it active). Only then are older certificates deactivated, and only certificates that
//!   are neither active nor live are deleted: the domain never loses a live certificate of ours.
//! - Only ids recorded in status are ever acted on.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use crate::aic::Certificate;
use crate::api::{
    KeySource, PendingCertificate, TenantCertificateSpec, TenantCertificateStatus, parse_duration,
};
use crate::pki::{self, CertInfo, CsrInfo};

/// A certificate read from the source Secret, already checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceCert {
    pub chain_pem: String,
    /// Local mode: the PKCS#8 key. Never in logs or status.
    pub key_pem: Option<String>,
    pub leaf: CertInfo,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Present(Box<SourceCert>),
    /// Tenant mode: no signed chain yet.
    NoChain,
}

impl Source {
    pub fn cert(&self) -> Option<&SourceCert> {
        match self {
            Source::Present(c) => Some(c),
            Source::NoChain => None,
        }
    }
}

pub struct Observation<'a> {
    pub spec: &'a TenantCertificateSpec,
    pub status: &'a TenantCertificateStatus,
    /// The renew annotation's value when it has not been acted on yet.
    pub renew_request: Option<&'a str>,
    pub source: &'a Source,
    /// The pending CSR as read from its PEM (or why it could not be read), if there is one.
    pub pending_csr: Option<&'a Result<CsrInfo, String>>,
    /// The tenant's certificates by id.
    pub tenant: &'a BTreeMap<String, Certificate>,
    pub now: Timestamp,
    pub poll: PollPolicy,
    /// How many of this tenant's certificates (this one included) wait for `live`: one list
    /// serves them all, so the more wait, the more often a list is worth making.
    pub waiting_on_tenant: usize,
    /// How long this tenant takes to make a certificate live, as this process has seen it (see
    /// [`next_live_delay`]); `None` until it has seen one.
    pub live_delay: Option<Duration>,
    /// With `spec.issuerRef`: the pending CSR's cert-manager CertificateRequest.
    pub signing: Signing,
}

/// The cert-manager CertificateRequest of the pending CSR, as the executor found it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Signing {
    /// No `issuerRef`, or no pending CSR: not looked for.
    #[default]
    NotAsked,
    /// The cluster has no CertificateRequest CRD.
    NotInstalled,
    /// None yet for this CSR (`name` is the one to create).
    Missing { name: String },
    Request {
        name: String,
        state: crate::certmanager::RequestState,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollPolicy {
    pub min: Duration,
    pub max: Duration,
    /// How often to look at a settled certificate (drift, deletions by hand).
    pub resync: Duration,
    /// How long an activated certificate may take to go live before the resource is Stalled
    /// (`LiveTimeout`); polling goes on, slowly.
    pub live_timeout: Duration,
    /// Where this tenant's ticks fall on the shared clock (see [`tenant_phase`]): set per
    /// reconcile from the tenant URL, zero in the operator's options.
    pub phase: Duration,
}

impl PollPolicy {
    /// This policy for the resources of `tenant`: its own phase of the shared clock.
    pub fn for_tenant(&self, tenant: &str) -> Self {
        Self {
            phase: tenant_phase(tenant, self),
            ..*self
        }
    }

    /// The finest tick of the shared clock (`min / 2`, at least 1 ms): fleets poll on it, and
    /// tenants' phases fall within it.
    pub fn tick(&self) -> Duration {
        (self.min / 2).max(Duration::from_millis(1))
    }

    fn tick_ms(&self) -> i64 {
        self.tick().as_millis().min(i64::MAX as u128) as i64
    }

    /// [`aligned`] on this tenant's ticks.
    pub fn wake(&self, interval: Duration, base: Duration, now: Timestamp) -> Duration {
        aligned(interval, base, now, self.phase)
    }

    /// Until the first of this tenant's finest ticks (every `min / 2`) at or after `at_ms`
    /// (milliseconds since the epoch); at least 1 ms.
    pub fn wake_at(&self, at_ms: i64, now: Timestamp) -> Duration {
        let phase = self.phase.as_millis().min(i64::MAX as u128) as i64;
        let tick = at_ms + (phase - at_ms).rem_euclid(self.tick_ms());
        Duration::from_millis((tick - now.as_millisecond()).max(1) as u64)
    }
}

/// A tenant's offset on the shared clock, in [0, min/2), from its URL (a stable FNV-1a hash, the
/// same in every process). Resources of one tenant still wake together and share one list;
/// different tenants' ticks fall apart, so a fleet over many tenants is not worked through in
/// one burst per tick (the last of 1,000 certificates over 10 tenants waited for the 999 before
/// it), and no tenant sees every operator's polls at the same instant.
pub fn tenant_phase(tenant: &str, poll: &PollPolicy) -> Duration {
    let tick_ms = poll.tick_ms() as u64;
    let hash = tenant.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    Duration::from_millis(hash % tick_ms)
}

impl Default for PollPolicy {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(2),
            max: Duration::from_secs(20),
            resync: Duration::from_secs(3600),
            live_timeout: Duration::from_secs(600),
            phase: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Local: upload the source chain and key (adopting a matching upload if one exists).
    Upload {
        reason: &'static str,
    },
    /// Tenant: make a CSR in the tenant (adopting a matching one if it exists).
    CreateCsr {
        reason: &'static str,
    },
    /// Tenant: upload the signed chain to the pending CSR.
    CompleteCsr {
        csr_id: String,
    },
    /// Tenant with `issuerRef`: ask cert-manager to sign the pending CSR.
    RequestSignature {
        name: String,
    },
    /// Tenant with `issuerRef`: cert-manager signed it; put the chain in the Secret, where the
    /// usual checks read it.
    StoreChain {
        name: String,
        chain: String,
    },
    /// Tenant: delete an open CSR that a newer request supersedes (the pending record goes).
    DeleteCsr {
        csr_id: String,
        why: &'static str,
    },
    SetActive {
        id: String,
        active: bool,
    },
    Delete {
        id: String,
    },
    /// Nothing to do until something changes or `after` passes.
    Wait {
        reason: &'static str,
        message: String,
        after: Duration,
    },
    /// Waiting, but for longer than the tenant should take: needs a look by a person.
    Stuck {
        reason: &'static str,
        message: String,
        after: Duration,
    },
    /// In place: active and live as the spec wants.
    Settled {
        reason: &'static str,
        message: String,
        after: Duration,
    },
}

impl Step {
    pub fn is_mutation(&self) -> bool {
        !matches!(
            self,
            Step::Wait { .. } | Step::Stuck { .. } | Step::Settled { .. }
        )
    }
}

/// Bad input: needs a person; no tenant call is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub status: TenantCertificateStatus,
    pub step: Step,
}

pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(720 * 3600);
pub const DEFAULT_HISTORY: usize = 1;

/// The next step. `status` in the plan carries the bookkeeping (vanished ids dropped, a live
/// pending certificate promoted); the executor records each step's result on top of it.
pub fn plan(obs: &Observation<'_>) -> Result<Plan, Invalid> {
    let spec = obs.spec;
    let mut status = obs.status.clone();
    forget_vanished(&mut status, obs.tenant);

    if let Some(pending) = status.pending.clone() {
        if let Some(id) = &pending.certificate_id {
            let remote = &obs.tenant[id];
            // Not live yet and no longer wanted: taken out, never simply left behind.
            if (spec.active && !remote.live || !spec.active && !remote.active)
                && superseded(spec, &pending, obs).is_some()
            {
                let step = if remote.active {
                    Step::SetActive {
                        id: id.clone(),
                        active: false,
                    }
                } else {
                    Step::Delete { id: id.clone() }
                };
                return Ok(Plan { status, step });
            }
            if spec.active && !remote.active {
                return Ok(Plan {
                    status,
                    step: Step::SetActive {
                        id: id.clone(),
                        active: true,
                    },
                });
            }
            if spec.active && !remote.live {
                let waited = waited(&pending.since, obs.now);
                if waited >= obs.poll.live_timeout {
                    let message = format!(
                        "certificate {id} has been active for {}s and is still not live (the tenant usually takes about a minute); certrotor keeps polling: check the tenant's custom domain and certificate in its admin console",
                        waited.as_secs()
                    );
                    return Ok(Plan {
                        status,
                        step: Step::Stuck {
                            reason: "LiveTimeout",
                            message,
                            after: obs.poll.wake(obs.poll.max * 3, obs.poll.min, obs.now),
                        },
                    });
                }
                let after = poll_after(
                    &obs.poll,
                    &pending.since,
                    obs.now,
                    obs.waiting_on_tenant,
                    obs.live_delay,
                );
                let message = format!(
                    "certificate {id} is active; waiting for the load balancer to make it live"
                );
                return Ok(Plan {
                    status,
                    step: Step::Wait {
                        reason: "WaitingForLive",
                        message,
                        after,
                    },
                });
            }
            promote(&mut status, &pending, obs.source, remote);
        } else if let Some(csr) = &pending.csr {
            let csr_info = match obs.pending_csr {
                Some(Ok(info)) => info,
                Some(Err(e)) => {
                    return Err(Invalid {
                        reason: "CsrUnreadable",
                        message: format!(
                            "CSR {} from the tenant cannot be parsed ({e}); set {} to have the tenant make a new one",
                            csr.id,
                            crate::api::RENEW_ANNOTATION
                        ),
                    });
                }
                None => {
                    return Err(Invalid {
                        reason: "CsrUnreadable",
                        message: format!("CSR {} has no request in status", csr.id),
                    });
                }
            };
            if let Some(why) = superseded(spec, &pending, obs) {
                return Ok(Plan {
                    status,
                    step: Step::DeleteCsr {
                        csr_id: csr.id.clone(),
                        why,
                    },
                });
            }
            match obs.source.cert() {
                // The chain of the certificate in place: nothing new has been signed yet.
                Some(cert)
                    if status.fingerprint.as_deref() == Some(cert.leaf.fingerprint.as_str()) => {}
                Some(cert) => {
                    check_signed_chain(spec, &status, &pending, csr_info, &cert.leaf)?;
                    return Ok(Plan {
                        status,
                        step: Step::CompleteCsr {
                            csr_id: csr.id.clone(),
                        },
                    });
                }
                None => {}
            }
            if spec.issuer_ref.is_some() {
                let step = signing_step(&obs.signing, &csr.id)?;
                return Ok(Plan { status, step });
            }
            let message = format!(
                "waiting for the signed chain of CSR {} in Secret {} (tls.crt); the CSR is in status.csr.request",
                csr.id, spec.secret_ref.name
            );
            return Ok(Plan {
                status,
                step: Step::Wait {
                    reason: "AwaitingSignedChain",
                    message,
                    after: obs.poll.resync,
                },
            });
        } else {
            // A pending record with neither id nor CSR carries nothing to resume.
            status.pending = None;
        }
    }

    if let Some(step) = new_certificate_needed(spec, &status, obs) {
        return Ok(Plan { status, step });
    }

    let Some(current_id) = status.certificate_id.clone() else {
        // Tenant mode before the first CSR is handled above; Local always has a source.
        let message = "no certificate yet".to_string();
        return Ok(Plan {
            status,
            step: Step::Wait {
                reason: "Pending",
                message,
                after: obs.poll.max,
            },
        });
    };
    let current = &obs.tenant[&current_id];
    if current.active != spec.active {
        return Ok(Plan {
            status,
            step: Step::SetActive {
                id: current_id,
                active: spec.active,
            },
        });
    }
    if current.live != current.active {
        let message = if current.active {
            format!("certificate {current_id} is active; waiting for it to be live")
        } else {
            format!("certificate {current_id} is inactive; waiting for it to stop being live")
        };
        let after = obs
            .poll
            .wake(obs.poll.max.min(obs.poll.min * 4), obs.poll.min, obs.now);
        return Ok(Plan {
            status,
            step: Step::Wait {
                reason: if current.active {
                    "WaitingForLive"
                } else {
                    "WaitingForNotLive"
                },
                message,
                after,
            },
        });
    }

    // Older certificates: deactivate every one, delete those beyond the history limit once they
    // are neither active nor live.
    let limit = spec
        .revision_history_limit
        .map(|l| l.max(0) as usize)
        .unwrap_or(DEFAULT_HISTORY);
    let mut waiting_for_old = None;
    for (index, id) in status.previous_certificate_ids.iter().enumerate() {
        let old = &obs.tenant[id];
        if old.active {
            return Ok(Plan {
                status: status.clone(),
                step: Step::SetActive {
                    id: id.clone(),
                    active: false,
                },
            });
        }
        if index >= limit {
            if old.live {
                waiting_for_old.get_or_insert_with(|| id.clone());
            } else {
                return Ok(Plan {
                    status: status.clone(),
                    step: Step::Delete { id: id.clone() },
                });
            }
        }
    }
    if let Some(id) = waiting_for_old {
        let message =
            format!("waiting for old certificate {id} to stop being live before deleting it");
        return Ok(Plan {
            status,
            step: Step::Wait {
                reason: "WaitingToDeleteOld",
                message,
                after: obs.poll.wake(obs.poll.max, obs.poll.min, obs.now),
            },
        });
    }

    let (reason, message) = if spec.active {
        (
            "Live",
            format!("certificate {current_id} is active and live"),
        )
    } else {
        (
            "Inactive",
            format!("certificate {current_id} is installed and inactive, as the spec asks"),
        )
    };
    let after = next_look(spec, &status, obs);
    Ok(Plan {
        status,
        step: Step::Settled {
            reason,
            message,
            after,
        },
    })
}

/// With `issuerRef`, a pending CSR and no chain for it yet: what to do about its cert-manager
/// CertificateRequest. The executor is woken by the request's watch, so waits are long.
fn signing_step(signing: &Signing, csr_id: &str) -> Result<Step, Invalid> {
    use crate::certmanager::RequestState;
    let long = Duration::from_secs(3600);
    Ok(match signing {
        Signing::NotAsked | Signing::NotInstalled => {
            return Err(Invalid {
                reason: "CertManagerNotInstalled",
                message: "cert-manager is not installed: the cluster has no CertificateRequest (cert-manager.io/v1) CRD. Install cert-manager and restart certrotor, or remove issuerRef and put the signed chain in the Secret".into(),
            });
        }
        Signing::Missing { name } => Step::RequestSignature { name: name.clone() },
        Signing::Request { name, state } => match state {
            RequestState::AwaitingApproval => Step::Wait {
                reason: "AwaitingApproval",
                message: format!(
                    "CertificateRequest {name} for CSR {csr_id} waits for approval (cert-manager's approver or approver-policy)"
                ),
                after: long,
            },
            RequestState::Issuing => Step::Wait {
                reason: "Issuing",
                message: format!(
                    "CertificateRequest {name} for CSR {csr_id} is approved; waiting for the issuer to sign it"
                ),
                after: long,
            },
            RequestState::Issued { chain } => Step::StoreChain {
                name: name.clone(),
                chain: chain.clone(),
            },
            RequestState::Denied { reason, message } => {
                return Err(Invalid {
                    reason: "CertificateRequestDenied",
                    message: format!(
                        "cert-manager denied CertificateRequest {name} ({reason}: {message}); set {} to try again with a new CSR",
                        crate::api::RENEW_ANNOTATION
                    ),
                });
            }
            RequestState::Failed { reason, message } => {
                return Err(Invalid {
                    reason: "CertificateRequestFailed",
                    message: format!(
                        "cert-manager failed CertificateRequest {name} ({reason}: {message}); set {} to try again with a new CSR",
                        crate::api::RENEW_ANNOTATION
                    ),
                });
            }
        },
    })
}

/// Why a pending certificate or CSR that is not live is no longer wanted, if it is not: a newer
/// Secret (Local), a renew request not yet acted on, or a spec asking for something else.
pub fn superseded(
    spec: &TenantCertificateSpec,
    pending: &PendingCertificate,
    obs: &Observation<'_>,
) -> Option<&'static str> {
    if obs.renew_request.is_some() {
        return Some("a renew request");
    }
    if pending
        .issued_for
        .as_ref()
        .is_some_and(|d| *d != issuance_digest(spec))
    {
        return Some("a change to the spec");
    }
    match (spec.key_source, obs.source.cert(), &pending.fingerprint) {
        (KeySource::Local, Some(cert), Some(fp)) if *fp != cert.leaf.fingerprint => {
            Some("a newer Secret")
        }
        _ => None,
    }
}

/// What a certificate is made from, as far as the spec says: `keySource`, and `spec.csr` in
/// Tenant mode. A short digest, recorded with the pending and the current certificate.
pub fn issuance_digest(spec: &TenantCertificateSpec) -> String {
    use sha2::{Digest, Sha256};
    let what = serde_json::json!({
        "keySource": spec.key_source,
        "csr": (spec.key_source == KeySource::Tenant).then_some(&spec.csr),
    });
    let digest = Sha256::digest(what.to_string().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the current certificate was made from what the spec asks for now. A certificate
/// recorded before digests were kept is taken to reflect it (no rotation on upgrade).
pub fn reflects_spec(spec: &TenantCertificateSpec, status: &TenantCertificateStatus) -> bool {
    status
        .issued_for
        .as_ref()
        .is_none_or(|d| *d == issuance_digest(spec))
}

fn waited(since: &str, now: Timestamp) -> Duration {
    since
        .parse::<Timestamp>()
        .map(|t| Duration::from_secs(now.as_second().saturating_sub(t.as_second()).max(0) as u64))
        .unwrap_or_default()
}

/// Tenant mode: a chain newly written for the pending CSR, checked before it is sent. It must
/// carry the CSR's key (compared as keys, not as DER bytes) and name the CSR's common name and
/// every SAN it asked for. For a renewal it must also outlive the certificate in place: an older
/// chain would be a step back, and the renewal it answers would fall due again at once. (A chain
/// for a spec change or a renew request may expire with the one in place, as with a CA that
/// issues to a fixed end date.)
pub fn check_signed_chain(
    spec: &TenantCertificateSpec,
    status: &TenantCertificateStatus,
    pending: &PendingCertificate,
    csr: &CsrInfo,
    leaf: &CertInfo,
) -> Result<(), Invalid> {
    let secret = &spec.secret_ref.name;
    let csr_id = pending
        .csr
        .as_ref()
        .map(|c| c.id.as_str())
        .unwrap_or_default();
    if !pki::same_public_key(&csr.public_key_der, &leaf.public_key_der) {
        return Err(Invalid {
            reason: "ChainDoesNotMatchCsr",
            message: format!(
                "tls.crt in Secret {secret} holds a certificate whose key is not the key of CSR {csr_id}: sign the CSR in status.csr.request"
            ),
        });
    }
    let has = |name: &str| {
        leaf.subject_alternative_names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    };
    let mut missing: Vec<&str> = csr
        .subject_alternative_names
        .iter()
        .map(String::as_str)
        .filter(|n| !has(n))
        .collect();
    if let Some(cn) = common_name(&csr.subject)
        && !has(cn)
        && common_name(&leaf.subject).is_none_or(|l| !l.eq_ignore_ascii_case(cn))
    {
        missing.insert(0, cn);
    }
    if !missing.is_empty() {
        return Err(Invalid {
            reason: "ChainDoesNotCoverCsr",
            message: format!(
                "tls.crt in Secret {secret} does not name {} that CSR {csr_id} asks for: the CA dropped them; sign the CSR as requested",
                missing.join(", ")
            ),
        });
    }
    if let Some(current) = status
        .not_after
        .as_deref()
        .filter(|_| pending.reason == "Renewal")
        .and_then(|t| t.parse::<Timestamp>().ok())
        && leaf.not_after <= current
    {
        return Err(Invalid {
            reason: "ChainNotNewer",
            message: format!(
                "tls.crt in Secret {secret} expires at {}, not later than the certificate in place ({current}): put a newly signed chain for CSR {csr_id}",
                leaf.not_after
            ),
        });
    }
    Ok(())
}

/// The CN of an RFC 4514-style subject (`CN=a,O=b`).
fn common_name(subject: &str) -> Option<&str> {
    subject
        .split(',')
        .find_map(|part| part.trim().strip_prefix("CN="))
}

/// Drops ids the tenant no longer has (deleted by hand or by an earlier, unrecorded step).
fn forget_vanished(status: &mut TenantCertificateStatus, tenant: &BTreeMap<String, Certificate>) {
    if status
        .certificate_id
        .as_ref()
        .is_some_and(|id| !tenant.contains_key(id))
    {
        status.certificate_id = None;
        status.fingerprint = None;
        status.active = None;
        status.live = None;
    }
    if let Some(pending) = &status.pending
        && pending
            .certificate_id
            .as_ref()
            .is_some_and(|id| !tenant.contains_key(id))
    {
        status.pending = None;
    }
    status
        .previous_certificate_ids
        .retain(|id| tenant.contains_key(id));
}

/// The pending certificate becomes the current one; the current one becomes the newest previous.
fn promote(
    status: &mut TenantCertificateStatus,
    pending: &PendingCertificate,
    source: &Source,
    remote: &Certificate,
) {
    if let Some(old) = status.certificate_id.take() {
        status.previous_certificate_ids.insert(0, old);
    }
    status.certificate_id = pending.certificate_id.clone();
    status.fingerprint = pending.fingerprint.clone();
    if pending.issued_for.is_some() {
        status.issued_for = pending.issued_for.clone();
    }
    status.pending = None;
    describe_current(status, source, remote);
}

/// Subject, issuer, SANs and validity of the current certificate: from our own parse of the
/// chain when it is the one in the Secret, else from what the tenant reports.
pub fn describe_current(
    status: &mut TenantCertificateStatus,
    source: &Source,
    remote: &Certificate,
) {
    match source
        .cert()
        .filter(|c| Some(c.leaf.fingerprint.as_str()) == status.fingerprint.as_deref())
    {
        Some(cert) => {
            status.subject = Some(cert.leaf.subject.clone());
            status.issuer = Some(cert.leaf.issuer.clone());
            status.subject_alternative_names = cert.leaf.subject_alternative_names.clone();
            status.not_before = Some(cert.leaf.not_before.to_string());
            status.not_after = Some(cert.leaf.not_after.to_string());
        }
        None => {
            status.subject = remote.subject.clone();
            status.issuer = remote.issuer.clone();
            status.subject_alternative_names = remote.subject_alternative_names.clone();
            status.not_before = remote.valid_from_time.clone();
            status.not_after = remote.expire_time.clone();
        }
    }
}

fn new_certificate_needed(
    spec: &TenantCertificateSpec,
    status: &TenantCertificateStatus,
    obs: &Observation<'_>,
) -> Option<Step> {
    if status.pending.is_some() {
        return None;
    }
    match spec.key_source {
        KeySource::Local => {
            let source = obs.source.cert()?;
            if obs.renew_request.is_some() {
                return Some(Step::Upload {
                    reason: "RenewRequested",
                });
            }
            match status.fingerprint.as_deref() {
                None => Some(Step::Upload { reason: "Initial" }),
                Some(fp) if fp != source.leaf.fingerprint => Some(Step::Upload {
                    reason: "SecretChanged",
                }),
                Some(_) if !reflects_spec(spec, status) => Some(Step::Upload {
                    reason: "SpecChanged",
                }),
                Some(_) => None,
            }
        }
        KeySource::Tenant => {
            if obs.renew_request.is_some() {
                return Some(Step::CreateCsr {
                    reason: "RenewRequested",
                });
            }
            if status.certificate_id.is_none() {
                return Some(Step::CreateCsr { reason: "Initial" });
            }
            if !reflects_spec(spec, status) {
                return Some(Step::CreateCsr {
                    reason: "SpecChanged",
                });
            }
            let due = renewal_time(spec, status)?;
            (obs.now >= due).then_some(Step::CreateCsr { reason: "Renewal" })
        }
    }
}

/// Tenant mode: when to start the next CSR. `renewBefore`, capped at a third of the lifetime so a
/// short-lived certificate is not renewed the moment it is installed.
pub fn renewal_time(
    spec: &TenantCertificateSpec,
    status: &TenantCertificateStatus,
) -> Option<Timestamp> {
    if spec.key_source != KeySource::Tenant {
        return None;
    }
    let not_after: Timestamp = status.not_after.as_deref()?.parse().ok()?;
    let not_before: Option<Timestamp> = status.not_before.as_deref().and_then(|s| s.parse().ok());
    let lifetime = not_before
        .map(|nb| {
            Duration::from_secs(not_after.as_second().saturating_sub(nb.as_second()).max(0) as u64)
        })
        .unwrap_or(DEFAULT_RENEW_BEFORE * 3);
    // Capped at a third of the lifetime, as documented: a renewBefore as long as a short
    // certificate's life would start a new CSR the moment each one is installed, for ever.
    let before = match spec.renew_before.as_deref().map(parse_duration) {
        Some(Ok(d)) => d,
        _ => DEFAULT_RENEW_BEFORE,
    }
    .min(lifetime / 3);
    not_after
        .checked_sub(jiff::SignedDuration::try_from(before).ok()?)
        .ok()
}

fn next_look(
    spec: &TenantCertificateSpec,
    status: &TenantCertificateStatus,
    obs: &Observation<'_>,
) -> Duration {
    match renewal_time(spec, status) {
        Some(due) => {
            let secs = due.as_second().saturating_sub(obs.now.as_second()).max(1) as u64;
            let until_due = Duration::from_secs(secs);
            if until_due < obs.poll.resync {
                until_due
            } else {
                obs.poll.wake(obs.poll.resync, obs.poll.resync, obs.now)
            }
        }
        // Resyncs land on the same tick for every resource: one list per tenant per period.
        None => obs.poll.wake(obs.poll.resync, obs.poll.resync, obs.now),
    }
}

/// Everything [`settled`] needs to know, none of it from the tenant.
pub struct Settledness<'a> {
    pub spec: &'a TenantCertificateSpec,
    pub status: &'a TenantCertificateStatus,
    pub generation: Option<i64>,
    pub source: &'a Source,
    /// A renew annotation value not yet acted on.
    pub renew_request: Option<&'a str>,
    pub now: Timestamp,
}

/// In place as the user last asked, by status alone: Ready, not Reconciling, not Stalled, all
/// for the current generation; no certificate being rolled in and no old one beyond the
/// history; the source Secret holds the certificate we installed; no renew request; not due.
pub fn settled(s: &Settledness<'_>) -> bool {
    let status = s.status;
    let holds = |type_: &str, want: &str| {
        crate::api::condition(&status.conditions, type_)
            .is_some_and(|c| c.status == want && c.observed_generation == s.generation)
    };
    let limit = s
        .spec
        .revision_history_limit
        .map(|l| l.max(0) as usize)
        .unwrap_or(DEFAULT_HISTORY);
    let source_matches = match s.source.cert() {
        Some(cert) => status.fingerprint.as_deref() == Some(cert.leaf.fingerprint.as_str()),
        None => false,
    };
    holds(crate::api::READY, "True")
        && holds(crate::api::RECONCILING, "False")
        && holds(crate::api::STALLED, "False")
        && status.observed_generation == s.generation
        && status.pending.is_none()
        && status.certificate_id.is_some()
        && status.active == Some(s.spec.active)
        && status.live == Some(s.spec.active)
        && status.previous_certificate_ids.len() <= limit
        && source_matches
        && reflects_spec(s.spec, status)
        && s.renew_request.is_none()
        && renewal_time(s.spec, status).is_none_or(|due| s.now < due)
}

/// The first reconcile of a settled certificate in a new process makes no tenant call: the
/// process before checked it, and nothing the user controls has changed since. It next looks
/// at the tenant on the shared resync tick (or when renewal falls due), when one list per
/// tenant serves every certificate: a restart of a settled fleet costs nothing.
pub fn quiet_after_restart(s: &Settledness<'_>, poll: &PollPolicy) -> Option<Duration> {
    if !settled(s) {
        return None;
    }
    Some(match renewal_time(s.spec, s.status) {
        Some(due) => {
            let until_due = Duration::from_secs(
                due.as_second().saturating_sub(s.now.as_second()).max(1) as u64,
            );
            until_due.min(poll.wake(poll.resync, poll.resync, s.now))
        }
        None => poll.wake(poll.resync, poll.resync, s.now),
    })
}

/// How long a resource that failed is still to wait before its next attempt, when nothing the
/// user controls has changed since (the generation, a renew request).
pub fn backing_off(
    status: &TenantCertificateStatus,
    generation: Option<i64>,
    renew_request: Option<&str>,
    now: Timestamp,
) -> Option<Duration> {
    status.failures?;
    if status.observed_generation != generation || renew_request.is_some() {
        return None;
    }
    let next: Timestamp = status.next_attempt_time.as_deref()?.parse().ok()?;
    let wait = next.as_millisecond().checked_sub(now.as_millisecond())?;
    (wait > 0).then(|| Duration::from_millis(wait as u64))
}

/// Poll `live` at half the time spent waiting so far, within [min, max]: quick when the tenant
/// is quick, a handful of calls when it takes its observed minute. When `waiting` certificates
/// of the tenant wait together, one list serves them all: the interval shrinks by the square
/// root of their number (down to half of `min`), so a fleet sees `live` sooner while the lists
/// per certificate still fall as the fleet grows. Once the tenant has been seen to take
/// `live_delay`, nothing is polled before half of that since activation: a list then would
/// only say "not yet" (at the real tenants' minute, that was half the lists), and a tenant
/// that got faster is still seen at half its old pace.
pub fn poll_after(
    poll: &PollPolicy,
    since: &str,
    now: Timestamp,
    waiting: usize,
    live_delay: Option<Duration>,
) -> Duration {
    if let (Some(delay), Ok(start)) = (live_delay, since.parse::<Timestamp>()) {
        let quiet_until = start
            .as_millisecond()
            .saturating_add((delay / 2).as_millis().min(i64::MAX as u128) as i64);
        if now.as_millisecond() < quiet_until {
            return poll.wake_at(quiet_until, now);
        }
    }
    let single = (waited(since, now) / 2).clamp(poll.min, poll.max);
    if waiting <= 1 {
        return poll.wake(single, poll.min, now);
    }
    let floor = poll.tick();
    let shared = single.div_f64((waiting as f64).sqrt()).max(floor);
    poll.wake(shared, floor, now)
}

/// What to expect of a tenant's next `live` delay after seeing one take `seen` (activation to
/// the poll that found it live, so at most a poll interval long): a shorter one is believed at
/// once, a longer one only a quarter of the way, so one certificate the tenant was slow with
/// does not make every later one wait (polls start at half of this, see [`poll_after`]).
pub fn next_live_delay(previous: Option<Duration>, seen: Duration) -> Duration {
    match previous {
        Some(p) if seen > p => p + (seen - p) / 4,
        _ => seen,
    }
}

/// How old a shared tenant list may be for a reconcile that looks at `live`: it must have
/// started at or after the last tick of the polls' shared clock (see [`poll_after`]), so every
/// poll woken by a tick sees the tenant as it was at that tick, and all of them share one list.
/// (A fixed tolerance of `min` let a poll reuse the previous tick's list: a certificate that
/// went live in between was seen a tick or two late.)
pub fn live_list_tolerance(poll: &PollPolicy, now: Timestamp) -> Duration {
    let clock = now.as_millisecond() - poll.phase.as_millis() as i64;
    Duration::from_millis(clock.rem_euclid(poll.tick_ms()) as u64)
}

/// Waits about `interval`, ending on a tick of a clock every resource shares: the interval is
/// rounded up to `base` times a power of two, and the wake-up falls on a multiple of that since
/// the Unix epoch. Resources waiting on one tenant then wake together and one list call serves
/// them all, instead of one call each.
pub fn aligned(interval: Duration, base: Duration, now: Timestamp, phase: Duration) -> Duration {
    let base_ms = base.as_millis().max(1) as i64;
    let want_ms = interval.as_millis().min(i64::MAX as u128) as i64;
    let mut step = base_ms;
    while step < want_ms {
        step = step.saturating_mul(2);
    }
    let now_ms = now.as_millisecond() - phase.as_millis().min(i64::MAX as u128) as i64;
    let mut wait = step - now_ms.rem_euclid(step);
    // Not a near-zero wait: the next tick after that.
    if wait < step / 4 {
        wait += step;
    }
    Duration::from_millis(wait as u64)
}

/// The failure policy: how long to wait after the `failures`-th failure in a row of any step
/// (cleanup included). Exponential from `base`, with ±20 % jitter (`jitter` in [0, 1)) so a
/// fleet does not retry in step, capped at `max`; a `Retry-After` from the tenant is honoured when
/// longer. The streak resets only when a step succeeds, so a storm of 5xx lasting `t` costs
/// O(log(max/base) + t/max) calls, not one every few seconds.
pub fn failure_backoff(
    base: Duration,
    max: Duration,
    failures: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    let exp = base.saturating_mul(1u32 << doublings.min(20)).min(max);
    let jittered = exp.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0)).min(max);
    retry_after.unwrap_or_default().max(jittered)
}

/// One cleanup call on deletion of the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanupAction {
    Deactivate(String),
    Delete(String),
    DeleteCsr(String),
}

/// Cleanup on deletion: what to call now, and whether anything will be left to do after it
/// (a certificate still live must stop being live before it can be deleted). Only ids recorded
/// in status are acted on — never a look-alike, never another resource's certificate — and
/// those the tenant no longer has are done with.
pub fn cleanup_actions(
    policy: crate::api::DeletionPolicy,
    status: &TenantCertificateStatus,
    tenant: &BTreeMap<String, Certificate>,
) -> (Vec<CleanupAction>, bool) {
    use crate::api::DeletionPolicy;
    let mut actions = vec![];
    let mut more = false;
    if policy == DeletionPolicy::Retain {
        return (actions, more);
    }
    for id in known_ids(status) {
        let Some(c) = tenant.get(&id) else { continue };
        if c.active {
            actions.push(CleanupAction::Deactivate(id));
            more |= policy == DeletionPolicy::Delete;
        } else if policy == DeletionPolicy::Delete {
            if c.live {
                more = true;
            } else {
                actions.push(CleanupAction::Delete(id));
            }
        }
    }
    if policy == DeletionPolicy::Delete
        && let Some(csr) = status
            .pending
            .as_ref()
            .filter(|p| p.certificate_id.is_none())
            .and_then(|p| p.csr.as_ref())
    {
        // A CSR that never got its certificate is ours to remove too.
        actions.push(CleanupAction::DeleteCsr(csr.id.clone()));
    }
    (actions, more)
}

/// Certificates of ours (recorded in status), for adoption and cleanup.
pub fn known_ids(status: &TenantCertificateStatus) -> Vec<String> {
    let mut ids: Vec<String> = status.certificate_id.iter().cloned().collect();
    ids.extend(
        status
            .pending
            .as_ref()
            .and_then(|p| p.certificate_id.clone()),
    );
    ids.extend(status.previous_certificate_ids.iter().cloned());
    ids
}

/// Certificates in the tenant that look like an upload of `leaf` (validity to the second and
/// SANs: the tenant never returns the PEM), whoever uploaded them.
pub fn matching_uploads<'a>(
    tenant: impl IntoIterator<Item = &'a Certificate>,
    leaf: &CertInfo,
) -> Vec<&'a Certificate> {
    matching(
        tenant,
        Some(leaf.not_before),
        Some(leaf.not_after),
        &leaf.subject_alternative_names,
    )
}

fn matching<'a>(
    tenant: impl IntoIterator<Item = &'a Certificate>,
    not_before: Option<Timestamp>,
    not_after: Option<Timestamp>,
    sans: &[String],
) -> Vec<&'a Certificate> {
    let (Some(not_before), Some(not_after)) = (not_before, not_after) else {
        return vec![];
    };
    let mut wanted_sans = sans.to_vec();
    wanted_sans.sort();
    let same_time = |reported: &Option<String>, ours: Timestamp| {
        reported
            .as_deref()
            .and_then(|s| s.parse::<Timestamp>().ok())
            .is_some_and(|t| t.as_second() == ours.as_second())
    };
    tenant
        .into_iter()
        .filter(|c| {
            let mut sans = c.subject_alternative_names.clone();
            sans.sort();
            same_time(&c.valid_from_time, not_before)
                && same_time(&c.expire_time, not_after)
                && sans == wanted_sans
        })
        .collect()
}

/// The intent to upload `leaf`, to record before the call.
pub fn upload_intent(
    leaf: &CertInfo,
    existing: Vec<String>,
    since: String,
) -> crate::api::CreateIntent {
    crate::api::CreateIntent {
        kind: crate::api::INTENT_CERTIFICATE.into(),
        fingerprint: Some(leaf.fingerprint.clone()),
        not_before: Some(leaf.not_before.to_string()),
        not_after: Some(leaf.not_after.to_string()),
        subject_alternative_names: leaf.subject_alternative_names.clone(),
        existing,
        since,
        ..Default::default()
    }
}

/// Uploads made under an earlier intent whose answer was lost, before the Secret changed and a
/// new upload was planned: new since that intent and matching it. When exactly one is found it
/// is ours, to be recorded for cleanup rather than left active in the tenant for ever; when more
/// are, someone else uploaded the same chain meanwhile and none can be claimed.
pub fn orphans_of_intent<'a>(
    tenant: impl IntoIterator<Item = &'a Certificate>,
    intent: &crate::api::CreateIntent,
    known: &[String],
) -> Vec<&'a Certificate> {
    if intent.kind != crate::api::INTENT_CERTIFICATE {
        return vec![];
    }
    let at = |t: &Option<String>| t.as_deref().and_then(|s| s.parse::<Timestamp>().ok());
    matching(
        tenant,
        at(&intent.not_before),
        at(&intent.not_after),
        &intent.subject_alternative_names,
    )
    .into_iter()
    .filter(|c| !known.contains(&c.id) && !intent.existing.contains(&c.id))
    .collect()
}

/// After a lost answer or a crash between an upload and the status write, the upload is in the
/// tenant but not in status. It is adopted only with proof: an intent to upload this very leaf
/// was recorded before the call, and the certificate is new since (not among the matching ids
/// the tenant held then) and not already ours. A certificate with identical content that existed
/// before — the vendor's support team's, or this resource's own upload from another cluster — is
/// never adopted.
pub fn find_adoptable_upload<'a>(
    tenant: impl IntoIterator<Item = &'a Certificate>,
    leaf: &CertInfo,
    known: &[String],
    intent: Option<&crate::api::CreateIntent>,
) -> Option<&'a Certificate> {
    match new_since_intent(tenant, leaf, known, intent)[..] {
        [one] => Some(one),
        _ => None,
    }
}

/// The look-alikes of `leaf` that appeared since the intent to upload it: one is ours (a lost
/// answer); more than one cannot be told apart (someone else uploaded the same chain in the
/// meantime), and none is adopted.
pub fn new_since_intent<'a>(
    tenant: impl IntoIterator<Item = &'a Certificate>,
    leaf: &CertInfo,
    known: &[String],
    intent: Option<&crate::api::CreateIntent>,
) -> Vec<&'a Certificate> {
    let Some(intent) = intent.filter(|i| {
        i.kind == crate::api::INTENT_CERTIFICATE
            && i.fingerprint.as_deref() == Some(leaf.fingerprint.as_str())
    }) else {
        return vec![];
    };
    matching_uploads(tenant, leaf)
        .into_iter()
        .filter(|c| !known.contains(&c.id) && !intent.existing.contains(&c.id))
        .collect()
}

/// CSRs in the tenant that ask for what `spec` asks for (common name and SANs) and have no
/// certificate yet, whoever made them.
pub fn matching_csrs<'a>(
    csrs: &'a [crate::aic::Csr],
    spec: &crate::api::CsrSpec,
) -> Vec<&'a crate::aic::Csr> {
    let mut wanted = spec.subject_alternative_names.clone();
    wanted.sort();
    csrs.iter()
        .filter(|c| {
            let mut sans = c.subject_alternative_names.clone();
            sans.sort();
            c.certificate_id.is_none()
                && sans == wanted
                && c.subject
                    .as_deref()
                    .is_some_and(|s| s.contains(&format!("CN={}", spec.common_name)))
        })
        .collect()
}

/// A CSR made for this resource whose creation was not recorded: adopted only with an intent
/// for the same name and SANs recorded before the call, and new since.
pub fn find_adoptable_csr<'a>(
    csrs: &'a [crate::aic::Csr],
    spec: &crate::api::CsrSpec,
    known: &[String],
    intent: Option<&crate::api::CreateIntent>,
) -> Option<&'a crate::aic::Csr> {
    let intent = intent.filter(|i| {
        i.kind == crate::api::INTENT_CSR
            && i.common_name.as_deref() == Some(spec.common_name.as_str())
            && i.subject_alternative_names == spec.subject_alternative_names
    })?;
    matching_csrs(csrs, spec)
        .into_iter()
        .find(|c| !known.contains(&c.id) && !intent.existing.contains(&c.id))
}

/// The intent to record before a creating call: kept as it is when one for the same thing is
/// already recorded (a retry after a lost answer must not count its own upload as existing).
pub fn intent_for(
    recorded: Option<&crate::api::CreateIntent>,
    mut wanted: crate::api::CreateIntent,
) -> crate::api::CreateIntent {
    match recorded {
        Some(r)
            if r.kind == wanted.kind
                && r.fingerprint == wanted.fingerprint
                && r.common_name == wanted.common_name
                && r.subject_alternative_names == wanted.subject_alternative_names =>
        {
            r.clone()
        }
        _ => {
            wanted.existing.sort();
            wanted
        }
    }
}

/// A recorded refusal still holds while the inputs it refused are unchanged: the same
/// generation, the same source certificate and the same renew request.
pub fn rejection_applies(
    rejected: &crate::api::TenantRejection,
    now: &crate::api::TenantRejection,
) -> bool {
    rejected.generation == now.generation
        && rejected.fingerprint == now.fingerprint
        && rejected.renew_request == now.renew_request
}

#[cfg(test)]
mod aligned_tests {
    use super::aligned;
    use std::time::Duration;

    proptest::proptest! {
        #[test]
        fn wakes_on_a_shared_tick_near_the_interval(now_ms in 0i64..4_000_000_000_000, want in 1u64..60_000) {
            let now = jiff::Timestamp::from_millisecond(now_ms).unwrap();
            let base = Duration::from_millis(500);
            let wait = aligned(Duration::from_millis(want), base, now, Duration::ZERO);
            let step = (0..20).map(|k| 500u64 << k).find(|s| *s >= want.max(500)).unwrap();
            let wake = now_ms as u64 + wait.as_millis() as u64;
            proptest::prop_assert_eq!(wake % step, 0, "not on a tick");
            proptest::prop_assert!(wait.as_millis() as u64 >= step / 4 && wait.as_millis() as u64 <= step + step / 4);
        }
    }

    #[test]
    fn two_resources_with_different_waits_meet() {
        let base = Duration::from_secs(2);
        let a = jiff::Timestamp::from_millisecond(1_000_300).unwrap();
        let b = jiff::Timestamp::from_millisecond(1_001_700).unwrap();
        let wake_a = a.as_millisecond()
            + aligned(Duration::from_secs(8), base, a, Duration::ZERO).as_millis() as i64;
        let wake_b = b.as_millisecond()
            + aligned(Duration::from_secs(7), base, b, Duration::ZERO).as_millis() as i64;
        assert_eq!(wake_a, wake_b);
    }
}
