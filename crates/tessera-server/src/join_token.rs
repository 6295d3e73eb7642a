//! Join tokens: single-use secrets an administrator hands a node to attest with
//! (`tessera node token create --ttl 1h`).
//!
//! Only the SHA-256 of a token is stored; the token itself is returned once, by
//! [`PgStore::create_join_token`], and never logged or audited (its id is). A token is
//! 32 random bytes, so its hash is a safe lookup key: there is nothing to brute-force,
//! and no comparison of secrets happens outside the index.

use std::fmt;

use serde_json::json;
use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;

use crate::error::{Conflict, InvalidInput, NotFound};
use crate::limits::{JOIN_TOKEN_BYTES, JOIN_TOKEN_PREFIX, MAX_JOIN_TOKEN_TTL_SECS};
use crate::node_name::validate_node_name;
use crate::{PgStore, ServerStoreError, audit};

/// Audit kind written when a token is created.
const KIND_CREATE: &str = "join_token.create";
/// Audit kind written when a token is used.
const KIND_USE: &str = "join_token.use";

/// The exact length of a token.
const TOKEN_LEN: usize = JOIN_TOKEN_PREFIX.len() + 2 * JOIN_TOKEN_BYTES;

/// A join token to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJoinToken {
    /// Lifetime, 1..=[`MAX_JOIN_TOKEN_TTL_SECS`] seconds.
    pub ttl_secs: i64,
    /// The only node name it may attest, if bound; an unbound token attests any name no
    /// active node holds.
    pub node: Option<String>,
}

/// A join token's record (never the token).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct JoinToken {
    /// Store-generated ULID; names the token in audit records and node selectors.
    pub id: String,
    /// The node name it is bound to, if any.
    pub node: Option<String>,
    /// Who created it.
    pub created_by: String,
    /// When, unix seconds.
    pub created_at: i64,
    /// When it stops being accepted, unix seconds.
    pub expires_at: i64,
    /// When it was used, unix seconds.
    pub used_at: Option<i64>,
    /// The node that used it.
    pub used_by: Option<String>,
}

/// A token just created: the secret, shown once, and its record.
pub struct IssuedJoinToken {
    /// The token to give the node. Not stored anywhere; not printed by `Debug`.
    pub token: String,
    /// Its record.
    pub record: JoinToken,
}

impl fmt::Debug for IssuedJoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedJoinToken")
            .field("token", &"<redacted>")
            .field("record", &self.record)
            .finish()
    }
}

// === impl PgStore: join tokens ===

