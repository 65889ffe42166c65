//! The object store: every object of every resource, the global resourceVersion counter, and a
//! bounded history of changes that watches replay from. All writes go through [`State::commit`],
//! which also publishes the change to live watchers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::cel;
use super::convert;
use super::error::ApiError;
use super::patch;
use super::resources::{self, ResourceInfo};
use super::schema;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One committed write, as watches see it. Objects are shared, never copied per watcher.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub storage: String,
    pub kind: ChangeKind,
    pub object: Arc<Value>,
    /// The object before this change (for watches with selectors: an object that stops
    /// matching is a DELETED for them).
    pub previous: Option<Arc<Value>>,
}

/// `(namespace or "", name)`.
pub type ObjectKey = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    /// Strategic merge patch, treated as a merge patch (see `patch` module docs).
    Strategic,
    Apply {
        force: bool,
    },
}

/// What a DELETE did.
#[derive(Debug)]
pub enum Deleted {
    /// The object has finalizers: it got a `deletionTimestamp` and stays until they are gone.
    Pending(Arc<Value>),
    /// The object is gone.
    Removed(Arc<Value>),
}

pub struct State {
    rv: u64,
    resources: BTreeMap<String, Arc<ResourceInfo>>,
    objects: HashMap<String, BTreeMap<ObjectKey, Arc<Value>>>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Whether CEL validation rules are checked (CRDs) and evaluated (objects).
    validation_rules: bool,
    /// The newest rv whose change has been dropped from `history`: watches must start after it.
    compacted: u64,
    tx: broadcast::Sender<Arc<Change>>,
}

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| jiff::Timestamp::now().to_string())
}

