//! Which of a call's arguments a policy can read.
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

use cedar_policy::Policy;
use serde_json::{Map, Value};

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
    /// What `policy` can read. A policy Cedar cannot render as JSON reads everything.
    pub(crate) fn of_policy(policy: &Policy) -> Self {
        match policy.to_json() {
            Ok(est) => {
                let mut reads = Self::default();
                walk(&est, &mut reads);
                reads
            }
            Err(e) => {
                tracing::warn!(policy = %policy.id(), error = %e,
                    "tessera-verify: policy has no JSON form; all call arguments are converted for it");
                Self::All
            }
        }
    }

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

    fn reads(when: &str) -> ArgumentReads {
        let p = Policy::from_str(&format!(
            "permit(principal, action, resource) when {{ {when} }};"
        ))
        .unwrap();
        ArgumentReads::of_policy(&p)
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
        let p =
            Policy::from_str("@note(\"context\") permit(principal, action, resource);").unwrap();
        assert!(ArgumentReads::of_policy(&p).is_none());
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
