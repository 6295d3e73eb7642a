//! What can go wrong in the task lifecycle. Each error becomes a gRPC status by one
//! rule, `crate::status`'s.

use tessera_store::{Conflict, StoreError};

use crate::tasks::consent::ConsentDenied;

/// Errors of the task lifecycle, for the Tasks API and the Admin API alike.
///
/// A variant's message may reach the caller of the operation that returned it (see
/// `crate::status`), so it names only what that caller may know: the Tasks API's
/// callers are workloads, and a record they did not name appears only in variants
/// that the Admin API's operations alone return.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// No consent covers the request.
    #[error(transparent)]
    Consent(#[from] ConsentDenied),
    /// No such task; for a lookup limited to one client's tasks, none of that client's
    /// (another client's task does not exist as far as a client can tell).
    #[error("no task {id}{}", for_client(.client))]
    NotFound {
        /// The task id given.
        id: String,
        /// The client the lookup was limited to, if any; never part of the message.
        client: Option<String>,
    },
    /// The process the task would be bound to already holds the most live tasks allowed.
    #[error(
        "process {pid} already holds {max} live tasks, the most task_max_live_per_process allows; end one first"
    )]
    TooManyLive {
        /// The process.
        pid: i32,
        /// The limit.
        max: usize,
    },
    /// The caller no longer holds the client identity it was attested with (its entry
    /// was deleted meanwhile).
    #[error("this caller no longer holds client identity {client}")]
    NotEntitled {
        /// The client name.
        client: String,
    },
    /// The store refused a change for what it holds, e.g. withdrawing a consent already
    /// withdrawn. Only operations whose caller may know that record return it (the Admin
    /// API's); a workload's call meeting such a refusal gets [`TaskError::Store`].
    #[error(transparent)]
    Conflict(Conflict),
    /// Issuing the SVID failed.
    #[error("issuing the task SVID failed: {0}")]
    Authority(#[from] tessera_authority::AuthorityError),
    /// The store failed, or refused what the caller has no business knowing about.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The agent stopped before the call finished.
    #[error("the agent is shutting down")]
    ShuttingDown,
}

fn for_client(client: &Option<String>) -> &'static str {
    if client.is_some() {
        " for this client"
    } else {
        ""
    }
}
