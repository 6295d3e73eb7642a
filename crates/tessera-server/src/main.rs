//! `tessera-server`: one replica of the Tessera cluster control plane.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tessera_agent::config::{LogFormat, ProcessEnv};
use tessera_server::config::{Config, Flags};

/// Tessera server: the control plane of a trust domain. Entries, consents and nodes live
/// in PostgreSQL, shared by every replica (run two or more); each replica keeps them in
/// memory, so reads answer while PostgreSQL is down and writes are refused UNAVAILABLE.
///
/// Settings come from, lowest to highest precedence: built-in defaults, the TOML file
/// given by --config, TESSERA_SERVER_* environment variables, and flags. Run
/// `tessera-server print-config` to see the effective result.
///
/// Example:
///
///   tessera-server --trust-domain acme.corp \
///     --database-url postgres://tessera@db:5432/tessera \
///     --admin-socket /run/tessera-server/admin.sock
///
/// with the database password in the file TESSERA_SERVER_DATABASE_PASSWORD_FILE names.
/// Then `tessera --admin-socket /run/tessera-server/admin.sock entry create …`.
#[derive(Debug, Parser)]
#[command(name = "tessera-server", version, verbatim_doc_comment)]
struct Cli {
    /// TOML config file (unknown keys are errors). Env: TESSERA_SERVER_CONFIG.
    #[arg(long, short, global = true, env = "TESSERA_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// Trust domain, e.g. acme.corp. Env: TESSERA_SERVER_TRUST_DOMAIN. Default: tessera.local.
    #[arg(long, global = true)]
    trust_domain: Option<String>,
    /// PostgreSQL URL, without a password. Env: TESSERA_SERVER_DATABASE_URL.
    /// Default: postgres://tessera@localhost:5432/tessera.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Admin API socket (mode 0600). Env: TESSERA_SERVER_ADMIN_SOCKET.
    /// Default: /run/tessera-server/admin.sock.
    #[arg(long, global = true)]
    admin_socket: Option<PathBuf>,
    /// Address for /healthz, /readyz, /metrics. Env: TESSERA_SERVER_HTTP_LISTEN.
    /// Default: 127.0.0.1:8090.
    #[arg(long, global = true)]
    http_listen: Option<SocketAddr>,
    /// Log format. Env: TESSERA_SERVER_LOG_FORMAT. Default: text.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Run,
    /// Print the effective configuration as TOML and exit.
    PrintConfig,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let flags = Flags {
        trust_domain: cli.trust_domain.clone(),
        database_url: cli.database_url.clone(),
        admin_socket: cli.admin_socket.clone(),
        http_listen: cli.http_listen,
        log_format: cli.log_format,
    };
    let config = Config::load(cli.config.as_deref(), &ProcessEnv, &flags)?;
    if matches!(cli.command, Some(Command::PrintConfig)) {
        print!("{}", config.to_toml());
        return Ok(());
    }
    tessera_agent::logging::init(&config.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let result = tessera_server::server::run(config, shutdown_signal()).await;
        if let Err(e) = &result {
            tracing::error!(error = format!("{e:#}"), "tessera-server failed");
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
