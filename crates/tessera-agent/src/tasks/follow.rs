//! One `Revocations.Follow` stream: where it starts (the missed deltas, or a snapshot),
//! then every new delta and a heartbeat whenever the stream has been quiet for the
//! feed's heartbeat interval.
//!
//! A follower that falls so far behind that the ring no longer holds its next delta (it
//! reads slower than the feed changes) gets ABORTED: it follows again with the version
//! it holds and gets a snapshot, as the protocol says for any gap.

use std::sync::Arc;

use prost::bytes::Bytes;
use tokio::sync::mpsc;
use tonic::Status;

use super::revocation::RevocationFeed;
use crate::metrics::{KindLabel, Metrics};

/// Everything one stream needs.
pub(crate) struct FollowStream {
    pub feed: Arc<RevocationFeed>,
    pub metrics: Arc<Metrics>,
    pub shutdown: crate::drain::Watch,
}

/// The message a follower too far behind gets.
const BEHIND: &str = "this follower fell behind the revocation feed's recent deltas; \
     follow again with the version it holds";

impl FollowStream {
    /// Sends until the follower goes, the agent shuts down, or the follower falls behind.
    pub(crate) async fn run(
        self,
        feed_id: &str,
        since: u64,
        tx: mpsc::Sender<Result<Bytes, Status>>,
    ) {
        self.metrics.revocation_followers.inc();
        self.send_all(feed_id, since, &tx).await;
        self.metrics.revocation_followers.dec();
    }

    async fn send(
        &self,
        tx: &mpsc::Sender<Result<Bytes, Status>>,
        kind: &'static str,
        bytes: Bytes,
    ) -> bool {
        let len = bytes.len() as u64;
        if tx.send(Ok(bytes)).await.is_err() {
            return false;
        }
        self.metrics
            .revocation_updates_sent
            .get_or_create(&KindLabel { kind })
            .inc();
        self.metrics.revocation_bytes_sent.inc_by(len);
        true
    }

    async fn send_all(&self, feed_id: &str, since: u64, tx: &mpsc::Sender<Result<Bytes, Status>>) {
        let feed = &self.feed;
        // Subscribed before the start is chosen, so no version made meanwhile is missed.
        let mut versions = feed.subscribe();
        versions.borrow_and_update();
        let resumed = (feed_id == feed.feed_id() && since != 0)
            .then(|| feed.deltas_after(since).ok())
            .flatten();
        let mut at = match resumed {
            Some(deltas) => {
                let mut at = since;
                for d in deltas {
                    at = d.version;
                    if !self.send(tx, "delta", d.bytes.clone()).await {
                        return;
                    }
                }
                at
            }
            None => {
                let (version, pages) = feed.snapshot();
                for page in pages.iter() {
                    if !self.send(tx, "snapshot", page.clone()).await {
                        return;
                    }
                }
                version
            }
        };
        // At once: the snapshot's pages may have been encoded a while ago (once per
        // version), and the follower should know how current it is without waiting.
        if !self.send(tx, "heartbeat", feed.heartbeat()).await {
            return;
        }
        let mut heartbeat = tokio::time::interval(feed.heartbeat_interval());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        loop {
            tokio::select! {
                () = tx.closed() => return,
                () = self.shutdown.signaled() => return,
                changed = versions.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    versions.borrow_and_update();
                    let Ok(deltas) = feed.deltas_after(at) else {
                        tracing::warn!(at, version = feed.version(), "a revocation follower fell behind the ring; ending its stream");
                        let _ = tx.send(Err(Status::aborted(BEHIND))).await;
                        return;
                    };
                    for d in deltas {
                        at = d.version;
                        if !self.send(tx, "delta", d.bytes.clone()).await {
                            return;
                        }
                    }
                    // A delta carries current_as_of too: the next heartbeat can wait.
                    heartbeat.reset();
                }
                _ = heartbeat.tick() => {
                    if !self.send(tx, "heartbeat", feed.heartbeat()).await {
                        return;
                    }
                }
            }
        }
    }
}
