//! Generic SPIFFE ID syntax, as specified by `standards/SPIFFE-ID.md`.
//!
//! This module knows nothing about Tessera's path shapes: it answers "is this a
//! well-formed SPIFFE ID?" and splits it into trust domain and path. The Tessera
//! shapes (`/client/..`, `/mcp/..`) are layered on top in [`crate::id`].

use crate::error::IdError;
use crate::trust_domain::{SCHEME_PREFIX, TrustDomain, validate_trust_domain};

/// Longest SPIFFE ID accepted, in bytes.
///
/// The spec says implementations MUST support 2048 bytes and SHOULD NOT generate
/// longer IDs; Tessera also refuses to *accept* longer ones, like the `spiffe` crate does
/// for URI SANs, so nothing it stores or logs can exceed this.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Checks `uri` against every rule of the SPIFFE ID spec and splits it.
///
/// Returns the trust domain and the path, which is either empty (the trust domain's
/// own ID, `spiffe://td`) or starts with `/` (`spiffe://td/a/b` gives `/a/b`).
///
/// Rules enforced, each with its own [`IdError`] variant: scheme `spiffe` only
/// (lowercase, followed by `//`); no query, fragment, userinfo or port; trust domain
/// non-empty, at most 255 bytes, only `[a-z0-9._-]`, no percent-encoding; path
/// segments only `[a-zA-Z0-9._-]`, none empty, none `.` or `..`, no percent-encoding,
/// no trailing `/`; the whole ID at most [`MAX_SPIFFE_ID_LEN`] bytes.
///
/// # Errors
/// The first rule the input breaks, as an [`IdError`].
pub fn validate_spiffe_id(uri: &str) -> Result<(TrustDomain, &str), IdError> {
    if uri.is_empty() {
        return Err(IdError::Empty);
    }
    if uri.len() > MAX_SPIFFE_ID_LEN {
        return Err(IdError::TooLong {
            len: uri.len(),
            max: MAX_SPIFFE_ID_LEN,
        });
    }
    let Some(rest) = uri.strip_prefix(SCHEME_PREFIX) else {
        return Err(scheme_error(uri));
    };
    // Query and fragment can only be told apart from the rest by their delimiter, which no
    // legal SPIFFE ID character set contains; check them before splitting the authority so
    // `spiffe://td?x` is reported as a query rather than as a bad trust-domain character.
    if let Some(index) = uri.find('#') {
        return Err(IdError::Fragment { index });
    }
    if let Some(index) = uri.find('?') {
        return Err(IdError::Query { index });
    }
    let offset = SCHEME_PREFIX.len();
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    let trust_domain = validate_trust_domain(authority, offset)?;
    validate_path(path, offset + authority.len())?;
    Ok((TrustDomain::new_unchecked(trust_domain.to_owned()), path))
}

/// Classifies an input that does not start with `spiffe://`.
fn scheme_error(uri: &str) -> IdError {
    // A URI scheme is `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )` followed by `:`.
    let scheme_len = uri
        .char_indices()
        .find(|&(i, c)| {
            !(c.is_ascii_alphabetic() || (i > 0 && (c.is_ascii_digit() || "+-.".contains(c))))
        })
        .map_or(uri.len(), |(i, _)| i);
    match uri[scheme_len..].chars().next() {
        Some(':') if scheme_len > 0 => {
            let scheme = &uri[..scheme_len];
            if scheme == "spiffe" {
                IdError::MissingAuthority
            } else {
                IdError::WrongScheme {
                    scheme: scheme.to_owned(),
                }
            }
        }
        _ => IdError::MissingScheme,
    }
}

/// Checks a SPIFFE ID path: empty, or `/seg(/seg)*` with legal segments.
///
/// `offset` is the byte offset of `path` within the original input, for error context.
pub(crate) fn validate_path(path: &str, offset: usize) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(IdError::TrailingSlash);
    }
    // `path` starts with '/' (it was split at the first slash); skip it.
    let mut start = offset + 1;
    for segment in path[1..].split('/') {
        validate_segment_chars(segment, start)?;
        start += segment.len() + 1;
    }
    Ok(())
}

/// Checks one path segment against the generic SPIFFE rules.
pub(crate) fn validate_segment_chars(segment: &str, offset: usize) -> Result<(), IdError> {
    if segment.is_empty() {
        return Err(IdError::EmptySegment { index: offset });
    }
    if segment == "." || segment == ".." {
        return Err(IdError::DotSegment {
            segment: segment.to_owned(),
        });
    }
    for (i, ch) in segment.char_indices() {
        if ch == '%' {
            return Err(IdError::PercentEncoding { index: offset + i });
        }
        if !is_path_char(ch) {
            return Err(IdError::PathInvalidChar {
                index: offset + i,
                ch,
            });
        }
    }
    Ok(())
}

