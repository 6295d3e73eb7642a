//! The bearer path against the mTLS path, across processes, in one run.
//!
//! Starts a real `tessera-agent` and one example MCP server with `--accept both` (its SVID
//! from the Workload API), begins one task, and measures:
//! - (a) a `tools/call` round trip on one open connection each: the task SVID as the client
//!   certificate, and an access token (`Authorization: Bearer`, no client certificate)
//!   against the same server, interleaved so both see the same noise; p50/p99 and the
//!   ratio bearer / mTLS (target ≤ 1.10×). The bearer path adds the token's check per
//!   request (a SHA-256 and a cache lookup once verified) and the step-up read of the
//!   JSON-RPC body;
//! - (b) the token endpoint: `POST /oauth/token` (client credentials, the task's JWT-SVID
//!   as the private_key_jwt assertion, fetched beforehand) on one open connection, to the
//!   access token in hand (target p99 < 5 ms);
//! - (c) `FetchJWTSVID` for the task's SPIFFE ID with the server's issuer as audience
//!   (the `spiffe` crate's client), what a runtime pays before each token request.
//!
//! ```text
//! cargo bench -p tessera-e2e --bench mcp_oauth
//! ```
//!
//! The bench builds the agent and the example server with its own profile first (set
//! `TESSERA_BENCH_NO_BUILD=1` to use the binaries as they are).

#[path = "../tests/support/mcp.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{CONSENTED, McpServer, SUBJECT, Trust, grant, register_server};
use tessera_e2e::{Samples, TestAgent};
use tessera_example_agent_runtime::bearer::{discover, request_token, server_only_tls};
use tessera_example_agent_runtime::{
    McpConnection, TaskRequest, Workload, http_client, install_crypto_provider, tls_config,
};

const N: usize = 2000;
const WARMUP: usize = 200;
const N_TOKENS: usize = 500;
const TARGET_RATIO: f64 = 1.10;
const TARGET_TOKEN_P99: Duration = Duration::from_millis(5);

fn row(s: &Samples, name: &str) {
    println!(
        "{name:<44} n={:<5} p50={:>9.1?} p99={:>9.1?} mean={:>9.1?}",
        s.0.len(),
        s.pct(0.50),
        s.pct(0.99),
        s.mean()
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

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
    let server = McpServer::start_with_log(
        &agent,
        "both",
        Trust::Workload,
        &["--accept", "both"],
        "warn",
        false,
    )
    .await
    .unwrap();
    let w = Workload::connect(&agent.endpoint()).await.unwrap();
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

    let no_cert = server_only_tls(cred.bundle.clone(), &cred.trust_domain, "github").unwrap();
    let http = http_client(no_cert.clone()).unwrap();
    let discovery = discover(&http, &server.url).await.expect("discovery");
    let assertion = w
        .task_jwt(&task.spiffe_id, &discovery.issuer)
        .await
        .expect("JWT-SVID");
    let token = request_token(&http, &discovery, &assertion, None)
        .await
        .expect("access token");

    let mtls = McpConnection::connect(&server.url, tls_config(&cred, "github").unwrap())
        .await
        .unwrap();
    let bearer = McpConnection::connect_bearer(&server.url, no_cert, &token)
        .await
        .unwrap();
    let args = json!({"repo": "acme/api", "number": 42})
        .as_object()
        .cloned();

    println!("\n== (a) tools/call round trip, same server, one open connection each ==");
    let conns = [
        ("mTLS (task SVID as client cert)", &mtls),
        ("bearer (access token, no cert)", &bearer),
    ];
    for _ in 0..WARMUP {
        for (name, c) in conns {
            let out = c.call("get_pull_request", args.clone()).await;
            assert!(out.is_ok(), "{name}: {out:?}");
        }
    }
    let mut samples = [Samples::default(), Samples::default()];
    for i in 0..N {
        for j in 0..2 {
            let k = (i + j) % 2;
            let t = Instant::now();
            let out = conns[k].1.call("get_pull_request", args.clone()).await;
            samples[k].0.push(t.elapsed());
            assert!(out.is_ok(), "{}: {out:?}", conns[k].0);
        }
    }
    for (k, (name, _)) in conns.iter().enumerate() {
        row(&samples[k], name);
    }
    let r50 = samples[1].pct(0.5).as_secs_f64() / samples[0].pct(0.5).as_secs_f64();
    let r99 = samples[1].pct(0.99).as_secs_f64() / samples[0].pct(0.99).as_secs_f64();
    println!(
        "bearer / mTLS: p50 {r50:.3}×  p99 {r99:.3}×  (target ≤ {TARGET_RATIO:.2}×: {})",
        verdict(r50 <= TARGET_RATIO && r99 <= TARGET_RATIO)
    );
    mtls.close().await;
    bearer.close().await;

    println!("\n== (b) token endpoint, {N_TOKENS} requests on one open connection ==");
    // Each request with its own JWT-SVID, fetched outside the timed part, so a replay
    // check (if the endpoint has one) never sees the same assertion twice.
    // One Workload API client, as a runtime keeps one.
    let spiffe = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .expect("Workload API");
    let task_id: spiffe::SpiffeId = task.spiffe_id.parse().expect("task SPIFFE ID");
    let mut assertions = Vec::with_capacity(N_TOKENS + WARMUP / 4);
    let mut fetch = Samples::default();
    for _ in 0..N_TOKENS + WARMUP / 4 {
        let t = Instant::now();
        let a = spiffe
            .fetch_jwt_token([discovery.issuer.as_str()], Some(&task_id))
            .await
            .expect("JWT-SVID");
        fetch.0.push(t.elapsed());
        assertions.push(a);
    }
    let mut issue = Samples::default();
    for (i, a) in assertions.iter().enumerate() {
        let t = Instant::now();
        let got = request_token(&http, &discovery, a, None).await;
        let took = t.elapsed();
        got.unwrap_or_else(|e| panic!("token request {i}: {e}\n{}", server.log_text()));
        if i >= WARMUP / 4 {
            issue.0.push(took);
        }
    }
    row(&issue, "POST /oauth/token → access token");
    println!(
        "p99 target < {TARGET_TOKEN_P99:?}: {}",
        verdict(issue.pct(0.99) < TARGET_TOKEN_P99)
    );

    println!(
        "\n== (c) FetchJWTSVID for the task (spiffe crate, one client), audience = the issuer =="
    );
    row(&fetch, "FetchJWTSVID, task JWT-SVID");
}
