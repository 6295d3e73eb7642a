//! FetchX509SVID round trips against a real `tessera-agent` over its unix socket.
//!
//! Starts the agent binary next to this bench (`target/release/tessera-agent` under
//! `cargo bench`), registers this bench process, then times:
//! - (a) `spiffe::WorkloadApiClient::fetch_x509_svid()` on an already-connected
//!   client (open the stream, read the first message, parse it, close), sequential;
//! - (b) the same with 4 concurrent callers, each on its own connection;
//! - (b') 4 concurrent callers sharing one connection (HTTP/2 multiplexing);
//! - (c) connecting a new client plus its first SVID;
//! - (d) the raw tonic FetchX509SVID stream, first message, no SVID parsing: (a)
//!   minus the `spiffe` crate's client-side work;
//! - (e) the client-side parse alone (`X509Svid::parse_from_der`).
//!
//! Target: (a) p99 under 2 ms.
//!
//! ```text
//! cargo bench -p tessera-e2e --bench workload_roundtrip
//! ```
//!
//! The bench runs `cargo build --release -p tessera-agent` first so it measures the
//! current agent (set `TESSERA_BENCH_NO_BUILD=1` to skip that and use the binary as is).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_e2e::{Samples, TRUST_DOMAIN, TestAgent};
use tessera_proto::WORKLOAD_HEADER;
use tessera_proto::workload::X509svidRequest;
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

const CLIENT: &str = "bench-roundtrip";
/// Sequential calls in (a) and (d); calls per caller in (b).
const N: usize = 2000;
const CONCURRENCY: usize = 4;
/// New connections in (c).
const N_CONNECT: usize = 500;
const WARMUP: usize = 100;
const TARGET_P99: Duration = Duration::from_millis(2);

struct Row {
    name: &'static str,
    samples: Samples,
    /// Wall time for all calls in the row (throughput).
    wall: Duration,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "FetchX509SVID over the workload socket (real tessera-agent, {} CPUs)",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "{:<52} {:>6} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "operation", "n", "p50 ms", "p99 ms", "mean ms", "max ms", "calls/s"
    );
    for r in rows {
        let n = r.samples.0.len();
        println!(
            "{:<52} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>10.0}",
            r.name,
            n,
            ms(r.samples.pct(0.50)),
            ms(r.samples.pct(0.99)),
            ms(r.samples.mean()),
            ms(r.samples.pct(1.0)),
            n as f64 / r.wall.as_secs_f64(),
        );
    }
}

async fn timed_fetches(client: &spiffe::WorkloadApiClient, n: usize) -> Samples {
    let mut s = Samples(Vec::with_capacity(n));
    for _ in 0..n {
        let start = Instant::now();
        let svid = client.fetch_x509_svid().await.expect("FetchX509SVID");
        s.0.push(start.elapsed());
        std::hint::black_box(svid);
    }
    s
}

async fn concurrent(clients: Vec<spiffe::WorkloadApiClient>, name: &'static str) -> Row {
    let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                timed_fetches(&c, N).await
            })
        })
        .collect();
    let mut all = Samples::default();
    for t in tasks {
        all.0.extend(t.await.expect("caller task").0);
    }
    Row {
        name,
        samples: all,
        wall: start.elapsed(),
    }
}

async fn run() -> anyhow::Result<()> {
    let agent = TestAgent::start("").await?;
    agent.register_self(CLIENT).await?;
    let endpoint = agent.endpoint();
    let want_id = format!("spiffe://{TRUST_DOMAIN}/client/{CLIENT}");

    // The entry reaches the SVID cache asynchronously: wait for the first SVID.
    let client = spiffe::WorkloadApiClient::connect_to(&endpoint).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        match client.fetch_x509_svid().await {
            Ok(svid) => break svid,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => anyhow::bail!("no SVID for the bench process: {e}\n{}", agent.log_text()),
        }
    };
    assert_eq!(first.spiffe_id().to_string(), want_id);
    let mut rows = Vec::new();

    // (a) sequential, one connected client.
    timed_fetches(&client, WARMUP).await;
    let start = Instant::now();
    let samples = timed_fetches(&client, N).await;
    rows.push(Row {
        name: "(a) fetch_x509_svid, connected client, sequential",
        samples,
        wall: start.elapsed(),
    });

    // (b) 4 concurrent callers, one connection each.
    let mut clients = Vec::new();
    for _ in 0..CONCURRENCY {
        let c = spiffe::WorkloadApiClient::connect_to(&endpoint).await?;
        timed_fetches(&c, WARMUP / CONCURRENCY).await;
        clients.push(c);
    }
    rows.push(concurrent(clients, "(b) fetch_x509_svid, 4 callers, own connections").await);

    // (b') 4 concurrent callers multiplexed on one connection.
    let shared = vec![client.clone(); CONCURRENCY];
    rows.push(concurrent(shared, "(b') fetch_x509_svid, 4 callers, one connection").await);

    // (c) a new client: connect (socket + HTTP/2 handshake) + first SVID.
    let mut samples = Samples::default();
    let start = Instant::now();
    for _ in 0..N_CONNECT {
        let t = Instant::now();
        let c = spiffe::WorkloadApiClient::connect_to(&endpoint).await?;
        let svid = c.fetch_x509_svid().await?;
        samples.0.push(t.elapsed());
        std::hint::black_box(svid);
    }
    rows.push(Row {
        name: "(c) connect new client + first SVID",
        samples,
        wall: start.elapsed(),
    });

    // (d) raw tonic: open the stream, first message, drop; no SVID parsing.
    let mut raw = SpiffeWorkloadApiClient::new(TestAgent::channel(&agent.workload).await?);
    let mut last = None;
    let mut samples = Samples::default();
    let start = Instant::now();
    for i in 0..WARMUP + N {
        let t = Instant::now();
        let mut req = tonic::Request::new(X509svidRequest {});
        req.metadata_mut()
            .insert(WORKLOAD_HEADER, "true".parse().expect("ascii"));
        let mut stream = raw.fetch_x509svid(req).await?.into_inner();
        let msg = stream.message().await?.expect("a first message");
        drop(stream);
        if i >= WARMUP {
            samples.0.push(t.elapsed());
        }
        last = Some(msg);
    }
    let wall = start.elapsed();
    rows.push(Row {
        name: "(d) raw tonic stream, first message, no parse",
        samples,
        wall,
    });

    // (e) the spiffe crate's client-side parse of the same material.
    let msg = last.expect("a response");
    let svid = &msg.svids[0];
    let mut samples = Samples::default();
    let start = Instant::now();
    for _ in 0..N {
        let t = Instant::now();
        let parsed = spiffe::X509Svid::parse_from_der(&svid.x509_svid, &svid.x509_svid_key)?;
        samples.0.push(t.elapsed());
        std::hint::black_box(parsed);
    }
    rows.push(Row {
        name: "(e) client-side X509Svid::parse_from_der only",
        samples,
        wall: start.elapsed(),
    });

    print_table(&rows);
    let p99 = rows[0].samples.pct(0.99);
    println!(
        "target: (a) p99 < {} ms -> {} ({:.3} ms)",
        ms(TARGET_P99),
        if p99 < TARGET_P99 { "MET" } else { "NOT MET" },
        ms(p99)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo test --benches` runs bench targets without `--bench`: nothing to smoke-test
    // beyond compiling, and starting an agent there would need the release binary.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    tessera_e2e::ensure_built(&[("tessera-agent", "tessera-agent")]);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}
