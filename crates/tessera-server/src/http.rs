//! `/healthz`, `/readyz` and `/metrics` on an HTTP port.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::Replica;
use crate::metrics::Metrics;

/// How long `/readyz` waits for PostgreSQL to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// What the endpoints read. The HTTP port is up before the replica is (it waits for
/// PostgreSQL at start), so a liveness probe passes while a readiness probe does not.
#[derive(Clone, Debug)]
pub(crate) struct Health {
    pub(crate) replica: Arc<OnceLock<Arc<Replica>>>,
    pub(crate) metrics: Arc<Metrics>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when PostgreSQL answers and the replica follows its changes: a replica that
/// cannot write, or whose memory may be stale, should get no new admin or agent traffic.
async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    let Some(replica) = h.replica.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting\n");
    };
    if !replica.is_listening() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not following changes\n",
        );
    }
    match tokio::time::timeout(READY_TIMEOUT, replica.store().ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n"),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: database unreachable\n",
        ),
    }
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.render(h.replica.get().map(|r| &**r)),
    )
}

/// Binds the listener (so a taken port fails start-up) and returns its address and the
/// server future.
pub(crate) async fn serve(
    addr: SocketAddr,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the HTTP port {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let fut = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    };
    Ok((local, fut))
}
