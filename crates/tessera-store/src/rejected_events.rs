//! Cluster mode's dead letters: journaled task events the server rejected for good.
//!
//! The server answers a report with the highest `seq` it handled and the events among
//! them it will never store (malformed, or for a task another node reported first). A
//! rejected event cannot become acceptable by resending it, and left at the head of the
//! journal it would hold back every event after it, task ends among them, so
//! [`Store::journal_settle`] moves it here in the transaction that deletes what the
//! answer acknowledged: the journal flows on and nothing is silently lost. The table is
//! bounded ([`MAX_REJECTED_EVENTS`], newest kept): a server rejecting everything must not
//! fill the node's disk.

use rusqlite::{Connection, params};

use crate::journal::{self, JournalEntry};
use crate::writer::Effects;
use crate::{Store, StoreError};

/// Most rejected events kept; older ones are deleted as newer ones arrive.
pub const MAX_REJECTED_EVENTS: i64 = 10_000;

/// Longest rejection message kept, in bytes (the server's explanation is cut there).
pub const MAX_REJECTION_MESSAGE_LEN: usize = 512;

/// Why the server rejected an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionReason {
    /// A field did not parse or was out of bounds.
    Malformed,
    /// The task id belongs to another node; the server revoked it cluster-wide.
    TaskOfAnotherNode,
    /// A reason this agent does not know (a newer server).
    Unknown,
}

impl RejectionReason {
    /// The stable string (the metrics' `reason` label, the table's `reason` column).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionReason::Malformed => "malformed",
            RejectionReason::TaskOfAnotherNode => "task_of_another_node",
            RejectionReason::Unknown => "unknown",
        }
    }

    fn parse(s: &str) -> Option<RejectionReason> {
        [
            RejectionReason::Malformed,
            RejectionReason::TaskOfAnotherNode,
            RejectionReason::Unknown,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// The server's rejection of one journaled event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The event's journal `seq`.
    pub seq: u64,
    /// Why.
    pub reason: RejectionReason,
    /// The server's explanation (cut to [`MAX_REJECTION_MESSAGE_LEN`] bytes when kept).
    pub message: String,
}

/// A rejected event as kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedEvent {
    /// The event, with the `seq` it had in the journal.
    pub entry: JournalEntry,
    /// Why the server rejected it.
    pub reason: RejectionReason,
    /// The server's explanation.
    pub message: String,
    /// When it left the journal, unix milliseconds.
    pub rejected_at_ms: i64,
}

/// What [`Store::journal_settle`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Events deleted from the journal (stored at the server, or rejected).
    pub deleted: u64,
    /// Of those, events kept as rejected.
    pub rejected: u64,
}

/// The op's input: everything up to `acked`, and the rejections among it.
struct Settle {
    acked: u64,
    rejections: Vec<Rejection>,
    at_ms: i64,
}

fn settle_op(
    settle: &mut Settle,
    conn: &Connection,
    _effects: &mut Effects,
) -> Result<Settled, StoreError> {
    let acked = i64::try_from(settle.acked).unwrap_or(i64::MAX);
    let mut rejected = 0;
    for r in &settle.rejections {
        let Ok(seq) = i64::try_from(r.seq) else {
            continue;
        };
        // Only an event the acknowledgement covers: a rejection beyond it would leave a
        // copy here of an event still in the journal.
        if seq > acked {
            continue;
        }
        rejected += conn
            .prepare_cached(
                "INSERT INTO task_events_rejected
                     (seq, kind, task_id, body, reason, message, rejected_at)
                 SELECT seq, kind, task_id, body, ?2, ?3, ?4 FROM task_events WHERE seq = ?1",
            )?
            .execute(params![
                seq,
                r.reason.as_str(),
                cut(&r.message, MAX_REJECTION_MESSAGE_LEN),
                settle.at_ms,
            ])?;
    }
    if rejected > 0 {
        conn.prepare_cached(
            "DELETE FROM task_events_rejected
             WHERE id <= (SELECT MAX(id) FROM task_events_rejected) - ?",
        )?
        .execute([MAX_REJECTED_EVENTS])?;
    }
    let deleted = conn
        .prepare_cached("DELETE FROM task_events WHERE seq <= ?")?
        .execute([acked])?;
    Ok(Settled {
        deleted: u64::try_from(deleted).unwrap_or(u64::MAX),
        rejected: u64::try_from(rejected).unwrap_or(u64::MAX),
    })
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// === impl Store: rejected task events ===

impl Store {
    /// Applies the server's answer to a report, in one transaction: every event in
    /// `rejections` (each at most `acked`) moves to the rejected events, and every event
    /// up to and including `acked` leaves the journal. Settling again is harmless.
    pub async fn journal_settle(
        &self,
        acked: u64,
        rejections: Vec<Rejection>,
    ) -> Result<Settled, StoreError> {
        let settle = Settle {
            acked,
            rejections,
            at_ms: crate::clock::unix_millis(),
        };
        self.inner
            .writer
            .write("journal.settle", settle, settle_op)
            .await
    }

    /// The newest `limit` rejected events, newest first.
    pub async fn rejected_task_events(&self, limit: u32) -> Result<Vec<RejectedEvent>, StoreError> {
        let rows: Vec<(i64, i64, String, String, String, String, i64)> = sqlx::query_as(
            "SELECT id, seq, kind, body, reason, message, rejected_at FROM task_events_rejected
             ORDER BY id DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.inner.pool)
        .await?;
        rows.into_iter()
            .map(|(id, seq, kind, body, reason, message, rejected_at_ms)| {
                let reason =
                    RejectionReason::parse(&reason).ok_or_else(|| StoreError::Corrupt {
                        table: "task_events_rejected",
                        id: id.to_string(),
                        reason: format!("reason {reason:?}"),
                    })?;
                Ok(RejectedEvent {
                    entry: journal::decode(seq, &kind, &body)?,
                    reason,
                    message,
                    rejected_at_ms,
                })
            })
            .collect()
    }

    /// How many rejected events are kept.
    pub async fn rejected_task_event_count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM task_events_rejected")
            .fetch_one(&self.inner.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests;
