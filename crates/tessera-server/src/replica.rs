//! One server replica's in-memory copy of the entries, consents and nodes.
//!
//! A replica reads from memory only, so it keeps answering reads (what agents sync, what
//! the admin lists) while PostgreSQL is down, and its writes fail with
//! [`crate::Unavailable`] meanwhile. The copy is kept current by a sync task:
//!
//! 1. `LISTEN tessera_changes` on a connection of its own;
//! 2. then catch up with [`PgStore::changes_since`] from the version held (a snapshot if
//!    the log was pruned past it). Listening first means a change committed during the
//!    catch-up is either in it or notified after it: none falls in between;
//! 3. then, on each notification naming a version past the one held, catch up again; and
//!    every `poll_interval` even without one, so a notification lost in transit costs at
//!    most that long;
//! 4. a lost connection (PostgreSQL restarted, a network cut) goes back to 1, with
//!    backoff, for as long as it takes. Changes committed meanwhile by other replicas
//!    are in the log and arrive with the catch-up.
//!
//! Each state published is exactly the database's state at its `version` (see
//! `change.rs`), so a reader never sees half of a change.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tessera_store::{Consent, Entry};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::change::{Change, MAX_CHANGES_PAGE};
use crate::node::Node;
use crate::node_jwt_keys::NodeJwtKeys;
use crate::revocation_feed::RevocationFeed;
use crate::version::CHANNEL;
use crate::{PgStore, ServerStoreError};

/// How a [`Replica`] keeps its copy current.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReplicaOptions {
    /// Catch up this often even without a notification (a lost one costs at most this).
    pub poll_interval: Duration,
    /// First wait before reconnecting after a failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl Default for ReplicaOptions {
    fn default() -> ReplicaOptions {
        ReplicaOptions {
            poll_interval: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl ReplicaOptions {
    /// These options with `poll_interval` set.
    pub fn poll_interval(mut self, interval: Duration) -> ReplicaOptions {
        self.poll_interval = interval;
        self
    }

    /// These options with `max_backoff` set.
    pub fn max_backoff(mut self, backoff: Duration) -> ReplicaOptions {
        self.max_backoff = backoff;
        self
    }
}

/// The database's entries, consents and nodes as of `version`.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ReplicaState {
    /// The version this state reflects.
    pub version: i64,
    /// Entries by id.
    pub entries: BTreeMap<String, Entry>,
    /// Consents by id, withdrawn ones included.
    pub consents: BTreeMap<String, Consent>,
    /// Nodes by name, evicted ones included.
    pub nodes: BTreeMap<String, Node>,
    /// Nodes' published JWT signing keys, by node name (nodes with none left out).
    pub jwt_keys: BTreeMap<String, NodeJwtKeys>,
}

impl ReplicaState {
    fn apply(&mut self, change: Change) {
        match change {
            Change::Entry { id, entry, .. } => upsert(&mut self.entries, id, entry),
            Change::Consent { id, consent, .. } => upsert(&mut self.consents, id, consent),
            Change::Node { name, node, .. } => upsert(&mut self.nodes, name, node),
            Change::JwtKeys { node, keys, .. } => upsert(&mut self.jwt_keys, node, keys),
        }
    }
}

/// What moved a replica's copy, for whoever serves it onward (the agents' sync streams):
/// a follower applies these instead of asking PostgreSQL, so a change costs one query per
/// replica however many agents follow it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ReplicaUpdate {
    /// These changes moved the copy from version `from` to version `to`.
    Changes {
        /// The version before.
        from: i64,
        /// The version after.
        to: i64,
        /// The changes, each record as it is at `to`.
        changes: Arc<[Change]>,
    },
    /// The copy was replaced by a snapshot at `version` (the log was pruned past it, or
    /// the database was restored to an older version): followers start over from
    /// [`Replica::state`].
    Reloaded {
        /// The snapshot's version.
        version: i64,
    },
}

/// Updates a subscriber may fall behind by before it gets `Lagged` (and must start over
/// from [`Replica::state`]).
const UPDATES_BUFFER: usize = 1024;

fn upsert<T>(map: &mut BTreeMap<String, T>, key: String, value: Option<T>) {
    match value {
        Some(value) => map.insert(key, value),
        None => map.remove(&key),
    };
}

