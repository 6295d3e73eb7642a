//! Tasks as the nodes report them, and the revocations the server makes of them.
//!
//! A node's agent journals every task begin and end and sends them with
//! `Node.ReportTaskEvents`, at least once, in journal order. [`PgStore::report_task_events`]
//! stores a request in one transaction: a begin inserts the task once, an end ends it once
//! and publishes its revocation (`revocation.rs`); repeats are no-ops, so a resend after a
//! lost answer changes nothing. A task belongs to the node that reported it first.
//!
//! Another node's event for a task is *contested* (`contested.rs`): it is not stored and
//! the task id is revoked cluster-wide.
//!
//! Server-side revocations end tasks the server knows whichever node holds them: a begin
//! under a consent the server holds as withdrawn, expired or unknown (the node had not
//! heard yet) is revoked in the transaction that stores it; `WithdrawConsent` ends every
//! live task under the consent in its own transaction ([`end_under_consent`]);
//! [`PgStore::revoke_task`] is the administrator's. The consent row is locked (shared by
//! reports, exclusively by a withdrawal) so a begin racing a withdrawal is ended by
//! exactly one of the two, never by neither.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::json;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};

use crate::error::NotFound;
use crate::revocation::{self, RevokedTask, join_serials, split_serials};
use crate::{PgStore, ServerStoreError, Written, audit};

/// End reason of a task begun under a consent the server holds as withdrawn, expired or
/// unknown, and of the tasks a withdrawal ends (the agents' own word for it).
pub const REASON_CONSENT_WITHDRAWN: &str = tessera_store::END_REASON_CONSENT_WITHDRAWN;
/// The end reason of a task whose node was evicted.
pub(crate) const REASON_NODE_EVICTED: &str = "node_evicted";
/// End reason of an administrator's `RevokeTask`.
pub const REASON_REVOKED: &str = "revoked";

/// Audit kind of a report that stored something (one record per request).
const KIND_REPORT: &str = "task.report";
/// Audit kind of an administrator's revocation.
const KIND_REVOKE: &str = "task.revoke";

const COLUMNS: &str = "id, node, spiffe_id, client, subject, server, scopes, consent_id, \
                       begun_at_ms, deadline, ended_at_ms, end_reason, serials, until";

/// A task begin, checked by the caller (ids parse, sizes bounded).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskBegun {
    /// The task's id.
    pub task_id: String,
    /// `spiffe://<td>/client/<client>/task/<id>`.
    pub spiffe_id: String,
    /// The client's name.
    pub client: String,
    /// The human the task acts for.
    pub subject: String,
    /// The MCP server's name.
    pub server: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// The consent it was granted under.
    pub consent_id: String,
    /// When it began, unix milliseconds.
    pub begun_at_ms: i64,
    /// Its deadline, unix seconds: no SVID of it outlives this.
    pub deadline: i64,
    /// Serials (lower-case hex) issued so far.
    pub serials: Vec<String>,
}

/// A task end, checked by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskEnded {
    /// The task's id.
    pub task_id: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// The client's name (from the SPIFFE ID), for a task whose begin the server never
    /// stored.
    pub client: String,
    /// The agent's end reason.
    pub reason: String,
    /// When it ended, unix milliseconds.
    pub ended_at_ms: i64,
    /// Every serial it was issued.
    pub serials: Vec<String>,
    /// When its last SVID expires, unix seconds.
    pub until: i64,
}

/// One reported event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskEvent {
    /// A task began.
    Begun(TaskBegun),
    /// A task ended.
    Ended(TaskEnded),
}

impl TaskEvent {
    /// The task the event is about.
    pub fn task_id(&self) -> &str {
        match self {
            TaskEvent::Begun(b) => &b.task_id,
            TaskEvent::Ended(e) => &e.task_id,
        }
    }
}

impl TaskBegun {
    /// A begin (all fields as reported).
    #[allow(clippy::too_many_arguments, reason = "one field each, as on the wire")]
    pub fn new(
        task_id: String,
        spiffe_id: String,
        client: String,
        subject: String,
        server: String,
        scopes: Vec<String>,
        consent_id: String,
        begun_at_ms: i64,
        deadline: i64,
        serials: Vec<String>,
    ) -> TaskBegun {
        TaskBegun {
            task_id,
            spiffe_id,
            client,
            subject,
            server,
            scopes,
            consent_id,
            begun_at_ms,
            deadline,
            serials,
        }
    }
}

