//! `tessera.v1.Revocations` on the workload socket: the revocation feed, to every
//! attested caller that follows it, within bounds.
//!
//! Two RPCs: `Follow` (a snapshot, then deltas and heartbeats; resumable by feed id and
//! version) and the legacy `Watch` (the whole set on every change), which a cluster-mode
//! agent refuses: its message cannot carry evicted node CAs nor the cluster's
//! freshness, so an old verifier must fail closed, never open.
//!
//! Two costs grow with the callers an authenticated peer can open: each stream holds a
//! task and its buffers, and each change is sent on every stream. So an identity may
//! hold at most `revocation_max_watchers_per_identity` streams at once, Follow and Watch
//! together (RESOURCE_EXHAUSTED past it), and each delta, snapshot page and legacy set
//! is encoded once and its bytes shared by every stream, which tonic's generated server
//! cannot do (it encodes a message per stream, from a copy per stream): hence this
//! hand-written service, with a codec that sends those bytes as they are. The wire
//! format is the proto's.

use std::collections::HashMap;
use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use prost::Message;
use prost::bytes::{BufMut, Bytes};
use tessera_proto::tessera::v1::revocations_server::SERVICE_NAME;
use tessera_proto::tessera::v1::{FollowRevocationsRequest, WatchRevocationsRequest};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Request, Response, Status};

use super::TaskManager;
use crate::attest::Attestor;
use crate::caller::{Caller, NO_IDENTITY};
use crate::metrics::Metrics;
use crate::svids::SvidCache;

/// The `tessera.v1.Revocations` service (a tower service for tonic's router).
#[derive(Clone, Debug)]
pub(crate) struct RevocationsService {
    inner: Arc<Inner>,
    max_request_bytes: usize,
}

#[derive(Debug)]
struct Inner {
    manager: Arc<TaskManager>,
    cache: Arc<SvidCache>,
    attestor: Arc<Attestor>,
    metrics: Arc<Metrics>,
    shutdown: crate::drain::Watch,
    max_per_identity: usize,
    /// Open Watch streams per SPIFFE ID; an identity with none has no key.
    open: Mutex<HashMap<String, usize>>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send + 'static>>;

impl RevocationsService {
    /// A feed for attested callers (verifiers run as registered workloads), each of
    /// whose identities may hold at most `max_watchers_per_identity` streams.
    pub(crate) fn new(
        manager: Arc<TaskManager>,
        cache: Arc<SvidCache>,
        attestor: Arc<Attestor>,
        metrics: Arc<Metrics>,
        shutdown: crate::drain::Watch,
        max_watchers_per_identity: usize,
    ) -> Self {
        RevocationsService {
            inner: Arc::new(Inner {
                manager,
                cache,
                attestor,
                metrics,
                shutdown,
                max_per_identity: max_watchers_per_identity,
                open: Mutex::new(HashMap::new()),
            }),
            max_request_bytes: 4 * 1024 * 1024,
        }
    }

    /// Refuses requests larger than `limit` (the request is empty; anything large is
    /// garbage or an attack).
    #[must_use]
    pub(crate) fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_request_bytes = limit;
        self
    }
}

