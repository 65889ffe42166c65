//! Watching a chosen set of namespaces instead of the whole cluster (`--namespaces`).
//!
//! One watcher per namespace, merged into a single event stream that a reflector can consume. A
//! reflector replaces its whole store on `InitDone`, so the watchers' own `Init`..`InitDone`
//! sequences cannot simply be interleaved: one namespace's relist would wipe the others. The merge
//! therefore reports one initial listing once every namespace has listed, and turns any later
//! relist of one namespace into `Apply`/`Delete` events for that namespace only.

use std::collections::BTreeMap;
use std::fmt::Debug;

use futures::stream::{self, BoxStream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// Where the controllers look: everywhere (empty) or these namespaces.
pub fn parse_namespaces(list: &str) -> Vec<String> {
    let mut namespaces: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    namespaces.sort();
    namespaces.dedup();
    namespaces
}

type WatchResult<K> = Result<Event<K>, watcher::Error>;

/// A watcher (with kube's default backoff) over all namespaces when `namespaces` is empty, else
/// over each of them, merged.
pub fn watch_scoped<K>(
    client: &Client,
    namespaces: &[String],
    config: watcher::Config,
) -> BoxStream<'static, WatchResult<K>>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    if namespaces.is_empty() {
        return watch(Api::<K>::all(client.clone()), config)
            .default_backoff()
            .boxed();
    }
    let sources: Vec<_> = namespaces
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            watch(Api::<K>::namespaced(client.clone(), ns), config.clone())
                .default_backoff()
                .map(move |event| (i, event))
                .boxed()
        })
        .collect();
    let merge = Merge::new(sources.len());
    stream::select_all(sources)
        .scan(merge, |merge, (i, event)| {
            let out: Vec<WatchResult<K>> = match event {
                Ok(event) => merge.step(i, event).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::future::ready(Some(stream::iter(out)))
        })
        .flatten()
        .boxed()
}

/// The merge's state: what each source (namespace) currently holds, by name.
struct Source<K> {
    objects: BTreeMap<String, K>,
    relisting: Option<BTreeMap<String, K>>,
    listed: bool,
}

pub struct Merge<K> {
    sources: Vec<Source<K>>,
    initial_sent: bool,
}

impl<K: Resource + Clone> Merge<K> {
    pub fn new(sources: usize) -> Self {
        Self {
            sources: (0..sources)
                .map(|_| Source {
                    objects: BTreeMap::new(),
                    relisting: None,
                    listed: false,
                })
                .collect(),
            initial_sent: false,
        }
    }

    /// The events to pass on for `event` from source `i`.
    pub fn step(&mut self, i: usize, event: Event<K>) -> Vec<Event<K>> {
        let initial_sent = self.initial_sent;
        let Some(source) = self.sources.get_mut(i) else {
            return vec![];
        };
        match event {
            Event::Init => {
                source.relisting = Some(BTreeMap::new());
                vec![]
            }
            Event::InitApply(obj) => {
                source
                    .relisting
                    .get_or_insert_with(BTreeMap::new)
                    .insert(obj.name_any(), obj);
                vec![]
            }
            Event::InitDone => {
                let listed = source.relisting.take().unwrap_or_default();
                let old = std::mem::replace(&mut source.objects, listed);
                source.listed = true;
                if initial_sent {
                    // A relist of this namespace: report the difference only.
                    let mut out: Vec<Event<K>> = old
                        .into_iter()
                        .filter(|(name, _)| !source.objects.contains_key(name))
                        .map(|(_, obj)| Event::Delete(obj))
                        .collect();
                    out.extend(source.objects.values().cloned().map(Event::Apply));
                    out
                } else if self.sources.iter().all(|s| s.listed) {
                    self.initial_sent = true;
                    let mut out = vec![Event::Init];
                    for s in &self.sources {
                        out.extend(s.objects.values().cloned().map(Event::InitApply));
                    }
                    out.push(Event::InitDone);
                    out
                } else {
                    vec![]
                }
            }
            Event::Apply(obj) => {
                source.objects.insert(obj.name_any(), obj.clone());
                if initial_sent {
                    vec![Event::Apply(obj)]
                } else {
                    vec![]
                }
            }
            Event::Delete(obj) => {
                source.objects.remove(&obj.name_any());
                if initial_sent {
                    vec![Event::Delete(obj)]
                } else {
                    vec![]
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn describe(events: &[Event<ConfigMap>]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Init => "init".to_string(),
                Event::InitDone => "done".to_string(),
                Event::InitApply(o) => format!("list {}/{}", o.namespace().unwrap(), o.name_any()),
                Event::Apply(o) => format!("apply {}/{}", o.namespace().unwrap(), o.name_any()),
                Event::Delete(o) => format!("delete {}/{}", o.namespace().unwrap(), o.name_any()),
            })
            .collect()
    }

    #[test]
    fn parse_namespaces_trims_and_dedups() {
        assert_eq!(parse_namespaces(" b, a,,b "), vec!["a", "b"]);
        assert!(parse_namespaces("").is_empty());
    }

    #[test]
    fn one_initial_listing_once_every_namespace_has_listed() {
        let mut m = Merge::new(2);
        assert!(m.step(0, Event::Init).is_empty());
        assert!(m.step(0, Event::InitApply(cm("a", "x"))).is_empty());
        assert!(m.step(0, Event::InitDone).is_empty());
        // A change in a listed namespace before the other has listed is held back, not lost.
        assert!(m.step(0, Event::Apply(cm("a", "y"))).is_empty());
        assert!(m.step(1, Event::Init).is_empty());
        assert!(m.step(1, Event::InitApply(cm("b", "z"))).is_empty());
        assert_eq!(
            describe(&m.step(1, Event::InitDone)),
            ["init", "list a/x", "list a/y", "list b/z", "done"]
        );
        assert_eq!(
            describe(&m.step(1, Event::Delete(cm("b", "z")))),
            ["delete b/z"]
        );
    }

    #[test]
    fn a_later_relist_becomes_applies_and_deletes_for_that_namespace_only() {
        let mut m = Merge::new(2);
        for (i, ns) in [(0, "a"), (1, "b")] {
            m.step(i, Event::Init);
            m.step(i, Event::InitApply(cm(ns, "keep")));
            m.step(i, Event::InitApply(cm(ns, "gone")));
            m.step(i, Event::InitDone);
        }
        assert!(m.step(0, Event::Init).is_empty());
        assert!(m.step(0, Event::InitApply(cm("a", "keep"))).is_empty());
        assert!(m.step(0, Event::InitApply(cm("a", "new"))).is_empty());
        assert_eq!(
            describe(&m.step(0, Event::InitDone)),
            ["delete a/gone", "apply a/keep", "apply a/new"]
        );
    }
}
