//! Load tool: many simulated agent runtimes against one real `tessera-agent` and the real
//! example MCP server, with the physical baselines measured in the same run.
//!
//! ```text
//! cargo bench -p tessera-e2e --bench load -- [--runtimes 8] [--duration 10] [--calls 3]
//!     [--tasks-per-runtime N] [--sample-every 10] [--live-tasks 10000] [--quick] [--help]
//! ```
//!
//! Phases, in order:
//! 1. **rcgen baseline**: ECDSA P-256 keygen + signing of a leaf with the SVID profile on one
//!    thread, before anything else runs: the physical limit of issuance.
//! 2. **call baseline**: one task, one open mTLS connection to the checked server and one to a
//!    `--dangerous-no-authorization` server (same rmcp server, same rustls mTLS, no checks),
//!    `tools/call` interleaved on a quiet system: the cost of the checks as a ratio.
//! 3. **load**: `--runtimes` concurrent runtimes loop BeginTask → task SVID (picked from a
//!    FetchX509SVID stream by hint, as the example runtime does) → mTLS connect + MCP
//!    initialize → `--calls` × `tools/call` → EndTask → close. One open FetchX509SVID stream
//!    and one Revocations.Watch subscriber of the bench process time when each task's SVID
//!    is pushed and when its end reaches the feed; every `--sample-every`th task also times
//!    EndTask → refusal of a call on its still-open connection. Then the agent's RSS.
//! 4. **live tasks**: a fresh agent; `--live-tasks` tasks begun and held open; the agent's RSS
//!    before and after, per live task, and what a FetchX509SVID stream of the process holding
//!    them receives.
//!
//! Ends with a markdown table (metric | value | target | baseline ratio).
//!
//! Everything runs on this machine: the bench's runtimes (TLS, rmcp, SVID parsing) compete
//! with the agent and the servers for the same cores, so the load numbers are those of the
//! whole system, not of the agent alone. All runtimes live in this one process, so the agent
//! attests them all as this executable (client `code-reviewer`) and binds their tasks to
//! this pid; the live-task phase has them all in one process's stream view.
//!
//! The bench builds the agent and the example server with its own profile first
//! (`TESSERA_BENCH_NO_BUILD=1` uses the binaries as they are). Server logs:
//! `TESSERA_BENCH_SERVER_LOG` (default `warn,tessera_verify::audit=info`), and
//! `TESSERA_BENCH_AUDIT_FILE=0` leaves out the checked server's JSON-lines audit file.

#[path = "../tests/support/mcp.rs"]
mod support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use serde_json::{Map, Value, json};
use support::{CONSENTED, McpServer, SUBJECT, Trust, grant, register_server};
use tessera_e2e::{ProcMemory, Samples, TRUST_DOMAIN, TestAgent};
use tessera_example_agent_runtime::{
    McpConnection, TaskRequest, Workload, install_crypto_provider, measure_refusal_after_end,
    tls_config,
};
use tessera_proto::WORKLOAD_HEADER;
use tessera_proto::tessera::v1::WatchRevocationsRequest;
use tessera_proto::tessera::v1::revocations_client::RevocationsClient;
use tessera_proto::workload::X509svidRequest;
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

const CLIENT: &str = "code-reviewer";
const TOOL: &str = "get_pull_request";
const SCOPE: &str = "github/tool/get_pull_request";
const SVID_WAIT: Duration = Duration::from_secs(5);
const REFUSAL_WAIT: Duration = Duration::from_secs(5);
const TARGET_PROPAGATION_P99: Duration = Duration::from_millis(20);
const TARGET_CALL_RATIO: f64 = 1.10;
const TARGET_RSS: u64 = 64 << 20;
const TARGET_RSS_TASKS: usize = 10_000;
/// tonic's default limit on a received message, which the `spiffe` crate's client keeps.
const TONIC_DEFAULT_MAX_MESSAGE: usize = 4 << 20;
/// The agent's default `task_svid_ttl`, which the bench's agents run with.
const TASK_SVID_TTL: Duration = Duration::from_secs(300);

const AFTER_HELP: &str = "\
Prints, as it goes and then as a markdown table:
  - throughput: tasks/s and calls/s over the load phase, and tasks/s per quarter of it
    (a falling rate means a cost that grows with the tasks already done);
  - p50 / p99 / max of each step: begin (BeginTask RPC), SVID pushed on an open
    FetchX509SVID stream (from BeginTask sent), SVID fetched by hint on a new stream,
    connect (TLS handshake + MCP initialize), call, end (EndTask RPC), close;
  - revocation propagation: EndTask sent -> the task on a Revocations.Watch subscriber
    (every task), and -> a call on the task's still-open connection refused (sampled);
  - the agent's RSS (VmRSS, and VmHWM = peak) after the load, and with --live-tasks tasks
    held open on a fresh agent: per live task, extrapolated to the 10,000-task target;
  - the CPU share of agent, checked server and bench during the load, and the agent's
    open file descriptors per live task;
  - baselines: rcgen P-256 keygen + leaf signing on one thread, 4 KiB append + fdatasync
    in the agent's data directory, and tools/call against a
    --dangerous-no-authorization server interleaved with the checked one.

Environment: TESSERA_BENCH_NO_BUILD=1 uses the built binaries as they are;
TESSERA_BENCH_SERVER_LOG sets the servers' RUST_LOG (default
warn,tessera_verify::audit=info); TESSERA_BENCH_AUDIT_FILE=0 drops the audit file.

