//! The single writer: every change to the database goes through one thread that batches
//! concurrent writes into one transaction (group commit).
//!
//! # Why
//!
//! Every commit is fsynced (`synchronous = FULL`, see [`crate::Store::open`]): a lost
//! revocation or consent withdrawal would bring a dead credential back to life after a
//! power cut. One durable WAL commit costs ~0.5 ms on the reference 2-core machine, so one
//! transaction per call caps the store at ~2,000 writes/s, and, with several connections,
//! writers also queue on SQLite's file lock (busy-wait with sleeps, `SQLITE_BUSY` after
//! the timeout). The agent must answer ≥ 5,000 BeginTask/s from 8 concurrent callers,
//! each only once its task is durable. Sharing one fsync among all the writes that
//! arrived while the previous one ran removes that ceiling.
//!
//! # How
//!
//! Write operations ([`Op`]) go into one bounded mpsc queue, each with a oneshot reply.
//! One writer thread owns a dedicated connection (the pool is for reads only) and loops:
//!
//! 1. wait for one op, then take whatever else is already queued, up to [`MAX_BATCH`] ops;
//! 2. `BEGIN IMMEDIATE`; run each op inside its own `SAVEPOINT`: an op that fails (a typed
//!    error, or a database error such as a constraint violation) is rolled back to its
//!    savepoint and fails alone, and the other ops in the batch still commit;
//! 3. `COMMIT` once (one fsync; WAL checkpoints happen elsewhere, see
//!    [`crate::checkpoint`]);
//! 4. publish what the batch changed (audit rows to [`crate::Store::subscribe_audit`] in
//!    sequence order, entry and consent revision bumps), then reply to each op.
//!
//! The writer's connection is a synchronous rusqlite connection with cached prepared
//! statements, so an op's statements are plain calls into SQLite on this thread. (With
//! sqlx every statement was a round trip to sqlx's own connection thread, each a wake-up
//! on a busy 2-core machine: a BeginTask's statements took ~300 µs of the writer's time
//! under load, for ~100 µs of SQLite work, and the writer, holding the database's only
//! write lock meanwhile, was the bottleneck.) Reads stay on sqlx's async pool.
//!
//! # Guarantees
//!
//! - **Durable before answered.** A write's `Ok` is sent only after the `COMMIT` holding
//!   it returned, and that commit was fsynced.
//! - **All or nothing per op.** An op's rows and its audit records commit together or not
//!   at all. If the batch-level statements fail (`BEGIN`, a savepoint, `COMMIT`), or
//!   SQLite rolls the whole transaction back on its own (I/O error, disk full), the whole
//!   batch is rolled back and every op in it fails ([`Unavailable::CommitFailed`]; an op
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
//!   then stops it; later writes fail with [`Unavailable::Closed`].
//!
//! Reads use the pool and see every committed write (WAL gives each read a consistent
//! snapshot), including every write whose call has returned.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::StoreError;
use crate::audit_record::AuditRecord;
use crate::checkpoint::CheckpointState;
use crate::error::{OpenError, Unavailable};

/// Most ops one transaction holds. Bounds how long one commit keeps the lock (and so read
/// latency under a checkpoint) and how much work one failed commit throws away.
pub(crate) const MAX_BATCH: usize = 256;

/// Ops that may wait in the queue; callers beyond it wait for room (back-pressure).
const QUEUE_CAPACITY: usize = 4096;

/// Audit records a slow [`crate::Store::subscribe_audit`] receiver may fall behind before
/// it sees `Lagged` (it can then catch up with [`crate::Store::list_audit`]).
const AUDIT_CHANNEL_CAPACITY: usize = 16_384;

/// Prepared statements the writer's connection keeps. Every write statement the store
/// has fits, so none is parsed twice.
const STATEMENT_CACHE: usize = 64;

/// The body of a write: runs its statements on the writer's connection (inside the op's
/// savepoint) and records what to publish once committed. Prepare statements with
/// `prepare_cached`: the writer runs the same few statements over and over.
pub(crate) type RunFn<S, T> = fn(&mut S, &Connection, &mut Effects) -> Result<T, StoreError>;

