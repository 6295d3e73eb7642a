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
use serde_json::{Map, Number, Value};

use super::reads::ArgumentReads;

/// Deepest nesting converted.
pub const MAX_DEPTH: usize = 16;

/// The result of converting a whole argument object: what the tests check the mapping
/// on (the authorizer converts only the fields its policies read, with
/// [`fields_reading`]).
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Converted {
    /// The Cedar record of every convertible field.
    pub(crate) record: RestrictedExpression,
    /// JSON pointers of fields that were dropped as unsupported, with why.
    pub(crate) unsupported: Vec<String>,
}

/// Converts a JSON object into a Cedar record (see the module docs for the mapping).
#[cfg(test)]
pub(crate) fn to_cedar_record(map: &Map<String, Value>) -> Converted {
    let (fields, unsupported) = fields_reading(map, &ArgumentReads::All);
    Converted {
        record: RestrictedExpression::new_record(fields).expect("JSON object keys are unique"),
        unsupported,
    }
}

/// The fields of the Cedar record of `map`, but only the top-level ones `reads`
/// names; the others are checked to be representable (and reported exactly as a
/// conversion of the whole object would report them) without building Cedar values
/// for them. Returns
/// the fields and the unsupported values.
pub(crate) fn fields_reading(
    map: &Map<String, Value>,
    reads: &ArgumentReads,
) -> (Vec<(String, RestrictedExpression)>, Vec<String>) {
    let mut unsupported = Vec::new();
    let path = &Pointer::Root;
    let fields = map
        .iter()
        .filter_map(|(k, v)| {
            if v.is_null() {
                return None;
            }
            let path = &Pointer::Key(path, k);
            if reads.reads(k) {
                value(v, path, 1, &mut unsupported).map(|e| (k.clone(), e))
            } else {
                check(v, path, 1, &mut unsupported);
                None
            }
        })
        .collect();
    (fields, unsupported)
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
        Value::Number(n) => match number(n) {
            Some(Num::Long(i)) => Some(RestrictedExpression::new_long(i)),
            Some(Num::Decimal(d)) => Some(RestrictedExpression::new_decimal(d)),
            None => {
                bad.push(unrepresentable(path, n));
                None
            }
        },
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

/// The rules of [`value`] without building anything: whether `v` converts, with the
/// same reports for what does not.
fn check(v: &Value, path: &Pointer<'_>, depth: usize, bad: &mut Vec<String>) -> bool {
    if depth > MAX_DEPTH {
        bad.push(format!("{path}: nested deeper than {MAX_DEPTH}"));
        return false;
    }
    match v {
        Value::Null => {
            bad.push(format!("{path}: null inside an array"));
            false
        }
        Value::Bool(_) | Value::String(_) => true,
        Value::Number(n) => {
            let ok = number(n).is_some();
            if !ok {
                bad.push(unrepresentable(path, n));
            }
            ok
        }
        Value::Array(items) => {
            let before = bad.len();
            for (i, e) in items.iter().enumerate() {
                check(e, &Pointer::Index(path, i), depth + 1, bad);
            }
            if bad.len() > before {
                bad.push(format!(
                    "{path}: array dropped because an element is unsupported"
                ));
                return false;
            }
            true
        }
        Value::Object(m) => {
            for (k, e) in m {
                if !e.is_null() {
                    check(e, &Pointer::Key(path, k), depth + 1, bad);
                }
            }
            true
        }
    }
}

enum Num {
    Long(i64),
    Decimal(String),
}

fn number(n: &Number) -> Option<Num> {
    if let Some(i) = n.as_i64() {
        return Some(Num::Long(i));
    }
    n.as_f64().and_then(decimal).map(Num::Decimal)
}

fn unrepresentable(path: &Pointer<'_>, n: &Number) -> String {
    format!("{path}: number {n} fits neither Long nor decimal")
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

    /// Arguments no policy reads are left out of the record but refused for exactly
    /// the same reasons, in the same order, as when they are converted.
    #[test]
    fn unread_arguments_are_checked_like_converted_ones() {
        let mut deep = json!(1);
        for _ in 0..(MAX_DEPTH + 2) {
            deep = json!({ "x": deep });
        }
        let mut deep_array = json!([1]);
        for _ in 0..MAX_DEPTH {
            deep_array = json!([deep_array]);
        }
        let cases = [
            json!({"path": "/src", "n": 1, "ok": true, "r": 0.5, "gone": null}),
            json!({"big": u64::MAX, "pi": 1.23456789, "arr": [1, null], "ok": 1}),
            json!({"nested": {"a": [1, 2, {"b": null, "c": 1e300}], "d": null}}),
            json!({"deep": deep, "deep_array": deep_array, "s": "x"}),
            json!({"mixed": [[1, [null]], {"k": -0.00001}], "t": "~/a"}),
        ];
        for args in cases {
            let map = args.as_object().unwrap();
            let all = to_cedar_record(map);
            for reads in [
                ArgumentReads::default(),
                ArgumentReads::Keys(map.keys().take(1).cloned().collect()),
                ArgumentReads::Keys(map.keys().skip(1).cloned().collect()),
            ] {
                let (_, unsupported) = fields_reading(map, &reads);
                assert_eq!(unsupported, all.unsupported, "{args} reading {reads:?}");
            }
        }
    }

    #[test]
    fn only_read_arguments_are_in_the_record() {
        let args = json!({"path": "/etc/x", "owner": "acme", "n": 3});
        let reads = ArgumentReads::Keys(["path".to_owned(), "absent".to_owned()].into());
        let (fields, _) = fields_reading(args.as_object().unwrap(), &reads);
        assert_eq!(
            fields.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["path"]
        );
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
