//! The store's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file (or its directory) could not be created or inspected.
    #[error("database file {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// The database path exists but is not a regular file.
    #[error("database path {path} is not a regular file")]
    NotAFile {
        /// The offending path.
        path: PathBuf,
    },

    /// An existing database file (or its `-wal`/`-shm` companion) is readable or writable by
    /// group or others. The store refuses to use it rather than silently tightening it: a
    /// loose mode means someone else may already have read or changed it.
    #[error(
        "refusing to open {path}: mode {mode:04o} grants group/other access; \
         it must be 0600 or stricter (e.g. `chmod 600 {path}`) after checking nobody tampered with it"
    )]
    InsecurePermissions {
        /// The offending file.
        path: PathBuf,
        /// Its permission bits (`mode & 0o7777`).
        mode: u32,
    },

    /// The database was migrated by a newer Tessera than this binary; opening it could
    /// misread or corrupt data this binary does not understand.
    #[error(
        "database schema version {found} is newer than this binary supports ({supported}); \
         upgrade tessera or restore an older database"
    )]
    SchemaTooNew {
        /// The highest version recorded in `schema_migrations`.
        found: i64,
        /// The highest version this binary knows.
        supported: i64,
    },

    /// A migration failed; its transaction was rolled back and the schema is unchanged.
    #[error("migration to schema version {version} failed: {source}")]
    Migration {
        /// The migration that failed.
        version: i64,
        /// The database error.
        source: sqlx::Error,
    },

    /// Any other database error (I/O, lock timeout, closed pool, constraint).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// An entry with the same client and the same selector set already exists.
    #[error("an entry for this client with this selector set already exists: {existing_id}")]
    DuplicateEntry {
        /// The id of the entry that already exists.
        existing_id: String,
    },

    /// The client name is empty or longer than [`crate::MAX_CLIENT_LEN`] bytes.
    #[error("client must be 1..={max} bytes, got {len}", max = crate::MAX_CLIENT_LEN)]
    InvalidClient {
        /// The length given, in bytes.
        len: usize,
    },

    /// The selector list is empty or has more than [`crate::MAX_SELECTORS`] items.
    #[error("an entry needs 1..={max} selectors, got {count}", max = crate::MAX_SELECTORS)]
    InvalidSelectorCount {
        /// The number of selectors given.
        count: usize,
    },

    /// A selector is empty or longer than [`crate::MAX_SELECTOR_LEN`] bytes.
    #[error("selector #{index} must be 1..={max} bytes, got {len}", max = crate::MAX_SELECTOR_LEN)]
    InvalidSelector {
        /// Position of the selector in the list given.
        index: usize,
        /// Its length, in bytes.
        len: usize,
    },

    /// An SVID TTL of zero seconds was requested; use `None` for the default.
    #[error("svid_ttl_secs must be at least 1 (or absent for the default)")]
    InvalidSvidTtl,

    /// An audit field is empty (kind) or too long.
    #[error("audit {field} must be {min}..={max} bytes, got {len}")]
    InvalidAuditField {
        /// Which field: `kind` or `actor`.
        field: &'static str,
        /// Smallest length allowed.
        min: usize,
        /// Largest length allowed.
        max: usize,
        /// The length given.
        len: usize,
    },

    /// A row read back from the database does not decode (malformed JSON, out-of-range
    /// number). Never skipped silently: the caller must see that state is damaged.
    #[error("corrupt row in {table} (id {id}): {reason}")]
    Corrupt {
        /// The table holding the row.
        table: &'static str,
        /// The row's key.
        id: String,
        /// What failed to decode.
        reason: String,
    },
}
