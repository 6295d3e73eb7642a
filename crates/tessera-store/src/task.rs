//! Tasks, the SVIDs issued for them, and revocations.
//!
//! A task is begun (with its first SVID) once, may get rotated SVIDs while live, and is
//! ended exactly once; ending it records a revocation listing every SVID serial it ever
//! had, kept until all of them have expired anyway. All of these are writes through the
//! group-commit writer ([`crate::writer`]): durable before they return.

use std::sync::Arc;

use rusqlite::{Connection, params};
use serde_json::json;
use sqlx::SqlitePool;
use tessera_identity::{ClientName, TaskId};

use crate::error::{Conflict, InvalidInput, NotFound};
use crate::journal::{self, TaskBegun, TaskEnded, TaskEvent};
use crate::limits::{
    MAX_PURPOSE_LEN, MAX_REASON_LEN, MAX_SERIAL_HEX_LEN, MAX_SPIFFE_ID_LEN, MAX_TASK_ID_LEN,
    PRUNE_CHUNK,
};
use crate::row::{Row, query_all, query_optional};
use crate::sealed::Sealed;
use crate::validate::{check_len, validate_parties, validate_scopes};
use crate::writer::Effects;
use crate::{Store, StoreError, audit};

/// The task columns plus its serials (issuance order), for `concat!`.
macro_rules! task_select {
    () => {
        "SELECT t.id, t.client, t.subject, t.server, t.scopes, t.purpose, t.consent_id, t.pid,
                t.begun_at, t.deadline, t.ended_at, t.end_reason,
                (SELECT json_group_array(s.serial ORDER BY s.n)
                 FROM task_svids s WHERE s.task_id = t.id) AS serials
         FROM tasks t"
    };
}

/// [`Store::list_tasks`]'s order: live tasks first, then ended ones; newest first in each.
macro_rules! live_then_newest {
    () => {
        " ORDER BY t.ended_at IS NOT NULL, t.begun_at DESC, t.id DESC"
    };
}

/// [`Store::list_tasks`] for one client (bind the client, then whether to include ended
/// tasks).
macro_rules! one_clients_tasks {
    () => {
        concat!(
            task_select!(),
            " WHERE t.client = ? AND (? OR t.ended_at IS NULL)",
            live_then_newest!()
        )
    };
}

/// The end reason [`Store::withdraw_consent`] gives the tasks it ends.
pub const END_REASON_CONSENT_WITHDRAWN: &str = "consent_withdrawn";

const KIND_BEGIN: &str = "task.begin";
const KIND_END: &str = "task.end";
const KIND_SVID: &str = "svid.issue";

/// A task: one BeginTask, until it ends.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TaskRecord {
    /// The task id (chosen by the agent).
    #[serde(serialize_with = "crate::row::serialize_display")]
    pub id: TaskId,
    /// The client running it.
    #[serde(serialize_with = "crate::row::serialize_display")]
    pub client: ClientName,
    /// The human it acts for.
    pub subject: String,
    /// The MCP server it may call.
    pub server: String,
    /// Its scopes, as given (a subset of its consent's; the agent checks that).
    pub scopes: Vec<String>,
    /// Why it runs, 0..=[`MAX_PURPOSE_LEN`] bytes.
    pub purpose: String,
    /// The consent it relies on.
    pub consent_id: String,
    /// The runtime process that began it.
    pub pid: i64,
    /// When it began, unix seconds.
    pub begun_at: i64,
    /// When it must end at the latest, unix seconds.
    pub deadline: i64,
    /// When it ended, unix seconds; `None` while live.
    pub ended_at: Option<i64>,
    /// Why it ended (`end_task`'s reason); `None` while live.
    pub end_reason: Option<String>,
    /// Lowercase hex serials of every SVID issued for it, in issuance order.
    pub serials: Vec<String>,
}

/// An SVID issued for a task.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SvidIssued {
    /// The certificate serial in hex, 1..=[`MAX_SERIAL_HEX_LEN`] digits (either case;
    /// stored lowercase). Must never repeat.
    pub serial: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// Its expiry, unix seconds.
    pub not_after: i64,
}

