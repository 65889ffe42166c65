//! The resource registry: which kinds the stand-in serves, under which paths, and what it knows
//! about them (scope, status subresource, schema, printer columns). Built-ins are fixed; CRD kinds
//! are derived from the `CustomResourceDefinition` objects as they are written.

use serde_json::{Value, json};

/// One served resource (a plural under a group), possibly at several versions.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceInfo {
    /// `""` for the core group.
    pub group: String,
    /// Served versions, the storage (preferred) version first.
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status_subresource: bool,
    /// `openAPIV3Schema` per version, same order as `versions` (CRD kinds only).
    pub schemas: Vec<Option<Value>>,
    /// `additionalPrinterColumns` per version, same order as `versions` (CRD kinds only).
    pub printer_columns: Vec<Vec<PrinterColumn>>,
    /// Objects of several resources may share one store (core and events.k8s.io Events).
    pub storage: String,
    /// True for kinds that came from a CRD (they echo the deleted object on delete, and carry
    /// the schema used for validation and pruning).
    pub custom: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: Option<String>,
    pub description: Option<String>,
    pub priority: i64,
    pub json_path: String,
}

impl ResourceInfo {
    /// The key a resource is registered under: `group/plural` (`/secrets` for core).
    pub fn key(&self) -> String {
        resource_key(&self.group, &self.plural)
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    fn version_index(&self, version: &str) -> usize {
        self.versions.iter().position(|v| v == version).unwrap_or(0)
    }

    pub fn schema(&self, version: &str) -> Option<&Value> {
        self.schemas
            .get(self.version_index(version))
            .and_then(Option::as_ref)
    }

    pub fn columns(&self, version: &str) -> &[PrinterColumn] {
        self.printer_columns
            .get(self.version_index(version))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Group/resource as the API server names it in messages: `secrets`, `leases.coordination.k8s.io`.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

pub fn resource_key(group: &str, plural: &str) -> String {
    format!("{group}/{plural}")
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    status: bool,
    storage: &'static str,
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        status: true,
        storage: "/namespaces",
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
        status: false,
        storage: "/secrets",
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        status: false,
        storage: "/configmaps",
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        status: false,
        storage: "events.k8s.io/events",
    },
    Builtin {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        status: false,
        storage: "events.k8s.io/events",
    },
    Builtin {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        status: false,
        storage: "coordination.k8s.io/leases",
    },
    Builtin {
        group: "apiextensions.k8s.io",
        version: "v1",
        plural: "customresourcedefinitions",
        singular: "customresourcedefinition",
        kind: "CustomResourceDefinition",
        namespaced: false,
        short_names: &["crd", "crds"],
        status: true,
        storage: "apiextensions.k8s.io/customresourcedefinitions",
    },
];

pub fn builtins() -> Vec<ResourceInfo> {
    BUILTINS
        .iter()
        .map(|b| ResourceInfo {
            group: b.group.into(),
            versions: vec![b.version.into()],
            plural: b.plural.into(),
            singular: b.singular.into(),
            kind: b.kind.into(),
            namespaced: b.namespaced,
            short_names: b.short_names.iter().map(|s| s.to_string()).collect(),
            categories: Vec::new(),
            status_subresource: b.status,
            schemas: vec![None],
            printer_columns: vec![Vec::new()],
            storage: b.storage.into(),
            custom: false,
        })
        .collect()
}

/// The resource a `CustomResourceDefinition` object declares, if it is well-formed enough to
/// serve. Only served versions are included; the storage version goes first.
pub fn from_crd(crd: &Value) -> Option<ResourceInfo> {
    let spec = crd.get("spec")?;
    let group = spec.get("group")?.as_str()?.to_string();
    let names = spec.get("names")?;
    let plural = names.get("plural")?.as_str()?.to_string();
    let kind = names.get("kind")?.as_str()?.to_string();
    let singular = names
        .get("singular")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");

    let mut versions: Vec<&Value> = spec
        .get("versions")?
        .as_array()?
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
        .collect();
    if versions.is_empty() {
        return None;
    }
    // Storage version first: it is the one kubectl and discovery prefer.
    versions.sort_by_key(|v| !v.get("storage").and_then(Value::as_bool).unwrap_or(false));
    let status_subresource = versions
        .iter()
        .any(|v| v.pointer("/subresources/status").is_some());
    Some(ResourceInfo {
        storage: resource_key(&group, &plural),
        group,
        versions: versions
            .iter()
            .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
            .collect(),
        plural,
        singular,
        kind,
        namespaced,
        short_names: strings(names.get("shortNames")),
        categories: strings(names.get("categories")),
        status_subresource,
        schemas: versions
            .iter()
            .map(|v| v.pointer("/schema/openAPIV3Schema").cloned())
            .collect(),
        printer_columns: versions.iter().map(|v| printer_columns(v)).collect(),
        custom: true,
    })
}

fn printer_columns(version: &Value) -> Vec<PrinterColumn> {
    version
        .get("additionalPrinterColumns")
        .and_then(Value::as_array)
        .map(|cols| {
            cols.iter()
                .filter_map(|c| {
                    Some(PrinterColumn {
                        name: c.get("name")?.as_str()?.to_string(),
                        type_: c
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("string")
                            .to_string(),
                        format: c.get("format").and_then(Value::as_str).map(str::to_string),
                        description: c
                            .get("description")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        json_path: c.get("jsonPath")?.as_str()?.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `status` a CRD gets from the API server once its names are accepted: kubectl and
/// `kube::runtime::wait::conditions::is_crd_established` wait for `Established`.
pub fn crd_status(crd: &Value, now: &str) -> Value {
    let cond = |type_: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": "True", "lastTransitionTime": now,
            "reason": reason, "message": message,
        })
    };
    json!({
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or(Value::Null),
        "storedVersions": crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(|vs| vs
                .iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool).unwrap_or(false))
                .filter_map(|v| v.get("name").cloned())
                .collect::<Vec<_>>())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1beta1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true,
                     "subresources": {"status": {}},
                     "additionalPrinterColumns": [{"name": "Ready", "type": "string",
                        "jsonPath": ".status.ready"}]},
                    {"name": "v0", "served": false, "storage": false}
                ]
            }
        })
    }

    #[test]
    fn crd_yields_served_versions_storage_first() {
        let info = from_crd(&crd()).unwrap();
        assert_eq!(info.versions, vec!["v1", "v1beta1"]);
        assert_eq!(info.singular, "widget");
        assert!(info.namespaced && info.status_subresource && info.custom);
        assert_eq!(info.columns("v1")[0].json_path, ".status.ready");
        assert!(info.columns("v1beta1").is_empty());
        assert_eq!(info.key(), "example.com/widgets");
    }

    #[test]
    fn cluster_scope_and_missing_names_are_handled() {
        let mut c = crd();
        c["spec"]["scope"] = json!("Cluster");
        assert!(!from_crd(&c).unwrap().namespaced);
        c["spec"]["names"] = json!({});
        assert!(from_crd(&c).is_none());
    }
}
