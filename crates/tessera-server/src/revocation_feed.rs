//! One replica's in-memory copy of the cluster's revoked set, and the task keeping it
//! current: what `Node.FollowRevocations` streams serve from, so a revocation costs one
//! query per replica however many agents follow it.
//!
//! The copy follows PostgreSQL as the registrations' does (`replica.rs`): `LISTEN
//! tessera_revocations` on a connection of its own, then catch up with
//! [`PgStore::revocations_since`] from the version held; again on each notification past
//! it and every `poll_interval` without one; a lost connection starts over with backoff.
//!
//! It holds the live set (entries are dropped once `until` + [`EXPIRY_GRACE_SECS`] has
//! passed) and a ring of the most recent per-version deltas, bounded by
//! [`MAX_RING_DELTAS`] and [`MAX_RING_BYTES`], whichever is reached first: a follower whose
//! version is still in the ring gets the deltas after it, any other a snapshot.
//!
//! Freshness: [`RevocationFeed::current_as_of`] is how far this replica vouches that its
//! copy holds every revocation of the cluster. While it listens and its last catch-up
//! succeeded recently, that is now; once PostgreSQL or the LISTEN connection is lost it
//! stops advancing (never more than [`VOUCH_WINDOW`] past the start of the last catch-up
//! that succeeded), so followers go stale and fail closed instead of trusting a copy that
//! may miss revocations. It never moves backwards.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prost::Message as _;
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tessera_proto::tessera::v1 as pb;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::revocation::{
    CHANNEL, EXPIRY_GRACE_SECS, RevocationDelta, RevocationSnapshot, RevokedNodeCa, RevokedTask,
};
use crate::{PgStore, ReplicaOptions, ServerStoreError};

/// Most deltas the ring keeps.
pub const MAX_RING_DELTAS: usize = 4096;
/// Most bytes (encoded) of deltas the ring keeps.
pub const MAX_RING_BYTES: usize = 16 * 1024 * 1024;

/// How often the copy catches up without a notification. Short, because each successful
/// catch-up is what lets the replica keep vouching for its copy (a query of one row
/// when nothing changed).
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How far past the start of its last successful catch-up a replica vouches while it
/// listens: a LISTEN connection that silently stopped delivering (a network cut nobody
/// has noticed yet) costs followers at most this much of freshness they were not owed.
pub const VOUCH_WINDOW: Duration = Duration::from_secs(3);

/// The copy as of `version`.
#[derive(Debug, Default)]
struct FeedState {
    version: i64,
    tasks: HashMap<String, pb::RevokedTask>,
    node_cas: HashMap<String, pb::RevokedNodeCa>,
    /// Per-version deltas, oldest first, each starting where the one before ended.
    ring: VecDeque<RingDelta>,
    ring_bytes: usize,
}

/// One delta of the ring.
#[derive(Debug)]
struct RingDelta {
    delta: Arc<pb::RevocationDelta>,
    bytes: usize,
}

/// What a follower at some version is sent next.
#[derive(Debug)]
pub(crate) enum Catch {
    /// It is at the copy's version.
    UpToDate,
    /// The deltas after its version, in order (each from the previous one's version).
    Deltas(Vec<Arc<pb::RevocationDelta>>),
    /// Its version is not in the ring: the whole set.
    Snapshot(Box<FullSet>),
}

/// The whole set at one version, for a snapshot.
#[derive(Debug)]
pub(crate) struct FullSet {
    pub(crate) version: i64,
    pub(crate) tasks: Vec<pb::RevokedTask>,
    pub(crate) node_cas: Vec<pb::RevokedNodeCa>,
}

/// State shared by the feed's owner, its sync task and the streams that follow it.
#[derive(Debug)]
struct Shared {
    feed_id: String,
    state: RwLock<FeedState>,
    version: watch::Sender<i64>,
    listening: AtomicBool,
    /// Unix ms at which the last successful catch-up began (every commit before it is in
    /// the copy).
    verified_at_ms: AtomicI64,
    /// The largest `current_as_of` handed out (so it never moves back).
    vouched_ms: AtomicI64,
}

