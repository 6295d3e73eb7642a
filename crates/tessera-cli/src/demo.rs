//! `tessera demo`: the whole mission, end to end, on embedded defaults.
//!
//! Starts a real `tessera-agent` (own CA, SQLite and sockets in a temporary
//! directory), registers the example runtime and MCP server by what the kernel
//! says about them, grants one consent, starts the example MCP server with its
//! Cedar policy, and runs the example agent runtime through the story below. Each
//! step's outcome is checked; the first one that does not behave as told fails the
//! demo, naming the step.
//!
//! With `--cluster` the stage is a cluster on this machine (a real PostgreSQL, two
//! `tessera-server` replicas, three agents), the runtime and the MCP server run on
//! different nodes, and two more steps show what only a cluster has.
//!
//! | module | what it holds |
//! |---|---|
//! | `stage` | the binaries, the agent, the registrations, the consent and the MCP server |
//! | `cluster` | `--cluster`: starts PostgreSQL, the replicas and the nodes; steps 9 and 10 |
//! | `cluster_parts` | what a cluster stage holds: PostgreSQL, the replicas, the nodes |
//! | `story` | the eight steps, each checked |
//! | `clients` | the same story from the Python and Node runtimes, when ready |
//! | `narration` | how the demo speaks: steps, checks, details |

mod clients;
mod cluster;
mod cluster_parts;
mod narration;
mod stage;
mod story;

use std::time::Instant;

use clap::Args;

use self::narration::say;
use self::stage::{Binaries, CLIENT, SERVER, SUBJECT, Stage};

const EXAMPLES: &str = "\
Examples:
  # From a clone of the repository (builds what it needs, then tells the story):
  cargo run --release --bin tessera -- demo
  # Leave the agent and MCP server running afterwards, to poke at them by hand:
  cargo run --release --bin tessera -- demo --keep
  # The same story across a cluster on this machine: PostgreSQL, two tessera-server
  # replicas, three agents (needs PostgreSQL's server binaries: Debian's `postgresql`):
  cargo run --release --bin tessera -- demo --cluster

After the eight steps, the Python and Node example runtimes (clients/) tell the same
story when they are ready: a Python with tessera-client and mcp installed
(TESSERA_DEMO_PYTHON, else the venv the tests build under target/, else python3), and
node with clients/typescript built. TESSERA_DEMO_CLIENTS points at another clients/
directory; TESSERA_DEMO_NO_CLIENTS=1 skips them.";

/// Arguments of `tessera demo`.
#[derive(Debug, Args)]
#[command(after_long_help = EXAMPLES)]
pub struct DemoArgs {
    /// Leave the agent and the MCP server running at the end and print how to reach them
    /// (stop with Ctrl-C).
    #[arg(long)]
    pub keep: bool,

    /// Do not build the demo binaries first; use the ones next to this executable
    /// (also when TESSERA_DEMO_NO_BUILD is set).
    #[arg(long)]
    pub no_build: bool,

    /// Tell the story across a cluster on this machine: a throwaway PostgreSQL (Debian's
    /// `postgresql` binaries, or TESSERA_POSTGRES_BIN; run as the `postgres` user when
    /// this is root), two tessera-server replicas and three agents ("nodes"). The runtime
    /// runs on node-a, the MCP server on node-c; then a node is evicted and a replica
    /// killed.
    #[arg(long)]
    pub cluster: bool,
}

/// Runs the demo.
pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    say("Tessera demo: one login is not permission for every client.");
    say("An agent runtime gets its own identity, each task its own short-lived credential,");
    say("and an MCP server checks client, task, scope and policy on every single call.\n");

    let no_build = args.no_build || std::env::var_os("TESSERA_DEMO_NO_BUILD").is_some();
    let bins = Binaries::locate(!no_build, args.cluster)?;
    let started = Instant::now();
    let mut stage = if args.cluster {
        cluster::start(&bins).await?
    } else {
        Stage::start(&bins).await?
    };
    story::tell(&mut stage, &bins).await?;
    clients::run(&mut stage, CLIENT, SERVER, SUBJECT).await?;
    if args.cluster {
        cluster::tell(&mut stage, &bins).await?;
    }

    say(&format!(
        "\nEvery step behaved as shown ({:.1} s).",
        started.elapsed().as_secs_f64()
    ));
    if args.keep {
        let dir = stage.dir.keep();
        let (workload, admin_socket) = (&stage.workload, &stage.admin_socket);
        let (url, http_port) = (&stage.url, stage.http_port);
        say("\nStill running (Ctrl-C stops everything):");
        say(&format!(
            "  agent admin socket     {}",
            admin_socket.display()
        ));
        say(&format!("  workload socket        {}", workload.display()));
        say(&format!("  MCP server             {url}"));
        if let Some(cluster) = &stage.cluster {
            say(&format!(
                "  PostgreSQL             127.0.0.1:{} (user postgres, password in {})",
                cluster.pg.port(),
                dir.join("pgpassword").display()
            ));
            for r in &cluster.replicas {
                say(&format!(
                    "  tessera-server {}      admin socket {}, nodes at {}",
                    r.name,
                    r.admin_socket.display(),
                    r.node_listen
                ));
            }
            for n in &cluster.nodes {
                say(&format!(
                    "  agent {}           admin socket {}",
                    n.name,
                    n.admin_socket.display()
                ));
            }
        } else {
            say(&format!(
                "  metrics                http://127.0.0.1:{http_port}/metrics"
            ));
        }
        say(&format!("  files                  {}", dir.display()));
        say("Try:");
        say(&format!(
            "  tessera --admin-socket {} task list --all",
            admin_socket.display()
        ));
        say(&format!(
            "  tessera --admin-socket {} audit --follow",
            admin_socket.display()
        ));
        say(&format!(
            "  {} --workload-socket {} --url {url} --server {SERVER} --subject {SUBJECT} \
             --scope github/tool/list_pulls --call list_pulls '{{\"repo\":\"acme/api\"}}'",
            bins.runtime.display(),
            workload.display()
        ));
        tokio::signal::ctrl_c().await?;
    }
    // Dropping the stage (what `keep` left of it) stops the processes, then removes
    // their directory.
    Ok(())
}
