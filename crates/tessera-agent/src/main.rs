//! `tessera-agent`: the Tessera node agent daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tessera_agent::config::{Config, Flags, LogFormat, ProcessEnv};

/// Tessera node agent: attests local agent runtimes over a unix socket and
/// issues them short-lived X.509-SVIDs through the SPIFFE Workload API.
///
/// Settings come from, lowest to highest precedence: built-in defaults, the
/// TOML file given by --config, TESSERA_* environment variables, and flags.
/// Run `tessera-agent print-config` to see the effective result.
///
/// Example (a local, unprivileged agent):
///
///   tessera-agent --trust-domain acme.corp --data-dir ~/.local/share/tessera \
///     --workload-socket /tmp/tessera/workload.sock --admin-socket /tmp/tessera/admin.sock
///
/// Then point SPIFFE clients at it with
/// SPIFFE_ENDPOINT_SOCKET=unix:///tmp/tessera/workload.sock and register them
/// with `tessera entry create`.
#[derive(Debug, Parser)]
#[command(name = "tessera-agent", version, verbatim_doc_comment)]
struct Cli {
    /// TOML config file (unknown keys are errors). Env: TESSERA_CONFIG.
    #[arg(long, short, global = true, env = "TESSERA_CONFIG")]
    config: Option<PathBuf>,
    /// Trust domain, e.g. acme.corp. Env: TESSERA_TRUST_DOMAIN. Default: tessera.local.
    #[arg(long, global = true)]
    trust_domain: Option<String>,
    /// Directory for the CA and SQLite store. Env: TESSERA_DATA_DIR. Default: /var/lib/tessera.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Workload API socket. Env: TESSERA_WORKLOAD_SOCKET. Default: /run/tessera/workload.sock.
    #[arg(long, global = true)]
    workload_socket: Option<PathBuf>,
    /// Admin API socket (mode 0600). Env: TESSERA_ADMIN_SOCKET. Default: /run/tessera/admin.sock.
    #[arg(long, global = true)]
    admin_socket: Option<PathBuf>,
    /// Address for /healthz, /readyz, /metrics. Env: TESSERA_HTTP_LISTEN. Default: 127.0.0.1:8089.
    #[arg(long, global = true)]
    http_listen: Option<SocketAddr>,
    /// Log format. Env: TESSERA_LOG_FORMAT. Default: text.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Print the effective configuration as TOML and exit.
    PrintConfig,
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    let flags = Flags {
        trust_domain: cli.trust_domain.clone(),
        data_dir: cli.data_dir.clone(),
        workload_socket: cli.workload_socket.clone(),
        admin_socket: cli.admin_socket.clone(),
        http_listen: cli.http_listen,
        log_format: cli.log_format,
    };
    Ok(Config::load(cli.config.as_deref(), &ProcessEnv, &flags)?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = load(&cli)?;
    if matches!(cli.command, Some(Command::PrintConfig)) {
        print!("{}", config.to_toml());
        return Ok(());
    }
    tessera_agent::logging::init(&config.log)?;
    for (new, old) in tessera_agent::config::deprecated_cluster_vars(&ProcessEnv) {
        tracing::warn!(
            variable = old,
            replacement = new,
            "deprecated environment variable: TESSERA_SERVER_* is the server's prefix; the agent's [server] section reads TESSERA_CLUSTER_*"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let result = tessera_agent::agent::run(config, shutdown_signal()).await;
        if let Err(e) = &result {
            tracing::error!(error = format!("{e:#}"), "tessera-agent failed");
        }
        result
    })
}

/// SIGTERM (Kubernetes, systemd) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
