//! Prometheus metrics: counters and histograms fed by the controllers and tenant clients, and
//! per-object gauges computed at scrape time from the controllers' reflector caches (so a deleted
//! object drops out of the next scrape, and a standby reports none).
//!
//! Every metric name lives in [`names`]; `docs/metrics.md` lists exactly these.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::aic::CallObserver;
use crate::api::{self, DeviceIdCredential, TenantCertificate};
use crate::cie::budget::{self, Limits};

/// The `error` label of every reconcile failure, so that the error counters start at zero. The
/// controller maps its errors onto these (and tests that it does).
pub const FAILURE_LABELS: &[&str] = &["kube", "finalizer", "tenant", "no_namespace", "serialize"];

/// The metric names, as a scrape shows them (counters with their `_total` suffix).
pub mod names {
    pub const CERTIFICATE_EXPIRY: &str = "certrotor_certificate_expiry_timestamp_seconds";
    pub const CERTIFICATE_RENEWAL: &str = "certrotor_certificate_renewal_timestamp_seconds";
    pub const RESOURCE_CONDITION: &str = "certrotor_resource_condition";
    pub const DEVICEID_REFRESH_BUDGET: &str = "certrotor_deviceid_refresh_budget_remaining";
    pub const RECONCILE: &str = "certrotor_reconcile_total";
    pub const RECONCILE_ERRORS: &str = "certrotor_reconcile_errors_total";
    pub const RECONCILE_DURATION: &str = "certrotor_reconcile_duration_seconds";
    pub const TENANT_CALLS: &str = "certrotor_tenant_calls_total";
    pub const TENANT_CALL_DURATION: &str = "certrotor_tenant_call_duration_seconds";

    /// Every name above.
    pub const ALL: &[&str] = &[
        CERTIFICATE_EXPIRY,
        CERTIFICATE_RENEWAL,
        RESOURCE_CONDITION,
        DEVICEID_REFRESH_BUDGET,
        RECONCILE,
        RECONCILE_ERRORS,
        RECONCILE_DURATION,
        TENANT_CALLS,
        TENANT_CALL_DURATION,
    ];
}

/// `kind` label values.
pub const TENANT_CERTIFICATE: &str = "TenantCertificate";
pub const DEVICE_ID_CREDENTIAL: &str = "DeviceIdCredential";
/// `vendor` label values.
pub const AIC: &str = "aic";
pub const CIE: &str = "cie";

/// The conditions reported by `certrotor_resource_condition`.
const CONDITIONS: [&str; 3] = [api::READY, api::RECONCILING, api::STALLED];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    vendor: &'static str,
    operation: &'static str,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallDurationLabels {
    vendor: &'static str,
    operation: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 5 ms to about 40 s: tenant calls and reconciles (which include retried tenant calls).
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// How a reconcile ended, as the `outcome` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileOutcome {
    Success,
    /// Cleanup waits for the tenant (not a failure).
    CleanupPending,
    /// An error, labelled with `Error::metric_label()`.
    Error(&'static str),
}

impl ReconcileOutcome {
    fn label(self) -> &'static str {
        match self {
            ReconcileOutcome::Success => "success",
            ReconcileOutcome::CleanupPending => "cleanup_pending",
            ReconcileOutcome::Error(_) => "error",
        }
    }
}

/// The process's metrics. Cheap to share (`Arc`); [`Metrics::encode`] renders a scrape.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Histograms<KindLabels>,
    tenant_calls: Family<CallLabels, Counter>,
    tenant_call_duration: Histograms<CallDurationLabels>,
    caches: Arc<Caches>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The registry takes family names; the text encoder adds `_total` to counters itself.
