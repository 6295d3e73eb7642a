//! The revocation feed: which tasks, SVID serials and node CAs are revoked, and whether
//! we know.
//!
//! [`RevocationWatcher`] follows the agent's `tessera.v1.Revocations/Follow` stream on
//! the workload socket (see [`follow`](self) for the protocol): a snapshot (paged,
//! replacing the held set only once its last page arrives), then deltas that only add,
//! and heartbeats. Each message says up to when its sender vouches for the set
//! (`current_as_of_unix_ms`: for a cluster-mode agent, how current the server's feed
//! was). After a reconnect the watcher resumes from the feed id and version it holds
//! and gets only what it missed. An agent from before `Follow` answers `UNIMPLEMENTED`;
//! the watcher then uses the legacy full-set `Watch` on that connection.
//!
//! Freshness (fail closed): the set is current while the watcher holds a complete
//! snapshot AND less than the staleness bound (default 30 s) has passed since the
//! `current_as_of` of the newest message that kept it in step. A stream that stays open
//! but whose `current_as_of` stops advancing (an agent cut off from the server) goes
//! stale like a broken one. On the legacy `Watch`, an open stream that delivered a set
//! counts as current (the old protocol has no other clock), and a broken one ages from
//! the moment it broke. Past the bound [`RevocationWatcher::status`] answers
//! [`RevocationStatus::Stale`] and the authorizer refuses task credentials.
//!
//! Lookups take a read lock on the set (a hash probe); a delta takes the write lock for
//! as long as adding its entries takes, whatever the size of the set. Entries leave the
//! set once their `until_unix` (+ 60 s grace) has passed, in a sweep every 10 s.
//!
//! Long-lived streams (subscriptions, SSE) wait on [`RevocationWatcher::watch`] rather
//! than on every feed message: an update wakes only the waiters of the tasks (and node
//! CAs) it newly revokes, so a server with thousands of open streams does not re-check
//! all of them on every task that ends anywhere; the stream going down or coming back
//! wakes everyone.

mod follow;
mod set;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tessera_identity::TaskId;
use tessera_proto::tessera::v1::revocation_update::Update;
use tessera_proto::tessera::v1::{RevocationSet, RevocationUpdate};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::background::Background;
pub use follow::{FeedError, MAX_SNAPSHOT_ENTRIES};
use set::{Added, RevokedSet};
pub use set::{EXPIRY_GRACE_SECS, normalize_serial};

/// The default staleness bound.
pub const DEFAULT_STALENESS: Duration = Duration::from_secs(30);

/// Default [`WatcherConfig::max_message_bytes`]: four times the 1 MiB a snapshot page
/// is kept under, so one message of an agent that pages a little over is still read.
pub const DEFAULT_MAX_FEED_MESSAGE_BYTES: usize = 4 << 20;

/// Default [`WatcherConfig::legacy_max_message_bytes`]: the whole set in one message of
/// the legacy `Watch`, some 400,000 revocations.
pub const DEFAULT_LEGACY_MAX_FEED_MESSAGE_BYTES: usize = 64 << 20;

/// How often entries past their expiry are swept out.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// What the feed says about one credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevocationStatus {
    /// Not in the revoked set, and the set is fresh.
    NotRevoked,
    /// Revoked, with the agent's reason (`ended`, `deadline`, `consent_withdrawn`, ...).
    Revoked {
        /// The reason from the feed.
        reason: String,
    },
    /// The feed is past its staleness bound (or never delivered): unknown, fail closed.
    Stale,
}

/// What the feed says about a node CA in a peer's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeCaStatus {
    /// Not evicted, and the set is fresh.
    NotRevoked,
    /// The node was evicted: every chain through this CA is refused.
    Revoked {
        /// The node's name, as the feed gives it (`spiffe://<td>/node/<name>`).
        node: String,
    },
    /// The feed is past its staleness bound (or never delivered): unknown, fail closed.
    Stale,
}

/// The set held, and which feed and version it reflects.
#[derive(Debug, Default)]
struct Held {
    set: RevokedSet,
    /// The feed incarnation the set came from; empty for a legacy `Watch` set or none.
    feed_id: String,
    version: u64,
}

