//! Opening the database file: permissions, connection settings, migrations.

use std::fmt;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::watch;

use crate::checkpoint::{self, CheckpointState};
use crate::error::OpenError;
use crate::writer::{Notifier, Writer};
use crate::{StoreError, migrate};

/// Connections in the read pool. Writes use the writer's own connection (see
/// [`crate::writer`]); a few pool connections let reads proceed beside it (WAL) without
/// holding many file descriptors.
const MAX_CONNECTIONS: u32 = 4;

/// Page size of a new database file, in bytes (SQLite's default is 4096). Every commit
/// writes each page it changed to the WAL and fsyncs it; a BeginTask changes ~8 pages of
/// which it fills a few hundred bytes each, so smaller pages make every durable write
/// cheaper. An existing file keeps the page size it was created with: SQLite cannot
/// change it in WAL mode without rewriting the file.
pub(crate) const PAGE_SIZE: u32 = 2048;

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Handle to the node agent's durable state. Cheap to clone; clones share one read pool,
/// one writer (see [`crate::writer`] for the group-commit design) and the revision
/// counters.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// For reads (and, in tests, raw statements); every write goes through `writer`.
    pub(crate) pool: SqlitePool,
    pub(crate) writer: Writer,
    /// Shared with the writer and the checkpointer (see [`crate::checkpoint`]).
    pub(crate) checkpoints: Arc<CheckpointState>,
    /// Stops the checkpointer; taken by [`Store::close`].
    checkpointer: std::sync::Mutex<Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
    /// Entry and consent revisions (bumped after every committed change; in memory only,
    /// starting at 0 on each open, meant for "has anything changed since I last looked",
    /// not as ids) and the audit broadcast.
    pub(crate) notifier: Arc<Notifier>,
    /// Consents being withdrawn; see [`crate::Store::withdraw_consent`].
    pub(crate) sealed: Arc<crate::sealed::Sealed>,
    /// Whether task begins and ends are journaled for the server (cluster mode).
    pub(crate) journal: std::sync::atomic::AtomicBool,
    path: PathBuf,
}

// === impl Store ===

