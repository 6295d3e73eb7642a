//! Cluster mode: the node's copy of the server's registration entries and consents.
//!
//! The copy keeps the server's ids, so a task's `consent_id` names the same consent on
//! every node and in the server's audit. Each [`SyncBatch`] is applied in one transaction
//! together with the change-log version it brings the copy to, so a restarted agent
//! resumes exactly where its copy stands. What ends tasks (a consent withdrawn, an entry
//! deleted) is not done here: the agent runs those through the same paths as a local
//! withdrawal or deletion, first, and then records the version with a batch; a crash in
//! between replays the change, and replaying is harmless.

use rusqlite::{Connection, params};
use serde_json::json;

use crate::error::InvalidInput;
use crate::limits::MAX_CLIENT_LEN;
use crate::validate::{validate_parties, validate_scopes};
use crate::writer::Effects;
use crate::{Consent, Entry, NewEntry, Store, StoreError, audit};

/// Audit kind written for each applied batch.
const KIND_SYNC: &str = "sync.apply";

/// The actor of sync's own audit records.
const ACTOR_SYNC: &str = "tessera-server";

/// Longest id the copy accepts (ULIDs and UUIDs are 26 and 36).
const MAX_ID_LEN: usize = 64;

/// What one transaction brings into the copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncBatch {
    /// The change-log version the copy reflects once this batch is applied.
    pub version: i64,
    /// Entries created at the server (entries never change once created); inserted under
    /// their server id, replacing a local row with the same kind, name and selectors.
    pub entries: Vec<Entry>,
    /// Consents in their current server record; inserted if new. A withdrawal is
    /// recorded only if the agent has not done it already (it should have, to end the
    /// tasks under it); expiry and scopes never change once granted.
    pub consents: Vec<Consent>,
    /// A snapshot: entries that are not in `entries` are deleted (the agent deleted and
    /// ended their tasks first; this only makes the copy exact).
    pub replace_entries: bool,
}

/// What a batch changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncApplied {
    /// Entries inserted.
    pub entries_added: usize,
    /// Entries deleted (a snapshot's leftovers, or local rows replaced by the server's).
    pub entries_removed: usize,
    /// Consents inserted.
    pub consents_added: usize,
}

impl Store {
    /// The change-log version the copy reflects; 0 before the first sync.
    pub async fn sync_version(&self) -> Result<i64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT version FROM sync_state WHERE id = 1")
            .fetch_optional(&self.inner.pool)
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Applies `batch` and records its version, in one transaction with one
    /// `sync.apply` audit record. Entries and consents are checked against the store's
    /// limits like local ones.
    pub async fn apply_sync(&self, batch: SyncBatch) -> Result<SyncApplied, StoreError> {
        if batch.version < 0 {
            return Err(StoreError::Invalid(InvalidInput::Field {
                field: "sync version",
                min: 0,
                max: i64::MAX as usize,
                len: 0,
            }));
        }
        let mut checked = Vec::with_capacity(batch.entries.len());
        for e in batch.entries {
            check_id(&e.id)?;
            let selectors = NewEntry {
                kind: e.kind,
                client: e.client.clone(),
                selectors: e.selectors.clone(),
                svid_ttl_secs: e.svid_ttl_secs,
            }
            .validate()?;
            checked.push(Entry { selectors, ..e });
        }
        for c in &batch.consents {
            check_id(&c.id)?;
            validate_parties(&c.client, &c.subject, &c.server)?;
            validate_scopes(&c.scopes)?;
            audit::validate_actor(&c.granted_by)?;
        }
        let batch = SyncBatch {
            entries: checked,
            ..batch
        };
        let applied = self.inner.writer.write(KIND_SYNC, batch, apply_op).await?;
        Ok(applied)
    }
}

fn check_id(id: &str) -> Result<(), StoreError> {
    if id.is_empty() || id.len() > MAX_ID_LEN.min(MAX_CLIENT_LEN) {
        return Err(StoreError::Invalid(InvalidInput::Field {
            field: "id",
            min: 1,
            max: MAX_ID_LEN,
            len: id.len(),
        }));
    }
    Ok(())
}