/// `[a-zA-Z0-9._-]`, the characters a SPIFFE path segment may hold.
pub(crate) fn is_path_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_well_formed_ids() {
        let cases = [
            ("spiffe://td", "td", ""),
            (
                "spiffe://acme.corp/client/code-reviewer",
                "acme.corp",
                "/client/code-reviewer",
            ),
            ("spiffe://a-b_c.0/A.b-C_9", "a-b_c.0", "/A.b-C_9"),
            ("spiffe://10.0.0.1/x", "10.0.0.1", "/x"),
            ("spiffe://td/..a/a..", "td", "/..a/a.."),
        ];
        for (input, td, path) in cases {
            let (got_td, got_path) =
                validate_spiffe_id(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got_td.as_str(), td, "{input}");
            assert_eq!(got_path, path, "{input}");
        }
    }

    #[test]
    fn accepts_id_of_exactly_max_length() {
        let prefix = "spiffe://td/";
        let id = format!("{prefix}{}", "a".repeat(MAX_SPIFFE_ID_LEN - prefix.len()));
        assert_eq!(id.len(), MAX_SPIFFE_ID_LEN);
        assert!(validate_spiffe_id(&id).is_ok());
        let td = "a".repeat(255);
        assert!(validate_spiffe_id(&format!("spiffe://{td}/x")).is_ok());
    }

    #[test]
    fn rejects_each_spec_rule_violation() {
        let long_td = format!("spiffe://{}/x", "a".repeat(256));
        let long_id = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        let cases: Vec<(&str, &str, IdError)> = vec![
            ("empty input", "", IdError::Empty),
            ("no scheme", "td/path", IdError::MissingScheme),
            (
                "no scheme, starts with slash",
                "//td/path",
                IdError::MissingScheme,
            ),
            (
                "wrong scheme",
                "https://td/path",
                IdError::WrongScheme {
                    scheme: "https".into(),
                },
            ),
            (
                "uppercase scheme",
                "SPIFFE://td/path",
                IdError::WrongScheme {
                    scheme: "SPIFFE".into(),
                },
            ),
            (
                "scheme without authority",
                "spiffe:td/path",
                IdError::MissingAuthority,
            ),
            (
                "scheme with single slash",
                "spiffe:/td/path",
                IdError::MissingAuthority,
            ),
            (
                "empty trust domain",
                "spiffe:///path",
                IdError::EmptyTrustDomain,
            ),
            ("only scheme", "spiffe://", IdError::EmptyTrustDomain),
            (
                "uppercase trust domain",
                "spiffe://Acme.corp/x",
                IdError::TrustDomainUppercase { index: 9, ch: 'A' },
            ),
            (
                "bad char in trust domain",
                "spiffe://acme!corp/x",
                IdError::TrustDomainInvalidChar { index: 13, ch: '!' },
            ),
            (
                "non-ascii trust domain",
                "spiffe://acmé/x",
                IdError::TrustDomainInvalidChar {
                    index: 12, ch: 'é'
                },
            ),
            (
                "ipv6 trust domain",
                "spiffe://[::1]/x",
                IdError::TrustDomainInvalidChar { index: 9, ch: '[' },
            ),
            (
                "percent-encoded trust domain",
                "spiffe://acme%2Ecorp/x",
                IdError::PercentEncoding { index: 13 },
            ),
            ("port", "spiffe://td:443/x", IdError::Port { index: 11 }),
            ("empty port", "spiffe://td:/x", IdError::Port { index: 11 }),
            (
                "userinfo",
                "spiffe://user@td/x",
                IdError::Userinfo { index: 13 },
            ),
            (
                "userinfo with password",
                "spiffe://u:p@td/x",
                IdError::Userinfo { index: 12 },
            ),
            ("query", "spiffe://td/x?a=b", IdError::Query { index: 13 }),
            (
                "query on root",
                "spiffe://td?a",
                IdError::Query { index: 11 },
            ),
            (
                "fragment",
                "spiffe://td/x#frag",
                IdError::Fragment { index: 13 },
            ),
            (
                "empty fragment",
                "spiffe://td#",
                IdError::Fragment { index: 11 },
            ),
            (
                "empty segment",
                "spiffe://td/a//b",
                IdError::EmptySegment { index: 14 },
            ),
            (
                "dot segment",
                "spiffe://td/a/./b",
                IdError::DotSegment {
                    segment: ".".into(),
                },
            ),
            (
                "dot-dot segment",
                "spiffe://td/a/../b",
                IdError::DotSegment {
                    segment: "..".into(),
                },
            ),
            ("trailing slash", "spiffe://td/a/", IdError::TrailingSlash),
            ("root with slash", "spiffe://td/", IdError::TrailingSlash),
            (
                "percent-encoded path",
                "spiffe://td/a%20b",
                IdError::PercentEncoding { index: 13 },
            ),
            (
                "bad char in path",
                "spiffe://td/a$b",
                IdError::PathInvalidChar { index: 13, ch: '$' },
            ),
            (
                "space in path",
                "spiffe://td/a b",
                IdError::PathInvalidChar { index: 13, ch: ' ' },
            ),
            (
                "trust domain over 255 bytes",
                &long_td,
                IdError::TrustDomainTooLong { len: 256, max: 255 },
            ),
            (
                "id over 2048 bytes",
                &long_id,
                IdError::TooLong {
                    len: long_id.len(),
                    max: MAX_SPIFFE_ID_LEN,
                },
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(validate_spiffe_id(input).unwrap_err(), want, "case: {name}");
        }
    }
}
