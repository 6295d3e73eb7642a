//! Tasks, the SVIDs issued for them, and revocations.
//!
//! A task is begun (with its first SVID) once, may get rotated SVIDs while live, and is
//! ended exactly once; ending it records a revocation listing every SVID serial it ever
//! had, kept until all of them have expired anyway. All of these are writes through the
//! group-commit writer ([`crate::writer`]): durable before they return.

use serde_json::json;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, SqliteConnection};

use std::sync::Arc;

use crate::consent::{Sealed, check_len, validate_parties, validate_scopes};
use crate::writer::{BoxFuture, Effects, Opening, fused_query};
use crate::{Store, StoreError, audit};

/// The task columns plus its serials (issuance order), for `concat!`.
macro_rules! task_select {
    () => {
        "SELECT t.id, t.client, t.subject, t.server, t.scopes, t.purpose, t.consent_id, t.pid,
                t.begun_at, t.deadline, t.ended_at, t.end_reason,
                (SELECT json_group_array(s.serial ORDER BY s.rowid)
                 FROM task_svids s WHERE s.task_id = t.id) AS serials
         FROM tasks t"
    };
}

/// Longest task id accepted, in bytes (task ids are ULIDs or UUIDv7s).
pub const MAX_TASK_ID_LEN: usize = 64;
/// Longest purpose accepted, in bytes.
pub const MAX_PURPOSE_LEN: usize = 1024;
/// Longest certificate serial accepted, in hex digits (RFC 5280 allows 20 octets; a
/// little room for a sign byte and leading zeros).
pub const MAX_SERIAL_HEX_LEN: usize = 64;
/// Longest SPIFFE ID accepted, in bytes (the SPIFFE limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest end or revocation reason accepted, in bytes.
pub const MAX_REASON_LEN: usize = 128;

/// The end reason [`Store::withdraw_consent`] gives the tasks it ends.
pub const END_REASON_CONSENT_WITHDRAWN: &str = "consent_withdrawn";

const KIND_BEGIN: &str = "task.begin";
const KIND_END: &str = "task.end";
const KIND_SVID: &str = "svid.issue";

