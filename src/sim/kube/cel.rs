//! CEL validation rules (`x-kubernetes-validations`) as a real API server treats them.
//!
//! - When a CRD is written, every rule must compile and its estimated cost must stay under the
//!   API server's budget (10 million per rule, 100 million for the whole schema). The estimate is
//!   a proxy for the server's: a rule costs what traversing everything beneath it costs, times how
//!   often it runs (the `maxItems` of the arrays above it). Unbounded inputs are sized as the
//!   server sizes them, from its 3 MiB request limit, so the factors it reports come out close to
//!   the real ones (`more than 100x` for an unbounded list of unbounded strings).
//! - The stand-in is stricter than that estimate on purpose: a rule whose subject or sub-fields
//!   include an array without `maxItems`, a string without `maxLength` or a map without
//!   `maxProperties` is refused even when the estimate passes, naming the field, so no CRD that a
//!   real server might refuse gets through here.
//! - On create, update and patch of a custom object, every rule is evaluated with the `cel`
//!   crate, `self` bound to the value at the rule's place and, for transition rules, `oldSelf`
//!   to the previous value there (a transition rule is skipped when there is none, as on the
//!   server). A failing rule answers with the server's wording: `path: Invalid value: "type": message`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

/// The API server's request size limit, from which it sizes unbounded strings and lists.
pub const MAX_REQUEST_BYTES: u64 = 3 * 1024 * 1024;
/// `StaticEstimatedCostLimit`: one rule.
pub const RULE_COST_LIMIT: u64 = 10_000_000;
/// `StaticEstimatedCRDCostLimit`: every rule of one schema together.
pub const TOTAL_COST_LIMIT: u64 = 100_000_000;
/// The server's advice, which ends each cost refusal.
const ADVICE: &str = "(try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)";

/// One `x-kubernetes-validations` entry and what the cost check makes of it.
#[derive(Debug, Clone)]
pub struct RuleSite {
    /// Where the rule sits, in the server's notation: `properties[spec].properties[csr]`.
    pub schema_path: String,
    /// The data the rule validates: `spec.csr`, `spec.items[*]`.
    pub data_path: String,
    pub index: usize,
    pub rule: String,
    pub message: Option<String>,
    /// Estimated cost, already multiplied by how often the rule runs.
    pub cost: u64,
    /// Fields the rule can read that have no upper bound: `spec.x (string without maxLength)`.
    pub unbounded: Vec<String>,
}

/// Every rule in `schema` (an `openAPIV3Schema`), in document order.
pub fn rule_sites(schema: &Value) -> Vec<RuleSite> {
    let mut out = Vec::new();
    collect_sites(schema, "", "", 1, &mut out);
    out
}

fn join_data(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

fn join_schema(parent: &str, child: &str) -> String {
    if child.is_empty() {
        parent.to_string()
    } else if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

fn collect_sites(
    schema: &Value,
    schema_path: &str,
    data_path: &str,
    cardinality: u64,
    out: &mut Vec<RuleSite>,
) {
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        let mut unbounded = Vec::new();
        unbounded_inputs(schema, data_path, &mut unbounded);
        for (index, r) in rules.iter().enumerate() {
            let rule = r.get("rule").and_then(Value::as_str).unwrap_or_default();
            let cost = cardinality
                .saturating_mul(read_cost(schema, rule))
                .saturating_mul(regex_factor(rule));
            out.push(RuleSite {
                schema_path: schema_path.to_string(),
                data_path: if data_path.is_empty() {
                    "<root>".into()
                } else {
                    data_path.to_string()
                },
                index,
                rule: rule.to_string(),
                message: r.get("message").and_then(Value::as_str).map(String::from),
                cost,
                unbounded: unbounded.clone(),
            });
        }
    }
    if let Some(Value::Object(props)) = schema.get("properties") {
        for (name, sub) in props {
            collect_sites(
                sub,
                &join_schema(schema_path, &format!("properties[{name}]")),
                &join_data(data_path, name),
                cardinality,
                out,
            );
        }
    }
    // List items and map values: a rule there runs once per element.
    let elements: [(&str, ElementCount); 2] = [
        ("items", max_items),
        ("additionalProperties", max_properties),
    ];
    let here = if data_path.is_empty() {
        "<root>"
    } else {
        data_path
    };
    for (key, count) in elements {
        if let Some(element) = schema.get(key).filter(|e| e.is_object()) {
            collect_sites(
                element,
                &join_schema(schema_path, key),
                &format!("{here}[*]"),
                cardinality.saturating_mul(count(schema, element)),
                out,
            );
        }
    }
}

/// How many elements (list items, map values) a schema allows.
type ElementCount = fn(&Value, &Value) -> u64;

fn u64_of(schema: &Value, key: &str) -> Option<u64> {
    schema.get(key).and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
    })
}

