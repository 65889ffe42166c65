//! HTTP routing: URL → resource, verb → store operation, store result → response.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State as AxumState};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::{RwLock, broadcast, mpsc};

use super::convert;
use super::discovery;
use super::error::ApiError;
use super::protobuf;
use super::resources::ResourceInfo;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{self, Change, ChangeKind, Deleted, PatchKind, State};
use super::table;
use super::{Stats, Verb};

pub struct App {
    pub state: RwLock<State>,
    pub stats: Mutex<Stats>,
    /// (User-Agent, verb, resource[/subresource]) of every request: which client made which
    /// kind of call, e.g. to check RBAC against what the operator really does.
    pub audit: Mutex<std::collections::BTreeSet<(String, Verb, String)>>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub stop: tokio::sync::watch::Sender<bool>,
    pub bookmark_interval: Duration,
    pub status_write_delay: Duration,
    /// `plural/name` → the message an admission webhook denies writes to it with.
    pub denied_writes: Mutex<std::collections::HashMap<String, String>>,
}

impl App {
    /// A write to `name` refused as an admission webhook (or a quota) would refuse it.
    fn admission(&self, req: &Request, name: &str) -> Result<(), ApiError> {
        let key = format!("{}/{name}", req.target.plural);
        let denied = self
            .denied_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        match denied {
            Some(message) => Err(ApiError::forbidden(
                &req.info,
                name,
                &format!("admission webhook \"policy.example.com\" denied the request: {message}"),
            )),
            None => Ok(()),
        }
    }
}

/// What a request's path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Parses `/api/v1/...` and `/apis/{group}/{version}/...` resource paths.
pub fn parse_target(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, plural, tail) = match rest {
        // `/namespaces/{ns}/status` is the Namespace's own subresource, not a resource "status".
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
            (Some(*ns), *plural, tail)
        }
        [plural, tail @ ..] => (None, *plural, tail),
        [] => return None,
    };
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some(*name), None),
        [name, sub] => (Some(*name), Some(*sub)),
        _ => return None,
    };
    if plural.is_empty() || name.is_some_and(str::is_empty) {
        return None;
    }
    Some(Target {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        subresource: subresource.map(str::to_string),
    })
}

/// How the client wants objects represented (from `Accept`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr {
    Full,
    /// `as=PartialObjectMetadata[List]`: only apiVersion, kind and metadata.
    Metadata,
    /// `as=Table`: kubectl's server-side printing.
    Table,
}

fn repr(headers: &HeaderMap) -> Repr {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The first acceptable media type wins, as content negotiation goes.
    for media in accept.split(',') {
        let media = media.replace(' ', "");
        if media.contains("as=Table") {
            return Repr::Table;
        }
        if media.contains("as=PartialObjectMetadata") {
            return Repr::Metadata;
        }
        if media.starts_with("application/json") || media.starts_with("*/*") {
            return Repr::Full;
        }
    }
    Repr::Full
}

fn json_response(code: u16, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.code, &self.to_status())
    }
}

fn truthy(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true" || v == "1")
}

