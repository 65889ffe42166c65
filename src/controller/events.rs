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

/// What identifies a series: the object, the kind of Event and its exact message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    uid: String,
    namespace: String,
    name: String,
    type_: EventType,
    reason: String,
    note: String,
}

#[derive(Debug, Clone)]
struct Series {
    event_name: String,
    count: i32,
    last: Timestamp,
}

pub struct EventRecorder {
    client: Client,
    controller: String,
    instance: String,
    series: Mutex<HashMap<SeriesKey, Series>>,
}

impl EventRecorder {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            series: Mutex::new(HashMap::new()),
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
        let key = SeriesKey {
            uid: regarding.uid.clone().unwrap_or_default(),
            namespace: namespace.clone(),
            name: regarding.name.clone().unwrap_or_default(),
            type_,
            reason: reason.to_string(),
            note: note.to_string(),
        };
        let open = {
            let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
            series.retain(|_, s| now.duration_since(s.last) < SERIES_WINDOW);
            series.get(&key).cloned()
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
                        &s.event_name,
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(_) => Series {
                        event_name: s.event_name,
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
        let event_name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            now.as_nanosecond()
        );
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
            event_name,
            count: 1,
            last: now,
        })
    }
}
