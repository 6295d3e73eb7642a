//! `tessera.v1.Tasks` on the workload socket.

use std::sync::Arc;
use std::time::Duration;

use tessera_identity::{ClientId, TrustDomain};
use tessera_proto::tessera::v1::tasks_server::Tasks;
use tessera_proto::tessera::v1::{
    BeginTaskRequest as BeginTaskMessage, BeginTaskResponse, EndTaskRequest, EndTaskResponse,
    ListTasksRequest, ListTasksResponse, Task, TaskSvid,
};
use tessera_store::{TaskFilter, TaskRecord};
use tonic::{Request, Response, Status};

use super::request::BeginTaskRequest;
use super::{BeginRequest, EndReason, Entitlement, TaskError, TaskManager};
use crate::attest::{Attestation, Attestor, PeerInfo};
use crate::caller::{Caller, NO_IDENTITY};
use crate::metrics::Metrics;
use crate::svids::{Snapshot, SvidCache};

/// Converts a stored task for the API. Its SPIFFE ID is tessera-identity's, from the
/// stored client and task id (the store refuses a row naming no valid one).
pub(crate) fn task_to_proto(t: TaskRecord, trust_domain: &TrustDomain) -> Task {
    Task {
        spiffe_id: ClientId::new(trust_domain.clone(), t.client.clone())
            .task(t.id)
            .to_string(),
        id: t.id.to_string(),
        client: t.client.to_string(),
        subject: t.subject,
        server: t.server,
        scopes: t.scopes,
        purpose: t.purpose,
        consent_id: t.consent_id,
        begun_at_unix: t.begun_at,
        deadline_unix: t.deadline,
        ended_at_unix: t.ended_at.unwrap_or(0),
        end_reason: t.end_reason.unwrap_or_default(),
        pid: u32::try_from(t.pid).unwrap_or(0),
    }
}

/// The Tasks service.
#[derive(Clone, Debug)]
pub(crate) struct TasksService {
    manager: Arc<TaskManager>,
    cache: Arc<SvidCache>,
    attestor: Arc<Attestor>,
    metrics: Arc<Metrics>,
}

impl TasksService {
    /// A service beginning tasks with `manager` for callers attested by `attestor`.
    pub(crate) fn new(
        manager: Arc<TaskManager>,
        cache: Arc<SvidCache>,
        attestor: Arc<Attestor>,
        metrics: Arc<Metrics>,
    ) -> Self {
        TasksService {
            manager,
            cache,
            attestor,
            metrics,
        }
    }

    /// The caller's client identities (at least one, or PermissionDenied), and the
    /// snapshot it was attested against.
    async fn clients<T>(
        &self,
        req: &Request<T>,
    ) -> Result<(PeerInfo, Attestation, Vec<ClientId>, Arc<Snapshot>), Status> {
        let snap = self.cache.current();
        let Caller {
            peer,
            attestation: att,
        } = Caller::admit(req, &self.attestor, &self.metrics, snap.needs).await?;
        let clients: Vec<ClientId> = snap.clients_for(&att);
        if clients.is_empty() {
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        Ok((peer, att, clients, snap))
    }
}

/// How long a BeginTask waits for a committed entry change to reach the served snapshot
/// before refusing the caller.
const ENTRIES_APPLIED_WAIT: Duration = Duration::from_secs(5);

/// Whether a caller attested as `att` against `attested`, acting as `client`, still is
/// that client once every entry change committed so far is served. Checked under the
/// registration gate, so an entry deletion (which ends the client's tasks under that
/// gate, once the deletion is served) cannot miss a task begun on the stale attestation.
pub(crate) fn entitlement(
    cache: Arc<SvidCache>,
    attested: Arc<Snapshot>,
    att: Attestation,
    client: ClientId,
) -> Entitlement {
    Entitlement::new(async move {
        if !cache.wait_applied(ENTRIES_APPLIED_WAIT).await {
            tracing::warn!(%client, "entry changes not served after {ENTRIES_APPLIED_WAIT:?}; refusing BeginTask");
            return false;
        }
        let served = cache.current();
        // The usual case: no entry changed since the caller was attested.
        Arc::ptr_eq(&served, &attested) || served.clients_for(&att).contains(&client)
    })
}

#[tonic::async_trait]
impl Tasks for TasksService {
    async fn begin_task(
        &self,
        req: Request<BeginTaskMessage>,
    ) -> Result<Response<BeginTaskResponse>, Status> {
        let (peer, att, clients, attested) = self.clients(&req).await?;
        let r = BeginTaskRequest::parse(req.into_inner(), &clients)?;
        let (owner_pid, owner_fd) = if r.bind_to_parent {
            let (ppid, fd) = self
                .attestor
                .parent_of(&peer)
                .await
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            (ppid, Some(Arc::new(fd)))
        } else {
            (att.pid, peer.pidfd.clone())
        };
        let client = r.client;
        let td = client.trust_domain.clone();
        let actor = format!("{client} pid:{}", att.pid);
        let entitled = entitlement(Arc::clone(&self.cache), attested, att, client.clone());
        let (record, svid) = self
            .manager
            .begin(BeginRequest {
                client,
                subject: r.subject,
                purpose: r.purpose,
                server: r.server,
                scopes: r.scopes,
                lifetime: r.lifetime,
                owner_pid,
                owner_fd,
                actor,
                entitled,
            })
            .await
            .map_err(Status::from)?;
        let bundle = self.cache.current().bundle.concat_der();
        let task = task_to_proto(record, &td);
        Ok(Response::new(BeginTaskResponse {
            svid: Some(TaskSvid {
                spiffe_id: task.spiffe_id.clone(),
                x509_svid: svid.chain_concat(),
                x509_svid_key: svid.key_pkcs8_der.to_vec(),
                bundle,
                hint: task.id.clone(),
            }),
            task: Some(task),
        }))
    }

    async fn end_task(
        &self,
        req: Request<EndTaskRequest>,
    ) -> Result<Response<EndTaskResponse>, Status> {
        let (_, att, clients, _) = self.clients(&req).await?;
        let id = req.into_inner().task_id;
        let td = clients[0].trust_domain.clone();
        let mut last = Status::from(TaskError::NotFound {
            id: id.clone(),
            client: Some(clients[0].name.as_str().to_owned()),
        });
        for client in &clients {
            let actor = format!("{client} pid:{}", att.pid);
            match self
                .manager
                .end(&id, EndReason::Ended, &actor, Some(client.name.as_str()))
                .await
            {
                Ok(t) => {
                    return Ok(Response::new(EndTaskResponse {
                        task: Some(task_to_proto(t, &td)),
                    }));
                }
                Err(e @ TaskError::NotFound { .. }) => last = e.into(),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last)
    }

    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let (_, _, clients, _) = self.clients(&req).await?;
        let include_ended = req.into_inner().include_ended;
        let td = clients[0].trust_domain.clone();
        let mut tasks = Vec::new();
        for client in &clients {
            let filter = TaskFilter {
                client: Some(client.name.clone()),
                include_ended,
            };
            let found = self
                .manager
                .store()
                .list_tasks(&filter)
                .await
                .map_err(|e| Status::from(TaskError::Store(e)))?;
            tasks.extend(found.into_iter().map(|t| task_to_proto(t, &td)));
        }
        Ok(Response::new(ListTasksResponse { tasks }))
    }
}
