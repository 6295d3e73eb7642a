//! The revoked-task set published on the revocation feed.
//!
//! Every change publishes a new immutable version (watchers read whole versions), so a
//! change costs a copy of the set: entries are shared (`Arc`), so the copy is one
//! pointer per entry, and which tasks are in the set is kept in an index beside it
//! rather than found by scanning. A busy agent ends hundreds of tasks a second while
//! tens of thousands of revocations wait out their SVIDs.
//!
//! Each version is encoded for the wire once, by the first watcher that sends it, and
//! every other watcher sends the same bytes: a change costs one encoding, not one deep
//! copy of the set per watcher.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use prost::bytes::Bytes;
use tessera_store::Revocation;
use tokio::sync::watch;

/// One immutable version of the revoked set.
#[derive(Debug, Default)]
pub(crate) struct RevokedSet {
    /// Increases with every change.
    pub version: u64,
    /// Revoked tasks whose SVIDs may still be valid.
    pub revoked: Vec<Arc<Revocation>>,
    /// This version's wire form, once a watcher needed it.
    encoded: OnceLock<Bytes>,
}

impl RevokedSet {
    fn new(version: u64, revoked: Vec<Arc<Revocation>>) -> RevokedSet {
        RevokedSet {
            version,
            revoked,
            encoded: OnceLock::new(),
        }
    }

    /// This version's wire form: made by `encode` the first time it is asked for, then
    /// shared (the bytes are reference-counted) by every caller.
    pub(crate) fn encoded(&self, encode: impl FnOnce(&RevokedSet) -> Bytes) -> Bytes {
        self.encoded.get_or_init(|| encode(self)).clone()
    }
}

/// Holds the current [`RevokedSet`] and notifies watchers of changes.
#[derive(Debug)]
pub(crate) struct RevocationFeed {
    tx: watch::Sender<Arc<RevokedSet>>,
    /// Task ids in the current set; changed under the same `send_modify` as the set.
    index: Mutex<HashSet<String>>,
}

impl RevocationFeed {
    /// A feed starting from `initial` (loaded from the store at start-up).
    pub(crate) fn new(initial: Vec<Revocation>) -> Self {
        let mut index = HashSet::with_capacity(initial.len());
        let mut revoked = Vec::with_capacity(initial.len());
        for r in initial {
            if index.insert(r.task_id.clone()) {
                revoked.push(Arc::new(r));
            }
        }
        let (tx, _) = watch::channel(Arc::new(RevokedSet::new(1, revoked)));
        RevocationFeed {
            tx,
            index: Mutex::new(index),
        }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Every change to the index is a single insert or retain; a panic elsewhere
        // cannot leave it half-done.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds revocations (a task already in the set keeps its first entry) and notifies
    /// every watcher once.
    pub(crate) fn add(&self, new: impl IntoIterator<Item = Revocation>) {
        let mut index = self.index();
        let new: Vec<Arc<Revocation>> = new
            .into_iter()
            .filter(|r| index.insert(r.task_id.clone()))
            .map(Arc::new)
            .collect();
        if new.is_empty() {
            return;
        }
        self.tx.send_modify(|cur| {
            let mut revoked = Vec::with_capacity(cur.revoked.len() + new.len());
            revoked.extend(cur.revoked.iter().cloned());
            revoked.extend(new);
            *cur = Arc::new(RevokedSet::new(cur.version + 1, revoked));
        });
    }

    /// Drops entries whose SVIDs have all expired (`until <= now`).
    pub(crate) fn prune(&self, now: i64) -> usize {
        let mut index = self.index();
        let mut removed = 0;
        self.tx.send_if_modified(|cur| {
            let keep: Vec<Arc<Revocation>> = cur
                .revoked
                .iter()
                .filter(|r| r.until > now)
                .cloned()
                .collect();
            removed = cur.revoked.len() - keep.len();
            if removed == 0 {
                return false;
            }
            for gone in cur.revoked.iter().filter(|r| r.until <= now) {
                index.remove(&gone.task_id);
            }
            *cur = Arc::new(RevokedSet::new(cur.version + 1, keep));
            true
        });
        removed
    }

    /// The current set.
    #[cfg(test)]
    pub(crate) fn current(&self) -> Arc<RevokedSet> {
        self.tx.borrow().clone()
    }

    /// Current set first, then every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<RevokedSet>> {
        self.tx.subscribe()
    }

    /// Whether `task_id` is revoked.
    #[cfg(test)]
    pub(crate) fn contains(&self, task_id: &str) -> bool {
        self.index().contains(task_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(id: &str, until: i64) -> Revocation {
        Revocation {
            task_id: id.into(),
            spiffe_id: format!("spiffe://td/client/c/task/{id}"),
            serials: vec!["01".into()],
            reason: "ended".into(),
            revoked_at_ms: 0,
            until,
        }
    }

    #[test]
    fn add_is_idempotent_per_task_and_bumps_the_version() {
        let feed = RevocationFeed::new(vec![rev("a", 100)]);
        let mut rx = feed.subscribe();
        rx.borrow_and_update();
        feed.add([rev("b", 100), rev("a", 100)]);
        assert!(rx.has_changed().unwrap());
        let set = feed.current();
        assert_eq!(set.version, 2);
        assert_eq!(set.revoked.len(), 2);
        assert!(feed.contains("b"));
    }

    #[test]
    fn a_version_is_encoded_once_and_its_bytes_shared() {
        let feed = RevocationFeed::new(vec![rev("a", 100)]);
        let encodings = std::sync::atomic::AtomicUsize::new(0);
        let encode = |set: &RevokedSet| {
            encodings.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Bytes::from(format!("v{}:{}", set.version, set.revoked.len()))
        };
        let (first, second) = (feed.current(), feed.current());
        let a = first.encoded(encode);
        let b = second.encoded(encode);
        assert_eq!(a, "v1:1");
        assert_eq!(a.as_ptr(), b.as_ptr(), "one allocation for every watcher");
        assert_eq!(encodings.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A new version is encoded anew.
        feed.add([rev("b", 100)]);
        assert_eq!(feed.current().encoded(encode), "v2:2");
        assert_eq!(encodings.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn prune_keeps_entries_until_their_svids_expire() {
        let feed = RevocationFeed::new(vec![rev("a", 100), rev("b", 200)]);
        assert_eq!(feed.prune(99), 0);
        assert_eq!(feed.prune(100), 1);
        assert!(!feed.contains("a") && feed.contains("b"));
    }
}
