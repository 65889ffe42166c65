//! Discovery: `/version`, the legacy `/api`, `/apis`, `/apis/{group}` and resource lists, and the
//! aggregated (`apidiscovery.k8s.io/v2`) documents kubectl asks for first. CRD kinds show up as
//! soon as their CRD is stored and vanish with it, because every answer is computed from the
//! live registry.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::Digest as _;

use super::resources::ResourceInfo;

const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

fn json(body: &Value, content_type: &str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type.to_string())],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response()
}

/// True when the client's first acceptable media type is aggregated discovery v2.
fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split(',').next())
        .is_some_and(|first| {
            let params: Vec<&str> = first.split(';').map(str::trim).collect();
            ["g=apidiscovery.k8s.io", "v=v2", "as=APIGroupDiscoveryList"]
                .iter()
                .all(|p| params.contains(p))
        })
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_end_matches('/')
        .trim_start_matches('/')
        .split('/')
        .collect()
}

/// The path is one [`answer`] may answer (the resources served are only read for those).
pub fn is_discovery_path(path: &str) -> bool {
    matches!(
        segments(path).as_slice(),
        ["version" | "healthz" | "readyz" | "livez" | "api" | "apis"]
            | ["api" | "apis", _]
            | ["apis", _, _]
            | ["openapi", ..]
    )
}

/// Answers a discovery path from the `resources` served, or `None` when `path` is not one.
pub fn answer(
    resources: &[Arc<ResourceInfo>],
    path: &str,
    headers: &HeaderMap,
) -> Option<Response> {
    let segs = segments(path);
    let aggregated = wants_aggregated(headers);
    Some(match segs.as_slice() {
        ["version"] => json(&version(), "application/json"),
        ["healthz"] | ["readyz"] | ["livez"] => (StatusCode::OK, "ok").into_response(),
        ["api"] if aggregated => json(&aggregated_list(resources, true), AGGREGATED_V2),
        ["apis"] if aggregated => json(&aggregated_list(resources, false), AGGREGATED_V2),
        ["api"] => json(
            &json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [],
            }),
            "application/json",
        ),
        ["apis"] => json(
            &json!({
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": groups(resources)
                    .into_iter()
                    .filter(|(g, _)| !g.is_empty())
                    .map(|(g, vs)| api_group(&g, &vs))
                    .collect::<Vec<_>>(),
            }),
            "application/json",
        ),
        ["api", version] => json(&resource_list(resources, "", version)?, "application/json"),
        ["apis", group] => {
            let versions = groups(resources).remove(*group)?;
            json(&api_group(group, &versions), "application/json")
        }
        ["apis", group, version] => json(
            &resource_list(resources, group, version)?,
            "application/json",
        ),
        ["openapi", "v3"] => json(&openapi_index(resources), "application/json"),
        ["openapi", "v3", "api", version] => json(
            &openapi_group_version(resources, "", version)?,
            "application/json",
        ),
        ["openapi", "v3", "apis", group, version] => json(
            &openapi_group_version(resources, group, version)?,
            "application/json",
        ),
        _ => return None,
    })
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0+certrotor-standin",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// Group → served versions (preferred first), in a stable order.
fn groups(resources: &[Arc<ResourceInfo>]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in resources {
        let vs = out.entry(r.group.clone()).or_default();
        for v in &r.versions {
            if !vs.contains(v) {
                vs.push(v.clone());
            }
        }
    }
    out
}

fn api_group(group: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": versions.first().map(gv).unwrap_or(Value::Null),
    })
}

fn resource_list(resources: &[Arc<ResourceInfo>], group: &str, version: &str) -> Option<Value> {
    let mut list = Vec::new();
    for r in resources
        .iter()
        .filter(|r| r.group == group && r.serves(version))
    {
        list.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        if r.status_subresource {
            list.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if list.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": list,
    }))
}

