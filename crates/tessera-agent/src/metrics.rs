//! Prometheus metrics, served on `/metrics`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

mod rpc_layer;

pub(crate) use rpc_layer::{ADMIN_SOCKET_RPCS, RpcMetricsLayer, WORKLOAD_SOCKET_RPCS};

/// Label: what kind of SVID.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    /// "client", "task" or "server".
    pub kind: &'static str,
}

/// Label: why a task ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    /// The end reason ("ended", "process_exited", ...).
    pub reason: &'static str,
}

/// Label: why the server rejected a task event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RejectionLabel {
    /// "malformed", "task_of_another_node" or "unknown".
    pub reason: &'static str,
}

/// Labels of an RPC outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RpcLabel {
    /// The RPC's name.
    pub rpc: &'static str,
    /// The gRPC status code name ("Ok", "PermissionDenied", ...).
    pub code: &'static str,
}

/// Label: attestation result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    /// "matched", "no_match" or "error".
    pub result: &'static str,
}

/// Label: what retention deleted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PrunedLabel {
    /// "tasks" or "audit".
    pub what: &'static str,
}

/// Every metric the agent exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// The registry rendering them.
    pub registry: Registry,
    /// SVIDs issued, by kind.
    pub svids_issued: Family<KindLabel, Counter>,
    /// Workload and Admin RPCs by outcome, counted by [`RpcMetricsLayer`] alone.
    pub rpcs: Family<RpcLabel, Counter>,
    /// Attestations by result.
    pub attestations: Family<ResultLabel, Counter>,
    /// Open FetchX509SVID / FetchX509Bundles streams.
    pub open_streams: Gauge,
    /// Registration entries.
    pub entries: Gauge,
    /// notAfter of the signing CA, unix seconds.
    pub ca_not_after: Gauge,
    /// Tasks begun.
    pub tasks_begun: Counter,
    /// Tasks ended, by reason.
    pub tasks_ended: Family<ReasonLabel, Counter>,
    /// Live tasks.
    pub live_tasks: Gauge,
    /// Open revocation feed subscribers.
    pub revocation_watchers: Gauge,
    /// Ended tasks and audit records deleted past their retention.
    pub pruned: Family<PrunedLabel, Counter>,
    /// Open `Revocations.Follow` streams.
    pub revocation_followers: Gauge,
    /// Follow messages sent, by kind ("snapshot", "delta", "heartbeat").
    pub revocation_updates_sent: Family<KindLabel, Counter>,
    /// Bytes of Follow and Watch messages sent (before gRPC framing).
    pub revocation_bytes_sent: Counter,
    /// Cluster mode: task events journaled and not yet acknowledged by the server.
    pub journal_depth: Gauge,
    /// Cluster mode: task events sent to the server (resends counted again).
    pub task_events_sent: Counter,
    /// Cluster mode: task events the server acknowledged durable.
    pub task_events_acked: Counter,
    /// Cluster mode: task events the server rejected for good, by reason (moved to the
    /// store's rejected events).
    pub task_events_rejected: Family<RejectionLabel, Counter>,
    /// Cluster mode: the server feed's newest `current_as_of`, unix milliseconds.
    pub server_feed_current_as_of: Gauge,
    /// Cluster mode: the server feed version this agent's copy reflects.
    pub server_feed_version: Gauge,
    /// Cluster mode: how many versions the copy is behind the server's last heartbeat.
    pub server_feed_lag: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tessera");
        let m = Metrics {
            svids_issued: Family::default(),
            rpcs: Family::default(),
            attestations: Family::default(),
            open_streams: Gauge::default(),
            entries: Gauge::default(),
            ca_not_after: Gauge::default(),
            tasks_begun: Counter::default(),
            tasks_ended: Family::default(),
            live_tasks: Gauge::default(),
            revocation_watchers: Gauge::default(),
            pruned: Family::default(),
            revocation_followers: Gauge::default(),
            revocation_updates_sent: Family::default(),
            revocation_bytes_sent: Counter::default(),
            journal_depth: Gauge::default(),
            task_events_sent: Counter::default(),
            task_events_acked: Counter::default(),
            task_events_rejected: Family::default(),
            server_feed_current_as_of: Gauge::default(),
            server_feed_version: Gauge::default(),
            server_feed_lag: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("svids_issued", "X.509-SVIDs issued", m.svids_issued.clone());
        registry.register(
            "rpcs",
            "RPCs answered, by RPC and gRPC code",
            m.rpcs.clone(),
        );
        registry.register(
            "attestations",
            "Workload attestations, by result",
            m.attestations.clone(),
        );
        registry.register(
            "open_streams",
            "Open Workload API streams",
            m.open_streams.clone(),
        );
        registry.register("entries", "Registration entries", m.entries.clone());
        registry.register(
            "ca_not_after_seconds",
            "Expiry of the signing CA, unix seconds",
            m.ca_not_after.clone(),
        );
        registry.register("tasks_begun", "Tasks begun", m.tasks_begun.clone());
        registry.register(
            "tasks_ended",
            "Tasks ended, by reason",
            m.tasks_ended.clone(),
        );
        registry.register("live_tasks", "Live tasks", m.live_tasks.clone());
        registry.register(
            "revocation_watchers",
            "Open revocation feed streams",
            m.revocation_watchers.clone(),
        );
        registry.register(
            "store_pruned",
            "Ended tasks and audit records deleted past their retention, by what",
            m.pruned.clone(),
        );
        registry.register(
            "revocation_followers",
            "Open Revocations.Follow streams",
            m.revocation_followers.clone(),
        );
        registry.register(
            "revocation_updates_sent",
            "Revocations.Follow messages sent, by kind (snapshot, delta, heartbeat)",
            m.revocation_updates_sent.clone(),
        );
        registry.register(
            "revocation_bytes_sent",
            "Bytes of revocation feed messages sent (Follow and Watch)",
            m.revocation_bytes_sent.clone(),
        );
        registry.register(
            "task_journal_depth",
            "Cluster mode: task events journaled, not yet acknowledged by the server",
            m.journal_depth.clone(),
        );
        registry.register(
            "task_events_sent",
            "Cluster mode: task events sent to the server (resends counted again)",
            m.task_events_sent.clone(),
        );
        registry.register(
            "task_events_acked",
            "Cluster mode: task events the server acknowledged durable",
            m.task_events_acked.clone(),
        );
        registry.register(
            "task_events_rejected",
            "Cluster mode: task events the server rejected for good, by reason \
             (malformed, task_of_another_node, unknown); kept in the store, out of the journal",
            m.task_events_rejected.clone(),
        );
        registry.register(
            "server_revocations_current_as_of_ms",
            "Cluster mode: the server revocation feed's newest current_as_of, unix ms (age: now minus this)",
            m.server_feed_current_as_of.clone(),
        );
        registry.register(
            "server_revocations_version",
            "Cluster mode: the server revocation feed version the agent's copy reflects",
            m.server_feed_version.clone(),
        );
        registry.register(
            "server_revocations_lag",
            "Cluster mode: server feed versions the copy is behind the server's last heartbeat",
            m.server_feed_lag.clone(),
        );
        Metrics { registry, ..m }
    }
}

