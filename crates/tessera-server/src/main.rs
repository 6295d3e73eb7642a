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
    /// Node API (TLS) address, `listen.node`. Env: TESSERA_SERVER_LISTEN_NODE.
    /// Default: 0.0.0.0:8081.
    #[arg(long, global = true)]
    node_listen: Option<SocketAddr>,
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
    /// Cluster root CA files.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Administrators' SVIDs for the Admin API over TLS.
    #[command(subcommand)]
    AdminSvid(AdminSvidCommand),
}

#[derive(Debug, Subcommand)]
enum AdminSvidCommand {
    /// Issue spiffe://<td>/admin/NAME, signed by the cluster root (ca.cert_file,
    /// ca.key_file), into DIR: admin.crt, admin.key (0600) and bundle.crt. The server
    /// serves tessera.v1.Admin and ClusterAdmin on its TLS listener (listen.node) to
    /// callers presenting such an SVID; node, client, task and server identities are
    /// refused.
    ///
    /// Example:
    ///
    ///   tessera-server --config server.toml admin-svid issue --name alice --out ./alice
    ///   tessera --server-url https://tessera-server:8081 --cert ./alice/admin.crt \
    ///     --key ./alice/admin.key --ca ./alice/bundle.crt entry list
    #[command(verbatim_doc_comment)]
    Issue {
        /// The administrator's name (the last segment of the SPIFFE ID).
        #[arg(long)]
        name: String,
        /// Directory to write into (created 0700); existing files are never replaced.
        #[arg(long)]
        out: PathBuf,
        /// Lifetime of the SVID (at most 30d).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Make a new cluster root for the trust domain: DIR/ca.crt (the bundle agents pin)
    /// and DIR/ca.key (0600). Give both to every replica (`ca.cert_file`, `ca.key_file`),
    /// e.g. `kubectl create secret generic tessera-server-ca --from-file=DIR`.
    Init {
        /// Directory to write into (created 0700); existing files are never replaced.
        #[arg(long)]
        dir: PathBuf,
        /// Lifetime of the root.
        #[arg(long, default_value = "3650d", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
}

/// Writes a new cluster root into `dir`.
fn ca_init(config: &Config, dir: &std::path::Path, ttl: std::time::Duration) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let root = tessera_authority::Authority::generate_cluster_root(&config.trust_domain, ttl)?;
    let write = |name: &str, mode: u32, contents: &[u8]| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .with_context(|| format!("creating {} (never replaced)", path.display()))?;
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let key = write("ca.key", 0o600, root.key_pem.as_bytes())?;
    let cert = write("ca.crt", 0o644, root.cert_pem.as_bytes())?;
    println!(
        "cluster root for {} written:\n  ca.cert_file = {:?}\n  ca.key_file = {:?}",
        config.trust_domain,
        cert.display().to_string(),
        key.display().to_string()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let flags = Flags {
        trust_domain: cli.trust_domain.clone(),
        database_url: cli.database_url.clone(),
        admin_socket: cli.admin_socket.clone(),
        http_listen: cli.http_listen,
        node_listen: cli.node_listen,
        log_format: cli.log_format,
    };
    let config = Config::load(cli.config.as_deref(), &ProcessEnv, &flags)?;
    match &cli.command {
        Some(Command::PrintConfig) => {
            print!("{}", config.to_toml());
            return Ok(());
        }
        Some(Command::Ca(CaCommand::Init { dir, ttl })) => return ca_init(&config, dir, *ttl),
        Some(Command::AdminSvid(AdminSvidCommand::Issue { name, out, ttl })) => {
            let (Some(cert), Some(key)) = (&config.ca.cert_file, &config.ca.key_file) else {
                anyhow::bail!(
                    "admin-svid issue needs the cluster root: set ca.cert_file and ca.key_file \
                     (TESSERA_SERVER_CA_CERT_FILE, TESSERA_SERVER_CA_KEY_FILE)"
                );
            };
            let files =
                tessera_server::issue_admin_svid(&config.trust_domain, cert, key, name, *ttl, out)?;
            println!(
                "{} issued, valid until unix {}:\n  --cert {}\n  --key {}\n  --ca {}",
                files.spiffe_id,
                files.not_after_unix,
                files.cert.display(),
                files.key.display(),
                files.bundle.display()
            );
            return Ok(());
        }
        Some(Command::Run) | None => {}
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