/// A task: one BeginTask, until it ends.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TaskRecord {
    /// The task id (ULID or UUIDv7, chosen by the agent), 1..=[`MAX_TASK_ID_LEN`] bytes.
    pub id: String,
    /// The client running it.
    pub client: String,
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
    pub client: Option<String>,
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
        check_len("task id", &self.id, 1, MAX_TASK_ID_LEN)?;
        validate_parties(&self.client, &self.subject, &self.server)?;
        validate_scopes(&self.scopes)?;
        check_len("purpose", &self.purpose, 0, MAX_PURPOSE_LEN)?;
        check_len("consent id", &self.consent_id, 1, MAX_TASK_ID_LEN)?;
        if self.deadline <= self.begun_at {
            return Err(StoreError::InvalidDeadline {
                begun_at: self.begun_at,
                deadline: self.deadline,
            });
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
            return Err(StoreError::InvalidSerial {
                serial: self.serial.chars().take(MAX_SERIAL_HEX_LEN + 8).collect(),
            });
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
    /// ([`StoreError::ConsentNotFound`]), not be withdrawn
    /// ([`StoreError::ConsentAlreadyWithdrawn`], also while a withdrawal of it is in
    /// progress), not have expired by `begun_at`
    /// ([`StoreError::ConsentExpired`]), and name the same client, subject and server
    /// ([`StoreError::ConsentMismatch`]), so a task can never slip in beside a concurrent
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
        };
        self.inner
            .writer
            .write_fused(KIND_BEGIN, state, begin_op)
            .await
    }

    /// Records a rotated SVID for a live task, with an `svid.issue` audit record. Fails
    /// with [`StoreError::TaskEnded`] if the task has ended (then the SVID must not be
    /// handed out: it would not be in the task's revocation) or
    /// [`StoreError::TaskNotFound`].
    pub async fn record_task_svid(
        &self,
        task_id: &str,
        svid: SvidIssued,
    ) -> Result<(), StoreError> {
        check_len("task id", task_id, 1, MAX_TASK_ID_LEN)?;
        let svid = svid.normalize()?;
        let state = (task_id.to_owned(), svid);
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
    pub async fn end_task(
        &self,
        task_id: &str,
        reason: &str,
        ended_at: i64,
        revocation: Revocation,
        actor: &str,
    ) -> Result<EndOutcome, StoreError> {
        check_len("end reason", reason, 1, MAX_REASON_LEN)?;
        validate_revocation(&revocation)?;
        audit::validate_actor(actor)?;
        let state = EndTask {
            task_id: task_id.to_owned(),
            reason: reason.to_owned(),
            ended_at,
            revocation: Some(revocation),
            actor: actor.to_owned(),
        };
        self.inner.writer.write_fused(KIND_END, state, end_op).await
    }

    /// The task with this id, if any.
    pub async fn get_task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let row = sqlx::query(concat!(task_select!(), " WHERE t.id = ?"))
            .bind(id)
            .fetch_optional(&self.inner.pool)
            .await?;
        row.as_ref().map(decode_task).transpose()
    }

    /// Tasks matching `filter`: live ones first, then ended ones; each group newest first
    /// (by `begun_at`, then id).
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            task_select!(),
            " WHERE (?1 IS NULL OR t.client = ?1) AND (?2 OR t.ended_at IS NULL)
              ORDER BY t.ended_at IS NOT NULL, t.begun_at DESC, t.id DESC"
        ))
        .bind(filter.client.as_deref())
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

    /// Deletes revocations no longer needed at `now` (`until <= now`: every SVID they
    /// cover has expired) and returns how many. The tasks themselves are kept.
    pub async fn prune_revocations(&self, now: i64) -> Result<u64, StoreError> {
        let pruned = self
            .inner
            .writer
            .write("revocation.prune", now, prune_op)
            .await?;
        if pruned > 0 {
            tracing::debug!(pruned, "pruned expired revocations");
        }
        Ok(pruned)
    }
}

struct BeginTask {
    task: TaskRecord,
    svid: SvidIssued,
    actor: String,
    sealed: Arc<Sealed>,
}

fn begin_op<'a>(
    state: &'a mut BeginTask,
    conn: &'a mut SqliteConnection,
    effects: &'a mut Effects,
) -> BoxFuture<'a, Result<(), StoreError>> {
    Box::pin(async move {
        let BeginTask {
            task,
            svid,
            actor,
            sealed,
        } = state;
        if let Some(withdrawn_at) = sealed.check(&task.consent_id) {
            return Err(StoreError::ConsentAlreadyWithdrawn {
                id: task.consent_id.clone(),
                withdrawn_at,
            });
        }
        task.ended_at = None;
        task.end_reason = None;
        task.serials = vec![svid.serial.clone()];
        let scopes = serde_json::to_string(&task.scopes).expect("strings serialise");
        let detail = json!({
            "task": &*task,
            "svid": {
                "serial": svid.serial,
                "spiffe_id": svid.spiffe_id,
                "not_after": svid.not_after,
            },
        });
        let at = crate::store::unix_millis();

        // One round trip (see write_fused). The task is inserted only if its consent is
        // usable; if it is not, the SVID insert fails its foreign key to the task, and we
        // find out below what was wrong with the consent.
        effects.savepoint_opened = true;
        //
        // Only positional `?` parameters in multi-statement queries: sqlx binds each
        // statement's parameters from a running offset and stops at a numbering gap, so
        // `?NNN` numbers shared across statements would leave later ones unbound (NULL).
        let sql = fused_query!(
            effects.opening,
            "INSERT INTO tasks (id, client, subject, server, scopes, purpose, consent_id, pid,
                                begun_at, deadline)
             SELECT ?, ?, ?, ?, ?, ?, c.id, ?, ?, ? FROM consents c
             WHERE c.id = ? AND c.withdrawn_at IS NULL AND c.expires_at > ?
               AND c.client = ? AND c.subject = ? AND c.server = ?;
             INSERT INTO task_svids (serial, task_id, spiffe_id, not_after) VALUES (?, ?, ?, ?);
             INSERT INTO audit (at, kind, actor, detail) VALUES (?, 'task.begin', ?, ?)
             RETURNING seq"
        );
        let inserted: Result<Vec<i64>, sqlx::Error> = sqlx::query_scalar(sql)
            // tasks
            .bind(&task.id)
            .bind(&task.client)
            .bind(&task.subject)
            .bind(&task.server)
            .bind(scopes)
            .bind(&task.purpose)
            .bind(task.pid)
            .bind(task.begun_at)
            .bind(task.deadline)
            .bind(&task.consent_id)
            .bind(task.begun_at)
            .bind(&task.client)
            .bind(&task.subject)
            .bind(&task.server)
            // task_svids
            .bind(&svid.serial)
            .bind(&task.id)
            .bind(&svid.spiffe_id)
            .bind(svid.not_after)
            // audit
            .bind(at)
            .bind(&*actor)
            .bind(detail.to_string())
            .fetch_all(&mut *conn)
            .await;
        let rows = match inserted {
            Ok(rows) => rows,
            Err(error) => {
                return Err(match unusable_consent(conn, task).await {
                    Ok(Some(why)) => why,
                    Ok(None) => error.into(),
                    Err(diagnosis) => diagnosis,
                });
            }
        };
        let [seq] = rows[..] else {
            let reason = format!("audit insert returned {} rows, expected 1", rows.len());
            return Err(sqlx::Error::Protocol(reason).into());
        };
        audit::published(effects, seq, at, KIND_BEGIN, actor, detail);
        Ok(())
    })
}

