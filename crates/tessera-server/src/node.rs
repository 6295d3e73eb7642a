//! Attested nodes: who may hold a node SVID and a node CA, and which were evicted.
//!
//! The attestors (join tokens, Kubernetes PSAT) and node CAs build on these records: an
//! attestor proves a node's name and calls [`PgStore::register_node`] (or, for a join
//! token, [`PgStore::attest_node_with_join_token`], which consumes the token in the same
//! transaction); the node CA issuer records each intermediate it signs with
//! [`PgStore::record_node_ca`]; `tessera node evict` is [`PgStore::evict_node`]. Every one
//! of them is a versioned change, so every replica and agent learns of an eviction.

use serde_json::{Value, json};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};
use tessera_store::{MAX_SELECTOR_LEN, MAX_SELECTORS};

use crate::error::{Conflict, InvalidInput, NotFound};
use crate::limits::MAX_ATTESTATION_LEN;
use crate::node_name::validate_node_name;
use crate::revocation::{self, RevokedNodeCa};
use crate::version::{self, Kind};
use crate::{PgStore, ServerStoreError, Written, audit, join_token};

/// Audit kind written when a node attests (first time or again).
const KIND_ATTEST: &str = "node.attest";
/// Audit kind written when a node is given a new CA.
const KIND_CA: &str = "node.ca";
/// Audit kind written when a node is evicted.
const KIND_EVICT: &str = "node.evict";

const COLUMNS: &str = "name, attested_by, selectors, attestation::text AS attestation, status, \
                       ca_serial, ca_not_after, registered_at, attested_at, evicted_at";

/// How a node proved its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AttestationKind {
    /// A single-use join token an administrator created.
    JoinToken,
    /// A Kubernetes projected service-account token, checked with the TokenReview API.
    K8sPsat,
}

impl AttestationKind {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            AttestationKind::JoinToken => "join_token",
            AttestationKind::K8sPsat => "k8s_psat",
        }
    }
}

/// Whether a node may still hold credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeStatus {
    /// Attested and not evicted.
    Active,
    /// Evicted: no renewals; its CA is published as revoked.
    Evicted,
}

/// A node an attestor has proved, to register.
#[derive(Clone, Debug, PartialEq)]
pub struct NewNode {
    /// The node's name, a SPIFFE path segment (`spiffe://<td>/node/<name>`).
    pub name: String,
    /// How it proved it.
    pub attested_by: AttestationKind,
    /// What attestation established, e.g. `k8s:node-name:worker-1`; at most
    /// [`MAX_SELECTORS`] of [`MAX_SELECTOR_LEN`] bytes.
    pub selectors: Vec<String>,
    /// The attestor's summary of its evidence (never a token), at most
    /// [`MAX_ATTESTATION_LEN`] bytes as JSON.
    pub attestation: Value,
}

/// A registered node.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Node {
    /// The node's name.
    pub name: String,
    /// How it last proved it.
    pub attested_by: AttestationKind,
    /// What its last attestation established, sorted and deduplicated.
    pub selectors: Vec<String>,
    /// The attestor's summary of its last attestation.
    pub attestation: Value,
    /// Active or evicted.
    pub status: NodeStatus,
    /// Serial (lowercase hex) of the node's current intermediate CA, once issued.
    pub ca_serial: Option<String>,
    /// When that CA expires, unix seconds.
    pub ca_not_after: Option<i64>,
    /// When it first attested, unix seconds.
    pub registered_at: i64,
    /// When it last attested, unix seconds.
    pub attested_at: i64,
    /// When it was evicted, unix seconds.
    pub evicted_at: Option<i64>,
}

// === impl PgStore: nodes ===

impl PgStore {
    /// Registers a node whose name an attestor has proved (Kubernetes PSAT: the token
    /// names the node), or records a new attestation of an active node of that name.
    /// [`Conflict::NodeEvicted`] if it was evicted: an evicted name stays refused.
    pub async fn register_node(
        &self,
        new: NewNode,
        actor: &str,
    ) -> Result<Written<Node>, ServerStoreError> {
        let selectors = validate(&new)?;
        audit::validate_actor(actor)?;
        let mut tx = self.begin().await?;
        let written = upsert(&mut tx, &new, selectors, true, actor).await?;
        tx.commit().await?;
        Ok(written)
    }