Examples:
  cargo bench -p tessera-e2e --bench load -- --quick
  cargo bench -p tessera-e2e --bench load -- --runtimes 16 --duration 30 --calls 10
  cargo bench -p tessera-e2e --bench load -- --live-tasks 0 --sample-every 1";

/// Load test of a real tessera-agent and the example MCP server, with baselines.
///
/// Simulated agent runtimes (all in this process) loop BeginTask → task SVID from the
/// Workload API stream → mTLS connect + MCP initialize → tools/call × K → EndTask, while the
/// bench times every step and how fast ends propagate (revocation feed, refusal on an open
/// connection). Baselines in the same run: raw rcgen keygen+sign (the limit of issuance) and
/// the same tools/call against a server without Tessera's checks. A separate phase holds
/// many tasks open on a fresh agent and reports its memory per live task. Prints a markdown
/// table at the end.
///
/// Run with `cargo bench -p tessera-e2e --bench load -- FLAGS`.
#[derive(Parser, Debug)]
#[command(name = "load", verbatim_doc_comment, after_long_help = AFTER_HELP)]
struct Args {
    /// Concurrent simulated runtimes, each with its own Workload API connection and
    /// running one task at a time.
    #[arg(long, default_value_t = 8)]
    runtimes: usize,
    /// Seconds the runtimes keep starting tasks.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    duration: u64,
    /// Run exactly this many tasks per runtime instead of --duration.
    #[arg(long, value_name = "N")]
    tasks_per_runtime: Option<usize>,
    /// tools/call per task.
    #[arg(long, default_value_t = 3, value_name = "K")]
    calls: usize,
    /// Every Nth task measures EndTask → refusal of a call on its still-open connection
    /// (0: none). EndTask → revocation feed is measured on every task.
    #[arg(long, default_value_t = 10, value_name = "N")]
    sample_every: usize,
    /// Tasks each runtime runs untimed before the measured load.
    #[arg(long, default_value_t = 2, value_name = "N")]
    warmup_tasks: usize,
    /// Tasks held open in the live-task phase on a fresh agent (0: skip the phase).
    #[arg(long, default_value_t = 10_000, value_name = "M")]
    live_tasks: usize,
    /// Concurrent BeginTask callers filling the live-task phase.
    #[arg(long, default_value_t = 8, value_name = "N")]
    live_callers: usize,
    /// Interleaved checked/plain tools/call pairs in the call baseline (0: skip).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    baseline_calls: usize,
    /// rcgen keygen+sign operations in the issuance baseline (0: skip).
    #[arg(long, default_value_t = 2000, value_name = "N")]
    rcgen: usize,
    /// 4 KiB append + fdatasync rounds in the agent's data directory (0: skip): the floor
    /// under BeginTask and EndTask, each durable before it is answered.
    #[arg(long, default_value_t = 200, value_name = "N")]
    fsync: usize,
    /// Smoke run: 2 s of load, 200 live tasks, 100 baseline call pairs, 200 rcgen
    /// operations, 50 fsyncs (flags given explicitly still win).
    #[arg(long)]
    quick: bool,
    /// Passed by `cargo bench`; without it (`cargo test --benches`) the bench does nothing.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn apply_quick(&mut self, m: &ArgMatches) {
        if !self.quick {
            return;
        }
        let default = |id: &str| m.value_source(id) != Some(ValueSource::CommandLine);
        if default("duration") {
            self.duration = 2;
        }
        if default("live_tasks") {
            self.live_tasks = 200;
        }
        if default("baseline_calls") {
            self.baseline_calls = 100;
        }
        if default("rcgen") {
            self.rcgen = 200;
        }
        if default("fsync") {
            self.fsync = 50;
        }
        if default("warmup_tasks") {
            self.warmup_tasks = 1;
        }
    }
}

fn main() -> anyhow::Result<()> {
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches)?;
    if !args.bench {
        return Ok(());
    }
    args.apply_quick(&matches);
    if args.runtimes == 0 || args.live_callers == 0 {
        bail!("--runtimes and --live-callers must be at least 1");
    }
    tessera_e2e::ensure_built(&[
        ("tessera-agent", "tessera-agent"),
        ("tessera-example-mcp-server", support::SERVER_BIN),
    ]);
    install_crypto_provider();
    // First, on a quiet machine and one thread: nothing else of the bench runs yet.
    let rcgen = (args.rcgen > 0).then(|| rcgen_baseline(args.rcgen));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args, rcgen))
}

// === results ===

/// A rate measured over a wall time.
#[derive(Debug, Clone, Copy)]
struct Rate {
    n: usize,
    wall: Duration,
}

impl Rate {
    fn per_s(self) -> f64 {
        self.n as f64 / self.wall.as_secs_f64().max(f64::EPSILON)
    }
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 10.0 {
        format!("{v:.3} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn dist(s: &Samples) -> String {
    if s.0.is_empty() {
        return "no samples".into();
    }
    format!(
        "p50 {} · p99 {} · max {} (n={})",
        ms(s.pct(0.5)),
        ms(s.pct(0.99)),
        ms(s.pct(1.0)),
        s.0.len()
    )
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(f64::EPSILON)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// One row of the final table.
struct Row {
    metric: String,
    value: String,
    target: String,
    ratio: String,
}

fn row(metric: impl Into<String>, value: impl Into<String>) -> Row {
    Row {
        metric: metric.into(),
        value: value.into(),
        target: "—".into(),
        ratio: "—".into(),
    }
}

impl Row {
    fn target(mut self, t: impl Into<String>) -> Row {
        self.target = t.into();
        self
    }

    fn ratio(mut self, r: impl Into<String>) -> Row {
        self.ratio = r.into();
        self
    }
}

fn print_table(rows: &[Row]) {
    println!("\n| metric | value | target | baseline ratio |");
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} |",
            r.metric, r.value, r.target, r.ratio
        );
    }
}

