//! The server's own input limits (entries, consents and audit records use the agent
//! store's).

/// Every join token starts with this, so secret scanners and people can tell what it is.
pub const JOIN_TOKEN_PREFIX: &str = "tessera-join-";

/// Random bytes in a join token (hex-encoded after the prefix).
pub(crate) const JOIN_TOKEN_BYTES: usize = 32;

/// Longest lifetime a join token may be given: 7 days. A token is a bearer secret that
/// becomes a node; it should be used soon after it is made.
pub const MAX_JOIN_TOKEN_TTL_SECS: i64 = 7 * 24 * 3600;

/// Largest node attestation summary stored, as JSON text.
pub const MAX_ATTESTATION_LEN: usize = 16 * 1024;

/// Largest attestation evidence (a join token, a projected service-account token) the
/// Node service passes to an attestor. Kubernetes tokens are a few KiB; anything larger
/// is refused before it is parsed.
pub const MAX_ATTESTATION_EVIDENCE_LEN: usize = 16 * 1024;
