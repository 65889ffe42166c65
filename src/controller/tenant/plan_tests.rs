//! Table tests of the TenantCertificate decision.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use jiff::Timestamp;

use super::plan::*;
use crate::aic::Certificate;
use crate::api::*;
use crate::pki::CertInfo;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn spec(key_source: KeySource) -> TenantCertificateSpec {
    TenantCertificateSpec {
        tenant: TenantSpec {
            url: "https://t.example.com".into(),
            credentials_secret_ref: SecretReference {
                name: "creds".into(),
            },
            ca_bundle: None,
        },
        key_source,
        secret_ref: SecretReference { name: "tls".into() },
        csr: (key_source == KeySource::Tenant).then(|| CsrSpec {
            common_name: "login.example.com".into(),
            subject_alternative_names: vec!["login.example.com".into()],
            ..Default::default()
        }),
        active: true,
        renew_before: None,
        deletion_policy: DeletionPolicy::Retain,
        revision_history_limit: None,
        issuer_ref: None,
        duration: None,
    }
}

fn leaf(fp: &str) -> CertInfo {
    CertInfo {
        subject: "CN=login.example.com".into(),
        issuer: "CN=CA".into(),
        subject_alternative_names: vec!["login.example.com".into()],
        not_before: ts("2026-11-01T00:00:00Z"),
        not_after: ts("2027-01-30T00:00:00Z"),
        serial_number: "01".into(),
        fingerprint: fp.into(),
        public_key_der: spki(fp),
        is_ca: false,
    }
}

/// A real SubjectPublicKeyInfo per name (the planner compares keys as keys), made once.
fn spki(name: &str) -> Vec<u8> {
    thread_local! {
        static KEYS: std::cell::RefCell<BTreeMap<String, Vec<u8>>> = Default::default();
    }
    KEYS.with(|keys| {
        keys.borrow_mut()
            .entry(name.to_string())
            .or_insert_with(|| {
                let key = crate::pki::generate_key(crate::pki::KeyAlgorithm::EcdsaP256).unwrap();
                crate::pki::private_key_public_der(&key).unwrap()
            })
            .clone()
    })
}

/// What the tenant's CSR asks for, with the key named `key`.
fn csr_info(key: &str) -> Result<crate::pki::CsrInfo, String> {
    Ok(crate::pki::CsrInfo {
        subject: "CN=login.example.com,O=Acme".into(),
        subject_alternative_names: vec!["login.example.com".into()],
        public_key_der: spki(key),
    })
}

fn source(fp: &str) -> Source {
    Source::Present(Box::new(SourceCert {
        chain_pem: "chain".into(),
        key_pem: Some("key".into()),
        leaf: leaf(fp),
    }))
}

fn remote(id: &str, active: bool, live: bool) -> (String, Certificate) {
    (
        id.to_string(),
        Certificate {
            id: id.into(),
            active,
            live,
            ..Default::default()
        },
    )
}

struct Case {
    spec: TenantCertificateSpec,
    status: TenantCertificateStatus,
    source: Source,
    tenant: BTreeMap<String, Certificate>,
    renew: Option<&'static str>,
    csr: Option<Result<crate::pki::CsrInfo, String>>,
    now: Timestamp,
}

impl Case {
    fn local(fp: &str) -> Self {
        Case {
            spec: spec(KeySource::Local),
            status: Default::default(),
            source: source(fp),
            tenant: BTreeMap::new(),
            renew: None,
            csr: None,
            now: ts("2026-11-23T10:00:00Z"),
        }
    }
    fn plan(&self) -> Result<Plan, Invalid> {
        plan(&Observation {
            spec: &self.spec,
            status: &self.status,
            renew_request: self.renew,
            source: &self.source,
            pending_csr: self.csr.as_ref(),
            tenant: &self.tenant,
            now: self.now,
            poll: PollPolicy::default(),
            waiting_on_tenant: 1,
            live_delay: None,
            signing: Signing::NotAsked,
        })
    }
    fn step(&self) -> Step {
        self.plan().unwrap().step
    }
}

fn installed(id: &str, fp: &str) -> TenantCertificateStatus {
    TenantCertificateStatus {
        certificate_id: Some(id.into()),
        fingerprint: Some(fp.into()),
        ..Default::default()
    }
}

fn pending(id: &str, fp: &str) -> PendingCertificate {
    PendingCertificate {
        certificate_id: Some(id.into()),
        fingerprint: Some(fp.into()),
        csr: None,
        reason: "SecretChanged".into(),
        since: "2026-11-23T09:59:50Z".into(),
        issued_for: None,
    }
}

#[test]
fn local_first_upload() {
    assert_eq!(
        Case::local("fp1").step(),
        Step::Upload { reason: "Initial" }
    );
}

#[test]
fn local_settled_when_live_and_unchanged() {
    let mut c = Case::local("fp1");
    c.status = installed("ccrt-1", "fp1");
    c.tenant = [remote("ccrt-1", true, true)].into();
    assert!(matches!(c.step(), Step::Settled { reason: "Live", .. }));
}

#[test]
fn secret_change_starts_a_rotation_while_the_old_one_stays_live() {
    let mut c = Case::local("fp2");
    c.status = installed("ccrt-1", "fp1");
    c.tenant = [remote("ccrt-1", true, true)].into();
    assert_eq!(
        c.step(),
        Step::Upload {
            reason: "SecretChanged"
        }
    );
}