fn aggregated_list(resources: &[Arc<ResourceInfo>], core: bool) -> Value {
    let items: Vec<Value> = groups(resources)
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let rs: Vec<Value> = resources
                        .iter()
                        .filter(|r| r.group == group && r.serves(v))
                        .map(|r| aggregated_resource(r, v))
                        .collect();
                    json!({"version": v, "resources": rs, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": group}, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

fn aggregated_resource(r: &ResourceInfo, version: &str) -> Value {
    let kind = json!({"group": r.group, "version": version, "kind": r.kind});
    let mut out = json!({
        "resource": r.plural,
        "responseKind": kind,
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs(),
        "shortNames": r.short_names,
        "categories": r.categories,
    });
    if r.status_subresource {
        out["subresources"] = json!([{
            "subresource": "status",
            "responseKind": kind,
            "verbs": ["get", "patch", "update"],
        }]);
    }
    out
}

/// `/openapi/v3`: one entry per group/version, with a hash that changes with its content so
/// clients that cache by URL see CRD changes.
fn openapi_index(resources: &[Arc<ResourceInfo>]) -> Value {
    let mut paths = serde_json::Map::new();
    for (group, versions) in groups(resources) {
        for v in versions {
            let rel = if group.is_empty() {
                format!("api/{v}")
            } else {
                format!("apis/{group}/{v}")
            };
            let doc = openapi_group_version(resources, &group, &v).unwrap_or(Value::Null);
            let digest = sha2::Sha256::digest(doc.to_string().as_bytes());
            let hash: String = digest.iter().take(16).map(|b| format!("{b:02X}")).collect();
            paths.insert(
                rel.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{rel}?hash={hash}")}),
            );
        }
    }
    json!({"paths": paths})
}

/// A minimal OpenAPI 3 document for one group/version: the object paths with their PATCH
/// operations, which is what kubectl reads to learn that the server validates fields itself
/// (`fieldValidation`), plus the CRD schemas for `kubectl explain`. It does not advertise
/// strategic merge patch, so kubectl computes JSON merge patches for client-side apply of
/// custom resources, as it does against a real server.
fn openapi_group_version(
    resources: &[Arc<ResourceInfo>],
    group: &str,
    version: &str,
) -> Option<Value> {
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for r in resources
        .iter()
        .filter(|r| r.group == group && r.serves(version))
    {
        let gvk = json!({"group": group, "version": version, "kind": r.kind});
        let param = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string"}});
        let op = |action: &str, params: Vec<Value>| {
            json!({
                "operationId": format!("{action}{}", r.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
            })
        };
        let item = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        paths.insert(
            item,
            json!({
                "get": op("get", vec![]),
                "put": op("put", vec![param("fieldValidation"), param("fieldManager"), param("dryRun")]),
                "patch": op("patch", vec![param("fieldValidation"), param("fieldManager"),
                                          param("force"), param("dryRun")]),
                "delete": op("delete", vec![param("dryRun")]),
            }),
        );
        if let Some(schema) = r.schema(version) {
            let mut schema = schema.clone();
            schema["x-kubernetes-group-version-kind"] = json!([gvk]);
            let reversed: Vec<&str> = group.split('.').rev().collect();
            schemas.insert(
                format!("{}.{version}.{}", reversed.join("."), r.kind),
                schema,
            );
        }
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes API stand-in", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::kube::resources::builtins;

    fn all() -> Vec<Arc<ResourceInfo>> {
        builtins().into_iter().map(Arc::new).collect()
    }

    #[test]
    fn discovery_paths_are_told_from_resource_paths() {
        for path in [
            "/version",
            "/healthz",
            "/api",
            "/apis/",
            "/api/v1",
            "/apis/certrotor.io",
            "/apis/certrotor.io/v1alpha1",
            "/openapi/v3",
            "/openapi/v3/apis/apps/v1",
        ] {
            assert!(is_discovery_path(path), "{path}");
        }
        for path in [
            "/api/v1/secrets",
            "/api/v1/namespaces/default/secrets",
            "/apis/certrotor.io/v1alpha1/tenantcertificates",
            "/apis/coordination.k8s.io/v1/namespaces/default/leases/l",
        ] {
            assert!(!is_discovery_path(path), "{path}");
        }
    }

    #[test]
    fn core_resource_list_names_status_subresources() {
        let list = resource_list(&all(), "", "v1").unwrap();
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"secrets") && names.contains(&"namespaces/status"));
        assert!(resource_list(&all(), "", "v2").is_none());
    }

    #[test]
    fn aggregated_documents_split_core_from_groups() {
        let core = aggregated_list(&all(), true);
        assert_eq!(core["items"].as_array().unwrap().len(), 1);
        assert_eq!(core["items"][0]["metadata"]["name"], "");
        let groups = aggregated_list(&all(), false);
        let names: Vec<&str> = groups["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "apiextensions.k8s.io",
                "coordination.k8s.io",
                "events.k8s.io"
            ]
        );
    }

    #[test]
    fn openapi_v3_advertises_field_validation_on_patch() {
        let index = openapi_index(&all());
        let url = index["paths"]["apis/coordination.k8s.io/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("/openapi/v3/apis/coordination.k8s.io/v1?hash="));
        let doc = openapi_group_version(&all(), "coordination.k8s.io", "v1").unwrap();
        let patch = &doc["paths"]["/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"]
            ["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Lease");
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        assert!(openapi_group_version(&all(), "nope.io", "v1").is_none());
    }

    #[test]
    fn aggregated_is_chosen_only_when_asked_first() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
                .parse()
                .unwrap(),
        );
        assert!(wants_aggregated(&h));
        h.insert(header::ACCEPT, "application/json".parse().unwrap());
        assert!(!wants_aggregated(&h));
    }
}
