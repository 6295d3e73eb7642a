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
        "unknown selector {0:?}; known: unix:uid, unix:gid, unix:user, unix:group, unix:supplementary_gid, unix:supplementary_group, unix:path, unix:sha256, k8s:ns, k8s:sa, k8s:pod-name, k8s:pod-uid, k8s:pod-label, k8s:container-name, k8s:container-image, k8s:node-name"
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

    // === k8s selectors (Kubernetes workload attestor) ===

    /// Builds a `k8s:KIND:VALUE` selector from what the kubelet reported,
    /// through the same validation an admin's selector goes through, so an
    /// attested selector always has the form a registered one can match.
    /// `None` for values that form no valid selector (they can match nothing).
    pub(crate) fn k8s(kind: &str, value: impl fmt::Display) -> Option<Selector> {
        format!("k8s:{kind}:{value}").parse().ok()
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
            // === k8s selectors (Kubernetes workload attestor) ===
            ("k8s", "ns" | "container-name") => {
                if !is_dns_label(value) {
                    return Err(bad("expected a DNS label (lower-case a-z, 0-9, '-')"));
                }
            }
            ("k8s", "sa" | "pod-name" | "node-name") => {
                if !is_dns_subdomain(value) {
                    return Err(bad(
                        "expected a DNS subdomain (lower-case a-z, 0-9, '-', '.')",
                    ));
                }
            }
            ("k8s", "pod-uid") => {
                let canonical = value.len() == 36
                    && value.bytes().enumerate().all(|(i, b)| match i {
                        8 | 13 | 18 | 23 => b == b'-',
                        _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
                    });
                if !canonical {
                    return Err(bad("expected a lower-case UUID"));
                }
            }
            ("k8s", "pod-label") => {
                // KEY:VALUE; label keys hold no ':', values may be empty.
                let Some((k, v)) = value.split_once(':') else {
                    return Err(bad("expected KEY:VALUE"));
                };
                if k.is_empty() || k.len() > 317 || k.contains(char::is_whitespace) {
                    return Err(bad("expected a label key"));
                }
                if v.len() > 63 || v.contains(char::is_whitespace) {
                    return Err(bad("expected a label value"));
                }
            }
            ("k8s", "container-image") => {
                if value.contains(char::is_whitespace) {
                    return Err(bad("image references contain no whitespace"));
                }
            }
            _ => return Err(SelectorError::Unknown(s.to_owned())),
        }
        Ok(Selector(s.to_owned()))
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
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
            "k8s:ns:agents",
            "k8s:sa:code-reviewer",
            "k8s:pod-name:runtime-7d9f-abcde",
            "k8s:pod-uid:2c48913c-b29f-11e7-9350-020968147796",
            "k8s:pod-label:app.kubernetes.io/name:agent-runtime",
            "k8s:pod-label:tier:",
            "k8s:container-name:runtime",
            "k8s:container-image:ghcr.io/acme/runtime:1.2@sha256:abcd",
            "k8s:node-name:ip-10-0-1-7.eu-west-1.compute.internal",
        ] {
            assert_eq!(s.parse::<Selector>().unwrap().as_str(), s);
        }
    }

    #[test]
    fn invalid_selectors_are_refused_with_a_reason() {
        type Case<'a> = (&'a str, fn(&SelectorError) -> bool);
        let cases: &[Case] = &[
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
            ("k8s:namespace:x", |e| {
                matches!(e, SelectorError::Unknown(_))
            }),
            ("k8s:ns:Agents", |e| {
                matches!(e, SelectorError::Value { .. })
            }),
            ("k8s:sa:-bad", |e| matches!(e, SelectorError::Value { .. })),
            ("k8s:pod-uid:2C48913C-B29F-11E7-9350-020968147796", |e| {
                matches!(e, SelectorError::Value { .. })
            }),
            ("k8s:pod-label:app", |e| {
                matches!(e, SelectorError::Value { .. })
            }),
            ("k8s:pod-label::x", |e| {
                matches!(e, SelectorError::Value { .. })
            }),
            ("k8s:container-image:a b", |e| {
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