// === phase 1: issuance baseline ===

/// rcgen ECDSA P-256 keygen + signing of a leaf with the SVID profile (URI SAN,
/// cA=false, KeyUsage, both EKUs, AKI, random serial) by a P-256 CA, on this thread. The
/// task-claims extension is left out: a few hundred bytes more to hash change nothing.
fn rcgen_baseline(n: usize) -> (Samples, Rate) {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
    };
    let serial = || {
        let mut b: [u8; 16] = rand::random();
        b[0] = (b[0] & 0x7f).max(1);
        SerialNumber::from_slice(&b)
    };
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("CA key");
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "load bench CA");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::minutes(1);
    ca.not_after = now + time::Duration::days(1);
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::from_ca_cert_der(ca_cert.der(), ca_key).expect("issuer");
    let uri = format!("spiffe://{TRUST_DOMAIN}/client/{CLIENT}/task/01JZ0000000000000000000000");
    let mut samples = Samples(Vec::with_capacity(n));
    let wall = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().expect("uri"))];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        p.serial_number = Some(serial());
        p.not_before = now - time::Duration::seconds(10);
        p.not_after = now + time::Duration::minutes(5);
        std::hint::black_box((
            p.signed_by(&key, &issuer).expect("sign"),
            key.serialize_der(),
        ));
        samples.0.push(t.elapsed());
    }
    let rate = Rate {
        n,
        wall: wall.elapsed(),
    };
    (samples, rate)
}

/// Appends 4 KiB and `fdatasync`s, `n` times, in `dir`: what one durable SQLite WAL
/// commit costs at least on this disk.
fn fsync_baseline(dir: &std::path::Path, n: usize) -> anyhow::Result<Samples> {
    use std::io::Write;
    let path = dir.join("load-bench-fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let page = [0u8; 4096];
    let mut s = Samples(Vec::with_capacity(n));
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&page)?;
        f.sync_data()?;
        s.0.push(t.elapsed());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(s)
}

/// CPU time used so far by the agent, the checked server and this bench.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    agent: Duration,
    server: Duration,
    bench: Duration,
}

fn cpu_now(agent: &TestAgent, server: &McpServer) -> Option<Cpu> {
    Some(Cpu {
        agent: tessera_e2e::proc_cpu_time(agent.pid()?).ok()?,
        server: tessera_e2e::proc_cpu_time(server.child.id()?).ok()?,
        bench: tessera_e2e::proc_cpu_time(std::process::id()).ok()?,
    })
}

/// Share of one core each process used between `a` and `b`, over `wall`.
fn cpu_shares(a: Cpu, b: Cpu, wall: Duration) -> String {
    let pct = |x: Duration, y: Duration| {
        100.0 * y.saturating_sub(x).as_secs_f64() / wall.as_secs_f64().max(f64::EPSILON)
    };
    let (ag, sv, be) = (
        pct(a.agent, b.agent),
        pct(a.server, b.server),
        pct(a.bench, b.bench),
    );
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    format!(
        "agent {ag:.0}% · checked server {sv:.0}% · bench (runtimes) {be:.0}% of one core; \
         together {:.0}% of {cpus} cores",
        (ag + sv + be) / cpus as f64
    )
}

// === shared pieces ===

fn task_request() -> TaskRequest {
    TaskRequest {
        server: "github".into(),
        scopes: vec![SCOPE.into()],
        subject: SUBJECT.into(),
        purpose: "load bench".into(),
        lifetime_secs: 0,
    }
}

fn call_args() -> Option<Map<String, Value>> {
    json!({"repo": "acme/api", "number": 42})
        .as_object()
        .cloned()
}

/// When each key (an SVID hint, a revoked task id) was first seen by a watcher.
#[derive(Default)]
struct Seen(Mutex<HashMap<String, Instant>>);

impl Seen {
    fn note<'a>(&self, keys: impl Iterator<Item = &'a str>) {
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            if !map.contains_key(k) {
                map.insert(k.to_owned(), now);
            }
        }
    }

    /// From each `(key, start)` to when the key was seen; and how many were never seen.
    fn latencies(&self, starts: &[(String, Instant)]) -> (Samples, usize) {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = Samples::default();
        let mut missing = 0;
        for (key, start) in starts {
            match map.get(key) {
                Some(seen) => s.0.push(seen.saturating_duration_since(*start)),
                None => missing += 1,
            }
        }
        (s, missing)
    }
}

/// What the Revocations.Watch subscriber saw last.
#[derive(Default, Debug, Clone, Copy)]
struct FeedStats {
    messages: usize,
    last_len: usize,
    last_bytes: usize,
}

/// Reads this process's FetchX509SVID stream (raw, no SVID parsing, so the watcher costs
/// little) and notes when each hint first appears. Returns once the first message is in.
async fn watch_svid_stream(
    agent: &TestAgent,
    seen: Arc<Seen>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut client = SpiffeWorkloadApiClient::new(TestAgent::channel(&agent.workload).await?)
        .max_decoding_message_size(usize::MAX);
    let mut req = tonic::Request::new(X509svidRequest {});
    req.metadata_mut()
        .insert(WORKLOAD_HEADER, "true".parse().expect("ascii"));
    let mut stream = client.fetch_x509svid(req).await?.into_inner();
    stream.message().await?.context("FetchX509SVID closed")?;
    Ok(tokio::spawn(async move {
        while let Ok(Some(msg)) = stream.message().await {
            seen.note(msg.svids.iter().map(|s| s.hint.as_str()));
        }
    }))
}

