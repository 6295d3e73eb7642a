//! The revocation feed: the revoked set as versioned deltas, for `Revocations.Follow`
//! (and the legacy full-set `Revocations.Watch`).
//!
//! The set only grows between prunes: a revocation is added once and dropped by every
//! holder once its `until` (plus [`PRUNE_GRACE_SECS`]) has passed. So a change is a
//! delta: the entries added, from one version to the next. Each delta is encoded for
//! the wire once, when it is made, and every follower sends those same bytes
//! (reference-counted): an EndTask costs one small encoding and one small message per
//! follower, however large the set. A bounded ring keeps recent deltas so a follower
//! that reconnects with the feed id and version it holds gets only what it missed; one
//! further behind, or holding another incarnation's version (`feed_id` is random per
//! start), gets a snapshot, paged under [`MAX_MESSAGE_BYTES`].
//!
//! Cluster mode merges the server's feed in ([`RevocationFeed::add_remote`]): the
//! trust domain's revocations and evicted node CAs arrive as more deltas of this feed,
//! local ends still appear at once, and `current_as_of` is the server's (never more
//! than the server vouched for).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use prost::bytes::Bytes;
use tessera_proto::tessera::v1::{
    RevocationDelta, RevocationHeartbeat, RevocationSet, RevocationSnapshot, RevocationUpdate,
    RevokedNodeCa, RevokedTask, revocation_update,
};
use tessera_store::Revocation;
use tokio::sync::watch;

/// Most bytes of one encoded message (a snapshot page, a delta): under the 1 MiB the
/// protocol promises, with room for the envelope.
pub(crate) const MAX_MESSAGE_BYTES: usize = 1024 * 1024 - 4 * 1024;

/// Most deltas the ring keeps for followers that resume.
pub(crate) const RING_MAX_DELTAS: usize = 4096;

/// Most encoded bytes the ring keeps (whichever bound comes first).
pub(crate) const RING_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Entries are dropped this long after their `until`: clocks of the nodes differ a
/// little, and an entry dropped early would let a credential through.
pub(crate) const PRUNE_GRACE_SECS: i64 = 60;

/// How the feed is set up.
#[derive(Clone, Debug)]
pub(crate) struct FeedConfig {
    /// The trust domain's name, as in `RevocationSnapshot.trust_domain`.
    pub trust_domain: String,
    /// Cluster mode: this node's SPIFFE ID (`RevokedTask.node` of local ends, and
    /// freshness taken from the server's feed); `None` standalone.
    pub node: Option<String>,
    /// How often an idle follower gets a heartbeat.
    pub heartbeat_interval: Duration,
}

/// One step of the feed: what was added between `from` and `version`, already encoded
/// as the `RevocationUpdate` every follower sends.
#[derive(Debug)]
pub(crate) struct Delta {
    pub from: u64,
    pub version: u64,
    pub bytes: Bytes,
}

/// Why a follower's version cannot be continued with deltas.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Behind;

#[derive(Debug, Default)]
struct State {
    version: u64,
    tasks: Vec<Arc<RevokedTask>>,
    task_ids: HashSet<String>,
    node_cas: Vec<Arc<RevokedNodeCa>>,
    ca_serials: HashSet<String>,
    ring: VecDeque<Arc<Delta>>,
    ring_bytes: usize,
    /// The legacy Watch message of one version, once a watcher asked for it.
    legacy: Option<(u64, Bytes)>,
    /// The snapshot pages of one version, once a follower asked for them.
    snapshot: Option<(u64, Arc<Vec<Bytes>>)>,
}

/// Holds the revoked set and its recent deltas; wakes followers on every new version.
#[derive(Debug)]
pub(crate) struct RevocationFeed {
    feed_id: String,
    config: FeedConfig,
    state: Mutex<State>,
    version_tx: watch::Sender<u64>,
    /// Cluster mode: the server feed's newest `current_as_of`, unix ms (0: none yet).
    server_as_of: AtomicI64,
}

pub(crate) fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX)
}

