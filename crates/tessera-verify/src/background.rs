//! How the verifier's background tasks stop: one rule for all of them.
//!
//! Every task this crate spawns is started by a function that returns a [`Background`]
//! guard along with what the task keeps current:
//!
//! | started by | keeps current | holds while it runs |
//! |---|---|---|
//! | [`crate::RevocationWatcher::spawn`] | the revoked set | a stream on the agent's workload socket |
//! | [`crate::trust::workload::connect`], [`crate::trust::workload::from_x509_source`] | the trust material | the `X509Source` and its stream on the workload socket |
//! | [`crate::trust::files::spawn`] | the trust material | a poll timer |
//! | [`crate::authz::policy::PolicyStore::spawn_watch`] | the policy set | the `Arc<PolicyStore>` and a poll timer |
//!
//! The rule: **a task runs exactly as long as its guard.** Dropping the guard asks the
//! task to stop; it stops at its next `.await` and then releases what it holds (an
//! `X509Source` is shut down, which closes its stream). [`Background::shutdown`] asks
//! the same and waits until the task has finished, so that when it returns the agent
//! has seen the socket close. Keep the guard for as long as you serve with what the
//! task feeds: nothing else keeps the task alive, and nothing the task holds keeps it
//! alive either (an owner who forgets the guard gets a task that stops, never one that
//! lingers holding the agent's socket).
//!
//! A stopped task leaves its output failing closed or frozen, never silently fresh: a
//! [`crate::RevocationWatcher`] whose feed stopped goes stale after its bound and then
//! refuses task credentials; a [`crate::TrustSource`] keeps the last material (which
//! expires); a [`crate::authz::policy::PolicyStore`] keeps the last set.
//!
//! The audit file writer ([`crate::AuditLog::with_json_file`]) is a thread, not a task,
//! and follows the same rule with the log itself as its guard: it ends, after writing
//! what was queued, when the last clone of the [`crate::AuditLog`] is dropped.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Owns one background task of this crate: the task stops when the guard is dropped,
/// or when [`Background::shutdown`] is awaited (see the [module docs](self)).
#[derive(Debug)]
#[must_use = "the background task stops as soon as its guard is dropped"]
pub struct Background {
    name: &'static str,
    stop: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl Background {
    /// Spawns `task` on the current runtime, handing it the token it must stop on.
    ///
    /// The task selects on [`CancellationToken::cancelled`] (or uses
    /// [`CancellationToken::run_until_cancelled`]) around its waits, and releases what it
    /// holds before it returns. Public so that crates built on this one (the gateway's
    /// stdio upstream supervisor) hand out the same kind of guard for their own tasks.
    pub fn spawn<F>(name: &'static str, task: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(task(stop.clone()));
        Self {
            name,
            stop,
            handle: Some(handle),
        }
    }

    /// Which task this guards (`revocation-feed`, `trust-workload`, `trust-files`,
    /// `policy-reload`), for logs.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether the task has ended (stopped, or returned on its own, e.g. when the
    /// `X509Source` it follows closed).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the task and waits until it has finished and released what it held.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take()
            && let Err(e) = handle.await
            && e.is_panic()
        {
            tracing::error!(task = self.name, "background task panicked");
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
