//! The [`Peer`] a verified access token stands for.
//!
//! Kept out of `peer.rs` on purpose: the resource-server work reshapes `Peer` (the auth
//! method in audit records); this is the one constructor the access-token verifier needs
//! until then.

use tessera_identity::{ClientId, TaskClaims};

use crate::peer::Peer;

/// Prefix of the pseudo serial a bearer peer carries. The revocation feed lists leaf
/// serials as lowercase hex; a `:` never occurs in one, so a bearer peer can neither
/// match nor shadow a certificate's serial by accident. Its task is still revoked by
/// task id, as a certificate's is.
pub(crate) const BEARER_SERIAL_PREFIX: &str = "bearer:";

impl Peer {
    /// The peer of a verified access token: for a task, its signed claims with the
    /// scopes narrowed to the token's (`claims` as passed); for a client, the client.
    /// `not_after_unix` is the token's `exp`; the serial is `bearer:<jti>`.
    pub(crate) fn from_access_token(
        subject: AccessTokenSubject,
        jti: &str,
        not_after_unix: i64,
    ) -> Peer {
        let serial_hex = format!("{BEARER_SERIAL_PREFIX}{jti}");
        match subject {
            AccessTokenSubject::Task(claims) => Peer::Task {
                client: claims.client_id.clone(),
                task: claims.client_id.task(claims.task_id),
                claims,
                serial_hex,
                not_after_unix,
            },
            AccessTokenSubject::Client(client) => Peer::Client {
                client,
                serial_hex,
                not_after_unix,
            },
        }
    }
}

/// Whom an access token was issued to.
pub(crate) enum AccessTokenSubject {
    /// A task, with the claims its peer carries.
    Task(TaskClaims),
    /// A client acting as itself.
    Client(ClientId),
}
