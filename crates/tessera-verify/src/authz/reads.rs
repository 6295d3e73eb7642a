//! What of a request a policy can read: which of the call's arguments, and whether its
//! conditions look at the task or the context at all.
//!
//! Converting every argument to a Cedar value on every request costs more than
//! evaluating most policies, and most policies never look at most arguments (an
//! `owner`, `repo`, `number` that only the tool cares about). A policy can observe an
//! argument only through `context.arguments`, so each policy's JSON form (Cedar's EST)
//! is walked once at load and every use of `context` classified:
//!
//! - `context.arguments.k`, `context.arguments["k"]`, `context.arguments has k`: the
//!   key `k` (its whole value, however deep the policy looks into it);
//! - `context.<other>` and `context has <attr>`: no argument;
//! - anything else (`context.arguments` or `context` as a value, e.g. compared with
//!   `==`, or in an `if`): every argument.
//!
//! The walk only ever narrows on the three shapes above and treats every other
//! appearance of `context` as reading everything, so an EST shape it does not know
//! errs towards converting too much, never too little. An argument no policy of a
//! slice reads cannot change that slice's decision: Cedar's evaluation of the slice
//! never touches it. Whether it is representable is still checked (see
//! [`super::json`]), so a call is refused for an unsupported value whether or not a
//! policy reads it.

use std::collections::BTreeSet;

use cedar_policy::{EntityTypeName, Policy};
use serde_json::{Map, Value};

/// What a policy reads of a request, from its JSON form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PolicyReads {
    /// The call arguments it can read.
    pub(crate) arguments: ArgumentReads,
    /// Whether its `when`/`unless` conditions can depend on which task asks or on the
    /// context: they mention `principal`, `context`, or an entity of the task type
    /// (a literal task could be the principal). Without any of these, a condition's
    /// value is the same for every request of one (action, resource, client), because
    /// nothing else in the entity store differs between them.
    pub(crate) task_or_context: bool,
}

impl PolicyReads {
    /// What `policy`, whose principals are of type `task_type`, reads. A policy Cedar
    /// cannot render as JSON reads everything.
    pub(crate) fn of_policy(policy: &Policy, task_type: &EntityTypeName) -> Self {
        match policy.to_json() {
            Ok(est) => {
                let mut arguments = ArgumentReads::default();
                walk(&est, &mut arguments);
                let task = task_type.to_string();
                let task_or_context = est
                    .get("conditions")
                    .is_none_or(|c| mentions_task_or_context(c, &task));
                Self {
                    arguments,
                    task_or_context,
                }
            }
            Err(e) => {
                tracing::warn!(policy = %policy.id(), error = %e,
                    "policy has no JSON form; evaluated with every call argument");
                Self {
                    arguments: ArgumentReads::All,
                    task_or_context: true,
                }
            }
        }
    }
}

/// Whether `node` mentions the variables `principal` or `context`, or an entity of
/// type `task` (in any shape: an `__entity` escape, an `entity` reference).
fn mentions_task_or_context(node: &Value, task: &str) -> bool {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(var)) = map.get("Var")
                && (var == "principal" || var == "context")
            {
                return true;
            }
            if map.get("type").and_then(Value::as_str) == Some(task) {
                return true;
            }
            map.values().any(|v| mentions_task_or_context(v, task))
        }
        Value::Array(items) => items.iter().any(|v| mentions_task_or_context(v, task)),
        _ => false,
    }
}

/// The argument keys a set of policies can read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ArgumentReads {
    /// These top-level keys, and nothing else (none when empty).
    Keys(BTreeSet<String>),
    /// The arguments as a whole.
    All,
}

impl Default for ArgumentReads {
    fn default() -> Self {
        Self::Keys(BTreeSet::new())
    }
}

impl ArgumentReads {
    /// Adds what `other` reads.
    pub(crate) fn extend(&mut self, other: &Self) {
        match (&mut *self, other) {
            (Self::All, _) => {}
            (_, Self::All) => *self = Self::All,
            (Self::Keys(mine), Self::Keys(theirs)) => mine.extend(theirs.iter().cloned()),
        }
    }

    /// Whether the argument `key` can be read.
    pub(crate) fn reads(&self, key: &str) -> bool {
        match self {
            Self::All => true,
            Self::Keys(keys) => keys.contains(key),
        }
    }

    /// Whether no argument can be read.
    #[cfg(test)]
    pub(crate) fn is_none(&self) -> bool {
        matches!(self, Self::Keys(keys) if keys.is_empty())
    }

    fn add(&mut self, key: &str) {
        if let Self::Keys(keys) = self {
            keys.insert(key.to_owned());
        }
    }
}

fn walk(node: &Value, reads: &mut ArgumentReads) {
    match node {
        Value::Object(map) => {
            if is_var_context(map) {
                // `context` as a value: it carries every argument.
                *reads = ArgumentReads::All;
                return;
            }
            if let Some((op, left, path)) = attr_access(map) {
                if let Some(left) = left.as_object()
                    && is_var_context(left)
                {
                    match (op, path.as_slice()) {
                        // `context.arguments` as a value (not followed by a key).
                        (".", ["arguments"]) => *reads = ArgumentReads::All,
                        // `context has arguments.k` (Cedar's `has` takes a path).
                        ("has", ["arguments", key, ..]) => reads.add(key),
                        // `context.now`, `context has arguments`: no argument.
                        _ => {}
                    }
                    return;
                }
                if let Some(left) = left.as_object()
                    && is_context_arguments(left)
                    && let Some(key) = path.first()
                {
                    reads.add(key);
                    return;
                }
            }
            for v in map.values() {
                walk(v, reads);
            }
        }
        Value::Array(items) => {
            for v in items {
                walk(v, reads);
            }
        }
        _ => {}
    }
}