#[test]
fn pending_is_activated_then_waited_for_then_promoted() {
    let mut c = Case::local("fp2");
    c.status = installed("ccrt-1", "fp1");
    c.status.pending = Some(pending("ccrt-2", "fp2"));
    c.tenant = [remote("ccrt-1", true, true), remote("ccrt-2", false, false)].into();
    assert_eq!(
        c.step(),
        Step::SetActive {
            id: "ccrt-2".into(),
            active: true
        }
    );

    c.tenant = [remote("ccrt-1", true, true), remote("ccrt-2", true, false)].into();
    let step = c.step();
    assert!(
        matches!(
            step,
            Step::Wait {
                reason: "WaitingForLive",
                ..
            }
        ),
        "{step:?}"
    );

    // Live: promoted, and only now is the old one deactivated.
    c.tenant = [remote("ccrt-1", true, true), remote("ccrt-2", true, true)].into();
    let plan = c.plan().unwrap();
    assert_eq!(plan.status.certificate_id.as_deref(), Some("ccrt-2"));
    assert_eq!(plan.status.previous_certificate_ids, ["ccrt-1"]);
    assert!(plan.status.pending.is_none());
    assert_eq!(
        plan.step,
        Step::SetActive {
            id: "ccrt-1".into(),
            active: false
        }
    );
}

#[test]
fn old_certificates_are_deleted_beyond_history_only_when_not_live() {
    let mut c = Case::local("fp3");
    c.status = installed("ccrt-3", "fp3");
    c.status.previous_certificate_ids = vec!["ccrt-2".into(), "ccrt-1".into()];
    c.tenant = [
        remote("ccrt-3", true, true),
        remote("ccrt-2", false, false),
        remote("ccrt-1", false, true),
    ]
    .into();
    let step = c.step();
    assert!(
        matches!(
            step,
            Step::Wait {
                reason: "WaitingToDeleteOld",
                ..
            }
        ),
        "{step:?}"
    );
    c.tenant
        .insert("ccrt-1".into(), remote("ccrt-1", false, false).1);
    assert_eq!(
        c.step(),
        Step::Delete {
            id: "ccrt-1".into()
        }
    );
    c.spec.revision_history_limit = Some(0);
    assert_eq!(
        c.step(),
        Step::Delete {
            id: "ccrt-2".into()
        }
    );
}

#[test]
fn vanished_ids_are_forgotten() {
    let mut c = Case::local("fp1");
    c.status = installed("ccrt-1", "fp1");
    c.status.previous_certificate_ids = vec!["ccrt-0".into()];
    c.tenant = BTreeMap::new();
    let plan = c.plan().unwrap();
    assert_eq!(plan.step, Step::Upload { reason: "Initial" });
    assert!(plan.status.previous_certificate_ids.is_empty());
}

#[test]
fn spec_inactive_deactivates_current() {
    let mut c = Case::local("fp1");
    c.spec.active = false;
    c.status = installed("ccrt-1", "fp1");
    c.tenant = [remote("ccrt-1", true, true)].into();
    assert_eq!(
        c.step(),
        Step::SetActive {
            id: "ccrt-1".into(),
            active: false
        }
    );
    c.tenant = [remote("ccrt-1", false, false)].into();
    assert!(matches!(
        c.step(),
        Step::Settled {
            reason: "Inactive",
            ..
        }
    ));
}

#[test]
fn renew_annotation_reuploads_in_local_mode_and_makes_a_csr_in_tenant_mode() {
    let mut c = Case::local("fp1");
    c.status = installed("ccrt-1", "fp1");
    c.tenant = [remote("ccrt-1", true, true)].into();
    c.renew = Some("now");
    assert_eq!(
        c.step(),
        Step::Upload {
            reason: "RenewRequested"
        }
    );
    c.spec = spec(KeySource::Tenant);
    assert_eq!(
        c.step(),
        Step::CreateCsr {
            reason: "RenewRequested"
        }
    );
}

#[test]
fn tenant_mode_waits_for_a_chain_that_matches_the_csr() {
    let mut c = Case::local("fp1");
    c.spec = spec(KeySource::Tenant);
    c.source = Source::NoChain;
    assert_eq!(c.step(), Step::CreateCsr { reason: "Initial" });

    c.status.pending = Some(PendingCertificate {
        csr: Some(CsrStatus {
            id: "csr-1".into(),
            request: "pem".into(),
        }),
        reason: "Initial".into(),
        since: "2026-11-23T09:00:00Z".into(),
        ..Default::default()
    });
    c.csr = Some(csr_info("fp1"));
    assert!(matches!(
        c.step(),
        Step::Wait {
            reason: "AwaitingSignedChain",
            ..
        }
    ));

    c.source = source("fp1");
    c.csr = Some(csr_info("another key"));
    assert_eq!(c.plan().unwrap_err().reason, "ChainDoesNotMatchCsr");

    c.csr = Some(csr_info("fp1"));
    assert_eq!(
        c.step(),
        Step::CompleteCsr {
            csr_id: "csr-1".into()
        }
    );
}

fn awaiting_chain(c: &mut Case) {
    c.spec = spec(KeySource::Tenant);
    c.status.pending = Some(PendingCertificate {
        csr: Some(CsrStatus {
            id: "csr-1".into(),
            request: "pem".into(),
        }),
        reason: "Initial".into(),
        since: "2026-11-23T09:00:00Z".into(),
        ..Default::default()
    });
    c.csr = Some(csr_info("fp1"));
}

