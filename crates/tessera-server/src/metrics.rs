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

/// Label: why a task event was rejected.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabel {
    /// "malformed" or "task_of_another_node".
    reason: &'static str,
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
    revocations_published: Counter,
    revocation_followers: Gauge,
    revocation_deltas_sent: Counter,
    revocation_bytes_sent: Counter,
    revocation_version: Gauge,
    revoked_tasks: Gauge,
    revocation_stream_up: Gauge,
    report_batches: Counter,
    report_events: Counter,
    task_events_rejected: Family<RejectionLabel, Counter>,
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
            revocations_published: Counter::default(),
            revocation_followers: Gauge::default(),
            revocation_deltas_sent: Counter::default(),
            revocation_bytes_sent: Counter::default(),
            revocation_version: Gauge::default(),
            revoked_tasks: Gauge::default(),
            revocation_stream_up: Gauge::default(),
            report_batches: Counter::default(),
            report_events: Counter::default(),
            task_events_rejected: Family::default(),
        };
        registry.register(
            "task_events_rejected",
            "Task events rejected one by one (never stored), by reason: malformed, or \
             task_of_another_node (contested: the task id is revoked)",
            metrics.task_events_rejected.clone(),
        );
        registry.register(
            "revocations_published",
            "Revocations this replica committed (task ends reported, server revocations, \
             evicted node CAs)",
            metrics.revocations_published.clone(),
        );
        registry.register(
            "revocation_followers",
            "FollowRevocations streams open on this replica",
            metrics.revocation_followers.clone(),
        );
        registry.register(
            "revocation_deltas_sent",
            "Delta messages sent on FollowRevocations streams",
            metrics.revocation_deltas_sent.clone(),
        );
        registry.register(
            "revocation_bytes_sent",
            "Bytes (encoded messages) sent on FollowRevocations streams",
            metrics.revocation_bytes_sent.clone(),
        );
        registry.register(
            "revocation_version",
            "The revocation feed version this replica's copy holds",
            metrics.revocation_version.clone(),
        );
        registry.register(
            "revoked_tasks",
            "Revoked tasks in this replica's copy (not yet expired)",
            metrics.revoked_tasks.clone(),
        );
        registry.register(
            "revocation_stream_up",
            "1 while this replica follows the revocation notifications (and vouches for its copy)",
            metrics.revocation_stream_up.clone(),
        );
        registry.register(
            "report_batches",
            "ReportTaskEvents requests stored",
            metrics.report_batches.clone(),
        );
        registry.register(
            "report_events",
            "Task events received in stored ReportTaskEvents requests",
            metrics.report_events.clone(),
        );
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

    /// Counts revocations committed by this replica.
    pub(crate) fn revocations_published(&self, n: usize) {
        self.revocations_published
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Counts a stored ReportTaskEvents request of `events` events.
    pub(crate) fn report(&self, events: usize) {
        self.report_batches.inc();
        self.report_events
            .inc_by(u64::try_from(events).unwrap_or(u64::MAX));
    }

    /// Counts `n` task events rejected for `reason`.
    pub(crate) fn task_events_rejected(
        &self,
        reason: tessera_proto::tessera::v1::TaskEventRejection,
        n: usize,
    ) {
        use tessera_proto::tessera::v1::TaskEventRejection as R;
        if n == 0 {
            return;
        }
        let reason = match reason {
            R::Malformed => "malformed",
            R::TaskOfAnotherNode => "task_of_another_node",
            R::Unspecified => "unspecified",
        };
        self.task_events_rejected
            .get_or_create(&RejectionLabel { reason })
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Counts a FollowRevocations stream open until the guard is dropped.
    pub(crate) fn follower(self: &std::sync::Arc<Self>) -> FollowerGuard {
        self.revocation_followers.inc();
        FollowerGuard(std::sync::Arc::clone(self))
    }

    /// Counts a delta message sent to a follower.
    pub(crate) fn delta_sent(&self) {
        self.revocation_deltas_sent.inc();
    }

    /// Counts the bytes of a message sent to a follower.
    pub(crate) fn feed_bytes(&self, n: usize) {
        self.revocation_bytes_sent
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
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
            let feed = replica.revocations();
            self.revocation_version.set(feed.version());
            self.revoked_tasks.set(count(feed.revoked_tasks()));
            self.revocation_stream_up
                .set(i64::from(feed.is_listening()));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// An open FollowRevocations stream, for the `revocation_followers` gauge.
#[derive(Debug)]
pub(crate) struct FollowerGuard(std::sync::Arc<Metrics>);

impl Drop for FollowerGuard {
    fn drop(&mut self) {
        self.0.revocation_followers.dec();
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
