//! `Sync`: a node's stream of the registrations. A snapshot (or the changes since the
//! node's version, when the log still holds them), then every change this replica
//! applies, and a heartbeat whenever the stream has been quiet for the interval.
//!
//! Each stream follows the replica's broadcast ([`Replica::subscribe`]), so a change costs
//! no query per node; a stream that falls behind the broadcast (a slow node) starts over
//! from the replica's copy with a snapshot, and never holds back the others. Messages are
//! kept under [`MAX_MESSAGE_BYTES`]: a large snapshot goes out as a `Snapshot` with the
//! first records, then `Changes` at the snapshot's version carrying the rest as puts.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tessera_identity::{NodeId, TrustDomain};
use tessera_proto::tessera::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::admin::{consent_to_proto, entry_to_proto};
use crate::change::Change;
use crate::{
    MAX_CHANGES_PAGE, Node, NodeStatus, Replica, ReplicaState, ReplicaUpdate, ServerStoreError,
};

/// Largest message a stream sends (encoded), well under gRPC's common 4 MiB default.
pub(crate) const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Messages buffered per stream; a node slower than this only slows its own producer.
const STREAM_BUFFER: usize = 8;

/// The stream `Sync` answers with.
pub(crate) type SyncStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SyncMessage, Status>> + Send>>;

/// Starts the producer of one node's stream.
pub(crate) fn start(
    replica: Arc<Replica>,
    trust_domain: TrustDomain,
    node: NodeId,
    since: i64,
    heartbeat: Duration,
) -> SyncStream {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let producer = Producer {
        replica,
        trust_domain,
        node,
        tx,
        sent: since,
    };
    tokio::spawn(producer.run(heartbeat));
    Box::pin(ReceiverStream::new(rx))
}

struct Producer {
    replica: Arc<Replica>,
    trust_domain: TrustDomain,
    node: NodeId,
    tx: mpsc::Sender<Result<pb::SyncMessage, Status>>,
    /// The version the node holds once it has applied what was sent.
    sent: i64,
}

/// Why a producer stops: the node went away, or it was evicted (told so).
struct Stop;

