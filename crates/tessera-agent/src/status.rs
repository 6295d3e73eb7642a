//! Errors to gRPC statuses: one rule per error type, all of them here.
//!
//! The agent answers two kinds of caller: workloads on the workload socket (attested
//! processes, any of which may be hostile) and administrators on the admin socket. One
//! rule per type serves both because every rule is written for a workload:
//!
//! - a refusal of the request names only what the request itself carried (a length, a
//!   scope, an id the caller gave), never a record the caller did not name;
//! - an error that names such a record (a consent already withdrawn: its id and when) is
//!   a variant only the Admin API's operations return ([`TaskError::Conflict`]);
//!   whatever the store refuses on a workload's behalf is [`TaskError::Store`];
//! - a caller that lost its identity learns only [`NO_IDENTITY`], as one that never had
//!   one does;
//! - a failure of the agent's own parts (the store's I/O, the CA, a damaged row) is
//!   `INTERNAL` with a fixed message, and its detail goes to the agent's log only.
//!
//! Attestation failures are not converted here: `crate::caller` answers each with
//! [`NO_IDENTITY`] where callers are admitted (and the Workload API's streams, which
//! re-attest, do the same). BeginTask's `bind_to_parent` refusal keeps its reason
//! (`FAILED_PRECONDITION`): it is about the caller's own parent process.

use tessera_store::{Conflict, StoreError};
use tonic::Status;

use crate::attest::SelectorError;
use crate::caller::NO_IDENTITY;
use crate::tasks::TaskError;

impl From<TaskError> for Status {
    fn from(e: TaskError) -> Status {
        match e {
            TaskError::InvalidArgument(m) => Status::invalid_argument(m),
            // Names the client, subject, server and scopes the caller asked for.
            TaskError::Consent(c) => Status::permission_denied(c.to_string()),
            // Says "for this client" when the lookup was limited to the caller's tasks.
            e @ TaskError::NotFound { .. } => Status::not_found(e.to_string()),
            e @ TaskError::TooManyLive { .. } => Status::resource_exhausted(e.to_string()),
            // As for a caller that matches no entry: it learns nothing more.
            TaskError::NotEntitled { .. } => Status::permission_denied(NO_IDENTITY),
            TaskError::Conflict(c) => store_status(StoreError::Conflict(c)),
            e @ TaskError::ShuttingDown => Status::unavailable(e.to_string()),
            e => {
                tracing::error!(error = %e, "task operation failed");
                Status::internal("task operation failed; see the agent's log")
            }
        }
    }
}

/// A selector an administrator gave that the agent cannot attest: says which and why.
impl From<SelectorError> for Status {
    fn from(e: SelectorError) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

/// The status for a store error, by its group: a refusal of the request says why (the
/// store's messages name only what the request carried, or the record it named); a
/// failure of the store is `INTERNAL`, logged here.
///
/// Reached from the Admin API only: the workload socket's services meet store errors as
/// [`TaskError::Store`]. A function, not `From`: neither type is the agent's.
pub(crate) fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Invalid(e) => Status::invalid_argument(e.to_string()),
        StoreError::NotFound(e) => Status::not_found(e.to_string()),
        StoreError::Conflict(Conflict::DuplicateEntry { existing_id }) => Status::already_exists(
            format!("an entry with the same client and selectors exists: {existing_id}"),
        ),
        StoreError::Conflict(e) => Status::failed_precondition(e.to_string()),
        e => {
            tracing::error!(error = %e, "store error");
            Status::internal("store error; see the agent's log")
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_store::{InvalidInput, NotFound, Unavailable};
    use tonic::Code;

    use super::*;

    fn withdrawn(id: &str) -> Conflict {
        Conflict::ConsentWithdrawn {
            id: id.into(),
            withdrawn_at: 1_700_000_000,
        }
    }

    #[test]
    fn a_workload_learns_only_what_its_request_carried() {
        let s = Status::from(TaskError::NotFound {
            id: "T1".into(),
            client: Some("code-reviewer".into()),
        });
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "no task T1 for this client")
        );

        let s = Status::from(TaskError::NotEntitled {
            client: "code-reviewer".into(),
        });
        assert_eq!(
            (s.code(), s.message()),
            (Code::PermissionDenied, NO_IDENTITY)
        );

        // Whatever the store refuses on a workload's behalf stays in the log, even a
        // refusal that would be the caller's to see from the Admin API.
        for e in [
            StoreError::Conflict(withdrawn("consent-7")),
            StoreError::NotFound(NotFound::Consent {
                id: "consent-7".into(),
            }),
            StoreError::Invalid(InvalidInput::ConsentExpired {
                expires_at: 1,
                at: 2,
            }),
        ] {
            let s = Status::from(TaskError::Store(e));
            assert_eq!(s.code(), Code::Internal, "{s:?}");
            assert_eq!(s.message(), "task operation failed; see the agent's log");
        }
    }

    #[test]
    fn an_administrator_learns_why_the_store_refused() {
        let s = Status::from(TaskError::NotFound {
            id: "T1".into(),
            client: None,
        });
        assert_eq!((s.code(), s.message()), (Code::NotFound, "no task T1"));

        let s = Status::from(TaskError::Conflict(withdrawn("consent-7")));
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(
            s.message(),
            "consent consent-7 has already been withdrawn (at 1700000000)"
        );

        let s = store_status(StoreError::Conflict(Conflict::DuplicateEntry {
            existing_id: "E1".into(),
        }));
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::AlreadyExists,
                "an entry with the same client and selectors exists: E1"
            )
        );

        let s = store_status(StoreError::Invalid(InvalidInput::Field {
            field: "subject",
            min: 1,
            max: 256,
            len: 300,
        }));
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::InvalidArgument,
                "subject must be 1..=256 bytes, got 300"
            )
        );

        let s = store_status(StoreError::NotFound(NotFound::Task { id: "T1".into() }));
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "no task with id T1")
        );
    }

    #[test]
    fn a_failure_of_the_store_itself_is_internal_and_names_nothing() {
        for e in [
            StoreError::Unavailable(Unavailable::CommitFailed {
                reason: "disk I/O error".into(),
            }),
            StoreError::Corrupt {
                table: "consents",
                id: "consent-7".into(),
                reason: "bad json".into(),
            },
        ] {
            let s = store_status(e);
            assert_eq!(
                (s.code(), s.message()),
                (Code::Internal, "store error; see the agent's log")
            );
        }
    }
}