#[test]
fn tenant_mode_chain_must_name_what_the_csr_asks_for() {
    let mut c = Case::local("fp1");
    awaiting_chain(&mut c);
    let Source::Present(cert) = &mut c.source else {
        unreachable!()
    };
    // The CA dropped a requested SAN (the CN is still in the subject).
    cert.leaf.subject_alternative_names = vec!["other.example.com".into()];
    let mut csr = csr_info("fp1").unwrap();
    csr.subject_alternative_names = vec!["login.example.com".into(), "sso.example.com".into()];
    c.csr = Some(Ok(csr.clone()));
    let err = c.plan().unwrap_err();
    assert_eq!(err.reason, "ChainDoesNotCoverCsr");
    assert!(
        err.message.contains("login.example.com, sso.example.com"),
        "{}",
        err.message
    );

    // Names compare as DNS names do: without regard to case.
    let Source::Present(cert) = &mut c.source else {
        unreachable!()
    };
    cert.leaf.subject_alternative_names =
        vec!["LOGIN.example.com".into(), "sso.example.com".into()];
    assert!(matches!(c.step(), Step::CompleteCsr { .. }));

    // The CSR's common name must be named too, in the SANs or as the leaf's CN.
    let Source::Present(cert) = &mut c.source else {
        unreachable!()
    };
    cert.leaf.subject = "CN=other.example.com".into();
    csr.subject = "CN=www.example.com".into();
    c.csr = Some(Ok(csr));
    let err = c.plan().unwrap_err();
    assert_eq!(err.reason, "ChainDoesNotCoverCsr");
    assert!(err.message.contains("www.example.com"), "{}", err.message);
}

#[test]
fn tenant_mode_keys_compare_as_keys_not_bytes() {
    let mut c = Case::local("fp1");
    awaiting_chain(&mut c);
    // The same key, encoded with a trailing byte after the SPKI (what a DER comparison trips
    // over): still the same key.
    let mut csr = csr_info("fp1").unwrap();
    csr.public_key_der.push(0);
    c.csr = Some(Ok(csr));
    assert!(matches!(c.step(), Step::CompleteCsr { .. }));
}

#[test]
fn tenant_mode_unreadable_csr_is_reported_as_such() {
    let mut c = Case::local("fp1");
    awaiting_chain(&mut c);
    c.csr = Some(Err("invalid PEM: no CERTIFICATE REQUEST block".into()));
    let err = c.plan().unwrap_err();
    assert_eq!(err.reason, "CsrUnreadable");
    assert!(err.message.contains("csr-1"), "{}", err.message);
    // Even with no chain yet: the user must know the CSR cannot be signed.
    c.source = Source::NoChain;
    assert_eq!(c.plan().unwrap_err().reason, "CsrUnreadable");
}

#[test]
fn tenant_mode_refuses_a_chain_that_does_not_outlive_the_current_one() {
    let mut c = Case::local("fp2");
    awaiting_chain(&mut c);
    c.csr = Some(csr_info("fp2"));
    c.status.certificate_id = Some("ccrt-1".into());
    c.status.fingerprint = Some("fp1".into());
    c.status.not_after = Some("2027-01-30T00:00:00Z".into());
    c.tenant = [remote("ccrt-1", true, true)].into();
    c.status.pending.as_mut().unwrap().reason = "Renewal".into();
    let err = c.plan().unwrap_err();
    assert_eq!(err.reason, "ChainNotNewer");
    // A chain for a spec change may end with the one in place (a CA with fixed end dates).
    c.status.pending.as_mut().unwrap().reason = "SpecChanged".into();
    assert!(matches!(c.step(), Step::CompleteCsr { .. }));
    c.status.pending.as_mut().unwrap().reason = "Renewal".into();
    c.status.not_after = Some("2027-01-29T23:59:59Z".into());
    assert!(matches!(c.step(), Step::CompleteCsr { .. }));
}

#[test]
fn tenant_mode_renews_at_renewal_time() {
    let mut c = Case::local("fp1");
    c.spec = spec(KeySource::Tenant);
    c.spec.renew_before = Some("720h".into());
    c.status = installed("ccrt-1", "fp1");
    c.status.not_before = Some("2026-11-01T00:00:00Z".into());
    c.status.not_after = Some("2027-11-01T00:00:00Z".into());
    c.tenant = [remote("ccrt-1", true, true)].into();
    c.now = ts("2027-10-01T00:00:00Z");
    assert!(matches!(c.step(), Step::Settled { .. }));
    c.now = ts("2027-10-02T00:00:01Z");
    assert_eq!(c.step(), Step::CreateCsr { reason: "Renewal" });
}

#[test]
fn renewal_defaults_to_a_third_of_short_lifetimes() {
    let mut s = spec(KeySource::Tenant);
    let mut status = TenantCertificateStatus {
        not_before: Some("2026-11-01T00:00:00Z".into()),
        not_after: Some("2026-11-04T00:00:00Z".into()),
        ..Default::default()
    };
    assert_eq!(renewal_time(&s, &status), Some(ts("2026-11-03T00:00:00Z")));
    status.not_after = Some("2027-11-01T00:00:00Z".into());
    assert_eq!(renewal_time(&s, &status), Some(ts("2027-10-02T00:00:00Z")));
    s.key_source = KeySource::Local;
    assert_eq!(renewal_time(&s, &status), None);
}

fn upload_of(id: &str, l: &CertInfo) -> Certificate {
    Certificate {
        id: id.into(),
        valid_from_time: Some(l.not_before.to_string()),
        expire_time: Some(l.not_after.to_string()),
        subject_alternative_names: l.subject_alternative_names.clone(),
        ..Default::default()
    }
}

fn upload_intent(fp: &str, existing: &[&str]) -> CreateIntent {
    CreateIntent {
        kind: INTENT_CERTIFICATE.into(),
        fingerprint: Some(fp.into()),
        existing: existing.iter().map(|s| s.to_string()).collect(),
        since: "2026-11-23T09:00:00Z".into(),
        ..Default::default()
    }
}