impl Producer {
    async fn run(mut self, heartbeat: Duration) {
        // Subscribe before reading the copy: no update falls between the two.
        let mut updates = self.replica.subscribe();
        if self.catch_up().await.is_err() {
            return;
        }
        loop {
            let update = tokio::select! {
                () = self.tx.closed() => return,
                update = tokio::time::timeout(heartbeat, updates.recv()) => update,
            };
            let result = match update {
                Err(_) => self.heartbeat().await,
                Ok(Ok(ReplicaUpdate::Changes { from, changes, .. })) if from <= self.sent => {
                    self.send_changes(&changes).await
                }
                // A gap (this stream missed an update), a reload, or a lag: start over
                // from the replica's copy, by changes when the log has them.
                Ok(Ok(_) | Err(broadcast::error::RecvError::Lagged(_))) => self.catch_up().await,
                Ok(Err(broadcast::error::RecvError::Closed)) => {
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
    async fn check_node(&self, state: &ReplicaState) -> Result<(), Stop> {
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

    /// Brings the node from `sent` to the replica's version: nothing if it is there,
    /// the changes in between if the log still has them, else a snapshot.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        let state = self.replica.state();
        self.check_node(&state).await?;
        if self.sent == state.version {
            return self.heartbeat().await;
        }
        if self.sent > 0 && self.sent < state.version {
            match self.changes_from_log(state.version).await {
                Ok(()) => return Ok(()),
                Err(Ok(())) => {}
                Err(Err(stop)) => return Err(stop),
            }
        }
        self.snapshot(&state).await
    }

    /// The log's changes from `sent` up to at least `until`. `Err(Ok(()))` when a
    /// snapshot is needed instead (pruned log, or PostgreSQL unreachable: the replica's
    /// copy answers then).
    async fn changes_from_log(&mut self, until: i64) -> Result<(), Result<(), Stop>> {
        while self.sent < until {
            match self
                .replica
                .store()
                .changes_since(self.sent, MAX_CHANGES_PAGE)
                .await
            {
                Ok(batch) if batch.changes.is_empty() => return Ok(()),
                Ok(batch) => self.send_changes(&batch.changes).await.map_err(Err)?,
                Err(
                    ServerStoreError::SnapshotRequired { .. } | ServerStoreError::Unavailable(_),
                ) => {
                    return Err(Ok(()));
                }
                Err(error) => {
                    tracing::warn!(%error, node = %self.node.name, "reading the change log for a sync stream failed");
                    return Err(Ok(()));
                }
            }
        }
        Ok(())
    }

    async fn snapshot(&mut self, state: &ReplicaState) -> Result<(), Stop> {
        let version = state.version;
        let mut puts: Vec<pb::change::Change> = Vec::new();
        puts.extend(
            state.entries.values().map(|e| {
                pb::change::Change::EntryPut(entry_to_proto(&self.trust_domain, e.clone()))
            }),
        );
        puts.extend(
            state
                .consents
                .values()
                .map(|c| pb::change::Change::ConsentPut(consent_to_proto(c.clone()))),
        );
        puts.extend(
            state
                .nodes
                .values()
                .map(|n| pb::change::Change::NodePut(node_to_proto(n))),
        );
        let mut snapshot = pb::Snapshot {
            version,
            ..Default::default()
        };
        let mut rest = puts.into_iter().peekable();
        while let Some(put) = rest.peek() {
            if snapshot.encoded_len() + put_len(put) > MAX_MESSAGE_BYTES && !is_empty(&snapshot) {
                break;
            }
            match rest.next().expect("peeked") {
                pb::change::Change::EntryPut(e) => snapshot.entries.push(e),
                pb::change::Change::ConsentPut(c) => snapshot.consents.push(c),
                pb::change::Change::NodePut(n) => snapshot.nodes.push(n),
                pb::change::Change::EntryDeleted(_) => {}
            }
        }
        self.send(pb::sync_message::Message::Snapshot(snapshot))
            .await?;
        let rest: Vec<pb::Change> = rest
            .map(|change| pb::Change {
                version,
                change: Some(change),
            })
            .collect();
        self.send_paged(version, rest).await?;
        self.sent = version;
        Ok(())
    }

    /// Sends the changes after `sent`, in pages under the size bound.
    async fn send_changes(&mut self, changes: &[Change]) -> Result<(), Stop> {
        let fresh: Vec<pb::Change> = changes
            .iter()
            .filter(|c| c.version() > self.sent)
            .map(|c| change_to_proto(&self.trust_domain, c))
            .collect();
        let Some(last) = fresh.last().map(|c| c.version) else {
            return Ok(());
        };
        // An eviction of this node ends its stream: check the copy as it now stands.
        self.check_node(&self.replica.state()).await?;
        self.send_paged(last, fresh).await?;
        self.sent = last;
        Ok(())
    }

    async fn send_paged(&self, last: i64, changes: Vec<pb::Change>) -> Result<(), Stop> {
        let mut page = pb::Changes::default();
        for change in changes {
            let len = change.encoded_len() + 8;
            if !page.changes.is_empty() && page.encoded_len() + len > MAX_MESSAGE_BYTES {
                page.version = page.changes.last().map_or(last, |c| c.version);
                self.send(pb::sync_message::Message::Changes(std::mem::take(
                    &mut page,
                )))
                .await?;
            }
            page.changes.push(change);
        }
        if !page.changes.is_empty() {
            page.version = page.changes.last().map_or(last, |c| c.version);
            self.send(pb::sync_message::Message::Changes(page)).await?;
        }
        Ok(())
    }

    async fn heartbeat(&mut self) -> Result<(), Stop> {
        self.check_node(&self.replica.state()).await?;
        self.send(pb::sync_message::Message::Heartbeat(pb::Heartbeat {
            version: self.sent,
            server_time_unix_ms: crate::clock::unix_millis(),
        }))
        .await
    }

    async fn send(&self, message: pb::sync_message::Message) -> Result<(), Stop> {
        self.tx
            .send(Ok(pb::SyncMessage {
                message: Some(message),
            }))
            .await
            .map_err(|_| Stop)
    }
}

fn is_empty(s: &pb::Snapshot) -> bool {
    s.entries.is_empty() && s.consents.is_empty() && s.nodes.is_empty()
}

fn put_len(put: &pb::change::Change) -> usize {
    8 + match put {
        pb::change::Change::EntryPut(e) => e.encoded_len(),
        pb::change::Change::ConsentPut(c) => c.encoded_len(),
        pb::change::Change::NodePut(n) => n.encoded_len(),
        pb::change::Change::EntryDeleted(id) => id.len(),
    }
}

/// A change as the stream sends it. A record gone from the database (only entries are
/// ever deleted) is a deletion.
fn change_to_proto(td: &TrustDomain, change: &Change) -> pb::Change {
    let (version, change) = match change {
        Change::Entry { version, id, entry } => (
            *version,
            match entry {
                Some(e) => pb::change::Change::EntryPut(entry_to_proto(td, e.clone())),
                None => pb::change::Change::EntryDeleted(id.clone()),
            },
        ),
        Change::Consent {
            version, consent, ..
        } => (
            *version,
            match consent {
                Some(c) => pb::change::Change::ConsentPut(consent_to_proto(c.clone())),
                // Consents are withdrawn, never deleted; nothing to say.
                None => {
                    return pb::Change {
                        version: *version,
                        change: None,
                    };
                }
            },
        ),
        Change::Node { version, node, .. } => (
            *version,
            match node {
                Some(n) => pb::change::Change::NodePut(node_to_proto(n)),
                None => {
                    return pb::Change {
                        version: *version,
                        change: None,
                    };
                }
            },
        ),
    };
    pb::Change {
        version,
        change: Some(change),
    }
}

/// A node as `tessera.v1` sends it.
pub(crate) fn node_to_proto(n: &Node) -> pb::NodeRecord {
    pb::NodeRecord {
        name: n.name.clone(),
        status: match n.status {
            NodeStatus::Active => "active",
            NodeStatus::Evicted => "evicted",
        }
        .to_owned(),
        ca_serial: n.ca_serial.clone().unwrap_or_default(),
        ca_not_after_unix: n.ca_not_after.unwrap_or(0),
        evicted_at_unix: n.evicted_at.unwrap_or(0),
    }
}
