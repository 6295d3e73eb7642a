//! Shared by the `mcp*.rs` suites, `faults.rs`, `clients.rs` and the `clients`, `load`
//! and `mcp_roundtrip` benches: a real agent, the example MCP server process (its SVID
//! signed by the agent's CA), and the agent's CA key loaded into a `tessera_testca::Ca`
//! for hostile-certificate cases.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use tessera_e2e::{TRUST_DOMAIN, TestAgent, bin};
use tessera_example_agent_runtime::{
    McpConnection, TaskCredential, TaskRequest, Workload, install_crypto_provider, tls_config,
};
use tessera_proto::tessera::v1::Task;
pub use tessera_testca::{Ca, Leaf, mint};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const SUBJECT: &str = "alice@acme.corp";
pub const SERVER_BIN: &str = "tessera-example-mcp-server";
pub const RUNTIME_BIN: &str = "tessera-example-agent-runtime";

/// Registers `exe` (by uid and exact path) as `client`.
pub async fn register(agent: &TestAgent, client: &str, exe: &Path) -> anyhow::Result<()> {
    register_entry(agent, client, "", exe).await
}

/// Registers `exe` (by uid and exact path) as the MCP server `server`
/// (`spiffe://<td>/mcp/<server>`).
pub async fn register_server(agent: &TestAgent, server: &str, exe: &Path) -> anyhow::Result<()> {
    register_entry(agent, "", server, exe).await
}

async fn register_entry(
    agent: &TestAgent,
    client: &str,
    server: &str,
    exe: &Path,
) -> anyhow::Result<()> {
    agent.register_exe(client, server, exe).await.map(drop)
}

/// Grants `client` the `scopes` on `github` for [`SUBJECT`]; returns the consent id.
pub async fn grant(agent: &TestAgent, client: &str, scopes: &[&str]) -> anyhow::Result<String> {
    agent.grant(client, SUBJECT, "github", scopes).await
}

/// The agent's signing CA, read from `<data_dir>/ca/`: to mint certificates the agent
/// never issued, under its name.
pub struct AgentCa {
    pub issuer: Ca,
    pub bundle_pem: String,
    pub bundle: Vec<CertificateDer<'static>>,
}

impl AgentCa {
    pub fn load(agent: &TestAgent) -> anyhow::Result<AgentCa> {
        let dir = agent.dir.path().join("data").join("ca");
        let mut keys: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".key.pem"))
            .collect();
        keys.sort();
        let key_path = keys.first().context("no CA key in the agent's data dir")?;
        let name = key_path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".key.pem"))
            .context("key file name")?;
        let crt_pem = std::fs::read_to_string(dir.join(format!("{name}.crt.pem")))?;
        let issuer = Ca::from_pem(&crt_pem, &std::fs::read_to_string(key_path)?)?;
        let bundle = tessera_testca::pem_certs(&crt_pem);
        if bundle.is_empty() {
            bail!("no certificate in the agent's CA PEM");
        }
        Ok(AgentCa {
            issuer,
            bundle_pem: crt_pem,
            bundle,
        })
    }
}

/// A self-signed CA of another trust domain (`spiffe://evil.test`).
pub fn foreign_ca() -> anyhow::Result<(Ca, CertificateDer<'static>)> {
    let ca = Ca::root("evil.test");
    let der = ca.cert().clone();
    Ok((ca, der))
}

/// Where the example server gets its own SVID and bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// From the Workload API (the binary is registered as server `github`).
    Workload,
    /// From PEM files: an SVID minted with the agent's CA key.
    Files,
}

/// The example MCP server process. Killed on drop.
pub struct McpServer {
    pub child: Child,
    pub url: String,
    pub log: PathBuf,
    pub audit: PathBuf,
}

impl McpServer {
    /// Starts `tessera-example-mcp-server` with its trust from `trust`, revocations from
    /// the agent's feed (the binary must be registered as server `github`), plus `extra`
    /// flags; waits for its `listening on` line.
    pub async fn start(
        agent: &TestAgent,
        tag: &str,
        trust: Trust,
        extra: &[&str],
    ) -> anyhow::Result<McpServer> {
        // With an audit file, decisions are DEBUG events of `tessera_verify::audit`;
        // `audit` counts them in the log to know when the file has caught up.
        Self::start_with_log(
            agent,
            tag,
            trust,
            extra,
            "info,tessera_verify::audit=debug",
            true,
        )
        .await
    }

