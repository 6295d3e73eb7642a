//! Every size limit the store enforces, in one place: the validation helpers
//! ([`crate::validate`]), the records' own checks and the error messages all read
//! them from here. Limits of what ends up in an identity or in a task's claims are
//! tessera-identity's, re-exported: the store re-checks them at its boundary as
//! defence in depth, and must refuse exactly what the agent's API and the claims do.

// Entries.
/// Longest client name accepted, in bytes: a client name's limit.
pub const MAX_CLIENT_LEN: usize = tessera_identity::MAX_NAME_LEN;
/// Most selectors one entry may have.
pub const MAX_SELECTORS: usize = 32;
/// Longest selector accepted, in bytes.
pub const MAX_SELECTOR_LEN: usize = 1024;

// Consents and tasks.
/// Longest subject (the human a task acts for) accepted, in bytes.
pub use tessera_identity::MAX_SUBJECT_LEN;
/// Longest MCP server name accepted, in bytes: a server name's limit.
pub const MAX_SERVER_LEN: usize = tessera_identity::MAX_NAME_LEN;
/// Most scopes one consent or task may carry.
pub use tessera_identity::MAX_SCOPES;
/// Longest scope accepted, in bytes.
pub const MAX_SCOPE_LEN: usize = 1024;

// Tasks, their SVIDs and revocations.
/// Longest task id accepted, in bytes (task ids are ULIDs or UUIDv7s).
pub const MAX_TASK_ID_LEN: usize = 64;
/// Longest purpose accepted, in bytes.
pub use tessera_identity::MAX_PURPOSE_LEN;
/// Longest certificate serial accepted, in hex digits (RFC 5280 allows 20 octets; a
/// little room for a sign byte and leading zeros).
pub const MAX_SERIAL_HEX_LEN: usize = 64;
/// Longest SPIFFE ID accepted, in bytes (the SPIFFE limit).
pub use tessera_identity::MAX_SPIFFE_ID_LEN;
/// Longest end or revocation reason accepted, in bytes.
pub const MAX_REASON_LEN: usize = 128;

// The audit log.
/// Longest audit kind accepted, in bytes (kinds are short dotted names like `entry.create`).
pub const MAX_AUDIT_KIND_LEN: usize = 64;
/// Longest audit actor accepted, in bytes: room for a full SPIFFE ID (at most 2048 bytes).
pub const MAX_AUDIT_ACTOR_LEN: usize = 2048;
/// Most records [`Store::list_audit`] returns per call; larger limits are clamped to this.
pub const MAX_AUDIT_PAGE: u32 = 1000;

// Retention.
/// Most expired revocations one transaction of [`Store::prune_revocations`] deletes.
pub const PRUNE_CHUNK: u64 = 512;