/// A server replica's in-memory copy, and the task keeping it current. Dropping it stops
/// the task.
#[derive(Debug)]
pub struct Replica {
    store: PgStore,
    revocations: Arc<RevocationFeed>,
    state: watch::Receiver<Arc<ReplicaState>>,
    updates: broadcast::Sender<ReplicaUpdate>,
    listening: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

// === impl Replica ===

impl Replica {
    /// Loads a snapshot (so this fails, [`crate::Unavailable`], if PostgreSQL cannot be
    /// reached: a replica with nothing to serve should not start), then keeps it current
    /// in a task of its own; the same for the revocation feed's copy
    /// ([`Replica::revocations`]).
    pub async fn start(
        store: PgStore,
        options: ReplicaOptions,
    ) -> Result<Replica, ServerStoreError> {
        let revocations = Arc::new(RevocationFeed::start(store.clone(), &options).await?);
        let snapshot = store.snapshot().await?;
        let initial = ReplicaState {
            version: snapshot.version,
            entries: by_key(snapshot.entries, |e| e.id.clone()),
            consents: by_key(snapshot.consents, |c| c.id.clone()),
            nodes: by_key(snapshot.nodes, |n| n.name.clone()),
            jwt_keys: by_key(snapshot.jwt_keys, |k| k.node.clone()),
        };
        let (state_tx, state) = watch::channel(Arc::new(initial));
        let (updates, _) = broadcast::channel(UPDATES_BUFFER);
        let (listening_tx, listening) = watch::channel(false);
        let (stop, stopped) = watch::channel(false);
        // The listener holds its connection for as long as it listens; a pool of one of
        // its own keeps it out of the request pool's count.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.max_backoff.max(Duration::from_secs(1)))
            .connect_lazy_with(store.connect.clone());
        let sync = Sync {
            store: store.clone(),
            listen_pool,
            state: state_tx,
            updates: updates.clone(),
            listening: listening_tx,
            options,
            stopped,
        };
        let task = tokio::spawn(sync.run());
        Ok(Replica {
            store,
            revocations,
            state,
            updates,
            listening,
            stop,
            task: std::sync::Mutex::new(Some(task)),
        })
    }

    /// The current copy. Never waits on PostgreSQL.
    pub fn state(&self) -> Arc<ReplicaState> {
        Arc::clone(&self.state.borrow())
    }

    /// A receiver that sees every new copy.
    pub fn watch(&self) -> watch::Receiver<Arc<ReplicaState>> {
        self.state.clone()
    }

    /// Every update from now on. To follow the copy: subscribe, *then* take
    /// [`Replica::state`] (version `v`); skip updates with `to <= v`; apply the others,
    /// each of which starts where the one before ended (`from` = the previous `to`); on a
    /// [`ReplicaUpdate::Reloaded`], or on `Lagged`, take [`Replica::state`] again.
    pub fn subscribe(&self) -> broadcast::Receiver<ReplicaUpdate> {
        self.updates.subscribe()
    }

    /// Waits until the copy has reached `version` (a write's [`crate::Written::version`]:
    /// read your own writes), and returns it. Waits for as long as it takes; put a
    /// timeout around it.
    pub async fn wait_for_version(&self, version: i64) -> Arc<ReplicaState> {
        let mut state = self.state.clone();
        let reached = state.wait_for(|s| s.version >= version).await;
        match reached {
            Ok(state) => Arc::clone(&state),
            // The sync task is gone (the replica is stopping): what it last had.
            Err(_) => self.state(),
        }
    }

    /// Whether the replica is listening for changes now (so its copy is current within a
    /// notification's delay), as opposed to reconnecting. For readiness.
    pub fn is_listening(&self) -> bool {
        *self.listening.borrow()
    }

    /// The store this replica writes through.
    pub fn store(&self) -> &PgStore {
        &self.store
    }

    /// This replica's copy of the cluster's revoked set.
    pub fn revocations(&self) -> &Arc<RevocationFeed> {
        &self.revocations
    }

