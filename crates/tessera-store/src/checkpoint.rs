//! WAL checkpoints off the commit path.
//!
//! # Why
//!
//! With SQLite's automatic checkpoint, the commit that takes the WAL past 1,000 frames
//! copies every page in it to the database file and fsyncs that file before `COMMIT`
//! returns. A BeginTask wrote ~13 frames, so about one commit in 80 stalled for several
//! milliseconds (4–9 ms on the reference 2-core machine) with its callers waiting: that
//! stall was the single-caller BeginTask p99.
//!
//! # How
//!
//! The writer's connection runs with `wal_autocheckpoint = 0`. A checkpointer task with
//! a connection of its own runs a `PASSIVE` checkpoint after every [`CHECKPOINT_WRITES`]
//! committed writes: it copies committed frames into the database file beside the
//! writer, never blocking it. A passive checkpoint cannot make the WAL start over while
//! the writer keeps appending (SQLite restarts the WAL only when a write transaction
//! begins with every frame already copied), so once the WAL holds at least
//! [`RESTART_FRAMES`] frames the checkpointer asks the writer to run one more passive
//! checkpoint itself, between two batches, after it has replied to the first: that
//! copies only the frames written since, and because nobody can append in between, the
//! writer's next transaction starts the WAL over. The WAL file so stays bounded (a few
//! MiB) and no caller waits for a full copy. (Checkpointing on a timer instead, every
//! 50 ms, copied hot pages many times over.)
//!
//! Checkpoints are rare and large rather than frequent and small: each one ends with an
//! fsync of the database file, and a commit whose own WAL fsync overlaps it waits for the
//! disk twice. With a checkpoint every 64 writes, more than half of the single-caller
//! commits slower than 1 ms overlapped one (against 14 % of all commits), and BeginTask's
//! p99 was 1.7–2.2 ms; every 512 writes it is 1.4–1.6 ms on the reference machine. A
//! large checkpoint that a commit does overlap delays it more, which shows at p99.9
//! under load.
//!
//! A checkpoint only copies committed data: whether it runs, fails or is interrupted by
//! a crash changes nothing about durability, which every commit's own fsync provides.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection as _};
use tokio::sync::{Notify, watch};

use crate::StoreError;

/// Committed writes between two background checkpoints. A BeginTask writes ~8 WAL
/// frames, so this is ~4,000 frames (8 MiB of 2 KiB pages) of which a checkpoint copies
/// only the distinct pages, about one per write.
pub(crate) const CHECKPOINT_WRITES: u64 = 512;

/// WAL length, in frames, from which the writer finishes a checkpoint itself so the WAL
/// starts over (SQLite's own automatic threshold is 1,000; this keeps the WAL file
/// around 8–10 MiB).
pub(crate) const RESTART_FRAMES: i64 = 4000;

/// What the writer and the checkpointer share.
#[derive(Debug, Default)]
pub(crate) struct CheckpointState {
    /// Poked by the writer once [`CHECKPOINT_WRITES`] writes have accumulated.
    committed: Notify,
    /// Writes committed since the last background checkpoint.
    writes: AtomicU64,
    /// Set by the checkpointer when the writer should finish a checkpoint.
    restart_due: AtomicBool,
    /// Checkpoints run by the checkpointer and by the writer.
    pub(crate) background: AtomicU64,
    pub(crate) by_writer: AtomicU64,
}

impl CheckpointState {
    /// Called by the writer after each batch, with the writes it committed.
    pub(crate) fn committed(&self, writes: u64) {
        if self.writes.fetch_add(writes, Ordering::AcqRel) + writes >= CHECKPOINT_WRITES {
            self.committed.notify_one();
        }
    }

