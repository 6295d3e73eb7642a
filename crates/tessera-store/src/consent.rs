//! Consent records: a client may act for a subject (a human) on a server within scopes,
//! until an expiry or until withdrawn. Withdrawing one ends every task relying on it.

use std::collections::HashMap;

use rusqlite::{Connection, params};
use serde_json::json;
use tessera_identity::TaskId;
use tokio::sync::watch;

use crate::error::{Conflict, InvalidInput, Unavailable};
use crate::row::{Row, query_optional};
use crate::task::{self, END_REASON_CONSENT_WITHDRAWN, Revocation, TaskRecord};
use crate::validate::{validate_parties, validate_scopes};
use crate::writer::Effects;
use crate::{Store, StoreError, audit};

/// The consent columns, for `concat!`.
macro_rules! consent_select {
    () => {
        "SELECT id, client, subject, server, scopes, expires_at, granted_by, granted_at,
                withdrawn_at
         FROM consents"
    };
}

/// Audit kind written when a consent is granted.
const KIND_GRANT: &str = "consent.grant";
/// Audit kind written when a consent is withdrawn.
const KIND_WITHDRAW: &str = "consent.withdraw";

/// How many times [`Store::withdraw_consent`] goes back for tasks that began on the consent
/// while it was preparing their revocations, before giving up. Sealing the consent first
/// means one extra round suffices (for begins already queued when it was sealed); the rest
/// is a safety margin.
const WITHDRAW_ATTEMPTS: u32 = 8;

/// A consent to grant. The store assigns the id, `granted_by` and `granted_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewConsent {
    /// The client (agent runtime) allowed to act, 1..=[`MAX_CLIENT_LEN`](crate::MAX_CLIENT_LEN) bytes.
    pub client: String,
    /// The human it acts for, 1..=[`MAX_SUBJECT_LEN`](crate::MAX_SUBJECT_LEN) bytes.
    pub subject: String,
    /// The MCP server it may call, 1..=[`MAX_SERVER_LEN`](crate::MAX_SERVER_LEN) bytes.
    pub server: String,
    /// What it may do there, 1..=[`MAX_SCOPES`](crate::MAX_SCOPES) scopes of 1..=[`MAX_SCOPE_LEN`](crate::MAX_SCOPE_LEN) bytes.
    /// Stored sorted and deduplicated. The scope grammar is checked by the caller.
    pub scopes: Vec<String>,
    /// When it lapses, unix seconds; must be in the future.
    pub expires_at: i64,
}

/// A stored consent record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Consent {
    /// Store-generated ULID.
    pub id: String,
    /// The client allowed to act.
    pub client: String,
    /// The human it acts for.
    pub subject: String,
    /// The MCP server it may call.
    pub server: String,
    /// The granted scopes, sorted and deduplicated.
    pub scopes: Vec<String>,
    /// When it lapses, unix seconds.
    pub expires_at: i64,
    /// The actor who granted it.
    pub granted_by: String,
    /// When it was granted, unix seconds.
    pub granted_at: i64,
    /// When it was withdrawn, unix seconds; `None` while not withdrawn.
    pub withdrawn_at: Option<i64>,
}

/// Which consents [`Store::list_consents`] returns.
#[derive(Clone, Debug, Default)]
pub struct ConsentFilter {
    /// Only this client's consents; `None` for all.
    pub client: Option<String>,
    /// Include withdrawn consents too. (Expired ones are always included; compare
    /// `expires_at` with the time that matters to you.)
    pub include_withdrawn: bool,
}

impl NewConsent {
    /// Checks the limits and returns the canonical (sorted, deduplicated) scopes.
    fn validate(&self, now: i64) -> Result<Vec<String>, StoreError> {
        validate_parties(&self.client, &self.subject, &self.server)?;
        validate_scopes(&self.scopes)?;
        if self.expires_at <= now {
            return Err(StoreError::Invalid(InvalidInput::ConsentExpired {
                expires_at: self.expires_at,
                at: now,
            }));
        }
        let mut scopes = self.scopes.clone();
        scopes.sort_unstable();
        scopes.dedup();
        Ok(scopes)
    }
}

// === impl Store: consents ===