/// The smallest an item of this schema can be when serialised, as the server reckons it.
fn min_serialized_size(schema: &Value) -> u64 {
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return 1;
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => 2,
        Some("boolean") => 4,
        Some("object") | Some("array") => 2,
        _ => 1,
    }
}

fn max_items(array: &Value, items: &Value) -> u64 {
    u64_of(array, "maxItems")
        .unwrap_or_else(|| (MAX_REQUEST_BYTES - 2) / (min_serialized_size(items) + 1))
}

fn max_properties(map: &Value, values: &Value) -> u64 {
    // A map entry is at least `"":` plus the value and a comma.
    u64_of(map, "maxProperties")
        .unwrap_or_else(|| (MAX_REQUEST_BYTES - 2) / (min_serialized_size(values) + 4))
}

/// The longest a string of this schema can be: `maxLength`, the longest `enum` value, or the
/// whole request.
fn max_string_length(schema: &Value) -> Option<u64> {
    if let Some(n) = u64_of(schema, "maxLength") {
        return Some(n);
    }
    let options = schema.get("enum").and_then(Value::as_array)?;
    options
        .iter()
        .map(|o| o.as_str().map(|s| s.len() as u64))
        .collect::<Option<Vec<u64>>>()
        .and_then(|lens| lens.into_iter().max())
}

fn is_string(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("string")
        || schema
            .get("x-kubernetes-int-or-string")
            .and_then(Value::as_bool)
            .unwrap_or(false)
}

fn untyped(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        && schema.get("properties").is_none()
        && schema.get("additionalProperties").is_none()
}

/// What visiting everything under `schema` once costs: strings at a tenth of a unit per
/// character, as CEL's string functions are charged.
fn traversal_cost(schema: &Value) -> u64 {
    if untyped(schema) {
        return MAX_REQUEST_BYTES;
    }
    if is_string(schema) {
        let len = max_string_length(schema).unwrap_or(MAX_REQUEST_BYTES - 2);
        return 1 + len.div_ceil(10);
    }
    let mut cost: u64 = 1;
    if let Some(Value::Object(props)) = schema.get("properties") {
        for sub in props.values() {
            cost = cost.saturating_add(traversal_cost(sub));
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        let each = 1 + traversal_cost(items);
        cost = cost.saturating_add(max_items(schema, items).saturating_mul(each));
    }
    if let Some(values) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        let key = 1 + (MAX_REQUEST_BYTES / 10);
        let key = u64_of(schema, "maxProperties").map_or(key, |_| 1 + 253u64.div_ceil(10));
        let each = 1 + key + traversal_cost(values);
        cost = cost.saturating_add(max_properties(schema, values).saturating_mul(each));
    }
    cost
}

