//! Label and field selectors, as the API server parses them from `labelSelector` and
//! `fieldSelector` query parameters.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelTerm {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector; an empty one matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelTerm>);

/// Splits on commas that are not inside `( )`.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set, found {rest:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn valid_key(key: &str) -> Result<String, String> {
    let key = key.trim();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(format!("invalid label key {key:?}"));
    }
    Ok(key.to_string())
}

fn parse_term(term: &str) -> Result<LabelTerm, String> {
    let term = term.trim();
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelTerm::NotExists(valid_key(key)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(LabelTerm::NotEq(valid_key(k)?, v.trim().to_string()));
    }
    if let Some((k, v)) = term.split_once("==") {
        return Ok(LabelTerm::Eq(valid_key(k)?, v.trim().to_string()));
    }
    if let Some((k, v)) = term.split_once('=') {
        return Ok(LabelTerm::Eq(valid_key(k)?, v.trim().to_string()));
    }
    // `key in (a,b)` / `key notin (a,b)`: the key never contains spaces.
    if let Some((key, rest)) = term.split_once(char::is_whitespace) {
        let rest = rest.trim_start();
        if let Some(set) = rest.strip_prefix("notin") {
            return Ok(LabelTerm::NotIn(valid_key(key)?, parse_set(set)?));
        }
        if let Some(set) = rest.strip_prefix("in") {
            return Ok(LabelTerm::In(valid_key(key)?, parse_set(set)?));
        }
        return Err(format!("unable to parse requirement {term:?}"));
    }
    Ok(LabelTerm::Exists(valid_key(term)?))
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        split_top_level(s)
            .into_iter()
            .map(parse_term)
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Matches against `metadata.labels` of an object.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|t| match t {
            LabelTerm::Exists(k) => get(k).is_some(),
            LabelTerm::NotExists(k) => get(k).is_none(),
            LabelTerm::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelTerm::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelTerm::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelTerm::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        })
    }
}

/// A parsed field selector: `path=value`, `path==value`, `path!=value`, comma-separated. Paths
/// are dotted (`metadata.name`, `involvedObject.uid`, `type`) and evaluated on the object as
/// served, so any scalar field works, not only the few the real server indexes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        s.split(',')
            .map(|term| {
                let term = term.trim();
                let (path, equal, value) = if let Some((p, v)) = term.split_once("!=") {
                    (p, false, v)
                } else if let Some((p, v)) = term.split_once("==") {
                    (p, true, v)
                } else if let Some((p, v)) = term.split_once('=') {
                    (p, true, v)
                } else {
                    return Err(format!("invalid field selector term {term:?}"));
                };
                Ok((path.trim().to_string(), equal, value.trim().to_string()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, want)| {
            let found = path
                .split('.')
                .try_fold(object, |v, seg| v.get(seg))
                .map(scalar_text)
                .unwrap_or_default();
            (found == *want) == *equal
        })
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns1", "labels": labels}, "type": "Opaque"})
    }

    #[test]
    fn label_operators() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        let yes = [
            "",
            "app=web",
            "app==web",
            "app!=db",
            "missing!=x",
            "app",
            "!missing",
            "app in (web, db)",
            "app notin (db)",
            "missing notin (db)",
            "app=web,tier in (front,back)",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&o), "{s}");
        }
        let no = [
            "app=db",
            "app!=web",
            "missing",
            "!app",
            "app in (db)",
            "missing in (web)",
            "app notin (web,db)",
            "app=web,tier=back",
        ];
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(&o), "{s}");
        }
    }

    #[test]
    fn bad_label_selectors_are_rejected() {
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("app foo (x)").is_err());
        assert!(LabelSelector::parse("=x").is_err());
    }

    #[test]
    fn field_selectors() {
        let o = obj(json!({}));
        assert!(FieldSelector::parse("metadata.name=a").unwrap().matches(&o));
        assert!(
            FieldSelector::parse("metadata.name==a,metadata.namespace=ns1")
                .unwrap()
                .matches(&o)
        );
        assert!(
            !FieldSelector::parse("metadata.name!=a")
                .unwrap()
                .matches(&o)
        );
        assert!(FieldSelector::parse("type=Opaque").unwrap().matches(&o));
        assert!(FieldSelector::parse("spec.x!=1").unwrap().matches(&o));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
