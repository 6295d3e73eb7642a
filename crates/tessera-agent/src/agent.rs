//! Wiring: open the CA and store, start the listeners, run until shutdown.

use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tessera_authority::{
    Authority, AuthorityConfig, CaMode, JwtAuthority, JwtKeyPolicy, RotationPolicy,
};
use tessera_identity::TrustDomain;
use tessera_proto::tessera::v1::admin_server::AdminServer;
use tessera_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tessera_store::Store;
use tokio::sync::watch;

use crate::admin::AdminService;
use crate::attest::{Attestor, UnixAttestor, k8s::K8sAttestor};
use crate::audit_log;
use crate::config::{CaModeName, Config};
use crate::http::{self, Health};
use crate::metrics::Metrics;
use crate::retention;
use crate::socket;
use crate::svids::SvidCache;
use crate::tasks::{ConsentCache, RevocationsService, TaskConfig, TaskManager, TasksService};
use crate::workload::WorkloadService;
use tessera_proto::tessera::v1::tasks_server::TasksServer;

/// Largest request message accepted on either socket. Workload API requests are
/// empty or tiny; anything large is garbage or an attack.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Runs the agent until `shutdown` resolves, then stops gracefully: listeners
/// close, open streams end, the store is closed and the socket files removed.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    config.validate()?;
    raise_fd_limit();
    let trust_domain: TrustDomain = config.trust_domain.as_str().try_into()?;
    if !config.data_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    }

    let mode = match config.ca.mode {
        CaModeName::SelfSigned => CaMode::SelfSigned,
        CaModeName::Upstream => CaMode::Upstream {
            cert_chain: config.ca.upstream_cert.clone().expect("validated"),
            key: config.ca.upstream_key.clone().expect("validated"),
            bundle: config.ca.upstream_bundle.clone().expect("validated"),
        },
    };
    let authority = Arc::new(
        Authority::open(AuthorityConfig {
            trust_domain: trust_domain.clone(),
            dir: config.data_dir.join("ca"),
            mode,
            rotation: RotationPolicy {
                ca_ttl: config.ca.ttl,
                max_svid_ttl: config.client_svid_ttl.max(config.task_svid_ttl),
            },
        })
        .context("opening the signing authority")?,
    );
    let jwt_authority = Arc::new(
        JwtAuthority::open(
            trust_domain.clone(),
            config.data_dir.join("ca"),
            JwtKeyPolicy {
                key_ttl: config.ca.jwt_key_ttl,
                max_token_ttl: config.jwt_svid_ttl,
            },
        )
        .context("opening the JWT signing keys")?,
    );
    let store = Store::open(&config.data_dir.join("tessera.db"))
        .await
        .context("opening the store")?;

    let mut metrics = Metrics::default();
    metrics.observe_store(store.clone());
    let metrics = Arc::new(metrics);
    metrics.ca_not_after.set(authority.active_ca_not_after());
    let (stop_tx, stop_rx) = watch::channel(false);

    let cache = SvidCache::new(
        Arc::clone(&authority),
        store.clone(),
        config.client_svid_ttl,
        Arc::clone(&metrics),
    )
    .await
    .context("issuing SVIDs for registered entries")?;
    let cache_task = tokio::spawn(Arc::clone(&cache).run(stop_rx.clone()));

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
    )
    .await
    .context("recovering tasks")?;
    let tasks_task = tokio::spawn(Arc::clone(&tasks).run(stop_rx.clone()));
    let jwt_keys_task = tokio::spawn(crate::jwt_keys::run(
        Arc::clone(&jwt_authority),
        config.ca.jwt_key_ttl,
        stop_rx.clone(),
    ));
    let retention_task = tokio::spawn(retention::run(
        store.clone(),
        config.retention(),
        Arc::clone(&metrics),
        stop_rx.clone(),
    ));
    let audit_task = config.audit_log.as_ref().map(|path| {
        tokio::spawn(audit_log::run(
            path.clone(),
            store.subscribe_audit(),
            stop_rx.clone(),
        ))
    });

    let health = Health::new(Arc::clone(&metrics));
    let (http_addr, http_fut) = http::serve(
        config.http_listen,
        Arc::clone(&health),
        stopped(stop_rx.clone()),
    )
    .await?;
    let http_task = tokio::spawn(http_fut);

    let workload_listener = socket::bind(&config.workload_socket, 0o777)?;
    let admin_listener = socket::bind(&config.admin_socket, 0o600)?;

    // Attestation: unix selectors, plus k8s selectors when [kubernetes] is enabled.
    let k8s = if config.kubernetes.enabled {
        let k8s = K8sAttestor::from_config("/proc", &config.kubernetes)
            .context("setting up the Kubernetes workload attestor")?;
        tracing::info!(kubelet = %config.kubernetes.kubelet_url, "Kubernetes workload attestor enabled");
        Some(k8s)
    } else {
        None
    };
    let unix = UnixAttestor::default().with_max_exe_bytes(config.exe_hash_max_bytes);
    let attestor = Arc::new(Attestor::new(unix, k8s));
    let workload = SpiffeWorkloadApiServer::new(
        WorkloadService::new(
            Arc::clone(&cache),
            Arc::clone(&tasks),
            Arc::clone(&attestor),
            Arc::clone(&metrics),
            stop_rx.clone(),
        )
        .with_jwt(Arc::clone(&jwt_authority), config.jwt_svid_ttl),
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
        stop_rx.clone(),
        config.revocation_max_watchers_per_identity,
    )
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    let admin = AdminServer::new(AdminService::new(
        store.clone(),
        Arc::clone(&cache),
        Arc::clone(&tasks),
        Arc::clone(&authority),
        Arc::clone(&metrics),
        &config.admin_uids,
    ))
    .max_decoding_message_size(MAX_REQUEST_BYTES);

    let workload_task = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(workload)
            .add_service(tasks_api)
            .add_service(revocations_api)
            .serve_with_incoming_shutdown(
                socket::incoming(workload_listener),
                stopped(stop_rx.clone()),
            ),
    );
    let admin_task = tokio::spawn(
        tonic::transport::Server::builder()
            .timeout(Duration::from_secs(30))
            .add_service(admin)
            .serve_with_incoming_shutdown(
                socket::incoming(admin_listener),
                stopped(stop_rx.clone()),
            ),
    );

    health.set_ready(true);
    tracing::info!(
        trust_domain = %trust_domain,
        workload_socket = %config.workload_socket.display(),
        admin_socket = %config.admin_socket.display(),
        http = %http_addr,
        "tessera-agent ready"
    );

    shutdown.await;
    tracing::info!("shutting down");
    health.set_ready(false);
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(10);
    for (name, task) in [
        ("workload server", workload_task),
        ("admin server", admin_task),
    ] {
        match tokio::time::timeout(grace, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "{name} failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "{name} panicked"),
            Err(_) => tracing::warn!("{name} did not stop within {grace:?}"),
        }
    }
    let _ = tokio::time::timeout(grace, http_task).await;
    let _ = cache_task.await;
    let _ = tasks_task.await;
    let _ = jwt_keys_task.await;
    let _ = retention_task.await;
    if let Some(t) = audit_task {
        let _ = t.await;
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

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
