//! The Kubernetes API stand-in, driven by kube's own client and runtime, as the operator uses it.

use std::collections::BTreeMap;
use std::time::Duration;

use certrotor::sim::kube::{Options, StandIn, Verb};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::events::v1::Event as EventV1;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A small test kind: status subresource, conditions as a list-map keyed on `type`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "test.certrotor.io",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    shortname = "wd",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".spec.size"}"#
)]
struct WidgetSpec {
    size: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    color: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
struct WidgetStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "certrotor::api::conditions_schema")]
    conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phase: Option<String>,
}

fn local() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn standin() -> StandIn {
    StandIn::start(local()).await.unwrap()
}

async fn with_widgets(s: &StandIn) -> Api<Widget> {
    let crds: Api<CustomResourceDefinition> = Api::all(s.client());
    crds.create(&PostParams::default(), &Widget::crd())
        .await
        .unwrap();
    Api::namespaced(s.client(), "default")
}

fn widget(name: &str, size: i32) -> Widget {
    Widget::new(name, WidgetSpec { size, color: None })
}

fn cond(type_: &str, status: &str, reason: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: String::new(),
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T00:00:00Z".parse().unwrap(),
        ),
        observed_generation: None,
    }
}

fn api_err(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    c.data = Some(BTreeMap::from([("k".to_string(), "v".to_string())]));
    c
}

