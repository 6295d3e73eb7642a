//! Harness for cross-process tests: starts a real `tessera-agent` binary on
//! real unix sockets in a temporary directory, and runs the real `tessera` CLI.
//!
//! The binaries are the ones `cargo test --workspace` builds next to the test
//! executable (`target/<profile>/`). Cargo builds a package's binaries only for
//! that package's own integration tests, so every package whose binary is started
//! here (agent, CLI, both examples) has an integration test of its own under its
//! `tests/`; a new binary used here needs one too. `cargo test -p tessera-e2e` alone does not
//! rebuild them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tessera_proto::tessera::v1::admin_client::AdminClient;
use tessera_proto::tessera::v1::{
    CreateEntryRequest, Entry, GetStatusRequest, GrantConsentRequest,
};
use tonic::transport::Channel;

pub mod clients;
pub mod interop;

/// Trust domain used by every test agent.
pub const TRUST_DOMAIN: &str = "e2e.test";

/// Path of a binary built by this workspace.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run the tests with `cargo test --workspace` so the binaries are built",
        path.display()
    );
    path
}

/// A running agent in its own temporary directory. Killed on drop.
#[derive(Debug)]
pub struct TestAgent {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// The agent process.
    pub child: Option<Child>,
    /// Config file the agent was started with.
    pub config: PathBuf,
    /// Workload API socket.
    pub workload: PathBuf,
    /// Admin API socket.
    pub admin: PathBuf,
    /// Health and metrics address.
    pub http: SocketAddr,
    /// Where the agent's stderr goes.
    pub log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl TestAgent {
    /// Starts an agent with default test settings plus `extra_toml`.
    pub async fn start(extra_toml: &str) -> anyhow::Result<TestAgent> {
        let dir = tempfile::tempdir()?;
        let sock_dir = dir.path().join("run");
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let config = dir.path().join("agent.toml");
        let toml = format!(
            "trust_domain = \"{TRUST_DOMAIN}\"\n\
             data_dir = \"{}\"\n\
             workload_socket = \"{}\"\n\
             admin_socket = \"{}\"\n\
             http_listen = \"{http}\"\n\
             {extra_toml}\n",
            dir.path().join("data").display(),
            sock_dir.join("workload.sock").display(),
            sock_dir.join("admin.sock").display(),
        );
        std::fs::write(&config, toml)?;
        let mut agent = TestAgent {
            workload: sock_dir.join("workload.sock"),
            admin: sock_dir.join("admin.sock"),
            log: dir.path().join("agent.log"),
            dir,
            child: None,
            config,
            http,
        };
        agent.spawn().await?;
        Ok(agent)
    }

    /// Starts (or restarts) the agent process and waits until it answers.
    pub async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(bin("tessera-agent"))
            .arg("--config")
            .arg(&self.config)
            // TESSERA_E2E_AGENT_LOG raises the agent's log level while investigating.
            .env(
                "RUST_LOG",
                std::env::var("TESSERA_E2E_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("TESSERA_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting tessera-agent")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "tessera-agent exited with {status} during start-up:\n{}",
                    self.log_text()
                );
            }
            if let Ok(mut admin) = self.admin_client().await
                && admin.get_status(GetStatusRequest {}).await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("tessera-agent did not become ready:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The agent process's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's resident memory now and at its peak, from `/proc/<pid>/status`.
    pub fn memory(&self) -> anyhow::Result<ProcMemory> {
        proc_memory(self.pid().context("agent not running")?)
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `unix:///…` endpoint for SPIFFE clients.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.workload.display())
    }

    /// A gRPC channel over a unix socket.
    pub async fn channel(path: &Path) -> anyhow::Result<Channel> {
        Ok(tessera_proto::connect_unix(tessera_proto::unix_endpoint(), path).await?)
    }

    /// An Admin API client.
    pub async fn admin_client(&self) -> anyhow::Result<AdminClient<Channel>> {
        Ok(AdminClient::new(Self::channel(&self.admin).await?))
    }

    /// Starts an agent with default test settings and registers `exe` (a stock
    /// client's interpreter or VM, by uid and exact path) as `client`.
    pub async fn with_client(client: &str, exe: &Path) -> anyhow::Result<TestAgent> {
        let agent = TestAgent::start("").await?;
        agent.register_exe(client, "", exe).await?;
        Ok(agent)
    }

    /// The workload socket's path, as stock clients take it.
    pub fn workload_path(&self) -> String {
        self.workload.display().to_string()
    }

    /// Registers this test process (its uid and exact executable) as `client`.
    pub async fn register_self(&self, client: &str) -> anyhow::Result<Entry> {
        self.register_exe(client, "", &std::env::current_exe()?)
            .await
    }

    /// Registers the program `exe` (by uid and exact path) as `client`, or as the MCP
    /// server `server` (`spiffe://<td>/mcp/<server>`) when `client` is empty.
    pub async fn register_exe(
        &self,
        client: &str,
        server: &str,
        exe: &Path,
    ) -> anyhow::Result<Entry> {
        let exe = std::fs::canonicalize(exe)?;
        let uid = nix::unistd::geteuid();
        Ok(self
            .admin_client()
            .await?
            .create_entry(CreateEntryRequest {
                client: client.into(),
                selectors: vec![
                    format!("unix:uid:{uid}"),
                    format!("unix:path:{}", exe.display()),
                ],
                svid_ttl_secs: 0,
                server: server.into(),
            })
            .await?
            .into_inner())
    }

    /// Grants `client` the `scopes` on `server` for `subject`, for an hour; returns
    /// the consent id.
    pub async fn grant(
        &self,
        client: &str,
        subject: &str,
        server: &str,
        scopes: &[&str],
    ) -> anyhow::Result<String> {
        Ok(self
            .admin_client()
            .await?
            .grant_consent(GrantConsentRequest {
                client: client.into(),
                subject: subject.into(),
                server: server.into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                expires_at_unix: 0,
                ttl_secs: 3600,
            })
            .await?
            .into_inner()
            .id)
    }

    /// Runs the `tessera` CLI against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("tessera"))
            .arg("--admin-socket")
            .arg(&self.admin)
            .arg("--socket")
            .arg(self.endpoint())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running tessera")
    }

