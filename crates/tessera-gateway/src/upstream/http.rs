//! An upstream MCP server over streamable HTTP: a URL (`http://127.0.0.1:8080/mcp`) or a
//! unix socket serving HTTP (`/run/mcp.sock` + a path), through one pooled hyper client
//! (HTTP/1.1, keep-alive). Plain HTTP only: the upstream is meant to sit on loopback or
//! a socket next to the gateway, where TLS would protect nothing the host does not.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpStream, UnixStream};

use super::UpstreamService;

/// How long connecting to the upstream may take before the request fails with 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the upstream listens.
#[derive(Clone, Debug)]
pub enum Target {
    /// A TCP address, from an `http://` URL.
    Url(Uri),
    /// A unix socket, and the MCP path on it.
    Unix {
        /// The socket.
        socket: PathBuf,
        /// The path of the MCP endpoint.
        path: String,
    },
}

/// An HTTP upstream: every request the proxy allowed goes to one endpoint.
#[derive(Clone, Debug)]
pub struct HttpUpstream {
    client: Client<Connector, Body>,
    /// The URI every request is sent to (for a unix socket, `http://localhost<path>`).
    endpoint: Uri,
    target: Arc<Target>,
}

/// Why the upstream could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpUpstreamError {
    /// The path or URL does not make a URI.
    #[error("upstream endpoint {0:?} is not a valid URI")]
    Uri(String),
}

// === impl HttpUpstream ===

impl HttpUpstream {
    /// An upstream at `target`.
    pub fn new(target: Target) -> Result<Self, HttpUpstreamError> {
        let endpoint = match &target {
            Target::Url(u) => u.clone(),
            Target::Unix { path, .. } => format!("http://localhost{path}")
                .parse()
                .map_err(|_| HttpUpstreamError::Uri(path.clone()))?,
        };
        let target = Arc::new(target);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(Connector(target.clone()));
        Ok(Self {
            client,
            endpoint,
            target,
        })
    }

    /// Whether the upstream is on this host: a unix socket, or a loopback address or
    /// `localhost` (where the identity headers may go without being configured to).
    pub fn is_local(&self) -> bool {
        match &*self.target {
            Target::Unix { .. } => true,
            Target::Url(u) => match u.host() {
                Some("localhost") => true,
                Some(h) => h
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback()),
                None => false,
            },
        }
    }

    /// Whether a connection to the upstream opens now (for `/readyz`).
    pub async fn is_reachable(&self) -> bool {
        matches!(
            tokio::time::timeout(CONNECT_TIMEOUT, connect(&self.target)).await,
            Ok(Ok(_))
        )
    }

    /// Sends `req` (its method, headers and body; the URI is replaced by the endpoint's).
    pub async fn send(&self, mut req: Request<Body>) -> Response<Body> {
        *req.uri_mut() = self.endpoint.clone();
        match self.client.request(req).await {
            Ok(resp) => resp.map(Body::new),
            Err(e) => {
                tracing::warn!(error = %e, "upstream request failed");
                bad_gateway("the upstream MCP server did not answer")
            }
        }
    }

    /// This upstream as the proxy's [`UpstreamService`].
    pub fn service(&self) -> UpstreamService {
        let this = self.clone();
        tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Request<Body>| {
            let this = this.clone();
            async move { Ok::<_, Infallible>(this.send(req).await) }
        }))
    }
}

/// A 502 with a JSON-RPC error body (no id: the gateway cannot know which request).
pub fn bad_gateway(message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": null,
        "error": {"code": -32603, "message": message}
    });
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

// === the connector: TCP or unix, chosen by the configuration, not by the URI ===

#[derive(Clone, Debug)]
struct Connector(Arc<Target>);

impl tower::Service<Uri> for Connector {
    type Response = Io;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Io>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let target = self.0.clone();
        Box::pin(async move {
            tokio::time::timeout(CONNECT_TIMEOUT, connect(&target))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })?
        })
    }
}

async fn connect(target: &Target) -> std::io::Result<Io> {
    match target {
        Target::Url(u) => {
            let host = u.host().unwrap_or("127.0.0.1");
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = u.port_u16().unwrap_or(80);
            let tcp = TcpStream::connect((host, port)).await?;
            let _ = tcp.set_nodelay(true);
            Ok(Io::Tcp(TokioIo::new(tcp)))
        }
        Target::Unix { socket, .. } => {
            Ok(Io::Unix(TokioIo::new(UnixStream::connect(socket).await?)))
        }
    }
}

/// A connection to the upstream.
#[derive(Debug)]
enum Io {
    Tcp(TokioIo<TcpStream>),
    Unix(TokioIo<UnixStream>),
}

impl Connection for Io {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_read(cx, buf),
            Io::Unix(u) => Pin::new(u).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_write(cx, buf),
            Io::Unix(u) => Pin::new(u).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_flush(cx),
            Io::Unix(u) => Pin::new(u).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_shutdown(cx),
            Io::Unix(u) => Pin::new(u).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_and_unix_upstreams_are_local() {
        let url = |s: &str| HttpUpstream::new(Target::Url(s.parse().unwrap())).unwrap();
        assert!(url("http://127.0.0.1:8080/mcp").is_local());
        assert!(url("http://[::1]:8080/mcp").is_local());
        assert!(url("http://localhost:8080/mcp").is_local());
        assert!(!url("http://10.0.0.5:8080/mcp").is_local());
        assert!(!url("http://mcp.internal/mcp").is_local());
        let unix = HttpUpstream::new(Target::Unix {
            socket: "/run/x.sock".into(),
            path: "/mcp".into(),
        })
        .unwrap();
        assert!(unix.is_local());
    }

    #[tokio::test]
    async fn a_request_reaches_a_server_on_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("up.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let svc =
                hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Body::from(req.uri().path().to_owned())))
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
        let up = HttpUpstream::new(Target::Unix {
            socket: sock,
            path: "/mcp".into(),
        })
        .unwrap();
        let resp = up
            .send(Request::post("/ignored").body(Body::empty()).unwrap())
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"/mcp");
    }
}
