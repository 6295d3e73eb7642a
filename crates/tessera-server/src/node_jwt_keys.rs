//! The nodes' JWT signing keys: the public halves each node publishes
//! (`Node.PublishJwtKeys`), so that every agent validates every node's JWT-SVIDs.
//!
//! A node's set is one record of the change log (kind `jwt_keys`, keyed by the node's
//! name), replaced whole by each publication and deleted with the node's eviction, so
//! `Sync` carries it like entries and consents: snapshot, then changes by version.
//!
//! What is refused, and why: more than [`MAX_NODE_JWT_KEYS`]; a `kid` without the node
//! mark ([`NODE_KEY_ID_PREFIX`]: verifiers enforce the issuance split by it, so an
//! unmarked node key could sign MCP server tokens), or longer than [`MAX_KID_LEN`], or of
//! characters outside `[A-Za-z0-9_-]`, or repeated; a point that is not on P-256; a
//! `not_after` in the past or past the node's CA (a key must not outlive the credentials
//! that made the node a member); a `kid` another node holds (the primary key).

use std::collections::{BTreeMap, HashSet};

use serde_json::json;
use sqlx::PgConnection;
use tessera_identity::{JwtKey, MAX_KID_LEN, MAX_NODE_JWT_KEYS, NODE_KEY_ID_PREFIX};

use crate::error::{Conflict, InvalidInput};
use crate::version::{self, Kind};
use crate::{PgStore, ServerStoreError, Written, audit};

/// Audit kind written when a node publishes its JWT keys.
const KIND_PUBLISH: &str = "node.jwt_keys";

/// The public half of one of a node's JWT signing keys.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct NodeJwtKey {
    /// The key id (`node-…`).
    pub kid: String,
    /// The point's affine x coordinate, 32 bytes.
    #[serde(skip)]
    pub x: Vec<u8>,
    /// The point's affine y coordinate, 32 bytes.
    #[serde(skip)]
    pub y: Vec<u8>,
    /// Unix seconds after which no token it signed is valid.
    pub not_after: i64,
}

impl NodeJwtKey {
    /// A key as a node sends it (checked by [`PgStore::publish_node_jwt_keys`]).
    pub fn new(kid: String, x: Vec<u8>, y: Vec<u8>, not_after: i64) -> NodeJwtKey {
        NodeJwtKey {
            kid,
            x,
            y,
            not_after,
        }
    }
}

/// A node's published JWT signing keys, by `kid`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeJwtKeys {
    /// The node's name.
    pub node: String,
    /// Its keys, sorted by `kid`; empty once withdrawn or evicted.
    pub keys: Vec<NodeJwtKey>,
}

/// Checks a node's set against the bounds (see the module's comment) at `now`, with
/// the node's CA expiring at `ca_not_after`.
fn validate(keys: &[NodeJwtKey], now: i64, ca_not_after: i64) -> Result<(), InvalidInput> {
    if keys.len() > MAX_NODE_JWT_KEYS {
        return Err(InvalidInput::JwtKey {
            index: MAX_NODE_JWT_KEYS,
            reason: format!("at most {MAX_NODE_JWT_KEYS} keys"),
        });
    }
    let mut seen = HashSet::new();
    for (index, key) in keys.iter().enumerate() {
        let bad = |reason: String| InvalidInput::JwtKey { index, reason };
        let rest = key.kid.strip_prefix(NODE_KEY_ID_PREFIX).ok_or_else(|| {
            bad(format!(
                "kid must start with {NODE_KEY_ID_PREFIX:?} (a node's key)"
            ))
        })?;
        if key.kid.len() > MAX_KID_LEN
            || rest.is_empty()
            || !rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(format!(
                "kid must be {NODE_KEY_ID_PREFIX:?} and 1..={} of [A-Za-z0-9_-]",
                MAX_KID_LEN - NODE_KEY_ID_PREFIX.len()
            )));
        }
        if !seen.insert(key.kid.as_str()) {
            return Err(bad("kid repeated".into()));
        }
        JwtKey::from_xy(&key.kid, &key.x, &key.y).map_err(|_| {
            bad("not a P-256 public key (x, y: 32 bytes each, on the curve)".into())
        })?;
        if key.not_after <= now {
            return Err(bad(format!("not_after {} has passed", key.not_after)));
        }
        if key.not_after > ca_not_after {
            return Err(bad(format!(
                "not_after {} is past the node CA's ({ca_not_after})",
                key.not_after
            )));
        }
    }
    Ok(())
}

// === impl PgStore: node JWT keys ===

