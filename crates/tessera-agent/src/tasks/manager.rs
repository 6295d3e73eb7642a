//! The task manager: every live task of this agent, from BeginTask to its one end.
//!
//! - [`error`]: what can go wrong ([`TaskError`]);
//! - [`owners`]: which process holds which live task, and what its streams show;
//! - [`live`]: one live task in memory, and the state its SVIDs and revocation share;
//! - [`lifecycle`]: begin, rotation, and the ways a task ends, each exactly once.
//!
//! This file holds the manager itself, its start (ending what a previous run left
//! live) and its periodic upkeep.

mod error;
mod lifecycle;
mod live;
mod owners;

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_authority::Authority;
use tessera_identity::{ClientId, Scope, ServerName};
use tessera_store::{Revocation, StoreError, TaskRecord};
use time::OffsetDateTime;
use tokio::sync::watch;

pub(crate) use error::TaskError;
pub(crate) use owners::TaskView;

use super::consent::ConsentCache;
use super::revocation::{FeedConfig, RevocationFeed};
use crate::metrics::Metrics;
use live::LiveTask;
use owners::Owners;

/// Task lifetimes and SVID TTL.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TaskConfig {
    /// Lifetime of each task SVID (rotated at half life while the task lives).
    pub svid_ttl: Duration,
    /// Task lifetime when the request names none.
    pub default_lifetime: Duration,
    /// Longest task lifetime a request may ask for.
    pub max_lifetime: Duration,
    /// Most live tasks one process may hold (see the agent's
    /// `task_max_live_per_process`).
    pub max_live_per_process: usize,
    /// Lifetime of task JWT-SVIDs: a revocation is kept at least this long.
    pub jwt_svid_ttl: Duration,
}

/// Why a task ended; the strings are stable (audit, feed, API).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// EndTask by its client.
    Ended,
    /// The process it was bound to exited.
    ProcessExited,
    /// Its deadline passed.
    Deadline,
    /// The consent it relied on was withdrawn.
    ConsentWithdrawn,
    /// An administrator revoked it.
    Revoked,
    /// The agent restarted while it was live (its process binding was lost).
    AgentRestart,
    /// The registration entry of its client was deleted.
    EntryDeleted,
}

impl EndReason {
    /// The reason a revocation from the server's feed gives, as this agent records it;
    /// one it does not know is an administrator's revocation.
    pub(crate) fn from_feed(reason: &str) -> EndReason {
        [
            EndReason::Ended,
            EndReason::ProcessExited,
            EndReason::Deadline,
            EndReason::ConsentWithdrawn,
            EndReason::Revoked,
            EndReason::AgentRestart,
            EndReason::EntryDeleted,
        ]
        .into_iter()
        .find(|r| r.as_str() == reason)
        .unwrap_or(EndReason::Revoked)
    }

    /// The stable string.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EndReason::Ended => "ended",
            EndReason::ProcessExited => "process_exited",
            EndReason::Deadline => "deadline",
            EndReason::ConsentWithdrawn => "consent_withdrawn",
            EndReason::Revoked => "revoked",
            EndReason::AgentRestart => "agent_restart",
            EndReason::EntryDeleted => "entry_deleted",
        }
    }
}

/// Whether a BeginTask's caller still holds the client identity it was attested with,
/// asked once the call holds the registration gate. The caller was attested before it
/// waited for the gate: an entry deleted meanwhile, whose deletion then ended every task
/// of its client, must not let the call begin a task that the deletion missed.
pub(crate) struct Entitlement(Pin<Box<dyn Future<Output = bool> + Send>>);

impl Entitlement {
    /// Entitled if `check` resolves to `true`; `check` runs under the registration gate.
    pub(crate) fn new(check: impl Future<Output = bool> + Send + 'static) -> Entitlement {
        Entitlement(Box::pin(check))
    }

    /// Always entitled: for tests whose caller nothing can take away.
    #[cfg(test)]
    pub(crate) fn granted() -> Entitlement {
        Entitlement::new(std::future::ready(true))
    }
}

impl std::fmt::Debug for Entitlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Entitlement(..)")
    }
}

/// A validated BeginTask request.
#[derive(Debug)]
pub(crate) struct BeginRequest {
    /// Acting client identity.
    pub client: ClientId,
    /// Human subject.
    pub subject: String,
    /// Purpose text.
    pub purpose: String,
    /// Target server.
    pub server: ServerName,
    /// Requested scopes (non-empty, all for `server`).
    pub scopes: Vec<Scope>,
    /// Requested lifetime, if any.
    pub lifetime: Option<Duration>,
    /// Process the task is bound to.
    pub owner_pid: i32,
    /// Its pidfd.
    pub owner_fd: Option<Arc<OwnedFd>>,
    /// Who asked, for audit.
    pub actor: String,
    /// Re-checked under the registration gate.
    pub entitled: Entitlement,
}