/// A revoked task: verifiers refuse its SPIFFE ID and serials until `until`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Revocation {
    /// The task revoked.
    pub task_id: String,
    /// The task's SPIFFE ID.
    pub spiffe_id: String,
    /// Lowercase hex serials of every SVID issued for the task.
    pub serials: Vec<String>,
    /// Why, e.g. `ended`, `deadline`, `consent_withdrawn`.
    pub reason: String,
    /// When it was revoked, unix milliseconds.
    pub revoked_at_ms: i64,
    /// Keep it until then, unix seconds: by then every SVID issued for the task expired.
    pub until: i64,
}

/// Which tasks [`Store::list_tasks`] returns.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    /// Only this client's tasks; `None` for all.
    pub client: Option<ClientName>,
    /// Include ended tasks too.
    pub include_ended: bool,
}

/// What [`Store::end_task`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndOutcome {
    /// This call ended the task: the task as now stored, and its revocation.
    Ended(TaskRecord, Revocation),
    /// The task had already ended (it is returned as stored); nothing was written.
    AlreadyEnded(TaskRecord),
    /// No task with this id; nothing was written.
    NotFound,
}

impl TaskRecord {
    fn validate(&self) -> Result<(), StoreError> {
        validate_parties(self.client.as_str(), &self.subject, &self.server)?;
        validate_scopes(&self.scopes)?;
        check_len("purpose", &self.purpose, 0, MAX_PURPOSE_LEN)?;
        check_len("consent id", &self.consent_id, 1, MAX_TASK_ID_LEN)?;
        if self.deadline <= self.begun_at {
            return Err(StoreError::Invalid(InvalidInput::Deadline {
                begun_at: self.begun_at,
                deadline: self.deadline,
            }));
        }
        Ok(())
    }
}

impl SvidIssued {
    /// Checks the limits and lowercases the serial.
    fn normalize(mut self) -> Result<SvidIssued, StoreError> {
        if self.serial.is_empty()
            || self.serial.len() > MAX_SERIAL_HEX_LEN
            || !self.serial.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(StoreError::Invalid(InvalidInput::Serial {
                serial: self.serial.chars().take(MAX_SERIAL_HEX_LEN + 8).collect(),
            }));
        }
        self.serial.make_ascii_lowercase();
        check_len("spiffe id", &self.spiffe_id, 1, MAX_SPIFFE_ID_LEN)?;
        Ok(self)
    }
}

fn validate_revocation(revocation: &Revocation) -> Result<(), StoreError> {
    check_len("spiffe id", &revocation.spiffe_id, 1, MAX_SPIFFE_ID_LEN)?;
    check_len("revocation reason", &revocation.reason, 1, MAX_REASON_LEN)
}

// === impl Store: tasks ===

impl Store {
    /// Records a new live task (`ended_at` NULL; its `ended_at`, `end_reason` and
    /// `serials` fields are ignored) with its first SVID, and one `task.begin` audit
    /// record in one transaction. Returns once durable (committed and fsynced). The
    /// record's detail is `{"task": …, "svid": {"serial", "spiffe_id", "not_after"}}`:
    /// the first SVID is audited with the task it belongs to, and only later rotations
    /// get `svid.issue` records of their own. (One row instead of two: each row and
    /// index entry is WAL pages that every durable commit writes and fsyncs.)
    ///
    /// Inside that transaction the task's consent must exist
    /// ([`NotFound::Consent`]), not be withdrawn
    /// ([`Conflict::ConsentWithdrawn`], also while a withdrawal of it is in
    /// progress), not have expired by `begun_at`
    /// ([`InvalidInput::ConsentExpired`]), and name the same client, subject and server
    /// ([`Conflict::ConsentMismatch`]), so a task can never slip in beside a concurrent
    /// withdrawal. Checking the scopes against the consent's (wildcards) is the caller's
    /// job. A repeated task id or serial is a [`StoreError::Database`] constraint error.
    pub async fn begin_task(
        &self,
        task: TaskRecord,
        svid: SvidIssued,
        actor: &str,
    ) -> Result<(), StoreError> {
        task.validate()?;
        let svid = svid.normalize()?;
        audit::validate_actor(actor)?;
        let state = BeginTask {
            task,
            svid,
            actor: actor.to_owned(),
            sealed: Arc::clone(&self.inner.sealed),
            journal: self.journals_task_events(),
        };
        self.inner.writer.write(KIND_BEGIN, state, begin_op).await
    }

