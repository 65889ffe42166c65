//! Validation and pruning of custom objects against their CRD's structural `openAPIV3Schema`.
//!
//! Applied: `default` (when the field is absent, or null and not `nullable`).
//! Validated: `type` (object, array, string, integer, number, boolean; `nullable`), `required`,
//! `enum`, `x-kubernetes-int-or-string`, and recursively `properties`, `additionalProperties`
//! (as a schema) and `items`. Pruned: fields not declared in `properties` of an object schema,
//! unless `x-kubernetes-preserve-unknown-fields: true` or `additionalProperties` is given;
//! `apiVersion`, `kind` and `metadata` at the root are never pruned.
//!
//! Also validated, with the server's wording: `maxLength`/`minLength` (in characters),
//! `maxItems`/`minItems`, `maxProperties`/`minProperties`, `minimum`/`maximum` (and their
//! exclusive forms) and `pattern`. CEL rules (`x-kubernetes-validations`) are `super::cel`'s.
//!
//! Not validated: `format`, `uniqueItems`, `oneOf`/`anyOf`/`allOf`/`not`.

use serde_json::Value;

/// Prunes unknown fields and disallowed nulls from `obj`, applies `default`s, and returns the
/// validation errors (empty when valid), in the API server's `path: message` style.
pub fn validate_and_prune(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut errors = Vec::new();
    match obj.as_object_mut() {
        Some(root) => check_object(schema, root, "", &mut errors),
        None => errors.push("<root>: Invalid value: must be an object".into()),
    }
    errors
}