fn family_name(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration: Histograms<KindLabels> =
            Family::new_with_constructor(duration_histogram);
        let tenant_calls = Family::<CallLabels, Counter>::default();
        let tenant_call_duration: Histograms<CallDurationLabels> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            family_name(names::RECONCILE),
            "Reconciles by kind and outcome (success, error, cleanup_pending)",
            reconciles.clone(),
        );
        registry.register(
            family_name(names::RECONCILE_ERRORS),
            "Failed reconciles by kind and error",
            reconcile_errors.clone(),
        );
        registry.register(
            names::RECONCILE_DURATION,
            "Time one reconcile took, by kind",
            reconcile_duration.clone(),
        );
        registry.register(
            family_name(names::TENANT_CALLS),
            "HTTP calls to a tenant by vendor, operation and outcome (ok or the error reason)",
            tenant_calls.clone(),
        );
        registry.register(
            names::TENANT_CALL_DURATION,
            "Time one HTTP call to a tenant took, by vendor and operation",
            tenant_call_duration.clone(),
        );
        // Series that exist from the start read 0 instead of missing, so rates and alerts on
        // them work before the first failure.
        for kind in [TENANT_CERTIFICATE, DEVICE_ID_CREDENTIAL] {
            for outcome in [
                ReconcileOutcome::Success,
                ReconcileOutcome::Error(""),
                ReconcileOutcome::CleanupPending,
            ] {
                let _ = reconciles.get_or_create(&ReconcileLabels {
                    kind,
                    outcome: outcome.label(),
                });
            }
            for error in FAILURE_LABELS {
                let _ = reconcile_errors.get_or_create(&ErrorLabels { kind, error });
            }
        }
        let caches = Arc::new(Caches::default());
        registry.register_collector(Box::new(CacheCollector {
            caches: caches.clone(),
        }));
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            tenant_calls,
            tenant_call_duration,
            caches,
        }
    }

    /// The reflector caches the scrape-time gauges read.
    pub fn caches(&self) -> &Caches {
        &self.caches
    }

    pub fn reconciled(&self, kind: &'static str, outcome: ReconcileOutcome, elapsed: Duration) {
        self.reconciles
            .get_or_create(&ReconcileLabels {
                kind,
                outcome: outcome.label(),
            })
            .inc();
        if let ReconcileOutcome::Error(error) = outcome {
            self.reconcile_errors
                .get_or_create(&ErrorLabels { kind, error })
                .inc();
        }
        self.reconcile_duration
            .get_or_create(&KindLabels { kind })
            .observe(elapsed.as_secs_f64());
    }

    /// One HTTP call to a tenant; `outcome` is `ok` or the error's reason.
    pub fn tenant_call(
        &self,
        vendor: &'static str,
        operation: &'static str,
        outcome: &str,
        elapsed: Duration,
    ) {
        self.tenant_calls
            .get_or_create(&CallLabels {
                vendor,
                operation,
                outcome: outcome.to_string(),
            })
            .inc();
        self.tenant_call_duration
            .get_or_create(&CallDurationLabels { vendor, operation })
            .observe(elapsed.as_secs_f64());
    }

    /// An observer for the AIC client that records into these metrics.
    pub fn aic_observer(self: &Arc<Self>) -> Arc<dyn CallObserver> {
        Arc::new(AicObserver(self.clone()))
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

struct AicObserver(Arc<Metrics>);

impl CallObserver for AicObserver {
    fn observe(&self, operation: &'static str, outcome: &str, elapsed: Duration) {
        self.0.tenant_call(AIC, operation, outcome, elapsed);
    }
}

/// The running controllers' reflector stores; empty while not leading.
#[derive(Default)]
pub struct Caches {
    tenant: RwLock<Option<Store<TenantCertificate>>>,
    deviceid: RwLock<Option<Store<DeviceIdCredential>>>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
    }
}

impl Caches {
    pub fn set_tenant(&self, store: Option<Store<TenantCertificate>>) {
        *self.tenant.write().unwrap_or_else(|e| e.into_inner()) = store;
    }

    pub fn set_deviceid(&self, store: Option<Store<DeviceIdCredential>>) {
        *self.deviceid.write().unwrap_or_else(|e| e.into_inner()) = store;
    }

