//! What a `--cluster` stage holds beyond a standalone one: PostgreSQL, the replicas and
//! the nodes (started by `cluster`, held by the `Stage`).

use std::path::PathBuf;

use tessera_pgtest::PgServer;

use crate::admin::Admin;

/// What only a cluster stage has.
pub(super) struct ClusterParts {
    /// Dropped after the stage's processes (see `Stage`'s field order).
    pub(super) pg: PgServer,
    pub(super) replicas: Vec<ReplicaParts>,
    pub(super) nodes: Vec<NodeParts>,
    /// The consent the story runs under.
    pub(super) consent: String,
}

/// One `tessera-server` replica.
pub(super) struct ReplicaParts {
    pub(super) name: String,
    pub(super) admin_socket: PathBuf,
    /// Its Node API listener, `host:port`.
    pub(super) node_listen: String,
}

/// One node's agent.
pub(super) struct NodeParts {
    pub(super) name: String,
    pub(super) workload: PathBuf,
    pub(super) admin_socket: PathBuf,
    pub(super) admin: Admin,
}

impl ClusterParts {
    pub(super) fn node(&self, name: &str) -> &NodeParts {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("a node the demo started")
    }
}
