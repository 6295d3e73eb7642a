//! The cluster's revoked set in PostgreSQL: revoked tasks and evicted nodes' CAs, each
//! row stamped with the revocation feed's version that published it.
//!
//! The feed has a version counter of its own (`revocation_version`), never the change
//! log's: task ends arrive from every node at rates one change counter would cap, and an
//! agent follows the two streams separately. It works as the change log's does (see
//! `version.rs`): a transaction that adds revocations calls [`publish`] last, which bumps
//! the one-row counter once (the row stays locked until commit, so versions commit in
//! order and a reader that holds "everything up to v" never skips a row), inserts its rows
//! under that version and notifies [`CHANNEL`] on commit. Replicas follow with LISTEN and
//! [`PgStore::revocations_since`] (see `revocation_feed.rs`).
//!
//! Entries stay until `until` (when every SVID they cover has expired) plus
//! [`EXPIRY_GRACE_SECS`] for clock skew; [`PgStore::prune_revocations`] deletes them
//! after that. Deltas carry no removals: every holder drops expired entries itself.

use std::collections::BTreeMap;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};

use crate::{PgStore, ServerStoreError};

/// The channel every commit that adds revocations notifies, with its version as payload.
pub(crate) const CHANNEL: &str = "tessera_revocations";

/// How long past `until` an entry is kept, for clock skew between the server, agents and
/// verifiers (each of which drops it itself at the same bound).
pub const EXPIRY_GRACE_SECS: i64 = 60;

/// A revoked task, as the feed carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RevokedTask {
    /// The task's id.
    pub task_id: String,
    /// The node whose agent issued the task's SVIDs.
    pub node: String,
    /// `spiffe://<td>/client/<client>/task/<id>`.
    pub spiffe_id: String,
    /// Serials (lower-case hex) of the task's SVIDs known to the server.
    pub serials: Vec<String>,
    /// Why: the agent's end reason, `consent_withdrawn` or `revoked`.
    pub reason: String,
    /// When it was revoked, unix milliseconds.
    pub revoked_at_ms: i64,
    /// When its last SVID expires, unix seconds.
    pub until: i64,
}

/// An evicted node's CA, as the feed carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RevokedNodeCa {
    /// The CA certificate's serial, lower-case hex.
    pub serial: String,
    /// The node's name.
    pub node: String,
    /// When it was revoked, unix milliseconds.
    pub revoked_at_ms: i64,
    /// The CA's notAfter, unix seconds.
    pub until: i64,
}

/// What one feed version added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RevocationDelta {
    /// The version.
    pub version: i64,
    /// Tasks it revoked.
    pub tasks: Vec<RevokedTask>,
    /// Node CAs it revoked.
    pub node_cas: Vec<RevokedNodeCa>,
}

/// The whole revoked set as of `version`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RevocationSnapshot {
    /// The feed's id (the same on every replica of this database).
    pub feed_id: String,
    /// Every revocation up to this version, none after.
    pub version: i64,
    /// Revoked tasks.
    pub tasks: Vec<RevokedTask>,
    /// Revoked node CAs.
    pub node_cas: Vec<RevokedNodeCa>,
}

/// The versions after a reader's, from [`PgStore::revocations_since`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RevocationsSince {
    /// The feed's id.
    pub feed_id: String,
    /// The version a reader holds once it has applied `deltas`.
    pub version: i64,
    /// One per version that added a row still stored, in version order (a version whose
    /// rows were all pruned, or that added nothing, has none).
    pub deltas: Vec<RevocationDelta>,
}