    /// Called by the writer between batches: finishes a checkpoint if one is due.
    pub(crate) fn finish_if_due(&self, conn: &rusqlite::Connection) {
        if !self.restart_due.swap(false, Ordering::AcqRel) {
            return;
        }
        let checkpoint = conn.query_row(PASSIVE_CHECKPOINT, [], |row| {
            Ok(Frames {
                in_wal: row.get(1)?,
                copied: row.get(2)?,
            })
        });
        match checkpoint {
            Ok(frames) => {
                self.by_writer.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(?frames, "writer finished a WAL checkpoint");
            }
            // Not fatal: the WAL just grows until the next attempt.
            Err(error) => tracing::warn!(%error, "WAL checkpoint by the writer failed"),
        }
    }
}

/// Frames in the WAL and frames copied to the database, after a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Frames {
    pub(crate) in_wal: i64,
    pub(crate) copied: i64,
}

/// Returns (busy, frames in the WAL, frames copied).
const PASSIVE_CHECKPOINT: &str = "PRAGMA wal_checkpoint(PASSIVE)";

async fn passive_checkpoint(conn: &mut SqliteConnection) -> Result<Frames, StoreError> {
    let (_busy, in_wal, copied): (i64, i64, i64) = sqlx::query_as(PASSIVE_CHECKPOINT)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Frames { in_wal, copied })
}

/// Starts the checkpointer on a connection of its own; it stops when `stop` changes or
/// its sender is dropped, and closes its connection.
pub(crate) async fn start(
    options: &SqliteConnectOptions,
    state: Arc<CheckpointState>,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, StoreError> {
    let conn = options.connect().await?;
    Ok(tokio::spawn(run(conn, state, stop)))
}

async fn run(
    mut conn: SqliteConnection,
    state: Arc<CheckpointState>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = state.committed.notified() => {}
            _ = stop.changed() => break,
        }
        if state.writes.load(Ordering::Acquire) < CHECKPOINT_WRITES {
            continue;
        }
        state.writes.store(0, Ordering::Release);
        match passive_checkpoint(&mut conn).await {
            Ok(frames) => {
                state.background.fetch_add(1, Ordering::Relaxed);
                if frames.in_wal >= RESTART_FRAMES {
                    state.restart_due.store(true, Ordering::Release);
                }
                tracing::trace!(?frames, "background WAL checkpoint");
            }
            Err(error) => tracing::warn!(%error, "background WAL checkpoint failed"),
        }
    }
    if let Err(error) = conn.close().await {
        tracing::debug!(%error, "closing the checkpointer's connection failed");
    }
}

#[cfg(test)]
mod tests {
    use super::RESTART_FRAMES;
    use crate::testing::{begin, granted_consent, open_temp, task_id};

    /// Without checkpoints the WAL would grow by every frame written (~8 per task, so
    /// ~66 MiB here); with them it starts over about every RESTART_FRAMES frames.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_while_the_writer_never_checkpoints_on_commit() {
        let (_dir, path, store) = open_temp().await;
        let consent = granted_consent(&store, "a").await;
        for i in 0..4000 {
            let id = format!("t{i:05}");
            begin(&store, &id, "a", &consent.id, &format!("{i:08x}")).await;
        }
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let wal_bytes = std::fs::metadata(&wal).unwrap().len();
        let page = u64::from(crate::store::PAGE_SIZE);
        // A restart at RESTART_FRAMES plus the frames written until the writer's next
        // gap; generous, but far below the unbounded growth.
        let bound = u64::try_from(2 * RESTART_FRAMES).unwrap() * (page + 24);
        assert!(wal_bytes < bound, "WAL is {wal_bytes} bytes");
        let stats = store.writer_stats();
        assert!(stats.checkpoints_background > 0, "{stats:?}");
        assert!(stats.checkpoints_by_writer > 0, "{stats:?}");
        // One grant, then one commit per task (each waited for by its caller).
        assert_eq!((stats.commits, stats.writes), (4001, 4001));
        assert!(stats.commit_micros > 0);
        // Everything committed is readable from a fresh connection after close.
        store.close().await;
        let store = crate::Store::open(&path).await.unwrap();
        assert!(store.get_task(&task_id("t03999")).await.unwrap().is_some());
    }
}
