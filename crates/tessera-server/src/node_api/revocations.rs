//! `FollowRevocations`: a node's stream of the cluster's revoked set, served from this
//! replica's copy (`revocation_feed.rs`): a snapshot (paged under [`MAX_MESSAGE_BYTES`],
//! all pages but the last with `more`) unless the node resumes with this feed's id and a
//! version still in the ring, then the deltas as the copy moves, and a heartbeat whenever
//! the stream has been quiet for the interval. Every message carries the replica's
//! `current_as_of` (see [`crate::RevocationFeed::current_as_of`]), which stops advancing
//! while the replica cannot vouch for its copy: the node's verifiers then go stale and
//! fail closed.
//!
//! The feed id and versions come from PostgreSQL, so they are the same on every replica:
//! a node that moves to another replica resumes there without a snapshot.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tessera_identity::{NodeId, TrustDomain};
use tessera_proto::tessera::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::sync::MAX_MESSAGE_BYTES;
use crate::metrics::{FollowerGuard, Metrics};
use crate::revocation_feed::{Catch, FullSet};
use crate::{NodeStatus, Replica, RevocationFeed};

/// How long a stream waits for this replica to reach a node's version that is ahead of it
/// (the node was served by a replica further along) before answering with a snapshot.
const AHEAD_WAIT: Duration = Duration::from_secs(5);

/// Messages buffered per stream; a node slower than this only slows its own producer.
const STREAM_BUFFER: usize = 8;

/// Room left in each message for the envelope (feed id, `current_as_of`, framing).
const ENVELOPE: usize = 1024;

/// The stream `FollowRevocations` answers with.
pub(crate) type FollowStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::RevocationUpdate, Status>> + Send>>;

/// Starts the producer of one node's stream.
pub(crate) fn start(
    replica: Arc<Replica>,
    trust_domain: TrustDomain,
    node: NodeId,
    request: pb::FollowRevocationsRequest,
    heartbeat: Duration,
    metrics: Arc<Metrics>,
) -> FollowStream {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let feed = Arc::clone(replica.revocations());
    let follower = Follower {
        replica,
        feed,
        trust_domain,
        node,
        tx,
        sent: None,
        _open: metrics.follower(),
        metrics,
    };
    tokio::spawn(follower.run(request, heartbeat));
    Box::pin(ReceiverStream::new(rx))
}

struct Follower {
    replica: Arc<Replica>,
    feed: Arc<RevocationFeed>,
    trust_domain: TrustDomain,
    node: NodeId,
    tx: mpsc::Sender<Result<pb::RevocationUpdate, Status>>,
    /// The version the node holds once it has applied what was sent; `None` until it
    /// holds a complete snapshot of this feed.
    sent: Option<i64>,
    metrics: Arc<Metrics>,
    _open: FollowerGuard,
}

/// Why a producer stops: the node went away, or it was evicted (told so).
struct Stop;

impl Follower {
    async fn run(mut self, request: pb::FollowRevocationsRequest, heartbeat: Duration) {
        // Subscribe before reading the copy: no version falls between the two.
        let mut versions = self.feed.watch_version();
        let resumable = request.feed_id == self.feed.feed_id() && request.since_version > 0;
        if resumable && let Ok(since) = i64::try_from(request.since_version) {
            if since > self.feed.version() {
                let _ = tokio::time::timeout(AHEAD_WAIT, self.feed.wait_for_version(since)).await;
            }
            self.sent = Some(since);
        }
        if self.catch_up().await.is_err() {
            return;
        }
        loop {
            let changed = tokio::select! {
                () = self.tx.closed() => return,
                changed = tokio::time::timeout(heartbeat, versions.changed()) => changed,
            };
            let result = match changed {
                Err(_) => self.heartbeat().await,
                Ok(Ok(())) => self.catch_up().await,
                Ok(Err(_)) => {
                    let _ = self
                        .tx
                        .send(Err(Status::unavailable("the server is shutting down")))
                        .await;
                    return;
                }
            };
            if result.is_err() {
                return;
            }
        }
    }

