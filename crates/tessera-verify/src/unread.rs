//! `Connection: close` on an HTTP/1.1 response whose request body was not read to its end.
//!
//! Wrap the whole per-connection service in [`CloseUnread`] when serving
//! [`crate::oauth::BearerAuthLayer`] over HTTP/1.1: some answers come before the body is
//! read: a refused bearer token (401), a request refused by size (413). hyper then cannot tell where the next request on the connection
//! starts, so it drains what is already buffered and otherwise closes the connection after
//! the response; but it does not say so. A client (Python's httpx, for one) that sends its
//! next request on that kept-alive connection sees it cut ("server disconnected without
//! sending a response"), depending on how the body's bytes happened to arrive. Saying
//! `Connection: close` makes the client open a new connection instead. HTTP/2 needs
//! nothing: an unread stream is reset on its own.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, Version, header};
use http_body::{Body, Frame, SizeHint};

/// Wraps a service; see the module docs. Its requests' bodies are [`Tracked`].
#[derive(Clone, Debug)]
pub struct CloseUnread<S>(pub S);

/// A request body that records whether it was read to its end.
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    ended: Arc<AtomicBool>,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.ended.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<S, B, RB> tower::Service<Request<B>> for CloseUnread<S>
where
    S: tower::Service<Request<Tracked<B>>, Response = Response<RB>>,
    S::Future: Send + 'static,
    B: Body + Unpin,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let http1 = req.version() == Version::HTTP_11 || req.version() == Version::HTTP_10;
        let ended = Arc::new(AtomicBool::new(req.body().is_end_stream()));
        let req = req.map(|inner| Tracked {
            inner,
            ended: ended.clone(),
        });
        let fut = self.0.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            if http1 && !ended.load(Ordering::Acquire) {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tower::{ServiceExt, service_fn};

    use super::*;

    async fn answer(version: Version, read_body: bool) -> Option<HeaderValue> {
        let svc = CloseUnread(service_fn(
            move |req: Request<Tracked<Full<Bytes>>>| async move {
                if read_body {
                    let _ = req.into_body().collect().await;
                }
                Ok::<_, Infallible>(Response::new(()))
            },
        ));
        let req = Request::builder()
            .version(version)
            .body(Full::new(Bytes::from_static(b"{\"jsonrpc\":\"2.0\"}")))
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        resp.headers().get(header::CONNECTION).cloned()
    }

    #[tokio::test]
    async fn an_unread_http1_body_closes_the_connection_and_nothing_else_does() {
        assert_eq!(answer(Version::HTTP_11, false).await.unwrap(), "close");
        assert_eq!(answer(Version::HTTP_11, true).await, None);
        assert_eq!(answer(Version::HTTP_2, false).await, None);
    }
}
