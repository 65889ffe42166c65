//! The patch flavours the API server accepts, applied to JSON values.
//!
//! - JSON merge patch (RFC 7386), also used for *strategic* merge patches: the stand-in has no
//!   Go struct tags to read patch strategies from, so lists are replaced, not merged by key, and
//!   `$patch`/`$retainKeys` directives are not understood.
//! - JSON patch (RFC 6902): add, remove, replace, move, copy, test.
//! - Server-side apply, approximated (see [`apply`]).

use serde_json::{Map, Value};

/// RFC 7386: objects merge recursively, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Splits a JSON pointer into its parent pointer and last token.
fn split_pointer(path: &str) -> Result<(&str, String), String> {
    if path.is_empty() {
        return Err("the root cannot be the target of this operation".into());
    }
    let idx = path
        .rfind('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok((&path[..idx], unescape(&path[idx + 1..])))
}

fn array_index(token: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    if allow_end && token == "-" {
        return Ok(len);
    }
    let i: usize = token
        .parse()
        .map_err(|_| format!("invalid array index {token:?}"))?;
    let max = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if i > max || (!allow_end && len == 0) {
        return Err(format!("array index {i} out of bounds"));
    }
    Ok(i)
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let i = array_index(&last, a.len(), true)?;
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("path {parent:?} does not exist")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => m
            .remove(&last)
            .ok_or_else(|| format!("path {path:?} does not exist")),
        Some(Value::Array(a)) => {
            let i = array_index(&last, a.len(), false)?;
            Ok(a.remove(i))
        }
        _ => Err(format!("path {parent:?} does not exist")),
    }
}

/// RFC 6902. The whole patch fails if any operation fails (the document is left untouched).
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    let mut work = doc.clone();
    for op in ops {
        let field = |name: &str| {
            op.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("operation is missing {name:?}: {op}"))
        };
        let path = field("path")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("operation is missing \"value\": {op}"))
        };
        match field("op")? {
            "add" => add(&mut work, path, value()?)?,
            "remove" => {
                remove(&mut work, path)?;
            }
            "replace" => {
                let v = value()?;
                let target = work
                    .pointer_mut(path)
                    .ok_or_else(|| format!("path {path:?} does not exist"))?;
                *target = v;
            }
            "move" => {
                let from = field("from")?;
                let v = remove(&mut work, from)?;
                add(&mut work, path, v)?;
            }
            "copy" => {
                let from = field("from")?;
                let v = work
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| format!("path {from:?} does not exist"))?;
                add(&mut work, path, v)?;
            }
            "test" => {
                // A missing member tests equal to null, as the API server's JSON patch library
                // has it (kube's finalizer helper relies on this).
                if work.pointer(path).unwrap_or(&Value::Null) != &value()? {
                    return Err(format!("test operation failed at {path:?}"));
                }
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    *doc = work;
    Ok(())
}

/// How a list in the schema wants to be combined by server-side apply.
#[derive(Debug, PartialEq)]
enum ListType<'a> {
    /// Items are objects identified by these keys (`x-kubernetes-list-type: map`).
    Map(Vec<&'a str>),
    /// Items are scalars, each kept once (`x-kubernetes-list-type: set`).
    Set,
    /// Anything else: the applied list replaces the live one.
    Atomic,
}

fn list_type(schema: Option<&Value>) -> ListType<'_> {
    let Some(s) = schema else {
        return ListType::Atomic;
    };
    match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("map") => ListType::Map(
            s.get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|ks| ks.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default(),
        ),
        Some("set") => ListType::Set,
        _ => ListType::Atomic,
    }
}

fn child_schema<'a>(schema: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    let s = schema?;
    s.get("properties")
        .and_then(|p| p.get(key))
        .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
}

