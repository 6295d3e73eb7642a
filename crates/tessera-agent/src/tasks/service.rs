//! `tessera.v1.Tasks` on the workload socket.

use std::sync::Arc;
use std::time::Duration;

use tessera_identity::{ClientId, Scope, ServerId, ServerName};
use tessera_proto::tessera::v1::tasks_server::Tasks;
use tessera_proto::tessera::v1::{
    BeginTaskRequest, BeginTaskResponse, EndTaskRequest, EndTaskResponse, ListTasksRequest,
    ListTasksResponse, Task, TaskSvid,
};
use tessera_store::{TaskFilter, TaskRecord};
use tonic::{Request, Response, Status};

use super::{BeginRequest, EndReason, Entitlement, TaskError, TaskManager};
use crate::attest::{Attestation, Attestor, PeerInfo};
use crate::caller::{Caller, NO_IDENTITY};
use crate::metrics::Metrics;
use crate::svids::{Snapshot, SvidCache};

/// Converts a stored task for the API.
pub fn task_to_proto(t: TaskRecord, trust_domain: &str) -> Task {
    Task {
        spiffe_id: format!("spiffe://{trust_domain}/client/{}/task/{}", t.client, t.id),
        id: t.id,
        client: t.client,
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

fn task_status(e: TaskError) -> Status {
    match e {
        TaskError::InvalidArgument(m) => Status::invalid_argument(m),
        TaskError::Consent(c) => Status::permission_denied(c.to_string()),
        TaskError::NotFound(id) => Status::not_found(format!("no task {id} for this client")),
        e @ TaskError::TooManyLive { .. } => Status::resource_exhausted(e.to_string()),
        // As for a caller that matches no entry: it learns nothing more.
        TaskError::NotEntitled { .. } => Status::permission_denied(NO_IDENTITY),
        e @ TaskError::ShuttingDown => Status::unavailable(e.to_string()),
        e => {
            tracing::error!(error = %e, "task operation failed");
            Status::internal("task operation failed; see the agent's log")
        }
    }
}

/// The Tasks service.
#[derive(Clone, Debug)]
pub struct TasksService {
    manager: Arc<TaskManager>,
    cache: Arc<SvidCache>,
    attestor: Arc<Attestor>,
    metrics: Arc<Metrics>,
}

/// Longest free-text fields accepted before any other check.
const MAX_SUBJECT: usize = 256;
const MAX_PURPOSE: usize = 1024;
const MAX_SCOPES: usize = 64;

impl TasksService {
    /// A service beginning tasks with `manager` for callers attested by `attestor`.
    pub fn new(
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
        rpc: &'static str,
        req: &Request<T>,
    ) -> Result<(PeerInfo, Attestation, Vec<ClientId>, Arc<Snapshot>), Status> {
        let snap = self.cache.current();
        let Caller {
            peer,
            attestation: att,
        } = Caller::admit(req, &self.attestor, &self.metrics, snap.needs).await?;
        let clients: Vec<ClientId> = snap.clients_for(&att);
        if clients.is_empty() {
            self.metrics.rpc(rpc, tonic::Code::PermissionDenied);
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
        req: Request<BeginTaskRequest>,
    ) -> Result<Response<BeginTaskResponse>, Status> {
        let (peer, att, clients, attested) = self.clients("BeginTask", &req).await?;
        let r = req.into_inner();
        let client = if r.client.is_empty() {
            match clients.as_slice() {
                [one] => one.clone(),
                many => {
                    return Err(Status::invalid_argument(format!(
                        "this caller has several client identities ({}); name one in `client`",
                        many.iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        } else {
            clients
                .iter()
                .find(|c| c.name.as_str() == r.client)
                .cloned()
                .ok_or_else(|| {
                    Status::permission_denied(format!("this caller is not client {:?}", r.client))
                })?
        };
        let td = client.trust_domain.clone();
        let server: ServerName = if r.server.starts_with("spiffe://") {
            let id: ServerId = r
                .server
                .parse()
                .map_err(|e| Status::invalid_argument(format!("server {:?}: {e}", r.server)))?;
            if id.trust_domain != td {
                return Err(Status::invalid_argument(format!(
                    "server {} is not in trust domain {td}",
                    r.server
                )));
            }
            id.name
        } else {
            r.server
                .parse()
                .map_err(|e| Status::invalid_argument(format!("server {:?}: {e}", r.server)))?
        };
        if r.subject.is_empty() || r.subject.len() > MAX_SUBJECT {
            return Err(Status::invalid_argument(format!(
                "subject must be 1..={MAX_SUBJECT} bytes"
            )));
        }
        if r.purpose.len() > MAX_PURPOSE {
            return Err(Status::invalid_argument(format!(
                "purpose must be at most {MAX_PURPOSE} bytes"
            )));
        }
        if r.scopes.is_empty() || r.scopes.len() > MAX_SCOPES {
            return Err(Status::invalid_argument(format!(
                "request 1..={MAX_SCOPES} scopes"
            )));
        }
        let scopes = r
            .scopes
            .iter()
            .map(|s| {
                let scope: Scope = s
                    .parse()
                    .map_err(|e| Status::invalid_argument(format!("scope {s:?}: {e}")))?;
                if scope.server() != &server {
                    return Err(Status::invalid_argument(format!(
                        "scope {s:?} is for server {:?}, but the task is for {:?}",
                        scope.server().as_str(),
                        server.as_str()
                    )));
                }
                Ok(scope)
            })
            .collect::<Result<Vec<_>, Status>>()?;
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
        let actor = format!("{client} pid:{}", att.pid);
        let entitled = entitlement(Arc::clone(&self.cache), attested, att, client.clone());
        let (record, svid) = self
            .manager
            .begin(BeginRequest {
                client,
                subject: r.subject,
                purpose: r.purpose,
                server,
                scopes,
                lifetime: (r.lifetime_secs > 0)
                    .then(|| Duration::from_secs(r.lifetime_secs.into())),
                owner_pid,
                owner_fd,
                actor,
                entitled,
            })
            .await
            .map_err(|e| {
                let status = task_status(e);
                self.metrics.rpc("BeginTask", status.code());
                status
            })?;
        self.metrics.rpc("BeginTask", tonic::Code::Ok);
        let bundle = self.cache.current().bundle.concat_der();
        let task = task_to_proto(record, td.as_str());
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
        let (_, att, clients, _) = self.clients("EndTask", &req).await?;
        let id = req.into_inner().task_id;
        let td = clients[0].trust_domain.as_str().to_owned();
        let mut last = Status::not_found(format!("no task {id} for this client"));
        for client in &clients {
            let actor = format!("{client} pid:{}", att.pid);
            match self
                .manager
                .end(&id, EndReason::Ended, &actor, Some(client.name.as_str()))
                .await
            {
                Ok(t) => {
                    self.metrics.rpc("EndTask", tonic::Code::Ok);
                    return Ok(Response::new(EndTaskResponse {
                        task: Some(task_to_proto(t, &td)),
                    }));
                }
                Err(e @ TaskError::NotFound(_)) => last = task_status(e),
                Err(e) => return Err(task_status(e)),
            }
        }
        self.metrics.rpc("EndTask", last.code());
        Err(last)
    }

    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let (_, _, clients, _) = self.clients("ListTasks", &req).await?;
        let include_ended = req.into_inner().include_ended;
        let td = clients[0].trust_domain.as_str().to_owned();
        let mut tasks = Vec::new();
        for client in &clients {
            let filter = TaskFilter {
                client: Some(client.name.as_str().to_owned()),
                include_ended,
            };
            let found = self
                .manager
                .store()
                .list_tasks(&filter)
                .await
                .map_err(|e| task_status(TaskError::Store(e)))?;
            tasks.extend(found.into_iter().map(|t| task_to_proto(t, &td)));
        }
        Ok(Response::new(ListTasksResponse { tasks }))
    }
}
