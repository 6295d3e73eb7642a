//! Scopes: which MCP operations a task may use.
//!
//! Grammar: `<server>/<kind>/<pattern>`, where `<server>` is a [`ServerName`], `<kind>` is
//! `tool`, `resource` or `prompt`, and `<pattern>` is an exact target or a prefix ending in
//! `*`:
//!
//! * `tool` and `prompt`: a name of 1..=128 bytes of `[a-zA-Z0-9._-]` (the MCP name
//!   alphabet), optionally followed by `*`; or `*` alone.
//! * `resource`: 1..=1024 bytes of printable ASCII without whitespace (a URI or URI
//!   template), optionally followed by `*`; or `*` alone.
//!
//! `*` anywhere but at the end is rejected, so a pattern never means more than it shows.
//! Examples: `github/tool/get_pull_request`, `github/tool/*`, `github/tool/get_*`,
//! `docs/resource/file:///handbook/*`, `github/prompt/review`.
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
//!
//! Exact patterns match only the identical string.

use std::fmt;
use std::str::FromStr;

use crate::error::IdError;
use crate::name::{MAX_NAME_LEN, ServerName};

/// Longest resource pattern accepted (without the trailing `*`), in bytes.
pub const MAX_RESOURCE_PATTERN_LEN: usize = 1024;

/// The wildcard marking a prefix pattern.
const WILDCARD: char = '*';

/// The kind of MCP operation a scope covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeKind {
    /// `tools/call` of a named tool.
    Tool,
    /// `resources/read` of a resource URI.
    Resource,
    /// `prompts/get` of a named prompt.
    Prompt,
}

/// A scope that failed to parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    /// The scope lacks the `/` separators of `<server>/<kind>/<pattern>`.
    #[error("scope {scope:?} is not of the form <server>/<kind>/<pattern>")]
    MissingPart {
        /// The rejected scope.
        scope: String,
    },
    /// The server part is not a valid server name.
    #[error("scope server name is invalid: {0}")]
    InvalidServer(#[source] IdError),
    /// The kind part is not `tool`, `resource` or `prompt`.
    #[error("scope kind {kind:?} is unknown; expected tool, resource or prompt")]
    UnknownKind {
        /// The rejected kind.
        kind: String,
    },
    /// The pattern is empty.
    #[error("scope pattern is empty")]
    EmptyPattern,
    /// The pattern (without its trailing `*`) is longer than allowed for its kind.
    #[error("scope pattern is {len} bytes, longer than the maximum of {max}")]
    PatternTooLong {
        /// Length of the pattern without the trailing `*`, in bytes.
        len: usize,
        /// The limit for this kind.
        max: usize,
    },
    /// The pattern contains a character not allowed for its kind.
    #[error("scope pattern contains {ch:?} at byte {index}, not allowed for {kind} scopes")]
    InvalidPatternChar {
        /// The scope's kind, which decides the alphabet.
        kind: ScopeKind,
        /// Byte offset within the pattern.
        index: usize,
        /// The character.
        ch: char,
    },
    /// A `*` appears somewhere other than the end of the pattern.
    #[error("scope pattern has `*` at byte {index}; `*` is only allowed at the end")]
    MisplacedWildcard {
        /// Byte offset of the `*` within the pattern.
        index: usize,
    },
    /// A resource pattern has a shape a resource server may read as another path (see
    /// the module docs).
    #[error("resource pattern has {shape} at byte {index}")]
    UnsafeResource {
        /// What is wrong.
        shape: UnsafeShape,
        /// Byte offset within the pattern.
        index: usize,
    },
}

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

/// One permission: an exact MCP operation target or a prefix of targets, on one server.
///
/// Parses exactly what it prints. Ordered by server, then kind, then pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    server: ServerName,
    kind: ScopeKind,
    pattern: String,
}

/// A normalized set of scopes: sorted and without duplicates.
///
/// What a consent record grants, or what a task holds; [`ScopeSet::uncovered`] checks a
/// request against it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(Vec<Scope>);