#[test]
fn adoption_needs_an_intent_and_a_certificate_new_since_it() {
    let l = leaf("fp1");
    let support = Certificate {
        id: "ccrt-support".into(),
        active: true,
        live: true,
        ..Default::default()
    };
    let tenant: BTreeMap<_, _> = [
        ("ccrt-9".to_string(), upload_of("ccrt-9", &l)),
        (support.id.clone(), support),
    ]
    .into();
    let intent = upload_intent("fp1", &[]);
    assert_eq!(
        find_adoptable_upload(tenant.values(), &l, &[], Some(&intent)).map(|c| c.id.as_str()),
        Some("ccrt-9")
    );
    // Already ours: nothing to adopt.
    assert_eq!(
        find_adoptable_upload(tenant.values(), &l, &["ccrt-9".into()], Some(&intent)),
        None
    );
    // No intent recorded: a look-alike is someone else's (support, another cluster).
    assert_eq!(find_adoptable_upload(tenant.values(), &l, &[], None), None);
    // It existed before the intent: never adopted.
    let before = upload_intent("fp1", &["ccrt-9"]);
    assert_eq!(
        find_adoptable_upload(tenant.values(), &l, &[], Some(&before)),
        None
    );
    // An intent for another leaf proves nothing about this one.
    let other = upload_intent("fp2", &[]);
    assert_eq!(
        find_adoptable_upload(tenant.values(), &l, &[], Some(&other)),
        None
    );
}

#[test]
fn a_retry_keeps_the_first_intent() {
    let first = upload_intent("fp1", &["ccrt-support-copy"]);
    // After a lost answer our own upload exists; a retry must not count it as existing.
    let again = intent_for(
        Some(&first),
        upload_intent("fp1", &["ccrt-support-copy", "ccrt-ours"]),
    );
    assert_eq!(again, first);
    let other = intent_for(Some(&first), upload_intent("fp2", &["b", "a"]));
    assert_eq!(other.existing, ["a", "b"]);
}

proptest! {
    /// Whatever the tenant holds and whatever was recorded, adoption never picks an id that
    /// existed when the intent was recorded, nor one already ours, nor one without an intent.
    #[test]
    fn adoption_never_takes_what_existed_before(
        before in proptest::collection::btree_set(0u8..20, 0..10),
        after in proptest::collection::btree_set(0u8..20, 0..10),
        known in proptest::collection::btree_set(0u8..20, 0..5),
        with_intent in any::<bool>(),
    ) {
        let l = leaf("fp1");
        let id = |n: &u8| format!("ccrt-{n}");
        let tenant: Vec<Certificate> = before.union(&after).map(|n| upload_of(&id(n), &l)).collect();
        let existing: Vec<String> = before.iter().map(id).collect();
        let intent = CreateIntent {
            existing: existing.clone(),
            ..upload_intent("fp1", &[])
        };
        let known: Vec<String> = known.iter().map(id).collect();
        let adopted = find_adoptable_upload(&tenant, &l, &known, with_intent.then_some(&intent));
        if let Some(c) = adopted {
            prop_assert!(with_intent);
            prop_assert!(!existing.contains(&c.id));
            prop_assert!(!known.contains(&c.id));
        } else {
            // No proof, or not exactly one new and unknown look-alike (none, or several that
            // cannot be told apart).
            let new = before
                .union(&after)
                .map(id)
                .filter(|a| !existing.contains(a) && !known.contains(a))
                .count();
            prop_assert!(!with_intent || new != 1);
        }
    }
}

#[test]
fn polls_speed_up_with_the_number_of_certificates_sharing_a_list() {
    let poll = PollPolicy::default();
    let now = ts("2026-11-23T10:00:40Z");
    let since = "2026-11-23T10:00:00Z";
    // Alone, 40 s in: half the wait (20 s, the max), on the shared clock.
    let alone = poll_after(&poll, since, now, 1, None);
    assert!(
        alone >= Duration::from_secs(15) && alone <= Duration::from_secs(40),
        "{alone:?}"
    );
    // 100 waiting together: a tenth of that, never below half of min.
    let fleet = poll_after(&poll, since, now, 100, None);
    assert!(fleet <= Duration::from_secs(4), "{fleet:?}");
    assert!(fleet >= poll.min / 2, "{fleet:?}");
    let crowd = poll_after(&poll, since, now, 1_000_000, None);
    assert!(crowd >= poll.min / 2 && crowd <= poll.min * 2, "{crowd:?}");
    // More waiting never means slower polls.
    let mut last = Duration::MAX;
    for n in [1, 2, 4, 16, 100, 10_000] {
        let interval = poll_after(&poll, since, ts("2026-11-23T10:00:10Z"), n, None);
        assert!(
            interval <= last.max(poll.min),
            "{n}: {interval:?} after {last:?}"
        );
        last = interval;
    }
}

