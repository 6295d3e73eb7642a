//! The SPIFFE Workload API on the workload socket.

mod jwt;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tessera_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use tessera_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse, WitsvidRequest,
    WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::attest::{Attestation, Attestor, PeerInfo};
use crate::caller::{Caller, NO_IDENTITY, check_header};
use crate::metrics::{Metrics, ResultLabel};
use crate::svids::{Snapshot, SvidCache};
use crate::tasks::{TaskManager, TaskView};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;
type BuildFn<T> = fn(&Snapshot, &[TaskView], &Attestation) -> Option<(T, Vec<String>)>;

/// The `SpiffeWorkloadAPI` service.
#[derive(Clone, Debug)]
pub(crate) struct WorkloadService {
    cache: Arc<SvidCache>,
    tasks: Arc<TaskManager>,
    attestor: Arc<Attestor>,
    metrics: Arc<Metrics>,
    shutdown: crate::drain::Watch,
    /// The JWT-SVID RPCs; `UNIMPLEMENTED` without a JWT signer.
    jwt: Option<jwt::JwtApi>,
}

impl WorkloadService {
    /// A service answering from `cache`, attesting with `attestor`.
    pub(crate) fn new(
        cache: Arc<SvidCache>,
        tasks: Arc<TaskManager>,
        attestor: Arc<Attestor>,
        metrics: Arc<Metrics>,
        shutdown: crate::drain::Watch,
    ) -> Self {
        WorkloadService {
            cache,
            tasks,
            attestor,
            metrics,
            shutdown,
            jwt: None,
        }
    }

    /// Also serves JWT-SVIDs signed by `authority`, lasting `ttl` (capped by a task's
    /// deadline).
    pub(crate) fn with_jwt(mut self, trust: crate::jwt_trust::JwtTrust, ttl: Duration) -> Self {
        self.jwt = Some(jwt::JwtApi::new(
            trust,
            ttl,
            Arc::clone(&self.cache),
            Arc::clone(&self.tasks),
            Arc::clone(&self.attestor),
            Arc::clone(&self.metrics),
            self.shutdown.clone(),
        ));
        self
    }

    /// Header check and attestation, shared by every RPC that hands out material.
    pub(crate) async fn admit<T>(
        &self,
        req: &Request<T>,
    ) -> Result<(PeerInfo, Attestation), Status> {
        check_header(req)?;
        let caller = Caller::admit(
            req,
            &self.attestor,
            &self.metrics,
            self.cache.current().needs,
        )
        .await?;
        Ok((caller.peer, caller.attestation))
    }

    /// Spawns the task feeding one stream: the first message now, then one per
    /// change, re-attesting the caller each time (it may have exec'd or exited).
    fn stream<T: Send + 'static>(
        &self,
        rpc: &'static str,
        peer: PeerInfo,
        build: BuildFn<T>,
        first_att: Attestation,
        with_tasks: bool,
    ) -> Result<ResponseStream<T>, Status> {
        let mut rx = self.cache.subscribe();
        // Only streams that carry task SVIDs follow the caller's tasks.
        let mut tasks_rx = with_tasks.then(|| self.tasks.subscribe_owner(first_att.pid));
        let snap = rx.borrow_and_update().clone();
        let tasks = tasks_rx
            .as_mut()
            .map(|r| r.borrow_and_update().clone())
            .unwrap_or_default();
        let Some((first, mut last_key)) = build(&snap, &tasks, &first_att) else {
            self.metrics
                .attestations
                .get_or_create(&ResultLabel { result: "no_match" })
                .inc();
            tracing::info!(
                pid = first_att.pid,
                uid = first_att.uid,
                rpc,
                "caller matches no entry"
            );
            return Err(Status::permission_denied(NO_IDENTITY));
        };
        self.metrics
            .attestations
            .get_or_create(&ResultLabel { result: "matched" })
            .inc();
        let (tx, out) = mpsc::channel(4);
        tx.try_send(Ok(first)).expect("fresh channel has room");
        let attestor = Arc::clone(&self.attestor);
        let metrics = Arc::clone(&self.metrics);
        let shutdown = self.shutdown.clone();
        metrics.open_streams.inc();
        crate::socket::spawn_in_conn_span(async move {
            loop {
                let tasks_changed = async {
                    match tasks_rx.as_mut() {
                        Some(r) => r.changed().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = shutdown.signaled() => break,
                    r = rx.changed() => if r.is_err() { break },
                    r = tasks_changed => if r.is_err() { break },
                }
                let snap = rx.borrow_and_update().clone();
                let tasks = tasks_rx
                    .as_mut()
                    .map(|r| r.borrow_and_update().clone())
                    .unwrap_or_default();
                let att = match attestor.attest(&peer, snap.needs).await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::info!(conn = peer.conn_id, error = %e, "ending stream: caller no longer attests");
                        let _ = tx.send(Err(Status::permission_denied(NO_IDENTITY))).await;
                        break;
                    }
                };
                match build(&snap, &tasks, &att) {
                    Some((msg, key)) => {
                        if key != last_key {
                            last_key = key;
                            if tx.send(Ok(msg)).await.is_err() {
                                break;
                            }
                        }
                    }
                    None => {
                        // Every entry for this caller is gone: say so, as SPIRE does.
                        let _ = tx.send(Err(Status::permission_denied(NO_IDENTITY))).await;
                        break;
                    }
                }
            }
            metrics.open_streams.dec();
        });
        Ok(Box::pin(ReceiverStream::new(out)))
    }
}

