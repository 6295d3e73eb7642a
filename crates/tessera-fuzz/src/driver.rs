//! A small, deterministic mutation fuzzer for the stable toolchain: no
//! coverage feedback, but seeded from valid inputs and aware of the tokens
//! these grammars care about, which finds the shallow bugs quickly.

use std::time::{Duration, Instant};

use crate::Target;

/// Tokens worth splicing into IDs, scopes, DER and TOML.
const TOKENS: &[&[u8]] = &[
    b"/",
    b"//",
    b".",
    b"..",
    b"*",
    b"%2e",
    b"%",
    b":",
    b"@",
    b"?",
    b"#",
    b"spiffe://",
    b"task",
    b"client",
    b"mcp",
    b"\0",
    b"\n",
    b"\xff",
    b"\x30\x82",
    b"\x0c\x00",
    b"\"",
    b"=",
    b"[",
    b"]",
    "\u{202e}".as_bytes(),
];

/// A xorshift-driven byte mutator.
#[derive(Debug, Clone)]
pub struct Mutator {
    state: u64,
}

impl Mutator {
    /// A mutator with a fixed seed (runs are reproducible).
    pub fn new(seed: u64) -> Self {
        Mutator { state: seed.max(1) }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// Applies 1–4 random mutations to `input`.
    pub fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..=self.below(4) {
            let pos = self.below(out.len() + 1);
            match self.below(7) {
                0 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out[i] ^= 1 << self.below(8);
                }
                1 => out.insert(pos, self.next() as u8),
                2 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out.remove(i);
                }
                3 => {
                    let t = TOKENS[self.below(TOKENS.len())];
                    out.splice(pos..pos, t.iter().copied());
                }
                4 if !out.is_empty() => {
                    let end = pos + self.below(out.len() - pos.min(out.len()) + 1);
                    out.truncate(end.min(out.len()));
                }
                5 if out.len() > 1 => {
                    let a = self.below(out.len());
                    let b = a + self.below(out.len() - a);
                    let chunk = out[a..b].to_vec();
                    out.splice(pos.min(out.len())..pos.min(out.len()), chunk);
                }
                _ => {
                    let i = self.below(out.len().max(1));
                    if let Some(b) = out.get_mut(i) {
                        *b = self.next() as u8;
                    }
                }
            }
        }
        out
    }
}

/// Runs `target` on mutations of its seeds for `budget` or `max_execs`,
/// whichever comes first; returns the number of executions. A broken
/// invariant panics with the input that caused it.
pub fn run_for(target: &Target, budget: Duration, max_execs: u64, seed: u64) -> u64 {
    let seeds = (target.seeds)();
    let mut corpus = seeds.clone();
    let mut m = Mutator::new(seed);
    let start = Instant::now();
    let mut execs = 0u64;
    for s in &seeds {
        (target.run)(s);
        execs += 1;
    }
    while execs < max_execs && start.elapsed() < budget {
        let base = &corpus[m.below(corpus.len())];
        let input = m.mutate(base);
        let result = std::panic::catch_unwind(|| (target.run)(&input));
        if let Err(e) = result {
            panic!(
                "fuzz target {} failed on input {:?} (hex {}): {:?}",
                target.name,
                String::from_utf8_lossy(&input),
                input.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                e.downcast_ref::<String>()
                    .map(String::as_str)
                    .or(e.downcast_ref::<&str>().copied())
            );
        }
        execs += 1;
        // Keep a bounded, growing corpus so mutations compound.
        if corpus.len() < 256 && m.below(8) == 0 {
            corpus.push(input);
        }
    }
    execs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_survives_a_bounded_run() {
        for target in crate::targets() {
            let n = run_for(&target, Duration::from_secs(3), 5_000, 0x7e55e7a);
            assert!(n >= 100, "{}: only {n} executions", target.name);
        }
    }

    #[test]
    fn mutator_is_deterministic() {
        let a: Vec<_> = (0..10)
            .map(|_| Mutator::new(42).mutate(b"spiffe://a/b"))
            .collect();
        let b: Vec<_> = (0..10)
            .map(|_| Mutator::new(42).mutate(b"spiffe://a/b"))
            .collect();
        assert_eq!(a, b);
    }
}