    /// Records a rotated SVID for a live task, with an `svid.issue` audit record. Fails
    /// with [`Conflict::TaskEnded`] if the task has ended (then the SVID must not be
    /// handed out: it would not be in the task's revocation) or
    /// [`NotFound::Task`].
    pub async fn record_task_svid(
        &self,
        task_id: &TaskId,
        svid: SvidIssued,
    ) -> Result<(), StoreError> {
        let svid = svid.normalize()?;
        let state = (task_id.to_string(), svid);
        self.inner
            .writer
            .write(KIND_SVID, state, record_svid_op)
            .await
    }

    /// Ends a live task exactly once: sets `ended_at` and `end_reason` = `reason`, inserts
    /// its revocation, and writes a `task.end` audit record, in one transaction.
    ///
    /// The caller supplies the revocation's `spiffe_id`, `reason`, `revoked_at_ms` and
    /// `until`; the store sets `task_id`, fills `serials` with every serial issued for the
    /// task, and raises `until` to the latest `not_after` among them if it is earlier (a
    /// revocation must outlive every certificate it covers).
    ///
    /// Of concurrent calls for one task exactly one gets [`EndOutcome::Ended`]; the others
    /// get [`EndOutcome::AlreadyEnded`] and write nothing.
    ///
    /// With journaling on (cluster mode), the end is journaled for the server in the same
    /// transaction ([`crate::TaskEvent::Ended`]).
    pub async fn end_task(
        &self,
        task_id: &TaskId,
        reason: &str,
        ended_at: i64,
        revocation: Revocation,
        actor: &str,
    ) -> Result<EndOutcome, StoreError> {
        let journal = self.journals_task_events();
        self.end_task_inner(task_id, reason, ended_at, revocation, actor, journal)
            .await
    }

    /// [`Store::end_task`] for an end the server decided (a revocation on its feed): never
    /// journaled, since reporting it back would only echo it.
    pub async fn end_task_from_server(
        &self,
        task_id: &TaskId,
        reason: &str,
        ended_at: i64,
        revocation: Revocation,
        actor: &str,
    ) -> Result<EndOutcome, StoreError> {
        self.end_task_inner(task_id, reason, ended_at, revocation, actor, false)
            .await
    }

    async fn end_task_inner(
        &self,
        task_id: &TaskId,
        reason: &str,
        ended_at: i64,
        revocation: Revocation,
        actor: &str,
        journal: bool,
    ) -> Result<EndOutcome, StoreError> {
        check_len("end reason", reason, 1, MAX_REASON_LEN)?;
        validate_revocation(&revocation)?;
        audit::validate_actor(actor)?;
        let state = EndTask {
            task_id: task_id.to_string(),
            reason: reason.to_owned(),
            ended_at,
            revocation: Some(revocation),
            actor: actor.to_owned(),
            journal,
        };
        self.inner.writer.write(KIND_END, state, end_op).await
    }