/// Why a task relying on this consent cannot begin, if anything is wrong with it.
async fn unusable_consent(
    conn: &mut SqliteConnection,
    task: &TaskRecord,
) -> Result<Option<StoreError>, StoreError> {
    let row = sqlx::query(
        "SELECT client, subject, server, expires_at, withdrawn_at FROM consents WHERE id = ?",
    )
    .bind(&task.consent_id)
    .fetch_optional(&mut *conn)
    .await?;
    let id = task.consent_id.clone();
    let Some(row) = row else {
        return Ok(Some(StoreError::ConsentNotFound { id }));
    };
    if let Some(withdrawn_at) = row.try_get::<Option<i64>, _>("withdrawn_at")? {
        return Ok(Some(StoreError::ConsentAlreadyWithdrawn {
            id,
            withdrawn_at,
        }));
    }
    let expires_at: i64 = row.try_get("expires_at")?;
    if expires_at <= task.begun_at {
        return Ok(Some(StoreError::ConsentExpired {
            expires_at,
            at: task.begun_at,
        }));
    }
    for (field, mine) in [
        ("client", &task.client),
        ("subject", &task.subject),
        ("server", &task.server),
    ] {
        if row.try_get::<String, _>(field)? != *mine {
            return Ok(Some(StoreError::ConsentMismatch { id, field }));
        }
    }
    Ok(None)
}

async fn insert_svid(
    conn: &mut SqliteConnection,
    task_id: &str,
    svid: &SvidIssued,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO task_svids (serial, task_id, spiffe_id, not_after) VALUES (?, ?, ?, ?)",
    )
    .bind(&svid.serial)
    .bind(task_id)
    .bind(&svid.spiffe_id)
    .bind(svid.not_after)
    .execute(&mut *conn)
    .await?;
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

fn record_svid_op<'a>(
    state: &'a mut (String, SvidIssued),
    conn: &'a mut SqliteConnection,
    effects: &'a mut Effects,
) -> BoxFuture<'a, Result<(), StoreError>> {
    Box::pin(async move {
        let (task_id, svid) = state;
        let ended_at: Option<Option<i64>> =
            sqlx::query_scalar("SELECT ended_at FROM tasks WHERE id = ?")
                .bind(&*task_id)
                .fetch_optional(&mut *conn)
                .await?;
        match ended_at {
            None => {
                return Err(StoreError::TaskNotFound {
                    id: task_id.clone(),
                });
            }
            Some(Some(_)) => {
                return Err(StoreError::TaskEnded {
                    id: task_id.clone(),
                });
            }
            Some(None) => {}
        }
        insert_svid(conn, task_id, svid).await?;
        // The system itself rotates SVIDs: no actor.
        audit::write(conn, effects, KIND_SVID, "", svid_detail(task_id, svid)).await?;
        Ok(())
    })
}