/// Label: who ran a WAL checkpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByLabel {
    /// "background" or "writer".
    by: &'static str,
}

/// The store writer's counters, read on each scrape.
#[derive(Debug)]
struct StoreCollector(tessera_store::Store);

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.writer_stats();
        let counters = [
            (
                "store_commits",
                "Store transactions committed, each made durable by one fsync",
                stats.commits,
            ),
            (
                "store_writes",
                "Writes committed; divided by store_commits, the mean group-commit size",
                stats.writes,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        #[allow(clippy::cast_precision_loss)] // microseconds stay exact in f64 for 285 years
        let seconds = ConstCounter::new(stats.commit_micros as f64 / 1e6);
        seconds.encode(encoder.encode_descriptor(
            "store_commit_seconds",
            "Time transactions held the store writer, from BEGIN to COMMIT's return",
            None,
            seconds.metric_type(),
        )?)?;
        let mut checkpoints = encoder.encode_descriptor(
            "store_wal_checkpoints",
            "WAL checkpoints, beside the writer (background) or by it between batches (writer)",
            None,
            MetricType::Counter,
        )?;
        for (by, value) in [
            ("background", stats.checkpoints_background),
            ("writer", stats.checkpoints_by_writer),
        ] {
            ConstCounter::new(value).encode(checkpoints.encode_family(&ByLabel { by })?)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Also exports `store`'s writer counters (`tessera_store_*`).
    pub(crate) fn observe_store(&mut self, store: tessera_store::Store) {
        self.registry
            .register_collector(Box::new(StoreCollector(store)));
    }

    /// Counts one RPC outcome; [`RpcMetricsLayer`] is its one caller, so that every
    /// call is counted exactly once.
    pub(crate) fn rpc(&self, rpc: &'static str, code: tonic::Code) {
        self.rpcs
            .get_or_create(&RpcLabel {
                rpc,
                code: code_name(code),
            })
            .inc();
    }

    /// Counts one task event the server rejected.
    pub(crate) fn task_event_rejected(&self, reason: tessera_store::RejectionReason) {
        self.task_events_rejected
            .get_or_create(&RejectionLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// The text exposition format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

/// The name a status code has in the `code` label: tonic's `Debug` form, without
/// formatting a `String` on every RPC.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod code_name_tests {
    /// Dashboards match on the label values the `Debug` form gave before.
    #[test]
    fn every_code_keeps_its_debug_name() {
        for i in 0..=16 {
            let code = tonic::Code::from_i32(i);
            assert_eq!(super::code_name(code), format!("{code:?}"));
        }
    }
}
