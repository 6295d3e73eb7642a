//! The revoked set a verifier holds: tasks, their SVID serials and evicted node CAs,
//! each until its `until_unix` (+ a grace) has passed.
//!
//! Feed entries only ever add (a delta carries no removals): every holder drops an entry
//! itself once everything it revokes has expired anyway. Applying a delta costs what
//! the delta holds, never the size of the set; replacing the set with a snapshot costs
//! the snapshot.

use std::collections::HashMap;

use tessera_identity::TaskId;
use tessera_proto::tessera::v1::{RevokedNodeCa, RevokedTask};

/// How long past its `until_unix` an entry is kept, for clock skew between the sender
/// (which computed it from the certificates' notAfter) and this verifier.
pub const EXPIRY_GRACE_SECS: i64 = 60;

/// One revoked task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TaskEntry {
    /// The reason from the feed (`ended`, `consent_withdrawn`, ...).
    pub reason: String,
    /// After this (unix seconds) every SVID of the task has expired; `<= 0`: unknown,
    /// kept until a snapshot no longer carries it.
    pub until_unix: i64,
}

/// One revoked SVID serial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SerialEntry {
    /// The task it was issued to, when its entry named a valid one.
    pub task: Option<TaskId>,
    pub until_unix: i64,
}

/// One evicted node's CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct NodeCaEntry {
    /// The node's name, as the feed gives it (`spiffe://<td>/node/<name>`).
    pub node: String,
    pub until_unix: i64,
}

/// The revoked set.
#[derive(Clone, Debug, Default)]
pub(super) struct RevokedSet {
    pub tasks: HashMap<TaskId, TaskEntry>,
    /// By serial, lower-case hex without leading zero bytes ([`normalize_serial`]).
    pub serials: HashMap<String, SerialEntry>,
    /// By the CA certificate's serial, normalized as `serials`.
    pub node_cas: HashMap<String, NodeCaEntry>,
}

/// What an addition newly revoked: whose waiters to wake.
#[derive(Debug, Default)]
pub(super) struct Added {
    /// Tasks newly revoked, by id or by a new serial.
    pub tasks: Vec<TaskId>,
    /// Node CAs newly revoked, by normalized serial.
    pub node_cas: Vec<String>,
    /// A new serial whose entry names no valid task: it could be anyone's.
    pub everyone: bool,
}

impl Added {
    /// Whether nothing was newly revoked.
    pub(super) fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.node_cas.is_empty() && !self.everyone
    }
}

/// Lower-case hex with leading zero bytes dropped (at least one byte kept): the form
/// `tessera_identity` reports a leaf's serial in, whatever padding a sender kept.
pub fn normalize_serial(serial: &str) -> String {
    let mut s = serial.trim().to_ascii_lowercase();
    let zeros = s
        .as_bytes()
        .chunks(2)
        .take_while(|pair| *pair == b"00")
        .count();
    let drop = (zeros * 2).min(s.len().saturating_sub(2));
    // Whole pairs only: an odd-length text is left as the sender wrote it (never matches).
    if s.len().is_multiple_of(2) {
        s.drain(..drop);
    }
    s
}

/// Whether an entry valid until `until_unix` is past its grace at `now_unix`.
fn expired(until_unix: i64, now_unix: i64) -> bool {
    until_unix > 0 && now_unix > until_unix.saturating_add(EXPIRY_GRACE_SECS)
}

// === impl RevokedSet ===

impl RevokedSet {
    /// A set of `tasks` and `node_cas` (a snapshot or a legacy full set).
    pub(super) fn from_entries<'a>(
        tasks: impl IntoIterator<Item = &'a RevokedTask>,
        node_cas: impl IntoIterator<Item = &'a RevokedNodeCa>,
    ) -> Self {
        let mut set = Self::default();
        let mut ignored = Added::default();
        for t in tasks {
            set.add_task(t, &mut ignored);
        }
        for ca in node_cas {
            set.add_node_ca(ca, &mut ignored);
        }
        set
    }

    /// Adds one revoked task (its id and serials), noting in `added` what is new.
    pub(super) fn add_task(&mut self, r: &RevokedTask, added: &mut Added) {
        let task = match r.task_id.parse::<TaskId>() {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(task_id = %r.task_id, error = %e, "revocation entry with an invalid task id; keeping its serials");
                None
            }
        };
        let mut new_serial = false;
        for serial in &r.serials {
            let serial = normalize_serial(serial);
            match self.serials.get_mut(&serial) {
                Some(e) => e.until_unix = later(e.until_unix, r.until_unix),
                None => {
                    new_serial = true;
                    self.serials.insert(
                        serial,
                        SerialEntry {
                            task,
                            until_unix: r.until_unix,
                        },
                    );
                }
            }
        }
        let Some(id) = task else {
            added.everyone |= new_serial;
            return;
        };
        let new_task = match self.tasks.get_mut(&id) {
            Some(e) => {
                e.until_unix = later(e.until_unix, r.until_unix);
                false
            }
            None => {
                self.tasks.insert(
                    id,
                    TaskEntry {
                        reason: r.reason.clone(),
                        until_unix: r.until_unix,
                    },
                );
                true
            }
        };
        if new_task || new_serial {
            added.tasks.push(id);
        }
    }

    /// Adds one evicted node CA, noting in `added` whether it is new.
    pub(super) fn add_node_ca(&mut self, r: &RevokedNodeCa, added: &mut Added) {
        let serial = normalize_serial(&r.serial);
        match self.node_cas.get_mut(&serial) {
            Some(e) => e.until_unix = later(e.until_unix, r.until_unix),
            None => {
                self.node_cas.insert(
                    serial.clone(),
                    NodeCaEntry {
                        node: r.node.clone(),
                        until_unix: r.until_unix,
                    },
                );
                added.node_cas.push(serial);
            }
        }
    }

    /// What `self` revokes that `old` did not: the waiters to wake when `self` replaces
    /// `old`.
    pub(super) fn added_since(&self, old: &RevokedSet) -> Added {
        let mut added = Added::default();
        for id in self.tasks.keys() {
            if !old.tasks.contains_key(id) {
                added.tasks.push(*id);
            }
        }
        for (serial, e) in &self.serials {
            if !old.serials.contains_key(serial) {
                match e.task {
                    Some(id) => added.tasks.push(id),
                    None => added.everyone = true,
                }
            }
        }
        for serial in self.node_cas.keys() {
            if !old.node_cas.contains_key(serial) {
                added.node_cas.push(serial.clone());
            }
        }
        added
    }

    /// Drops every entry past its `until_unix` plus [`EXPIRY_GRACE_SECS`] at `now_unix`;
    /// returns how many went.
    pub(super) fn prune(&mut self, now_unix: i64) -> usize {
        let before = self.len();
        self.tasks.retain(|_, e| !expired(e.until_unix, now_unix));
        self.serials.retain(|_, e| !expired(e.until_unix, now_unix));
        self.node_cas
            .retain(|_, e| !expired(e.until_unix, now_unix));
        before - self.len()
    }

    /// Whether anything in the set is past its grace at `now_unix` (a scan; for the
    /// pruning timer to skip taking the write lock when nothing would go).
    pub(super) fn any_expired(&self, now_unix: i64) -> bool {
        self.tasks.values().any(|e| expired(e.until_unix, now_unix))
            || self
                .serials
                .values()
                .any(|e| expired(e.until_unix, now_unix))
            || self
                .node_cas
                .values()
                .any(|e| expired(e.until_unix, now_unix))
    }

    /// Entries held (tasks, serials and node CAs).
    pub(super) fn len(&self) -> usize {
        self.tasks.len() + self.serials.len() + self.node_cas.len()
    }
}

