//! The TLS front: accepts connections, completes the mTLS handshake (the client's task
//! SVID verified against the trust domain's bundle by tessera-verify's `ServerTlsBuilder`
//! config), parses the peer once per connection, and serves HTTP/1.1 or HTTP/2 with the
//! `Arc<Peer>` and the connection's span in every request, as a linked server does.
//! With bearer tokens accepted the certificate may be optional: then the token endpoint
//! and the bearer layer in front of the proxy put the token's peer where the
//! certificate's would be.

use std::convert::Infallible;
use std::sync::Arc;

use tessera_verify::oauth::CertThumbprint;
use tessera_verify::{ConnectionSpan, Peer, unread};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

/// What a connection's client certificate is to the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerMode {
    /// Required, verified at the handshake, parsed; its peer goes into every request.
    Required,
    /// Optional (bearer tokens accepted): when presented, verified at the handshake and
    /// parsed as when required; when not, the request's token has to prove the caller.
    Optional,
    /// Verified at the handshake, not parsed (the pass-through benchmark baseline).
    Skip,
}

/// Accepts TLS connections on `listener` until ctrl-c, serving each with `service`.
pub async fn serve<S, B>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    service: S,
    peers: PeerMode,
) -> std::io::Result<()>
where
    S: tower::Service<
            http::Request<unread::Tracked<hyper::body::Incoming>>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    // Out of fds, say: keep serving the connections that exist.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("shutting down");
                return Ok(());
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, service) = (acceptor.clone(), service.clone());
        let conn = ConnectionSpan::accepted(remote);
        let span = conn.span().clone();
        tokio::spawn(
            async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::info!(error = %e, "TLS handshake refused");
                        return;
                    }
                };
                let chain = tls.get_ref().1.peer_certificates();
                let presented = chain.is_some_and(|c| !c.is_empty());
                let peer = match peers {
                    PeerMode::Skip => None,
                    PeerMode::Optional if !presented => None,
                    PeerMode::Required | PeerMode::Optional => match Peer::from_chain(chain) {
                        Ok(p) => {
                            conn.record_peer(&p);
                            Some(Arc::new(p))
                        }
                        Err(e) => {
                            tracing::info!(error = %e, "connection refused: no usable peer identity");
                            return;
                        }
                    },
                };
                // What a token issued on, or presented over, this connection is bound to
                // (RFC 8705).
                let thumbprint = peer
                    .as_ref()
                    .and(chain.and_then(|c| c.first()))
                    .map(|leaf| CertThumbprint::of_der(leaf));
                tracing::debug!("connection accepted");
                let executor = InConnection(conn.span().clone());
                let svc = tower::ServiceBuilder::new()
                    .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(conn.clone());
                        if let Some(p) = &peer {
                            req.extensions_mut().insert(p.clone());
                        }
                        if let Some(t) = thumbprint {
                            req.extensions_mut().insert(t);
                        }
                        req
                    })
                    .service(unread::CloseUnread(service));
                let result = hyper_util::server::conn::auto::Builder::new(executor)
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(tls),
                        hyper_util::service::TowerToHyperService::new(svc),
                    )
                    .await;
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
}

/// Spawns what hyper hands its executor (a task per HTTP/2 stream) inside the
/// connection's span.
#[derive(Clone, Debug)]
struct InConnection(tracing::Span);

impl<F> hyper::rt::Executor<F> for InConnection
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut.instrument(self.0.clone()));
    }
}