#[tokio::test]
async fn secret_crud_and_errors() {
    let s = standin().await;
    let secrets: Api<Secret> = Api::default_namespaced(s.client());
    let mut secret = Secret::default();
    secret.metadata.name = Some("creds".into());
    secret.string_data = Some(BTreeMap::from([("user".into(), "admin".into())]));
    let created = secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    assert_eq!(created.data.as_ref().unwrap()["user"].0, b"admin");
    assert!(created.string_data.is_none());
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));

    let again = secrets.create(&PostParams::default(), &secret).await;
    assert_eq!(api_err(again.unwrap_err()), (409, "AlreadyExists".into()));
    assert_eq!(
        api_err(secrets.get("nope").await.unwrap_err()),
        (404, "NotFound".into())
    );
    let nameless = secrets
        .create(&PostParams::default(), &Secret::default())
        .await;
    assert_eq!(api_err(nameless.unwrap_err()), (422, "Invalid".into()));
    let elsewhere: Api<Secret> = Api::namespaced(s.client(), "no-such-namespace");
    assert_eq!(
        api_err(
            elsewhere
                .create(&PostParams::default(), &secret)
                .await
                .unwrap_err()
        )
        .0,
        404
    );

    let mut got = secrets.get("creds").await.unwrap();
    assert_eq!(got, created);
    got.data
        .as_mut()
        .unwrap()
        .insert("pass".into(), k8s_openapi::ByteString(b"x".to_vec()));
    let replaced = secrets
        .replace("creds", &PostParams::default(), &got)
        .await
        .unwrap();
    let rv = |o: &Secret| {
        o.metadata
            .resource_version
            .clone()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(rv(&replaced) > rv(&created));
    assert_eq!(replaced.metadata.uid, created.metadata.uid);

    let all: Api<Secret> = Api::all(s.client());
    let list = all.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());

    let deleted = secrets
        .delete("creds", &DeleteParams::default())
        .await
        .unwrap();
    assert!(deleted.is_right(), "built-ins answer a success Status");
    assert_eq!(api_err(secrets.get("creds").await.unwrap_err()).0, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn stale_resource_version_is_a_conflict() {
    let s = standin().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(s.client());
    let first = cms
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    let mut second = first.clone();
    second.data = Some(BTreeMap::from([("k".into(), "changed".into())]));
    cms.replace("a", &PostParams::default(), &second)
        .await
        .unwrap();
    // `first` still carries the old resourceVersion.
    let stale = cms.replace("a", &PostParams::default(), &first).await;
    assert_eq!(api_err(stale.unwrap_err()), (409, "Conflict".into()));
    // A merge patch that names the stale version is a precondition too.
    let rv = first.metadata.resource_version.clone().unwrap();
    let patch = json!({"metadata": {"resourceVersion": rv}, "data": {"k": "x"}});
    let stale = cms
        .patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    assert_eq!(api_err(stale.unwrap_err()).0, 409);
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let s = standin().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(s.client());
    let mut c = cm("held", &[]);
    c.metadata.finalizers = Some(vec!["test/hold".into()]);
    cms.create(&PostParams::default(), &c).await.unwrap();
    let pending = cms.delete("held", &DeleteParams::default()).await.unwrap();
    let pending = pending
        .left()
        .expect("the object comes back while finalizers remain");
    assert!(pending.metadata.deletion_timestamp.is_some());
    let still = cms.get("held").await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_some());
    // No new finalizers on an object that is being deleted.
    let add = json!([{"op": "add", "path": "/metadata/finalizers/-", "value": "test/other"}]);
    let refused = cms
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(add).unwrap()),
        )
        .await;
    assert_eq!(api_err(refused.unwrap_err()).0, 403);

    let remove = json!([{"op": "remove", "path": "/metadata/finalizers/0"}]);
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(remove).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(api_err(cms.get("held").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn generation_and_status_subresource() {
    let s = standin().await;
    let widgets = with_widgets(&s).await;
    let mut w = widget("w1", 1);
    w.status = Some(WidgetStatus {
        phase: Some("ignored on create".into()),
        ..Default::default()
    });
    let created = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.status.is_none(), "create cannot set status");

    // Status writes change only status, and not the generation.
    let status = json!({"status": {"phase": "Running"}, "spec": {"size": 99}});
    let after = widgets
        .patch_status("w1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(after.status.unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(after.spec.size, 1);
    assert_eq!(after.metadata.generation, Some(1));

    // The main endpoint ignores status.
    let mut replaced = widgets.get("w1").await.unwrap();
    replaced.status = Some(WidgetStatus {
        phase: Some("Hacked".into()),
        ..Default::default()
    });
    let r = widgets
        .replace("w1", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert_eq!(r.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(r.metadata.generation, Some(1));
    assert_eq!(
        r.metadata.resource_version, replaced.metadata.resource_version,
        "no-op write"
    );
    // Custom resources need a resourceVersion on PUT.
    let mut unconditional = r.clone();
    unconditional.metadata.resource_version = None;
    let refused = widgets
        .replace("w1", &PostParams::default(), &unconditional)
        .await;
    assert_eq!(api_err(refused.unwrap_err()).0, 422);

    // Metadata changes do not bump the generation; spec changes do.
    let labels = json!({"metadata": {"labels": {"a": "b"}}});
    let l = widgets
        .patch("w1", &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .unwrap();
    assert_eq!(l.metadata.generation, Some(1));
    let spec = json!({"spec": {"size": 2}});
    let g = widgets
        .patch("w1", &PatchParams::default(), &Patch::Merge(&spec))
        .await
        .unwrap();
    assert_eq!(g.metadata.generation, Some(2));

    // replace_status works as well and keeps spec.
    let mut st = widgets.get_status("w1").await.unwrap();
    st.status = Some(WidgetStatus {
        phase: Some("Done".into()),
        ..Default::default()
    });
    st.spec.size = 50;
    let done = widgets
        .replace_status("w1", &PostParams::default(), &st)
        .await
        .unwrap();
    assert_eq!(done.status.unwrap().phase.as_deref(), Some("Done"));
    assert_eq!(done.spec.size, 2);
    assert_eq!(done.metadata.generation, Some(2));
}

#[tokio::test]
async fn server_side_apply_merges_conditions_by_type() {
    let s = standin().await;
    let widgets = with_widgets(&s).await;
    // Create on apply.
    let applied = json!({
        "apiVersion": "test.certrotor.io/v1", "kind": "Widget",
        "metadata": {"name": "w"}, "spec": {"size": 3}
    });
    let w = widgets
        .patch(
            "w",
            &PatchParams::apply("one").force(),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap();
    assert_eq!(w.spec.size, 3);
    assert_eq!(w.metadata.generation, Some(1));

    let status = |c: Condition| {
        json!({"apiVersion": "test.certrotor.io/v1", "kind": "Widget",
               "status": {"conditions": [c]}})
    };
    widgets
        .patch_status(
            "w",
            &PatchParams::apply("one"),
            &Patch::Apply(status(cond("Ready", "False", "Waiting"))),
        )
        .await
        .unwrap();
    widgets
        .patch_status(
            "w",
            &PatchParams::apply("two"),
            &Patch::Apply(status(cond("Stalled", "False", "Fine"))),
        )
        .await
        .unwrap();
    let w = widgets
        .patch_status(
            "w",
            &PatchParams::apply("one"),
            &Patch::Apply(status(cond("Ready", "True", "Done"))),
        )
        .await
        .unwrap();
    let conds = w.status.unwrap().conditions;
    let summary: Vec<(&str, &str, &str)> = conds
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
        .collect();
    assert_eq!(
        summary,
        [("Ready", "True", "Done"), ("Stalled", "False", "Fine")]
    );

    // Apply without fieldManager is refused, as on a real server.
    let resp = reqwest::Client::new()
        .patch(format!(
            "{}/apis/test.certrotor.io/v1/namespaces/default/widgets/w",
            s.url()
        ))
        .header("content-type", "application/apply-patch+yaml")
        .body("metadata:\n  name: w\nspec:\n  size: 4\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let status: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        (status["kind"].as_str(), status["status"].as_str()),
        (Some("Status"), Some("Failure"))
    );
    // With one, a YAML body is accepted.
    let resp = reqwest::Client::new()
        .patch(format!(
            "{}/apis/test.certrotor.io/v1/namespaces/default/widgets/w?fieldManager=yaml",
            s.url()
        ))
        .header("content-type", "application/apply-patch+yaml")
        .body("metadata:\n  name: w\nspec:\n  size: 4\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(widgets.get("w").await.unwrap().spec.size, 4);
}

#[tokio::test]
async fn merge_json_and_strategic_patches() {
    let s = standin().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(s.client());
    cms.create(&PostParams::default(), &cm("p", &[("a", "1")]))
        .await
        .unwrap();
    let merged = cms
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": null, "n": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.data.unwrap(),
        BTreeMap::from([("n".into(), "2".into())])
    );
    let strategic = cms
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"b": "2"}}})),
        )
        .await
        .unwrap();
    assert_eq!(strategic.labels().len(), 2);
    let ops = json!([{"op": "replace", "path": "/data/n", "value": "3"},
                     {"op": "add", "path": "/metadata/annotations", "value": {"x": "y"}}]);
    let jp = cms
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(ops).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(jp.data.as_ref().unwrap()["n"], "3");
    assert_eq!(jp.annotations()["x"], "y");
    let bad = json!([{"op": "test", "path": "/data/n", "value": "wrong"}]);
    let failed = cms
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(bad).unwrap()),
        )
        .await;
    assert_eq!(api_err(failed.unwrap_err()).0, 422);
    assert_eq!(
        api_err(
            cms.patch("nope", &PatchParams::default(), &Patch::Merge(json!({})))
                .await
                .unwrap_err()
        )
        .0,
        404
    );
}

