//! The cluster revocation feed at the server, end to end over real TLS: a `tessera-server`
//! process on a real PostgreSQL with durable commits (fsync and synchronous_commit on),
//! nodes attested with join tokens.
//!
//! * revocations/s through `Node.ReportTaskEvents` with batches of 1 and of 100 (8
//!   concurrent reporters), the request p50/p99, and the server's CPU per revocation
//!   (utime + stime of the server process from /proc/<pid>/stat, the counters getrusage
//!   reports);
//! * feed bytes per revocation per follower with 100 and with 50,000 revoked tasks held,
//!   against the baseline of the legacy full-set message (what `Revocations.Watch` sends on
//!   every change: the whole set), and report → follower's delta p50/p99.
//!
//! Run it with `cargo bench -p tessera-server --bench revocations` (a release build).
//!
//! `TESSERA_BENCH_SECONDS` (default 3) is the length of each throughput run. Without
//! PostgreSQL's binaries it prints why and exits (see tessera-pgtest).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use support::{Replica, attested_node, bundle_of, ca_init, database_name};
use tessera_identity::TaskId;
use tessera_pgtest::PgServer;
use tessera_proto::tessera::v1 as pb;
use tessera_proto::tessera::v1::node_client::NodeClient;
use tonic::transport::Channel;

const REPORTERS: usize = 8;
const SAMPLES: usize = 200;

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn ended(seq: u64) -> (String, pb::TaskEvent) {
    let task = TaskId::new().to_string();
    let event = pb::TaskEvent {
        seq,
        event: Some(pb::task_event::Event::Ended(pb::TaskEnded {
            spiffe_id: format!("spiffe://{}/client/reviewer/task/{task}", support::TD),
            task_id: task.clone(),
            reason: "ended".into(),
            ended_at_unix_ms: now_ms(),
            serials: vec!["3f9a0c1d2e4b5a6978".into()],
            until_unix: now_ms() / 1000 + 3600,
        })),
    };
    (task, event)
}

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    format!("p50 {:>9.3?}  p99 {:>9.3?}", at(50), at(99))
}

/// CPU seconds (user + system) the process has used, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let hz: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0);
    ticks / hz
}

