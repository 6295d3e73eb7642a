//! The revocation feed: which tasks (and SVID serials) are revoked, and whether we know.
//!
//! [`RevocationWatcher`] subscribes to the agent's `tessera.v1.Revocations/Watch` stream on
//! the workload socket. Every message carries the full set; it replaces the previous one
//! in an `ArcSwap`, so a lookup is one atomic load and a hash probe.
//!
//! Freshness: while the stream is open and has delivered its first message, the set is
//! current (the agent pushes every change within milliseconds). After the stream breaks,
//! the last set stays usable for the staleness bound (default 30 s) while the watcher
//! reconnects with exponential backoff and jitter; past it, [`RevocationWatcher::status`]
//! answers [`RevocationStatus::Stale`] and the authorizer refuses task credentials (fail
//! closed). Before the first message the feed is stale too. HTTP/2 keep-alive on the
//! channel detects a hung agent that keeps the socket open.
//!
//! Long-lived streams (subscriptions, SSE) wait on [`RevocationWatcher::watch_task`]
//! rather than on every feed message: a message wakes only the waiters of the tasks it
//! newly revokes (a feed message carries the whole set, and a server with thousands of
//! open streams must not re-check all of them on every task that ends anywhere), and
//! the stream going down or coming back wakes everyone.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tessera_identity::TaskId;
use tessera_proto::tessera::v1::revocations_client::RevocationsClient;
use tessera_proto::tessera::v1::{RevocationSet, WatchRevocationsRequest};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::background::Background;

/// The default staleness bound.
pub const DEFAULT_STALENESS: Duration = Duration::from_secs(30);

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

/// The revoked set as of one feed message.
#[derive(Debug, Default)]
struct RevokedSet {
    version: u64,
    tasks: HashMap<TaskId, String>,
    serials: HashSet<String>,
}

#[derive(Debug)]
struct Inner {
    set: ArcSwap<RevokedSet>,
    /// Whether a stream is open and delivered at least one message.
    live: AtomicBool,
    /// Whether the set is fixed (tests): always fresh.
    fixed: bool,
    /// When the set was last known current: nanos since `base`; `u64::MAX` = never.
    known_at_nanos: AtomicU64,
    base: Instant,
    staleness: Duration,
    reconnects: AtomicU64,
    last_update_unix_ms: AtomicU64,
    /// Per task with a waiter: a signal and the number of waiters.
    waiters: Mutex<HashMap<TaskId, (watch::Sender<()>, usize)>>,
    /// Signals every waiter: the stream went down or came back, or a message held an
    /// entry whose task id does not parse (its serials could be anyone's).
    everyone: watch::Sender<()>,
}

/// Waits for changes of the feed's answer about one task; see
/// [`RevocationWatcher::watch_task`]. Stops counting as a waiter when dropped.
#[derive(Debug)]
pub struct TaskWatch {
    inner: Arc<Inner>,
    task: TaskId,
    mine: watch::Receiver<()>,
    everyone: watch::Receiver<()>,
}

/// The revocation set, kept current from the agent's feed. Cheap to clone (an `Arc`).
#[derive(Clone, Debug)]
pub struct RevocationWatcher {
    inner: Arc<Inner>,
}

/// Reconnect and staleness settings for [`RevocationWatcher::spawn`].
#[derive(Clone, Debug)]
pub struct WatcherConfig {
    /// The agent's workload socket.
    pub socket: PathBuf,
    /// After this long without a live stream, task credentials are refused.
    pub staleness: Duration,
    /// First reconnect delay; doubles up to `max_backoff`, with full jitter.
    pub min_backoff: Duration,
    /// Largest reconnect delay.
    pub max_backoff: Duration,
    /// Largest feed message accepted. Every message carries the whole revoked set
    /// (about 160 bytes per task, kept until its SVIDs expire): 64 MiB holds some
    /// 400,000 revocations, where tonic's 4 MiB default would stop a verifier at
    /// about 26,000 (under a minute and a half of 300 task ends a second with 5-minute
    /// SVIDs). A message over the limit ends the stream, and the watcher fails closed
    /// once stale.
    pub max_message_bytes: usize,
}