/// `{"Var": "context"}`.
fn is_var_context(map: &Map<String, Value>) -> bool {
    map.len() == 1 && map.get("Var").and_then(Value::as_str) == Some("context")
}

/// `{".": {"left": L, "attr": "a"}}`, or `{"has": {"left": L, "attr": A}}` where `A`
/// is one attribute or a path of them (`e has a.b`): `(op, L, [a, ...])`.
fn attr_access(map: &Map<String, Value>) -> Option<(&str, &Value, Vec<&str>)> {
    if map.len() != 1 {
        return None;
    }
    let (op, body) = map.iter().next()?;
    if op != "." && op != "has" {
        return None;
    }
    let body = body.as_object()?;
    let path = match body.get("attr")? {
        Value::String(a) => vec![a.as_str()],
        Value::Array(items) if op == "has" && !items.is_empty() => items
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<_>>>()?,
        _ => return None,
    };
    Some((op, body.get("left")?, path))
}

/// `{".": {"left": {"Var": "context"}, "attr": "arguments"}}`.
fn is_context_arguments(map: &Map<String, Value>) -> bool {
    matches!(attr_access(map), Some((".", left, path))
        if path == ["arguments"] && left.as_object().is_some_and(is_var_context))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn task_type() -> EntityTypeName {
        "Task".parse().unwrap()
    }

    fn of(policy: &str) -> PolicyReads {
        PolicyReads::of_policy(&Policy::from_str(policy).unwrap(), &task_type())
    }

    fn reads(when: &str) -> ArgumentReads {
        of(&format!(
            "permit(principal, action, resource) when {{ {when} }};"
        ))
        .arguments
    }

    fn keys(ks: &[&str]) -> ArgumentReads {
        ArgumentReads::Keys(ks.iter().map(|k| (*k).to_owned()).collect())
    }

    #[test]
    fn keys_read_by_name_are_found() {
        assert_eq!(reads("context.arguments.path == \"x\""), keys(&["path"]));
        assert_eq!(reads("context.arguments[\"a b\"] == 1"), keys(&["a b"]));
        assert_eq!(
            reads("context.arguments has force && context.arguments.force"),
            keys(&["force"])
        );
        assert_eq!(
            reads("context.arguments has opts.depth && context.arguments.opts.depth > 2"),
            keys(&["opts"])
        );
        assert_eq!(
            reads("context.arguments.tags.contains(context.arguments.tag)"),
            keys(&["tag", "tags"])
        );
        assert_eq!(
            reads("context has arguments.mode && context.arguments.mode == \"x\""),
            keys(&["mode"])
        );
        assert_eq!(reads("context has arguments.opts.depth"), keys(&["opts"]));
    }

    #[test]
    fn policies_without_arguments_read_none() {
        assert!(reads("true").is_none());
        assert!(reads("context.now > principal.deadline").is_none());
        assert!(reads("context has arguments").is_none());
        assert!(reads("principal.subject == \"context\"").is_none());
        assert!(
            of("@note(\"context\") permit(principal, action, resource);")
                .arguments
                .is_none()
        );
    }

    #[test]
    fn whole_arguments_or_context_read_all() {
        assert_eq!(
            reads("context.arguments == {\"path\": \"x\"}"),
            ArgumentReads::All
        );
        assert_eq!(reads("context == {}"), ArgumentReads::All);
        assert_eq!(
            reads("(if context.now > 0 then context else context).arguments.x == 1"),
            ArgumentReads::All
        );
        assert_eq!(
            reads("(if true then context.arguments else {\"x\": 1}).x == 1"),
            ArgumentReads::All
        );
        assert_eq!(
            reads("{\"a\": context.arguments}.a has x"),
            ArgumentReads::All
        );
    }

    #[test]
    fn conditions_on_the_task_or_context_are_found() {
        let depends = |p: &str| of(p).task_or_context;
        for p in [
            "permit(principal, action, resource) when { principal.subject == \"a\" };",
            "permit(principal, action, resource) unless { context.now > 3 };",
            "permit(principal, action, resource) when { resource in [Tool::\"a\"] } unless { context has arguments };",
            "permit(principal, action, resource) when { Task::\"t\" in Client::\"c\" };",
            "permit(principal, action, resource) when { [Task::\"t\"].contains(Tool::\"x\") };",
        ] {
            assert!(depends(p), "{p}");
        }
        for p in [
            "permit(principal, action, resource);",
            "permit(principal == Task::\"t\", action, resource);",
            "permit(principal in Client::\"c\", action, resource) when { resource in [Tool::\"a\", Tool::\"b\"] };",
            "forbid(principal, action, resource) when { action == Action::\"tools/call\" && resource is Tool };",
            "permit(principal, action, resource) when { Client::\"c\" in Client::\"d\" };",
            "@note(\"context\") permit(principal, action, resource) unless { \"principal\" == \"Task\" };",
        ] {
            assert!(!depends(p), "{p}");
        }
    }

    #[test]
    fn union_keeps_all() {
        let mut r = keys(&["a"]);
        r.extend(&keys(&["b"]));
        assert_eq!(r, keys(&["a", "b"]));
        assert!(r.reads("a") && r.reads("b") && !r.reads("c"));
        r.extend(&ArgumentReads::All);
        assert_eq!(r, ArgumentReads::All);
        r.extend(&keys(&["c"]));
        assert!(r.reads("anything"));
    }
}
