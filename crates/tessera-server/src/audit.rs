//! The audit log.
//!
//! Every change writes its audit record in its own transaction. Sequence numbers come from
//! a `bigserial`, so they are unique and increasing in the order records were *written*,
//! not committed: a reader paging with `after_seq` can, rarely, pass a record whose
//! transaction commits after a later one's. The change log does not have that gap (see
//! `version.rs`), and entries, consents and nodes are synced through it; the audit log is
//! not serialised the same way because task events from every node will be appended to it
//! at a rate one counter row would cap.

use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};
use tessera_store::{
    AuditRecord, InvalidInput, MAX_AUDIT_ACTOR_LEN, MAX_AUDIT_KIND_LEN, MAX_AUDIT_PAGE,
};

use crate::{PgStore, ServerStoreError};

// === impl PgStore: audit ===

impl PgStore {
    /// Appends a record and returns its sequence number once committed. Changes made
    /// through the store's own APIs write theirs in their own transaction.
    pub async fn append_audit(
        &self,
        kind: &str,
        actor: &str,
        detail: &Value,
    ) -> Result<i64, ServerStoreError> {
        let mut tx = self.begin().await?;
        let seq = write(&mut tx, kind, actor, detail).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Up to `limit` records (clamped to [`MAX_AUDIT_PAGE`]) with `seq > after_seq`, in
    /// sequence order (see the module's comment on what that order promises).
    pub async fn list_audit(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, ServerStoreError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, kind, actor, detail::text AS detail FROM audit
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_seq)
        .bind(i64::from(limit.min(MAX_AUDIT_PAGE)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Deletes the records written before `before_ms` (unix milliseconds); returns how many.
    pub async fn prune_audit(&self, before_ms: i64) -> Result<u64, ServerStoreError> {
        Ok(sqlx::query("DELETE FROM audit WHERE at_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

/// Writes one record inside the caller's transaction; returns its sequence number.
pub(crate) async fn write(
    conn: &mut PgConnection,
    kind: &str,
    actor: &str,
    detail: &Value,
) -> Result<i64, ServerStoreError> {
    validate_kind(kind)?;
    validate_actor(actor)?;
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO audit (at_ms, kind, actor, detail) VALUES ($1, $2, $3, $4::jsonb)
         RETURNING seq",
    )
    .bind(crate::clock::unix_millis())
    .bind(kind)
    .bind(actor)
    .bind(detail.to_string())
    .fetch_one(&mut *conn)
    .await?;
    Ok(seq)
}

fn validate_kind(kind: &str) -> Result<(), ServerStoreError> {
    if kind.is_empty() || kind.len() > MAX_AUDIT_KIND_LEN {
        return Err(InvalidInput::AuditField {
            field: "kind",
            min: 1,
            max: MAX_AUDIT_KIND_LEN,
            len: kind.len(),
        }
        .into());
    }
    Ok(())
}

/// Refuses an actor longer than [`MAX_AUDIT_ACTOR_LEN`] (empty is the system itself).
pub(crate) fn validate_actor(actor: &str) -> Result<(), ServerStoreError> {
    if actor.len() > MAX_AUDIT_ACTOR_LEN {
        return Err(InvalidInput::AuditField {
            field: "actor",
            min: 0,
            max: MAX_AUDIT_ACTOR_LEN,
            len: actor.len(),
        }
        .into());
    }
    Ok(())
}

fn decode(row: &PgRow) -> Result<AuditRecord, ServerStoreError> {
    let seq: i64 = row.try_get("seq")?;
    let detail: String = row.try_get("detail")?;
    let detail = serde_json::from_str(&detail).map_err(|error| ServerStoreError::Corrupt {
        table: "audit",
        key: seq.to_string(),
        reason: format!("detail: {error}"),
    })?;
    Ok(AuditRecord {
        seq,
        at_unix_ms: row.try_get("at_ms")?,
        kind: row.try_get("kind")?,
        actor: row.try_get("actor")?,
        detail,
    })
}

#[cfg(test)]
mod tests;