    /// The task with this id, if any.
    pub async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let row = sqlx::query(concat!(task_select!(), " WHERE t.id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.inner.pool)
            .await?;
        row.as_ref().map(decode_task).transpose()
    }

    /// Tasks matching `filter`: live ones first, then ended ones; each group newest first
    /// (by `begun_at`, then id).
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError> {
        // Two statements rather than `(? IS NULL OR client = ?)`: SQLite plans a statement
        // before it sees the parameters, so that form scans every task ever begun on the
        // node, and a client's ListTasks would grow with everyone's history.
        let query = match &filter.client {
            Some(client) => sqlx::query(one_clients_tasks!()).bind(client.as_str()),
            None => sqlx::query(concat!(
                task_select!(),
                " WHERE (? OR t.ended_at IS NULL)",
                live_then_newest!()
            )),
        };
        let rows = query
            .bind(filter.include_ended)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter().map(decode_task).collect()
    }

    /// Every live task, oldest first. The agent resumes (or ends) these at startup.
    pub async fn live_tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            task_select!(),
            " WHERE t.ended_at IS NULL ORDER BY t.begun_at, t.id"
        ))
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter().map(decode_task).collect()
    }

    /// Revocations still in force at `now` (`until > now`), oldest first.
    pub async fn revocations(&self, now: i64) -> Result<Vec<Revocation>, StoreError> {
        let rows = sqlx::query(
            "SELECT task_id, spiffe_id, serials, reason, revoked_at_ms, until
             FROM revocations WHERE until > ? ORDER BY revoked_at_ms, task_id",
        )
        .bind(now)
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter().map(decode_revocation).collect()
    }

    /// Deletes tasks that ended before `ended_before` (unix seconds), with their SVID
    /// records, and returns how many. A task whose revocation is still kept (some SVID
    /// of it has not expired yet) stays until [`Store::prune_revocations`] removed it.
    /// Their audit records are kept ([`Store::prune_audit`] has its own cutoff).
    ///
    /// Deletes in transactions of at most [`PRUNE_CHUNK`] tasks, oldest end first.
    pub async fn prune_ended_tasks(&self, ended_before: i64) -> Result<u64, StoreError> {
        self.prune_in_chunks("task.prune", ended_before, prune_ended_op)
            .await
    }

    /// Deletes revocations no longer needed at `now` (`until <= now`: every SVID they
    /// cover has expired) and returns how many. The tasks themselves are kept.
    ///
    /// Deletes in transactions of at most [`PRUNE_CHUNK`] rows, so writes queued
    /// meanwhile (a BeginTask waiting to be durable) wait for one chunk, not for the
    /// whole backlog: at a sustained 1,000 tasks/s, 30 s of expired revocations is 30,000
    /// rows.
    pub async fn prune_revocations(&self, now: i64) -> Result<u64, StoreError> {
        self.prune_in_chunks("revocation.prune", now, prune_op)
            .await
    }
}

struct BeginTask {
    task: TaskRecord,
    svid: SvidIssued,
    actor: String,
    sealed: Arc<Sealed>,
    /// Journal the begin for the server (cluster mode).
    journal: bool,
}

fn begin_op(
    state: &mut BeginTask,
    conn: &Connection,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    let BeginTask {
        task,
        svid,
        actor,
        sealed,
        journal,
    } = state;
    if let Some(withdrawn_at) = sealed.check(&task.consent_id) {
        return Err(StoreError::Conflict(Conflict::ConsentWithdrawn {
            id: task.consent_id.clone(),
            withdrawn_at,
        }));
    }
    // Read inside the op, so no withdrawal can slip in between this check and the insert.
    if let Some(why) = unusable_consent(conn, task)? {
        return Err(why);
    }
    task.ended_at = None;
    task.end_reason = None;
    task.serials = vec![svid.serial.clone()];
    let scopes = serde_json::to_string(&task.scopes).expect("strings serialise");
    conn.prepare_cached(
        "INSERT INTO tasks (id, client, subject, server, scopes, purpose, consent_id, pid,
                            begun_at, deadline)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        task.id.to_string(),
        task.client.as_str(),
        task.subject,
        task.server,
        scopes,
        task.purpose,
        task.consent_id,
        task.pid,
        task.begun_at,
        task.deadline,
    ])?;
    insert_svid(conn, &task.id.to_string(), svid)?;
    let detail = json!({
        "task": &*task,
        "svid": {
            "serial": svid.serial,
            "spiffe_id": svid.spiffe_id,
            "not_after": svid.not_after,
        },
    });
    audit::write(conn, effects, KIND_BEGIN, actor, detail)?;
    if *journal {
        let event = TaskEvent::Begun(TaskBegun {
            task_id: task.id.to_string(),
            spiffe_id: svid.spiffe_id.clone(),
            client: task.client.as_str().to_owned(),
            subject: task.subject.clone(),
            server: task.server.clone(),
            scopes: task.scopes.clone(),
            consent_id: task.consent_id.clone(),
            begun_at_ms: task.begun_at.saturating_mul(1000),
            deadline: task.deadline,
            serials: task.serials.clone(),
        });
        journal::append(conn, effects, &event)?;
    }
    Ok(())
}

