//! What accepting gRPC C-core's `:authority` costs (`h2_authority` in the agent).
//!
//! - (a) stock Python grpcio, unary `Tasks.ListTasks` round trips on one channel
//!   against a real agent, with grpcio's default authority (the socket path: the
//!   agent rewrites every header block of the connection) and with
//!   `grpc.default_authority=localhost` (valid: the connection passes through
//!   after its first block). Interleaved rounds, same agent, same client.
//! - (b) the rewriter alone, in process: a connection of 1,000 gRPC requests
//!   (HEADERS with the client's dynamic table in use, plus DATA) fed through
//!   `Rewriter::feed`, per request; beside a plain copy of the same bytes.
//!
//! ```text
//! cargo bench -p tessera-e2e --bench interop
//! ```
//!
//! Needs python3 (the stock clients are installed into a venv under target/).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tessera_agent::h2_authority::Rewriter;
use tessera_e2e::interop::{proto_dir, python, run_python};
use tessera_e2e::{Samples, TestAgent};

const CALLS: usize = 2000;
const ROUNDS: usize = 3;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream_id.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A client connection carrying `n` gRPC requests with `authority`.
fn connection(authority: &[u8], n: usize) -> Vec<u8> {
    let mut encoder = loona_hpack::Encoder::new();
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(frame(0x4, 0, 0, &[]));
    for i in 0..n {
        let stream = 1 + 2 * i as u32;
        let timeout = format!("{}m", 9_000 + i % 1000);
        let fields: [(&[u8], &[u8]); 9] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/tessera.v1.Tasks/ListTasks"),
            (b":authority", authority),
            (b"te", b"trailers"),
            (b"content-type", b"application/grpc"),
            (
                b"user-agent",
                b"grpc-python/1.85.3 grpc-c/51.0.0 (linux; chttp2)",
            ),
            (b"grpc-timeout", timeout.as_bytes()),
            (b"workload.spiffe.io", b"true"),
        ];
        let block = encoder.encode(fields);
        bytes.extend(frame(0x1, 0x4, stream, &block));
        bytes.extend(frame(0x0, 0x1, stream, &[0, 0, 0, 0, 0]));
    }
    bytes
}

fn rewriter_per_request(authority: &[u8]) -> (Duration, Duration) {
    const N: usize = 1000;
    let input = connection(authority, N);
    let mut best_feed = Duration::MAX;
    let mut best_copy = Duration::MAX;
    for _ in 0..20 {
        let mut pending = BytesMut::from(&input[..]);
        let mut out = BytesMut::with_capacity(input.len() * 2);
        let mut rewriter = Rewriter::default();
        let t = Instant::now();
        // Reads of 16 KiB, as the wrapper does.
        let mut chunks = input.chunks(16 * 1024);
        pending.clear();
        for c in &mut chunks {
            pending.extend_from_slice(c);
            rewriter.feed(&mut pending, &mut out).expect("feed");
        }
        best_feed = best_feed.min(t.elapsed());
        std::hint::black_box(&out);

        let mut copy = BytesMut::with_capacity(input.len());
        let t = Instant::now();
        for c in input.chunks(16 * 1024) {
            copy.extend_from_slice(c);
        }
        best_copy = best_copy.min(t.elapsed());
        std::hint::black_box(&copy);
    }
    (best_feed / N as u32, best_copy / N as u32)
}

#[tokio::main]
async fn main() {
    tessera_e2e::ensure_built(&[("tessera-agent", "tessera-agent")]);
    println!("(b) the rewriter alone, per request (best of 20 passes over 1,000 requests)");
    for (label, authority) in [
        (
            "socket path (rewritten)",
            &b"%2Frun%2Ftessera%2Fworkload.sock"[..],
        ),
        (
            "localhost (first block decoded, then passthrough)",
            b"localhost",
        ),
    ] {
        let (feed, copy) = rewriter_per_request(authority);
        println!(
            "  {label:<52} {:>7.3} µs/request   (memcpy of the same bytes {:>6.3} µs)",
            us(feed),
            us(copy)
        );
    }

    let Some(python) = python() else {
        println!("(a) skipped: no python3");
        return;
    };
    let agent = TestAgent::start("").await.expect("agent");
    agent
        .register_exe("py-bench", "", &python)
        .await
        .expect("register");
    let socket = agent.workload.display().to_string();
    let proto = proto_dir();
    let mut rewritten = Vec::new();
    let mut passthrough = Vec::new();
    for round in 0..ROUNDS {
        for (authority, into) in [("-", &mut rewritten), ("localhost", &mut passthrough)] {
            let r = run_python(
                &python,
                &[
                    "rpc-latency",
                    &socket,
                    proto.to_str().unwrap(),
                    &CALLS.to_string(),
                    authority,
                ],
            )
            .expect("rpc-latency");
            let samples = r["samples_ns"].as_array().unwrap();
            into.extend(
                samples
                    .iter()
                    .map(|v| Duration::from_nanos(v.as_u64().unwrap())),
            );
            eprintln!("round {round}: {authority} done");
        }
    }
    let rewritten = Samples(rewritten);
    let passthrough = Samples(passthrough);
    println!();
    println!(
        "(a) stock grpcio ListTasks round trips, {} calls per mode in {ROUNDS} interleaved rounds",
        CALLS * ROUNDS
    );
    println!(
        "  {:<44} {:>8} {:>8} {:>8}",
        "authority", "p50 ms", "p99 ms", "mean ms"
    );
    for (label, s) in [
        ("socket path (default; rewritten)", &rewritten),
        ("localhost (passthrough)", &passthrough),
    ] {
        println!(
            "  {label:<44} {:>8.3} {:>8.3} {:>8.3}",
            ms(s.pct(0.5)),
            ms(s.pct(0.99)),
            ms(s.mean())
        );
    }
    println!(
        "  ratio rewritten/passthrough: p50 {:.3}x, mean {:.3}x",
        ms(rewritten.pct(0.5)) / ms(passthrough.pct(0.5)),
        ms(rewritten.mean()) / ms(passthrough.mean())
    );
}
