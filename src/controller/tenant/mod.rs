//! The TenantCertificate reconciler: reads the spec, the source Secret and the tenant, asks
//! [`plan::plan`] for the next step, performs it, and records the result — repeating within one
//! reconcile while steps complete, then writing status once.

pub mod plan;
pub mod source;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource, ResourceExt};

use super::patch::patch_status_diff;
use super::{Context, Error};
use crate::aic::{AicClient, AicError, Certificate, CsrRequest};
use crate::api::{
    self, CsrStatus, DeletionPolicy, PendingCertificate, TenantCertificate,
    TenantCertificateStatus, TenantRejection, Verdict,
};
use crate::{certmanager, pki};
use plan::{Invalid, Observation, Plan, Source, Step};

/// Steps performed in one reconcile at most (a fresh Local certificate needs two: upload, then
/// promote once live; a rotation a few more).
const MAX_STEPS: usize = 8;

pub fn references_secret(t: &TenantCertificate, name: &str) -> bool {
    t.spec.secret_ref.name == name || t.spec.tenant.credentials_secret_ref.name == name
}

pub async fn reconcile(obj: Arc<TenantCertificate>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<TenantCertificate> = Api::namespaced(ctx.client.clone(), &ns);
    let ours = obj.finalizers().iter().any(|f| f == api::FINALIZER);
    if obj.spec.deletion_policy == DeletionPolicy::Retain {
        // Retain leaves everything in the tenant: deleting the resource has nothing to clean up,
        // so it carries no finalizer and its deletion never waits on certrotor. (One that had it,
        // under another policy, loses it; any other policy gets it before its next step.)
        let deleting = obj.meta().deletion_timestamp.is_some();
        if !ours {
            return if deleting {
                Ok(Action::await_change())
            } else {
                apply(&obj, &ctx, &ns).await
            };
        }
        if !deleting {
            release_finalizer(&api, &obj).await?;
            return Ok(Action::await_change());
        }
    }
    finalizer(&api, api::FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(obj) => apply(&obj, &ctx, &ns).await,
            Finalizer::Cleanup(obj) => cleanup(&obj, &ctx, &ns).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::CleanupFailed(Error::CleanupPending(why)) => {
            Error::CleanupPending(why)
        }
        kube::runtime::finalizer::Error::CleanupFailed(Error::CleanupBackoff(wait)) => {
            Error::CleanupBackoff(wait)
        }
        other => Error::Finalizer(other.to_string()),
    })
}

/// Removes certrotor's finalizer, on the resourceVersion it was read at: a concurrent change to
/// the list fails the patch (409, retried) instead of being overwritten.
async fn release_finalizer(
    api: &Api<TenantCertificate>,
    obj: &TenantCertificate,
) -> Result<(), Error> {
    let others: Vec<&String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != api::FINALIZER)
        .collect();
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": obj.resource_version(), "finalizers": others},
    });
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Only Kubernetes API failures land here; back off and try again.
pub fn error_policy(obj: Arc<TenantCertificate>, err: &Error, ctx: Arc<Context>) -> Action {
    match err {
        Error::CleanupPending(_) => return Action::requeue(ctx.options.poll.max),
        // The failure policy has decided already (see `plan::failure_backoff`).
        Error::CleanupBackoff(wait) => return Action::requeue(*wait),
        _ => {}
    }
    tracing::warn!(name = %obj.name_any(), namespace = obj.namespace().unwrap_or_default(), error = %err, "reconcile error");
    Action::requeue(Duration::from_secs(5 + fastrand::u64(0..5)))
}

/// Everything one reconcile learns and decides, written to status at the end.
struct Run<'a> {
    obj: &'a TenantCertificate,
    ctx: &'a Context,
    ns: &'a str,
    status: TenantCertificateStatus,
    events: Vec<(EventType, &'static str, String)>,
    now: Timestamp,
    /// When this reconcile began: tenant lists started after it are fresh enough to share.
    started: std::time::Instant,
    /// The tenant list in hand started after this reconcile began.
    list_is_strict: bool,
    /// That list, shared with every reconcile that uses it: read for adoption, never copied.
    /// The map the planner sees holds only the certificates this resource knows.
    listed: Arc<Vec<Certificate>>,
    /// Status as last written (at first: as read).
    written: TenantCertificateStatus,
    /// The resourceVersion that status was read or written at (unknown after an unconditional
    /// write).
    resource_version: Option<String>,
    /// This reconcile read a stale copy: it ends without writing anything.
    stale: bool,
}

fn rejected_message(tenant_said: &str) -> String {
    format!(
        "{tenant_said}; the tenant would refuse the same again, so certrotor waits: change the Secret or the spec, or set {}, to try again",
        api::RENEW_ANNOTATION
    )
}

/// The certificates of a tenant list that this resource knows (recorded in status): all the
/// planner reads. A tenant holds thousands; copying them all per reconcile cost most of the
/// operator's CPU at 10,000 certificates.
fn ours(list: &[Certificate], status: &TenantCertificateStatus) -> BTreeMap<String, Certificate> {
    let known = plan::known_ids(status);
    list.iter()
        .filter(|c| known.contains(&c.id))
        .map(|c| (c.id.clone(), c.clone()))
        .collect()
}

async fn apply(obj: &TenantCertificate, ctx: &Context, ns: &str) -> Result<Action, Error> {
    let now = Timestamp::now();
    let mut run = Run {
        obj,
        ctx,
        ns,
        status: obj.status.clone().unwrap_or_default(),
        events: vec![],
        now,
        started: std::time::Instant::now(),
        list_is_strict: false,
        listed: Arc::default(),
        written: obj.status.clone().unwrap_or_default(),
        resource_version: obj.metadata.resource_version.clone(),
        stale: false,
    };
    let action = run.reconcile().await?;
    run.finish().await?;
    Ok(action)
}