/// Why a task relying on this consent cannot begin, if anything is wrong with it.
fn unusable_consent(
    conn: &Connection,
    task: &TaskRecord,
) -> Result<Option<StoreError>, StoreError> {
    let consent = query_optional(
        conn,
        "SELECT client, subject, server, expires_at, withdrawn_at FROM consents WHERE id = ?",
        [&task.consent_id],
        |row| {
            Ok((
                row.column::<String>("client")?,
                row.column::<String>("subject")?,
                row.column::<String>("server")?,
                row.column::<i64>("expires_at")?,
                row.column::<Option<i64>>("withdrawn_at")?,
            ))
        },
    )?;
    let id = task.consent_id.clone();
    let Some((client, subject, server, expires_at, withdrawn_at)) = consent else {
        return Ok(Some(StoreError::NotFound(NotFound::Consent { id })));
    };
    if let Some(withdrawn_at) = withdrawn_at {
        return Ok(Some(StoreError::Conflict(Conflict::ConsentWithdrawn {
            id,
            withdrawn_at,
        })));
    }
    if expires_at <= task.begun_at {
        return Ok(Some(StoreError::Invalid(InvalidInput::ConsentExpired {
            expires_at,
            at: task.begun_at,
        })));
    }
    for (field, theirs, mine) in [
        ("client", client, task.client.as_str()),
        ("subject", subject, &task.subject),
        ("server", server, &task.server),
    ] {
        if theirs != mine {
            return Ok(Some(StoreError::Conflict(Conflict::ConsentMismatch {
                id,
                field,
            })));
        }
    }
    Ok(None)
}

/// Records an SVID as the task's latest: its position `n` is one past the task's last.
fn insert_svid(conn: &Connection, task_id: &str, svid: &SvidIssued) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO task_svids (serial, task_id, n, spiffe_id, not_after)
         VALUES (?1, ?2, (SELECT COALESCE(MAX(n), 0) + 1 FROM task_svids WHERE task_id = ?2),
                 ?3, ?4)",
    )?
    .execute(params![
        svid.serial,
        task_id,
        svid.spiffe_id,
        svid.not_after
    ])?;
    Ok(())
}

fn svid_detail(task_id: &str, svid: &SvidIssued) -> serde_json::Value {
    json!({
        "task_id": task_id,
        "serial": svid.serial,
        "spiffe_id": svid.spiffe_id,
        "not_after": svid.not_after,
    })
}

fn record_svid_op(
    state: &mut (String, SvidIssued),
    conn: &Connection,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    let (task_id, svid) = state;
    let ended_at = query_optional(
        conn,
        "SELECT ended_at FROM tasks WHERE id = ?",
        [&*task_id],
        |row| row.column::<Option<i64>>("ended_at"),
    )?;
    match ended_at {
        None => {
            return Err(StoreError::NotFound(NotFound::Task {
                id: task_id.clone(),
            }));
        }
        Some(Some(_)) => {
            return Err(StoreError::Conflict(Conflict::TaskEnded {
                id: task_id.clone(),
            }));
        }
        Some(None) => {}
    }
    insert_svid(conn, task_id, svid)?;
    // The system itself rotates SVIDs: no actor.
    audit::write(conn, effects, KIND_SVID, "", svid_detail(task_id, svid))?;
    Ok(())
}

struct EndTask {
    task_id: String,
    reason: String,
    ended_at: i64,
    revocation: Option<Revocation>,
    actor: String,
    /// Journal the end for the server (cluster mode, an end decided here).
    journal: bool,
}

fn end_op(
    state: &mut EndTask,
    conn: &Connection,
    effects: &mut Effects,
) -> Result<EndOutcome, StoreError> {
    let ended = mark_ended(conn, &state.task_id, &state.reason, state.ended_at)?;
    let Some((task, last_not_after)) = ended else {
        let task = query_optional(
            conn,
            concat!(task_select!(), " WHERE t.id = ?"),
            [&state.task_id],
            |row| decode_task(row),
        )?;
        return Ok(match task {
            Some(task) => EndOutcome::AlreadyEnded(task),
            None => EndOutcome::NotFound,
        });
    };
    let revocation = state
        .revocation
        .take()
        .expect("an op runs once, so its revocation is still there");
    let revocation = record_end(
        conn,
        effects,
        &task,
        last_not_after,
        revocation,
        &state.actor,
    )?;
    if state.journal {
        let event = TaskEvent::Ended(TaskEnded {
            task_id: revocation.task_id.clone(),
            spiffe_id: revocation.spiffe_id.clone(),
            reason: state.reason.clone(),
            // The moment it was revoked, to the millisecond (`ended_at` is whole seconds).
            ended_at_ms: revocation.revoked_at_ms,
            serials: revocation.serials.clone(),
            until: revocation.until,
        });
        journal::append(conn, effects, &event)?;
    }
    Ok(EndOutcome::Ended(task, revocation))
}