/// Subscribes to Revocations.Watch and notes when each task id first appears.
async fn watch_feed(
    agent: &TestAgent,
    seen: Arc<Seen>,
    stats: Arc<Mutex<FeedStats>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut client = RevocationsClient::new(TestAgent::channel(&agent.workload).await?)
        .max_decoding_message_size(usize::MAX);
    let mut stream = client.watch(WatchRevocationsRequest {}).await?.into_inner();
    stream
        .message()
        .await?
        .context("Revocations.Watch closed")?;
    Ok(tokio::spawn(async move {
        while let Ok(Some(set)) = stream.message().await {
            seen.note(set.revoked.iter().map(|r| r.task_id.as_str()));
            let mut st = stats.lock().unwrap_or_else(|p| p.into_inner());
            st.messages += 1;
            st.last_len = set.revoked.len();
            st.last_bytes = prost::Message::encoded_len(&set);
        }
    }))
}

// === phase 2: call baseline ===

/// Interleaved `tools/call` on one open connection to each server, quiet system.
async fn call_baseline(
    endpoint: &str,
    checked_url: &str,
    plain_url: &str,
    n: usize,
) -> anyhow::Result<(Samples, Samples)> {
    let w = Workload::connect(endpoint).await?;
    let task = w.begin_task(&task_request()).await?;
    let cred = w.task_credential(&task.id, SVID_WAIT).await?;
    let checked = McpConnection::connect(checked_url, tls_config(&cred, "github")?).await?;
    let plain = McpConnection::connect(plain_url, tls_config(&cred, "github")?).await?;
    for _ in 0..(n / 10).clamp(10, 200) {
        checked.call(TOOL, call_args()).await;
        plain.call(TOOL, call_args()).await;
    }
    let (mut sc, mut sp) = (Samples::default(), Samples::default());
    for i in 0..n {
        // Alternate which server goes first so neither always sees a warmer cache.
        for first in [i % 2 == 0, i % 2 != 0] {
            let (conn, samples) = if first {
                (&checked, &mut sc)
            } else {
                (&plain, &mut sp)
            };
            let t = Instant::now();
            let out = conn.call(TOOL, call_args()).await;
            samples.0.push(t.elapsed());
            if !out.is_ok() {
                bail!("baseline tools/call: {out}");
            }
        }
    }
    checked.close().await;
    plain.close().await;
    w.end_task(&task.id).await?;
    Ok((sc, sp))
}

// === phase 3: load ===

struct LoadCtx {
    endpoint: String,
    url: String,
    calls: usize,
    sample_every: usize,
    counter: AtomicUsize,
}

#[derive(Clone, Copy)]
enum Limit {
    Until(Instant),
    Tasks(usize),
}

#[derive(Default)]
struct Record {
    begin: Samples,
    svid: Samples,
    connect: Samples,
    call: Samples,
    end: Samples,
    close: Samples,
    refusal: Samples,
    refusal_attempts: u64,
    /// Task id and when its BeginTask was sent.
    begun: Vec<(String, Instant)>,
    /// Task id and when its EndTask was sent.
    ended: Vec<(String, Instant)>,
    /// When each task finished (for throughput over the run).
    done: Vec<Instant>,
    errors: Vec<String>,
}

impl Record {
    fn merge(&mut self, o: Record) {
        for (a, b) in [
            (&mut self.begin, o.begin),
            (&mut self.svid, o.svid),
            (&mut self.connect, o.connect),
            (&mut self.call, o.call),
            (&mut self.end, o.end),
            (&mut self.close, o.close),
            (&mut self.refusal, o.refusal),
        ] {
            a.0.extend(b.0);
        }
        self.refusal_attempts += o.refusal_attempts;
        self.begun.extend(o.begun);
        self.ended.extend(o.ended);
        self.done.extend(o.done);
        self.errors.extend(o.errors);
    }
}

async fn runtime(ctx: Arc<LoadCtx>, limit: Limit) -> Record {
    let mut rec = Record::default();
    let w = match Workload::connect(&ctx.endpoint).await {
        Ok(w) => w,
        Err(e) => {
            rec.errors.push(format!("connect: {e:#}"));
            return rec;
        }
    };
    let mut n = 0;
    let mut consecutive_errors = 0;
    loop {
        match limit {
            Limit::Until(t) if Instant::now() >= t => break,
            Limit::Tasks(max) if n >= max => break,
            _ => {}
        }
        n += 1;
        match one_task(&ctx, &w, &mut rec).await {
            Ok(()) => {
                rec.done.push(Instant::now());
                consecutive_errors = 0;
            }
            Err(e) => {
                rec.errors.push(format!("{e:#}"));
                consecutive_errors += 1;
                if consecutive_errors >= 10 {
                    break;
                }
            }
        }
    }
    rec
}

async fn one_task(ctx: &LoadCtx, w: &Workload, rec: &mut Record) -> anyhow::Result<()> {
    let sampled = ctx.sample_every > 0
        && ctx
            .counter
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(ctx.sample_every);
    let sent = Instant::now();
    let task = w.begin_task(&task_request()).await.context("BeginTask")?;
    rec.begin.0.push(sent.elapsed());
    rec.begun.push((task.id.clone(), sent));
    let out = task_body(ctx, w, rec, &task.id, sampled).await;
    if out.is_err() {
        // Best effort, so a failed task does not stay in every later stream message.
        let _ = w.end_task(&task.id).await;
    }
    out
}