proptest! {
    /// Certificates of one tenant polling at the same moment wake on the same tick of that
    /// tenant's clock whatever their number, so they share one list.
    #[test]
    fn same_count_same_tick(secs in 0i64..100_000, waited in 0i64..600, n in 1usize..5000, t in 0u32..1000) {
        let poll = PollPolicy::default().for_tenant(&format!("https://openam-t{t}.id.forgerock.io"));
        let now = Timestamp::from_second(1_800_000_000 + secs).unwrap();
        let since = Timestamp::from_second(now.as_second() - waited).unwrap().to_string();
        let a = now.as_millisecond() + poll_after(&poll, &since, now, n, None).as_millis() as i64;
        let floor = (poll.min / 2).as_millis() as i64;
        prop_assert_eq!((a - poll.phase.as_millis() as i64) % floor, 0, "wakes on a tick of the tenant's clock");
    }

    /// A poll accepts exactly the lists that started since the last tick of its tenant's clock:
    /// a poll woken by a tick never reads the tenant as it was before that tick, and all the
    /// polls worked through after one tick accept the same lists.
    #[test]
    fn a_poll_reads_no_list_older_than_its_tick(ms in 0i64..100_000_000, late in 0i64..2_000, t in 0u32..1000) {
        let poll = PollPolicy::default().for_tenant(&format!("https://openam-t{t}.id.forgerock.io"));
        let floor = (poll.min / 2).as_millis() as i64;
        let phase = poll.phase.as_millis() as i64;
        prop_assert!(phase < floor);
        let base = 1_800_000_000_000 + ms;
        let tick = base - (base - phase).rem_euclid(floor);
        let now = Timestamp::from_millisecond(tick + late.min(floor - 1)).unwrap();
        let oldest = now.as_millisecond() - live_list_tolerance(&poll, now).as_millis() as i64;
        prop_assert_eq!(oldest, tick);
        prop_assert!(live_list_tolerance(&poll, now) < poll.min);
        // And that tick is one the tenant's polls wake on.
        let waited = Timestamp::from_millisecond(tick - 5_000).unwrap().to_string();
        let before = Timestamp::from_millisecond(tick - 1_100).unwrap();
        let wake = before.as_millisecond() + poll_after(&poll, &waited, before, 100, None).as_millis() as i64;
        prop_assert_eq!((wake - tick).rem_euclid(floor), 0);
    }
}

proptest! {
    /// Once the tenant's `live` delay is known, nothing is polled before half of it since
    /// activation, and the first poll after that falls within one fine tick of it, on the
    /// tenant's clock; from then on the schedule is the one without it.
    #[test]
    fn no_poll_before_half_the_tenants_live_delay(
        start_ms in 1_800_000_000_000i64..1_800_100_000_000,
        waited_ms in 0i64..200_000,
        delay_s in 1u64..180,
        n in 1usize..2000,
        t in 0u32..1000,
    ) {
        let poll = PollPolicy::default().for_tenant(&format!("https://openam-t{t}.id.forgerock.io"));
        let since = Timestamp::from_millisecond(start_ms).unwrap();
        let now = Timestamp::from_millisecond(start_ms + waited_ms).unwrap();
        let delay = Duration::from_secs(delay_s);
        let wait = poll_after(&poll, &since.to_string(), now, n, Some(delay));
        let wake = now.as_millisecond() + wait.as_millis() as i64;
        let quiet_until = start_ms + (delay / 2).as_millis() as i64;
        let floor = (poll.min / 2).as_millis() as i64;
        if waited_ms < quiet_until - start_ms {
            prop_assert!(wake >= quiet_until);
            prop_assert!(wake < quiet_until + floor);
            prop_assert_eq!((wake - poll.phase.as_millis() as i64).rem_euclid(floor), 0);
        } else {
            prop_assert_eq!(wait, poll_after(&poll, &since.to_string(), now, n, None));
        }
    }

    /// The estimate follows a faster tenant at once and a slower one a quarter of the way: it
    /// stays between the two, and a run of the same delay converges to it.
    #[test]
    fn the_live_delay_estimate_falls_at_once_and_rises_slowly(
        previous in proptest::option::of(0u64..600_000),
        seen in 0u64..600_000,
    ) {
        let previous = previous.map(Duration::from_millis);
        let seen = Duration::from_millis(seen);
        let next = next_live_delay(previous, seen);
        match previous {
            None => prop_assert_eq!(next, seen),
            Some(p) if seen <= p => prop_assert_eq!(next, seen),
            Some(p) => {
                prop_assert!(next >= p && next <= seen);
                prop_assert!(next <= p + (seen - p) / 4 + Duration::from_millis(1));
            }
        }
        let mut estimate = previous;
        for _ in 0..60 {
            estimate = Some(next_live_delay(estimate, seen));
        }
        prop_assert!(estimate.unwrap().abs_diff(seen) <= Duration::from_millis(100));
    }
}

/// Tenants' clocks are spread over the finest tick: ten tenants, ten bursts, not one.
#[test]
fn tenants_tick_apart() {
    let poll = PollPolicy::default();
    let phases: std::collections::BTreeSet<Duration> = (0..10)
        .map(|i| tenant_phase(&format!("https://openam-acme-{i}.id.forgerock.io"), &poll))
        .collect();
    assert!(phases.len() >= 8, "{phases:?}");
    assert!(phases.iter().all(|p| *p < poll.min / 2));
    // The same tenant, the same phase, in every process.
    assert_eq!(
        tenant_phase("https://openam-acme-1.id.forgerock.io", &poll),
        tenant_phase("https://openam-acme-1.id.forgerock.io", &poll)
    );
}

fn settled_status(fp: &str) -> TenantCertificateStatus {
    let condition =
        |type_: &str, status: &str| k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "Live".into(),
            message: String::new(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(
                "2026-11-23T09:00:00Z",
            )),
            observed_generation: Some(1),
        };
    TenantCertificateStatus {
        observed_generation: Some(1),
        conditions: vec![
            condition(READY, "True"),
            condition(RECONCILING, "False"),
            condition(STALLED, "False"),
        ],
        certificate_id: Some("ccrt-1".into()),
        active: Some(true),
        live: Some(true),
        fingerprint: Some(fp.into()),
        not_before: Some("2026-11-01T00:00:00Z".into()),
        not_after: Some("2027-01-30T00:00:00Z".into()),
        ..Default::default()
    }
}