fn apply_op(
    batch: &mut SyncBatch,
    conn: &Connection,
    effects: &mut Effects,
) -> Result<SyncApplied, StoreError> {
    let mut applied = SyncApplied::default();
    if batch.replace_entries {
        let keep: Vec<&str> = batch.entries.iter().map(|e| e.id.as_str()).collect();
        let keep = serde_json::to_string(&keep).expect("strings serialise");
        applied.entries_removed += conn
            .prepare_cached("DELETE FROM entries WHERE id NOT IN (SELECT value FROM json_each(?))")?
            .execute([keep])?;
    }
    for e in &batch.entries {
        let selectors = serde_json::to_string(&e.selectors).expect("strings serialise");
        // A row with the same identity under another id (made locally before the node
        // joined, or an earlier copy) gives way to the server's.
        applied.entries_removed += conn
            .prepare_cached(
                "DELETE FROM entries WHERE kind = ? AND client = ? AND selectors = ? AND id <> ?",
            )?
            .execute(params![e.kind.as_str(), e.client, selectors, e.id])?;
        applied.entries_added += conn
            .prepare_cached(
                "INSERT OR IGNORE INTO entries (id, kind, client, selectors, svid_ttl_secs, created_at)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                e.id,
                e.kind.as_str(),
                e.client,
                selectors,
                e.svid_ttl_secs,
                e.created_at
            ])?;
    }
    let mut consents_withdrawn = 0;
    for c in &batch.consents {
        let scopes = serde_json::to_string(&c.scopes).expect("strings serialise");
        applied.consents_added += conn
            .prepare_cached(
                "INSERT OR IGNORE INTO consents
                     (id, client, subject, server, scopes, expires_at, granted_by, granted_at,
                      withdrawn_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                c.id,
                c.client,
                c.subject,
                c.server,
                scopes,
                c.expires_at,
                c.granted_by,
                c.granted_at,
                c.withdrawn_at
            ])?;
        if let Some(at) = c.withdrawn_at {
            consents_withdrawn += conn
                .prepare_cached(
                    "UPDATE consents SET withdrawn_at = ? WHERE id = ? AND withdrawn_at IS NULL",
                )?
                .execute(params![at, c.id])?;
        }
    }
    conn.prepare_cached(
        "INSERT INTO sync_state (id, version) VALUES (1, ?)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version",
    )?
    .execute([batch.version])?;
    if applied.entries_added + applied.entries_removed > 0 {
        effects.entries_changed += 1;
    }
    if applied.consents_added + consents_withdrawn > 0 {
        effects.consents_changed += 1;
    }
    // One record per batch: the server's audit holds each change with its actor; this
    // says when the node's copy took it.
    if applied != SyncApplied::default() || consents_withdrawn > 0 {
        audit::write(
            conn,
            effects,
            KIND_SYNC,
            ACTOR_SYNC,
            json!({
                "version": batch.version,
                "snapshot": batch.replace_entries,
                "entries_added": applied.entries_added,
                "entries_removed": applied.entries_removed,
                "consents_added": applied.consents_added,
                "consents_withdrawn": consents_withdrawn,
            }),
        )?;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use crate::testing::open_temp;
    use crate::{Consent, ConsentFilter, Entry, EntryKind, NewEntry, SyncBatch};

    fn entry(id: &str, client: &str) -> Entry {
        Entry {
            id: id.into(),
            kind: EntryKind::Client,
            client: client.into(),
            selectors: vec!["unix:uid:1000".into()],
            svid_ttl_secs: None,
            created_at: 1_700_000_000,
        }
    }

    fn consent(id: &str, withdrawn_at: Option<i64>) -> Consent {
        Consent {
            id: id.into(),
            client: "reviewer".into(),
            subject: "alice".into(),
            server: "github".into(),
            scopes: vec!["github/tool/*".into()],
            expires_at: i64::MAX / 2,
            granted_by: "admin:alice".into(),
            granted_at: 1_700_000_000,
            withdrawn_at,
        }
    }

    #[tokio::test]
    async fn a_snapshot_replaces_entries_keeps_server_ids_and_records_the_version() {
        let (_dir, path, store) = open_temp().await;
        assert_eq!(store.sync_version().await.unwrap(), 0);
        // A local entry made before joining, the same identity as a server one.
        let local = store
            .create_entry(
                NewEntry {
                    kind: EntryKind::Client,
                    client: "reviewer".into(),
                    selectors: vec!["unix:uid:1000".into()],
                    svid_ttl_secs: None,
                },
                "uid:0",
            )
            .await
            .unwrap();
        let stale = store
            .create_entry(
                NewEntry {
                    kind: EntryKind::Client,
                    client: "gone".into(),
                    selectors: vec!["unix:uid:7".into()],
                    svid_ttl_secs: None,
                },
                "uid:0",
            )
            .await
            .unwrap();
        let entries_rx = store.watch_entries();
        let applied = store
            .apply_sync(SyncBatch {
                version: 42,
                entries: vec![entry("srv-entry-1", "reviewer")],
                consents: vec![consent("srv-consent-1", None)],
                replace_entries: true,
            })
            .await
            .unwrap();
        assert_eq!(applied.entries_added, 1);
        assert_eq!(applied.entries_removed, 2);
        assert!(entries_rx.has_changed().unwrap());
        let ids: Vec<String> = store
            .list_entries()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, vec!["srv-entry-1".to_owned()]);
        assert!(store.get_entry(&local.id).await.unwrap().is_none());
        assert!(store.get_entry(&stale.id).await.unwrap().is_none());
        assert_eq!(
            store.get_consent("srv-consent-1").await.unwrap(),
            Some(consent("srv-consent-1", None))
        );

        // Applying it again changes nothing; the version survives a reopen.
        let again = store
            .apply_sync(SyncBatch {
                version: 43,
                entries: vec![entry("srv-entry-1", "reviewer")],
                consents: vec![consent("srv-consent-1", Some(1_700_000_100))],
                replace_entries: false,
            })
            .await
            .unwrap();
        assert_eq!(again.entries_added, 0);
        let withdrawn = store
            .list_consents(&ConsentFilter {
                client: None,
                include_withdrawn: false,
            })
            .await
            .unwrap();
        assert!(
            withdrawn.is_empty(),
            "the server's withdrawal is in the copy"
        );
        store.close().await;
        let store = crate::Store::open(&path).await.unwrap();
        assert_eq!(store.sync_version().await.unwrap(), 43);
    }

    #[tokio::test]
    async fn a_batch_over_the_limits_changes_nothing() {
        let (_dir, _path, store) = open_temp().await;
        let mut bad = entry("srv-entry-2", "reviewer");
        bad.selectors.clear();
        assert!(
            store
                .apply_sync(SyncBatch {
                    version: 5,
                    entries: vec![entry("srv-entry-1", "ok"), bad],
                    consents: vec![],
                    replace_entries: false,
                })
                .await
                .is_err()
        );
        assert!(store.list_entries().await.unwrap().is_empty());
        assert_eq!(store.sync_version().await.unwrap(), 0);
    }
}
