//! Tasks against a real `tessera-agent`: BeginTask → SVID in hand, throughput
//! with concurrent callers (each task durable before it is answered), and
//! EndTask → revocation visible on a feed subscriber. Baselines in the same run:
//! raw rcgen P-256 keygen + sign per second, the physical limit of issuance; an RPC
//! the agent refuses at once from 8 callers (the gRPC transport alone, client and
//! server); and ListTasks from 8 callers with no task live (attestation and one read,
//! no key, no durable write).
//!
//! ```text
//! cargo bench -p tessera-e2e --bench tasks
//! ```
//! Targets (2 cores): BeginTask p99 < 2 ms for one caller; ≥ 5,000 tasks/s with 8
//! concurrent callers; EndTask → feed p99 < 20 ms.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tessera_e2e::{Samples, TestAgent};
use tessera_proto::tessera::v1::revocations_client::RevocationsClient;
use tessera_proto::tessera::v1::tasks_client::TasksClient;
use tessera_proto::tessera::v1::{
    BeginTaskRequest, EndTaskRequest, GrantConsentRequest, ListTasksRequest,
    WatchRevocationsRequest,
};
use tessera_proto::workload::ValidateJwtsvidRequest;
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::transport::Channel;

const SEQUENTIAL: usize = 2000;
const CONCURRENT: usize = 8;
const PER_CALLER: usize = 1000;
const FEED_SAMPLES: usize = 500;

fn req() -> BeginTaskRequest {
    BeginTaskRequest {
        purpose: "bench".into(),
        subject: "alice".into(),
        server: "github".into(),
        scopes: vec![
            "github/tool/get_pull_request".into(),
            "github/tool/list_pulls".into(),
        ],
        lifetime_secs: 0,
        client: String::new(),
        bind_to_parent: false,
    }
}

/// The store writer's (commits, writes, commit seconds) from the agent's /metrics, if
/// it exports them (an agent built before they existed does not).
async fn writer_counters(agent: &TestAgent) -> Option<(f64, f64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut http = tokio::net::TcpStream::connect(agent.http).await.unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    http.read_to_string(&mut text).await.unwrap();
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
    };
    Some((
        value("tessera_store_commits_total ")?,
        value("tessera_store_writes_total ")?,
        value("tessera_store_commit_seconds_total ")?,
    ))
}

/// "commits, mean writes per commit, mean ms per commit" between two readings.
fn writer_line(before: Option<(f64, f64, f64)>, after: Option<(f64, f64, f64)>) -> String {
    let (Some(before), Some(after)) = (before, after) else {
        return "no tessera_store_* metrics from this agent".to_owned();
    };
    let commits = after.0 - before.0;
    format!(
        "{commits:.0} group commits, {:.2} writes each, {:.3} ms each (BEGIN..COMMIT)",
        (after.1 - before.1) / commits,
        (after.2 - before.2) * 1e3 / commits
    )
}

/// [`CONCURRENT`] callers, each on a connection of its own, each making [`PER_CALLER`]
/// calls of `call` one after another: every call's latency, and the wall time.
async fn concurrent<F, Fut>(agent: &TestAgent, call: F) -> (Samples, Duration)
where
    F: Fn(Channel) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let mut clients = Vec::new();
    for _ in 0..CONCURRENT {
        clients.push(TestAgent::channel(&agent.workload).await.unwrap());
    }
    let wall = Instant::now();
    let handles: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut s = Samples::default();
                for _ in 0..PER_CALLER {
                    let t = Instant::now();
                    call(client.clone()).await;
                    s.0.push(t.elapsed());
                }
                s
            })
        })
        .collect();
    let mut all = Samples::default();
    for h in handles {
        all.0.extend(h.await.unwrap().0);
    }
    (all, wall.elapsed())
}