#[tokio::test]
async fn label_and_field_selectors() {
    let s = standin().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(s.client());
    for (name, labels) in [
        ("web", vec![("app", "web"), ("tier", "front")]),
        ("db", vec![("app", "db")]),
        ("plain", vec![]),
    ] {
        cms.create(&PostParams::default(), &cm(name, &labels))
            .await
            .unwrap();
    }
    let names = |sel: &'static str| {
        let cms = cms.clone();
        async move {
            let mut n: Vec<String> = cms
                .list(&ListParams::default().labels(sel))
                .await
                .unwrap()
                .items
                .iter()
                .map(ResourceExt::name_any)
                .collect();
            n.sort();
            n
        }
    };
    assert_eq!(names("app=web").await, ["web"]);
    assert_eq!(names("app!=web").await, ["db", "plain"]);
    assert_eq!(names("app in (web,db)").await, ["db", "web"]);
    assert_eq!(names("app notin (web)").await, ["db", "plain"]);
    assert_eq!(names("tier").await, ["web"]);
    assert_eq!(names("!app").await, ["plain"]);
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=db"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    let by_ns: Api<ConfigMap> = Api::all(s.client());
    let other_ns = by_ns
        .list(&ListParams::default().fields("metadata.namespace=kube-system"))
        .await
        .unwrap();
    assert!(other_ns.items.is_empty());
    let bad = cms.list(&ListParams::default().labels("app in web")).await;
    assert_eq!(api_err(bad.unwrap_err()).0, 400);
}

async fn next_event<K: Clone + std::fmt::Debug>(
    stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin),
) -> WatchEvent<K> {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event within 5s")
        .expect("the stream is open")
        .expect("a well-formed event")
}

#[tokio::test]
async fn watch_replays_from_resource_version_and_expires_old_ones() {
    let s = StandIn::start_with(
        local(),
        Options {
            history_limit: 8,
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(s.client());
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    cms.create(&PostParams::default(), &cm("w", &[]))
        .await
        .unwrap();
    cms.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await
    .unwrap();
    cms.delete("w", &DeleteParams::default()).await.unwrap();

    let mut stream = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let kinds: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(match next_event(&mut stream).await {
                WatchEvent::Added(c) => format!("ADDED {}", c.data.unwrap()["k"]),
                WatchEvent::Modified(c) => format!("MODIFIED {}", c.data.unwrap()["k"]),
                WatchEvent::Deleted(c) => format!("DELETED {}", c.name_any()),
                other => panic!("unexpected {other:?}"),
            });
        }
        v
    };
    assert_eq!(kinds, ["ADDED v", "MODIFIED 2", "DELETED w"]);
    // Live events follow the replay.
    cms.create(&PostParams::default(), &cm("later", &[]))
        .await
        .unwrap();
    assert!(
        matches!(next_event(&mut stream).await, WatchEvent::Added(c) if c.name_any() == "later")
    );

    // Push the first resourceVersion out of the bounded history.
    for i in 0..10 {
        cms.create(&PostParams::default(), &cm(&format!("fill{i}"), &[]))
            .await
            .unwrap();
    }
    let mut old = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut old).await {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_bookmarks_timeout_and_selector_transitions() {
    let s = StandIn::start_with(
        local(),
        Options {
            bookmark_interval: Duration::from_millis(100),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(s.client());
    cms.create(&PostParams::default(), &cm("sel", &[("app", "web")]))
        .await
        .unwrap();
    let rv = cms
        .get("sel")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    let wp = WatchParams::default().labels("app=web").timeout(2);
    let mut stream = cms.watch(&wp, &rv).await.unwrap().boxed();
    match next_event(&mut stream).await {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, rv),
        other => panic!("expected a bookmark, got {other:?}"),
    }
    // The object stops matching: this watcher sees it deleted.
    cms.patch(
        "sel",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})),
    )
    .await
    .unwrap();
    let deleted = loop {
        match next_event(&mut stream).await {
            WatchEvent::Bookmark(_) => continue,
            other => break other,
        }
    };
    match deleted {
        WatchEvent::Deleted(c) => {
            assert_eq!(c.name_any(), "sel");
            assert_eq!(c.labels()["app"], "web", "the last content that matched");
        }
        other => panic!("expected DELETED, got {other:?}"),
    }
    // And matching again is an ADDED.
    cms.patch(
        "sel",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})),
    )
    .await
    .unwrap();
    let added = loop {
        match next_event(&mut stream).await {
            WatchEvent::Bookmark(_) => continue,
            other => break other,
        }
    };
    assert!(matches!(added, WatchEvent::Added(_)));
    // timeoutSeconds=2 ends the stream.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while stream.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the watch ended by itself");
}

