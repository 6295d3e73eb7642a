//! The verifier's revoked set at 50,000 entries: applying one delta (one revoked task,
//! as a task ending anywhere in the trust domain sends) and looking a credential up
//! (the per-request cost). Prints p50/p99 of each beside a no-op baseline measured
//! interleaved in the same run (the machine's own noise), then runs criterion.
//!
//! Before `Follow`, every change re-sent and re-built the whole set; a delta's cost
//! here must not grow with the set.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use tessera_identity::TaskId;
use tessera_proto::tessera::v1::revocation_update::Update;
use tessera_proto::tessera::v1::{
    RevocationDelta, RevocationSnapshot, RevocationUpdate, RevokedTask,
};
use tessera_verify::RevocationWatcher;

const SET: usize = 50_000;
const SAMPLES: usize = 20_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn revoked(i: usize) -> RevokedTask {
    let id = TaskId::new();
    RevokedTask {
        task_id: id.to_string(),
        spiffe_id: format!("spiffe://acme.corp/client/code-reviewer/task/{id}"),
        serials: vec![format!("{:032x}", 0x7000_0000_0000_0000_u128 + i as u128)],
        reason: "ended".into(),
        revoked_at_unix_ms: now_ms(),
        until_unix: now_ms() / 1000 + 3600,
        node: String::new(),
    }
}

/// A watcher holding `SET` revoked tasks (in 1,000-entry pages, as an agent sends them).
fn watcher() -> RevocationWatcher {
    let w = RevocationWatcher::detached(Duration::from_secs(3600));
    let pages = SET / 1000;
    for p in 0..pages {
        w.apply_update(&RevocationUpdate {
            feed_id: "bench".into(),
            update: Some(Update::Snapshot(RevocationSnapshot {
                version: 1,
                trust_domain: "acme.corp".into(),
                revoked: (0..1000).map(|i| revoked(p * 1000 + i)).collect(),
                revoked_node_cas: Vec::new(),
                more: p + 1 < pages,
            })),
            current_as_of_unix_ms: now_ms(),
        })
        .unwrap();
    }
    assert_eq!(w.revoked_count(), SET);
    assert!(w.is_fresh());
    w
}

fn delta(from: u64, entry: RevokedTask) -> RevocationUpdate {
    RevocationUpdate {
        feed_id: "bench".into(),
        update: Some(Update::Delta(RevocationDelta {
            from_version: from,
            version: from + 1,
            revoked: vec![entry],
            revoked_node_cas: Vec::new(),
        })),
        current_as_of_unix_ms: now_ms(),
    }
}

fn spin(rounds: u64) -> u64 {
    let mut x = black_box(0x9e37_79b9_7f4a_7c15_u64);
    for _ in 0..rounds {
        x = black_box(x.rotate_left(7) ^ (x >> 3)).wrapping_mul(0x2545_f491_4f6c_dd1d);
    }
    x
}

/// Rounds of [`spin`] that take about `target`.
fn calibrate(target: Duration) -> u64 {
    let mut rounds = 16u64;
    loop {
        let t = Instant::now();
        for _ in 0..100 {
            black_box(spin(rounds));
        }
        let each = t.elapsed() / 100;
        if each >= target / 2 || rounds > 1 << 30 {
            return ((rounds as f64 * target.as_secs_f64() / each.as_secs_f64()) as u64).max(1);
        }
        rounds *= 2;
    }
}

fn pct(samples: &mut [u64], q: f64) -> f64 {
    samples.sort_unstable();
    samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)] as f64 / 1000.0
}

fn report(name: &str, samples: &mut [u64]) {
    println!(
        "{name}: p50 {:.2} µs, p99 {:.2} µs",
        pct(samples, 0.50),
        pct(samples, 0.99)
    );
}

/// Times `op` `SAMPLES` times, interleaved with a no-op of its median length.
fn measure(name: &str, mut op: impl FnMut()) {
    let mut warm: Vec<u64> = (0..1000)
        .map(|_| {
            let t = Instant::now();
            op();
            t.elapsed().as_nanos() as u64
        })
        .collect();
    warm.sort_unstable();
    let rounds = calibrate(Duration::from_nanos(warm[warm.len() / 2].max(1)));
    let (mut ops, mut baseline) = (Vec::with_capacity(SAMPLES), Vec::with_capacity(SAMPLES));
    for _ in 0..SAMPLES {
        let t = Instant::now();
        op();
        ops.push(t.elapsed().as_nanos() as u64);
        let t = Instant::now();
        black_box(spin(black_box(rounds)));
        baseline.push(t.elapsed().as_nanos() as u64);
    }
    report(name, &mut ops);
    report("  no-op baseline of the same length", &mut baseline);
}

fn percentiles() {
    let w = watcher();
    // Entries are made beforehand: the delta's own construction is not the verifier's.
    let mut version = w.version();
    let mut entries: Vec<RevocationUpdate> = (0..SAMPLES + 1000)
        .map(|i| {
            let d = delta(version, revoked(SET + i));
            version += 1;
            d
        })
        .collect();
    entries.reverse();
    measure(
        &format!("apply a 1-task delta to a {SET}-entry set"),
        || {
            let d = entries.pop().unwrap();
            w.apply_update(black_box(&d)).unwrap();
        },
    );
    let live = TaskId::new();
    measure(
        &format!(
            "status lookup (not revoked) in a {}-entry set",
            w.revoked_count()
        ),
        || {
            black_box(w.status(black_box(&live), black_box("0102")));
        },
    );
}

fn bench(c: &mut Criterion) {
    percentiles();
    let w = watcher();
    let mut version = w.version();
    c.bench_function("revocation/apply_delta_50k", |b| {
        b.iter_batched(
            || {
                let d = delta(version, revoked(0));
                version += 1;
                d
            },
            |d| w.apply_update(&d).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    let live = TaskId::new();
    c.bench_function("revocation/status_50k", |b| {
        b.iter(|| black_box(w.status(black_box(&live), black_box("0102"))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
