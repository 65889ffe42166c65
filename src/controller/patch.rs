//! Status writes as JSON merge patches computed from the old and new status: unchanged fields
//! are not sent, removed fields are sent as `null` (a plain merge patch of the new status would
//! leave removed fields behind), and nothing is written when nothing changed.

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Map, Value, json};

/// Writes the difference between `old` and `new` (statuses as JSON) to the status subresource
/// of `name`, as a merge patch. With `precondition`, the write carries that resourceVersion
/// and is refused with a 409 if the object changed since (it is then made even with no
/// difference, to check that). The written object, or `None` when nothing was written.
pub async fn patch_status_diff<K>(
    api: &Api<K>,
    name: &str,
    old: &Value,
    new: &Value,
    precondition: Option<&str>,
) -> Result<Option<K>, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let diff = merge_patch_diff(old, new);
    let patch = match (diff, precondition) {
        (None, None) => return Ok(None),
        (diff, Some(rv)) => json!({
            "metadata": {"resourceVersion": rv},
            "status": diff.unwrap_or_else(|| json!({})),
        }),
        (Some(diff), None) => json!({ "status": diff }),
    };
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(Some)
}

/// The RFC 7386 merge patch that turns `old` into `new`; `None` when they are equal.
pub fn merge_patch_diff(old: &Value, new: &Value) -> Option<Value> {
    if old == new {
        return None;
    }
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = Map::new();
            for (k, old_v) in o {
                match n.get(k) {
                    None => {
                        patch.insert(k.clone(), Value::Null);
                    }
                    Some(new_v) => {
                        if let Some(p) = merge_patch_diff(old_v, new_v) {
                            patch.insert(k.clone(), p);
                        }
                    }
                }
            }
            for (k, new_v) in n {
                if !o.contains_key(k) {
                    patch.insert(k.clone(), strip_nulls(new_v));
                }
            }
            Some(Value::Object(patch))
        }
        _ => Some(strip_nulls(new)),
    }
}

/// Merge patches cannot set `null`; a null inside a new object means "absent".
fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Applies a merge patch (RFC 7386), for tests and for the stand-in's callers.
pub fn apply_merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("just made an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    apply_merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn removed_fields_become_null_and_unchanged_are_omitted() {
        let old = json!({"a": 1, "b": {"x": 1, "y": 2}, "c": [1, 2]});
        let new = json!({"a": 1, "b": {"x": 1}, "c": [1], "d": "new"});
        assert_eq!(
            merge_patch_diff(&old, &new).unwrap(),
            json!({"b": {"y": null}, "c": [1], "d": "new"})
        );
        assert_eq!(merge_patch_diff(&new, &new), None);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i32>().prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
            Just(Value::Bool(true))
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn applying_the_diff_yields_the_new_value(
            old in prop::collection::btree_map("[a-d]", arb_json(), 0..4),
            new in prop::collection::btree_map("[a-d]", arb_json(), 0..4),
        ) {
            let old = Value::Object(old.into_iter().collect());
            let new = Value::Object(new.into_iter().collect());
            let mut patched = old.clone();
            if let Some(p) = merge_patch_diff(&old, &new) {
                apply_merge_patch(&mut patched, &p);
            }
            prop_assert_eq!(patched, new);
        }
    }
}
