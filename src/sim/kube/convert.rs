//! Converting stored objects to the form a request asked for. Most resources have one form and
//! only `apiVersion` changes between CRD versions (no conversion webhooks: the versions are
//! assumed schema-compatible). Events are the exception: `v1` and `events.k8s.io/v1` are two
//! views of one store (as on a real server), so `kubectl describe`, which reads core Events,
//! shows what `kube::runtime::events::Recorder` wrote through `events.k8s.io/v1`.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use super::resources::ResourceInfo;

/// Events are stored in the `events.k8s.io/v1` form.
fn is_core_event(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.plural == "events"
}

/// The stored object as `info` at `version` serves it.
pub fn serve<'a>(info: &ResourceInfo, version: &str, stored: &'a Value) -> Cow<'a, Value> {
    if is_core_event(info) {
        return Cow::Owned(event_to_core(stored));
    }
    let api_version = info.api_version(version);
    if stored.get("apiVersion").and_then(Value::as_str) == Some(api_version.as_str()) {
        Cow::Borrowed(stored)
    } else {
        let mut o = stored.clone();
        o["apiVersion"] = Value::String(api_version);
        Cow::Owned(o)
    }
}

/// A written object (already in `info`'s form) as it is stored.
pub fn store(info: &ResourceInfo, written: Value) -> Value {
    if is_core_event(info) {
        event_from_core(&written)
    } else {
        written
    }
}

fn copy(from: &Value, from_key: &str, to: &mut Map<String, Value>, to_key: &str) {
    if let Some(v) = from.get(from_key).filter(|v| !v.is_null()) {
        to.insert(to_key.to_string(), v.clone());
    }
}

/// `MicroTime` → `Time`: core Event timestamps have whole seconds.
fn whole_seconds(micro: &str) -> String {
    let base = micro
        .split('.')
        .next()
        .unwrap_or(micro)
        .trim_end_matches('Z');
    format!("{base}Z")
}

fn event_to_core(e: &Value) -> Value {
    let mut c = Map::new();
    c.insert("apiVersion".into(), json!("v1"));
    c.insert("kind".into(), json!("Event"));
    copy(e, "metadata", &mut c, "metadata");
    copy(e, "regarding", &mut c, "involvedObject");
    copy(e, "related", &mut c, "related");
    copy(e, "note", &mut c, "message");
    copy(e, "reason", &mut c, "reason");
    copy(e, "type", &mut c, "type");
    copy(e, "action", &mut c, "action");
    copy(e, "eventTime", &mut c, "eventTime");
    copy(e, "reportingController", &mut c, "reportingComponent");
    copy(e, "reportingInstance", &mut c, "reportingInstance");
    copy(e, "deprecatedSource", &mut c, "source");
    copy(e, "deprecatedFirstTimestamp", &mut c, "firstTimestamp");
    copy(e, "deprecatedLastTimestamp", &mut c, "lastTimestamp");
    copy(e, "deprecatedCount", &mut c, "count");
    if let Some(series) = e.get("series").filter(|s| s.is_object()) {
        c.insert(
            "series".into(),
            json!({
                "count": series.get("count").cloned().unwrap_or(Value::Null),
                "lastObservedTime": series.get("lastObservedTime").cloned().unwrap_or(Value::Null),
            }),
        );
        // kubectl shows `count`/`lastTimestamp`; derive them the way the real conversion does.
        c.entry("count")
            .or_insert_with(|| series.get("count").cloned().unwrap_or(Value::Null));
        if let Some(t) = series.get("lastObservedTime").and_then(Value::as_str) {
            c.entry("lastTimestamp")
                .or_insert_with(|| json!(whole_seconds(t)));
        }
    }
    if !c.contains_key("firstTimestamp")
        && let Some(t) = e.get("eventTime").and_then(Value::as_str)
    {
        let secs = whole_seconds(t);
        c.insert("firstTimestamp".into(), json!(secs));
        c.entry("lastTimestamp").or_insert(json!(secs));
    }
    c.entry("count").or_insert(json!(1));
    if let Some(src) = e.get("reportingController").and_then(Value::as_str) {
        c.entry("source").or_insert(json!({"component": src}));
    }
    Value::Object(c)
}

fn event_from_core(c: &Value) -> Value {
    let mut e = Map::new();
    e.insert("apiVersion".into(), json!("events.k8s.io/v1"));
    e.insert("kind".into(), json!("Event"));
    copy(c, "metadata", &mut e, "metadata");
    copy(c, "involvedObject", &mut e, "regarding");
    copy(c, "related", &mut e, "related");
    copy(c, "message", &mut e, "note");
    copy(c, "reason", &mut e, "reason");
    copy(c, "type", &mut e, "type");
    copy(c, "action", &mut e, "action");
    copy(c, "eventTime", &mut e, "eventTime");
    copy(c, "series", &mut e, "series");
    copy(c, "reportingComponent", &mut e, "reportingController");
    copy(c, "reportingInstance", &mut e, "reportingInstance");
    copy(c, "source", &mut e, "deprecatedSource");
    copy(c, "firstTimestamp", &mut e, "deprecatedFirstTimestamp");
    copy(c, "lastTimestamp", &mut e, "deprecatedLastTimestamp");
    copy(c, "count", &mut e, "deprecatedCount");
    Value::Object(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::kube::resources::builtins;

    fn info(group: &str) -> ResourceInfo {
        builtins()
            .into_iter()
            .find(|r| r.plural == "events" && r.group == group)
            .unwrap()
    }

    #[test]
    fn events_round_trip_between_views() {
        let stored = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "x.1", "namespace": "default"},
            "regarding": {"kind": "Secret", "name": "s", "uid": "u1"},
            "note": "hello", "reason": "Created", "type": "Normal", "action": "Create",
            "eventTime": "2026-01-02T03:04:05.123456Z",
            "reportingController": "certrotor", "reportingInstance": "certrotor",
            "series": {"count": 3, "lastObservedTime": "2026-01-02T03:05:00.000001Z"}
        });
        let core = serve(&info(""), "v1", &stored).into_owned();
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["uid"], "u1");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["count"], 3);
        assert_eq!(core["firstTimestamp"], "2026-01-02T03:04:05Z");
        assert_eq!(core["lastTimestamp"], "2026-01-02T03:05:00Z");
        let back = store(&info(""), core);
        for k in [
            "regarding",
            "note",
            "reason",
            "type",
            "eventTime",
            "series",
            "metadata",
        ] {
            assert_eq!(back[k], stored[k], "{k}");
        }
        // The events.k8s.io view is the stored form itself.
        assert!(matches!(
            serve(&info("events.k8s.io"), "v1", &stored),
            Cow::Borrowed(_)
        ));
    }
}
