//! The real `tessera-gateway` binary in front of stdio MCP servers no one here wrote:
//! the npm reference servers `@modelcontextprotocol/server-filesystem` and
//! `@modelcontextprotocol/server-everything` (pinned in `tests/interop/node/package.json`
//! and its lock, installed with `npm ci` under `target/`), run and supervised by the
//! gateway as its child. A real agent issues the gateway's SVID and the callers' task SVIDs; the
//! caller is rmcp's client over mTLS (a 2025-11-25 session, whose `initialize` the bridge
//! answers from the child's cached result).
//!
//! Without `node`/`npm` the tests are skipped with a message, unless
//! `TESSERA_REQUIRE_INTEROP=1` (CI) makes that a failure.

#[path = "../../../tests/tests/support/mcp.rs"]
#[allow(unused_imports)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use support::{SUBJECT, args};
use tessera_e2e::{TRUST_DOMAIN, TestAgent, bin};
use tessera_example_agent_runtime::{
    CallOutcome, McpConnection, TaskCredential, TaskRequest, Workload, install_crypto_provider,
    tls_config,
};
use tessera_proto::tessera::v1::Task;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const GATEWAY_BIN: &str = "tessera-gateway";

/// Which tools the client may use at all; writes only under a `drafts` directory and
/// never through a path that climbs out of it (a policy on the call's arguments; a
/// call without a path is the server's to refuse, so `tools/list` still shows the tool).
const POLICIES: &str = r#"
@id("reference-tools")
permit (
  principal in Client::"code-reviewer",
  action == Action::"tools/call",
  resource
);

@id("writes-only-to-drafts")
forbid (
  principal,
  action == Action::"tools/call",
  resource == Tool::"write_file"
)
when {
  context.arguments has path &&
  (!(context.arguments.path like "*/drafts/*") || context.arguments.path like "*..*")
};
"#;

const SCHEMA: &str = r#"
entity Client;
entity Task in [Client] = {
  client: String, subject: String, purpose: String, consent_id: String,
  scopes: Set<String>, deadline: Long,
};
entity Tool;
entity Resource;
entity Prompt;
type Args = { path?: String };
type Ctx = { now: Long, arguments: Args };
action "tools/call" appliesTo { principal: [Task], resource: [Tool], context: Ctx };
action "resources/read" appliesTo { principal: [Task], resource: [Resource], context: Ctx };
action "prompts/get" appliesTo { principal: [Task], resource: [Prompt], context: Ctx };
"#;

/// Which reference server the gateway runs.
#[derive(Clone, Copy)]
enum Server {
    /// `server-filesystem <root>`, as MCP server `fs`.
    Filesystem,
    /// `server-everything stdio`, as MCP server `everything`.
    Everything,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Filesystem => "fs",
            Server::Everything => "everything",
        }
    }
}

/// The gateway process, killed on drop; its stderr in a file.
struct Proc {
    child: Child,
    lines: Vec<String>,
    log: PathBuf,
}

impl Proc {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// An agent and the gateway in front of a reference server.
struct Gw {
    agent: TestAgent,
    gateway: Proc,
    server: Server,
    url: String,
    /// What the filesystem server serves.
    root: PathBuf,
}

impl Gw {
    /// `None` (after saying why) when there is no Node toolchain and CI did not require one.
    async fn start(server: Server, consented: &[&str]) -> Option<Gw> {
        let node = tessera_e2e::interop::grpc_js()?;
        Some(Self::try_start(server, consented, &node).await.unwrap())
    }

