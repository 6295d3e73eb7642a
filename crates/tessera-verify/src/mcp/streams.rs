//! Ending a peer's open response streams when its credential stops passing.
//!
//! [`Enforced`](super::Enforced) refuses a revoked task's next request, and ends its
//! `subscriptions/listen` streams (with a JSON-RPC error the client reads); but an MCP
//! server also holds a stream open that no request of the task will pass through again:
//! the standalone `GET` SSE stream of a 2025-11-25 session (where `resources/subscribe`
//! updates and list changes go). [`StreamGuardLayer`] wraps the response body of every
//! `GET` of a peer: once the body has had to wait (so, only bodies that stream), it also
//! waits on [`Authorizer::until_denied`], and ends the body (a clean end of stream) when
//! the task is revoked, expires, or the revocation feed goes stale. A `GET` made while
//! the credential already fails is answered without reaching the server, 401
//! `invalid_token` (503 while the feed is stale): there is no JSON-RPC message to
//! answer with a denial, and a stream that ended at once would only have its client
//! reconnect.
//!
//! The response to a `POST` (one JSON-RPC request, decided by `Enforced` when it
//! arrived) is not cut: ending it on a revocation that arrived after the call was
//! allowed cost the caller the answer to an allowed call ("Transport closed" in rmcp's
//! client), where a plain JSON answer would have arrived whole. Such a stream lasts as
//! long as its call: a tool call allowed before the revocation runs to its end, as it
//! would without SSE, and the task's next request is refused. `subscriptions/listen`,
//! the one `POST` that streams for as long as the client likes, is ended by `Enforced`
//! itself.
//!
//! Put it outside [`SessionBindingLayer`](super::SessionBindingLayer), inside the
//! per-connection service that inserts the `Arc<Peer>`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::authz::Authorizer;
use crate::decision::{Decision, Reason};
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