    /// Consumes a join token and registers node `name` with it, in one transaction: the
    /// token is used exactly once, and only if the node is registered.
    ///
    /// Refused: a token that is unknown, expired, used or bound to another name (see
    /// [`PgStore::consume_join_token`]); a name an active node holds, unless the token was
    /// created for that name ([`Conflict::NodeExists`]): an unbound token cannot take over
    /// a node; an evicted name ([`Conflict::NodeEvicted`]).
    pub async fn attest_node_with_join_token(
        &self,
        token: &str,
        name: &str,
    ) -> Result<Written<Node>, ServerStoreError> {
        validate_node_name(name)?;
        let mut tx = self.begin().await?;
        let used = join_token::consume(&mut tx, token, name).await?;
        let new = NewNode {
            name: name.to_owned(),
            attested_by: AttestationKind::JoinToken,
            selectors: vec![format!("join_token:{}", used.id)],
            attestation: json!({ "join_token": used.id }),
        };
        let selectors = new.selectors.clone();
        let actor = format!("node:{name}");
        let written = upsert(&mut tx, &new, selectors, used.node.is_some(), &actor).await?;
        tx.commit().await?;
        Ok(written)
    }

    /// Records the intermediate CA just signed for an active node (its serial and expiry),
    /// with a `node.ca` audit record and a change. [`Conflict::NodeEvicted`] for an
    /// evicted node: its CA must not be renewed.
    pub async fn record_node_ca(
        &self,
        name: &str,
        serial: &str,
        not_after: i64,
        actor: &str,
    ) -> Result<Written<Node>, ServerStoreError> {
        if serial.is_empty()
            || serial.len() > tessera_store::MAX_SERIAL_HEX_LEN
            || !serial.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(tessera_store::InvalidInput::Serial {
                serial: serial.chars().take(80).collect(),
            }
            .into());
        }
        audit::validate_actor(actor)?;
        let serial = serial.to_ascii_lowercase();
        let mut tx = self.begin().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE nodes SET ca_serial = $2, ca_not_after = $3
             WHERE name = $1 AND status = 'active' RETURNING {COLUMNS}"
        )))
        .bind(name)
        .bind(&serial)
        .bind(not_after)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(not_active(&mut tx, name).await);
        };
        let node = decode(&row)?;
        // Every CA of the node is remembered until it expires: evicting it revokes them
        // all, not only the newest.
        sqlx::query(
            "INSERT INTO node_cas (serial, node, not_after) VALUES ($1, $2, $3)
             ON CONFLICT (serial) DO NOTHING",
        )
        .bind(&serial)
        .bind(name)
        .bind(not_after)
        .execute(&mut *tx)
        .await?;
        audit::write(
            &mut tx,
            KIND_CA,
            actor,
            &json!({ "node": name, "ca_serial": serial, "ca_not_after": not_after }),
        )
        .await?;
        let version = version::record(&mut tx, Kind::Node, name).await?;
        tx.commit().await?;
        Ok(Written {
            value: node,
            version,
        })
    }

    /// Evicts a node: no more attestations or CA renewals under its name, and every CA
    /// of it still valid (the current one, in the returned record, and any earlier one)
    /// and every live task it reported are published on the revocation feed in the same
    /// transaction. With a `node.evict` audit record and a change. [`NotFound::Node`], or [`Conflict::NodeEvicted`] if it
    /// already was.
    pub async fn evict_node(
        &self,
        name: &str,
        actor: &str,
    ) -> Result<Written<Node>, ServerStoreError> {
        audit::validate_actor(actor)?;
        let now = crate::clock::unix_secs();
        let mut tx = self.begin().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE nodes SET status = 'evicted', evicted_at = $2
             WHERE name = $1 AND status = 'active' RETURNING {COLUMNS}"
        )))
        .bind(name)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(not_active(&mut tx, name).await);
        };
        let node = decode(&row)?;
        let now_ms = crate::clock::unix_millis();
        let cas: Vec<(String, i64)> = sqlx::query_as(
            "SELECT serial, not_after FROM node_cas WHERE node = $1 AND not_after > $2
             ORDER BY serial",
        )
        .bind(name)
        .bind(now_ms / 1000 - revocation::EXPIRY_GRACE_SECS)
        .fetch_all(&mut *tx)
        .await?;
        let mut revoked: Vec<RevokedNodeCa> = cas
            .into_iter()
            .map(|(serial, until)| RevokedNodeCa {
                serial,
                node: name.to_owned(),
                revoked_at_ms: now_ms,
                until,
            })
            .collect();
        // A CA recorded before `node_cas` existed is still in the node's row.
        if let (Some(serial), Some(until)) = (&node.ca_serial, node.ca_not_after)
            && !revoked.iter().any(|c| &c.serial == serial)
        {
            revoked.push(RevokedNodeCa {
                serial: serial.clone(),
                node: name.to_owned(),
                revoked_at_ms: now_ms,
                until,
            });
        }
        let serials: Vec<&str> = revoked.iter().map(|c| c.serial.as_str()).collect();
        let ended = crate::task::end_on_node(&mut tx, name, now_ms).await?;
        let ended_tasks: Vec<&str> = ended.iter().map(|t| t.task_id.as_str()).collect();
        audit::write(
            &mut tx,
            KIND_EVICT,
            actor,
            &json!({
                "node": name,
                "ca_serial": node.ca_serial,
                "revoked_ca_serials": serials,
                "ended_tasks": ended_tasks,
            }),
        )
        .await?;
        let version = version::record(&mut tx, Kind::Node, name).await?;
        // Its JWT keys go with it: every agent stops trusting its tokens at once.
        let version = crate::node_jwt_keys::withdraw(&mut tx, name)
            .await?
            .unwrap_or(version);
        revocation::publish(&mut tx, &ended, &revoked).await?;
        tx.commit().await?;
        tracing::info!(
            node = name,
            actor,
            version,
            ended_tasks = ended.len(),
            "node evicted"
        );
        Ok(Written {
            value: node,
            version,
        })
    }

    /// The node of this name, if any.
    pub async fn get_node(&self, name: &str) -> Result<Option<Node>, ServerStoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(by_names(&mut conn, &[name.to_owned()]).await?.pop())
    }

    /// Every node, by name.
    pub async fn list_nodes(&self) -> Result<Vec<Node>, ServerStoreError> {
        let mut conn = self.pool.acquire().await?;
        list(&mut conn).await
    }
}

