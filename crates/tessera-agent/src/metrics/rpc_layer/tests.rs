use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Ready;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use tower::{Layer, Service};

use super::*;
use crate::metrics::RpcLabel;

/// A service answering every request with what `respond` makes.
#[derive(Clone)]
struct Answer<F>(F);

impl<F, B> Service<http::Request<()>> for Answer<F>
where
    F: FnMut() -> http::Response<B>,
{
    type Response = http::Response<B>;
    type Error = Infallible;
    type Future = Ready<Result<http::Response<B>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        std::future::ready(Ok((self.0)()))
    }
}

fn request(path: &str) -> http::Request<()> {
    http::Request::post(path).body(()).unwrap()
}

fn count(metrics: &Metrics, rpc: &'static str, code: &'static str) -> u64 {
    metrics.rpcs.get_or_create(&RpcLabel { rpc, code }).get()
}

/// Every series of `tessera_rpcs_total`, as "rpc code value" lines.
fn series(metrics: &Metrics) -> String {
    metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("tessera_rpcs_total{"))
        .collect::<Vec<_>>()
        .join("\n")
}

type Frames = futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

/// A streamed response: one message, then trailers with `grpc-status: code`.
fn streamed(code: &'static str) -> http::Response<StreamBody<Frames>> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static(code));
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
        Ok(Frame::trailers(trailers)),
    ];
    http::Response::new(StreamBody::new(futures::stream::iter(frames)))
}

#[tokio::test]
async fn a_refusal_in_the_headers_counts_once_when_answered() {
    let metrics = Arc::new(Metrics::default());
    let mut svc =
        RpcMetricsLayer::new(Arc::clone(&metrics), WORKLOAD_SOCKET_RPCS).layer(Answer(|| {
            tonic::Status::invalid_argument("no").into_http::<Empty<Bytes>>()
        }));
    let response = svc
        .call(request("/tessera.v1.Tasks/BeginTask"))
        .await
        .unwrap();
    assert_eq!(count(&metrics, "BeginTask", "InvalidArgument"), 1);
    // Reading or dropping the (empty) body counts nothing more.
    response.into_body().collect().await.unwrap();
    assert_eq!(series(&metrics).lines().count(), 1, "{}", series(&metrics));
}

#[tokio::test]
async fn a_stream_counts_at_its_end_with_its_trailers_status() {
    let metrics = Arc::new(Metrics::default());
    let mut svc = RpcMetricsLayer::new(Arc::clone(&metrics), WORKLOAD_SOCKET_RPCS)
        .layer(Answer(|| streamed("7")));
    let response = svc
        .call(request("/SpiffeWorkloadAPI/FetchX509SVID"))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    assert_eq!(series(&metrics), "", "an open stream has no outcome yet");
    let last = body.frame().await.unwrap().unwrap();
    assert!(last.is_trailers());
    assert_eq!(count(&metrics, "FetchX509SVID", "PermissionDenied"), 1);
    drop(body);
    assert_eq!(series(&metrics).lines().count(), 1, "{}", series(&metrics));
}

#[tokio::test]
async fn a_stream_the_caller_leaves_after_its_answer_counts_ok() {
    let metrics = Arc::new(Metrics::default());
    let mut svc = RpcMetricsLayer::new(Arc::clone(&metrics), WORKLOAD_SOCKET_RPCS)
        .layer(Answer(|| streamed("7")));
    let response = svc
        .call(request("/tessera.v1.Revocations/Watch"))
        .await
        .unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    assert_eq!(count(&metrics, "WatchRevocations", "Ok"), 1);
    assert_eq!(series(&metrics).lines().count(), 1, "{}", series(&metrics));
}

#[tokio::test]
async fn a_call_dropped_before_its_answer_counts_cancelled() {
    /// Never answers.
    struct Stuck;
    impl Service<http::Request<()>> for Stuck {
        type Response = http::Response<Empty<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Pending<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::pending()
        }
    }
    let metrics = Arc::new(Metrics::default());
    let mut svc = RpcMetricsLayer::new(Arc::clone(&metrics), ADMIN_SOCKET_RPCS).layer(Stuck);
    let pending = svc.call(request("/tessera.v1.Admin/WithdrawConsent"));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(10), pending)
            .await
            .is_err()
    );
    assert_eq!(count(&metrics, "WithdrawConsent", "Cancelled"), 1);
}

#[tokio::test]
async fn paths_not_served_share_one_label_and_never_appear() {
    let metrics = Arc::new(Metrics::default());
    let mut svc =
        RpcMetricsLayer::new(Arc::clone(&metrics), WORKLOAD_SOCKET_RPCS).layer(Answer(|| {
            tonic::Status::unimplemented("").into_http::<Empty<Bytes>>()
        }));
    for path in [
        "/tessera.v1.Admin/GetStatus",
        "/tessera.v1.Tasks/BeginTaskX",
        "/attacker.Chosen/Name1",
        "/",
    ] {
        svc.call(request(path)).await.unwrap();
    }
    assert_eq!(count(&metrics, UNKNOWN_RPC, "Unimplemented"), 4);
    let text = series(&metrics);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        !text.contains("attacker") && !text.contains("Admin"),
        "{text}"
    );
}

#[tokio::test]
async fn a_status_that_is_no_code_counts_unknown() {
    let metrics = Arc::new(Metrics::default());
    let mut svc = RpcMetricsLayer::new(Arc::clone(&metrics), WORKLOAD_SOCKET_RPCS)
        .layer(Answer(|| streamed("99")));
    let response = svc
        .call(request("/tessera.v1.Tasks/ListTasks"))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(count(&metrics, "ListTasks", "Unknown"), 1);
}

/// The tables name every RPC of the protos, each on exactly one socket and under a
/// distinct label, so a method added to a proto cannot go counted as `unknown`.
#[test]
fn every_rpc_in_the_protos_is_labelled_on_one_socket() {
    let protos = [
        include_str!("../../../../../proto/workload.proto"),
        include_str!("../../../../../proto/tessera/v1/admin.proto"),
        include_str!("../../../../../proto/tessera/v1/tasks.proto"),
    ];
    let mut paths = BTreeSet::new();
    for proto in protos {
        let mut package = String::new();
        let mut service = String::new();
        for line in proto.lines().map(str::trim) {
            if let Some(p) = line.strip_prefix("package ") {
                package = format!("{}.", p.trim_end_matches(';'));
            } else if let Some(s) = line.strip_prefix("service ") {
                service = s.trim_end_matches('{').trim().to_owned();
            } else if let Some(rpc) = line.strip_prefix("rpc ") {
                let method = rpc.split('(').next().unwrap().trim();
                paths.insert(format!("/{package}{service}/{method}"));
            }
        }
    }
    assert!(paths.len() > 20, "{paths:?}");
    let tables: Vec<&str> = WORKLOAD_SOCKET_RPCS
        .iter()
        .chain(ADMIN_SOCKET_RPCS)
        .map(|(path, _)| *path)
        .collect();
    let in_tables: BTreeSet<String> = tables.iter().map(|p| (*p).to_owned()).collect();
    assert_eq!(in_tables.len(), tables.len(), "a path is listed twice");
    assert_eq!(in_tables, paths);
    for table in [WORKLOAD_SOCKET_RPCS, ADMIN_SOCKET_RPCS] {
        let labels: BTreeSet<&str> = table.iter().map(|(_, label)| *label).collect();
        assert_eq!(labels.len(), table.len(), "a label is used twice");
        assert!(!labels.contains(UNKNOWN_RPC));
    }
}