/// A response body that ends when its peer's credential stops passing (a `GET`'s), or
/// never early (any other).
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
        // Only a GET opens a stream that outlives its request; a POST's answer (its
        // request decided by `Enforced`, denial or not) is never cut short.
        let mut peer = None;
        if req.method() == Method::GET
            && let Some(p) = req.extensions().get::<Arc<Peer>>()
        {
            let started = std::time::Instant::now();
            let stream = McpRequest::untargeted("stream", "GET");
            let d = self.authz.decide(p, &stream, SystemTime::now());
            if !d.allowed {
                self.authz.record(p, &stream, &d, started.elapsed());
                return Box::pin(async move { Ok(refusal(&d)) });
            }
            peer = Some(p.clone());
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

/// The answer to a `GET` of a peer whose credential fails. A stale feed is the server's
/// trouble and passes: 503, to retry. Otherwise the credential is no good (revoked,
/// expired, not a task of this server): 401 with an RFC 6750 `invalid_token` challenge,
/// on which clients stop reopening the stream (rmcp's does; on a bare 401 or 403 it
/// retries for ever, and its shutdown waits for the retries).
fn refusal<RB: Default>(d: &Decision) -> Response<GuardedBody<RB>> {
    let mut r = Response::new(GuardedBody::unguarded(RB::default()));
    if d.reason == Reason::RevocationFeedStale {
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
    } else {
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        // The reason strings are fixed ASCII words: always a valid header value.
        if let Ok(v) = HeaderValue::from_str(&format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            d.reason.as_str()
        )) {
            r.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
        }
    }
    r
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
            "open stream ended: the credential no longer passes"
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
        // Each response streams what the test sends on its sender, kept here.
        let senders = Arc::new(std::sync::Mutex::new(Vec::new()));
        let svc = StreamGuardLayer::new(authz).layer(tower::service_fn({
            let senders = senders.clone();
            move |_: Request<()>| {
                let (tx, rx) = mpsc::unbounded_channel();
                senders.lock().unwrap().push(tx);
                async move { Ok::<_, Infallible>(Response::new(Channel(rx))) }
            }
        }));
        let peer = Arc::new(task_peer(&["github/tool/*"]));
        let request = |method: Method| {
            let mut r = Request::builder().method(method).body(()).unwrap();
            r.extensions_mut().insert(peer.clone());
            r
        };
        let mut body = svc
            .clone()
            .oneshot(request(Method::GET))
            .await
            .unwrap()
            .into_body();
        let tx = senders.lock().unwrap()[0].clone();
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

        // A new stream of the revoked task is refused outright, with a challenge on
        // which clients stop reopening it.
        let resp = svc.clone().oneshot(request(Method::GET)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers()[http::header::WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token", error_description="revoked""#
        );
        // A request of the revoked task is answered whole (its denial), not cut short.
        let mut body = svc
            .clone()
            .oneshot(request(Method::POST))
            .await
            .unwrap()
            .into_body();
        let waits =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx).is_pending()))
                .await;
        assert!(waits);
        assert_eq!(watcher.watched_tasks(), 0, "not guarded");
    }

    /// The flake of session 8: the SSE answer of a call allowed just before its task's
    /// revocation arrived was cut ("Transport closed"). A POST's stream now carries its
    /// answer to the end, while the task's GET stream closes at once.
    #[tokio::test]
    async fn the_answer_to_a_call_allowed_before_the_revocation_still_arrives() {
        let watcher = RevocationWatcher::detached(Duration::from_secs(3600));
        watcher.apply(&RevocationSet::default());
        let store = Arc::new(PolicyStore::from_strs("", crate::authz::BASE_SCHEMA).unwrap());
        let authz = Arc::new(Authorizer::new(
            SERVER.parse().unwrap(),
            store,
            watcher.clone(),
        ));
        let senders = Arc::new(std::sync::Mutex::new(Vec::new()));
        let svc = StreamGuardLayer::new(authz).layer(tower::service_fn({
            let senders = senders.clone();
            move |_: Request<()>| {
                let (tx, rx) = mpsc::unbounded_channel();
                senders.lock().unwrap().push(tx);
                async move { Ok::<_, Infallible>(Response::new(Channel(rx))) }
            }
        }));
        let peer = Arc::new(task_peer(&["github/tool/*"]));
        let request = |method: Method| {
            let mut r = Request::builder().method(method).body(()).unwrap();
            r.extensions_mut().insert(peer.clone());
            r
        };
        let mut call = svc
            .clone()
            .oneshot(request(Method::POST))
            .await
            .unwrap()
            .into_body();
        let mut listen = svc
            .clone()
            .oneshot(request(Method::GET))
            .await
            .unwrap()
            .into_body();
        let (call_tx, listen_tx) = {
            let mut s = std::mem::take(&mut *senders.lock().unwrap());
            let listen = s.pop().unwrap();
            (s.pop().unwrap(), listen)
        };
        // Both wait: the tool is running, the GET stream idles.
        for body in [&mut call, &mut listen] {
            let waits = std::future::poll_fn(|cx| {
                Poll::Ready(Pin::new(&mut *body).poll_frame(cx).is_pending())
            })
            .await;
            assert!(waits);
        }
        assert_eq!(watcher.watched_tasks(), 1, "only the GET stream is watched");

        revoke(&watcher, 2);
        assert_eq!(next(&mut listen).await, None, "the GET stream ends at once");
        listen_tx.send(b"event: late").unwrap();
        assert_eq!(next(&mut listen).await, None);

        call_tx
            .send(b"event: message\ndata: {\"result\":{}}")
            .unwrap();
        assert_eq!(
            next(&mut call).await,
            Some(&b"event: message\ndata: {\"result\":{}}"[..]),
            "the allowed call's answer arrives"
        );
        drop(call_tx);
        assert_eq!(
            next(&mut call).await,
            None,
            "and the stream ends with its call"
        );
    }
}