fn metadata_only(obj: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// The whole request pipeline, one function so every path is counted in the stats.
pub async fn handle(
    AxumState(app): AxumState<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let query: HashMap<String, String> = Query::try_from_uri(&uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    if method == Method::GET && discovery::is_discovery_path(path) {
        let resources: Vec<_> = app.state.read().await.resources().cloned().collect();
        if let Some(resp) = discovery::answer(&resources, path, &headers) {
            app.count(Verb::Discovery, "");
            return resp;
        }
    }
    let Some(target) = parse_target(path) else {
        return ApiError::path_not_found().into_response();
    };
    let info = {
        let state = app.state.read().await;
        state.lookup(&target.group, &target.version, &target.plural)
    };
    let Some(info) = info else {
        return ApiError::path_not_found().into_response();
    };
    if (target.namespace.is_some() && !info.namespaced)
        || (target.name.is_some() && info.namespaced && target.namespace.is_none())
        || (target.subresource.is_some()
            && !(target.subresource.as_deref() == Some("status") && info.status_subresource))
    {
        return ApiError::path_not_found().into_response();
    }
    let verb = match (&method, target.name.is_some()) {
        (&Method::GET, false) if truthy(&query, "watch") => Verb::Watch,
        (&Method::GET, false) => Verb::List,
        (&Method::GET, true) => Verb::Get,
        (&Method::POST, false) => Verb::Create,
        (&Method::PUT, true) => Verb::Update,
        (&Method::PATCH, true) => Verb::Patch,
        (&Method::DELETE, true) => Verb::Delete,
        (&Method::DELETE, false) => Verb::DeleteCollection,
        _ => {
            return ApiError::method_not_allowed(format!(
                "{method} is not supported on {}",
                uri.path()
            ))
            .into_response();
        }
    };
    app.count(verb, &info.group_resource());
    if let Ok(mut audit) = app.audit.lock() {
        let agent = headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let resource = match &target.subresource {
            Some(sub) => format!("{}/{sub}", info.group_resource()),
            None => info.group_resource(),
        };
        audit.insert((agent.to_string(), verb, resource));
    }
    let req = Request {
        info,
        target,
        query,
        repr: repr(&headers),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string(),
        body,
    };
    let result = match verb {
        Verb::Watch => return watch(app, req).await,
        Verb::List => list(&app, &req).await,
        Verb::Get => get(&app, &req).await,
        Verb::Create => create(&app, &req).await,
        Verb::Update => update(&app, &req).await,
        Verb::Patch => patch(&app, &req).await,
        Verb::Delete => delete(&app, &req).await,
        Verb::DeleteCollection => delete_collection(&app, &req).await,
        Verb::Discovery => Err(ApiError::path_not_found()),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

struct Request {
    info: Arc<ResourceInfo>,
    target: Target,
    query: HashMap<String, String>,
    repr: Repr,
    content_type: String,
    body: Bytes,
}

impl Request {
    fn ns(&self) -> Option<&str> {
        self.target.namespace.as_deref()
    }
    fn name(&self) -> &str {
        self.target.name.as_deref().unwrap_or_default()
    }
    fn is_status(&self) -> bool {
        self.target.subresource.as_deref() == Some("status")
    }
    fn dry_run(&self) -> bool {
        self.query.contains_key("dryRun")
    }
    fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let q = |k: &str| self.query.get(k).map(String::as_str).unwrap_or("");
        Ok((
            LabelSelector::parse(q("labelSelector")).map_err(ApiError::bad_request)?,
            FieldSelector::parse(q("fieldSelector")).map_err(ApiError::bad_request)?,
        ))
    }
    /// JSON bodies; `application/apply-patch+yaml` may also be YAML; protobuf for the few
    /// built-ins kubectl creates that way. CBOR gets 415, which tells client-go to use JSON.
    fn body_value(&self) -> Result<Value, ApiError> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        if self
            .content_type
            .starts_with("application/vnd.kubernetes.protobuf")
        {
            return protobuf::decode(&self.body).map_err(|why| {
                let mut e = ApiError::unsupported_media_type(&self.content_type);
                e.message = format!("{} ({why})", e.message);
                e
            });
        }
        if self.content_type.starts_with("application/cbor") {
            return Err(ApiError::unsupported_media_type(&self.content_type));
        }
        serde_json::from_slice(&self.body).or_else(|json_err| {
            if self.content_type.contains("yaml") {
                let text = std::str::from_utf8(&self.body)
                    .map_err(|e| ApiError::bad_request(format!("body is not UTF-8: {e}")))?;
                serde_saphyr::from_str::<Value>(text)
                    .map_err(|e| ApiError::bad_request(format!("invalid YAML body: {e}")))
            } else {
                Err(ApiError::bad_request(format!(
                    "invalid JSON body: {json_err}"
                )))
            }
        })
    }
    fn version(&self) -> &str {
        &self.target.version
    }
    /// One object in the requested representation.
    fn render(&self, stored: &Value) -> Value {
        let served = convert::serve(&self.info, self.version(), stored);
        match self.repr {
            Repr::Full => served.into_owned(),
            Repr::Metadata => metadata_only(&served),
            Repr::Table => table::table(&self.info, self.version(), &[served], None),
        }
    }
}

async fn get(app: &App, req: &Request) -> Result<Response, ApiError> {
    let obj = app
        .state
        .read()
        .await
        .get(&req.info, req.ns(), req.name())?;
    Ok(json_response(200, &req.render(&obj)))
}

/// A `continue` token: the snapshot a paged list reads and the last key it returned, as the
/// real server encodes it (base64 JSON).
fn continue_token(rv: u64, last: &store::ObjectKey) -> String {
    let start = if last.0.is_empty() {
        last.1.clone()
    } else {
        format!("{}/{}", last.0, last.1)
    };
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{start}\u{0}")});
    base64::engine::general_purpose::URL_SAFE.encode(token.to_string())
}

fn parse_continue(token: &str, namespaced: bool) -> Result<(u64, store::ObjectKey), ApiError> {
    let invalid = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .map_err(|_| invalid("not base64"))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| invalid("not JSON"))?;
    let rv = v
        .get("rv")
        .and_then(Value::as_u64)
        .filter(|rv| *rv > 0)
        .ok_or_else(|| invalid("incorrect encoded start resourceVersion"))?;
    let start = v
        .get("start")
        .and_then(Value::as_str)
        .map(|s| s.trim_end_matches('\u{0}'))
        .ok_or_else(|| invalid("no start key"))?;
    let key = match start.split_once('/') {
        Some((ns, name)) if namespaced => (ns.to_string(), name.to_string()),
        _ => (String::new(), start.to_string()),
    };
    Ok((rv, key))
}

async fn list(app: &App, req: &Request) -> Result<Response, ApiError> {
    let (labels, fields) = req.selectors()?;
    let limit = match req.query.get("limit").map(String::as_str) {
        None | Some("") => 0,
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
    };
    let after = match req.query.get("continue").map(String::as_str) {
        None | Some("") => None,
        Some(token) => Some(parse_continue(token, req.info.namespaced)?),
    };
    let (objects, rv) = {
        let state = app.state.read().await;
        match &after {
            // A continuation reads the first page's snapshot, or answers 410 once it is gone.
            Some((snapshot, _)) => match state.list_at(&req.info, req.ns(), *snapshot) {
                Some(objects) => (objects, *snapshot),
                None => {
                    return Err(ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ));
                }
            },
            None => (state.list(&req.info, req.ns()), state.resource_version()),
        }
    };
    let start = after.as_ref().map(|(_, key)| key);
    let mut matching = objects
        .iter()
        .filter(|o| start.is_none_or(|k| store::object_key(o) > *k))
        .map(|o| convert::serve(&req.info, req.version(), o))
        .filter(|o| labels.matches(o) && fields.matches(o));
    let served: Vec<Cow<'_, Value>> = if limit > 0 {
        matching.by_ref().take(limit).collect()
    } else {
        matching.by_ref().collect()
    };
    let remaining = matching.count();
    let mut list_meta = json!({"resourceVersion": rv.to_string()});
    if remaining > 0
        && let Some(last) = served.last()
    {
        list_meta["continue"] = json!(continue_token(rv, &store::object_key(last)));
        // As etcd reports it: only when no selector filtered the list.
        if labels.is_empty() && fields.is_empty() {
            list_meta["remainingItemCount"] = json!(remaining);
        }
    }
    let body = match req.repr {
        Repr::Table => {
            let mut t = table::table(&req.info, req.version(), &served, Some(rv));
            t["metadata"] = list_meta;
            t
        }
        Repr::Metadata => json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadataList",
            "metadata": list_meta,
            "items": served.iter().map(|o| metadata_only(o)).collect::<Vec<_>>(),
        }),
        Repr::Full => {
            // Serialise items in place instead of cloning thousands of objects into a list.
            let head = json!({
                "apiVersion": req.info.api_version(req.version()),
                "kind": format!("{}List", req.info.kind),
                "metadata": list_meta,
            });
            let mut out = serde_json::to_vec(&head).unwrap_or_default();
            out.pop(); // the closing brace
            out.extend_from_slice(b",\"items\":[");
            for (i, o) in served.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(o.as_ref()).unwrap_or_default());
            }
            out.extend_from_slice(b"]}");
            return Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                out,
            )
                .into_response());
        }
    };
    Ok(json_response(200, &body))
}