/// What one evaluation of `rule` costs: each place it reads (`self`, `self.a.b`) costs a
/// traversal of what is there; a presence test (`has(self.a)`) costs one.
fn read_cost(schema: &Value, rule: &str) -> u64 {
    let mut cost: u64 = 1;
    for (fields, presence_only) in self_reads(rule) {
        if presence_only {
            cost = cost.saturating_add(1);
            continue;
        }
        let mut node = Some(schema);
        for f in &fields {
            node = node
                .and_then(|n| n.get("properties"))
                .and_then(|p| p.get(f));
        }
        // A field the schema does not declare: charge the whole subject.
        let at = node.unwrap_or(schema);
        cost = cost.saturating_add(traversal_cost(at));
    }
    cost
}

/// The places a rule reads from `self` (or `oldSelf`): the field chain after it, and whether it
/// is only tested for presence with `has(...)`. A final `.name(` is a method call, not a field.
fn self_reads(rule: &str) -> Vec<(Vec<String>, bool)> {
    let bytes = rule.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let Some(rest) = rule.get(i..) else {
            i += 1;
            continue;
        };
        let word = if rest.starts_with("oldSelf") {
            "oldSelf"
        } else if rest.starts_with("self") {
            "self"
        } else {
            ""
        };
        let starts_word = i == 0 || !ident(bytes[i - 1]);
        if word.is_empty() || !starts_word || bytes.get(i + word.len()).is_some_and(|c| ident(*c)) {
            i += 1;
            continue;
        }
        let presence_only = rule[..i].trim_end().ends_with("has(");
        let mut j = i + word.len();
        let mut fields = Vec::new();
        while bytes.get(j) == Some(&b'.') {
            let start = j + 1;
            let mut end = start;
            while end < bytes.len() && ident(bytes[end]) {
                end += 1;
            }
            if end == start || bytes.get(end) == Some(&b'(') {
                break;
            }
            fields.push(rule[start..end].to_string());
            j = end;
        }
        out.push((fields, presence_only));
        i = j.max(i + 1);
    }
    out
}

/// `matches` runs a regular expression over the string: charged per pattern character, a
/// quarter each.
fn regex_factor(rule: &str) -> u64 {
    let mut factor = 1u64;
    let mut rest = rule;
    while let Some(at) = rest.find(".matches(") {
        rest = &rest[at + ".matches(".len()..];
        let pattern_len = rest.find(')').unwrap_or(rest.len()) as u64;
        factor = factor.saturating_mul(pattern_len.div_ceil(4).max(1));
    }
    factor
}