impl Store {
    /// Runs the deleting op `run` (which deletes at most [`crate::limits::PRUNE_CHUNK`] rows and
    /// returns how many) until a chunk comes back short; returns the total. Each chunk is
    /// its own write, so writes queued meanwhile (a BeginTask waiting to be durable) wait
    /// for one chunk, not for the whole backlog.
    pub(crate) async fn prune_in_chunks<S: Copy + Send + 'static>(
        &self,
        name: &'static str,
        state: S,
        run: crate::writer::RunFn<S, u64>,
    ) -> Result<u64, crate::StoreError> {
        let mut pruned = 0;
        loop {
            let chunk = self.inner.writer.write(name, state, run).await?;
            pruned += chunk;
            if chunk < crate::limits::PRUNE_CHUNK {
                break;
            }
        }
        if pruned > 0 {
            tracing::debug!(pruned, what = name, "pruned");
        }
        Ok(pruned)
    }

    /// Opens (creating if missing) the database at `path` and migrates it to the current
    /// schema.
    ///
    /// A new file is created with mode 0600. An existing file, or its `-wal`/`-shm`
    /// companions, that grants any group or other access is refused with
    /// [`OpenError::InsecurePermissions`] rather than silently tightened. A database whose
    /// schema is newer than this binary is refused with [`OpenError::SchemaTooNew`].
    /// The parent directory must already exist.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        create_private_file(path)?;
        check_private(path, true)?;
        for suffix in ["-wal", "-shm"] {
            let mut companion = path.as_os_str().to_owned();
            companion.push(suffix);
            check_private(Path::new(&companion), false)?;
        }

        let options = SqliteConnectOptions::new()
            .filename(path)
            // We created the file above; if it vanished in between, fail rather than
            // letting SQLite create one with the process umask.
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power loss
            // (they are durable only after the next checkpoint's fsync). A lost revocation
            // or consent withdrawal would bring a dead credential back to life after a
            // reboot, so every commit is fsynced. Group commit (crate::writer) shares one
            // fsync among all the writes that arrive together, so this does not cap the
            // task rate.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Savepoint sub-journals in memory: the writer nests one savepoint per op in a
            // group commit, and a file-backed sub-journal spills to a temp file after
            // 64 KiB, which more than doubled the cost of each BeginTask. A batch holds at
            // most MAX_BATCH ops of a few pages each, so this stays a few MiB at worst.
            .pragma("temp_store", "memory")
            .page_size(PAGE_SIZE)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options.clone())
            .await?;

        if let Err(error) = migrate::run(&pool).await {
            pool.close().await;
            return Err(error);
        }

        let notifier = Arc::new(Notifier::new());
        let checkpoints = Arc::new(CheckpointState::default());
        let (stop_checkpoints, stopped) = watch::channel(false);
        let checkpointer =
            match checkpoint::start(&options, Arc::clone(&checkpoints), stopped).await {
                Ok(task) => task,
                Err(error) => {
                    pool.close().await;
                    return Err(error);
                }
            };
        let writer = match Writer::start(
            path,
            BUSY_TIMEOUT,
            Arc::clone(&notifier),
            Arc::clone(&checkpoints),
        )
        .await
        {
            Ok(writer) => writer,
            Err(error) => {
                let _ = stop_checkpoints.send(true);
                let _ = checkpointer.await;
                pool.close().await;
                return Err(error);
            }
        };
        tracing::info!(path = %path.display(), "store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                writer,
                checkpoints,
                checkpointer: std::sync::Mutex::new(Some((stop_checkpoints, checkpointer))),
                notifier,
                sealed: Arc::default(),
                journal: std::sync::atomic::AtomicBool::new(false),
                path: path.to_owned(),
            }),
        })
    }

    /// The entry revision: increases by one after every committed entry change (create,
    /// delete) through this store or its clones. Starts at 0 on each [`Store::open`].
    pub fn entries_revision(&self) -> u64 {
        *self.inner.notifier.entries.borrow()
    }

    /// A receiver that sees [`Store::entries_revision`] change, so the agent can recompute
    /// its selector index when entries change instead of polling.
    pub fn watch_entries(&self) -> watch::Receiver<u64> {
        self.inner.notifier.entries.subscribe()
    }

    /// The writer's counters since this store was opened (shared by its clones).
    pub fn writer_stats(&self) -> WriterStats {
        let notifier = &self.inner.notifier;
        let checkpoints = &self.inner.checkpoints;
        WriterStats {
            commits: notifier.commits.load(Ordering::Relaxed),
            writes: notifier.writes.load(Ordering::Relaxed),
            commit_micros: notifier.commit_micros.load(Ordering::Relaxed),
            checkpoints_background: checkpoints.background.load(Ordering::Relaxed),
            checkpoints_by_writer: checkpoints.by_writer.load(Ordering::Relaxed),
        }
    }

    /// Closes the store: lets the writer commit every write already queued, stops it, then
    /// closes the read pool, waiting for in-flight queries to finish. Later writes on this
    /// store or its clones fail with [`crate::Unavailable::Closed`], later reads with
    /// [`StoreError::Database`]. Idempotent.
    pub async fn close(&self) {
        self.inner.writer.close().await;
        let checkpointer = self
            .inner
            .checkpointer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some((stop, task)) = checkpointer {
            let _ = stop.send(true);
            if let Err(error) = task.await {
                tracing::error!(%error, "store checkpointer task failed");
            }
        }
        self.inner.pool.close().await;
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("entries_revision", &self.entries_revision())
            .finish_non_exhaustive()
    }
}

/// Counters of the store's writer (see [`crate::writer`] and [`crate::checkpoint`]),
/// for metrics. `writes / commits` is the mean group-commit size and
/// `commit_micros / commits` the mean time a transaction held the writer, so together
/// they say whether the writer or its callers limit the write rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterStats {
    /// Transactions committed, each made durable by one fsync.
    pub commits: u64,
    /// Writes committed in them.
    pub writes: u64,
    /// Microseconds from `BEGIN` to the return of `COMMIT`, summed.
    pub commit_micros: u64,
    /// WAL checkpoints run beside the writer.
    pub checkpoints_background: u64,
    /// WAL checkpoints the writer finished between batches, so the WAL started over.
    pub checkpoints_by_writer: u64,
}

