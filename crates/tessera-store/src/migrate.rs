//! A tiny versioned migrator over embedded SQL.
//!
//! `sqlx::migrate!` needs sqlx's `macros` feature, which the workspace does not enable, and
//! `Migrator::new(path)` would read SQL from disk at run time. So the SQL is embedded with
//! `include_str!` and applied here: each migration in its own `BEGIN IMMEDIATE` transaction
//! together with its row in `schema_migrations`, so a crash leaves the schema either before
//! or after a migration, never between.

use sqlx::SqlitePool;

use crate::StoreError;

/// One embedded migration.
struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

/// All migrations, in version order. Versions are 1, 2, 3, ... with no gaps.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "initial",
    sql: include_str!("../migrations/0001_initial.sql"),
}];

/// The schema version this binary creates and understands.
pub const SCHEMA_VERSION: i64 = 1;

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

    for migration in MIGRATIONS {
        // IMMEDIATE takes the write lock up front, so two processes opening the same file
        // at once serialise here and the second sees the first one's version.
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let current = current_version(&mut tx).await?;
        if current > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: current,
                supported: SCHEMA_VERSION,
            });
        }
        if current >= migration.version {
            continue;
        }
        let failed = |source| StoreError::Migration {
            version: migration.version,
            source,
        };
        sqlx::raw_sql(migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        sqlx::query(
            "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
        )
        .bind(migration.version)
        .bind(migration.description)
        .bind(crate::store::unix_secs())
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
