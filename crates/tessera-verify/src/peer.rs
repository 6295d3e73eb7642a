//! The identity of a caller: parsed once per mTLS connection from its verified leaf, or
//! once per access token from the token this server's authorization server minted.
//!
//! A caller's identity is a type, not a bag of `Option`s: a task, a client (an agent
//! runtime's own SVID), or another MCP server, each with the [`Credential`] that proved
//! it. Nothing the peer says outside the certificate (or the token, which this server
//! signed) is trusted; the task claims are trusted because the CA signed them.

use std::fmt;

use rustls_pki_types::CertificateDer;
use tessera_identity::{
    ClientId, ProfileError, Scope, ServerId, TaskClaims, TaskSpiffeId, TesseraId, TrustDomain,
    check_intermediate, check_leaf_svid,
};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Who is on the other end of a request, as proven by its verified client certificate
/// or by an access token minted for it.
///
/// Parse it once per connection with [`Peer::from_leaf_der`] (after the TLS handshake,
/// from `ServerConnection::peer_certificates()[0]`) and hand it to every request on that
/// connection, e.g. as an `Arc<Peer>` in the HTTP request extensions. A bearer caller's
/// comes from [`Peer::task_from_access_token`] (through
/// `oauth::BearerAuthLayer`) and travels the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one Peer per connection, shared in an Arc: boxing the claims would only add an indirection"
)]
pub enum Peer {
    /// A task: `spiffe://<td>/client/<client>/task/<id>` with signed task claims.
    Task {
        /// The client running the task.
        client: ClientId,
        /// The task's SPIFFE ID.
        task: TaskSpiffeId,
        /// The signed task claims (subject, purpose, server, scopes, consent, deadline).
        /// For an access token, the scopes are the token's (within the task's).
        claims: TaskClaims,
        /// What proved it: the task SVID, or an access token.
        credential: Credential,
    },
    /// A client (agent runtime) SVID: `spiffe://<td>/client/<client>`.
    Client {
        /// The client.
        client: ClientId,
        /// What proved it.
        credential: Credential,
    },
    /// Another MCP server's SVID: `spiffe://<td>/mcp/<server>`.
    Server {
        /// The server.
        server: ServerId,
        /// What proved it.
        credential: Credential,
    },
}

/// What proved a [`Peer`]'s identity, and until when it does.
///
/// The two kinds are told apart by type so that nothing of one can be mistaken for the
/// other: an access token's `jti` is never looked up among revoked certificate serials
/// (a bearer task is revoked by its task id, which the feed always carries).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// An X.509-SVID presented in the TLS handshake.
    Certificate {
        /// Serial number of the leaf, lowercase hex (as in the revocation feed).
        serial_hex: String,
        /// End of the leaf's validity, seconds since the Unix epoch.
        not_after_unix: i64,
        /// Serial numbers (lowercase hex, as in the revocation feed) of the node CAs
        /// the peer presented in its chain (cluster mode: the CA of the node whose
        /// agent issued the SVID). An evicted node's CA is refused on every request.
        /// Empty for a chain without node CAs, or a peer parsed from its leaf alone.
        node_ca_serials: Vec<String>,
    },
    /// An access token this server's authorization server minted (RFC 9068), in an
    /// `Authorization: Bearer` header.
    AccessToken(TokenCredential),
}

/// The facts of an access token a [`Peer`] needs: which token, until when, and whether
/// it was bound to a client certificate. Never the token's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenCredential {
    /// The token's `jti` (for audit correlation with its issuance).
    pub jti: String,
    /// The token's `exp`, seconds since the Unix epoch.
    pub exp_unix: i64,
    /// Whether the token is bound to a client certificate (RFC 8705 `cnf`) and the
    /// request came over a connection presenting it.
    pub cert_bound: bool,
}

