//! The single writer: every change to the database goes through one task that batches
//! concurrent writes into one transaction (group commit).
//!
//! # Why
//!
//! Every commit is fsynced (`synchronous = FULL`, see [`crate::Store::open`]): a lost
//! revocation or consent withdrawal would bring a dead credential back to life after a
//! power cut. One durable WAL commit costs ~110 µs on the reference 2-core machine, so one
//! transaction per call caps the store at well under 10,000 writes/s *in the best case*,
//! and, with several connections, writers also queue on SQLite's file lock (busy-wait with
//! sleeps, `SQLITE_BUSY` after the timeout). The agent must answer ≥ 5,000 BeginTask/s from
//! 8 concurrent callers, each only once its task is durable. Sharing one fsync among all
//! the writes that arrived while the previous one ran removes that ceiling.
//!
//! # How
//!
//! Write operations ([`Op`]) go into one bounded mpsc queue, each with a oneshot reply.
//! One writer, on a thread of its own (see [`Writer::start`]), owns a dedicated connection
//! (the pool is for reads only) and loops:
//!
//! 1. wait for one op, then take whatever else is already queued, up to [`MAX_BATCH`] ops;
//! 2. `BEGIN IMMEDIATE`; run each op inside its own `SAVEPOINT`: an op that fails (a typed
//!    error, or a database error such as a constraint violation) is rolled back to its
//!    savepoint and fails alone, and the other ops in the batch still commit. (Savepoints
//!    nest instead of being released, and the hot ops open theirs in the same query as
//!    their statements, the first of them the transaction too: every query is a round
//!    trip to sqlx's connection thread, ~100 µs of latency on a busy 2-core machine, so
//!    a batch of one BeginTask is two round trips, its query and `COMMIT`);
//! 3. `COMMIT` once (one fsync; WAL checkpoints happen elsewhere, see
//!    [`crate::checkpoint`]);
//! 4. publish what the batch changed (audit rows to [`crate::Store::subscribe_audit`] in
//!    sequence order, entry and consent revision bumps), then reply to each op.
//!
//! # Guarantees
//!
//! - **Durable before answered.** A write's `Ok` is sent only after the `COMMIT` holding
//!   it returned, and that commit was fsynced.
//! - **All or nothing per op.** An op's rows and its audit records commit together or not
//!   at all. If the batch-level statements fail (`BEGIN`, a savepoint, `COMMIT`), the whole
//!   batch is rolled back and every op in it fails ([`StoreError::CommitFailed`]; an op
//!   that had already failed on its own keeps its own error).
//! - **Serialised.** Ops apply one after another in queue order (per caller: call order),
//!   so checks inside an op (e.g. "is this task still live?") cannot race another write
//!   made through this store. Exactly one of several concurrent `end_task` calls for one
//!   task sees it live.
//! - **Not lost on cancellation.** Once an op is queued it is applied even if its caller
//!   stopped waiting (a timed-out RPC); only the reply is discarded. An op not yet queued
//!   when the caller gave up (the queue was full) is not applied.
//! - **Published after commit, in order.** Audit rows reach subscribers only once
//!   committed, in `seq` order, and before the writing call returns; rolled-back ops
//!   publish nothing.
//! - **Closing.** [`crate::Store::close`] lets the writer finish every op queued before it,
//!   then stops it; later writes fail with [`StoreError::Closed`].
//!
//! Reads use the pool and see every committed write (WAL gives each read a consistent
//! snapshot), including every write whose call has returned.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection as _};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::checkpoint::CheckpointState;
use crate::{AuditRecord, StoreError};

/// Most ops one transaction holds. Bounds how long one commit keeps the lock (and so read
/// latency under a checkpoint) and how much work one failed commit throws away.
pub(crate) const MAX_BATCH: usize = 256;

/// Ops that may wait in the queue; callers beyond it wait for room (back-pressure).
const QUEUE_CAPACITY: usize = 4096;

/// Audit records a slow [`crate::Store::subscribe_audit`] receiver may fall behind before
/// it sees `Lagged` (it can then catch up with [`crate::Store::list_audit`]).
const AUDIT_CHANNEL_CAPACITY: usize = 16_384;

/// A boxed, sendable future borrowing for `'a`.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The body of a write: runs its statements on the writer's connection (inside the op's
/// savepoint) and records what to publish once committed.
pub(crate) type RunFn<S, T> = for<'a> fn(
    &'a mut S,
    &'a mut SqliteConnection,
    &'a mut Effects,
) -> BoxFuture<'a, Result<T, StoreError>>;

/// What the first query of an op queued with [`Writer::write_fused`] opens before its
/// own statements; [`fused_query!`] writes both forms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Opening {
    /// The op's savepoint: `SAVEPOINT op; …`.
    #[default]
    Savepoint,
    /// The batch's transaction, then the op's savepoint: `BEGIN IMMEDIATE; SAVEPOINT op;
    /// …`. For the first op of a batch, which saves the batch a round trip.
    TransactionAndSavepoint,
}

