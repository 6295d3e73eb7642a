//! Wiring of the `tessera-server` binary: connect to PostgreSQL, load the replica, serve
//! the admin socket and the HTTP endpoints, prune, run until shutdown.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use tessera_proto::tessera::v1::admin_server::AdminServer;
use tessera_proto::tessera::v1::cluster_admin_server::ClusterAdminServer;
use tessera_proto::tessera::v1::node_server::NodeServer;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;

use crate::admin::AdminService;
use crate::attest::k8s_psat::K8sPsatReviewer;
use crate::attest::{Attestors, JoinTokenAttestor, K8sPsatAttestor};
use crate::ca::ServerCa;
use crate::config::Config;
use crate::http::{self, Health};
use crate::metrics::Metrics;
use crate::{PgStore, PgStoreOptions, Replica, ReplicaOptions, ServerStoreError, socket};

/// How often expired change log rows, audit records, join tokens, revocations and tasks
/// are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How long an expired join token is kept (for the audit trail's sake) before deletion.
const JOIN_TOKEN_KEEP_SECS: i64 = 24 * 3600;

/// Longest wait between two attempts to reach PostgreSQL at start-up.
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(5);

/// Runs a server replica until `shutdown` resolves. Waits for PostgreSQL at start-up
/// (retrying with backoff, so replicas may start before the database), then serves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    warn_about_plaintext_database(&config);
    if !config.http_listen.ip().is_loopback() {
        tracing::warn!(addr = %config.http_listen, "the HTTP endpoints (/metrics) listen beyond loopback");
    }

    // The root first: a replica that cannot sign must not start serving.
    let ca = match (&config.ca.cert_file, &config.ca.key_file) {
        (Some(cert), Some(key)) => Some(Arc::new(ServerCa::open(
            &config.trust_domain,
            cert,
            key,
            &config.ca,
        )?)),
        _ => {
            tracing::warn!(
                "no ca.cert_file/ca.key_file: the Node API is off (agents cannot join); \
                 make them with `tessera-server ca init --dir DIR`"
            );
            None
        }
    };
    let metrics = Arc::new(Metrics::default());
    let started = Arc::new(OnceLock::new());
    let (http_addr, http_server) = http::serve(
        config.http_listen,
        Health {
            replica: Arc::clone(&started),
            metrics: Arc::clone(&metrics),
        },
        stopped(stop.clone()),
    )
    .await?;
    let http_server = tokio::spawn(http_server);
    tracing::info!(http = %http_addr, "health endpoints up; connecting to PostgreSQL");

    let Some(replica) = start_replica(&config, stop.clone()).await? else {
        return http_server
            .await
            .context("HTTP server")?
            .context("HTTP server");
    };
    let replica = Arc::new(replica);
    started
        .set(Arc::clone(&replica))
        .expect("the replica is started once");

    let listener = socket::bind_private(&config.admin_socket)?;
    let admin_service = AdminService::new(
        Arc::clone(&replica),
        config.trust_domain.clone(),
        &config.admin_uids,
        Arc::clone(&metrics),
    );
    let node_server = match &ca {
        Some(ca) => Some(
            serve_node_api(
                &config,
                &replica,
                ca,
                admin_service.clone(),
                &metrics,
                stop.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let admin_server = tonic::transport::Server::builder()
        .add_service(AdminServer::new(admin_service.clone()))
        .add_service(ClusterAdminServer::new(admin_service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped(stop.clone()));
    let pruner = tokio::spawn(prune(
        replica.store().clone(),
        config.clone(),
        Arc::clone(&metrics),
        stop.clone(),
    ));
    tracing::info!(
        admin_socket = %config.admin_socket.display(),
        http = %http_addr,
        trust_domain = %config.trust_domain,
        version = replica.state().version,
        "tessera-server serving"
    );

    let (admin_result, http_result) = tokio::join!(admin_server, http_server);
    let http_result = http_result.context("HTTP server task")?;
    if let Some(node_server) = node_server {
        node_server
            .await
            .context("Node API task")?
            .context("Node API")?;
    }
    let _ = pruner.await;
    replica.shutdown().await;
    replica.store().close().await;
    let _ = std::fs::remove_file(&config.admin_socket);
    admin_result.context("admin socket server")?;
    http_result.context("HTTP server")?;
    tracing::info!("tessera-server stopped");
    Ok(())
}

/// Binds `listen.node` and serves `tessera.v1.Node` over TLS until `stop`; renews the
/// server's SVID meanwhile. `tessera.v1.Admin` and `ClusterAdmin` are served there too,
/// to callers presenting an admin SVID signed by the root (`admin_tls`): the admin
/// socket needs a shell in the pod, this needs only the network and a credential.
async fn serve_node_api(
    config: &Config,
    replica: &Arc<Replica>,
    ca: &Arc<ServerCa>,
    admin_service: AdminService,
    metrics: &Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>> {
    let listener = tokio::net::TcpListener::bind(config.node_listen)
        .await
        .with_context(|| format!("binding the Node API on {}", config.node_listen))?;
    let addr = listener.local_addr().context("Node API address")?;
    let tls = Arc::new(ca.tls_config()?);
    let mut attestors =
        Attestors::default().with(Arc::new(JoinTokenAttestor::new(replica.store().clone())));
    if let Some(settings) = &config.k8s_psat {
        let reviewer = K8sPsatReviewer::new(settings.clone())
            .context("the Kubernetes PSAT attestor ([k8s_psat])")?;
        tracing::info!(
            api_server = %settings.api_server,
            allowed = ?settings.allowed_service_accounts.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "Kubernetes PSAT node attestation on"
        );
        attestors = attestors.with(Arc::new(K8sPsatAttestor::new(
            reviewer,
            replica.store().clone(),
        )));
    }
    let service = NodeServer::new(crate::node_api::NodeService::new(
        Arc::clone(replica),
        Arc::clone(ca),
        attestors,
        config.node_api.clone(),
        config.ca.server_svid_ttl,
        Arc::clone(metrics),
    ))
    .max_decoding_message_size(crate::node_api::MAX_REQUEST_BYTES);
    tokio::spawn(Arc::clone(ca).renew(stop.clone()));
    let incoming =
        tokio_stream::wrappers::ReceiverStream::new(crate::node_api::tls::incoming(listener, tls));
    let mut shutdown = stop.clone();
    let server = tonic::transport::Server::builder()
        // A node that stops reading is noticed even on an idle stream.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(service)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            AdminServer::new(admin_service.clone()),
            crate::admin_tls::interceptor(Arc::clone(ca)),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            ClusterAdminServer::new(admin_service),
            crate::admin_tls::interceptor(Arc::clone(ca)),
        ))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.wait_for(|s| *s).await;
        });
    tracing::info!(node_api = %addr, "Node API listening (TLS)");
    Ok(tokio::spawn(server))
}

