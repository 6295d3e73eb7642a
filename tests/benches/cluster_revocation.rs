//! Cluster-wide revocation, across processes, in one run: a real PostgreSQL, two
//! `tessera-server` replicas, agents on nodes A (→ replica 1) and C (→ replica 2), the
//! example MCP server fed by each, this process as the runtime.
//!
//! - (a) EndTask on A → the next call on an already-open connection to C's MCP server is
//!   refused, p50/p99 over `--tasks` tasks (target p99 < 100 ms on this machine), measured
//!   from EndTask's answer; the baseline in the same run and for the same tasks: the same
//!   refusal at A's own MCP server (the node-local path, no server in between).
//! - (b) feed bytes per EndTask per follower, read off the wire by a
//!   `Revocations.Follow` client on C's workload socket (each message's encoded size + the
//!   5-byte gRPC frame header), with 100 and with `--large` (default 50,000) revoked tasks
//!   in the cluster's set; beside them the snapshot's size, which is what the legacy
//!   full-set `Watch` sends every watcher on every change.
//! - (c) CPU per revocation: `/proc/<pid>/stat` utime+stime of agent A, agent C and both
//!   replicas over `--cpu-tasks` EndTasks (tasks begun beforehand), each waited for at C's
//!   feed; with the idle CPU of the same processes over the same wall time as baseline.
//!
//! ```text
//! cargo bench -p tessera-e2e --bench cluster_revocation [-- --tasks 200 --large 50000]
//! ```
//! It builds the binaries it starts with its own profile first (`TESSERA_BENCH_NO_BUILD=1`
//! uses them as they are). Needs PostgreSQL's binaries (see tessera-pgtest).

#[path = "../tests/support/cluster.rs"]
mod cluster;
#[path = "../tests/support/mcp.rs"]
mod mcp;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use cluster::{Cluster, RunningTask, call};
use futures::StreamExt;
use prost::Message;
use tessera_e2e::{Samples, TestAgent, proc_cpu_time};
use tessera_example_agent_runtime::{McpConnection, TaskRequest, Workload};
use tessera_proto::tessera::v1::revocation_update::Update;
use tessera_proto::tessera::v1::revocations_client::RevocationsClient;
use tessera_proto::tessera::v1::{FollowRevocationsRequest, RevocationUpdate};

/// gRPC's length-prefixed message header (compressed flag + u32 length).
const GRPC_FRAME: usize = 5;
const TARGET_P99: Duration = Duration::from_millis(100);

#[derive(Parser, Debug)]
#[command(
    about = "EndTask on node A → refusal at node C; feed bytes per EndTask; CPU per revocation"
)]
struct Args {
    /// Tasks for the latency phase (a).
    #[arg(long, default_value_t = 200)]
    tasks: usize,
    /// Size of the large revoked set for phase (b).
    #[arg(long, default_value_t = 50_000)]
    large: usize,
    /// EndTasks per bytes measurement in phase (b).
    #[arg(long, default_value_t = 20)]
    deltas: usize,
    /// EndTasks for the CPU phase (c).
    #[arg(long, default_value_t = 500)]
    cpu_tasks: usize,
    /// Concurrent runtimes seeding the large set.
    #[arg(long, default_value_t = 8)]
    seeders: usize,
    // `cargo bench` passes `--bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn row(name: &str, s: &Samples) {
    println!(
        "{name:<58} n={:<4} p50={:>9.2?} p99={:>9.2?} max={:>9.2?}",
        s.0.len(),
        s.pct(0.50),
        s.pct(0.99),
        s.pct(1.0)
    );
}

fn main() {
    let args = Args::parse();
    tessera_e2e::ensure_built(&[
        ("tessera-agent", "tessera-agent"),
        ("tessera-server", "tessera-server"),
        ("tessera-example-mcp-server", cluster::SERVER_BIN),
    ]);
    tessera_example_agent_runtime::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args));
}

/// A `Revocations.Follow` client that counts what it reads.
struct Follower {
    stream: tonic::Streaming<RevocationUpdate>,
    revoked: HashSet<String>,
}

/// What one message weighed on the wire.
fn wire_len(m: &RevocationUpdate) -> usize {
    m.encoded_len() + GRPC_FRAME
}

