//! Shared by `tests/http_upstream.rs` and `benches/gateway.rs`: a real agent, an upstream
//! (the Python MCP SDK's, `tests/interop/python/upstream_server.py`, or for the bench
//! rmcp's in this process, [`rmcp_upstream`]) and the real `tessera-gateway` binary in
//! front of it, plus raw MCP requests over mTLS.
#![allow(dead_code)]

#[path = "rmcp_upstream.rs"]
pub mod rmcp_upstream;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tessera_e2e::{TRUST_DOMAIN, TestAgent, bin};
use tessera_example_agent_runtime::{
    McpConnection, TaskCredential, TaskRequest, Workload, http_client, install_crypto_provider,
    tls_config,
};
use tessera_proto::tessera::v1::Task;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The user every task acts for.
pub const SUBJECT: &str = "alice@acme.corp";
/// The scopes the test client holds consent for (every tool but `search_code`).
pub const CONSENTED: &[&str] = &[
    "github/tool/get_pull_request",
    "github/tool/list_pulls",
    "github/tool/delete_branch",
];

pub const GATEWAY_BIN: &str = "tessera-gateway";
const POLICIES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/mcp-server/policies/github.cedar"
);
const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/mcp-server/policies/github.cedarschema"
);
const UPSTREAM_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/interop/python/upstream_server.py"
);
pub const V2026: &str = "2026-07-28";

/// A child process with its announced address, killed on drop.
pub struct Proc {
    pub child: Child,
    pub lines: Vec<String>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd`, stderr to `log`, and waits for `want` lines on stdout.
    pub async fn start(mut cmd: Command, log: PathBuf, want: usize) -> anyhow::Result<Proc> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()?;
        let mut out = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut lines = Vec::new();
        while lines.len() < want {
            match tokio::time::timeout(Duration::from_secs(60), out.next_line()).await {
                Ok(Ok(Some(l))) => lines.push(l),
                _ => bail!(
                    "{cmd:?} did not announce itself (got {lines:?}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        }
        // Keep reading stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
        Ok(Proc { child, lines, log })
    }

    pub fn addr(&self, prefix: &str) -> String {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {:?}", self.lines))
            .trim()
            .to_owned()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Which MCP server the gateway fronts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// The Python MCP SDK's server, a process of its own; with `log_requests` it writes
    /// every request it receives to `Gw::requests_log`.
    Python { log_requests: bool },
    /// rmcp's server in this process (fast; logs nothing).
    Rmcp,
}

/// A running upstream, stopped on drop.
pub enum Upstream {
    Python(Box<Proc>),
    Rmcp(tokio::task::JoinHandle<()>),
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Upstream::Rmcp(task) = self {
            task.abort();
        }
    }
}

/// An agent, an upstream and the gateway in front of it.
pub struct Gw {
    pub agent: TestAgent,
    pub upstream: Upstream,
    pub gateway: Proc,
    /// `https://<gateway>/mcp`
    pub url: String,
    /// `http://<ops listener>`
    pub ops: String,
    /// `http://<upstream>/mcp`, for calling it directly.
    pub upstream_url: String,
    /// The gateway's configuration file.
    pub config: PathBuf,
    pub requests_log: PathBuf,
    pub audit: PathBuf,
}

impl Gw {
    pub async fn start() -> Gw {
        Self::try_start("", true).await.unwrap()
    }

    /// Starts everything with the Python upstream; `extra_toml` goes into the gateway's
    /// file (before `[upstream]`); without `log_requests` the upstream logs nothing.
    pub async fn try_start(extra_toml: &str, log_requests: bool) -> anyhow::Result<Gw> {
        Self::try_start_with(extra_toml, UpstreamKind::Python { log_requests }).await
    }

