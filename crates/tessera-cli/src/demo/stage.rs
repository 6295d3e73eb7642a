//! The demo's stage: the binaries it runs, a real agent with its own CA, SQLite store
//! and sockets in a temporary directory (or, with `--cluster`, the cluster that
//! `cluster` starts), the registrations and the consent the story needs, and the example
//! MCP server. Everything started here is killed when the [`Stage`] is dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tessera_proto::tessera::v1 as pb;

use super::narration::say;
use crate::admin::Admin;

pub(super) const TRUST_DOMAIN: &str = "demo.tessera.dev";
pub(super) const SUBJECT: &str = "alice@example.com";
pub(super) const CLIENT: &str = "code-reviewer";
pub(super) const SERVER: &str = "github";

/// The binaries the demo runs, found next to this executable.
pub(super) struct Binaries {
    pub(super) agent: PathBuf,
    pub(super) server: PathBuf,
    pub(super) runtime: PathBuf,
    /// `tessera-server`, for `--cluster` only.
    pub(super) control_plane: Option<PathBuf>,
}

impl Binaries {
    /// Finds (and under `cargo run` with `build`, first builds) the demo's binaries;
    /// `cluster` adds `tessera-server`.
    pub(super) fn locate(build: bool, cluster: bool) -> anyhow::Result<Binaries> {
        let exe = std::env::current_exe().context("locating the tessera executable")?;
        let dir = exe.parent().context("tessera has no parent directory")?;
        // Under `cargo run`, make sure the sibling binaries are built and current.
        if build && let Some(cargo) = std::env::var_os("CARGO") {
            let release = dir.file_name().is_some_and(|n| n == "release");
            say(&format!(
                "building the demo binaries ({})…",
                if release { "release" } else { "debug" }
            ));
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "-p",
                "tessera-agent",
                "-p",
                "tessera-example-mcp-server",
                "-p",
                "tessera-example-agent-runtime",
            ]);
            if cluster {
                cmd.args(["-p", "tessera-server"]);
            }
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().context("running cargo build")?;
            if !status.success() {
                bail!("building the demo binaries failed ({status})");
            }
        }
        let find = |name: &str| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            if !p.exists() {
                bail!(
                    "{} not found; build it with `cargo build --release --workspace`, or run the demo with \
                     `cargo run --release --bin tessera -- demo`",
                    p.display()
                );
            }
            Ok(std::fs::canonicalize(&p)?)
        };
        Ok(Binaries {
            agent: find("tessera-agent")?,
            server: find("tessera-example-mcp-server")?,
            runtime: find("tessera-example-agent-runtime")?,
            control_plane: if cluster {
                Some(find("tessera-server")?)
            } else {
                None
            },
        })
    }
}

/// Child processes, by name, killed when dropped (unless the demo keeps them).
pub(super) struct Children(pub(super) Vec<(String, Child)>);

impl Children {
    /// SIGKILLs the child called `name` now (no shutdown of any kind); whether there was one.
    pub(super) fn kill(&mut self, name: &str) -> bool {
        let Some(i) = self.0.iter().position(|(n, _)| n == name) else {
            return false;
        };
        let (_, mut child) = self.0.remove(i);
        let _ = child.kill();
        let _ = child.wait();
        true
    }