    /// The per-object samples as of `now`.
    fn samples(&self, now: Timestamp) -> Samples {
        let tenant = self
            .tenant
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Store::state)
            .unwrap_or_default();
        let deviceid = self
            .deviceid
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Store::state)
            .unwrap_or_default();
        let mut samples = Samples::default();
        for t in &tenant {
            let status = t.status.clone().unwrap_or_default();
            samples.objects.push(object_sample(
                TENANT_CERTIFICATE,
                ObjectId::of(&**t),
                &status.conditions,
                status.not_after.as_deref(),
                status.renewal_time.as_deref(),
            ));
        }
        for d in &deviceid {
            let status = d.status.clone().unwrap_or_default();
            let id = ObjectId::of(&**d);
            let attempts = budget::parse_attempts(&status.attempts, now);
            samples.budgets.push((
                id.clone(),
                calls_allowed_now(&budget::CERT_REFRESH, &attempts, now),
            ));
            samples.objects.push(object_sample(
                DEVICE_ID_CREDENTIAL,
                id,
                &status.conditions,
                status.not_after.as_deref(),
                status.renewal_time.as_deref(),
            ));
        }
        samples
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ObjectId {
    namespace: String,
    name: String,
}

impl ObjectId {
    fn of<K: kube::Resource>(obj: &K) -> Self {
        Self {
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
        }
    }
}

