//! A live task in memory: its record, claims, process binding, and the state its
//! SVIDs and its revocation share.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use tessera_authority::IssuedSvid;
use tessera_identity::TaskClaims;
use tessera_store::TaskRecord;
use tokio::sync::oneshot;

/// A task this agent serves, from the moment it is stored until it ends.
pub(super) struct LiveTask {
    pub(super) record: TaskRecord,
    pub(super) spiffe_id: String,
    pub(super) claims: TaskClaims,
    pub(super) owner_pid: i32,
    pub(super) owner_fd: Option<Arc<OwnedFd>>,
    pub(super) state: Mutex<TaskState>,
    /// Stops the task's watcher (deadline, process exit, rotation) once it has ended.
    pub(super) stop: Mutex<Option<oneshot::Sender<()>>>,
}

/// What a live task's revocation must cover and what its process is shown, behind one
/// lock. An SVID is published only under this lock and only while `ended` is false, and
/// whoever ends the task sets `ended` under it before dropping the task from its
/// process's streams: so no SVID of an ended task is ever shown again, and the
/// revocation built when `ended` is set covers every SVID ever shown.
pub(super) struct TaskState {
    /// The SVID the task's process is shown.
    pub(super) svid: Arc<IssuedSvid>,
    /// Serials of every SVID issued for the task, including a rotated one still being
    /// recorded (never shown before it is recorded, but revoked either way).
    pub(super) serials: Vec<String>,
    /// The latest `not_after` among them: the revocation is kept until then.
    pub(super) until: i64,
    /// Set once, by whoever ends the task.
    pub(super) ended: bool,
}

impl LiveTask {
    pub(super) fn state(&self) -> MutexGuard<'_, TaskState> {
        // Every change under this lock is a few assignments; a panic cannot leave it
        // half-done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