impl TaskEnded {
    /// An end (all fields as reported).
    pub fn new(
        task_id: String,
        spiffe_id: String,
        client: String,
        reason: String,
        ended_at_ms: i64,
        serials: Vec<String>,
        until: i64,
    ) -> TaskEnded {
        TaskEnded {
            task_id,
            spiffe_id,
            client,
            reason,
            ended_at_ms,
            serials,
            until,
        }
    }
}

/// A task as the server holds it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ServerTask {
    /// The task's id.
    pub id: String,
    /// The node that reported it.
    pub node: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// The client's name.
    pub client: String,
    /// The human it acts for.
    pub subject: String,
    /// The MCP server's name.
    pub server: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// The consent it was granted under.
    pub consent_id: String,
    /// When it began, unix milliseconds.
    pub begun_at_ms: i64,
    /// Its deadline, unix seconds.
    pub deadline: i64,
    /// When it ended, unix milliseconds.
    pub ended_at_ms: Option<i64>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Serials known to the server.
    pub serials: Vec<String>,
    /// Kept until then (unix seconds), plus a grace.
    pub until: i64,
}

/// What a report stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reported {
    /// Tasks stored as begun (repeats not counted).
    pub begun: usize,
    /// Tasks ended (repeats not counted).
    pub ended: usize,
    /// Tasks the server revoked as it stored their begin (consent withdrawn, expired or
    /// unknown).
    pub revoked_at_begin: Vec<String>,
    /// The feed version that published the revocations, if any.
    pub revocation_version: Option<i64>,
    /// Revocations published.
    pub published: usize,
    /// Events for tasks another node reported first: not stored, their tasks revoked.
    pub contested: Vec<Contested>,
}

/// A consent's fields a begin is checked against.
struct ConsentCheck {
    client: String,
    subject: String,
    server: String,
    expires_at: i64,
    withdrawn: bool,
}

// === impl PgStore: tasks ===

impl PgStore {
    /// Stores a node's events in one transaction (see the module's comment) and returns
    /// what changed. An event of a task another node reported is not stored but
    /// [`Contested`]: its task is revoked in the same transaction.
    pub async fn report_task_events(
        &self,
        node: &str,
        events: &[TaskEvent],
    ) -> Result<Reported, ServerStoreError> {
        let now_ms = crate::clock::unix_millis();
        let now = now_ms / 1000;
        let mut tx = self.begin().await?;
        // Shared locks on the consents the begins name, in id order: a withdrawal of one
        // (an exclusive lock) either committed before (then it is seen as withdrawn here)
        // or waits for this transaction (then it finds and ends these tasks).
        let consent_ids: BTreeSet<&str> = events
            .iter()
            .filter_map(|e| match e {
                TaskEvent::Begun(b) => Some(b.consent_id.as_str()),
                TaskEvent::Ended(_) => None,
            })
            .collect();
        let mut consents = HashMap::new();
        if !consent_ids.is_empty() {
            let rows = sqlx::query(
                "SELECT id, client, subject, server, expires_at, withdrawn_at FROM consents
                 WHERE id = ANY($1) ORDER BY id FOR SHARE",
            )
            .bind(consent_ids.iter().copied().collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                consents.insert(
                    row.try_get::<String, _>("id")?,
                    ConsentCheck {
                        client: row.try_get("client")?,
                        subject: row.try_get("subject")?,
                        server: row.try_get("server")?,
                        expires_at: row.try_get("expires_at")?,
                        withdrawn: row.try_get::<Option<i64>, _>("withdrawn_at")?.is_some(),
                    },
                );
            }
        }

        let mut reported = Reported::default();
        let mut revocations = Vec::new();
        // A request's first begin of each task (a repeat within it changes nothing).
        let mut seen = HashSet::new();
        let begins: Vec<&TaskBegun> = events
            .iter()
            .filter_map(|e| match e {
                TaskEvent::Begun(b) if seen.insert(b.task_id.as_str()) => Some(b),
                _ => None,
            })
            .collect();
        let inserted = insert_begins(&mut tx, node, &begins).await?;
        let uncovered: Vec<&TaskBegun> = begins
            .iter()
            .copied()
            .filter(|b| inserted.contains(&b.task_id))
            .filter(|b| {
                !consents.get(&b.consent_id).is_some_and(|c| {
                    !c.withdrawn
                        && c.expires_at > now
                        && c.client == b.client
                        && c.subject == b.subject
                        && c.server == b.server
                })
            })
            .collect();
        reported.begun = inserted.len();
        if !uncovered.is_empty() {
            let ids: Vec<&str> = uncovered.iter().map(|b| b.task_id.as_str()).collect();
            sqlx::query("UPDATE tasks SET ended_at_ms = $2, end_reason = $3 WHERE id = ANY($1)")
                .bind(&ids)
                .bind(now_ms)
                .bind(REASON_CONSENT_WITHDRAWN)
                .execute(&mut *tx)
                .await?;
            for b in uncovered {
                tracing::info!(
                    task = b.task_id,
                    node,
                    consent = b.consent_id,
                    "task begun under a consent withdrawn, expired or unknown here: revoked"
                );
                reported.revoked_at_begin.push(b.task_id.clone());
                revocations.push(RevokedTask {
                    task_id: b.task_id.clone(),
                    node: node.to_owned(),
                    spiffe_id: b.spiffe_id.clone(),
                    serials: b.serials.clone(),
                    reason: REASON_CONSENT_WITHDRAWN.to_owned(),
                    revoked_at_ms: now_ms,
                    until: b.deadline,
                });
            }
        }

        let mut seen = HashSet::new();
        let ends: Vec<&TaskEnded> = events
            .iter()
            .filter_map(|e| match e {
                TaskEvent::Ended(e) if seen.insert(e.task_id.as_str()) => Some(e),
                _ => None,
            })
            .collect();
        let took = end_tasks(&mut tx, node, &ends).await?;
        for e in &took {
            reported.ended += 1;
            revocations.push(RevokedTask {
                task_id: e.task_id.clone(),
                node: node.to_owned(),
                spiffe_id: e.spiffe_id.clone(),
                serials: e.serials.clone(),
                reason: e.reason.clone(),
                revoked_at_ms: e.ended_at_ms,
                until: e.until,
            });
        }

        // What took no effect is a repeat of this node's, or another node's task.
        let took: HashSet<&str> = took.iter().map(|e| e.task_id.as_str()).collect();
        let unsettled: BTreeSet<&str> = begins
            .iter()
            .map(|b| b.task_id.as_str())
            .filter(|id| !inserted.contains(*id))
            .chain(
                ends.iter()
                    .map(|e| e.task_id.as_str())
                    .filter(|id| !took.contains(id)),
            )
            .collect();
        reported.contested = contested::find(&mut tx, node, events, unsettled).await?;
        if !reported.contested.is_empty() {
            revocations.extend(
                contested::revoke(&mut tx, node, events, &reported.contested, now_ms).await?,
            );
        }

        if reported.begun > 0 || reported.ended > 0 {
            audit::write(
                &mut tx,
                KIND_REPORT,
                &format!("node:{node}"),
                &json!({
                    "node": node,
                    "begun": reported.begun,
                    "ended": reported.ended,
                    "revoked_at_begin": &reported.revoked_at_begin,
                }),
            )
            .await?;
        }
        reported.published = revocations.len();
        reported.revocation_version = revocation::publish(&mut tx, &revocations, &[]).await?;
        tx.commit().await?;
        Ok(reported)
    }