/// Default [`WatcherConfig::max_message_bytes`].
pub const DEFAULT_MAX_FEED_MESSAGE_BYTES: usize = 64 << 20;

impl WatcherConfig {
    /// Defaults for `socket`: 30 s staleness, backoff 50 ms .. 5 s.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            staleness: DEFAULT_STALENESS,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            max_message_bytes: DEFAULT_MAX_FEED_MESSAGE_BYTES,
        }
    }
}

// === impl RevocationWatcher ===

impl RevocationWatcher {
    fn with(fixed: bool, staleness: Duration, set: RevokedSet) -> Self {
        Self {
            inner: Arc::new(Inner {
                set: ArcSwap::from_pointee(set),
                live: AtomicBool::new(false),
                fixed,
                known_at_nanos: AtomicU64::new(u64::MAX),
                base: Instant::now(),
                staleness,
                reconnects: AtomicU64::new(0),
                last_update_unix_ms: AtomicU64::new(0),
                waiters: Mutex::new(HashMap::new()),
                everyone: watch::Sender::new(()),
            }),
        }
    }

    /// A watcher over a fixed set, always fresh: for tests and servers without an agent.
    pub fn from_static(
        tasks: impl IntoIterator<Item = TaskId>,
        serials: impl IntoIterator<Item = String>,
    ) -> Self {
        let set = RevokedSet {
            version: 0,
            tasks: tasks
                .into_iter()
                .map(|t| (t, "static".to_owned()))
                .collect(),
            serials: serials.into_iter().collect(),
        };
        Self::with(true, Duration::MAX, set)
    }

    /// A watcher that has not heard from any feed yet (stale until [`Self::apply`] is
    /// called); for tests and for feeding the set from elsewhere.
    pub fn detached(staleness: Duration) -> Self {
        Self::with(false, staleness, RevokedSet::default())
    }

    /// Starts watching the agent's feed on `config.socket`; returns at once (stale until
    /// the first message arrives).
    ///
    /// The feed is followed for as long as the returned guard lives (see
    /// [`crate::background`]); once it is dropped or shut down, the stream to the agent
    /// closes and the set goes stale after `config.staleness`, refusing task
    /// credentials from then on.
    pub fn spawn(config: WatcherConfig) -> (Self, Background) {
        let watcher = Self::detached(config.staleness);
        let w = watcher.clone();
        let task = Background::spawn("revocation-feed", move |stop| async move {
            stop.run_until_cancelled(w.clone().run(config)).await;
            // The set was current until now; from here it ages like a broken stream.
            w.set_live(false);
        });
        (watcher, task)
    }

