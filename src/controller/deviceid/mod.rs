//! The DeviceIdCredential reconciler: reads the spec, the onboarding and output Secrets, asks
//! [`plan::plan`] for the next step, and performs it in the order that never loses a key or a
//! certificate:
//!
//! 1. the pending key (and CSR) is persisted in `<secretName>-pending`,
//! 2. the attempt is recorded in status (no call if that write fails),
//! 3. the call,
//! 4. the output Secret is written, then the pending Secret deleted, then status and an Event.
//!
//! Calls are serialised per endpoint and onboarding credentials ([`Shared::lock_for`]).

pub mod inputs;
pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};

use super::patch::patch_status_diff;
use super::{Context, Error};
use crate::api::{self, DeviceIdCredential, DeviceIdCredentialStatus, Verdict};
use crate::cie::{CieClient, CieError};
use crate::pki::{self, CsrSubject};
use inputs::Credentials;
use plan::{Credential, Invalid, Observation, Outcome, Step};

/// Steps in one reconcile at most (a refresh, then a token refresh, then the verdict).
const MAX_STEPS: usize = 4;
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "certrotor");

/// State shared by all DeviceIdCredential reconciles.
#[derive(Default)]
pub struct Shared {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    store: OnceLock<Store<DeviceIdCredential>>,
}

impl Shared {
    /// The lock for calls with these credentials: one call at a time per tenant+vendor.
    pub fn lock_for(
        &self,
        endpoint: &str,
        onboarding_fingerprint: &str,
    ) -> Arc<tokio::sync::Mutex<()>> {
        let key = format!(
            "{}|{onboarding_fingerprint}",
            inputs::normalize_endpoint(endpoint)
        );
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(key).or_default().clone()
    }

    /// The controller's reflector store, to compare resources (set once by `controller::run`).
    pub fn set_store(&self, store: Store<DeviceIdCredential>) {
        let _ = self.store.set(store);
    }

    fn others(&self) -> Vec<Arc<DeviceIdCredential>> {
        self.store.get().map(Store::state).unwrap_or_default()
    }
}

pub fn references_secret(d: &DeviceIdCredential, name: &str) -> bool {
    d.spec.onboarding_secret_ref.name == name || d.spec.secret_name == name
}

pub fn pending_secret_name(d: &DeviceIdCredential) -> String {
    format!("{}{}", d.spec.secret_name, plan::PENDING_SUFFIX)
}

pub fn held_secret_name(d: &DeviceIdCredential) -> String {
    format!("{}{}", d.spec.secret_name, plan::HELD_SUFFIX)
}

pub async fn reconcile(obj: Arc<DeviceIdCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<DeviceIdCredential> = Api::namespaced(ctx.client.clone(), &ns);
    // The cached object may predate our last status write; the budget must see every attempt.
    let Some(fresh) = api.get_opt(&obj.name_any()).await? else {
        return Ok(Action::await_change());
    };
    if fresh.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let mut run = Run {
        status: fresh.status.clone().unwrap_or_default(),
        written: fresh.status.clone().unwrap_or_default(),
        resource_version: fresh.metadata.resource_version.clone(),
        obj: &fresh,
        ctx: &ctx,
        ns: &ns,
        events: vec![],
        now: Timestamp::now(),
        refreshed: false,
        output_valid: false,
        onboarding_available: true,
        publish_error: None,
        just_published: false,
    };
    let action = run.reconcile().await?;
    run.finish().await?;
    Ok(action)
}

/// Only Kubernetes API failures land here; back off and try again.
pub fn error_policy(obj: Arc<DeviceIdCredential>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(name = %obj.name_any(), namespace = obj.namespace().unwrap_or_default(), error = %err, "reconcile error");
    Action::requeue(Duration::from_secs(5 + fastrand::u64(0..5)))
}

struct Run<'a> {
    obj: &'a DeviceIdCredential,
    ctx: &'a Context,
    ns: &'a str,
    status: DeviceIdCredentialStatus,
    /// What the API server holds, to write only the difference.
    written: DeviceIdCredentialStatus,
    /// The resourceVersion that `written` was read or written at.
    resource_version: Option<String>,
    events: Vec<(EventType, &'static str, String)>,
    now: Timestamp,
    /// A certificate was received in this reconcile.
    refreshed: bool,
    /// The output Secret holds a valid certificate (read at the start).
    output_valid: bool,
    /// The onboarding Secret was read (else a stand-in is used; see `reconcile`).
    onboarding_available: bool,
    /// Why the received certificate could not be published in this reconcile.
    publish_error: Option<String>,
    /// A certificate received earlier was published at the start of this reconcile.
    just_published: bool,
}