/// Only a certificate that is in place as last asked skips the first look after a restart;
/// each thing a user or the clock can change while the operator is down brings the look back.
#[test]
fn only_a_settled_certificate_skips_the_look_after_a_restart() {
    let spec_local = spec(KeySource::Local);
    let spec_tenant = spec(KeySource::Tenant);
    let now = ts("2026-11-23T10:00:00Z");
    let check = |spec: &TenantCertificateSpec,
                 status: &TenantCertificateStatus,
                 generation: i64,
                 source: &Source,
                 renew: Option<&str>,
                 now: Timestamp| {
        quiet_after_restart(
            &Settledness {
                spec,
                status,
                generation: Some(generation),
                source,
                renew_request: renew,
                now,
            },
            &PollPolicy::default(),
        )
    };
    let good = settled_status("sha256:a");
    let after = check(&spec_local, &good, 1, &source("sha256:a"), None, now)
        .expect("settled: no look until the resync tick");
    assert!(after <= PollPolicy::default().resync * 2, "{after:?}");

    assert_eq!(
        check(&spec_local, &good, 2, &source("sha256:a"), None, now),
        None,
        "spec changed"
    );
    assert_eq!(
        check(&spec_local, &good, 1, &source("sha256:b"), None, now),
        None,
        "Secret changed"
    );
    assert_eq!(
        check(&spec_local, &good, 1, &Source::NoChain, None, now),
        None,
        "Secret emptied"
    );
    assert_eq!(
        check(&spec_local, &good, 1, &source("sha256:a"), Some("now"), now),
        None,
        "renew asked"
    );
    let mut pending = good.clone();
    pending.pending = Some(PendingCertificate {
        certificate_id: Some("ccrt-2".into()),
        reason: "SecretChanged".into(),
        since: "2026-11-23T09:59:00Z".into(),
        ..Default::default()
    });
    assert_eq!(
        check(&spec_local, &pending, 1, &source("sha256:a"), None, now),
        None,
        "rolling"
    );
    let mut not_live = good.clone();
    not_live.live = Some(false);
    assert_eq!(
        check(&spec_local, &not_live, 1, &source("sha256:a"), None, now),
        None,
        "not live"
    );
    let mut history = good.clone();
    history.previous_certificate_ids = vec!["ccrt-0".into(), "ccrt-00".into()];
    assert_eq!(
        check(&spec_local, &history, 1, &source("sha256:a"), None, now),
        None,
        "old to delete"
    );
    let mut stalled = good.clone();
    stalled.conditions[2].status = "True".into();
    assert_eq!(
        check(&spec_local, &stalled, 1, &source("sha256:a"), None, now),
        None,
        "stalled"
    );
    // Tenant mode: due for renewal (30 days before notAfter, capped at a third) looks at once;
    // before that, waits at most until it falls due.
    let due = ts("2026-12-31T00:00:00Z");
    assert_eq!(
        check(&spec_tenant, &good, 1, &source("sha256:a"), None, due),
        None,
        "due"
    );
    let close = ts("2026-12-30T23:59:00Z");
    let wait = check(&spec_tenant, &good, 1, &source("sha256:a"), None, close).unwrap();
    assert!(wait <= Duration::from_secs(60), "{wait:?}");
}

/// A renewBefore longer than a third of a short certificate's life is capped at that third: the
/// certificate just installed is not due, so no rotation loop.
#[test]
fn renew_before_is_capped_at_a_third_of_the_lifetime() {
    let mut spec = spec(KeySource::Tenant);
    spec.renew_before = Some("720h".into());
    let mut status = settled_status("sha256:a");
    // A 30-day certificate: 720h would mean "due from day 0".
    status.not_before = Some("2026-11-23T00:00:00Z".into());
    status.not_after = Some("2026-12-23T00:00:00Z".into());
    assert_eq!(
        renewal_time(&spec, &status),
        Some(ts("2026-12-13T00:00:00Z")),
        "a third of 30 days before notAfter"
    );
    let mut c = Case::local("sha256:a");
    c.spec = spec.clone();
    c.status = status;
    c.source = source("sha256:a");
    c.now = ts("2026-11-23T10:00:00Z");
    c.tenant = [remote("ccrt-1", true, true)].into_iter().collect();
    assert!(
        matches!(c.step(), Step::Settled { .. }),
        "just installed, not due: {:?}",
        c.step()
    );
    // A shorter renewBefore is kept as written.
    spec.renew_before = Some("48h".into());
    let mut status = settled_status("sha256:a");
    status.not_before = Some("2026-11-23T00:00:00Z".into());
    status.not_after = Some("2026-12-23T00:00:00Z".into());
    assert_eq!(
        renewal_time(&spec, &status),
        Some(ts("2026-12-21T00:00:00Z"))
    );
}

fn rolling_in(c: &mut Case, active: bool) {
    c.status = installed("ccrt-1", "fp1");
    c.status.pending = Some(pending("ccrt-2", "fp2"));
    c.tenant = [
        remote("ccrt-1", true, true),
        remote("ccrt-2", active, false),
    ]
    .into();
}