/// Creates `path` with mode 0600 if it does not exist. `create_new` makes this race-free:
/// either we create the file with our mode, or it already existed and gets checked.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {
            tracing::info!(path = %path.display(), "created store database file");
            Ok(())
        }
        Err(error) if error.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::Open(OpenError::Io {
            path: path.to_owned(),
            source,
        })),
    }
}

/// Refuses a file that grants group or other any access. A missing file is an error only
/// when `must_exist`.
fn check_private(path: &Path, must_exist: bool) -> Result<(), StoreError> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if !must_exist && error.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StoreError::Open(OpenError::Io {
                path: path.to_owned(),
                source,
            }));
        }
    };
    if !metadata.is_file() {
        return Err(StoreError::Open(OpenError::NotAFile {
            path: path.to_owned(),
        }));
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(StoreError::Open(OpenError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs::Permissions;

    use sqlx::Connection;

    use super::*;
    use crate::SCHEMA_VERSION;
    use crate::testing::{new_entry, open_temp, raw_connection};

    #[tokio::test]
    async fn new_database_file_is_created_with_mode_0600() {
        let (_dir, path, store) = open_temp().await;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // WAL companions inherit the database file's mode.
        store
            .create_entry(new_entry("a", &["x"]), "t")
            .await
            .unwrap();
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let mode = std::fs::metadata(&wal).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        store.close().await;
    }

    #[tokio::test]
    async fn connections_use_wal_full_sync_and_foreign_keys() {
        let (_dir, _path, store) = open_temp().await;
        let mut conn = store.inner.pool.acquire().await.unwrap();
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(journal, "wal");
        assert_eq!(synchronous, 2, "FULL");
        assert_eq!(foreign_keys, 1);
        assert_eq!(busy, 5000);
    }

    #[tokio::test]
    async fn group_readable_database_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tessera.db");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();

        let error = Store::open(&path).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::Open(OpenError::InsecurePermissions { path: p, mode: 0o644 }) if *p == path),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("0644"), "{message}");
        // Refused, not repaired.
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    #[tokio::test]
    async fn loose_wal_file_is_refused() {
        let (_dir, path, store) = open_temp().await;
        store.close().await;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, Permissions::from_mode(0o660)).unwrap();
        let error = Store::open(&path).await.unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::Open(OpenError::InsecurePermissions { mode: 0o660, .. })
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn directory_instead_of_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let error = Store::open(dir.path()).await.unwrap_err();
        assert!(
            matches!(error, StoreError::Open(OpenError::NotAFile { .. })),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn missing_parent_directory_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("tessera.db");
        let error = Store::open(&path).await.unwrap_err();
        assert!(
            matches!(error, StoreError::Open(OpenError::Io { .. })),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn database_with_newer_schema_is_refused() {
        let (_dir, path, store) = open_temp().await;
        store.close().await;
        let mut conn = raw_connection(&path).await;
        sqlx::query(
            "INSERT INTO schema_migrations (version, description, applied_at)
             VALUES (?, 'from the future', 0)",
        )
        .bind(SCHEMA_VERSION + 1)
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();

        let error = Store::open(&path).await.unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::Open(OpenError::SchemaTooNew { found, supported: SCHEMA_VERSION })
                    if found == SCHEMA_VERSION + 1
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("newer"), "{error}");
    }

    #[tokio::test]
    async fn reopening_does_not_rerun_migrations() {
        let (_dir, path, store) = open_temp().await;
        store.close().await;
        let store = Store::open(&path).await.unwrap();
        let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations")
            .fetch_all(&store.inner.pool)
            .await
            .unwrap();
        assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn the_current_schema_has_every_table() {
        let (_dir, _path, store) = open_temp().await;
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
             ORDER BY name",
        )
        .fetch_all(&store.inner.pool)
        .await
        .unwrap();
        assert_eq!(
            tables,
            [
                "audit",
                "consents",
                "entries",
                "revocations",
                "schema_migrations",
                "sync_state",
                "task_events",
                "task_events_rejected",
                "task_svids",
                "tasks"
            ]
        );
    }

    #[tokio::test]
    async fn operations_after_close_fail() {
        let (_dir, _path, store) = open_temp().await;
        store.close().await;
        let error = store.list_entries().await.unwrap_err();
        assert!(matches!(error, StoreError::Database(_)), "{error:?}");
    }
}
