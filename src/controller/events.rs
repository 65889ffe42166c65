//! Events that tell the current truth in `kubectl describe`.
//!
//! kube-runtime's `Recorder` folds every Event with the same type, reason and action about one
//! object into a series that keeps the FIRST note: after a rotation, `describe` said
//! `Ready (x3) certificate <first id> is active and live` while the status named the second.
//! Here the note is part of the series key: a repeated message is counted in its series
//! (`x2`), and a different message is a new Event, so the newest Event always names the
//! current certificate, CSR or attempt. Writes stay one per state change, as before.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
pub use kube::runtime::events::EventType;

/// How long a series stays open, as in client-go and kube-runtime: a repeat after this starts a
/// new Event.
const SERIES_WINDOW: jiff::SignedDuration = jiff::SignedDuration::from_secs(6 * 60);

/// What identifies a series: the object, the kind of Event and its exact message, kept as a
/// 128-bit digest (two independent 64-bit hashes) rather than the strings, so 10,000 resources'
/// open series cost a few hundred KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SeriesKey(u64, u64);

impl SeriesKey {
    fn of(regarding: &ObjectReference, type_: EventType, reason: &str, note: &str) -> Self {
        use std::hash::{Hash, Hasher};
        let digest = |seed: u64| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            seed.hash(&mut h);
            regarding.uid.hash(&mut h);
            regarding.namespace.hash(&mut h);
            regarding.name.hash(&mut h);
            type_.hash(&mut h);
            reason.hash(&mut h);
            note.hash(&mut h);
            h.finish()
        };
        SeriesKey(digest(0x5eed_0001), digest(0x5eed_0002))
    }
}

/// An open series: its Event is named `<object name>.<created, hex nanoseconds>`, so only the
/// time is kept.
#[derive(Debug, Clone)]
struct Series {
    created: Timestamp,
    count: i32,
    last: Timestamp,
}

/// The series still open, pruned about once per window rather than on every Event: a scan per
/// Event cost O(resources) each, which at 10,000 resources was most of a reconcile's time.
#[derive(Default)]
struct OpenSeries {
    series: HashMap<SeriesKey, Series>,
    pruned: Option<Timestamp>,
}

impl OpenSeries {
    fn prune(&mut self, now: Timestamp) {
        let due = self
            .pruned
            .is_none_or(|at| now.duration_since(at) >= SERIES_WINDOW / 4);
        if due {
            self.series
                .retain(|_, s| now.duration_since(s.last) < SERIES_WINDOW);
            self.pruned = Some(now);
        }
    }
}

pub struct EventRecorder {
    client: Client,
    controller: String,
    instance: String,
    series: Mutex<OpenSeries>,
}

impl EventRecorder {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            series: Mutex::new(OpenSeries::default()),
        }
    }

    /// Records one Event about `regarding`: a new Event, or one more in the open series of the
    /// same message.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let key = SeriesKey::of(regarding, type_, reason, note);
        let open = {
            let mut open = self.series.lock().unwrap_or_else(|e| e.into_inner());
            open.prune(now);
            // A series older than the window is closed even before the next prune.
            open.series
                .get(&key)
                .filter(|s| now.duration_since(s.last) < SERIES_WINDOW)
                .cloned()
        };
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let written = match open {
            Some(s) => {
                let count = s.count + 1;
                let patch = serde_json::json!({
                    "series": EventSeries { count, last_observed_time: MicroTime(now) },
                });
                match api
                    .patch(
                        &self.event_name(regarding, s.created),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(_) => Series {
                        created: s.created,
                        count,
                        last: now,
                    },
                    // The Event expired (its TTL) or was deleted: start a new one.
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        self.create(&api, regarding, type_, reason, note, now)
                            .await?
                    }
                    Err(e) => return Err(e),
                }
            }
            None => {
                self.create(&api, regarding, type_, reason, note, now)
                    .await?
            }
        };
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .series
            .insert(key, written);
        Ok(())
    }

    async fn create(
        &self,
        api: &Api<K8sEvent>,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
        now: Timestamp,
    ) -> Result<Series, kube::Error> {
        let event_name = self.event_name(regarding, now);
        let event = K8sEvent {
            metadata: ObjectMeta {
                name: Some(event_name.clone()),
                namespace: regarding.namespace.clone(),
                ..Default::default()
            },
            action: Some(reason.to_string()),
            reason: Some(reason.to_string()),
            note: Some(note.to_string()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_string(),
            ),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        Ok(Series {
            created: now,
            count: 1,
            last: now,
        })
    }

    fn event_name(&self, regarding: &ObjectReference, created: Timestamp) -> String {
        format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            created.as_nanosecond()
        )
    }
}
