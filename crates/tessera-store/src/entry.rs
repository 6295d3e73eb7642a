//! Registration entries: a selector set that, when all of it matches a caller, makes the
//! caller the entry's client (`spiffe://<td>/client/<name>`) or, for server entries, an
//! MCP server (`spiffe://<td>/mcp/<name>`).

use rusqlite::{Connection, params};
use serde_json::json;

use crate::error::{Conflict, InvalidInput};
use crate::limits::{MAX_CLIENT_LEN, MAX_SELECTOR_LEN, MAX_SELECTORS};
use crate::row::{Row, query_optional};
use crate::writer::Effects;
use crate::{Store, StoreError, audit};

/// Audit kind written when an entry is created.
const KIND_CREATE: &str = "entry.create";
/// Audit kind written when an entry is deleted.
const KIND_DELETE: &str = "entry.delete";

/// What identity an entry grants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// An agent runtime: `spiffe://<td>/client/<name>`.
    #[default]
    Client,
    /// An MCP server: `spiffe://<td>/mcp/<name>`.
    Server,
}

impl EntryKind {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Client => "client",
            EntryKind::Server => "server",
        }
    }
}

/// A registration entry to create. The store assigns the id and the creation time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEntry {
    /// Client or server entry.
    pub kind: EntryKind,
    /// The client (or, for server entries, server) name the matching caller becomes;
    /// validated against the identity scheme by the caller, length-checked here
    /// (1..=[`MAX_CLIENT_LEN`] bytes).
    pub client: String,
    /// Selectors that must all match, e.g. `unix:uid:1001`. 1..=[`MAX_SELECTORS`] of them,
    /// each 1..=[`MAX_SELECTOR_LEN`] bytes. Order and repeats do not matter: the set is
    /// stored sorted and deduplicated.
    pub selectors: Vec<String>,
    /// TTL for this client's SVIDs; `None` for the agent's default. Must not be 0.
    pub svid_ttl_secs: Option<u32>,
}

/// A stored registration entry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// Store-generated ULID.
    pub id: String,
    /// Client or server entry.
    pub kind: EntryKind,
    /// The client (or server) name a matching caller becomes.
    pub client: String,
    /// The selector set, sorted and deduplicated.
    pub selectors: Vec<String>,
    /// TTL for this client's SVIDs; `None` for the agent's default.
    pub svid_ttl_secs: Option<u32>,
    /// Creation time, unix seconds.
    pub created_at: i64,
}

impl NewEntry {
    /// Checks the limits and returns the canonical (sorted, deduplicated) selector set.
    pub(crate) fn validate(&self) -> Result<Vec<String>, StoreError> {
        if self.client.is_empty() || self.client.len() > MAX_CLIENT_LEN {
            return Err(StoreError::Invalid(InvalidInput::Client {
                len: self.client.len(),
            }));
        }
        if self.selectors.is_empty() || self.selectors.len() > MAX_SELECTORS {
            return Err(StoreError::Invalid(InvalidInput::SelectorCount {
                count: self.selectors.len(),
            }));
        }
        for (index, selector) in self.selectors.iter().enumerate() {
            if selector.is_empty() || selector.len() > MAX_SELECTOR_LEN {
                return Err(StoreError::Invalid(InvalidInput::Selector {
                    index,
                    len: selector.len(),
                }));
            }
        }
        if self.svid_ttl_secs == Some(0) {
            return Err(StoreError::Invalid(InvalidInput::SvidTtl));
        }
        let mut selectors = self.selectors.clone();
        selectors.sort_unstable();
        selectors.dedup();
        Ok(selectors)
    }
}

// === impl Store: entries ===

impl Store {
    /// Creates an entry and its `entry.create` audit record in one transaction.
    ///
    /// Fails with [`Conflict::DuplicateEntry`] if the client already has an entry with
    /// the same selector set (compared after sorting and deduplicating).
    pub async fn create_entry(&self, new: NewEntry, actor: &str) -> Result<Entry, StoreError> {
        let selectors = new.validate()?;
        audit::validate_actor(actor)?;
        let selectors_json =
            serde_json::to_string(&selectors).expect("a Vec<String> always serialises to JSON");

        let id = ulid::Ulid::new();
        let created_at = i64::try_from(id.timestamp_ms() / 1000).unwrap_or(i64::MAX);
        let entry = Entry {
            id: id.to_string(),
            kind: new.kind,
            client: new.client,
            selectors,
            svid_ttl_secs: new.svid_ttl_secs,
            created_at,
        };
        let client = entry.client.clone();
        let state = CreateEntry {
            entry,
            selectors_json,
            actor: actor.to_owned(),
        };
        let entry = self
            .inner
            .writer
            .write(KIND_CREATE, state, create_op)
            .await?;
        tracing::info!(id = %entry.id, %client, actor, "entry created");
        Ok(entry)
    }