/// Marks the task ended if it is live. Returns the task as now stored and the latest
/// `not_after` of its SVIDs, or `None` if it is not live (or does not exist).
fn mark_ended(
    conn: &Connection,
    task_id: &str,
    reason: &str,
    ended_at: i64,
) -> Result<Option<(TaskRecord, Option<i64>)>, StoreError> {
    query_optional(
        conn,
        "UPDATE tasks SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL
         RETURNING id, client, subject, server, scopes, purpose, consent_id, pid, begun_at,
                   deadline, ended_at, end_reason,
                   (SELECT json_group_array(s.serial ORDER BY s.n)
                    FROM task_svids s WHERE s.task_id = tasks.id) AS serials,
                   (SELECT MAX(s.not_after) FROM task_svids s WHERE s.task_id = tasks.id)
                       AS last_not_after",
        params![ended_at, reason, task_id],
        |row| Ok((decode_task(row)?, row.column("last_not_after")?)),
    )
}

/// Records the end of `task` (just marked ended in this op): completes `revocation` with
/// the task's id, serials and a safe `until`, and inserts it with the `task.end` audit
/// record.
fn record_end(
    conn: &Connection,
    effects: &mut Effects,
    task: &TaskRecord,
    last_not_after: Option<i64>,
    mut revocation: Revocation,
    actor: &str,
) -> Result<Revocation, StoreError> {
    revocation.task_id = task.id.to_string();
    revocation.serials.clone_from(&task.serials);
    if let Some(last) = last_not_after {
        revocation.until = revocation.until.max(last);
    }
    let serials = serde_json::to_string(&revocation.serials).expect("strings serialise");
    conn.prepare_cached(
        "INSERT INTO revocations (task_id, spiffe_id, serials, reason, revoked_at_ms, until)
         VALUES (?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        revocation.task_id,
        revocation.spiffe_id,
        serials,
        revocation.reason,
        revocation.revoked_at_ms,
        revocation.until,
    ])?;
    let detail = json!({
        "task_id": task.id.to_string(),
        "reason": &task.end_reason,
        "ended_at": task.ended_at,
        "revocation": &revocation,
    });
    audit::write(conn, effects, KIND_END, actor, detail)?;
    Ok(revocation)
}

/// Ends `task`, read live inside the current op: marks it ended, inserts its revocation
/// and a `task.end` audit record. Returns the revocation.
pub(crate) fn end_live(
    conn: &Connection,
    effects: &mut Effects,
    task: &TaskRecord,
    reason: &str,
    ended_at: i64,
    revocation: Revocation,
    actor: &str,
) -> Result<Revocation, StoreError> {
    let Some((task, last_not_after)) = mark_ended(conn, &task.id.to_string(), reason, ended_at)?
    else {
        // Cannot happen: the caller read it live in this same op and the writer runs one
        // op at a time. Refuse rather than revoke twice.
        return Err(StoreError::Conflict(Conflict::TaskEnded {
            id: task.id.to_string(),
        }));
    };
    record_end(conn, effects, &task, last_not_after, revocation, actor)
}

/// Deletes up to [`PRUNE_CHUNK`] expired revocations, oldest first.
fn prune_op(now: &mut i64, conn: &Connection, _effects: &mut Effects) -> Result<u64, StoreError> {
    let pruned = conn
        .prepare_cached(
            "DELETE FROM revocations WHERE rowid IN
                 (SELECT rowid FROM revocations WHERE until <= ? ORDER BY until LIMIT ?)",
        )?
        .execute(params![
            *now,
            i64::try_from(PRUNE_CHUNK).unwrap_or(i64::MAX)
        ])?;
    Ok(u64::try_from(pruned).unwrap_or(u64::MAX))
}