/// The first query of a fused op: `$sql` (a string literal, or a macro expanding to
/// one) preceded by what `$opening` (an [`Opening`]) asks for.
macro_rules! fused_query {
    ($opening:expr, $sql:expr) => {
        match $opening {
            $crate::writer::Opening::Savepoint => concat!("SAVEPOINT op; ", $sql),
            $crate::writer::Opening::TransactionAndSavepoint => {
                concat!("BEGIN IMMEDIATE; SAVEPOINT op; ", $sql)
            }
        }
    };
}
pub(crate) use fused_query;

/// What a committed op publishes (discarded if the op rolls back), and how it ran.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// For an op queued with [`Writer::write_fused`]: what its first query must open.
    pub(crate) opening: Opening,
    /// Set by an op queued with [`Writer::write_fused`] once it has sent the query that
    /// opens its savepoint (see [`fused_query!`]), whether or not the query then
    /// succeeded.
    pub(crate) savepoint_opened: bool,
    /// Audit rows written, in `seq` order.
    pub(crate) audit: Vec<AuditRecord>,
    /// Registration entries created or deleted.
    pub(crate) entries_changed: u64,
    /// Consents granted or withdrawn.
    pub(crate) consents_changed: u64,
}

/// The change notifications the writer publishes after each commit; shared with the
/// [`crate::Store`] handles, which hand out receivers.
#[derive(Debug)]
pub(crate) struct Notifier {
    pub(crate) entries: watch::Sender<u64>,
    pub(crate) consents: watch::Sender<u64>,
    pub(crate) audit: broadcast::Sender<AuditRecord>,
    /// Transactions committed by the writer (see [`crate::WriterStats`]).
    pub(crate) commits: AtomicU64,
    /// Writes those transactions committed.
    pub(crate) writes: AtomicU64,
    /// Microseconds from `BEGIN` to `COMMIT`'s return, summed over committed batches.
    pub(crate) commit_micros: AtomicU64,
}

impl Notifier {
    pub(crate) fn new() -> Notifier {
        Notifier {
            entries: watch::channel(0).0,
            consents: watch::channel(0).0,
            audit: broadcast::channel(AUDIT_CHANNEL_CAPACITY).0,
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            commit_micros: AtomicU64::new(0),
        }
    }

    fn publish(&self, effects: Effects) {
        for record in effects.audit {
            // No receivers is fine: nobody is following the log right now.
            let _ = self.audit.send(record);
        }
        // Bumping inside send_modify serialises with readers; revisions never go backwards.
        if effects.entries_changed > 0 {
            self.entries
                .send_modify(|revision| *revision += effects.entries_changed);
        }
        if effects.consents_changed > 0 {
            self.consents
                .send_modify(|revision| *revision += effects.consents_changed);
        }
    }
}

/// One queued write, type-erased.
trait Op: Send {
    fn name(&self) -> &'static str;
    /// Whether the op opens its own savepoint (see [`Writer::write_fused`]).
    fn own_savepoint(&self) -> bool;
    /// Runs the write; on `Ok` the op holds its output until [`Op::finish`].
    fn apply<'a>(
        &'a mut self,
        conn: &'a mut SqliteConnection,
        effects: &'a mut Effects,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Replies: the stored output if `result` is `Ok`, else the error.
    fn finish(self: Box<Self>, result: Result<(), StoreError>);
}

/// A write with state `S` producing `T`.
struct Job<S, T> {
    name: &'static str,
    own_savepoint: bool,
    state: S,
    run: RunFn<S, T>,
    output: Option<T>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<S: Send, T: Send> Op for Job<S, T> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn own_savepoint(&self) -> bool {
        self.own_savepoint
    }

    fn apply<'a>(
        &'a mut self,
        conn: &'a mut SqliteConnection,
        effects: &'a mut Effects,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let output = (self.run)(&mut self.state, conn, effects).await?;
            self.output = Some(output);
            Ok(())
        })
    }

    fn finish(self: Box<Self>, result: Result<(), StoreError>) {
        let reply = match result {
            Ok(()) => Ok(self
                .output
                .expect("apply stores the output whenever it returns Ok")),
            Err(error) => Err(error),
        };
        // The caller may have stopped waiting; the write stands regardless.
        let _ = self.reply.send(reply);
    }
}

enum Msg {
    Op(Box<dyn Op>),
    Close(oneshot::Sender<()>),
}

