//! Consent records, the agent store's, kept once for the whole cluster. Withdrawing one
//! ends, in the same transaction, every live task the nodes reported under it, and
//! publishes their revocations on the feed (`task.rs`, `revocation.rs`); the withdrawal
//! also reaches every agent as a change, and each ends the tasks relying on it.

use serde_json::json;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};
use tessera_store::{
    Consent, ConsentFilter, InvalidInput, MAX_CLIENT_LEN, MAX_SCOPE_LEN, MAX_SCOPES,
    MAX_SERVER_LEN, MAX_SUBJECT_LEN, NewConsent,
};

use crate::error::{Conflict, NotFound};
use crate::version::{self, Kind};
use crate::{PgStore, ServerStoreError, Written, audit, revocation, task};

/// A withdrawn consent and the tasks its withdrawal ended.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Withdrawal {
    /// The consent as withdrawn.
    pub consent: Consent,
    /// Ids of the live tasks the nodes had reported under it, now revoked.
    pub ended_tasks: Vec<String>,
    /// The revocation feed's version that published them (`None`: there were none).
    pub revocation_version: Option<i64>,
}

/// Audit kind written when a consent is granted.
const KIND_GRANT: &str = "consent.grant";
/// Audit kind written when a consent is withdrawn.
const KIND_WITHDRAW: &str = "consent.withdraw";

const COLUMNS: &str =
    "id, client, subject, server, scopes, expires_at, granted_by, granted_at, withdrawn_at";

// === impl PgStore: consents ===

impl PgStore {
    /// Grants a consent (`granted_by` = `actor`) with its `consent.grant` audit record and
    /// its change, in one transaction. Refuses what the agent store refuses: fields out of
    /// limits, an expiry not in the future. The scope grammar is the caller's to check,
    /// as for the agent store.
    pub async fn grant_consent(
        &self,
        new: NewConsent,
        actor: &str,
    ) -> Result<Written<Consent>, ServerStoreError> {
        let now = crate::clock::unix_secs();
        let scopes = validate(&new, now)?;
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
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO consents (id, client, subject, server, scopes, expires_at, granted_by,
                                   granted_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&consent.id)
        .bind(&consent.client)
        .bind(&consent.subject)
        .bind(&consent.server)
        .bind(&consent.scopes)
        .bind(consent.expires_at)
        .bind(&consent.granted_by)
        .bind(consent.granted_at)
        .execute(&mut *tx)
        .await?;
        audit::write(&mut tx, KIND_GRANT, actor, &json!({ "consent": &consent })).await?;
        let version = version::record(&mut tx, Kind::Consent, &consent.id).await?;
        tx.commit().await?;
        tracing::info!(
            id = %consent.id,
            client = %consent.client,
            server = %consent.server,
            actor,
            version,
            "consent granted"
        );
        Ok(Written {
            value: consent,
            version,
        })
    }

    /// Consents matching `filter`, oldest first (by grant time, then id).
    pub async fn list_consents(
        &self,
        filter: &ConsentFilter,
    ) -> Result<Vec<Consent>, ServerStoreError> {
        let mut conn = self.pool.acquire().await?;
        list(&mut conn, filter).await
    }