#[test]
fn a_certificate_that_never_goes_live_stalls_with_live_timeout_and_keeps_polling() {
    let mut c = Case::local("fp2");
    rolling_in(&mut c, true);
    c.status.pending.as_mut().unwrap().since = "2026-11-23T09:51:00Z".into();
    assert!(matches!(
        c.step(),
        Step::Wait {
            reason: "WaitingForLive",
            ..
        }
    ));
    c.status.pending.as_mut().unwrap().since = "2026-11-23T09:50:00Z".into();
    match c.step() {
        Step::Stuck {
            reason: "LiveTimeout",
            message,
            after,
        } => {
            assert!(message.contains("ccrt-2"), "{message}");
            assert!(
                after >= PollPolicy::default().max,
                "polls slowly: {after:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_newer_secret_supersedes_a_pending_certificate_that_is_not_live() {
    let mut c = Case::local("fp3");
    rolling_in(&mut c, true);
    // Taken out of the tenant: deactivated, then deleted; the live one stays as it is.
    assert_eq!(
        c.step(),
        Step::SetActive {
            id: "ccrt-2".into(),
            active: false
        }
    );
    c.tenant
        .insert("ccrt-2".into(), remote("ccrt-2", false, false).1);
    assert_eq!(
        c.step(),
        Step::Delete {
            id: "ccrt-2".into()
        }
    );
    // Once it is gone, the newer Secret is uploaded.
    c.tenant.remove("ccrt-2");
    let plan = c.plan().unwrap();
    assert!(plan.status.pending.is_none());
    assert_eq!(
        plan.step,
        Step::Upload {
            reason: "SecretChanged"
        }
    );
}

#[test]
fn a_live_pending_certificate_is_promoted_not_superseded() {
    let mut c = Case::local("fp3");
    rolling_in(&mut c, true);
    c.tenant
        .insert("ccrt-2".into(), remote("ccrt-2", true, true).1);
    let plan = c.plan().unwrap();
    assert_eq!(plan.status.certificate_id.as_deref(), Some("ccrt-2"));
}

#[test]
fn a_renew_request_or_a_spec_change_supersedes_a_pending_certificate() {
    let mut c = Case::local("fp2");
    rolling_in(&mut c, false);
    c.renew = Some("r1");
    assert_eq!(
        c.step(),
        Step::Delete {
            id: "ccrt-2".into()
        }
    );
    c.renew = None;
    c.status.pending.as_mut().unwrap().issued_for = Some("an older spec".into());
    assert_eq!(
        c.step(),
        Step::Delete {
            id: "ccrt-2".into()
        }
    );
    c.status.pending.as_mut().unwrap().issued_for = Some(issuance_digest(&c.spec));
    assert_eq!(
        c.step(),
        Step::SetActive {
            id: "ccrt-2".into(),
            active: true
        }
    );
}

#[test]
fn an_open_csr_is_deleted_when_the_spec_or_a_renew_request_supersedes_it() {
    let mut c = Case::local("fp1");
    awaiting_chain(&mut c);
    c.source = Source::NoChain;
    c.status.pending.as_mut().unwrap().issued_for = Some(issuance_digest(&c.spec));
    assert!(matches!(c.step(), Step::Wait { .. }));
    c.spec.csr.as_mut().unwrap().subject_alternative_names =
        vec!["login.example.com".into(), "sso.example.com".into()];
    assert_eq!(
        c.step(),
        Step::DeleteCsr {
            csr_id: "csr-1".into(),
            why: "a change to the spec"
        }
    );
    c.status.pending.as_mut().unwrap().issued_for = Some(issuance_digest(&c.spec));
    c.renew = Some("r1");
    assert_eq!(
        c.step(),
        Step::DeleteCsr {
            csr_id: "csr-1".into(),
            why: "a renew request"
        }
    );
}

#[test]
fn a_spec_change_rotates_the_current_certificate() {
    let mut c = Case::local("fp1");
    c.spec = spec(KeySource::Tenant);
    c.source = source("fp1");
    c.status = installed("ccrt-1", "fp1");
    c.status.issued_for = Some(issuance_digest(&c.spec));
    c.status.not_after = Some("2027-01-30T00:00:00Z".into());
    c.status.not_before = Some("2026-11-01T00:00:00Z".into());
    c.tenant = [remote("ccrt-1", true, true)].into();
    assert!(matches!(c.step(), Step::Settled { .. }));
    assert!(reflects_spec(&c.spec, &c.status));

    for change in [
        |s: &mut TenantCertificateSpec| {
            s.csr.as_mut().unwrap().common_name = "sso.example.com".into()
        },
        |s: &mut TenantCertificateSpec| s.csr.as_mut().unwrap().organization = Some("Acme".into()),
        |s: &mut TenantCertificateSpec| s.csr.as_mut().unwrap().algorithm = CsrAlgorithm::Ecdsa,
    ] {
        let mut changed = c.spec.clone();
        change(&mut changed);
        assert!(!reflects_spec(&changed, &c.status));
        let mut d = Case::local("fp1");
        d.spec = changed;
        d.source = c.source.clone();
        d.status = c.status.clone();
        d.tenant = c.tenant.clone();
        assert_eq!(
            d.step(),
            Step::CreateCsr {
                reason: "SpecChanged"
            }
        );
    }
    // Fields that do not shape the certificate rotate nothing.
    c.spec.renew_before = Some("240h".into());
    c.spec.deletion_policy = DeletionPolicy::Delete;
    assert!(matches!(c.step(), Step::Settled { .. }));
    // A status from before digests were kept is taken as reflecting the spec.
    c.status.issued_for = None;
    c.spec.csr.as_mut().unwrap().common_name = "sso.example.com".into();
    assert!(matches!(c.step(), Step::Settled { .. }));
}

proptest! {
    /// The failure policy: never below a Retry-After, never above the cap (or that
    /// Retry-After), growing with the streak, and a storm lasting `t` costs
    /// O(log(max/base) + t/max) attempts.
    #[test]
    fn backoff_is_capped_grows_and_makes_a_storm_cost_log_t(
        jitters in proptest::collection::vec(0.0f64..1.0, 1..400),
        retry_after in proptest::option::of(0u64..3600),
        storm_secs in 0u64..(24 * 3600),
    ) {
        let (base, max) = (Duration::from_secs(5), Duration::from_secs(600));
        let retry_after = retry_after.map(Duration::from_secs);
        let mut previous_floor = Duration::ZERO;
        for (i, jitter) in jitters.iter().enumerate() {
            let failures = i as u32 + 1;
            let wait = failure_backoff(base, max, failures, retry_after, *jitter);
            prop_assert!(wait >= retry_after.unwrap_or_default());
            prop_assert!(wait <= max.max(retry_after.unwrap_or_default()));
            let floor = failure_backoff(base, max, failures, None, 0.0);
            prop_assert!(floor >= previous_floor, "shrank at failure {failures}");
            previous_floor = floor;
        }
        // Attempts during a storm of `storm_secs`: each failure waits its backoff.
        let mut elapsed = Duration::ZERO;
        let mut attempts = 0u64;
        let mut jitter = jitters.iter().cycle();
        while elapsed < Duration::from_secs(storm_secs) {
            attempts += 1;
            elapsed += failure_backoff(base, max, attempts as u32, None, *jitter.next().unwrap());
        }
        let doublings = (max.as_secs_f64() / base.as_secs_f64()).log2().ceil() as u64;
        let bound = doublings + 2 + storm_secs / (max.as_secs() * 8 / 10);
        prop_assert!(attempts <= bound, "{attempts} attempts in {storm_secs}s (bound {bound})");
    }
}

#[test]
fn cleanup_follows_the_deletion_policy() {
    let mut status = installed("ccrt-1", "fp1");
    status.previous_certificate_ids = vec!["ccrt-0".into()];
    let tenant: BTreeMap<_, _> = [
        remote("ccrt-1", true, true),
        remote("ccrt-0", false, true),
        remote("foreign", true, true),
    ]
    .into();
    assert_eq!(
        cleanup_actions(DeletionPolicy::Retain, &status, &tenant),
        (vec![], false)
    );
    assert_eq!(
        cleanup_actions(DeletionPolicy::Deactivate, &status, &tenant),
        (vec![CleanupAction::Deactivate("ccrt-1".into())], false)
    );
    // Delete: deactivate first, and wait for `live` to turn false before deleting.
    assert_eq!(
        cleanup_actions(DeletionPolicy::Delete, &status, &tenant),
        (vec![CleanupAction::Deactivate("ccrt-1".into())], true)
    );
    let tenant: BTreeMap<_, _> = [
        remote("ccrt-1", false, false),
        remote("foreign", true, true),
    ]
    .into();
    status.pending = Some(PendingCertificate {
        csr: Some(CsrStatus {
            id: "csr-1".into(),
            request: String::new(),
        }),
        ..Default::default()
    });
    assert_eq!(
        cleanup_actions(DeletionPolicy::Delete, &status, &tenant),
        (
            vec![
                CleanupAction::Delete("ccrt-1".into()),
                CleanupAction::DeleteCsr("csr-1".into())
            ],
            false
        )
    );
}

proptest! {
    /// Cleanup acts only on ids recorded in status, whatever else the tenant holds.
    #[test]
    fn cleanup_touches_only_recorded_ids(
        recorded in proptest::collection::btree_set(0u8..10, 0..5),
        others in proptest::collection::btree_set(10u8..20, 0..5),
        flags in proptest::collection::vec((any::<bool>(), any::<bool>()), 20),
        policy in prop_oneof![Just(DeletionPolicy::Retain), Just(DeletionPolicy::Deactivate), Just(DeletionPolicy::Delete)],
    ) {
        let id = |n: &u8| format!("ccrt-{n}");
        let mut status = TenantCertificateStatus::default();
        let mut ids = recorded.iter().map(id);
        status.certificate_id = ids.next();
        status.previous_certificate_ids = ids.collect();
        let tenant: BTreeMap<_, _> = recorded
            .iter()
            .chain(&others)
            .map(|n| {
                let (active, live) = flags[*n as usize];
                remote(&id(n), active, live)
            })
            .collect();
        let (actions, _) = cleanup_actions(policy, &status, &tenant);
        let known = known_ids(&status);
        for a in &actions {
            let (CleanupAction::Deactivate(i) | CleanupAction::Delete(i) | CleanupAction::DeleteCsr(i)) = a;
            prop_assert!(known.contains(i), "{a:?} is not ours");
            if let CleanupAction::Delete(i) = a {
                prop_assert!(!tenant[i].active && !tenant[i].live, "deleted while active or live");
            }
        }
        if policy == DeletionPolicy::Retain {
            prop_assert!(actions.is_empty());
        }
    }
}

#[test]
fn a_new_process_honours_the_backoff_unless_the_user_changed_something() {
    let now = ts("2026-11-23T10:00:00Z");
    let mut status = TenantCertificateStatus {
        failures: Some(3),
        next_attempt_time: Some("2026-11-23T10:00:40Z".into()),
        observed_generation: Some(2),
        ..Default::default()
    };
    assert_eq!(
        backing_off(&status, Some(2), None, now),
        Some(Duration::from_secs(40))
    );
    assert_eq!(
        backing_off(&status, Some(3), None, now),
        None,
        "spec changed"
    );
    assert_eq!(
        backing_off(&status, Some(2), Some("r1"), now),
        None,
        "renew asked"
    );
    assert_eq!(
        backing_off(&status, Some(2), None, ts("2026-11-23T10:00:41Z")),
        None,
        "time is up"
    );
    status.failures = None;
    assert_eq!(
        backing_off(&status, Some(2), None, now),
        None,
        "no failure streak"
    );
}