/// The handle the store keeps: the queue into the writer and the writer's thread.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Msg>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer on a thread of its own, with its own connection.
    ///
    /// Why a thread (running a single-threaded tokio runtime) rather than a task on the
    /// caller's runtime: every statement is a round trip to sqlx's connection thread, and
    /// a task woken by its reply waits in the runtime's queue behind whatever else is
    /// ready, on the agent's busy workers a BeginTask's key generation and signing. The
    /// writer holds the database's only write lock while it waits, so that queueing
    /// delay was paid by every caller in the batch; on its own thread the writer is
    /// polled as soon as the kernel runs it.
    ///
    /// The connection does not checkpoint the WAL on commit; `checkpoints` says when it
    /// should finish one between batches (see [`crate::checkpoint`]).
    pub(crate) async fn start(
        options: &SqliteConnectOptions,
        notifier: std::sync::Arc<Notifier>,
        checkpoints: std::sync::Arc<CheckpointState>,
    ) -> Result<Writer, StoreError> {
        let options = options.clone().pragma("wal_autocheckpoint", "0");
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (opened, connected) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("tessera-store-writer".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = opened.send(Err(StoreError::WriterThread(error)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match options.connect().await {
                        Ok(conn) => {
                            let _ = opened.send(Ok(()));
                            run(conn, rx, notifier, checkpoints).await;
                        }
                        Err(error) => {
                            let _ = opened.send(Err(error.into()));
                        }
                    }
                });
            })
            .map_err(StoreError::WriterThread)?;
        let writer = Writer {
            tx,
            thread: std::sync::Mutex::new(Some(thread)),
        };
        match connected.await {
            Ok(Ok(())) => Ok(writer),
            Ok(Err(error)) => {
                writer.join().await;
                Err(error)
            }
            // The thread ended without a word: it panicked.
            Err(_) => {
                writer.join().await;
                Err(StoreError::Closed)
            }
        }
    }

    /// Waits for the writer's thread to end, without blocking the caller's runtime.
    async fn join(&self) {
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(thread) = thread else { return };
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!("store writer thread panicked"),
            Err(error) => tracing::error!(%error, "joining the store writer thread failed"),
        }
    }

    /// Queues a write and waits for its reply (sent after its batch committed).
    ///
    /// Cancel-safe in the sense that matters: once queued, the write is applied even if
    /// this future is dropped.
    pub(crate) async fn write<S, T>(
        &self,
        name: &'static str,
        state: S,
        run: RunFn<S, T>,
    ) -> Result<T, StoreError>
    where
        S: Send + 'static,
        T: Send + 'static,
    {
        self.queue(name, false, state, run).await
    }

    /// Like [`Writer::write`], for a hot op that saves round trips to the connection
    /// thread by opening its own savepoint, and when it comes first in its batch the
    /// batch's transaction too: its first query must be built with [`fused_query!`] from
    /// [`Effects::opening`], it must set [`Effects::savepoint_opened`] as soon as it has
    /// sent that query, and it must run no statement before it.
    pub(crate) async fn write_fused<S, T>(
        &self,
        name: &'static str,
        state: S,
        run: RunFn<S, T>,
    ) -> Result<T, StoreError>
    where
        S: Send + 'static,
        T: Send + 'static,
    {
        self.queue(name, true, state, run).await
    }

    async fn queue<S, T>(
        &self,
        name: &'static str,
        own_savepoint: bool,
        state: S,
        run: RunFn<S, T>,
    ) -> Result<T, StoreError>
    where
        S: Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            name,
            own_savepoint,
            state,
            run,
            output: None,
            reply,
        };
        self.tx
            .send(Msg::Op(Box::new(job)))
            .await
            .map_err(|_| StoreError::Closed)?;
        // A dropped reply means the writer stopped before reaching this op.
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Lets the writer finish every op queued so far, then stops it and closes its
    /// connection. Idempotent.
    pub(crate) async fn close(&self) {
        let (ack, acked) = oneshot::channel();
        if self.tx.send(Msg::Close(ack)).await.is_ok() {
            let _ = acked.await;
        }
        self.join().await;
    }
}

/// The writer loop.
async fn run(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Msg>,
    notifier: std::sync::Arc<Notifier>,
    checkpoints: std::sync::Arc<CheckpointState>,
) {
    let mut batch: Vec<Box<dyn Op>> = Vec::with_capacity(MAX_BATCH);
    let mut closing = None;
    while closing.is_none() {
        match rx.recv().await {
            // Every Store handle is gone.
            None => break,
            Some(Msg::Close(ack)) => {
                closing = Some(ack);
                break;
            }
            Some(Msg::Op(op)) => batch.push(op),
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Op(op)) => batch.push(op),
                Ok(Msg::Close(ack)) => {
                    closing = Some(ack);
                    break;
                }
                Err(_) => break,
            }
        }
        let committed = run_batch(&mut conn, &mut batch, &notifier).await;
        // After the batch's callers have their replies.
        checkpoints.committed(committed);
        checkpoints.finish_if_due(&mut conn).await;
    }
    // Refuse further ops; any queued after the Close are dropped, which fails their
    // callers with StoreError::Closed.
    rx.close();
    drop(rx);
    if let Err(error) = conn.close().await {
        tracing::warn!(%error, "closing the store writer's connection failed");
    }
    tracing::debug!("store writer stopped");
    if let Some(ack) = closing {
        let _ = ack.send(());
    }
}