/// What a waiter waits for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum WaitKey {
    Task(TaskId),
    /// A node CA, by normalized serial.
    NodeCa(String),
}

#[derive(Debug)]
struct Inner {
    held: RwLock<Held>,
    /// Whether `held` is a complete set (a snapshot's last page, or a legacy set).
    complete: AtomicBool,
    /// Legacy `Watch`: a stream is open and delivered a set; the set counts as current.
    legacy_live: AtomicBool,
    /// Whether a feed stream (either) is open and delivered at least one message.
    connected: AtomicBool,
    /// Whether the set is fixed (tests): always fresh.
    fixed: bool,
    /// Up to when the set is vouched current: nanos since `base` on the monotonic clock
    /// (negative for before it); `i64::MIN` = never.
    known_at_nanos: AtomicI64,
    base: Instant,
    staleness: Duration,
    reconnects: AtomicU64,
    last_update_unix_ms: AtomicU64,
    /// A snapshot being gathered page by page (dropped when its stream ends).
    pending: Mutex<Option<follow::PendingSnapshot>>,
    last_prune: Mutex<Option<Instant>>,
    /// Per task or node CA with a waiter: each waiter's signal.
    waiters: Mutex<HashMap<WaitKey, Vec<Arc<Notify>>>>,
    /// Signals every waiter: the stream went down or came back, or an update held an
    /// entry whose task id does not parse (its serials could be anyone's).
    everyone: watch::Sender<()>,
    /// Whether the refusal of the legacy `Watch` was logged (it is, once, at error).
    legacy_refusal_logged: AtomicBool,
}

/// Waits for changes of the feed's answer about one peer (its task and the node CAs
/// of its chain); see [`RevocationWatcher::watch`]. Stops counting as a waiter when
/// dropped.
#[derive(Debug)]
pub struct TaskWatch {
    inner: Arc<Inner>,
    keys: Vec<WaitKey>,
    signal: Arc<Notify>,
    everyone: watch::Receiver<()>,
}

/// The revocation set, kept current from the agent's feed. Cheap to clone (an `Arc`).
#[derive(Clone, Debug)]
pub struct RevocationWatcher {
    inner: Arc<Inner>,
}

/// Reconnect, staleness and size settings for [`RevocationWatcher::spawn`].
#[derive(Clone, Debug)]
pub struct WatcherConfig {
    /// The agent's workload socket.
    pub socket: PathBuf,
    /// Once the set is older than this (by the feed's `current_as_of`, or since the
    /// legacy stream broke), task credentials are refused.
    pub staleness: Duration,
    /// First reconnect delay; doubles up to `max_backoff`, with full jitter.
    pub min_backoff: Duration,
    /// Largest reconnect delay.
    pub max_backoff: Duration,
    /// Largest `Follow` message accepted (default 4 MiB). Agents page snapshots under
    /// 1 MiB and a delta holds what changed since the last one, so this bounds what a
    /// hostile or broken agent can make the verifier buffer, not the size of the set. A
    /// message over the limit ends the stream; the watcher reconnects and, if it keeps
    /// happening, goes stale (fail closed).
    pub max_message_bytes: usize,
    /// Largest legacy `Watch` message accepted (an agent from before `Follow`; default
    /// 64 MiB): each carries the whole revoked set, about 160 bytes per task, so 64 MiB
    /// holds some 400,000 revocations where tonic's 4 MiB default stops at about 26,000.
    pub legacy_max_message_bytes: usize,
}

impl WatcherConfig {
    /// Defaults for `socket`: 30 s staleness, backoff 50 ms .. 5 s, 4 MiB messages
    /// (64 MiB on the legacy `Watch`).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            staleness: DEFAULT_STALENESS,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            max_message_bytes: DEFAULT_MAX_FEED_MESSAGE_BYTES,
            legacy_max_message_bytes: DEFAULT_LEGACY_MAX_FEED_MESSAGE_BYTES,
        }
    }
}

fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// === impl RevocationWatcher ===

