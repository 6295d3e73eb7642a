//! Connecting to PostgreSQL: the pool, its timeouts, migrations.

use std::fmt;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use crate::{ServerStoreError, migrate};

/// How [`PgStore`] uses its connections.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PgStoreOptions {
    /// Most connections this replica holds (reads and writes; the replica's listener has
    /// one more of its own).
    pub max_connections: u32,
    /// How long a request waits for a connection before failing with
    /// [`crate::Unavailable`]. Short: while PostgreSQL is down, a write should be refused
    /// promptly, not hang the admin's command.
    pub acquire_timeout: Duration,
}

impl Default for PgStoreOptions {
    fn default() -> PgStoreOptions {
        PgStoreOptions {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

impl PgStoreOptions {
    /// These options with `acquire_timeout` set.
    pub fn acquire_timeout(mut self, timeout: Duration) -> PgStoreOptions {
        self.acquire_timeout = timeout;
        self
    }
}

/// The server's state in PostgreSQL. Cheap to clone; clones share one pool.
#[derive(Clone)]
pub struct PgStore {
    pub(crate) pool: PgPool,
    pub(crate) connect: PgConnectOptions,
}

/// A committed change and the version it was given: once a [`crate::Replica`] has
/// reached `version`, its memory holds the change.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Written<T> {
    /// The record as committed.
    pub value: T,
    /// The change's version.
    pub version: i64,
}

// === impl PgStore ===

impl PgStore {
    /// Connects to the database `connect` names and brings its schema to
    /// [`crate::SCHEMA_VERSION`]. Fails with [`crate::Unavailable`] if PostgreSQL cannot be
    /// reached (a binary retries), with [`crate::ServerStoreError::Migration`] if the
    /// schema is newer than this binary.
    pub async fn connect(
        connect: PgConnectOptions,
        options: &PgStoreOptions,
    ) -> Result<PgStore, ServerStoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            // A connection the server closed (a restart) is found dead here and replaced,
            // instead of failing the request that drew it.
            .test_before_acquire(true)
            .connect_with(connect.clone())
            .await?;
        if let Err(error) = migrate::run(&pool).await {
            pool.close().await;
            return Err(error);
        }
        Ok(PgStore { pool, connect })
    }

    /// Whether PostgreSQL answers now (for readiness).
    pub async fn ping(&self) -> Result<(), ServerStoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool, waiting for requests in flight. Later calls fail with
    /// [`crate::Unavailable::Closed`].
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A read-write transaction at READ COMMITTED, PostgreSQL's default: each write's
    /// statements lock the rows they change, and the change counter serialises the rest
    /// (see `version.rs`).
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Postgres>, ServerStoreError> {
        Ok(self.pool.begin().await?)
    }

    /// A read-only transaction whose statements all see one snapshot.
    pub(crate) async fn begin_snapshot(
        &self,
    ) -> Result<Transaction<'static, Postgres>, ServerStoreError> {
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?)
    }
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Host, port and database only: never the password.
        f.debug_struct("PgStore")
            .field("host", &self.connect.get_host())
            .field("port", &self.connect.get_port())
            .field("database", &self.connect.get_database())
            .finish_non_exhaustive()
    }
}