    async fn try_start(
        server: Server,
        consented: &[&str],
        node: &tessera_e2e::interop::GrpcJs,
    ) -> anyhow::Result<Gw> {
        install_crypto_provider();
        let agent = TestAgent::start("").await?;
        agent.register_self("code-reviewer").await?;
        agent
            .register_exe("", server.name(), &bin(GATEWAY_BIN))
            .await?;
        agent
            .grant("code-reviewer", SUBJECT, server.name(), consented)
            .await?;
        let dir = agent.dir.path().to_owned();
        let root = dir.join("served");
        std::fs::create_dir_all(root.join("drafts"))?;
        std::fs::write(root.join("hello.txt"), "hello from the test\n")?;
        // The filesystem server resolves symlinks; give it the canonical root.
        let root = std::fs::canonicalize(&root)?;
        std::fs::write(dir.join("policies.cedar"), POLICIES)?;
        std::fs::write(dir.join("policies.cedarschema"), SCHEMA)?;
        let package = |name: &str| {
            node.node_modules()
                .join("@modelcontextprotocol")
                .join(name)
                .join("dist/index.js")
        };
        let server_args = match server {
            Server::Filesystem => vec![
                package("server-filesystem").display().to_string(),
                root.display().to_string(),
            ],
            Server::Everything => vec![
                package("server-everything").display().to_string(),
                "stdio".to_owned(),
            ],
        };
        let config = dir.join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "trust_domain = \"{TRUST_DOMAIN}\"\n\
                 server_name = \"{}\"\n\
                 workload_socket = \"{}\"\n\
                 listen = \"127.0.0.1:0\"\n\
                 ops_listen = \"127.0.0.1:0\"\n\
                 policies = \"{}\"\n\
                 schema = \"{}\"\n\
                 [upstream.stdio]\n\
                 command = {}\n\
                 args = {}\n\
                 restart_backoff = \"100ms\"\n",
                server.name(),
                agent.workload.display(),
                dir.join("policies.cedar").display(),
                dir.join("policies.cedarschema").display(),
                json!(node.node.display().to_string()),
                json!(server_args),
            ),
        )?;
        let log = dir.join("gateway.log");
        let mut child = Command::new(bin(GATEWAY_BIN))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()?;
        let mut out = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut lines = Vec::new();
        while lines.len() < 2 {
            match tokio::time::timeout(Duration::from_secs(60), out.next_line()).await {
                Ok(Ok(Some(l))) => lines.push(l),
                _ => bail!(
                    "the gateway did not announce itself (got {lines:?}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
        let gateway = Proc { child, lines, log };
        let addr = gateway
            .lines
            .iter()
            .find_map(|l| l.strip_prefix("listening on "))
            .context("no listening line")?
            .trim()
            .to_owned();
        Ok(Gw {
            url: format!("https://{addr}/mcp"),
            agent,
            gateway,
            server,
            root,
        })
    }

    /// Begins a task with `scopes` as this (registered) test process.
    async fn begin(&self, scopes: &[&str]) -> (Workload, Task, TaskCredential) {
        let w = Workload::connect(&self.agent.endpoint()).await.unwrap();
        let task = w
            .begin_task(&TaskRequest {
                server: self.server.name().into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                subject: SUBJECT.into(),
                purpose: "read the docs".into(),
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

    async fn connect(&self, cred: &TaskCredential) -> McpConnection {
        McpConnection::connect(&self.url, tls_config(cred, self.server.name()).unwrap())
            .await
            .unwrap_or_else(|e| panic!("{e:#}\ngateway log:\n{}", self.gateway.log_text()))
    }

    /// The pid of the gateway's child (the node process running the reference server).
    fn child_pid(&self) -> Option<u32> {
        let gateway = self.gateway.child.id()?;
        std::fs::read_dir("/proc").ok()?.find_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid …`: comm may hold spaces, so split after the last ')'.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == gateway && !stat.contains(") Z ")).then_some(pid)
        })
    }
}

fn path_args(path: &Path) -> Option<serde_json::Map<String, Value>> {
    args(json!({"path": path.display().to_string()}))
}

const FS_CONSENTED: &[&str] = &[
    "fs/tool/read_text_file",
    "fs/tool/write_file",
    "fs/tool/list_directory",
];

#[tokio::test]
async fn filesystem_server_reads_pass_and_out_of_scope_and_forbidden_writes_are_refused() {
    let Some(gw) = Gw::start(Server::Filesystem, FS_CONSENTED).await else {
        return;
    };
    let (_w, _task, cred) = gw
        .begin(&["fs/tool/read_text_file", "fs/tool/write_file"])
        .await;
    let conn = gw.connect(&cred).await;

    // tools/list: the server's fourteen tools, filtered to the two the task may use.
    let mut tools = conn.list_tools().await.unwrap();
    tools.sort();
    assert_eq!(tools, ["read_text_file", "write_file"]);

    // An allowed read under the allowed root: the file's content.
    let out = conn
        .call("read_text_file", path_args(&gw.root.join("hello.txt")))
        .await;
    assert_eq!(
        out,
        CallOutcome::Ok {
            text: "hello from the test\n".into()
        },
        "gateway log:\n{}",
        gw.gateway.log_text()
    );

    // Consented, but not in this task's scopes.
    let out = conn.call("list_directory", path_args(&gw.root)).await;
    assert_eq!(out.denial_reason(), Some("out_of_scope"), "{out:?}");

    // In scope, forbidden by the policy on the path argument: nothing is written.
    for path in [
        gw.root.join("notes.txt"),
        gw.root.join("drafts/../escaped.txt"),
    ] {
        let out = conn
            .call(
                "write_file",
                args(json!({"path": path.display().to_string(), "content": "x"})),
            )
            .await;
        match &out {
            CallOutcome::Denied {
                reason, policy_ids, ..
            } => {
                assert_eq!(reason, "policy_forbids");
                assert_eq!(policy_ids, &["writes-only-to-drafts"]);
            }
            other => panic!(
                "expected a policy denial for {}, got {other:?}",
                path.display()
            ),
        }
    }
    assert!(!gw.root.join("notes.txt").exists());
    assert!(!gw.root.join("escaped.txt").exists());

    // The same tool where the policy allows it writes the file.
    let draft = gw.root.join("drafts/review.md");
    let out = conn
        .call(
            "write_file",
            args(json!({"path": draft.display().to_string(), "content": "LGTM"})),
        )
        .await;
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&draft).unwrap(), "LGTM");

    // The child's stderr is in the gateway's log, under its name.
    let log = gw.gateway.log_text();
    assert!(
        log.contains("Secure MCP Filesystem Server running on stdio"),
        "{log}"
    );
    conn.close().await;
}

#[tokio::test]
async fn a_call_on_an_open_connection_after_end_task_is_refused() {
    let Some(gw) = Gw::start(Server::Filesystem, FS_CONSENTED).await else {
        return;
    };
    let (w, task, cred) = gw.begin(&["fs/tool/read_text_file"]).await;
    let conn = gw.connect(&cred).await;
    let hello = || path_args(&gw.root.join("hello.txt"));
    assert!(conn.call("read_text_file", hello()).await.is_ok());
    w.end_task(&task.id).await.unwrap();
    // The revocation reaches the gateway through the agent's feed: wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = conn.call("read_text_file", hello()).await;
        if !out.is_ok() || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(out.denial_reason(), Some("revoked"), "{out:?}");
}

#[tokio::test]
async fn a_killed_server_is_restarted_and_calls_work_again() {
    let Some(gw) = Gw::start(Server::Filesystem, FS_CONSENTED).await else {
        return;
    };
    let (_w, _task, cred) = gw.begin(&["fs/tool/read_text_file"]).await;
    let conn = gw.connect(&cred).await;
    let hello = || path_args(&gw.root.join("hello.txt"));
    assert!(conn.call("read_text_file", hello()).await.is_ok());

    let first = gw
        .child_pid()
        .expect("the gateway runs the server as its child");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // A new child comes up (after the backoff) and the same open connection works again;
    // meanwhile calls are answered with an error, never left hanging.
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = tokio::time::timeout(
            Duration::from_secs(15),
            conn.call("read_text_file", hello()),
        )
        .await
        .expect("a call while the server restarts is answered");
        if out.is_ok() || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        out.is_ok(),
        "{out:?}\ngateway log:\n{}",
        gw.gateway.log_text()
    );
    let second = gw.child_pid().expect("a new child");
    assert_ne!(first, second);
    let log = gw.gateway.log_text();
    assert!(log.contains("restarting in"), "{log}");
    conn.close().await;
}

#[tokio::test]
async fn everything_server_lists_only_allowed_tools_and_its_child_sees_no_gateway_secrets() {
    let Some(gw) = Gw::start(
        Server::Everything,
        &["everything/tool/echo", "everything/tool/get-env"],
    )
    .await
    else {
        return;
    };
    let (_w, _task, cred) = gw
        .begin(&["everything/tool/echo", "everything/tool/get-env"])
        .await;
    let conn = gw.connect(&cred).await;
    let mut tools = conn.list_tools().await.unwrap();
    tools.sort();
    assert_eq!(tools, ["echo", "get-env"]);

    let out = conn
        .call("echo", args(json!({"message": "through the gateway"})))
        .await;
    let CallOutcome::Ok { text } = &out else {
        panic!("{out:?}\ngateway log:\n{}", gw.gateway.log_text());
    };
    assert!(text.contains("through the gateway"), "{text}");

    let out = conn.call("get-sum", args(json!({"a": 1, "b": 2}))).await;
    assert_eq!(out.denial_reason(), Some("out_of_scope"), "{out:?}");

    // The child starts from an empty environment: the gateway's own (RUST_LOG here,
    // credentials in production) is not passed on.
    let out = conn.call("get-env", None).await;
    let CallOutcome::Ok { text } = &out else {
        panic!("{out:?}");
    };
    assert!(text.contains("PATH"), "{text}");
    assert!(!text.contains("RUST_LOG"), "{text}");
    conn.close().await;
}