async fn create(app: &App, req: &Request) -> Result<Response, ApiError> {
    let body = req.body_value()?;
    if let Some(name) = body.pointer("/metadata/name").and_then(|n| n.as_str()) {
        app.admission(req, name)?;
    }
    let obj = app
        .state
        .write()
        .await
        .create(&req.info, req.ns(), body, req.dry_run())?;
    Ok(json_response(201, &req.render(&obj)))
}

async fn update(app: &App, req: &Request) -> Result<Response, ApiError> {
    let body = req.body_value()?;
    app.admission(req, req.name())?;
    let obj = app.state.write().await.update(
        &req.info,
        req.ns(),
        req.name(),
        body,
        req.is_status(),
        req.dry_run(),
    )?;
    Ok(json_response(200, &req.render(&obj)))
}

fn patch_kind(content_type: &str, query: &HashMap<String, String>) -> Result<PatchKind, ApiError> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    match media {
        "application/merge-patch+json" => Ok(PatchKind::Merge),
        "application/json-patch+json" => Ok(PatchKind::Json),
        "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
        "application/apply-patch+yaml" | "application/apply-patch+json" => {
            if query.get("fieldManager").is_none_or(String::is_empty) {
                return Err(ApiError::bad_request(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            Ok(PatchKind::Apply {
                force: truthy(query, "force"),
            })
        }
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

async fn patch(app: &App, req: &Request) -> Result<Response, ApiError> {
    let kind = patch_kind(&req.content_type, &req.query)?;
    let body = req.body_value()?;
    let well_formed = match kind {
        PatchKind::Json => body.is_array(),
        _ => body.is_object(),
    };
    if !well_formed {
        return Err(ApiError::bad_request(
            "the patch body does not have the shape its content type requires",
        ));
    }
    app.admission(req, req.name())?;
    if req.is_status() && !app.status_write_delay.is_zero() {
        tokio::time::sleep(app.status_write_delay).await;
    }
    let obj = app.state.write().await.patch(
        &req.info,
        req.ns(),
        req.name(),
        kind,
        &body,
        req.is_status(),
        req.dry_run(),
    )?;
    Ok(json_response(200, &req.render(&obj)))
}

fn cascades(req: &Request, options: &Value) -> bool {
    let policy = options
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .or(req.query.get("propagationPolicy").map(String::as_str));
    let orphan = options.get("orphanDependents").and_then(Value::as_bool) == Some(true);
    policy != Some("Orphan") && !orphan
}

async fn delete(app: &App, req: &Request) -> Result<Response, ApiError> {
    let options = req.body_value().unwrap_or(Value::Null);
    let outcome = app.state.write().await.delete(
        &req.info,
        req.ns(),
        req.name(),
        options.get("preconditions"),
        cascades(req, &options),
        req.dry_run(),
    )?;
    Ok(match outcome {
        Deleted::Pending(obj) => json_response(200, &req.render(&obj)),
        // Custom resources echo the deleted object; built-ins answer with a success Status.
        Deleted::Removed(obj) if req.info.custom => json_response(200, &req.render(&obj)),
        Deleted::Removed(obj) => json_response(
            200,
            &json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {
                    "name": req.name(), "group": req.info.group, "kind": req.info.plural,
                    "uid": obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
                },
            }),
        ),
    })
}

async fn delete_collection(app: &App, req: &Request) -> Result<Response, ApiError> {
    let (labels, fields) = req.selectors()?;
    let options = req.body_value().unwrap_or(Value::Null);
    let mut state = app.state.write().await;
    let names: Vec<(Option<String>, String)> = state
        .list(&req.info, req.ns())
        .iter()
        .filter(|o| {
            let served = convert::serve(&req.info, req.version(), o);
            labels.matches(&served) && fields.matches(&served)
        })
        .filter_map(|o| {
            Some((
                o.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                o.pointer("/metadata/name")?.as_str()?.to_string(),
            ))
        })
        .collect();
    let mut items = Vec::new();
    for (ns, name) in names {
        match state.delete(
            &req.info,
            ns.as_deref(),
            &name,
            None,
            cascades(req, &options),
            req.dry_run(),
        )? {
            Deleted::Pending(o) | Deleted::Removed(o) => items.push(req.render(&o)),
        }
    }
    Ok(json_response(
        200,
        &json!({
            "apiVersion": req.info.api_version(req.version()),
            "kind": format!("{}List", req.info.kind),
            "metadata": {"resourceVersion": state.resource_version().to_string()},
            "items": items,
        }),
    ))
}

/// Watch filter: the resource's store, an optional namespace, and the selectors.
struct WatchFilter {
    info: Arc<ResourceInfo>,
    version: String,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    repr: Repr,
}

impl WatchFilter {
    fn in_scope(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns))
    }

    fn matches(&self, obj: &Value) -> bool {
        if !self.in_scope(obj) {
            return false;
        }
        let served = convert::serve(&self.info, &self.version, obj);
        self.labels.matches(&served) && self.fields.matches(&served)
    }

    /// The event this watcher sees for a change, if any: an object that starts matching is
    /// ADDED, one that stops matching is DELETED.
    fn event_type(&self, change: &Change) -> Option<&'static str> {
        if change.storage != self.info.storage {
            return None;
        }
        let now = self.matches(&change.object);
        let before = change.previous.as_deref().is_some_and(|p| self.matches(p));
        match (change.kind, before, now) {
            (ChangeKind::Added, _, true) => Some("ADDED"),
            (ChangeKind::Modified, true, true) => Some("MODIFIED"),
            (ChangeKind::Modified, false, true) => Some("ADDED"),
            (ChangeKind::Modified, true, false) => Some("DELETED"),
            (ChangeKind::Deleted, b, n) if b || n => Some("DELETED"),
            _ => None,
        }
    }

    /// The line this watcher gets for a change, if any. An object that stops matching is sent
    /// as the real server does: its last matching content, at the change's resourceVersion.
    fn change_line(&self, change: &Change) -> Option<Bytes> {
        let type_ = self.event_type(change)?;
        if let (ChangeKind::Modified, "DELETED", Some(prev)) =
            (change.kind, type_, change.previous.as_deref())
        {
            let mut last = prev.clone();
            last["metadata"]["resourceVersion"] = Value::String(change.rv.to_string());
            return Some(self.line(type_, &last));
        }
        Some(self.line(type_, &change.object))
    }

    fn line(&self, type_: &str, obj: &Value) -> Bytes {
        let served = convert::serve(&self.info, &self.version, obj);
        let object = match self.repr {
            Repr::Full => served.into_owned(),
            Repr::Metadata => metadata_only(&served),
            Repr::Table => table::table(&self.info, &self.version, &[served], None),
        };
        event_line(type_, &object)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event_line(
            "BOOKMARK",
            &json!({
                "apiVersion": self.info.api_version(&self.version),
                "kind": self.info.kind,
                "metadata": meta,
            }),
        )
    }
}