/// CPU time (user + system) the agent and this process have used so far.
fn cpu_times(agent: &TestAgent) -> Option<(Duration, Duration)> {
    let agent = tessera_e2e::proc_cpu_time(agent.pid()?).ok()?;
    let this = tessera_e2e::proc_cpu_time(std::process::id()).ok()?;
    Some((agent, this))
}

/// "CPU per <unit>: agent …, callers …" over `n` units between two readings: the budget
/// the machine's cores put on throughput (two cores at 5,000 tasks/s leave 400 µs for
/// both).
fn cpu_line(
    before: Option<(Duration, Duration)>,
    after: Option<(Duration, Duration)>,
    n: usize,
    unit: &str,
) -> String {
    let (Some(before), Some(after)) = (before, after) else {
        return "no CPU times from /proc".to_owned();
    };
    let per_unit = |a: Duration, b: Duration| (a - b).as_secs_f64() * 1e6 / n as f64;
    let agent = per_unit(after.0, before.0);
    let callers = per_unit(after.1, before.1);
    format!(
        "CPU per {unit}: agent {agent:.0} µs, the {CONCURRENT} callers {callers:.0} µs, \
         together {:.0} µs",
        agent + callers
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn rcgen_baseline(n: usize) -> (Samples, Duration) {
    use rcgen::{CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let mut s = Samples::default();
    let wall = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(
            "spiffe://bench.test/client/x".try_into().unwrap(),
        )];
        p.is_ca = IsCa::ExplicitNoCa;
        std::hint::black_box(p.signed_by(&key, &issuer).unwrap());
        s.0.push(t.elapsed());
    }
    (s, wall.elapsed())
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    tessera_e2e::ensure_built(&[("tessera-agent", "tessera-agent")]);
    // Every task begun here stays live, all in this one process: lift the per-process
    // limit (its default, 128, keeps a FetchX509SVID message under 4 MiB; nothing here
    // opens that stream).
    let agent = TestAgent::start("task_max_live_per_process = 100000")
        .await
        .unwrap();
    agent.register_self("bench").await.unwrap();
    agent
        .admin_client()
        .await
        .unwrap()
        .grant_consent(GrantConsentRequest {
            client: "bench".into(),
            subject: "alice".into(),
            server: "github".into(),
            scopes: vec!["github/tool/*".into()],
            expires_at_unix: 0,
            ttl_secs: 3600,
        })
        .await
        .unwrap();
    // Baselines. The transport alone: an RPC the agent refuses before attesting the
    // caller or touching the store (the Workload API's ValidateJWTSVID without its
    // required header).
    let refused_cpu = cpu_times(&agent);
    let (refused, refused_wall) = concurrent(&agent, |c| async move {
        let status = SpiffeWorkloadApiClient::new(c)
            .validate_jwtsvid(ValidateJwtsvidRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    })
    .await;
    // Attestation and one read, before any task exists: ListTasks returns nothing.
    let list_cpu = cpu_times(&agent);
    let (list, list_wall) = concurrent(&agent, |c| async move {
        let listed = TasksClient::new(c)
            .list_tasks(ListTasksRequest {
                include_ended: false,
            })
            .await
            .unwrap();
        assert!(listed.into_inner().tasks.is_empty());
    })
    .await;
    let list_cpu_end = cpu_times(&agent);

    let channel = TestAgent::channel(&agent.workload).await.unwrap();
    let mut client = TasksClient::new(channel.clone());
    for _ in 0..100 {
        client.begin_task(req()).await.unwrap();
    }

    // (a) One caller: BeginTask → SVID in hand.
    let seq_writer = writer_counters(&agent).await;
    let mut begin = Samples::default();
    let wall = Instant::now();
    for _ in 0..SEQUENTIAL {
        let t = Instant::now();
        let resp = client.begin_task(req()).await.unwrap().into_inner();
        assert!(!resp.svid.unwrap().x509_svid.is_empty());
        begin.0.push(t.elapsed());
    }
    let seq_wall = wall.elapsed();
    let conc_writer = writer_counters(&agent).await;

    // (b) Eight callers, each its own connection.
    let cpu_before = cpu_times(&agent);
    let (conc, conc_wall) = concurrent(&agent, |c| async move {
        TasksClient::new(c).begin_task(req()).await.unwrap();
    })
    .await;
    let cpu_after = cpu_times(&agent);
    let conc_writer_end = writer_counters(&agent).await;

    // (c) EndTask → revocation visible on a feed subscriber.
    let mut feed = RevocationsClient::new(channel.clone())
        .watch(WatchRevocationsRequest {})
        .await
        .unwrap()
        .into_inner();
    feed.next().await.unwrap().unwrap();
    let mut end_to_feed = Samples::default();
    for _ in 0..FEED_SAMPLES {
        let id = client
            .begin_task(req())
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap()
            .id;
        let t = Instant::now();
        let mut end_client = client.clone();
        let end_id = id.clone();
        let end = tokio::spawn(async move {
            end_client
                .end_task(EndTaskRequest { task_id: end_id })
                .await
        });
        loop {
            let set = feed.next().await.unwrap().unwrap();
            if set.revoked.iter().any(|r| r.task_id == id) {
                break;
            }
        }
        end_to_feed.0.push(t.elapsed());
        end.await.unwrap().unwrap();
    }

    let (raw, raw_wall) = rcgen_baseline(SEQUENTIAL);

    println!(
        "\nTasks against a real tessera-agent ({} CPUs)",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "operation", "p50 ms", "p99 ms", "p99.9 ms", "mean ms", "per s"
    );
    let row = |name: &str, s: &Samples, rate: Option<(usize, Duration)>| {
        let per_s = rate.map_or("-".to_owned(), |(n, wall)| {
            format!("{:.0}", n as f64 / wall.as_secs_f64())
        });
        println!(
            "{name:<44} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {per_s:>10}",
            ms(s.pct(0.5)),
            ms(s.pct(0.99)),
            ms(s.pct(0.999)),
            ms(s.mean()),
        );
    };
    row(
        "BeginTask → SVID, 1 caller",
        &begin,
        Some((SEQUENTIAL, seq_wall)),
    );
    println!("  store writer: {}", writer_line(seq_writer, conc_writer));
    row(
        "BeginTask → SVID, 8 callers",
        &conc,
        Some((CONCURRENT * PER_CALLER, conc_wall)),
    );
    println!(
        "  store writer: {}",
        writer_line(conc_writer, conc_writer_end)
    );
    println!(
        "  {}",
        cpu_line(cpu_before, cpu_after, CONCURRENT * PER_CALLER, "task")
    );
    row("EndTask → revocation on the feed", &end_to_feed, None);
    row(
        "baseline: rcgen P-256 keygen + sign",
        &raw,
        Some((SEQUENTIAL, raw_wall)),
    );
    row(
        "baseline: RPC refused at once, 8 callers",
        &refused,
        Some((CONCURRENT * PER_CALLER, refused_wall)),
    );
    println!(
        "  {}",
        cpu_line(refused_cpu, list_cpu, CONCURRENT * PER_CALLER, "call")
    );
    row(
        "baseline: ListTasks (no tasks), 8 callers",
        &list,
        Some((CONCURRENT * PER_CALLER, list_wall)),
    );
    println!(
        "  {}",
        cpu_line(list_cpu, list_cpu_end, CONCURRENT * PER_CALLER, "call")
    );
    println!(
        "8-caller BeginTask throughput is {:.2}× the 8-caller ListTasks rate",
        conc_wall.as_secs_f64().recip() / list_wall.as_secs_f64().recip()
    );
    println!(
        "8-caller throughput is {:.2}× the single-core raw keygen+sign rate",
        (CONCURRENT * PER_CALLER) as f64
            / conc_wall.as_secs_f64()
            / (SEQUENTIAL as f64 / raw_wall.as_secs_f64())
    );
}
