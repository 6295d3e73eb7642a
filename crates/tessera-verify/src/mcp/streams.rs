//! Ending a peer's open response streams when its credential stops passing.
//!
//! [`Enforced`](super::Enforced) refuses a revoked task's next request, and ends its
//! `subscriptions/listen` streams; but an MCP server also holds streams open that no
//! request of the task will pass through again: the standalone `GET` SSE stream of a
//! 2025-11-25 session (where `resources/subscribe` updates and list changes go), and the
//! SSE response of a long tool call. [`StreamGuardLayer`] wraps every response body of
//! a peer: once the body has had to wait (so, only bodies that stream), it also waits on
//! [`Authorizer::until_denied`], and ends the body (a clean end of stream) when the task
//! is revoked, expires, or the revocation feed goes stale. A `GET` (opening a stream)
//! from a peer whose credential already fails is answered 403 without reaching the
//! server: there is no JSON-RPC message to answer with a denial, and a stream that
//! ended at once would only have its client reconnect.
//!
//! Put it outside [`SessionBindingLayer`](super::SessionBindingLayer), inside the
//! per-connection service that inserts the `Arc<Peer>`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::authz::Authorizer;
use crate::decision::Decision;
use crate::peer::Peer;
use crate::request::McpRequest;

/// A tower layer applying [`StreamGuardService`]. Clone it into every connection's
/// stack.
#[derive(Clone, Debug)]
pub struct StreamGuardLayer {
    authz: Arc<Authorizer>,
}

/// The service made by [`StreamGuardLayer`].
#[derive(Clone, Debug)]
pub struct StreamGuardService<S> {
    inner: S,
    authz: Arc<Authorizer>,
}

type Guard = Pin<Box<dyn Future<Output = Decision> + Send>>;

/// A response body that ends when its peer's credential stops passing.
pub struct GuardedBody<B> {
    inner: B,
    /// The peer and the authorizer; `None` for a response not to guard.
    watch: Option<(Arc<Peer>, Arc<Authorizer>)>,
    /// Started the first time the inner body has to wait.
    guard: Option<Guard>,
    ended: bool,
}

impl<B> std::fmt::Debug for GuardedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedBody")
            .field("peer", &self.watch.as_ref().map(|(p, _)| p.spiffe_id()))
            .field("watching", &self.guard.is_some())
            .field("ended", &self.ended)
            .finish()
    }
}

// === impl StreamGuardLayer ===

impl StreamGuardLayer {
    /// A layer ending streams with `authz`'s view of each peer's credential.
    pub fn new(authz: Arc<Authorizer>) -> Self {
        Self { authz }
    }
}

impl<S> tower::Layer<S> for StreamGuardLayer {
    type Service = StreamGuardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamGuardService {
            inner,
            authz: self.authz.clone(),
        }
    }
}

impl<S, B, RB> tower::Service<Request<B>> for StreamGuardService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<GuardedBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<GuardedBody<RB>>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let peer = req.extensions().get::<Arc<Peer>>().cloned();
        if let Some(peer) = &peer
            && req.method() == Method::GET
        {
            let started = std::time::Instant::now();
            let stream = McpRequest::untargeted("stream", "GET");
            let d = self.authz.decide(peer, &stream, SystemTime::now());
            if !d.allowed {
                self.authz.record(peer, &stream, &d, started.elapsed());
                return Box::pin(async {
                    let mut r = Response::new(GuardedBody::unguarded(RB::default()));
                    *r.status_mut() = StatusCode::FORBIDDEN;
                    Ok(r)
                });
            }
        }
        // The clone that was polled ready serves this call; a fresh clone is left behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authz = self.authz.clone();
        Box::pin(async move {
            let resp = inner.call(req).await?;
            Ok(resp.map(|body| GuardedBody {
                inner: body,
                watch: peer.map(|p| (p, authz)),
                guard: None,
                ended: false,
            }))
        })
    }
}

// === impl GuardedBody ===

impl<B> GuardedBody<B> {
    /// `inner`, never ended early.
    pub fn unguarded(inner: B) -> Self {
        Self {
            inner,
            watch: None,
            guard: None,
            ended: false,
        }
    }

