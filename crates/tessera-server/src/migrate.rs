//! A versioned migrator over embedded SQL, as the agent store's (`include_str!`, no
//! sqlx macros), for PostgreSQL: every pending migration runs in one transaction, under a
//! transaction-scoped advisory lock, so replicas starting together migrate once and a
//! failure leaves the schema as it was (PostgreSQL's DDL is transactional).

use sqlx::PgPool;

use crate::ServerStoreError;
use crate::error::MigrationError;

/// One embedded migration.
struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

/// All migrations, in version order: 1, 2, 3, ... with no gaps.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "initial",
        sql: include_str!("../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        description: "task events and the revocation feed",
        sql: include_str!("../migrations/0002_task_events.sql"),
    },
    Migration {
        version: 3,
        description: "the nodes' JWT signing keys",
        sql: include_str!("../migrations/0003_node_jwt_keys.sql"),
    },
];

/// The schema version this binary creates and understands.
pub const SCHEMA_VERSION: i64 = 3;

const _: () = assert!(MIGRATIONS[MIGRATIONS.len() - 1].version == SCHEMA_VERSION);

/// The advisory lock key replicas migrate under (ASCII "tessmigr").
const LOCK_KEY: i64 = 0x7465_7373_6d69_6772;

/// Brings the database to [`SCHEMA_VERSION`], or refuses one that is newer.
pub(crate) async fn run(pool: &PgPool) -> Result<(), ServerStoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version     bigint PRIMARY KEY,
             description text   NOT NULL,
             applied_at  bigint NOT NULL
         )",
    )
    .execute(&mut *tx)
    .await?;
    let current: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM schema_migrations")
        .fetch_one(&mut *tx)
        .await?;
    let current = current.unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(MigrationError::SchemaTooNew {
            found: current,
            supported: SCHEMA_VERSION,
        }
        .into());
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        let failed = |source| MigrationError::Failed {
            version: migration.version,
            source,
        };
        sqlx::raw_sql(migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        sqlx::query(
            "INSERT INTO schema_migrations (version, description, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(migration.version)
        .bind(migration.description)
        .bind(crate::clock::unix_secs())
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        tracing::info!(
            version = migration.version,
            description = migration.description,
            "applied server migration"
        );
    }
    tx.commit().await?;
    Ok(())
}