/// The later of two `until_unix`, where `<= 0` (unknown) outlasts any time.
fn later(a: i64, b: i64) -> i64 {
    if a <= 0 || b <= 0 { 0 } else { a.max(b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &TaskId, serials: &[&str], until_unix: i64) -> RevokedTask {
        RevokedTask {
            task_id: id.to_string(),
            serials: serials.iter().map(|s| (*s).to_owned()).collect(),
            reason: "ended".into(),
            until_unix,
            ..Default::default()
        }
    }

    #[test]
    fn serials_compare_without_case_or_sign_padding() {
        assert_eq!(normalize_serial("0A1B"), "0a1b");
        assert_eq!(normalize_serial("000A1B"), "0a1b");
        assert_eq!(normalize_serial("00"), "00");
        assert_eq!(normalize_serial("0000"), "00");
        assert_eq!(normalize_serial("7F01"), "7f01");
        assert_eq!(normalize_serial("abc"), "abc", "odd length left alone");
    }

    #[test]
    fn entries_leave_once_their_svids_expired_plus_the_grace() {
        let (a, b) = (TaskId::new(), TaskId::new());
        let mut set = RevokedSet::from_entries(
            [&task(&a, &["01"], 1_000), &task(&b, &["02"], 2_000)],
            [&RevokedNodeCa {
                node: "spiffe://acme.corp/node/n1".into(),
                serial: "0C".into(),
                until_unix: 1_500,
                ..Default::default()
            }],
        );
        assert_eq!(set.prune(1_000 + EXPIRY_GRACE_SECS), 0, "within the grace");
        assert_eq!(
            set.prune(1_001 + EXPIRY_GRACE_SECS),
            2,
            "task a and its serial"
        );
        assert!(!set.tasks.contains_key(&a) && set.tasks.contains_key(&b));
        assert!(set.node_cas.contains_key("0c"));
        assert_eq!(set.prune(1_501 + EXPIRY_GRACE_SECS), 1, "the node CA");
        assert!(set.any_expired(i64::MAX - 100));
    }

    #[test]
    fn an_entry_without_an_expiry_is_kept() {
        let a = TaskId::new();
        let mut set = RevokedSet::from_entries([&task(&a, &["01"], 0)], []);
        assert_eq!(set.prune(i64::MAX - 100), 0);
        assert!(set.tasks.contains_key(&a));
    }

    #[test]
    fn adding_reports_only_what_is_new() {
        let (a, b) = (TaskId::new(), TaskId::new());
        let mut set = RevokedSet::from_entries([&task(&a, &["01"], 10)], []);
        let mut added = Added::default();
        set.add_task(&task(&a, &["01"], 20), &mut added);
        assert!(added.is_empty(), "{added:?}");
        assert_eq!(set.tasks[&a].until_unix, 20, "the later expiry wins");
        set.add_task(&task(&a, &["02"], 20), &mut added);
        set.add_task(&task(&b, &[], 20), &mut added);
        assert_eq!(added.tasks, vec![a, b]);
        let mut bad = task(&a, &["03"], 20);
        bad.task_id = "not-a-ulid".into();
        set.add_task(&bad, &mut added);
        assert!(added.everyone, "a serial of no known task");

        let newer = RevokedSet::from_entries(
            [&task(&a, &["01"], 10), &task(&b, &["04"], 10)],
            [&RevokedNodeCa {
                serial: "0d".into(),
                ..Default::default()
            }],
        );
        let old = RevokedSet::from_entries([&task(&a, &["01"], 10)], []);
        let added = newer.added_since(&old);
        assert_eq!(added.tasks, vec![b, b], "by id and by serial");
        assert_eq!(added.node_cas, vec!["0d".to_owned()]);
    }
}