/// Identifies the bundle's certificates cheaply (their signatures' last bytes),
/// so a stream sends a message only when something it carries changed.
fn bundle_key(snap: &Snapshot) -> impl Iterator<Item = String> + '_ {
    snap.bundle
        .certs
        .iter()
        .map(|c| hex::encode(&c[c.len().saturating_sub(16)..]))
}

/// Client SVIDs first (the default SVID of standard clients is the first one),
/// then the SVIDs of the caller's live tasks with hint = task id.
fn build_svid_response(
    snap: &Snapshot,
    tasks: &[TaskView],
    att: &Attestation,
) -> Option<(X509svidResponse, Vec<String>)> {
    let matched = snap.identities_for(att);
    if matched.is_empty() {
        return None;
    }
    let bundle = snap.bundle.concat_der();
    let live_tasks: Vec<&TaskView> = tasks.iter().filter(|t| t.owner_alive()).collect();
    let mut key: Vec<String> = matched.iter().map(|e| e.svid.serial_hex.clone()).collect();
    key.extend(live_tasks.iter().map(|t| t.svid.serial_hex.clone()));
    key.extend(bundle_key(snap));
    let clients = matched.iter().map(|e| X509svid {
        spiffe_id: e.spiffe_id.clone(),
        x509_svid: e.svid.chain_concat(),
        x509_svid_key: e.svid.key_pkcs8_der.to_vec(),
        bundle: bundle.clone(),
        hint: e.entry.client.clone(),
    });
    let task_svids = live_tasks.iter().map(|t| X509svid {
        spiffe_id: t.spiffe_id.clone(),
        x509_svid: t.svid.chain_concat(),
        x509_svid_key: t.svid.key_pkcs8_der.to_vec(),
        bundle: bundle.clone(),
        hint: t.id.clone(),
    });
    let svids = clients.chain(task_svids).collect();
    Some((
        X509svidResponse {
            svids,
            crl: Vec::new(),
            federated_bundles: HashMap::new(),
        },
        key,
    ))
}

fn build_bundles_response(
    snap: &Snapshot,
    _tasks: &[TaskView],
    att: &Attestation,
) -> Option<(X509BundlesResponse, Vec<String>)> {
    if snap.identities_for(att).is_empty() {
        return None;
    }
    let key = bundle_key(snap).collect();
    Some((
        X509BundlesResponse {
            crl: Vec::new(),
            bundles: HashMap::from([(
                snap.bundle.trust_domain.id_string(),
                snap.bundle.concat_der(),
            )]),
        },
        key,
    ))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadService {
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;
    type FetchWITSVIDStream = ResponseStream<WitsvidResponse>;
    type FetchWITBundlesStream = ResponseStream<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let (peer, att) = self.admit(&req).await?;
        Ok(Response::new(self.stream(
            "FetchX509SVID",
            peer,
            build_svid_response,
            att,
            true,
        )?))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let (peer, att) = self.admit(&req).await?;
        Ok(Response::new(self.stream(
            "FetchX509Bundles",
            peer,
            build_bundles_response,
            att,
            false,
        )?))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        match &self.jwt {
            Some(api) => api.fetch_svid(req).await,
            None => {
                check_header(&req)?;
                Err(jwt_unsupported())
            }
        }
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        match &self.jwt {
            Some(api) => api.fetch_bundles(req).await,
            None => {
                check_header(&req)?;
                Err(jwt_unsupported())
            }
        }
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        match &self.jwt {
            Some(api) => api.validate(req).await,
            None => {
                check_header(&req)?;
                Err(jwt_unsupported())
            }
        }
    }

    async fn fetch_witsvid(
        &self,
        req: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        check_header(&req)?;
        Err(Status::unimplemented(
            "WIT-SVIDs are not supported by this agent",
        ))
    }

    async fn fetch_wit_bundles(
        &self,
        req: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        check_header(&req)?;
        Err(Status::unimplemented(
            "WIT-SVIDs are not supported by this agent",
        ))
    }
}

fn jwt_unsupported() -> Status {
    Status::unimplemented(
        "JWT-SVIDs are not enabled on this Workload API; use X.509-SVIDs (FetchX509SVID)",
    )
}