#[tokio::test]
async fn streaming_list_sends_initial_events_then_marked_bookmark() {
    let s = standin().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(s.client());
    cms.create(&PostParams::default(), &cm("one", &[]))
        .await
        .unwrap();
    let wp = WatchParams::streaming_lists();
    let mut stream = cms.watch(&wp, "").await.unwrap().boxed();
    assert!(matches!(next_event(&mut stream).await, WatchEvent::Added(c) if c.name_any() == "one"));
    match next_event(&mut stream).await {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.metadata.annotations["k8s.io/initial-events-end"], "true")
        }
        other => panic!("expected the initial-events-end bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn runtime_watcher_and_reflector_follow_changes() {
    let s = standin().await;
    let widgets = with_widgets(&s).await;
    widgets
        .create(&PostParams::default(), &widget("a", 1))
        .await
        .unwrap();
    for config in [
        watcher::Config::default(),
        watcher::Config::default().streaming_lists(),
    ] {
        let (reader, writer) = reflector::store::<Widget>();
        let stream = reflector(writer, watcher(widgets.clone(), config))
            .applied_objects()
            .boxed();
        let seen = tokio::spawn(stream.take(3).try_collect::<Vec<_>>());
        reader.wait_until_ready().await.unwrap();
        assert!(
            reader
                .get(&reflector::ObjectRef::new("a").within("default"))
                .is_some()
        );
        widgets
            .create(&PostParams::default(), &widget("b", 2))
            .await
            .unwrap();
        widgets
            .patch(
                "b",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"size": 5}})),
            )
            .await
            .unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), seen)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let sizes: Vec<(String, i32)> = seen.iter().map(|w| (w.name_any(), w.spec.size)).collect();
        assert_eq!(sizes, [("a".into(), 1), ("b".into(), 2), ("b".into(), 5)]);
        widgets.delete("b", &DeleteParams::default()).await.unwrap();
    }

    // A reflector that keeps running sees the delete.
    let (reader, writer) = reflector::store::<Widget>();
    let running = tokio::spawn(
        reflector(writer, watcher(widgets.clone(), watcher::Config::default()))
            .for_each(|_| async {}),
    );
    reader.wait_until_ready().await.unwrap();
    widgets
        .create(&PostParams::default(), &widget("c", 1))
        .await
        .unwrap();
    wait_for(|| {
        reader
            .get(&reflector::ObjectRef::new("c").within("default"))
            .is_some()
    })
    .await;
    widgets.delete("c", &DeleteParams::default()).await.unwrap();
    wait_for(|| {
        reader
            .get(&reflector::ObjectRef::new("c").within("default"))
            .is_none()
    })
    .await;
    running.abort();
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("condition within 5s");
}

#[tokio::test]
async fn recorder_publishes_an_event_twice_as_a_series() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let s = standin().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(s.client());
    let target = cms
        .create(&PostParams::default(), &cm("subject", &[]))
        .await
        .unwrap();
    let recorder = Recorder::new(s.client(), Reporter::from("certrotor-test"));
    let ev = Event {
        type_: EventType::Normal,
        reason: "Tested".into(),
        note: Some("published twice".into()),
        action: "Test".into(),
        secondary: None,
    };
    let reference = target.object_ref(&());
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap();

    let events: Api<EventV1> = Api::default_namespaced(s.client());
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].series.as_ref().unwrap().count, 2);
    assert_eq!(s.stats().count(Verb::Patch, "events.events.k8s.io"), 1);

    // kubectl describe reads core v1 Events by involvedObject.
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::default_namespaced(s.client());
    let uid = target.metadata.uid.unwrap();
    let found = core
        .list(&ListParams::default().fields(&format!(
            "involvedObject.uid={uid},involvedObject.name=subject"
        )))
        .await
        .unwrap();
    assert_eq!(found.items.len(), 1);
    assert_eq!(found.items[0].message.as_deref(), Some("published twice"));
    assert_eq!(found.items[0].count, Some(2));
}

