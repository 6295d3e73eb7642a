//! JSON → Cedar values, for putting a call's arguments into `context.arguments`.
//!
//! | JSON | Cedar |
//! |---|---|
//! | `true`/`false` | Bool |
//! | integer in i64 | Long |
//! | number with ≤ 4 fractional digits in decimal range | `decimal(...)` |
//! | string | String |
//! | array | Set (every element must convert) |
//! | object | Record |
//! | `null` (as a record field) | omitted: absent and null mean the same to a tool |
//!
//! Anything else (null inside an array, integers beyond i64, numbers that need more
//! precision than `decimal`, nesting deeper than [`MAX_DEPTH`]) is *unsupported*: it is
//! dropped and reported, and the authorizer denies the call unless told otherwise, so a
//! value a policy cannot see never slips past a `forbid` on it.

use cedar_policy::RestrictedExpression;
use serde_json::{Map, Value};

/// Deepest nesting converted.
pub const MAX_DEPTH: usize = 16;

/// The result of converting an argument object.
#[derive(Debug)]
pub struct Converted {
    /// The Cedar record of every convertible field.
    pub record: RestrictedExpression,
    /// JSON pointers of fields that were dropped as unsupported, with why.
    pub unsupported: Vec<String>,
}

/// Converts a JSON object into a Cedar record (see the module docs for the mapping).
pub fn to_cedar_record(map: &Map<String, Value>) -> Converted {
    let mut unsupported = Vec::new();
    let record = record(map, &Pointer::Root, 0, &mut unsupported);
    Converted {
        record,
        unsupported,
    }
}

/// Where a value sits, as a JSON pointer rendered only when a value is refused:
/// building the pointer for every field of every call would cost more than the
/// conversion itself.
enum Pointer<'a> {
    Root,
    Key(&'a Pointer<'a>, &'a str),
    Index(&'a Pointer<'a>, usize),
}

impl std::fmt::Display for Pointer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pointer::Root => Ok(()),
            Pointer::Key(parent, key) => {
                write!(f, "{parent}/{}", key.replace('~', "~0").replace('/', "~1"))
            }
            Pointer::Index(parent, i) => write!(f, "{parent}/{i}"),
        }
    }
}

fn record(
    map: &Map<String, Value>,
    path: &Pointer<'_>,
    depth: usize,
    bad: &mut Vec<String>,
) -> RestrictedExpression {
    let fields: Vec<(String, RestrictedExpression)> = map
        .iter()
        .filter_map(|(k, v)| {
            if v.is_null() {
                return None;
            }
            value(v, &Pointer::Key(path, k), depth + 1, bad).map(|e| (k.clone(), e))
        })
        .collect();
    RestrictedExpression::new_record(fields).expect("JSON object keys are unique")
}

fn value(
    v: &Value,
    path: &Pointer<'_>,
    depth: usize,
    bad: &mut Vec<String>,
) -> Option<RestrictedExpression> {
    if depth > MAX_DEPTH {
        bad.push(format!("{path}: nested deeper than {MAX_DEPTH}"));
        return None;
    }
    match v {
        Value::Null => {
            bad.push(format!("{path}: null inside an array"));
            None
        }
        Value::Bool(b) => Some(RestrictedExpression::new_bool(*b)),
        Value::String(s) => Some(RestrictedExpression::new_string(s.clone())),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Some(RestrictedExpression::new_long(i));
            }
            match n.as_f64().and_then(decimal) {
                Some(d) => Some(RestrictedExpression::new_decimal(d)),
                None => {
                    bad.push(format!("{path}: number {n} fits neither Long nor decimal"));
                    None
                }
            }
        }
        Value::Array(items) => {
            let before = bad.len();
            let elems: Vec<_> = items
                .iter()
                .enumerate()
                .filter_map(|(i, e)| value(e, &Pointer::Index(path, i), depth + 1, bad))
                .collect();
            if bad.len() > before {
                bad.push(format!(
                    "{path}: array dropped because an element is unsupported"
                ));
                return None;
            }
            Some(RestrictedExpression::new_set(elems))
        }
        Value::Object(m) => Some(record(m, path, depth, bad)),
    }
}

fn decimal(x: f64) -> Option<String> {
    if !x.is_finite() || x.abs() >= 922_337_203_685_477.0 {
        return None;
    }
    let s = format!("{x}");
    let (int, frac) = s.split_once('.').unwrap_or((&s, "0"));
    if frac.len() > 4 {
        return None;
    }
    Some(format!("{int}.{frac}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy::{Context, Entities, EntityUid, PolicySet, Request};
    use serde_json::json;
    use std::str::FromStr;

    /// Evaluates `cond` over `context.arguments = args` with a one-policy set.
    fn holds(args: Value, cond: &str) -> bool {
        let c = to_cedar_record(args.as_object().unwrap());
        assert!(c.unsupported.is_empty(), "{:?}", c.unsupported);
        let ctx = Context::from_pairs([("arguments".to_owned(), c.record)]).unwrap();
        let uid = |s: &str| EntityUid::from_str(s).unwrap();
        let req = Request::new(
            uid("U::\"u\""),
            uid("Action::\"a\""),
            uid("R::\"r\""),
            ctx,
            None,
        )
        .unwrap();
        let p = PolicySet::from_str(&format!(
            "permit(principal, action, resource) when {{ {cond} }};"
        ))
        .unwrap();
        let resp = cedar_policy::Authorizer::new().is_authorized(&req, &p, &Entities::empty());
        assert_eq!(resp.diagnostics().errors().count(), 0, "{cond}");
        resp.decision() == cedar_policy::Decision::Allow
    }

    #[test]
    fn scalars_records_and_sets_convert() {
        let a = json!({"path": "/etc/passwd", "force": true, "n": 42, "neg": -7,
                       "tags": ["a", "b"], "opts": {"depth": 3}, "ratio": 0.25, "gone": null});
        assert!(holds(a.clone(), r#"context.arguments.path like "/etc/*""#));
        assert!(holds(a.clone(), "context.arguments.force"));
        assert!(holds(
            a.clone(),
            "context.arguments.n == 42 && context.arguments.neg < 0"
        ));
        assert!(holds(a.clone(), r#"context.arguments.tags.contains("b")"#));
        assert!(holds(a.clone(), "context.arguments.opts.depth == 3"));
        assert!(holds(
            a.clone(),
            r#"context.arguments.ratio == decimal("0.25")"#
        ));
        assert!(holds(a, "!(context.arguments has gone)"));
    }

    #[test]
    fn unrepresentable_values_are_reported_not_guessed() {
        let c = to_cedar_record(
            json!({"big": u64::MAX, "pi": 1.23456789, "arr": [1, null], "ok": 1})
                .as_object()
                .unwrap(),
        );
        let joined = c.unsupported.join("\n");
        assert!(joined.contains("/big"), "{joined}");
        assert!(joined.contains("/pi"), "{joined}");
        assert!(joined.contains("/arr"), "{joined}");
        assert!(!joined.contains("/ok"), "{joined}");
    }

    #[test]
    fn deep_nesting_is_unsupported() {
        let mut v = json!(1);
        for _ in 0..(MAX_DEPTH + 2) {
            v = json!({ "x": v });
        }
        let c = to_cedar_record(v.as_object().unwrap());
        assert!(!c.unsupported.is_empty());
    }
}
