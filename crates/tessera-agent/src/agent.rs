//! Wiring: open the CA and store, start the listeners, run until shutdown.

use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tessera_authority::{
    Authority, AuthorityConfig, JwtAuthority, JwtKeyOwner, JwtKeyPolicy, RotationPolicy,
};
use tessera_proto::tessera::v1::admin_server::AdminServer;
use tessera_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tessera_store::Store;

use crate::admin::AdminService;
use crate::attest::{Attestor, UnixAttestor, k8s::K8sAttestor};
use crate::audit_log;
use crate::config::Config;
use crate::drain;
use crate::http::{self, Health};
use crate::jwt_trust::JwtTrust;
use crate::metrics::{ADMIN_SOCKET_RPCS, Metrics, RpcMetricsLayer, WORKLOAD_SOCKET_RPCS};
use crate::node::{ClusterJwtKeys, NodeLink, Reporter, ServerRevocations, Syncer};
use crate::retention;
use crate::socket::{self, InConnSpanLayer};
use crate::svids::SvidCache;
use crate::tasks::{
    ConsentCache, FeedConfig, RevocationsService, TaskConfig, TaskManager, TasksService,
};
use crate::workload::WorkloadService;
use tessera_proto::tessera::v1::tasks_server::TasksServer;

/// Largest request message accepted on either socket. Workload API requests are
/// empty or tiny; anything large is garbage or an attack.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// How long shutdown waits for servers, open streams and background work to stop
/// before abandoning what is left: under a Kubernetes pod's 30 s grace period.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the agent until `shutdown` resolves, then stops gracefully: listeners
/// close, open streams end, the store is closed and the socket files removed.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    raise_fd_limit();
    warn_about_risky_settings(&config);
    let trust_domain = config.trust_domain.clone();
    if !config.data_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    }

    let store = Store::open(&config.data_dir.join("tessera.db"))
        .await
        .context("opening the store")?;
    // Cluster mode reports every task begin and end to the server: journaled with the
    // task's own write, so a crash loses none. Standalone, nothing is journaled.
    store.set_journal_task_events(config.server.is_some());

    let mut metrics = Metrics::default();
    metrics.observe_store(store.clone());
    let metrics = Arc::new(metrics);
    let (drain_trigger, drain) = drain::channel();

    // Health first: in cluster mode joining can wait on the server, and `/readyz` says
    // not ready until it has.
    let health = Health::new(Arc::clone(&metrics));
    let (http_addr, http_fut) = http::serve(
        config.http_listen,
        Arc::clone(&health),
        drain.clone().into_signal(),
    )
    .await?;
    tokio::spawn(drain.clone().track(http_fut));

    let mut shutdown = std::pin::pin!(shutdown);
    let (authority, node) = match &config.server {
        Some(server) => {
            let join = NodeLink::join(
                server.clone(),
                &config.data_dir,
                trust_domain.clone(),
                &drain,
            );
            let link = tokio::select! {
                link = join => link.context("joining the cluster")?,
                () = &mut shutdown => {
                    tracing::info!("shut down before joining the cluster");
                    drain_trigger.drain(DRAIN_DEADLINE).await;
                    store.close().await;
                    return Ok(());
                }
            };
            tokio::spawn(Arc::clone(&link).run_renewal(drain.clone()));
            // Records gathered from many nodes say where each was written.
            store.set_audit_node(&link.node().to_string());
            (link.authority(), Some(link))
        }
        None => (
            Arc::new(
                Authority::open(AuthorityConfig {
                    trust_domain: trust_domain.clone(),
                    dir: config.data_dir.join("ca"),
                    mode: config.ca.mode.clone(),
                    rotation: RotationPolicy {
                        ca_ttl: config.ca.ttl,
                        max_svid_ttl: config.client_svid_ttl.max(config.task_svid_ttl),
                    },
                })
                .context("opening the signing authority")?,
            ),
            None,
        ),
    };
    metrics.ca_not_after.set(authority.active_ca_not_after());
    let jwt_authority = Arc::new(
        JwtAuthority::open(
            trust_domain.clone(),
            config.data_dir.join("ca"),
            JwtKeyPolicy {
                key_ttl: config.ca.jwt_key_ttl,
                max_token_ttl: config.jwt_svid_ttl,
                // In a cluster the keys are this node's: marked, clients and tasks only.
                owner: if node.is_some() {
                    JwtKeyOwner::Node
                } else {
                    JwtKeyOwner::TrustDomain
                },
            },
        )
        .context("opening the JWT signing keys")?,
    );
    // Cluster mode: the other nodes' JWT keys (from Sync), and this node's published.
    let cluster_jwt_keys = node
        .as_ref()
        .map(|link| ClusterJwtKeys::load(link.dir(), link.node().name.as_str()));
    let jwt_trust = match (&node, &cluster_jwt_keys) {
        (Some(link), Some(others)) => {
            tokio::spawn(crate::node::publish_jwt_keys(
                Arc::clone(link),
                Arc::clone(&jwt_authority),
                drain.clone(),
            ));
            JwtTrust::cluster(
                Arc::clone(&jwt_authority),
                others.subscribe(),
                drain.clone(),
            )
        }
        _ => JwtTrust::standalone(Arc::clone(&jwt_authority)),
    };

    let cache = SvidCache::with_server_signer(
        Arc::clone(&authority),
        store.clone(),
        config.client_svid_ttl,
        Arc::clone(&metrics),
        node.clone()
            .map(|n| n as Arc<dyn crate::svids::ServerSvidSigner>),
    )
    .await
    .context("issuing SVIDs for registered entries")?;
    tokio::spawn(Arc::clone(&cache).run(drain.clone()));

    let consents = ConsentCache::load(store.clone())
        .await
        .context("loading consents")?;
    let tasks = TaskManager::start(
        Arc::clone(&authority),
        store.clone(),
        consents,
        Arc::clone(&metrics),
        TaskConfig {
            svid_ttl: config.task_svid_ttl,
            default_lifetime: config.task_default_lifetime,
            max_lifetime: config.task_max_lifetime,
            max_live_per_process: config.task_max_live_per_process,
            jwt_svid_ttl: config.jwt_svid_ttl,
        },
        FeedConfig {
            trust_domain: trust_domain.as_str().to_owned(),
            node: node.as_ref().map(|n| n.node().to_string()),
            heartbeat_interval: config.revocation_heartbeat_interval,
        },
    )
    .await
    .context("recovering tasks")?;
    tokio::spawn(Arc::clone(&tasks).run(drain.clone()));
    tokio::spawn(crate::jwt_keys::run(
        Arc::clone(&jwt_authority),
        config.ca.jwt_key_ttl,
        drain.clone(),
    ));
    tokio::spawn(retention::run(
        store.clone(),
        config.retention,
        Arc::clone(&metrics),
        drain.clone(),
    ));
    if let Some(path) = &config.audit_log {
        tokio::spawn(audit_log::run(
            path.clone(),
            store.subscribe_audit(),
            drain.clone(),
        ));
    }

    let workload_listener = socket::bind(&config.workload_socket, 0o777)?;
    let admin_listener = socket::bind(&config.admin_socket, 0o600)?;

    // Attestation: unix selectors, plus k8s selectors when [kubernetes] is enabled.
    let k8s = match &config.kubernetes {
        Some(k8s_config) => {
            let k8s = K8sAttestor::from_config("/proc", k8s_config)
                .context("setting up the Kubernetes workload attestor")?;
            tracing::info!(kubelet = %k8s_config.kubelet_url, "Kubernetes workload attestor enabled");
            Some(k8s)
        }
        None => None,
    };
    let unix = UnixAttestor::default().with_max_exe_bytes(config.exe_hash_max_bytes);
    let attestor = Arc::new(Attestor::new(unix, k8s));
    let workload = SpiffeWorkloadApiServer::new(
        WorkloadService::new(
            Arc::clone(&cache),
            Arc::clone(&tasks),
            Arc::clone(&attestor),
            Arc::clone(&metrics),
            drain.clone(),
        )
        .with_jwt(jwt_trust, config.jwt_svid_ttl),
    )
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    let tasks_api = TasksServer::new(TasksService::new(
        Arc::clone(&tasks),
        Arc::clone(&cache),
        Arc::clone(&attestor),
        Arc::clone(&metrics),
    ))
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    let revocations_api = RevocationsService::new(
        Arc::clone(&tasks),
        Arc::clone(&cache),
        Arc::clone(&attestor),
        Arc::clone(&metrics),
        drain.clone(),
        config.revocation_max_watchers_per_identity,
    )
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    let mut admin_service = AdminService::new(
        store.clone(),
        Arc::clone(&cache),
        Arc::clone(&tasks),
        Arc::clone(&authority),
        &config.admin_uids,
    );
    if let Some(link) = &node {
        admin_service = admin_service.managed_by_server(link.server_addresses());
        let syncer = Syncer::new(
            Arc::clone(link),
            store.clone(),
            Arc::clone(&cache),
            Arc::clone(&tasks),
            Arc::clone(
                cluster_jwt_keys
                    .as_ref()
                    .expect("cluster mode loads the other nodes' JWT keys"),
            ),
        );
        tokio::spawn(syncer.run(drain.clone()));
        // Issue 16: this node's task events to the server, the cluster's revocations
        // into this node's feed.
        let reporter = Reporter::new(Arc::clone(link), store.clone(), Arc::clone(&metrics));
        tokio::spawn(reporter.run(drain.clone()));
        let revocations =
            ServerRevocations::new(Arc::clone(link), Arc::clone(&tasks), Arc::clone(&metrics));
        tokio::spawn(revocations.run(drain.clone()));
    }
    let admin = AdminServer::new(admin_service).max_decoding_message_size(MAX_REQUEST_BYTES);

    let workload_task = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(InConnSpanLayer)
            .layer(RpcMetricsLayer::new(
                Arc::clone(&metrics),
                WORKLOAD_SOCKET_RPCS,
            ))
            .add_service(workload)
            .add_service(tasks_api)
            .add_service(revocations_api)
            .serve_with_incoming_shutdown(
                socket::incoming(workload_listener),
                drain.clone().into_signal(),
            ),
    );
    let admin_task = tokio::spawn(
        tonic::transport::Server::builder()
            .timeout(Duration::from_secs(30))
            .layer(InConnSpanLayer)
            .layer(RpcMetricsLayer::new(
                Arc::clone(&metrics),
                ADMIN_SOCKET_RPCS,
            ))
            .add_service(admin)
            .serve_with_incoming_shutdown(
                socket::incoming(admin_listener),
                drain.clone().into_signal(),
            ),
    );

    // The drain waits for the servers too: they stop accepting at its signal, then
    // finish their connections.
    let workload_task = tokio::spawn(drain.clone().track(workload_task));
    let admin_task = tokio::spawn(drain.clone().track(admin_task));

    health.set_ready(true);
    tracing::info!(
        trust_domain = %trust_domain,
        node = node.as_ref().map(|n| n.node().to_string()),
        workload_socket = %config.workload_socket.display(),
        admin_socket = %config.admin_socket.display(),
        http = %http_addr,
        "tessera-agent ready"
    );

    // The services hold watches too (for their streams); only the servers, which
    // own them, may keep them from here on.
    drop(drain);
    shutdown.await;
    tracing::info!("shutting down");
    health.set_ready(false);
    let drained = drain_trigger.drain(DRAIN_DEADLINE).await;
    for (name, task) in [
        ("workload server", workload_task),
        ("admin server", admin_task),
    ] {
        // A complete drain means the servers are done (or about to return); after an
        // abandoned one, a server still running is not waited for.
        if drained == drain::Drained::Complete || task.is_finished() {
            match task.await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::error!(error = %e, "{name} failed"),
                Ok(Err(e)) | Err(e) => tracing::error!(error = %e, "{name} panicked"),
            }
        } else {
            tracing::warn!("{name} did not stop within {DRAIN_DEADLINE:?}");
        }
    }
    store.close().await;
    for path in [&config.workload_socket, &config.admin_socket] {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Each live task holds a pidfd and each client a socket: lift the soft
/// descriptor limit to the hard one so thousands of them fit.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
        }
    }
}

/// Settings that are allowed but weaken something, said once the log is up.
fn warn_about_risky_settings(config: &Config) {
    if !config.http_listen.ip().is_loopback() {
        // Metrics reveal entry counts and timings; keep them off the network
        // unless an operator puts a proxy in front.
        tracing::warn!(addr = %config.http_listen, "http_listen is not a loopback address");
    }
    if let Some(k8s) = &config.kubernetes
        && k8s.insecure_skip_kubelet_verify
    {
        tracing::warn!(
            url = %k8s.kubelet_url,
            "kubernetes.insecure_skip_kubelet_verify is set: the kubelet's certificate is not checked"
        );
    }
}
