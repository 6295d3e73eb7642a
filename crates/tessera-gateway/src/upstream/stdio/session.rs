//! The bridge's sessions: what a caller's `initialize` opened. The child has one MCP
//! session (the bridge's); these exist so that each caller gets its own
//! `Mcp-Session-Id`, its own GET stream, and only the resource updates it subscribed to.
//!
//! The front binds each session id to the peer that opened it; here a session is only
//! a mailbox, bounded in number (oldest forgotten first), in idle time and in the
//! subscriptions it may hold.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

/// A session unused for this long is forgotten.
pub(super) const IDLE_TTL: Duration = Duration::from_secs(600);
/// Resource subscriptions one session may hold (as many as one `subscriptions/listen`
/// may name in the verifier).
pub(super) const MAX_SUBSCRIPTIONS_PER_SESSION: usize = 256;
/// Events queued for a GET stream its reader is not draining; past it events for that
/// stream are dropped (and logged), never buffered without bound.
const STREAM_QUEUE: usize = 64;

/// What leaving sessions left behind: URIs no session subscribes to any more, which
/// the child should stop sending.
#[derive(Debug, Default)]
#[must_use]
pub(super) struct Orphaned(pub(super) Vec<String>);

/// Why a subscription was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SubscribeError {
    /// The session is gone.
    UnknownSession,
    /// The session holds [`MAX_SUBSCRIPTIONS_PER_SESSION`] already.
    TooMany,
}

#[derive(Debug)]
pub(super) struct Sessions {
    inner: Mutex<Inner>,
    max: usize,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, Session>,
    /// Creation order, for eviction; entries of sessions already gone are skipped.
    order: VecDeque<(u64, String)>,
    next_seq: u64,
    /// URI → the sessions subscribed to it.
    subscribers: HashMap<String, HashSet<String>>,
}

#[derive(Debug)]
struct Session {
    seq: u64,
    last_used: Instant,
    stream: Option<mpsc::Sender<Bytes>>,
    subscriptions: HashSet<String>,
}

