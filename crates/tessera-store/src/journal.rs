//! Cluster mode's task-event journal: an outbox of task begins and ends for the server.
//!
//! A cluster-mode agent must tell the server of every task it begins and ends, and must
//! not lose one to a crash: a lost end would leave the task valid on every other node.
//! So each event is written in the same transaction as the task row's change (the
//! writer's group commit makes that one more row in a commit that happens anyway), read
//! back in `seq` order by the reporter and deleted once the server acknowledged it (an
//! event the server rejected moves to `rejected_events` instead, in the same transaction).
//!
//! Journaling is off until [`Store::set_journal_task_events`] turns it on: a standalone
//! agent has no server to report to, and its BeginTask writes no row more than before.
//! An end the agent learned from the server (its revocation feed, a consent withdrawn
//! there) is never journaled: reporting it back would only echo it.

use std::sync::atomic::Ordering;

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::writer::Effects;
use crate::{Store, StoreError};

/// Most events [`Store::journal_batch`] returns at once: the server takes at most this
/// many per `ReportTaskEvents`.
pub const MAX_JOURNAL_BATCH: usize = 1000;

/// A task begun on this node, as reported to the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskBegun {
    /// The task id.
    pub task_id: String,
    /// `spiffe://<td>/client/<client>/task/<id>`.
    pub spiffe_id: String,
    /// The client running it.
    pub client: String,
    /// The human it acts for.
    pub subject: String,
    /// The MCP server name.
    pub server: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// The consent it relies on.
    pub consent_id: String,
    /// When it began, unix milliseconds.
    pub begun_at_ms: i64,
    /// Its deadline, unix seconds.
    pub deadline: i64,
    /// Serials (lowercase hex) of the SVIDs issued when it began.
    pub serials: Vec<String>,
}

/// A task ended on this node, as reported to the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEnded {
    /// The task id.
    pub task_id: String,
    /// The task's SPIFFE ID.
    pub spiffe_id: String,
    /// Why it ended (the task's `end_reason`).
    pub reason: String,
    /// When, unix milliseconds.
    pub ended_at_ms: i64,
    /// Every SVID serial the task was issued (lowercase hex).
    pub serials: Vec<String>,
    /// When its last SVID expires, unix seconds: the revocation is kept until then.
    pub until: i64,
}

/// One journaled event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskEvent {
    /// A task began.
    Begun(TaskBegun),
    /// A task ended.
    Ended(TaskEnded),
}

/// A journal row: its position and its event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// Position in the journal; increases with every event and is never reused.
    pub seq: u64,
    /// The event.
    pub event: TaskEvent,
}

impl TaskEvent {
    fn kind(&self) -> &'static str {
        match self {
            TaskEvent::Begun(_) => "begun",
            TaskEvent::Ended(_) => "ended",
        }
    }

    fn task_id(&self) -> &str {
        match self {
            TaskEvent::Begun(b) => &b.task_id,
            TaskEvent::Ended(e) => &e.task_id,
        }
    }
}

/// Appends `event` to the journal inside the current op (so in its transaction).
pub(crate) fn append(
    conn: &Connection,
    effects: &mut Effects,
    event: &TaskEvent,
) -> Result<(), StoreError> {
    let body = match event {
        TaskEvent::Begun(b) => serde_json::to_string(b),
        TaskEvent::Ended(e) => serde_json::to_string(e),
    }
    .expect("plain structs serialise");
    conn.prepare_cached("INSERT INTO task_events (kind, task_id, body) VALUES (?, ?, ?)")?
        .execute(params![event.kind(), event.task_id(), body])?;
    effects.journaled += 1;
    Ok(())
}

fn ack_op(up_to: &mut u64, conn: &Connection, _effects: &mut Effects) -> Result<u64, StoreError> {
    let up_to = i64::try_from(*up_to).unwrap_or(i64::MAX);
    let deleted = conn
        .prepare_cached("DELETE FROM task_events WHERE seq <= ?")?
        .execute([up_to])?;
    Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
}

/// What [`Store::journal_pending`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalPending {
    /// Events waiting to be acknowledged.
    pub events: u64,
    /// How many of them are ends.
    pub ends: u64,
}

// === impl Store: the journal ===

impl Store {
    /// Turns journaling of task begins and ends on (cluster mode) or off (standalone,
    /// the default). Writes queued from here on follow the new setting; set it once,
    /// before the first task write.
    pub fn set_journal_task_events(&self, on: bool) {
        self.inner.journal.store(on, Ordering::Relaxed);
    }

    /// Whether task begins and ends are journaled.
    pub fn journals_task_events(&self) -> bool {
        self.inner.journal.load(Ordering::Relaxed)
    }

    /// Up to `limit` (at most [`MAX_JOURNAL_BATCH`]) journaled events after `after_seq`,
    /// in journal order.
    pub async fn journal_batch(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, StoreError> {
        let limit = i64::try_from(limit.min(MAX_JOURNAL_BATCH)).unwrap_or(1);
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT seq, kind, body FROM task_events WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(i64::try_from(after_seq).unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.inner.pool)
        .await?;
        rows.into_iter()
            .map(|(seq, kind, body)| decode(seq, &kind, &body))
            .collect()
    }

    /// How many events wait to be acknowledged.
    pub async fn journal_depth(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM task_events")
            .fetch_one(&self.inner.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// How many events wait to be acknowledged, and whether any of them is an end (the
    /// reporter sends ends at once and lets lone begins gather into one request).
    pub async fn journal_pending(&self) -> Result<JournalPending, StoreError> {
        let (events, ends): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COALESCE(SUM(kind = 'ended'), 0) FROM task_events")
                .fetch_one(&self.inner.pool)
                .await?;
        Ok(JournalPending {
            events: u64::try_from(events).unwrap_or(0),
            ends: u64::try_from(ends).unwrap_or(0),
        })
    }

    /// Deletes every event up to and including `seq` (the server acknowledged them
    /// durable); returns how many. Acknowledging again is harmless.
    pub async fn journal_ack(&self, seq: u64) -> Result<u64, StoreError> {
        self.inner.writer.write("journal.ack", seq, ack_op).await
    }

    /// A receiver that sees a counter change after every commit that journaled events,
    /// so the reporter wakes without polling.
    pub fn watch_journal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.notifier.journal.subscribe()
    }
}

pub(crate) fn decode(seq: i64, kind: &str, body: &str) -> Result<JournalEntry, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        table: "task_events",
        id: seq.to_string(),
        reason,
    };
    let event = match kind {
        "begun" => serde_json::from_str(body).map(TaskEvent::Begun),
        "ended" => serde_json::from_str(body).map(TaskEvent::Ended),
        other => return Err(corrupt(format!("kind {other:?}"))),
    }
    .map_err(|e| corrupt(format!("body: {e}")))?;
    Ok(JournalEntry {
        seq: u64::try_from(seq).map_err(|e| corrupt(format!("seq: {e}")))?,
        event,
    })
}

#[cfg(test)]
mod tests;
