//! The append-only audit log.

use rusqlite::Connection;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use tokio::sync::broadcast;

use crate::audit_record::AuditRecord;
use crate::error::InvalidInput;
use crate::limits::{MAX_AUDIT_ACTOR_LEN, MAX_AUDIT_KIND_LEN, MAX_AUDIT_PAGE};
use crate::writer::Effects;
use crate::{Store, StoreError};

// === impl Store: audit ===

impl Store {
    /// Deletes audit records written before `before_ms` (unix milliseconds) from the
    /// start of the log, and returns how many. Deletion stops at the first record that
    /// is not older: the log stays a contiguous run of sequence numbers (a clock that
    /// stepped back leaves the records after the step for a later pass). Sequence
    /// numbers are never reused, so a reader paging with `after_seq` only sees a gap.
    ///
    /// Deletes in transactions of at most [`crate::PRUNE_CHUNK`] records.
    pub async fn prune_audit(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.prune_in_chunks("audit.prune", before_ms, prune_op)
            .await
    }

    /// Appends a record to the audit log and returns its sequence number, once committed.
    /// Changes made through the store's own APIs (e.g. [`Store::create_entry`]) write
    /// their audit records themselves, in the change's transaction.
    pub async fn append_audit(
        &self,
        kind: &str,
        actor: &str,
        detail: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        validate_kind(kind)?;
        validate_actor(actor)?;
        let state = (kind.to_owned(), actor.to_owned(), detail.clone());
        self.inner
            .writer
            .write("audit.append", state, append_op)
            .await
    }

    /// Up to `limit` records (clamped to [`MAX_AUDIT_PAGE`]) with `seq > after_seq`, in
    /// sequence order. Page through the log by passing the last `seq` seen; start at 0.
    pub async fn list_audit(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, kind, actor, detail FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after_seq)
        .bind(limit.min(MAX_AUDIT_PAGE))
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Every audit record committed through this store from now on, in `seq` order, each
    /// delivered after its transaction committed (and before the call that wrote it
    /// returns). For a JSON-lines sink or `tessera audit --follow`.
    ///
    /// A receiver that falls more than 16,384 records behind gets
    /// [`broadcast::error::RecvError::Lagged`]; it can fill the gap from
    /// [`Store::list_audit`] with the last `seq` it saw. Records written to the file by
    /// anything other than this store (another process) are not broadcast.
    pub fn subscribe_audit(&self) -> broadcast::Receiver<AuditRecord> {
        self.inner.notifier.audit.subscribe()
    }

    /// Cluster mode: every audit record written from now on carries `"node": node` in its
    /// detail (SVID issuance, task begin and end, ...), so records gathered from many
    /// nodes say where each happened. Set once; `false` if it was set already.
    pub fn set_audit_node(&self, node: &str) -> bool {
        self.inner.notifier.audit_node.set(node.to_owned()).is_ok()
    }
}

fn append_op(
    state: &mut (String, String, serde_json::Value),
    conn: &Connection,
    effects: &mut Effects,
) -> Result<i64, StoreError> {
    let (kind, actor, detail) = state;
    write(conn, effects, kind, actor, std::mem::take(detail))
}

/// Writes one audit record on the writer's connection, inside the current op, and queues
/// it for publication once the op commits. Returns its sequence number.
pub(crate) fn write(
    conn: &Connection,
    effects: &mut Effects,
    kind: &str,
    actor: &str,
    detail: serde_json::Value,
) -> Result<i64, StoreError> {
    validate_kind(kind)?;
    validate_actor(actor)?;
    let mut detail = detail;
    if let (Some(node), serde_json::Value::Object(fields)) = (&effects.node, &mut detail) {
        fields.insert("node".into(), serde_json::Value::String(node.clone()));
    }
    let text = serde_json::to_string(&detail).expect("a serde_json::Value always serialises");
    let at = crate::clock::unix_millis();
    conn.prepare_cached("INSERT INTO audit (at, kind, actor, detail) VALUES (?, ?, ?, ?)")?
        .execute(rusqlite::params![at, kind, actor, text])?;
    let seq = conn.last_insert_rowid();
    // Published once the op commits.
    effects.audit.push(AuditRecord {
        seq,
        at_unix_ms: at,
        kind: kind.to_owned(),
        actor: actor.to_owned(),
        detail,
    });
    Ok(seq)
}