    /// Refuses to go on for an evicted (or vanished) node.
    async fn check_node(&self) -> Result<(), Stop> {
        let state = self.replica.state();
        match state.nodes.get(self.node.name.as_str()) {
            Some(n) if n.status == NodeStatus::Active => Ok(()),
            _ => {
                let _ = self
                    .tx
                    .send(Err(Status::permission_denied(format!(
                        "node {} was evicted",
                        self.node.name
                    ))))
                    .await;
                Err(Stop)
            }
        }
    }

    /// Brings the node to the copy's version: deltas when its version is in the ring,
    /// else a snapshot; a heartbeat if it is there already and nothing was sent yet.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        self.check_node().await?;
        let catch = match self.sent {
            Some(sent) => self.feed.catch_up_from(sent),
            None => Catch::Snapshot(Box::new(self.feed.snapshot())),
        };
        match catch {
            Catch::UpToDate => Ok(()),
            Catch::Deltas(deltas) => self.send_deltas(&deltas).await,
            Catch::Snapshot(full) => self.send_snapshot(*full).await,
        }
    }

    /// Sends consecutive deltas merged into messages under the size bound. A single
    /// delta larger than that (a withdrawal ending thousands of tasks) goes as a
    /// snapshot instead, which pages.
    async fn send_deltas(&mut self, deltas: &[Arc<pb::RevocationDelta>]) -> Result<(), Stop> {
        let budget = MAX_MESSAGE_BYTES - ENVELOPE;
        if deltas.iter().any(|d| d.encoded_len() > budget) {
            return self.send_snapshot(self.feed.snapshot()).await;
        }
        let mut message: Option<pb::RevocationDelta> = None;
        for delta in deltas {
            if let Some(m) = &mut message {
                if m.encoded_len() + delta.encoded_len() > budget {
                    let full = message.take().expect("checked above");
                    self.send_delta(full).await?;
                } else {
                    m.version = delta.version;
                    m.revoked.extend(delta.revoked.iter().cloned());
                    m.revoked_node_cas
                        .extend(delta.revoked_node_cas.iter().cloned());
                    continue;
                }
            }
            let mut first = pb::RevocationDelta::clone(delta);
            // Replicas cut deltas where their catch-ups fell, so a node that moved here
            // may hold a version inside this one's span: what it adds from before that
            // version the node holds already (adding is idempotent), and the delta must
            // start at the node's version for it to apply it.
            if let Some(sent) = self.sent.and_then(|v| u64::try_from(v).ok())
                && first.from_version < sent
            {
                first.from_version = sent;
            }
            message = Some(first);
        }
        if let Some(m) = message {
            self.send_delta(m).await?;
        }
        Ok(())
    }

    async fn send_delta(&mut self, delta: pb::RevocationDelta) -> Result<(), Stop> {
        let version = i64::try_from(delta.version).unwrap_or(i64::MAX);
        self.metrics.delta_sent();
        self.send(pb::revocation_update::Update::Delta(delta))
            .await?;
        self.sent = Some(version);
        Ok(())
    }

    async fn send_snapshot(&mut self, full: FullSet) -> Result<(), Stop> {
        let version = full.version;
        let pages = snapshot_pages(
            &self.trust_domain,
            version,
            full,
            MAX_MESSAGE_BYTES - ENVELOPE,
        );
        for page in pages {
            self.send(pb::revocation_update::Update::Snapshot(page))
                .await?;
        }
        self.sent = Some(version);
        Ok(())
    }

    async fn heartbeat(&mut self) -> Result<(), Stop> {
        self.check_node().await?;
        // Behind (a version change this stream slept through): catch up instead.
        if self.sent != Some(self.feed.version()) {
            return self.catch_up().await;
        }
        let version = u64::try_from(self.sent.unwrap_or(0)).unwrap_or(0);
        self.send(pb::revocation_update::Update::Heartbeat(
            pb::RevocationHeartbeat { version },
        ))
        .await
    }

    async fn send(&self, update: pb::revocation_update::Update) -> Result<(), Stop> {
        let message = pb::RevocationUpdate {
            feed_id: self.feed.feed_id().to_owned(),
            update: Some(update),
            current_as_of_unix_ms: self.feed.current_as_of(),
        };
        self.metrics.feed_bytes(message.encoded_len());
        self.tx.send(Ok(message)).await.map_err(|_| Stop)
    }
}