/// What a committed op publishes (discarded if the op rolls back).
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Audit rows written, in `seq` order.
    pub(crate) audit: Vec<AuditRecord>,
    /// Registration entries created or deleted.
    pub(crate) entries_changed: u64,
    /// Consents granted or withdrawn.
    pub(crate) consents_changed: u64,
    /// Task events journaled (cluster mode; see [`crate::journal`]).
    pub(crate) journaled: u64,
    /// The node audit records name ([`crate::Store::set_audit_node`]).
    pub(crate) node: Option<String>,
}

/// The change notifications the writer publishes after each commit; shared with the
/// [`crate::Store`] handles, which hand out receivers.
#[derive(Debug)]
pub(crate) struct Notifier {
    pub(crate) entries: watch::Sender<u64>,
    pub(crate) consents: watch::Sender<u64>,
    /// Bumped after a commit that journaled task events.
    pub(crate) journal: watch::Sender<u64>,
    pub(crate) audit: broadcast::Sender<AuditRecord>,
    /// Transactions committed by the writer (see [`crate::WriterStats`]).
    pub(crate) commits: AtomicU64,
    /// Writes those transactions committed.
    pub(crate) writes: AtomicU64,
    /// Microseconds from `BEGIN` to `COMMIT`'s return, summed over committed batches.
    pub(crate) commit_micros: AtomicU64,
    /// Cluster mode: the node every audit record written from now on names.
    pub(crate) audit_node: std::sync::OnceLock<String>,
}