impl Run<'_> {
    /// The poll schedule on this resource's tenant's ticks.
    fn poll(&self) -> plan::PollPolicy {
        self.ctx.options.poll.for_tenant(&self.obj.spec.tenant.url)
    }

    async fn reconcile(&mut self) -> Result<Action, Error> {
        let spec = &self.obj.spec;
        if api::is_paused(self.obj.meta()) {
            let ready = api::is_true(&self.status.conditions, api::READY);
            self.conclude(Verdict::paused(ready, "tenant"));
            return Ok(Action::await_change());
        }
        if let Err(invalid) = source::validate_spec(spec) {
            return Ok(self.stall(invalid));
        }
        // Known before any tenant call: no CSR is made that nobody could sign.
        if spec.issuer_ref.is_some()
            && !self
                .ctx
                .cert_manager
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(self.stall(Invalid {
                reason: "CertManagerNotInstalled",
                message: "cert-manager is not installed: the cluster has no CertificateRequest (cert-manager.io/v1) CRD. Install cert-manager and restart certrotor, or remove issuerRef and put the signed chain in the Secret".into(),
            }));
        }
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), self.ns);
        let secret = secrets.get_opt(&spec.secret_ref.name).await?;
        let source = match source::read_source(spec, secret.as_ref(), self.now) {
            Ok(s) => s,
            Err(invalid) => return Ok(self.stall(invalid)),
        };
        // A refusal the tenant would repeat is not sent again until something it depends on
        // changes: the Secret, the spec, or the renew request.
        let inputs = self.rejection_inputs(&source);
        if let Some(rejected) = self.status.rejected.clone() {
            if plan::rejection_applies(&rejected, &inputs) {
                return Ok(self.stall(Invalid {
                    reason: "TenantRejected",
                    message: rejected_message(&rejected.message),
                }));
            }
            self.status.rejected = None;
        }
        let client = match self.tenant_client(&secrets).await? {
            Ok(c) => c,
            Err(invalid) => return Ok(self.stall(invalid)),
        };
        match self.drive(&client, &source).await {
            Ok(action) => Ok(action),
            Err(StepError::Tenant(e)) => Ok(Action::requeue(self.tenant_failure(e))),
            Err(StepError::Rejected(message)) => Ok(self.rejected(inputs, message)),
            Err(StepError::Invalid(invalid)) => Ok(self.stall(invalid)),
            Err(StepError::Kube(e)) => Err(e),
            Err(StepError::Stale) => {
                self.stale = true;
                Ok(Action::requeue(self.ctx.options.poll.min))
            }
            Err(StepError::NotYet(message)) => {
                // An expected wait, not a failure: no Warning, no backoff, no failure count.
                let ready = api::is_true(&self.status.conditions, api::READY);
                self.conclude(Verdict::progressing(ready, "WaitingToDeleteOld", message));
                let poll = self.poll();
                Ok(Action::requeue(poll.wake(poll.min, poll.min, self.now)))
            }
        }
    }

    /// Plan, perform, record; until the plan says wait.
    async fn drive(
        &mut self,
        client: &Arc<AicClient>,
        source: &Source,
    ) -> Result<Action, StepError> {
        let spec = &self.obj.spec;
        let uid = self.obj.metadata.uid.clone().unwrap_or_default();
        let pending_renew = api::annotation(self.obj.meta(), api::RENEW_ANNOTATION)
            .filter(|v| Some(*v) != self.status.last_renew_request.as_deref());
        let settledness = plan::Settledness {
            spec,
            status: &self.status,
            generation: self.obj.meta().generation,
            source,
            renew_request: pending_renew,
            now: self.now,
        };
        if !self.ctx.record_look(&uid) {
            // A new process honours the backoff the last one set: a restart must not send a
            // fleet of failing resources at a failing tenant all at once. (Within a process, a
            // reconcile before the next attempt time comes from a change someone made.)
            if let Some(after) = plan::backing_off(
                &self.status,
                self.obj.meta().generation,
                pending_renew,
                self.now,
            ) {
                return Ok(Action::requeue(after));
            }
            if let Some(after) = plan::quiet_after_restart(&settledness, &self.poll()) {
                return Ok(Action::requeue(after));
            }
        }
        // Polls of one tenant wake together (see `plan::aligned`) and share one list: a list that
        // started since the tick this reconcile woke on is good enough to look at `live`, one from
        // the last poll interval to check on a settled certificate (all of a tenant's resyncs
        // fall on one tick and are worked through a few at a time). Creating needs more (see
        // `Step::Upload`).
        let tolerance = if plan::settled(&settledness) {
            self.ctx.options.poll.max
        } else {
            plan::live_list_tolerance(&self.poll(), self.now)
        };
        let since = self.started.checked_sub(tolerance).unwrap_or(self.started);
        let (listed_at, list) = client.list_certificates_shared(since).await?;
        self.list_is_strict = listed_at >= self.ctx.tenant_state_since(&uid);
        let mut tenant = ours(&list, &self.status);
        self.listed = list;
        // An earlier list may predate our own last upload: never conclude from it that one of our
        // certificates is gone.
        if !self.list_is_strict
            && plan::known_ids(&self.status)
                .iter()
                .any(|id| !tenant.contains_key(id))
        {
            let list = client
                .list_certificates_since(self.ctx.tenant_state_since(&uid))
                .await?;
            tenant = ours(&list, &self.status);
            self.listed = list;
            self.list_is_strict = true;
        }
        // A single list never decides that one of our certificates has vanished (a list may
        // lag behind the tenant): ask for each missing one by id, and forget only on a 404.
        for id in plan::known_ids(&self.status) {
            if !tenant.contains_key(&id)
                && let Some(c) = client.get_certificate(&id).await?
            {
                tenant.insert(id, c);
            }
        }
        let renew = api::annotation(self.obj.meta(), api::RENEW_ANNOTATION)
            .filter(|v| Some(*v) != self.status.last_renew_request.as_deref())
            .map(str::to_string);
        // Never the same mutation twice in one reconcile: if the tenant's answer did not show
        // the change (an eventually consistent read), the next reconcile looks again.
        let mut performed: Vec<Step> = Vec::new();
        for _ in 0..MAX_STEPS {
            let pending_csr = self
                .status
                .pending
                .as_ref()
                .and_then(|p| p.csr.as_ref())
                .map(|c| pki::csr_info(&c.request).map_err(|e| e.to_string()));
            let renew_request = renew
                .as_deref()
                .filter(|v| Some(*v) != self.status.last_renew_request.as_deref());
            let signing = self.signing().await.map_err(StepError::Kube)?;
            if let plan::Signing::Request { name, .. } = &signing {
                // Found again after a crash between creating it and recording it.
                self.status.certificate_request = Some(name.clone());
            }
            let obs = Observation {
                spec,
                status: &self.status,
                renew_request,
                source,
                pending_csr: pending_csr.as_ref(),
                tenant: &tenant,
                now: self.now,
                poll: self.poll(),
                waiting_on_tenant: self.ctx.waiting_for_live(&spec.tenant.url, &uid),
                live_delay: self.ctx.live_delay(&spec.tenant.url),
                signing: signing.clone(),
            };
            let Plan { status, step } = plan::plan(&obs).map_err(StepError::Invalid)?;
            // A pending certificate promoted: the tenant made it live this long after activation.
            if let Some(p) = &self.status.pending
                && p.certificate_id.is_some()
                && p.certificate_id == status.certificate_id
                && let Ok(since) = p.since.parse::<Timestamp>()
            {
                let took = self.now.as_millisecond() - since.as_millisecond();
                self.ctx
                    .saw_live_after(&spec.tenant.url, Duration::from_millis(took.max(0) as u64));
            }
            self.status = status;
            self.reflect_current(&tenant, source);
            self.ctx.set_waiting_for_live(
                &spec.tenant.url,
                &uid,
                matches!(
                    &step,
                    Step::Wait {
                        reason: "WaitingForLive",
                        ..
                    }
                ),
                false,
            );
            match step {
                Step::Wait {
                    reason,
                    message,
                    after,
                } => {
                    self.end_failure_streak();
                    let ready = self.current_settled(&tenant);
                    self.conclude(Verdict::progressing(ready, reason, message));
                    return Ok(Action::requeue(after));
                }
                Step::Stuck {
                    reason,
                    message,
                    after,
                } => {
                    let ready = self.current_settled(&tenant);
                    self.conclude(Verdict::stalled(ready, reason, message));
                    return Ok(Action::requeue(after));
                }
                Step::Settled {
                    reason,
                    message,
                    after,
                } => {
                    self.end_failure_streak();
                    self.status.last_failure_time = None;
                    self.conclude(Verdict::ready(reason, message));
                    return Ok(Action::requeue(after));
                }
                Step::StoreChain { name, chain } => {
                    self.store_chain(&name, &chain)
                        .await
                        .map_err(StepError::Kube)?;
                    let ready = self.current_settled(&tenant);
                    self.conclude(Verdict::progressing(
                        ready,
                        "Issued",
                        format!(
                            "cert-manager issued CertificateRequest {name}; the chain is in Secret {} and is checked next",
                            spec.secret_ref.name
                        ),
                    ));
                    let poll = &self.ctx.options.poll;
                    return Ok(Action::requeue(poll.min));
                }
                // A mutation is decided on a list that shows our own last one: a list shared
                // from before it (or a lagging one) would have us repeat it.
                step if !self.list_is_strict && step.is_mutation() => {
                    let list = client
                        .list_certificates_since(self.ctx.tenant_state_since(&uid))
                        .await?;
                    tenant = ours(&list, &self.status);
                    for id in plan::known_ids(&self.status) {
                        if !tenant.contains_key(&id)
                            && let Some(c) = client.get_certificate(&id).await?
                        {
                            tenant.insert(id, c);
                        }
                    }
                    self.listed = list;
                    self.list_is_strict = true;
                }
                step if performed.contains(&step) => {
                    tracing::debug!(
                        ?step,
                        "step already performed in this reconcile; looking again later"
                    );
                    let ready = self.current_settled(&tenant);
                    self.conclude(Verdict::progressing(
                        ready,
                        "Progressing",
                        "waiting for the tenant to show the last change",
                    ));
                    let poll = self.poll();
                    return Ok(Action::requeue(poll.wake(poll.min, poll.min, self.now)));
                }
                step => {
                    performed.push(step.clone());
                    // A 400 to what we send (an upload, a CSR, a chain) would be the same next
                    // time; a 400 to an activation or a deletion may not be.
                    let sends_input = matches!(
                        step,
                        Step::Upload { .. } | Step::CreateCsr { .. } | Step::CompleteCsr { .. }
                    );
                    let done = self
                        .perform(
                            client,
                            step,
                            source,
                            &mut tenant,
                            renew_request.map(str::to_string),
                        )
                        .await;
                    // Even a failed call may have taken effect: later lists must start after it.
                    self.ctx.record_tenant_mutation(&uid);
                    done.map_err(|e| match e {
                        StepError::Tenant(AicError::BadRequest { message, .. }) if sends_input => {
                            StepError::Rejected(message)
                        }
                        other => other,
                    })?;
                    // A step succeeded: the failure streak is over.
                    self.end_failure_streak();
                }
            }
        }
        let ready = self.current_settled(&tenant);
        self.conclude(Verdict::progressing(
            ready,
            "Progressing",
            "more steps to go",
        ));
        Ok(Action::requeue(Duration::from_secs(1)))
    }

    async fn perform(
        &mut self,
        client: &Arc<AicClient>,
        step: Step,
        source: &Source,
        tenant: &mut BTreeMap<String, Certificate>,
        renew_request: Option<String>,
    ) -> Result<(), StepError> {
        let spec = &self.obj.spec;
        let since = self.now.to_string();
        match step {
            Step::Upload { reason } => {
                let cert = source.cert().ok_or_else(|| {
                    StepError::Invalid(Invalid {
                        reason: "SecretNotFound",
                        message: "no source certificate".into(),
                    })
                })?;
                if !self.list_is_strict {
                    // Adoption must see every upload made before this reconcile began, or an
                    // upload whose status write was lost would be made twice.
                    let uid = self.obj.metadata.uid.clone().unwrap_or_default();
                    let list = client
                        .list_certificates_since(self.ctx.tenant_state_since(&uid))
                        .await?;
                    *tenant = ours(&list, &self.status);
                    self.listed = list;
                    self.list_is_strict = true;
                }
                // An earlier upload whose answer was lost, for a Secret that has changed since:
                // ours, so it is recorded for cleanup instead of being left in the tenant.
                if let Some(old) =
                    self.status.intent.clone().filter(|i| {
                        i.fingerprint.as_deref() != Some(cert.leaf.fingerprint.as_str())
                    })
                {
                    let known = plan::known_ids(&self.status);
                    let orphans = plan::orphans_of_intent(self.listed.iter(), &old, &known);
                    if orphans.len() > 1 {
                        self.events.push((
                            EventType::Warning,
                            "AmbiguousUpload",
                            format!(
                                "an upload whose answer was lost cannot be told apart from identical certificates uploaded by someone else ({}); none is touched: remove ours by hand",
                                orphans.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    }
                    let single = orphans.len() == 1;
                    for orphan in orphans.into_iter().filter(|_| single) {
                        self.events.push((
                            EventType::Normal,
                            "Adopted",
                            format!(
                                "certificate {} was uploaded for an earlier Secret (its answer was lost); recorded to be cleaned up",
                                orphan.id
                            ),
                        ));
                        self.status.previous_certificate_ids.push(orphan.id.clone());
                        tenant.insert(orphan.id.clone(), orphan.clone());
                    }
                    self.status.intent = None;
                }
                let known = plan::known_ids(&self.status);
                let adopted = plan::find_adoptable_upload(
                    self.listed.iter(),
                    &cert.leaf,
                    &known,
                    self.status.intent.as_ref(),
                )
                .cloned();
                let uploaded = match adopted {
                    Some(c) => {
                        self.events.push((
                            EventType::Normal,
                            "Adopted",
                            format!(
                                "adopted certificate {} already uploaded for this resource",
                                c.id
                            ),
                        ));
                        c
                    }
                    None => {
                        // Proof of ownership for later: what is about to be uploaded, and which
                        // look-alikes the tenant already holds, recorded before the call.
                        let existing = plan::matching_uploads(self.listed.iter(), &cert.leaf)
                            .into_iter()
                            .map(|c| c.id.clone())
                            .collect();
                        let intent = plan::intent_for(
                            self.status.intent.as_ref(),
                            plan::upload_intent(&cert.leaf, existing, since.clone()),
                        );
                        let message =
                            format!("uploading certificate {} ({reason})", cert.leaf.fingerprint);
                        self.record_intent(intent, tenant, message).await?;
                        let key = cert.key_pem.as_deref().unwrap_or_default();
                        let c = client
                            .create_certificate(&cert.chain_pem, key, spec.active)
                            .await?;
                        self.events.push((
                            EventType::Normal,
                            "Uploaded",
                            format!(
                                "uploaded certificate {} ({}, {})",
                                c.id, cert.leaf.fingerprint, reason
                            ),
                        ));
                        c
                    }
                };
                self.status.intent = None;
                self.status.pending = Some(PendingCertificate {
                    certificate_id: Some(uploaded.id.clone()),
                    fingerprint: Some(cert.leaf.fingerprint.clone()),
                    csr: None,
                    reason: reason.into(),
                    since,
                    issued_for: Some(plan::issuance_digest(spec)),
                });
                tenant.insert(uploaded.id.clone(), uploaded);
                if reason == "RenewRequested" {
                    self.status.last_renew_request = renew_request;
                }
            }
            Step::CreateCsr { reason } => {
                let csr_spec = spec.csr.as_ref().ok_or_else(|| {
                    StepError::Invalid(Invalid {
                        reason: "CsrRequired",
                        message: "keySource Tenant needs spec.csr".into(),
                    })
                })?;
                let mut known: Vec<String> = self.status.csr.iter().map(|c| c.id.clone()).collect();
                known.extend(
                    self.status
                        .pending
                        .as_ref()
                        .and_then(|p| p.csr.as_ref())
                        .map(|c| c.id.clone()),
                );
                let csrs = client.list_csrs().await?;
                let adoptable =
                    plan::find_adoptable_csr(&csrs, csr_spec, &known, self.status.intent.as_ref());
                let csr = match adoptable {
                    Some(c) => {
                        self.events.push((
                            EventType::Normal,
                            "Adopted",
                            format!("adopted CSR {} already made for this resource", c.id),
                        ));
                        c.clone()
                    }
                    None => {
                        let existing = plan::matching_csrs(&csrs, csr_spec)
                            .into_iter()
                            .map(|c| c.id.clone())
                            .collect();
                        let intent = plan::intent_for(
                            self.status.intent.as_ref(),
                            api::CreateIntent {
                                kind: api::INTENT_CSR.into(),
                                common_name: Some(csr_spec.common_name.clone()),
                                subject_alternative_names: csr_spec
                                    .subject_alternative_names
                                    .clone(),
                                existing,
                                since: since.clone(),
                                ..Default::default()
                            },
                        );
                        let message = format!("asking the tenant for a CSR ({reason})");
                        self.record_intent(intent, tenant, message).await?;
                        let c = client.create_csr(&CsrRequest::from(csr_spec)).await?;
                        self.events.push((EventType::Normal, "CsrCreated", format!("tenant made CSR {} ({reason}); sign it and put the chain in Secret {} (tls.crt)", c.id, spec.secret_ref.name)));
                        c
                    }
                };
                let status_csr = CsrStatus {
                    id: csr.id.clone(),
                    request: csr.request.clone(),
                };
                self.status.intent = None;
                self.status.csr = Some(status_csr.clone());
                self.status.pending = Some(PendingCertificate {
                    certificate_id: None,
                    fingerprint: None,
                    csr: Some(status_csr),
                    reason: reason.into(),
                    since,
                    issued_for: Some(plan::issuance_digest(spec)),
                });
                if reason == "RenewRequested" {
                    self.status.last_renew_request = renew_request;
                }
                self.publish_csr(&csr.id, &csr.request)
                    .await
                    .map_err(StepError::Kube)?;
            }
            Step::CompleteCsr { csr_id } => {
                let cert = source.cert().ok_or_else(|| {
                    StepError::Invalid(Invalid {
                        reason: "MissingKey",
                        message: "no chain".into(),
                    })
                })?;
                let certificate_id = match client.get_csr(&csr_id).await? {
                    None => {
                        // The CSR is gone from the tenant: start over with a new one.
                        self.events.push((
                            EventType::Warning,
                            "CsrMissing",
                            format!(
                                "CSR {csr_id} no longer exists in the tenant; making a new one"
                            ),
                        ));
                        self.status.pending = None;
                        return Ok(());
                    }
                    Some(existing) if existing.certificate_id.is_some() => existing.certificate_id,
                    Some(_) => {
                        let done = client.complete_csr(&csr_id, &cert.chain_pem).await?;
                        self.events.push((
                            EventType::Normal,
                            "ChainUploaded",
                            format!(
                                "uploaded the signed chain to CSR {csr_id} ({})",
                                cert.leaf.fingerprint
                            ),
                        ));
                        done.certificate_id
                    }
                };
                let id = certificate_id.ok_or_else(|| {
                    StepError::Tenant(AicError::InvalidResponse(
                        "completed CSR has no certificateID".into(),
                    ))
                })?;
                // A certificate made from a CSR starts inactive; the next step activates it and
                // gets the tenant's full view back, so no extra GET is needed here.
                tenant.insert(
                    id.clone(),
                    Certificate {
                        id: id.clone(),
                        ..Default::default()
                    },
                );
                if let Some(p) = self.status.pending.as_mut() {
                    p.certificate_id = Some(id);
                    p.fingerprint = Some(cert.leaf.fingerprint.clone());
                }
            }
            Step::DeleteCsr { csr_id, why } => {
                match client.delete_csr(&csr_id).await {
                    // Gone already (deleted by hand, or our earlier answer was lost): the same.
                    Ok(()) | Err(AicError::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
                self.events.push((
                    EventType::Normal,
                    "Superseded",
                    format!(
                        "deleted CSR {csr_id}, which no chain was uploaded to: superseded by {why}"
                    ),
                ));
                self.status.pending = None;
                self.status.csr = None;
            }
            Step::RequestSignature { name } => {
                self.request_signature(&name)
                    .await
                    .map_err(StepError::Kube)?;
            }
            // Written by `drive`, which ends the reconcile right after it.
            Step::StoreChain { .. } => {}
            Step::SetActive { id, active } => {
                if !active && self.is_pending(&id) {
                    self.events.push((
                        EventType::Normal,
                        "Superseded",
                        format!("pending certificate {id} never went live and is superseded; deactivating it before deleting it"),
                    ));
                }
                let updated = client.set_active(&id, active).await?;
                let what = if active { "Activated" } else { "Deactivated" };
                self.events.push((
                    EventType::Normal,
                    what,
                    format!("{} certificate {id}", what.to_lowercase()),
                ));
                if active
                    && let Some(p) = self
                        .status
                        .pending
                        .as_mut()
                        .filter(|p| p.certificate_id.as_deref() == Some(id.as_str()))
                {
                    p.since = since;
                }
                tenant.insert(id, updated);
            }
            Step::Delete { id } => match client.delete_certificate(&id).await {
                Ok(()) => {
                    let what = if self.is_pending(&id) {
                        "superseded pending"
                    } else {
                        "old"
                    };
                    self.events.push((
                        EventType::Normal,
                        "Deleted",
                        format!("deleted {what} certificate {id}"),
                    ));
                    tenant.remove(&id);
                    self.forget(&id);
                }
                // Already gone (someone deleted it, or our own DELETE's answer was lost and
                // the retry found nothing): what we wanted.
                Err(AicError::NotFound) => {
                    tenant.remove(&id);
                    self.forget(&id);
                }
                // Right after `live` turns false the tenant answers an empty 500 for a while
                // (observed: about 17 s): expected, so a quiet wait rather than a failure.
                Err(AicError::Server { status: 500, .. }) => {
                    return Err(StepError::NotYet(format!(
                        "waiting for the tenant to allow deleting old certificate {id} (it refuses for a while after the certificate stops being live)"
                    )));
                }
                Err(e) => return Err(e.into()),
            },
            Step::Wait { .. } | Step::Stuck { .. } | Step::Settled { .. } => {}
        }
        Ok(())
    }

    /// Writes the intent to status before the creating call it announces: if the answer is
    /// lost or the process dies, the next reconcile knows what it may adopt. Skipped when the
    /// same intent is recorded already (a retry).
    async fn record_intent(
        &mut self,
        intent: api::CreateIntent,
        tenant: &BTreeMap<String, Certificate>,
        message: String,
    ) -> Result<(), StepError> {
        if self.status.intent.as_ref() == Some(&intent) && self.written_intent() {
            return Ok(());
        }
        self.status.intent = Some(intent);
        let ready = self.current_settled(tenant);
        self.conclude(Verdict::progressing(ready, "Creating", message));
        // Conditional on the resourceVersion this reconcile read: a reconcile that started from a
        // stale copy (the cache lags behind our own last write) must not create anything.
        match self.write_status_if_unchanged().await {
            Ok(()) => Ok(()),
            Err(Error::Kube(kube::Error::Api(e))) if e.code == 409 => Err(StepError::Stale),
            Err(e) => Err(StepError::Kube(e)),
        }
    }

    /// Writes status with the resourceVersion last seen as a precondition.
    async fn write_status_if_unchanged(&mut self) -> Result<(), Error> {
        let old = serde_json::to_value(&self.written)?;
        let new = serde_json::to_value(&self.status)?;
        let api: Api<TenantCertificate> = Api::namespaced(self.ctx.client.clone(), self.ns);
        let rv = self.resource_version.clone();
        if let Some(written) =
            patch_status_diff(&api, &self.obj.name_any(), &old, &new, rv.as_deref()).await?
        {
            self.resource_version = written.metadata.resource_version;
        }
        self.written = self.status.clone();
        Ok(())
    }

    fn written_intent(&self) -> bool {
        self.written.intent == self.status.intent
    }

    /// With `issuerRef` and a pending CSR: its cert-manager CertificateRequest, read from the
    /// API server (the request's watch wakes this reconcile when it changes).
    async fn signing(&self) -> Result<plan::Signing, Error> {
        let csr = self
            .status
            .pending
            .as_ref()
            .filter(|p| p.certificate_id.is_none())
            .and_then(|p| p.csr.as_ref());
        let (Some(_), Some(csr)) = (&self.obj.spec.issuer_ref, csr) else {
            return Ok(plan::Signing::NotAsked);
        };
        if !self
            .ctx
            .cert_manager
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(plan::Signing::NotInstalled);
        }
        let name = certmanager::request_name(&self.obj.name_any(), &csr.id);
        let api: Api<certmanager::CertificateRequest> =
            Api::namespaced(self.ctx.client.clone(), self.ns);
        Ok(match api.get_opt(&name).await? {
            None => plan::Signing::Missing { name },
            Some(cr) => plan::Signing::Request {
                name,
                state: cr.state(),
            },
        })
    }

    /// Creates the CertificateRequest for the pending CSR (one per CSR: its name derives from
    /// the CSR id, so after a crash the same request is found, never a second made), then
    /// deletes this resource's older requests beyond `revisionHistoryLimit`.
    async fn request_signature(&mut self, name: &str) -> Result<(), Error> {
        let spec = &self.obj.spec;
        let (Some(issuer), Some(csr)) = (
            &spec.issuer_ref,
            self.status.pending.as_ref().and_then(|p| p.csr.clone()),
        ) else {
            return Ok(());
        };
        let uid = self.obj.metadata.uid.clone().unwrap_or_default();
        let request = certmanager::CertificateRequest {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.ns.to_string()),
                owner_references: Some(self.obj.controller_owner_ref(&()).into_iter().collect()),
                labels: Some(
                    [
                        (
                            certmanager::MANAGED_BY_LABEL.to_string(),
                            api::MANAGER.to_string(),
                        ),
                        (certmanager::OWNER_LABEL.to_string(), uid.clone()),
                    ]
                    .into(),
                ),
                annotations: Some([("certrotor.io/csr-id".to_string(), csr.id.clone())].into()),
                ..Default::default()
            },
            spec: certmanager::CertificateRequestSpec {
                request: certmanager::encode(&csr.request),
                issuer_ref: certmanager::ObjectReference {
                    name: issuer.name.clone(),
                    kind: Some(issuer.kind.clone().unwrap_or_else(|| "Issuer".into())),
                    group: Some(
                        issuer
                            .group
                            .clone()
                            .unwrap_or_else(|| certmanager::GROUP.into()),
                    ),
                },
                duration: spec.duration.clone(),
                usages: ["server auth", "digital signature", "key encipherment"]
                    .map(String::from)
                    .to_vec(),
            },
            status: None,
        };
        let api: Api<certmanager::CertificateRequest> =
            Api::namespaced(self.ctx.client.clone(), self.ns);
        match api
            .create(&kube::api::PostParams::default(), &request)
            .await
        {
            Ok(_) => self.events.push((
                EventType::Normal,
                "CertificateRequestCreated",
                format!(
                    "CertificateRequest {name} asks {} {} to sign CSR {}",
                    request.spec.issuer_ref.kind.as_deref().unwrap_or("Issuer"),
                    issuer.name,
                    csr.id
                ),
            )),
            // Made before a crash, or by the reconcile before: the same request.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        self.status.certificate_request = Some(name.to_string());
        // Old requests beyond the history limit go.
        let limit = spec
            .revision_history_limit
            .map(|l| l.max(0) as usize)
            .unwrap_or(plan::DEFAULT_HISTORY);
        let mut mine = api
            .list(
                &kube::api::ListParams::default()
                    .labels(&format!("{}={uid}", certmanager::OWNER_LABEL)),
            )
            .await?
            .items;
        mine.retain(|r| r.metadata.name.as_deref() != Some(name));
        mine.sort_by_key(|r| {
            std::cmp::Reverse(r.metadata.creation_timestamp.as_ref().map(|t| t.0))
        });
        for old in mine.into_iter().skip(limit) {
            if let Some(old) = old.metadata.name {
                match api.delete(&old, &Default::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// cert-manager's chain into the resource's Secret (`tls.crt`), where the usual checks read
    /// it and people can see it. A Secret that does not exist yet is created (Opaque: the key
    /// stays in the tenant, so it cannot be a `kubernetes.io/tls` Secret).
    async fn store_chain(&mut self, request: &str, chain: &str) -> Result<(), Error> {
        let name = &self.obj.spec.secret_ref.name;
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), self.ns);
        let data = serde_json::json!({
            "tls.crt": certmanager::encode(chain),
        });
        match secrets.get_opt(name).await? {
            Some(_) => {
                let patch = serde_json::json!({ "data": data });
                secrets
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
            None => {
                let secret: Secret = serde_json::from_value(serde_json::json!({
                    "metadata": {
                        "name": name,
                        "namespace": self.ns,
                        "labels": {"app.kubernetes.io/managed-by": api::MANAGER},
                    },
                    "type": "Opaque",
                    "data": data,
                }))?;
                secrets
                    .create(&kube::api::PostParams::default(), &secret)
                    .await?;
            }
        }
        self.events.push((
            EventType::Normal,
            "Issued",
            format!(
                "cert-manager issued CertificateRequest {request}; chain written to Secret {name}"
            ),
        ));
        Ok(())
    }

    fn end_failure_streak(&mut self) {
        self.status.failures = None;
        self.status.next_attempt_time = None;
    }

    fn is_pending(&self, id: &str) -> bool {
        self.status
            .pending
            .as_ref()
            .is_some_and(|p| p.certificate_id.as_deref() == Some(id))
    }

    /// A deleted certificate leaves status: the pending record, or the previous ids.
    fn forget(&mut self, id: &str) {
        if self.is_pending(id) {
            self.status.pending = None;
        }
        self.status.previous_certificate_ids.retain(|p| p != id);
    }

    /// `active`/`live` and renewal time of the current certificate, as the tenant reports them.
    fn reflect_current(&mut self, tenant: &BTreeMap<String, Certificate>, source: &Source) {
        match self
            .status
            .certificate_id
            .as_ref()
            .and_then(|id| tenant.get(id))
        {
            Some(c) => {
                self.status.active = Some(c.active);
                self.status.live = Some(c.live);
                if self.status.not_after.is_none() {
                    let remote = c.clone();
                    plan::describe_current(&mut self.status, source, &remote);
                }
            }
            None => {
                self.status.active = None;
                self.status.live = None;
            }
        }
        self.status.renewal_time =
            plan::renewal_time(&self.obj.spec, &self.status).map(|t| t.to_string());
    }

    fn current_settled(&self, tenant: &BTreeMap<String, Certificate>) -> bool {
        let spec = &self.obj.spec;
        self.status
            .certificate_id
            .as_ref()
            .and_then(|id| tenant.get(id))
            .is_some_and(|c| c.active == spec.active && (!spec.active || c.live))
    }

    async fn tenant_client(
        &self,
        secrets: &Api<Secret>,
    ) -> Result<Result<Arc<AicClient>, Invalid>, Error> {
        let tenant = &self.obj.spec.tenant;
        let name = &tenant.credentials_secret_ref.name;
        let Some(secret) = secrets.get_opt(name).await? else {
            return Ok(Err(Invalid {
                reason: "CredentialsNotFound",
                message: format!("credentials Secret {name} not found"),
            }));
        };
        let data: BTreeMap<String, Vec<u8>> = source::secret_data(&secret)
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        Ok(self
            .ctx
            .aic
            .get(
                &format!("{}/{name}", self.ns),
                &tenant.url,
                &data,
                tenant.ca_bundle.as_deref(),
            )
            .map_err(|e| Invalid {
                reason: e.reason(),
                message: format!("credentials Secret {name} / tenant: {e}"),
            }))
    }

    /// The CSR, where a CA process can read it: ConfigMap `<name>-csr` (owned by the resource).
    async fn publish_csr(&self, id: &str, request: &str) -> Result<(), Error> {
        let name = format!("{}-csr", self.obj.name_any());
        let owner = self
            .obj
            .controller_owner_ref(&())
            .into_iter()
            .collect::<Vec<_>>();
        let cm = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.ns.to_string()),
                owner_references: Some(owner),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_string(),
                        "certrotor".to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some(
                [
                    ("csrId".to_string(), id.to_string()),
                    ("tls.csr".to_string(), request.to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), self.ns);
        api.patch(
            &name,
            &PatchParams::apply(api::MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await?;
        Ok(())
    }

    fn stall(&mut self, invalid: Invalid) -> Action {
        // A bad chain for a renewal leaves the certificate in place live and in use.
        let ready = api::is_true(&self.status.conditions, api::READY)
            && matches!(
                invalid.reason,
                "ChainDoesNotMatchCsr" | "ChainDoesNotCoverCsr" | "ChainNotNewer"
            );
        self.conclude(Verdict::stalled(ready, invalid.reason, invalid.message));
        // Fixing the input changes the resource or a watched Secret, which reconciles at once.
        Action::requeue(Duration::from_secs(600))
    }

    /// What a refusal depends on, now.
    fn rejection_inputs(&self, source: &Source) -> TenantRejection {
        TenantRejection {
            message: String::new(),
            generation: self.obj.meta().generation,
            fingerprint: source.cert().map(|c| c.leaf.fingerprint.clone()),
            renew_request: api::annotation(self.obj.meta(), api::RENEW_ANNOTATION)
                .map(str::to_string),
        }
    }

    /// The tenant refused what we sent and would refuse it again: recorded with the inputs it
    /// refused, so a person has to change one of them before it is sent again.
    fn rejected(&mut self, inputs: TenantRejection, message: String) -> Action {
        let tenant_said = format!("tenant rejected the request (400): {message}");
        self.status.rejected = Some(TenantRejection { message, ..inputs });
        self.status.failures = None;
        self.status.next_attempt_time = None;
        self.stall(Invalid {
            reason: "TenantRejected",
            message: rejected_message(&tenant_said),
        })
    }

    /// Records a failure and returns how long to wait before the next attempt.
    fn tenant_failure(&mut self, err: AicError) -> Duration {
        let failures = self.status.failures.unwrap_or(0).saturating_add(1);
        let opts = &self.ctx.options;
        let wait = plan::failure_backoff(
            opts.failure_backoff_base,
            opts.failure_backoff_max,
            failures.max(1) as u32,
            err.retry_after(),
            fastrand::f64(),
        );
        self.status.failures = Some(failures);
        self.status.last_failure_time = Some(self.now.to_string());
        self.status.next_attempt_time = self
            .now
            .checked_add(jiff::SignedDuration::try_from(wait).unwrap_or_default())
            .ok()
            .map(|t| t.to_string());
        let ready = api::is_true(&self.status.conditions, api::READY);
        let message = format!("{err}; next attempt in {}s", wait.as_secs());
        let verdict = if err.needs_person() {
            Verdict::stalled(
                ready,
                err.reason(),
                format!(
                    "{err}: check the tenant credentials Secret and the service account's scopes"
                ),
            )
        } else {
            Verdict::progressing(ready, err.reason(), message)
        };
        self.conclude(verdict);
        wait
    }

    fn conclude(&mut self, verdict: Verdict) {
        let previous_reason =
            api::condition(&self.status.conditions, api::READY).map(|c| c.reason.clone());
        if (verdict.stalled || self.status.failures.is_some())
            && previous_reason.as_deref() != Some(verdict.reason.as_str())
        {
            self.events.push((
                EventType::Warning,
                static_reason(&verdict.reason),
                verdict.message.clone(),
            ));
        } else if verdict.ready && previous_reason.as_deref() != Some(verdict.reason.as_str()) {
            // Ready stays True while a rotation goes on: its steps are progress, not readiness.
            let reason = if verdict.reconciling {
                "Progressing"
            } else {
                "Ready"
            };
            self.events
                .push((EventType::Normal, reason, verdict.message.clone()));
        }
        // The generation observed is the newest whose certificate is in place: while the spec
        // asks for a certificate made differently, GitOps tools must not see it as done.
        let generation = self.obj.meta().generation;
        let observed = if verdict.stalled {
            // What stops it is about the spec as it is now.
            generation
        } else if plan::reflects_spec(&self.obj.spec, &self.status) {
            self.status.issued_generation = self.status.issued_for.as_ref().and(generation);
            generation
        } else {
            self.status
                .issued_generation
                .or(self.status.observed_generation)
        };
        self.status.observed_generation = observed;
        api::apply_verdict(&mut self.status.conditions, &verdict, observed, self.now);
    }

    /// Writes status if it differs from what was last written.
    async fn write_status(&mut self) -> Result<(), Error> {
        let old = serde_json::to_value(&self.written)?;
        let new = serde_json::to_value(&self.status)?;
        let api: Api<TenantCertificate> = Api::namespaced(self.ctx.client.clone(), self.ns);
        if patch_status_diff(&api, &self.obj.name_any(), &old, &new, None)
            .await?
            .is_some()
        {
            self.written = self.status.clone();
            self.resource_version = None;
        }
        Ok(())
    }

    /// Writes status if it changed, then the events.
    async fn finish(mut self) -> Result<(), Error> {
        if self.stale {
            return Ok(());
        }
        self.write_status().await?;
        for (type_, reason, note) in self.events {
            self.ctx.event(self.obj, type_, reason, note).await;
        }
        Ok(())
    }
}

/// Event reasons are `&'static str` in our list; verdict reasons come from a fixed set too.
fn static_reason(reason: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "SecretNotFound",
        "MissingKey",
        "InvalidPem",
        "NoCertificate",
        "LeafNotFirst",
        "ChainBroken",
        "KeyMismatch",
        "CertificateExpired",
        "CertificateNotYetValid",
        "WildcardSubjectAlternativeName",
        "ChainDoesNotMatchCsr",
        "ChainDoesNotCoverCsr",
        "ChainNotNewer",
        "CsrUnreadable",
        "LiveTimeout",
        "CertManagerNotInstalled",
        "IssuerRefNeedsTenant",
        "CertificateRequestDenied",
        "CertificateRequestFailed",
        "InvalidSpec",
        "InvalidRenewBefore",
        "CsrRequired",
        "InvalidCsr",
        "CredentialsNotFound",
        "InvalidTenantConfig",
        "TenantRejected",
        "TenantUnauthorized",
        "TenantNotFound",
        "TenantRateLimited",
        "TenantServerError",
        "TenantUnexpectedStatus",
        "TenantUnreachable",
        "TenantInvalidResponse",
        "TenantTokenFailed",
        "InvalidKey",
        "Unsupported",
    ];
    KNOWN
        .iter()
        .copied()
        .find(|k| *k == reason)
        .unwrap_or("ReconcileFailed")
}

enum StepError {
    Tenant(AicError),
    Invalid(Invalid),
    Kube(Error),
    /// The tenant refused what we sent (a 400) and would refuse it again: its message.
    Rejected(String),
    /// The tenant is not ready for this step yet, as expected: wait quietly.
    NotYet(String),
    /// The resource changed since this reconcile read it: stop and look again.
    Stale,
}

impl From<AicError> for StepError {
    fn from(e: AicError) -> Self {
        StepError::Tenant(e)
    }
}

/// Deleting the resource: act only on ids recorded in status, per `deletionPolicy`; always end
/// by letting the finalizer go. The escape hatch for an unreachable tenant is
/// `deletionPolicy: Retain`.
async fn cleanup(obj: &TenantCertificate, ctx: &Context, ns: &str) -> Result<Action, Error> {
    ctx.forget_tenant_certificate(obj);
    let policy = obj.spec.deletion_policy;
    if policy == DeletionPolicy::Retain {
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let mut run = Run {
        obj,
        ctx,
        ns,
        status: obj.status.clone().unwrap_or_default(),
        events: vec![],
        now,
        started: std::time::Instant::now(),
        list_is_strict: false,
        listed: Arc::default(),
        written: obj.status.clone().unwrap_or_default(),
        resource_version: obj.metadata.resource_version.clone(),
        stale: false,
    };
    if api::is_paused(obj.meta()) {
        run.conclude(Verdict::progressing(
            false,
            "Paused",
            "deletion waits: the resource is paused (no tenant calls)",
        ));
        run.finish().await?;
        return Err(Error::Finalizer(
            "paused: cleanup waits for certrotor.io/paused to be removed".into(),
        ));
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let source = format!("{ns}/{}", obj.spec.tenant.credentials_secret_ref.name);
    let client = match run.tenant_client(&secrets).await? {
        Ok(c) => c,
        // The credentials are gone (a namespace or an Argo CD app torn down): a token this
        // process still holds for them will do.
        Err(invalid) => match ctx.aic.cached_token(&source, &obj.spec.tenant.url).await {
            Some(c) => {
                run.events.push((
                    EventType::Normal,
                    "CleanupWithCachedToken",
                    format!(
                        "{}; cleaning up with the token certrotor still holds for it",
                        invalid.message
                    ),
                ));
                c
            }
            None => return cleanup_without_credentials(run, invalid).await,
        },
    };
    match cleanup_tenant(obj, &client, policy, &mut run).await {
        Ok(true) => {
            run.finish().await?;
            Ok(Action::await_change())
        }
        Ok(false) => {
            run.conclude(Verdict::progressing(
                false,
                "CleaningUp",
                format!("deletionPolicy {policy:?}: waiting for certificates to stop being live"),
            ));
            run.finish().await?;
            Err(Error::CleanupPending(
                "waiting for certificates to stop being live".into(),
            ))
        }
        Err(e) => {
            let wait = run.tenant_failure(e);
            run.finish().await?;
            Err(Error::CleanupBackoff(wait))
        }
    }
}

/// Cleanup with no way to reach the tenant: wait for the credentials up to
/// `--cleanup-timeout` after deletion was asked for, then let the resource go with a Warning that
/// names what is left in the tenant. A namespace being torn down must not hang on its finalizer.
async fn cleanup_without_credentials(mut run: Run<'_>, invalid: Invalid) -> Result<Action, Error> {
    let status = run.obj.status.clone().unwrap_or_default();
    let mut left = plan::known_ids(&status)
        .into_iter()
        .map(|id| format!("certificate {id}"))
        .collect::<Vec<_>>();
    if let Some(csr) = status
        .pending
        .as_ref()
        .filter(|p| p.certificate_id.is_none())
        .and_then(|p| p.csr.as_ref())
    {
        left.push(format!("CSR {}", csr.id));
    }
    if left.is_empty() {
        return Ok(Action::await_change());
    }
    let timeout = run.ctx.options.cleanup_timeout;
    let asked = run
        .obj
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(run.now);
    let waited =
        Duration::from_secs(run.now.as_second().saturating_sub(asked.as_second()).max(0) as u64);
    if waited >= timeout {
        let message = format!(
            "{}; no token is cached for it either. Released after waiting {}s; left in tenant {}: {}. Remove them there by hand if they are not wanted",
            invalid.message,
            waited.as_secs(),
            run.obj.spec.tenant.url,
            left.join(", ")
        );
        run.ctx
            .event(run.obj, EventType::Warning, "CleanupAbandoned", message)
            .await;
        return Ok(Action::await_change());
    }
    let message = format!(
        "{}; cannot clean up the tenant. Waiting up to {}s more for the credentials (then the resource is released, leaving {}); set deletionPolicy: Retain to release it now",
        invalid.message,
        (timeout - waited).as_secs(),
        left.join(", ")
    );
    run.conclude(Verdict::stalled(false, invalid.reason, message));
    run.finish().await?;
    Err(Error::CleanupPending(
        "tenant credentials unavailable".into(),
    ))
}

/// One pass of cleanup, as [`plan::cleanup_actions`] decides; `Ok(true)` when nothing is left.
async fn cleanup_tenant(
    obj: &TenantCertificate,
    client: &AicClient,
    policy: DeletionPolicy,
    run: &mut Run<'_>,
) -> Result<bool, AicError> {
    let status = obj.status.clone().unwrap_or_default();
    if plan::known_ids(&status).is_empty()
        && status
            .pending
            .as_ref()
            .and_then(|p| p.csr.as_ref())
            .is_none()
    {
        return Ok(true);
    }
    let tenant: BTreeMap<String, Certificate> = client
        .list_certificates()
        .await?
        .into_iter()
        .map(|c| (c.id.clone(), c))
        .collect();
    let (actions, more) = plan::cleanup_actions(policy, &status, &tenant);
    let mut done = !more;
    for action in actions {
        match action {
            plan::CleanupAction::Deactivate(id) => {
                client.set_active(&id, false).await?;
                run.events.push((
                    EventType::Normal,
                    "Deactivated",
                    format!("deactivated certificate {id} (deletionPolicy {policy:?})"),
                ));
            }
            plan::CleanupAction::Delete(id) => match client.delete_certificate(&id).await {
                Ok(()) => run.events.push((
                    EventType::Normal,
                    "Deleted",
                    format!("deleted certificate {id}"),
                )),
                // Gone already: nothing left to do for it.
                Err(AicError::NotFound) => {}
                // The tenant's empty-500 window after `live` turns false: later.
                Err(AicError::Server { .. }) => done = false,
                Err(e) => return Err(e),
            },
            // A CSR someone else deleted (or whose DELETE answer was lost) is gone: success.
            // Failing here would hold the finalizer, and the namespace, for ever.
            plan::CleanupAction::DeleteCsr(id) => match client.delete_csr(&id).await {
                Ok(()) | Err(AicError::NotFound) => {}
                Err(e) => return Err(e),
            },
        }
    }
    Ok(done)
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod plan_tests;
