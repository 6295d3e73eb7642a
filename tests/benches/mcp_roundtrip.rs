//! MCP `tools/call` round trips over mTLS against the example server, across processes.
//!
//! Starts a real `tessera-agent` and example MCP servers on it (all with their SVID from
//! the Workload API, all requiring and verifying client certificates):
//! - **checked**, once per audit configuration: tessera-verify on every request (peer,
//!   scopes, revocation, Cedar, session binding, audit event) with the audit event on
//!   stderr through `tracing` and in the JSON-lines file, in the file only, on stderr
//!   only, or neither;
//! - **plain**: `--dangerous-no-authorization`, the same rmcp server and rustls mTLS with
//!   no per-request checks.
//!
//! Then measures, in one run:
//! - (a) a full `tools/call` round trip (rmcp client → reqwest/h2 → TLS → hyper → rmcp →
//!   tool → back) on one open connection per server, interleaved (each round calls
//!   every server once, in a rotating order, so all see the same noise), p50/p99 and the
//!   ratio checked / plain (target ≤ 1.10×), and each server's CPU time per call (all
//!   its threads, from `/proc/<pid>/task/*/schedstat`), which varies far less from run
//!   to run than latency on a shared VM;
//! - (b) EndTask → refusal: for each of 200 tasks, from sending EndTask until a call on the
//!   already-open connection comes back refused as revoked (target p99 < 20 ms); the
//!   EndTask RPC alone is shown too.
//!
//! ```text
//! cargo bench -p tessera-e2e --bench mcp_roundtrip
//! ```
//!
//! The bench builds the agent and the example server with its own profile first (set
//! `TESSERA_BENCH_NO_BUILD=1` to use the binaries as they are). The servers log with
//! `RUST_LOG=warn,tessera_verify::audit=info` where the audit event goes to stderr, else
//! `warn` (override the former: `TESSERA_BENCH_SERVER_LOG`).

#[path = "../tests/support/mcp.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{CONSENTED, McpServer, SUBJECT, Trust, grant, register_server};
use tessera_e2e::{Samples, TestAgent};
use tessera_example_agent_runtime::{
    McpConnection, TaskRequest, Workload, install_crypto_provider, measure_refusal_after_end,
    tls_config,
};

const N: usize = 2000;
/// The checked servers: name, audit event on stderr (`tracing`), JSON-lines audit file.
const AUDIT_CONFIGS: [(&str, bool, bool); 4] = [
    ("checked, audit: stderr + file", true, true),
    ("checked, audit: file only", false, true),
    ("checked, audit: stderr only", true, false),
    ("checked, no audit", false, false),
];
const WARMUP: usize = 200;
const N_TASKS: usize = 200;
const TARGET_RATIO: f64 = 1.10;
const TARGET_REFUSAL_P99: Duration = Duration::from_millis(20);

fn row(s: &Samples, name: &str) {
    println!(
        "{name:<44} n={:<5} p50={:>9.1?} p99={:>9.1?} mean={:>9.1?}",
        s.0.len(),
        s.pct(0.50),
        s.pct(0.99),
        s.mean()
    );
}

