//! Contested task ids: an event from one node for a task another node reported first.
//!
//! The event is not stored (ownership is never handed over) and the task id is revoked
//! cluster-wide at once (reason `contested`), in the report's transaction, audited as
//! `task.contested` naming both nodes. Revoking is the safe answer whichever node is
//! lying: task ids travel in the SPIFFE IDs every workload presents, so a compromised node
//! can learn another node's task id and report it first; the first reporter could end the
//! task itself anyway, so this gives an attacker nothing, while the true owner, whose
//! later begin and end can no longer be stored, would otherwise have its end never revoke
//! the task elsewhere. The revocation is kept as long as the longest claim (a pre-claim
//! with a short deadline must not let it lapse before the true owner's SVIDs expire).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::json;
use sqlx::PgConnection;

use super::{TaskEvent, decode};
use crate::revocation::RevokedTask;
use crate::{ServerStoreError, audit};

/// Audit kind of an event for a task another node reported (one record per task).
const KIND_CONTESTED: &str = "task.contested";

/// End reason, and revocation reason, of a task id two nodes reported.
pub const REASON_CONTESTED: &str = "contested";

/// A reported event for a task another node reported first.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Contested {
    /// The event's position among the request's events.
    pub index: usize,
    /// The task's id.
    pub task_id: String,
    /// The node the server holds the task for.
    pub owner: String,
}

/// The events of `events` whose task another node holds, among the tasks `unsettled`
/// (those the report's statements left untouched: a repeat of `node`'s, or another's).
pub(super) async fn find(
    conn: &mut PgConnection,
    node: &str,
    events: &[TaskEvent],
    unsettled: BTreeSet<&str>,
) -> Result<Vec<Contested>, ServerStoreError> {
    if unsettled.is_empty() {
        return Ok(Vec::new());
    }
    let owners: HashMap<String, String> = sqlx::query_as::<_, (String, String)>(
        "SELECT id, node FROM tasks WHERE id = ANY($1) AND node <> $2",
    )
    .bind(unsettled.into_iter().collect::<Vec<_>>())
    .bind(node)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    Ok(events
        .iter()
        .enumerate()
        .filter_map(|(index, e)| {
            let task_id = e.task_id();
            owners.get(task_id).map(|owner| Contested {
                index,
                task_id: task_id.to_owned(),
                owner: owner.clone(),
            })
        })
        .collect())
}

/// Ends every task of `contested` (live or not; its owner stays as it is) and returns
/// their revocations: kept until the latest of the stored task's deadline and expiry and
/// what the contesting events claim (see the module's comment), naming every serial
/// either side reported. Audits one `task.contested` record per task.
pub(super) async fn revoke(
    conn: &mut PgConnection,
    node: &str,
    events: &[TaskEvent],
    contested: &[Contested],
    now_ms: i64,
) -> Result<Vec<RevokedTask>, ServerStoreError> {
    // Per task: the latest expiry the contesting events claim, their serials and kinds.
    let mut claims: BTreeMap<&str, (i64, BTreeSet<&str>, Vec<&str>)> = BTreeMap::new();
    for c in contested {
        let claim = claims.entry(c.task_id.as_str()).or_default();
        match &events[c.index] {
            TaskEvent::Begun(b) => {
                claim.0 = claim.0.max(b.deadline);
                claim.1.extend(b.serials.iter().map(String::as_str));
                claim.2.push("begun");
            }
            TaskEvent::Ended(e) => {
                claim.0 = claim.0.max(e.until);
                claim.1.extend(e.serials.iter().map(String::as_str));
                claim.2.push("ended");
            }
        }
    }
    let ids: Vec<&str> = claims.keys().copied().collect();
    let until: Vec<i64> = claims.values().map(|c| c.0).collect();
    let rows = sqlx::query(
        "UPDATE tasks t SET ended_at_ms = COALESCE(t.ended_at_ms, $3),
                            end_reason = COALESCE(t.end_reason, $4),
                            until = GREATEST(t.until, t.deadline, i.until)
         FROM UNNEST($1::text[], $2::bigint[]) AS i(id, until)
         WHERE t.id = i.id
         RETURNING t.*",
    )
    .bind(&ids)
    .bind(&until)
    .bind(now_ms)
    .bind(REASON_CONTESTED)
    .fetch_all(&mut *conn)
    .await?;
    let mut revoked_tasks = Vec::with_capacity(rows.len());
    for row in &rows {
        let task = decode(row)?;
        let (_, serials, kinds) = &claims[task.id.as_str()];
        tracing::warn!(
            task = task.id,
            owner = task.node,
            node,
            events = ?kinds,
            "task events for another node's task: refused, and the task id revoked"
        );
        audit::write(
            conn,
            KIND_CONTESTED,
            &format!("node:{node}"),
            &json!({
                "task": &task.id,
                "owner": &task.node,
                "node": node,
                "events": kinds,
                "spiffe_id": &task.spiffe_id,
            }),
        )
        .await?;
        let mut all_serials: BTreeSet<String> = task.serials.iter().cloned().collect();
        all_serials.extend(serials.iter().map(|s| (*s).to_owned()));
        revoked_tasks.push(RevokedTask {
            task_id: task.id.clone(),
            node: task.node.clone(),
            spiffe_id: task.spiffe_id.clone(),
            serials: all_serials.into_iter().collect(),
            reason: REASON_CONTESTED.to_owned(),
            revoked_at_ms: now_ms,
            until: task.until,
        });
    }
    Ok(revoked_tasks)
}
