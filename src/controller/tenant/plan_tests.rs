//! Table tests of the TenantCertificate decision.

use std::collections::BTreeMap;

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
        public_key_der: fp.as_bytes().to_vec(),
        is_ca: false,
    }
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
    csr_key: Option<Vec<u8>>,
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
            csr_key: None,
            now: ts("2026-11-23T10:00:00Z"),
        }
    }
    fn plan(&self) -> Result<Plan, Invalid> {
        plan(&Observation {
            spec: &self.spec,
            status: &self.status,
            renew_request: self.renew,
            source: &self.source,
            pending_csr_key: self.csr_key.as_deref(),
            tenant: &self.tenant,
            now: self.now,
            poll: PollPolicy::default(),
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
    assert!(matches!(
        c.step(),
        Step::Wait {
            reason: "AwaitingSignedChain",
            ..
        }
    ));

    c.source = source("fp1");
    c.csr_key = Some(b"another key".to_vec());
    assert_eq!(c.plan().unwrap_err().reason, "ChainDoesNotMatchCsr");

    c.csr_key = Some(b"fp1".to_vec());
    assert_eq!(
        c.step(),
        Step::CompleteCsr {
            csr_id: "csr-1".into()
        }
    );
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

#[test]
fn adoption_matches_validity_and_sans_and_skips_known_ids() {
    let l = leaf("fp1");
    let mine = Certificate {
        id: "ccrt-9".into(),
        valid_from_time: Some("2026-11-01T00:00:00Z".into()),
        expire_time: Some("2027-01-30T00:00:00Z".into()),
        subject_alternative_names: vec!["login.example.com".into()],
        ..Default::default()
    };
    let support = Certificate {
        id: "ccrt-support".into(),
        active: true,
        live: true,
        ..Default::default()
    };
    let tenant: BTreeMap<_, _> = [
        (mine.id.clone(), mine.clone()),
        (support.id.clone(), support),
    ]
    .into();
    assert_eq!(
        find_adoptable_upload(&tenant, &l, &[]).map(|c| c.id.as_str()),
        Some("ccrt-9")
    );
    assert_eq!(find_adoptable_upload(&tenant, &l, &["ccrt-9".into()]), None);
}
