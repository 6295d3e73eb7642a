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
//! Every write goes through one writer task that group-commits concurrent writes (one
//! fsynced transaction for many calls, each call still isolated in a savepoint); see
//! [`writer`](crate::writer) for the design and its guarantees. Reads use a small
//! connection pool.
#![forbid(unsafe_code)]

mod audit;
mod consent;
mod entry;
mod error;
mod migrate;
mod store;
mod task;
pub mod writer;

pub use audit::{AuditRecord, MAX_AUDIT_ACTOR_LEN, MAX_AUDIT_KIND_LEN, MAX_AUDIT_PAGE};
pub use consent::{
    Consent, ConsentFilter, MAX_SCOPE_LEN, MAX_SCOPES, MAX_SERVER_LEN, MAX_SUBJECT_LEN,
    NewConsent,
};
pub use entry::{Entry, MAX_CLIENT_LEN, MAX_SELECTOR_LEN, MAX_SELECTORS, NewEntry};
pub use error::StoreError;
pub use migrate::SCHEMA_VERSION;
pub use store::Store;
pub use task::{
    END_REASON_CONSENT_WITHDRAWN, EndOutcome, MAX_PURPOSE_LEN, MAX_REASON_LEN,
    MAX_SERIAL_HEX_LEN, MAX_SPIFFE_ID_LEN, MAX_TASK_ID_LEN, Revocation, SvidIssued, TaskFilter,
    TaskRecord,
};

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by the unit tests: real database files in temporary directories.

    use std::path::PathBuf;

    use crate::{NewEntry, Store};

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
            client: client.to_owned(),
            selectors: selectors.iter().map(|s| (*s).to_owned()).collect(),
            svid_ttl_secs: None,
        }
    }
}
