//! Client, server, node and administrator names: the single path segment that names an
//! agent runtime (`code-reviewer` in `spiffe://td/client/code-reviewer`), an MCP server
//! (`github` in `spiffe://td/mcp/github`), a node (`worker-1` in `spiffe://td/node/worker-1`)
//! or an administrator (`alice` in `spiffe://td/admin/alice`).

use std::fmt;
use std::str::FromStr;

use crate::error::IdError;
use crate::spiffe_id::is_path_char;

/// Longest client or server name accepted, in bytes.
///
/// Far below what SPIFFE allows, so every Tessera ID stays short (a task ID is at most
/// `9 + 255 + 8 + 128 + 6 + 26 = 432` bytes) and names fit in logs and metrics labels.
pub const MAX_NAME_LEN: usize = 128;

/// Checks Tessera's segment rule: 1..=128 bytes of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub(crate) fn validate_name(name: &str) -> Result<(), IdError> {
    if name.is_empty() {
        return Err(IdError::NameEmpty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(IdError::NameTooLong {
            len: name.len(),
            max: MAX_NAME_LEN,
        });
    }
    if let Some((index, ch)) = name.char_indices().find(|&(_, c)| !is_path_char(c)) {
        return Err(IdError::NameInvalidChar { index, ch });
    }
    if name == "." || name == ".." {
        return Err(IdError::NameDotSegment {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Defines a validated single-segment name type.
macro_rules! segment_name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The name as written, e.g. `code-reviewer`.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                validate_name(s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;

            fn try_from(s: &str) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                validate_name(&s)?;
                Ok(Self(s))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

segment_name! {
    /// The name of a client (an agent runtime workload), one path segment:
    /// 1..=128 bytes of `[a-zA-Z0-9._-]`, not `.` or `..`.
    ClientName
}

segment_name! {
    /// The name of an MCP server, one path segment: 1..=128 bytes of
    /// `[a-zA-Z0-9._-]`, not `.` or `..`. Also the first part of every [`crate::Scope`].
    ServerName
}

segment_name! {
    /// The name of a node (one machine's agent, in cluster mode), one path segment:
    /// 1..=128 bytes of `[a-zA-Z0-9._-]`, not `.` or `..`. Its node CA names it too.
    NodeName
}

segment_name! {
    /// The name of an administrator of the cluster's control plane, one path segment:
    /// 1..=128 bytes of `[a-zA-Z0-9._-]`, not `.` or `..`.
    AdminName
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_within_rules() {
        for name in [
            "a",
            "code-reviewer",
            "A.b_C-9",
            "..a",
            &"x".repeat(MAX_NAME_LEN),
        ] {
            assert_eq!(name.parse::<ClientName>().unwrap().as_str(), name);
            assert_eq!(name.parse::<ServerName>().unwrap().to_string(), name);
            assert_eq!(name.parse::<NodeName>().unwrap().as_str(), name);
            assert_eq!(name.parse::<AdminName>().unwrap().as_str(), name);
        }
    }

    #[test]
    fn rejects_each_name_rule() {
        let long = "x".repeat(MAX_NAME_LEN + 1);
        let cases: Vec<(&str, &str, IdError)> = vec![
            ("empty", "", IdError::NameEmpty),
            (
                "too long",
                &long,
                IdError::NameTooLong {
                    len: MAX_NAME_LEN + 1,
                    max: MAX_NAME_LEN,
                },
            ),
            (
                "slash",
                "a/b",
                IdError::NameInvalidChar { index: 1, ch: '/' },
            ),
            (
                "space",
                "a b",
                IdError::NameInvalidChar { index: 1, ch: ' ' },
            ),
            (
                "percent",
                "a%41",
                IdError::NameInvalidChar { index: 1, ch: '%' },
            ),
            ("star", "a*", IdError::NameInvalidChar { index: 1, ch: '*' }),
            (
                "non-ascii",
                "é",
                IdError::NameInvalidChar { index: 0, ch: 'é' },
            ),
            ("dot", ".", IdError::NameDotSegment { name: ".".into() }),
            (
                "dot-dot",
                "..",
                IdError::NameDotSegment { name: "..".into() },
            ),
        ];
        for (case, input, want) in cases {
            assert_eq!(
                input.parse::<ClientName>().unwrap_err(),
                want,
                "case: {case}"
            );
            assert_eq!(
                input.parse::<ServerName>().unwrap_err(),
                want,
                "case: {case}"
            );
            assert_eq!(input.parse::<NodeName>().unwrap_err(), want, "case: {case}");
            assert_eq!(
                input.parse::<AdminName>().unwrap_err(),
                want,
                "case: {case}"
            );
        }
    }
}