impl PgStore {
    /// Replaces active node `node`'s JWT keys with `keys` (empty: withdraws them), with a
    /// `node.jwt_keys` audit record and a change, unless the set is the one stored (then
    /// nothing is written and the current version is returned: nodes republish
    /// periodically). Refused: keys out of bounds ([`InvalidInput::JwtKey`]), a node
    /// that is evicted or unknown, or without a CA yet, a `kid` of another node
    /// ([`Conflict::JwtKeyOfAnotherNode`]).
    pub async fn publish_node_jwt_keys(
        &self,
        node: &str,
        mut keys: Vec<NodeJwtKey>,
        actor: &str,
    ) -> Result<Written<NodeJwtKeys>, ServerStoreError> {
        audit::validate_actor(actor)?;
        let now = crate::clock::unix_secs();
        let mut tx = self.begin().await?;
        // Locks the node's row: an eviction (which deletes the keys) and this publication
        // take turns, so an evicted node's keys never come back.
        let row: Option<(String, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT status, ca_not_after, evicted_at FROM nodes WHERE name = $1 FOR UPDATE",
        )
        .bind(node)
        .fetch_optional(&mut *tx)
        .await?;
        let ca_not_after = match row {
            None => {
                return Err(crate::NotFound::Node {
                    name: node.to_owned(),
                }
                .into());
            }
            Some((_, _, Some(evicted_at))) => {
                return Err(Conflict::NodeEvicted {
                    name: node.to_owned(),
                    evicted_at,
                }
                .into());
            }
            Some((_, ca_not_after, None)) => ca_not_after.unwrap_or(0),
        };
        validate(&keys, now, ca_not_after)?;
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        let stored = by_nodes(&mut tx, &[node.to_owned()]).await?.pop();
        if stored.as_ref().map_or(keys.is_empty(), |s| s.keys == keys) {
            let version: i64 = sqlx::query_scalar("SELECT version FROM change_version")
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(Written {
                value: NodeJwtKeys {
                    node: node.to_owned(),
                    keys,
                },
                version,
            });
        }
        sqlx::query("DELETE FROM node_jwt_keys WHERE node = $1")
            .bind(node)
            .execute(&mut *tx)
            .await?;
        for key in &keys {
            let inserted = sqlx::query(
                "INSERT INTO node_jwt_keys (kid, node, x, y, not_after, published_at)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (kid) DO NOTHING",
            )
            .bind(&key.kid)
            .bind(node)
            .bind(&key.x)
            .bind(&key.y)
            .bind(key.not_after)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                // Ours were deleted above: the row is another node's.
                return Err(Conflict::JwtKeyOfAnotherNode {
                    kid: key.kid.clone(),
                }
                .into());
            }
        }
        let kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
        audit::write(
            &mut tx,
            KIND_PUBLISH,
            actor,
            &json!({ "node": node, "kids": kids, "not_after": keys.iter().map(|k| k.not_after).collect::<Vec<_>>() }),
        )
        .await?;
        let version = version::record(&mut tx, Kind::JwtKeys, node).await?;
        tx.commit().await?;
        tracing::info!(node, keys = keys.len(), version, "node JWT keys published");
        Ok(Written {
            value: NodeJwtKeys {
                node: node.to_owned(),
                keys,
            },
            version,
        })
    }
}

impl PgStore {
    /// Deletes the keys that expired before `before` (unix seconds), logging a change for
    /// each node that lost some, so a node that went away leaves no keys behind. Agents
    /// drop an expired key by themselves; this keeps snapshots small. Returns how many.
    pub async fn prune_node_jwt_keys(&self, before: i64) -> Result<u64, ServerStoreError> {
        let mut tx = self.begin().await?;
        let nodes: Vec<String> =
            sqlx::query_scalar("DELETE FROM node_jwt_keys WHERE not_after < $1 RETURNING node")
                .bind(before)
                .fetch_all(&mut *tx)
                .await?;
        let deleted = nodes.len() as u64;
        let mut nodes = nodes;
        nodes.sort_unstable();
        nodes.dedup();
        for node in &nodes {
            version::record(&mut tx, Kind::JwtKeys, node).await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }
}

/// Deletes node `node`'s keys (its eviction, in the eviction's transaction) and logs the
/// change when there were any. Returns the change's version, if there was one.
pub(crate) async fn withdraw(
    conn: &mut PgConnection,
    node: &str,
) -> Result<Option<i64>, ServerStoreError> {
    let deleted = sqlx::query("DELETE FROM node_jwt_keys WHERE node = $1")
        .bind(node)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Ok(None);
    }
    Ok(Some(version::record(conn, Kind::JwtKeys, node).await?))
}

/// A stored key as read: node, kid, x, y, not_after.
type KeyRow = (String, String, Vec<u8>, Vec<u8>, i64);

/// Every node's keys (nodes with none left out), by node name.
pub(crate) async fn list(conn: &mut PgConnection) -> Result<Vec<NodeJwtKeys>, ServerStoreError> {
    let rows: Vec<KeyRow> =
        sqlx::query_as("SELECT node, kid, x, y, not_after FROM node_jwt_keys ORDER BY node, kid")
            .fetch_all(&mut *conn)
            .await?;
    Ok(group(rows))
}

/// The keys of these nodes (those that have any).
pub(crate) async fn by_nodes(
    conn: &mut PgConnection,
    nodes: &[String],
) -> Result<Vec<NodeJwtKeys>, ServerStoreError> {
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<KeyRow> = sqlx::query_as(
        "SELECT node, kid, x, y, not_after FROM node_jwt_keys WHERE node = ANY($1)
         ORDER BY node, kid",
    )
    .bind(nodes)
    .fetch_all(&mut *conn)
    .await?;
    Ok(group(rows))
}

