//! Prometheus metrics of the gateway, served on the ops listener's `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// What became of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Sent upstream (and answered by it, not with a 5xx).
    Forwarded,
    /// Refused by the rules (a denial, or a dropped notification).
    Denied,
    /// Malformed: not one JSON-RPC message, too large, headers disagreeing with the body.
    Invalid,
    /// Sent upstream, answered with a 5xx (or not at all: 502).
    UpstreamError,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Denied => "denied",
            Self::Invalid => "invalid",
            Self::UpstreamError => "upstream_error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    outcome: &'static str,
}

/// The gateway's counters and their registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: Family<Labels, Counter>,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with the gateway's metrics.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "tessera_gateway_requests",
            "MCP requests by outcome (forwarded, denied, invalid, upstream_error)",
            requests.clone(),
        );
        Self {
            requests,
            registry: Arc::new(registry),
        }
    }

    /// Counts one request.
    pub fn count(&self, outcome: Outcome) {
        self.requests
            .get_or_create(&Labels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_by_label() {
        let m = Metrics::new();
        m.count(Outcome::Denied);
        m.count(Outcome::Denied);
        m.count(Outcome::Forwarded);
        let text = m.encode();
        assert!(text.contains("tessera_gateway_requests_total{outcome=\"denied\"} 2"), "{text}");
        assert!(text.contains("tessera_gateway_requests_total{outcome=\"forwarded\"} 1"), "{text}");
    }
}
