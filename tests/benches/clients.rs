//! BeginTask → first MCP call answered, from Tessera's Python and Node clients and from
//! the Rust example runtime, against one real agent and the example MCP server in the
//! same run: p50/p99/max per runtime.
//!
//! Each sample is one task, timed inside its runtime (interpreter start-up excluded):
//! BeginTask, the task's SVID in hand, an MCP session over mTLS (TLS handshake and
//! `initialize`), one `tools/call` answered. The Python and Node clients take the SVID
//! from BeginTask's answer; the Rust example picks it from the Workload API stream by
//! hint, as any SPIFFE client could. EndTask is not timed.
//!
//!     cargo bench -p tessera-e2e --bench clients [-- --iterations 40]
//!
//! Python or Node missing: that row says so (CI sets TESSERA_REQUIRE_INTEROP=1 for the
//! tests, not for this bench).

#[path = "../tests/support/mcp.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{CONSENTED, McpServer, SERVER_BIN, SUBJECT, Trust, grant, register_server};
use tessera_e2e::clients::{node, python, python_client_dir, typescript_client_dir};
use tessera_e2e::{Samples, TestAgent, ensure_built};
use tessera_example_agent_runtime::{
    McpConnection, TaskRequest, Workload, install_crypto_provider, tls_config,
};

fn iterations() -> usize {
    let mut args = std::env::args().skip_while(|a| a != "--iterations");
    args.next();
    args.next()
        .or_else(|| std::env::var("TESSERA_BENCH_ITERATIONS").ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

fn row(name: &str, s: &Samples) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {name:<28} | {:>3} | {:>8.2} | {:>8.2} | {:>8.2} |",
        s.0.len(),
        ms(s.pct(0.50)),
        ms(s.pct(0.99)),
        ms(s.pct(1.0))
    );
}

fn from_json(out: &std::process::Output, what: &str) -> Samples {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "{what} printed no samples ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    Samples(
        doc["samples_ms"]
            .as_array()
            .expect("samples_ms")
            .iter()
            .map(|v| Duration::from_secs_f64(v.as_f64().unwrap_or(0.0) / 1000.0))
            .collect(),
    )
}

#[tokio::main]
async fn main() {
    let n = iterations();
    ensure_built(&[
        ("tessera-agent", "tessera-agent"),
        ("tessera-example-mcp-server", SERVER_BIN),
    ]);
    let py = python();
    let nodejs = node();
    let agent = TestAgent::start("").await.expect("agent");
    // All three as the client the example server's Cedar policy lets call tools.
    agent
        .register_self("code-reviewer")
        .await
        .expect("register");
    register_server(&agent, "github", &tessera_e2e::bin(SERVER_BIN))
        .await
        .expect("register server");
    grant(&agent, "code-reviewer", CONSENTED)
        .await
        .expect("grant");
    if let Some(p) = &py {
        agent
            .register_exe("code-reviewer", "", p)
            .await
            .expect("register python");
    }
    if let Some(p) = &nodejs {
        agent
            .register_exe("code-reviewer", "", p)
            .await
            .expect("register node");
    }
    let server = McpServer::start_with_log(&agent, "bench", Trust::Workload, &[], "warn", false)
        .await
        .expect("MCP server");
    let socket = agent.workload.display().to_string();
    let n_s = n.to_string();
    let common = [
        "--socket",
        socket.as_str(),
        "--url",
        server.url.as_str(),
        "--subject",
        SUBJECT,
        "--iterations",
        n_s.as_str(),
    ];

    // Rust, in this process: the example runtime's library.
    install_crypto_provider();
    let w = Workload::connect(&agent.endpoint())
        .await
        .expect("workload");
    let mut rust = Samples::default();
    for i in 0..n + 3 {
        let started = Instant::now();
        let task = w
            .begin_task(&TaskRequest {
                server: "github".into(),
                scopes: vec!["github/tool/get_pull_request".into()],
                subject: SUBJECT.into(),
                purpose: "bench".into(),
                lifetime_secs: 0,
            })
            .await
            .expect("BeginTask");
        let cred = w
            .task_credential(&task.id, Duration::from_secs(5))
            .await
            .expect("task SVID");
        let conn = McpConnection::connect(&server.url, tls_config(&cred, "github").unwrap())
            .await
            .expect("MCP session");
        let out = conn
            .call(
                "get_pull_request",
                serde_json::from_value(json!({"repo": "acme/api", "number": 1})).ok(),
            )
            .await;
        let elapsed = started.elapsed();
        assert!(out.is_ok(), "{out:?}");
        conn.close().await;
        w.end_task(&task.id).await.expect("EndTask");
        if i >= 3 {
            rust.0.push(elapsed);
        }
    }

    let python_samples = py.as_ref().map(|p| {
        let out = Command::new(p)
            .arg(python_client_dir().join("examples/bench.py"))
            .args(common)
            .stdin(Stdio::null())
            .output()
            .expect("running the Python bench");
        from_json(&out, "the Python client")
    });
    let node_samples = nodejs.as_ref().map(|p| {
        let out = Command::new(p)
            .arg(typescript_client_dir().join("dist/examples/bench.js"))
            .args(common)
            .stdin(Stdio::null())
            .output()
            .expect("running the Node bench");
        from_json(&out, "the Node client")
    });

    println!("\nBeginTask → first MCP tools/call answered (ms; {n} tasks each, after 3 warm-up)\n");
    println!("| runtime                      |   n |      p50 |      p99 |      max |");
    println!("|------------------------------|-----|----------|----------|----------|");
    row("Rust example (rmcp, reqwest)", &rust);
    match &python_samples {
        Some(s) => row("Python (tessera-client, mcp)", s),
        None => println!("| Python: not run (no python3)  |"),
    }
    match &node_samples {
        Some(s) => row("Node (@tessera/client, sdk)", s),
        None => println!("| Node: not run (no node/npm)   |"),
    }
}