impl Follower {
    /// Follows `agent`'s feed and reads the whole snapshot; its size on the wire.
    async fn start(agent: &TestAgent) -> (Follower, usize) {
        let stream = RevocationsClient::new(TestAgent::channel(&agent.workload).await.unwrap())
            .max_decoding_message_size(8 << 20)
            .follow(FollowRevocationsRequest::default())
            .await
            .expect("Follow")
            .into_inner();
        let mut f = Follower {
            stream,
            revoked: HashSet::new(),
        };
        let mut bytes = 0;
        loop {
            let m = f.next().await;
            bytes += wire_len(&m);
            if let Some(Update::Snapshot(s)) = &m.update
                && !s.more
            {
                return (f, bytes);
            }
        }
    }

    async fn next(&mut self) -> RevocationUpdate {
        let m = tokio::time::timeout(Duration::from_secs(60), self.stream.next())
            .await
            .expect("a feed message within 60 s (heartbeats come every second)")
            .expect("feed open")
            .expect("feed message");
        let revoked = match &m.update {
            Some(Update::Snapshot(s)) => &s.revoked,
            Some(Update::Delta(d)) => &d.revoked,
            _ => return m,
        };
        self.revoked
            .extend(revoked.iter().map(|r| r.task_id.clone()));
        m
    }

    /// Reads until `task_id` is in the set; the wire bytes of the deltas (not
    /// heartbeats) read meanwhile.
    async fn until_revoked(&mut self, task_id: &str) -> usize {
        let mut bytes = 0;
        while !self.revoked.contains(task_id) {
            let m = self.next().await;
            if matches!(m.update, Some(Update::Delta(_))) {
                bytes += wire_len(&m);
            }
        }
        bytes
    }

    /// Reads until the set holds at least `n` tasks.
    async fn until_len(&mut self, n: usize) {
        while self.revoked.len() < n {
            self.next().await;
        }
    }
}

async fn begin(w: &Workload) -> tessera_proto::tessera::v1::Task {
    w.begin_task(&TaskRequest {
        server: "github".into(),
        scopes: vec!["github/tool/get_pull_request".into()],
        subject: cluster::SUBJECT.into(),
        purpose: "bench".into(),
        lifetime_secs: 0,
    })
    .await
    .expect("BeginTask")
}