/// Inserts the node, or records a new attestation of the active node of that name if
/// `proves_name` (the evidence names this node, not just any node).
async fn upsert(
    conn: &mut PgConnection,
    new: &NewNode,
    selectors: Vec<String>,
    proves_name: bool,
    actor: &str,
) -> Result<Written<Node>, ServerStoreError> {
    let now = crate::clock::unix_secs();
    let attestation = new.attestation.to_string();
    // Locks an existing row, so two attestations of one name take turns.
    let existing: Option<(String, Option<i64>)> =
        sqlx::query_as("SELECT status, evicted_at FROM nodes WHERE name = $1 FOR UPDATE")
            .bind(&new.name)
            .fetch_optional(&mut *conn)
            .await?;
    let row = match existing {
        Some((_, Some(evicted_at))) => {
            return Err(Conflict::NodeEvicted {
                name: new.name.clone(),
                evicted_at,
            }
            .into());
        }
        Some(_) if !proves_name => {
            return Err(Conflict::NodeExists {
                name: new.name.clone(),
            }
            .into());
        }
        Some(_) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE nodes SET attested_by = $2, selectors = $3, attestation = $4::jsonb,
                                  attested_at = $5
                 WHERE name = $1 RETURNING {COLUMNS}"
            )))
            .bind(&new.name)
            .bind(new.attested_by.as_str())
            .bind(&selectors)
            .bind(&attestation)
            .bind(now)
            .fetch_one(&mut *conn)
            .await?
        }
        None => {
            // A concurrent first registration of the same name makes this insert wait
            // and then fail on the primary key: the loser sees a conflict, not a merge.
            let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO nodes (name, attested_by, selectors, attestation, status,
                                    registered_at, attested_at)
                 VALUES ($1, $2, $3, $4::jsonb, 'active', $5, $5)
                 ON CONFLICT (name) DO NOTHING RETURNING {COLUMNS}"
            )))
            .bind(&new.name)
            .bind(new.attested_by.as_str())
            .bind(&selectors)
            .bind(&attestation)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
            inserted.ok_or_else(|| Conflict::NodeExists {
                name: new.name.clone(),
            })?
        }
    };
    let node = decode(&row)?;
    audit::write(
        conn,
        KIND_ATTEST,
        actor,
        &json!({ "node": &node.name, "attested_by": node.attested_by, "selectors": &node.selectors }),
    )
    .await?;
    let version = version::record(conn, Kind::Node, &node.name).await?;
    tracing::info!(node = %node.name, attested_by = node.attested_by.as_str(), version, "node attested");
    Ok(Written {
        value: node,
        version,
    })
}