/// Warns when the database connection is not verified TLS and leaves this machine: the
/// registry (who may get which identity) would cross the network readable and changeable.
fn warn_about_plaintext_database(config: &Config) {
    let connect = &config.database.connect;
    let local = connect.get_socket().is_some()
        || matches!(connect.get_host(), "localhost" | "127.0.0.1" | "::1")
        || connect.get_host().starts_with('/');
    if !local
        && !matches!(
            connect.get_ssl_mode(),
            sqlx::postgres::PgSslMode::VerifyFull
        )
    {
        tracing::warn!(
            host = connect.get_host(),
            "the database connection is not sslmode=verify-full; add it (and sslrootcert) to database.url"
        );
    }
}

/// Connects and loads the replica, retrying while PostgreSQL is unreachable; `None` if
/// shutdown came first. Any other failure (a schema too new, bad credentials) ends the
/// start: retrying would not fix it.
async fn start_replica(
    config: &Config,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<Replica>> {
    let options = PgStoreOptions {
        max_connections: config.database.max_connections,
        acquire_timeout: config.database.acquire_timeout,
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = async {
            let store = PgStore::connect(config.database.connect.clone(), &options).await?;
            Replica::start(store, ReplicaOptions::default()).await
        };
        match attempt.await {
            Ok(replica) => return Ok(Some(replica)),
            Err(ServerStoreError::Unavailable(error)) => {
                tracing::warn!(%error, url = %config.database.url, ?backoff, "PostgreSQL unreachable; retrying");
            }
            Err(error) => {
                return Err(error).context(format!("opening the database {}", config.database.url));
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(None),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_CONNECT_BACKOFF);
    }
}

/// Deletes change log rows past `change_retention`, audit records past
/// `audit_retention`, and join tokens a day after they expired. Every replica runs it;
/// the deletes are idempotent.
async fn prune(
    store: PgStore,
    config: Config,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
        let now_ms = crate::clock::unix_millis();
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        match store
            .prune_changes(now_ms.saturating_sub(millis(config.change_retention)))
            .await
        {
            Ok(n) => metrics.pruned_changes(n),
            Err(error) => tracing::warn!(%error, "pruning the change log failed"),
        }
        if let Some(retention) = config.audit_retention
            && let Err(error) = store
                .prune_audit(now_ms.saturating_sub(millis(retention)))
                .await
        {
            tracing::warn!(%error, "pruning the audit log failed");
        }
        let expired = crate::clock::unix_secs().saturating_sub(crate::EXPIRY_GRACE_SECS);
        if let Err(error) = store.prune_revocations(expired).await {
            tracing::warn!(%error, "pruning expired revocations and tasks failed");
        }
        if let Err(error) = store.prune_node_jwt_keys(expired).await {
            tracing::warn!(%error, "pruning expired node JWT keys failed");
        }
        let before = crate::clock::unix_secs().saturating_sub(JOIN_TOKEN_KEEP_SECS);
        if let Err(error) = store.prune_join_tokens(before).await {
            tracing::warn!(%error, "pruning join tokens failed");
        }
    }
}