impl Inner {
    fn lock_open(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // Every change is one increment or decrement; a panic cannot leave it half-done.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more stream under each of `identities`, or RESOURCE_EXHAUSTED if
    /// any of them already holds the most allowed. A caller holding several identities
    /// counts against each, so none can be used to get around another's bound.
    fn reserve(self: &Arc<Self>, identities: Vec<String>) -> Result<Slot, Status> {
        let mut open = self.lock_open();
        if let Some(full) = identities
            .iter()
            .find(|id| open.get(*id).copied().unwrap_or(0) >= self.max_per_identity)
        {
            return Err(Status::resource_exhausted(format!(
                "{full} already has {} open revocation watch streams, the most \
                 revocation_max_watchers_per_identity allows; close one first",
                self.max_per_identity
            )));
        }
        for id in &identities {
            *open.entry(id.clone()).or_insert(0) += 1;
        }
        Ok(Slot {
            inner: Arc::clone(self),
            identities,
        })
    }

    async fn watch(
        self: Arc<Self>,
        req: Request<WatchRevocationsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        if self.manager.feed().is_cluster() {
            return Err(Status::failed_precondition(WATCH_IN_CLUSTER_MODE));
        }
        let slot = self.admit(&req, "watch").await?;
        let mut rx = self.manager.feed().subscribe();
        let feed = Arc::clone(self.manager.feed());
        let shutdown = self.shutdown.clone();
        let metrics = Arc::clone(&self.metrics);
        let (tx, out) = tokio::sync::mpsc::channel(4);
        metrics.revocation_watchers.inc();
        crate::socket::spawn_in_conn_span(async move {
            // Held as long as the stream: its place is given back when it ends.
            let _slot = slot;
            loop {
                rx.borrow_and_update();
                let bytes = feed.legacy_set();
                metrics.revocation_bytes_sent.inc_by(bytes.len() as u64);
                if tx.send(Ok(bytes)).await.is_err() {
                    break;
                }
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = shutdown.signaled() => break,
                    r = rx.changed() => if r.is_err() { break },
                }
            }
            metrics.revocation_watchers.dec();
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    /// Attests the caller and reserves a stream under each of its identities.
    async fn admit<T>(self: &Arc<Self>, req: &Request<T>, rpc: &str) -> Result<Slot, Status> {
        let snap = self.cache.current();
        let att = Caller::admit(req, &self.attestor, &self.metrics, snap.needs)
            .await?
            .attestation;
        // Verifiers (MCP servers) and clients alike may follow.
        let identities: Vec<String> = snap
            .identities_for(&att)
            .iter()
            .map(|e| e.spiffe_id.clone())
            .collect();
        if identities.is_empty() {
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        self.reserve(identities).inspect_err(|status| {
            tracing::warn!(pid = att.pid, uid = att.uid, error = %status.message(), "revocation {rpc} refused");
        })
    }

    async fn follow(
        self: Arc<Self>,
        req: Request<FollowRevocationsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let slot = self.admit(&req, "follow").await?;
        let FollowRevocationsRequest {
            feed_id,
            since_version,
        } = req.into_inner();
        let stream = super::follow::FollowStream {
            feed: Arc::clone(self.manager.feed()),
            metrics: Arc::clone(&self.metrics),
            shutdown: self.shutdown.clone(),
        };
        let (tx, out) = tokio::sync::mpsc::channel(16);
        crate::socket::spawn_in_conn_span(async move {
            // Held as long as the stream: its place is given back when it ends.
            let _slot = slot;
            stream.run(&feed_id, since_version, tx).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }
}

/// One stream's places among its identities' bounds, given back on drop.
#[derive(Debug)]
struct Slot {
    inner: Arc<Inner>,
    identities: Vec<String>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.inner.lock_open();
        for id in &self.identities {
            if let Some(n) = open.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    open.remove(id);
                }
            }
        }
    }
}

// === impl RevocationsService: the tower service tonic routes to ===

const WATCH_PATH: &str = "/tessera.v1.Revocations/Watch";
const FOLLOW_PATH: &str = "/tessera.v1.Revocations/Follow";

/// Why a cluster-mode agent refuses the legacy Watch: says what to do about it.
pub(crate) const WATCH_IN_CLUSTER_MODE: &str = "this agent runs in cluster mode: its revocation \
     feed needs tessera-verify with Revocations.Follow; upgrade the verifier";

impl tonic::server::NamedService for RevocationsService {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> tower::Service<http::Request<B>> for RevocationsService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        let max_request_bytes = self.max_request_bytes;
        match req.uri().path() {
            WATCH_PATH => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(
                    SharedBytesCodec::<WatchRevocationsRequest>(PhantomData),
                )
                .max_decoding_message_size(max_request_bytes);
                Ok(grpc.server_streaming(WatchMethod(inner), req).await)
            }),
            FOLLOW_PATH => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(
                    SharedBytesCodec::<FollowRevocationsRequest>(PhantomData),
                )
                .max_decoding_message_size(max_request_bytes);
                Ok(grpc.server_streaming(FollowMethod(inner), req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

struct WatchMethod(Arc<Inner>);

impl tonic::server::ServerStreamingService<WatchRevocationsRequest> for WatchMethod {
    type Response = Bytes;
    type ResponseStream = WatchStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<WatchStream>, Status>> + Send>>;

    fn call(&mut self, req: Request<WatchRevocationsRequest>) -> Self::Future {
        Box::pin(Arc::clone(&self.0).watch(req))
    }
}

struct FollowMethod(Arc<Inner>);

impl tonic::server::ServerStreamingService<FollowRevocationsRequest> for FollowMethod {
    type Response = Bytes;
    type ResponseStream = WatchStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<WatchStream>, Status>> + Send>>;

    fn call(&mut self, req: Request<FollowRevocationsRequest>) -> Self::Future {
        Box::pin(Arc::clone(&self.0).follow(req))
    }
}

/// Decodes requests with prost; sends responses that are already encoded messages.
struct SharedBytesCodec<D>(PhantomData<D>);

impl<D: Message + Default + Send + 'static> Codec for SharedBytesCodec<D> {
    type Encode = Bytes;
    type Decode = D;
    type Encoder = SharedBytesEncoder;
    type Decoder = ProstDecoder<D>;

    fn encoder(&mut self) -> SharedBytesEncoder {
        SharedBytesEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<D> {
        ProstDecoder(PhantomData)
    }
}

struct SharedBytesEncoder;

impl Encoder for SharedBytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct ProstDecoder<D>(PhantomData<D>);

impl<D: Message + Default> Decoder for ProstDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::Service;

    use super::*;
    use crate::attest::UnixAttestor;
    use crate::tasks::fixture_with;

    async fn service(node: Option<&str>) -> (crate::tasks::Fixture, RevocationsService) {
        let f = fixture_with(node).await;
        let metrics = Arc::new(Metrics::default());
        let cache = SvidCache::new(
            Arc::clone(&f.authority),
            f.store.clone(),
            Duration::from_secs(3600),
            Arc::clone(&metrics),
        )
        .await
        .unwrap();
        let (_trigger, drain) = crate::drain::channel();
        let service = RevocationsService::new(
            Arc::clone(&f.manager),
            cache,
            Arc::new(Attestor::new(UnixAttestor::default(), None)),
            metrics,
            drain,
            4,
        );
        (f, service)
    }

    fn grpc_request(path: &str) -> http::Request<tonic::body::Body> {
        // An empty message: the 5-byte gRPC frame header of a zero-length message.
        http::Request::builder()
            .method("POST")
            .uri(format!("http://agent{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(http_body_util::Full::new(
                Bytes::from_static(&[0, 0, 0, 0, 0]),
            )))
            .unwrap()
    }

    fn status_of(response: &http::Response<tonic::body::Body>) -> Option<Status> {
        Status::from_header_map(response.headers())
    }

    #[tokio::test]
    async fn a_cluster_mode_agent_refuses_the_legacy_watch_saying_to_upgrade_the_verifier() {
        let (_f, mut service) = service(Some("spiffe://tasks.test/node/a")).await;
        let response = service.call(grpc_request(WATCH_PATH)).await.unwrap();
        let status = status_of(&response).expect("a trailers-only refusal");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status.message().contains("upgrade the verifier"),
            "{status:?}"
        );
        assert!(
            status.message().contains("Revocations.Follow"),
            "{status:?}"
        );
    }

    #[tokio::test]
    async fn a_standalone_agent_still_serves_watch_to_attested_callers_only() {
        // No peer credentials on this request: Watch goes on to attest the caller (and
        // refuses it), rather than refusing the method as a cluster-mode agent does.
        let (_f, mut service) = service(None).await;
        let response = service.call(grpc_request(WATCH_PATH)).await.unwrap();
        let status = status_of(&response).expect("a refusal");
        assert_ne!(status.code(), tonic::Code::FailedPrecondition);
        assert_ne!(status.code(), tonic::Code::Unimplemented);
    }
}
