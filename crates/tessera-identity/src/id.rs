//! Tessera's identity shapes, each a SPIFFE ID:
//!
//! | kind   | SPIFFE ID                                   | type             |
//! |--------|---------------------------------------------|------------------|
//! | client | `spiffe://<td>/client/<name>`               | [`ClientId`]     |
//! | task   | `spiffe://<td>/client/<name>/task/<ulid>`   | [`TaskSpiffeId`] |
//! | server | `spiffe://<td>/mcp/<name>`                  | [`ServerId`]     |
//! | node   | `spiffe://<td>/node/<name>`                 | [`NodeId`]       |
//! | admin  | `spiffe://<td>/admin/<name>`                | [`AdminId`]      |
//!
//! The first three are workload identities, [`TesseraId`]: what an MCP server or its
//! client may be. Node and admin identities belong to the cluster's control plane (an
//! agent talking to the server, an administrator using its admin API); [`AnyId`] covers
//! all five, and a [`TesseraId`] parser refuses the last two as it refuses any other path.
//!
//! Every type parses exactly what it prints. Parsing runs the generic SPIFFE check
//! ([`validate_spiffe_id`]) first, then requires one of the shapes above; any other valid
//! SPIFFE ID is refused with [`IdError::UnrecognizedPath`].

use std::fmt;
use std::str::FromStr;

use crate::error::IdError;
pub use crate::kind::IdKind;
use crate::name::{AdminName, ClientName, NodeName, ServerName};
use crate::spiffe_id::validate_spiffe_id;
use crate::task_id::TaskId;
use crate::trust_domain::{SCHEME_PREFIX, TrustDomain};

/// First path segment of client and task ids.
const CLIENT_SEGMENT: &str = "client";
/// Third path segment of task ids.
const TASK_SEGMENT: &str = "task";
/// First path segment of MCP server ids.
const SERVER_SEGMENT: &str = "mcp";

/// The SPIFFE ID of a client (an attested agent runtime): `spiffe://<td>/client/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId {
    /// The trust domain the client belongs to.
    pub trust_domain: TrustDomain,
    /// The client's name, the last path segment.
    pub name: ClientName,
}

/// The SPIFFE ID of one task of a client: `spiffe://<td>/client/<name>/task/<ulid>`.
///
/// A plain SPIFFE verifier sees an ordinary ID; Tessera reads client and task from the path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskSpiffeId {
    /// The client running the task.
    pub client: ClientId,
    /// The task.
    pub task: TaskId,
}

/// The SPIFFE ID of an MCP server: `spiffe://<td>/mcp/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId {
    /// The trust domain the server belongs to.
    pub trust_domain: TrustDomain,
    /// The server's name, the last path segment; the same name scopes use.
    pub name: ServerName,
}

/// Any Tessera workload identity: what an MCP server's peer (or an MCP server) may be.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TesseraId {
    /// An agent runtime's own identity.
    Client(ClientId),
    /// A task's identity.
    Task(TaskSpiffeId),
    /// An MCP server's identity.
    Server(ServerId),
}

/// Any identity of the five Tessera shapes: a workload's or the control plane's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnyId {
    /// A client, task or MCP server.
    Workload(TesseraId),
    /// A node's agent (cluster mode).
    Node(NodeId),
    /// An administrator of the control plane.
    Admin(AdminId),
}

/// First path segment of node ids.
const NODE_SEGMENT: &str = "node";
/// First path segment of administrator ids.
const ADMIN_SEGMENT: &str = "admin";

/// The SPIFFE ID of a node's agent in cluster mode: `spiffe://<td>/node/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// The trust domain the node belongs to.
    pub trust_domain: TrustDomain,
    /// The node's name, the last path segment.
    pub name: NodeName,
}

/// The SPIFFE ID of an administrator of the control plane: `spiffe://<td>/admin/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdminId {
    /// The trust domain the administrator belongs to.
    pub trust_domain: TrustDomain,
    /// The administrator's name, the last path segment.
    pub name: AdminName,
}

