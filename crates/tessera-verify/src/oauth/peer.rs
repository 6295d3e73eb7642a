//! The [`Peer`] a verified access token stands for.
//!
//! The token's facts travel as [`Credential::AccessToken`]: its `exp` in place of a
//! leaf's notAfter, and no serial at all, so the revocation check of a bearer peer is
//! by task id only and can neither match nor shadow a certificate's serial.

use tessera_identity::{ClientId, TaskClaims};

use crate::peer::{Credential, Peer, TokenCredential};

impl Peer {
    /// The peer of a verified access token: for a task, its signed claims with the
    /// scopes already narrowed to the token's (`claims` as passed); for a client, the
    /// client. `not_after_unix` is the token's `exp`; `cert_bound` whether it carries a
    /// `cnf` (checked against the connection's certificate by the resource server).
    pub(crate) fn from_access_token(
        subject: AccessTokenSubject,
        jti: &str,
        not_after_unix: i64,
        cert_bound: bool,
    ) -> Peer {
        let token = TokenCredential {
            jti: jti.to_owned(),
            exp_unix: not_after_unix,
            cert_bound,
        };
        match subject {
            AccessTokenSubject::Task(claims) => Peer::Task {
                client: claims.client_id.clone(),
                task: claims.client_id.task(claims.task_id),
                claims,
                credential: Credential::AccessToken(token),
            },
            AccessTokenSubject::Client(client) => Peer::client_from_access_token(client, token),
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