#[tokio::test]
async fn discovery_follows_crds() {
    let s = standin().await;
    let client = s.client();
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(discovery.has_group("coordination.k8s.io"));
    assert!(!discovery.has_group("test.certrotor.io"));
    let widgets = with_widgets(&s).await;
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("test.certrotor.io", "v1", "Widget"))
        .expect("the CRD kind is discoverable");
    assert_eq!(ar.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(
        caps.subresources
            .iter()
            .any(|(r, _)| r.plural == "widgets/status" || r.plural == "status")
    );

    // The dynamic API serves the same objects.
    widgets
        .create(&PostParams::default(), &widget("dyn", 7))
        .await
        .unwrap();
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let d = dynamic.get("dyn").await.unwrap();
    assert_eq!(d.data["spec"]["size"], 7);

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds.get("widgets.test.certrotor.io").await.unwrap();
    let established = crd.status.unwrap().conditions.unwrap();
    assert!(
        established
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );
    crds.delete("widgets.test.certrotor.io", &DeleteParams::default())
        .await
        .unwrap();
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(!discovery.has_group("test.certrotor.io"));
    assert_eq!(api_err(widgets.get("dyn").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn schema_validation_and_pruning() {
    let s = standin().await;
    let widgets = with_widgets(&s).await;
    let dynamic: Api<DynamicObject> =
        Api::namespaced_with(s.client(), "default", &ApiResource::erase::<Widget>(&()));
    let obj = |spec: serde_json::Value| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "test.certrotor.io/v1", "kind": "Widget",
            "metadata": {"name": "v"}, "spec": spec,
        }))
        .unwrap()
    };
    let wrong_type = dynamic
        .create(&PostParams::default(), &obj(json!({"size": "big"})))
        .await;
    assert_eq!(api_err(wrong_type.unwrap_err()), (422, "Invalid".into()));
    let missing = dynamic
        .create(&PostParams::default(), &obj(json!({"color": "red"})))
        .await;
    assert_eq!(api_err(missing.unwrap_err()).0, 422);
    let pruned = dynamic
        .create(
            &PostParams::default(),
            &obj(json!({"size": 1, "unknown": true})),
        )
        .await
        .unwrap();
    assert!(pruned.data["spec"].get("unknown").is_none());
    assert_eq!(widgets.get("v").await.unwrap().spec.size, 1);
}

#[tokio::test]
async fn owner_references_are_garbage_collected() {
    let s = standin().await;
    let widgets = with_widgets(&s).await;
    let owner = widgets
        .create(&PostParams::default(), &widget("owner", 1))
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(s.client());
    let mut owned = cm("owned", &[]);
    owned.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "test.certrotor.io/v1".into(),
        kind: "Widget".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.clone().unwrap(),
        ..Default::default()
    }]);
    cms.create(&PostParams::default(), &owned).await.unwrap();
    cms.create(&PostParams::default(), &cm("unrelated", &[]))
        .await
        .unwrap();
    let deleted = widgets
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        deleted.is_left(),
        "custom resources echo the deleted object"
    );
    assert_eq!(api_err(cms.get("owned").await.unwrap_err()).0, 404);
    cms.get("unrelated").await.unwrap();
}

#[tokio::test]
async fn metadata_tables_namespaces_and_stats() {
    let s = standin().await;
    let client = s.client();
    let widgets = with_widgets(&s).await;
    let mut w = widget("t", 4);
    w.metadata.labels = Some(BTreeMap::from([("x".into(), "y".into())]));
    widgets.create(&PostParams::default(), &w).await.unwrap();
    let meta = widgets.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(meta.items[0].metadata.labels.as_ref().unwrap()["x"], "y");
    let one = widgets.get_metadata("t").await.unwrap();
    assert_eq!(one.metadata.name.as_deref(), Some("t"));

    let table: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/apis/test.certrotor.io/v1/namespaces/default/widgets",
            s.url()
        ))
        .header(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(table["kind"], "Table");
    let names: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names[..3], ["Name", "Ready", "Size"]);
    assert_eq!(table["rows"][0]["cells"][0], "t");
    assert_eq!(table["rows"][0]["cells"][2], 4);

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some("team".into());
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let in_team: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    in_team
        .create(&PostParams::default(), &cm("c", &[]))
        .await
        .unwrap();
    namespaces
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(api_err(in_team.get("c").await.unwrap_err()).0, 404);

    let stats = s.stats();
    assert_eq!(stats.count(Verb::Create, "widgets.test.certrotor.io"), 1);
    assert_eq!(
        stats.count(
            Verb::Create,
            "customresourcedefinitions.apiextensions.k8s.io"
        ),
        1
    );
    assert!(stats.writes() >= 5 && stats.reads() >= 3);
}

#[tokio::test]
async fn kubeconfig_gives_a_working_client() {
    let s = standin().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    s.write_kubeconfig(&path).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let client = kube::Client::try_from(config).unwrap();
    let v = client.apiserver_version().await.unwrap();
    assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "33"));
    let namespaces: Api<Namespace> = Api::all(client);
    assert!(namespaces.get("default").await.is_ok());
    s.shutdown().await;
}