    /// Stops the sync tasks and waits for them.
    pub async fn shutdown(&self) {
        self.revocations.shutdown().await;
        let _ = self.stop.send(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn by_key<T>(items: Vec<T>, key: impl Fn(&T) -> String) -> BTreeMap<String, T> {
    items.into_iter().map(|item| (key(&item), item)).collect()
}

/// The sync task's state.
struct Sync {
    store: PgStore,
    listen_pool: PgPool,
    state: watch::Sender<Arc<ReplicaState>>,
    updates: broadcast::Sender<ReplicaUpdate>,
    listening: watch::Sender<bool>,
    options: ReplicaOptions,
    stopped: watch::Receiver<bool>,
}

/// Why the listening loop ended.
enum Ended {
    Stopped,
    Lost(String),
}

impl Sync {
    async fn run(mut self) {
        let mut backoff = self.options.min_backoff;
        loop {
            if *self.stopped.borrow() {
                return;
            }
            match self.listen().await {
                Ended::Stopped => return,
                Ended::Lost(reason) => {
                    let was_listening = self.listening.send_replace(false);
                    if was_listening {
                        tracing::warn!(%reason, "lost the change stream; reconnecting");
                        backoff = self.options.min_backoff;
                    } else {
                        tracing::debug!(%reason, ?backoff, "change stream still unavailable");
                    }
                }
            }
            tokio::select! {
                _ = self.stopped.changed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.options.max_backoff);
        }
    }

    /// Subscribes, catches up, then follows notifications until the connection is lost
    /// or the replica stops.
    async fn listen(&mut self) -> Ended {
        let mut listener = match PgListener::connect_with(&self.listen_pool).await {
            Ok(listener) => listener,
            Err(error) => return Ended::Lost(error.to_string()),
        };
        // Reconnection is this loop's (with a catch-up after it), not the listener's.
        listener.eager_reconnect(false);
        listener.ignore_pool_close_event(true);
        if let Err(error) = listener.listen(CHANNEL).await {
            return Ended::Lost(error.to_string());
        }
        if let Err(error) = self.catch_up().await {
            return Ended::Lost(error.to_string());
        }
        if !self.listening.send_replace(true) {
            tracing::info!(version = self.state.borrow().version, "following changes");
        }
        loop {
            // A notification only says "something up to v committed"; the log says what.
            let caught_up = tokio::select! {
                _ = self.stopped.changed() => return Ended::Stopped,
                received = listener.try_recv() => match received {
                    Ok(Some(notification)) => {
                        let mut newest = notification.payload().parse::<i64>().unwrap_or(i64::MAX);
                        while let Some(more) = listener.next_buffered() {
                            newest = newest.max(more.payload().parse().unwrap_or(i64::MAX));
                        }
                        if newest <= self.state.borrow().version {
                            continue;
                        }
                        self.catch_up().await
                    }
                    Ok(None) => return Ended::Lost("connection closed".to_owned()),
                    Err(error) => return Ended::Lost(error.to_string()),
                },
                () = tokio::time::sleep(self.options.poll_interval) => self.catch_up().await,
            };
            if let Err(error) = caught_up {
                return Ended::Lost(error.to_string());
            }
        }
    }

    /// Applies every change after the version held, or a snapshot if the log no longer
    /// has them.
    async fn catch_up(&self) -> Result<(), ServerStoreError> {
        loop {
            let held = Arc::clone(&self.state.borrow());
            match self
                .store
                .changes_since(held.version, MAX_CHANGES_PAGE)
                .await
            {
                Ok(batch) => {
                    if batch.version != held.version {
                        let mut next = ReplicaState::clone(&held);
                        for change in &batch.changes {
                            next.apply(change.clone());
                        }
                        next.version = batch.version;
                        // State first: a follower that sees the update can read the
                        // state it leads to.
                        self.state.send_replace(Arc::new(next));
                        let _ = self.updates.send(ReplicaUpdate::Changes {
                            from: held.version,
                            to: batch.version,
                            changes: batch.changes.into(),
                        });
                    }
                    if !batch.more {
                        return Ok(());
                    }
                }
                Err(ServerStoreError::SnapshotRequired {
                    since,
                    oldest,
                    current,
                }) => {
                    tracing::info!(
                        since,
                        oldest,
                        current,
                        "change log pruned past this replica; reloading"
                    );
                    let snapshot = self.store.snapshot().await?;
                    self.state.send_replace(Arc::new(ReplicaState {
                        version: snapshot.version,
                        entries: by_key(snapshot.entries, |e| e.id.clone()),
                        consents: by_key(snapshot.consents, |c| c.id.clone()),
                        nodes: by_key(snapshot.nodes, |n| n.name.clone()),
                        jwt_keys: by_key(snapshot.jwt_keys, |k| k.node.clone()),
                    }));
                    let _ = self.updates.send(ReplicaUpdate::Reloaded {
                        version: snapshot.version,
                    });
                    return Ok(());
                }
                Err(error) => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests;