fn validate_kind(kind: &str) -> Result<(), StoreError> {
    if kind.is_empty() || kind.len() > MAX_AUDIT_KIND_LEN {
        return Err(StoreError::Invalid(InvalidInput::AuditField {
            field: "kind",
            min: 1,
            max: MAX_AUDIT_KIND_LEN,
            len: kind.len(),
        }));
    }
    Ok(())
}

/// Checks an actor's length; used before a change starts, so a bad actor fails early.
pub(crate) fn validate_actor(actor: &str) -> Result<(), StoreError> {
    if actor.len() > MAX_AUDIT_ACTOR_LEN {
        return Err(StoreError::Invalid(InvalidInput::AuditField {
            field: "actor",
            min: 0,
            max: MAX_AUDIT_ACTOR_LEN,
            len: actor.len(),
        }));
    }
    Ok(())
}

/// Decodes an `audit` row, reporting malformed detail JSON as [`StoreError::Corrupt`].
fn decode(row: &SqliteRow) -> Result<AuditRecord, StoreError> {
    let seq: i64 = row.try_get("seq")?;
    let detail: String = row.try_get("detail")?;
    let detail = serde_json::from_str(&detail).map_err(|error| StoreError::Corrupt {
        table: "audit",
        id: seq.to_string(),
        reason: format!("detail: {error}"),
    })?;
    Ok(AuditRecord {
        seq,
        at_unix_ms: row.try_get("at")?,
        kind: row.try_get("kind")?,
        actor: row.try_get("actor")?,
        detail,
    })
}

