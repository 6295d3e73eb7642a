//! `tessera-fuzz [--seconds N] [--seed S] [TARGET…]`: runs the stable mutation
//! fuzzer on each target for N seconds (default 10). CI runs a short pass;
//! for long, coverage-guided runs use the cargo-fuzz harness in `/fuzz`.

use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut seconds = 10u64;
    let mut seed = 0x7e55e7au64;
    let mut names = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--seconds N")
            }
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).expect("--seed S"),
            "-h" | "--help" => {
                println!(
                    "usage: tessera-fuzz [--seconds N] [--seed S] [id|scope|claims|svid|config]…"
                );
                return;
            }
            other => names.push(other.to_owned()),
        }
    }
    for target in tessera_fuzz::targets() {
        if !names.is_empty() && !names.iter().any(|n| n == target.name) {
            continue;
        }
        let n = tessera_fuzz::run_for(&target, Duration::from_secs(seconds), u64::MAX, seed);
        println!(
            "{:<8} {n:>9} executions in {seconds}s, no failures",
            target.name
        );
    }
}
