//! The task lifecycle: begin (consent check, SVID, durable record), rotation,
//! and the five ways a task ends, each of which ends it exactly once.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tessera_authority::{Authority, IssuedSvid, SvidSpec};
use tessera_identity::{ClientId, Scope, ServerId, ServerName, TaskClaims, TaskId};
use tessera_store::{EndOutcome, Revocation, StoreError, SvidIssued, TaskRecord};
use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};

use super::consent::{ConsentCache, ConsentDenied};
use super::revocation::RevocationFeed;
use crate::metrics::Metrics;

/// Task lifetimes and SVID TTL.
#[derive(Clone, Copy, Debug)]
pub struct TaskConfig {
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
pub enum EndReason {
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
    /// The stable string.
    pub fn as_str(self) -> &'static str {
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

/// Errors of the task API, each mapped to one gRPC code by the service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// No consent covers the request.
    #[error(transparent)]
    Consent(#[from] ConsentDenied),
    /// No such task for this caller.
    #[error("no task {0} for this client")]
    NotFound(String),
    /// The process the task would be bound to already holds the most live tasks allowed.
    #[error(
        "process {pid} already holds {max} live tasks, the most task_max_live_per_process allows; end one first"
    )]
    TooManyLive {
        /// The process.
        pid: i32,
        /// The limit.
        max: usize,
    },
    /// The caller no longer holds the client identity it was attested with (its entry
    /// was deleted meanwhile).
    #[error("this caller no longer holds client identity {client}")]
    NotEntitled {
        /// The client name.
        client: String,
    },
    /// Issuing the SVID failed.
    #[error("issuing the task SVID failed: {0}")]
    Authority(#[from] tessera_authority::AuthorityError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The agent stopped before the call finished.
    #[error("the agent is shutting down")]
    ShuttingDown,
}

/// What a Workload API stream shows for one live task.
#[derive(Clone, Debug)]
pub struct TaskView {
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
    pub fn owner_alive(&self) -> bool {
        self.owner
            .as_ref()
            .is_none_or(|fd| !crate::attest::sys::pidfd_exited(fd).unwrap_or(true))
    }
}

/// Whether a BeginTask's caller still holds the client identity it was attested with,
/// asked once the call holds the registration gate. The caller was attested before it
/// waited for the gate: an entry deleted meanwhile, whose deletion then ended every task
/// of its client, must not let the call begin a task that the deletion missed.
pub struct Entitlement(Pin<Box<dyn Future<Output = bool> + Send>>);

impl Entitlement {
    /// Entitled if `check` resolves to `true`; `check` runs under the registration gate.
    pub fn new(check: impl Future<Output = bool> + Send + 'static) -> Entitlement {
        Entitlement(Box::pin(check))
    }