/// A replica's revocation copy and the task keeping it current. Dropping it stops the task.
#[derive(Debug)]
pub struct RevocationFeed {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

// === impl RevocationFeed ===

impl RevocationFeed {
    /// Loads the set (fails, [`crate::Unavailable`], if PostgreSQL cannot be reached),
    /// then keeps it current in a task of its own.
    pub async fn start(
        store: PgStore,
        options: &ReplicaOptions,
    ) -> Result<RevocationFeed, ServerStoreError> {
        let started = crate::clock::unix_millis();
        let mut snapshot = store.revocation_snapshot().await?;
        let feed_id = std::mem::take(&mut snapshot.feed_id);
        let mut state = FeedState::default();
        load(&mut state, snapshot);
        let (version, _) = watch::channel(state.version);
        let shared = Arc::new(Shared {
            feed_id,
            state: RwLock::new(state),
            version,
            listening: AtomicBool::new(false),
            verified_at_ms: AtomicI64::new(started),
            vouched_ms: AtomicI64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.max_backoff.max(Duration::from_secs(1)))
            .connect_lazy_with(store.connect.clone());
        let sync = FeedSync {
            store,
            listen_pool,
            shared: Arc::clone(&shared),
            options: options.clone(),
            stopped,
        };
        let task = tokio::spawn(sync.run());
        Ok(RevocationFeed {
            shared,
            stop,
            task: std::sync::Mutex::new(Some(task)),
        })
    }

    /// The feed's id: the database's, the same on every replica.
    pub fn feed_id(&self) -> &str {
        &self.shared.feed_id
    }

    /// The version the copy holds.
    pub fn version(&self) -> i64 {
        *self.shared.version.borrow()
    }

    /// A receiver woken whenever the copy's version moves.
    pub(crate) fn watch_version(&self) -> watch::Receiver<i64> {
        self.shared.version.subscribe()
    }

    /// Waits until the copy holds `version` (bounded by the caller's timeout).
    pub async fn wait_for_version(&self, version: i64) {
        let mut rx = self.shared.version.subscribe();
        let _ = rx.wait_for(|v| *v >= version).await;
    }

    /// Revoked tasks in the copy now (expired ones may linger until the next sweep).
    pub fn revoked_tasks(&self) -> usize {
        self.read().tasks.len()
    }

    /// Whether the copy follows PostgreSQL's notifications now.
    pub fn is_listening(&self) -> bool {
        self.shared.listening.load(Ordering::Acquire)
    }

    /// Unix ms up to which this replica vouches that its copy holds every revocation of
    /// the cluster (see the module's comment). Never decreases.
    pub fn current_as_of(&self) -> i64 {
        let now = crate::clock::unix_millis();
        let verified = self.shared.verified_at_ms.load(Ordering::Acquire);
        let window = i64::try_from(VOUCH_WINDOW.as_millis()).unwrap_or(i64::MAX);
        let candidate = if self.is_listening() {
            now.min(verified.saturating_add(window))
        } else {
            verified
        };
        let previous = self
            .shared
            .vouched_ms
            .fetch_max(candidate, Ordering::AcqRel);
        previous.max(candidate)
    }

    /// What a follower holding `since` of this feed gets next.
    pub(crate) fn catch_up_from(&self, since: i64) -> Catch {
        let state = self.read();
        if since == state.version {
            return Catch::UpToDate;
        }
        let oldest = state
            .ring
            .front()
            .map_or(state.version, |d| i64_of(d.delta.from_version));
        if since >= oldest && since < state.version {
            let deltas = state
                .ring
                .iter()
                .filter(|d| i64_of(d.delta.version) > since)
                .map(|d| Arc::clone(&d.delta))
                .collect();
            return Catch::Deltas(deltas);
        }
        Catch::Snapshot(Box::new(full_set(&state)))
    }

    /// The whole set now.
    pub(crate) fn snapshot(&self) -> FullSet {
        full_set(&self.read())
    }

    /// Stops the sync task and waits for it.
    pub async fn shutdown(&self) {
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

    fn read(&self) -> std::sync::RwLockReadGuard<'_, FeedState> {
        self.shared
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for RevocationFeed {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn full_set(state: &FeedState) -> FullSet {
    let mut tasks: Vec<_> = state.tasks.values().cloned().collect();
    tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    let mut node_cas: Vec<_> = state.node_cas.values().cloned().collect();
    node_cas.sort_by(|a, b| a.serial.cmp(&b.serial));
    FullSet {
        version: state.version,
        tasks,
        node_cas,
    }
}

/// A revoked task as `tessera.v1` sends it.
pub(crate) fn task_to_proto(t: RevokedTask) -> pb::RevokedTask {
    pb::RevokedTask {
        task_id: t.task_id,
        spiffe_id: t.spiffe_id,
        serials: t.serials,
        reason: t.reason,
        revoked_at_unix_ms: t.revoked_at_ms,
        until_unix: t.until,
        node: t.node,
    }
}

/// A revoked node CA as `tessera.v1` sends it.
pub(crate) fn node_ca_to_proto(c: RevokedNodeCa) -> pb::RevokedNodeCa {
    pb::RevokedNodeCa {
        node: c.node,
        serial: c.serial,
        revoked_at_unix_ms: c.revoked_at_ms,
        until_unix: c.until,
    }
}

/// Replaces the state with a snapshot (the ring starts empty at its version).
fn load(state: &mut FeedState, snapshot: RevocationSnapshot) {
    let cut = crate::clock::unix_secs() - EXPIRY_GRACE_SECS;
    state.version = snapshot.version;
    state.tasks = snapshot
        .tasks
        .into_iter()
        .filter(|t| t.until >= cut)
        .map(|t| (t.task_id.clone(), task_to_proto(t)))
        .collect();
    state.node_cas = snapshot
        .node_cas
        .into_iter()
        .filter(|c| c.until >= cut)
        .map(|c| (c.serial.clone(), node_ca_to_proto(c)))
        .collect();
    state.ring.clear();
    state.ring_bytes = 0;
}

/// Applies the deltas after `state.version` up to `version` (contiguous: each delta
/// starts where the one before ended; the last ends at `version`).
fn apply(state: &mut FeedState, deltas: Vec<RevocationDelta>, version: i64) {
    let count = deltas.len();
    let mut from = state.version;
    let mut pending: Vec<(i64, Vec<pb::RevokedTask>, Vec<pb::RevokedNodeCa>)> = deltas
        .into_iter()
        .map(|d| {
            (
                d.version,
                d.tasks.into_iter().map(task_to_proto).collect(),
                d.node_cas.into_iter().map(node_ca_to_proto).collect(),
            )
        })
        .collect();
    if count == 0 {
        // Versions that added nothing still stored (pruned, or all repeats): an empty
        // delta keeps the chain unbroken.
        pending.push((version, Vec::new(), Vec::new()));
    }
    let last = pending.len() - 1;
    for (i, (v, tasks, node_cas)) in pending.into_iter().enumerate() {
        let to = if i == last { version } else { v };
        for t in &tasks {
            state.tasks.insert(t.task_id.clone(), t.clone());
        }
        for c in &node_cas {
            state.node_cas.insert(c.serial.clone(), c.clone());
        }
        let delta = pb::RevocationDelta {
            from_version: u64_of(from),
            version: u64_of(to),
            revoked: tasks,
            revoked_node_cas: node_cas,
        };
        let bytes = delta.encoded_len();
        state.ring.push_back(RingDelta {
            delta: Arc::new(delta),
            bytes,
        });
        state.ring_bytes += bytes;
        from = to;
    }
    while state.ring.len() > MAX_RING_DELTAS || state.ring_bytes > MAX_RING_BYTES {
        match state.ring.pop_front() {
            Some(old) => state.ring_bytes -= old.bytes,
            None => break,
        }
    }
    state.version = version;
}

/// Drops entries past `until` + grace (deltas carry no removals: every holder does this).
fn expire(state: &mut FeedState, now: i64) {
    let cut = now - EXPIRY_GRACE_SECS;
    state.tasks.retain(|_, t| t.until_unix >= cut);
    state.node_cas.retain(|_, c| c.until_unix >= cut);
}

/// The sync task.
struct FeedSync {
    store: PgStore,
    listen_pool: PgPool,
    shared: Arc<Shared>,
    options: ReplicaOptions,
    stopped: watch::Receiver<bool>,
}

impl FeedSync {
    async fn run(mut self) {
        let mut backoff = self.options.min_backoff;
        loop {
            if *self.stopped.borrow() {
                return;
            }
            let reason = match self.listen().await {
                None => return,
                Some(reason) => reason,
            };
            if self.shared.listening.swap(false, Ordering::AcqRel) {
                tracing::warn!(%reason, "lost the revocation stream; no longer vouching for it");
                backoff = self.options.min_backoff;
            } else {
                tracing::debug!(%reason, ?backoff, "revocation stream still unavailable");
            }
            tokio::select! {
                _ = self.stopped.changed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.options.max_backoff);
        }
    }

    /// Listens, catches up, follows; `None` when stopped, else why the stream was lost.
    async fn listen(&mut self) -> Option<String> {
        let mut listener = match PgListener::connect_with(&self.listen_pool).await {
            Ok(listener) => listener,
            Err(error) => return Some(error.to_string()),
        };
        listener.eager_reconnect(false);
        listener.ignore_pool_close_event(true);
        if let Err(error) = listener.listen(CHANNEL).await {
            return Some(error.to_string());
        }
        if let Err(error) = self.catch_up().await {
            return Some(error.to_string());
        }
        if !self.shared.listening.swap(true, Ordering::AcqRel) {
            tracing::info!(
                version = *self.shared.version.borrow(),
                feed_id = self.shared.feed_id,
                "following revocations"
            );
        }
        let poll = POLL_INTERVAL.min(self.options.poll_interval);
        loop {
            let caught_up = tokio::select! {
                _ = self.stopped.changed() => return None,
                received = listener.try_recv() => match received {
                    Ok(Some(notification)) => {
                        let mut newest = notification.payload().parse::<i64>().unwrap_or(i64::MAX);
                        while let Some(more) = listener.next_buffered() {
                            newest = newest.max(more.payload().parse().unwrap_or(i64::MAX));
                        }
                        if newest <= *self.shared.version.borrow() {
                            continue;
                        }
                        self.catch_up().await
                    }
                    Ok(None) => return Some("connection closed".to_owned()),
                    Err(error) => return Some(error.to_string()),
                },
                () = tokio::time::sleep(poll) => self.catch_up().await,
            };
            if let Err(error) = caught_up {
                return Some(error.to_string());
            }
        }
    }

    /// Applies every revocation after the version held (a reload if the database is
    /// behind it: restored from a backup), and drops expired entries.
    async fn catch_up(&self) -> Result<(), ServerStoreError> {
        let began = crate::clock::unix_millis();
        let held = *self.shared.version.borrow();
        let read = tokio::time::timeout(VOUCH_WINDOW, self.store.revocations_since(held))
            .await
            .map_err(|_| {
                ServerStoreError::Unavailable(crate::Unavailable::Database {
                    reason: "the revocation catch-up timed out".to_owned(),
                })
            })?;
        let version = match read {
            Ok(batch) => {
                let mut state = self.write();
                if batch.version != state.version {
                    apply(&mut state, batch.deltas, batch.version);
                }
                expire(&mut state, began / 1000);
                state.version
            }
            Err(ServerStoreError::SnapshotRequired { since, current, .. }) => {
                tracing::warn!(
                    since,
                    current,
                    "the database's revocation feed is behind this replica (restored?); reloading"
                );
                let snapshot = self.store.revocation_snapshot().await?;
                let mut state = self.write();
                load(&mut state, snapshot);
                state.version
            }
            Err(error) => return Err(error),
        };
        self.shared.version.send_if_modified(|v| {
            let moved = *v != version;
            *v = version;
            moved
        });
        self.shared
            .verified_at_ms
            .fetch_max(began, Ordering::AcqRel);
        Ok(())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, FeedState> {
        self.shared
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, until: i64) -> RevokedTask {
        RevokedTask {
            task_id: id.to_owned(),
            node: "worker-1".to_owned(),
            spiffe_id: format!("spiffe://td/client/c/task/{id}"),
            serials: vec!["0a".to_owned()],
            reason: "ended".to_owned(),
            revoked_at_ms: 1,
            until,
        }
    }

    fn delta(version: i64, ids: &[&str]) -> RevocationDelta {
        RevocationDelta {
            version,
            tasks: ids.iter().map(|id| task(id, i64::MAX / 2)).collect(),
            node_cas: Vec::new(),
        }
    }

    fn feed(state: FeedState) -> RevocationFeed {
        let (version, _) = watch::channel(state.version);
        let (stop, _) = watch::channel(false);
        RevocationFeed {
            shared: Arc::new(Shared {
                feed_id: "f".to_owned(),
                state: RwLock::new(state),
                version,
                listening: AtomicBool::new(true),
                verified_at_ms: AtomicI64::new(crate::clock::unix_millis()),
                vouched_ms: AtomicI64::new(0),
            }),
            stop,
            task: std::sync::Mutex::new(None),
        }
    }

    #[test]
    fn deltas_chain_from_the_version_held_and_a_follower_in_the_ring_gets_only_later_ones() {
        let mut state = FeedState {
            version: 10,
            ..Default::default()
        };
        apply(
            &mut state,
            vec![delta(12, &["a"]), delta(13, &["b", "c"])],
            15,
        );
        apply(&mut state, Vec::new(), 16);
        let chain: Vec<(u64, u64)> = state
            .ring
            .iter()
            .map(|d| (d.delta.from_version, d.delta.version))
            .collect();
        assert_eq!(chain, vec![(10, 12), (12, 15), (15, 16)]);
        assert_eq!(state.tasks.len(), 3);
        let feed = feed(state);
        match feed.catch_up_from(12) {
            Catch::Deltas(d) => {
                assert_eq!(d.len(), 2);
                assert_eq!(d[0].revoked.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(feed.catch_up_from(16), Catch::UpToDate));
        // Older than the ring, or ahead of the copy: the whole set.
        for since in [0, 9, 17] {
            match feed.catch_up_from(since) {
                Catch::Snapshot(s) => assert_eq!((s.version, s.tasks.len()), (16, 3)),
                other => panic!("since {since}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_ring_is_bounded_and_a_follower_behind_it_gets_a_snapshot() {
        let mut state = FeedState::default();
        for v in 1..=(MAX_RING_DELTAS as i64 + 10) {
            let id = format!("t{v}");
            apply(&mut state, vec![delta(v, &[id.as_str()])], v);
        }
        assert_eq!(state.ring.len(), MAX_RING_DELTAS);
        let feed = feed(state);
        assert!(matches!(feed.catch_up_from(5), Catch::Snapshot(_)));
        assert!(matches!(feed.catch_up_from(20), Catch::Deltas(_)));
    }

    #[test]
    fn expired_entries_leave_the_live_set_after_the_grace() {
        let mut state = FeedState::default();
        let now = 1_000_000;
        apply(
            &mut state,
            vec![RevocationDelta {
                version: 1,
                tasks: vec![
                    task("old", now - EXPIRY_GRACE_SECS - 1),
                    task("skewed", now - 1),
                ],
                node_cas: Vec::new(),
            }],
            1,
        );
        expire(&mut state, now);
        assert_eq!(state.tasks.keys().collect::<Vec<_>>(), vec!["skewed"]);
    }

    #[test]
    fn current_as_of_stops_advancing_when_not_listening_and_never_goes_back() {
        let feed = feed(FeedState::default());
        let first = feed.current_as_of();
        assert!(first > 0);
        feed.shared.listening.store(false, Ordering::Release);
        feed.shared.verified_at_ms.store(5, Ordering::Release);
        assert_eq!(feed.current_as_of(), first, "not moved back, not moved on");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(feed.current_as_of(), first);
    }
}
