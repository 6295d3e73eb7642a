//! A BeginTask request, parsed once from the wire into typed parts: everything after
//! [`BeginTaskRequest::parse`] works on a client identity the caller holds, a server
//! name, scopes for that server and bounded text, and never sees the raw message.
//!
//! The bounds are tessera-identity's (the task claims the request ends up in), so the
//! API, the claims and the store refuse the same sizes. The subject and purpose are
//! checked for forbidden characters later, with the claims they go into.

use std::time::Duration;

use tessera_identity::{
    ClientId, IdError, MAX_PURPOSE_LEN, MAX_SCOPES, MAX_SUBJECT_LEN, Scope, ScopeError, ServerId,
    ServerName, TrustDomain,
};
use tessera_proto::tessera::v1 as pb;
use tonic::Status;

/// A BeginTask request whose every field parsed.
#[derive(Debug)]
pub(crate) struct BeginTaskRequest {
    /// The client identity the task is for: one the caller holds.
    pub(crate) client: ClientId,
    /// The MCP server the task may call, in the client's trust domain.
    pub(crate) server: ServerName,
    /// The human the task acts for: 1..=[`MAX_SUBJECT_LEN`] bytes.
    pub(crate) subject: String,
    /// Why the task runs: at most [`MAX_PURPOSE_LEN`] bytes.
    pub(crate) purpose: String,
    /// 1..=[`MAX_SCOPES`] scopes, each for [`Self::server`], in the order asked.
    pub(crate) scopes: Vec<Scope>,
    /// The lifetime asked for; `None` for the agent's default.
    pub(crate) lifetime: Option<Duration>,
    /// Bind the task to the caller's parent process instead of the caller.
    pub(crate) bind_to_parent: bool,
}

/// Why a BeginTask request was refused before anything else looked at it. Each
/// message is what the caller is told.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum InvalidRequest {
    /// The caller holds several client identities and named none.
    #[error("this caller has several client identities ({}); name one in `client`", .0.join(", "))]
    AmbiguousClient(Vec<String>),
    /// The caller named a client identity it does not hold.
    #[error("this caller is not client {0:?}")]
    NotClient(String),
    /// The server is neither a server name nor a server's SPIFFE ID.
    #[error("server {server:?}: {reason}")]
    Server {
        /// The server as sent.
        server: String,
        /// Why it does not parse.
        reason: IdError,
    },
    /// The server's SPIFFE ID is in another trust domain than the client.
    #[error("server {server} is not in trust domain {trust_domain}")]
    ServerTrustDomain {
        /// The server as sent.
        server: String,
        /// The client's trust domain.
        trust_domain: TrustDomain,
    },
    /// The subject is empty or longer than [`MAX_SUBJECT_LEN`].
    #[error("subject must be 1..={MAX_SUBJECT_LEN} bytes")]
    Subject,
    /// The purpose is longer than [`MAX_PURPOSE_LEN`].
    #[error("purpose must be at most {MAX_PURPOSE_LEN} bytes")]
    Purpose,
    /// No scopes, or more than [`MAX_SCOPES`].
    #[error("request 1..={MAX_SCOPES} scopes")]
    ScopeCount,
    /// A scope does not parse.
    #[error("scope {scope:?}: {reason}")]
    Scope {
        /// The scope as sent.
        scope: String,
        /// Why it does not parse.
        reason: ScopeError,
    },
    /// A scope is for another server than the task.
    #[error("scope {scope:?} is for server {scope_server:?}, but the task is for {server:?}")]
    ScopeServer {
        /// The scope as sent.
        scope: String,
        /// The server it names.
        scope_server: String,
        /// The task's server.
        server: String,
    },
}

impl From<InvalidRequest> for Status {
    fn from(e: InvalidRequest) -> Status {
        match e {
            // Naming an identity one does not hold is a question of permission.
            e @ InvalidRequest::NotClient(_) => Status::permission_denied(e.to_string()),
            e => Status::invalid_argument(e.to_string()),
        }
    }
}

impl BeginTaskRequest {
    /// Parses `req` from a caller holding the client identities `clients` (at least one).
    ///
    /// # Errors
    /// The first field that does not parse, checked in the order of the fields above.
    pub(crate) fn parse(
        req: pb::BeginTaskRequest,
        clients: &[ClientId],
    ) -> Result<Self, InvalidRequest> {
        let client = if req.client.is_empty() {
            match clients {
                [one] => one.clone(),
                many => {
                    return Err(InvalidRequest::AmbiguousClient(
                        many.iter().map(|c| c.name.as_str().to_owned()).collect(),
                    ));
                }
            }
        } else {
            clients
                .iter()
                .find(|c| c.name.as_str() == req.client)
                .cloned()
                .ok_or(InvalidRequest::NotClient(req.client))?
        };
        let server = parse_server(req.server, &client.trust_domain)?;
        if req.subject.is_empty() || req.subject.len() > MAX_SUBJECT_LEN {
            return Err(InvalidRequest::Subject);
        }
        if req.purpose.len() > MAX_PURPOSE_LEN {
            return Err(InvalidRequest::Purpose);
        }
        if req.scopes.is_empty() || req.scopes.len() > MAX_SCOPES {
            return Err(InvalidRequest::ScopeCount);
        }
        let scopes = req
            .scopes
            .into_iter()
            .map(|s| parse_scope(s, &server))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BeginTaskRequest {
            client,
            server,
            subject: req.subject,
            purpose: req.purpose,
            scopes,
            lifetime: (req.lifetime_secs > 0)
                .then(|| Duration::from_secs(req.lifetime_secs.into())),
            bind_to_parent: req.bind_to_parent,
        })
    }
}

/// A server name, or a server's SPIFFE ID in `trust_domain`.
fn parse_server(server: String, trust_domain: &TrustDomain) -> Result<ServerName, InvalidRequest> {
    let parsed = if server.starts_with("spiffe://") {
        server.parse::<ServerId>().map(|id| {
            (id.trust_domain == *trust_domain)
                .then_some(id.name)
                .ok_or(id.trust_domain)
        })
    } else {
        server.parse::<ServerName>().map(Ok)
    };
    match parsed {
        Ok(Ok(name)) => Ok(name),
        Ok(Err(_)) => Err(InvalidRequest::ServerTrustDomain {
            server,
            trust_domain: trust_domain.clone(),
        }),
        Err(reason) => Err(InvalidRequest::Server { server, reason }),
    }
}

/// A scope, which must be for `server`.
fn parse_scope(scope: String, server: &ServerName) -> Result<Scope, InvalidRequest> {
    match scope.parse::<Scope>() {
        Ok(parsed) if parsed.server() == server => Ok(parsed),
        Ok(parsed) => Err(InvalidRequest::ScopeServer {
            scope_server: parsed.server().as_str().to_owned(),
            server: server.as_str().to_owned(),
            scope,
        }),
        Err(reason) => Err(InvalidRequest::Scope { scope, reason }),
    }
}

#[cfg(test)]
mod tests;
