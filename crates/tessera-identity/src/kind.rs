//! The shapes of Tessera identity. Its own module because both the ID
//! parsers ([`crate::id`]) and their error type ([`crate::error`]) name it.

use std::fmt;

/// Which of the Tessera identity shapes an id has.
///
/// Client, task and server are workload identities ([`crate::TesseraId`]); node and admin
/// are the cluster control plane's ([`crate::AnyId`]), which no MCP verifier accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum IdKind {
    /// An agent runtime: `spiffe://td/client/<name>`.
    Client,
    /// One task of an agent runtime: `spiffe://td/client/<name>/task/<ulid>`.
    Task,
    /// An MCP server: `spiffe://td/mcp/<name>`.
    Server,
    /// A node's agent in cluster mode: `spiffe://td/node/<name>`.
    Node,
    /// An administrator of the control plane: `spiffe://td/admin/<name>`.
    Admin,
}

impl IdKind {
    /// Lowercase name of the kind: `client`, `task`, `server`, `node` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Task => "task",
            Self::Server => "server",
            Self::Node => "node",
            Self::Admin => "admin",
        }
    }

    /// Whether a node CA may sign an SVID of this kind: only clients and tasks.
    ///
    /// A node CA's key lives on a node, so what its theft buys is bounded to the
    /// identities that node issues anyway; MCP server, node and admin SVIDs come from the
    /// cluster's root (or upstream) CA only, and verifiers refuse them through a node CA.
    pub fn issuable_by_node_ca(self) -> bool {
        matches!(self, Self::Client | Self::Task)
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
