//! Who holds which live task: per process, the views its Workload API streams show,
//! and the places BeginTasks under way hold against `task_max_live_per_process`.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use tessera_authority::IssuedSvid;
use tokio::sync::watch;

use super::error::TaskError;

/// What a Workload API stream shows for one live task.
#[derive(Clone, Debug)]
pub(crate) struct TaskView {
    /// Task id (the stream's hint).
    pub id: String,
    /// The task's SPIFFE ID.
    pub spiffe_id: String,
    /// Its current SVID.
    pub svid: Arc<IssuedSvid>,
    /// The process the task is bound to; once it has exited the view is withheld
    /// even before the task is ended, so a process reusing the pid never sees it.
    pub owner: Option<Arc<OwnedFd>>,
}

impl TaskView {
    /// Whether the bound process is still running.
    pub(crate) fn owner_alive(&self) -> bool {
        self.owner
            .as_ref()
            .is_none_or(|fd| !crate::attest::sys::pidfd_exited(fd).unwrap_or(true))
    }
}

/// One process's live tasks, and the streams watching them.
struct Owner {
    tx: watch::Sender<Arc<Vec<TaskView>>>,
    tasks: BTreeMap<String, TaskView>,
    /// BeginTask calls past the limit check whose task is not in `tasks` yet.
    reserved: usize,
}

impl Owner {
    fn new() -> Owner {
        Owner {
            tx: watch::channel(Arc::new(Vec::new())).0,
            tasks: BTreeMap::new(),
            reserved: 0,
        }
    }

    /// Nothing to keep: no task, no reservation, no stream watching.
    fn is_idle(&self) -> bool {
        self.tasks.is_empty() && self.reserved == 0 && self.tx.receiver_count() == 0
    }
}

/// Every process's live tasks, keyed by pid. A process with nothing to keep (see
/// [`Owner::is_idle`]) has no entry, so the map stays as small as the live set.
#[derive(Default)]
pub(super) struct Owners {
    by_pid: Mutex<HashMap<i32, Owner>>,
}

impl Owners {
    /// Live task views bound to `pid`, now and on every change.
    pub(super) fn subscribe(&self, pid: i32) -> watch::Receiver<Arc<Vec<TaskView>>> {
        let mut owners = self.lock();
        let owner = owners.entry(pid).or_insert_with(Owner::new);
        if owner.tx.receiver_count() == 0 {
            // Views are not maintained while nobody watches: bring it up to date.
            owner
                .tx
                .send_replace(Arc::new(owner.tasks.values().cloned().collect()));
        }
        owner.tx.subscribe()
    }

    /// Holds a place for one more live task of process `pid`, or refuses when the
    /// process already holds (or is beginning) `max` tasks.
    pub(super) fn reserve(
        self: &Arc<Self>,
        pid: i32,
        max: usize,
    ) -> Result<Reservation, TaskError> {
        let mut owners = self.lock();
        // A refused owner is never idle (it holds `max` ≥ 1 tasks or places), so the
        // entry made here never lingers empty.
        let owner = owners.entry(pid).or_insert_with(Owner::new);
        if owner.tasks.len() + owner.reserved >= max {
            return Err(TaskError::TooManyLive { pid, max });
        }
        owner.reserved += 1;
        Ok(Reservation {
            owners: Arc::clone(self),
            pid,
        })
    }

    /// Updates process `pid`'s stream view of task `id` (`None` removes it).
    pub(super) fn show(&self, pid: i32, id: &str, view: Option<TaskView>) {
        let mut owners = self.lock();
        let owner = owners.entry(pid).or_insert_with(Owner::new);
        match view {
            Some(view) => {
                owner.tasks.insert(id.to_owned(), view);
            }
            None => {
                owner.tasks.remove(id);
            }
        }
        // Building the view is O(tasks of this process); skip it when no stream
        // of that process is watching (subscribe builds it on demand).
        if owner.tx.receiver_count() > 0 {
            let views: Vec<TaskView> = owner.tasks.values().cloned().collect();
            owner.tx.send_replace(Arc::new(views));
        } else if owner.is_idle() {
            owners.remove(&pid);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, Owner>> {
        self.by_pid.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A place among a process's live tasks, held by a BeginTask from the limit check until
/// its task is published (or it fails). Concurrent BeginTasks of one process therefore
/// cannot together pass the limit.
pub(super) struct Reservation {
    owners: Arc<Owners>,
    pid: i32,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut owners = self.owners.lock();
        if let Some(owner) = owners.get_mut(&self.pid) {
            owner.reserved -= 1;
            if owner.is_idle() {
                owners.remove(&self.pid);
            }
        }
    }
}
