//! The Admin API on the admin socket: registration entries, audit, status.

use std::sync::Arc;

use tessera_authority::Authority;
use tessera_identity::{ClientId, ClientName};
use tessera_identity::{Scope, ServerId, ServerName};
use tessera_proto::tessera::v1::admin_server::Admin;
use tessera_proto::tessera::v1::{
    AuditRecord, Consent, CreateEntryRequest, DeleteEntryRequest, DeleteEntryResponse, Entry,
    GetConsentRequest, GetEntryRequest, GetStatusRequest, GrantConsentRequest, ListAllTasksRequest,
    ListAllTasksResponse, ListAuditRequest, ListAuditResponse, ListConsentsRequest,
    ListConsentsResponse, ListEntriesRequest, ListEntriesResponse, RevokeTaskRequest,
    RevokeTaskResponse, Status as AgentStatus, WithdrawConsentRequest, WithdrawConsentResponse,
};
use tessera_store::{ConsentFilter, EntryKind, NewConsent, NewEntry, Store, TaskFilter};

use crate::tasks::{EndReason, TaskManager, task_to_proto};
use tonic::{Request, Response, Status};

use crate::attest::Selector;
use crate::caller::peer_of;
use crate::status::store_status;

/// The `tessera.v1.Admin` service.
#[derive(Clone, Debug)]
pub(crate) struct AdminService {
    store: Store,
    cache: Arc<crate::svids::SvidCache>,
    tasks: Arc<TaskManager>,
    authority: Arc<Authority>,
    allowed_uids: Arc<Vec<u32>>,
    /// Cluster mode: the server that owns entries and consents (its address).
    managed_by: Option<String>,
}

/// Most audit records returned in one page.
const AUDIT_PAGE_DEFAULT: u32 = 100;

impl AdminService {
    /// A service for callers whose uid is root, the agent's own, or in `admin_uids`.
    pub(crate) fn new(
        store: Store,
        cache: Arc<crate::svids::SvidCache>,
        tasks: Arc<TaskManager>,
        authority: Arc<Authority>,
        admin_uids: &[u32],
    ) -> Self {
        let mut allowed = vec![0, nix::unistd::geteuid().as_raw()];
        allowed.extend_from_slice(admin_uids);
        allowed.sort_unstable();
        allowed.dedup();
        AdminService {
            store,
            cache,
            tasks,
            authority,
            allowed_uids: Arc::new(allowed),
            managed_by: None,
        }
    }

    /// Cluster mode: entries and consents are the server's at `address`, and this
    /// agent's copy follows it; writing them here is refused (reads still answer).
    pub(crate) fn managed_by_server(mut self, address: String) -> Self {
        self.managed_by = Some(address);
        self
    }

    /// Refuses a registration write in cluster mode, naming where to make it.
    fn refuse_in_cluster(&self, rpc: &str) -> Result<(), Status> {
        match &self.managed_by {
            None => Ok(()),
            Some(server) => Err(Status::failed_precondition(format!(
                "{rpc}: this agent is in cluster mode; entries and consents are managed at \
                 the tessera-server ({server}) and reach every agent from there"
            ))),
        }
    }

    /// Entry changes answer only once the Workload API serves them: a created entry
    /// grants, and a deleted one stops granting, from the very next call.
    async fn await_entries_applied(&self) {
        if !self
            .cache
            .wait_applied(std::time::Duration::from_secs(5))
            .await
        {
            tracing::warn!("entry change not yet applied to the SVID cache after 5 s");
        }
    }

    /// Deletes an entry; for a client entry, then ends every live task of that client,
    /// once the Workload API no longer serves the entry (so a BeginTask re-checking its
    /// caller under the registration gate sees it gone). Every task of the client ends,
    /// not only those of callers this entry matched: the identity is what the tasks'
    /// SVIDs name, and deleting an entry is how a compromised runtime is cut off.
    async fn run_delete_entry(&self, id: &str, actor: &str) -> Result<Vec<String>, Status> {
        // Entries never change once created, so what this reads is what is deleted.
        let Some(entry) = self.store.get_entry(id).await.map_err(store_status)? else {
            return Err(Status::not_found(format!("no entry with id {id}")));
        };
        if !self
            .store
            .delete_entry(id, actor)
            .await
            .map_err(store_status)?
        {
            // Deleted meanwhile by another call, which ends the tasks.
            return Err(Status::not_found(format!("no entry with id {id}")));
        }
        tracing::info!(entry = %id, client = %entry.client, kind = entry.kind.as_str(), %actor, "entry deleted");
        self.await_entries_applied().await;
        match entry.kind {
            EntryKind::Client => self
                .tasks
                .end_client_tasks(&entry.client, EndReason::EntryDeleted, actor)
                .await
                .map_err(Status::from),
            // Tasks name their client, not the servers they call.
            EntryKind::Server => Ok(Vec::new()),
        }
    }

