//! `tessera demo`: the whole mission, end to end, on embedded defaults.
//!
//! Starts a real `tessera-agent` (own CA, SQLite and sockets in a temporary
//! directory), registers the example runtime and MCP server by what the kernel
//! says about them, grants one consent, starts the example MCP server with its
//! Cedar policy, and runs the example agent runtime through the story below. Each
//! step's outcome is checked; the first one that does not behave as told fails the
//! demo, naming the step.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tessera_proto::tessera::v1 as pb;

use crate::admin::Admin;
use crate::narration::{detail, ok, say, step};

const EXAMPLES: &str = "\
Examples:
  # From a clone of the repository (builds what it needs, then tells the story):
  cargo run --release --bin tessera -- demo
  # Leave the agent and MCP server running afterwards, to poke at them by hand:
  cargo run --release --bin tessera -- demo --keep

After the seven steps, the Python and Node example runtimes (clients/) tell the same
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
}

const TRUST_DOMAIN: &str = "demo.tessera.dev";
const SUBJECT: &str = "alice@example.com";
const CLIENT: &str = "code-reviewer";
const SERVER: &str = "github";

/// The binaries the demo runs, found next to this executable.
struct Binaries {
    agent: PathBuf,
    server: PathBuf,
    runtime: PathBuf,
}

impl Binaries {
    fn locate(build: bool) -> anyhow::Result<Binaries> {
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
        })
    }
}

