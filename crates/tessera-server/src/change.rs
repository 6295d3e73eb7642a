//! The change log's readers: snapshots, changes since a version, and pruning.
//!
//! The log names records (kind and key), it does not copy them (see `version.rs` for how
//! versions are given): [`PgStore::changes_since`] reads the changes and the records'
//! current rows in one snapshot, so it reports each changed record as it is at the
//! snapshot's version (or gone). A reader that applies a batch holds exactly the state at
//! the batch's version.

use std::collections::HashMap;

use crate::node::Node;
use crate::node_jwt_keys::NodeJwtKeys;
use crate::{PgStore, ServerStoreError, consent, entry, node, node_jwt_keys};
use tessera_store::{Consent, Entry};

/// Most changes one [`PgStore::changes_since`] call returns.
pub const MAX_CHANGES_PAGE: u32 = 10_000;

/// Entries, consents and nodes as they were at one version.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The version this state reflects: every change up to it, none after.
    pub version: i64,
    /// Every entry, oldest first.
    pub entries: Vec<Entry>,
    /// Every consent, withdrawn ones included (a withdrawal must reach whoever holds the
    /// consent), oldest first.
    pub consents: Vec<Consent>,
    /// Every node, evicted ones included (their CAs are revoked), by name.
    pub nodes: Vec<Node>,
    /// Every node's published JWT signing keys (nodes with none left out), by node name.
    pub jwt_keys: Vec<NodeJwtKeys>,
}

/// One changed record, as it is at the end of the batch that reports it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Change {
    /// An entry was created (`Some`) or deleted (`None`).
    Entry {
        /// The change's version.
        version: i64,
        /// The entry's id.
        id: String,
        /// The entry, or `None` if it no longer exists.
        entry: Option<Entry>,
    },
    /// A consent was granted or withdrawn; `None` if it no longer exists.
    Consent {
        /// The change's version.
        version: i64,
        /// The consent's id.
        id: String,
        /// The consent as it is now.
        consent: Option<Consent>,
    },
    /// A node was registered, re-attested, given a new CA, or evicted.
    Node {
        /// The change's version.
        version: i64,
        /// The node's name.
        name: String,
        /// The node as it is now.
        node: Option<Node>,
    },
    /// A node published its JWT keys, or they were withdrawn (`None`: it has none).
    JwtKeys {
        /// The change's version.
        version: i64,
        /// The node's name.
        node: String,
        /// Its keys as they are now.
        keys: Option<NodeJwtKeys>,
    },
}

impl Change {
    /// The change's version.
    pub fn version(&self) -> i64 {
        match self {
            Change::Entry { version, .. }
            | Change::Consent { version, .. }
            | Change::Node { version, .. }
            | Change::JwtKeys { version, .. } => *version,
        }
    }
}

/// A batch of changes from [`PgStore::changes_since`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Changes {
    /// The version a reader holds once it has applied `changes`.
    pub version: i64,
    /// The changes after the version asked for, in version order.
    pub changes: Vec<Change>,
    /// Whether more changes follow `version` (the page was full): ask again from it.
    pub more: bool,
}

// === impl PgStore: changes ===

impl PgStore {
    /// Every entry, consent and node, and the version they reflect, read in one snapshot.
    pub async fn snapshot(&self) -> Result<Snapshot, ServerStoreError> {
        let mut tx = self.begin_snapshot().await?;
        let version: i64 = sqlx::query_scalar("SELECT version FROM change_version")
            .fetch_one(&mut *tx)
            .await?;
        let entries = entry::list(&mut tx).await?;
        let consents = consent::list(
            &mut tx,
            &tessera_store::ConsentFilter {
                client: None,
                include_withdrawn: true,
            },
        )
        .await?;
        let nodes = node::list(&mut tx).await?;
        let jwt_keys = node_jwt_keys::list(&mut tx).await?;
        tx.commit().await?;
        Ok(Snapshot {
            version,
            entries,
            consents,
            nodes,
            jwt_keys,
        })
    }