/// Begins and ends `n` tasks on `agent` from `runtimes` concurrent callers.
async fn seed(agent: &TestAgent, n: usize, runtimes: usize) {
    let endpoint = Arc::new(agent.endpoint());
    let mut set = tokio::task::JoinSet::new();
    for i in 0..runtimes {
        let endpoint = endpoint.clone();
        let share = n / runtimes + usize::from(i < n % runtimes);
        set.spawn(async move {
            let w = Workload::connect(&endpoint).await.unwrap();
            for _ in 0..share {
                let t = begin(&w).await;
                w.end_task(&t.id).await.expect("EndTask");
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

/// Calls on `conn` until refused; the time from `since`.
async fn refused_after(conn: &McpConnection, since: Instant) -> Duration {
    loop {
        let out = call(conn).await;
        if !out.is_ok() {
            assert_eq!(out.denial_reason(), Some("revoked"), "{out:?}");
            return since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(30), "never refused");
    }
}

/// Bytes per EndTask on C's feed: `k` EndTasks on A, one at a time, each waited for.
async fn delta_bytes(a: &TestAgent, follower: &mut Follower, k: usize) -> Vec<usize> {
    let w = Workload::connect(&a.endpoint()).await.unwrap();
    let mut out = Vec::with_capacity(k);
    for _ in 0..k {
        let t = begin(&w).await;
        w.end_task(&t.id).await.unwrap();
        out.push(follower.until_revoked(&t.id).await);
    }
    out
}

fn bytes_line(label: &str, sizes: &[usize], snapshot: usize) {
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64;
    println!(
        "{label:<30} per EndTask: mean {mean:.0} B (min {} max {}); snapshot (= legacy Watch per change) {snapshot} B",
        sizes.iter().min().unwrap_or(&0),
        sizes.iter().max().unwrap_or(&0),
    );
}

async fn run(args: Args) {
    let Some(cl) = Cluster::start("cluster_revocation bench").await else {
        return;
    };
    // Phase (c) holds `--cpu-tasks` tasks live in this one process.
    let a = cl
        .agent(
            "node-a",
            &cl.r1().node,
            &format!("task_max_live_per_process = {}", args.cpu_tasks.max(128)),
        )
        .await;
    let c = cl.agent("node-c", &cl.r2().node, "").await;
    cl.register(&[&a, &c]).await;
    let server_a =
        mcp::McpServer::start_with_log(&a, "a", mcp::Trust::Workload, &[], "warn", false)
            .await
            .unwrap();
    let server_c =
        mcp::McpServer::start_with_log(&c, "c", mcp::Trust::Workload, &[], "warn", false)
            .await
            .unwrap();

    println!("\n== (b1) feed bytes per EndTask per follower, 100 revoked ==");
    seed(&a, 100, 4).await;
    let (mut follower, snap_small) = Follower::start(&c).await;
    follower.until_len(100).await;
    let small = delta_bytes(&a, &mut follower, args.deltas).await;
    bytes_line(
        &format!("{} revoked", follower.revoked.len()),
        &small,
        snap_small,
    );

    println!(
        "\n== (a) EndTask on A -> refusal on an open connection, {} tasks ==",
        args.tasks
    );
    let mut remote = Samples::default();
    let mut local = Samples::default();
    let mut end_rtt = Samples::default();
    for _ in 0..args.tasks {
        let task = RunningTask::begin(&a).await;
        let at_a = task.connect(&server_a.url).await.unwrap();
        let at_c = task.connect(&server_c.url).await.unwrap();
        assert!(call(&at_a).await.is_ok() && call(&at_c).await.is_ok());
        let sent = Instant::now();
        task.end().await;
        let answered = Instant::now();
        end_rtt.0.push(answered - sent);
        let (l, r) = tokio::join!(
            refused_after(&at_a, answered),
            refused_after(&at_c, answered)
        );
        local.0.push(l);
        remote.0.push(r);
        at_a.close().await;
        at_c.close().await;
    }
    row("EndTask RPC on A", &end_rtt);
    row("baseline: refused at A's own server (node-local)", &local);
    row("refused at C's server (A -> server -> C)", &remote);
    println!(
        "p99 target < {TARGET_P99:?}: {}",
        if remote.pct(0.99) < TARGET_P99 {
            "met"
        } else {
            "MISSED"
        }
    );

    println!(
        "\n== (c) CPU per revocation, {} EndTasks on A, each waited for at C ==",
        args.cpu_tasks
    );
    let w = Workload::connect(&a.endpoint()).await.unwrap();
    let mut live = Vec::with_capacity(args.cpu_tasks);
    for _ in 0..args.cpu_tasks {
        live.push(begin(&w).await);
    }
    // Let the begins' reports settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pids = [
        ("agent A", a.pid().unwrap()),
        ("agent C", c.pid().unwrap()),
        ("replica 1", cl.r1().pid().unwrap()),
        ("replica 2", cl.r2().pid().unwrap()),
    ];
    let cpu = || pids.map(|(_, p)| proc_cpu_time(p).unwrap_or_default());
    let before = cpu();
    let t0 = Instant::now();
    for t in &live {
        w.end_task(&t.id).await.unwrap();
        follower.until_revoked(&t.id).await;
    }
    let wall = t0.elapsed();
    let after = cpu();
    // Baseline: the same processes idle (heartbeats, syncs) for the same wall time.
    let idle_before = cpu();
    tokio::time::sleep(wall).await;
    let idle_after = cpu();
    for (i, (name, _)) in pids.iter().enumerate() {
        let busy = after[i].saturating_sub(before[i]);
        let idle = idle_after[i].saturating_sub(idle_before[i]);
        println!(
            "{name:<10} {:>7.1} µs CPU per revocation ({busy:?} over {wall:.1?}; idle baseline {idle:?} over the same time)",
            busy.as_secs_f64() * 1e6 / args.cpu_tasks as f64,
        );
    }
    println!(
        "throughput: {:.0} revocations/s end to end (one at a time, each waited for at C)",
        args.cpu_tasks as f64 / wall.as_secs_f64()
    );

    println!(
        "\n== (b2) feed bytes per EndTask per follower, {} revoked ==",
        args.large
    );
    let seeded = Instant::now();
    let need = args.large.saturating_sub(follower.revoked.len());
    seed(&a, need, args.seeders).await;
    let seed_time = seeded.elapsed();
    follower.until_len(args.large).await;
    println!(
        "seeded {need} begin+end on A in {seed_time:.1?} ({:.0} tasks/s), all at C's feed after {:.1?}",
        need as f64 / seed_time.as_secs_f64(),
        seeded.elapsed()
    );
    let (mut big, snap_big) = Follower::start(&c).await;
    let large = delta_bytes(&a, &mut big, args.deltas).await;
    bytes_line(&format!("{} revoked", big.revoked.len()), &large, snap_big);
    let ratio = large.iter().sum::<usize>() as f64 / small.iter().sum::<usize>().max(1) as f64;
    println!(
        "per-EndTask bytes at {} vs 100 revoked: {ratio:.2}x (target: independent of the set)",
        args.large
    );
}
