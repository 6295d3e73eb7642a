//! The store's error type, grouped by what a caller does about it.
//!
//! [`StoreError`] has one variant per group; each group is an enum of its own holding
//! the detail. A caller matches on the group (`StoreError::Invalid(_)`: fix the
//! request) and reaches for a detail only where it acts on one
//! (`StoreError::Conflict(Conflict::TaskEnded { .. })`). Every group is
//! `#[non_exhaustive]`: a new refusal lands in the group that says what to do about
//! it without breaking a caller that matches the group.

use std::path::PathBuf;

/// A database error, from whichever connection met it.
///
/// Reads go through an async connection pool (sqlx); writes run on the writer thread's
/// own connection (rusqlite, see [`crate::writer`]). Both are the same SQLite library;
/// the split only says which side of the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatabaseError {
    /// A read (or the pool itself: opening, closed).
    #[error(transparent)]
    Read(sqlx::Error),
    /// A statement on the writer's connection.
    #[error(transparent)]
    Write(rusqlite::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> StoreError {
        StoreError::Database(DatabaseError::Read(error))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        StoreError::Database(DatabaseError::Write(error))
    }
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The request itself is unacceptable (a value out of its limits, an expiry already
    /// past); nothing was changed. The caller fixes the request; repeating it as is
    /// fails the same way.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),

    /// A record the request names does not exist; nothing was changed.
    #[error(transparent)]
    NotFound(#[from] NotFound),

    /// The request contradicts what the store holds (a duplicate, a record already
    /// withdrawn or ended, a task naming another client's consent); nothing was
    /// changed, and repeating the request as is fails the same way.
    #[error(transparent)]
    Conflict(#[from] Conflict),

    /// The store could not apply the request now; nothing was changed, and the same
    /// request may succeed later (or, once the store is closed, on the next start).
    #[error(transparent)]
    Unavailable(#[from] Unavailable),

    /// The database could not be opened, or not brought to this binary's schema
    /// ([`crate::Store::open`] only). An operator must act: the message says how.
    #[error(transparent)]
    Open(#[from] OpenError),

    /// Any other database error (I/O, lock timeout, closed pool, constraint such as a
    /// repeated task id or certificate serial).
    #[error("database error: {0}")]
    Database(#[source] DatabaseError),

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

/// A request the store refuses for what it says: [`StoreError::Invalid`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// The client name is empty or longer than [`crate::MAX_CLIENT_LEN`] bytes.
    #[error("client must be 1..={max} bytes, got {len}", max = crate::MAX_CLIENT_LEN)]
    Client {
        /// The length given, in bytes.
        len: usize,
    },

    /// The selector list is empty or has more than [`crate::MAX_SELECTORS`] items.
    #[error("an entry needs 1..={max} selectors, got {count}", max = crate::MAX_SELECTORS)]
    SelectorCount {
        /// The number of selectors given.
        count: usize,
    },

    /// A selector is empty or longer than [`crate::MAX_SELECTOR_LEN`] bytes.
    #[error("selector #{index} must be 1..={max} bytes, got {len}", max = crate::MAX_SELECTOR_LEN)]
    Selector {
        /// Position of the selector in the list given.
        index: usize,
        /// Its length, in bytes.
        len: usize,
    },

    /// An SVID TTL of zero seconds was requested; use `None` for the default.
    #[error("svid_ttl_secs must be at least 1 (or absent for the default)")]
    SvidTtl,

    /// An audit field is empty (kind) or too long.
    #[error("audit {field} must be {min}..={max} bytes, got {len}")]
    AuditField {
        /// Which field: `kind` or `actor`.
        field: &'static str,
        /// Smallest length allowed.
        min: usize,
        /// Largest length allowed.
        max: usize,
        /// The length given.
        len: usize,
    },

    /// A length-limited field is empty (where that is not allowed) or too long.
    #[error("{field} must be {min}..={max} bytes, got {len}")]
    Field {
        /// Which field, e.g. `subject`, `server`, `purpose`, `task id`.
        field: &'static str,
        /// Smallest length allowed.
        min: usize,
        /// Largest length allowed.
        max: usize,
        /// The length given.
        len: usize,
    },

    /// A consent or task has no scopes or more than [`crate::MAX_SCOPES`].
    #[error("scopes must have 1..={max} items, got {count}", max = crate::MAX_SCOPES)]
    ScopeCount {
        /// The number of scopes given.
        count: usize,
    },

    /// A scope is empty or longer than [`crate::MAX_SCOPE_LEN`] bytes.
    #[error("scope #{index} must be 1..={max} bytes, got {len}", max = crate::MAX_SCOPE_LEN)]
    Scope {
        /// Position of the scope in the list given.
        index: usize,
        /// Its length, in bytes.
        len: usize,
    },

    /// A certificate serial is not 1..=[`crate::MAX_SERIAL_HEX_LEN`] hex digits.
    #[error("certificate serial must be 1..={max} hex digits, got {serial:?}", max = crate::MAX_SERIAL_HEX_LEN)]
    Serial {
        /// The serial given.
        serial: String,
    },

    /// A task's deadline is not after its start.
    #[error("task deadline {deadline} is not after its start {begun_at}")]
    Deadline {
        /// The task's start, unix seconds.
        begun_at: i64,
        /// The deadline given, unix seconds.
        deadline: i64,
    },

    /// A consent's expiry is not in the future: when granting it, or, for a task that
    /// would rely on it, at the task's start.
    #[error("consent expires at {expires_at}, which is not after {at}")]
    ConsentExpired {
        /// The consent's expiry, unix seconds.
        expires_at: i64,
        /// The time it was checked against, unix seconds.
        at: i64,
    },
}

/// A record the request names that does not exist: [`StoreError::NotFound`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotFound {
    /// A task names a consent that does not exist.
    #[error("no consent with id {id}")]
    Consent {
        /// The id given.
        id: String,
    },

    /// No task with this id.
    #[error("no task with id {id}")]
    Task {
        /// The id given.
        id: String,
    },
}

/// A request that contradicts what the store holds: [`StoreError::Conflict`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Conflict {
    /// An entry with the same client and the same selector set already exists.
    #[error("an entry for this client with this selector set already exists: {existing_id}")]
    DuplicateEntry {
        /// The id of the entry that already exists.
        existing_id: String,
    },

    /// The consent was withdrawn: it cannot be withdrawn again, nor can a task rely on it.
    #[error("consent {id} has already been withdrawn (at {withdrawn_at})")]
    ConsentWithdrawn {
        /// The consent's id.
        id: String,
        /// When it was withdrawn, unix seconds.
        withdrawn_at: i64,
    },

    /// A task's client, subject or server differs from its consent's.
    #[error("task {field} does not match consent {id}")]
    ConsentMismatch {
        /// The consent's id.
        id: String,
        /// Which field differs: `client`, `subject` or `server`.
        field: &'static str,
    },

    /// The task has ended; nothing more can be issued for it.
    #[error("task {id} has ended")]
    TaskEnded {
        /// The task's id.
        id: String,
    },
}

/// A request the store could not apply now, changing nothing: [`StoreError::Unavailable`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// Tasks relying on the consent kept beginning while it was being withdrawn, and the
    /// withdrawal gave up after this many attempts. Nothing was changed; retry (ideally
    /// after stopping new tasks on this consent).
    #[error(
        "consent {id} could not be withdrawn: tasks kept beginning on it ({attempts} attempts)"
    )]
    WithdrawContended {
        /// The consent's id.
        id: String,
        /// How many attempts were made.
        attempts: u32,
    },

    /// The store was closed (or its writer stopped); the write was not applied.
    #[error("the store is closed")]
    Closed,

    /// The group commit holding this write failed (BEGIN, a savepoint, or COMMIT), so the
    /// whole batch was rolled back and this write was not applied. The underlying database
    /// error is shared by every write in the batch, hence only its text here.
    #[error("group commit failed, write not applied: {reason}")]
    CommitFailed {
        /// The database error, as text.
        reason: String,
    },
}

/// Why the database could not be opened or migrated: [`StoreError::Open`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
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

    /// A migration would have left rows that break a foreign key (possible only in a file
    /// written without enforcement); it was rolled back and the schema is unchanged. The
    /// file needs repair, or restoring from a backup, before this binary can use it.
    #[error("migration to schema version {version} refused, nothing changed: {reason}")]
    MigrationRefused {
        /// The migration refused.
        version: i64,
        /// Which rows, and what they refer to.
        reason: String,
    },

    /// The writer's thread could not be started.
    #[error("starting the store writer thread failed: {0}")]
    WriterThread(#[source] std::io::Error),
}