    /// Polls the guard (starting it if need be); whether the body must end now.
    fn must_end(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((peer, authz)) = &self.watch else {
            return false;
        };
        let guard = self.guard.get_or_insert_with(|| {
            let (peer, authz) = (peer.clone(), authz.clone());
            Box::pin(async move { authz.until_denied(&peer).await })
        });
        let Poll::Ready(denied) = guard.as_mut().poll(cx) else {
            return false;
        };
        let stream = McpRequest::untargeted("stream", "closed");
        authz.record(peer, &stream, &denied, Duration::ZERO);
        tracing::info!(
            peer = %peer.spiffe_id(),
            reason = denied.reason.as_str(),
            "tessera-verify: open stream ended: the credential no longer passes"
        );
        self.ended = true;
        self.guard = None;
        true
    }
}

impl<B: Body + Unpin> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        // Once watching, the guard goes first: nothing more is sent after a revocation.
        if this.guard.is_some() && this.must_end(cx) {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                // A body that waits is a stream: watch the credential from now on.
                if this.guard.is_none() && this.must_end(cx) {
                    return Poll::Ready(None);
                }
                Poll::Pending
            }
            ready => ready,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tessera_identity::TaskId;
    use tessera_proto::tessera::v1::{RevocationSet, RevokedTask};
    use tokio::sync::mpsc;
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::authz::policy::PolicyStore;
    use crate::revocation::RevocationWatcher;
    use crate::testutil::{SERVER, TASK_ULID, task_peer};

    /// A body that yields what its sender sends, and waits in between.
    struct Channel(mpsc::UnboundedReceiver<&'static [u8]>);

    impl Default for Channel {
        fn default() -> Self {
            Self(mpsc::unbounded_channel().1)
        }
    }

    impl Body for Channel {
        type Data = &'static [u8];
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Infallible>>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    fn revoke(w: &RevocationWatcher, version: u64) {
        w.apply(&RevocationSet {
            version,
            revoked: vec![RevokedTask {
                task_id: TASK_ULID.into(),
                reason: "ended".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
    }

    async fn next(body: &mut GuardedBody<Channel>) -> Option<&'static [u8]> {
        let frame = tokio::time::timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)),
        )
        .await
        .expect("the body answers within 5 s")?;
        Some(frame.unwrap().into_data().unwrap())
    }

    #[tokio::test]
    async fn a_streaming_body_ends_when_its_task_is_revoked() {
        let watcher = RevocationWatcher::detached(Duration::from_secs(3600));
        watcher.apply(&RevocationSet::default());
        let store = Arc::new(PolicyStore::from_strs("", crate::authz::BASE_SCHEMA).unwrap());
        let authz = Arc::new(Authorizer::new(
            SERVER.parse().unwrap(),
            store,
            watcher.clone(),
        ));
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
        let svc = StreamGuardLayer::new(authz).layer(tower::service_fn(move |_: Request<()>| {
            let body = Channel(
                rx.lock()
                    .unwrap()
                    .take()
                    .unwrap_or_else(|| mpsc::unbounded_channel().1),
            );
            async move { Ok::<_, Infallible>(Response::new(body)) }
        }));
        let peer = Arc::new(task_peer(&["github/tool/*"]));
        let request = |method: Method| {
            let mut r = Request::builder().method(method).body(()).unwrap();
            r.extensions_mut().insert(peer.clone());
            r
        };
        let mut body = svc
            .clone()
            .oneshot(request(Method::POST))
            .await
            .unwrap()
            .into_body();
        tx.send(b"event: 1").unwrap();
        assert_eq!(next(&mut body).await, Some(&b"event: 1"[..]));
        assert_eq!(watcher.watched_tasks(), 0, "not watching before it waits");
        let waits =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx).is_pending()))
                .await;
        assert!(waits);
        assert_eq!(watcher.watched_tasks(), 1, "watching while it waits");
        // Another task's revocation leaves it open.
        watcher.apply(&RevocationSet {
            version: 2,
            revoked: vec![RevokedTask {
                task_id: TaskId::new().to_string(),
                reason: "ended".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        tx.send(b"event: 2").unwrap();
        assert_eq!(next(&mut body).await, Some(&b"event: 2"[..]));

        revoke(&watcher, 3);
        assert_eq!(next(&mut body).await, None, "the stream ends");
        tx.send(b"event: 3").unwrap();
        assert_eq!(next(&mut body).await, None, "and stays ended");
        assert!(body.is_end_stream());
        assert_eq!(watcher.watched_tasks(), 0, "the guard is gone");

        // A new stream of the revoked task is refused outright.
        let resp = svc.clone().oneshot(request(Method::GET)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }
}