// === impl ScopeKind ===

impl ScopeKind {
    /// The kind as written in a scope: `tool`, `resource` or `prompt`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tool => "tool",
            Self::Resource => "resource",
            Self::Prompt => "prompt",
        }
    }
}

impl FromStr for ScopeKind {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tool" => Ok(Self::Tool),
            "resource" => Ok(Self::Resource),
            "prompt" => Ok(Self::Prompt),
            _ => Err(ScopeError::UnknownKind { kind: s.to_owned() }),
        }
    }
}

impl fmt::Display for ScopeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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

// === impl Scope ===

impl Scope {
    /// Builds a scope from its parts, checking `pattern` against the rules for `kind`.
    ///
    /// # Errors
    /// The pattern rule broken, as a [`ScopeError`].
    pub fn new(server: ServerName, kind: ScopeKind, pattern: &str) -> Result<Self, ScopeError> {
        validate_pattern(kind, pattern)?;
        Ok(Self {
            server,
            kind,
            pattern: pattern.to_owned(),
        })
    }

    /// The MCP server the scope applies to.
    pub fn server(&self) -> &ServerName {
        &self.server
    }

    /// The kind of operation the scope applies to.
    pub fn kind(&self) -> ScopeKind {
        self.kind
    }

    /// The pattern as written, including a trailing `*` if it is a prefix.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether the pattern is a prefix (ends in `*`) rather than an exact target.
    pub fn is_prefix(&self) -> bool {
        self.pattern.ends_with(WILDCARD)
    }

    /// Whether this scope allows operation `kind` on `target` of `server`.
    ///
    /// An exact pattern permits only the identical target. A prefix pattern permits every
    /// target that starts with the prefix and is well-formed for the kind; for resources
    /// it also refuses targets of an [`UnsafeShape`] (see the module docs), so a prefix
    /// cannot be escaped by path traversal, empty segments or double decoding.
    pub fn permits(&self, server: &ServerName, kind: ScopeKind, target: &str) -> bool {
        if &self.server != server || self.kind != kind {
            return false;
        }
        match self.pattern.strip_suffix(WILDCARD) {
            None => self.pattern == target,
            Some(prefix) => target.starts_with(prefix) && is_safe_prefix_target(kind, target),
        }
    }

    /// Whether every operation `other` permits is also permitted by `self`
    /// (used to check "requested ⊆ consented").
    pub fn covers(&self, other: &Scope) -> bool {
        if self.server != other.server || self.kind != other.kind {
            return false;
        }
        match (
            self.pattern.strip_suffix(WILDCARD),
            other.pattern.strip_suffix(WILDCARD),
        ) {
            // Exact covers only the identical exact pattern.
            (None, None) => self.pattern == other.pattern,
            (None, Some(_)) => false,
            // `other` permits exactly its pattern; `self` must permit that target.
            (Some(_), None) => self.permits(&other.server, other.kind, &other.pattern),
            // Every target `other` permits starts with its prefix, hence with ours, and
            // passes the same well-formedness check.
            (Some(mine), Some(theirs)) => theirs.starts_with(mine),
        }
    }
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let missing = || ScopeError::MissingPart {
            scope: s.to_owned(),
        };
        let (server, rest) = s.split_once('/').ok_or_else(missing)?;
        let (kind, pattern) = rest.split_once('/').ok_or_else(missing)?;
        let server = server.parse().map_err(ScopeError::InvalidServer)?;
        let kind = kind.parse()?;
        Self::new(server, kind, pattern)
    }
}

impl TryFrom<&str> for Scope {
    type Error = ScopeError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.server, self.kind, self.pattern)
    }
}