/// CPU time `pid` has used so far, all threads (nanoseconds on CPU, from schedstat).
fn cpu_time(pid: u32) -> Duration {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let nanos: u64 = threads
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// One server under measurement.
struct Measured {
    name: &'static str,
    server: McpServer,
    conn: McpConnection,
    samples: Samples,
    cpu: Duration,
}

async fn begin(w: &Workload, scopes: &[&str]) -> (String, McpCred) {
    let task = w
        .begin_task(&TaskRequest {
            server: "github".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
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
    (task.id, cred)
}

type McpCred = tessera_example_agent_runtime::TaskCredential;

fn main() {
    tessera_e2e::ensure_built(&[
        ("tessera-agent", "tessera-agent"),
        ("tessera-example-mcp-server", support::SERVER_BIN),
    ]);
    install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let agent = TestAgent::start("").await.expect("agent");
    agent.register_self("code-reviewer").await.unwrap();
    register_server(&agent, "github", &tessera_e2e::bin(support::SERVER_BIN))
        .await
        .unwrap();
    grant(&agent, "code-reviewer", CONSENTED).await.unwrap();
    // rmcp's own info chatter is off for every server; audit events go to stderr where
    // a configuration says so. TESSERA_BENCH_SERVER_LOG overrides that filter.
    let audit_log = std::env::var("TESSERA_BENCH_SERVER_LOG")
        .unwrap_or_else(|_| "warn,tessera_verify::audit=info".to_owned());
    let w = Workload::connect(&agent.endpoint()).await.unwrap();
    let (_task, cred) = begin(&w, &["github/tool/get_pull_request"]).await;
    let mut servers = Vec::new();
    for (i, (name, stderr, file)) in AUDIT_CONFIGS.into_iter().enumerate() {
        let log = if stderr { audit_log.as_str() } else { "warn" };
        let server = McpServer::start_with_log(
            &agent,
            &format!("checked-{i}"),
            Trust::Workload,
            &[],
            log,
            file,
        )
        .await
        .unwrap();
        servers.push((name, server));
    }
    let plain = McpServer::start_with_log(
        &agent,
        "plain",
        Trust::Workload,
        &["--dangerous-no-authorization"],
        "warn",
        false,
    )
    .await
    .unwrap();
    servers.push(("plain rustls mTLS, no checks", plain));
    let mut measured = Vec::new();
    for (name, server) in servers {
        let conn = McpConnection::connect(&server.url, tls_config(&cred, "github").unwrap())
            .await
            .unwrap();
        measured.push(Measured {
            name,
            server,
            conn,
            samples: Samples::default(),
            cpu: Duration::ZERO,
        });
    }
    let args = json!({"repo": "acme/api", "number": 42})
        .as_object()
        .cloned();

    println!("\n== (a) tools/call round trip, one open mTLS connection per server ==");
    for _ in 0..WARMUP {
        for m in &measured {
            assert!(m.conn.call("get_pull_request", args.clone()).await.is_ok());
        }
    }
    let pid = |m: &Measured| m.server.child.id().expect("server running");
    let before: Vec<Duration> = measured.iter().map(|m| cpu_time(pid(m))).collect();
    let k = measured.len();
    for i in 0..N {
        // Rotate the order so no server always goes first or follows the same one.
        for j in 0..k {
            let m = &mut measured[(i + j) % k];
            let t = Instant::now();
            let out = m.conn.call("get_pull_request", args.clone()).await;
            m.samples.0.push(t.elapsed());
            assert!(out.is_ok(), "{}: {out:?}", m.name);
        }
    }
    for (m, before) in measured.iter_mut().zip(before) {
        m.cpu = cpu_time(pid(m)).saturating_sub(before) / N as u32;
    }
    let plain = measured.last().expect("plain server");
    let (p50, p99, mean, cpu) = (
        plain.samples.pct(0.5).as_secs_f64(),
        plain.samples.pct(0.99).as_secs_f64(),
        plain.samples.mean().as_secs_f64(),
        plain.cpu,
    );
    for m in &measured {
        row(&m.samples, m.name);
    }
    println!("\nratio to plain (target ≤ {TARGET_RATIO:.2}×) and server CPU per call:");
    for m in &measured {
        let r50 = m.samples.pct(0.5).as_secs_f64() / p50;
        let r99 = m.samples.pct(0.99).as_secs_f64() / p99;
        let rmean = m.samples.mean().as_secs_f64() / mean;
        println!(
            "{:<44} p50 {r50:.3}×  p99 {r99:.3}×  mean {rmean:.3}×  cpu {:>6.1?} (+{:.1?})  {}",
            m.name,
            m.cpu,
            m.cpu.saturating_sub(cpu),
            if r50 <= TARGET_RATIO && r99 <= TARGET_RATIO {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    let checked = measured.swap_remove(0);
    for m in measured {
        m.conn.close().await;
    }
    checked.conn.close().await;
    let checked = checked.server;

    println!("\n== (b) EndTask → refusal on the already-open connection, {N_TASKS} tasks ==");
    let (mut refusal, mut end_rpc) = (Samples::default(), Samples::default());
    let mut attempts = 0u32;
    for _ in 0..N_TASKS {
        let (task, cred) = begin(&w, &["github/tool/get_pull_request"]).await;
        let conn = McpConnection::connect(&checked.url, tls_config(&cred, "github").unwrap())
            .await
            .unwrap();
        assert!(conn.call("get_pull_request", args.clone()).await.is_ok());
        let m = measure_refusal_after_end(
            &w,
            &conn,
            &task,
            "get_pull_request",
            args.clone(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(
            m.outcome.denial_reason(),
            Some("revoked"),
            "{:?}",
            m.outcome
        );
        refusal.0.push(m.elapsed);
        end_rpc.0.push(m.end_task_rtt);
        attempts += m.attempts;
        conn.close().await;
    }
    row(&refusal, "EndTask sent → refused call answered");
    row(&end_rpc, "  of which the EndTask RPC");
    println!(
        "calls per refusal: {:.2} (1.00 = the first call after EndTask was refused)",
        f64::from(attempts) / N_TASKS as f64
    );
    println!(
        "p99 target < {TARGET_REFUSAL_P99:?}: {}",
        if refusal.pct(0.99) < TARGET_REFUSAL_P99 {
            "met"
        } else {
            "MISSED"
        }
    );
}
