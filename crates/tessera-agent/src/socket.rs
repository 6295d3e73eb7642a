//! The agent's unix sockets: binding them with deliberate modes, accepting
//! connections with their peer's credentials, and one span per connection.

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use anyhow::{Context, bail};
use futures::{Stream, StreamExt};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::Instrument;
use tracing::field::Empty;

use crate::attest::{PeerConn, PeerInfo};

/// Binds `path` with `mode`. A stale socket left by a crashed agent is replaced;
/// a live one (another agent answering) or a non-socket file is an error.
pub(crate) fn bind(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "{} is in use by a running process (another tessera-agent?)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
    Ok(listener)
}

/// Connections whose credentials are being read at once, at most: a peer whose
/// `/proc` entry is slow to read holds up its own accept, not everyone's.
const MAX_PENDING_ACCEPTS: usize = 64;

/// Numbers connections on every socket, for logs.
static CONN_SEQ: AtomicU64 = AtomicU64::new(1);

/// Accepted connections with their peer credentials, each with its own span
/// (`conn{id, pid, uid}`). A connection whose credentials cannot be read is dropped
/// (and logged), never served. Reading them pins the peer with a pidfd and may read
/// `/proc`, so it runs on the blocking pool.
pub(crate) fn incoming(listener: UnixListener) -> impl Stream<Item = std::io::Result<PeerConn>> {
    UnixListenerStream::new(listener)
        .map(|conn| async move {
            let id = CONN_SEQ.fetch_add(1, Ordering::Relaxed);
            let span = tracing::info_span!("conn", id, pid = Empty, uid = Empty);
            let peer = match conn {
                Ok(stream) => tokio::task::spawn_blocking(move || PeerConn::new(stream))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e))),
                Err(e) => Err(e),
            };
            match peer {
                Ok(c) => {
                    if let Some(pid) = c.info().pid {
                        span.record("pid", pid);
                    }
                    span.record("uid", c.info().uid);
                    Some(Ok(c.in_conn(id, span)))
                }
                Err(e) => {
                    span.in_scope(|| {
                        tracing::warn!(error = %e, "dropping connection: cannot read peer credentials");
                    });
                    None
                }
            }
        })
        .buffer_unordered(MAX_PENDING_ACCEPTS)
        .filter_map(std::future::ready)
}

/// Runs a request in the span of the connection it came on ([`PeerInfo::span`]).
/// One layer on each server ([`InConnSpanLayer`]), so every service behind it gets it.
#[derive(Clone, Debug)]
pub(crate) struct InConnSpan<S> {
    inner: S,
}

/// Puts [`InConnSpan`] around a server's routes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct InConnSpanLayer;

impl<S> tower::Layer<S> for InConnSpanLayer {
    type Service = InConnSpan<S>;

    fn layer(&self, inner: S) -> InConnSpan<S> {
        InConnSpan { inner }
    }
}

impl<S, B> tower::Service<http::Request<B>> for InConnSpan<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let span = req
            .extensions()
            .get::<PeerInfo>()
            .map_or_else(tracing::Span::none, |p| p.span.clone());
        self.inner.call(req).instrument(span)
    }
}

/// Spawns work that outlives the request that starts it (a stream's sender) in the
/// current span, which is the connection's: its log lines stay attributed.
pub(crate) fn spawn_in_conn_span<F>(work: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(work.in_current_span())
}