/// An op that has run inside the open transaction: its result and what it will publish.
type Ran = (Box<dyn Op>, Result<(), StoreError>, Effects);

/// Runs `batch` (emptying it) in one transaction, then publishes and replies.
///
/// The transaction is driven with plain `BEGIN`/`COMMIT`/`ROLLBACK` statements rather than
/// sqlx's `Transaction`: after an error that makes SQLite roll back on its own (I/O error,
/// disk full) sqlx's bookkeeping would keep believing a transaction is open and refuse the
/// next `BEGIN`, wedging the writer. A stray `ROLLBACK` with no open transaction is
/// harmless, so the recovery path here always works.
///
/// Returns how many writes it committed.
async fn run_batch(
    conn: &mut SqliteConnection,
    batch: &mut Vec<Box<dyn Op>>,
    notifier: &Notifier,
) -> u64 {
    let started = Instant::now();
    // Until COMMIT was sent: the ops' statements, without the fsync.
    let mut applied = std::time::Duration::ZERO;
    let size = batch.len();
    let mut pending: VecDeque<Box<dyn Op>> = batch.drain(..).collect();
    let mut done: Vec<Ran> = Vec::with_capacity(size);

    let outcome: Result<(), sqlx::Error> = async {
        // A fused op first in the batch opens the transaction in its own first query.
        // If that query fails at BEGIN, its savepoint does not exist, so the ROLLBACK TO
        // below fails and the batch is abandoned as for any failed BEGIN.
        let mut opening = if pending.front().is_some_and(|op| op.own_savepoint()) {
            Opening::TransactionAndSavepoint
        } else {
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
            Opening::Savepoint
        };
        while let Some(mut op) = pending.pop_front() {
            let mut effects = Effects {
                opening: std::mem::take(&mut opening),
                ..Effects::default()
            };
            if !op.own_savepoint() {
                if let Err(error) = sqlx::query("SAVEPOINT op").execute(&mut *conn).await {
                    pending.push_front(op);
                    return Err(error);
                }
                effects.savepoint_opened = true;
            }
            let result = op.apply(conn, &mut effects).await;
            let rollback = result.is_err() && effects.savepoint_opened;
            if let Err(error) = &result {
                tracing::debug!(op = op.name(), %error, "store write failed; rolled back alone");
            }
            done.push((op, result, effects));
            if rollback {
                // If SQLite already rolled back the whole transaction, this fails and the
                // batch is abandoned below.
                sqlx::query("ROLLBACK TO op").execute(&mut *conn).await?;
            }
            // Savepoints are not released: each op's nests in the previous one's, which
            // saves a round trip per op; ROLLBACK TO targets the innermost (this op's),
            // and COMMIT ends them all.
        }
        applied = started.elapsed();
        sqlx::query("COMMIT").execute(&mut *conn).await?;
        Ok(())
    }
    .await;

    match outcome {
        Ok(()) => {
            notifier.commits.fetch_add(1, Ordering::Relaxed);
            let committed = done.iter().filter(|(_, result, _)| result.is_ok()).count();
            let committed = u64::try_from(committed).unwrap_or(u64::MAX);
            notifier.writes.fetch_add(committed, Ordering::Relaxed);
            let elapsed = started.elapsed();
            let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            notifier.commit_micros.fetch_add(micros, Ordering::Relaxed);
            for (_, result, effects) in &mut done {
                if result.is_ok() {
                    notifier.publish(std::mem::take(effects));
                }
            }
            for (op, result, _) in done {
                op.finish(result);
            }
            tracing::trace!(
                size,
                elapsed_us = elapsed.as_micros(),
                applied_us = applied.as_micros(),
                "group commit"
            );
            committed
        }
        Err(error) => {
            tracing::error!(size, %error, "group commit failed; batch rolled back");
            if let Err(rollback) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
                // Expected when SQLite already rolled back by itself.
                tracing::debug!(error = %rollback, "rollback after failed group commit");
            }
            let reason = error.to_string();
            let failed = |result: Result<(), StoreError>| match result {
                Ok(()) => Err(StoreError::CommitFailed {
                    reason: reason.clone(),
                }),
                Err(own) => Err(own),
            };
            for (op, result, _) in done {
                op.finish(failed(result));
            }
            // Ops the batch never reached.
            for op in pending {
                op.finish(failed(Ok(())));
            }
            0
        }
    }
}