/// `full` as snapshot pages of at most `max_bytes` encoded each (unless one entry alone
/// is larger), all of `version`, all but the last with `more`.
fn snapshot_pages(
    td: &TrustDomain,
    version: i64,
    full: FullSet,
    max_bytes: usize,
) -> Vec<pb::RevocationSnapshot> {
    let version = u64::try_from(version).unwrap_or(0);
    let empty = || pb::RevocationSnapshot {
        version,
        trust_domain: td.to_string(),
        ..Default::default()
    };
    let mut pages = Vec::new();
    let mut page = empty();
    let mut len = page.encoded_len();
    // Each entry costs its length, a tag and a length prefix (at most 1 + 3 bytes here).
    for task in full.tasks {
        let cost = task.encoded_len() + 4;
        if !is_empty(&page) && len + cost > max_bytes {
            page.more = true;
            pages.push(std::mem::replace(&mut page, empty()));
            len = page.encoded_len();
        }
        len += cost;
        page.revoked.push(task);
    }
    for ca in full.node_cas {
        let cost = ca.encoded_len() + 4;
        if !is_empty(&page) && len + cost > max_bytes {
            page.more = true;
            pages.push(std::mem::replace(&mut page, empty()));
            len = page.encoded_len();
        }
        len += cost;
        page.revoked_node_cas.push(ca);
    }
    pages.push(page);
    pages
}

fn is_empty(page: &pb::RevocationSnapshot) -> bool {
    page.revoked.is_empty() && page.revoked_node_cas.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(tasks: usize, cas: usize) -> FullSet {
        FullSet {
            version: 7,
            tasks: (0..tasks)
                .map(|i| pb::RevokedTask {
                    task_id: format!("{i:026}"),
                    spiffe_id: format!("spiffe://acme.corp/client/c/task/{i:026}"),
                    serials: vec!["0a".repeat(16)],
                    reason: "ended".into(),
                    revoked_at_unix_ms: 1_700_000_000_000,
                    until_unix: 1_700_000_300,
                    node: "worker-1".into(),
                })
                .collect(),
            node_cas: (0..cas)
                .map(|i| pb::RevokedNodeCa {
                    node: format!("n{i}"),
                    serial: format!("{i:040x}"),
                    revoked_at_unix_ms: 1,
                    until_unix: 2,
                })
                .collect(),
        }
    }

    #[test]
    fn a_large_snapshot_is_paged_under_the_bound_and_loses_nothing() {
        let td: TrustDomain = "acme.corp".parse().unwrap();
        let pages = snapshot_pages(&td, 7, full(2000, 50), 16 * 1024);
        assert!(pages.len() > 5, "{} pages", pages.len());
        let mut tasks = 0;
        let mut cas = 0;
        for (i, page) in pages.iter().enumerate() {
            assert!(
                page.encoded_len() <= 16 * 1024,
                "page {i}: {}",
                page.encoded_len()
            );
            assert_eq!(page.version, 7);
            assert_eq!(page.more, i + 1 < pages.len(), "only the last page ends it");
            tasks += page.revoked.len();
            cas += page.revoked_node_cas.len();
        }
        assert_eq!((tasks, cas), (2000, 50));
    }

    #[test]
    fn an_empty_set_is_one_empty_snapshot() {
        let td: TrustDomain = "acme.corp".parse().unwrap();
        let pages = snapshot_pages(&td, 7, full(0, 0), MAX_MESSAGE_BYTES);
        assert_eq!(pages.len(), 1);
        assert!(!pages[0].more && is_empty(&pages[0]) && pages[0].trust_domain == "acme.corp");
    }
}
