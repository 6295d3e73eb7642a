//! A token bucket per node, for the low-rate paths (MCP server SVIDs signed by the root).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Nodes tracked at once; past this the buckets of idle (full) nodes are dropped.
const MAX_TRACKED: usize = 10_000;

/// Up to `burst` calls per node at once, refilled at `burst` per minute.
#[derive(Debug)]
pub(crate) struct PerNode {
    burst: f64,
    per_sec: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl PerNode {
    pub(crate) fn per_minute(n: u32) -> PerNode {
        let burst = f64::from(n.max(1));
        PerNode {
            burst,
            per_sec: burst / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one call for `node`; false if its bucket is empty.
    pub(crate) fn take(&self, node: &str) -> bool {
        self.take_at(node, Instant::now())
    }

    fn take_at(&self, node: &str, now: Instant) -> bool {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(node) {
            let (burst, per_sec) = (self.burst, self.per_sec);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        let (tokens, at) = buckets.entry(node.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_node_gets_its_burst_then_one_per_refill_and_others_are_unaffected() {
        let limit = PerNode::per_minute(3);
        let t0 = Instant::now();
        assert!((0..3).all(|_| limit.take_at("a", t0)));
        assert!(!limit.take_at("a", t0));
        assert!(limit.take_at("b", t0), "another node has its own bucket");
        assert!(!limit.take_at("a", t0 + Duration::from_secs(10)));
        assert!(limit.take_at("a", t0 + Duration::from_secs(21)));
    }
}