/// Reports `count` revocations as batches of `batch` from [`REPORTERS`] concurrent
/// reporters for `seconds`; returns revocations/s and the request latencies.
async fn throughput(
    node: &NodeClient<Channel>,
    batch: usize,
    seconds: u64,
) -> (f64, u64, Vec<Duration>) {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let began = Instant::now();
    let tasks: Vec<_> = (0..REPORTERS)
        .map(|_| {
            let (mut node, done) = (node.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut seq = 0;
                while Instant::now() < until {
                    let events = (0..batch)
                        .map(|_| {
                            seq += 1;
                            ended(seq).1
                        })
                        .collect();
                    let sent = Instant::now();
                    node.report_task_events(pb::ReportTaskEventsRequest { events })
                        .await
                        .expect("report");
                    latencies.push(sent.elapsed());
                    done.fetch_add(batch as u64, Ordering::Relaxed);
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("reporter"));
    }
    let n = done.load(Ordering::Relaxed);
    (n as f64 / began.elapsed().as_secs_f64(), n, latencies)
}

/// Preloads revocations in batches of 1,000 until `total` have been reported.
async fn preload(node: &mut NodeClient<Channel>, from: usize, total: usize) {
    let mut seq = 0;
    let mut reported = from;
    while reported < total {
        let n = (total - reported).min(1000);
        let events = (0..n)
            .map(|_| {
                seq += 1;
                ended(seq).1
            })
            .collect();
        node.report_task_events(pb::ReportTaskEventsRequest { events })
            .await
            .expect("preload");
        reported += n;
    }
}

/// Follows from scratch: the snapshot's bytes and the feed id and version it ends at.
async fn snapshot(node: &mut NodeClient<Channel>) -> (usize, usize, String, u64) {
    let mut stream = node
        .follow_revocations(pb::FollowRevocationsRequest::default())
        .await
        .expect("follow")
        .into_inner();
    let (mut bytes, mut entries) = (0, 0);
    loop {
        let update = stream.message().await.unwrap().unwrap();
        bytes += update.encoded_len();
        if let Some(pb::revocation_update::Update::Snapshot(s)) = &update.update {
            entries += s.revoked.len();
            if !s.more {
                return (bytes, entries, update.feed_id, s.version);
            }
        }
    }
}

/// [`SAMPLES`] single revocations, each awaited on a follower's stream resumed at the
/// current version: delta bytes and all bytes per revocation, and report → delta latency.
async fn per_revocation_bytes(
    reporter: &mut NodeClient<Channel>,
    follower: &mut NodeClient<Channel>,
    held: usize,
) {
    // Once the replica's copy holds the whole preload (it applies a report a moment after
    // acknowledging it), so the deltas measured carry only the samples.
    let (snapshot_bytes, entries, feed_id, version) = loop {
        let taken = snapshot(follower).await;
        if taken.1 >= held {
            break taken;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stream = follower
        .follow_revocations(pb::FollowRevocationsRequest {
            feed_id,
            since_version: version,
        })
        .await
        .expect("resume")
        .into_inner();
    let (mut delta_bytes, mut all_bytes) = (0usize, 0usize);
    let mut latencies = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let (task, event) = ended(i as u64 + 1);
        let sent = Instant::now();
        reporter
            .report_task_events(pb::ReportTaskEventsRequest {
                events: vec![event],
            })
            .await
            .expect("report");
        loop {
            let update = stream.message().await.unwrap().unwrap();
            all_bytes += update.encoded_len();
            if let Some(pb::revocation_update::Update::Delta(d)) = &update.update {
                delta_bytes += update.encoded_len();
                if d.revoked.iter().any(|t| t.task_id == task) {
                    break;
                }
            }
        }
        latencies.push(sent.elapsed());
    }
    println!(
        "  {held:>6} revoked held ({entries} in snapshot): {:>6.1} delta bytes/revocation/follower ({:>6.1} with heartbeats); legacy full set per change: {snapshot_bytes} bytes",
        delta_bytes as f64 / SAMPLES as f64,
        all_bytes as f64 / SAMPLES as f64,
    );
    println!(
        "         report -> follower's delta            {}",
        percentiles(latencies)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::var("TESSERA_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let durable = [("fsync", "on"), ("synchronous_commit", "on")];
    let pg = match PgServer::start_with(&durable).await {
        Ok(pg) => pg,
        Err(error) => {
            eprintln!("SKIPPED: {error}");
            return;
        }
    };
    let database = database_name(&pg.create_database().await.expect("database"));
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    ca_init(&ca_dir, support::TD);
    let bundle = bundle_of(&ca_dir);
    let server = Replica::start(&pg, &database, dir.path(), &ca_dir, "bench");
    let (_, _, mut reporter) = attested_node(&server, &bundle, "reporter").await;
    let (_, _, mut follower) = attested_node(&server, &bundle, "follower").await;
    println!("tessera-server revocation feed, PostgreSQL with fsync on, one replica, over TLS");

    preload(&mut reporter, 0, 100).await;
    per_revocation_bytes(&mut reporter, &mut follower, 100).await;
    preload(&mut reporter, 100 + SAMPLES, 50_000).await;
    per_revocation_bytes(&mut reporter, &mut follower, 50_000).await;

    let pid = server.child.id();
    for batch in [1, 100] {
        let cpu = cpu_seconds(pid);
        let (rate, n, latencies) = throughput(&reporter, batch, seconds).await;
        let cpu = cpu_seconds(pid) - cpu;
        println!(
            "  ReportTaskEvents, batches of {batch:>3}, {REPORTERS} reporters: {rate:>8.0} revocations/s, request {}, server CPU {:>6.1} µs/revocation",
            percentiles(latencies),
            cpu * 1e6 / n as f64
        );
    }
}
