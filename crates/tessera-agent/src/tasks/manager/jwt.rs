//! What JWT-SVIDs need from the live tasks: the claims of a task its own process may
//! get a token for, and whether a task a token names is still live.
//!
//! A task JWT-SVID is recorded before it is shown, as a task X.509-SVID is: its expiry
//! extends how long the task's revocation is kept, so a verifier reading the feed
//! refuses the token for as long as it could otherwise be presented.

use std::time::Duration;

use tessera_identity::{JWT_LEEWAY_SECS, TaskClaims, TaskSpiffeId};

use super::TaskManager;

impl TaskManager {
    /// The claims of live task `spiffe_id` if process `pid` holds it, and the expiry a
    /// JWT-SVID for it may carry: `now + ttl`, never past the task's deadline. `None`
    /// for a task that is not live, belongs to another process (or a process that has
    /// exited), or has no lifetime left: the caller learns nothing about which.
    pub(crate) fn grant_jwt(
        &self,
        pid: i32,
        spiffe_id: &str,
        ttl: Duration,
        now: i64,
    ) -> Option<(TaskClaims, i64)> {
        let id: TaskSpiffeId = spiffe_id.parse().ok()?;
        let live = self.lock_live().get(&id.task.to_string()).cloned()?;
        if live.spiffe_id != spiffe_id || live.owner_pid != pid {
            return None;
        }
        if let Some(fd) = &live.owner_fd
            && crate::attest::sys::pidfd_exited(fd).unwrap_or(true)
        {
            return None;
        }
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let exp = now.saturating_add(ttl).min(live.claims.deadline_unix);
        if exp <= now {
            return None;
        }
        let mut state = live.state();
        if state.ended {
            return None;
        }
        // Under the same lock an end takes: either the end sees this expiry in `until`,
        // or this call sees `ended`.
        state.until = state.until.max(exp.saturating_add(JWT_LEEWAY_SECS));
        Some((live.claims.clone(), exp))
    }

    /// Whether task `task_id` is live here (begun, not ended).
    pub(crate) fn is_live(&self, task_id: &str) -> bool {
        self.lock_live()
            .get(task_id)
            .is_some_and(|live| !live.state().ended)
    }
}
