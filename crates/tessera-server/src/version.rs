//! Versions: how a write gets one, in order.
//!
//! Every write that changes an entry, a consent or a node calls [`record`] as the last
//! statement of its transaction. [`record`] takes the next version from the one-row
//! `change_version` counter, logs which record changed, and notifies `tessera_changes`
//! with the version; PostgreSQL delivers the notification only if, and when, the
//! transaction commits.
//!
//! Why a counter row and not a sequence (`bigserial`): sequence values are handed out at
//! `nextval`, not at commit, so two writers can commit out of order: v10 commits, a reader
//! reads "everything after v9" and moves to v10, then v9 commits and that reader never
//! sees it. `UPDATE change_version … RETURNING version` locks the row until the writing
//! transaction ends, so the next writer's `UPDATE` waits and gets v+1 only after v is
//! committed (or rolled back, which frees v for it: no gaps either). Versions therefore
//! commit in order, and "everything up to v" is a state a reader can hold. The price is
//! that writers of changes serialise on that row from their last statement to their
//! commit; it is taken last for that reason. Admin changes and node attestations are
//! rare next to that (the audit log and join tokens, which nothing versions, stay out of it).

use sqlx::PgConnection;

use crate::ServerStoreError;

/// The channel every committed change is notified on, with its version as payload.
pub(crate) const CHANNEL: &str = "tessera_changes";

/// What a change log row names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Entry,
    Consent,
    Node,
    /// A node's JWT signing keys, keyed by the node's name.
    JwtKeys,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Entry => "entry",
            Kind::Consent => "consent",
            Kind::Node => "node",
            Kind::JwtKeys => "jwt_keys",
        }
    }
}

/// Logs a change to the record `kind`/`key` under the next version, and notifies it on
/// commit. Call it last in the writing transaction (see the module's comment). Returns
/// the version.
pub(crate) async fn record(
    conn: &mut PgConnection,
    kind: Kind,
    key: &str,
) -> Result<i64, ServerStoreError> {
    let version: i64 =
        sqlx::query_scalar("UPDATE change_version SET version = version + 1 RETURNING version")
            .fetch_one(&mut *conn)
            .await?;
    sqlx::query("INSERT INTO changes (version, at_ms, kind, key) VALUES ($1, $2, $3, $4)")
        .bind(version)
        .bind(crate::clock::unix_millis())
        .bind(kind.as_str())
        .bind(key)
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(version.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(version)
}