impl PgStore {
    /// Creates a join token, with a `join_token.create` audit record (naming its id, never
    /// the token). The token is in the result and nowhere else.
    pub async fn create_join_token(
        &self,
        new: NewJoinToken,
        actor: &str,
    ) -> Result<IssuedJoinToken, ServerStoreError> {
        if !(1..=MAX_JOIN_TOKEN_TTL_SECS).contains(&new.ttl_secs) {
            return Err(InvalidInput::JoinTokenTtl {
                ttl_secs: new.ttl_secs,
            }
            .into());
        }
        if let Some(name) = &new.node {
            validate_node_name(name)?;
        }
        audit::validate_actor(actor)?;
        let token = format!(
            "{JOIN_TOKEN_PREFIX}{}",
            hex::encode(rand::random::<[u8; JOIN_TOKEN_BYTES]>())
        );
        let now = crate::clock::unix_secs();
        let record = JoinToken {
            id: ulid::Ulid::new().to_string(),
            node: new.node,
            created_by: actor.to_owned(),
            created_at: now,
            expires_at: now.saturating_add(new.ttl_secs),
            used_at: None,
            used_by: None,
        };
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO join_tokens (id, token_sha256, node, created_by, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&record.id)
        .bind(digest(&token))
        .bind(&record.node)
        .bind(&record.created_by)
        .bind(record.created_at)
        .bind(record.expires_at)
        .execute(&mut *tx)
        .await?;
        audit::write(
            &mut tx,
            KIND_CREATE,
            actor,
            &json!({ "join_token": &record }),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(id = %record.id, node = ?record.node, expires_at = record.expires_at, actor, "join token created");
        Ok(IssuedJoinToken { token, record })
    }

    /// Marks the token used by node `name` and returns its record. Exactly one of any
    /// number of concurrent calls with one token succeeds. Refused: a malformed token
    /// ([`InvalidInput::JoinTokenMalformed`]), an unknown one ([`NotFound::JoinToken`]),
    /// one used already, expired, or bound to another name ([`Conflict`]). Node
    /// attestation uses [`PgStore::attest_node_with_join_token`], which does this and the
    /// registration in one transaction.
    pub async fn consume_join_token(
        &self,
        token: &str,
        name: &str,
    ) -> Result<JoinToken, ServerStoreError> {
        validate_node_name(name)?;
        let mut tx = self.begin().await?;
        let used = consume(&mut tx, token, name).await?;
        tx.commit().await?;
        Ok(used)
    }

    /// Deletes tokens that expired before `before` (unix seconds), used or not; returns
    /// how many.
    pub async fn prune_join_tokens(&self, before: i64) -> Result<u64, ServerStoreError> {
        Ok(sqlx::query("DELETE FROM join_tokens WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

/// Consumes the token for node `name` inside the caller's transaction.
pub(crate) async fn consume(
    conn: &mut PgConnection,
    token: &str,
    name: &str,
) -> Result<JoinToken, ServerStoreError> {
    // Shape first: a presented token is hostile, and only ours are worth a lookup.
    if token.len() != TOKEN_LEN
        || !token.starts_with(JOIN_TOKEN_PREFIX)
        || !token[JOIN_TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
    {
        return Err(InvalidInput::JoinTokenMalformed.into());
    }
    let now = crate::clock::unix_secs();
    // The row lock makes concurrent consumers of one token take turns; each re-checks
    // `used_at` after the one before it commits, so only the first succeeds.
    let used: Option<(String, Option<String>, String, i64, i64)> = sqlx::query_as(
        "UPDATE join_tokens SET used_at = $2, used_by = $3
         WHERE token_sha256 = $1 AND used_at IS NULL AND expires_at > $2
               AND (node IS NULL OR node = $3)
         RETURNING id, node, created_by, created_at, expires_at",
    )
    .bind(digest(token))
    .bind(now)
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((id, node, created_by, created_at, expires_at)) = used else {
        return Err(refusal(conn, token, name, now).await);
    };
    let record = JoinToken {
        id,
        node,
        created_by,
        created_at,
        expires_at,
        used_at: Some(now),
        used_by: Some(name.to_owned()),
    };
    audit::write(
        conn,
        KIND_USE,
        &format!("node:{name}"),
        &json!({ "join_token": record.id, "node": name }),
    )
    .await?;
    Ok(record)
}

/// A token's id, bound node, expiry and use time, to explain a refusal.
type TokenState = (String, Option<String>, i64, Option<i64>);

/// Why a token was not consumed.
async fn refusal(conn: &mut PgConnection, token: &str, name: &str, now: i64) -> ServerStoreError {
    let row: Result<Option<TokenState>, _> = sqlx::query_as(
        "SELECT id, node, expires_at, used_at FROM join_tokens WHERE token_sha256 = $1",
    )
    .bind(digest(token))
    .fetch_optional(&mut *conn)
    .await;
    match row {
        Err(error) => error.into(),
        Ok(None) => NotFound::JoinToken.into(),
        Ok(Some((id, _, _, Some(_)))) => Conflict::JoinTokenUsed { id }.into(),
        Ok(Some((id, _, expires_at, None))) if expires_at <= now => {
            Conflict::JoinTokenExpired { id, expires_at }.into()
        }
        Ok(Some((id, node, _, None))) => {
            debug_assert!(node.is_some_and(|n| n != name));
            Conflict::JoinTokenForOtherNode { id }.into()
        }
    }
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests;
