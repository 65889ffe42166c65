//! A model of one Local-mode TenantCertificate against a tenant, driven by random sequences of
//! events: Secret changes, renew requests, `live` catching up, lost answers to uploads, crashes
//! between a call and the status write, look-alike certificates uploaded by someone else, and
//! deletion. The planner and the adoption rules decide; a small executor here performs on the
//! model as the controller does (an intent written before each upload, status written at the end
//! of a reconcile). After every event the invariants are checked:
//!
//! - only ids this resource created are ever activated, deactivated or deleted, and only such
//!   ids are ever recorded in status (a look-alike is never adopted);
//! - the only live certificate of ours is never deactivated while `spec.active` is true and no
//!   newer one of ours is live;
//! - once the first certificate went live, the domain always has a live certificate of ours
//!   until the resource is deleted.

use jiff::Timestamp;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;

use super::plan::*;
use crate::aic::Certificate;
use crate::api::*;
use crate::pki::CertInfo;

#[derive(Debug, Clone)]
enum Event {
    /// Time passes: `live` catches up with `active`, then a reconcile.
    Tick,
    /// cert-manager writes a new chain into the Secret.
    SecretChanged,
    RenewRequested,
    /// The next upload takes effect but its answer is lost.
    LoseNextAnswer,
    /// The process dies right after its next tenant call, before writing status.
    CrashAfterNextCall,
    /// Someone else uploads a certificate identical to the Secret's (support, another cluster).
    ForeignLookAlike,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => Just(Event::Tick),
        1 => Just(Event::SecretChanged),
        1 => Just(Event::RenewRequested),
        1 => Just(Event::LoseNextAnswer),
        1 => Just(Event::CrashAfterNextCall),
        1 => Just(Event::ForeignLookAlike),
    ]
}

#[derive(Debug, Clone)]
struct ModelCert {
    cert: Certificate,
    ours: bool,
    deleted: bool,
}

struct Model {
    spec: TenantCertificateSpec,
    /// Status as last written to the API server.
    persisted: TenantCertificateStatus,
    /// Fingerprint index of the Secret's chain (each has its own validity).
    secret: u32,
    renew: Option<String>,
    renews: u32,
    tenant: Vec<ModelCert>,
    next_id: u32,
    lose_next: bool,
    crash_next: bool,
    was_live: bool,
    now: Timestamp,
    leaked: Vec<String>,
    /// What the executor would say the tenant's `live` delay is (timing only: never a decision).
    live_delay: Option<Duration>,
}

fn leaf_of(n: u32) -> CertInfo {
    let not_before = Timestamp::from_second(1_790_000_000 + i64::from(n) * 1000).unwrap();
    CertInfo {
        subject: "CN=login.example.com".into(),
        issuer: "CN=CA".into(),
        subject_alternative_names: vec!["login.example.com".into()],
        not_before,
        not_after: not_before + jiff::SignedDuration::from_hours(24 * 90),
        serial_number: format!("{n:x}"),
        fingerprint: format!("fp{n}"),
        public_key_der: vec![],
        is_ca: false,
    }
}

fn upload(id: String, leaf: &CertInfo, active: bool) -> Certificate {
    Certificate {
        id,
        active,
        live: false,
        valid_from_time: Some(leaf.not_before.to_string()),
        expire_time: Some(leaf.not_after.to_string()),
        subject_alternative_names: leaf.subject_alternative_names.clone(),
        ..Default::default()
    }
}

impl Model {
    fn new() -> Self {
        let spec = TenantCertificateSpec {
            tenant: TenantSpec {
                url: "https://t.example.com".into(),
                credentials_secret_ref: SecretReference {
                    name: "creds".into(),
                },
                ca_bundle: None,
            },
            key_source: KeySource::Local,
            secret_ref: SecretReference { name: "tls".into() },
            csr: None,
            active: true,
            renew_before: None,
            deletion_policy: DeletionPolicy::Delete,
            revision_history_limit: Some(0),
            issuer_ref: None,
            duration: None,
        };
        Model {
            spec,
            persisted: Default::default(),
            secret: 0,
            renew: None,
            renews: 0,
            tenant: vec![],
            next_id: 0,
            lose_next: false,
            crash_next: false,
            was_live: false,
            leaked: vec![],
            now: Timestamp::from_second(1_790_500_000).unwrap(),
            live_delay: None,
        }
    }

    fn source(&self) -> Source {
        Source::Present(Box::new(SourceCert {
            chain_pem: String::new(),
            key_pem: Some(String::new()),
            leaf: leaf_of(self.secret),
        }))
    }