fn event_line(type_: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn error_line(err: &ApiError) -> Bytes {
    event_line("ERROR", &err.to_status())
}

async fn watch(app: Arc<App>, req: Request) -> Response {
    let (labels, fields) = match req.selectors() {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let filter = WatchFilter {
        info: req.info.clone(),
        version: req.target.version.clone(),
        namespace: req.target.namespace.clone(),
        labels,
        fields,
        repr: req.repr,
    };
    let bookmarks = truthy(&req.query, "allowWatchBookmarks");
    let initial_events = truthy(&req.query, "sendInitialEvents");
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let since = req
        .query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");

    // Snapshot and subscribe under one lock, so no change falls between them.
    let (mut first, rx, start_rv, expired) = {
        let state = app.state.read().await;
        let rx = state.subscribe();
        let now = state.resource_version();
        let mut first: Vec<Bytes> = Vec::new();
        let mut expired = false;
        if initial_events || since.is_empty() || since == "0" {
            for obj in state.list(&filter.info, filter.namespace.as_deref()) {
                if filter.matches(&obj) {
                    first.push(filter.line("ADDED", &obj));
                }
            }
            if initial_events {
                first.push(filter.bookmark(now, true));
            }
        } else {
            match since.parse::<u64>() {
                Err(_) => {
                    return ApiError::bad_request(format!("invalid resourceVersion {since:?}"))
                        .into_response();
                }
                Ok(rv) => match state.changes_since(rv) {
                    Ok(changes) => {
                        first.extend(changes.iter().filter_map(|c| filter.change_line(c)));
                    }
                    // The real server answers 200 and then an ERROR event with the 410 Status.
                    Err(gone) => {
                        first.push(error_line(&gone));
                        expired = true;
                    }
                },
            }
        }
        (first, rx, now, expired)
    };

    let (tx, out) = mpsc::channel::<Bytes>(64);
    let shutdown = app.shutdown.clone();
    let interval = app.bookmark_interval;
    tokio::spawn(async move {
        for line in first.drain(..) {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        stream_changes(
            filter,
            rx,
            tx,
            start_rv,
            bookmarks.then_some(interval),
            timeout,
            shutdown,
        )
        .await;
    });
    let stream = futures::stream::unfold(out, |mut out| async move {
        out.recv().await.map(|b| (Ok::<_, Infallible>(b), out))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn stream_changes(
    filter: WatchFilter,
    mut rx: broadcast::Receiver<Arc<Change>>,
    tx: mpsc::Sender<Bytes>,
    mut last_rv: u64,
    bookmark_every: Option<Duration>,
    timeout: Option<Duration>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600)));
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(bookmark_every.unwrap_or(Duration::from_secs(3600)));
    ticker.reset();
    loop {
        let line = tokio::select! {
            _ = &mut deadline => return,
            _ = shutdown.changed() => return,
            _ = tx.closed() => return,
            _ = ticker.tick(), if bookmark_every.is_some() => filter.bookmark(last_rv, false),
            msg = rx.recv() => match msg {
                Ok(change) => {
                    // Replayed history may overlap the live feed; skip what was already sent.
                    if change.rv <= last_rv {
                        continue;
                    }
                    last_rv = change.rv;
                    match filter.change_line(&change) {
                        Some(line) => line,
                        None => continue,
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // This watcher fell too far behind: make it re-list, as a compacted
                    // resourceVersion would.
                    let _ = tx.send(error_line(&ApiError::gone("watch fell behind; re-list"))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if tx.send(line).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::kube::resources::builtins;

    /// (namespace, plural, name, subresource)
    type Parts = (Option<String>, String, Option<String>, Option<String>);

    fn target(path: &str) -> Option<Parts> {
        parse_target(path).map(|t| (t.namespace, t.plural, t.name, t.subresource))
    }

    #[test]
    fn paths_name_resources() {
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            target("/api/v1/secrets"),
            Some((None, s("secrets").unwrap(), None, None))
        );
        assert_eq!(
            target("/api/v1/namespaces/ns1/secrets/a"),
            Some((s("ns1"), "secrets".into(), s("a"), None))
        );
        assert_eq!(
            target("/apis/x.io/v1/namespaces/ns1/widgets/w/status"),
            Some((s("ns1"), "widgets".into(), s("w"), s("status")))
        );
        // The Namespace's own status, not a resource called "status" in namespace "n".
        assert_eq!(
            target("/api/v1/namespaces/n/status"),
            Some((None, "namespaces".into(), s("n"), s("status")))
        );
        assert_eq!(
            target("/api/v1/namespaces/n"),
            Some((None, "namespaces".into(), s("n"), None))
        );
        assert_eq!(target("/apis/x.io/v1/a/b/c/d"), None);
        assert_eq!(target("/healthz"), None);
        let t = parse_target("/apis/coordination.k8s.io/v1/leases").unwrap();
        assert_eq!(
            (t.group.as_str(), t.version.as_str()),
            ("coordination.k8s.io", "v1")
        );
    }

    #[test]
    fn accept_header_picks_the_representation() {
        let with = |accept: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, accept.parse().unwrap());
            repr(&h)
        };
        assert_eq!(
            with("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),
            Repr::Table
        );
        assert_eq!(
            with("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
            Repr::Metadata
        );
        assert_eq!(
            with("application/vnd.kubernetes.protobuf,application/json"),
            Repr::Full
        );
        assert_eq!(repr(&HeaderMap::new()), Repr::Full);
    }

    #[test]
    fn content_types_pick_the_patch() {
        let q = HashMap::from([("fieldManager".to_string(), "m".to_string())]);
        assert_eq!(
            patch_kind("application/merge-patch+json", &q).unwrap(),
            PatchKind::Merge
        );
        assert_eq!(
            patch_kind("application/json-patch+json; charset=utf-8", &q).unwrap(),
            PatchKind::Json
        );
        assert_eq!(
            patch_kind("application/apply-patch+yaml", &q).unwrap(),
            PatchKind::Apply { force: false }
        );
        assert_eq!(
            patch_kind("application/apply-patch+yaml", &HashMap::new())
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(patch_kind("text/plain", &q).unwrap_err().code, 415);
    }

    fn change(kind: ChangeKind, prev: Option<Value>, now: Value) -> Change {
        Change {
            rv: 9,
            storage: "/configmaps".into(),
            kind,
            object: Arc::new(now),
            previous: prev.map(Arc::new),
        }
    }

    #[test]
    fn watchers_see_selector_transitions() {
        let info = Arc::new(
            builtins()
                .into_iter()
                .find(|r| r.plural == "configmaps")
                .unwrap(),
        );
        let filter = WatchFilter {
            info,
            version: "v1".into(),
            namespace: Some("a".into()),
            labels: LabelSelector::parse("app=web").unwrap(),
            fields: FieldSelector::default(),
            repr: Repr::Full,
        };
        let obj = |ns: &str, app: &str| json!({"metadata": {"name": "x", "namespace": ns, "labels": {"app": app}}});
        let web = obj("a", "web");
        let db = obj("a", "db");
        let t = |c: &Change| filter.event_type(c);
        assert_eq!(
            t(&change(ChangeKind::Added, None, web.clone())),
            Some("ADDED")
        );
        assert_eq!(t(&change(ChangeKind::Added, None, db.clone())), None);
        assert_eq!(t(&change(ChangeKind::Added, None, obj("b", "web"))), None);
        assert_eq!(
            t(&change(
                ChangeKind::Modified,
                Some(web.clone()),
                web.clone()
            )),
            Some("MODIFIED")
        );
        assert_eq!(
            t(&change(ChangeKind::Modified, Some(db.clone()), web.clone())),
            Some("ADDED")
        );
        assert_eq!(
            t(&change(ChangeKind::Modified, Some(web.clone()), db.clone())),
            Some("DELETED")
        );
        assert_eq!(
            t(&change(ChangeKind::Modified, Some(db.clone()), db.clone())),
            None
        );
        assert_eq!(
            t(&change(ChangeKind::Deleted, Some(web.clone()), web.clone())),
            Some("DELETED")
        );
        let mut other = change(ChangeKind::Added, None, web);
        other.storage = "/secrets".into();
        assert_eq!(t(&other), None);

        let line = filter
            .change_line(&change(ChangeKind::Modified, Some(obj("a", "web")), db))
            .unwrap();
        let ev: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(ev["type"], "DELETED");
        assert_eq!(ev["object"]["metadata"]["labels"]["app"], "web");
        assert_eq!(ev["object"]["metadata"]["resourceVersion"], "9");
    }
}
