//! BeginTask throughput through the group-commit writer, with 1 and 8 concurrent callers,
//! on a real database file (WAL, synchronous=FULL: every answered call is fsynced).
//!
//! `cargo bench -p tessera-store -- --warm-up-time 1 --measurement-time 5`
//!
//! The database goes in a temporary directory under `TESSERA_BENCH_DIR` if set (e.g. the
//! agent's state directory, to measure its disk), else the system temp directory. The
//! result is bounded by the disk's fsync latency: with N callers each waiting for its
//! commit, at most N calls share one fsync.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tessera_identity::{ClientId, TaskId};
use tessera_store::{NewConsent, Store, SvidIssued, TaskRecord};

fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("time fits i64")
}

/// One BeginTask as the agent would record it; `n` makes the id and serial unique.
fn begin_args(n: u64, consent_id: &str) -> (TaskRecord, SvidIssued) {
    let id = TaskId::new();
    let begun_at = now();
    let client = ClientId::new(
        "acme.corp".parse().expect("trust domain"),
        "code-reviewer".parse().expect("client name"),
    );
    let spiffe_id = client.task(id).to_string();
    let task = TaskRecord {
        id,
        client: client.name,
        subject: "alice@acme.corp".into(),
        server: "github".into(),
        scopes: vec![
            "github/tool/get_pull_request".into(),
            "github/tool/list_files".into(),
        ],
        purpose: "review pull request 42".into(),
        consent_id: consent_id.into(),
        pid: 4242,
        begun_at,
        deadline: begun_at + 300,
        ended_at: None,
        end_reason: None,
        serials: Vec::new(),
    };
    let svid = SvidIssued {
        serial: format!("{n:032x}"),
        spiffe_id,
        not_after: begun_at + 300,
    };
    (task, svid)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = match std::env::var_os("TESSERA_BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent),
        None => tempfile::tempdir(),
    }
    .expect("tempdir");
    let store = rt
        .block_on(Store::open(&dir.path().join("bench.db")))
        .expect("open store");
    let consent = rt
        .block_on(store.grant_consent(
            NewConsent {
                client: "code-reviewer".into(),
                subject: "alice@acme.corp".into(),
                server: "github".into(),
                scopes: vec!["github/tool/*".into()],
                expires_at: now() + 86_400,
            },
            "bench",
        ))
        .expect("grant consent");
    let consent_id: Arc<str> = consent.id.into();
    let counter = Arc::new(AtomicU64::new(0));

    let mut group = c.benchmark_group("begin_task");
    group.throughput(Throughput::Elements(1));
    for callers in [1_u64, 8] {
        group.bench_function(format!("{callers}_callers"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    let workers: Vec<_> = (0..callers)
                        .map(|worker| {
                            let store = store.clone();
                            let consent_id = Arc::clone(&consent_id);
                            let counter = Arc::clone(&counter);
                            // Spread `iters` calls over the callers.
                            let calls = iters / callers + u64::from(worker < iters % callers);
                            tokio::spawn(async move {
                                for _ in 0..calls {
                                    let n = counter.fetch_add(1, Ordering::Relaxed);
                                    let (task, svid) = begin_args(n, &consent_id);
                                    store
                                        .begin_task(task, svid, "uid:1000")
                                        .await
                                        .expect("begin task");
                                }
                            })
                        })
                        .collect();
                    for worker in workers {
                        worker.await.expect("worker");
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
    rt.block_on(store.close());
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