// === impl ClientId ===

impl ClientId {
    /// The client `name` in trust domain `trust_domain`.
    pub fn new(trust_domain: TrustDomain, name: ClientName) -> Self {
        Self { trust_domain, name }
    }

    /// The trust domain the client belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The id of task `task` of this client.
    pub fn task(&self, task: TaskId) -> TaskSpiffeId {
        TaskSpiffeId {
            client: self.clone(),
            task,
        }
    }
}

impl FromStr for ClientId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse()? {
            AnyId::Workload(TesseraId::Client(id)) => Ok(id),
            other => Err(IdError::WrongKind {
                expected: IdKind::Client,
                found: other.kind(),
            }),
        }
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME_PREFIX}{}/{CLIENT_SEGMENT}/{}",
            self.trust_domain, self.name
        )
    }
}

// === impl TaskSpiffeId ===

impl TaskSpiffeId {
    /// The id of task `task` of `client`.
    pub fn new(client: ClientId, task: TaskId) -> Self {
        Self { client, task }
    }

    /// The trust domain of the client running the task.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.client.trust_domain
    }
}

impl FromStr for TaskSpiffeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse()? {
            AnyId::Workload(TesseraId::Task(id)) => Ok(id),
            other => Err(IdError::WrongKind {
                expected: IdKind::Task,
                found: other.kind(),
            }),
        }
    }
}

impl fmt::Display for TaskSpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{TASK_SEGMENT}/{}", self.client, self.task)
    }
}

// === impl ServerId ===

impl ServerId {
    /// The MCP server `name` in trust domain `trust_domain`.
    pub fn new(trust_domain: TrustDomain, name: ServerName) -> Self {
        Self { trust_domain, name }
    }

    /// The trust domain the server belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }
}

impl FromStr for ServerId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse()? {
            AnyId::Workload(TesseraId::Server(id)) => Ok(id),
            other => Err(IdError::WrongKind {
                expected: IdKind::Server,
                found: other.kind(),
            }),
        }
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME_PREFIX}{}/{SERVER_SEGMENT}/{}",
            self.trust_domain, self.name
        )
    }
}

// === impl NodeId ===

impl NodeId {
    /// The node `name` in trust domain `trust_domain`.
    pub fn new(trust_domain: TrustDomain, name: NodeName) -> Self {
        Self { trust_domain, name }
    }

    /// The trust domain the node belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }
}

impl FromStr for NodeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse()? {
            AnyId::Node(id) => Ok(id),
            other => Err(IdError::WrongKind {
                expected: IdKind::Node,
                found: other.kind(),
            }),
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME_PREFIX}{}/{NODE_SEGMENT}/{}",
            self.trust_domain, self.name
        )
    }
}

// === impl AdminId ===

impl AdminId {
    /// The administrator `name` in trust domain `trust_domain`.
    pub fn new(trust_domain: TrustDomain, name: AdminName) -> Self {
        Self { trust_domain, name }
    }

    /// The trust domain the administrator belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }
}

impl FromStr for AdminId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse()? {
            AnyId::Admin(id) => Ok(id),
            other => Err(IdError::WrongKind {
                expected: IdKind::Admin,
                found: other.kind(),
            }),
        }
    }
}

impl fmt::Display for AdminId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME_PREFIX}{}/{ADMIN_SEGMENT}/{}",
            self.trust_domain, self.name
        )
    }
}

// === impl TesseraId ===

impl TesseraId {
    /// The trust domain of the identity.
    pub fn trust_domain(&self) -> &TrustDomain {
        match self {
            Self::Client(id) => id.trust_domain(),
            Self::Task(id) => id.trust_domain(),
            Self::Server(id) => id.trust_domain(),
        }
    }

    /// Which shape the identity has.
    pub fn kind(&self) -> IdKind {
        match self {
            Self::Client(_) => IdKind::Client,
            Self::Task(_) => IdKind::Task,
            Self::Server(_) => IdKind::Server,
        }
    }
}