/// Child processes, killed when dropped (unless the demo keeps them).
struct Children(Vec<(&'static str, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A failed step: the demo stops and exits non-zero with this message.
fn fail(n: u32, what: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("demo step {n} did not behave as shown: {what}")
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn unix_time() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Runs the demo.
pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    say("Tessera demo: one login is not permission for every client.");
    say("An agent runtime gets its own identity, each task its own short-lived credential,");
    say("and an MCP server checks client, task, scope and policy on every single call.\n");

    let no_build = args.no_build || std::env::var_os("TESSERA_DEMO_NO_BUILD").is_some();
    let bins = Binaries::locate(!no_build)?;
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("tessera-demo-").tempdir()?;
    let root = dir.path().to_owned();
    let workload = root.join("run/workload.sock");
    let admin_socket = root.join("run/admin.sock");
    let http_port = free_port()?;
    let config = root.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"{TRUST_DOMAIN}\"\n\
             data_dir = \"{}\"\n\
             workload_socket = \"{}\"\n\
             admin_socket = \"{}\"\n\
             http_listen = \"127.0.0.1:{http_port}\"\n\
             audit_log = \"{}\"\n",
            root.join("data").display(),
            workload.display(),
            admin_socket.display(),
            root.join("agent-audit.jsonl").display(),
        ),
    )?;

    // The agent.
    let mut children = Children(Vec::new());
    let agent_log = std::fs::File::create(root.join("agent.log"))?;
    let agent = Command::new(&bins.agent)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(agent_log)
        .spawn()
        .context("starting tessera-agent")?;
    children.0.push(("tessera-agent", agent));
    let mut admin = wait_for_agent(&admin_socket, &mut children, &root).await?;
    say(&format!(
        "started tessera-agent: trust domain {TRUST_DOMAIN}, its own CA and SQLite store in {}",
        root.join("data").display()
    ));

    // Registration by what the kernel reports about each process.
    let uid = crate::admin::current_uid().unwrap_or(0);
    let runtime_hash = sha256_file(&bins.runtime)?;
    admin
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
    admin
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
    admin
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

    // The MCP server.
    let server_audit = root.join("mcp-audit.jsonl");
    let mut server = Command::new(&bins.server)
        .args([
            "--trust-domain",
            TRUST_DOMAIN,
            "--server-name",
            SERVER,
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--workload-socket")
        .arg(&workload)
        .arg("--audit-log")
        .arg(&server_audit)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(root.join("mcp-server.log"))?)
        .spawn()
        .context("starting the example MCP server")?;
    let stdout = server.stdout.take().context("server stdout")?;
    children.0.push(("mcp-server", server));
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
        "started the example MCP server at {url}: mTLS with its own SVID, Cedar policy {}",
        "protect-default-branch forbids delete_branch on main"
    ));

    // The story, told by the example runtime.
    let runtime_args = |exe: &Path| {
        let mut cmd = Command::new(exe);
        cmd.arg("--workload-socket")
            .arg(&workload)
            .args(["--url", &url, "--server", SERVER, "--subject", SUBJECT])
            .args(["--purpose", "review PR 42 in acme/api"])
            .args([
                "--scope",
                "github/tool/get_pull_request",
                "--scope",
                "github/tool/delete_branch",
            ])
            .arg("--json")
            .env("RUST_LOG", "error")
            .stdin(Stdio::null());
        cmd
    };
    let out = runtime_args(&bins.runtime)
        .args([
            "--call",
            "get_pull_request",
            r#"{"repo":"acme/api","number":42}"#,
        ])
        .args(["--call", "list_pulls", r#"{"repo":"acme/api"}"#])
        .args([
            "--call",
            "delete_branch",
            r#"{"repo":"acme/api","branch":"main"}"#,
        ])
        .args([
            "--after-end",
            "get_pull_request",
            r#"{"repo":"acme/api","number":42}"#,
        ])
        .output()
        .context("running the example agent runtime")?;
    let doc: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the runtime printed no JSON (exit {:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(err) = doc.get("error") {
        bail!(
            "the example runtime failed at {}: {}",
            err["stage"],
            err["message"]
        );
    }

    step(1, "The runtime is attested and begins a task");
    let svid = &doc["svid"];
    let claims = &svid["claims"];
    let task_id = doc["task"]["id"].as_str().unwrap_or_default().to_owned();
    let expected_id = format!("spiffe://{TRUST_DOMAIN}/client/{CLIENT}/task/{task_id}");
    if svid["spiffe_id"] != expected_id.as_str() || claims.is_null() {
        return Err(fail(1, format!("unexpected task SVID: {svid}")));
    }
    ok(&format!("task SVID {expected_id}"));
    detail(&format!(
        "on behalf of  {}",
        claims["subject"].as_str().unwrap_or("?")
    ));
    detail(&format!(
        "purpose       {}",
        claims["purpose"].as_str().unwrap_or("?")
    ));
    detail(&format!(
        "server        {}",
        claims["server"].as_str().unwrap_or("?")
    ));
    detail(&format!("scopes        {}", join(&claims["scopes"])));
    detail(&format!(
        "consent       {}",
        claims["consent_id"].as_str().unwrap_or("?")
    ));
    let expires_in = svid["not_after_unix"].as_i64().unwrap_or(0) - unix_time();
    detail(&format!(
        "expires in    {expires_in}s (serial {})",
        svid["serial"].as_str().unwrap_or("?")
    ));

    let calls = doc["calls"].as_array().cloned().unwrap_or_default();
    let call = |i: usize| calls.get(i).cloned().unwrap_or(Value::Null);

    step(2, "An allowed tool call succeeds");
    let c = call(0);
    if c["outcome"] != "ok" {
        return Err(fail(2, format!("get_pull_request was not allowed: {c}")));
    }
    ok(&format!(
        "get_pull_request → {}",
        first_line(c["text"].as_str().unwrap_or(""))
    ));

    step(3, "A tool outside the task's scopes is denied");
    let c = call(1);
    if c["outcome"] != "denied" || c["reason"] != "out_of_scope" {
        return Err(fail(3, format!("list_pulls should be out of scope: {c}")));
    }
    ok(&format!(
        "list_pulls → denied: {} (the consent allows it, but this task did not ask for it)",
        c["reason"].as_str().unwrap_or("?")
    ));

    step(
        4,
        "A destructive call the policy forbids by argument is denied",
    );
    let c = call(2);
    let ids = join(&c["policy_ids"]);
    if c["outcome"] != "denied"
        || c["reason"] != "policy_forbids"
        || !ids.contains("protect-default-branch")
    {
        return Err(fail(
            4,
            format!("delete_branch main should be forbidden: {c}"),
        ));
    }
    ok(&format!(
        "delete_branch {{branch: \"main\"}} → denied: {} by policy {ids}",
        c["reason"].as_str().unwrap_or("?")
    ));

    step(5, "A second client with no consent is denied");
    let shadow_out = runtime_args(&shadow)
        .args([
            "--call",
            "get_pull_request",
            r#"{"repo":"acme/api","number":42}"#,
        ])
        .output()
        .context("running the shadow runtime")?;
    let shadow_doc: Value = serde_json::from_slice(&shadow_out.stdout).unwrap_or(Value::Null);
    let err = &shadow_doc["error"];
    let message = err["message"].as_str().unwrap_or_default();
    if shadow_out.status.success()
        || err["stage"] != "begin_task"
        || !message.contains("no live consent")
    {
        return Err(fail(
            5,
            format!("shadow-agent should be refused at BeginTask: {shadow_doc}"),
        ));
    }
    ok(&format!("shadow-agent → BeginTask refused: {message}"));

    step(
        6,
        "The task ends; the next call on the same open connection is refused",
    );
    let after = &doc["after_end"];
    let refused_ms = after["refused_after_ms"].as_f64().unwrap_or(f64::INFINITY);
    if after["outcome"] != "denied" || after["reason"] != "revoked" || refused_ms > 1000.0 {
        return Err(fail(
            6,
            format!("the call after EndTask should be refused as revoked: {after}"),
        ));
    }
    ok(&format!(
        "EndTask, then get_pull_request on the still-open connection → denied: revoked, {refused_ms:.1} ms after EndTask"
    ));

    step(7, "The audit trail");
    let records = admin.list_audit(0, 1000).await?;
    say("   agent (tessera audit):");
    for r in &records {
        detail(&format!(
            "#{:<3} {:<18} {}",
            r.seq,
            r.kind,
            summarize(&r.detail_json)
        ));
    }
    let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    for needed in ["entry.create", "consent.grant", "task.begin", "task.end"] {
        if !kinds.contains(&needed) {
            return Err(fail(
                7,
                format!("the agent's audit log has no {needed} record"),
            ));
        }
    }
    // The task's first SVID is audited inside its task.begin record.
    if !records.iter().any(|r| {
        r.kind == "task.begin"
            && serde_json::from_str::<Value>(&r.detail_json)
                .is_ok_and(|d| d["svid"]["serial"].is_string())
    }) {
        return Err(fail(
            7,
            "the agent's task.begin record names no SVID serial",
        ));
    }
    say("   MCP server (decisions):");
    let decisions = std::fs::read_to_string(&server_audit).unwrap_or_default();
    let mut seen = 0;
    for line in decisions.lines() {
        let Ok(d) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        seen += 1;
        detail(&format!(
            "{:<7} {:<18} {:<16} {:<22} {}",
            d["decision"].as_str().unwrap_or("?"),
            d["method"].as_str().unwrap_or("?"),
            d["target"].as_str().unwrap_or(""),
            d["reason"].as_str().unwrap_or("?"),
            join(&d["policy_ids"])
        ));
    }
    if seen < 4 {
        return Err(fail(
            7,
            format!(
                "expected the server's decisions in {}",
                server_audit.display()
            ),
        ));
    }

    crate::demo_clients::run(&mut admin, CLIENT, &workload, &url, SERVER, SUBJECT).await?;

    say(&format!(
        "\nEvery step behaved as shown ({:.1} s).",
        started.elapsed().as_secs_f64()
    ));
    if args.keep {
        let dir = dir.keep();
        say("\nStill running (Ctrl-C stops both):");
        say(&format!(
            "  agent admin socket     {}",
            admin_socket.display()
        ));
        say(&format!("  workload socket        {}", workload.display()));
        say(&format!("  MCP server             {url}"));
        say(&format!(
            "  metrics                http://127.0.0.1:{http_port}/metrics"
        ));
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
    drop(children);
    Ok(())
}

async fn wait_for_agent(
    socket: &Path,
    children: &mut Children,
    root: &Path,
) -> anyhow::Result<Admin> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((_, child)) = children.0.first_mut()
            && let Some(status) = child.try_wait()?
        {
            let log = std::fs::read_to_string(root.join("agent.log")).unwrap_or_default();
            bail!("tessera-agent exited with {status}:\n{log}");
        }
        if let Ok(mut admin) = Admin::connect(socket).await
            && admin.status().await.is_ok()
        {
            return Ok(admin);
        }
        if Instant::now() > deadline {
            bail!("tessera-agent did not become ready within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.len() > 90 {
        format!("{}…", &line[..line.floor_char_boundary(90)])
    } else {
        line.to_owned()
    }
}

/// One line of an audit record's detail for the terminal.
fn summarize(detail_json: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(detail_json) else {
        return detail_json.to_owned();
    };
    let pick = |keys: &[&str]| -> Vec<String> {
        keys.iter()
            .filter_map(|k| {
                let x = v
                    .get(*k)
                    .or_else(|| v.get("entry").and_then(|e| e.get(*k)))
                    .or_else(|| v.get("task").and_then(|t| t.get(*k)))
                    .or_else(|| v.get("consent").and_then(|c| c.get(*k)))
                    .or_else(|| v.get("svid").and_then(|c| c.get(*k)))?;
                let s = match x {
                    Value::String(s) => s.clone(),
                    Value::Array(_) => join(x),
                    other => other.to_string(),
                };
                Some(format!("{k}={s}"))
            })
            .collect()
    };
    let is_server_entry = v
        .get("entry")
        .and_then(|e| e.get("kind"))
        .and_then(Value::as_str)
        == Some("server");
    let line = pick(&[
        "client",
        "server",
        "spiffe_id",
        "reason",
        "subject",
        "serial",
    ])
    .join(" ");
    if is_server_entry {
        line.replacen("client=", "server=", 1)
    } else {
        line
    }
}
