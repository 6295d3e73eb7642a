//! `Sync`: a node's stream of the registrations. A snapshot (or the changes since the
//! node's version, when the log still holds them), then every change this replica
//! applies, and a heartbeat whenever the stream has been quiet for the interval.
//!
//! Each stream follows the replica's broadcast ([`Replica::subscribe`]), so a change costs
//! no query per node; a stream that falls behind the broadcast (a slow node) starts over
//! from the replica's copy with a snapshot, and never holds back the others. Messages are
//! kept under [`MAX_MESSAGE_BYTES`]: a large snapshot goes out as several `Snapshot`
//! messages of one version, all but the last marked `more`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tessera_identity::{NodeId, TrustDomain};
use tessera_proto::tessera::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::change::Change;
use crate::wire::{consent_to_proto, entry_to_proto};
use crate::{
    MAX_CHANGES_PAGE, Node, NodeJwtKeys, NodeStatus, Replica, ReplicaState, ReplicaUpdate,
    ServerStoreError,
};

/// Largest message a stream sends (encoded), well under gRPC's common 4 MiB default.
pub(crate) const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// How long a stream waits for this replica to reach a node's version that is ahead of it.
const AHEAD_WAIT: Duration = Duration::from_secs(5);

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
    open: crate::metrics::SyncStreamGuard,
) -> SyncStream {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let producer = Producer {
        replica,
        trust_domain,
        node,
        tx,
        sent: since,
        _open: open,
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
    _open: crate::metrics::SyncStreamGuard,
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
        let mut state = self.replica.state();
        if self.sent > state.version {
            // The node was served by a replica further along: let this one catch up
            // rather than move the node back. Still behind after that, the node's
            // version is not the database's (restored from a backup): a snapshot.
            state = tokio::time::timeout(AHEAD_WAIT, self.replica.wait_for_version(self.sent))
                .await
                .unwrap_or_else(|_| self.replica.state());
        }
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
        for message in snapshot_messages(&self.trust_domain, state, MAX_MESSAGE_BYTES) {
            self.send(message).await?;
        }
        self.sent = state.version;
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
        self.send_paged(fresh).await?;
        self.sent = last;
        Ok(())
    }

    async fn send_paged(&self, changes: Vec<pb::Change>) -> Result<(), Stop> {
        for page in pages(changes, MAX_MESSAGE_BYTES) {
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

/// The messages of a snapshot of `state`: `Snapshot`s of the same version, each at most
/// `max_bytes` encoded (unless one record alone is larger), all but the last with `more`.
fn snapshot_messages(
    td: &TrustDomain,
    state: &ReplicaState,
    max_bytes: usize,
) -> Vec<pb::sync_message::Message> {
    let puts = state
        .entries
        .values()
        .map(|e| pb::change::Change::EntryPut(entry_to_proto(td, e.clone())))
        .chain(
            state
                .consents
                .values()
                .map(|c| pb::change::Change::ConsentPut(consent_to_proto(c.clone()))),
        )
        .chain(
            state
                .nodes
                .values()
                .map(|n| pb::change::Change::NodePut(node_to_proto(n))),
        )
        .chain(
            state
                .jwt_keys
                .values()
                .map(|k| pb::change::Change::JwtKeysPut(jwt_keys_to_proto(k))),
        );
    let empty = || pb::Snapshot {
        version: state.version,
        ..Default::default()
    };
    let mut pages = Vec::new();
    let mut page = empty();
    for put in puts {
        if !is_empty(&page) && page.encoded_len() + put_len(&put) > max_bytes {
            page.more = true;
            pages.push(std::mem::replace(&mut page, empty()));
        }
        match put {
            pb::change::Change::EntryPut(e) => page.entries.push(e),
            pb::change::Change::ConsentPut(c) => page.consents.push(c),
            pb::change::Change::NodePut(n) => page.nodes.push(n),
            pb::change::Change::JwtKeysPut(k) => page.jwt_keys.push(k),
            pb::change::Change::EntryDeleted(_) => {}
        }
    }
    pages.push(page);
    pages
        .into_iter()
        .map(pb::sync_message::Message::Snapshot)
        .collect()
}

/// `changes` in `Changes` messages of at most `max_bytes` encoded (unless one change
/// alone is larger), each naming its last change's version.
fn pages(changes: Vec<pb::Change>, max_bytes: usize) -> impl Iterator<Item = pb::Changes> {
    let mut pages = Vec::new();
    let mut page = pb::Changes::default();
    for change in changes {
        let len = change.encoded_len() + 8;
        if !page.changes.is_empty() && page.encoded_len() + len > max_bytes {
            pages.push(std::mem::take(&mut page));
        }
        page.version = change.version;
        page.changes.push(change);
    }
    if !page.changes.is_empty() {
        pages.push(page);
    }
    pages.into_iter()
}

fn is_empty(s: &pb::Snapshot) -> bool {
    s.entries.is_empty() && s.consents.is_empty() && s.nodes.is_empty() && s.jwt_keys.is_empty()
}

fn put_len(put: &pb::change::Change) -> usize {
    8 + match put {
        pb::change::Change::EntryPut(e) => e.encoded_len(),
        pb::change::Change::ConsentPut(c) => c.encoded_len(),
        pb::change::Change::NodePut(n) => n.encoded_len(),
        pb::change::Change::JwtKeysPut(k) => k.encoded_len(),
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
        // A node without keys (withdrawn, evicted) is an empty set: agents drop its keys.
        Change::JwtKeys {
            version,
            node,
            keys,
        } => (
            *version,
            pb::change::Change::JwtKeysPut(match keys {
                Some(k) => jwt_keys_to_proto(k),
                None => pb::NodeJwtKeys {
                    node: node.clone(),
                    keys: Vec::new(),
                },
            }),
        ),
    };
    pb::Change {
        version,
        change: Some(change),
    }
}

/// A node's JWT keys as `tessera.v1` sends them.
fn jwt_keys_to_proto(k: &NodeJwtKeys) -> pb::NodeJwtKeys {
    pb::NodeJwtKeys {
        node: k.node.clone(),
        keys: k
            .keys
            .iter()
            .map(|key| pb::JwtSigningKey {
                kid: key.kid.clone(),
                x: key.x.clone(),
                y: key.y.clone(),
                not_after_unix: key.not_after,
            })
            .collect(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(entries: usize) -> ReplicaState {
        let mut state = ReplicaState {
            version: 42,
            ..Default::default()
        };
        for i in 0..entries {
            let id = format!("{i:026}");
            state.entries.insert(
                id.clone(),
                tessera_store::Entry {
                    id,
                    kind: tessera_store::EntryKind::Client,
                    client: format!("client-{i}"),
                    selectors: vec![
                        format!("unix:uid:{i}"),
                        format!("unix:sha256:{}", "a".repeat(64)),
                    ],
                    svid_ttl_secs: None,
                    created_at: 1,
                },
            );
        }
        state
    }

    #[test]
    fn a_large_snapshot_is_paged_under_the_bound_and_loses_nothing() {
        let td: TrustDomain = "acme.corp".parse().unwrap();
        let state = state(500);
        let messages = snapshot_messages(&td, &state, 4096);
        assert!(messages.len() > 2, "{} messages", messages.len());
        let mut ids = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            let len = pb::SyncMessage {
                message: Some(message.clone()),
            }
            .encoded_len();
            assert!(len <= 4096 + 16, "message {i} is {len} bytes");
            let pb::sync_message::Message::Snapshot(s) = message else {
                panic!("message {i} is not a snapshot page");
            };
            assert_eq!(s.version, 42);
            assert_eq!(s.more, i + 1 < messages.len(), "only the last page ends it");
            ids.extend(s.entries.iter().map(|e| e.id.clone()));
        }
        assert_eq!(ids, state.entries.keys().cloned().collect::<Vec<_>>());
    }

    #[test]
    fn a_small_snapshot_is_one_message() {
        let td: TrustDomain = "acme.corp".parse().unwrap();
        let messages = snapshot_messages(&td, &state(3), MAX_MESSAGE_BYTES);
        assert_eq!(messages.len(), 1);
        let messages = snapshot_messages(&td, &state(0), MAX_MESSAGE_BYTES);
        assert!(
            matches!(&messages[..], [pb::sync_message::Message::Snapshot(s)] if s.version == 42 && s.entries.is_empty())
        );
    }
}