impl Store {
    /// Grants a consent (`granted_by` = `actor`) and writes its `consent.grant` audit
    /// record in the same transaction; returns it once durable.
    ///
    /// Fails with [`InvalidInput::ConsentExpired`] if `expires_at` is not in the future, and
    /// with the `Invalid*` errors if a field is out of limits.
    pub async fn grant_consent(&self, new: NewConsent, actor: &str) -> Result<Consent, StoreError> {
        let now = crate::clock::unix_secs();
        let scopes = new.validate(now)?;
        audit::validate_actor(actor)?;
        let consent = Consent {
            id: ulid::Ulid::new().to_string(),
            client: new.client,
            subject: new.subject,
            server: new.server,
            scopes,
            expires_at: new.expires_at,
            granted_by: actor.to_owned(),
            granted_at: now,
            withdrawn_at: None,
        };
        let consent = self
            .inner
            .writer
            .write(KIND_GRANT, consent, grant_op)
            .await?;
        tracing::info!(
            id = %consent.id,
            client = %consent.client,
            subject = consent.subject.as_str(),
            server = %consent.server,
            actor,
            "consent granted"
        );
        Ok(consent)
    }

    /// Consents matching `filter`, oldest first (by grant time, then id).
    pub async fn list_consents(&self, filter: &ConsentFilter) -> Result<Vec<Consent>, StoreError> {
        let rows = sqlx::query(concat!(
            consent_select!(),
            " WHERE (?1 IS NULL OR client = ?1) AND (?2 OR withdrawn_at IS NULL)
              ORDER BY granted_at, id"
        ))
        .bind(filter.client.as_deref())
        .bind(filter.include_withdrawn)
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// The consent with this id, if any (withdrawn or not).
    pub async fn get_consent(&self, id: &str) -> Result<Option<Consent>, StoreError> {
        let row = sqlx::query(concat!(consent_select!(), " WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.inner.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Withdraws a consent and ends every live task relying on it, in one transaction:
    /// sets `withdrawn_at` = `now`; ends each such task with `ended_at` = `now` and
    /// end reason `consent_withdrawn`, inserting its revocation as [`Store::end_task`]
    /// does; writes one `consent.withdraw` audit record and one `task.end` per task.
    /// Returns the withdrawn consent and the ended tasks' revocations.
    ///
    /// `revocation_for` supplies each task's revocation (`spiffe_id`, `reason`,
    /// `revoked_at_ms`, `until`); the store sets `task_id` and `serials` (and raises
    /// `until` to the latest `not_after` of the task's SVIDs if it is earlier). Being a
    /// borrowed closure it cannot run inside the writer task, so it runs just before the
    /// transaction, for the tasks live at that point. To keep that set from growing, the
    /// consent is first sealed: from then on [`Store::begin_task`] refuses it
    /// ([`Conflict::ConsentWithdrawn`], with this `now`), even if this
    /// withdrawal later fails. Tasks whose begin was already queued are found inside the
    /// transaction, which then writes nothing and the store goes back for their
    /// revocations (normally once; after 8 rounds it gives up with
    /// [`Unavailable::WithdrawContended`], changing nothing). No task relying on the
    /// consent outlives its withdrawal.
    ///
    /// `None` if there is no such consent; [`Conflict::ConsentWithdrawn`] if it
    /// was already withdrawn (of concurrent withdrawals, exactly one succeeds).
    pub async fn withdraw_consent(
        &self,
        id: &str,
        actor: &str,
        now: i64,
        revocation_for: &(dyn Fn(&TaskRecord) -> Revocation + Send + Sync),
    ) -> Result<Option<(Consent, Vec<Revocation>)>, StoreError> {
        audit::validate_actor(actor)?;
        let _seal = self.inner.sealed.seal(id, now);
        let mut prepared: HashMap<TaskId, Revocation> = HashMap::new();
        let mut todo = task::live_tasks_for_consent(&self.inner.pool, id).await?;
        for _ in 0..WITHDRAW_ATTEMPTS {
            for task in &todo {
                prepared.insert(task.id, revocation_for(task));
            }
            let state = Withdraw {
                id: id.to_owned(),
                actor: actor.to_owned(),
                now,
                prepared: prepared.clone(),
            };
            match self
                .inner
                .writer
                .write(KIND_WITHDRAW, state, withdraw_op)
                .await?
            {
                WithdrawOutcome::NotFound => return Ok(None),
                WithdrawOutcome::Withdrawn(consent, revocations) => {
                    tracing::info!(
                        id,
                        actor,
                        ended_tasks = revocations.len(),
                        "consent withdrawn"
                    );
                    return Ok(Some((consent, revocations)));
                }
                WithdrawOutcome::Unprepared(ids) => {
                    // Began after our read; committed by now, so the pool sees them.
                    todo.clear();
                    for task_id in ids {
                        if let Some(task) = self.get_task(&task_id).await? {
                            todo.push(task);
                        }
                    }
                }
            }
        }
        Err(StoreError::Unavailable(Unavailable::WithdrawContended {
            id: id.to_owned(),
            attempts: WITHDRAW_ATTEMPTS,
        }))
    }

    /// A receiver that sees a counter change after every committed consent change (grant,
    /// withdrawal) through this store, so the agent can reload its consent cache instead
    /// of polling. Starts at 0 on each [`Store::open`].
    pub fn watch_consents(&self) -> watch::Receiver<u64> {
        self.inner.notifier.consents.subscribe()
    }
}

fn grant_op(
    consent: &mut Consent,
    conn: &Connection,
    effects: &mut Effects,
) -> Result<Consent, StoreError> {
    let scopes = serde_json::to_string(&consent.scopes).expect("strings serialise");
    conn.prepare_cached(
        "INSERT INTO consents
             (id, client, subject, server, scopes, expires_at, granted_by, granted_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        consent.id,
        consent.client,
        consent.subject,
        consent.server,
        scopes,
        consent.expires_at,
        consent.granted_by,
        consent.granted_at,
    ])?;
    audit::write(
        conn,
        effects,
        KIND_GRANT,
        &consent.granted_by,
        json!({ "consent": &*consent }),
    )?;
    effects.consents_changed += 1;
    Ok(consent.clone())
}

struct Withdraw {
    id: String,
    actor: String,
    now: i64,
    /// Revocations computed by the caller, by task id.
    prepared: HashMap<TaskId, Revocation>,
}

enum WithdrawOutcome {
    NotFound,
    Withdrawn(Consent, Vec<Revocation>),
    /// Live tasks the caller has no revocation for yet; nothing was written.
    Unprepared(Vec<TaskId>),
}

fn withdraw_op(
    state: &mut Withdraw,
    conn: &Connection,
    effects: &mut Effects,
) -> Result<WithdrawOutcome, StoreError> {
    let consent = query_optional(
        conn,
        concat!(consent_select!(), " WHERE id = ?"),
        [&state.id],
        |row| decode(row),
    )?;
    let Some(mut consent) = consent else {
        return Ok(WithdrawOutcome::NotFound);
    };
    if let Some(withdrawn_at) = consent.withdrawn_at {
        return Err(StoreError::Conflict(Conflict::ConsentWithdrawn {
            id: consent.id,
            withdrawn_at,
        }));
    }
    let live = task::live_tasks_for_consent_in_writer(conn, &state.id)?;
    let unprepared: Vec<TaskId> = live
        .iter()
        .filter(|t| !state.prepared.contains_key(&t.id))
        .map(|t| t.id)
        .collect();
    if !unprepared.is_empty() {
        return Ok(WithdrawOutcome::Unprepared(unprepared));
    }

    conn.prepare_cached("UPDATE consents SET withdrawn_at = ? WHERE id = ?")?
        .execute(params![state.now, state.id])?;
    consent.withdrawn_at = Some(state.now);
    let ended: Vec<String> = live.iter().map(|t| t.id.to_string()).collect();
    audit::write(
        conn,
        effects,
        KIND_WITHDRAW,
        &state.actor,
        json!({ "consent": &consent, "ended_tasks": ended }),
    )?;
    let mut revocations = Vec::with_capacity(live.len());
    for task in live {
        let revocation = state
            .prepared
            .remove(&task.id)
            .expect("checked above: every live task has a prepared revocation");
        let revocation = task::end_live(
            conn,
            effects,
            &task,
            END_REASON_CONSENT_WITHDRAWN,
            state.now,
            revocation,
            &state.actor,
        )?;
        revocations.push(revocation);
    }
    effects.consents_changed += 1;
    Ok(WithdrawOutcome::Withdrawn(consent, revocations))
}

/// Decodes a `consents` row, reporting malformed scopes as [`StoreError::Corrupt`].
fn decode(row: &impl Row) -> Result<Consent, StoreError> {
    let id: String = row.column("id")?;
    let scopes: String = row.column("scopes")?;
    let scopes: Vec<String> =
        serde_json::from_str(&scopes).map_err(|error| StoreError::Corrupt {
            table: "consents",
            id: id.clone(),
            reason: format!("scopes: {error}"),
        })?;
    Ok(Consent {
        client: row.column("client")?,
        subject: row.column("subject")?,
        server: row.column("server")?,
        scopes,
        expires_at: row.column("expires_at")?,
        granted_by: row.column("granted_by")?,
        granted_at: row.column("granted_at")?,
        withdrawn_at: row.column("withdrawn_at")?,
        id,
    })
}

#[cfg(test)]
mod tests;
