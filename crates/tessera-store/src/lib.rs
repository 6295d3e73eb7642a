//! Durable state for the Tessera node agent: registration entries, consents, tasks,
//! revocations and the audit log, in one SQLite file.
//!
//! The store is the last line of defence for what gets persisted: it enforces input limits
//! itself, writes every change and its audit record in one transaction, and reports data
//! that fails to decode as [`StoreError::Corrupt`] instead of skipping it.
//!
//! It deals in plain strings (client names, selectors) that callers validate against the
//! identity scheme; it deliberately does not depend on `tessera-identity`, so the schema
//! and the identity rules can evolve separately.
//!
//! Every write goes through one writer, on its own thread, that group-commits concurrent
//! writes: one fsynced transaction for all the calls queued together, each call still
//! isolated in its own savepoint, so one call's failure never fails another. A write
//! returns only once it is durable; a write already queued is applied even if its caller
//! stops waiting; audit records and change notifications are published only after
//! commit, in order. The design and its guarantees are documented in `src/writer.rs`.
//! Reads use a small connection pool and see every write that has returned.
//!
//! * `store`: opening the database file: permissions, connection settings, migrations.
//! * `writer`: the single writer thread and its group commit; `checkpoint`: WAL
//!   checkpoints off the commit path.
//! * `entry`, `consent`, `task`: registration entries; consent records; tasks, their
//!   SVIDs and revocations.
//! * `sync`: cluster mode's copy of the server's entries and consents, by version.
//! * `journal`: cluster mode's outbox of task begins and ends for the server;
//!   `rejected_events`: the events the server rejected for good, moved out of it.
//! * `sealed`: the guard holding new tasks off a consent being withdrawn.
//! * `audit`, `audit_record`: the append-only audit log and one record of it.
//! * `limits`, `validate`: every size limit, and the length checks against them.
//! * `error`: [`StoreError`]; `row`: reading columns from sqlx and rusqlite rows alike;
//!   `clock`: the wall clock as recorded; `migrate`: the versioned migrator.
#![forbid(unsafe_code)]

mod audit;
mod audit_record;
mod checkpoint;
mod clock;
mod consent;
mod entry;
mod error;
mod journal;
mod limits;
mod migrate;
mod rejected_events;
mod row;
mod sealed;
mod store;
mod sync;
mod task;
mod validate;
mod writer;

