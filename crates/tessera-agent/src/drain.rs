//! Shutdown as one drain: a [`Trigger`] the agent fires once, and [`Watch`]es every
//! long-running piece of work holds (background loops, servers, open streams).
//!
//! A watch is both the signal and the work's receipt: work stops when its watch
//! says so, and the drain is complete when every watch has been dropped. Whatever is
//! still running at the deadline is abandoned, with a log line saying how much, so a
//! stuck stream can never keep the agent from exiting (and a clean exit never waits
//! longer than the deadline).

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// A new drain: fire the trigger once, hand clones of the watch to the work.
pub(crate) fn channel() -> (Trigger, Watch) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx }, Watch { rx })
}

/// Starts the drain. Dropping it unfired also signals every watch (the agent is
/// going away either way), but waits for nothing.
#[derive(Debug)]
pub(crate) struct Trigger {
    tx: watch::Sender<bool>,
}

/// What [`Trigger::drain`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Every watch was dropped before the deadline.
    Complete,
    /// The deadline passed with this many watches still held; their work was
    /// abandoned where it stood.
    Abandoned {
        /// Watches still held at the deadline.
        remaining: usize,
    },
}

impl Trigger {
    /// Signals every watch, then waits until all are dropped or `deadline` passes.
    pub(crate) async fn drain(self, deadline: Duration) -> Drained {
        self.tx.send_replace(true);
        if tokio::time::timeout(deadline, self.tx.closed())
            .await
            .is_ok()
        {
            return Drained::Complete;
        }
        let remaining = self.tx.receiver_count();
        tracing::warn!(
            remaining,
            deadline = %humantime::format_duration(deadline),
            "shutdown deadline passed: abandoning the work still running"
        );
        Drained::Abandoned { remaining }
    }
}

/// One piece of work's view of the drain; clone it for each piece. Holding it holds
/// the drain up: drop it (or let the future that owns it finish) once the work is done.
#[derive(Clone, Debug)]
pub(crate) struct Watch {
    rx: watch::Receiver<bool>,
}

impl Watch {
    /// Whether the drain has started.
    #[cfg(test)]
    pub(crate) fn is_draining(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Completes once the drain has started (at once if it already has). Cheap to
    /// call again, e.g. in every round of a `select!` loop.
    pub(crate) async fn signaled(&self) {
        let mut rx = self.rx.clone();
        // Err: the trigger was dropped unfired, which also means stop.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// [`Watch::signaled`], owning the watch: for APIs that take a shutdown future
    /// (tonic's and axum's graceful shutdown). The watch is dropped when the signal
    /// arrives, so it does not by itself hold the drain up; pair it with
    /// [`Watch::track`] on the server's own future.
    pub(crate) async fn into_signal(self) {
        self.signaled().await;
    }

    /// Runs `work` holding this watch, so the drain waits for `work` to finish (up to
    /// its deadline). For work that stops through another signal, e.g. a server
    /// given [`Watch::into_signal`].
    pub(crate) async fn track<F: Future>(self, work: F) -> F::Output {
        let out = work.await;
        drop(self);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_completes_once_every_watch_is_dropped() {
        let (trigger, watch) = channel();
        let mut workers = Vec::new();
        for _ in 0..3 {
            let w = watch.clone();
            workers.push(tokio::spawn(async move {
                w.signaled().await;
                assert!(w.is_draining());
                // Some cleanup after the signal, still held up by the drain.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }));
        }
        assert!(!watch.is_draining());
        drop(watch);
        let started = tokio::time::Instant::now();
        assert_eq!(
            trigger.drain(Duration::from_secs(10)).await,
            Drained::Complete
        );
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        for w in workers {
            w.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn work_still_running_at_the_deadline_is_abandoned() {
        let (trigger, watch) = channel();
        let stuck = watch.clone();
        // Ignores the signal and keeps its watch.
        let _task = tokio::spawn(async move {
            std::future::pending::<()>().await;
            drop(stuck);
        });
        drop(watch);
        let started = tokio::time::Instant::now();
        assert_eq!(
            trigger.drain(Duration::from_secs(10)).await,
            Drained::Abandoned { remaining: 1 }
        );
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn tracked_work_holds_the_drain_until_it_finishes() {
        let (trigger, watch) = channel();
        let signal = watch.clone().into_signal();
        // A server that takes a shutdown future and then needs 2s to close.
        let server = async move {
            signal.await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        let task = tokio::spawn(watch.track(server));
        let started = tokio::time::Instant::now();
        assert_eq!(
            trigger.drain(Duration::from_secs(10)).await,
            Drained::Complete
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_dropped_trigger_also_stops_the_work() {
        let (trigger, watch) = channel();
        drop(trigger);
        watch.signaled().await;
        assert!(watch.is_draining());
    }
}