impl RevocationWatcher {
    fn with(fixed: bool, staleness: Duration, set: RevokedSet) -> Self {
        Self {
            inner: Arc::new(Inner {
                held: RwLock::new(Held {
                    set,
                    ..Held::default()
                }),
                complete: AtomicBool::new(fixed),
                legacy_live: AtomicBool::new(false),
                connected: AtomicBool::new(false),
                fixed,
                known_at_nanos: AtomicI64::new(i64::MIN),
                base: Instant::now(),
                staleness,
                reconnects: AtomicU64::new(0),
                last_update_unix_ms: AtomicU64::new(0),
                pending: Mutex::new(None),
                last_prune: Mutex::new(None),
                waiters: Mutex::new(HashMap::new()),
                everyone: watch::Sender::new(()),
                legacy_refusal_logged: AtomicBool::new(false),
            }),
        }
    }

    /// A watcher over a fixed set, always fresh: for tests and servers without an agent.
    pub fn from_static(
        tasks: impl IntoIterator<Item = TaskId>,
        serials: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut set = RevokedSet::default();
        for t in tasks {
            set.tasks.insert(
                t,
                set::TaskEntry {
                    reason: "static".to_owned(),
                    until_unix: 0,
                },
            );
        }
        for s in serials {
            set.serials.insert(
                normalize_serial(&s),
                set::SerialEntry {
                    task: None,
                    until_unix: 0,
                },
            );
        }
        Self::with(true, Duration::MAX, set)
    }

    /// A watcher that has not heard from any feed yet (stale until [`Self::apply`] or
    /// [`Self::apply_update`] gives it a complete set); for tests and for feeding the
    /// set from elsewhere.
    pub fn detached(staleness: Duration) -> Self {
        Self::with(false, staleness, RevokedSet::default())
    }

    /// Starts following the agent's feed on `config.socket`; returns at once (stale
    /// until a complete set arrives).
    ///
    /// The feed is followed for as long as the returned guard lives (see
    /// [`crate::background`]); once it is dropped or shut down, the stream to the agent
    /// closes and the set goes stale after `config.staleness`, refusing task
    /// credentials from then on.
    pub fn spawn(config: WatcherConfig) -> (Self, Background) {
        let watcher = Self::detached(config.staleness);
        let w = watcher.clone();
        let task = Background::spawn("revocation-feed", move |stop| async move {
            stop.run_until_cancelled(follow::run(w.clone(), config))
                .await;
            // The set was current until now; from here it ages like a broken stream.
            w.set_disconnected();
        });
        (watcher, task)
    }

    fn held(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        self.inner.held.read().unwrap_or_else(|e| e.into_inner())
    }