#[tokio::test]
async fn project_crds_are_served_with_schema_defaults() {
    use certrotor::api::{DeviceIdCredential, TenantCertificate};
    let s = standin().await;
    let crds: Api<CustomResourceDefinition> = Api::all(s.client());
    for crd in certrotor::api::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let dynamic: Api<DynamicObject> = Api::namespaced_with(
        s.client(),
        "default",
        &ApiResource::erase::<DeviceIdCredential>(&()),
    );
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "certrotor.io/v1alpha1", "kind": "DeviceIdCredential",
        "metadata": {"name": "vendor"},
        "spec": {"endpoint": "https://cie.example", "onboardingSecretRef": {"name": "onb"},
                 "certName": "vendor-cert", "secretName": "vendor-tls", "renewBefore": null,
                 "refreshToken": null},
    }))
    .unwrap();
    let created = dynamic.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(
        created.data["spec"]["privateKey"]["algorithm"], "ECDSA",
        "defaulted"
    );
    // Nulls stay where the schema allows them, and are pruned then defaulted elsewhere.
    assert_eq!(created.data["spec"]["renewBefore"], serde_json::Value::Null);
    assert_eq!(created.data["spec"]["refreshToken"], false);
    let typed: Api<DeviceIdCredential> = Api::default_namespaced(s.client());
    assert_eq!(
        typed.get("vendor").await.unwrap().spec.cert_name,
        "vendor-cert"
    );

    let mut missing = obj.clone();
    missing.data["spec"]
        .as_object_mut()
        .unwrap()
        .remove("endpoint");
    missing.metadata.name = Some("broken".into());
    let err = dynamic
        .create(&PostParams::default(), &missing)
        .await
        .unwrap_err();
    assert_eq!(api_err(err).0, 422);

    let tcerts: Api<TenantCertificate> = Api::default_namespaced(s.client());
    assert!(
        tcerts
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let discovery = kube::Discovery::new(s.client()).run().await.unwrap();
    assert!(discovery.has_group("certrotor.io"));
}