/// Every field under `schema` with no upper bound, named by its data path.
fn unbounded_inputs(schema: &Value, data_path: &str, out: &mut Vec<String>) {
    let here = if data_path.is_empty() {
        "<root>"
    } else {
        data_path
    };
    if untyped(schema) {
        out.push(format!(
            "{here} (x-kubernetes-preserve-unknown-fields without a schema)"
        ));
        return;
    }
    if is_string(schema) && max_string_length(schema).is_none() {
        out.push(format!("{here} (string without maxLength)"));
    }
    if let Some(Value::Object(props)) = schema.get("properties") {
        for (name, sub) in props {
            unbounded_inputs(sub, &join_data(data_path, name), out);
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        if u64_of(schema, "maxItems").is_none() {
            out.push(format!("{here} (array without maxItems)"));
        }
        unbounded_inputs(items, &format!("{here}[*]"), out);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        if u64_of(schema, "maxProperties").is_none() {
            out.push(format!("{here} (map without maxProperties)"));
        }
        unbounded_inputs(values, &format!("{here}[*]"), out);
    }
}

/// The server's wording for a cost over its limit.
pub fn cost_error_message(what: &str, cost: u64, limit: u64) -> String {
    let factor = cost as f64 / limit as f64;
    let factor = if factor > 100.0 {
        "more than 100x".to_string()
    } else if factor < 1.5 {
        format!("{factor:.6}x")
    } else {
        format!("{factor:.1}x")
    };
    format!("{what} exceeds budget by factor of {factor} {ADVICE}")
}

/// Why a real API server (or this stricter stand-in) refuses the rules of one
/// `openAPIV3Schema`, each as `path: Forbidden: …` or `path: Invalid value: …`.
/// `prefix` names the schema: `spec.validation.openAPIV3Schema`.
pub fn schema_rule_errors(schema: &Value, prefix: &str) -> Vec<String> {
    let sites = rule_sites(schema);
    let mut errors = Vec::new();
    let mut total: u64 = 0;
    let mut expensive: Vec<(u64, String)> = Vec::new();
    for site in &sites {
        let rule_path = format!(
            "{}.x-kubernetes-validations[{}].rule",
            join_schema(prefix, &site.schema_path),
            site.index
        );
        if let Err(e) = compile(&site.rule) {
            errors.push(format!(
                "{rule_path}: Invalid value: {}: compilation failed: {e}",
                Value::String(site.rule.clone())
            ));
            continue;
        }
        total = total.saturating_add(site.cost);
        if site.cost >= RULE_COST_LIMIT / 100 {
            expensive.push((site.cost, rule_path.clone()));
        }
        if site.cost > RULE_COST_LIMIT {
            errors.push(format!(
                "{rule_path}: Forbidden: {}",
                cost_error_message("estimated rule cost", site.cost, RULE_COST_LIMIT)
            ));
        } else if let Some(first) = site.unbounded.first() {
            errors.push(format!(
                "{rule_path}: Forbidden: the rule can read {first}, and a real API server's cost \
                 estimate for an unbounded input may exceed its budget; the stand-in refuses every \
                 unbounded rule input {ADVICE}"
            ));
        }
    }
    if total > TOTAL_COST_LIMIT {
        expensive.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (_, path) in expensive.iter().take(4) {
            errors.push(format!(
                "{path}: Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema"
            ));
        }
        errors.push(format!(
            "{prefix}: Forbidden: {}",
            cost_error_message(
                "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema",
                total,
                TOTAL_COST_LIMIT
            )
        ));
    }
    errors
}

/// Why a real API server refuses this CRD's validation rules (empty when it accepts them).
pub fn crd_rule_errors(crd: &Value) -> Vec<String> {
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let schemas: Vec<Option<&Value>> = versions
        .iter()
        .map(|v| v.pointer("/schema/openAPIV3Schema"))
        .collect();
    // With one schema for every version, the server validates it as the internal
    // `spec.validation`, and names it so in its errors.
    let shared = !schemas.is_empty() && schemas.iter().all(|s| *s == schemas[0]);
    if shared {
        return schemas[0]
            .map(|s| schema_rule_errors(s, "spec.validation.openAPIV3Schema"))
            .unwrap_or_default();
    }
    let mut errors = Vec::new();
    for (i, schema) in schemas.iter().enumerate() {
        if let Some(schema) = schema {
            errors.extend(schema_rule_errors(
                schema,
                &format!("spec.versions[{i}].schema.openAPIV3Schema"),
            ));
        }
    }
    errors
}

/// Compiled programs by rule text: the same few rules are evaluated on every write.
fn compile(rule: &str) -> Result<Arc<cel::Program>, String> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<cel::Program>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(rule) {
        return Ok(p.clone());
    }
    let program = Arc::new(cel::Program::compile(rule).map_err(|e| e.to_string())?);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(rule.to_string(), program.clone());
    Ok(program)
}

/// JSON as CEL sees it: integers are `int`, objects are maps with string keys.
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => match n.as_u64() {
                Some(u) => cel::Value::UInt(u),
                None => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => {
            let m: HashMap<cel::objects::Key, cel::Value> = map
                .iter()
                .map(|(k, v)| (cel::objects::Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(m) })
        }
    }
}

fn type_name(schema: &Value, v: &Value) -> String {
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        return t.to_string();
    }
    match v {
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
    }
    .to_string()
}

