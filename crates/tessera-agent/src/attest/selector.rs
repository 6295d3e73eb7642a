//! Selectors: what an entry requires of a caller, e.g. `unix:uid:1001`.

use std::fmt;
use std::str::FromStr;

/// Why a selector string is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SelectorError {
    /// Not of the form `type:key:value`.
    #[error("selector {0:?} is not of the form TYPE:KEY:VALUE (e.g. unix:uid:1001)")]
    Shape(String),
    /// The type/key pair is not one the agent can attest.
    #[error(
        "unknown selector {0:?}; known: unix:uid, unix:gid, unix:user, unix:group, unix:supplementary_gid, unix:supplementary_group, unix:path, unix:sha256"
    )]
    Unknown(String),
    /// The value does not fit the key.
    #[error("selector {selector:?}: {reason}")]
    Value {
        /// The selector.
        selector: String,
        /// What is wrong with its value.
        reason: &'static str,
    },
}

/// One validated selector, kept in its canonical text form.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector(String);

/// Longest selector accepted (paths can be long, but not unbounded).
const MAX_LEN: usize = 1024;

impl Selector {
    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Builds a selector the attestor produced (already canonical).
    pub(crate) fn attested(kind: &str, value: impl fmt::Display) -> Selector {
        Selector(format!("unix:{kind}:{value}"))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Selector, SelectorError> {
        if s.len() > MAX_LEN || s.chars().any(char::is_control) {
            return Err(SelectorError::Value {
                selector: s.chars().take(64).collect(),
                reason: "too long or contains control characters",
            });
        }
        let mut parts = s.splitn(3, ':');
        let (Some(ty), Some(key), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SelectorError::Shape(s.to_owned()));
        };
        if value.is_empty() {
            return Err(SelectorError::Shape(s.to_owned()));
        }
        let bad = |reason| SelectorError::Value {
            selector: s.to_owned(),
            reason,
        };
        match (ty, key) {
            ("unix", "uid" | "gid" | "supplementary_gid") => {
                // Canonical decimal only: "007" would never match what the attestor emits.
                let n: u32 = value.parse().map_err(|_| bad("expected a decimal id"))?;
                if n.to_string() != value {
                    return Err(bad("expected a canonical decimal id"));
                }
            }
            ("unix", "user" | "group" | "supplementary_group") => {
                if value.contains(char::is_whitespace) {
                    return Err(bad("names contain no whitespace"));
                }
            }
            ("unix", "path") => {
                if !value.starts_with('/') {
                    return Err(bad("expected an absolute path"));
                }
            }
            ("unix", "sha256") => {
                if value.len() != 64
                    || !value
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(bad("expected 64 lower-case hex digits"));
                }
            }
            _ => return Err(SelectorError::Unknown(s.to_owned())),
        }
        Ok(Selector(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_selectors_parse_to_themselves() {
        for s in [
            "unix:uid:0",
            "unix:uid:1001",
            "unix:gid:100",
            "unix:user:alice",
            "unix:group:wheel",
            "unix:supplementary_gid:27",
            "unix:path:/usr/bin/python3",
            "unix:path:/opt/my agent/bin",
            &format!("unix:sha256:{}", "ab".repeat(32)),
        ] {
            assert_eq!(s.parse::<Selector>().unwrap().as_str(), s);
        }
    }

    #[test]
    fn invalid_selectors_are_refused_with_a_reason() {
        let cases: &[(&str, fn(&SelectorError) -> bool)] = &[
            ("uid:1001", |e| matches!(e, SelectorError::Shape(_))),
            ("unix:uid:", |e| matches!(e, SelectorError::Shape(_))),
            ("unix:pid:1", |e| matches!(e, SelectorError::Unknown(_))),
            ("k9s:ns:x", |e| matches!(e, SelectorError::Unknown(_))),
            ("unix:uid:-1", |e| matches!(e, SelectorError::Value { .. })),
            ("unix:uid:007", |e| matches!(e, SelectorError::Value { .. })),
            ("unix:uid:99999999999", |e| {
                matches!(e, SelectorError::Value { .. })
            }),
            ("unix:path:relative/bin", |e| {
                matches!(e, SelectorError::Value { .. })
            }),
            ("unix:sha256:ABCD", |e| {
                matches!(e, SelectorError::Value { .. })
            }),
            ("unix:user:a b", |e| {
                matches!(e, SelectorError::Value { .. })
            }),
            ("unix:user:a\nb", |e| {
                matches!(e, SelectorError::Value { .. })
            }),
        ];
        for (s, ok) in cases {
            let err = s.parse::<Selector>().unwrap_err();
            assert!(ok(&err), "{s}: {err:?}");
        }
        let long = format!("unix:path:/{}", "a".repeat(2000));
        assert!(long.parse::<Selector>().is_err());
    }
}