impl Sessions {
    pub(super) fn new(max: usize) -> Self {
        Sessions {
            inner: Mutex::new(Inner::default()),
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves maps that are still consistent enough
        // to serve (every operation is a few map edits); keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session; when the table is full, the oldest one goes.
    pub(super) fn create(&self, id: String) -> Orphaned {
        let mut inner = self.lock();
        let mut orphaned = Orphaned::default();
        while inner.by_id.len() >= self.max {
            let Some((seq, old)) = inner.order.pop_front() else {
                break;
            };
            if inner.by_id.get(&old).is_some_and(|s| s.seq == seq) {
                tracing::debug!("stdio bridge: session table full, forgetting the oldest session");
                orphaned.0.extend(inner.remove(&old));
            }
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.order.push_back((seq, id.clone()));
        inner.by_id.insert(
            id,
            Session {
                seq,
                last_used: Instant::now(),
                stream: None,
                subscriptions: HashSet::new(),
            },
        );
        orphaned
    }

    /// Whether the session exists (and was used within [`IDLE_TTL`]); marks it used.
    pub(super) fn touch(&self, id: &str) -> Result<(), Orphaned> {
        let mut inner = self.lock();
        let now = Instant::now();
        match inner.by_id.get_mut(id) {
            Some(s) if now.duration_since(s.last_used) < IDLE_TTL => {
                s.last_used = now;
                Ok(())
            }
            Some(_) => Err(Orphaned(inner.remove(id))),
            None => Err(Orphaned::default()),
        }
    }

    /// Ends a session; `None` when it did not exist.
    pub(super) fn remove(&self, id: &str) -> Option<Orphaned> {
        let mut inner = self.lock();
        inner
            .by_id
            .contains_key(id)
            .then(|| Orphaned(inner.remove(id)))
    }

    /// The session's GET stream: a new one replaces (and so ends) the previous one.
    pub(super) fn open_stream(&self, id: &str) -> Option<mpsc::Receiver<Bytes>> {
        let mut inner = self.lock();
        let session = inner.by_id.get_mut(id)?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        session.stream = Some(tx);
        Some(rx)
    }

    /// Records a subscription; `Ok(true)` when no session was subscribed to `uri`
    /// before (so the child must be asked).
    pub(super) fn subscribe(&self, id: &str, uri: &str) -> Result<bool, SubscribeError> {
        let mut inner = self.lock();
        let session = inner
            .by_id
            .get_mut(id)
            .ok_or(SubscribeError::UnknownSession)?;
        if !session.subscriptions.contains(uri) {
            if session.subscriptions.len() >= MAX_SUBSCRIPTIONS_PER_SESSION {
                return Err(SubscribeError::TooMany);
            }
            session.subscriptions.insert(uri.to_owned());
        }
        let subscribers = inner.subscribers.entry(uri.to_owned()).or_default();
        let first = subscribers.is_empty();
        subscribers.insert(id.to_owned());
        Ok(first)
    }

    /// Drops a subscription; `true` when it was the last one on `uri` (so the child
    /// must be told).
    pub(super) fn unsubscribe(&self, id: &str, uri: &str) -> bool {
        let mut inner = self.lock();
        if !inner
            .by_id
            .get_mut(id)
            .is_some_and(|s| s.subscriptions.remove(uri))
        {
            return false;
        }
        inner.drop_subscriber(uri, id)
    }

    /// Every URI some session subscribes to (re-subscribed on a new child).
    pub(super) fn subscribed_uris(&self) -> Vec<String> {
        self.lock().subscribers.keys().cloned().collect()
    }

    /// Sends `event` to the GET stream of each session subscribed to `uri`.
    pub(super) fn to_subscribers(&self, uri: &str, event: &Bytes) {
        let mut inner = self.lock();
        let Some(ids) = inner.subscribers.get(uri).cloned() else {
            return;
        };
        for id in ids {
            if let Some(session) = inner.by_id.get_mut(&id) {
                deliver(session, event);
            }
        }
    }

    /// Sends `event` to every open GET stream.
    pub(super) fn to_all(&self, event: &Bytes) {
        for session in self.lock().by_id.values_mut() {
            deliver(session, event);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().by_id.len()
    }
}

fn deliver(session: &mut Session, event: &Bytes) {
    let Some(tx) = &session.stream else { return };
    match tx.try_send(event.clone()) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(
                "stdio bridge: a session's GET stream is not being read; dropped a notification"
            );
        }
        Err(mpsc::error::TrySendError::Closed(_)) => session.stream = None,
    }
}

impl Inner {
    /// Removes a session; returns the URIs it was the last subscriber of.
    fn remove(&mut self, id: &str) -> Vec<String> {
        let Some(session) = self.by_id.remove(id) else {
            return Vec::new();
        };
        session
            .subscriptions
            .iter()
            .filter(|uri| self.drop_subscriber(uri, id))
            .cloned()
            .collect()
    }

    fn drop_subscriber(&mut self, uri: &str, id: &str) -> bool {
        let Some(set) = self.subscribers.get_mut(uri) else {
            return false;
        };
        set.remove(id);
        if set.is_empty() {
            self.subscribers.remove(uri);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_is_asked_once_per_uri_and_told_when_the_last_subscriber_leaves() {
        let s = Sessions::new(10);
        let _ = s.create("a".into());
        let _ = s.create("b".into());
        assert_eq!(s.subscribe("a", "file:///x"), Ok(true));
        assert_eq!(s.subscribe("b", "file:///x"), Ok(false));
        assert_eq!(s.subscribe("a", "file:///x"), Ok(false));
        assert!(!s.unsubscribe("a", "file:///x"));
        // Not subscribed: nothing to tell the child.
        assert!(!s.unsubscribe("a", "file:///x"));
        let Some(Orphaned(orphaned)) = s.remove("b") else {
            panic!()
        };
        assert_eq!(orphaned, ["file:///x"]);
        assert!(s.subscribed_uris().is_empty());
    }

    #[test]
    fn updates_reach_only_the_sessions_subscribed_to_the_uri() {
        let s = Sessions::new(10);
        let _ = s.create("a".into());
        let _ = s.create("b".into());
        let mut a = s.open_stream("a").unwrap();
        let mut b = s.open_stream("b").unwrap();
        s.subscribe("a", "file:///x").unwrap();
        s.to_subscribers("file:///x", &Bytes::from_static(b"update"));
        assert_eq!(a.try_recv().unwrap(), "update");
        assert!(b.try_recv().is_err());
        s.to_all(&Bytes::from_static(b"changed"));
        assert_eq!(a.try_recv().unwrap(), "changed");
        assert_eq!(b.try_recv().unwrap(), "changed");
    }

    #[test]
    fn a_full_table_forgets_the_oldest_session_and_its_subscriptions() {
        let s = Sessions::new(2);
        let _ = s.create("a".into());
        s.subscribe("a", "file:///only-a").unwrap();
        let _ = s.create("b".into());
        let Orphaned(orphaned) = s.create("c".into());
        assert_eq!(orphaned, ["file:///only-a"]);
        assert_eq!(s.len(), 2);
        assert!(s.touch("a").is_err());
        assert!(s.touch("b").is_ok() && s.touch("c").is_ok());
    }

    #[test]
    fn a_session_holds_a_bounded_number_of_subscriptions() {
        let s = Sessions::new(1);
        let _ = s.create("a".into());
        for n in 0..MAX_SUBSCRIPTIONS_PER_SESSION {
            s.subscribe("a", &format!("file:///{n}")).unwrap();
        }
        assert_eq!(
            s.subscribe("a", "file:///one-more"),
            Err(SubscribeError::TooMany)
        );
        assert_eq!(
            s.subscribe("gone", "file:///x"),
            Err(SubscribeError::UnknownSession)
        );
    }
}