    /// The socket is 0600 already; the uid check holds even if someone loosens it.
    fn authorize<T>(&self, rpc: &'static str, req: &Request<T>) -> Result<String, Status> {
        let peer = peer_of(req)?;
        if !self.allowed_uids.contains(&peer.uid) {
            tracing::warn!(uid = peer.uid, pid = ?peer.pid, rpc, "admin call refused");
            return Err(Status::permission_denied(format!(
                "uid {} may not use the admin API",
                peer.uid
            )));
        }
        Ok(format!("uid:{}", peer.uid))
    }

    fn to_proto(&self, e: tessera_store::Entry) -> Entry {
        let td = self.authority.trust_domain().clone();
        let (spiffe_id, client, server) = match e.kind {
            EntryKind::Client => (
                e.client
                    .parse::<ClientName>()
                    .map(|name| ClientId::new(td, name).to_string())
                    .unwrap_or_default(),
                e.client,
                String::new(),
            ),
            EntryKind::Server => (
                e.client
                    .parse::<ServerName>()
                    .map(|name| ServerId::new(td, name).to_string())
                    .unwrap_or_default(),
                String::new(),
                e.client,
            ),
        };
        Entry {
            id: e.id,
            client,
            selectors: e.selectors,
            svid_ttl_secs: e.svid_ttl_secs.unwrap_or(0),
            created_at_unix: e.created_at,
            spiffe_id,
            server,
        }
    }
}

fn consent_to_proto(c: tessera_store::Consent) -> Consent {
    Consent {
        id: c.id,
        client: c.client,
        subject: c.subject,
        server: c.server,
        scopes: c.scopes,
        expires_at_unix: c.expires_at,
        granted_by: c.granted_by,
        granted_at_unix: c.granted_at,
        withdrawn_at_unix: c.withdrawn_at.unwrap_or(0),
    }
}