#[tokio::test]
async fn openapi_v3_index_points_at_group_versions() {
    let s = standin().await;
    with_widgets(&s).await;
    let http = reqwest::Client::new();
    let index: serde_json::Value = http
        .get(format!("{}/openapi/v3", s.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = index["paths"]["apis/test.certrotor.io/v1"]["serverRelativeURL"]
        .as_str()
        .expect("the CRD's group/version is listed");
    let doc: serde_json::Value = http
        .get(format!("{}{url}", s.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let patch =
        &doc["paths"]["/apis/test.certrotor.io/v1/namespaces/{namespace}/widgets/{name}"]["patch"];
    assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Widget");
    assert!(doc["components"]["schemas"]["io.certrotor.test.v1.Widget"].is_object());
}

#[tokio::test]
async fn kube_finalizer_helper_round_trip() {
    use kube::runtime::controller::Action;
    use kube::runtime::finalizer::{Event as Finalizer, finalizer};
    use std::sync::Arc;
    let s = standin().await;
    let widgets = with_widgets(&s).await;
    widgets
        .create(&PostParams::default(), &widget("f", 1))
        .await
        .unwrap();
    let cleaned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let run = |obj: Widget| {
        let widgets = widgets.clone();
        let cleaned = cleaned.clone();
        async move {
            finalizer(
                &widgets,
                "test.certrotor.io/cleanup",
                Arc::new(obj),
                |ev| async move {
                    if let Finalizer::Cleanup(_) = ev {
                        cleaned.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok::<_, std::convert::Infallible>(Action::await_change())
                },
            )
            .await
            .unwrap()
        }
    };
    // First pass adds the finalizer (a JSON patch testing that none is there yet).
    run(widgets.get("f").await.unwrap()).await;
    assert_eq!(
        widgets.get("f").await.unwrap().finalizers(),
        ["test.certrotor.io/cleanup"]
    );
    // Applying again goes through to the reconciler.
    run(widgets.get("f").await.unwrap()).await;
    widgets.delete("f", &DeleteParams::default()).await.unwrap();
    let doomed = widgets.get("f").await.unwrap();
    assert!(doomed.metadata.deletion_timestamp.is_some());
    run(doomed).await;
    assert!(cleaned.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(api_err(widgets.get("f").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn controller_converges_without_write_loops() {
    use kube::runtime::Controller;
    use kube::runtime::controller::Action;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let s = standin().await;
    let widgets = with_widgets(&s).await;
    widgets
        .create(&PostParams::default(), &widget("c", 1))
        .await
        .unwrap();
    let reconciles = Arc::new(AtomicUsize::new(0));
    let ctx = Arc::new((widgets.clone(), reconciles.clone()));
    let controller = Controller::new(widgets.clone(), watcher::Config::default())
        .run(
            |w: Arc<Widget>, ctx: Arc<(Api<Widget>, Arc<AtomicUsize>)>| async move {
                ctx.1.fetch_add(1, Ordering::SeqCst);
                let status = json!({
                    "apiVersion": "test.certrotor.io/v1", "kind": "Widget",
                    "status": {"phase": format!("size {}", w.spec.size),
                               "conditions": [cond("Ready", "True", "Sized")]},
                });
                ctx.0
                    .patch_status(
                        &w.name_any(),
                        &PatchParams::apply("ctl").force(),
                        &Patch::Apply(status),
                    )
                    .await?;
                Ok::<_, kube::Error>(Action::await_change())
            },
            |_, _, _| Action::requeue(Duration::from_secs(60)),
            ctx,
        )
        .for_each(|_| async {});
    let running = tokio::spawn(controller);
    let phase = |want: &'static str| {
        let widgets = widgets.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    let w = widgets.get("c").await.unwrap();
                    if w.status.and_then(|s| s.phase).as_deref() == Some(want) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .expect(want)
        }
    };
    phase("size 1").await;
    widgets
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await
        .unwrap();
    phase("size 2").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = reconciles.load(Ordering::SeqCst);
    // Each status write wakes the controller once; the repeated identical apply is a no-op
    // that produces no event, so reconciles stop.
    assert!(settled <= 5, "{settled} reconciles");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reconciles.load(Ordering::SeqCst), settled);
    running.abort();
}

#[tokio::test]
async fn leases_honour_resource_version_preconditions() {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    let s = standin().await;
    let leases: Api<Lease> = Api::default_namespaced(s.client());
    let mut lease = Lease::default();
    lease.metadata.name = Some("certrotor-leader".into());
    lease.spec = Some(LeaseSpec {
        holder_identity: Some("a".into()),
        lease_duration_seconds: Some(15),
        ..Default::default()
    });
    let held = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut taken = held.clone();
    taken.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let taken = leases
        .replace("certrotor-leader", &PostParams::default(), &taken)
        .await
        .unwrap();
    assert_eq!(taken.spec.unwrap().holder_identity.as_deref(), Some("b"));
    // The old holder's write carries the old resourceVersion and loses.
    let mut renew = held.clone();
    renew.spec.as_mut().unwrap().lease_duration_seconds = Some(30);
    let lost = leases
        .replace("certrotor-leader", &PostParams::default(), &renew)
        .await;
    assert_eq!(api_err(lost.unwrap_err()).0, 409);
}

#[tokio::test]
async fn serves_until_shutdown_which_ends_watches() {
    let s = standin().await;
    let client = s.client();
    let keep = s.clone();
    drop(s);
    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    cms.create(&PostParams::default(), &cm("alive", &[]))
        .await
        .unwrap();
    let mut stream = cms
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        next_event(&mut stream).await,
        WatchEvent::Added(_)
    ));
    tokio::time::timeout(Duration::from_secs(10), keep.shutdown())
        .await
        .expect("shutdown does not hang on an open watch");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the watch ended with the server");
    assert!(cms.get("alive").await.is_err(), "nothing serves any more");
}

#[tokio::test]
async fn core_events_and_events_k8s_io_share_one_store() {
    use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
    let s = standin().await;
    let core: Api<CoreEvent> = Api::default_namespaced(s.client());
    let mut ev = CoreEvent::default();
    ev.metadata.name = Some("old-style".into());
    ev.involved_object = ObjectReference {
        kind: Some("ConfigMap".into()),
        name: Some("x".into()),
        namespace: Some("default".into()),
        ..Default::default()
    };
    ev.reason = Some("Legacy".into());
    ev.message = Some("written through v1".into());
    let created = core.create(&PostParams::default(), &ev).await.unwrap();
    assert_eq!(created.involved_object.name.as_deref(), Some("x"));
    let patched = core
        .patch(
            "old-style",
            &PatchParams::default(),
            &Patch::Merge(json!({"message": "patched"})),
        )
        .await
        .unwrap();
    assert_eq!(patched.message.as_deref(), Some("patched"));
    assert_eq!(patched.involved_object.kind.as_deref(), Some("ConfigMap"));

    let new_style: Api<EventV1> = Api::default_namespaced(s.client());
    let seen = new_style.get("old-style").await.unwrap();
    assert_eq!(seen.note.as_deref(), Some("patched"));
    assert_eq!(seen.reason.as_deref(), Some("Legacy"));
    assert_eq!(seen.regarding.unwrap().name.as_deref(), Some("x"));
}

#[tokio::test]
async fn thousands_of_objects_list_and_watch_promptly() {
    let s = standin().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(s.client());
    let started = std::time::Instant::now();
    let (reader, writer) = reflector::store::<ConfigMap>();
    let labelled = watcher::Config::default().labels("batch=odd");
    let running =
        tokio::spawn(reflector(writer, watcher(cms.clone(), labelled)).for_each(|_| async {}));
    reader.wait_until_ready().await.unwrap();
    futures::stream::iter(0..2000)
        .for_each_concurrent(16, |i| {
            let cms = cms.clone();
            async move {
                let batch = if i % 2 == 1 { "odd" } else { "even" };
                cms.create(
                    &PostParams::default(),
                    &cm(&format!("c{i}"), &[("batch", batch)]),
                )
                .await
                .unwrap();
            }
        })
        .await;
    let all = cms.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 2000);
    let odd = cms
        .list(&ListParams::default().labels("batch=odd"))
        .await
        .unwrap();
    assert_eq!(odd.items.len(), 1000);
    wait_for(|| reader.state().len() == 1000).await;
    assert_eq!(s.stats().count(Verb::Create, "configmaps"), 2000);
    running.abort();
    eprintln!(
        "2000 creates, lists and a filtered reflector in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn metadata_watcher_sees_only_selected_secrets() {
    let s = standin().await;
    let secrets: Api<Secret> = Api::default_namespaced(s.client());
    let metadata: Api<kube::core::PartialObjectMeta<Secret>> = Api::default_namespaced(s.client());
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().labels("certrotor.io/watched=true");
    let running = tokio::spawn(reflector(writer, watcher(metadata, config)).for_each(|_| async {}));
    reader.wait_until_ready().await.unwrap();
    for (name, watched) in [("mine", "true"), ("theirs", "false")] {
        let mut secret = Secret::default();
        secret.metadata.name = Some(name.into());
        secret.metadata.labels = Some(BTreeMap::from([(
            "certrotor.io/watched".into(),
            watched.into(),
        )]));
        secret.string_data = Some(BTreeMap::from([(
            "tls.key".into(),
            "not for watchers".into(),
        )]));
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    wait_for(|| reader.state().len() == 1).await;
    let seen = reader.state();
    assert_eq!(seen[0].metadata.name.as_deref(), Some("mine"));
    assert_eq!(
        seen[0].types.as_ref().map(|t| t.kind.as_str()),
        Some("PartialObjectMetadata")
    );
    running.abort();
}

/// Lists page as a real API server's do: `limit` and `continue` over a consistent snapshot,
/// `remainingItemCount` when no selector filtered, 410 Expired once the snapshot is compacted,
/// 400 for a token that is not one.
#[tokio::test]
async fn lists_page_over_a_consistent_snapshot_and_expire() {
    let s = StandIn::start_with(
        local(),
        Options {
            history_limit: 6,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(s.client());
    for i in 0..5 {
        let labels: &[(&str, &str)] = if i % 2 == 0 { &[("even", "yes")] } else { &[] };
        cms.create(&PostParams::default(), &cm(&format!("cm-{i}"), labels))
            .await
            .unwrap();
    }
    let first = cms.list(&ListParams::default().limit(2)).await.unwrap();
    let names = |l: &kube::api::ObjectList<ConfigMap>| {
        l.items
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&first), ["cm-0", "cm-1"]);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().expect("a continue token");
    // Changes after the first page do not show in the rest of it.
    cms.delete("cm-3", &DeleteParams::default()).await.unwrap();
    cms.create(&PostParams::default(), &cm("cm-9", &[]))
        .await
        .unwrap();
    let second = cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        names(&second),
        ["cm-2", "cm-3"],
        "the snapshot still has cm-3"
    );
    assert_eq!(
        second.metadata.resource_version, first.metadata.resource_version,
        "every page reports the snapshot's resourceVersion"
    );
    let third = cms
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(second.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(names(&third), ["cm-4"], "and not cm-9");
    assert!(third.metadata.continue_.is_none());
    // With a selector: pages are filled from matching objects, no remaining count.
    let even = cms
        .list(&ListParams::default().labels("even=yes").limit(1))
        .await
        .unwrap();
    assert_eq!(names(&even), ["cm-0"]);
    assert!(even.metadata.continue_.is_some());
    assert_eq!(even.metadata.remaining_item_count, None);
    // No limit: everything, no token.
    let all = cms.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&all), ["cm-0", "cm-1", "cm-2", "cm-4", "cm-9"]);
    assert!(all.metadata.continue_.is_none());

    // Once the snapshot has been compacted away: 410 Expired, as etcd's compaction makes it.
    let page = cms.list(&ListParams::default().limit(1)).await.unwrap();
    for i in 0..8 {
        cms.create(&PostParams::default(), &cm(&format!("later-{i}"), &[]))
            .await
            .unwrap();
    }
    let expired = cms
        .list(
            &ListParams::default()
                .limit(1)
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap_err();
    assert_eq!(api_err(expired), (410, "Expired".to_string()));
    let garbage = cms
        .list(&ListParams::default().limit(1).continue_token("not-a-token"))
        .await
        .unwrap_err();
    assert_eq!(api_err(garbage), (400, "BadRequest".to_string()));
    s.shutdown().await;
}

/// kube-runtime's watcher reads its initial list in pages; with small pages it still sees
/// every object exactly once.
#[tokio::test]
async fn watcher_pages_through_its_initial_list() {
    let s = standin().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(s.client());
    for i in 0..7 {
        cms.create(&PostParams::default(), &cm(&format!("paged-{i}"), &[]))
            .await
            .unwrap();
    }
    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = reflector(
        writer,
        watcher(cms.clone(), watcher::Config::default().page_size(2)),
    )
    .applied_objects();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while stream.try_next().await.is_ok() {}
    });
    reader.wait_until_ready().await.unwrap();
    let mut seen: Vec<String> = reader.state().iter().map(|c| c.name_any()).collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..7).map(|i| format!("paged-{i}")).collect::<Vec<_>>()
    );
    let pages = s
        .stats()
        .requests
        .get(&(Verb::List, "configmaps".to_string()))
        .copied()
        .unwrap_or(0);
    assert!(
        pages >= 4,
        "7 objects in pages of 2 take 4 lists, saw {pages}"
    );
    task.abort();
    s.shutdown().await;
}
