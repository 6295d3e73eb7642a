//! `tessera_rpcs_total{rpc,code}`, counted once per call by a tower layer around each
//! socket's gRPC server, so no handler counts by hand and no path goes uncounted.
//!
//! `rpc` is the method's name from a fixed table per socket ([`WORKLOAD_SOCKET_RPCS`],
//! [`ADMIN_SOCKET_RPCS`]); any other path, whatever a caller sends, is
//! [`UNKNOWN_RPC`], so callers cannot mint label values (each would be a series held
//! forever). `code` is the name of the gRPC status the call ended with:
//!
//! - a response whose headers carry `grpc-status` (a trailers-only response: every
//!   refusal before a message, such as a `Status` returned by a handler or tonic's
//!   `Unimplemented`) counts when its headers are produced;
//! - otherwise it counts when its body ends, with the `grpc-status` of its trailers. So
//!   a server stream counts once, at its end, with the status it ended with (a
//!   FetchX509SVID stream ended by the deletion of the caller's entry counts
//!   `PermissionDenied`); an open stream is not counted yet (`tessera_open_streams`
//!   and `tessera_revocation_watchers` count those);
//! - a body dropped before its trailers means the caller closed the call (or its
//!   connection) after the agent answered it without error: it counts `Ok`. The
//!   Workload API's and the revocation feed's streams never end on their own, so that
//!   is how they end normally (SPIRE's handlers return OK there too);
//! - a call dropped before it was answered (the caller went away while the agent
//!   worked on it, or the admin socket's timeout ran out) counts `Cancelled`;
//! - a body that fails counts `Internal` (the stream is reset), and one that ends
//!   without trailers, or a `grpc-status` that is not a code, counts `Unknown`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use tonic::Code;

use super::Metrics;

/// The `rpc` label of a path that names no RPC the socket serves.
pub(crate) const UNKNOWN_RPC: &str = "unknown";

/// An RPC's gRPC path and its `rpc` label.
pub(crate) type RpcName = (&'static str, &'static str);

/// The RPCs of the workload socket. The labels are the method names, except
/// `WatchRevocations`, the label the revocation feed had before this layer counted it.
pub(crate) const WORKLOAD_SOCKET_RPCS: &[RpcName] = &[
    ("/SpiffeWorkloadAPI/FetchX509SVID", "FetchX509SVID"),
    ("/SpiffeWorkloadAPI/FetchX509Bundles", "FetchX509Bundles"),
    ("/SpiffeWorkloadAPI/FetchJWTSVID", "FetchJWTSVID"),
    ("/SpiffeWorkloadAPI/FetchJWTBundles", "FetchJWTBundles"),
    ("/SpiffeWorkloadAPI/ValidateJWTSVID", "ValidateJWTSVID"),
    ("/SpiffeWorkloadAPI/FetchWITSVID", "FetchWITSVID"),
    ("/SpiffeWorkloadAPI/FetchWITBundles", "FetchWITBundles"),
    ("/tessera.v1.Tasks/BeginTask", "BeginTask"),
    ("/tessera.v1.Tasks/EndTask", "EndTask"),
    ("/tessera.v1.Tasks/ListTasks", "ListTasks"),
    ("/tessera.v1.Revocations/Watch", "WatchRevocations"),
    ("/tessera.v1.Revocations/Follow", "FollowRevocations"),
];

/// The RPCs of the admin socket.
pub(crate) const ADMIN_SOCKET_RPCS: &[RpcName] = &[
    ("/tessera.v1.Admin/CreateEntry", "CreateEntry"),
    ("/tessera.v1.Admin/ListEntries", "ListEntries"),
    ("/tessera.v1.Admin/GetEntry", "GetEntry"),
    ("/tessera.v1.Admin/DeleteEntry", "DeleteEntry"),
    ("/tessera.v1.Admin/ListAudit", "ListAudit"),
    ("/tessera.v1.Admin/GetStatus", "GetStatus"),
    ("/tessera.v1.Admin/GrantConsent", "GrantConsent"),
    ("/tessera.v1.Admin/ListConsents", "ListConsents"),
    ("/tessera.v1.Admin/GetConsent", "GetConsent"),
    ("/tessera.v1.Admin/WithdrawConsent", "WithdrawConsent"),
    ("/tessera.v1.Admin/ListAllTasks", "ListAllTasks"),
    ("/tessera.v1.Admin/RevokeTask", "RevokeTask"),
];

/// Counts every call of the service it wraps in `tessera_rpcs_total` (see the module
/// docs for when and with which code).
#[derive(Clone, Debug)]
pub(crate) struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
    rpcs: &'static [RpcName],
}

impl RpcMetricsLayer {
    /// Counts into `metrics`, labelling the paths of `rpcs` by name.
    pub(crate) fn new(metrics: Arc<Metrics>, rpcs: &'static [RpcName]) -> Self {
        RpcMetricsLayer { metrics, rpcs }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] makes.
#[derive(Clone, Debug)]
pub(crate) struct RpcMetrics<S> {
    inner: S,
    layer: RpcMetricsLayer,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        let rpc = self
            .layer
            .rpcs
            .iter()
            .find(|(p, _)| *p == path)
            .map_or(UNKNOWN_RPC, |(_, label)| *label);
        ResponseFuture {
            inner: self.inner.call(req),
            call: Some(Call {
                metrics: Arc::clone(&self.layer.metrics),
                rpc,
                code: Code::Cancelled,
            }),
        }
    }
}

/// One call, counted once, when dropped, with `code`: `Cancelled` until the agent
/// answers, so that every way a call can end without an answer is counted.
#[derive(Debug)]
struct Call {
    metrics: Arc<Metrics>,
    rpc: &'static str,
    code: Code,
}

impl Call {
    /// Counts the call now, ended with `code`.
    fn end(mut self, code: Code) {
        self.code = code;
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.metrics.rpc(self.rpc, self.code);
    }
}

/// The `grpc-status` of `headers`, if they carry one; a value that is not a code is
/// `Unknown`, as a client reads it.
fn status_of(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get(tonic::Status::GRPC_STATUS)
        .map(|v| Code::from_bytes(v.as_bytes()))
}

pin_project_lite::pin_project! {
    /// The response future of [`RpcMetrics`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<CountedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        Poll::Ready(result.map(|response| {
            if let Some(code) = status_of(response.headers())
                && let Some(call) = call.take()
            {
                call.end(code);
            }
            if let Some(call) = call.as_mut() {
                // Answered without error: from here, the caller leaving is no failure.
                call.code = Code::Ok;
            }
            response.map(|inner| CountedBody { inner, call })
        }))
        // An `Err` (tonic's router has none) drops `call` with `Cancelled`: no answer
        // was made.
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its call at its end (see the module docs).
    #[derive(Debug)]
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let end = match &frame {
            Some(Ok(frame)) => frame
                .trailers_ref()
                .map(|trailers| status_of(trailers).unwrap_or(Code::Unknown)),
            Some(Err(_)) => Some(Code::Internal),
            None => Some(Code::Unknown),
        };
        if let Some(code) = end
            && let Some(call) = this.call.take()
        {
            call.end(code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
