//! Cluster mode: the node's task begins and ends, from the store's durable journal to the
//! server (`Node.ReportTaskEvents`).
//!
//! The journal is written in the same transaction as each task change (see
//! `tessera_store::journal`), so nothing is lost to a crash; this loop sends it in
//! journal order, at most [`MAX_JOURNAL_BATCH`] events a request, and deletes what the
//! server acknowledged durable. The server stores each event idempotently, so a batch
//! sent twice (the answer lost, the agent killed before deleting) is harmless. While the
//! server is away the journal grows and tasks keep beginning and ending here; the loop
//! retries with backoff and the backlog flows once it is back.
//!
//! An event the server rejects for good (malformed, or for a task id another node
//! reported first, which the server then revokes cluster-wide) is listed in its answer.
//! Such an event leaves the journal for the store's bounded dead-letter table
//! (`tessera_store::Store::journal_settle`), with a warning and a count by reason, so the
//! events after it keep flowing: resending it could never succeed, and holding it at the
//! head of the journal would keep every later task end of this node from revoking
//! anything elsewhere. A refused call (transport failure, UNAVAILABLE, a request-level
//! INVALID_ARGUMENT) still leaves the journal as it was, and the batch is sent again.
//!
//! Ends are what other nodes wait for (a task's revocation crosses the cluster through
//! the server), so a journal holding an end is sent at once. Begins only tell the server
//! which node owns a task, so lone begins wait up to [`BEGIN_LINGER`] for company: under
//! load they go as one request (the server's cost per event falls ~30× from a batch of 1
//! to one of 100), instead of one report per BeginTask competing with the next
//! BeginTask for the node's CPU.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tessera_proto::tessera::v1::{
    RejectedTaskEvent, ReportTaskEventsRequest, ReportTaskEventsResponse, TaskBegun as ProtoBegun,
    TaskEnded as ProtoEnded, TaskEvent as ProtoEvent, TaskEventRejection, task_event,
};
use tessera_store::{
    JournalEntry, MAX_JOURNAL_BATCH, Rejection, RejectionReason, Store, StoreError, TaskEvent,
};

use super::{Backoff, NodeLink};
use crate::drain;
use crate::metrics::Metrics;

/// How long one report may take before it is abandoned and retried.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// A journal the loop was not woken for is looked at this often anyway (a wake-up is
/// only a hint; the journal is the truth).
const RECHECK: Duration = Duration::from_secs(5);

/// How long journaled begins with no end among them wait before they are sent.
const BEGIN_LINGER: Duration = Duration::from_millis(250);

/// Why a round of reporting stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReportError {
    #[error("the store: {0}")]
    Store(#[from] StoreError),
    #[error("the server refused ReportTaskEvents: {0}")]
    Refused(tonic::Status),
    #[error("ReportTaskEvents took longer than {REPORT_TIMEOUT:?}")]
    Timeout,
    #[error("the server acknowledged {acked} of a batch of seqs {first}..={last}")]
    BadAck { acked: u64, first: u64, last: u64 },
    #[error("the server rejected seq {seq}, which is not an acknowledged event of the batch")]
    BadRejection { seq: u64 },
}

/// Sends the journal to the server.
#[derive(Debug)]
pub(crate) struct Reporter {
    link: Arc<NodeLink>,
    store: Store,
    metrics: Arc<Metrics>,
}

impl Reporter {
    pub(crate) fn new(link: Arc<NodeLink>, store: Store, metrics: Arc<Metrics>) -> Reporter {
        Reporter {
            link,
            store,
            metrics,
        }
    }

    /// Reports until `drain` starts: whatever is journaled, then whatever is journaled
    /// next, retrying with backoff while the server is away.
    pub(crate) async fn run(self, drain: drain::Watch) {
        let mut journaled = self.store.watch_journal();
        let mut backoff = Backoff::default();
        loop {
            journaled.borrow_and_update();
            if !self.linger(&mut journaled, &drain).await {
                return;
            }
            let wait = match self.send_pending().await {
                Ok(()) => {
                    backoff.reset();
                    None
                }
                Err(e) => {
                    let wait = backoff.next();
                    tracing::warn!(error = %e, retry_in = ?wait, server = %self.link.server_address(), "reporting task events to the server failed; they stay journaled");
                    Some(wait)
                }
            };
            match wait {
                Some(wait) => tokio::select! {
                    () = drain.signaled() => return,
                    () = tokio::time::sleep(wait) => {}
                },
                None => tokio::select! {
                    () = drain.signaled() => return,
                    r = journaled.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(RECHECK) => {}
                },
            }
        }
    }

    /// Waits while the journal holds only begins, fewer than a batch, for at most
    /// [`BEGIN_LINGER`]; returns at once when an end is journaled. False when the drain
    /// started (or the journal's sender is gone) and the loop should stop.
    async fn linger(
        &self,
        journaled: &mut tokio::sync::watch::Receiver<u64>,
        drain: &drain::Watch,
    ) -> bool {
        let until = tokio::time::Instant::now() + BEGIN_LINGER;
        loop {
            match self.store.journal_pending().await {
                Ok(p) if p.events > 0 && p.ends == 0 && p.events < MAX_JOURNAL_BATCH as u64 => {}
                // Nothing to wait for, an end to send, a full batch, or a store error
                // that sending will report.
                _ => return true,
            }
            tokio::select! {
                () = drain.signaled() => return false,
                r = journaled.changed() => {
                    if r.is_err() {
                        return false;
                    }
                    journaled.borrow_and_update();
                }
                () = tokio::time::sleep_until(until) => return true,
            }
        }
    }

