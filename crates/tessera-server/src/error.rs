//! The server store's error type, grouped by what a caller does about it, as the agent
//! store's [`tessera_store::StoreError`] is: match on the group, reach for a detail only
//! where you act on one. Every group is `#[non_exhaustive]`.

/// Everything that can go wrong in [`crate::PgStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerStoreError {
    /// The request itself is unacceptable; nothing was changed. Repeating it as is fails
    /// the same way.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),

    /// A record the request names does not exist; nothing was changed.
    #[error(transparent)]
    NotFound(#[from] NotFound),

    /// The request contradicts what the database holds; nothing was changed, and
    /// repeating it as is fails the same way.
    #[error(transparent)]
    Conflict(#[from] Conflict),

    /// PostgreSQL cannot be reached (down, restarting, the pool exhausted past its
    /// timeout): nothing was changed, or, for a failure at COMMIT, the outcome is unknown
    /// (see [`Unavailable::Database`]). The same request may succeed later.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),

    /// The reader's version is not in the change log any more (pruned), or is ahead of
    /// the database (restored from an older backup): it must start over from
    /// [`crate::PgStore::snapshot`].
    #[error(
        "changes since version {since} are not available (log holds {oldest}..={current}): \
         take a snapshot"
    )]
    SnapshotRequired {
        /// The version asked for.
        since: i64,
        /// The oldest version the log can move a reader forward from.
        oldest: i64,
        /// The newest version.
        current: i64,
    },

    /// The database schema is newer than this binary, or a migration failed. An operator
    /// must act: the message says how.
    #[error(transparent)]
    Migration(#[from] MigrationError),

    /// Any other database error (a constraint the store did not expect, a bug).
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),

    /// A row read back does not decode. Never skipped silently.
    #[error("corrupt row in {table} ({key}): {reason}")]
    Corrupt {
        /// The table holding the row.
        table: &'static str,
        /// The row's key.
        key: String,
        /// What failed to decode.
        reason: String,
    },
}

/// A request refused for what it says: [`ServerStoreError::Invalid`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// An entry, consent or audit field out of the agent store's limits (the server
    /// refuses exactly what every agent's copy would).
    #[error(transparent)]
    Record(#[from] tessera_store::InvalidInput),

    /// A node name is not a valid SPIFFE path segment (1..=128 bytes of `[a-zA-Z0-9._-]`).
    #[error("node name {name:?}: {reason}")]
    NodeName {
        /// The name given (truncated to 128 bytes).
        name: String,
        /// Why it is refused.
        reason: String,
    },

    /// A join token's lifetime is outside 1 s..=[`crate::MAX_JOIN_TOKEN_TTL_SECS`].
    #[error("join token ttl must be 1..={max} seconds, got {ttl_secs}", max = crate::limits::MAX_JOIN_TOKEN_TTL_SECS)]
    JoinTokenTtl {
        /// The lifetime asked for.
        ttl_secs: i64,
    },

    /// A presented join token is not of the shape the server issues (it was not looked up).
    #[error("malformed join token")]
    JoinTokenMalformed,

    /// A node's selectors or attestation summary is out of limits.
    #[error("node attestation: {reason}")]
    Attestation {
        /// What is wrong.
        reason: String,
    },

    /// A node's published JWT signing keys are out of bounds (count, `kid` shape, point,
    /// `not_after`).
    #[error("JWT key {index}: {reason}")]
    JwtKey {
        /// Its position in the request, from 0.
        index: usize,
        /// What is wrong.
        reason: String,
    },

    /// A reported task event is malformed (the index is its position in the request).
    #[error("task event {index}: {reason}")]
    TaskEvent {
        /// Its position in the request, from 0.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A named record that does not exist: [`ServerStoreError::NotFound`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotFound {
    /// No entry with this id.
    #[error("no entry {id}")]
    Entry {
        /// The id asked for.
        id: String,
    },
    /// No consent with this id.
    #[error("no consent {id}")]
    Consent {
        /// The id asked for.
        id: String,
    },
    /// No node with this name.
    #[error("no node {name}")]
    Node {
        /// The name asked for.
        name: String,
    },
    /// No join token hashes to what was presented.
    #[error("no such join token")]
    JoinToken,
    /// No node has reported a task with this id (or it was pruned).
    #[error("no task {id}")]
    Task {
        /// The id asked for.
        id: String,
    },
}

/// A request that contradicts the stored state: [`ServerStoreError::Conflict`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Conflict {
    /// The client already has an entry of this kind with the same selector set.
    #[error("an identical entry already exists: {existing_id}")]
    DuplicateEntry {
        /// The existing entry's id.
        existing_id: String,
    },
    /// The consent was already withdrawn.
    #[error("consent {id} was withdrawn at {withdrawn_at}")]
    ConsentWithdrawn {
        /// The consent's id.
        id: String,
        /// When, unix seconds.
        withdrawn_at: i64,
    },
    /// An active node already holds this name, and the attestation does not prove it.
    #[error("node {name} is already registered")]
    NodeExists {
        /// The node's name.
        name: String,
    },
    /// The node was evicted; it cannot attest, renew or be evicted again.
    #[error("node {name} was evicted at {evicted_at}")]
    NodeEvicted {
        /// The node's name.
        name: String,
        /// When, unix seconds.
        evicted_at: i64,
    },
    /// The join token was already used (by this node).
    #[error("join token {id} was already used")]
    JoinTokenUsed {
        /// The token's id (not the token).
        id: String,
    },
    /// The join token expired.
    #[error("join token {id} expired at {expires_at}")]
    JoinTokenExpired {
        /// The token's id (not the token).
        id: String,
        /// When, unix seconds.
        expires_at: i64,
    },
    /// The join token was made for another node name.
    #[error("join token {id} is for another node")]
    JoinTokenForOtherNode {
        /// The token's id (not the token).
        id: String,
    },
    /// A node published a JWT key id another node holds: key ids are unique in the
    /// cluster, so no node can shadow another's key.
    #[error("JWT key id {kid} is another node's")]
    JwtKeyOfAnotherNode {
        /// The key id.
        kid: String,
    },
}

