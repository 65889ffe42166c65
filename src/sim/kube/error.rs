//! API errors, answered as metav1 `Status` objects like the real server's.

use serde_json::{Value, json};

use super::resources::ResourceInfo;

/// `ConfigMap`, `Widget.example.com`: how the server names a kind in messages.
fn group_kind(info: &ResourceInfo) -> String {
    if info.group.is_empty() {
        info.kind.clone()
    } else {
        format!("{}.{}", info.kind, info.group)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, info: &ResourceInfo, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": info.group, "kind": info.plural}));
        self
    }

    pub fn not_found(info: &ResourceInfo, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", info.group_resource()),
        )
        .with_details(info, name)
    }

    pub fn already_exists(info: &ResourceInfo, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", info.group_resource()),
        )
        .with_details(info, name)
    }

    pub fn conflict(info: &ResourceInfo, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                info.group_resource()
            ),
        )
        .with_details(info, name)
    }

    pub fn invalid(info: &ResourceInfo, name: &str, causes: &[String]) -> Self {
        Self::new(
            422,
            "Invalid",
            // One cause reads as itself; several as a bracketed list, as Go's ErrorList prints.
            format!(
                "{} \"{name}\" is invalid: {}",
                group_kind(info),
                if causes.len() == 1 {
                    causes[0].clone()
                } else {
                    format!("[{}]", causes.join(", "))
                }
            ),
        )
        .with_invalid_details(info, name, causes)
    }

    /// As `NewInvalid` fills them: the kind (not the resource), and one cause per field error,
    /// which is what kubectl prints after "The Kind "name" is invalid:".
    fn with_invalid_details(mut self, info: &ResourceInfo, name: &str, causes: &[String]) -> Self {
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| {
                let (field, body) = c.split_once(": ").unwrap_or(("", c.as_str()));
                json!({"reason": cause_type(body), "message": body, "field": field})
            })
            .collect();
        self.details = Some(json!({
            "name": name, "group": info.group, "kind": info.kind, "causes": causes,
        }));
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type:?})"
            ),
        )
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn forbidden(info: &ResourceInfo, name: &str, message: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: {message}",
                info.group_resource()
            ),
        )
        .with_details(info, name)
    }

    /// The metav1 `Status` body.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

/// The `CauseType` of a field error, from the words its message starts with.
fn cause_type(body: &str) -> &'static str {
    const TYPES: &[(&str, &str)] = &[
        ("Required value", "FieldValueRequired"),
        ("Invalid value", "FieldValueInvalid"),
        ("Unsupported value", "FieldValueNotSupported"),
        ("Duplicate value", "FieldValueDuplicate"),
        ("Too long", "FieldValueTooLong"),
        ("Too many", "FieldValueTooMany"),
        ("Forbidden", "FieldValueForbidden"),
        ("Not found", "FieldValueNotFound"),
    ];
    TYPES
        .iter()
        .find(|(prefix, _)| body.starts_with(prefix))
        .map_or("FieldValueInvalid", |(_, t)| t)
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::kube::resources::builtins;

    #[test]
    fn statuses_look_like_the_api_servers() {
        let all = builtins();
        let cm = all.iter().find(|r| r.plural == "configmaps").unwrap();
        let lease = all.iter().find(|r| r.plural == "leases").unwrap();
        let s = ApiError::invalid(cm, "x", &["a: b".into()]).to_status();
        assert_eq!(s["message"], "ConfigMap \"x\" is invalid: a: b");
        assert_eq!(s["details"]["kind"], "ConfigMap");
        assert_eq!(
            s["details"]["causes"],
            json!([{"reason": "FieldValueInvalid", "message": "b", "field": "a"}])
        );
        let s = ApiError::invalid(cm, "x", &["data: Required value".into()]).to_status();
        assert_eq!(s["details"]["causes"][0]["reason"], "FieldValueRequired");
        assert_eq!(
            (s["code"].as_u64(), s["reason"].as_str()),
            (Some(422), Some("Invalid"))
        );
        let s = ApiError::not_found(lease, "l").to_status();
        assert_eq!(s["message"], "leases.coordination.k8s.io \"l\" not found");
        assert_eq!(s["details"]["group"], "coordination.k8s.io");
        assert_eq!(
            (s["kind"].as_str(), s["status"].as_str()),
            (Some("Status"), Some("Failure"))
        );
    }
}