    /// Revokes a task the server knows (reason `revoked`), whether or not its node is
    /// reachable: published on the feed, with a `task.revoke` audit record. A task that
    /// already ended is returned as it is (it was revoked then). [`NotFound::Task`] for
    /// an unknown one. The version is the feed's (0 when nothing new was published).
    pub async fn revoke_task(
        &self,
        id: &str,
        actor: &str,
    ) -> Result<Written<ServerTask>, ServerStoreError> {
        audit::validate_actor(actor)?;
        let now_ms = crate::clock::unix_millis();
        let mut tx = self.begin().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE tasks SET ended_at_ms = $2, end_reason = $3
             WHERE id = $1 AND ended_at_ms IS NULL RETURNING {COLUMNS}"
        )))
        .bind(id)
        .bind(now_ms)
        .bind(REASON_REVOKED)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM tasks WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            return match row {
                Some(row) => Ok(Written {
                    value: decode(&row)?,
                    version: 0,
                }),
                None => Err(NotFound::Task { id: id.to_owned() }.into()),
            };
        };
        let task = decode(&row)?;
        audit::write(
            &mut tx,
            KIND_REVOKE,
            actor,
            &json!({ "task": id, "node": &task.node, "spiffe_id": &task.spiffe_id }),
        )
        .await?;
        let version = revocation::publish(&mut tx, &[revoked(&task, REASON_REVOKED)], &[])
            .await?
            .unwrap_or(0);
        tx.commit().await?;
        tracing::info!(task = id, node = task.node, actor, version, "task revoked");
        Ok(Written {
            value: task,
            version,
        })
    }

    /// Tasks the nodes reported (one client's, or all), live ones first, then newest
    /// first; at most `limit`.
    pub async fn list_tasks(
        &self,
        client: Option<&str>,
        include_ended: bool,
        limit: u32,
    ) -> Result<Vec<ServerTask>, ServerStoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM tasks
             WHERE ($1::text IS NULL OR client = $1) AND ($2 OR ended_at_ms IS NULL)
             ORDER BY ended_at_ms IS NOT NULL, begun_at_ms DESC, id DESC LIMIT $3"
        )))
        .bind(client)
        .bind(include_ended)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }
}