/// Deletes the oldest run of records older than `before_ms`, at most
/// [`crate::PRUNE_CHUNK`]; returns how many.
fn prune_op(
    before_ms: &mut i64,
    conn: &Connection,
    _effects: &mut Effects,
) -> Result<u64, StoreError> {
    use crate::row::{Row as _, query_all};
    let chunk = crate::PRUNE_CHUNK;
    let oldest = query_all(
        conn,
        "SELECT seq, at FROM audit ORDER BY seq LIMIT ?",
        [i64::try_from(chunk).unwrap_or(i64::MAX)],
        |row| Ok((row.column::<i64>("seq")?, row.column::<i64>("at")?)),
    )?;
    let run = oldest.iter().take_while(|(_, at)| *at < *before_ms).count();
    let Some(&(last, _)) = oldest[..run].last() else {
        return Ok(0);
    };
    let deleted = conn
        .prepare_cached("DELETE FROM audit WHERE seq <= ?")?
        .execute([last])?;
    Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::open_temp;

    #[tokio::test]
    async fn appended_records_page_in_sequence_order() {
        let (_dir, _path, store) = open_temp().await;
        let mut seqs = Vec::new();
        for i in 0..5 {
            let seq = store
                .append_audit(
                    "task.begin",
                    "spiffe://acme.corp/client/a",
                    &json!({ "i": i }),
                )
                .await
                .unwrap();
            seqs.push(seq);
        }
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));

        let first = store.list_audit(0, 2).await.unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].seq, seqs[0]);
        assert_eq!(first[0].kind, "task.begin");
        assert_eq!(first[0].actor, "spiffe://acme.corp/client/a");
        assert_eq!(first[0].detail, json!({ "i": 0 }));
        assert!(first[0].at_unix_ms > 1_600_000_000_000);

        let rest = store.list_audit(first[1].seq, 100).await.unwrap();
        let details: Vec<_> = rest.iter().map(|r| r.detail["i"].clone()).collect();
        assert_eq!(details, [json!(2), json!(3), json!(4)]);
        assert!(store.list_audit(seqs[4], 100).await.unwrap().is_empty());
        assert!(store.list_audit(0, 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn in_cluster_mode_every_record_names_the_node_that_wrote_it() {
        let (_dir, _path, store) = open_temp().await;
        store
            .append_audit("svid.issue", "", &json!({ "i": 0 }))
            .await
            .unwrap();
        assert!(store.set_audit_node("spiffe://acme.corp/node/n1"));
        assert!(
            !store.set_audit_node("spiffe://acme.corp/node/n2"),
            "set once"
        );
        let mut follow = store.subscribe_audit();
        store
            .append_audit("svid.issue", "", &json!({ "i": 1 }))
            .await
            .unwrap();
        let records = store.list_audit(0, 10).await.unwrap();
        assert_eq!(
            records[0].detail,
            json!({ "i": 0 }),
            "written before: unchanged"
        );
        assert_eq!(
            records[1].detail,
            json!({ "i": 1, "node": "spiffe://acme.corp/node/n1" })
        );
        assert_eq!(follow.recv().await.unwrap().detail, records[1].detail);
    }

    /// Pruning deletes the oldest run of old records, stops at the first newer one, in
    /// chunks of their own transactions, and sequence numbers are not reused after it.
    #[tokio::test]
    async fn audit_is_pruned_from_the_start_up_to_the_first_newer_record() {
        let (_dir, path, store) = open_temp().await;
        let old = crate::PRUNE_CHUNK + 3;
        let total = old + 3;
        for i in 0..total {
            store
                .append_audit("entry.create", "uid:0", &json!({ "i": i }))
                .await
                .unwrap();
        }
        // Record times, set behind the store's back: `old` records at 100 ms, then one at
        // 900 ms (a clock that ran ahead), one at 300 ms, one at 1000 ms.
        let mut raw = crate::testing::raw_connection(&path).await;
        sqlx::query(
            "UPDATE audit SET at = CASE
                 WHEN seq <= ?1 THEN 100
                 WHEN seq = ?1 + 1 THEN 900
                 WHEN seq = ?1 + 2 THEN 300
                 ELSE 1000 END",
        )
        .bind(i64::try_from(old).unwrap())
        .execute(&mut raw)
        .await
        .unwrap();
        drop(raw);

        let commits = store.writer_stats().commits;
        assert_eq!(store.prune_audit(500).await.unwrap(), old);
        assert_eq!(store.writer_stats().commits - commits, 2, "two chunks");
        let left = store.list_audit(0, 100).await.unwrap();
        let seqs: Vec<i64> = left.iter().map(|r| r.seq).collect();
        let old = i64::try_from(old).unwrap();
        assert_eq!(
            seqs,
            [old + 1, old + 2, old + 3],
            "stopped at the 900 ms record"
        );
        assert_eq!(store.prune_audit(500).await.unwrap(), 0);
        assert_eq!(store.prune_audit(950).await.unwrap(), 2);

        let next = store
            .append_audit("entry.create", "uid:0", &json!({}))
            .await
            .unwrap();
        assert_eq!(next, old + 4, "sequence numbers are never reused");
    }

    #[tokio::test]
    async fn list_limit_is_clamped() {
        let (_dir, _path, store) = open_temp().await;
        for _ in 0..(MAX_AUDIT_PAGE + 5) {
            store.append_audit("k", "", &json!(null)).await.unwrap();
        }
        let page = store.list_audit(0, u32::MAX).await.unwrap();
        assert_eq!(page.len(), MAX_AUDIT_PAGE as usize);
    }

    #[tokio::test]
    async fn bad_kind_and_actor_are_rejected() {
        let (_dir, _path, store) = open_temp().await;
        let error = store.append_audit("", "a", &json!({})).await.unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::Invalid(InvalidInput::AuditField { field: "kind", .. })
            ),
            "{error:?}"
        );
        let long_kind = "k".repeat(MAX_AUDIT_KIND_LEN + 1);
        let error = store
            .append_audit(&long_kind, "a", &json!({}))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::Invalid(InvalidInput::AuditField { field: "kind", .. })
            ),
            "{error:?}"
        );
        let long_actor = "a".repeat(MAX_AUDIT_ACTOR_LEN + 1);
        let error = store
            .append_audit("k", &long_actor, &json!({}))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::Invalid(InvalidInput::AuditField { field: "actor", .. })
            ),
            "{error:?}"
        );
        assert!(store.list_audit(0, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn sequence_numbers_are_never_reused() {
        let (_dir, _path, store) = open_temp().await;
        let first = store.append_audit("k", "", &json!({})).await.unwrap();
        sqlx::query("DELETE FROM audit")
            .execute(&store.inner.pool)
            .await
            .unwrap();
        let second = store.append_audit("k", "", &json!({})).await.unwrap();
        assert!(second > first);
    }
}