fn nullable(schema: &Value) -> bool {
    schema
        .get("nullable")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// One object level: prune, default, recurse, then check `required`.
fn check_object(
    schema: &Value,
    map: &mut serde_json::Map<String, Value>,
    path: &str,
    errors: &mut Vec<String>,
) {
    let root = path.is_empty();
    let props = schema.get("properties");
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    let preserve = preserves_unknown(schema)
        || schema
            .get("x-kubernetes-embedded-resource")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    // A schema that declares nothing about its fields (no type either) is not structural
    // enough to prune by; keep what it has.
    let prunes = props.is_some() || additional.is_some() || schema.get("type").is_some();
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in &keys {
        if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match props.and_then(|p| p.get(key)).or(additional) {
            // Nulls of non-nullable fields are pruned (then defaulted), as the server does.
            Some(sub) if map.get(key).is_some_and(Value::is_null) && !nullable(sub) => {
                map.remove(key);
            }
            Some(_) => {}
            None if !preserve && prunes => {
                map.remove(key);
            }
            None => {}
        }
    }
    if let Some(Value::Object(props)) = props {
        for (key, sub) in props {
            if let Some(default) = sub.get("default")
                && !map.contains_key(key)
            {
                map.insert(key.clone(), default.clone());
            }
        }
    }
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(sub) = props.and_then(|p| p.get(&key)).or(additional)
            && let Some(v) = map.get_mut(&key)
        {
            let child = if root {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            check(sub, v, &child, errors);
        }
    }
    if let Some(req) = schema.get("required").and_then(Value::as_array) {
        for r in req.iter().filter_map(Value::as_str) {
            if !map.contains_key(r) {
                let p = if root {
                    r.to_string()
                } else {
                    format!("{path}.{r}")
                };
                errors.push(format!("{p}: Required value"));
            }
        }
    }
}

fn preserves_unknown(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn type_matches(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    }
}

fn check(schema: &Value, v: &mut Value, path: &str, errors: &mut Vec<String>) {
    if v.is_null() {
        // Only reachable for nullable fields (others were pruned) and list items.
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if int_or_string {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            errors.push(format!(
                "{path}: Invalid value: must be an integer or a string"
            ));
        }
        return;
    }
    if let Some(ty) = schema.get("type").and_then(Value::as_str)
        && !type_matches(ty, v)
    {
        errors.push(format!(
            "{path}: Invalid value: \"{}\": {path} in body must be of type {ty}",
            json_type(v)
        ));
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        let listed: Vec<String> = options.iter().map(Value::to_string).collect();
        errors.push(format!(
            "{path}: Unsupported value: {v}: supported values: {}",
            listed.join(", ")
        ));
    }
    check_bounds(schema, v, path, errors);
    match v {
        Value::Object(map) => check_object(schema, map, path, errors),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

fn bound(schema: &Value, key: &str) -> Option<f64> {
    schema.get(key).and_then(Value::as_f64)
}

/// Lengths, counts, ranges and patterns, worded as the API server words them.
fn check_bounds(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            let len = s.chars().count() as f64;
            if let Some(max) = bound(schema, "maxLength")
                && len > max
            {
                errors.push(format!("{path}: Too long: may not be longer than {max}"));
            }
            if let Some(min) = bound(schema, "minLength")
                && len < min
            {
                errors.push(format!(
                    "{path}: Invalid value: {v}: {path} in body should be at least {min} chars long"
                ));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(pattern) {
                    Ok(re) if re.is_match(s) => {}
                    _ => errors.push(format!(
                        "{path}: Invalid value: {v}: {path} in body should match '{pattern}'"
                    )),
                }
            }
        }
        Value::Array(items) => {
            let n = items.len() as f64;
            if let Some(max) = bound(schema, "maxItems")
                && n > max
            {
                errors.push(format!(
                    "{path}: Too many: {n}: must have at most {max} items"
                ));
            }
            if let Some(min) = bound(schema, "minItems")
                && n < min
            {
                errors.push(format!(
                    "{path}: Invalid value: {n}: {path} in body should have at least {min} items"
                ));
            }
        }
        Value::Object(map) => {
            let n = map.len() as f64;
            if let Some(max) = bound(schema, "maxProperties")
                && n > max
            {
                errors.push(format!(
                    "{path}: Too many: {n}: must have at most {max} items"
                ));
            }
            if let Some(min) = bound(schema, "minProperties")
                && n < min
            {
                errors.push(format!(
                    "{path}: Invalid value: {n}: {path} in body should have at least {min} properties"
                ));
            }
        }
        Value::Number(x) => {
            let x = x.as_f64().unwrap_or(f64::NAN);
            let exclusive = |k: &str| schema.get(k).and_then(Value::as_bool).unwrap_or(false);
            if let Some(max) = bound(schema, "maximum") {
                if exclusive("exclusiveMaximum") && x >= max {
                    errors.push(format!(
                        "{path}: Invalid value: {v}: {path} in body should be less than {max}"
                    ));
                } else if x > max {
                    errors.push(format!(
                        "{path}: Invalid value: {v}: {path} in body should be less than or equal to {max}"
                    ));
                }
            }
            if let Some(min) = bound(schema, "minimum") {
                if exclusive("exclusiveMinimum") && x <= min {
                    errors.push(format!(
                        "{path}: Invalid value: {v}: {path} in body should be greater than {min}"
                    ));
                } else if x < min {
                    errors.push(format!(
                        "{path}: Invalid value: {v}: {path} in body should be greater than or equal to {min}"
                    ));
                }
            }
        }
        _ => {}
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["host"],
                    "properties": {
                        "host": {"type": "string"},
                        "replicas": {"type": "integer", "default": 1},
                        "nested": {"type": "object", "default": {},
                                   "properties": {"on": {"type": "boolean", "default": true}}},
                        "mode": {"type": "string", "enum": ["A", "B"]},
                        "port": {"x-kubernetes-int-or-string": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "items": {"type": "array", "items": {"type": "object",
                            "properties": {"n": {"type": "integer"}}}},
                        "maybe": {"type": "string", "nullable": true}
                    }
                },
                "status": {"type": "object", "properties": {"ok": {"type": "boolean"}}}
            }
        })
    }

    #[test]
    fn valid_object_is_pruned_of_unknown_fields() {
        let mut o = json!({
            "apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a", "whatever": 1},
            "spec": {"host": "h", "replicas": 2, "mode": "A", "port": "http", "unknown": 1,
                     "labels": {"a": "b"}, "free": {"anything": [1]},
                     "items": [{"n": 1, "junk": true}], "maybe": null},
            "extra": true
        });
        let mut defaulted = json!({"spec": {"host": "h", "replicas": null}});
        assert!(validate_and_prune(&schema(), &mut defaulted).is_empty());
        assert_eq!(
            defaulted["spec"]["replicas"], 1,
            "null pruned, then defaulted"
        );
        assert_eq!(
            defaulted["spec"]["nested"],
            json!({"on": true}),
            "defaults nest"
        );
        assert_eq!(validate_and_prune(&schema(), &mut o), Vec::<String>::new());
        assert!(o.get("extra").is_none());
        assert!(o["spec"].get("unknown").is_none());
        assert!(o["spec"]["items"][0].get("junk").is_none());
        assert_eq!(o["spec"]["free"]["anything"], json!([1]));
        assert_eq!(o["metadata"]["whatever"], 1);
        assert_eq!(o["spec"]["maybe"], Value::Null, "nullable nulls stay");
    }

    #[test]
    fn type_required_and_enum_errors_are_reported() {
        let mut o = json!({"spec": {"replicas": "two", "mode": "C", "port": 1.5,
                                    "labels": {"a": 1}}});
        let errors = validate_and_prune(&schema(), &mut o);
        let text = errors.join("\n");
        assert!(text.contains("spec.replicas: Invalid value"), "{text}");
        assert!(
            text.contains("spec.mode: Unsupported value: \"C\""),
            "{text}"
        );
        assert!(text.contains("spec.port: Invalid value"), "{text}");
        assert!(text.contains("spec.labels.a: Invalid value"), "{text}");
        assert!(text.contains("spec.host: Required value"), "{text}");
        assert_eq!(errors.len(), 5);
    }

    #[test]
    fn bounds_are_enforced_with_the_servers_wording() {
        let schema = json!({"type": "object", "properties": {
            "s": {"type": "string", "maxLength": 3, "minLength": 2},
            "p": {"type": "string", "pattern": "^[a-z]+$"},
            "l": {"type": "array", "maxItems": 1, "items": {"type": "string"}},
            "m": {"type": "object", "maxProperties": 1, "additionalProperties": {"type": "string"}},
            "i": {"type": "integer", "minimum": 1, "maximum": 20}}});
        let mut ok = json!({"s": "ab", "p": "abc", "l": ["x"], "m": {"a": "b"}, "i": 20});
        assert!(validate_and_prune(&schema, &mut ok).is_empty());
        let mut bad =
            json!({"s": "abcd", "p": "A", "l": ["x", "y"], "m": {"a": "b", "c": "d"}, "i": 21});
        let errors = validate_and_prune(&schema, &mut bad);
        assert_eq!(
            errors,
            vec![
                "i: Invalid value: 21: i in body should be less than or equal to 20",
                "l: Too many: 2: must have at most 1 items",
                "m: Too many: 2: must have at most 1 items",
                "p: Invalid value: \"A\": p in body should match '^[a-z]+$'",
                "s: Too long: may not be longer than 3",
            ]
        );
        let mut short = json!({"s": "a", "i": 0});
        let errors = validate_and_prune(&schema, &mut short);
        assert_eq!(
            errors,
            vec![
                "i: Invalid value: 0: i in body should be greater than or equal to 1",
                "s: Invalid value: \"a\": s in body should be at least 2 chars long",
            ]
        );
    }
}
