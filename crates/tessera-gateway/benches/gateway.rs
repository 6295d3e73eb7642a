//! `tools/call` through tessera-gateway, in one run, against the same upstream three ways:
//!
//! - **direct**: the upstream over plain HTTP/1.1 on loopback (no TLS, no gateway);
//! - **pass-through**: a gateway with `--dangerous-pass-through` (mTLS, nothing parsed or
//!   checked), the baseline the checks are measured against;
//! - **gateway**: the gateway with every check (parse, header/body agreement, scope,
//!   revocation, Cedar with arguments, audit to a file, identity headers).
//!
//! Each call is a 2026-07-28 stateless `tools/call` answered with JSON. Latency is
//! measured one call at a time, the three targets interleaved in rounds so drift on this
//! shared machine hits them alike; throughput with 16 calls in flight. Then the checking
//! gateway's CPU per call (utime+stime of its process over the latency rounds) and its
//! RSS and open fds with 1,000 client SSE streams open (2025-11-25 sessions, each with
//! its `GET` stream held, 100 streams per HTTP/2 connection).
//!
//! The upstream is rmcp's streamable-HTTP server in this process (tens of microseconds a
//! call, so the gateway's share shows); `GATEWAY_BENCH_UPSTREAM=python` puts the Python
//! MCP SDK's server there instead (milliseconds a call of its own).
//!
//!     cargo bench -p tessera-gateway --bench gateway            # release
//!     GATEWAY_BENCH_CALLS=3000 GATEWAY_BENCH_STREAMS=1000 ...   # knobs

#[path = "../tests/support/gateway.rs"]
mod gateway;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::{CONSENTED, Gw, UpstreamKind, V2026, meta2026, raw};
use serde_json::json;
use tessera_e2e::{Samples, proc_cpu_time, proc_memory, proc_open_fds};

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn call_body(i: usize) -> String {
    json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {
        "name": "get_pull_request", "arguments": {"repo": "acme/api", "number": 42},
        "_meta": meta2026()}})
    .to_string()
}

async fn call(http: &reqwest::Client, url: &str, i: usize) {
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", V2026)
        .header("mcp-method", "tools/call")
        .header("mcp-name", "get_pull_request")
        .body(call_body(i))
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("\"isError\":false"), "{text}");
}

fn main() {
    tessera_e2e::ensure_built(&[
        ("tessera-agent", "tessera-agent"),
        ("tessera-gateway", "tessera-gateway"),
    ]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let calls = knob("GATEWAY_BENCH_CALLS", 3000);
    let streams = knob("GATEWAY_BENCH_STREAMS", 1000);
    let kind = match std::env::var("GATEWAY_BENCH_UPSTREAM").as_deref() {
        Ok("python") => UpstreamKind::Python {
            log_requests: false,
        },
        Ok("rmcp") | Err(_) => UpstreamKind::Rmcp,
        Ok(other) => panic!("GATEWAY_BENCH_UPSTREAM={other}: expected rmcp or python"),
    };
    let gw = Gw::try_start_with(
        "max_sessions_per_peer = 4000\nrevocation_staleness_secs = 600",
        kind,
    )
    .await
    .unwrap();
    println!("upstream: {kind:?}");
    let (pt, pt_url) = gw
        .another_gateway("pass-through", &["--dangerous-pass-through"])
        .await
        .unwrap();
    let (_w, _task, cred) = gw.begin(CONSENTED).await;
    let direct = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let through = raw(&cred);
    let targets: Vec<(&str, reqwest::Client, String)> = vec![
        ("direct (plain HTTP)", direct, gw.upstream_url.clone()),
        ("pass-through gateway", through.clone(), pt_url.clone()),
        ("gateway, checks on", through.clone(), gw.url.clone()),
    ];
    let gw_pid = gw.gateway.child.id().unwrap();
    let _ = pt.child.id();

    // Warm up every path (connections, caches, the upstream's imports).
    for (_, http, url) in &targets {
        for i in 0..200 {
            call(http, url, i).await;
        }
    }

    // Latency: one at a time, interleaved in rounds.
    let rounds = 10;
    let per_round = calls.div_ceil(rounds);
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); targets.len()];
    let mut gw_cpu = Duration::ZERO;
    for round in 0..rounds {
        for (t, (_, http, url)) in targets.iter().enumerate() {
            let cpu0 = proc_cpu_time(gw_pid).unwrap();
            for i in 0..per_round {
                let start = Instant::now();
                call(http, url, round * per_round + i).await;
                samples[t].push(start.elapsed());
            }
            if t == 2 {
                gw_cpu += proc_cpu_time(gw_pid).unwrap() - cpu0;
            }
        }
    }
    println!(
        "tools/call, {} calls each, sequential, {} build, same run:",
        rounds * per_round,
        if cfg!(debug_assertions) {
            "DEBUG"
        } else {
            "release"
        }
    );
    println!(
        "{:<24} {:>10} {:>10} {:>10}",
        "target", "p50", "p99", "mean"
    );
    let mut p = Vec::new();
    for (t, (name, _, _)) in targets.iter().enumerate() {
        let s = Samples(samples[t].clone());
        let (p50, p99) = (s.pct(0.50), s.pct(0.99));
        p.push((p50, p99));
        println!("{name:<24} {p50:>10.1?} {p99:>10.1?} {:>10.1?}", s.mean());
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "checks / pass-through: p50 {:.3}x, p99 {:.3}x (target <= 1.10x)",
        ratio(p[2].0, p[1].0),
        ratio(p[2].1, p[1].1)
    );
    println!(
        "gateway added over direct: p50 +{:.1?}, pass-through over direct: p50 +{:.1?}",
        p[2].0.saturating_sub(p[0].0),
        p[1].0.saturating_sub(p[0].0)
    );
    println!(
        "gateway CPU per call (utime+stime of its process, checks on): {:.1?}",
        gw_cpu / (rounds * per_round) as u32
    );

    // Throughput: 16 in flight.
    let inflight = 16;
    for (name, http, url) in &targets {
        let n = calls;
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..inflight {
            let (http, url, next) = (http.clone(), url.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    call(&http, &url, i).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name:<24} {:>8.0} calls/s ({inflight} in flight)",
            n as f64 / secs
        );
    }

    // 1,000 open client streams through the checking gateway.
    let before = (proc_memory(gw_pid).unwrap(), proc_open_fds(gw_pid).unwrap());
    let mut held = Vec::new();
    let mut clients = Vec::new();
    for i in 0..streams {
        if i % 100 == 0 {
            clients.push(raw(&cred));
        }
        let http = clients.last().unwrap();
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"}}});
        let resp = http
            .post(&gw.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(init.to_string())
            .send()
            .await
            .unwrap();
        let session = resp.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        drop(resp.bytes().await);
        let stream = http
            .get(&gw.url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-11-25")
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200, "stream {i}");
        held.push(stream);
    }
    let after = (proc_memory(gw_pid).unwrap(), proc_open_fds(gw_pid).unwrap());
    println!(
        "{} open SSE streams through the gateway: RSS {} -> {} KiB (+{} KiB, {:.1} KiB/stream), fds {} -> {}",
        held.len(),
        before.0.rss / 1024,
        after.0.rss / 1024,
        after.0.rss.saturating_sub(before.0.rss) / 1024,
        after.0.rss.saturating_sub(before.0.rss) as f64 / 1024.0 / held.len() as f64,
        before.1,
        after.1
    );
    drop(held);
}
