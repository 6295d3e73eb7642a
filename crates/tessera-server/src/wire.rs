//! How the server's records and errors look on the wire (`tessera.v1`): shared by the
//! Admin API, the cluster admin and the Node API, so none of them imports another.

use tessera_identity::{ClientId, ClientName, ServerId, ServerName, TrustDomain};
use tessera_proto::tessera::v1 as pb;
use tessera_store::EntryKind;
use tonic::Status;

use crate::ServerStoreError;

/// An entry as `tessera.v1` sends it (the Admin API and the Node API's `Sync`).
pub(crate) fn entry_to_proto(td: &TrustDomain, e: tessera_store::Entry) -> pb::Entry {
    let td = td.clone();
    let (spiffe_id, client, server) = match e.kind {
        EntryKind::Client => (
            e.client
                .parse::<ClientName>()
                .map(|name| ClientId::new(td, name).to_string())
                .unwrap_or_default(),
            e.client,
            String::new(),
        ),
        EntryKind::Server => (
            e.client
                .parse::<ServerName>()
                .map(|name| ServerId::new(td, name).to_string())
                .unwrap_or_default(),
            String::new(),
            e.client,
        ),
    };
    pb::Entry {
        id: e.id,
        client,
        selectors: e.selectors,
        svid_ttl_secs: e.svid_ttl_secs.unwrap_or(0),
        created_at_unix: e.created_at,
        spiffe_id,
        server,
    }
}

/// A consent as `tessera.v1` sends it.
pub(crate) fn consent_to_proto(c: tessera_store::Consent) -> pb::Consent {
    pb::Consent {
        id: c.id,
        client: c.client,
        subject: c.subject,
        server: c.server,
        scopes: c.scopes,
        expires_at_unix: c.expires_at,
        granted_by: c.granted_by,
        granted_at_unix: c.granted_at,
        withdrawn_at_unix: c.withdrawn_at.unwrap_or(0),
    }
}

/// A task the nodes reported, as `tessera.v1` sends it (no purpose nor pid: those stay
/// on the node).
pub(crate) fn task_to_proto(t: crate::ServerTask) -> pb::Task {
    pb::Task {
        id: t.id,
        spiffe_id: t.spiffe_id,
        client: t.client,
        subject: t.subject,
        server: t.server,
        scopes: t.scopes,
        purpose: String::new(),
        consent_id: t.consent_id,
        begun_at_unix: t.begun_at_ms / 1000,
        deadline_unix: t.deadline,
        ended_at_unix: t.ended_at_ms.map_or(0, |ms| (ms / 1000).max(1)),
        end_reason: t.end_reason.unwrap_or_default(),
        pid: 0,
    }
}

/// The gRPC answer for a store error. Details of internal errors go to the log only.
pub(crate) fn store_status(error: ServerStoreError) -> Status {
    match error {
        ServerStoreError::Invalid(e) => Status::invalid_argument(e.to_string()),
        ServerStoreError::NotFound(e) => Status::not_found(e.to_string()),
        ServerStoreError::Conflict(crate::Conflict::DuplicateEntry { existing_id }) => {
            Status::already_exists(format!(
                "an entry with the same client and selectors exists: {existing_id}"
            ))
        }
        ServerStoreError::Conflict(e) => Status::failed_precondition(e.to_string()),
        ServerStoreError::Unavailable(e) => {
            tracing::warn!(error = %e, "write refused: database unavailable");
            Status::unavailable("the database is unavailable; retry later")
        }
        e => {
            tracing::error!(error = %e, "store error");
            Status::internal("store error; see the server's log")
        }
    }
}