/// The encoded size of `msg` as one repeated field of its parent.
fn field_len(msg: &impl Message) -> usize {
    let len = msg.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

impl RevocationFeed {
    /// A feed starting from `initial` (loaded from the store at start-up) at version 1,
    /// under a new random feed id.
    pub(crate) fn new(config: FeedConfig, initial: Vec<Revocation>) -> Self {
        let mut state = State {
            version: 1,
            ..State::default()
        };
        for r in initial {
            if state.task_ids.insert(r.task_id.clone()) {
                state
                    .tasks
                    .push(Arc::new(to_proto(r, config.node.as_deref())));
            }
        }
        RevocationFeed {
            feed_id: format!("{:032x}", rand::random::<u128>()),
            config,
            state: Mutex::new(state),
            version_tx: watch::Sender::new(1),
            server_as_of: AtomicI64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change is made whole under the lock before it is released; a panic
        // elsewhere cannot leave it half-done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This incarnation's id.
    pub(crate) fn feed_id(&self) -> &str {
        &self.feed_id
    }

    /// The trust domain's name.
    pub(crate) fn trust_domain(&self) -> &str {
        &self.config.trust_domain
    }

    /// How often an idle follower gets a heartbeat.
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        self.config.heartbeat_interval
    }

    /// Whether this agent runs in cluster mode.
    pub(crate) fn is_cluster(&self) -> bool {
        self.config.node.is_some()
    }

    /// The current version.
    pub(crate) fn version(&self) -> u64 {
        self.state().version
    }

    /// Sees every new version.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.version_tx.subscribe()
    }

    /// Up to when this feed vouches that its set holds every revocation of the trust
    /// domain, unix ms: now when standalone; in cluster mode the server's newest
    /// `current_as_of` (never later than now), 0 before the server has said anything.
    pub(crate) fn current_as_of_ms(&self) -> i64 {
        let now = now_ms();
        if self.is_cluster() {
            self.server_as_of.load(Ordering::Relaxed).min(now)
        } else {
            now
        }
    }

    /// Cluster mode: the server's feed vouched up to `ms` (it only moves forward).
    pub(crate) fn server_current_as_of(&self, ms: i64) {
        self.server_as_of.fetch_max(ms, Ordering::Relaxed);
    }

    /// Adds local revocations (a task already in the set keeps its first entry) as one
    /// new version (or several, if they do not fit in one message).
    pub(crate) fn add(&self, new: impl IntoIterator<Item = Revocation>) {
        let node = self.config.node.as_deref();
        let tasks = new.into_iter().map(|r| to_proto(r, node)).collect();
        self.add_remote(tasks, Vec::new());
    }

    /// Adds revocations and revoked node CAs (from the server's feed, or local ones);
    /// entries already in the set are skipped, except a task revocation that now runs
    /// longer (`until_unix` later: the server extends a contested task id's revocation
    /// to the latest deadline either claimant gave), which extends the held one (its
    /// expiry, and any serial it lacked) and is passed on in the delta. Returns the task
    /// ids that were new.
    pub(crate) fn add_remote(
        &self,
        tasks: Vec<RevokedTask>,
        node_cas: Vec<RevokedNodeCa>,
    ) -> Vec<String> {
        let as_of = self.current_as_of_ms();
        let mut state = self.state();
        let mut fresh: Vec<Arc<RevokedTask>> = Vec::new();
        let mut extended: Vec<Arc<RevokedTask>> = Vec::new();
        for t in tasks {
            if state.task_ids.insert(t.task_id.clone()) {
                fresh.push(Arc::new(t));
            } else if let Some(held) = state
                .tasks
                .iter_mut()
                .find(|h| h.task_id == t.task_id && h.until_unix < t.until_unix)
            {
                // Extend what is held (its node, reason, serials: a local end knows every
                // serial, the server's view may list fewer) rather than replace it.
                let mut merged = (**held).clone();
                merged.until_unix = t.until_unix;
                for serial in t.serials {
                    if !merged.serials.contains(&serial) {
                        merged.serials.push(serial);
                    }
                }
                *held = Arc::new(merged);
                extended.push(Arc::clone(held));
            }
        }
        let tasks = fresh;
        let node_cas: Vec<Arc<RevokedNodeCa>> = node_cas
            .into_iter()
            .filter(|c| state.ca_serials.insert(c.serial.clone()))
            .map(Arc::new)
            .collect();
        if tasks.is_empty() && extended.is_empty() && node_cas.is_empty() {
            return Vec::new();
        }
        let added: Vec<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
        state.tasks.extend(tasks.iter().cloned());
        state.node_cas.extend(node_cas.iter().cloned());
        // One delta per message's worth.
        let mut page = DeltaPage::default();
        for t in tasks.into_iter().chain(extended) {
            if !page.fits(field_len(&*t)) {
                self.push_delta(&mut state, std::mem::take(&mut page), as_of);
            }
            page.size += field_len(&*t);
            page.tasks.push(t);
        }
        for c in node_cas {
            if !page.fits(field_len(&*c)) {
                self.push_delta(&mut state, std::mem::take(&mut page), as_of);
            }
            page.size += field_len(&*c);
            page.cas.push(c);
        }
        self.push_delta(&mut state, page, as_of);
        let version = state.version;
        drop(state);
        self.version_tx.send_replace(version);
        added
    }

    /// Appends one delta (possibly empty: a prune) as the next version.
    fn push_delta(&self, state: &mut State, page: DeltaPage, as_of: i64) {
        let from = state.version;
        let version = from + 1;
        let update = RevocationUpdate {
            feed_id: self.feed_id.clone(),
            update: Some(revocation_update::Update::Delta(RevocationDelta {
                from_version: from,
                version,
                revoked: page.tasks.iter().map(|t| (**t).clone()).collect(),
                revoked_node_cas: page.cas.iter().map(|c| (**c).clone()).collect(),
            })),
            current_as_of_unix_ms: as_of,
        };
        let bytes = Bytes::from(update.encode_to_vec());
        state.ring_bytes += bytes.len();
        state.ring.push_back(Arc::new(Delta {
            from,
            version,
            bytes,
        }));
        while state.ring.len() > RING_MAX_DELTAS
            || (state.ring_bytes > RING_MAX_BYTES && state.ring.len() > 1)
        {
            if let Some(old) = state.ring.pop_front() {
                state.ring_bytes -= old.bytes.len();
            }
        }
        state.version = version;
    }

    /// Drops entries (tasks and node CAs) whose `until` passed more than
    /// [`PRUNE_GRACE_SECS`] before `now`. Followers drop them themselves; a new (empty)
    /// version tells legacy watchers, whose message is the whole set.
    pub(crate) fn prune(&self, now: i64) -> usize {
        let cutoff = now - PRUNE_GRACE_SECS;
        let as_of = self.current_as_of_ms();
        let mut state = self.state();
        let before = state.tasks.len() + state.node_cas.len();
        let State {
            tasks,
            task_ids,
            node_cas,
            ca_serials,
            ..
        } = &mut *state;
        tasks.retain(|t| {
            let keep = t.until_unix > cutoff;
            if !keep {
                task_ids.remove(&t.task_id);
            }
            keep
        });
        node_cas.retain(|c| {
            let keep = c.until_unix > cutoff;
            if !keep {
                ca_serials.remove(&c.serial);
            }
            keep
        });
        let removed = before - state.tasks.len() - state.node_cas.len();
        if removed > 0 {
            self.push_delta(&mut state, DeltaPage::default(), as_of);
            let version = state.version;
            drop(state);
            self.version_tx.send_replace(version);
        }
        removed
    }

    /// The deltas after `since`, oldest first (none if `since` is current), or
    /// [`Behind`] when the ring no longer holds them (or `since` is not a version this
    /// feed has made).
    pub(crate) fn deltas_after(&self, since: u64) -> Result<Vec<Arc<Delta>>, Behind> {
        let state = self.state();
        if since == state.version {
            return Ok(Vec::new());
        }
        if since > state.version {
            return Err(Behind);
        }
        let Some(first) = state.ring.front() else {
            return Err(Behind);
        };
        let Some(skip) = since.checked_sub(first.from) else {
            return Err(Behind);
        };
        let skip = usize::try_from(skip).map_err(|_| Behind)?;
        Ok(state.ring.iter().skip(skip).cloned().collect())
    }

    /// The whole set as snapshot pages of one version (each message under
    /// [`MAX_MESSAGE_BYTES`]), encoded once per version and shared.
    pub(crate) fn snapshot(&self) -> (u64, Arc<Vec<Bytes>>) {
        let (version, tasks, cas) = {
            let state = self.state();
            if let Some((v, pages)) = &state.snapshot
                && *v == state.version
            {
                return (*v, Arc::clone(pages));
            }
            (state.version, state.tasks.clone(), state.node_cas.clone())
        };
        let pages = Arc::new(self.encode_snapshot(version, &tasks, &cas));
        let mut state = self.state();
        if state.version == version {
            state.snapshot = Some((version, Arc::clone(&pages)));
        }
        (version, pages)
    }

    fn encode_snapshot(
        &self,
        version: u64,
        tasks: &[Arc<RevokedTask>],
        cas: &[Arc<RevokedNodeCa>],
    ) -> Vec<Bytes> {
        let as_of = self.current_as_of_ms();
        let mut pages: Vec<RevocationSnapshot> = Vec::new();
        let mut page = DeltaPage::default();
        let flush = |page: DeltaPage, pages: &mut Vec<RevocationSnapshot>| {
            pages.push(RevocationSnapshot {
                version,
                trust_domain: self.config.trust_domain.clone(),
                revoked: page.tasks.iter().map(|t| (**t).clone()).collect(),
                revoked_node_cas: page.cas.iter().map(|c| (**c).clone()).collect(),
                more: true,
            });
        };
        for t in tasks {
            if !page.fits(field_len(&**t)) {
                flush(std::mem::take(&mut page), &mut pages);
            }
            page.size += field_len(&**t);
            page.tasks.push(Arc::clone(t));
        }
        for c in cas {
            if !page.fits(field_len(&**c)) {
                flush(std::mem::take(&mut page), &mut pages);
            }
            page.size += field_len(&**c);
            page.cas.push(Arc::clone(c));
        }
        flush(page, &mut pages);
        if let Some(last) = pages.last_mut() {
            last.more = false;
        }
        pages
            .into_iter()
            .map(|snapshot| {
                Bytes::from(
                    RevocationUpdate {
                        feed_id: self.feed_id.clone(),
                        update: Some(revocation_update::Update::Snapshot(snapshot)),
                        current_as_of_unix_ms: as_of,
                    }
                    .encode_to_vec(),
                )
            })
            .collect()
    }

    /// A heartbeat at the current version (small; made per follower and tick).
    pub(crate) fn heartbeat(&self) -> Bytes {
        Bytes::from(
            RevocationUpdate {
                feed_id: self.feed_id.clone(),
                update: Some(revocation_update::Update::Heartbeat(RevocationHeartbeat {
                    version: self.version(),
                })),
                current_as_of_unix_ms: self.current_as_of_ms(),
            }
            .encode_to_vec(),
        )
    }

    /// The legacy `Revocations.Watch` message of the current version: the whole set,
    /// encoded once per version and shared by every watcher.
    pub(crate) fn legacy_set(&self) -> Bytes {
        let (version, tasks) = {
            let state = self.state();
            if let Some((v, bytes)) = &state.legacy
                && *v == state.version
            {
                return bytes.clone();
            }
            (state.version, state.tasks.clone())
        };
        let bytes = Bytes::from(
            RevocationSet {
                version,
                trust_domain: self.config.trust_domain.clone(),
                revoked: tasks.iter().map(|t| (**t).clone()).collect(),
            }
            .encode_to_vec(),
        );
        let mut state = self.state();
        if state.version == version {
            state.legacy = Some((version, bytes.clone()));
        }
        bytes
    }

    /// Whether `task_id` is revoked (locally, or anywhere in the cluster in cluster mode).
    pub(crate) fn contains(&self, task_id: &str) -> bool {
        self.state().task_ids.contains(task_id)
    }

    /// The revoked tasks, in the order they were added.
    #[cfg(test)]
    pub(crate) fn tasks(&self) -> Vec<Arc<RevokedTask>> {
        self.state().tasks.clone()
    }

    /// The current set, as the store's revocations (for tests comparing the two).
    #[cfg(test)]
    pub(crate) fn current(&self) -> CurrentSet {
        let state = self.state();
        CurrentSet {
            revoked: state
                .tasks
                .iter()
                .map(|t| {
                    Arc::new(Revocation {
                        task_id: t.task_id.clone(),
                        spiffe_id: t.spiffe_id.clone(),
                        serials: t.serials.clone(),
                        reason: t.reason.clone(),
                        revoked_at_ms: t.revoked_at_unix_ms,
                        until: t.until_unix,
                    })
                })
                .collect(),
        }
    }
}

/// [`RevocationFeed::current`]'s answer.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct CurrentSet {
    pub revoked: Vec<Arc<Revocation>>,
}

/// Entries gathered for one message.
#[derive(Default)]
struct DeltaPage {
    tasks: Vec<Arc<RevokedTask>>,
    cas: Vec<Arc<RevokedNodeCa>>,
    size: usize,
}

impl DeltaPage {
    /// Whether `more` bytes still fit (a page always takes its first entry).
    fn fits(&self, more: usize) -> bool {
        self.size == 0 || self.size + more <= MAX_MESSAGE_BYTES
    }
}

fn to_proto(r: Revocation, node: Option<&str>) -> RevokedTask {
    RevokedTask {
        task_id: r.task_id,
        spiffe_id: r.spiffe_id,
        serials: r.serials,
        reason: r.reason,
        revoked_at_unix_ms: r.revoked_at_ms,
        until_unix: r.until,
        node: node.unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests;