struct EndTask {
    task_id: String,
    reason: String,
    ended_at: i64,
    revocation: Option<Revocation>,
    actor: String,
}

fn end_op<'a>(
    state: &'a mut EndTask,
    conn: &'a mut SqliteConnection,
    effects: &'a mut Effects,
) -> BoxFuture<'a, Result<EndOutcome, StoreError>> {
    Box::pin(async move {
        effects.savepoint_opened = true;
        let opening = Some(effects.opening);
        let ended =
            mark_ended(conn, opening, &state.task_id, &state.reason, state.ended_at).await?;
        let Some((task, last_not_after)) = ended else {
            let row = sqlx::query(concat!(task_select!(), " WHERE t.id = ?"))
                .bind(&state.task_id)
                .fetch_optional(&mut *conn)
                .await?;
            return Ok(match row.as_ref().map(decode_task).transpose()? {
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
        )
        .await?;
        Ok(EndOutcome::Ended(task, revocation))
    })
}

/// The columns `mark_ended` returns: the task as updated, its serials, and the latest
/// `not_after` among its SVIDs.
macro_rules! ended_returning {
    () => {
        "UPDATE tasks SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL
         RETURNING id, client, subject, server, scopes, purpose, consent_id, pid, begun_at,
                   deadline, ended_at, end_reason,
                   (SELECT json_group_array(s.serial ORDER BY s.rowid)
                    FROM task_svids s WHERE s.task_id = tasks.id) AS serials,
                   (SELECT MAX(s.not_after) FROM task_svids s WHERE s.task_id = tasks.id)
                       AS last_not_after"
    };
}

/// Marks the task ended if it is live, in one round trip (opening the op's savepoint in
/// the same query when `open_savepoint`). Returns the task as now stored and the latest
/// `not_after` of its SVIDs, or `None` if it is not live (or does not exist).
async fn mark_ended(
    conn: &mut SqliteConnection,
    opening: Option<Opening>,
    task_id: &str,
    reason: &str,
    ended_at: i64,
) -> Result<Option<(TaskRecord, Option<i64>)>, StoreError> {
    let sql = match opening {
        Some(opening) => fused_query!(opening, ended_returning!()),
        None => ended_returning!(),
    };
    let row = sqlx::query(sql)
        .bind(ended_at)
        .bind(reason)
        .bind(task_id)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|row| Ok((decode_task(&row)?, row.try_get("last_not_after")?)))
        .transpose()
}

/// Records the end of `task` (just marked ended in this op): completes `revocation` with
/// the task's id, serials and a safe `until`, and inserts it with the `task.end` audit
/// record in one round trip.
async fn record_end(
    conn: &mut SqliteConnection,
    effects: &mut Effects,
    task: &TaskRecord,
    last_not_after: Option<i64>,
    mut revocation: Revocation,
    actor: &str,
) -> Result<Revocation, StoreError> {
    revocation.task_id.clone_from(&task.id);
    revocation.serials.clone_from(&task.serials);
    if let Some(last) = last_not_after {
        revocation.until = revocation.until.max(last);
    }
    let serials = serde_json::to_string(&revocation.serials).expect("strings serialise");
    let detail = json!({
        "task_id": &task.id,
        "reason": &task.end_reason,
        "ended_at": task.ended_at,
        "revocation": &revocation,
    });
    let at = crate::store::unix_millis();
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO revocations (task_id, spiffe_id, serials, reason, revoked_at_ms, until)
         VALUES (?, ?, ?, ?, ?, ?);
         INSERT INTO audit (at, kind, actor, detail) VALUES (?, 'task.end', ?, ?)
         RETURNING seq",
    )
    .bind(&revocation.task_id)
    .bind(&revocation.spiffe_id)
    .bind(serials)
    .bind(&revocation.reason)
    .bind(revocation.revoked_at_ms)
    .bind(revocation.until)
    .bind(at)
    .bind(actor)
    .bind(detail.to_string())
    .fetch_one(&mut *conn)
    .await?;
    audit::published(effects, seq, at, KIND_END, actor, detail);
    Ok(revocation)
}

