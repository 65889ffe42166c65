//! Server-side printing (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), which is what
//! `kubectl get` shows: Name plus a CRD's `additionalPrinterColumns` (evaluated with a small
//! JSONPath subset), or Name plus a few columns and Age for built-ins.

use std::borrow::Cow;

use serde_json::{Value, json};

use super::resources::{PrinterColumn, ResourceInfo};

/// A column and how to fill it.
struct Column {
    def: PrinterColumn,
    cell: Cell,
}

enum Cell {
    Name,
    /// Age as kubectl shows it (`5m`, `3d2h`), from `creationTimestamp`.
    Age,
    Path(String),
}

fn column(name: &str, type_: &str, format: Option<&str>, priority: i64, cell: Cell) -> Column {
    Column {
        def: PrinterColumn {
            name: name.into(),
            type_: type_.into(),
            format: format.map(str::to_string),
            description: None,
            priority,
            json_path: String::new(),
        },
        cell,
    }
}

fn columns(info: &ResourceInfo, version: &str) -> Vec<Column> {
    let mut cols = vec![column("Name", "string", Some("name"), 0, Cell::Name)];
    let custom = info.columns(version);
    if info.custom && !custom.is_empty() {
        cols.extend(custom.iter().map(|c| Column {
            def: c.clone(),
            cell: Cell::Path(c.json_path.clone()),
        }));
        return cols;
    }
    let path = |name: &str, p: &str| column(name, "string", None, 0, Cell::Path(p.into()));
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "secrets") => cols.push(path("Type", ".type")),
        ("", "namespaces") => cols.push(path("Status", ".status.phase")),
        ("", "events") => {
            cols.push(path("Type", ".type"));
            cols.push(path("Reason", ".reason"));
            cols.push(path("Object", ".involvedObject.name"));
            cols.push(path("Message", ".message"));
        }
        ("coordination.k8s.io", "leases") => cols.push(path("Holder", ".spec.holderIdentity")),
        _ => {}
    }
    cols.push(column("Age", "string", None, 0, Cell::Age));
    cols
}

/// A `meta.k8s.io/v1` Table of `objects` (already in their served form). Each row carries the
/// object's metadata, as the real server's default `includeObject=Metadata` does.
pub fn table(
    info: &ResourceInfo,
    version: &str,
    objects: &[Cow<'_, Value>],
    resource_version: Option<u64>,
) -> Value {
    let cols = columns(info, version);
    let now = jiff::Timestamp::now();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cols.iter().map(|c| cell(&c.cell, &c.def, o, now)).collect();
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                },
            })
        })
        .collect();
    let mut metadata = json!({});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv.to_string());
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": cols.iter().map(|c| {
            let mut d = json!({
                "name": c.def.name, "type": c.def.type_, "format": c.def.format.clone().unwrap_or_default(),
                "description": c.def.description.clone().unwrap_or_default(), "priority": c.def.priority,
            });
            if c.def.name == "Name" {
                d["description"] = json!("Name must be unique within a namespace.");
            }
            d
        }).collect::<Vec<_>>(),
        "rows": rows,
    })
}

fn cell(cell: &Cell, def: &PrinterColumn, obj: &Value, now: jiff::Timestamp) -> Value {
    match cell {
        Cell::Name => obj
            .pointer("/metadata/name")
            .cloned()
            .unwrap_or(Value::Null),
        Cell::Age => obj
            .pointer("/metadata/creationTimestamp")
            .map(|t| json!(age_of(t, now)))
            .unwrap_or(json!("<unknown>")),
        Cell::Path(path) => {
            let found = jsonpath(obj, path);
            match found.as_slice() {
                [] => Value::Null,
                [one] if def.type_ == "date" => json!(age_of(one, now)),
                [one] => typed(one, &def.type_),
                many => json!(many.iter().map(|v| text(v)).collect::<Vec<_>>().join(",")),
            }
        }
    }
}

/// `date` cells are ages, as the real server renders them (`<invalid>` for unparsable or future
/// times, which is why expiry columns should be `string`).
fn age_of(v: &Value, now: jiff::Timestamp) -> String {
    let secs = v
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| now.duration_since(t).as_secs());
    match secs {
        Some(s) if s >= -1 => human_duration(s),
        _ => "<invalid>".into(),
    }
}