pub use audit_record::AuditRecord;
pub use consent::{Consent, ConsentFilter, NewConsent};
pub use entry::{Entry, EntryKind, NewEntry};
pub use error::{
    Conflict, DatabaseError, InvalidInput, NotFound, OpenError, StoreError, Unavailable,
};
pub use journal::{
    JournalEntry, JournalPending, MAX_JOURNAL_BATCH, TaskBegun, TaskEnded, TaskEvent,
};
pub use limits::{
    MAX_AUDIT_ACTOR_LEN, MAX_AUDIT_KIND_LEN, MAX_AUDIT_PAGE, MAX_CLIENT_LEN, MAX_PURPOSE_LEN,
    MAX_REASON_LEN, MAX_SCOPE_LEN, MAX_SCOPES, MAX_SELECTOR_LEN, MAX_SELECTORS, MAX_SERIAL_HEX_LEN,
    MAX_SERVER_LEN, MAX_SPIFFE_ID_LEN, MAX_SUBJECT_LEN, MAX_TASK_ID_LEN, PRUNE_CHUNK,
};
pub use migrate::SCHEMA_VERSION;
pub use rejected_events::{
    MAX_REJECTED_EVENTS, MAX_REJECTION_MESSAGE_LEN, RejectedEvent, Rejection, RejectionReason,
    Settled,
};
pub use store::{Store, WriterStats};
pub use sync::{SyncApplied, SyncBatch};
pub use task::{
    END_REASON_CONSENT_WITHDRAWN, EndOutcome, Revocation, SvidIssued, TaskFilter, TaskRecord,
};

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by the unit tests: real database files in temporary directories.

    use std::path::PathBuf;

    use crate::{Consent, NewConsent, NewEntry, Revocation, Store, SvidIssued, TaskRecord};
    use tessera_identity::TaskId;

    /// A fresh store in its own temporary directory; keep the `TempDir` alive.
    pub(crate) async fn open_temp() -> (tempfile::TempDir, PathBuf, Store) {
        let dir = tempfile::tempdir().expect("create tempdir");
        let path = dir.path().join("tessera.db");
        let store = Store::open(&path).await.expect("open store");
        (dir, path, store)
    }

    /// A valid new entry for `client` with these selectors.
    pub(crate) fn new_entry(client: &str, selectors: &[&str]) -> NewEntry {
        NewEntry {
            kind: crate::EntryKind::Client,
            client: client.to_owned(),
            selectors: selectors.iter().map(|s| (*s).to_owned()).collect(),
            svid_ttl_secs: None,
        }
    }

    /// Now, unix seconds.
    pub(crate) fn now() -> i64 {
        crate::clock::unix_secs()
    }

    /// A valid consent for `client` / `alice` / `github`, expiring in an hour.
    pub(crate) fn new_consent(client: &str) -> NewConsent {
        NewConsent {
            client: client.to_owned(),
            subject: "alice".to_owned(),
            server: "github".to_owned(),
            scopes: vec!["github/tool/*".to_owned()],
            expires_at: now() + 3600,
        }
    }

    /// The task id a test calls `label` (at most 16 bytes): the label's bytes, zero
    /// padded, as a ULID. Distinct labels give distinct ids, ordered as the labels are,
    /// so tests keep readable names while the store sees real task ids.
    pub(crate) fn task_id(label: &str) -> TaskId {
        let mut bytes = [0u8; 16];
        bytes[..label.len()].copy_from_slice(label.as_bytes());
        TaskId::from_ulid(ulid::Ulid::from_bytes(bytes))
    }

    /// The label [`task_id`] made `id` from.
    pub(crate) fn label(id: &TaskId) -> String {
        let bytes = id.ulid().to_bytes();
        let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        String::from_utf8(bytes[..end].to_vec()).expect("a test label")
    }

    /// A live task `id` relying on `consent`, with parties matching [`new_consent`].
    pub(crate) fn new_task(id: &str, client: &str, consent_id: &str) -> TaskRecord {
        let begun_at = now();
        TaskRecord {
            id: task_id(id),
            client: client.parse().expect("test client name"),
            subject: "alice".to_owned(),
            server: "github".to_owned(),
            scopes: vec!["github/tool/get_pull_request".to_owned()],
            purpose: "review PR 42".to_owned(),
            consent_id: consent_id.to_owned(),
            pid: 4242,
            begun_at,
            deadline: begun_at + 300,
            ended_at: None,
            end_reason: None,
            serials: Vec::new(),
        }
    }

    /// The SPIFFE ID of task `id` of `client`.
    pub(crate) fn task_spiffe_id(client: &str, id: &str) -> String {
        let client = tessera_identity::ClientId::new(
            "acme.corp".parse().expect("trust domain"),
            client.parse().expect("test client name"),
        );
        client.task(task_id(id)).to_string()
    }

    /// An SVID for task `id` of `client` with this serial, valid for 5 minutes.
    pub(crate) fn svid(client: &str, id: &str, serial: &str) -> SvidIssued {
        SvidIssued {
            serial: serial.to_owned(),
            spiffe_id: task_spiffe_id(client, id),
            not_after: now() + 300,
        }
    }

    /// The revocation the agent would pass to `end_task` (serials left for the store).
    pub(crate) fn revocation(client: &str, id: &str, reason: &str) -> Revocation {
        Revocation {
            task_id: task_id(id).to_string(),
            spiffe_id: task_spiffe_id(client, id),
            serials: Vec::new(),
            reason: reason.to_owned(),
            revoked_at_ms: crate::clock::unix_millis(),
            until: now() + 300,
        }
    }

    /// A consent granted to `client` (see [`new_consent`]) by "admin".
    pub(crate) async fn granted_consent(store: &Store, client: &str) -> Consent {
        store
            .grant_consent(new_consent(client), "admin")
            .await
            .expect("grant consent")
    }

    /// Begins task `id` for `client` on `consent_id` with first serial `serial`.
    pub(crate) async fn begin(
        store: &Store,
        id: &str,
        client: &str,
        consent_id: &str,
        serial: &str,
    ) {
        store
            .begin_task(
                new_task(id, client, consent_id),
                svid(client, id, serial),
                "uid:1000",
            )
            .await
            .expect("begin task");
    }

    /// A plain connection to the database file behind the store's back, with foreign key
    /// enforcement off: for writing what the store itself would refuse.
    pub(crate) async fn raw_connection(path: &std::path::Path) -> sqlx::SqliteConnection {
        use sqlx::ConnectOptions;
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .foreign_keys(false)
            .connect()
            .await
            .expect("raw connection")
    }
}