/// `(namespace or "", name)` of a stored object.
pub fn object_key(obj: &Value) -> ObjectKey {
    (
        meta_str(obj, "namespace").unwrap_or_default().to_string(),
        meta_str(obj, "name").unwrap_or_default().to_string(),
    )
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn finalizers_empty(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
}

/// The parts of an object whose change bumps `metadata.generation`: everything except
/// `metadata`, and except `status` when status is a subresource.
fn generation_relevant(obj: &Value, status_subresource: bool) -> Map<String, Value> {
    let mut m = obj.as_object().cloned().unwrap_or_default();
    for k in ["metadata", "apiVersion", "kind"] {
        m.remove(k);
    }
    if status_subresource {
        m.remove("status");
    }
    m
}

/// Secrets: `stringData` is a write-only convenience merged into base64 `data`.
fn fold_string_data(obj: &mut Value) {
    let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    if !obj.get("data").is_some_and(Value::is_object) {
        obj["data"] = json!({});
    }
    for (k, v) in string_data {
        let text = v
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        obj["data"][k] = Value::String(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

impl State {
    pub fn with_validation_rules(mut self, on: bool) -> Self {
        self.validation_rules = on;
        self
    }

    pub fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let mut s = Self {
            rv: 0,
            resources: BTreeMap::new(),
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            validation_rules: true,
            compacted: 0,
            tx,
        };
        for info in resources::builtins() {
            s.resources.insert(info.key(), Arc::new(info));
        }
        if let Some(ns) = s.lookup("", "v1", "namespaces") {
            for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                // Cannot fail: the names are valid and the store is empty.
                let _ = s.create(&ns, None, json!({"metadata": {"name": name}}), false);
            }
        }
        s
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.resources
            .get(&resources::resource_key(group, plural))
            .filter(|r| r.serves(version))
            .cloned()
    }

    pub fn resources(&self) -> impl Iterator<Item = &Arc<ResourceInfo>> {
        self.resources.values()
    }

    /// Changes after `rv`, or `Err` when some of them have been compacted away.
    pub fn changes_since(&self, rv: u64) -> Result<Vec<Arc<Change>>, ApiError> {
        if rv < self.compacted {
            return Err(ApiError::gone(format!(
                "too old resource version: {rv} ({})",
                self.compacted + 1
            )));
        }
        Ok(self.history.iter().filter(|c| c.rv > rv).cloned().collect())
    }

    fn key(info: &ResourceInfo, ns: Option<&str>, name: &str) -> ObjectKey {
        let ns = if info.namespaced {
            ns.unwrap_or("")
        } else {
            ""
        };
        (ns.to_string(), name.to_string())
    }

    pub fn get(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        self.objects
            .get(&info.storage)
            .and_then(|m| m.get(&Self::key(info, ns, name)))
            .cloned()
            .ok_or_else(|| ApiError::not_found(info, name))
    }

    /// All objects of a resource, in one namespace or (None) all of them, in name order.
    pub fn list(&self, info: &ResourceInfo, ns: Option<&str>) -> Vec<Arc<Value>> {
        let Some(m) = self.objects.get(&info.storage) else {
            return Vec::new();
        };
        match ns.filter(|_| info.namespaced) {
            Some(ns) => m
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v.clone())
                .collect(),
            None => m.values().cloned().collect(),
        }
    }

    /// All objects of a resource (in `ns`, or all namespaces) as they were at resourceVersion
    /// `snapshot`, in key order: the consistent view a paged list continues from. The changes
    /// since `snapshot` are undone from the history; `None` when it no longer reaches back that
    /// far (the server's etcd has compacted it: the continue token has expired).
    pub fn list_at(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        snapshot: u64,
    ) -> Option<Vec<Arc<Value>>> {
        if snapshot >= self.rv {
            return Some(self.list(info, ns));
        }
        if snapshot < self.compacted {
            return None;
        }
        let ns = ns.filter(|_| info.namespaced);
        let mut view: BTreeMap<ObjectKey, Arc<Value>> = self
            .list(info, ns)
            .into_iter()
            .map(|o| (object_key(&o), o))
            .collect();
        for change in self.history.iter().rev() {
            if change.rv <= snapshot {
                break;
            }
            if change.storage != info.storage {
                continue;
            }
            let key = object_key(&change.object);
            if ns.is_some_and(|ns| ns != key.0) {
                continue;
            }
            match &change.previous {
                Some(before) => view.insert(key, before.clone()),
                None => view.remove(&key),
            };
        }
        Some(view.into_values().collect())
    }

    /// Stores (or, with `None`, removes) an object under a new resourceVersion and publishes the
    /// change.
    fn commit(&mut self, info: &ResourceInfo, key: ObjectKey, new: Option<Value>) -> Arc<Value> {
        self.rv += 1;
        let rv = self.rv;
        let store = self.objects.entry(info.storage.clone()).or_default();
        let previous = store.get(&key).cloned();
        let (kind, object) = match new {
            Some(mut obj) => {
                obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
                let obj = Arc::new(obj);
                store.insert(key, obj.clone());
                let kind = if previous.is_some() {
                    ChangeKind::Modified
                } else {
                    ChangeKind::Added
                };
                (kind, obj)
            }
            None => {
                store.remove(&key);
                // Watchers see the final state with the deletion's resourceVersion.
                let mut obj = previous.as_deref().cloned().unwrap_or(Value::Null);
                obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
                (ChangeKind::Deleted, Arc::new(obj))
            }
        };
        let change = Arc::new(Change {
            rv,
            storage: info.storage.clone(),
            kind,
            object: object.clone(),
            previous,
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(change);
        object
    }

    fn check_namespace(&self, info: &ResourceInfo, ns: Option<&str>) -> Result<(), ApiError> {
        if !info.namespaced {
            return Ok(());
        }
        let ns = ns.ok_or_else(|| ApiError::bad_request("a namespace is required"))?;
        let ns_info = self
            .lookup("", "v1", "namespaces")
            .ok_or_else(ApiError::path_not_found)?;
        self.get(&ns_info, None, ns).map(|_| ())
    }

    /// Validation and pruning against a CRD schema, then the per-kind normalisations.
    /// `old` is the stored object on an update, for transition rules (`oldSelf`).
    fn admit(
        &self,
        info: &ResourceInfo,
        obj: &mut Value,
        old: Option<&Value>,
        name: &str,
    ) -> Result<(), ApiError> {
        let errors = metadata_errors(obj);
        if !errors.is_empty() {
            return Err(ApiError::invalid(info, name, &errors));
        }
        drop_empty_metadata(obj);
        if info.plural == "secrets" && info.group.is_empty() {
            fold_string_data(obj);
        }
        if info.key() == "apiextensions.k8s.io/customresourcedefinitions" {
            validate_crd(info, obj, name, self.validation_rules)?;
        }
        if let Some(schema) = info.schema(&info.versions[0]) {
            let mut errors = schema::validate_and_prune(schema, obj);
            // As on the server, CEL rules run unless a type or enum error makes them moot.
            let blocking = errors
                .iter()
                .any(|e| e.contains("must be of type") || e.contains("Unsupported value"));
            if !blocking && self.validation_rules {
                errors.extend(cel::validate_rules(schema, obj, old));
            }
            if !errors.is_empty() {
                return Err(ApiError::invalid(info, name, &errors));
            }
        }
        Ok(())
    }

    pub fn create(
        &mut self,
        info: &Arc<ResourceInfo>,
        ns: Option<&str>,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        let body_ns = meta_str(&obj, "namespace").filter(|n| !n.is_empty());
        if let (Some(url_ns), Some(body_ns)) = (ns, body_ns)
            && info.namespaced
            && url_ns != body_ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", random_suffix()),
            _ => {
                return Err(ApiError::invalid(
                    info,
                    "",
                    &["metadata.name: Required value: name or generateName is required".into()],
                ));
            }
        };
        if let Err(why) = valid_name(&name) {
            return Err(ApiError::invalid(
                info,
                &name,
                &[format!("metadata.name: Invalid value: \"{name}\": {why}")],
            ));
        }
        self.check_namespace(info, ns)?;
        let key = Self::key(info, ns, &name);
        if self
            .objects
            .get(&info.storage)
            .is_some_and(|m| m.contains_key(&key))
        {
            return Err(ApiError::already_exists(info, &name));
        }
        let version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .and_then(|av| av.rsplit('/').next())
            .filter(|v| info.serves(v))
            .unwrap_or(&info.versions[0])
            .to_string();
        obj["apiVersion"] = Value::String(info.api_version(&version));
        obj["kind"] = Value::String(info.kind.clone());
        if info.status_subresource {
            // The status subresource owns status; a create cannot set it.
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        self.admit(info, &mut obj, None, &name)?;
        let meta = &mut obj["metadata"];
        meta["name"] = Value::String(name.clone());
        if info.namespaced {
            meta["namespace"] = Value::String(key.0.clone());
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        meta["uid"] = Value::String(uuid::Uuid::new_v4().to_string());
        meta["creationTimestamp"] = Value::String(now_rfc3339());
        meta["generation"] = json!(1);
        if let Some(m) = meta.as_object_mut() {
            for k in [
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
            ] {
                m.remove(k);
            }
        }
        self.defaults_on_create(info, &mut obj);
        let obj = convert::store(info, obj);
        if dry_run {
            return Ok(Arc::new(obj));
        }
        let stored = self.commit(info, key, Some(obj));
        self.after_write(info, &stored);
        Ok(stored)
    }

    fn defaults_on_create(&self, info: &ResourceInfo, obj: &mut Value) {
        match (info.group.as_str(), info.plural.as_str()) {
            ("", "secrets") if obj.get("type").is_none() => obj["type"] = json!("Opaque"),
            ("", "namespaces") => {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
                obj["metadata"]["labels"]["kubernetes.io/metadata.name"] =
                    obj["metadata"]["name"].clone();
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                obj["status"] = resources::crd_status(obj, &now_rfc3339());
            }
            _ => {}
        }
    }

    /// Side effects of a committed write: CRDs (un)register their kind.
    fn after_write(&mut self, info: &ResourceInfo, stored: &Value) {
        if info.key() != "apiextensions.k8s.io/customresourcedefinitions" {
            return;
        }
        if let Some(custom) = resources::from_crd(stored) {
            self.resources.insert(custom.key(), Arc::new(custom));
        }
    }

    /// Replaces an object with `new` (a PUT, or the result of a patch). With `status`, only
    /// `.status` is taken from `new`; without it and with a status subresource, `.status` is
    /// kept from the live object. Server-owned metadata is always kept.
    pub fn update(
        &mut self,
        info: &Arc<ResourceInfo>,
        ns: Option<&str>,
        name: &str,
        mut new: Value,
        status: bool,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        if !new.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        if let Some(body_name) = meta_str(&new, "name")
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let live = self.get(info, ns, name)?;
        // Writes happen in the served form; events are converted back below.
        let live_served = convert::serve(info, &info.versions[0], &live).into_owned();
        check_preconditions(info, name, &new, &live_served)?;
        keep_server_owned(info, &mut new, &live_served, status);
        self.admit(info, &mut new, Some(&live_served), name)?;
        check_no_new_finalizers(info, name, &new, &live_served)?;
        if generation_relevant(&new, info.status_subresource)
            != generation_relevant(&live_served, info.status_subresource)
        {
            let g = live_served
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            new["metadata"]["generation"] = json!(g + 1);
        }
        if new == live_served {
            // A no-op write keeps the resourceVersion and wakes no watcher, as on a real server.
            return Ok(live);
        }
        let key = Self::key(info, ns, name);
        let being_deleted = meta_str(&new, "deletionTimestamp").is_some();
        let new = convert::store(info, new);
        if dry_run {
            return Ok(Arc::new(new));
        }
        if being_deleted && finalizers_empty(&new) {
            let gone = self.commit(info, key, None);
            self.after_remove(info, &gone);
            return Ok(gone);
        }
        let stored = self.commit(info, key, Some(new));
        self.after_write(info, &stored);
        Ok(stored)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        info: &Arc<ResourceInfo>,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: &Value,
        status: bool,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let live = match self.get(info, ns, name) {
            Ok(live) => live,
            Err(_) if matches!(kind, PatchKind::Apply { .. }) && !status && body.is_object() => {
                let mut obj = body.clone();
                if !obj.get("metadata").is_some_and(Value::is_object) {
                    obj["metadata"] = json!({});
                }
                if meta_str(&obj, "name").is_none() {
                    obj["metadata"]["name"] = Value::String(name.to_string());
                }
                return self.create(info, ns, obj, dry_run);
            }
            Err(e) => return Err(e),
        };
        let mut doc = convert::serve(info, &info.versions[0], &live).into_owned();
        match kind {
            PatchKind::Merge | PatchKind::Strategic => patch::merge_patch(&mut doc, body),
            PatchKind::Json => patch::json_patch(&mut doc, body)
                .map_err(|e| ApiError::invalid(info, name, &[format!("JSON patch: {e}")]))?,
            PatchKind::Apply { .. } => {
                if let Some(applied_name) = meta_str(body, "name")
                    && applied_name != name
                {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({applied_name}) does not match the name on the URL ({name})"
                    )));
                }
                let schema = apply_schema(info);
                patch::apply(&mut doc, body, Some(&schema));
            }
        }
        if !doc.get("metadata").is_some_and(Value::is_object) {
            return Err(ApiError::invalid(
                info,
                name,
                &["the patched object must be an object with metadata".into()],
            ));
        }
        // A resourceVersion in the patch is a precondition; otherwise the live one carries over.
        if meta_str(body, "resourceVersion").is_none() {
            doc["metadata"]["resourceVersion"] = live_rv(&live);
        }
        self.update(info, ns, name, doc, status, dry_run)
    }

    /// DELETE. `preconditions` may carry `uid` and `resourceVersion` (DeleteOptions).
    pub fn delete(
        &mut self,
        info: &Arc<ResourceInfo>,
        ns: Option<&str>,
        name: &str,
        preconditions: Option<&Value>,
        cascade: bool,
        dry_run: bool,
    ) -> Result<Deleted, ApiError> {
        let live = self.get(info, ns, name)?;
        if let Some(p) = preconditions {
            for field in ["uid", "resourceVersion"] {
                if let Some(want) = p.get(field).and_then(Value::as_str)
                    && meta_str(&live, field) != Some(want)
                {
                    return Err(ApiError::conflict(info, name));
                }
            }
        }
        let key = Self::key(info, ns, name);
        if !finalizers_empty(&live) {
            if meta_str(&live, "deletionTimestamp").is_some() || dry_run {
                return Ok(Deleted::Pending(live));
            }
            let mut marked = (*live).clone();
            marked["metadata"]["deletionTimestamp"] = Value::String(now_rfc3339());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            return Ok(Deleted::Pending(self.commit(info, key, Some(marked))));
        }
        if dry_run {
            return Ok(Deleted::Removed(live));
        }
        let gone = self.commit(info, key, None);
        if cascade {
            self.after_remove(info, &gone);
        }
        Ok(Deleted::Removed(gone))
    }

    /// What a real cluster does in the background once an object is gone: a CRD takes its
    /// objects with it, a namespace its contents, and the garbage collector deletes objects whose
    /// every owner (`ownerReferences`) is gone.
    fn after_remove(&mut self, info: &ResourceInfo, gone: &Value) {
        let mut doomed: Vec<(Arc<ResourceInfo>, Option<String>, String)> = Vec::new();
        let name = meta_str(gone, "name").unwrap_or_default().to_string();
        if info.key() == "apiextensions.k8s.io/customresourcedefinitions" {
            if let Some(custom) = resources::from_crd(gone) {
                let keys: Vec<ObjectKey> = self
                    .objects
                    .get(&custom.storage)
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                for key in keys {
                    self.commit(&custom, key, None);
                }
                self.resources.remove(&custom.key());
            }
        } else if info.plural == "namespaces" && info.group.is_empty() {
            for r in self.resources.values().filter(|r| r.namespaced) {
                for obj in self.list(r, Some(&name)) {
                    if let Some(n) = meta_str(&obj, "name") {
                        doomed.push((r.clone(), Some(name.clone()), n.to_string()));
                    }
                }
            }
        }
        if let Some(uid) = meta_str(gone, "uid") {
            doomed.extend(self.orphans_of(uid));
        }
        for (r, ns, n) in doomed {
            // Already gone or pending finalizers is fine: deletion is best effort, as in GC.
            let _ = self.delete(&r, ns.as_deref(), &n, None, true, false);
        }
    }

    /// Objects whose every owner reference points at `uid` or at an object that no longer exists.
    fn orphans_of(&self, uid: &str) -> Vec<(Arc<ResourceInfo>, Option<String>, String)> {
        let mut live_uids = std::collections::HashSet::new();
        for objs in self.objects.values() {
            for o in objs.values() {
                if let Some(u) = meta_str(o, "uid") {
                    live_uids.insert(u);
                }
            }
        }
        let mut out = Vec::new();
        // Core and events.k8s.io Events share a store; visit each store once.
        let mut seen_storage = std::collections::HashSet::new();
        for r in self.resources.values() {
            if !seen_storage.insert(r.storage.clone()) {
                continue;
            }
            for obj in self.list(r, None) {
                let Some(owners) = obj
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                else {
                    continue;
                };
                let owned_by_gone = owners
                    .iter()
                    .any(|o| o.get("uid").and_then(Value::as_str) == Some(uid));
                let all_gone = owners.iter().all(|o| {
                    o.get("uid")
                        .and_then(Value::as_str)
                        .is_none_or(|u| !live_uids.contains(u))
                });
                if owned_by_gone
                    && all_gone
                    && let Some(n) = meta_str(&obj, "name")
                {
                    out.push((
                        r.clone(),
                        meta_str(&obj, "namespace").map(str::to_string),
                        n.to_string(),
                    ));
                }
            }
        }
        out
    }
}

/// The `resourceVersion` a write carries must be the live one; custom resources also refuse
/// writes that carry none (patches always carry the live one).
fn check_preconditions(
    info: &ResourceInfo,
    name: &str,
    new: &Value,
    live: &Value,
) -> Result<(), ApiError> {
    match meta_str(new, "resourceVersion").filter(|rv| !rv.is_empty()) {
        None if info.custom => Err(ApiError::invalid(
            info,
            name,
            &[
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
                    .into(),
            ],
        )),
        Some(rv) if meta_str(live, "resourceVersion") != Some(rv) => {
            Err(ApiError::conflict(info, name))
        }
        _ => Ok(()),
    }
}

/// What a client cannot change with this write: with a status subresource, `.status` through
/// the main endpoint and everything but `.status` through `/status`; always the server-owned
/// metadata and the type; a Namespace's `spec`.
fn keep_server_owned(info: &ResourceInfo, new: &mut Value, live: &Value, status: bool) {
    let set_or_remove = |target: &mut Value, key: &str, value: Option<&Value>| match value {
        Some(v) => target[key] = v.clone(),
        None => {
            if let Some(o) = target.as_object_mut() {
                o.remove(key);
            }
        }
    };
    if status {
        let mut merged = live.clone();
        set_or_remove(&mut merged, "status", new.get("status"));
        *new = merged;
    } else if info.status_subresource {
        set_or_remove(new, "status", live.get("status"));
    }
    if !new.get("metadata").is_some_and(Value::is_object) {
        new["metadata"] = json!({});
    }
    let live_meta = &live["metadata"];
    for k in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "resourceVersion",
    ] {
        set_or_remove(&mut new["metadata"], k, live_meta.get(k));
    }
    if let Some(m) = new["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    new["apiVersion"] = live["apiVersion"].clone();
    new["kind"] = Value::String(info.kind.clone());
    if info.plural == "namespaces" && info.group.is_empty() && !status {
        set_or_remove(new, "spec", live.get("spec"));
    }
}

/// Once an object is being deleted, finalizers may only go away.
fn check_no_new_finalizers(
    info: &ResourceInfo,
    name: &str,
    new: &Value,
    live: &Value,
) -> Result<(), ApiError> {
    if meta_str(live, "deletionTimestamp").is_none() {
        return Ok(());
    }
    let had = |f: &Value| {
        live.pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| a.contains(f))
    };
    match new
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .and_then(|fs| fs.iter().find(|f| !had(f)))
    {
        Some(added) => Err(ApiError::forbidden(
            info,
            name,
            &format!(
                "no new finalizers can be added if the object is being deleted, found new finalizers [{added}]"
            ),
        )),
        None => Ok(()),
    }
}