/// Ends every live task under `consent_id` (reason `consent_withdrawn`) in the caller's
/// transaction (which holds the consent's row lock), and returns their revocations for
/// [`revocation::publish`].
pub(crate) async fn end_under_consent(
    conn: &mut PgConnection,
    consent_id: &str,
    now_ms: i64,
) -> Result<Vec<RevokedTask>, ServerStoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE tasks SET ended_at_ms = $2, end_reason = $3
         WHERE consent_id = $1 AND ended_at_ms IS NULL RETURNING {COLUMNS}"
    )))
    .bind(consent_id)
    .bind(now_ms)
    .bind(REASON_CONSENT_WITHDRAWN)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| Ok(revoked(&decode(row)?, REASON_CONSENT_WITHDRAWN)))
        .collect()
}

/// Ends every live task `node` reported (its eviction, in the same transaction); their
/// revocations. Its X.509 chains are refused through its revoked CAs and its JWT-SVIDs
/// through its withdrawn keys, but an access token a token endpoint issued for one of its
/// tasks carries neither: it is refused because its task is revoked.
pub(crate) async fn end_on_node(
    conn: &mut PgConnection,
    node: &str,
    now_ms: i64,
) -> Result<Vec<RevokedTask>, ServerStoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE tasks SET ended_at_ms = $2, end_reason = $3
         WHERE node = $1 AND ended_at_ms IS NULL RETURNING {COLUMNS}"
    )))
    .bind(node)
    .bind(now_ms)
    .bind(REASON_NODE_EVICTED)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| Ok(revoked(&decode(row)?, REASON_NODE_EVICTED)))
        .collect()
}

/// The revocation of a task the server ends itself: kept until its deadline (no SVID of
/// a task outlives it).
fn revoked(task: &ServerTask, reason: &str) -> RevokedTask {
    RevokedTask {
        task_id: task.id.clone(),
        node: task.node.clone(),
        spiffe_id: task.spiffe_id.clone(),
        serials: task.serials.clone(),
        reason: reason.to_owned(),
        revoked_at_ms: task.ended_at_ms.unwrap_or_else(crate::clock::unix_millis),
        until: task.deadline.max(task.until),
    }
}

/// Stores `begins` (distinct tasks) for `node` in one statement whatever their number, and
/// returns the ids that were new. A task already stored (a repeat, or another node's) is
/// left as it is.
async fn insert_begins(
    conn: &mut PgConnection,
    node: &str,
    begins: &[&TaskBegun],
) -> Result<HashSet<String>, ServerStoreError> {
    if begins.is_empty() {
        return Ok(HashSet::new());
    }
    let column = |f: fn(&TaskBegun) -> String| begins.iter().map(|&b| f(b)).collect::<Vec<_>>();
    let column_i64 = |f: fn(&TaskBegun) -> i64| begins.iter().map(|&b| f(b)).collect::<Vec<_>>();
    // A task's scopes are an array of their own, and UNNEST cannot take an array of
    // arrays of different lengths: each travels as a JSON array.
    let scopes = column(|b| serde_json::Value::from(b.scopes.clone()).to_string());
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO tasks (id, node, spiffe_id, client, subject, server, scopes, consent_id,
                            begun_at_ms, deadline, serials, until)
         SELECT i.id, $11, i.spiffe_id, i.client, i.subject, i.server,
                ARRAY(SELECT jsonb_array_elements_text(i.scopes::jsonb)), i.consent_id,
                i.begun_at_ms, i.deadline, i.serials, i.deadline
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::bigint[], $9::bigint[], $10::text[])
              AS i(id, spiffe_id, client, subject, server, scopes, consent_id, begun_at_ms,
                   deadline, serials)
         ON CONFLICT (id) DO NOTHING
         RETURNING id",
    )
    .bind(column(|b| b.task_id.clone()))
    .bind(column(|b| b.spiffe_id.clone()))
    .bind(column(|b| b.client.clone()))
    .bind(column(|b| b.subject.clone()))
    .bind(column(|b| b.server.clone()))
    .bind(&scopes)
    .bind(column(|b| b.consent_id.clone()))
    .bind(column_i64(|b| b.begun_at_ms))
    .bind(column_i64(|b| b.deadline))
    .bind(column(|b| join_serials(&b.serials)))
    .bind(node)
    .fetch_all(&mut *conn)
    .await?;
    Ok(inserted.into_iter().collect())
}

