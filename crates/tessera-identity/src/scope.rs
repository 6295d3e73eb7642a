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
//! Resource prefixes are matched on the raw string, so a resource URI must not have a
//! shape a resource server could read as another path ([`UnsafeShape`], in `resource`).
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

mod resource;

pub use resource::UnsafeShape;
use resource::unsafe_resource_shape;

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
mod tests;