    /// An error naming any child that has exited, with the end of its log in `dir`.
    pub(super) fn check_running(&mut self, dir: &Path) -> anyhow::Result<()> {
        for (name, child) in &mut self.0 {
            if let Some(status) = child.try_wait()? {
                let log =
                    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                bail!("{name} exited with {status}:\n{}", tail.join("\n"));
            }
        }
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running agent (or cluster) and MCP server, registered and consented as the story
/// needs.
pub(super) struct Stage {
    /// Declared first, so the processes are killed before PostgreSQL and before their
    /// directory is removed.
    pub(super) children: Children,
    /// With `--cluster`: PostgreSQL, the replicas and the nodes.
    pub(super) cluster: Option<super::cluster_parts::ClusterParts>,
    /// The temporary directory holding every file of the demo.
    pub(super) dir: TempDir,
    /// The workload socket of the agent the runtime runs beside.
    pub(super) workload: PathBuf,
    /// The admin socket of that agent.
    pub(super) admin_socket: PathBuf,
    pub(super) http_port: u16,
    /// Where registrations go: the agent's Admin API, or in a cluster, the server's.
    pub(super) admin: Admin,
    /// The runtime's own agent, to wait on until a registration has reached it (a
    /// cluster's agents learn registrations from the server's stream).
    pub(super) runtime_agent: Admin,
    /// Whose audit trail step 8 shows, in order: (who, their Admin API).
    pub(super) audits: Vec<(String, Admin)>,
    /// The MCP server's URL.
    pub(super) url: String,
    /// The MCP server's decision log (JSON lines).
    pub(super) server_audit: PathBuf,
    /// A copy of the runtime binary, registered as a client with no consent.
    pub(super) shadow: PathBuf,
}

impl Stage {
    /// Starts the agent, registers the runtime, the MCP server and the shadow runtime
    /// by what the kernel reports about each process, grants the consent, and starts
    /// the MCP server.
    pub(super) async fn start(bins: &Binaries) -> anyhow::Result<Stage> {
        let dir = tempfile::Builder::new().prefix("tessera-demo-").tempdir()?;
        let root = dir.path().to_owned();
        let workload = root.join("run/workload.sock");
        let admin_socket = root.join("run/admin.sock");
        let http_port = free_port()?;
        let config = root.join("agent.toml");
        std::fs::write(&config, agent_toml(&root, http_port))?;

        // The agent.
        let mut children = Children(Vec::new());
        spawn(&mut children, "agent", &bins.agent, &config, &root)?;
        let mut admin =
            wait_for_admin(&admin_socket, &mut children, &root, "tessera-agent").await?;
        say(&format!(
            "started tessera-agent: trust domain {TRUST_DOMAIN}, its own CA and SQLite store in {}",
            root.join("data").display()
        ));

        let (shadow, _) = register_entries(&mut admin, bins, &root).await?;
        grant(&mut admin).await?;
        let (url, server_audit) = start_mcp_server(&mut children, bins, &workload, &root).await?;
        Ok(Stage {
            children,
            cluster: None,
            dir,
            workload,
            admin_socket,
            http_port,
            runtime_agent: admin.clone(),
            audits: vec![("agent".to_owned(), admin.clone())],
            admin,
            url,
            server_audit,
            shadow,
        })
    }

    /// Registers `exe` as client `client` where registrations go and waits until the
    /// runtime's agent holds the entry (at once on a standalone agent; in a cluster once
    /// the server's stream has brought it).
    pub(super) async fn register_client_exe(
        &mut self,
        client: &str,
        exe: &Path,
    ) -> anyhow::Result<()> {
        let entry = self
            .admin
            .create_entry(pb::CreateEntryRequest {
                client: client.into(),
                selectors: vec![
                    format!("unix:uid:{}", crate::admin::current_uid().unwrap_or(0)),
                    format!("unix:path:{}", exe.display()),
                ],
                ..Default::default()
            })
            .await?;
        let deadline = Instant::now() + PROPAGATION_PATIENCE;
        while !self
            .runtime_agent
            .list_entries()
            .await?
            .iter()
            .any(|e| e.id == entry.id)
        {
            if Instant::now() > deadline {
                bail!(
                    "entry {} did not reach the runtime's agent within {PROPAGATION_PATIENCE:?}",
                    entry.id
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

/// The agent configuration both stages start from: its data, sockets and audit file
/// under `root` (`data/`, `run/workload.sock`, `run/admin.sock`, `agent-audit.jsonl`).
pub(super) fn agent_toml(root: &Path, http_port: u16) -> String {
    format!(
        "trust_domain = \"{TRUST_DOMAIN}\"\n\
         data_dir = \"{}\"\n\
         workload_socket = \"{}\"\n\
         admin_socket = \"{}\"\n\
         http_listen = \"127.0.0.1:{http_port}\"\n\
         audit_log = \"{}\"\n",
        root.join("data").display(),
        root.join("run/workload.sock").display(),
        root.join("run/admin.sock").display(),
        root.join("agent-audit.jsonl").display(),
    )
}

/// How long a registration may take to reach an agent before the demo gives up; the
/// cluster's target is well under a second.
pub(super) const PROPAGATION_PATIENCE: Duration = Duration::from_secs(20);

/// Registers the runtime, the MCP server and a shadow runtime (a copy of the runtime
/// binary, another client with no consent) by what the kernel reports about each
/// process, through `admin` (an agent's or a server's Admin API); the shadow's path and
/// the entries' ids.
pub(super) async fn register_entries(
    admin: &mut Admin,
    bins: &Binaries,
    root: &Path,
) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let uid = crate::admin::current_uid().unwrap_or(0);
    let runtime_hash = sha256_file(&bins.runtime)?;
    let runtime = admin
        .create_entry(pb::CreateEntryRequest {
            client: CLIENT.into(),
            selectors: vec![
                format!("unix:uid:{uid}"),
                format!("unix:path:{}", bins.runtime.display()),
                format!("unix:sha256:{runtime_hash}"),
            ],
            ..Default::default()
        })
        .await?;
    say(&format!(
        "registered client {CLIENT}: uid {uid} running {} (sha256 {}…)",
        bins.runtime.display(),
        &runtime_hash[..16]
    ));
    let server = admin
        .create_entry(pb::CreateEntryRequest {
            server: SERVER.into(),
            selectors: vec![
                format!("unix:uid:{uid}"),
                format!("unix:path:{}", bins.server.display()),
            ],
            ..Default::default()
        })
        .await?;
    say(&format!(
        "registered MCP server {SERVER}: spiffe://{TRUST_DOMAIN}/mcp/{SERVER}"
    ));
    // A second runtime binary, registered as another client that has no consent.
    let shadow = root.join("shadow-runtime");
    std::fs::copy(&bins.runtime, &shadow)?;
    let shadow_entry = admin
        .create_entry(pb::CreateEntryRequest {
            client: "shadow-agent".into(),
            selectors: vec![
                format!("unix:uid:{uid}"),
                format!("unix:path:{}", shadow.display()),
            ],
            ..Default::default()
        })
        .await?;
    say("registered client shadow-agent (another runtime on the same login, with no consent)");
    Ok((shadow, vec![runtime.id, server.id, shadow_entry.id]))
}

/// Grants the story's consent through `admin`; its id.
pub(super) async fn grant(admin: &mut Admin) -> anyhow::Result<String> {
    let consent = admin
        .grant_consent(pb::GrantConsentRequest {
            client: CLIENT.into(),
            subject: SUBJECT.into(),
            server: SERVER.into(),
            scopes: vec![
                "github/tool/get_pull_request".into(),
                "github/tool/list_pulls".into(),
                "github/tool/delete_branch".into(),
            ],
            expires_at_unix: 0,
            ttl_secs: 3600,
        })
        .await?;
    say(&format!(
        "consent {}: {SUBJECT} lets {CLIENT} use get_pull_request, list_pulls, delete_branch on {SERVER} for 1h",
        consent.id
    ));
    Ok(consent.id)
}

/// Starts the example MCP server on the agent behind `workload`; its URL and decision log.
pub(super) async fn start_mcp_server(
    children: &mut Children,
    bins: &Binaries,
    workload: &Path,
    root: &Path,
) -> anyhow::Result<(String, PathBuf)> {
    let server_audit = root.join("mcp-audit.jsonl");
    let mut server = Command::new(&bins.server)
        .args([
            "--trust-domain",
            TRUST_DOMAIN,
            "--server-name",
            SERVER,
            "--listen",
            "127.0.0.1:0",
            // Task SVIDs over mTLS, and bearer tokens from its own token endpoint.
            "--accept",
            "both",
        ])
        .arg("--workload-socket")
        .arg(workload)
        .arg("--audit-log")
        .arg(&server_audit)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(root.join("mcp-server.log"))?)
        .spawn()
        .context("starting the example MCP server")?;
    let stdout = server.stdout.take().context("server stdout")?;
    children.0.push(("mcp-server".to_owned(), server));
    let addr = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            if let Some(addr) = line?.strip_prefix("listening on ") {
                let addr = addr.trim().to_owned();
                // Keep draining so the server never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                return Ok(addr);
            }
        }
        bail!("the MCP server exited before listening")
    });
    let addr = tokio::time::timeout(Duration::from_secs(30), addr)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the MCP server did not start within 30 s (see {})",
                root.join("mcp-server.log").display()
            )
        })???;
    let url = format!("https://{addr}/mcp");
    say(&format!(
        "started the example MCP server at {url}: its own SVID, task SVIDs (mTLS) or access tokens \
         from its token endpoint (bearer), Cedar policy {}",
        "protect-default-branch forbids delete_branch on main"
    ));
    Ok((url, server_audit))
}

/// Starts `program --config config` as child `name`, its log in `<root>/<name>.log`.
pub(super) fn spawn(
    children: &mut Children,
    name: &str,
    program: &Path,
    config: &Path,
    root: &Path,
) -> anyhow::Result<()> {
    let log = std::fs::File::create(root.join(format!("{name}.log")))?;
    let child = Command::new(program)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    children.0.push((name.to_owned(), child));
    Ok(())
}

/// Waits until the Admin API on `socket` answers; fails at once if a child exits.
pub(super) async fn wait_for_admin(
    socket: &Path,
    children: &mut Children,
    root: &Path,
    what: &str,
) -> anyhow::Result<Admin> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        children.check_running(root)?;
        if let Ok(mut admin) = Admin::connect(socket).await
            && admin.list_entries().await.is_ok()
        {
            return Ok(admin);
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not become ready within 30 s (logs in {})",
                root.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