    /// The changes after version `since`, at most `limit` (clamped to
    /// [`MAX_CHANGES_PAGE`]), each with its record as it is at the returned version.
    ///
    /// Fails with [`ServerStoreError::SnapshotRequired`] if the log no longer holds the
    /// changes after `since` (pruned) or `since` is ahead of the database: the reader
    /// starts over from [`PgStore::snapshot`].
    pub async fn changes_since(&self, since: i64, limit: u32) -> Result<Changes, ServerStoreError> {
        let limit = limit.clamp(1, MAX_CHANGES_PAGE);
        let mut tx = self.begin_snapshot().await?;
        let (current, oldest): (i64, i64) =
            sqlx::query_as("SELECT version, pruned_through FROM change_version")
                .fetch_one(&mut *tx)
                .await?;
        if since < oldest || since > current {
            return Err(ServerStoreError::SnapshotRequired {
                since,
                oldest,
                current,
            });
        }
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT version, kind, key FROM changes WHERE version > $1 ORDER BY version LIMIT $2",
        )
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;

        let keys = |kind: &str| -> Vec<String> {
            rows.iter()
                .filter(|(_, k, _)| k == kind)
                .map(|(_, _, key)| key.clone())
                .collect()
        };
        let entries: HashMap<String, Entry> = entry::by_ids(&mut tx, &keys("entry"))
            .await?
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
        let consents: HashMap<String, Consent> = consent::by_ids(&mut tx, &keys("consent"))
            .await?
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        let nodes: HashMap<String, Node> = node::by_names(&mut tx, &keys("node"))
            .await?
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        let jwt_keys: HashMap<String, NodeJwtKeys> =
            node_jwt_keys::by_nodes(&mut tx, &keys("jwt_keys"))
                .await?
                .into_iter()
                .map(|k| (k.node.clone(), k))
                .collect();
        tx.commit().await?;

        let mut changes = Vec::with_capacity(rows.len());
        for (version, kind, key) in rows {
            changes.push(match kind.as_str() {
                "entry" => Change::Entry {
                    version,
                    entry: entries.get(&key).cloned(),
                    id: key,
                },
                "consent" => Change::Consent {
                    version,
                    consent: consents.get(&key).cloned(),
                    id: key,
                },
                "node" => Change::Node {
                    version,
                    node: nodes.get(&key).cloned(),
                    name: key,
                },
                "jwt_keys" => Change::JwtKeys {
                    version,
                    keys: jwt_keys.get(&key).cloned(),
                    node: key,
                },
                other => {
                    return Err(ServerStoreError::Corrupt {
                        table: "changes",
                        key: version.to_string(),
                        reason: format!("kind: unknown {other:?}"),
                    });
                }
            });
        }
        let last = changes.last().map_or(since, Change::version);
        Ok(Changes {
            version: if last < current { last } else { current },
            more: last < current,
            changes,
        })
    }

    /// The newest version.
    pub async fn current_version(&self) -> Result<i64, ServerStoreError> {
        Ok(sqlx::query_scalar("SELECT version FROM change_version")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Deletes the changes logged before `before_ms` (unix milliseconds), from the oldest
    /// up to the newest such change, and returns how many. A reader still behind the
    /// cut then gets [`ServerStoreError::SnapshotRequired`].
    pub async fn prune_changes(&self, before_ms: i64) -> Result<u64, ServerStoreError> {
        let mut tx = self.begin().await?;
        let cut: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM changes WHERE at_ms < $1")
                .bind(before_ms)
                .fetch_one(&mut *tx)
                .await?;
        let Some(cut) = cut else {
            return Ok(0);
        };
        let deleted = sqlx::query("DELETE FROM changes WHERE version <= $1")
            .bind(cut)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("UPDATE change_version SET pruned_through = GREATEST(pruned_through, $1)")
            .bind(cut)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::debug!(deleted, through = cut, "pruned the change log");
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests;