    /// What the feed says about a task's credential with leaf serial `serial_hex`.
    pub fn status(&self, task: &TaskId, serial_hex: &str) -> RevocationStatus {
        if !self.is_fresh() {
            return RevocationStatus::Stale;
        }
        let set = self.inner.set.load();
        if let Some(reason) = set.tasks.get(task) {
            return RevocationStatus::Revoked {
                reason: reason.clone(),
            };
        }
        if set.serials.contains(serial_hex) {
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
        match self.inner.set.load().tasks.get(task) {
            Some(reason) => RevocationStatus::Revoked {
                reason: reason.clone(),
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
        if self.inner.set.load().serials.contains(serial_hex) {
            return RevocationStatus::Revoked {
                reason: "serial revoked".to_owned(),
            };
        }
        RevocationStatus::NotRevoked
    }

    /// Whether the set is current: fixed, a live stream, or lost for less than the bound.
    pub fn is_fresh(&self) -> bool {
        let inner = &self.inner;
        if inner.fixed || inner.live.load(Ordering::Acquire) {
            return true;
        }
        let known = inner.known_at_nanos.load(Ordering::Acquire);
        if known == u64::MAX {
            return false;
        }
        let now = Instant::now()
            .saturating_duration_since(inner.base)
            .as_nanos() as u64;
        now.saturating_sub(known) <= inner.staleness.as_nanos().min(u64::MAX as u128) as u64
    }

    /// Whether a feed stream is open right now.
    pub fn is_connected(&self) -> bool {
        self.inner.live.load(Ordering::Acquire)
    }

    /// How many times the watcher reconnected (for metrics).
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// Wall-clock time of the last applied feed message, Unix milliseconds (0 = never).
    pub fn last_update_unix_ms(&self) -> u64 {
        self.inner.last_update_unix_ms.load(Ordering::Relaxed)
    }

    /// The version of the last applied set (0 before any).
    pub fn version(&self) -> u64 {
        self.inner.set.load().version
    }

    /// Number of revoked tasks in the current set.
    pub fn revoked_count(&self) -> usize {
        self.inner.set.load().tasks.len()
    }

    /// Replaces the set with one feed message and marks it current as of now.
    pub fn apply(&self, msg: &RevocationSet) {
        let mut set = RevokedSet {
            version: msg.version,
            ..RevokedSet::default()
        };
        let old = self.inner.set.load();
        // Tasks this message revokes (or whose serials it adds), to wake their waiters.
        let mut newly = Vec::new();
        let mut wake_everyone = false;
        for r in &msg.revoked {
            let mut new_serial = false;
            for serial in &r.serials {
                let serial = serial.to_ascii_lowercase();
                new_serial |= !old.serials.contains(&serial);
                set.serials.insert(serial);
            }
            match r.task_id.parse::<TaskId>() {
                Ok(id) => {
                    if new_serial || !old.tasks.contains_key(&id) {
                        newly.push(id);
                    }
                    set.tasks.insert(id, r.reason.clone());
                }
                Err(e) => {
                    wake_everyone |= new_serial;
                    tracing::warn!(task_id = %r.task_id, error = %e, "revocation entry with an invalid task id; keeping its serials");
                }
            }
        }
        drop(old);
        self.inner.set.store(Arc::new(set));
        self.mark_known();
        if !newly.is_empty() {
            let waiters = self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner());
            if !waiters.is_empty() {
                for id in &newly {
                    if let Some((signal, _)) = waiters.get(id) {
                        signal.send_replace(());
                    }
                }
            }
        }
        if wake_everyone {
            self.inner.everyone.send_replace(());
        }
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.inner.last_update_unix_ms.store(ms, Ordering::Relaxed);
    }

    fn mark_known(&self) {
        let now = Instant::now()
            .saturating_duration_since(self.inner.base)
            .as_nanos() as u64;
        self.inner.known_at_nanos.store(now, Ordering::Release);
    }

    fn set_live(&self, live: bool) {
        if !live && self.inner.live.load(Ordering::Acquire) {
            // The set was current up to the moment the stream broke.
            self.mark_known();
        }
        if self.inner.live.swap(live, Ordering::AcqRel) != live {
            // Waiters re-check: down, the set goes stale at a time they must wait for.
            self.inner.everyone.send_replace(());
        }
    }

    /// How long until the set goes stale if nothing arrives meanwhile: `None` while it
    /// cannot (fixed, or a live stream), zero when it already is.
    pub fn stale_in(&self) -> Option<Duration> {
        let inner = &self.inner;
        if inner.fixed || inner.live.load(Ordering::Acquire) {
            return None;
        }
        let known = inner.known_at_nanos.load(Ordering::Acquire);
        if known == u64::MAX {
            return Some(Duration::ZERO);
        }
        let now = Instant::now()
            .saturating_duration_since(inner.base)
            .as_nanos() as u64;
        let age = Duration::from_nanos(now.saturating_sub(known));
        Some(inner.staleness.saturating_sub(age))
    }

    /// A waiter for changes of the feed's answer about `task`: [`TaskWatch::changed`]
    /// returns when a message newly revokes the task (or a serial of it), when the
    /// stream goes down or comes back, or when a message held an entry without a valid
    /// task id. It may return when nothing changed for the task: check
    /// [`Self::status`] after it. Take the watch before the first check, so that no
    /// change falls between the two.
    pub fn watch_task(&self, task: &TaskId) -> TaskWatch {
        let mut waiters = self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let (signal, count) = waiters
            .entry(*task)
            .or_insert_with(|| (watch::Sender::new(()), 0));
        *count += 1;
        TaskWatch {
            inner: self.inner.clone(),
            task: *task,
            mine: signal.subscribe(),
            everyone: self.inner.everyone.subscribe(),
        }
    }

    /// Number of tasks with a waiter (for tests and metrics).
    pub fn watched_tasks(&self) -> usize {
        self.inner
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    async fn run(self, config: WatcherConfig) {
        let mut attempt: u32 = 0;
        loop {
            match self
                .stream_once(&config.socket, config.max_message_bytes)
                .await
            {
                Ok(()) => tracing::warn!("revocation feed ended; reconnecting"),
                Err(e) => {
                    tracing::warn!(error = %e, "revocation feed failed; reconnecting")
                }
            }
            if self.set_live_false_was_live() {
                attempt = 0;
            }
            let delay = backoff(attempt, config.min_backoff, config.max_backoff);
            attempt = attempt.saturating_add(1);
            if !self.is_fresh() {
                tracing::error!(
                    staleness_secs = config.staleness.as_secs_f64(),
                    "revocation feed is stale; task credentials are refused until it is back"
                );
            }
            tokio::time::sleep(delay).await;
            self.inner.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks the stream down; returns whether it had been live (to reset the backoff).
    fn set_live_false_was_live(&self) -> bool {
        let was = self.inner.live.load(Ordering::Acquire);
        self.set_live(false);
        was
    }

    async fn stream_once(
        &self,
        socket: &Path,
        max_message_bytes: usize,
    ) -> Result<(), tonic::Status> {
        let channel = connect(socket)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut client =
            RevocationsClient::new(channel).max_decoding_message_size(max_message_bytes);
        let mut req = tonic::Request::new(WatchRevocationsRequest {});
        req.metadata_mut().insert(
            "workload.spiffe.io",
            tonic::metadata::MetadataValue::from_static("true"),
        );
        let mut stream = client.watch(req).await?.into_inner();
        while let Some(msg) = stream.message().await? {
            self.apply(&msg);
            if !self.inner.live.load(Ordering::Acquire) {
                self.set_live(true);
                tracing::info!(
                    version = msg.version,
                    revoked = msg.revoked.len(),
                    "revocation feed live"
                );
            }
        }
        Ok(())
    }
}

// === impl TaskWatch ===

impl TaskWatch {
    /// Returns when the feed's answer about the task may have changed (see
    /// [`RevocationWatcher::watch_task`]).
    pub async fn changed(&mut self) {
        // Neither sender is dropped while `inner` (held here) lives.
        tokio::select! {
            _ = self.mine.changed() => {}
            _ = self.everyone.changed() => {}
        }
    }
}

impl Drop for TaskWatch {
    fn drop(&mut self) {
        let mut waiters = self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, count)) = waiters.get_mut(&self.task) {
            *count -= 1;
            if *count == 0 {
                waiters.remove(&self.task);
            }
        }
    }
}

/// Exponential backoff with full jitter: a uniform delay in `[min, min * 2^attempt]`,
/// capped at `max`.
fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let ceiling = min
        .saturating_mul(1u32 << attempt.min(16))
        .min(max)
        .max(min);
    let span = ceiling.saturating_sub(min).as_millis() as u64;
    let jitter = if span == 0 {
        0
    } else {
        rand::random_range(0..=span)
    };
    min + Duration::from_millis(jitter)
}

async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    tessera_proto::connect_unix(
        tessera_proto::unix_endpoint()
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_timeout(Duration::from_secs(5)),
        socket,
    )
    .await
}

#[cfg(test)]
mod tests;