impl Run<'_> {
    async fn reconcile(&mut self) -> Result<Action, Error> {
        let spec = &self.obj.spec;
        if api::is_paused(self.obj.meta()) {
            let ready = api::is_true(&self.status.conditions, api::READY);
            self.conclude(Verdict::paused(ready, "vendor"));
            return Ok(Action::await_change());
        }
        if let Err(invalid) = plan::validate_spec(spec) {
            return Ok(self.stall(invalid));
        }
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), self.ns);
        let output_secret = secrets.get_opt(&spec.secret_name).await?;
        if let Some(invalid) = inputs::output_conflict(
            &spec.secret_name,
            output_secret.as_ref(),
            self.obj.metadata.uid.as_deref().unwrap_or_default(),
        ) {
            return Ok(self.stall(invalid));
        }
        let mut output = inputs::read_output(output_secret.as_ref());
        // The output Secret deleted or edited (a person, a restore from backup, "delete it to
        // reissue"): put back the credential in use from certrotor's copy, with no vendor call.
        if let Some(restored) = self
            .restore_output(&secrets, output.as_ref(), output_secret.as_ref())
            .await?
        {
            output = Some(restored);
        }
        self.output_valid = output
            .as_ref()
            .is_some_and(|o| inputs::is_valid(&o.info, self.now));
        let onboarding_name = &spec.onboarding_secret_ref.name;
        let onboarding_secret = secrets.get_opt(onboarding_name).await?;
        let onboarding = match inputs::read_onboarding(onboarding_name, onboarding_secret.as_ref())
        {
            Ok(o) => {
                self.status.onboarding_secret_missing = None;
                o
            }
            // Needed only while no valid certificate of ours is published: with one, renewals
            // go on (a Warning, not a stop). The stand-in keeps the recorded onboarding
            // fingerprint, so calls stay serialised and shared credentials stay detected.
            Err(invalid) => match (
                output.as_ref().filter(|_| self.output_valid),
                self.status.onboarding_fingerprint.clone(),
            ) {
                (Some(published), Some(recorded)) => {
                    if self.status.onboarding_secret_missing.is_none() {
                        self.events.push((
                            EventType::Warning,
                            "OnboardingSecretMissing",
                            format!(
                                "{}; renewals go on with the published certificate while it is valid",
                                invalid.message
                            ),
                        ));
                    }
                    self.status.onboarding_secret_missing = Some(invalid.message.clone());
                    self.onboarding_available = false;
                    let mut stand_in = published.clone();
                    stand_in.info.fingerprint = recorded;
                    stand_in
                }
                _ => return Ok(self.stall(invalid)),
            },
        };
        self.status.onboarding_fingerprint = Some(onboarding.info.fingerprint.clone());
        let others = self.ctx.deviceid.others();
        if let Some((older, what)) = inputs::older_sharing(
            self.obj,
            &onboarding.info.fingerprint,
            others.iter().map(|o| &**o),
        ) {
            return Ok(self.stall(Invalid::new(
                what.reason(),
                format!("{older} already uses {}", what.describe()),
            )));
        }
        if let Some(action) = self
            .publish_received(&secrets, &onboarding, output.as_ref())
            .await?
        {
            return Ok(action);
        }
        if std::mem::take(&mut self.just_published) {
            output = inputs::read_output(secrets.get_opt(&spec.secret_name).await?.as_ref());
            self.output_valid = output
                .as_ref()
                .is_some_and(|o| inputs::is_valid(&o.info, self.now));
        }
        for step in 0..MAX_STEPS {
            if step > 0 {
                self.now = Timestamp::now();
                output = inputs::read_output(secrets.get_opt(&spec.secret_name).await?.as_ref());
            }
            if plan::describe_published(&mut self.status, spec, output.as_ref().map(|o| &o.info)) {
                self.events.push((
                    EventType::Normal,
                    "Adopted",
                    "adopted the certificate found in the output Secret (written before a restart)"
                        .into(),
                ));
            }
            let obs = Observation {
                spec,
                status: &self.status,
                generation: self.obj.meta().generation,
                renew_annotation: api::annotation(self.obj.meta(), api::RENEW_ANNOTATION),
                onboarding: &onboarding.info,
                onboarding_available: self.onboarding_available,
                published: output.as_ref().map(|o| &o.info),
                now: self.now,
            };
            let planned = plan::plan(&obs);
            // Unset while a call is allowed: "now" would change status on every reconcile.
            self.status.next_attempt_time = (planned.next_attempt_time > self.now)
                .then(|| planned.next_attempt_time.to_string());
            match planned.step {
                Step::Wait {
                    ready,
                    reconciling,
                    stalled,
                    reason,
                    message,
                    recheck,
                } => {
                    let reason = if ready && self.refreshed && reason == "Valid" {
                        "Refreshed"
                    } else {
                        reason
                    };
                    self.conclude(Verdict {
                        ready,
                        reconciling,
                        stalled,
                        reason: reason.into(),
                        message,
                    });
                    let after = recheck
                        // A recheck time already past becomes the shortest requeue.
                        .map(|t| {
                            Duration::try_from(t.duration_since(Timestamp::now()))
                                .unwrap_or_default()
                        })
                        .unwrap_or(plan::RESYNC)
                        .clamp(Duration::from_millis(200), plan::RESYNC);
                    return Ok(Action::requeue(after));
                }
                Step::RefreshCert { credential, reason } => {
                    let creds = match (credential, &output) {
                        (Credential::Published, Some(o)) => o.clone(),
                        _ => onboarding.clone(),
                    };
                    if let Err(invalid) = self
                        .refresh_cert(
                            &secrets,
                            &onboarding,
                            &creds,
                            credential,
                            reason,
                            output.as_ref(),
                        )
                        .await?
                    {
                        return Ok(self.stall(invalid));
                    }
                    if self.publish_error.is_some() {
                        return Ok(self.publish_wait());
                    }
                }
                Step::RefreshToken => {
                    let Some(creds) = output.clone() else { break };
                    if let Err(invalid) = self.refresh_token(&secrets, &onboarding, &creds).await? {
                        return Ok(self.stall(invalid));
                    }
                }
            }
        }
        let ready = output.is_some_and(|o| inputs::is_valid(&o.info, Timestamp::now()));
        self.conclude(Verdict::progressing(
            ready,
            "Progressing",
            "more steps to go",
        ));
        Ok(Action::requeue(Duration::from_secs(1)))
    }

    fn observation<'b>(
        &'b self,
        onboarding: &'b Credentials,
        published: Option<&'b Credentials>,
    ) -> Observation<'b> {
        Observation {
            spec: &self.obj.spec,
            status: &self.status,
            generation: self.obj.meta().generation,
            renew_annotation: api::annotation(self.obj.meta(), api::RENEW_ANNOTATION),
            onboarding: &onboarding.info,
            onboarding_available: self.onboarding_available,
            published: published.map(|o| &o.info),
            now: self.now,
        }
    }

    async fn refresh_cert(
        &mut self,
        secrets: &Api<Secret>,
        onboarding: &Credentials,
        creds: &Credentials,
        credential: Credential,
        reason: &'static str,
        published: Option<&Credentials>,
    ) -> Result<Result<(), Invalid>, Error> {
        let spec = &self.obj.spec;
        let client = match self.client(creds) {
            Ok(c) => c,
            Err(invalid) => return Ok(Err(invalid)),
        };
        let lock = self
            .ctx
            .deviceid
            .lock_for(&spec.endpoint, &onboarding.info.fingerprint);
        let _guard = lock.lock().await;
        self.now = Timestamp::now();

        let alg = match plan::key_algorithm(spec) {
            Ok(a) => a,
            Err(invalid) => return Ok(Err(invalid)),
        };
        let pending_name = pending_secret_name(self.obj);
        let existing = secrets.get_opt(&pending_name).await?;
        let key_pem = match inputs::reusable_pending_key(
            existing.as_ref(),
            alg,
            published.map(|p| &p.info),
        ) {
            Some(k) => k,
            // RSA key generation takes long enough to stall other reconciles on this thread.
            None => match tokio::task::spawn_blocking(move || pki::generate_key(alg)).await {
                Ok(Ok(k)) => k,
                Ok(Err(e)) => return Ok(Err(Invalid::new(e.reason(), e.to_string()))),
                Err(e) => {
                    return Ok(Err(Invalid::new(
                        "Unsupported",
                        format!("key generation failed: {e}"),
                    )));
                }
            },
        };
        let csr = match pki::generate_csr(&key_pem, &csr_subject(spec)) {
            Ok(c) => c,
            Err(e) => return Ok(Err(Invalid::new("InvalidSubject", e.to_string()))),
        };
        self.write_pending(secrets, &pending_name, &key_pem, &csr, alg)
            .await?;

        let attempted = self.now;
        let previous = plan::record_cert_attempt(&mut self.status, attempted);
        plan::consume_renew_request(
            &mut self.status,
            reason,
            api::annotation(self.obj.meta(), api::RENEW_ANNOTATION),
        );
        let recorded = Instant::now();
        // One writer per ledger: the attempt is recorded only if nobody wrote since we read
        // (a frozen old leader, a second cluster); else no call.
        self.record_attempt().await?;
        if recorded.elapsed() > crate::cie::budget::MAX_RECORD_TO_SEND {
            // The budget's margin no longer covers the delay: this attempt is spent unsent.
            plan::after_cert_call(&mut self.status, &Outcome::NotSent, previous, self.now, 0.0);
            return Ok(Ok(()));
        }
        tracing::info!(name = %self.obj.name_any(), reason, credential = ?credential, "cert:refresh");
        let started = Instant::now();
        let result = client.refresh_certificate(&csr, &spec.cert_name).await;
        self.ctx
            .cie_call("cert_refresh", &result, CieError::reason, started);
        let after = Timestamp::now();
        let outcome = match result {
            Ok(refresh) => match pki::check_key_matches(&refresh.cert, &key_pem)
                .and_then(|()| pki::parse_chain(&refresh.cert))
            {
                Ok(chain) => {
                    let issued = &chain[0];
                    // Nothing received is thrown away: the certificate (public) is recorded
                    // before the output Secret is written, so a failing write loses nothing.
                    self.status.received_certificate = Some(refresh.cert.clone());
                    self.write_status().await?;
                    if let Err(e) = self
                        .write_output(secrets, &refresh.cert, &key_pem, &creds.api_key)
                        .await
                    {
                        self.publish_failed(&e);
                    } else {
                        self.published_received(secrets, &pending_name).await?;
                    }
                    plan::describe_published(&mut self.status, spec, Some(issued));
                    let deleted = refresh.deleted_cert_name.clone();
                    // The two-certificate window: the first certificate the vendor evicts after
                    // onboarding is the onboarding one.
                    if !deleted.is_empty() && self.status.onboarding_evicted.is_none() {
                        self.status.onboarding_evicted = Some(onboarding.info.fingerprint.clone());
                    }
                    self.status.deleted_cert_name = Some(deleted.clone());
                    self.status.cert_name = Some(spec.cert_name.clone());
                    if reason == "RenewRequested" {
                        self.status.last_renew_request =
                            api::annotation(self.obj.meta(), api::RENEW_ANNOTATION)
                                .map(str::to_string);
                    }
                    self.refreshed = true;
                    let evicted = if deleted.is_empty() {
                        "the vendor evicted nothing".to_string()
                    } else {
                        format!("the vendor evicted {deleted}")
                    };
                    self.events.push((
                        EventType::Normal,
                        "Refreshed",
                        format!(
                            "cert:refresh ({reason}) issued serial {} valid until {}; {evicted}",
                            issued.serial_number, issued.not_after
                        ),
                    ));
                    Outcome::Received
                }
                Err(e) => {
                    // A certificate was issued (the oldest may be evicted), but we cannot use it.
                    self.events.push((
                        EventType::Warning,
                        "InvalidResponse",
                        format!("cert:refresh answered with a certificate that does not fit the pending key: {e}"),
                    ));
                    Outcome::Unknown
                }
            },
            Err(e) => {
                if e.certainly_not_sent() {
                    plan::uncount_attempt(&mut self.status.attempts, attempted);
                }
                let outcome = self.outcome_of(&e, onboarding, published, credential);
                if matches!(outcome, Outcome::Unknown | Outcome::Rejected(_))
                    && reason == "RenewRequested"
                {
                    // The request may have been carried out (or cannot be): once per value.
                    self.status.last_renew_request =
                        api::annotation(self.obj.meta(), api::RENEW_ANNOTATION).map(str::to_string);
                }
                self.events.push((
                    EventType::Warning,
                    e.reason(),
                    format!("cert:refresh ({reason}) failed: {e}"),
                ));
                outcome
            }
        };
        plan::after_cert_call(&mut self.status, &outcome, previous, after, fastrand::f64());
        self.write_status().await?;
        Ok(Ok(()))
    }

    /// The credential in use, from certrotor's copy, when the output Secret no longer holds it
    /// (deleted, or edited so that it holds something else). Only a copy of the certificate
    /// status says is published, and still valid, is put back.
    async fn restore_output(
        &mut self,
        secrets: &Api<Secret>,
        output: Option<&Credentials>,
        output_secret: Option<&Secret>,
    ) -> Result<Option<Credentials>, Error> {
        let Some(published) = self.status.published_fingerprint.clone() else {
            return Ok(None);
        };
        // As certrotor left it: nothing to compare (and no read of the copy).
        let untouched = output_secret.is_some_and(|s| {
            s.metadata.resource_version.is_some()
                && s.metadata.resource_version == self.status.output_resource_version
        });
        if untouched {
            return Ok(None);
        }
        let held = secrets.get_opt(&held_secret_name(self.obj)).await?;
        let Some(copy) = inputs::read_output(held.as_ref()) else {
            return Ok(None);
        };
        if copy.info.fingerprint != published || !inputs::is_valid(&copy.info, self.now) {
            return Ok(None);
        }
        let intact = output.is_some_and(|o| {
            o.info.fingerprint == copy.info.fingerprint && o.api_key == copy.api_key
        });
        if intact {
            // Changed in a way that does not matter (labels, annotations): remember it as is.
            self.status.output_resource_version =
                output_secret.and_then(|s| s.metadata.resource_version.clone());
            return Ok(None);
        }
        let what = if output_secret.is_some() {
            "was changed"
        } else {
            "was deleted"
        };
        self.write_output_only(secrets, &copy.cert_pem, &copy.key_pem, &copy.api_key)
            .await?;
        self.events.push((
            EventType::Normal,
            "Restored",
            format!(
                "Secret {} {what}; restored the credential in use (serial {}) from certrotor's copy, with no vendor call",
                self.obj.spec.secret_name, copy.info.serial_number
            ),
        ));
        Ok(Some(copy))
    }

    /// The received certificate is in the output Secret: forget it, and the pending key.
    async fn published_received(
        &mut self,
        secrets: &Api<Secret>,
        pending_name: &str,
    ) -> Result<(), Error> {
        self.status.received_certificate = None;
        self.status.publish_failures = None;
        self.publish_error = None;
        match secrets.delete(pending_name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn publish_failed(&mut self, e: &Error) {
        let n = self.status.publish_failures.unwrap_or(0).saturating_add(1);
        self.status.publish_failures = Some(n);
        let message = format!(
            "the certificate received from cert:refresh could not be written to Secret {} ({e}); it is kept in status.receivedCertificate and written again with backoff, with no further vendor call",
            self.obj.spec.secret_name
        );
        self.events
            .push((EventType::Warning, "PublishFailed", message.clone()));
        self.publish_error = Some(message);
    }

    /// A certificate received earlier but not yet in the output Secret: published now, from
    /// status and the pending key, with no vendor call. `Some(action)` ends the reconcile (it is
    /// still not published).
    async fn publish_received(
        &mut self,
        secrets: &Api<Secret>,
        onboarding: &Credentials,
        output: Option<&Credentials>,
    ) -> Result<Option<Action>, Error> {
        let Some(cert) = self.status.received_certificate.clone() else {
            return Ok(None);
        };
        let pending_name = pending_secret_name(self.obj);
        let key = secrets
            .get_opt(&pending_name)
            .await?
            .as_ref()
            .and_then(|s| inputs::secret_data(s).get(inputs::TLS_KEY).cloned());
        let usable = match (&key, pki::parse_chain(&cert)) {
            (Some(key), Ok(chain)) => {
                pki::check_key_matches(&cert, key).is_ok() && inputs::is_valid(&chain[0], self.now)
            }
            _ => false,
        };
        if !usable {
            // Expired meanwhile, or its key is gone: nothing left to publish.
            self.status.received_certificate = None;
            self.status.publish_failures = None;
            return Ok(None);
        }
        let key = key.unwrap_or_default();
        let api_key = output.map_or(&onboarding.api_key, |o| &o.api_key).clone();
        match self.write_output(secrets, &cert, &key, &api_key).await {
            Ok(()) => {
                self.published_received(secrets, &pending_name).await?;
                self.just_published = true;
                self.events.push((
                    EventType::Normal,
                    "Published",
                    format!(
                        "the certificate received earlier is now in Secret {}",
                        self.obj.spec.secret_name
                    ),
                ));
                Ok(None)
            }
            Err(e) => {
                self.publish_failed(&e);
                Ok(Some(self.publish_wait()))
            }
        }
    }

    /// Reports a failed publication and waits: 5 s doubling per failure, up to 5 minutes.
    fn publish_wait(&mut self) -> Action {
        let n = self.status.publish_failures.unwrap_or(1).clamp(1, 30) as u32;
        let wait = Duration::from_secs(5)
            .saturating_mul(1 << (n - 1).min(6))
            .min(Duration::from_secs(300));
        let message = self.publish_error.clone().unwrap_or_default();
        self.conclude(Verdict::progressing(
            self.output_valid,
            "PublishFailed",
            message,
        ));
        Action::requeue(wait)
    }

    fn outcome_of(
        &self,
        e: &CieError,
        onboarding: &Credentials,
        published: Option<&Credentials>,
        credential: Credential,
    ) -> Outcome {
        match e {
            CieError::RateLimited { retry_after, .. } => Outcome::RateLimited(*retry_after),
            CieError::Conflict { .. } => Outcome::Conflict,
            CieError::Connect(_) => Outcome::NotSent,
            e if e.outcome_may_have_happened() => Outcome::Unknown,
            e => {
                let obs = self.observation(onboarding, published);
                let advice: String = match e {
                    CieError::Unauthorized { .. } => {
                        "; if the certificate was evicted, re-onboard in the Cloud Identity Engine console and put the new bundle in the onboarding Secret: certrotor uses it at the next allowed attempt".into()
                    }
                    CieError::TlsVerification(_) => {
                        "; fix spec.caBundle (or the endpoint): it is used again as soon as the spec changes".into()
                    }
                    CieError::HandshakeRefused(_) => {
                        "; the certificate used may have been evicted or not be this tenant's: check the onboarding and output Secrets, re-onboard in the Cloud Identity Engine console if needed".into()
                    }
                    _ => "; fix the spec or the endpoint, or set the renew annotation to try again"
                        .into(),
                };
                Outcome::Rejected(plan::rejection(
                    &obs,
                    credential,
                    e.reason(),
                    format!("{e}{advice}"),
                ))
            }
        }
    }

    async fn refresh_token(
        &mut self,
        secrets: &Api<Secret>,
        onboarding: &Credentials,
        creds: &Credentials,
    ) -> Result<Result<(), Invalid>, Error> {
        let spec = &self.obj.spec;
        let client = match self.client(creds) {
            Ok(c) => c,
            Err(invalid) => return Ok(Err(invalid)),
        };
        let lock = self
            .ctx
            .deviceid
            .lock_for(&spec.endpoint, &onboarding.info.fingerprint);
        let _guard = lock.lock().await;
        self.now = Timestamp::now();
        let attempted = self.now;
        let previous = plan::record_token_attempt(&mut self.status, attempted);
        self.record_attempt().await?;
        let started = Instant::now();
        let result = client.refresh_token().await;
        self.ctx
            .cie_call("token_refresh", &result, CieError::reason, started);
        let after = Timestamp::now();
        let outcome = match result {
            Ok(token) => {
                // The token goes only into the output Secret.
                self.write_output(secrets, &creds.cert_pem, &creds.key_pem, &token.token)
                    .await?;
                self.status.token_expiry = Some(token.expiry.clone());
                self.events.push((
                    EventType::Normal,
                    "TokenRefreshed",
                    format!(
                        "token:refresh: new apiKey in Secret {}, expiry {}",
                        spec.secret_name, token.expiry
                    ),
                ));
                Outcome::Received
            }
            Err(e) => {
                if e.certainly_not_sent() {
                    plan::uncount_attempt(&mut self.status.token_attempts, attempted);
                }
                self.events.push((
                    EventType::Warning,
                    e.reason(),
                    format!("token:refresh failed: {e}"),
                ));
                match e {
                    CieError::RateLimited { retry_after, .. } => Outcome::RateLimited(retry_after),
                    CieError::Conflict { .. } => Outcome::Conflict,
                    e if e.outcome_may_have_happened() => Outcome::Unknown,
                    _ => Outcome::NotSent,
                }
            }
        };
        let second_unknown = outcome == Outcome::Unknown && previous.is_some();
        plan::after_token_call(&mut self.status, &outcome, previous, after);
        if second_unknown {
            // The apiKey in use may be evicted now: no further token call until a person looks.
            let rejection = plan::rejection(
                &self.observation(onboarding, Some(creds)),
                Credential::Published,
                "TokenOutcomeUnknown",
                plan::token_outcome_unknown_message(&spec.secret_name),
            );
            self.status.token_rejected = Some(rejection);
        }
        self.write_status().await?;
        Ok(Ok(()))
    }

    fn client(&self, creds: &Credentials) -> Result<CieClient, Invalid> {
        let spec = &self.obj.spec;
        CieClient::new(
            &spec.endpoint,
            &creds.cert_pem,
            &creds.key_pem,
            &creds.api_key,
            spec.ca_bundle.as_deref(),
        )
        .map(|c| {
            c.with_refresh_method(match spec.refresh_method {
                api::RefreshMethod::GET => crate::cie::RefreshMethod::Get,
                api::RefreshMethod::POST => crate::cie::RefreshMethod::Post,
            })
        })
        .map_err(|e| Invalid::new("InvalidConfig", e.to_string()))
    }

    fn managed_meta(&self, name: &str, owned: bool) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.ns.to_string()),
            labels: Some([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into()),
            owner_references: owned
                .then(|| self.obj.controller_owner_ref(&()).into_iter().collect()),
            ..Default::default()
        }
    }

    async fn write_pending(
        &self,
        secrets: &Api<Secret>,
        name: &str,
        key_pem: &str,
        csr: &str,
        alg: pki::KeyAlgorithm,
    ) -> Result<(), Error> {
        let secret = Secret {
            metadata: self.managed_meta(name, true),
            type_: Some("Opaque".into()),
            data: Some(bytes([
                (inputs::TLS_KEY, key_pem.to_string()),
                (inputs::TLS_CSR, csr.to_string()),
                (inputs::KEY_ALGORITHM, inputs::algorithm_name(alg)),
            ])),
            ..Default::default()
        };
        secrets
            .patch(
                name,
                &PatchParams::apply(api::MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
        Ok(())
    }

    /// The output Secret, with no ownerReference: deleting the resource must not cut off the
    /// Device-ID sender that mounts it. certrotor's own copy (`<secretName>-held`, owned by the
    /// resource) is written first: the output can always be restored from it.
    async fn write_output(
        &mut self,
        secrets: &Api<Secret>,
        cert_pem: &str,
        key_pem: &str,
        api_key: &str,
    ) -> Result<(), Error> {
        let held = held_secret_name(self.obj);
        self.apply_credential(secrets, &held, true, "Opaque", [cert_pem, key_pem, api_key])
            .await
            .map(drop)?;
        self.write_output_only(secrets, cert_pem, key_pem, api_key)
            .await
    }

    /// A Secret holding a credential (`tls.crt`, `tls.key`, `apiKey`), written by server-side
    /// apply.
    async fn apply_credential(
        &self,
        secrets: &Api<Secret>,
        name: &str,
        owned: bool,
        type_: &str,
        [cert_pem, key_pem, api_key]: [&str; 3],
    ) -> Result<Option<String>, Error> {
        let secret = Secret {
            metadata: self.managed_meta(name, owned),
            type_: Some(type_.into()),
            data: Some(bytes([
                (inputs::TLS_CRT, cert_pem.to_string()),
                (inputs::TLS_KEY, key_pem.to_string()),
                (inputs::API_KEY, api_key.to_string()),
            ])),
            ..Default::default()
        };
        let written = secrets
            .patch(
                name,
                &PatchParams::apply(api::MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
        Ok(written.metadata.resource_version)
    }

    async fn write_output_only(
        &mut self,
        secrets: &Api<Secret>,
        cert_pem: &str,
        key_pem: &str,
        api_key: &str,
    ) -> Result<(), Error> {
        let name = &self.obj.spec.secret_name;
        self.status.output_resource_version = self
            .apply_credential(
                secrets,
                name,
                false,
                "kubernetes.io/tls",
                [cert_pem, key_pem, api_key],
            )
            .await?;
        Ok(())
    }

    fn stall(&mut self, invalid: Invalid) -> Action {
        // Ready=False whatever is published: a person must act (see `conclude`).
        self.conclude(Verdict::stalled(
            self.output_valid,
            invalid.reason,
            invalid.message,
        ));
        // Fixing the input changes the resource or a watched Secret, which reconciles at once.
        Action::requeue(Duration::from_secs(600))
    }

    fn conclude(&mut self, mut verdict: Verdict) {
        // The kstatus contract: a state that needs a person is Stalled with Ready=False, even
        // while a valid certificate is still published (the message says so).
        if verdict.stalled {
            verdict.ready = false;
        }
        let previous_reason =
            api::condition(&self.status.conditions, api::READY).map(|c| c.reason.clone());
        let changed = previous_reason.as_deref() != Some(verdict.reason.as_str());
        if verdict.stalled && changed {
            self.events.push((
                EventType::Warning,
                stall_reason(&verdict.reason),
                verdict.message.clone(),
            ));
        } else if verdict.ready && changed && !api::is_true(&self.status.conditions, api::READY) {
            self.events
                .push((EventType::Normal, "Ready", verdict.message.clone()));
        }
        self.status.observed_generation = self.obj.meta().generation;
        api::apply_verdict(
            &mut self.status.conditions,
            &verdict,
            self.obj.meta().generation,
            self.now,
        );
    }

    /// Writes the status difference now (right after a call: its result must land whatever
    /// else changed meanwhile).
    async fn write_status(&mut self) -> Result<(), Error> {
        self.write(false).await
    }

    /// Records an attempt before its call, conditional on the resourceVersion this reconcile
    /// read or last wrote: a 409 means another writer moved the ledger, and the call is not
    /// made (the error ends the reconcile; the next one reads the ledger afresh).
    async fn record_attempt(&mut self) -> Result<(), Error> {
        self.write(true).await
    }

    async fn write(&mut self, conditional: bool) -> Result<(), Error> {
        let old = serde_json::to_value(&self.written)?;
        let new = serde_json::to_value(&self.status)?;
        if old == new {
            return Ok(());
        }
        let api: Api<DeviceIdCredential> = Api::namespaced(self.ctx.client.clone(), self.ns);
        let precondition = self.resource_version.as_deref().filter(|_| conditional);
        if let Some(written) =
            patch_status_diff(&api, &self.obj.name_any(), &old, &new, precondition).await?
        {
            self.written = self.status.clone();
            self.resource_version = written.metadata.resource_version;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<(), Error> {
        self.write_status().await?;
        for (type_, reason, note) in std::mem::take(&mut self.events) {
            self.ctx.event(self.obj, type_, reason, note).await;
        }
        Ok(())
    }
}

fn bytes<const N: usize>(pairs: [(&str, String); N]) -> BTreeMap<String, ByteString> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect()
}

fn csr_subject(spec: &api::DeviceIdCredentialSpec) -> CsrSubject {
    let s = &spec.subject;
    CsrSubject {
        common_name: s
            .common_name
            .clone()
            .or_else(|| Some(spec.cert_name.clone())),
        organization: s.organization.clone(),
        organizational_unit: s.organizational_unit.clone(),
        country: s.country.clone(),
        ..Default::default()
    }
}

/// Event reasons for stalls come from this fixed set.
fn stall_reason(reason: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "OnboardingSecretNotFound",
        "MissingKey",
        "InvalidPem",
        "NoCertificate",
        "KeyMismatch",
        "InvalidKey",
        "Unsupported",
        "InvalidPrivateKey",
        "InvalidRenewBefore",
        "InvalidSpec",
        "InvalidSubject",
        "InvalidConfig",
        "SharedOnboardingCredentials",
        "SharedCertName",
        "SharedOutputSecret",
        "OnboardingEvicted",
        "OnboardingExpired",
        "Unauthorized",
        "BadRequest",
        "UnexpectedStatus",
        "TlsVerificationFailed",
        "HandshakeRefused",
    ];
    KNOWN
        .iter()
        .copied()
        .find(|k| *k == reason)
        .unwrap_or("Stalled")
}
