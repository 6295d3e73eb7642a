//! Server writes on a real PostgreSQL with durable commits (fsync and synchronous_commit
//! on, unlike the tests): the latency of one versioned change, the rate of versioned
//! changes and of audit appends (which no counter serialises) from concurrent writers on
//! two replicas, and how long a change takes to reach the other replica's memory.
//!
//!     cargo bench -p tessera-server --bench writes
//!
//! `TESSERA_BENCH_SECONDS` (default 3) is the length of each throughput run. Without
//! PostgreSQL's binaries it prints why and exits (see tessera-pgtest).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tessera_pgtest::PgServer;
use tessera_server::{EntryKind, NewEntry, PgStore, PgStoreOptions, Replica, ReplicaOptions};

const WRITERS: usize = 16;
const SAMPLES: usize = 300;

fn entry(client: &str, selector: String) -> NewEntry {
    NewEntry {
        kind: EntryKind::Client,
        client: client.to_owned(),
        selectors: vec![selector],
        svid_ttl_secs: None,
    }
}

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    format!("p50 {:>9.3?}  p99 {:>9.3?}", at(50), at(99))
}

/// Runs `write(store, writer, i)` from [`WRITERS`] tasks spread over `stores` for
/// `seconds`; returns writes per second.
async fn throughput<F, Fut>(stores: &[PgStore], seconds: u64, write: F) -> f64
where
    F: Fn(PgStore, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let write = Arc::new(write);
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let began = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, write, done) = (
                stores[w % stores.len()].clone(),
                Arc::clone(&write),
                Arc::clone(&done),
            );
            tokio::spawn(async move {
                let mut i = 0;
                while Instant::now() < until {
                    write(store.clone(), w, i).await;
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    done.load(Ordering::Relaxed) as f64 / began.elapsed().as_secs_f64()
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
    let options = pg.create_database().await.expect("database");
    let connect = |n| {
        let options = options.clone();
        async move {
            let mut store_options = PgStoreOptions::default();
            store_options.max_connections = n;
            PgStore::connect(options, &store_options)
                .await
                .expect("connect")
        }
    };
    let (one, two) = (connect(WRITERS as u32).await, connect(WRITERS as u32).await);
    let slow_poll = ReplicaOptions::default().poll_interval(Duration::from_secs(3600));
    let other = Replica::start(two.clone(), slow_poll)
        .await
        .expect("replica");

    println!(
        "tessera-server writes, PostgreSQL with fsync on, {WRITERS} writers over 2 replicas where concurrent"
    );
    let mut latencies = Vec::with_capacity(SAMPLES);
    let mut propagation = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let began = Instant::now();
        let written = one
            .create_entry(entry("lat", format!("unix:uid:{i}")), "bench")
            .await
            .expect("write");
        let committed = Instant::now();
        latencies.push(committed - began);
        tokio::time::timeout(
            Duration::from_secs(30),
            other.wait_for_version(written.version),
        )
        .await
        .expect("propagated");
        propagation.push(committed.elapsed());
    }
    println!(
        "  one versioned change (create_entry), sequential   {}",
        percentiles(latencies)
    );
    println!(
        "  change -> other replica's memory                  {}",
        percentiles(propagation)
    );

    let stores = [one.clone(), two.clone()];
    let changes = throughput(&stores, seconds, |store, w, i| async move {
        store
            .create_entry(entry(&format!("w{w}"), format!("unix:uid:{i}")), "bench")
            .await
            .expect("write");
    })
    .await;
    println!("  versioned changes/s (create_entry)                {changes:>9.0}");
    let appends = throughput(&stores, seconds, |store, w, i| async move {
        store
            .append_audit(
                "task.begin",
                "bench",
                &serde_json::json!({ "w": w, "i": i }),
            )
            .await
            .expect("append");
    })
    .await;
    println!("  audit appends/s (no version counter)              {appends:>9.0}");
    let version = one.current_version().await.expect("version");
    let began = Instant::now();
    let snapshot = one.snapshot().await.expect("snapshot");
    println!(
        "  snapshot of {} entries (version {version})          {:>9.3?}",
        snapshot.entries.len(),
        began.elapsed()
    );
}