/// ObjectMeta's list and map fields are `omitempty` on a real server: an emptied finalizer list
/// disappears rather than staying as `[]` (kube's finalizer helper tests for its absence).
fn drop_empty_metadata(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, v| {
            let listish = matches!(
                k.as_str(),
                "labels" | "annotations" | "finalizers" | "ownerReferences" | "managedFields"
            );
            let empty = match v {
                Value::Null => true,
                Value::Array(a) => a.is_empty(),
                Value::Object(m) => m.is_empty(),
                _ => false,
            };
            !(listish && empty)
        });
    }
}

/// RFC 1123 subdomain, the rule most kinds' names follow.
fn valid_name(name: &str) -> Result<(), &'static str> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.len() > 253 {
        return Err("must be no more than 253 characters");
    }
    if !name.chars().all(ok_char) || !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Err(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        );
    }
    Ok(())
}

/// Shapes the rest of the store relies on (labels and annotations are string maps, finalizers
/// a string list), checked before anything indexes into them.
fn metadata_errors(obj: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let meta = &obj["metadata"];
    for field in ["labels", "annotations"] {
        match meta.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) if m.values().all(Value::is_string) => {}
            Some(_) => errors.push(format!(
                "metadata.{field}: Invalid value: must be a map of string to string"
            )),
        }
    }
    match meta.get("finalizers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {}
        Some(_) => {
            errors.push("metadata.finalizers: Invalid value: must be a list of strings".into())
        }
    }
    errors
}