    /// As [`Self::start`], with `RUST_LOG=<log_filter>` for the server, and the JSON-lines
    /// audit file on or off.
    pub async fn start_with_log(
        agent: &TestAgent,
        tag: &str,
        trust: Trust,
        extra: &[&str],
        log_filter: &str,
        audit_file: bool,
    ) -> anyhow::Result<McpServer> {
        let dir = agent.dir.path().join(format!("mcp-{tag}"));
        std::fs::create_dir_all(&dir)?;
        let mut files: Vec<std::ffi::OsString> = Vec::new();
        if trust == Trust::Files {
            let ca = AgentCa::load(agent)?;
            let minted = mint(&Leaf::new(
                &format!("spiffe://{TRUST_DOMAIN}/mcp/github"),
                &ca.issuer,
            ))?;
            let (bundle, cert, key) = (
                dir.join("bundle.pem"),
                dir.join("svid.pem"),
                dir.join("svid.key.pem"),
            );
            std::fs::write(&bundle, &ca.bundle_pem)?;
            std::fs::write(&cert, &minted.cert_pem)?;
            std::fs::write(&key, &minted.key_pem)?;
            for (flag, path) in [("--bundle", bundle), ("--cert", cert), ("--key", key)] {
                files.push(flag.into());
                files.push(path.into());
            }
        }
        let log = dir.join("server.log");
        let audit = dir.join("audit.jsonl");
        if audit_file {
            files.push("--audit-log".into());
            files.push(audit.clone().into());
        }
        let mut child = Command::new(bin(SERVER_BIN))
            .arg("--trust-domain")
            .arg(TRUST_DOMAIN)
            .arg("--workload-socket")
            .arg(&agent.workload)
            .args(&files)
            .args(extra)
            .env("RUST_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .context("starting the example MCP server")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten();
        let Some(addr) = line
            .as_deref()
            .and_then(|l| l.strip_prefix("listening on "))
        else {
            bail!(
                "MCP server did not announce its port (got {line:?}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Ok(McpServer {
            url: format!("https://{}/mcp", addr.trim()),
            child,
            log,
            audit,
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One agent with the test process and the runtime binary registered as `code-reviewer`
/// (consent for every github tool but `search_code`), and a running server.
pub struct Env {
    pub agent: TestAgent,
    pub server: McpServer,
    pub consent: String,
}

pub const CONSENTED: &[&str] = &[
    "github/tool/get_pull_request",
    "github/tool/list_pulls",
    "github/tool/delete_branch",
];

impl Env {
    pub async fn start(trust: Trust, server_flags: &[&str]) -> anyhow::Result<Env> {
        let agent = TestAgent::start("").await?;
        agent.register_self("code-reviewer").await?;
        register(&agent, "code-reviewer", &bin(RUNTIME_BIN)).await?;
        register_server(&agent, "github", &bin(SERVER_BIN)).await?;
        let consent = grant(&agent, "code-reviewer", CONSENTED).await?;
        let server = McpServer::start(&agent, "main", trust, server_flags).await?;
        Ok(Env {
            agent,
            server,
            consent,
        })
    }
}

// === MCP client helpers ===

/// `tools/call` arguments from a JSON object.
pub fn args(v: Value) -> Option<serde_json::Map<String, Value>> {
    v.as_object().cloned()
}

/// Begins a task for [`SUBJECT`] on `github` with `scopes`, as this (registered) test
/// process, and picks its SVID from the Workload API stream.
pub async fn begin(env: &Env, scopes: &[&str]) -> (Workload, Task, TaskCredential) {
    install_crypto_provider();
    let w = Workload::connect(&env.agent.endpoint()).await.unwrap();
    let task = w
        .begin_task(&TaskRequest {
            server: "github".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            subject: SUBJECT.into(),
            purpose: "review PR 42".into(),
            lifetime_secs: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("BeginTask: {e}\nagent log:\n{}", env.agent.log_text()));
    let cred = w
        .task_credential(&task.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(cred.spiffe_id, task.spiffe_id);
    (w, task, cred)
}

/// An MCP session with the example server, presenting `cred`.
pub async fn connect(env: &Env, cred: &TaskCredential) -> McpConnection {
    McpConnection::connect(&env.server.url, tls_config(cred, "github").unwrap())
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nserver log:\n{}", env.server.log_text()))
}

/// The server's audit trail so far, one JSON object per decision.
///
/// The server writes the file from a background thread, a moment after each decision;
/// the same decision's `tracing` event (DEBUG beside a file; [`McpServer::start`] logs
/// it) is on its stderr synchronously. So this waits
/// (up to 5 s) until the file holds as many records as the log shows decisions.
pub fn audit(env: &Env) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let decided = env
            .server
            .log_text()
            .matches("authorization decision")
            .count();
        let events: Vec<Value> = std::fs::read_to_string(&env.server.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if events.len() >= decided || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A client config presenting `chain`/`key` to the server, trusting the agent's CA.
pub fn hostile_tls(
    ca: &AgentCa,
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> rustls::ClientConfig {
    let expected = format!("spiffe://{TRUST_DOMAIN}/mcp/github")
        .parse()
        .unwrap();
    let mut cfg =
        tessera_verify::tls::client_config(&expected, ca.bundle.clone(), chain, key).unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg
}

/// Posts one JSON-RPC message with `session` and returns (status, session id header, body).
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    session: Option<&str>,
    body: Value,
) -> (u16, Option<String>, String) {
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body);
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let sid = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, sid, resp.text().await.unwrap_or_default())
}