/// Checks a pattern against the grammar of `kind`.
fn validate_pattern(kind: ScopeKind, pattern: &str) -> Result<(), ScopeError> {
    if pattern.is_empty() {
        return Err(ScopeError::EmptyPattern);
    }
    let base = pattern.strip_suffix(WILDCARD).unwrap_or(pattern);
    if let Some(index) = base.find(WILDCARD) {
        return Err(ScopeError::MisplacedWildcard { index });
    }
    let max = match kind {
        ScopeKind::Tool | ScopeKind::Prompt => MAX_NAME_LEN,
        ScopeKind::Resource => MAX_RESOURCE_PATTERN_LEN,
    };
    if base.len() > max {
        return Err(ScopeError::PatternTooLong {
            len: base.len(),
            max,
        });
    }
    if let Some((index, ch)) = base.char_indices().find(|&(_, c)| !is_target_char(kind, c)) {
        return Err(ScopeError::InvalidPatternChar { kind, index, ch });
    }
    // A prefix's base is checked like a whole URI, so it may not end in a `.` or `..`
    // segment or half an escape either: whatever it is completed with is checked again
    // at request time, but a pattern should not look like it grants a traversal.
    if kind == ScopeKind::Resource
        && let Some((index, shape)) = unsafe_resource_shape(base)
    {
        return Err(ScopeError::UnsafeResource { shape, index });
    }
    Ok(())
}

/// The alphabet of targets (and pattern bases) of `kind`; never includes `*`'s role.
fn is_target_char(kind: ScopeKind, ch: char) -> bool {
    match kind {
        ScopeKind::Tool | ScopeKind::Prompt => {
            ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')
        }
        // Printable ASCII without space: '!'..='~'.
        ScopeKind::Resource => ch.is_ascii_graphic(),
    }
}

/// Whether `target` may be matched by a prefix pattern of `kind`.
fn is_safe_prefix_target(kind: ScopeKind, target: &str) -> bool {
    if target.is_empty() || target.contains(WILDCARD) {
        return false;
    }
    let max = match kind {
        ScopeKind::Tool | ScopeKind::Prompt => MAX_NAME_LEN,
        ScopeKind::Resource => MAX_RESOURCE_PATTERN_LEN,
    };
    if target.len() > max || !target.chars().all(|c| is_target_char(kind, c)) {
        return false;
    }
    kind != ScopeKind::Resource || unsafe_resource_shape(target).is_none()
}

/// The first shape of `uri` a resource server might read as another path (see the
/// module docs), with its byte offset.
fn unsafe_resource_shape(uri: &str) -> Option<(usize, UnsafeShape)> {
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

// === impl ScopeSet ===

impl ScopeSet {
    /// An empty set, which permits nothing.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Whether any scope in the set permits the operation (see [`Scope::permits`]).
    pub fn permits(&self, server: &ServerName, kind: ScopeKind, target: &str) -> bool {
        self.0.iter().any(|s| s.permits(server, kind, target))
    }

    /// The requested scopes that no scope in this set covers, in request order.
    ///
    /// Empty means the request is a subset of this set (e.g. of a consent record).
    pub fn uncovered<'a>(&self, requested: &'a [Scope]) -> Vec<&'a Scope> {
        requested
            .iter()
            .filter(|r| !self.0.iter().any(|s| s.covers(r)))
            .collect()
    }

    /// Whether some scope in this set covers `scope`.
    pub fn covers(&self, scope: &Scope) -> bool {
        self.0.iter().any(|s| s.covers(scope))
    }

    /// The scopes, sorted.
    pub fn iter(&self) -> std::slice::Iter<'_, Scope> {
        self.0.iter()
    }

    /// The scopes, sorted, as a slice.
    pub fn as_slice(&self) -> &[Scope] {
        &self.0
    }

    /// Number of distinct scopes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut scopes: Vec<Scope> = iter.into_iter().collect();
        scopes.sort();
        scopes.dedup();
        Self(scopes)
    }
}