    /// Sends batches until the journal is empty.
    async fn send_pending(&self) -> Result<(), ReportError> {
        let link = &self.link;
        send_journal(&self.store, &self.metrics, |request| async move {
            let mut client = link.client();
            tokio::time::timeout(REPORT_TIMEOUT, client.report_task_events(request))
                .await
                .map_err(|_| ReportError::Timeout)?
                .map(tonic::Response::into_inner)
                .map_err(ReportError::Refused)
        })
        .await
    }
}

/// Sends the journal, batch by batch, through `send` until it is empty; deletes what
/// each answer acknowledges. A failed send leaves the journal as it was.
async fn send_journal<F, Fut>(
    store: &Store,
    metrics: &Metrics,
    mut send: F,
) -> Result<(), ReportError>
where
    F: FnMut(ReportTaskEventsRequest) -> Fut,
    Fut: std::future::Future<Output = Result<ReportTaskEventsResponse, ReportError>>,
{
    let mut after = 0;
    loop {
        let batch = store.journal_batch(after, MAX_JOURNAL_BATCH).await?;
        metrics
            .journal_depth
            .set(i64::try_from(store.journal_depth().await?).unwrap_or(i64::MAX));
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let (first, last) = (first.seq, last.seq);
        let n = batch.len() as u64;
        // What a rejection is logged with: the task and the kind, never the event's body.
        let sent: HashMap<u64, (&'static str, String)> = batch
            .iter()
            .map(|e| (e.seq, (kind_of(&e.event), task_of(&e.event).to_owned())))
            .collect();
        let request = ReportTaskEventsRequest {
            events: batch.into_iter().map(to_proto).collect(),
        };
        metrics.task_events_sent.inc_by(n);
        let response = send(request).await?;
        let acked = response.acknowledged_seq;
        // An answer outside the batch is a server bug; deleting on it could drop events
        // never sent. Nothing is deleted and the batch is sent again.
        if acked < first || acked > last {
            return Err(ReportError::BadAck { acked, first, last });
        }
        let rejections = rejections(response.rejected, &sent, acked)?;
        // Settled first: a store failure retries the batch, and must not count or warn
        // of the same rejection twice.
        let settled = store.journal_settle(acked, rejections.clone()).await?;
        for r in &rejections {
            let (kind, task) = &sent[&r.seq];
            tracing::warn!(
                task = %task,
                event = kind,
                seq = r.seq,
                reason = r.reason.as_str(),
                detail = ?r.message,
                "the server rejected a task event for good; it leaves the journal for the rejected events"
            );
            metrics.task_event_rejected(r.reason);
        }
        metrics
            .task_events_acked
            .inc_by(settled.deleted.saturating_sub(settled.rejected));
        tracing::debug!(
            first,
            acked,
            deleted = settled.deleted,
            rejected = settled.rejected,
            "task events reported"
        );
        after = acked;
    }
}

/// The answer's rejections, checked against the batch: each must name an event sent in
/// it and covered by the acknowledgement, or nothing is settled (a server bug must not
/// move an event that was never judged out of the journal).
fn rejections(
    rejected: Vec<RejectedTaskEvent>,
    sent: &HashMap<u64, (&'static str, String)>,
    acked: u64,
) -> Result<Vec<Rejection>, ReportError> {
    let mut seen = std::collections::HashSet::new();
    rejected
        .into_iter()
        // A seq named twice is kept once.
        .filter(|r| seen.insert(r.seq))
        .map(|r| {
            if r.seq > acked || !sent.contains_key(&r.seq) {
                return Err(ReportError::BadRejection { seq: r.seq });
            }
            let reason = match TaskEventRejection::try_from(r.reason) {
                Ok(TaskEventRejection::Malformed) => RejectionReason::Malformed,
                Ok(TaskEventRejection::TaskOfAnotherNode) => RejectionReason::TaskOfAnotherNode,
                // Unspecified, or a reason newer than this agent: still rejected for good.
                Ok(TaskEventRejection::Unspecified) | Err(_) => RejectionReason::Unknown,
            };
            Ok(Rejection {
                seq: r.seq,
                reason,
                message: r.message,
            })
        })
        .collect()
}

fn kind_of(event: &TaskEvent) -> &'static str {
    match event {
        TaskEvent::Begun(_) => "begun",
        TaskEvent::Ended(_) => "ended",
    }
}

fn task_of(event: &TaskEvent) -> &str {
    match event {
        TaskEvent::Begun(b) => &b.task_id,
        TaskEvent::Ended(e) => &e.task_id,
    }
}

fn to_proto(entry: JournalEntry) -> ProtoEvent {
    let event = match entry.event {
        TaskEvent::Begun(b) => task_event::Event::Begun(ProtoBegun {
            task_id: b.task_id,
            spiffe_id: b.spiffe_id,
            client: b.client,
            subject: b.subject,
            server: b.server,
            scopes: b.scopes,
            consent_id: b.consent_id,
            begun_at_unix_ms: b.begun_at_ms,
            deadline_unix: b.deadline,
            serials: b.serials,
        }),
        TaskEvent::Ended(e) => task_event::Event::Ended(ProtoEnded {
            task_id: e.task_id,
            spiffe_id: e.spiffe_id,
            reason: e.reason,
            ended_at_unix_ms: e.ended_at_ms,
            serials: e.serials,
            until_unix: e.until,
        }),
    };
    ProtoEvent {
        seq: entry.seq,
        event: Some(event),
    }
}

#[cfg(test)]
mod tests;