/// Ends `ends` (distinct tasks) for `node` in a few statements whatever their number, and
/// returns those that took effect, in order. Storing every begin of a request before its
/// ends gives the journal's result (a task's begin precedes its end), with the statement
/// count of a request independent of its size.
///
/// An end replaces the begin's serials and expiry (it carries every serial and when the
/// last SVID expires). A task not stored yet (its begin was pruned, or never stored) is
/// stored ended, so it is revoked and stays this node's. A task that already ended (a
/// repeat, or revoked by the server) is left as it is, and so is another node's task (the
/// caller finds it contested).
async fn end_tasks<'e>(
    conn: &mut PgConnection,
    node: &str,
    ends: &[&'e TaskEnded],
) -> Result<Vec<&'e TaskEnded>, ServerStoreError> {
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    let column = |f: fn(&TaskEnded) -> String| ends.iter().map(|&e| f(e)).collect::<Vec<_>>();
    let ids = column(|e| e.task_id.clone());
    let spiffe_ids = column(|e| e.spiffe_id.clone());
    let clients = column(|e| e.client.clone());
    let reasons = column(|e| e.reason.clone());
    let serials = column(|e| join_serials(&e.serials));
    let ended_at: Vec<i64> = ends.iter().map(|e| e.ended_at_ms).collect();
    let until: Vec<i64> = ends.iter().map(|e| e.until).collect();
    let updated: Vec<String> = sqlx::query_scalar(
        "UPDATE tasks t SET ended_at_ms = i.ended_at_ms, end_reason = i.reason,
                            serials = i.serials, until = i.until
         FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[])
              AS i(id, ended_at_ms, reason, serials, until)
         WHERE t.id = i.id AND t.node = $6 AND t.ended_at_ms IS NULL
         RETURNING t.id",
    )
    .bind(&ids)
    .bind(&ended_at)
    .bind(&reasons)
    .bind(&serials)
    .bind(&until)
    .bind(node)
    .fetch_all(&mut *conn)
    .await?;
    let mut took: std::collections::HashSet<String> = updated.into_iter().collect();
    let rest: Vec<usize> = (0..ends.len())
        .filter(|&i| !took.contains(&ids[i]))
        .collect();
    if !rest.is_empty() {
        let pick = |v: &[String]| rest.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
        let pick_i64 = |v: &[i64]| rest.iter().map(|&i| v[i]).collect::<Vec<_>>();
        let inserted: Vec<String> = sqlx::query_scalar(
            "INSERT INTO tasks (id, node, spiffe_id, client, subject, server, scopes, consent_id,
                                begun_at_ms, deadline, ended_at_ms, end_reason, serials, until)
             SELECT i.id, $8, i.spiffe_id, i.client, '', '', '{}', '', i.ended_at_ms, i.until,
                    i.ended_at_ms, i.reason, i.serials, i.until
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[],
                         $6::text[], $7::bigint[])
                  AS i(id, spiffe_id, client, ended_at_ms, reason, serials, until)
             ON CONFLICT (id) DO NOTHING
             RETURNING id",
        )
        .bind(pick(&ids))
        .bind(pick(&spiffe_ids))
        .bind(pick(&clients))
        .bind(pick_i64(&ended_at))
        .bind(pick(&reasons))
        .bind(pick(&serials))
        .bind(pick_i64(&until))
        .bind(node)
        .fetch_all(&mut *conn)
        .await?;
        took.extend(inserted);
    }
    Ok(ends
        .iter()
        .copied()
        .filter(|e| took.contains(&e.task_id))
        .collect())
}

fn decode(row: &PgRow) -> Result<ServerTask, ServerStoreError> {
    Ok(ServerTask {
        id: row.try_get("id")?,
        node: row.try_get("node")?,
        spiffe_id: row.try_get("spiffe_id")?,
        client: row.try_get("client")?,
        subject: row.try_get("subject")?,
        server: row.try_get("server")?,
        scopes: row.try_get("scopes")?,
        consent_id: row.try_get("consent_id")?,
        begun_at_ms: row.try_get("begun_at_ms")?,
        deadline: row.try_get("deadline")?,
        ended_at_ms: row.try_get("ended_at_ms")?,
        end_reason: row.try_get("end_reason")?,
        serials: split_serials(&row.try_get::<String, _>("serials")?),
        until: row.try_get("until")?,
    })
}

mod contested;

pub use contested::{Contested, REASON_CONTESTED};

#[cfg(test)]
mod tests;