    /// Always entitled: for callers whose identity nothing can take away.
    pub fn granted() -> Entitlement {
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
pub struct BeginRequest {
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

struct LiveTask {
    record: TaskRecord,
    spiffe_id: String,
    claims: TaskClaims,
    owner_pid: i32,
    owner_fd: Option<Arc<OwnedFd>>,
    state: Mutex<TaskState>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

/// What a live task's revocation must cover and what its process is shown, behind one
/// lock. An SVID is published only under this lock and only while `ended` is false, and
/// whoever ends the task sets `ended` under it before dropping the task from its
/// process's streams: so no SVID of an ended task is ever shown again, and the
/// revocation built when `ended` is set covers every SVID ever shown.
struct TaskState {
    /// The SVID the task's process is shown.
    svid: Arc<IssuedSvid>,
    /// Serials of every SVID issued for the task, including a rotated one still being
    /// recorded (never shown before it is recorded, but revoked either way).
    serials: Vec<String>,
    /// The latest `not_after` among them: the revocation is kept until then.
    until: i64,
    /// Set once, by whoever ends the task.
    ended: bool,
}

impl LiveTask {
    fn state(&self) -> MutexGuard<'_, TaskState> {
        // Every change under this lock is a few assignments; a panic cannot leave it
        // half-done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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

/// A place among a process's live tasks, held by a BeginTask from the limit check until
/// its task is published (or it fails). Concurrent BeginTasks of one process therefore
/// cannot together pass the limit.
struct Reservation {
    manager: Arc<TaskManager>,
    pid: i32,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut owners = self.manager.lock_owners();
        if let Some(owner) = owners.get_mut(&self.pid) {
            owner.reserved -= 1;
            if owner.is_idle() {
                owners.remove(&self.pid);
            }
        }
    }
}

/// Owns every live task of this agent.
pub struct TaskManager {
    authority: Arc<Authority>,
    store: tessera_store::Store,
    consents: Arc<ConsentCache>,
    feed: Arc<RevocationFeed>,
    metrics: Arc<Metrics>,
    config: TaskConfig,
    live: Mutex<HashMap<String, Arc<LiveTask>>>,
    owners: Mutex<HashMap<i32, Owner>>,
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

/// How long a task waits to try again after its SVID failed to rotate (the CA or the
/// store refused); the current SVID stays in use meanwhile.
const ROTATION_RETRY: Duration = Duration::from_secs(5);

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
    pub async fn start(
        authority: Arc<Authority>,
        store: tessera_store::Store,
        consents: Arc<ConsentCache>,
        metrics: Arc<Metrics>,
        config: TaskConfig,
    ) -> Result<Arc<TaskManager>, StoreError> {
        let now = now_unix();
        for task in store.live_tasks().await? {
            let revocation = Revocation {
                task_id: task.id.clone(),
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
        let feed = Arc::new(RevocationFeed::new(store.revocations(now).await?));
        Ok(Arc::new(TaskManager {
            authority,
            store,
            consents,
            feed,
            metrics,
            config,
            live: Mutex::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
            registration_gate: Arc::new(tokio::sync::RwLock::new(())),
            #[cfg(test)]
            hooks: super::hooks::Hooks::default(),
        }))
    }

    /// The store.
    pub fn store(&self) -> &tessera_store::Store {
        &self.store
    }

    /// The revocation feed.
    pub fn feed(&self) -> &Arc<RevocationFeed> {
        &self.feed
    }

    /// Number of live tasks.
    pub fn live_count(&self) -> usize {
        self.lock_live().len()
    }

    /// Live task views bound to `pid`, now and on every change.
    pub fn subscribe_owner(&self, pid: i32) -> watch::Receiver<Arc<Vec<TaskView>>> {
        let mut owners = self.lock_owners();
        let owner = owners.entry(pid).or_insert_with(Owner::new);
        if owner.tx.receiver_count() == 0 {
            // Views are not maintained while nobody watches: bring it up to date.
            owner
                .tx
                .send_replace(Arc::new(owner.tasks.values().cloned().collect()));
        }
        owner.tx.subscribe()
    }

    /// Begins a task; returns its record and first SVID once it is durable.
    ///
    /// A caller that stops waiting (a timed-out or cancelled RPC drops this future)
    /// before its task is queued for the store leaves nothing behind. From the store
    /// write on, the work runs on a task of its own and always finishes: the store
    /// applies a queued write regardless, and a stored task must then also be live here
    /// (watched, endable, on its process's stream), never a row that claims to be live
    /// while nothing can end it.
    pub async fn begin(
        self: &Arc<Self>,
        req: BeginRequest,
    ) -> Result<(TaskRecord, Arc<IssuedSvid>), TaskError> {
        let lifetime = req.lifetime.unwrap_or(self.config.default_lifetime);
        if lifetime > self.config.max_lifetime || lifetime.is_zero() {
            return Err(TaskError::InvalidArgument(format!(
                "lifetime must be between 1s and {}",
                humantime::format_duration(self.config.max_lifetime)
            )));
        }
        let reservation = self.reserve(req.owner_pid)?;
        let gate = Arc::clone(&self.registration_gate).read_owned().await;
        if !req.entitled.0.await {
            return Err(TaskError::NotEntitled {
                client: req.client.name.as_str().to_owned(),
            });
        }
        self.consents.ensure_fresh().await?;
        let now = now_unix();
        let consent = self.consents.check(
            req.client.name.as_str(),
            &req.subject,
            req.server.as_str(),
            &req.scopes,
            now,
        )?;
        let deadline =
            (now + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)).min(consent.expires_at);
        let task_id = TaskId::new();
        let spiffe = req.client.task(task_id);
        let spiffe_id = spiffe.to_string();
        let server_id = ServerId::new(self.authority.trust_domain().clone(), req.server.clone());
        let claims = TaskClaims {
            version: tessera_identity::TASK_CLAIMS_VERSION,
            task_id,
            client_id: req.client.clone(),
            subject: req.subject.clone(),
            purpose: req.purpose.clone(),
            server: server_id,
            scopes: req.scopes.clone(),
            consent_id: consent.id.clone(),
            deadline_unix: deadline,
        };
        claims
            .validate()
            .map_err(|e| TaskError::InvalidArgument(format!("task claims: {e}")))?;
        let svid = Arc::new(self.issue(&spiffe_id, &claims, deadline)?);
        let record = TaskRecord {
            id: task_id.to_string(),
            client: req.client.name.as_str().to_owned(),
            subject: req.subject,
            server: req.server.as_str().to_owned(),
            scopes: req.scopes.iter().map(ToString::to_string).collect(),
            purpose: req.purpose,
            consent_id: consent.id,
            pid: i64::from(req.owner_pid),
            begun_at: now,
            deadline,
            ended_at: None,
            end_reason: None,
            serials: vec![svid.serial_hex.clone()],
        };
        let serial = svid.serial_hex.clone();
        let issued = SvidIssued {
            serial: serial.clone(),
            spiffe_id: spiffe_id.clone(),
            not_after: svid.not_after_unix,
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let live = Arc::new(LiveTask {
            record,
            spiffe_id,
            claims,
            owner_pid: req.owner_pid,
            owner_fd: req.owner_fd,
            state: Mutex::new(TaskState {
                svid: Arc::clone(&svid),
                serials: vec![serial],
                until: svid.not_after_unix,
                ended: false,
            }),
            stop: Mutex::new(Some(stop_tx)),
        });
        let this = Arc::clone(self);
        let actor = req.actor;
        detached(async move {
            this.store
                .begin_task(live.record.clone(), issued, &actor)
                .await?;
            #[cfg(test)]
            this.hooks.pause(super::hooks::Pause::BeginStored).await;
            this.go_live(&live, &svid, stop_rx, reservation);
            // Only now: a withdrawal or deletion that took the gate between the store
            // write and go_live would have found the task stored but not live, and
            // missed it here while ending it on disk.
            drop(gate);
            Ok((live.record.clone(), svid))
        })
        .await
    }

    /// Makes a stored task live: tracked, on its process's stream, watched.
    fn go_live(
        self: &Arc<Self>,
        live: &Arc<LiveTask>,
        svid: &Arc<IssuedSvid>,
        stop: oneshot::Receiver<()>,
        reservation: Reservation,
    ) {
        let record = &live.record;
        self.lock_live().insert(record.id.clone(), Arc::clone(live));
        {
            // Endable from the line above: an end may already have retired it.
            let state = live.state();
            if !state.ended {
                self.publish(live, Some(Arc::clone(svid)));
            }
        }
        drop(reservation);
        self.metrics.tasks_begun.inc();
        self.metrics.live_tasks.set(self.live_count() as i64);
        self.metrics
            .svids_issued
            .get_or_create(&crate::metrics::KindLabel { kind: "task" })
            .inc();
        tracing::info!(task = %record.id, client = %record.client, subject = record.subject.as_str(), server = %record.server, scopes = ?record.scopes, deadline = record.deadline, serial = %svid.serial_hex, "task begun");
        tokio::spawn(Arc::clone(self).watch_task(Arc::clone(live), stop));
    }

    /// Holds a place for one more live task of process `pid`, or refuses when the
    /// process already holds (or is beginning) as many as allowed.
    fn reserve(self: &Arc<Self>, pid: i32) -> Result<Reservation, TaskError> {
        let max = self.config.max_live_per_process;
        let mut owners = self.lock_owners();
        // A refused owner is never idle (it holds `max` ≥ 1 tasks or places), so the
        // entry made here never lingers empty.
        let owner = owners.entry(pid).or_insert_with(Owner::new);
        if owner.tasks.len() + owner.reserved >= max {
            return Err(TaskError::TooManyLive { pid, max });
        }
        owner.reserved += 1;
        Ok(Reservation {
            manager: Arc::clone(self),
            pid,
        })
    }

    fn issue(
        &self,
        spiffe_id: &str,
        claims: &TaskClaims,
        deadline: i64,
    ) -> Result<IssuedSvid, TaskError> {
        Ok(self.authority.issue(&SvidSpec {
            spiffe_id,
            ttl: self.config.svid_ttl,
            not_after_cap: Some(deadline),
            claims: Some(claims),
        })?)
    }

    /// Ends a live task exactly once. Returns the task as stored, or NotFound.
    /// `client`, when given, restricts the call to that client's tasks.
    pub async fn end(
        self: &Arc<Self>,
        task_id: &str,
        reason: EndReason,
        actor: &str,
        client: Option<&str>,
    ) -> Result<TaskRecord, TaskError> {
        if let Some(client) = client {
            // Another client's task does not exist as far as this caller can tell.
            let live_owner = self
                .lock_live()
                .get(task_id)
                .map(|t| t.record.client == client);
            let owned = match live_owner {
                Some(owned) => owned,
                None => self
                    .store
                    .get_task(task_id)
                    .await?
                    .is_some_and(|t| t.client == client),
            };
            if !owned {
                return Err(TaskError::NotFound(task_id.to_owned()));
            }
        }
        let taken = self.lock_live().remove(task_id);
        let live = match taken {
            Some(live) => live,
            None => {
                let stored = self
                    .store
                    .get_task(task_id)
                    .await?
                    .ok_or_else(|| TaskError::NotFound(task_id.to_owned()))?;
                if stored.ended_at.is_some() {
                    // Already ended: report it as stored.
                    return Ok(stored);
                }
                // Stored as live but not live here: a BeginTask between its store write
                // and going live, which holds the registration gate until it is live.
                let _gate = self.registration_gate.write().await;
                let taken = self.lock_live().remove(task_id);
                match taken {
                    Some(live) => live,
                    // Ended meanwhile by someone who held the gate first.
                    None => return Ok(self.store.get_task(task_id).await?.unwrap_or(stored)),
                }
            }
        };
        // Refuse first, then persist: verifiers learn of the end at once; a
        // failed write can only leave the task more revoked, never less (a
        // restart ends every task the store still thinks is live).
        let revocation = self.revoke_here(&live, reason);
        self.feed.add([revocation.clone()]);
        self.retire(&live);
        // Detached: a caller giving up while the store's queue is full must not leave
        // the task revoked here but live on disk.
        let store = self.store.clone();
        let (id, by) = (task_id.to_owned(), actor.to_owned());
        let outcome = detached(async move {
            Ok(store
                .end_task(&id, reason.as_str(), now_unix(), revocation, &by)
                .await?)
        })
        .await?;
        tracing::info!(task = %task_id, reason = reason.as_str(), %actor, "task ended");
        match outcome {
            EndOutcome::Ended(t, _) | EndOutcome::AlreadyEnded(t) => Ok(t),
            EndOutcome::NotFound => Err(TaskError::NotFound(task_id.to_owned())),
        }
    }

    /// Ends every live task of `client` (its registration entry was deleted): revoked,
    /// dropped from its process's streams and recorded with `reason` and one `task.end`
    /// audit record each, as [`TaskManager::end`] does. Returns the ended tasks' ids.
    ///
    /// Holds the registration gate exclusively, so a BeginTask of that client either went
    /// live before (and is ended here) or re-checks its entitlement after (and is
    /// refused, if the caller lost its entry). Runs to the end even if the caller stops
    /// waiting.
    pub async fn end_client_tasks(
        self: &Arc<Self>,
        client: &str,
        reason: EndReason,
        actor: &str,
    ) -> Result<Vec<String>, TaskError> {
        let this = Arc::clone(self);
        let (client, actor) = (client.to_owned(), actor.to_owned());
        detached(async move {
            let _gate = this.registration_gate.write().await;
            let taken: Vec<Arc<LiveTask>> = {
                let mut live = this.lock_live();
                let ids: Vec<String> = live
                    .values()
                    .filter(|t| t.record.client == client)
                    .map(|t| t.record.id.clone())
                    .collect();
                ids.iter().filter_map(|id| live.remove(id)).collect()
            };
            let revocations: Vec<Revocation> = taken
                .iter()
                .map(|t| this.revoke_here(t, reason))
                .collect();
            // One new feed version for all of them.
            this.feed.add(revocations.iter().cloned());
            for t in &taken {
                this.retire(t);
            }
            // Concurrent, so the store commits them together rather than one fsync each.
            let now = now_unix();
            let writes = revocations.into_iter().map(|revocation| {
                let (store, actor) = (this.store.clone(), actor.as_str());
                async move {
                    let id = revocation.task_id.clone();
                    store
                        .end_task(&id, reason.as_str(), now, revocation, actor)
                        .await
                        .map(|_| id)
                }
            });
            let mut ended = Vec::with_capacity(taken.len());
            let mut failed = None;
            for result in futures::future::join_all(writes).await {
                match result {
                    Ok(id) => ended.push(id),
                    // Revoked here already; a restart ends whatever the store still
                    // thinks is live.
                    Err(e) => failed = Some(e),
                }
            }
            tracing::info!(%client, ended = ended.len(), reason = reason.as_str(), %actor, "ended the tasks of a client");
            match failed {
                Some(e) => Err(e.into()),
                None => Ok(ended),
            }
        })
        .await
    }

    /// Withdraws a consent and ends the tasks relying on it, atomically with
    /// respect to BeginTask.
    ///
    /// Runs to the end even if the caller stops waiting: once the store holds the
    /// withdrawal, its tasks must also leave the live set and reach the feed, never stay
    /// ended on disk while their SVIDs still work.
    pub async fn withdraw_consent(
        self: &Arc<Self>,
        consent_id: &str,
        actor: &str,
    ) -> Result<Option<(tessera_store::Consent, Vec<String>)>, TaskError> {
        let this = Arc::clone(self);
        let (consent_id, actor) = (consent_id.to_owned(), actor.to_owned());
        detached(async move { this.run_withdraw_consent(&consent_id, &actor).await }).await
    }

    async fn run_withdraw_consent(
        &self,
        consent_id: &str,
        actor: &str,
    ) -> Result<Option<(tessera_store::Consent, Vec<String>)>, TaskError> {
        let _gate = self.registration_gate.write().await;
        let ttl = i64::try_from(self.config.svid_ttl.as_secs()).unwrap_or(i64::MAX);
        let authority = Arc::clone(&self.authority);
        // `until` of live tasks is known here; the store fills serials, and raises
        // `until` to the latest SVID it recorded. An SVID still being recorded when the
        // store ends the task fails to record, and is then never shown.
        let untils: HashMap<String, i64> = self
            .lock_live()
            .values()
            .filter(|t| t.record.consent_id == consent_id)
            .map(|t| (t.record.id.clone(), t.state().until))
            .collect();
        let now = now_unix();
        let revocation_for = move |t: &TaskRecord| Revocation {
            task_id: t.id.clone(),
            spiffe_id: task_spiffe_id(&authority, t),
            serials: Vec::new(),
            reason: EndReason::ConsentWithdrawn.as_str().into(),
            revoked_at_ms: now_ms(),
            until: untils.get(&t.id).copied().unwrap_or(now + ttl),
        };
        #[cfg(test)]
        self.hooks
            .pause(super::hooks::Pause::WithdrawPrepared)
            .await;
        let Some((consent, revocations)) = self
            .store
            .withdraw_consent(consent_id, actor, now, &revocation_for)
            .await?
        else {
            return Ok(None);
        };
        let ended: Vec<String> = revocations.iter().map(|r| r.task_id.clone()).collect();
        self.feed.add(revocations);
        for id in &ended {
            let removed = self.lock_live().remove(id);
            if let Some(live) = removed {
                self.revoke_here(&live, EndReason::ConsentWithdrawn);
                self.retire(&live);
            }
        }
        self.consents.reload().await?;
        tracing::info!(consent = %consent_id, ended = ended.len(), %actor, "consent withdrawn");
        Ok(Some((consent, ended)))
    }

    /// Ends a task just taken out of the live set, in memory: from here on none of its
    /// SVIDs is shown (see [`TaskState`]). Returns its revocation, covering every SVID
    /// ever issued for it, and counts the end (where it takes effect, even if the
    /// caller goes away before the store write).
    fn revoke_here(&self, live: &LiveTask, reason: EndReason) -> Revocation {
        let (serials, until) = {
            let mut state = live.state();
            state.ended = true;
            (state.serials.clone(), state.until)
        };
        self.metrics
            .tasks_ended
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
        Revocation {
            task_id: live.record.id.clone(),
            spiffe_id: live.spiffe_id.clone(),
            serials,
            reason: reason.as_str().into(),
            revoked_at_ms: now_ms(),
            until,
        }
    }

    /// Stops the watcher and drops the SVID from its owner's streams. The task must be
    /// marked ended ([`TaskManager::revoke_here`]) first.
    fn retire(&self, live: &Arc<LiveTask>) {
        if let Some(stop) = live.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = stop.send(());
        }
        self.publish(live, None);
        self.metrics.live_tasks.set(self.live_count() as i64);
    }

    /// Updates the owner's stream view of one task (`None` removes it).
    fn publish(&self, live: &LiveTask, svid: Option<Arc<IssuedSvid>>) {
        let mut owners = self.lock_owners();
        let owner = owners.entry(live.owner_pid).or_insert_with(Owner::new);
        match svid {
            Some(svid) => {
                owner.tasks.insert(
                    live.record.id.clone(),
                    TaskView {
                        id: live.record.id.clone(),
                        spiffe_id: live.spiffe_id.clone(),
                        svid,
                        owner: live.owner_fd.clone(),
                    },
                );
            }
            None => {
                owner.tasks.remove(&live.record.id);
            }
        }
        // Building the view is O(tasks of this process); skip it when no stream
        // of that process is watching (subscribe_owner builds it on demand).
        if owner.tx.receiver_count() > 0 {
            let views: Vec<TaskView> = owner.tasks.values().cloned().collect();
            owner.tx.send_replace(Arc::new(views));
        } else if owner.is_idle() {
            owners.remove(&live.owner_pid);
        }
    }

    /// One watcher per live task: process exit, deadline, SVID rotation.
    async fn watch_task(self: Arc<Self>, live: Arc<LiveTask>, mut stop: oneshot::Receiver<()>) {
        let exit = live
            .owner_fd
            .as_ref()
            .and_then(|fd| fd.try_clone().ok())
            .and_then(|fd| crate::attest::sys::async_pidfd(fd).ok());
        let id = live.record.id.clone();
        let deadline = live.record.deadline;
        loop {
            let rotate_at = crate::svids::rotation_time(&live.state().svid);
            let until = |t: i64| Duration::from_secs(u64::try_from(t - now_unix()).unwrap_or(0));
            let exited = async {
                match &exit {
                    Some(fd) => {
                        let _ = fd.readable().await;
                    }
                    None => std::future::pending().await,
                }
            };
            // A branch of the select below, so the task still ends on time while a
            // rotation waits for the store; dropped there, it has shown nothing.
            let rotation = async {
                tokio::time::sleep(until(rotate_at)).await;
                // Boxed: only a task that is rotating carries the store write (see below).
                match Box::pin(self.rotate(&live)).await {
                    Ok(live) => live,
                    Err(e) => {
                        tracing::error!(task = %id, error = %e, "rotating task SVID failed; keeping the current one");
                        tokio::time::sleep(ROTATION_RETRY).await;
                        true
                    }
                }
            };
            let reason = tokio::select! {
                _ = &mut stop => return,
                _ = exited => EndReason::ProcessExited,
                _ = tokio::time::sleep(until(deadline)) => EndReason::Deadline,
                still_live = rotation, if rotate_at < deadline => {
                    if still_live {
                        continue;
                    }
                    // Ended while rotating; whoever ended it revokes and retires it.
                    return;
                }
            };
            // Boxed: an async fn's state is as large as its largest await, and this
            // one waits, parked at the select above, once per live task; inlining the
            // store write of `end` would make every waiting task carry it.
            if let Err(e) = Box::pin(self.end(&id, reason, "agent", None)).await {
                tracing::error!(task = %id, error = %e, "ending task failed");
            }
            return;
        }
    }

    /// Replaces a live task's SVID: issued, counted in the task's revocation, recorded in
    /// the store, and only then shown to its process. Returns `false`, showing nothing,
    /// if the task ended meanwhile: the store refuses to record an SVID for an ended
    /// task, and the task's revocation already covers every SVID the store recorded.
    async fn rotate(&self, live: &Arc<LiveTask>) -> Result<bool, TaskError> {
        let svid = Arc::new(self.issue(&live.spiffe_id, &live.claims, live.record.deadline)?);
        {
            let mut state = live.state();
            if state.ended {
                return Ok(false);
            }
            // Counted before it is recorded: an end from here on revokes it too.
            state.serials.push(svid.serial_hex.clone());
            state.until = state.until.max(svid.not_after_unix);
        }
        self.metrics
            .svids_issued
            .get_or_create(&crate::metrics::KindLabel { kind: "task" })
            .inc();
        #[cfg(test)]
        self.hooks.pause(super::hooks::Pause::RotateIssued).await;
        let issued = SvidIssued {
            serial: svid.serial_hex.clone(),
            spiffe_id: live.spiffe_id.clone(),
            not_after: svid.not_after_unix,
        };
        match self.store.record_task_svid(&live.record.id, issued).await {
            Ok(()) => {}
            Err(StoreError::TaskEnded { .. } | StoreError::TaskNotFound { .. }) => {
                tracing::debug!(task = %live.record.id, serial = %svid.serial_hex, "task ended while its SVID rotated; the new SVID is not handed out");
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
        #[cfg(test)]
        self.hooks.pause(super::hooks::Pause::RotateRecorded).await;
        let mut state = live.state();
        if state.ended {
            return Ok(false);
        }
        state.svid = Arc::clone(&svid);
        // Under the task's lock, so an end cannot slip between this check and the publish.
        self.publish(live, Some(svid));
        Ok(true)
    }

    /// Periodic upkeep until shutdown: prune expired revocations, follow consent changes.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut consents_rx = self.store.watch_consents();
        let mut prune = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
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

    fn lock_owners(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Owner>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
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
    format!(
        "{}/client/{}/task/{}",
        authority.trust_domain().id_string(),
        t.client,
        t.id
    )
}

mod jwt;
#[cfg(test)]
mod tests;