/// Owns every live task of this agent.
pub(crate) struct TaskManager {
    authority: Arc<Authority>,
    store: tessera_store::Store,
    consents: Arc<ConsentCache>,
    feed: Arc<RevocationFeed>,
    metrics: Arc<Metrics>,
    config: TaskConfig,
    live: Mutex<HashMap<String, Arc<LiveTask>>>,
    owners: Arc<Owners>,
    /// BeginTask holds it shared from its checks (entitlement, consent) until its task
    /// is live here; consent withdrawal and entry deletion hold it exclusively. So no
    /// task can slip in on a consent being withdrawn or for a client being deregistered,
    /// and every task stored as live is in `live` whenever it is held exclusively.
    registration_gate: Arc<tokio::sync::RwLock<()>>,
    /// Places where a test stops one call to force an interleaving.
    #[cfg(test)]
    pub(super) hooks: super::hooks::Hooks,
}

impl std::fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskManager")
            .field("live", &self.lock_live().len())
            .finish_non_exhaustive()
    }
}

/// The actor named in the records of ends the server decided.
pub(crate) const SERVER_ACTOR: &str = "tessera-server";

fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl TaskManager {
    /// Creates the manager. Tasks left live by a previous run are ended with
    /// reason `agent_restart`: their process bindings are gone, and a task whose
    /// end the agent could no longer observe must not stay valid.
    pub(crate) async fn start(
        authority: Arc<Authority>,
        store: tessera_store::Store,
        consents: Arc<ConsentCache>,
        metrics: Arc<Metrics>,
        config: TaskConfig,
        feed: FeedConfig,
    ) -> Result<Arc<TaskManager>, StoreError> {
        let now = now_unix();
        for task in store.live_tasks().await? {
            let revocation = Revocation {
                task_id: task.id.to_string(),
                spiffe_id: task_spiffe_id(&authority, &task),
                serials: Vec::new(),
                reason: EndReason::AgentRestart.as_str().into(),
                revoked_at_ms: now_ms(),
                // Any SVID or JWT-SVID of the task may still be presented this long.
                until: now
                    + i64::try_from(config.svid_ttl.max(config.jwt_svid_ttl).as_secs())
                        .unwrap_or(i64::MAX)
                    + tessera_identity::JWT_LEEWAY_SECS,
            };
            store
                .end_task(
                    &task.id,
                    EndReason::AgentRestart.as_str(),
                    now,
                    revocation,
                    "agent",
                )
                .await?;
            tracing::info!(task = %task.id, "ended task left live by a previous run");
        }
        let feed = Arc::new(RevocationFeed::new(feed, store.revocations(now).await?));
        Ok(Arc::new(TaskManager {
            authority,
            store,
            consents,
            feed,
            metrics,
            config,
            live: Mutex::new(HashMap::new()),
            owners: Arc::default(),
            registration_gate: Arc::new(tokio::sync::RwLock::new(())),
            #[cfg(test)]
            hooks: super::hooks::Hooks::default(),
        }))
    }

    /// The store.
    pub(crate) fn store(&self) -> &tessera_store::Store {
        &self.store
    }

    /// The revocation feed.
    pub(crate) fn feed(&self) -> &Arc<RevocationFeed> {
        &self.feed
    }

    /// Number of live tasks.
    pub(crate) fn live_count(&self) -> usize {
        self.lock_live().len()
    }

    /// Live task views bound to `pid`, now and on every change.
    pub(crate) fn subscribe_owner(&self, pid: i32) -> watch::Receiver<Arc<Vec<TaskView>>> {
        self.owners.subscribe(pid)
    }

    /// Periodic upkeep until shutdown: prune expired revocations, follow consent changes.
    pub(crate) async fn run(self: Arc<Self>, drain: crate::drain::Watch) {
        let mut consents_rx = self.store.watch_consents();
        let mut prune = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = drain.signaled() => return,
                r = consents_rx.changed() => {
                    if r.is_err() { return }
                    if let Err(e) = self.consents.reload().await {
                        tracing::error!(error = %e, "reloading consents failed");
                    }
                }
                _ = prune.tick() => {
                    let now = now_unix();
                    self.feed.prune(now);
                    if let Err(e) = self.store.prune_revocations(now).await {
                        tracing::error!(error = %e, "pruning revocations failed");
                    }
                }
            }
        }
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LiveTask>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs `work` on a task of its own and waits for it: the work finishes even if the
/// caller stops waiting (a timed-out or cancelled RPC drops the caller's future). For
/// changes the store makes regardless once queued, whose in-memory half (the feed, the
/// live set, streams) must then follow.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, TaskError>> + Send + 'static,
) -> Result<T, TaskError> {
    match tokio::spawn(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(TaskError::ShuttingDown),
    }
}

fn task_spiffe_id(authority: &Authority, t: &TaskRecord) -> String {
    ClientId::new(authority.trust_domain().clone(), t.client.clone())
        .task(t.id)
        .to_string()
}

mod jwt;
#[cfg(test)]
pub(crate) mod tests;
