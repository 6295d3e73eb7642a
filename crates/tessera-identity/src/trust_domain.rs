//! Trust domains: the authority part of a SPIFFE ID (`acme.corp` in `spiffe://acme.corp/..`).

use std::fmt;
use std::str::FromStr;

use crate::error::IdError;

/// The only URI scheme a SPIFFE ID may use, with the authority marker. It lives
/// here, below the SPIFFE ID parser, because a trust domain prints its own
/// `spiffe://<td>` form.
pub(crate) const SCHEME_PREFIX: &str = "spiffe://";

/// Longest trust domain name accepted, in bytes (SPIFFE-ID.md: "MUST NOT exceed 255 bytes").
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A validated SPIFFE trust domain name, e.g. `acme.corp`.
///
/// Non-empty, at most [`MAX_TRUST_DOMAIN_LEN`] bytes, only `[a-z0-9._-]`. Parsing accepts
/// the bare name only (not `spiffe://acme.corp`), so `Display` and `FromStr` round-trip
/// exactly; use [`TrustDomain::id_string`] for the trust domain's own SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

// === impl TrustDomain ===

impl TrustDomain {
    /// Wraps a name that has already been validated.
    pub(crate) fn new_unchecked(name: String) -> Self {
        Self(name)
    }

    /// The bare trust domain name, e.g. `acme.corp`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, e.g. `spiffe://acme.corp`: the key used for
    /// bundle maps in the Workload API.
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        validate_trust_domain(s, 0).map(|td| Self(td.to_owned()))
    }
}

impl TryFrom<&str> for TrustDomain {
    type Error = IdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TrustDomain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Checks the authority part of a SPIFFE ID and returns it.
///
/// `offset` is the byte offset of `authority` in the caller's input, so error indices
/// point into what the user actually wrote.
pub(crate) fn validate_trust_domain(authority: &str, offset: usize) -> Result<&str, IdError> {
    // Structural problems first: they explain the input better than "bad character".
    if let Some(i) = authority.find('@') {
        return Err(IdError::Userinfo { index: offset + i });
    }
    if authority.is_empty() {
        return Err(IdError::EmptyTrustDomain);
    }
    if authority.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong {
            len: authority.len(),
            max: MAX_TRUST_DOMAIN_LEN,
        });
    }
    // IPv6 literals (`[::1]`) are excluded by the spec; report the bracket rather than
    // mistaking the first ':' inside for a port.
    let ipv6 = authority.starts_with('[');
    for (i, ch) in authority.char_indices() {
        let index = offset + i;
        match ch {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            ':' if !ipv6 => return Err(IdError::Port { index }),
            '%' => return Err(IdError::PercentEncoding { index }),
            'A'..='Z' => return Err(IdError::TrustDomainUppercase { index, ch }),
            _ => return Err(IdError::TrustDomainInvalidChar { index, ch }),
        }
    }
    Ok(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_bare_name() {
        let td: TrustDomain = "acme.corp".parse().unwrap();
        assert_eq!(td.as_str(), "acme.corp");
        assert_eq!(td.to_string(), "acme.corp");
        assert_eq!(td.id_string(), "spiffe://acme.corp");
        assert_eq!(
            TrustDomain::try_from("a_b-c.9").unwrap().as_str(),
            "a_b-c.9"
        );
    }

    #[test]
    fn rejects_each_trust_domain_rule() {
        let long = "a".repeat(256);
        let cases: Vec<(&str, &str, IdError)> = vec![
            ("empty", "", IdError::EmptyTrustDomain),
            (
                "uppercase",
                "Acme",
                IdError::TrustDomainUppercase { index: 0, ch: 'A' },
            ),
            (
                "slash",
                "acme/x",
                IdError::TrustDomainInvalidChar { index: 4, ch: '/' },
            ),
            (
                "full id is not a bare name",
                "spiffe://acme",
                IdError::Port { index: 6 },
            ),
            ("port", "acme:1", IdError::Port { index: 4 }),
            ("userinfo", "u@acme", IdError::Userinfo { index: 1 }),
            ("percent", "ac%6De", IdError::PercentEncoding { index: 2 }),
            (
                "ipv6",
                "[::1]",
                IdError::TrustDomainInvalidChar { index: 0, ch: '[' },
            ),
            (
                "too long",
                &long,
                IdError::TrustDomainTooLong { len: 256, max: 255 },
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(
                input.parse::<TrustDomain>().unwrap_err(),
                want,
                "case: {name}"
            );
        }
        assert!("a".repeat(255).parse::<TrustDomain>().is_ok());
    }
}