fn group(rows: Vec<KeyRow>) -> Vec<NodeJwtKeys> {
    let mut by_node: BTreeMap<String, Vec<NodeJwtKey>> = BTreeMap::new();
    for (node, kid, x, y, not_after) in rows {
        by_node.entry(node).or_default().push(NodeJwtKey {
            kid,
            x,
            y,
            not_after,
        });
    }
    by_node
        .into_iter()
        .map(|(node, keys)| NodeJwtKeys { node, keys })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn key(kid: &str) -> NodeJwtKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        NodeJwtKey::new(
            kid.into(),
            point[1..33].to_vec(),
            point[33..].to_vec(),
            NOW + 3600,
        )
    }

    fn reason(keys: &[NodeJwtKey]) -> String {
        validate(keys, NOW, NOW + 7200).unwrap_err().to_string()
    }

    #[test]
    fn a_well_formed_set_passes() {
        validate(&[key("node-a1"), key("node-b_2-C")], NOW, NOW + 7200).unwrap();
        validate(&[], NOW, 0).unwrap();
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(reason(&[key("a1")]).contains("must start with"));
        assert!(reason(&[key("node-")]).contains("[A-Za-z0-9_-]"));
        assert!(reason(&[key("node-a.b")]).contains("[A-Za-z0-9_-]"));
        assert!(reason(&[key(&format!("node-{}", "a".repeat(60)))]).contains("[A-Za-z0-9_-]"));
        assert!(reason(&[key("node-a"), key("node-a")]).contains("repeated"));
        let mut off_curve = key("node-a");
        off_curve.y[31] ^= 1;
        assert!(reason(&[off_curve]).contains("P-256"));
        let mut short = key("node-a");
        short.x.pop();
        assert!(reason(&[short]).contains("P-256"));
        let too_many: Vec<NodeJwtKey> = (0..=MAX_NODE_JWT_KEYS)
            .map(|i| key(&format!("node-{i}")))
            .collect();
        assert!(reason(&too_many).contains("at most"));
    }

    /// Publication, the change log, pruning of expired keys and eviction, on PostgreSQL.
    #[tokio::test]
    async fn keys_are_changes_expire_out_of_the_store_and_leave_with_their_node() {
        let Some((_pg, store)) = crate::testing::store("node jwt keys").await else {
            return;
        };
        let now = crate::clock::unix_secs();
        let node = crate::NewNode {
            name: "worker-1".into(),
            attested_by: crate::AttestationKind::K8sPsat,
            selectors: vec!["k8s:node-name:worker-1".into()],
            attestation: json!({}),
        };
        store.register_node(node, "server").await.unwrap();
        // No CA yet: nothing may outlive it.
        let mut soon = key("node-a1");
        soon.not_after = now + 30;
        let err = store
            .publish_node_jwt_keys("worker-1", vec![soon.clone()], "node:worker-1")
            .await
            .unwrap_err();
        assert!(matches!(err, ServerStoreError::Invalid(_)), "{err:?}");
        store
            .record_node_ca("worker-1", "0a", now + 86_400, "server")
            .await
            .unwrap();
        let mut later = key("node-a2");
        later.not_after = now + 3600;
        let written = store
            .publish_node_jwt_keys(
                "worker-1",
                vec![later.clone(), soon.clone()],
                "node:worker-1",
            )
            .await
            .unwrap();
        let changes = store.changes_since(written.version - 1, 10).await.unwrap();
        assert!(matches!(
            &changes.changes[..],
            [crate::Change::JwtKeys { node, keys: Some(k), .. }]
                if node == "worker-1" && k.keys == [soon.clone(), later.clone()]
        ));

        // Pruning takes the expired key out, as a change.
        assert_eq!(store.prune_node_jwt_keys(now + 60).await.unwrap(), 1);
        let snapshot = store.snapshot().await.unwrap();
        assert_eq!(snapshot.jwt_keys.len(), 1);
        assert_eq!(snapshot.jwt_keys[0].keys, [later.clone()]);
        assert!(snapshot.version > written.version);

        // Eviction withdraws the rest in its own transaction.
        let evicted = store.evict_node("worker-1", "uid:0").await.unwrap();
        let changes = store.changes_since(snapshot.version, 10).await.unwrap();
        assert!(matches!(
            changes.changes.last(),
            Some(crate::Change::JwtKeys { keys: None, version, .. }) if *version == evicted.version
        ));
        assert!(store.snapshot().await.unwrap().jwt_keys.is_empty());
    }

    #[test]
    fn a_key_must_expire_in_the_future_and_within_the_node_ca() {
        let mut past = key("node-a");
        past.not_after = NOW;
        assert!(reason(&[past]).contains("has passed"));
        let mut beyond = key("node-a");
        beyond.not_after = NOW + 7201;
        assert!(reason(&[beyond]).contains("past the node CA"));
    }
}