/// PostgreSQL could not be used now: [`ServerStoreError::Unavailable`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// The connection failed or was lost (refused, reset, PostgreSQL shutting down or
    /// starting up, no connection free within the pool's timeout). A write that fails
    /// this way at COMMIT may or may not have committed; its version, if it did, reaches
    /// every replica through the change log like any other.
    #[error("database unavailable: {reason}")]
    Database {
        /// The error, as text.
        reason: String,
    },
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
}

/// Why the schema could not be brought to this binary's: [`ServerStoreError::Migration`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// The database was migrated by a newer tessera-server.
    #[error(
        "database schema version {found} is newer than this binary supports ({supported}); \
         upgrade tessera-server"
    )]
    SchemaTooNew {
        /// The highest version recorded.
        found: i64,
        /// The highest version this binary knows.
        supported: i64,
    },
    /// A migration failed; its transaction was rolled back.
    #[error("migration to schema version {version} failed: {source}")]
    Failed {
        /// The migration.
        version: i64,
        /// The database error.
        source: sqlx::Error,
    },
}

impl From<sqlx::Error> for ServerStoreError {
    fn from(error: sqlx::Error) -> ServerStoreError {
        if is_unavailable(&error) {
            let reason = error.to_string();
            return ServerStoreError::Unavailable(match error {
                sqlx::Error::PoolClosed => Unavailable::Closed,
                _ => Unavailable::Database { reason },
            });
        }
        ServerStoreError::Database(error)
    }
}

impl From<tessera_store::InvalidInput> for ServerStoreError {
    fn from(error: tessera_store::InvalidInput) -> ServerStoreError {
        ServerStoreError::Invalid(InvalidInput::Record(error))
    }
}

/// Whether `error` says PostgreSQL could not be reached or used right now, as opposed to
/// refusing this request.
pub(crate) fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exception. 57P01..57P03: admin shutdown, crash
            // shutdown, cannot connect now (starting up or shutting down). 53300: too
            // many connections.
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}