    /// SIGKILLs the agent (no cleanup) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs the agent and waits up to `timeout` for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("agent not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                bail!("agent ignored SIGTERM for {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// For benches: builds `bins` (package, binary) with the bench's own profile so
/// [`bin`] finds current binaries. `TESSERA_BENCH_NO_BUILD=1` skips the build.
pub fn ensure_built(bins: &[(&str, &str)]) {
    if std::env::var_os("TESSERA_BENCH_NO_BUILD").is_some() {
        for (_, binary) in bins {
            bin(binary);
        }
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    let release = exe
        .parent()
        .and_then(Path::parent)
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "release");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.arg("build").current_dir(env!("CARGO_MANIFEST_DIR"));
    for (package, binary) in bins {
        cmd.args(["-p", package, "--bin", binary]);
    }
    if release {
        cmd.arg("--release");
    }
    eprintln!("building: {cmd:?}");
    let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
    for (_, binary) in bins {
        bin(binary);
    }
    if !ok {
        eprintln!("warning: the build failed; benchmarking the binaries that exist");
    }
}

/// Latency samples with percentiles, for benches.
#[derive(Debug, Default, Clone)]
pub struct Samples(pub Vec<Duration>);

impl Samples {
    /// The `p` quantile (0.0..=1.0), nearest-rank.
    pub fn pct(&self, p: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort_unstable();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }

    /// The mean.
    pub fn mean(&self) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        self.0.iter().sum::<Duration>() / u32::try_from(self.0.len()).unwrap_or(u32::MAX)
    }
}

/// Resident memory of a process in bytes, as the kernel reports it in `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcMemory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the most it has been resident since it started.
    pub peak_rss: u64,
}

/// Reads `VmRSS` and `VmHWM` of `pid`.
pub fn proc_memory(pid: u32) -> anyhow::Result<ProcMemory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = |key: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
        let n: u64 = line
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("{key}{line}"))?;
        Ok(n * 1024)
    };
    Ok(ProcMemory {
        rss: kib("VmRSS:")?,
        peak_rss: kib("VmHWM:")?,
    })
}

/// CPU time (user + system) `pid` has used so far, from `/proc/<pid>/stat`.
pub fn proc_cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted after its last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no ')' in /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .with_context(|| format!("/proc/{pid}/stat: field {}", i + 3))?
            .parse()?)
    };
    // The kernel reports these in USER_HZ, which is 100 on every Linux ABI.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// Number of open file descriptors of `pid`.
pub fn proc_open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count())
}