impl Notifier {
    pub(crate) fn new() -> Notifier {
        Notifier {
            entries: watch::channel(0).0,
            consents: watch::channel(0).0,
            journal: watch::channel(0).0,
            audit: broadcast::channel(AUDIT_CHANNEL_CAPACITY).0,
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            commit_micros: AtomicU64::new(0),
            audit_node: std::sync::OnceLock::new(),
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
        if effects.journaled > 0 {
            self.journal
                .send_modify(|revision| *revision += effects.journaled);
        }
    }
}

/// One queued write, type-erased.
trait Op: Send {
    fn name(&self) -> &'static str;
    /// Runs the write; on `Ok` the op holds its output until [`Op::finish`].
    fn apply(&mut self, conn: &Connection, effects: &mut Effects) -> Result<(), StoreError>;
    /// Replies: the stored output if `result` is `Ok`, else the error.
    fn finish(self: Box<Self>, result: Result<(), StoreError>);
}

/// A write with state `S` producing `T`.
struct Job<S, T> {
    name: &'static str,
    state: S,
    run: RunFn<S, T>,
    output: Option<T>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<S: Send, T: Send> Op for Job<S, T> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn apply(&mut self, conn: &Connection, effects: &mut Effects) -> Result<(), StoreError> {
        let output = (self.run)(&mut self.state, conn, effects)?;
        self.output = Some(output);
        Ok(())
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
    /// Opens the writer's connection to the database at `path` (already created,
    /// permission-checked and migrated by [`crate::Store::open`]) and starts the writer on
    /// a thread of its own.
    ///
    /// The connection uses the same settings as the read pool (WAL, `synchronous =
    /// FULL`, foreign keys, in-memory temp store, the busy timeout) except that it never
    /// checkpoints the WAL on commit; `checkpoints` says when it should finish one
    /// between batches (see [`crate::checkpoint`]).
    pub(crate) async fn start(
        path: &Path,
        busy_timeout: Duration,
        notifier: Arc<Notifier>,
        checkpoints: Arc<CheckpointState>,
    ) -> Result<Writer, StoreError> {
        let path = path.to_owned();
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (opened, connected) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("tessera-store-writer".into())
            .spawn(move || match connect(&path, busy_timeout) {
                Ok(conn) => {
                    let _ = opened.send(Ok(()));
                    run(&conn, rx, &notifier, &checkpoints);
                    if let Err((_, error)) = conn.close() {
                        tracing::warn!(%error, "closing the store writer's connection failed");
                    }
                    tracing::debug!("store writer stopped");
                }
                Err(error) => {
                    let _ = opened.send(Err(error));
                }
            })
            .map_err(OpenError::WriterThread)?;
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
                Err(StoreError::Unavailable(Unavailable::Closed))
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
        let (reply, answer) = oneshot::channel();
        let job = Job {
            name,
            state,
            run,
            output: None,
            reply,
        };
        self.tx
            .send(Msg::Op(Box::new(job)))
            .await
            .map_err(|_| StoreError::Unavailable(Unavailable::Closed))?;
        // A dropped reply means the writer stopped before reaching this op.
        answer
            .await
            .map_err(|_| StoreError::Unavailable(Unavailable::Closed))?
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

/// Opens the writer's connection. `NO_MUTEX`: it is used from this one thread only, so
/// SQLite's per-call connection mutex would be pure overhead.
fn connect(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    // No SQLITE_OPEN_CREATE: Store::open created the file with its mode. No URI flag: a
    // path is a path, never `file:…?options`.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(busy_timeout)?;
    // The reasons for each setting are on the pool's options in crate::store. WAL is
    // persistent in the file (the pool set it); setting it again costs nothing.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA wal_autocheckpoint = 0;",
    )?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// The writer loop, until the store is closed or every handle to it dropped.
fn run(
    conn: &Connection,
    mut rx: mpsc::Receiver<Msg>,
    notifier: &Notifier,
    checkpoints: &CheckpointState,
) {
    let mut batch: Vec<Box<dyn Op>> = Vec::with_capacity(MAX_BATCH);
    let mut closing = None;
    while closing.is_none() {
        match rx.blocking_recv() {
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
        let committed = run_batch(conn, &mut batch, notifier);
        // After the batch's callers have their replies.
        checkpoints.committed(committed);
        checkpoints.finish_if_due(conn);
    }
    // Refuse further ops; any queued after the Close are dropped, which fails their
    // callers with StoreError::Unavailable(Unavailable::Closed).
    rx.close();
    drop(rx);
    if let Some(ack) = closing {
        let _ = ack.send(());
    }
}

/// Runs one statement of the batch's own (`BEGIN`, `SAVEPOINT`, …).
fn execute(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// An op that has run inside the open transaction: its result and what it will publish.
type Ran = (Box<dyn Op>, Result<(), StoreError>, Effects);

/// Runs `batch` (emptying it) in one transaction, then publishes and replies.
///
/// The transaction is driven with plain `BEGIN`/`COMMIT`/`ROLLBACK` statements; after an
/// op's error SQLite may have rolled the whole transaction back on its own (I/O error,
/// disk full), which the connection's autocommit flag shows, and then the batch is
/// abandoned rather than committing the ops after it alone. A stray `ROLLBACK` with no
/// open transaction is harmless, so the recovery path always works.
///
/// Returns how many writes it committed.
fn run_batch(conn: &Connection, batch: &mut Vec<Box<dyn Op>>, notifier: &Notifier) -> u64 {
    let started = Instant::now();
    // Until COMMIT was sent: the ops' statements, without the fsync.
    let mut applied = Duration::ZERO;
    let size = batch.len();
    let mut pending = batch.drain(..);
    let mut done: Vec<Ran> = Vec::with_capacity(size);
    // Ops the batch never ran, if it failed.
    let mut unreached: Vec<Box<dyn Op>> = Vec::new();

    // Err: why the batch as a whole failed, shared by every op in it.
    let outcome: Result<(), String> = (|| {
        let step = |sql| execute(conn, sql).map_err(|error| error.to_string());
        step("BEGIN IMMEDIATE")?;
        for mut op in pending.by_ref() {
            let mut effects = Effects {
                node: notifier.audit_node.get().cloned(),
                ..Effects::default()
            };
            if let Err(error) = step("SAVEPOINT op") {
                unreached.push(op);
                return Err(error);
            }
            let result = op.apply(conn, &mut effects);
            let failed = result.is_err();
            if let Err(error) = &result {
                tracing::debug!(op = op.name(), %error, "store write failed; rolled back alone");
            }
            done.push((op, result, effects));
            if failed {
                if conn.is_autocommit() {
                    return Err("SQLite rolled the transaction back after an op's error".into());
                }
                step("ROLLBACK TO op")?;
            }
            step("RELEASE op")?;
        }
        applied = started.elapsed();
        step("COMMIT")
    })();
    unreached.extend(pending);

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
        Err(reason) => {
            tracing::error!(size, error = %reason, "group commit failed; batch rolled back");
            if let Err(rollback) = execute(conn, "ROLLBACK") {
                // Expected when SQLite already rolled back by itself.
                tracing::debug!(error = %rollback, "rollback after failed group commit");
            }
            let failed = |result: Result<(), StoreError>| match result {
                Ok(()) => Err(StoreError::Unavailable(Unavailable::CommitFailed {
                    reason: reason.clone(),
                })),
                Err(own) => Err(own),
            };
            for (op, result, _) in done {
                op.finish(failed(result));
            }
            for op in unreached {
                op.finish(failed(Ok(())));
            }
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::StoreError;
    use crate::error::Unavailable;
    use crate::testing::open_temp;

    /// A batch that cannot even begin (another process holds the write lock past the busy
    /// timeout) fails every write in it with a reason, and the writer carries on.
    #[tokio::test]
    async fn a_batch_that_cannot_begin_fails_its_writes_and_the_writer_recovers() {
        let (_dir, path, store) = open_temp().await;
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();

        let error = store
            .append_audit("test.locked", "", &json!({}))
            .await
            .unwrap_err();
        let StoreError::Unavailable(Unavailable::CommitFailed { reason }) = &error else {
            panic!("{error:?}")
        };
        assert!(reason.contains("locked"), "{reason}");
        assert_eq!(store.writer_stats().commits, 0);

        other.execute_batch("ROLLBACK").unwrap();
        let seq = store
            .append_audit("test.unlocked", "", &json!({}))
            .await
            .unwrap();
        let records = store.list_audit(0, 10).await.unwrap();
        assert_eq!(records.len(), 1, "the failed write left nothing behind");
        assert_eq!(
            (records[0].seq, records[0].kind.as_str()),
            (seq, "test.unlocked")
        );
        store.close().await;
    }

    /// The writer's connection is opened separately from the pool (a different library),
    /// so its durability and integrity settings are checked on their own.
    #[tokio::test]
    async fn the_writer_connection_is_durable_and_enforces_foreign_keys() {
        let (_dir, _path, store) = open_temp().await;
        let settings = store
            .inner
            .writer
            .write("settings", (), |(), conn, _| {
                let pragma = |name: &str| -> rusqlite::Result<String> {
                    conn.query_row(&format!("PRAGMA {name}"), [], |row| {
                        row.get::<_, rusqlite::types::Value>(0)
                            .map(|value| format!("{value:?}"))
                    })
                };
                Ok([
                    "journal_mode",
                    "synchronous",
                    "foreign_keys",
                    "temp_store",
                    "wal_autocheckpoint",
                    "busy_timeout",
                ]
                .map(|name| pragma(name).map(|value| format!("{name}={value}")))
                .into_iter()
                .collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await
            .unwrap();
        assert_eq!(
            settings,
            [
                "journal_mode=Text(\"wal\")",
                // FULL: every commit is fsynced.
                "synchronous=Integer(2)",
                "foreign_keys=Integer(1)",
                // MEMORY: savepoint journals never spill to temp files.
                "temp_store=Integer(2)",
                // Checkpoints are the checkpointer's job, never a commit's.
                "wal_autocheckpoint=Integer(0)",
                "busy_timeout=Integer(5000)",
            ]
        );
        store.close().await;
    }
}
