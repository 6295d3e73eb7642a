//! The Tessera cluster control plane's state: registration entries, consents, attested
//! nodes, join tokens and the audit log, in PostgreSQL, shared by every server replica.
//!
//! [`PgStore`] is the typed API over the database. Every change to an entry, a consent
//! or a node commits together with its audit record and a new version in the change log,
//! and notifies `tessera_changes` in the same transaction; versions become visible in
//! order (see `version.rs`), so "everything up to version v" is a well-defined state that
//! [`PgStore::snapshot`] returns and [`PgStore::changes_since`] moves forward.
//!
//! [`Replica`] is one server replica's in-memory copy of that state, kept current by
//! LISTEN/NOTIFY with a catch-up read after every (re)connection and on a timer, so a lost
//! notification or a PostgreSQL restart loses nothing. While PostgreSQL is down a replica
//! answers reads from memory, and writes fail with [`ServerStoreError::Unavailable`].
//! [`Replica::subscribe`] hands the updates it applies to whoever serves the copy onward
//! (the agents' sync streams), so a change costs one query per replica, not per agent.
//!
//! * `store`: connecting, the pool, migrations (`migrate`).
//! * `version`: how a write gets its version, in order; `change`: the log's readers
//!   (snapshots, changes since a version, pruning).
//! * `entry`, `consent`, `node`, `node_jwt_keys`, `join_token`, `audit`: one record kind
//!   each.
//! * `task`: the tasks nodes report (`Node.ReportTaskEvents`) and the server's own
//!   revocations of them; `revocation`: the cluster's revoked set (tasks and evicted
//!   node CAs) under a version counter of its own.
//! * `replica`: the in-memory copy and its sync loop; `revocation_feed`: the revoked
//!   set's copy, with a ring of recent deltas, that `Node.FollowRevocations` serves.
//! * [`attest`]: node attestors (join tokens; Kubernetes PSAT) behind [`attest::NodeAttestor`].
//!
//! The `tessera-server` binary is [`server::run`] with a [`config::Config`]: `admin`
//! (`tessera.v1.Admin` on a 0600 unix socket, reads from the replica, writes through the
//! store), `http` and `metrics` (`/healthz`, `/readyz`, `/metrics`), `socket` (binding
//! the admin socket).
//!
//! * `error`: [`ServerStoreError`] and its groups; `limits`: input limits;
//!   `node_name`: the node-name rule; `clock`: the wall clock as recorded.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod admin;
mod admin_svid;
mod admin_tls;
pub mod attest;
mod audit;
mod ca;
mod change;
mod clock;
mod cluster_admin;
pub mod config;
mod consent;
mod entry;
mod error;
mod http;
mod join_token;
mod limits;
mod metrics;
mod migrate;
mod node;
mod node_api;
mod node_jwt_keys;
mod node_name;
mod replica;
mod revocation;
mod revocation_feed;
pub mod server;
mod socket;
mod store;
mod task;
mod version;
mod wire;

pub use admin_svid::{AdminSvidFiles, MAX_ADMIN_SVID_TTL, issue_admin_svid};
pub use ca::SERVER_ID_PATH;
pub use change::{Change, Changes, MAX_CHANGES_PAGE, Snapshot};
pub use consent::Withdrawal;
pub use error::{Conflict, InvalidInput, MigrationError, NotFound, ServerStoreError, Unavailable};
pub use join_token::{IssuedJoinToken, JoinToken, NewJoinToken};
pub use limits::{
    JOIN_TOKEN_PREFIX, MAX_ATTESTATION_EVIDENCE_LEN, MAX_ATTESTATION_LEN, MAX_JOIN_TOKEN_TTL_SECS,
};
pub use migrate::SCHEMA_VERSION;
pub use node::{AttestationKind, NewNode, Node, NodeStatus};
pub use node_jwt_keys::{NodeJwtKey, NodeJwtKeys};
pub use replica::{Replica, ReplicaOptions, ReplicaState, ReplicaUpdate};
pub use revocation::{
    EXPIRY_GRACE_SECS, RevocationDelta, RevocationSnapshot, RevocationsSince, RevokedNodeCa,
    RevokedTask,
};
pub use revocation_feed::{MAX_RING_BYTES, MAX_RING_DELTAS, RevocationFeed, VOUCH_WINDOW};
pub use store::{PgStore, PgStoreOptions, Written};
pub use task::{
    Contested, REASON_CONSENT_WITHDRAWN, REASON_CONTESTED, REASON_REVOKED, Reported, ServerTask,
    TaskBegun, TaskEnded, TaskEvent,
};
pub use tessera_store::{
    AuditRecord, Consent, ConsentFilter, Entry, EntryKind, NewConsent, NewEntry,
};

#[cfg(test)]
pub(crate) mod testing;
