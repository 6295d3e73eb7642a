//! Resource URIs a prefix may safely permit.
//!
//! Resource prefixes are matched on the raw string, and a resource server may normalize or
//! decode the URI it is asked for before it opens anything. So that `file:///handbook/*`
//! cannot reach outside `/handbook/` whatever the server does with the URI, a resource
//! URI (every resource pattern, at parse time, and every target a prefix is asked to
//! permit) must not have a shape that reads as another path after normalization or
//! decoding ([`UnsafeShape`]):
//!
//! * an empty path segment (`//` after the authority): `file:///handbook//etc/passwd`,
//!   which `Path::join` and many file servers read as `/etc/passwd`;
//! * a `.` or `..` segment, also with `;` parameters (`..;`, read as `..` by servlet
//!   containers), anywhere in the URI, query included;
//! * a backslash (a separator on Windows and to some URL parsers);
//! * a percent-encoded `.`, `/` or `\` (`%2e`, `%2f`, `%5c`, any case), an encoded `%`
//!   (`%25`: decoded twice, `%252e` is a `.`), or a `%` not followed by two hex digits.

use std::fmt;

/// A shape of resource URI that a resource server may normalize or decode into another
/// path than the one a prefix names; refused in resource patterns and in the targets
/// a prefix permits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnsafeShape {
    /// An empty path segment (`//` after the authority).
    EmptySegment,
    /// A `.` or `..` segment, also with `;` parameters (`..;`).
    DotSegment,
    /// A backslash.
    Backslash,
    /// A percent-encoded `.`, `/` or `\`.
    EncodedDotOrSeparator,
    /// A percent-encoded `%` (double encoding).
    EncodedPercent,
    /// A `%` not followed by two hex digits.
    MalformedEscape,
}

// === impl UnsafeShape ===

impl UnsafeShape {
    /// A short description, used in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EmptySegment => "an empty path segment (`//`)",
            Self::DotSegment => "a `.` or `..` segment",
            Self::Backslash => "a backslash",
            Self::EncodedDotOrSeparator => "a percent-encoded `.`, `/` or `\\`",
            Self::EncodedPercent => "a percent-encoded `%` (double encoding)",
            Self::MalformedEscape => "a `%` not followed by two hex digits",
        }
    }
}

impl fmt::Display for UnsafeShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first shape of `uri` a resource server might read as another path (see the
/// module docs), with its byte offset.
pub(super) fn unsafe_resource_shape(uri: &str) -> Option<(usize, UnsafeShape)> {
    if let Some(index) = uri.find('\\') {
        return Some((index, UnsafeShape::Backslash));
    }
    if let Some(found) = unsafe_escape(uri) {
        return Some(found);
    }
    let (start, end) = path_bounds(uri);
    if let Some(index) = uri[start..end].find("//") {
        return Some((start + index, UnsafeShape::EmptySegment));
    }
    // Dot segments anywhere, query and fragment included: a resource server may
    // normalize any of them. `;` starts path parameters, which servlet containers drop
    // before normalizing (`..;` is `..` to them).
    let mut offset = 0;
    for segment in uri.split(['/', '?', '#']) {
        let bare = segment.split(';').next().unwrap_or(segment);
        if bare == "." || bare == ".." {
            return Some((offset, UnsafeShape::DotSegment));
        }
        offset += segment.len() + 1;
    }
    None
}

/// The first percent-escape of `uri` that decodes to `.`, `/`, `\` or `%`, or is not one.
fn unsafe_escape(uri: &str) -> Option<(usize, UnsafeShape)> {
    let bytes = uri.as_bytes();
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    bytes
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'%')
        .find_map(|(index, _)| {
            let shape = match (hex(bytes.get(index + 1)), hex(bytes.get(index + 2))) {
                (Some(hi), Some(lo)) => match hi * 16 + lo {
                    0x2e | 0x2f | 0x5c => UnsafeShape::EncodedDotOrSeparator,
                    0x25 => UnsafeShape::EncodedPercent,
                    _ => return None,
                },
                _ => UnsafeShape::MalformedEscape,
            };
            Some((index, shape))
        })
}

/// Byte range of the path of `uri` (RFC 3986 §3): after `scheme:` and, if the URI has
/// one, the `//authority`; up to the query or fragment. A string without a scheme is
/// all path up to its query.
fn path_bounds(uri: &str) -> (usize, usize) {
    let after_scheme = uri
        .find(':')
        .filter(|&colon| {
            let scheme = &uri[..colon];
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        })
        .map_or(0, |colon| colon + 1);
    let start = match uri[after_scheme..].strip_prefix("//") {
        Some(rest) => {
            let authority = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            after_scheme + 2 + authority
        }
        None => after_scheme,
    };
    let end = uri[start..]
        .find(['?', '#'])
        .map_or(uri.len(), |index| start + index);
    (start, end)
}
