//! A tiny versioned migrator over embedded SQL.
//!
//! `sqlx::migrate!` needs sqlx's `macros` feature, which the workspace does not enable, and
//! `Migrator::new(path)` would read SQL from disk at run time. So the SQL is embedded with
//! `include_str!` and applied here: each migration in its own `BEGIN IMMEDIATE` transaction
//! together with its row in `schema_migrations`, so a crash leaves the schema either before
//! or after a migration, never between.

use sqlx::SqlitePool;

use crate::StoreError;
use crate::error::OpenError;

/// One embedded migration.
struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

/// All migrations, in version order. Versions are 1, 2, 3, ... with no gaps.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "initial",
        sql: include_str!("../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        description: "fewer pages per write",
        sql: include_str!("../migrations/0002_fewer_pages_per_write.sql"),
    },
    Migration {
        version: 3,
        description: "retention",
        sql: include_str!("../migrations/0003_retention.sql"),
    },
    Migration {
        version: 4,
        description: "sync",
        sql: include_str!("../migrations/0004_sync.sql"),
    },
    Migration {
        version: 5,
        description: "task journal",
        sql: include_str!("../migrations/0005_task_journal.sql"),
    },
    Migration {
        version: 6,
        description: "rejected task events",
        sql: include_str!("../migrations/0006_rejected_task_events.sql"),
    },
];

/// The schema version this binary creates and understands.
pub const SCHEMA_VERSION: i64 = 6;

const _: () = assert!(MIGRATIONS[MIGRATIONS.len() - 1].version == SCHEMA_VERSION);

/// Brings the database up to [`SCHEMA_VERSION`], or refuses one that is already newer.
pub(crate) async fn run(pool: &SqlitePool) -> Result<(), StoreError> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version     INTEGER PRIMARY KEY NOT NULL,
             description TEXT    NOT NULL,
             applied_at  INTEGER NOT NULL
         ) STRICT",
    )
    .execute(pool)
    .await?;

    // Migrations run with foreign key enforcement off, SQLite's documented way to rebuild a
    // table that others reference (dropping the old table would otherwise delete through
    // its children's keys); each one checks every key before it commits instead. The
    // setting cannot change inside a transaction, and it is per connection, so this one
    // connection is taken out of the pool and closed afterwards rather than handed back
    // without enforcement.
    let mut conn = pool.acquire().await?.detach();
    let migrated = migrate(&mut conn).await;
    if let Err(error) = sqlx::Connection::close(conn).await {
        tracing::debug!(%error, "closing the migration connection failed");
    }
    migrated
}