async fn task_body(
    ctx: &LoadCtx,
    w: &Workload,
    rec: &mut Record,
    id: &str,
    sampled: bool,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let cred = w.task_credential(id, SVID_WAIT).await?;
    rec.svid.0.push(t.elapsed());
    let t = Instant::now();
    let conn = McpConnection::connect(&ctx.url, tls_config(&cred, "github")?).await?;
    rec.connect.0.push(t.elapsed());
    for _ in 0..ctx.calls {
        let t = Instant::now();
        let out = conn.call(TOOL, call_args()).await;
        rec.call.0.push(t.elapsed());
        if !out.is_ok() {
            bail!("tools/call: {out}");
        }
    }
    rec.ended.push((id.to_owned(), Instant::now()));
    if sampled {
        let m = measure_refusal_after_end(w, &conn, id, TOOL, call_args(), REFUSAL_WAIT).await?;
        if m.outcome.denial_reason() != Some("revoked") {
            bail!(
                "call after EndTask: {} (expected a revoked denial)",
                m.outcome
            );
        }
        rec.end.0.push(m.end_task_rtt);
        rec.refusal.0.push(m.elapsed);
        rec.refusal_attempts += u64::from(m.attempts);
    } else {
        let t = Instant::now();
        w.end_task(id).await.context("EndTask")?;
        rec.end.0.push(t.elapsed());
    }
    let t = Instant::now();
    conn.close().await;
    rec.close.0.push(t.elapsed());
    Ok(())
}

async fn run_runtimes(ctx: &Arc<LoadCtx>, n: usize, limit: Limit) -> anyhow::Result<Record> {
    let handles: Vec<_> = (0..n)
        .map(|_| tokio::spawn(runtime(Arc::clone(ctx), limit)))
        .collect();
    let mut all = Record::default();
    for h in handles {
        all.merge(h.await?);
    }
    Ok(all)
}

/// Tasks finished per second in each quarter of the run: a falling rate means some cost
/// grows with the tasks already done.
fn rate_by_quarter(done: &[Instant], start: Instant, wall: Duration) -> Vec<f64> {
    let q = wall / 4;
    let mut counts = [0usize; 4];
    for d in done {
        let i = (d.saturating_duration_since(start).as_nanos() / q.as_nanos().max(1)) as usize;
        counts[i.min(3)] += 1;
    }
    counts
        .iter()
        .map(|&c| c as f64 / q.as_secs_f64().max(f64::EPSILON))
        .collect()
}

// === phase 4: live tasks ===

struct Live {
    m: usize,
    before: ProcMemory,
    after: ProcMemory,
    begin: Samples,
    wall: Duration,
    live_metric: Option<String>,
    fds: Option<(usize, usize)>,
    stream_bytes: anyhow::Result<(usize, Duration)>,
    spiffe_client: anyhow::Result<Duration>,
}

async fn live_phase(m: usize, callers: usize) -> anyhow::Result<Live> {
    // All `m` tasks are held by this one process, past the default per-process limit
    // (128) on purpose: the phase measures what many live tasks cost the agent.
    let agent = TestAgent::start(&format!("task_max_live_per_process = {}", m.max(1))).await?;
    agent.register_self(CLIENT).await?;
    grant(&agent, CLIENT, CONSENTED).await?;
    let w = Workload::connect(&agent.endpoint()).await?;
    // Lazily built state (store caches, attestation cache, worker threads) is not the
    // tasks' cost: warm it up with tasks that end before the first reading.
    for _ in 0..100 {
        let t = w.begin_task(&task_request()).await?;
        w.end_task(&t.id).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = agent.memory()?;
    let fds_before = agent.pid().and_then(|p| tessera_e2e::proc_open_fds(p).ok());

    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..callers {
        let next = Arc::clone(&next);
        let w = Workload::connect(&agent.endpoint()).await?;
        handles.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= m {
                    return Ok::<_, tonic::Status>(out);
                }
                let t = Instant::now();
                w.begin_task(&task_request()).await?;
                out.push((i, t.elapsed()));
            }
        }));
    }
    let mut by_index = Vec::with_capacity(m);
    for h in handles {
        by_index.extend(h.await?.context("BeginTask in the live-task phase")?);
    }
    let wall = start.elapsed();
    by_index.sort_unstable_by_key(|(i, _)| *i);
    // Each live task's watcher is spawned after BeginTask answers; let them all start.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = agent.memory()?;
    let fds_after = agent.pid().and_then(|p| tessera_e2e::proc_open_fds(p).ok());
    let live_metric = live_tasks_metric(&agent).await;

    // What a FetchX509SVID stream of this process now receives: every live task's SVID
    // in one message.
    let stream_bytes = async {
        let mut client = SpiffeWorkloadApiClient::new(TestAgent::channel(&agent.workload).await?)
            .max_decoding_message_size(usize::MAX);
        let mut req = tonic::Request::new(X509svidRequest {});
        req.metadata_mut()
            .insert(WORKLOAD_HEADER, "true".parse().expect("ascii"));
        let t = Instant::now();
        let msg = client
            .fetch_x509svid(req)
            .await?
            .into_inner()
            .message()
            .await?
            .context("no message")?;
        Ok((prost::Message::encoded_len(&msg), t.elapsed()))
    }
    .await;
    let spiffe_client = async {
        let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint()).await?;
        let t = Instant::now();
        let ctx = client.fetch_x509_context().await?;
        std::hint::black_box(ctx);
        Ok(t.elapsed())
    }
    .await;
    Ok(Live {
        m,
        before,
        after,
        begin: Samples(by_index.into_iter().map(|(_, d)| d).collect()),
        wall,
        live_metric,
        fds: fds_before.zip(fds_after),
        stream_bytes,
        spiffe_client,
    })
}