/// How a caller authenticated, as audit records name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthMethod {
    /// A client certificate (X.509-SVID): `mtls`.
    Mtls,
    /// An access token in an `Authorization: Bearer` header: `bearer`.
    Bearer,
    /// An access token bound to the client certificate the connection presented
    /// (RFC 8705): `bearer+cnf`.
    BearerCertBound,
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
    /// An access token grants a scope its task's signed claims do not cover.
    #[error("access token scope {scope} is not within the task's granted scopes")]
    ScopeBeyondTask {
        /// The scope, as written.
        scope: String,
    },
    /// An access token names no scope: it could authorize nothing.
    #[error("access token grants no scope")]
    NoScopes,
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
        Self::from_leaf_and_node_cas(der, Vec::new())
    }

    fn from_leaf_and_node_cas(der: &[u8], node_ca_serials: Vec<String>) -> Result<Self, PeerError> {
        let leaf = check_leaf_svid(der)?;
        let credential = Credential::Certificate {
            serial_hex: leaf.serial_hex,
            not_after_unix: leaf.not_after_unix,
            node_ca_serials,
        };
        match leaf.tessera_id {
            Some(TesseraId::Task(task)) => {
                let claims = leaf.claims.ok_or_else(|| PeerError::MissingClaims {
                    spiffe_id: leaf.spiffe_id.clone(),
                })?;
                Ok(Peer::Task {
                    client: task.client.clone(),
                    task,
                    claims,
                    credential,
                })
            }
            Some(TesseraId::Client(client)) => Ok(Peer::Client { client, credential }),
            Some(TesseraId::Server(server)) => Ok(Peer::Server { server, credential }),
            None => Err(PeerError::NotTessera {
                spiffe_id: leaf.spiffe_id,
            }),
        }
    }

    /// Parses the peer from a TLS connection's presented chain (leaf first), as returned
    /// by `rustls::ServerConnection::peer_certificates()`, remembering the serials of the
    /// node CAs in it ([`Peer::node_ca_serials`]) so that the authorizer can refuse the
    /// connection once the node is evicted.
    ///
    /// # Errors
    /// [`PeerError::NoCertificate`] when the chain is absent or empty, else as
    /// [`Peer::from_leaf_der`]; [`PeerError::Profile`] for an intermediate that breaks
    /// the rules [`tessera_identity::check_intermediate`] checks (the TLS verifier has
    /// refused such a chain already).
    pub fn from_chain(chain: Option<&[CertificateDer<'_>]>) -> Result<Self, PeerError> {
        let (leaf, intermediates) = chain
            .and_then(<[_]>::split_first)
            .ok_or(PeerError::NoCertificate)?;
        let td = check_leaf_svid(leaf.as_ref())?.trust_domain;
        let node_cas = node_ca_serials(intermediates, &td)?;
        Self::from_leaf_and_node_cas(leaf.as_ref(), node_cas)
    }

    /// A task peer proven by an access token: the task's signed `claims` (from the
    /// token's task claim) with their scopes narrowed to `token_scopes`, so that every
    /// check downstream (scope, Cedar's `principal.scopes`, list filtering) sees only
    /// what the token grants.
    ///
    /// # Errors
    /// [`PeerError::NoScopes`] for an empty `token_scopes`;
    /// [`PeerError::ScopeBeyondTask`] for a token scope no granted scope of the task
    /// covers (a token can narrow its task, never widen it).
    pub fn task_from_access_token(
        mut claims: TaskClaims,
        token_scopes: &[Scope],
        token: TokenCredential,
    ) -> Result<Self, PeerError> {
        if token_scopes.is_empty() {
            return Err(PeerError::NoScopes);
        }
        if let Some(beyond) = token_scopes
            .iter()
            .find(|t| !claims.scopes.iter().any(|g| g.covers(t)))
        {
            return Err(PeerError::ScopeBeyondTask {
                scope: beyond.to_string(),
            });
        }
        claims.scopes = token_scopes.to_vec();
        Ok(Peer::Task {
            client: claims.client_id.clone(),
            task: claims.client_id.task(claims.task_id),
            claims,
            credential: Credential::AccessToken(token),
        })
    }

    /// A client peer (an agent runtime's own identity, no task) proven by an access
    /// token. The authorizer refuses it like a client SVID (`not_a_task`).
    pub fn client_from_access_token(client: ClientId, token: TokenCredential) -> Self {
        Peer::Client {
            client,
            credential: Credential::AccessToken(token),
        }
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

    /// What proved the peer.
    pub fn credential(&self) -> &Credential {
        match self {
            Peer::Task { credential, .. }
            | Peer::Client { credential, .. }
            | Peer::Server { credential, .. } => credential,
        }
    }

    /// Serial number of the leaf (lowercase hex), for a peer proven by a certificate.
    pub fn serial_hex(&self) -> Option<&str> {
        match self.credential() {
            Credential::Certificate { serial_hex, .. } => Some(serial_hex),
            Credential::AccessToken(_) => None,
        }
    }

    /// Serial numbers (lowercase hex) of the node CAs in the peer's certificate chain;
    /// empty for an access token or a chain without node CAs.
    pub fn node_ca_serials(&self) -> &[String] {
        match self.credential() {
            Credential::Certificate {
                node_ca_serials, ..
            } => node_ca_serials,
            Credential::AccessToken(_) => &[],
        }
    }

    /// When the credential stops proving the peer, seconds since the Unix epoch: the
    /// leaf's notAfter, or the access token's `exp`.
    pub fn not_after_unix(&self) -> i64 {
        self.credential().not_after_unix()
    }

    /// How the peer authenticated.
    pub fn auth_method(&self) -> AuthMethod {
        self.credential().auth_method()
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

/// The serials (lowercase hex without leading zero bytes, as the revocation feed and
/// [`tessera_identity`] write them) of the node CAs among `intermediates`: those
/// carrying Tessera's node-CA extension. A plain intermediate is the trust domain's own
/// CA and is never evicted.
fn node_ca_serials(
    intermediates: &[CertificateDer<'_>],
    td: &TrustDomain,
) -> Result<Vec<String>, PeerError> {
    let mut serials = Vec::new();
    for der in intermediates {
        if check_intermediate(der.as_ref(), td)?.node.is_none() {
            continue;
        }
        serials.push(serial_hex_of(der.as_ref())?);
    }
    Ok(serials)
}

/// The serial of the certificate `der`, lowercase hex without leading zero bytes.
pub(crate) fn serial_hex_of(der: &[u8]) -> Result<String, PeerError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| {
        PeerError::Profile(ProfileError::Malformed {
            reason: e.to_string(),
        })
    })?;
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    Ok(crate::revocation::normalize_serial(&serial))
}

// === impl Credential ===

impl Credential {
    /// When the credential stops proving the peer, seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> i64 {
        match self {
            Credential::Certificate { not_after_unix, .. } => *not_after_unix,
            Credential::AccessToken(t) => t.exp_unix,
        }
    }

    /// How a peer with this credential authenticated.
    pub fn auth_method(&self) -> AuthMethod {
        match self {
            Credential::Certificate { .. } => AuthMethod::Mtls,
            Credential::AccessToken(t) if t.cert_bound => AuthMethod::BearerCertBound,
            Credential::AccessToken(_) => AuthMethod::Bearer,
        }
    }

    /// What the credential is, for messages: `SVID` or `access token`.
    pub fn noun(&self) -> &'static str {
        match self {
            Credential::Certificate { .. } => "SVID",
            Credential::AccessToken(_) => "access token",
        }
    }
}