/// Server-side apply, approximated as a merge of the applied configuration into the live
/// object: fields present in `applied` are set (objects recursively), fields absent are left
/// alone, lists marked `x-kubernetes-list-type: map` in `schema` are merged item by item on
/// their keys (so one manager's `status.conditions[type=Ready]` does not wipe another's),
/// `set` lists are unioned, and other lists are replaced.
///
/// What the real server does that this does not: it tracks `managedFields`, so a manager that
/// stops applying a field it owned removes it, and two managers setting the same field conflict
/// (409) unless `force` is given. Here fields are never removed by omission and conflicts never
/// happen; `fieldManager` and `force` are accepted and ignored.
pub fn apply(live: &mut Value, applied: &Value, schema: Option<&Value>) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, v) in a {
                let sub = child_schema(schema, k);
                match l.get_mut(k) {
                    Some(existing) if !v.is_null() => apply(existing, v, sub),
                    _ => {
                        l.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(a)) => {
            let item_schema = schema.and_then(|s| s.get("items"));
            match list_type(schema) {
                ListType::Map(keys) if !keys.is_empty() => {
                    let key_of = |item: &Value| -> Vec<Value> {
                        keys.iter()
                            .map(|k| item.get(*k).cloned().unwrap_or(Value::Null))
                            .collect()
                    };
                    for item in a {
                        let k = key_of(item);
                        match l.iter_mut().find(|x| key_of(x) == k) {
                            Some(existing) => apply(existing, item, item_schema),
                            None => l.push(item.clone()),
                        }
                    }
                }
                ListType::Set => {
                    for item in a {
                        if !l.contains(item) {
                            l.push(item.clone());
                        }
                    }
                }
                _ => *l = a.clone(),
            }
        }
        (l, a) => *l = a.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(
            &mut t,
            &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}}),
        );
        assert_eq!(
            t,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}})
        );
    }

    #[test]
    fn json_patch_ops() {
        let mut d = json!({"metadata": {"finalizers": ["a", "b"]}, "x": 1});
        json_patch(
            &mut d,
            &json!([
                {"op": "test", "path": "/x", "value": 1},
                {"op": "remove", "path": "/metadata/finalizers/0"},
                {"op": "add", "path": "/metadata/finalizers/-", "value": "c"},
                {"op": "replace", "path": "/x", "value": 2},
                {"op": "copy", "from": "/x", "path": "/y"},
                {"op": "move", "from": "/y", "path": "/z"},
                {"op": "add", "path": "/metadata/labels", "value": {"a~b/c": "1"}},
                {"op": "remove", "path": "/metadata/labels/a~0b~1c"}
            ]),
        )
        .unwrap();
        assert_eq!(
            d,
            json!({"metadata": {"finalizers": ["b", "c"], "labels": {}}, "x": 2, "z": 2})
        );
    }

    #[test]
    fn json_patch_is_all_or_nothing() {
        let mut d = json!({"x": 1});
        let err = json_patch(
            &mut d,
            &json!([{"op": "replace", "path": "/x", "value": 5},
                    {"op": "test", "path": "/x", "value": 1}]),
        );
        assert!(err.is_err());
        assert_eq!(d, json!({"x": 1}));
        assert!(json_patch(&mut d, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(
            json_patch(
                &mut d,
                &json!([{"op": "test", "path": "/nope", "value": null}])
            )
            .is_ok()
        );
        assert!(
            json_patch(
                &mut d,
                &json!([{"op": "test", "path": "/nope", "value": 1}])
            )
            .is_err()
        );
        assert!(json_patch(&mut d, &json!([{"op": "remove", "path": "/x/0"}])).is_err());
        assert!(json_patch(&mut d, &json!({"op": "add"})).is_err());
    }

    #[test]
    fn apply_merges_map_lists_by_key_and_replaces_others() {
        let schema = json!({"properties": {"status": {"properties": {
            "conditions": {"type": "array", "x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["type"],
                           "items": {"type": "object"}},
            "tags": {"type": "array", "x-kubernetes-list-type": "set"}
        }}}});
        let mut live = json!({"status": {
            "conditions": [{"type": "Ready", "status": "False", "reason": "A"},
                           {"type": "Stalled", "status": "False"}],
            "tags": ["a"], "other": [1, 2], "keep": true}});
        apply(
            &mut live,
            &json!({"status": {
                "conditions": [{"type": "Ready", "status": "True"},
                               {"type": "Reconciling", "status": "False"}],
                "tags": ["b", "a"], "other": [3]}}),
            Some(&schema),
        );
        assert_eq!(
            live,
            json!({"status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "A"},
                               {"type": "Stalled", "status": "False"},
                               {"type": "Reconciling", "status": "False"}],
                "tags": ["a", "b"], "other": [3], "keep": true}})
        );
    }

    #[test]
    fn apply_without_schema_replaces_lists() {
        let mut live = json!({"a": [{"type": "x"}], "b": {"c": 1}});
        apply(
            &mut live,
            &json!({"a": [{"type": "y"}], "b": {"d": 2}}),
            None,
        );
        assert_eq!(live, json!({"a": [{"type": "y"}], "b": {"c": 1, "d": 2}}));
    }
}