/// `tessera_live_tasks` from the agent's /metrics, to confirm the tasks are live.
async fn live_tasks_metric(agent: &TestAgent) -> Option<String> {
    let text = reqwest::get(format!("http://{}/metrics", agent.http))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("tessera_live_tasks "))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_owned)
}

// === the run ===

async fn run(args: Args, rcgen: Option<(Samples, Rate)>) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!("\n== load: {cpus} CPUs, {args:?}");
    let mut rows = Vec::new();
    if let Some((s, r)) = &rcgen {
        println!(
            "rcgen P-256 keygen + sign, one thread: {} — {:.0}/s",
            dist(s),
            r.per_s()
        );
    }

    let agent = TestAgent::start("").await?;
    agent.register_self(CLIENT).await?;
    register_server(&agent, "github", &tessera_e2e::bin(support::SERVER_BIN)).await?;
    grant(&agent, CLIENT, CONSENTED).await?;
    let log = std::env::var("TESSERA_BENCH_SERVER_LOG")
        .unwrap_or_else(|_| "warn,tessera_verify::audit=info".to_owned());
    let audit_file = std::env::var("TESSERA_BENCH_AUDIT_FILE").as_deref() != Ok("0");
    let checked =
        McpServer::start_with_log(&agent, "checked", Trust::Workload, &[], &log, audit_file)
            .await?;
    let plain = McpServer::start_with_log(
        &agent,
        "plain",
        Trust::Workload,
        &["--dangerous-no-authorization"],
        &log,
        false,
    )
    .await?;
    let endpoint = agent.endpoint();
    let fsync = if args.fsync > 0 {
        let dir = agent.dir.path().join("data");
        let n = args.fsync;
        let s = tokio::task::spawn_blocking(move || fsync_baseline(&dir, n)).await??;
        println!(
            "4 KiB append + fdatasync in the agent's data dir: {}",
            dist(&s)
        );
        Some(s)
    } else {
        None
    };

    let baseline = if args.baseline_calls > 0 {
        let (sc, sp) =
            call_baseline(&endpoint, &checked.url, &plain.url, args.baseline_calls).await?;
        println!("tools/call, quiet, checked: {}", dist(&sc));
        println!("tools/call, quiet, plain:   {}", dist(&sp));
        Some((sc, sp))
    } else {
        None
    };

    let stream_seen = Arc::new(Seen::default());
    let feed_seen = Arc::new(Seen::default());
    let feed_stats = Arc::new(Mutex::new(FeedStats::default()));
    let stream_watch = watch_svid_stream(&agent, Arc::clone(&stream_seen)).await?;
    let feed_watch = watch_feed(&agent, Arc::clone(&feed_seen), Arc::clone(&feed_stats)).await?;
    let ctx = Arc::new(LoadCtx {
        endpoint: endpoint.clone(),
        url: checked.url.clone(),
        calls: args.calls,
        sample_every: args.sample_every,
        counter: AtomicUsize::new(0),
    });
    if args.warmup_tasks > 0 {
        let warm = run_runtimes(&ctx, args.runtimes, Limit::Tasks(args.warmup_tasks)).await?;
        if let Some(e) = warm.errors.first() {
            bail!("warm-up failed: {e}\nagent log:\n{}", agent.log_text());
        }
    }
    ctx.counter.store(0, Ordering::Relaxed);
    let mem_idle = agent.memory()?;
    let limit = match args.tasks_per_runtime {
        Some(n) => Limit::Tasks(n),
        None => Limit::Until(Instant::now() + Duration::from_secs(args.duration)),
    };
    println!(
        "load: {} runtimes, {} calls per task, {}",
        args.runtimes,
        args.calls,
        match args.tasks_per_runtime {
            Some(n) => format!("{n} tasks each"),
            None => format!("{} s", args.duration),
        }
    );
    let cpu_start = cpu_now(&agent, &checked);
    let start = Instant::now();
    let rec = run_runtimes(&ctx, args.runtimes, limit).await?;
    let wall = start.elapsed();
    let mem_load = agent.memory()?;
    let cpu = match (cpu_start, cpu_now(&agent, &checked)) {
        (Some(a), Some(b)) => cpu_shares(a, b, wall),
        _ => "unavailable".to_owned(),
    };
    println!("CPU during the load: {cpu}");
    // The watchers may still be reading the last messages.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stream_watch.abort();
    feed_watch.abort();
    let (push, push_missing) = stream_seen.latencies(&rec.begun);
    let (feed, feed_missing) = feed_seen.latencies(&rec.ended);
    let feed_stats = *feed_stats.lock().unwrap_or_else(|p| p.into_inner());
    let tasks = Rate {
        n: rec.done.len(),
        wall,
    };
    let calls = Rate {
        n: rec.call.0.len(),
        wall,
    };
    let quarters = rate_by_quarter(&rec.done, start, wall);
    println!(
        "{} tasks, {} calls in {:.2} s: {:.0} tasks/s, {:.0} calls/s; tasks/s by quarter: {}",
        tasks.n,
        calls.n,
        wall.as_secs_f64(),
        tasks.per_s(),
        calls.per_s(),
        quarters
            .iter()
            .map(|q| format!("{q:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    for (name, s) in [
        ("begin (BeginTask RPC)", &rec.begin),
        ("svid pushed on an open stream", &push),
        ("svid via task_credential", &rec.svid),
        ("connect (mTLS + initialize)", &rec.connect),
        ("call (tools/call)", &rec.call),
        ("end (EndTask RPC)", &rec.end),
        ("close (MCP session)", &rec.close),
        ("EndTask → revocation feed", &feed),
        ("EndTask → refusal on open conn", &rec.refusal),
    ] {
        println!("  {name:<32} {}", dist(s));
    }
    if !rec.errors.is_empty() {
        println!(
            "{} tasks failed; first: {}",
            rec.errors.len(),
            rec.errors[0]
        );
    }
    println!(
        "revocation feed: {} messages to the bench's subscriber, last one {} revoked tasks in {} bytes",
        feed_stats.messages, feed_stats.last_len, feed_stats.last_bytes
    );
    println!(
        "agent RSS: {} before the load, {} after, peak {}",
        mib(mem_idle.rss),
        mib(mem_load.rss),
        mib(mem_load.peak_rss)
    );
    drop(checked);
    drop(plain);
    drop(agent);

    let live = if args.live_tasks > 0 {
        println!(
            "live tasks: beginning {} on a fresh agent with {} callers",
            args.live_tasks, args.live_callers
        );
        let l = live_phase(args.live_tasks, args.live_callers).await?;
        println!(
            "agent RSS {} → {} with {} live tasks (metric tessera_live_tasks = {}); peak {}",
            mib(l.before.rss),
            mib(l.after.rss),
            l.m,
            l.live_metric.as_deref().unwrap_or("?"),
            mib(l.after.peak_rss)
        );
        Some(l)
    } else {
        None
    };

    // === the table ===
    let rc = rcgen.as_ref();
    let vs_rcgen_rate = |r: Rate| {
        rc.map_or("—".into(), |(_, raw)| {
            format!("{:.3}× rcgen/s", r.per_s() / raw.per_s())
        })
    };
    let vs_rcgen_p50 = |s: &Samples| {
        rc.map_or("—".into(), |(raw, _)| {
            format!("{:.1}× rcgen p50", ratio(s.pct(0.5), raw.pct(0.5)))
        })
    };
    rows.push(
        row(
            format!(
                "throughput, {} runtimes × ({} calls/task)",
                args.runtimes, args.calls
            ),
            format!(
                "{:.0} tasks/s · {:.0} calls/s ({} tasks, {:.1} s; by quarter {})",
                tasks.per_s(),
                calls.per_s(),
                tasks.n,
                wall.as_secs_f64(),
                quarters
                    .iter()
                    .map(|q| format!("{q:.0}"))
                    .collect::<Vec<_>>()
                    .join("/")
            ),
        )
        .ratio(vs_rcgen_rate(tasks)),
    );
    if !rec.errors.is_empty() {
        rows.push(row(
            "failed tasks",
            format!("{} (first: {})", rec.errors.len(), rec.errors[0]),
        ));
    }
    let vs_fsync_p50 = |s: &Samples| {
        fsync.as_ref().map_or(String::new(), |f| {
            format!("; {:.1}× fsync p50", ratio(s.pct(0.5), f.pct(0.5)))
        })
    };
    rows.push(row("CPU during the load phase", cpu));
    rows.push(row("begin: BeginTask RPC", dist(&rec.begin)).ratio(format!(
        "{}{}",
        vs_rcgen_p50(&rec.begin),
        vs_fsync_p50(&rec.begin)
    )));
    let mut push_value = dist(&push);
    if push_missing > 0 {
        let _ = write!(push_value, ", {push_missing} never seen");
    }
    rows.push(row(
        "svid-in-stream: BeginTask sent → hint on an open FetchX509SVID stream",
        push_value,
    ));
    rows.push(row(
        "svid fetch: new Workload API stream → SVID with the hint (task_credential)",
        dist(&rec.svid),
    ));
    rows.push(row(
        "connect: TLS handshake + MCP initialize",
        dist(&rec.connect),
    ));
    let plain_p50 = baseline.as_ref().map(|(_, p)| p.pct(0.5));
    rows.push(
        row("call: tools/call under load (checked)", dist(&rec.call)).ratio(
            plain_p50.map_or("—".into(), |p| {
                format!("{:.2}× quiet plain p50", ratio(rec.call.pct(0.5), p))
            }),
        ),
    );
    rows.push(
        row("end: EndTask RPC", dist(&rec.end))
            .ratio(vs_fsync_p50(&rec.end).trim_start_matches("; ").to_owned()),
    );
    rows.push(row("close: MCP session close", dist(&rec.close)));
    let mut feed_value = dist(&feed);
    if feed_missing > 0 {
        let _ = write!(feed_value, ", {feed_missing} never seen");
    }
    rows.push(
        row(
            "EndTask sent → task on a Revocations.Watch subscriber",
            feed_value,
        )
        .target(format!(
            "p99 < {} — {}",
            ms(TARGET_PROPAGATION_P99),
            verdict(!feed.0.is_empty() && feed.pct(0.99) < TARGET_PROPAGATION_P99)
        )),
    );
    // Revoked entries stay on the feed until their SVIDs expire, and every change sends
    // the whole set: at a steady end rate the message settles at rate × SVID TTL entries.
    let per_entry = feed_stats.last_bytes as f64 / feed_stats.last_len.max(1) as f64;
    let steady = tasks.per_s() * TASK_SVID_TTL.as_secs_f64();
    rows.push(
        row(
            "revoked set on the feed at the end (one message)",
            format!(
                "{} tasks in {} KiB ({per_entry:.0} B each), {} messages to the subscriber; \
                 at {:.0} ends/s it settles near {steady:.0} tasks = {} per message",
                feed_stats.last_len,
                feed_stats.last_bytes / 1024,
                feed_stats.messages,
                tasks.per_s(),
                mib((steady * per_entry) as u64)
            ),
        )
        .target(format!(
            "< 4 MiB (verifiers' tonic limit) — {} ({:.0} ends/s max over 5 min)",
            verdict(steady * per_entry < TONIC_DEFAULT_MAX_MESSAGE as f64),
            TONIC_DEFAULT_MAX_MESSAGE as f64 / per_entry / TASK_SVID_TTL.as_secs_f64()
        )),
    );
    if args.sample_every > 0 {
        let attempts = if rec.refusal.0.is_empty() {
            0.0
        } else {
            rec.refusal_attempts as f64 / rec.refusal.0.len() as f64
        };
        rows.push(
            row(
                format!(
                    "EndTask sent → call on the open connection refused (every {}th task)",
                    args.sample_every
                ),
                format!("{}; {attempts:.2} calls per refusal", dist(&rec.refusal)),
            )
            .target(format!(
                "p99 < {} — {}",
                ms(TARGET_PROPAGATION_P99),
                verdict(
                    !rec.refusal.0.is_empty() && rec.refusal.pct(0.99) < TARGET_PROPAGATION_P99
                )
            )),
        );
    }
    if let Some((sc, sp)) = &baseline {
        let r50 = ratio(sc.pct(0.5), sp.pct(0.5));
        let r99 = ratio(sc.pct(0.99), sp.pct(0.99));
        rows.push(
            row("call baseline, quiet: checked server", dist(sc))
                .target(format!(
                    "p50 ≤ {TARGET_CALL_RATIO:.2}× plain — {}",
                    verdict(r50 <= TARGET_CALL_RATIO)
                ))
                .ratio(format!("p50 {r50:.2}× · p99 {r99:.2}× plain")),
        );
        rows.push(row(
            "call baseline, quiet: plain mTLS (--dangerous-no-authorization)",
            dist(sp),
        ));
    }
    if let Some((s, r)) = rc {
        rows.push(row(
            "rcgen P-256 keygen + leaf sign, one thread",
            format!("{:.0}/s · {}", r.per_s(), dist(s)),
        ));
    }
    rows.push(row(
        "agent RSS, load phase",
        format!(
            "{} idle → {} at the end; peak (VmHWM) {}",
            mib(mem_idle.rss),
            mib(mem_load.rss),
            mib(mem_load.peak_rss)
        ),
    ));
    if let Some(l) = &live {
        let grown = l.after.rss.saturating_sub(l.before.rss);
        let per_task = grown as f64 / l.m as f64;
        let at_target = l.before.rss as f64 + per_task * TARGET_RSS_TASKS as f64;
        let (target_value, note) = if l.m >= TARGET_RSS_TASKS {
            (l.after.rss as f64, "")
        } else {
            (at_target, ", extrapolated")
        };
        rows.push(
            row(
                format!("agent RSS with {} live tasks (fresh agent)", l.m),
                format!(
                    "{} → {}; {:.2} KiB per live task; peak {}",
                    mib(l.before.rss),
                    mib(l.after.rss),
                    per_task / 1024.0,
                    mib(l.after.peak_rss)
                ),
            )
            .target(format!(
                "< 64 MiB at {TARGET_RSS_TASKS} live — {}{note} ({})",
                verdict(target_value < TARGET_RSS as f64),
                mib(target_value as u64)
            )),
        );
        let decile = (l.m / 10).max(1);
        let first = Samples(l.begin.0[..decile.min(l.begin.0.len())].to_vec());
        let last = Samples(l.begin.0[l.begin.0.len().saturating_sub(decile)..].to_vec());
        rows.push(row(
            format!(
                "BeginTask filling {} live tasks, {} callers",
                l.m, args.live_callers
            ),
            format!(
                "{:.0} tasks/s; p50 first tenth {} · last tenth {}; p99 last tenth {}",
                Rate {
                    n: l.m,
                    wall: l.wall
                }
                .per_s(),
                ms(first.pct(0.5)),
                ms(last.pct(0.5)),
                ms(last.pct(0.99))
            ),
        ));
        if let Some((b, a)) = l.fds {
            rows.push(row(
                format!("agent open file descriptors with {} live tasks", l.m),
                format!(
                    "{b} → {a} ({:.2} per live task; RLIMIT_NOFILE bounds the live tasks)",
                    (a.saturating_sub(b)) as f64 / l.m as f64
                ),
            ));
        }
        rows.push(row(
            format!("FetchX509SVID message of the process holding {} tasks", l.m),
            match &l.stream_bytes {
                Ok((bytes, t)) => format!(
                    "{} in {} ({})",
                    mib(*bytes as u64),
                    ms(*t),
                    if *bytes > TONIC_DEFAULT_MAX_MESSAGE {
                        "over the 4 MiB tonic default a standard client accepts"
                    } else {
                        "within the 4 MiB tonic default"
                    }
                ),
                Err(e) => format!("error: {e:#}"),
            },
        ));
        rows.push(row(
            "spiffe crate fetch_x509_context with those tasks",
            match &l.spiffe_client {
                Ok(t) => format!("ok in {}", ms(*t)),
                // tonic repeats the message in its Display; its first clause says it all.
                Err(e) => format!(
                    "error: {}",
                    e.to_string().split(": code:").next().unwrap_or_default()
                ),
            },
        ));
    }
    print_table(&rows);
    Ok(())
}