impl From<Vec<Scope>> for ScopeSet {
    fn from(scopes: Vec<Scope>) -> Self {
        scopes.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a ScopeSet {
    type Item = &'a Scope;
    type IntoIter = std::slice::Iter<'a, Scope>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for ScopeSet {
    type Item = Scope;
    type IntoIter = std::vec::IntoIter<Scope>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(s: &str) -> Scope {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn server(s: &str) -> ServerName {
        s.parse().unwrap()
    }

    #[test]
    fn parses_examples_and_prints_them_back() {
        let cases = [
            (
                "github/tool/get_pull_request",
                "github",
                ScopeKind::Tool,
                "get_pull_request",
            ),
            ("github/tool/*", "github", ScopeKind::Tool, "*"),
            ("github/tool/get_*", "github", ScopeKind::Tool, "get_*"),
            (
                "docs/resource/file:///handbook/*",
                "docs",
                ScopeKind::Resource,
                "file:///handbook/*",
            ),
            ("docs/resource/*", "docs", ScopeKind::Resource, "*"),
            (
                "docs/resource/https://x.test/a?b=c&d=%20",
                "docs",
                ScopeKind::Resource,
                "https://x.test/a?b=c&d=%20",
            ),
            (
                "github/prompt/review",
                "github",
                ScopeKind::Prompt,
                "review",
            ),
        ];
        for (input, srv, kind, pattern) in cases {
            let s = scope(input);
            assert_eq!(s.server().as_str(), srv, "{input}");
            assert_eq!(s.kind(), kind, "{input}");
            assert_eq!(s.pattern(), pattern, "{input}");
            assert_eq!(s.to_string(), input);
        }
        let max_tool = format!("s/tool/{}*", "a".repeat(MAX_NAME_LEN));
        assert_eq!(scope(&max_tool).to_string(), max_tool);
        let max_res = format!("s/resource/{}", "a".repeat(MAX_RESOURCE_PATTERN_LEN));
        assert_eq!(scope(&max_res).to_string(), max_res);
    }

    #[test]
    fn rejects_each_scope_rule() {
        let long_tool = format!("s/tool/{}", "a".repeat(MAX_NAME_LEN + 1));
        let long_res = format!("s/resource/{}", "a".repeat(MAX_RESOURCE_PATTERN_LEN + 1));
        let cases: Vec<(&str, &str, ScopeError)> = vec![
            ("empty", "", ScopeError::MissingPart { scope: "".into() }),
            (
                "server only",
                "github",
                ScopeError::MissingPart {
                    scope: "github".into(),
                },
            ),
            (
                "no pattern separator",
                "github/tool",
                ScopeError::MissingPart {
                    scope: "github/tool".into(),
                },
            ),
            (
                "empty server",
                "/tool/x",
                ScopeError::InvalidServer(IdError::NameEmpty),
            ),
            (
                "bad server char",
                "git hub/tool/x",
                ScopeError::InvalidServer(IdError::NameInvalidChar { index: 3, ch: ' ' }),
            ),
            (
                "dot server",
                "../tool/x",
                ScopeError::InvalidServer(IdError::NameDotSegment { name: "..".into() }),
            ),
            (
                "unknown kind",
                "github/tools/x",
                ScopeError::UnknownKind {
                    kind: "tools".into(),
                },
            ),
            (
                "uppercase kind",
                "github/Tool/x",
                ScopeError::UnknownKind {
                    kind: "Tool".into(),
                },
            ),
            ("empty pattern", "github/tool/", ScopeError::EmptyPattern),
            (
                "leading wildcard",
                "github/tool/*_pr",
                ScopeError::MisplacedWildcard { index: 0 },
            ),
            (
                "middle wildcard",
                "github/tool/get_*_pr",
                ScopeError::MisplacedWildcard { index: 4 },
            ),
            (
                "double wildcard",
                "github/tool/**",
                ScopeError::MisplacedWildcard { index: 0 },
            ),
            (
                "resource middle wildcard",
                "docs/resource/file:///*/x",
                ScopeError::MisplacedWildcard { index: 8 },
            ),
            (
                "slash in tool name",
                "github/tool/a/b",
                ScopeError::InvalidPatternChar {
                    kind: ScopeKind::Tool,
                    index: 1,
                    ch: '/',
                },
            ),
            (
                "colon in prompt name",
                "github/prompt/a:b",
                ScopeError::InvalidPatternChar {
                    kind: ScopeKind::Prompt,
                    index: 1,
                    ch: ':',
                },
            ),
            (
                "space in resource",
                "docs/resource/file:///a b",
                ScopeError::InvalidPatternChar {
                    kind: ScopeKind::Resource,
                    index: 9,
                    ch: ' ',
                },
            ),
            (
                "control char in resource",
                "docs/resource/a\tb",
                ScopeError::InvalidPatternChar {
                    kind: ScopeKind::Resource,
                    index: 1,
                    ch: '\t',
                },
            ),
            (
                "non-ascii resource",
                "docs/resource/é",
                ScopeError::InvalidPatternChar {
                    kind: ScopeKind::Resource,
                    index: 0,
                    ch: 'é',
                },
            ),
            (
                "tool name too long",
                &long_tool,
                ScopeError::PatternTooLong {
                    len: MAX_NAME_LEN + 1,
                    max: MAX_NAME_LEN,
                },
            ),
            (
                "resource too long",
                &long_res,
                ScopeError::PatternTooLong {
                    len: MAX_RESOURCE_PATTERN_LEN + 1,
                    max: MAX_RESOURCE_PATTERN_LEN,
                },
            ),
        ];
        for (case, input, want) in cases {
            assert_eq!(input.parse::<Scope>().unwrap_err(), want, "case: {case}");
        }
    }

    #[test]
    fn permits_exact_and_prefix_targets() {
        let gh = server("github");
        let docs = server("docs");
        let cases: Vec<(&str, &ServerName, ScopeKind, &str, bool)> = vec![
            ("github/tool/get_pr", &gh, ScopeKind::Tool, "get_pr", true),
            ("github/tool/get_pr", &gh, ScopeKind::Tool, "get_pr2", false),
            ("github/tool/get_pr", &gh, ScopeKind::Tool, "get_p", false),
            (
                "github/tool/get_pr",
                &docs,
                ScopeKind::Tool,
                "get_pr",
                false,
            ),
            (
                "github/tool/get_pr",
                &gh,
                ScopeKind::Prompt,
                "get_pr",
                false,
            ),
            ("github/tool/get_*", &gh, ScopeKind::Tool, "get_pr", true),
            ("github/tool/get_*", &gh, ScopeKind::Tool, "get_", true),
            ("github/tool/get_*", &gh, ScopeKind::Tool, "set_pr", false),
            ("github/tool/get_*", &gh, ScopeKind::Tool, "get_*", false),
            ("github/tool/*", &gh, ScopeKind::Tool, "anything", true),
            ("github/tool/*", &gh, ScopeKind::Tool, "", false),
            ("github/tool/*", &gh, ScopeKind::Tool, "a/b", false),
            (
                "github/prompt/review",
                &gh,
                ScopeKind::Prompt,
                "review",
                true,
            ),
            (
                "docs/resource/file:///handbook/*",
                &docs,
                ScopeKind::Resource,
                "file:///handbook/intro.md",
                true,
            ),
            (
                "docs/resource/file:///handbook/*",
                &docs,
                ScopeKind::Resource,
                "file:///handbook/../secrets",
                false,
            ),
            (
                "docs/resource/file:///handbook/*",
                &docs,
                ScopeKind::Resource,
                "file:///handbook/./x",
                false,
            ),
            (
                "docs/resource/file:///handbook/*",
                &docs,
                ScopeKind::Resource,
                "file:///handbook/%2E%2E/secrets",
                false,
            ),
            (
                "docs/resource/file:///handbook/*",
                &docs,
                ScopeKind::Resource,
                "file:///handbook/..%2fsecrets",
                false,
            ),
            (
                "docs/resource/file:///handbook/*",
                &docs,
                ScopeKind::Resource,
                "file:///handbook/..\\secrets",
                false,
            ),
            (
                "docs/resource/file:///handbook/*",
                &docs,
                ScopeKind::Resource,
                "file:///handbook/a b",
                false,
            ),
            (
                "docs/resource/file:///handbook/*",
                &docs,
                ScopeKind::Resource,
                "file:///handbook2/x",
                false,
            ),
            // Prefixes are raw strings: without a trailing '/', siblings match too.
            (
                "docs/resource/file:///handbook*",
                &docs,
                ScopeKind::Resource,
                "file:///handbook2/x",
                true,
            ),
            (
                "docs/resource/file:///handbook/*",
                &docs,
                ScopeKind::Resource,
                "file:///other",
                false,
            ),
            (
                "docs/resource/file:///a/b",
                &docs,
                ScopeKind::Resource,
                "file:///a/b",
                true,
            ),
        ];
        for (pattern, srv, kind, target, want) in cases {
            assert_eq!(
                scope(pattern).permits(srv, kind, target),
                want,
                "{pattern} on {srv}/{kind}/{target}"
            );
        }
    }

    /// Issue 13: targets a file server may normalize or decode into a path outside the
    /// prefix. Each is refused by `file:///handbook/*`, and the same string as a
    /// pattern is refused at parse time.
    #[test]
    fn prefix_refuses_targets_a_server_may_read_as_another_path() {
        let docs = server("docs");
        let handbook = scope("docs/resource/file:///handbook/*");
        let cases = [
            (
                "file:///handbook//etc/passwd",
                UnsafeShape::EmptySegment,
                16,
            ),
            ("file:///handbook/a//b", UnsafeShape::EmptySegment, 18),
            (
                "file:///handbook/..;/etc/passwd",
                UnsafeShape::DotSegment,
                17,
            ),
            ("file:///handbook/.;x/y", UnsafeShape::DotSegment, 17),
            (
                "file:///handbook/a/..;jsessionid=1",
                UnsafeShape::DotSegment,
                19,
            ),
            ("file:///handbook/a?x=1/..", UnsafeShape::DotSegment, 23),
            (
                "file:///handbook/%252e%252e/etc",
                UnsafeShape::EncodedPercent,
                17,
            ),
            ("file:///handbook/%25", UnsafeShape::EncodedPercent, 17),
            (
                "file:///handbook/%2E%2e/x",
                UnsafeShape::EncodedDotOrSeparator,
                17,
            ),
            (
                "file:///handbook/a%5Cb",
                UnsafeShape::EncodedDotOrSeparator,
                18,
            ),
            ("file:///handbook/a%2", UnsafeShape::MalformedEscape, 18),
            ("file:///handbook/a%zz", UnsafeShape::MalformedEscape, 18),
            ("file:///handbook/%u002e", UnsafeShape::MalformedEscape, 17),
            ("file:///handbook/..\\x", UnsafeShape::Backslash, 19),
        ];
        for (target, shape, index) in cases {
            assert!(
                !handbook.permits(&docs, ScopeKind::Resource, target),
                "{target} must be refused"
            );
            assert_eq!(
                format!("docs/resource/{target}").parse::<Scope>(),
                Err(ScopeError::UnsafeResource { shape, index }),
                "{target} as a pattern"
            );
        }
        // Still permitted: the shapes above are refused, not everything near them.
        for target in [
            "file:///handbook/a/b.md",
            "file:///handbook/",
            "file:///handbook/dir/",
            "file:///handbook/.hidden",
            "file:///handbook/...",
            "file:///handbook/a..b",
            "file:///handbook/a;v=1",
            "file:///handbook/caf%C3%A9.md",
            "file:///handbook/a%20b",
            "file:///handbook/q?url=https://x.test/y",
        ] {
            assert!(
                handbook.permits(&docs, ScopeKind::Resource, target),
                "{target} must be permitted"
            );
            format!("docs/resource/{target}").parse::<Scope>().unwrap();
        }
        // The authority's `//` is no empty segment, with or without a host.
        for pattern in [
            "docs/resource/https://docs.test/a/*",
            "docs/resource/repo://acme/app/*",
            "docs/resource/urn:isbn:0451450523",
        ] {
            scope(pattern);
        }
        assert_eq!(
            "docs/resource/file:////etc/*".parse::<Scope>(),
            Err(ScopeError::UnsafeResource {
                shape: UnsafeShape::EmptySegment,
                index: 7
            })
        );
        // A prefix may not end in a dot segment or half an escape either.
        for (pattern, shape) in [
            (
                "docs/resource/file:///handbook/..*",
                UnsafeShape::DotSegment,
            ),
            ("docs/resource/file:///handbook/.*", UnsafeShape::DotSegment),
            (
                "docs/resource/file:///handbook/%2*",
                UnsafeShape::MalformedEscape,
            ),
            (
                "docs/resource/file:///handbook//*",
                UnsafeShape::EmptySegment,
            ),
        ] {
            assert!(
                matches!(pattern.parse::<Scope>(), Err(ScopeError::UnsafeResource { shape: s, .. }) if s == shape),
                "{pattern}"
            );
        }
    }

    #[test]
    fn covers_only_subsets() {
        let cases = [
            ("github/tool/get_pr", "github/tool/get_pr", true),
            ("github/tool/get_pr", "github/tool/get_pr2", false),
            ("github/tool/get_pr", "github/tool/get_*", false),
            ("github/tool/get_*", "github/tool/get_pr", true),
            ("github/tool/get_*", "github/tool/get_p*", true),
            ("github/tool/get_*", "github/tool/get_*", true),
            ("github/tool/get_*", "github/tool/*", false),
            ("github/tool/get_*", "github/tool/ge*", false),
            ("github/tool/*", "github/tool/get_*", true),
            ("github/tool/*", "github/prompt/get", false),
            ("github/tool/*", "gitlab/tool/get", false),
            (
                "docs/resource/file:///a/*",
                "docs/resource/file:///a/b",
                true,
            ),
            (
                "docs/resource/file:///a/*",
                "docs/resource/file:///a/b/*",
                true,
            ),
            // (`file:///a/../b` no longer parses: see the unsafe-shape test.)
            (
                "docs/resource/file:///a/*",
                "docs/resource/file:///ab/*",
                false,
            ),
            (
                "docs/resource/file:///a/b",
                "docs/resource/file:///a/*",
                false,
            ),
        ];
        for (have, want_scope, want) in cases {
            assert_eq!(
                scope(have).covers(&scope(want_scope)),
                want,
                "{have} ⊇ {want_scope}"
            );
        }
    }

    #[test]
    fn scope_set_is_sorted_and_deduplicated() {
        let set: ScopeSet = [
            "github/tool/b",
            "docs/resource/x",
            "github/tool/b",
            "github/tool/a",
        ]
        .into_iter()
        .map(scope)
        .collect();
        let printed: Vec<String> = set.iter().map(ToString::to_string).collect();
        assert_eq!(
            printed,
            ["docs/resource/x", "github/tool/a", "github/tool/b"]
        );
        assert_eq!(set.len(), 3);
        assert!(set.permits(&server("github"), ScopeKind::Tool, "a"));
        assert!(!set.permits(&server("github"), ScopeKind::Tool, "c"));
        assert!(!ScopeSet::new().permits(&server("github"), ScopeKind::Tool, "a"));
    }

    #[test]
    fn uncovered_lists_requested_scopes_outside_the_set() {
        let consented: ScopeSet = ["github/tool/get_*", "docs/resource/file:///handbook/*"]
            .into_iter()
            .map(scope)
            .collect();
        let requested: Vec<Scope> = [
            "github/tool/get_pr",
            "github/tool/merge_pr",
            "docs/resource/file:///handbook/a.md",
            "github/tool/*",
        ]
        .into_iter()
        .map(scope)
        .collect();
        let missing: Vec<String> = consented
            .uncovered(&requested)
            .into_iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(missing, ["github/tool/merge_pr", "github/tool/*"]);
        assert!(consented.uncovered(&requested[..1]).is_empty());
        assert!(consented.uncovered(&[]).is_empty());
    }
}
