//! Registration entries, the agent store's records, kept once for the whole cluster.

use serde_json::json;
use sha2::{Digest as _, Sha256};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};
use tessera_store::{
    Entry, EntryKind, InvalidInput, MAX_CLIENT_LEN, MAX_SELECTOR_LEN, MAX_SELECTORS, NewEntry,
};

use crate::error::{Conflict, NotFound};
use crate::version::{self, Kind};
use crate::{PgStore, ServerStoreError, Written, audit};

/// Audit kind written when an entry is created.
const KIND_CREATE: &str = "entry.create";
/// Audit kind written when an entry is deleted.
const KIND_DELETE: &str = "entry.delete";

const COLUMNS: &str = "id, kind, client, selectors, svid_ttl_secs, created_at";

// === impl PgStore: entries ===

impl PgStore {
    /// Creates an entry, its `entry.create` audit record and its change, in one
    /// transaction. Refuses what the agent store refuses (the same limits), and an entry
    /// of the same kind, client and selector set as an existing one
    /// ([`Conflict::DuplicateEntry`]).
    pub async fn create_entry(
        &self,
        new: NewEntry,
        actor: &str,
    ) -> Result<Written<Entry>, ServerStoreError> {
        let selectors = validate(&new)?;
        audit::validate_actor(actor)?;
        let selectors_json =
            serde_json::to_string(&selectors).expect("a Vec<String> always serialises");
        let digest = Sha256::digest(selectors_json.as_bytes()).to_vec();
        let id = ulid::Ulid::new();
        let entry = Entry {
            id: id.to_string(),
            kind: new.kind,
            client: new.client,
            selectors,
            svid_ttl_secs: new.svid_ttl_secs,
            created_at: i64::try_from(id.timestamp_ms() / 1000).unwrap_or(i64::MAX),
        };

        let mut tx = self.begin().await?;
        // ON CONFLICT waits for a concurrent insert of the same set and then skips: of
        // two identical creates, exactly one succeeds.
        let inserted = sqlx::query(
            "INSERT INTO entries (id, kind, client, selectors, selectors_sha256, svid_ttl_secs,
                                  created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (kind, client, selectors_sha256) DO NOTHING",
        )
        .bind(&entry.id)
        .bind(entry.kind.as_str())
        .bind(&entry.client)
        .bind(&entry.selectors)
        .bind(&digest)
        .bind(entry.svid_ttl_secs.map(i64::from))
        .bind(entry.created_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            let existing_id: String = sqlx::query_scalar(
                "SELECT id FROM entries WHERE kind = $1 AND client = $2 AND selectors_sha256 = $3",
            )
            .bind(entry.kind.as_str())
            .bind(&entry.client)
            .bind(&digest)
            .fetch_one(&mut *tx)
            .await?;
            return Err(Conflict::DuplicateEntry { existing_id }.into());
        }
        audit::write(&mut tx, KIND_CREATE, actor, &json!({ "entry": &entry })).await?;
        let version = version::record(&mut tx, Kind::Entry, &entry.id).await?;
        tx.commit().await?;
        tracing::info!(id = %entry.id, client = %entry.client, actor, version, "entry created");
        Ok(Written {
            value: entry,
            version,
        })
    }

    /// All entries, oldest first (by creation time, then id).
    pub async fn list_entries(&self) -> Result<Vec<Entry>, ServerStoreError> {
        let mut conn = self.pool.acquire().await?;
        list(&mut conn).await
    }

    /// The entry with this id, if any.
    pub async fn get_entry(&self, id: &str) -> Result<Option<Entry>, ServerStoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(by_ids(&mut conn, &[id.to_owned()]).await?.pop())
    }

    /// Deletes the entry with this id, with an `entry.delete` audit record holding it and
    /// its change, in one transaction. [`NotFound::Entry`] if there is none.
    pub async fn delete_entry(
        &self,
        id: &str,
        actor: &str,
    ) -> Result<Written<Entry>, ServerStoreError> {
        audit::validate_actor(actor)?;
        let mut tx = self.begin().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM entries WHERE id = $1 RETURNING {COLUMNS}"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(NotFound::Entry { id: id.to_owned() }.into());
        };
        let entry = decode(&row)?;
        audit::write(&mut tx, KIND_DELETE, actor, &json!({ "entry": &entry })).await?;
        let version = version::record(&mut tx, Kind::Entry, &entry.id).await?;
        tx.commit().await?;
        tracing::info!(id, client = %entry.client, actor, version, "entry deleted");
        Ok(Written {
            value: entry,
            version,
        })
    }
}

/// Every entry, oldest first.
pub(crate) async fn list(conn: &mut PgConnection) -> Result<Vec<Entry>, ServerStoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM entries ORDER BY created_at, id"
    )))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(decode).collect()
}

/// The entries with these ids (those that exist).
pub(crate) async fn by_ids(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Vec<Entry>, ServerStoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM entries WHERE id = ANY($1)"
    )))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(decode).collect()
}

/// The agent store's checks on a new entry; returns the canonical (sorted, deduplicated)
/// selector set.
fn validate(new: &NewEntry) -> Result<Vec<String>, ServerStoreError> {
    if new.client.is_empty() || new.client.len() > MAX_CLIENT_LEN {
        return Err(InvalidInput::Client {
            len: new.client.len(),
        }
        .into());
    }
    if new.selectors.is_empty() || new.selectors.len() > MAX_SELECTORS {
        return Err(InvalidInput::SelectorCount {
            count: new.selectors.len(),
        }
        .into());
    }
    for (index, selector) in new.selectors.iter().enumerate() {
        if selector.is_empty() || selector.len() > MAX_SELECTOR_LEN {
            return Err(InvalidInput::Selector {
                index,
                len: selector.len(),
            }
            .into());
        }
    }
    if new.svid_ttl_secs == Some(0) {
        return Err(InvalidInput::SvidTtl.into());
    }
    let mut selectors = new.selectors.clone();
    selectors.sort_unstable();
    selectors.dedup();
    Ok(selectors)
}

fn decode(row: &PgRow) -> Result<Entry, ServerStoreError> {
    let id: String = row.try_get("id")?;
    let corrupt = |reason: String| ServerStoreError::Corrupt {
        table: "entries",
        key: id.clone(),
        reason,
    };
    let kind = match row.try_get::<String, _>("kind")?.as_str() {
        "client" => EntryKind::Client,
        "server" => EntryKind::Server,
        other => return Err(corrupt(format!("kind: unknown {other:?}"))),
    };
    let svid_ttl_secs: Option<i64> = row.try_get("svid_ttl_secs")?;
    let svid_ttl_secs = svid_ttl_secs
        .map(u32::try_from)
        .transpose()
        .map_err(|error| corrupt(format!("svid_ttl_secs: {error}")))?;
    Ok(Entry {
        kind,
        client: row.try_get("client")?,
        selectors: row.try_get("selectors")?,
        svid_ttl_secs,
        created_at: row.try_get("created_at")?,
        id,
    })
}

#[cfg(test)]
mod tests;
