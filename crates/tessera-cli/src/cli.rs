//! The command tree: global flags and one subcommand per concept.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::audit::AuditArgs;
use crate::consent::ConsentCommand;
use crate::entry::EntryCommand;
use crate::output::OutputFormat;
use crate::svid::SvidCommand;
use crate::task::TaskCommand;

const ABOUT_LONG: &str = "\
Admin and developer CLI for a Tessera node agent.

Tessera gives each AI agent runtime (a \"client\") an attested SPIFFE identity, and each task it
runs its own short-lived X.509-SVID, so MCP servers can check who is calling, for which task,
on whose behalf, on every request.

Admin commands (entry, consent, task list/revoke, status, audit) talk to tessera-agent's admin
socket and usually need root or the agent's user. `svid fetch` and `task begin/end/mine` talk to
the workload socket as the calling process, exactly like an agent runtime would.";

const EXAMPLES: &str = "\
Examples:
  # Register an agent runtime by uid and binary hash:
  sudo tessera entry create --client code-reviewer \\
      --selector unix:uid:1001 \\
      --selector unix:sha256:$(sha256sum /opt/cr | cut -d' ' -f1)
  # alice lets it read pull requests for 8 hours:
  sudo tessera consent grant --client code-reviewer --subject alice@acme.corp \\
      --server github --scope github/tool/get_pull_request --ttl 8h
  # As that runtime's user, see the identity it gets:
  tessera svid fetch --write /tmp/svid && tessera svid inspect /tmp/svid/svid.0.pem
  # Watch what the agent decides:
  sudo tessera audit --follow
  # Cluster mode: register once at a tessera-server, over mTLS with an admin SVID
  # (`tessera-server admin-svid issue --name alice --out ./alice`):
  tessera --server-url https://tessera-server:8081 --cert ./alice/admin.crt \\
      --key ./alice/admin.key --ca ./alice/bundle.crt entry list";

/// The `tessera` command.
#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Admin and developer CLI for a Tessera node agent",
    long_about = ABOUT_LONG,
    after_long_help = EXAMPLES
)]
pub struct Cli {
    /// Flags every subcommand accepts.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand accepts.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// The agent's Admin API socket.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "PATH",
        env = "TESSERA_ADMIN_SOCKET",
        default_value = "/run/tessera/admin.sock"
    )]
    pub admin_socket: PathBuf,

    /// A tessera-server's TLS listener, https://host:port: admin commands go there over
    /// mTLS with an admin SVID (--cert, --key, --ca) instead of to --admin-socket.
    /// (Not --server: `entry create --server` and `consent grant --server` name MCP
    /// servers.)
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "URL",
        env = "TESSERA_ADMIN_SERVER",
        requires_all = ["cert", "key", "ca"]
    )]
    pub server_url: Option<String>,

    /// With --server-url: the admin SVID (PEM), from `tessera-server admin-svid issue`.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "PATH",
        env = "TESSERA_ADMIN_CERT",
        requires = "server_url"
    )]
    pub cert: Option<PathBuf>,

    /// With --server-url: the admin SVID's key (PEM, mode 0600).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "PATH",
        env = "TESSERA_ADMIN_KEY",
        requires = "server_url"
    )]
    pub key: Option<PathBuf>,

    /// With --server-url: the cluster's root(s) (PEM); the server must present
    /// spiffe://<td>/tessera/server under them.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "PATH",
        env = "TESSERA_ADMIN_CA",
        requires = "server_url"
    )]
    pub ca: Option<PathBuf>,

    /// The workload socket (SPIFFE Workload API and Tasks API): unix:///abs/path or /abs/path.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "ADDR",
        env = "SPIFFE_ENDPOINT_SOCKET",
        default_value = "unix:///run/tessera/workload.sock"
    )]
    pub socket: String,

    /// Output format.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_enum,
        value_name = "FORMAT",
        default_value_t = OutputFormat::Text
    )]
    pub output: OutputFormat,
}

impl GlobalArgs {
    /// Where admin commands go: the server over mTLS when --server-url is given, else the
    /// admin socket.
    pub fn admin_target(&self) -> crate::admin::AdminTarget {
        match (&self.server_url, &self.cert, &self.key, &self.ca) {
            (Some(url), Some(cert), Some(key), Some(ca)) => {
                crate::admin::AdminTarget::Server(crate::remote::RemoteServer {
                    url: url.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: ca.clone(),
                })
            }
            // clap's `requires` makes --server-url come with all three.
            _ => crate::admin::AdminTarget::Socket(self.admin_socket.clone()),
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage registration entries: which workloads get which client identity.
    #[command(subcommand)]
    Entry(EntryCommand),
    /// Grant, list and withdraw consents: which client may act for whom, on which MCP server.
    #[command(subcommand)]
    Consent(ConsentCommand),
    /// Cluster nodes (tessera-server's admin socket): join tokens, list, evict.
    #[command(subcommand)]
    Node(crate::node::NodeCommand),
    /// Tasks: list or revoke any client's (admin), or begin and end this process's own.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Show the agent's trust domain, version, entry count and CA certificates.
    #[command(after_long_help = crate::status::EXAMPLES)]
    Status,
    /// Read the agent's audit log, optionally following new records.
    Audit(AuditArgs),
    /// Fetch X.509-SVIDs from the Workload API, or inspect SVID files.
    #[command(subcommand)]
    Svid(SvidCommand),
    /// Run the end-to-end demo: a real agent, an MCP server and an agent runtime, in a
    /// temporary directory, telling the whole story step by step.
    Demo(crate::demo::DemoArgs),
}

#[cfg(test)]
mod tests;
