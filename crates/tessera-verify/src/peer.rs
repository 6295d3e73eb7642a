//! The identity of the peer on one mTLS connection, parsed once from its verified leaf.
//!
//! A connection's identity is a type, not a bag of `Option`s: a task, a client (an agent
//! runtime's own SVID), or another MCP server. Nothing the peer says outside the
//! certificate is trusted; the task claims are trusted because the CA signed them.

use std::fmt;

use rustls_pki_types::CertificateDer;
use tessera_identity::{
    ClientId, ProfileError, ServerId, TaskClaims, TaskSpiffeId, TesseraId, TrustDomain,
    check_leaf_svid,
};

/// Who is on the other end of a connection, as proven by its verified client certificate.
///
/// Parse it once per connection with [`Peer::from_leaf_der`] (after the TLS handshake,
/// from `ServerConnection::peer_certificates()[0]`) and hand it to every request on that
/// connection, e.g. as an `Arc<Peer>` in the HTTP request extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one Peer per connection, shared in an Arc: boxing the claims would only add an indirection"
)]
pub enum Peer {
    /// A task SVID: `spiffe://<td>/client/<client>/task/<id>` with signed task claims.
    Task {
        /// The client running the task.
        client: ClientId,
        /// The task's SPIFFE ID.
        task: TaskSpiffeId,
        /// The signed task claims (subject, purpose, server, scopes, consent, deadline).
        claims: TaskClaims,
        /// Serial number of the leaf, lowercase hex (as in the revocation feed).
        serial_hex: String,
        /// End of the leaf's validity, seconds since the Unix epoch.
        not_after_unix: i64,
    },
    /// A client (agent runtime) SVID: `spiffe://<td>/client/<client>`.
    Client {
        /// The client.
        client: ClientId,
        /// Serial number of the leaf, lowercase hex.
        serial_hex: String,
        /// End of the leaf's validity, seconds since the Unix epoch.
        not_after_unix: i64,
    },
    /// Another MCP server's SVID: `spiffe://<td>/mcp/<server>`.
    Server {
        /// The server.
        server: ServerId,
        /// Serial number of the leaf, lowercase hex.
        serial_hex: String,
        /// End of the leaf's validity, seconds since the Unix epoch.
        not_after_unix: i64,
    },
}

/// Why a certificate does not make a Tessera peer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The leaf breaks the X.509-SVID profile.
    #[error("leaf breaks the X.509-SVID profile: {0}")]
    Profile(#[from] ProfileError),
    /// The SPIFFE ID is valid but not one of Tessera's shapes (client, task, server).
    #[error("SPIFFE ID {spiffe_id:?} is not a Tessera client, task or server id")]
    NotTessera {
        /// The SPIFFE ID.
        spiffe_id: String,
    },
    /// A task SVID without the signed task-claims extension.
    #[error("task SVID {spiffe_id:?} carries no task claims")]
    MissingClaims {
        /// The SPIFFE ID.
        spiffe_id: String,
    },
    /// The connection presented no client certificate.
    #[error("the connection presented no client certificate")]
    NoCertificate,
}

// === impl Peer ===

impl Peer {
    /// Parses the peer from the DER of its leaf certificate.
    ///
    /// Runs the SVID profile checks ([`check_leaf_svid`]) but not path validation or the
    /// clock: call it on a leaf the TLS verifier already accepted.
    ///
    /// # Errors
    /// [`PeerError`] for a profile violation, a non-Tessera id, or a task without claims.
    pub fn from_leaf_der(der: &[u8]) -> Result<Self, PeerError> {
        let leaf = check_leaf_svid(der)?;
        let serial_hex = leaf.serial_hex;
        let not_after_unix = leaf.not_after_unix;
        match leaf.tessera_id {
            Some(TesseraId::Task(task)) => {
                let claims = leaf.claims.ok_or_else(|| PeerError::MissingClaims {
                    spiffe_id: leaf.spiffe_id.clone(),
                })?;
                Ok(Peer::Task {
                    client: task.client.clone(),
                    task,
                    claims,
                    serial_hex,
                    not_after_unix,
                })
            }
            Some(TesseraId::Client(client)) => Ok(Peer::Client {
                client,
                serial_hex,
                not_after_unix,
            }),
            Some(TesseraId::Server(server)) => Ok(Peer::Server {
                server,
                serial_hex,
                not_after_unix,
            }),
            None => Err(PeerError::NotTessera {
                spiffe_id: leaf.spiffe_id,
            }),
        }
    }

    /// Parses the peer from a TLS connection's presented chain (leaf first), as returned
    /// by `rustls::ServerConnection::peer_certificates()`.
    ///
    /// # Errors
    /// [`PeerError::NoCertificate`] when the chain is absent or empty, else as
    /// [`Peer::from_leaf_der`].
    pub fn from_chain(chain: Option<&[CertificateDer<'_>]>) -> Result<Self, PeerError> {
        let leaf = chain
            .and_then(<[_]>::first)
            .ok_or(PeerError::NoCertificate)?;
        Self::from_leaf_der(leaf.as_ref())
    }

    /// The peer's SPIFFE ID as a string.
    pub fn spiffe_id(&self) -> String {
        match self {
            Peer::Task { task, .. } => task.to_string(),
            Peer::Client { client, .. } => client.to_string(),
            Peer::Server { server, .. } => server.to_string(),
        }
    }

    /// The client behind the peer, if it is a task or a client.
    pub fn client(&self) -> Option<&ClientId> {
        match self {
            Peer::Task { client, .. } | Peer::Client { client, .. } => Some(client),
            Peer::Server { .. } => None,
        }
    }

    /// The task's SPIFFE ID, if the peer is a task.
    pub fn task(&self) -> Option<&TaskSpiffeId> {
        match self {
            Peer::Task { task, .. } => Some(task),
            _ => None,
        }
    }

    /// The task claims, if the peer is a task.
    pub fn claims(&self) -> Option<&TaskClaims> {
        match self {
            Peer::Task { claims, .. } => Some(claims),
            _ => None,
        }
    }

    /// Serial number of the leaf, lowercase hex.
    pub fn serial_hex(&self) -> &str {
        match self {
            Peer::Task { serial_hex, .. }
            | Peer::Client { serial_hex, .. }
            | Peer::Server { serial_hex, .. } => serial_hex,
        }
    }

    /// End of the leaf's validity, seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> i64 {
        match self {
            Peer::Task { not_after_unix, .. }
            | Peer::Client { not_after_unix, .. }
            | Peer::Server { not_after_unix, .. } => *not_after_unix,
        }
    }

    /// The trust domain of the peer's SPIFFE ID.
    pub fn trust_domain(&self) -> &TrustDomain {
        match self {
            Peer::Task { client, .. } | Peer::Client { client, .. } => client.trust_domain(),
            Peer::Server { server, .. } => server.trust_domain(),
        }
    }

    /// A short name of the peer's kind: `task`, `client` or `server`.
    pub fn kind(&self) -> &'static str {
        match self {
            Peer::Task { .. } => "task",
            Peer::Client { .. } => "client",
            Peer::Server { .. } => "server",
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.spiffe_id())
    }
}