    /// All entries, oldest first (by creation time, then id).
    pub async fn list_entries(&self) -> Result<Vec<Entry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kind, client, selectors, svid_ttl_secs, created_at
             FROM entries ORDER BY created_at, id",
        )
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// The entry with this id, if any.
    pub async fn get_entry(&self, id: &str) -> Result<Option<Entry>, StoreError> {
        let row = sqlx::query(
            "SELECT id, kind, client, selectors, svid_ttl_secs, created_at FROM entries WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.inner.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Deletes the entry with this id and writes an `entry.delete` audit record (holding
    /// the deleted entry) in the same transaction. Returns `false`, writing nothing, if
    /// there was no such entry.
    pub async fn delete_entry(&self, id: &str, actor: &str) -> Result<bool, StoreError> {
        audit::validate_actor(actor)?;
        let state = (id.to_owned(), actor.to_owned());
        let deleted = self
            .inner
            .writer
            .write(KIND_DELETE, state, delete_op)
            .await?;
        if let Some(entry) = &deleted {
            tracing::info!(id, client = %entry.client, actor, "entry deleted");
        }
        Ok(deleted.is_some())
    }
}

struct CreateEntry {
    entry: Entry,
    selectors_json: String,
    actor: String,
}

fn create_op(
    state: &mut CreateEntry,
    conn: &Connection,
    effects: &mut Effects,
) -> Result<Entry, StoreError> {
    let CreateEntry {
        entry,
        selectors_json,
        actor,
    } = state;
    let kind = entry.kind.as_str();
    let selectors_json: &str = selectors_json;
    // The writer runs one op at a time, so this check and the insert see the same state.
    let existing = query_optional(
        conn,
        "SELECT id FROM entries WHERE kind = ? AND client = ? AND selectors = ?",
        params![kind, entry.client, selectors_json],
        |row| row.column::<String>("id"),
    )?;
    if let Some(existing_id) = existing {
        return Err(StoreError::Conflict(Conflict::DuplicateEntry {
            existing_id,
        }));
    }
    conn.prepare_cached(
        "INSERT INTO entries (id, kind, client, selectors, svid_ttl_secs, created_at)
         VALUES (?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        entry.id,
        kind,
        entry.client,
        selectors_json,
        entry.svid_ttl_secs,
        entry.created_at,
    ])?;
    audit::write(
        conn,
        effects,
        KIND_CREATE,
        actor,
        json!({ "entry": &*entry }),
    )?;
    effects.entries_changed += 1;
    Ok(entry.clone())
}

fn delete_op(
    state: &mut (String, String),
    conn: &Connection,
    effects: &mut Effects,
) -> Result<Option<Entry>, StoreError> {
    let (id, actor) = state;
    // Decoding the deleted row keeps the audit record faithful, and refuses to delete
    // (rolls back) a row we could not describe.
    let deleted = query_optional(
        conn,
        "DELETE FROM entries WHERE id = ?
         RETURNING id, kind, client, selectors, svid_ttl_secs, created_at",
        [&*id],
        |row| decode(row),
    )?;
    let Some(entry) = deleted else {
        return Ok(None);
    };
    audit::write(
        conn,
        effects,
        KIND_DELETE,
        actor,
        json!({ "entry": &entry }),
    )?;
    effects.entries_changed += 1;
    Ok(Some(entry))
}

/// Decodes an `entries` row, reporting anything malformed as [`StoreError::Corrupt`].
fn decode(row: &impl Row) -> Result<Entry, StoreError> {
    let id: String = row.column("id")?;
    let corrupt = |reason: String| StoreError::Corrupt {
        table: "entries",
        id: id.clone(),
        reason,
    };
    let selectors_json: String = row.column("selectors")?;
    let selectors: Vec<String> = serde_json::from_str(&selectors_json)
        .map_err(|error| corrupt(format!("selectors: {error}")))?;
    if selectors.is_empty() {
        return Err(corrupt("selectors: empty".to_owned()));
    }
    let svid_ttl_secs: Option<i64> = row.column("svid_ttl_secs")?;
    let svid_ttl_secs = svid_ttl_secs
        .map(u32::try_from)
        .transpose()
        .map_err(|error| corrupt(format!("svid_ttl_secs: {error}")))?;
    let kind = match row.column::<String>("kind")?.as_str() {
        "client" => EntryKind::Client,
        "server" => EntryKind::Server,
        other => return Err(corrupt(format!("kind: unknown {other:?}"))),
    };
    Ok(Entry {
        kind,
        client: row.column("client")?,
        selectors,
        svid_ttl_secs,
        created_at: row.column("created_at")?,
        id,
    })
}

#[cfg(test)]
mod tests;