    fn live_ours(&self) -> Vec<String> {
        self.tenant
            .iter()
            .filter(|c| c.ours && !c.deleted && c.cert.live)
            .map(|c| c.cert.id.clone())
            .collect()
    }

    /// Our own uploads that cannot be told apart from someone else's look-alikes: left alone,
    /// with a Warning (a leak is the price of never touching a foreign certificate).
    fn note_ambiguous(&mut self, candidates: &[&Certificate]) {
        for c in candidates {
            if self.tenant.iter().any(|m| m.cert.id == c.id && m.ours) {
                self.leaked.push(c.id.clone());
            }
        }
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut ModelCert> {
        self.tenant
            .iter_mut()
            .find(|c| c.cert.id == id && !c.deleted)
    }

    fn apply(&mut self, event: &Event) -> Result<(), TestCaseError> {
        match event {
            Event::Tick => {
                self.now += jiff::SignedDuration::from_secs(30);
                for c in &mut self.tenant {
                    c.cert.live = c.cert.active && !c.deleted;
                }
                self.reconcile()?;
            }
            Event::SecretChanged => {
                self.secret += 1;
                self.reconcile()?;
            }
            Event::RenewRequested => {
                self.renews += 1;
                self.renew = Some(format!("r{}", self.renews));
                self.reconcile()?;
            }
            Event::LoseNextAnswer => self.lose_next = true,
            Event::CrashAfterNextCall => self.crash_next = true,
            Event::ForeignLookAlike => {
                self.next_id += 1;
                let leaf = leaf_of(self.secret);
                let mut cert = upload(format!("foreign-{}", self.next_id), &leaf, true);
                cert.live = true;
                self.tenant.push(ModelCert {
                    cert,
                    ours: false,
                    deleted: false,
                });
            }
        }
        self.check()
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        for id in known_ids(&self.persisted) {
            let c = self.tenant.iter().find(|c| c.cert.id == id);
            prop_assert!(c.is_none_or(|c| c.ours), "status records {id}, not ours");
        }
        let live = self.live_ours();
        if self.was_live {
            prop_assert!(
                !live.is_empty(),
                "the domain has no live certificate of ours"
            );
        }
        self.was_live |= !live.is_empty();
        Ok(())
    }

    /// One reconcile, as `Run::drive` does it.
    fn reconcile(&mut self) -> Result<(), TestCaseError> {
        let source = self.source();
        let mut status = self.persisted.clone();
        let mut performed: Vec<Step> = vec![];
        for _ in 0..8 {
            let known = known_ids(&status);
            let view: BTreeMap<String, Certificate> = self
                .tenant
                .iter()
                .filter(|c| !c.deleted && known.contains(&c.cert.id))
                .map(|c| (c.cert.id.clone(), c.cert.clone()))
                .collect();
            let renew = self
                .renew
                .as_deref()
                .filter(|r| Some(*r) != status.last_renew_request.as_deref());
            let plan = plan(&Observation {
                spec: &self.spec,
                status: &status,
                renew_request: renew,
                source: &source,
                pending_csr: None,
                tenant: &view,
                now: self.now,
                poll: PollPolicy::default(),
                waiting_on_tenant: 1,
                live_delay: self.live_delay,
                signing: Signing::NotAsked,
            });
            let Ok(Plan {
                status: planned,
                step,
            }) = plan
            else {
                prop_assert!(false, "a valid input refused: {plan:?}");
                unreachable!()
            };
            status = planned;
            if !step.is_mutation() || performed.contains(&step) {
                break;
            }
            performed.push(step.clone());
            match step {
                Step::Upload { reason } => {
                    let leaf = leaf_of(self.secret);
                    let listed: Vec<Certificate> = self
                        .tenant
                        .iter()
                        .filter(|c| !c.deleted)
                        .map(|c| c.cert.clone())
                        .collect();
                    if let Some(old) = status
                        .intent
                        .clone()
                        .filter(|i| i.fingerprint.as_deref() != Some(leaf.fingerprint.as_str()))
                    {
                        let orphans = orphans_of_intent(&listed, &old, &known);
                        if orphans.len() > 1 {
                            self.note_ambiguous(&orphans);
                        }
                        for orphan in orphans.iter().filter(|_| orphans.len() == 1) {
                            let ours = self.tenant.iter().any(|m| m.cert.id == orphan.id && m.ours);
                            prop_assert!(ours, "took {}, which is not ours", orphan.id);
                            status.previous_certificate_ids.push(orphan.id.clone());
                        }
                        status.intent = None;
                    }
                    let known = known_ids(&status);
                    let candidates =
                        new_since_intent(&listed, &leaf, &known, status.intent.as_ref());
                    if candidates.len() > 1 {
                        self.note_ambiguous(&candidates);
                    }
                    let adopted =
                        find_adoptable_upload(&listed, &leaf, &known, status.intent.as_ref())
                            .cloned();
                    let id = match adopted {
                        Some(c) => {
                            let ours = self.tenant.iter().any(|m| m.cert.id == c.id && m.ours);
                            prop_assert!(ours, "adopted {}, which is not ours", c.id);
                            c.id
                        }
                        None => {
                            let existing = matching_uploads(&listed, &leaf)
                                .into_iter()
                                .map(|c| c.id.clone())
                                .collect();
                            status.intent = Some(intent_for(
                                status.intent.as_ref(),
                                upload_intent(&leaf, existing, self.now.to_string()),
                            ));
                            // The intent is written before the call.
                            self.persisted = status.clone();
                            self.next_id += 1;
                            let id = format!("ours-{}", self.next_id);
                            self.tenant.push(ModelCert {
                                cert: upload(id.clone(), &leaf, self.spec.active),
                                ours: true,
                                deleted: false,
                            });
                            if std::mem::take(&mut self.crash_next) {
                                return Ok(());
                            }
                            if std::mem::take(&mut self.lose_next) {
                                // A failure: recorded, the reconcile ends.
                                status.failures = Some(status.failures.unwrap_or(0) + 1);
                                self.persisted = status;
                                return Ok(());
                            }
                            id
                        }
                    };
                    status.intent = None;
                    status.pending = Some(PendingCertificate {
                        certificate_id: Some(id),
                        fingerprint: Some(leaf.fingerprint.clone()),
                        csr: None,
                        reason: reason.into(),
                        since: self.now.to_string(),
                        issued_for: Some(issuance_digest(&self.spec)),
                    });
                    if reason == "RenewRequested" {
                        status.last_renew_request = self.renew.clone();
                    }
                }
                Step::SetActive { id, active } => {
                    let live_ours = self.live_ours();
                    let c = self.get_mut(&id);
                    prop_assert!(
                        c.as_ref().is_some_and(|c| c.ours),
                        "activated {id}, not ours"
                    );
                    if !active && self.spec.active && live_ours.contains(&id) {
                        prop_assert!(
                            live_ours.iter().any(|l| *l != id),
                            "deactivated {id}, the only live certificate of ours"
                        );
                    }
                    self.get_mut(&id).unwrap().cert.active = active;
                    if std::mem::take(&mut self.crash_next) {
                        return Ok(());
                    }
                }
                Step::Delete { id } => {
                    let c = self.get_mut(&id);
                    prop_assert!(c.as_ref().is_some_and(|c| c.ours), "deleted {id}, not ours");
                    let c = c.unwrap();
                    if !c.cert.active && !c.cert.live {
                        c.deleted = true;
                        status.previous_certificate_ids.retain(|p| *p != id);
                        if status
                            .pending
                            .as_ref()
                            .is_some_and(|p| p.certificate_id.as_deref() == Some(id.as_str()))
                        {
                            status.pending = None;
                        }
                    } else {
                        break;
                    }
                }
                other => prop_assert!(false, "Local mode planned {other:?}"),
            }
        }
        status.failures = None;
        self.persisted = status;
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn random_event_sequences_keep_the_invariants(
        events in proptest::collection::vec(event(), 1..60),
        live_delay in proptest::option::of(0u64..600),
    ) {
        let mut model = Model::new();
        model.live_delay = live_delay.map(Duration::from_secs);
        model.apply(&Event::Tick)?;
        for e in &events {
            model.apply(e)?;
        }
        // Quiet time: it settles on the Secret's certificate, live, with nothing left over.
        for _ in 0..8 {
            model.apply(&Event::Tick)?;
        }
        let status = &model.persisted;
        prop_assert_eq!(status.fingerprint.clone(), Some(format!("fp{}", model.secret)));
        prop_assert!(status.pending.is_none());
        let id = status.certificate_id.clone().unwrap();
        let live: Vec<String> = model
            .live_ours()
            .into_iter()
            .filter(|l| !model.leaked.contains(l))
            .collect();
        prop_assert_eq!(live, vec![id]);
    }
}