async fn migrate(conn: &mut sqlx::SqliteConnection) -> Result<(), StoreError> {
    sqlx::query("PRAGMA foreign_keys = OFF")
        .execute(&mut *conn)
        .await?;
    for migration in MIGRATIONS {
        // IMMEDIATE takes the write lock up front, so two processes opening the same file
        // at once serialise here and the second sees the first one's version.
        let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
        let current = current_version(&mut tx).await?;
        if current > SCHEMA_VERSION {
            return Err(StoreError::Open(OpenError::SchemaTooNew {
                found: current,
                supported: SCHEMA_VERSION,
            }));
        }
        if current >= migration.version {
            continue;
        }
        let failed = |source| {
            StoreError::Open(OpenError::Migration {
                version: migration.version,
                source,
            })
        };
        sqlx::raw_sql(migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        let violations: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT \"table\", parent, COUNT(*) FROM pragma_foreign_key_check
             GROUP BY \"table\", parent ORDER BY \"table\", parent",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(failed)?;
        if !violations.is_empty() {
            let reason = violations
                .iter()
                .map(|(table, parent, rows)| {
                    format!("{rows} row(s) of {table} refer to a missing row of {parent}")
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(StoreError::Open(OpenError::MigrationRefused {
                version: migration.version,
                reason,
            }));
        }
        sqlx::query(
            "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
        )
        .bind(migration.version)
        .bind(migration.description)
        .bind(crate::clock::unix_secs())
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(
            version = migration.version,
            description = migration.description,
            "applied store migration"
        );
    }

    Ok(())
}

async fn current_version(conn: &mut sqlx::SqliteConnection) -> Result<i64, StoreError> {
    let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
        .fetch_one(&mut *conn)
        .await?;
    Ok(version.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::OpenOptionsExt;

    use sqlx::Connection;

    use super::*;
    use crate::testing::{now, raw_connection, revocation, task_id};
    use crate::{EndOutcome, Store, SvidIssued};

    /// A database as a v1 binary left it: one consent, a live task with three SVIDs whose
    /// serials sort differently from their issuance order, and an ended task with its
    /// revocation.
    async fn v1_database(path: &std::path::Path) {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .unwrap();
        let mut conn = raw_connection(path).await;
        let later = now() + 3600;
        let (live, ended) = (task_id("t-live"), task_id("t-ended"));
        sqlx::raw_sql(MIGRATIONS[0].sql)
            .execute(&mut conn)
            .await
            .unwrap();
        // Test data only, nothing from outside.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE schema_migrations (
                 version INTEGER PRIMARY KEY NOT NULL, description TEXT NOT NULL,
                 applied_at INTEGER NOT NULL) STRICT;
             INSERT INTO schema_migrations VALUES (1, 'initial', 0);
             INSERT INTO consents VALUES ('c1', 'agent', 'alice', 'github', '[\"github/tool/a\"]',
                                          {later}, 'admin', 0, NULL);
             INSERT INTO tasks VALUES ('{live}', 'agent', 'alice', 'github', '[\"github/tool/a\"]',
                                       'p', 'c1', 7, 1, {later}, NULL, NULL);
             INSERT INTO tasks VALUES ('{ended}', 'agent', 'alice', 'github', '[\"github/tool/a\"]',
                                       'p', 'c1', 7, 2, {later}, 3, 'ended');
             INSERT INTO task_svids VALUES ('cc', '{live}', 'spiffe://x/client/agent/task/{live}', {later});
             INSERT INTO task_svids VALUES ('0a', '{ended}', 'spiffe://x/client/agent/task/{ended}', {later});
             INSERT INTO task_svids VALUES ('aa', '{live}', 'spiffe://x/client/agent/task/{live}', {later});
             INSERT INTO task_svids VALUES ('bb', '{live}', 'spiffe://x/client/agent/task/{live}', {later});
             INSERT INTO revocations VALUES ('{ended}', 'spiffe://x/client/agent/task/{ended}',
                                             '[\"0a\"]', 'ended', 3000, {later});
             INSERT INTO audit (at, kind, actor, detail) VALUES (1, 'task.begin', 'a', '{{}}');"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_v1_database_migrates_keeping_every_row_and_the_issuance_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tessera.db");
        v1_database(&path).await;

        let store = Store::open(&path).await.unwrap();
        let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations")
            .fetch_all(&store.inner.pool)
            .await
            .unwrap();
        assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());

        // Issuance order was the rowid: cc, aa, bb.
        let live = store.get_task(&task_id("t-live")).await.unwrap().unwrap();
        assert_eq!(live.serials, ["cc", "aa", "bb"]);
        assert_eq!((live.pid, live.begun_at, live.ended_at), (7, 1, None));
        let ended = store.get_task(&task_id("t-ended")).await.unwrap().unwrap();
        assert_eq!(ended.end_reason.as_deref(), Some("ended"));
        assert_eq!(store.revocations(0).await.unwrap()[0].serials, ["0a"]);
        assert_eq!(store.list_audit(0, 10).await.unwrap().len(), 1);

        // The rebuilt tables still enforce their keys, and a rotation goes last.
        let rotated = SvidIssued {
            serial: "01".into(),
            spiffe_id: "spiffe://x/client/agent/task/t-live".into(),
            not_after: now() + 60,
        };
        store
            .record_task_svid(&task_id("t-live"), rotated.clone())
            .await
            .unwrap();
        let live = store.get_task(&task_id("t-live")).await.unwrap().unwrap();
        assert_eq!(live.serials, ["cc", "aa", "bb", "01"]);
        let repeated = store
            .record_task_svid(&task_id("t-live"), rotated)
            .await
            .unwrap_err();
        assert!(matches!(repeated, StoreError::Database(_)), "{repeated:?}");
        let orphan = sqlx::query("INSERT INTO task_svids VALUES ('ff', 'nope', 1, 'x', 0)")
            .execute(&store.inner.pool)
            .await
            .unwrap_err();
        assert!(orphan.to_string().contains("FOREIGN KEY"), "{orphan}");
        let ended = store
            .end_task(
                &task_id("t-live"),
                "ended",
                now(),
                revocation("agent", "t-live", "ended"),
                "a",
            )
            .await
            .unwrap();
        let EndOutcome::Ended(_, revocation) = ended else {
            panic!("{ended:?}")
        };
        assert_eq!(revocation.serials, ["cc", "aa", "bb", "01"]);

        // Pool connections (one of which ran the migration without enforcement) enforce
        // foreign keys again.
        for _ in 0..4 {
            let enforced: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
                .fetch_one(&store.inner.pool)
                .await
                .unwrap();
            assert_eq!(enforced, 1);
        }
        store.close().await;
    }

    #[tokio::test]
    async fn a_migration_that_breaks_a_foreign_key_is_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tessera.db");
        v1_database(&path).await;
        // A v1 file whose task refers to a consent that is not there (possible only with
        // enforcement off): v2 must refuse to carry it over rather than hide it.
        let mut conn = raw_connection(&path).await;
        sqlx::query("UPDATE tasks SET consent_id = 'gone' WHERE id = ?")
            .bind(task_id("t-ended").to_string())
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();

        let error = Store::open(&path).await.unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::Open(OpenError::MigrationRefused { version: 2, .. })
            ),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .ends_with("1 row(s) of tasks refer to a missing row of consents"),
            "{error}"
        );
        // Still a v1 database, untouched.
        let mut conn = raw_connection(&path).await;
        let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(version, 1);
        let svids: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM task_svids")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(svids, 4);
    }
}