    /// Starts everything with the upstream `kind`.
    pub async fn try_start_with(extra_toml: &str, kind: UpstreamKind) -> anyhow::Result<Gw> {
        install_crypto_provider();
        let agent = TestAgent::start("").await?;
        agent.register_self("code-reviewer").await?;
        agent.register_exe("", "github", &bin(GATEWAY_BIN)).await?;
        agent
            .grant("code-reviewer", SUBJECT, "github", CONSENTED)
            .await?;
        let dir = agent.dir.path().to_owned();
        let requests_log = dir.join("upstream-requests.jsonl");
        let (upstream, upstream_addr) = match kind {
            UpstreamKind::Python { log_requests } => {
                let python = tessera_e2e::interop::python().context("the interop venv")?;
                let mut up = Command::new(&python);
                up.arg(UPSTREAM_PY);
                if log_requests {
                    up.arg(&requests_log);
                } else {
                    up.arg("-");
                }
                let proc = Proc::start(up, dir.join("upstream.log"), 1).await?;
                let addr = proc.addr("listening on ");
                (Upstream::Python(Box::new(proc)), addr)
            }
            UpstreamKind::Rmcp => {
                let (addr, task) = rmcp_upstream::start().await?;
                (Upstream::Rmcp(task), addr.to_string())
            }
        };
        let audit = dir.join("gateway-audit.jsonl");
        let config = dir.join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "trust_domain = \"{TRUST_DOMAIN}\"\n\
                 server_name = \"github\"\n\
                 workload_socket = \"{}\"\n\
                 listen = \"127.0.0.1:0\"\n\
                 ops_listen = \"127.0.0.1:0\"\n\
                 policies = \"{POLICIES}\"\n\
                 schema = \"{SCHEMA}\"\n\
                 audit_log = \"{}\"\n\
                 {extra_toml}\n\
                 [upstream]\n\
                 http = \"http://{upstream_addr}/mcp\"\n",
                agent.workload.display(),
                audit.display()
            ),
        )?;
        let mut gw = Command::new(bin(GATEWAY_BIN));
        gw.arg("--config").arg(&config).env("RUST_LOG", "info");
        let gateway = Proc::start(gw, dir.join("gateway.log"), 2).await?;
        let upstream_url = format!("http://{upstream_addr}/mcp");
        let url = format!("https://{}/mcp", gateway.addr("listening on "));
        let ops = format!("http://{}", gateway.addr("ops on "));
        Ok(Gw {
            agent,
            upstream,
            gateway,
            url,
            ops,
            upstream_url,
            config,
            requests_log,
            audit,
        })
    }

    /// Begins a task with `scopes` as this (registered) test process.
    pub async fn begin(&self, scopes: &[&str]) -> (Workload, Task, TaskCredential) {
        let w = Workload::connect(&self.agent.endpoint()).await.unwrap();
        let task = w
            .begin_task(&TaskRequest {
                server: "github".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                subject: SUBJECT.into(),
                purpose: "review PR 42".into(),
                lifetime_secs: 0,
            })
            .await
            .unwrap();
        let cred = w
            .task_credential(&task.id, Duration::from_secs(5))
            .await
            .unwrap();
        (w, task, cred)
    }

    pub async fn connect(&self, cred: &TaskCredential) -> McpConnection {
        McpConnection::connect(&self.url, tls_config(cred, "github").unwrap())
            .await
            .unwrap_or_else(|e| panic!("{e:#}\ngateway log:\n{}", self.gateway.log_text()))
    }

    /// Every request the upstream received so far.
    pub fn upstream_requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.requests_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Whether the upstream ever received a body containing `needle`.
    pub fn upstream_saw(&self, needle: &str) -> bool {
        self.upstream_requests()
            .iter()
            .any(|r| r["body"].as_str().is_some_and(|b| b.contains(needle)))
    }
}

/// A raw HTTP client presenting `cred`.
pub fn raw(cred: &TaskCredential) -> reqwest::Client {
    http_client(tls_config(cred, "github").unwrap()).unwrap()
}

/// `_meta` of a 2026-07-28 stateless request.
pub fn meta2026() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": V2026,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "gateway-test", "version": "1"}
    })
}

/// POSTs `body` (a JSON value or raw bytes) with `headers`; (status, content type, body).
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, String, String) {
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, ctype, resp.text().await.unwrap_or_default())
}

/// A 2026-07-28 stateless request of `method` naming `name`, with matching headers
/// unless `headers` says otherwise.
pub async fn post2026(
    http: &reqwest::Client,
    url: &str,
    method: &str,
    params: Value,
    headers: &[(&str, &str)],
) -> (u16, String, Value) {
    let mut p = params;
    p["_meta"] = meta2026();
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": p});
    let mut h = vec![("mcp-protocol-version", V2026)];
    h.extend_from_slice(headers);
    let (status, ctype, text) = post(http, url, &h, body.to_string().into_bytes()).await;
    (status, ctype, json_of(&text))
}

/// The JSON-RPC message of a JSON body, or of the one `data:` event of an SSE body.
pub fn json_of(text: &str) -> Value {
    if let Ok(v) = serde_json::from_str(text) {
        return v;
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("id").is_some())
        .unwrap_or(Value::Null)
}

pub fn tool_names(msg: &Value) -> Vec<String> {
    let mut names: Vec<String> = msg["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {msg}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

impl Gw {
    /// A second gateway on the same agent and upstream, with `flags` (the bench's
    /// `--dangerous-pass-through`); its `https://…/mcp` URL.
    pub async fn another_gateway(
        &self,
        tag: &str,
        flags: &[&str],
    ) -> anyhow::Result<(Proc, String)> {
        let mut gw = Command::new(bin(GATEWAY_BIN));
        gw.arg("--config")
            .arg(&self.config)
            .args(flags)
            .env("RUST_LOG", "warn");
        let log = self.agent.dir.path().join(format!("gateway-{tag}.log"));
        let p = Proc::start(gw, log, 2).await?;
        let url = format!("https://{}/mcp", p.addr("listening on "));
        Ok((p, url))
    }
}