/// Longest consent a grant may ask for; renewals are cheap, blanket grants are not.
const MAX_CONSENT_SECS: i64 = 366 * 24 * 3600;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_entry(
        &self,
        req: Request<CreateEntryRequest>,
    ) -> Result<Response<Entry>, Status> {
        let actor = self.authorize("CreateEntry", &req)?;
        self.refuse_in_cluster("CreateEntry")?;
        let r = req.into_inner();
        let (kind, name) = match (r.client.is_empty(), r.server.is_empty()) {
            (false, true) => {
                r.client
                    .parse::<ClientName>()
                    .map_err(|e| Status::invalid_argument(format!("client {:?}: {e}", r.client)))?;
                (EntryKind::Client, r.client)
            }
            (true, false) => {
                r.server
                    .parse::<ServerName>()
                    .map_err(|e| Status::invalid_argument(format!("server {:?}: {e}", r.server)))?;
                (EntryKind::Server, r.server)
            }
            _ => {
                return Err(Status::invalid_argument(
                    "set exactly one of `client` (an agent runtime) and `server` (an MCP server)",
                ));
            }
        };
        if r.selectors.is_empty() {
            return Err(Status::invalid_argument(
                "an entry needs at least one selector (an entry without selectors would match every process)",
            ));
        }
        let selectors = r
            .selectors
            .iter()
            .map(|s| s.parse::<Selector>().map(|s| s.to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Status::from)?;
        let entry = self
            .store
            .create_entry(
                NewEntry {
                    kind,
                    client: name,
                    selectors,
                    svid_ttl_secs: (r.svid_ttl_secs > 0).then_some(r.svid_ttl_secs),
                },
                &actor,
            )
            .await
            .map_err(store_status)?;
        tracing::info!(entry = %entry.id, client = %entry.client, selectors = ?entry.selectors, %actor, "entry created");
        self.await_entries_applied().await;
        Ok(Response::new(self.to_proto(entry)))
    }

    async fn list_entries(
        &self,
        req: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        self.authorize("ListEntries", &req)?;
        let entries = self.store.list_entries().await.map_err(store_status)?;
        Ok(Response::new(ListEntriesResponse {
            entries: entries.into_iter().map(|e| self.to_proto(e)).collect(),
        }))
    }

    async fn get_entry(&self, req: Request<GetEntryRequest>) -> Result<Response<Entry>, Status> {
        self.authorize("GetEntry", &req)?;
        let id = req.into_inner().id;
        match self.store.get_entry(&id).await.map_err(store_status)? {
            Some(e) => Ok(Response::new(self.to_proto(e))),
            None => Err(Status::not_found(format!("no entry with id {id}"))),
        }
    }

    async fn delete_entry(
        &self,
        req: Request<DeleteEntryRequest>,
    ) -> Result<Response<DeleteEntryResponse>, Status> {
        let actor = self.authorize("DeleteEntry", &req)?;
        self.refuse_in_cluster("DeleteEntry")?;
        let id = req.into_inner().id;
        let this = self.clone();
        // On a task of its own: once the entry is gone from the store, its client's
        // tasks must end too, even if the caller stops waiting.
        let ended = tokio::spawn(async move { this.run_delete_entry(&id, &actor).await })
            .await
            .map_err(|_| Status::unavailable("the agent is shutting down"))??;
        Ok(Response::new(DeleteEntryResponse {
            deleted: true,
            ended_tasks: ended,
        }))
    }

    async fn list_audit(
        &self,
        req: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        self.authorize("ListAudit", &req)?;
        let r = req.into_inner();
        let limit = if r.limit == 0 {
            AUDIT_PAGE_DEFAULT
        } else {
            r.limit
        };
        let records = self
            .store
            .list_audit(r.after_seq, limit)
            .await
            .map_err(store_status)?;
        Ok(Response::new(ListAuditResponse {
            records: records
                .into_iter()
                .map(|a| AuditRecord {
                    seq: a.seq,
                    at_unix_ms: a.at_unix_ms,
                    kind: a.kind,
                    actor: a.actor,
                    detail_json: a.detail.to_string(),
                })
                .collect(),
        }))
    }

    async fn grant_consent(
        &self,
        req: Request<GrantConsentRequest>,
    ) -> Result<Response<Consent>, Status> {
        let actor = self.authorize("GrantConsent", &req)?;
        self.refuse_in_cluster("GrantConsent")?;
        let r = req.into_inner();
        r.client
            .parse::<ClientName>()
            .map_err(|e| Status::invalid_argument(format!("client {:?}: {e}", r.client)))?;
        let server: ServerName = r
            .server
            .parse()
            .map_err(|e| Status::invalid_argument(format!("server {:?}: {e}", r.server)))?;
        if r.subject.is_empty() {
            return Err(Status::invalid_argument("subject is required"));
        }
        if r.scopes.is_empty() {
            return Err(Status::invalid_argument(
                "a consent grants at least one scope",
            ));
        }
        let mut scopes = Vec::with_capacity(r.scopes.len());
        for s in &r.scopes {
            let scope: Scope = s
                .parse()
                .map_err(|e| Status::invalid_argument(format!("scope {s:?}: {e}")))?;
            if scope.server() != &server {
                return Err(Status::invalid_argument(format!(
                    "scope {s:?} names server {:?}, but the consent is for {:?}",
                    scope.server().as_str(),
                    server.as_str()
                )));
            }
            scopes.push(scope.to_string());
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let expires_at = match (r.expires_at_unix, r.ttl_secs) {
            (0, 0) => return Err(Status::invalid_argument("set expires_at_unix or ttl_secs")),
            (0, ttl) => now + i64::from(ttl),
            (at, 0) => at,
            _ => {
                return Err(Status::invalid_argument(
                    "set only one of expires_at_unix and ttl_secs",
                ));
            }
        };
        if expires_at <= now || expires_at - now > MAX_CONSENT_SECS {
            return Err(Status::invalid_argument(
                "expiry must be in the future and at most 366 days away",
            ));
        }
        let consent = self
            .store
            .grant_consent(
                NewConsent {
                    client: r.client,
                    subject: r.subject,
                    server: server.as_str().to_owned(),
                    scopes,
                    expires_at,
                },
                &actor,
            )
            .await
            .map_err(store_status)?;
        tracing::info!(consent = %consent.id, client = %consent.client, subject = consent.subject.as_str(), server = %consent.server, scopes = ?consent.scopes, expires_at, %actor, "consent granted");
        Ok(Response::new(consent_to_proto(consent)))
    }

    async fn list_consents(
        &self,
        req: Request<ListConsentsRequest>,
    ) -> Result<Response<ListConsentsResponse>, Status> {
        self.authorize("ListConsents", &req)?;
        let r = req.into_inner();
        let filter = ConsentFilter {
            client: (!r.client.is_empty()).then_some(r.client),
            include_withdrawn: r.include_withdrawn,
        };
        let consents = self
            .store
            .list_consents(&filter)
            .await
            .map_err(store_status)?;
        Ok(Response::new(ListConsentsResponse {
            consents: consents.into_iter().map(consent_to_proto).collect(),
        }))
    }

    async fn get_consent(
        &self,
        req: Request<GetConsentRequest>,
    ) -> Result<Response<Consent>, Status> {
        self.authorize("GetConsent", &req)?;
        let id = req.into_inner().id;
        match self.store.get_consent(&id).await.map_err(store_status)? {
            Some(c) => Ok(Response::new(consent_to_proto(c))),
            None => Err(Status::not_found(format!("no consent with id {id}"))),
        }
    }

    async fn withdraw_consent(
        &self,
        req: Request<WithdrawConsentRequest>,
    ) -> Result<Response<WithdrawConsentResponse>, Status> {
        let actor = self.authorize("WithdrawConsent", &req)?;
        self.refuse_in_cluster("WithdrawConsent")?;
        let id = req.into_inner().id;
        match self
            .tasks
            .withdraw_consent(&id, &actor)
            .await
            .map_err(Status::from)?
        {
            Some((consent, ended_tasks)) => Ok(Response::new(WithdrawConsentResponse {
                consent: Some(consent_to_proto(consent)),
                ended_tasks,
            })),
            None => Err(Status::not_found(format!("no consent with id {id}"))),
        }
    }

    async fn list_all_tasks(
        &self,
        req: Request<ListAllTasksRequest>,
    ) -> Result<Response<ListAllTasksResponse>, Status> {
        self.authorize("ListAllTasks", &req)?;
        let r = req.into_inner();
        let client = match r.client.as_str() {
            "" => None,
            // No task has a client that is not a valid name: none to list.
            name => match name.parse() {
                Ok(client) => Some(client),
                Err(_) => return Ok(Response::new(ListAllTasksResponse { tasks: Vec::new() })),
            },
        };
        let filter = TaskFilter {
            client,
            include_ended: r.include_ended,
        };
        let td = self.authority.trust_domain();
        let tasks = self.store.list_tasks(&filter).await.map_err(store_status)?;
        Ok(Response::new(ListAllTasksResponse {
            tasks: tasks.into_iter().map(|t| task_to_proto(t, td)).collect(),
        }))
    }

    async fn revoke_task(
        &self,
        req: Request<RevokeTaskRequest>,
    ) -> Result<Response<RevokeTaskResponse>, Status> {
        let actor = self.authorize("RevokeTask", &req)?;
        let id = req.into_inner().task_id;
        let task = self
            .tasks
            .end(&id, EndReason::Revoked, &actor, None)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(RevokeTaskResponse {
            task: Some(task_to_proto(task, self.authority.trust_domain())),
        }))
    }

    async fn get_status(
        &self,
        req: Request<GetStatusRequest>,
    ) -> Result<Response<AgentStatus>, Status> {
        self.authorize("GetStatus", &req)?;
        let entries = self.store.list_entries().await.map_err(store_status)?.len();
        let task_events_journaled = self.store.journal_depth().await.map_err(store_status)?;
        let task_events_rejected = self
            .store
            .rejected_task_event_count()
            .await
            .map_err(store_status)?;
        Ok(Response::new(AgentStatus {
            trust_domain: self.authority.trust_domain().as_str().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            bundle: self.authority.bundle().concat_der(),
            entries: u32::try_from(entries).unwrap_or(u32::MAX),
            task_events_journaled,
            task_events_rejected,
        }))
    }
}
