//! MCP `tools/call` round trips over mTLS against the example server, across processes.
//!
//! Starts a real `tessera-agent` and two example MCP servers on it (both with their SVID
//! from the Workload API, both requiring and verifying client certificates):
//! - **checked**: tessera-verify on every request (peer, scopes, revocation, Cedar,
//!   session binding, audit event);
//! - **plain**: `--dangerous-no-authorization`, the same rmcp server and rustls mTLS with
//!   no per-request checks.
//!
//! Then measures, in one run:
//! - (a) a full `tools/call` round trip (rmcp client → reqwest/h2 → TLS → hyper → rmcp →
//!   tool → back) on one open connection per server, interleaved, p50/p99 and the ratio
//!   checked / plain (target ≤ 1.10×);
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
//! `RUST_LOG=warn,tessera_verify::audit=info` (override: `TESSERA_BENCH_SERVER_LOG`).

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
    // Audit events stay on (they are part of the checks); rmcp's own info chatter is off
    // for both servers.
    // TESSERA_BENCH_SERVER_LOG overrides the filter (e.g. `warn` to leave audit out).
    let log = std::env::var("TESSERA_BENCH_SERVER_LOG")
        .unwrap_or_else(|_| "warn,tessera_verify::audit=info".to_owned());
    let log = log.as_str();
    // TESSERA_BENCH_AUDIT_FILE=0 leaves out the JSON-lines audit file.
    let audit_file = std::env::var("TESSERA_BENCH_AUDIT_FILE").as_deref() != Ok("0");
    let checked =
        McpServer::start_with_log(&agent, "checked", Trust::Workload, &[], log, audit_file)
            .await
            .unwrap();
    let plain = McpServer::start_with_log(
        &agent,
        "plain",
        Trust::Workload,
        &["--dangerous-no-authorization"],
        log,
        false,
    )
    .await
    .unwrap();

    let w = Workload::connect(&agent.endpoint()).await.unwrap();
    let (_task, cred) = begin(&w, &["github/tool/get_pull_request"]).await;
    let c_checked = McpConnection::connect(&checked.url, tls_config(&cred, "github").unwrap())
        .await
        .unwrap();
    let c_plain = McpConnection::connect(&plain.url, tls_config(&cred, "github").unwrap())
        .await
        .unwrap();
    let args = json!({"repo": "acme/api", "number": 42})
        .as_object()
        .cloned();

    println!("\n== (a) tools/call round trip, one open mTLS connection per server ==");
    for _ in 0..WARMUP {
        assert!(
            c_checked
                .call("get_pull_request", args.clone())
                .await
                .is_ok()
        );
        assert!(c_plain.call("get_pull_request", args.clone()).await.is_ok());
    }
    let (mut sc, mut sp) = (Samples::default(), Samples::default());
    for i in 0..N {
        // Alternate the order so neither server always goes first.
        for which in [i % 2 == 0, i % 2 != 0] {
            let (conn, samples) = if which {
                (&c_checked, &mut sc)
            } else {
                (&c_plain, &mut sp)
            };
            let t = Instant::now();
            let out = conn.call("get_pull_request", args.clone()).await;
            samples.0.push(t.elapsed());
            assert!(out.is_ok(), "{out:?}");
        }
    }
    row(&sc, "with Tessera checks");
    row(&sp, "plain rustls mTLS, no checks");
    let r50 = sc.pct(0.5).as_secs_f64() / sp.pct(0.5).as_secs_f64();
    let r99 = sc.pct(0.99).as_secs_f64() / sp.pct(0.99).as_secs_f64();
    let rmean = sc.mean().as_secs_f64() / sp.mean().as_secs_f64();
    println!(
        "ratio checked/plain: p50 {r50:.3}×  p99 {r99:.3}×  mean {rmean:.3}×  (target ≤ {TARGET_RATIO:.2}×: {})",
        if r50 <= TARGET_RATIO {
            "met at p50"
        } else {
            "MISSED at p50"
        }
    );
    c_checked.close().await;
    c_plain.close().await;

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
