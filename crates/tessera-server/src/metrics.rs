//! Prometheus metrics, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::Replica;

/// Labels of an admin call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminCallLabel {
    /// The RPC's name.
    rpc: &'static str,
    /// "allowed" or "denied" (the caller's uid).
    access: &'static str,
}

/// Labels of a Node API call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeCallLabel {
    /// The RPC's name.
    rpc: &'static str,
    /// The gRPC status: `Ok`, `PermissionDenied`…
    code: String,
}

/// Every metric the server exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    admin_calls: Family<AdminCallLabel, Counter>,
    version: Gauge,
    listening: Gauge,
    entries: Gauge,
    consents: Gauge,
    nodes: Gauge,
    pruned_changes: Counter,
    node_calls: Family<NodeCallLabel, Counter>,
    sync_streams: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("tessera_server");
        let metrics = Metrics {
            registry: Registry::default(),
            admin_calls: Family::default(),
            version: Gauge::default(),
            listening: Gauge::default(),
            entries: Gauge::default(),
            consents: Gauge::default(),
            nodes: Gauge::default(),
            pruned_changes: Counter::default(),
            node_calls: Family::default(),
            sync_streams: Gauge::default(),
        };
        registry.register(
            "node_calls",
            "Node API calls, by RPC and gRPC status (Sync: when the stream starts)",
            metrics.node_calls.clone(),
        );
        registry.register(
            "sync_streams",
            "Sync streams open on this replica",
            metrics.sync_streams.clone(),
        );
        registry.register(
            "admin_calls",
            "Admin API calls, by RPC and whether the caller was allowed",
            metrics.admin_calls.clone(),
        );
        registry.register(
            "change_version",
            "The change version this replica's memory holds",
            metrics.version.clone(),
        );
        registry.register(
            "change_stream_up",
            "1 while this replica follows PostgreSQL's change notifications",
            metrics.listening.clone(),
        );
        registry.register("entries", "Registration entries", metrics.entries.clone());
        registry.register(
            "consents",
            "Consent records, withdrawn ones included",
            metrics.consents.clone(),
        );
        registry.register(
            "nodes",
            "Nodes, evicted ones included",
            metrics.nodes.clone(),
        );
        registry.register(
            "pruned_changes",
            "Change log rows deleted past change_retention",
            metrics.pruned_changes.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// Counts an admin call.
    pub(crate) fn admin_call(&self, rpc: &'static str, allowed: bool) {
        let access = if allowed { "allowed" } else { "denied" };
        self.admin_calls
            .get_or_create(&AdminCallLabel { rpc, access })
            .inc();
    }

    /// Counts a Node API call by its outcome.
    pub(crate) fn node_call(&self, rpc: &'static str, code: tonic::Code) {
        self.node_calls
            .get_or_create(&NodeCallLabel {
                rpc,
                code: format!("{code:?}"),
            })
            .inc();
    }

    /// Counts a Sync stream open until the guard is dropped.
    pub(crate) fn sync_stream(self: &std::sync::Arc<Self>) -> SyncStreamGuard {
        self.sync_streams.inc();
        SyncStreamGuard(std::sync::Arc::clone(self))
    }

    /// Counts change log rows pruned.
    pub(crate) fn pruned_changes(&self, n: u64) {
        self.pruned_changes.inc_by(n);
    }

    /// The OpenMetrics text, with the replica's gauges read now (zero while starting).
    pub(crate) fn render(&self, replica: Option<&Replica>) -> String {
        if let Some(replica) = replica {
            let state = replica.state();
            let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            self.version.set(state.version);
            self.listening.set(i64::from(replica.is_listening()));
            self.entries.set(count(state.entries.len()));
            self.consents.set(count(state.consents.len()));
            self.nodes.set(count(state.nodes.len()));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// An open Sync stream, for the `sync_streams` gauge.
#[derive(Debug)]
pub(crate) struct SyncStreamGuard(std::sync::Arc<Metrics>);

impl Drop for SyncStreamGuard {
    fn drop(&mut self) {
        self.0.sync_streams.dec();
    }
}