// === impl AuthMethod ===

impl AuthMethod {
    /// The stable name: `mtls`, `bearer` or `bearer+cnf`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Mtls => "mtls",
            AuthMethod::Bearer => "bearer",
            AuthMethod::BearerCertBound => "bearer+cnf",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.spiffe_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TD, claims};

    fn token(cert_bound: bool) -> TokenCredential {
        TokenCredential {
            jti: "AAAAAAAAAAAAAAAAAAAAAA".into(),
            exp_unix: 1_900_000_000,
            cert_bound,
        }
    }

    fn scopes(s: &[&str]) -> Vec<Scope> {
        s.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn an_access_token_narrows_its_task_and_never_widens_it() {
        let task = claims(
            TD,
            &["github/tool/*", "github/prompt/review"],
            1_900_000_100,
        );
        let peer = Peer::task_from_access_token(
            task.clone(),
            &scopes(&["github/tool/get_pull_request"]),
            token(false),
        )
        .unwrap();
        let Peer::Task {
            client,
            task: id,
            claims: narrowed,
            credential,
        } = &peer
        else {
            panic!("not a task: {peer}")
        };
        assert_eq!(client, &task.client_id);
        assert_eq!(id.task, task.task_id);
        assert_eq!(narrowed.scopes, scopes(&["github/tool/get_pull_request"]));
        assert_eq!(narrowed.deadline_unix, task.deadline_unix);
        assert_eq!(credential, &Credential::AccessToken(token(false)));
        assert_eq!(peer.serial_hex(), None, "no serial to match a revocation");
        assert_eq!(peer.not_after_unix(), 1_900_000_000);
        assert_eq!(peer.auth_method().as_str(), "bearer");

        let err = Peer::task_from_access_token(
            task.clone(),
            &scopes(&[
                "github/tool/get_pull_request",
                "github/resource/file:///etc/*",
            ]),
            token(false),
        )
        .unwrap_err();
        assert_eq!(
            err,
            PeerError::ScopeBeyondTask {
                scope: "github/resource/file:///etc/*".into()
            }
        );
        // A prefix wider than the grant is beyond it too.
        let narrow = claims(TD, &["github/tool/get_*"], 1_900_000_100);
        assert!(matches!(
            Peer::task_from_access_token(narrow, &scopes(&["github/tool/*"]), token(false)),
            Err(PeerError::ScopeBeyondTask { .. })
        ));
        assert_eq!(
            Peer::task_from_access_token(task, &[], token(false)).unwrap_err(),
            PeerError::NoScopes
        );
    }

    #[test]
    fn auth_methods_have_stable_names() {
        let cert = Credential::Certificate {
            serial_hex: "01".into(),
            not_after_unix: 5,
            node_ca_serials: Vec::new(),
        };
        assert_eq!(cert.auth_method().as_str(), "mtls");
        assert_eq!(cert.not_after_unix(), 5);
        let bound = Credential::AccessToken(token(true));
        assert_eq!(bound.auth_method().as_str(), "bearer+cnf");
        let client = Peer::client_from_access_token(
            "spiffe://acme.corp/client/code-reviewer".parse().unwrap(),
            token(true),
        );
        assert_eq!(client.auth_method(), AuthMethod::BearerCertBound);
        assert_eq!(client.kind(), "client");
    }
}