/// Adds `tasks` and `node_cas` to the feed under a new version, in the caller's
/// transaction: call it last (see the module's comment). Nothing to add: no version.
/// A task or CA already revoked keeps its first row (and version), unless the new one is
/// kept longer (a contested task id, see `task.rs`): then the row's `until` grows and it
/// moves to the new version, so followers get it again with the later expiry.
pub(crate) async fn publish(
    conn: &mut PgConnection,
    tasks: &[RevokedTask],
    node_cas: &[RevokedNodeCa],
) -> Result<Option<i64>, ServerStoreError> {
    if tasks.is_empty() && node_cas.is_empty() {
        return Ok(None);
    }
    let version: i64 =
        sqlx::query_scalar("UPDATE revocation_version SET version = version + 1 RETURNING version")
            .fetch_one(&mut *conn)
            .await?;
    if !tasks.is_empty() {
        sqlx::query(
            "INSERT INTO revocations
                 (task_id, node, spiffe_id, serials, reason, revoked_at_ms, until, version)
             SELECT t.*, $8 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[],
                                        $5::text[], $6::bigint[], $7::bigint[]) AS t
             ON CONFLICT (task_id) DO UPDATE SET until = EXCLUDED.until, version = EXCLUDED.version
             WHERE revocations.until < EXCLUDED.until",
        )
        .bind(tasks.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.node.as_str()).collect::<Vec<_>>())
        .bind(
            tasks
                .iter()
                .map(|t| t.spiffe_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            tasks
                .iter()
                .map(|t| join_serials(&t.serials))
                .collect::<Vec<_>>(),
        )
        .bind(tasks.iter().map(|t| t.reason.as_str()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.revoked_at_ms).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.until).collect::<Vec<_>>())
        .bind(version)
        .execute(&mut *conn)
        .await?;
    }
    if !node_cas.is_empty() {
        sqlx::query(
            "INSERT INTO revoked_node_cas (serial, node, revoked_at_ms, until, version)
             SELECT c.*, $5 FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS c
             ON CONFLICT (serial) DO NOTHING",
        )
        .bind(
            node_cas
                .iter()
                .map(|c| c.serial.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(node_cas.iter().map(|c| c.node.as_str()).collect::<Vec<_>>())
        .bind(node_cas.iter().map(|c| c.revoked_at_ms).collect::<Vec<_>>())
        .bind(node_cas.iter().map(|c| c.until).collect::<Vec<_>>())
        .bind(version)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(version.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(Some(version))
}

/// Serials as stored: one `text`, space-separated.
pub(crate) fn join_serials(serials: &[String]) -> String {
    serials.join(" ")
}

/// Serials as stored, split.
pub(crate) fn split_serials(serials: &str) -> Vec<String> {
    serials
        .split_ascii_whitespace()
        .map(str::to_owned)
        .collect()
}

const TASK_COLUMNS: &str = "task_id, node, spiffe_id, serials, reason, revoked_at_ms, until";
const CA_COLUMNS: &str = "serial, node, revoked_at_ms, until";

// === impl PgStore: revocations ===

impl PgStore {
    /// The feed's id, version and every stored revocation, read in one snapshot.
    pub async fn revocation_snapshot(&self) -> Result<RevocationSnapshot, ServerStoreError> {
        let mut tx = self.begin_snapshot().await?;
        let (version, feed_id): (i64, String) =
            sqlx::query_as("SELECT version, feed_id FROM revocation_version")
                .fetch_one(&mut *tx)
                .await?;
        let tasks = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TASK_COLUMNS} FROM revocations ORDER BY version, task_id"
        )))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(decode_task)
        .collect::<Result<Vec<_>, _>>()?;
        let node_cas = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CA_COLUMNS} FROM revoked_node_cas ORDER BY version, serial"
        )))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(decode_ca)
        .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;
        Ok(RevocationSnapshot {
            feed_id,
            version,
            tasks,
            node_cas,
        })
    }

    /// The revocations published after version `since`, by version, read in one
    /// snapshot. [`ServerStoreError::SnapshotRequired`] if `since` is ahead of the
    /// database (restored from an older backup).
    pub async fn revocations_since(
        &self,
        since: i64,
    ) -> Result<RevocationsSince, ServerStoreError> {
        let mut tx = self.begin_snapshot().await?;
        let (version, feed_id): (i64, String) =
            sqlx::query_as("SELECT version, feed_id FROM revocation_version")
                .fetch_one(&mut *tx)
                .await?;
        if since > version {
            return Err(ServerStoreError::SnapshotRequired {
                since,
                oldest: 0,
                current: version,
            });
        }
        let mut deltas: BTreeMap<i64, RevocationDelta> = BTreeMap::new();
        if since < version {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {TASK_COLUMNS}, version FROM revocations WHERE version > $1"
            )))
            .bind(since)
            .fetch_all(&mut *tx)
            .await?;
            for row in &rows {
                let v: i64 = row.try_get("version")?;
                delta_of(&mut deltas, v).tasks.push(decode_task(row)?);
            }
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {CA_COLUMNS}, version FROM revoked_node_cas WHERE version > $1"
            )))
            .bind(since)
            .fetch_all(&mut *tx)
            .await?;
            for row in &rows {
                let v: i64 = row.try_get("version")?;
                delta_of(&mut deltas, v).node_cas.push(decode_ca(row)?);
            }
        }
        tx.commit().await?;
        Ok(RevocationsSince {
            feed_id,
            version,
            deltas: deltas.into_values().collect(),
        })
    }

    /// Deletes revocations, revoked node CAs, tasks and node CA records whose `until`
    /// (notAfter) is before `before` (unix seconds); returns how many rows went.
    pub async fn prune_revocations(&self, before: i64) -> Result<u64, ServerStoreError> {
        let mut deleted = 0;
        for sql in [
            "DELETE FROM revocations WHERE until < $1",
            "DELETE FROM revoked_node_cas WHERE until < $1",
            "DELETE FROM tasks WHERE until < $1",
            "DELETE FROM node_cas WHERE not_after < $1",
        ] {
            deleted += sqlx::query(sql)
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(deleted)
    }
}

fn delta_of(deltas: &mut BTreeMap<i64, RevocationDelta>, version: i64) -> &mut RevocationDelta {
    deltas.entry(version).or_insert_with(|| RevocationDelta {
        version,
        ..Default::default()
    })
}

fn decode_task(row: &PgRow) -> Result<RevokedTask, ServerStoreError> {
    Ok(RevokedTask {
        task_id: row.try_get("task_id")?,
        node: row.try_get("node")?,
        spiffe_id: row.try_get("spiffe_id")?,
        serials: split_serials(&row.try_get::<String, _>("serials")?),
        reason: row.try_get("reason")?,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
        until: row.try_get("until")?,
    })
}

fn decode_ca(row: &PgRow) -> Result<RevokedNodeCa, ServerStoreError> {
    Ok(RevokedNodeCa {
        serial: row.try_get("serial")?,
        node: row.try_get("node")?,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
        until: row.try_get("until")?,
    })
}