/// What one resource contributes to a scrape.
#[derive(Clone, Debug, PartialEq)]
struct ObjectSample {
    kind: &'static str,
    id: ObjectId,
    /// Unix seconds of `notAfter` and of the planned renewal, when status has them.
    expiry: Option<i64>,
    renewal: Option<i64>,
    /// Each of [`CONDITIONS`] and whether it is True.
    conditions: [(&'static str, bool); 3],
}

#[derive(Debug, Default)]
struct Samples {
    objects: Vec<ObjectSample>,
    budgets: Vec<(ObjectId, u64)>,
}

fn unix_seconds(rfc3339: Option<&str>) -> Option<i64> {
    rfc3339?.parse::<Timestamp>().ok().map(|t| t.as_second())
}

fn object_sample(
    kind: &'static str,
    id: ObjectId,
    conditions: &[Condition],
    not_after: Option<&str>,
    renewal_time: Option<&str>,
) -> ObjectSample {
    ObjectSample {
        kind,
        id,
        expiry: unix_seconds(not_after),
        renewal: unix_seconds(renewal_time),
        conditions: CONDITIONS.map(|c| (c, api::is_true(conditions, c))),
    }
}

/// How many calls the budget allows back to back at `now`: the unspent burst, or 0/1 once it
/// is spent (the rate rules space calls out, so at most one is ever allowed at a time).
pub fn calls_allowed_now(limits: &Limits, attempts: &[Timestamp], now: Timestamp) -> u64 {
    let mut simulated = attempts.to_vec();
    let mut allowed = 0;
    // The burst plus one rate-limited call bounds the answer; the cap guards odd limits.
    while allowed <= limits.burst + limits.per_window && budget::may_call(limits, &simulated, now) {
        simulated.push(now);
        allowed += 1;
    }
    allowed as u64
}

/// Which timestamp of an object a gauge reports.
type Timestamped = fn(&ObjectSample) -> Option<i64>;

#[derive(Debug)]
struct CacheCollector {
    caches: Arc<Caches>,
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self.caches.samples(Timestamp::now());
        let object_labels = |s: &ObjectSample| {
            vec![
                ("kind", s.kind.to_string()),
                ("namespace", s.id.namespace.clone()),
                ("name", s.id.name.clone()),
            ]
        };
        let timestamps: [(&str, &str, Timestamped); 2] = [
            (
                names::CERTIFICATE_EXPIRY,
                "notAfter of the certificate in use, as Unix seconds",
                |s| s.expiry,
            ),
            (
                names::CERTIFICATE_RENEWAL,
                "When the certificate in use is due for renewal, as Unix seconds",
                |s| s.renewal,
            ),
        ];
        for (name, help, value) in timestamps {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for s in &samples.objects {
                if let Some(v) = value(s) {
                    let labels = object_labels(s);
                    ConstGauge::new(v).encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        let mut metric = encoder.encode_descriptor(
            names::RESOURCE_CONDITION,
            "1 when the condition (Ready, Reconciling, Stalled) is True, else 0",
            None,
            MetricType::Gauge,
        )?;
        for s in &samples.objects {
            for (condition, is_true) in s.conditions {
                let mut labels = object_labels(s);
                labels.push(("condition", condition.to_string()));
                ConstGauge::new(i64::from(is_true)).encode(metric.encode_family(&labels)?)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            names::DEVICEID_REFRESH_BUDGET,
            "cert:refresh calls the refresh budget allows right now",
            None,
            MetricType::Gauge,
        )?;
        for (id, remaining) in &samples.budgets {
            let labels = vec![
                ("namespace", id.namespace.clone()),
                ("name", id.name.clone()),
            ];
            ConstGauge::new(*remaining).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cie::budget::CERT_REFRESH;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn condition(type_: &str, status: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "Test".into(),
            message: String::new(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::UNIX_EPOCH,
            ),
            observed_generation: None,
        }
    }

    #[test]
    fn budget_counts_the_unspent_burst_then_one_per_spacing() {
        let now = ts("2026-01-01T12:00:00Z");
        assert_eq!(calls_allowed_now(&CERT_REFRESH, &[], now), 3);
        assert_eq!(calls_allowed_now(&CERT_REFRESH, &[now], now), 2);
        let spent = [now, now, now];
        assert_eq!(calls_allowed_now(&CERT_REFRESH, &spent, now), 0);
        // Well past the hour and the margin: one call, never the burst again.
        let later = ts("2026-01-01T14:00:00Z");
        assert_eq!(calls_allowed_now(&CERT_REFRESH, &spent, later), 1);
    }

    #[test]
    fn object_sample_reads_timestamps_and_true_conditions() {
        let conditions = [
            condition(api::READY, "True"),
            condition(api::RECONCILING, "False"),
        ];
        let s = object_sample(
            TENANT_CERTIFICATE,
            ObjectId {
                namespace: "ns".into(),
                name: "login".into(),
            },
            &conditions,
            Some("2026-03-01T00:00:00Z"),
            Some("not a time"),
        );
        assert_eq!(s.expiry, Some(ts("2026-03-01T00:00:00Z").as_second()));
        assert_eq!(s.renewal, None);
        assert_eq!(
            s.conditions,
            [
                (api::READY, true),
                (api::RECONCILING, false),
                (api::STALLED, false)
            ]
        );
    }

    #[test]
    fn counters_are_exposed_under_their_documented_names() {
        let metrics = Metrics::new();
        metrics.reconciled(
            TENANT_CERTIFICATE,
            ReconcileOutcome::Error("kube"),
            Duration::from_millis(3),
        );
        metrics.tenant_call(AIC, "list_certificates", "ok", Duration::from_millis(1));
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(
                r#"certrotor_reconcile_total{kind="TenantCertificate",outcome="error"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"certrotor_reconcile_errors_total{kind="TenantCertificate",error="kube"} 1"#
        ));
        assert!(text.contains(
            r#"certrotor_tenant_calls_total{vendor="aic",operation="list_certificates",outcome="ok"} 1"#
        ));
        assert!(
            text.contains(
                r#"certrotor_reconcile_duration_seconds_count{kind="TenantCertificate"} 1"#
            )
        );
        assert!(text.contains(
            r#"certrotor_reconcile_errors_total{kind="DeviceIdCredential",error="serialize"} 0"#
        ));
        // No store yet: the gauges are described but have no samples.
        assert!(text.contains("# TYPE certrotor_certificate_expiry_timestamp_seconds gauge"));
        assert!(!text.contains("certrotor_certificate_expiry_timestamp_seconds{"));
    }
}