/// Evaluates every rule of `schema` on `obj` (after defaulting), with `old` the stored object
/// on an update. Returns the failures in the server's `path: Invalid value: "type": message` form.
pub fn validate_rules(schema: &Value, obj: &Value, old: Option<&Value>) -> Vec<String> {
    let mut errors = Vec::new();
    evaluate(schema, obj, old, "", &mut errors);
    errors
}

fn evaluate(schema: &Value, v: &Value, old: Option<&Value>, path: &str, errors: &mut Vec<String>) {
    if v.is_null() {
        return;
    }
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for r in rules {
            let Some(rule) = r.get("rule").and_then(Value::as_str) else {
                continue;
            };
            let shown = if path.is_empty() { "<nil>" } else { path };
            let ty = type_name(schema, v);
            let program = match compile(rule) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(format!(
                        "{shown}: Invalid value: \"{ty}\": compilation failed: {e}"
                    ));
                    continue;
                }
            };
            let transition = program.references().has_variable("oldSelf");
            let old_here = old.filter(|o| !o.is_null());
            if transition && old_here.is_none() {
                continue;
            }
            let mut ctx = cel::Context::default();
            ctx.add_variable_from_value("self", to_cel(v));
            if let Some(o) = old_here {
                ctx.add_variable_from_value("oldSelf", to_cel(o));
            }
            match program.execute(&ctx) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => {
                    let message = r
                        .get("message")
                        .and_then(Value::as_str)
                        .map(String::from)
                        .unwrap_or_else(|| format!("failed rule: {rule}"));
                    errors.push(format!("{shown}: Invalid value: \"{ty}\": {message}"));
                }
                Ok(other) => errors.push(format!(
                    "{shown}: Invalid value: \"{ty}\": rule did not evaluate to a bool: {other:?} evaluating rule: {rule}"
                )),
                Err(e) => errors.push(format!(
                    "{shown}: Invalid value: \"{ty}\": {e} evaluating rule: {rule}"
                )),
            }
        }
    }
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = schema.get("properties") {
                for (key, sub) in props {
                    if let Some(child) = map.get(key) {
                        let old_child = old.and_then(|o| o.get(key));
                        evaluate(sub, child, old_child, &join_data(path, key), errors);
                    }
                }
            } else if let Some(values) =
                schema.get("additionalProperties").filter(|a| a.is_object())
            {
                for (key, child) in map {
                    let old_child = old.and_then(|o| o.get(key));
                    evaluate(values, child, old_child, &format!("{path}[{key}]"), errors);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items").filter(|i| i.is_object()) {
                // The server correlates old list items only for map and set lists; none here.
                for (i, item) in items.iter().enumerate() {
                    evaluate(item_schema, item, None, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn san_schema(max_items: Option<u64>, max_len: Option<u64>) -> Value {
        let mut items = json!({"type": "string"});
        if let Some(n) = max_len {
            items["maxLength"] = json!(n);
        }
        let mut sans = json!({"type": "array", "items": items,
            "x-kubernetes-validations": [{"rule": "self.all(n, !n.contains('*'))",
                                          "message": "no wildcards"}]});
        if let Some(n) = max_items {
            sans["maxItems"] = json!(n);
        }
        json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"sans": sans}}}})
    }

    #[test]
    fn unbounded_list_of_unbounded_strings_is_more_than_100x_over() {
        let errors = schema_rule_errors(&san_schema(None, None), "spec.validation.openAPIV3Schema");
        let text = errors.join("\n");
        assert!(
            text.contains("spec.validation.openAPIV3Schema.properties[spec].properties[sans].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"),
            "{text}"
        );
        assert!(
            text.contains("contributed to estimated rule cost total"),
            "{text}"
        );
        assert!(
            text.contains("spec.validation.openAPIV3Schema: Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget by factor of more than 100x"),
            "{text}"
        );
    }

    #[test]
    fn half_bounded_lists_are_still_over_budget_and_bounded_ones_pass() {
        for (items, len) in [(Some(100), None), (None, Some(253))] {
            let errors = schema_rule_errors(&san_schema(items, len), "s");
            assert!(
                errors.iter().any(|e| e.contains("Forbidden")),
                "{items:?} {len:?}: {errors:?}"
            );
        }
        let errors = schema_rule_errors(&san_schema(Some(100), Some(253)), "s");
        assert!(errors.is_empty(), "{errors:?}");
        let sites = rule_sites(&san_schema(Some(100), Some(253)));
        assert_eq!(sites.len(), 1);
        assert!(sites[0].unbounded.is_empty());
        assert!(sites[0].cost < RULE_COST_LIMIT / 1000, "{}", sites[0].cost);
    }

    #[test]
    fn cheap_rules_on_unbounded_strings_are_refused_by_name() {
        let schema = json!({"type": "object", "properties": {"url": {"type": "string",
            "x-kubernetes-validations": [{"rule": "self.startsWith('https://')"}]}}});
        let errors = schema_rule_errors(&schema, "p");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("url (string without maxLength)"),
            "{errors:?}"
        );
        let bounded_enum = json!({"type": "object", "properties": {"mode": {"type": "string",
            "enum": ["A", "B"], "x-kubernetes-validations": [{"rule": "self != 'C'"}]}}});
        assert!(schema_rule_errors(&bounded_enum, "p").is_empty());
    }

    #[test]
    fn reads_are_found_by_field_chain() {
        assert_eq!(
            self_reads("self.keySource != 'Tenant' || has(self.csr)"),
            vec![
                (vec!["keySource".to_string()], false),
                (vec!["csr".to_string()], true)
            ]
        );
        assert_eq!(
            self_reads("self.all(n, !n.contains('*'))"),
            vec![(vec![], false)]
        );
        assert_eq!(
            self_reads("self == oldSelf"),
            vec![(vec![], false), (vec![], false)]
        );
        assert_eq!(self_reads("myself.x"), vec![]);
        assert_eq!(self_reads("'µ' == self"), vec![(vec![], false)]);
    }

    #[test]
    fn rules_that_do_not_compile_are_invalid() {
        let schema = json!({"type": "object", "maxProperties": 1,
            "x-kubernetes-validations": [{"rule": "self.a ==="}]});
        let errors = schema_rule_errors(&schema, "p");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("compilation failed"), "{errors:?}");
    }

    #[test]
    fn rules_are_evaluated_with_self_and_old_self() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
            "x-kubernetes-validations": [{"rule": "!(has(self.a) && has(self.b))", "message": "a or b"}],
            "properties": {
                "a": {"type": "string", "maxLength": 5,
                      "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "a is immutable"}]},
                "b": {"type": "integer"},
                "n": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 3},
                      "x-kubernetes-validations": [{"rule": "self.all(x, x.matches('^[a-z]+$'))"}]}}}}});
        assert!(
            validate_rules(&schema, &json!({"spec": {"a": "x", "n": ["ab"]}}), None).is_empty()
        );
        let both = validate_rules(&schema, &json!({"spec": {"a": "x", "b": 1}}), None);
        assert_eq!(
            both,
            vec!["spec: Invalid value: \"object\": a or b".to_string()]
        );
        let changed = validate_rules(
            &schema,
            &json!({"spec": {"a": "y"}}),
            Some(&json!({"spec": {"a": "x"}})),
        );
        assert_eq!(
            changed,
            vec!["spec.a: Invalid value: \"string\": a is immutable".to_string()]
        );
        let bad_item = validate_rules(&schema, &json!({"spec": {"n": ["ab", "A1"]}}), None);
        assert_eq!(
            bad_item,
            vec![
                "spec.n: Invalid value: \"array\": failed rule: self.all(x, x.matches('^[a-z]+$'))"
                    .to_string()
            ]
        );
    }
}
