//! kstatus conditions (`Ready`, `Reconciling`, `Stalled`) shared by both kinds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::{JsonSchema, Schema, SchemaGenerator};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// What a reconcile concluded, in the three kstatus conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ready: bool,
    /// Work in progress (waiting for `live`, rotating, refreshing).
    pub reconciling: bool,
    /// Cannot progress without a person.
    pub stalled: bool,
    /// CamelCase, for all three conditions.
    pub reason: String,
    pub message: String,
}

impl Verdict {
    pub fn ready(reason: &str, message: impl Into<String>) -> Self {
        Self {
            ready: true,
            reconciling: false,
            stalled: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub fn progressing(ready: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            ready,
            reconciling: true,
            stalled: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
    /// `certrotor.io/paused`: Ready stays as it was; nothing is in progress.
    pub fn paused(ready: bool, what: &str) -> Self {
        let message = format!("{} is \"true\": no {what} calls", super::PAUSED_ANNOTATION);
        Self {
            ready,
            reconciling: false,
            stalled: false,
            reason: "Paused".into(),
            message,
        }
    }
    pub fn stalled(ready: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            ready,
            reconciling: false,
            stalled: true,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Sets `type_` in `conditions`, keeping `lastTransitionTime` unless `status` changes.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: jiff::Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let reason = if reason.is_empty() {
        "Unknown".to_string()
    } else {
        reason.to_string()
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(now);
            }
            c.status = status;
            c.reason = reason;
            c.message = message.to_string();
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason,
            message: message.to_string(),
            observed_generation: generation,
            last_transition_time: Time(now),
        }),
    }
}

/// Applies a verdict to all three conditions.
pub fn apply_verdict(
    conditions: &mut Vec<Condition>,
    verdict: &Verdict,
    generation: Option<i64>,
    now: jiff::Timestamp,
) {
    let Verdict {
        ready,
        reconciling,
        stalled,
        reason,
        message,
    } = verdict;
    set_condition(conditions, READY, *ready, reason, message, generation, now);
    set_condition(
        conditions,
        RECONCILING,
        *reconciling,
        reason,
        message,
        generation,
        now,
    );
    set_condition(
        conditions, STALLED, *stalled, reason, message, generation, now,
    );
}

pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    condition(conditions, type_).is_some_and(|c| c.status == "True")
}

/// The conditions list as a list-map keyed on `type`, so a server-side-apply status patch
/// merges conditions instead of replacing the whole list.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let item = Condition::json_schema(generator);
    schemars::json_schema!({
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn transition_time_moves_only_with_status() {
        let mut conds = vec![];
        set_condition(&mut conds, READY, false, "Pending", "a", Some(1), at(100));
        set_condition(
            &mut conds,
            READY,
            false,
            "StillPending",
            "b",
            Some(2),
            at(200),
        );
        assert_eq!(conds[0].last_transition_time.0, at(100));
        assert_eq!(conds[0].reason, "StillPending");
        assert_eq!(conds[0].observed_generation, Some(2));
        set_condition(&mut conds, READY, true, "Live", "c", Some(2), at(300));
        assert_eq!(conds[0].last_transition_time.0, at(300));
        assert_eq!(conds.len(), 1);
    }

    #[test]
    fn verdict_sets_all_three() {
        let mut conds = vec![];
        apply_verdict(
            &mut conds,
            &Verdict::stalled(false, "InvalidPem", "fix it"),
            Some(1),
            at(1),
        );
        assert!(!is_true(&conds, READY));
        assert!(!is_true(&conds, RECONCILING));
        assert!(is_true(&conds, STALLED));
        assert_eq!(condition(&conds, STALLED).unwrap().reason, "InvalidPem");
    }
}