/// Ends `task`, read live inside the current op (which has its savepoint open): marks it
/// ended, inserts its revocation and a `task.end` audit record. Returns the revocation.
pub(crate) async fn end_live(
    conn: &mut SqliteConnection,
    effects: &mut Effects,
    task: &TaskRecord,
    reason: &str,
    ended_at: i64,
    revocation: Revocation,
    actor: &str,
) -> Result<Revocation, StoreError> {
    let Some((task, last_not_after)) = mark_ended(conn, None, &task.id, reason, ended_at).await?
    else {
        // Cannot happen: the caller read it live in this same op and the writer runs one
        // op at a time. Refuse rather than revoke twice.
        return Err(StoreError::TaskEnded {
            id: task.id.clone(),
        });
    };
    record_end(conn, effects, &task, last_not_after, revocation, actor).await
}

fn prune_op<'a>(
    now: &'a mut i64,
    conn: &'a mut SqliteConnection,
    _effects: &'a mut Effects,
) -> BoxFuture<'a, Result<u64, StoreError>> {
    Box::pin(async move {
        Ok(sqlx::query("DELETE FROM revocations WHERE until <= ?")
            .bind(*now)
            .execute(&mut *conn)
            .await?
            .rows_affected())
    })
}

/// Live tasks relying on `consent_id`, read through `executor` (the pool, or the writer's
/// connection inside an op).
pub(crate) async fn live_tasks_for_consent<'e, E>(
    executor: E,
    consent_id: &str,
) -> Result<Vec<TaskRecord>, StoreError>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows = sqlx::query(concat!(
        task_select!(),
        " WHERE t.consent_id = ? AND t.ended_at IS NULL ORDER BY t.begun_at, t.id"
    ))
    .bind(consent_id)
    .fetch_all(executor)
    .await?;
    rows.iter().map(decode_task).collect()
}

/// Decodes a [`task_select!`] row, reporting anything malformed as
/// [`StoreError::Corrupt`].
fn decode_task(row: &SqliteRow) -> Result<TaskRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let json_list = |column: &str| -> Result<Vec<String>, StoreError> {
        let text: String = row.try_get(column)?;
        serde_json::from_str(&text).map_err(|error| StoreError::Corrupt {
            table: "tasks",
            id: id.clone(),
            reason: format!("{column}: {error}"),
        })
    };
    Ok(TaskRecord {
        client: row.try_get("client")?,
        subject: row.try_get("subject")?,
        server: row.try_get("server")?,
        scopes: json_list("scopes")?,
        purpose: row.try_get("purpose")?,
        consent_id: row.try_get("consent_id")?,
        pid: row.try_get("pid")?,
        begun_at: row.try_get("begun_at")?,
        deadline: row.try_get("deadline")?,
        ended_at: row.try_get("ended_at")?,
        end_reason: row.try_get("end_reason")?,
        serials: json_list("serials")?,
        id,
    })
}

fn decode_revocation(row: &SqliteRow) -> Result<Revocation, StoreError> {
    let task_id: String = row.try_get("task_id")?;
    let serials: String = row.try_get("serials")?;
    let serials = serde_json::from_str(&serials).map_err(|error| StoreError::Corrupt {
        table: "revocations",
        id: task_id.clone(),
        reason: format!("serials: {error}"),
    })?;
    Ok(Revocation {
        spiffe_id: row.try_get("spiffe_id")?,
        serials,
        reason: row.try_get("reason")?,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
        until: row.try_get("until")?,
        task_id,
    })
}

#[cfg(test)]
mod tests;