/// Up to `?2` tasks that ended before `?1` and are no longer revoked, oldest end first.
macro_rules! prunable_tasks {
    () => {
        "SELECT id FROM tasks
         WHERE ended_at IS NOT NULL AND ended_at < ?
           AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.task_id = tasks.id)
         ORDER BY ended_at LIMIT ?"
    };
}

fn prune_ended_op(
    ended_before: &mut i64,
    conn: &Connection,
    _effects: &mut Effects,
) -> Result<u64, StoreError> {
    // The partial index tasks_ended_by_time serves the range; a task still revoked is
    // passed over (there are at most as many as revocations in force).
    let ids = query_all(
        conn,
        prunable_tasks!(),
        params![
            *ended_before,
            i64::try_from(PRUNE_CHUNK).unwrap_or(i64::MAX)
        ],
        |row| row.column::<String>("id"),
    )?;
    let mut svids = conn.prepare_cached("DELETE FROM task_svids WHERE task_id = ?")?;
    let mut tasks = conn.prepare_cached("DELETE FROM tasks WHERE id = ?")?;
    for id in &ids {
        svids.execute([id])?;
        tasks.execute([id])?;
    }
    Ok(u64::try_from(ids.len()).unwrap_or(u64::MAX))
}

/// The [`task_select!`] condition for live tasks relying on a consent, oldest first.
macro_rules! live_for_consent {
    () => {
        " WHERE t.consent_id = ? AND t.ended_at IS NULL ORDER BY t.begun_at, t.id"
    };
}

/// Live tasks relying on `consent_id`, read on the writer's connection inside an op.
pub(crate) fn live_tasks_for_consent_in_writer(
    conn: &Connection,
    consent_id: &str,
) -> Result<Vec<TaskRecord>, StoreError> {
    query_all(
        conn,
        concat!(task_select!(), live_for_consent!()),
        [consent_id],
        |row| decode_task(row),
    )
}

/// Live tasks relying on `consent_id`, read through the pool.
pub(crate) async fn live_tasks_for_consent(
    pool: &SqlitePool,
    consent_id: &str,
) -> Result<Vec<TaskRecord>, StoreError> {
    let rows = sqlx::query(concat!(task_select!(), live_for_consent!()))
        .bind(consent_id)
        .fetch_all(pool)
        .await?;
    rows.iter().map(decode_task).collect()
}

/// Decodes a [`task_select!`] row, reporting anything malformed as
/// [`StoreError::Corrupt`].
fn decode_task(row: &impl Row) -> Result<TaskRecord, StoreError> {
    let id: String = row.column("id")?;
    let corrupt = |column: &str, error: &dyn std::fmt::Display| StoreError::Corrupt {
        table: "tasks",
        id: id.clone(),
        reason: format!("{column}: {error}"),
    };
    let json_list = |column: &str| -> Result<Vec<String>, StoreError> {
        let text: String = row.column(column)?;
        serde_json::from_str(&text).map_err(|error| corrupt(column, &error))
    };
    let client: String = row.column("client")?;
    Ok(TaskRecord {
        id: id.parse().map_err(|error| corrupt("id", &error))?,
        client: client.parse().map_err(|error| corrupt("client", &error))?,
        subject: row.column("subject")?,
        server: row.column("server")?,
        scopes: json_list("scopes")?,
        purpose: row.column("purpose")?,
        consent_id: row.column("consent_id")?,
        pid: row.column("pid")?,
        begun_at: row.column("begun_at")?,
        deadline: row.column("deadline")?,
        ended_at: row.column("ended_at")?,
        end_reason: row.column("end_reason")?,
        serials: json_list("serials")?,
    })
}

fn decode_revocation(row: &impl Row) -> Result<Revocation, StoreError> {
    let task_id: String = row.column("task_id")?;
    let serials: String = row.column("serials")?;
    let serials = serde_json::from_str(&serials).map_err(|error| StoreError::Corrupt {
        table: "revocations",
        id: task_id.clone(),
        reason: format!("serials: {error}"),
    })?;
    Ok(Revocation {
        spiffe_id: row.column("spiffe_id")?,
        serials,
        reason: row.column("reason")?,
        revoked_at_ms: row.column("revoked_at_ms")?,
        until: row.column("until")?,
        task_id,
    })
}

#[cfg(test)]
mod tests;
