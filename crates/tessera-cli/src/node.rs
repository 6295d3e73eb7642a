//! `tessera node`: the cluster's nodes, against tessera-server's admin socket
//! (`tessera.v1.ClusterAdmin`): join tokens for agents to attest with, the node list, and
//! eviction.

use std::time::Duration;

use clap::Subcommand;
use serde_json::json;
use tessera_proto::tessera::v1 as pb;
use tessera_proto::tessera::v1::cluster_admin_client::ClusterAdminClient;

use crate::admin::AdminTarget;
use crate::duration::parse_ttl;
use crate::output::{self, OutputFormat, Table};

const TOKEN_EXAMPLES: &str = "\
Examples:
  # A token any new node may use once within the hour:
  tessera --admin-socket /run/tessera-server/admin.sock node token create
  # A token only the node named worker-7 may use, within 10 minutes:
  tessera --admin-socket /run/tessera-server/admin.sock node token create --node worker-7 --ttl 10m

The token is printed once and stored only as its SHA-256: give it to the node's agent
(`join_token_file`) and keep it nowhere else.";

const LIST_EXAMPLES: &str = "\
Examples:
  tessera --admin-socket /run/tessera-server/admin.sock node list
  tessera --admin-socket /run/tessera-server/admin.sock node list --output json | jq -r '.[].name'";

const EVICT_EXAMPLES: &str = "\
Examples:
  tessera --admin-socket /run/tessera-server/admin.sock node evict worker-7

The node's next call to the server is refused, it gets no more renewals, and its node CA
is published as revoked. The name stays refused.";

/// `tessera node …`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Join tokens: single-use secrets a node's agent attests with.
    #[command(subcommand, after_long_help = TOKEN_EXAMPLES)]
    Token(TokenCommand),
    /// List the cluster's nodes (active and evicted).
    #[command(after_long_help = LIST_EXAMPLES)]
    List,
    /// Evict a node: no more renewals, its node CA published as revoked.
    #[command(after_long_help = EVICT_EXAMPLES)]
    Evict {
        /// The node's name, as `tessera node list` prints it.
        name: String,
    },
}

/// `tessera node token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a single-use join token and print it (once).
    #[command(after_long_help = TOKEN_EXAMPLES)]
    Create {
        /// How long the token may wait to be used, e.g. 10m, 1h (at most 7d).
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// Only the node of this name may use it.
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
    },
}

/// Runs `tessera node …` against the server's admin socket.
pub async fn run(
    target: &AdminTarget,
    command: NodeCommand,
    format: OutputFormat,
) -> anyhow::Result<String> {
    let mut client = ClusterAdminClient::new(target.connect().await?);
    let status = |s: tonic::Status| target.status_error(&s);
    match command {
        NodeCommand::Token(TokenCommand::Create { ttl, node }) => {
            let r = client
                .create_join_token(pb::CreateJoinTokenRequest {
                    // parse_ttl bounded it to u32 seconds.
                    ttl_secs: u32::try_from(ttl.as_secs())?,
                    node_name: node.clone().unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            Ok(match format {
                OutputFormat::Json => output::json(&json!({
                    "token": r.token,
                    "id": r.id,
                    "node": node,
                    "expires_at": output::rfc3339(r.expires_at_unix),
                })),
                OutputFormat::Text => {
                    let mut pairs = vec![
                        ("token", r.token),
                        ("id", r.id),
                        ("expires", output::rfc3339(r.expires_at_unix)),
                    ];
                    if let Some(node) = node {
                        pairs.push(("node", node));
                    }
                    output::kv(0, &pairs)
                }
            })
        }
        NodeCommand::List => {
            let nodes = client
                .list_nodes(pb::ListNodesRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .nodes;
            Ok(render_list(&nodes, format))
        }
        NodeCommand::Evict { name } => {
            let node = client
                .evict_node(pb::EvictNodeRequest { name })
                .await
                .map_err(status)?
                .into_inner()
                .node
                .unwrap_or_default();
            Ok(match format {
                OutputFormat::Json => output::json(&node_json(&node)),
                OutputFormat::Text => format!(
                    "evicted node {}{}\n",
                    node.name,
                    if node.ca_serial.is_empty() {
                        String::new()
                    } else {
                        format!("; its node CA {} is revoked", node.ca_serial)
                    }
                ),
            })
        }
    }
}

fn node_json(n: &pb::NodeRecord) -> serde_json::Value {
    json!({
        "name": n.name,
        "status": n.status,
        "ca_serial": (!n.ca_serial.is_empty()).then_some(&n.ca_serial),
        "ca_not_after": (n.ca_not_after_unix != 0).then(|| output::rfc3339(n.ca_not_after_unix)),
        "evicted_at": (n.evicted_at_unix != 0).then(|| output::rfc3339(n.evicted_at_unix)),
    })
}

fn render_list(nodes: &[pb::NodeRecord], format: OutputFormat) -> String {
    match format {
        OutputFormat::Json => output::json(&serde_json::Value::Array(
            nodes.iter().map(node_json).collect(),
        )),
        OutputFormat::Text if nodes.is_empty() => {
            "no nodes; create a join token with `tessera node token create`\n".to_owned()
        }
        OutputFormat::Text => {
            let mut table = Table::new(["NAME", "STATUS", "CA SERIAL", "CA EXPIRES"]);
            for n in nodes {
                table.row(vec![
                    n.name.clone(),
                    n.status.clone(),
                    n.ca_serial.clone(),
                    if n.ca_not_after_unix == 0 {
                        "-".to_owned()
                    } else {
                        output::rfc3339(n.ca_not_after_unix)
                    },
                ]);
            }
            table.render()
        }
    }
}