    fn held_mut(&self) -> std::sync::RwLockWriteGuard<'_, Held> {
        self.inner.held.write().unwrap_or_else(|e| e.into_inner())
    }

    /// What the feed says about a task's credential with leaf serial `serial_hex`.
    pub fn status(&self, task: &TaskId, serial_hex: &str) -> RevocationStatus {
        if !self.is_fresh() {
            return RevocationStatus::Stale;
        }
        let held = self.held();
        if let Some(e) = held.set.tasks.get(task) {
            return RevocationStatus::Revoked {
                reason: e.reason.clone(),
            };
        }
        if held.set.serials.contains_key(serial_hex) {
            return RevocationStatus::Revoked {
                reason: "serial revoked".to_owned(),
            };
        }
        RevocationStatus::NotRevoked
    }

    /// What the feed says about a task, by its id alone: for a credential that is not a
    /// certificate (an access token carries the task id, and no serial of its own).
    pub fn task_status(&self, task: &TaskId) -> RevocationStatus {
        if !self.is_fresh() {
            return RevocationStatus::Stale;
        }
        match self.held().set.tasks.get(task) {
            Some(e) => RevocationStatus::Revoked {
                reason: e.reason.clone(),
            },
            None => RevocationStatus::NotRevoked,
        }
    }

    /// What the feed says about one certificate serial alone: for a certificate that is
    /// not a task's (a client's own SVID, to which an access token may be bound).
    pub fn serial_status(&self, serial_hex: &str) -> RevocationStatus {
        if !self.is_fresh() {
            return RevocationStatus::Stale;
        }
        if self.held().set.serials.contains_key(serial_hex) {
            return RevocationStatus::Revoked {
                reason: "serial revoked".to_owned(),
            };
        }
        RevocationStatus::NotRevoked
    }

    /// What the feed says about the node CA with serial `serial_hex` (lower-case hex, as
    /// [`crate::Peer::node_ca_serials`] gives it): whether its node was evicted.
    pub fn node_ca_status(&self, serial_hex: &str) -> NodeCaStatus {
        if !self.is_fresh() {
            return NodeCaStatus::Stale;
        }
        match self.held().set.node_cas.get(serial_hex) {
            Some(e) => NodeCaStatus::Revoked {
                node: e.node.clone(),
            },
            None => NodeCaStatus::NotRevoked,
        }
    }

    /// The first of `serials` (node CAs of one chain) the feed holds as evicted, with
    /// its node, whether or not the set is fresh: for refusing a handshake through a CA
    /// already known evicted (a stale set still refuses what it knows).
    pub fn evicted_node_ca<'a>(
        &self,
        serials: impl IntoIterator<Item = &'a str>,
    ) -> Option<(String, String)> {
        let held = self.held();
        serials.into_iter().find_map(|s| {
            held.set
                .node_cas
                .get(s)
                .map(|e| (s.to_owned(), e.node.clone()))
        })
    }

    /// Whether the set is current: fixed, or complete and vouched for within the bound
    /// (or, on the legacy `Watch`, its stream open).
    pub fn is_fresh(&self) -> bool {
        self.stale_in().is_none_or(|d| !d.is_zero())
    }

    /// Whether a feed stream is open right now.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// How many times the watcher reconnected (for metrics).
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// Wall-clock time of the last applied feed message, Unix milliseconds (0 = never).
    pub fn last_update_unix_ms(&self) -> u64 {
        self.inner.last_update_unix_ms.load(Ordering::Relaxed)
    }

    /// The version of the held set (0 before any).
    pub fn version(&self) -> u64 {
        self.held().version
    }

    /// The feed incarnation the held set came from (empty before any, or on the legacy
    /// `Watch`).
    pub fn feed_id(&self) -> String {
        self.held().feed_id.clone()
    }

    /// Number of revoked tasks in the current set.
    pub fn revoked_count(&self) -> usize {
        self.held().set.tasks.len()
    }

    /// Number of evicted node CAs in the current set.
    pub fn revoked_node_ca_count(&self) -> usize {
        self.held().set.node_cas.len()
    }

    /// Replaces the set with one legacy `Watch` message and marks it current as of now.
    pub fn apply(&self, msg: &RevocationSet) {
        let set = RevokedSet::from_entries(&msg.revoked, []);
        self.replace(set, String::new(), msg.version);
        self.vouch_now();
        self.note_update();
    }

    /// Applies one `Follow` message: a snapshot page (the set is replaced once the last
    /// page is in), a delta (only when it starts at the held version of the same feed)
    /// or a heartbeat (which must name the held version). A message that keeps the set
    /// in step vouches for it up to its `current_as_of_unix_ms`.
    ///
    /// # Errors
    /// [`FeedError`] when the message does not follow from what is held (a gap, another
    /// feed, a page of another snapshot, an oversized snapshot): the follower must drop
    /// its stream and follow again from what it holds. Nothing of the message is
    /// applied then.
    pub fn apply_update(&self, msg: &RevocationUpdate) -> Result<(), FeedError> {
        let Some(update) = &msg.update else {
            return Err(FeedError::Empty);
        };
        match update {
            Update::Snapshot(page) => {
                let done = {
                    let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
                    follow::gather(&mut pending, &msg.feed_id, page)?
                };
                if let Some(snapshot) = done {
                    self.replace(snapshot.set, msg.feed_id.clone(), snapshot.version);
                    self.vouch(msg.current_as_of_unix_ms);
                }
            }
            Update::Delta(delta) => {
                if self
                    .inner
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some()
                {
                    return Err(FeedError::DeltaInsideSnapshot);
                }
                let added = {
                    let mut held = self.held_mut();
                    follow::check_in_step(
                        &held.feed_id,
                        held.version,
                        self.inner.complete.load(Ordering::Acquire),
                        &msg.feed_id,
                        delta.from_version,
                    )?;
                    if delta.version <= delta.from_version {
                        return Err(FeedError::VersionNotIncreasing {
                            from: delta.from_version,
                            to: delta.version,
                        });
                    }
                    let mut added = Added::default();
                    for t in &delta.revoked {
                        held.set.add_task(t, &mut added);
                    }
                    for ca in &delta.revoked_node_cas {
                        held.set.add_node_ca(ca, &mut added);
                    }
                    held.version = delta.version;
                    added
                };
                self.wake(&added);
                self.vouch(msg.current_as_of_unix_ms);
            }
            Update::Heartbeat(beat) => {
                if self
                    .inner
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some()
                {
                    // Heartbeats between pages keep the stream alive; they vouch for
                    // nothing until the snapshot is whole.
                    return Ok(());
                }
                let held = self.held();
                follow::check_in_step(
                    &held.feed_id,
                    held.version,
                    self.inner.complete.load(Ordering::Acquire),
                    &msg.feed_id,
                    beat.version,
                )?;
                drop(held);
                self.vouch(msg.current_as_of_unix_ms);
            }
        }
        self.note_update();
        Ok(())
    }

    /// Drops every entry whose `until_unix` (+ [`EXPIRY_GRACE_SECS`]) has passed at
    /// `now_unix`; returns how many went. The watcher does this itself every 10 s while
    /// it follows a feed.
    pub fn prune_expired(&self, now_unix: i64) -> usize {
        if !self.held().set.any_expired(now_unix) {
            return 0;
        }
        let n = self.held_mut().set.prune(now_unix);
        if n > 0 {
            tracing::debug!(entries = n, "expired revocations dropped");
        }
        n
    }

    /// Prunes if the last sweep was [`PRUNE_EVERY`] ago.
    fn maybe_prune(&self) {
        let now = Instant::now();
        {
            let mut last = self
                .inner
                .last_prune
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| now.saturating_duration_since(at) < PRUNE_EVERY) {
                return;
            }
            *last = Some(now);
        }
        self.prune_expired(unix_now_ms() / 1000);
    }

    /// Replaces the held set (complete from now on) and wakes the waiters of what it
    /// newly revokes.
    fn replace(&self, set: RevokedSet, feed_id: String, version: u64) {
        let added = {
            let mut held = self.held_mut();
            let added = set.added_since(&held.set);
            *held = Held {
                set,
                feed_id,
                version,
            };
            added
        };
        self.inner.complete.store(true, Ordering::Release);
        self.wake(&added);
    }

    fn wake(&self, added: &Added) {
        if added.is_empty() {
            return;
        }
        if !added.tasks.is_empty() || !added.node_cas.is_empty() {
            let waiters = self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner());
            if !waiters.is_empty() {
                let keys = added
                    .tasks
                    .iter()
                    .map(|t| WaitKey::Task(*t))
                    .chain(added.node_cas.iter().map(|s| WaitKey::NodeCa(s.clone())));
                for key in keys {
                    for signal in waiters.get(&key).into_iter().flatten() {
                        signal.notify_one();
                    }
                }
            }
        }
        if added.everyone {
            self.inner.everyone.send_replace(());
        }
    }

    fn note_update(&self) {
        self.inner
            .last_update_unix_ms
            .store(unix_now_ms().max(0) as u64, Ordering::Relaxed);
    }

    fn mono_now_nanos(&self) -> i64 {
        Instant::now()
            .saturating_duration_since(self.inner.base)
            .as_nanos()
            .min(i64::MAX as u128) as i64
    }

    /// The set is current as of now (the legacy feed's only clock).
    fn vouch_now(&self) {
        let now = self.mono_now_nanos();
        self.inner.known_at_nanos.fetch_max(now, Ordering::AcqRel);
    }

    /// The sender vouches for the set up to `current_as_of_unix_ms` (its clock): the set
    /// is as old as that is behind this host's clock (never younger than now, should the
    /// sender's clock be ahead), and ages on the monotonic clock from here.
    fn vouch(&self, current_as_of_unix_ms: i64) {
        if current_as_of_unix_ms <= 0 {
            // Vouches for nothing: the set ages from what was vouched before.
            return;
        }
        let lag_ms = unix_now_ms().saturating_sub(current_as_of_unix_ms).max(0);
        let at = self
            .mono_now_nanos()
            .saturating_sub(lag_ms.saturating_mul(1_000_000));
        self.inner.known_at_nanos.fetch_max(at, Ordering::AcqRel);
    }

    /// A stream delivered its first message.
    fn set_connected(&self, legacy: bool) {
        if legacy {
            self.inner.legacy_live.store(true, Ordering::Release);
        }
        if !self.inner.connected.swap(true, Ordering::AcqRel) {
            // Waiters re-check: a legacy stream coming back makes the set current.
            self.inner.everyone.send_replace(());
        }
    }

    /// The stream ended; returns whether it had been connected (to reset the backoff).
    /// A snapshot half gathered is dropped.
    fn set_disconnected(&self) -> bool {
        if self.inner.legacy_live.swap(false, Ordering::AcqRel) {
            // The legacy set was current up to the moment the stream broke.
            self.vouch_now();
        }
        *self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let was = self.inner.connected.swap(false, Ordering::AcqRel);
        if was {
            // Waiters re-check: down, the set goes stale at a time they must wait for.
            self.inner.everyone.send_replace(());
        }
        was
    }

    /// How long until the set goes stale if nothing arrives meanwhile: `None` while it
    /// cannot (fixed, or an open legacy stream), zero when it already is.
    pub fn stale_in(&self) -> Option<Duration> {
        let inner = &self.inner;
        if inner.fixed {
            return None;
        }
        if !inner.complete.load(Ordering::Acquire) {
            return Some(Duration::ZERO);
        }
        if inner.legacy_live.load(Ordering::Acquire) {
            return None;
        }
        let known = inner.known_at_nanos.load(Ordering::Acquire);
        if known == i64::MIN {
            return Some(Duration::ZERO);
        }
        let age = Duration::from_nanos(self.mono_now_nanos().saturating_sub(known).max(0) as u64);
        Some(inner.staleness.saturating_sub(age))
    }

    /// A waiter for changes of the feed's answer about a peer of `task` whose chain holds
    /// the node CAs `node_ca_serials`: [`TaskWatch::changed`] returns when an update
    /// newly revokes the task (or a serial of it) or one of those node CAs, when the
    /// stream goes down or comes back, or when an update held an entry without a valid
    /// task id. It may return when nothing changed for the peer: check after it. Take
    /// the watch before the first check, so that no change falls between the two.
    pub fn watch(&self, task: &TaskId, node_ca_serials: &[String]) -> TaskWatch {
        let keys: Vec<WaitKey> = std::iter::once(WaitKey::Task(*task))
            .chain(node_ca_serials.iter().map(|s| WaitKey::NodeCa(s.clone())))
            .collect();
        let signal = Arc::new(Notify::new());
        let mut waiters = self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for key in &keys {
            waiters
                .entry(key.clone())
                .or_default()
                .push(Arc::clone(&signal));
        }
        TaskWatch {
            inner: self.inner.clone(),
            keys,
            signal,
            everyone: self.inner.everyone.subscribe(),
        }
    }

    /// [`Self::watch`] for a task alone (a peer without node CAs in its chain).
    pub fn watch_task(&self, task: &TaskId) -> TaskWatch {
        self.watch(task, &[])
    }

    /// Number of tasks with a waiter (for tests and metrics).
    pub fn watched_tasks(&self) -> usize {
        self.inner
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|k| matches!(k, WaitKey::Task(_)))
            .count()
    }
}

// === impl TaskWatch ===

impl TaskWatch {
    /// Returns when the feed's answer about the peer may have changed (see
    /// [`RevocationWatcher::watch`]).
    pub async fn changed(&mut self) {
        // `everyone`'s sender lives in `inner`, held here: it never closes.
        tokio::select! {
            _ = self.signal.notified() => {}
            _ = self.everyone.changed() => {}
        }
    }
}

impl Drop for TaskWatch {
    fn drop(&mut self) {
        let mut waiters = self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for key in &self.keys {
            if let Some(signals) = waiters.get_mut(key) {
                signals.retain(|s| !Arc::ptr_eq(s, &self.signal));
                if signals.is_empty() {
                    waiters.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