/// The error for a node that is not active: missing or evicted.
async fn not_active(conn: &mut PgConnection, name: &str) -> ServerStoreError {
    let evicted_at: Result<Option<Option<i64>>, _> =
        sqlx::query_scalar("SELECT evicted_at FROM nodes WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await;
    match evicted_at {
        Err(error) => error.into(),
        Ok(Some(Some(evicted_at))) => Conflict::NodeEvicted {
            name: name.to_owned(),
            evicted_at,
        }
        .into(),
        Ok(_) => NotFound::Node {
            name: name.to_owned(),
        }
        .into(),
    }
}

/// Every node, by name.
pub(crate) async fn list(conn: &mut PgConnection) -> Result<Vec<Node>, ServerStoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM nodes ORDER BY name"
    )))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(decode).collect()
}

/// The nodes with these names (those that exist).
pub(crate) async fn by_names(
    conn: &mut PgConnection,
    names: &[String],
) -> Result<Vec<Node>, ServerStoreError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM nodes WHERE name = ANY($1)"
    )))
    .bind(names)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(decode).collect()
}

/// Checks a new node's limits; returns its sorted, deduplicated selectors.
fn validate(new: &NewNode) -> Result<Vec<String>, ServerStoreError> {
    validate_node_name(&new.name)?;
    if new.selectors.len() > MAX_SELECTORS
        || new
            .selectors
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_SELECTOR_LEN)
    {
        return Err(InvalidInput::Attestation {
            reason: format!(
                "at most {MAX_SELECTORS} selectors of 1..={MAX_SELECTOR_LEN} bytes each"
            ),
        }
        .into());
    }
    let len = new.attestation.to_string().len();
    if len > MAX_ATTESTATION_LEN {
        return Err(InvalidInput::Attestation {
            reason: format!("summary is {len} bytes, at most {MAX_ATTESTATION_LEN}"),
        }
        .into());
    }
    let mut selectors = new.selectors.clone();
    selectors.sort_unstable();
    selectors.dedup();
    Ok(selectors)
}

fn decode(row: &PgRow) -> Result<Node, ServerStoreError> {
    let name: String = row.try_get("name")?;
    let corrupt = |reason: String| ServerStoreError::Corrupt {
        table: "nodes",
        key: name.clone(),
        reason,
    };
    let attested_by = match row.try_get::<String, _>("attested_by")?.as_str() {
        "join_token" => AttestationKind::JoinToken,
        "k8s_psat" => AttestationKind::K8sPsat,
        other => return Err(corrupt(format!("attested_by: unknown {other:?}"))),
    };
    let status = match row.try_get::<String, _>("status")?.as_str() {
        "active" => NodeStatus::Active,
        "evicted" => NodeStatus::Evicted,
        other => return Err(corrupt(format!("status: unknown {other:?}"))),
    };
    let attestation: String = row.try_get("attestation")?;
    let attestation = serde_json::from_str(&attestation)
        .map_err(|error| corrupt(format!("attestation: {error}")))?;
    Ok(Node {
        attested_by,
        selectors: row.try_get("selectors")?,
        attestation,
        status,
        ca_serial: row.try_get("ca_serial")?,
        ca_not_after: row.try_get("ca_not_after")?,
        registered_at: row.try_get("registered_at")?,
        attested_at: row.try_get("attested_at")?,
        evicted_at: row.try_get("evicted_at")?,
        name,
    })
}

#[cfg(test)]
mod tests;