fn live_rv(live: &Value) -> Value {
    live.pointer("/metadata/resourceVersion")
        .cloned()
        .unwrap_or(Value::Null)
}

/// The schema server-side apply merges with: the CRD's, plus the list semantics of
/// `metadata` every kind shares (owner references keyed by uid).
fn apply_schema(info: &ResourceInfo) -> Value {
    let mut schema = info
        .schema(&info.versions[0])
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}));
    schema["properties"]["metadata"] = json!({
        "type": "object",
        "properties": {
            "ownerReferences": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["uid"],
            }
        }
    });
    schema
}

/// A CRD's name must be `<plural>.<group>`, as the real server requires.
fn validate_crd(
    info: &ResourceInfo,
    crd: &Value,
    name: &str,
    validation_rules: bool,
) -> Result<(), ApiError> {
    let custom = resources::from_crd(crd).ok_or_else(|| {
        ApiError::invalid(
            info,
            name,
            &["spec: Required value: group, names.plural, names.kind and a served version".into()],
        )
    })?;
    let want = format!("{}.{}", custom.plural, custom.group);
    if name != want {
        return Err(ApiError::invalid(
            info,
            name,
            &[format!(
                "metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
            )],
        ));
    }
    // CEL rules must compile and stay within the cost budget, with every input bounded.
    let errors = if validation_rules {
        cel::crd_rule_errors(crd)
    } else {
        Vec::new()
    };
    if !errors.is_empty() {
        return Err(ApiError::invalid(info, name, &errors));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rfc1123_subdomains() {
        for ok in ["a", "web-1", "x.y.z", "subject.18a2b"] {
            assert!(valid_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Upper",
            "-lead",
            "trail-",
            "under_score",
            &"a".repeat(254),
        ] {
            assert!(valid_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generation_ignores_metadata_and_subresource_status() {
        let a = json!({"metadata": {"name": "a"}, "spec": {"x": 1}, "status": {"y": 1}});
        let b = json!({"metadata": {"name": "a", "labels": {"l": "v"}}, "spec": {"x": 1},
                       "status": {"y": 2}});
        assert_eq!(generation_relevant(&a, true), generation_relevant(&b, true));
        assert_ne!(
            generation_relevant(&a, false),
            generation_relevant(&b, false)
        );
    }

    #[test]
    fn history_is_bounded_and_old_versions_expire() {
        let mut s = State::new(3);
        let cms = s.lookup("", "v1", "configmaps").unwrap();
        let start = s.resource_version();
        for i in 0..5 {
            s.create(
                &cms,
                Some("default"),
                json!({"metadata": {"name": format!("c{i}")}}),
                false,
            )
            .unwrap();
        }
        assert_eq!(s.changes_since(start + 2).unwrap().len(), 3);
        assert_eq!(s.changes_since(start + 2).unwrap()[0].rv, start + 3);
        assert_eq!(s.changes_since(start + 1).unwrap_err().code, 410);
        assert!(s.changes_since(s.resource_version()).unwrap().is_empty());
    }

    fn info(plural: &str) -> ResourceInfo {
        resources::builtins()
            .into_iter()
            .find(|r| r.plural == plural)
            .unwrap()
    }

    #[test]
    fn writes_keep_what_the_server_owns() {
        let live = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "n", "uid": "u", "resourceVersion": "5", "generation": 1},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        // Main endpoint: status and server metadata stay; labels may change.
        let mut main = json!({"metadata": {"name": "n", "uid": "forged", "labels": {"a": "b"}},
                              "spec": {}, "status": {"phase": "Gone"}});
        keep_server_owned(&info("namespaces"), &mut main, &live, false);
        assert_eq!(main["metadata"]["uid"], "u");
        assert_eq!(main["metadata"]["labels"]["a"], "b");
        assert_eq!(main["status"]["phase"], "Active");
        assert_eq!(main["spec"], live["spec"]);
        // Status endpoint: only status changes.
        let mut st =
            json!({"metadata": {"labels": {"a": "b"}}, "status": {"phase": "Terminating"}});
        keep_server_owned(&info("namespaces"), &mut st, &live, true);
        assert_eq!(st["status"]["phase"], "Terminating");
        assert!(st["metadata"].get("labels").is_none());
        assert_eq!(st["metadata"]["resourceVersion"], "5");
    }

    #[test]
    fn preconditions_compare_resource_versions() {
        let live = json!({"metadata": {"resourceVersion": "5"}});
        let with = |rv: Option<&str>| match rv {
            Some(rv) => json!({"metadata": {"resourceVersion": rv}}),
            None => json!({"metadata": {}}),
        };
        let cms = info("configmaps");
        assert!(check_preconditions(&cms, "x", &with(Some("5")), &live).is_ok());
        assert!(check_preconditions(&cms, "x", &with(None), &live).is_ok());
        assert_eq!(
            check_preconditions(&cms, "x", &with(Some("4")), &live)
                .unwrap_err()
                .code,
            409
        );
        let mut custom = cms.clone();
        custom.custom = true;
        assert_eq!(
            check_preconditions(&custom, "x", &with(None), &live)
                .unwrap_err()
                .code,
            422
        );
    }

    #[test]
    fn emptied_metadata_lists_disappear() {
        let mut o = json!({"metadata": {"name": "a", "finalizers": [], "labels": {},
                                        "annotations": {"k": "v"}}, "spec": {"l": []}});
        drop_empty_metadata(&mut o);
        assert_eq!(
            o,
            json!({"metadata": {"name": "a", "annotations": {"k": "v"}},
                             "spec": {"l": []}})
        );
    }

    #[test]
    fn string_data_folds_into_data() {
        let mut o = json!({"data": {"a": "YQ=="}, "stringData": {"b": "bee"}});
        fold_string_data(&mut o);
        assert_eq!(o, json!({"data": {"a": "YQ==", "b": "YmVl"}}));
    }
}
