//! The task lifecycle: begin (consent check, SVID, durable record), rotation, and the
//! ways a task ends, each of which ends it exactly once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_authority::{IssuedSvid, SvidSpec};
use tessera_identity::{ServerId, TaskClaims, TaskId};
use tessera_store::{Conflict, EndOutcome, Revocation, StoreError, SvidIssued, TaskRecord};
use tokio::sync::oneshot;

use super::error::TaskError;
use super::live::{LiveTask, TaskState};
use super::owners::{Reservation, TaskView};
use super::{BeginRequest, EndReason, TaskManager, detached, now_ms, now_unix, task_spiffe_id};

/// Who decided an end: this agent (journaled for the server in cluster mode) or the
/// server (never echoed back to it).
#[derive(Clone, Copy, Debug)]
enum Origin {
    Here,
    Server,
}

/// How long a task waits to try again after its SVID failed to rotate (the CA or the
/// store refused); the current SVID stays in use meanwhile.
const ROTATION_RETRY: Duration = Duration::from_secs(5);

impl TaskManager {
    /// Begins a task; returns its record and first SVID once it is durable.
    ///
    /// A caller that stops waiting (a timed-out or cancelled RPC drops this future)
    /// before its task is queued for the store leaves nothing behind. From the store
    /// write on, the work runs on a task of its own and always finishes: the store
    /// applies a queued write regardless, and a stored task must then also be live here
    /// (watched, endable, on its process's stream), never a row that claims to be live
    /// while nothing can end it.
    pub(crate) async fn begin(
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
            id: task_id,
            client: req.client.name.clone(),
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
            this.hooks
                .pause(crate::tasks::hooks::Pause::BeginStored)
                .await;
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
        self.lock_live()
            .insert(record.id.to_string(), Arc::clone(live));
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
    fn reserve(&self, pid: i32) -> Result<Reservation, TaskError> {
        self.owners.reserve(pid, self.config.max_live_per_process)
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

    /// `client`, when given, restricts the call to that client's tasks.
    pub(crate) async fn end(
        self: &Arc<Self>,
        task_id: &str,
        reason: EndReason,
        actor: &str,
        client: Option<&str>,
    ) -> Result<TaskRecord, TaskError> {
        self.end_from(task_id, reason, actor, client, Origin::Here)
            .await
    }

    /// Ends a task the server revoked (its revocation feed named it), if it is live
    /// here: revoked, dropped from its process's streams and recorded like any end, but
    /// not journaled for the server, which decided it. `Ok(None)`: not a task of this
    /// node, or already ended.
    pub(crate) async fn end_from_server(
        self: &Arc<Self>,
        task_id: &str,
        reason: EndReason,
    ) -> Result<Option<TaskRecord>, TaskError> {
        if !self.lock_live().contains_key(task_id) {
            return Ok(None);
        }
        match self
            .end_from(task_id, reason, super::SERVER_ACTOR, None, Origin::Server)
            .await
        {
            Ok(task) => Ok(Some(task)),
            Err(TaskError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn end_from(
        self: &Arc<Self>,
        task_id: &str,
        reason: EndReason,
        actor: &str,
        client: Option<&str>,
        origin: Origin,
    ) -> Result<TaskRecord, TaskError> {
        let not_found = || TaskError::NotFound {
            id: task_id.to_owned(),
            client: client.map(str::to_owned),
        };
        // No task has an id that does not parse, so no such task exists.
        let Ok(typed_id) = task_id.parse::<TaskId>() else {
            return Err(not_found());
        };
        if let Some(client) = client {
            // Another client's task does not exist as far as this caller can tell.
            let live_owner = self
                .lock_live()
                .get(task_id)
                .map(|t| t.record.client.as_str() == client);
            let owned = match live_owner {
                Some(owned) => owned,
                None => self
                    .store
                    .get_task(&typed_id)
                    .await?
                    .is_some_and(|t| t.client.as_str() == client),
            };
            if !owned {
                return Err(not_found());
            }
        }
        let taken = self.lock_live().remove(task_id);
        let live = match taken {
            Some(live) => live,
            None => {
                let stored = self
                    .store
                    .get_task(&typed_id)
                    .await?
                    .ok_or_else(not_found)?;
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
                    None => return Ok(self.store.get_task(&typed_id).await?.unwrap_or(stored)),
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
        let (id, by) = (typed_id, actor.to_owned());
        let outcome = detached(async move {
            Ok(match origin {
                Origin::Here => {
                    store
                        .end_task(&id, reason.as_str(), now_unix(), revocation, &by)
                        .await?
                }
                Origin::Server => {
                    store
                        .end_task_from_server(&id, reason.as_str(), now_unix(), revocation, &by)
                        .await?
                }
            })
        })
        .await?;
        tracing::info!(task = %task_id, reason = reason.as_str(), %actor, "task ended");
        match outcome {
            EndOutcome::Ended(t, _) | EndOutcome::AlreadyEnded(t) => Ok(t),
            EndOutcome::NotFound => Err(not_found()),
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
    pub(crate) async fn end_client_tasks(
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
                    .filter(|t| t.record.client.as_str() == client)
                    .map(|t| t.record.id.to_string())
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
            let writes = taken.iter().zip(revocations).map(|(t, revocation)| {
                let (store, actor, task_id) = (this.store.clone(), actor.as_str(), t.record.id);
                async move {
                    let id = revocation.task_id.clone();
                    store
                        .end_task(&task_id, reason.as_str(), now, revocation, actor)
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
    pub(crate) async fn withdraw_consent(
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
        let untils: HashMap<TaskId, i64> = self
            .lock_live()
            .values()
            .filter(|t| t.record.consent_id == consent_id)
            .map(|t| (t.record.id, t.state().until))
            .collect();
        let now = now_unix();
        let revocation_for = move |t: &TaskRecord| Revocation {
            task_id: t.id.to_string(),
            spiffe_id: task_spiffe_id(&authority, t),
            serials: Vec::new(),
            reason: EndReason::ConsentWithdrawn.as_str().into(),
            revoked_at_ms: now_ms(),
            until: untils.get(&t.id).copied().unwrap_or(now + ttl),
        };
        #[cfg(test)]
        self.hooks
            .pause(crate::tasks::hooks::Pause::WithdrawPrepared)
            .await;
        let Some((consent, revocations)) = self
            .store
            .withdraw_consent(consent_id, actor, now, &revocation_for)
            .await
            .map_err(|e| match e {
                // The administrator named this consent: the Admin API may say it is
                // already withdrawn.
                StoreError::Conflict(c) => TaskError::Conflict(c),
                e => TaskError::Store(e),
            })?
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
            task_id: live.record.id.to_string(),
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
        let view = svid.map(|svid| TaskView {
            id: live.record.id.to_string(),
            spiffe_id: live.spiffe_id.clone(),
            svid,
            owner: live.owner_fd.clone(),
        });
        self.owners
            .show(live.owner_pid, &live.record.id.to_string(), view);
    }

    /// One watcher per live task: process exit, deadline, SVID rotation.
    async fn watch_task(self: Arc<Self>, live: Arc<LiveTask>, mut stop: oneshot::Receiver<()>) {
        let exit = live
            .owner_fd
            .as_ref()
            .and_then(|fd| fd.try_clone().ok())
            .and_then(|fd| crate::attest::sys::async_pidfd(fd).ok());
        let id = live.record.id.to_string();
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
    pub(super) async fn rotate(&self, live: &Arc<LiveTask>) -> Result<bool, TaskError> {
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
        self.hooks
            .pause(crate::tasks::hooks::Pause::RotateIssued)
            .await;
        let issued = SvidIssued {
            serial: svid.serial_hex.clone(),
            spiffe_id: live.spiffe_id.clone(),
            not_after: svid.not_after_unix,
        };
        match self.store.record_task_svid(&live.record.id, issued).await {
            Ok(()) => {}
            Err(
                StoreError::Conflict(Conflict::TaskEnded { .. })
                | StoreError::NotFound(tessera_store::NotFound::Task { .. }),
            ) => {
                tracing::debug!(task = %live.record.id, serial = %svid.serial_hex, "task ended while its SVID rotated; the new SVID is not handed out");
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
        #[cfg(test)]
        self.hooks
            .pause(crate::tasks::hooks::Pause::RotateRecorded)
            .await;
        let mut state = live.state();
        if state.ended {
            return Ok(false);
        }
        state.svid = Arc::clone(&svid);
        // Under the task's lock, so an end cannot slip between this check and the publish.
        self.publish(live, Some(svid));
        Ok(true)
    }
}
