//! Why an identifier was rejected.
//!
//! One enum covers the generic SPIFFE ID rules and Tessera's own shapes, because the
//! Tessera parsers run the generic check first and callers want one error type for
//! "this is not an identity I accept". Byte indices always point into the string the
//! caller passed to the parser that failed.

use crate::kind::IdKind;

/// A SPIFFE ID, trust domain, name or task id that broke a rule.
///
/// Each variant is one rule, so callers (and audit logs) can say precisely what was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The input is the empty string.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The whole ID is longer than the SPIFFE limit.
    #[error("SPIFFE ID is {len} bytes, longer than the maximum of {max}")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
        /// The limit, [`crate::MAX_SPIFFE_ID_LEN`].
        max: usize,
    },
    /// The input has no `scheme:` prefix at all.
    #[error("SPIFFE ID has no scheme; it must start with `spiffe://`")]
    MissingScheme,
    /// The scheme is not `spiffe` (compared exactly: `SPIFFE://` is rejected too).
    #[error("SPIFFE ID scheme is {scheme:?}; only `spiffe` is allowed")]
    WrongScheme {
        /// The scheme found.
        scheme: String,
    },
    /// `spiffe:` is not followed by `//` and a trust domain.
    #[error("SPIFFE ID lacks the `//` authority marker after `spiffe:`")]
    MissingAuthority,
    /// The URI has a query component (`?`).
    #[error("SPIFFE ID must not have a query (`?` at byte {index})")]
    Query {
        /// Byte offset of the `?`.
        index: usize,
    },
    /// The URI has a fragment component (`#`).
    #[error("SPIFFE ID must not have a fragment (`#` at byte {index})")]
    Fragment {
        /// Byte offset of the `#`.
        index: usize,
    },
    /// The authority carries userinfo (`user@`).
    #[error("SPIFFE ID must not have userinfo (`@` at byte {index})")]
    Userinfo {
        /// Byte offset of the `@`.
        index: usize,
    },
    /// The authority carries a port (`:port`).
    #[error("SPIFFE ID must not have a port (`:` at byte {index})")]
    Port {
        /// Byte offset of the `:`.
        index: usize,
    },
    /// The trust domain is empty (`spiffe:///path`).
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is {len} bytes, longer than the maximum of {max}")]
    TrustDomainTooLong {
        /// Length of the trust domain in bytes.
        len: usize,
        /// The limit, [`crate::MAX_TRUST_DOMAIN_LEN`].
        max: usize,
    },
    /// The trust domain contains an uppercase letter; trust domains are lowercase.
    #[error("trust domain contains uppercase {ch:?} at byte {index}; trust domains are lowercase")]
    TrustDomainUppercase {
        /// Byte offset of the character.
        index: usize,
        /// The character.
        ch: char,
    },
    /// The trust domain contains a character outside `[a-z0-9._-]`.
    #[error("trust domain contains {ch:?} at byte {index}; only [a-z0-9._-] is allowed")]
    TrustDomainInvalidChar {
        /// Byte offset of the character.
        index: usize,
        /// The character.
        ch: char,
    },
    /// Percent-encoding (`%`) in the trust domain or path; SPIFFE IDs forbid it.
    #[error("SPIFFE ID must not use percent-encoding (`%` at byte {index})")]
    PercentEncoding {
        /// Byte offset of the `%`.
        index: usize,
    },
    /// A path segment is empty (`//` in the path).
    #[error("SPIFFE ID path has an empty segment at byte {index}")]
    EmptySegment {
        /// Byte offset where the empty segment starts.
        index: usize,
    },
    /// A path segment is `.` or `..`.
    #[error("SPIFFE ID path has a dot segment {segment:?}")]
    DotSegment {
        /// The segment, `.` or `..`.
        segment: String,
    },
    /// The path ends with `/` (including the bare `spiffe://td/`).
    #[error("SPIFFE ID must not end with `/`")]
    TrailingSlash,
    /// A path segment contains a character outside `[a-zA-Z0-9._-]`.
    #[error("SPIFFE ID path contains {ch:?} at byte {index}; only [a-zA-Z0-9._-] is allowed")]
    PathInvalidChar {
        /// Byte offset of the character.
        index: usize,
        /// The character.
        ch: char,
    },
    /// A client or server name is empty.
    #[error("name is empty")]
    NameEmpty,
    /// A client or server name is longer than Tessera allows.
    #[error("name is {len} bytes, longer than the maximum of {max}")]
    NameTooLong {
        /// Length of the name in bytes.
        len: usize,
        /// The limit, [`crate::MAX_NAME_LEN`].
        max: usize,
    },
    /// A client or server name contains a character outside `[a-zA-Z0-9._-]`.
    #[error("name contains {ch:?} at byte {index}; only [a-zA-Z0-9._-] is allowed")]
    NameInvalidChar {
        /// Byte offset of the character within the name.
        index: usize,
        /// The character.
        ch: char,
    },
    /// A client or server name is `.` or `..`.
    #[error("name must not be {name:?}")]
    NameDotSegment {
        /// The name, `.` or `..`.
        name: String,
    },
    /// A task id is not a ULID in canonical form (26 uppercase Crockford base32 characters).
    #[error("task id {value:?} is not a canonical ULID (26 uppercase Crockford base32 characters)")]
    InvalidTaskId {
        /// The rejected value.
        value: String,
    },
    /// A valid SPIFFE ID whose path is not one of Tessera's shapes
    /// (`/client/<name>`, `/client/<name>/task/<ulid>`, `/mcp/<name>`).
    #[error("SPIFFE ID path {path:?} is not a Tessera client, task or server id")]
    UnrecognizedPath {
        /// The path, empty for a trust domain's own ID.
        path: String,
    },
    /// A Tessera id of one kind where another kind was required (e.g. a task id parsed as a client id).
    #[error("expected a {expected} id, found a {found} id")]
    WrongKind {
        /// The kind the caller asked for.
        expected: IdKind,
        /// The kind the input is.
        found: IdKind,
    },
}