    /// The consent with this id, if any (withdrawn or not).
    pub async fn get_consent(&self, id: &str) -> Result<Option<Consent>, ServerStoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(by_ids(&mut conn, &[id.to_owned()]).await?.pop())
    }

    /// Withdraws a consent (`withdrawn_at` = now), with its `consent.withdraw` audit
    /// record, its change, and the revocation of every live task reported under it, in
    /// one transaction. [`NotFound::Consent`] if there is none;
    /// [`Conflict::ConsentWithdrawn`] if it already was (of concurrent withdrawals,
    /// exactly one succeeds). The version is the change log's.
    pub async fn withdraw_consent(
        &self,
        id: &str,
        actor: &str,
    ) -> Result<Written<Withdrawal>, ServerStoreError> {
        audit::validate_actor(actor)?;
        let now = crate::clock::unix_secs();
        let mut tx = self.begin().await?;
        // The row lock makes a concurrent withdrawal wait, then find withdrawn_at set.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE consents SET withdrawn_at = $2 WHERE id = $1 AND withdrawn_at IS NULL
             RETURNING {COLUMNS}"
        )))
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            let withdrawn_at: Option<Option<i64>> =
                sqlx::query_scalar("SELECT withdrawn_at FROM consents WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(match withdrawn_at {
                Some(Some(withdrawn_at)) => Conflict::ConsentWithdrawn {
                    id: id.to_owned(),
                    withdrawn_at,
                }
                .into(),
                _ => NotFound::Consent { id: id.to_owned() }.into(),
            });
        };
        let consent = decode(&row)?;
        let revoked = task::end_under_consent(&mut tx, id, crate::clock::unix_millis()).await?;
        let ended_tasks: Vec<String> = revoked.iter().map(|r| r.task_id.clone()).collect();
        audit::write(
            &mut tx,
            KIND_WITHDRAW,
            actor,
            &json!({ "consent": &consent, "ended_tasks": &ended_tasks }),
        )
        .await?;
        // The change counter, then the feed's: every writer taking both takes them in
        // this order, so none waits on the other in a cycle.
        let version = version::record(&mut tx, Kind::Consent, &consent.id).await?;
        let revocation_version = revocation::publish(&mut tx, &revoked, &[]).await?;
        tx.commit().await?;
        tracing::info!(
            id,
            actor,
            version,
            ended = ended_tasks.len(),
            "consent withdrawn"
        );
        Ok(Written {
            value: Withdrawal {
                consent,
                ended_tasks,
                revocation_version,
            },
            version,
        })
    }
}

/// Consents matching `filter`, oldest first.
pub(crate) async fn list(
    conn: &mut PgConnection,
    filter: &ConsentFilter,
) -> Result<Vec<Consent>, ServerStoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM consents
         WHERE ($1::text IS NULL OR client = $1) AND ($2 OR withdrawn_at IS NULL)
         ORDER BY granted_at, id"
    )))
    .bind(filter.client.as_deref())
    .bind(filter.include_withdrawn)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(decode).collect()
}

/// The consents with these ids (those that exist).
pub(crate) async fn by_ids(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Vec<Consent>, ServerStoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM consents WHERE id = ANY($1)"
    )))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(decode).collect()
}

/// The agent store's checks on a new consent; returns the canonical scopes.
fn validate(new: &NewConsent, now: i64) -> Result<Vec<String>, ServerStoreError> {
    if new.client.is_empty() || new.client.len() > MAX_CLIENT_LEN {
        return Err(InvalidInput::Client {
            len: new.client.len(),
        }
        .into());
    }
    for (field, value, max) in [
        ("subject", &new.subject, MAX_SUBJECT_LEN),
        ("server", &new.server, MAX_SERVER_LEN),
    ] {
        if value.is_empty() || value.len() > max {
            return Err(InvalidInput::Field {
                field,
                min: 1,
                max,
                len: value.len(),
            }
            .into());
        }
    }
    if new.scopes.is_empty() || new.scopes.len() > MAX_SCOPES {
        return Err(InvalidInput::ScopeCount {
            count: new.scopes.len(),
        }
        .into());
    }
    for (index, scope) in new.scopes.iter().enumerate() {
        if scope.is_empty() || scope.len() > MAX_SCOPE_LEN {
            return Err(InvalidInput::Scope {
                index,
                len: scope.len(),
            }
            .into());
        }
    }
    if new.expires_at <= now {
        return Err(InvalidInput::ConsentExpired {
            expires_at: new.expires_at,
            at: now,
        }
        .into());
    }
    let mut scopes = new.scopes.clone();
    scopes.sort_unstable();
    scopes.dedup();
    Ok(scopes)
}

fn decode(row: &PgRow) -> Result<Consent, ServerStoreError> {
    Ok(Consent {
        id: row.try_get("id")?,
        client: row.try_get("client")?,
        subject: row.try_get("subject")?,
        server: row.try_get("server")?,
        scopes: row.try_get("scopes")?,
        expires_at: row.try_get("expires_at")?,
        granted_by: row.try_get("granted_by")?,
        granted_at: row.try_get("granted_at")?,
        withdrawn_at: row.try_get("withdrawn_at")?,
    })
}

#[cfg(test)]
mod tests;