/// Cells of `string` columns are strings; numbers and booleans stay JSON values.
fn typed(v: &Value, type_: &str) -> Value {
    match type_ {
        "integer" | "number" | "boolean" => v.clone(),
        _ => json!(text(v)),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// kubectl's short durations (`HumanDuration`).
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let y = d / 365;
        if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

#[derive(Debug, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    /// `[?(@.key=="value")]`, `!=` when the flag is false.
    Filter(Vec<String>, bool, Value),
}

fn parse_filter(expr: &str) -> Option<Step> {
    let inner = expr.strip_prefix("?(")?.strip_suffix(')')?.trim();
    let (lhs, eq, rhs) = if let Some((l, r)) = inner.split_once("==") {
        (l, true, r)
    } else {
        let (l, r) = inner.split_once("!=")?;
        (l, false, r)
    };
    let path = lhs.trim().strip_prefix("@.")?;
    let rhs = rhs.trim();
    let value = if let Some(s) = rhs
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| rhs.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
    {
        json!(s)
    } else {
        serde_json::from_str(rhs).ok()?
    };
    Some(Step::Filter(
        path.split('.').map(str::to_string).collect(),
        eq,
        value,
    ))
}

/// Parses the JSONPath subset printer columns use: `.a.b`, `.a[0]`, `.a[*]`, `.a['x.y']`,
/// `.a[?(@.type=="Ready")].status`. `None` for anything else.
fn parse_path(path: &str) -> Option<Vec<Step>> {
    let p = path.trim();
    let p = p
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(p);
    let p = p.strip_prefix('$').unwrap_or(p);
    let mut steps = Vec::new();
    let mut rest = p;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            // A filter may itself contain `]` only inside quotes; printer columns do not need that.
            let inner = &r[..end];
            steps.push(if inner == "*" {
                Step::All
            } else if let Ok(i) = inner.parse() {
                Step::Index(i)
            } else if let Some(q) = inner
                .strip_prefix('\'')
                .and_then(|q| q.strip_suffix('\''))
                .or_else(|| inner.strip_prefix('"').and_then(|q| q.strip_suffix('"')))
            {
                Step::Field(q.to_string())
            } else {
                parse_filter(inner)?
            });
            rest = &r[end + 1..];
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end > 0 {
                steps.push(Step::Field(r[..end].to_string()));
            }
            rest = &r[end..];
        } else {
            return None;
        }
    }
    Some(steps)
}

/// Every value `path` selects in `obj` (empty when nothing matches or the path is unsupported).
pub fn jsonpath<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let Some(steps) = parse_path(path) else {
        return Vec::new();
    };
    let mut current = vec![obj];
    for step in &steps {
        current = current
            .into_iter()
            .flat_map(|v| -> Vec<&Value> {
                match step {
                    Step::Field(f) => v.get(f).into_iter().collect(),
                    Step::Index(i) => v.get(*i).into_iter().collect(),
                    Step::All => match v {
                        Value::Array(a) => a.iter().collect(),
                        Value::Object(m) => m.values().collect(),
                        _ => Vec::new(),
                    },
                    Step::Filter(key, eq, want) => v
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter(|item| {
                                    let got = key.iter().try_fold(*item, |x, k| x.get(k));
                                    (got == Some(want)) == *eq
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_subset() {
        let o = json!({"status": {"notAfter": "2027-01-01T00:00:00Z",
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "Stalled", "status": "False"}],
            "ids": [1, 2]},
            "metadata": {"annotations": {"a.b/c": "x"}}});
        assert_eq!(
            jsonpath(&o, ".status.notAfter"),
            vec![&json!("2027-01-01T00:00:00Z")]
        );
        assert_eq!(
            jsonpath(&o, r#".status.conditions[?(@.type=="Ready")].status"#),
            vec![&json!("True")]
        );
        assert_eq!(
            jsonpath(&o, ".status.conditions[?(@.type=='Stalled')].status"),
            vec![&json!("False")]
        );
        assert_eq!(jsonpath(&o, ".status.ids[1]"), vec![&json!(2)]);
        assert_eq!(jsonpath(&o, ".status.ids[*]").len(), 2);
        assert_eq!(
            jsonpath(&o, ".metadata.annotations['a.b/c']"),
            vec![&json!("x")]
        );
        assert_eq!(jsonpath(&o, "{.status.ids[0]}"), vec![&json!(1)]);
        assert!(jsonpath(&o, ".status.missing").is_empty());
        assert!(jsonpath(&o, "status").is_empty());
    }

    #[test]
    fn human_durations_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(1800), "30m");
        assert_eq!(human_duration(4 * 3600 + 60), "4h1m");
        assert_eq!(human_duration(20 * 3600), "20h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(30 * 86400), "30d");
    }

    #[test]
    fn crd_columns_and_builtin_age() {
        let crd = json!({"spec": {"group": "x.io", "names": {"plural": "ws", "kind": "W"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "additionalPrinterColumns": [
                    {"name": "Ready", "type": "string",
                     "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                    {"name": "Count", "type": "integer", "jsonPath": ".status.count"},
                    {"name": "Since", "type": "date", "jsonPath": ".status.since"},
                    {"name": "Later", "type": "date", "jsonPath": ".status.later"}]}]}});
        let info = crate::sim::kube::resources::from_crd(&crd).unwrap();
        let obj = json!({"metadata": {"name": "w1"}, "status": {"count": 3,
            "since": "2000-01-01T00:00:00Z", "later": "2999-01-01T00:00:00Z",
            "conditions": [{"type": "Ready", "status": "True"}]}});
        let t = table(&info, "v1", &[Cow::Borrowed(&obj)], Some(7));
        let cells = t["rows"][0]["cells"].as_array().unwrap();
        assert_eq!(cells[..3], [json!("w1"), json!("True"), json!(3)]);
        assert!(
            cells[3].as_str().unwrap().ends_with('y'),
            "a date renders as an age"
        );
        assert_eq!(cells[4], "<invalid>");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        assert_eq!(t["columnDefinitions"][2]["type"], "integer");

        let secrets = crate::sim::kube::resources::builtins()
            .into_iter()
            .find(|r| r.plural == "secrets")
            .unwrap();
        let s = json!({"metadata": {"name": "s", "creationTimestamp": "2000-01-01T00:00:00Z"},
                       "type": "Opaque"});
        let t = table(&secrets, "v1", &[Cow::Borrowed(&s)], None);
        let cells = t["rows"][0]["cells"].as_array().unwrap();
        assert_eq!(cells[..2], [json!("s"), json!("Opaque")]);
        assert!(cells[2].as_str().unwrap().ends_with('y'));
    }
}