impl FromStr for TesseraId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse()? {
            AnyId::Workload(id) => Ok(id),
            // Not a workload identity: to a workload parser, just another path.
            AnyId::Node(_) | AnyId::Admin(_) => Err(IdError::UnrecognizedPath {
                path: validate_spiffe_id(s)?.1.to_owned(),
            }),
        }
    }
}

// === impl AnyId ===

impl AnyId {
    /// The trust domain of the identity.
    pub fn trust_domain(&self) -> &TrustDomain {
        match self {
            Self::Workload(id) => id.trust_domain(),
            Self::Node(id) => id.trust_domain(),
            Self::Admin(id) => id.trust_domain(),
        }
    }

    /// Which shape the identity has.
    pub fn kind(&self) -> IdKind {
        match self {
            Self::Workload(id) => id.kind(),
            Self::Node(_) => IdKind::Node,
            Self::Admin(_) => IdKind::Admin,
        }
    }
}

impl FromStr for AnyId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (trust_domain, path) = validate_spiffe_id(s)?;
        let unrecognized = || IdError::UnrecognizedPath {
            path: path.to_owned(),
        };
        // `validate_spiffe_id` guarantees an empty path or one starting with '/'.
        let Some(segments) = path.strip_prefix('/') else {
            return Err(unrecognized());
        };
        let segments: Vec<&str> = segments.split('/').collect();
        match segments.as_slice() {
            [CLIENT_SEGMENT, name] => Ok(Self::Workload(TesseraId::Client(ClientId {
                trust_domain,
                name: name.parse()?,
            }))),
            [CLIENT_SEGMENT, name, TASK_SEGMENT, task] => {
                Ok(Self::Workload(TesseraId::Task(TaskSpiffeId {
                    client: ClientId {
                        trust_domain,
                        name: name.parse()?,
                    },
                    task: task.parse()?,
                })))
            }
            [SERVER_SEGMENT, name] => Ok(Self::Workload(TesseraId::Server(ServerId {
                trust_domain,
                name: name.parse()?,
            }))),
            [NODE_SEGMENT, name] => Ok(Self::Node(NodeId::new(trust_domain, name.parse()?))),
            [ADMIN_SEGMENT, name] => Ok(Self::Admin(AdminId::new(trust_domain, name.parse()?))),
            _ => Err(unrecognized()),
        }
    }
}

impl fmt::Display for AnyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Workload(id) => id.fmt(f),
            Self::Node(id) => id.fmt(f),
            Self::Admin(id) => id.fmt(f),
        }
    }
}

impl From<TesseraId> for AnyId {
    fn from(id: TesseraId) -> Self {
        Self::Workload(id)
    }
}

impl From<NodeId> for AnyId {
    fn from(id: NodeId) -> Self {
        Self::Node(id)
    }
}

impl From<AdminId> for AnyId {
    fn from(id: AdminId) -> Self {
        Self::Admin(id)
    }
}

impl fmt::Display for TesseraId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Client(id) => id.fmt(f),
            Self::Task(id) => id.fmt(f),
            Self::Server(id) => id.fmt(f),
        }
    }
}

impl From<ClientId> for TesseraId {
    fn from(id: ClientId) -> Self {
        Self::Client(id)
    }
}

impl From<TaskSpiffeId> for TesseraId {
    fn from(id: TaskSpiffeId) -> Self {
        Self::Task(id)
    }
}

impl From<ServerId> for TesseraId {
    fn from(id: ServerId) -> Self {
        Self::Server(id)
    }
}

/// `TryFrom<&str>` for each id type, delegating to `FromStr`.
macro_rules! try_from_str {
    ($($ty:ty),*) => {$(
        impl TryFrom<&str> for $ty {
            type Error = IdError;

            fn try_from(s: &str) -> Result<Self, Self::Error> {
                s.parse()
            }
        }
    )*};
}

try_from_str!(
    ClientId,
    TaskSpiffeId,
    ServerId,
    TesseraId,
    AnyId,
    NodeId,
    AdminId
);

#[cfg(test)]
mod tests;
