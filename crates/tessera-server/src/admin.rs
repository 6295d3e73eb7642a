//! `tessera.v1.Admin` on the server's admin socket: entries, consents and audit, for the
//! whole cluster, with the same messages, checks and answers as the agent's, so the
//! `tessera` CLI drives either.
//!
//! Reads (entries, consents) come from the replica's memory, so they answer while
//! PostgreSQL is down; writes go to PostgreSQL (UNAVAILABLE while it is down) and answer
//! once this replica's memory holds them, so the next read on this socket sees them.
//! Tasks are the ones the nodes reported (`task.rs`): `ListAllTasks` reads them from
//! PostgreSQL; `RevokeTask` and `WithdrawConsent` revoke them on the cluster's feed at
//! once, whether or not the task's node is reachable (it ends the task when it hears).

use std::sync::Arc;
use std::time::Duration;

use tessera_agent::attest::Selector;
use tessera_identity::{ClientName, Scope, ServerName, TrustDomain};
use tessera_proto::tessera::v1 as pb;
use tessera_proto::tessera::v1::admin_server::Admin;
use tessera_store::{ConsentFilter, EntryKind, NewConsent, NewEntry};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::wire::{consent_to_proto, entry_to_proto, store_status, task_to_proto};
use crate::{Replica, Written};

/// Most audit records returned in one page when the caller names no limit.
const AUDIT_PAGE_DEFAULT: u32 = 100;

/// Longest consent a grant may ask for, as on the agent.
const MAX_CONSENT_SECS: i64 = 366 * 24 * 3600;

/// How long a write waits for this replica's memory to hold it before answering anyway
/// (the change is committed either way; only read-your-writes on this socket is late).
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// Most tasks `ListAllTasks` returns.
const MAX_LIST_TASKS: u32 = 10_000;

/// The `tessera.v1.Admin` service of a server replica.
#[derive(Clone, Debug)]
pub(crate) struct AdminService {
    replica: Arc<Replica>,
    trust_domain: TrustDomain,
    allowed_uids: Arc<Vec<u32>>,
    metrics: Arc<Metrics>,
}

impl AdminService {
    /// A service for callers whose uid is root, the server's own, or in `admin_uids`.
    pub(crate) fn new(
        replica: Arc<Replica>,
        trust_domain: TrustDomain,
        admin_uids: &[u32],
        metrics: Arc<Metrics>,
    ) -> AdminService {
        let mut allowed = vec![0, nix::unistd::geteuid().as_raw()];
        allowed.extend_from_slice(admin_uids);
        allowed.sort_unstable();
        allowed.dedup();
        AdminService {
            replica,
            trust_domain,
            allowed_uids: Arc::new(allowed),
            metrics,
        }
    }

    /// The replica this service reads and writes through.
    pub(crate) fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    /// The socket is 0600 already; the uid check holds even if someone loosens it. The
    /// uid is the kernel's (SO_PEERCRED at connect), not anything the caller sent.
    pub(crate) fn authorize<T>(
        &self,
        rpc: &'static str,
        req: &Request<T>,
    ) -> Result<String, Status> {
        // Over TLS: the admin SVID check's verdict (`admin_tls`).
        if let Some(crate::admin_tls::TlsAdminCaller(verdict)) = req.extensions().get() {
            self.metrics.admin_call(rpc, verdict.is_ok());
            return verdict.clone();
        }
        let uid = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map(|cred| cred.uid());
        let result = match uid {
            Some(uid) if self.allowed_uids.contains(&uid) => Ok(format!("uid:{uid}")),
            Some(uid) => {
                tracing::warn!(uid, rpc, "admin call refused");
                Err(Status::permission_denied(format!(
                    "uid {uid} may not use the admin API"
                )))
            }
            None => Err(Status::permission_denied(
                "the caller's credentials are unknown",
            )),
        };
        self.metrics.admin_call(rpc, result.is_ok());
        result
    }

    /// Waits (bounded) until this replica's memory holds `written`, and returns it.
    pub(crate) async fn applied<T>(&self, written: Written<T>) -> T {
        if tokio::time::timeout(APPLY_WAIT, self.replica.wait_for_version(written.version))
            .await
            .is_err()
        {
            tracing::warn!(
                version = written.version,
                "change not yet in this replica's memory after 5 s"
            );
        }
        written.value
    }

    /// Waits (bounded) until this replica's revocation copy holds feed version `version`.
    pub(crate) async fn published(&self, version: i64) {
        let feed = self.replica.revocations();
        if tokio::time::timeout(APPLY_WAIT, feed.wait_for_version(version))
            .await
            .is_err()
        {
            tracing::warn!(
                version,
                "revocation not yet in this replica's feed after 5 s"
            );
        }
    }

    fn entry_to_proto(&self, e: tessera_store::Entry) -> pb::Entry {
        entry_to_proto(&self.trust_domain, e)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_entry(
        &self,
        req: Request<pb::CreateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let actor = self.authorize("CreateEntry", &req)?;
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
        // The agents' grammar: what every agent that syncs this entry will accept.
        let selectors = r
            .selectors
            .iter()
            .map(|s| s.parse::<Selector>().map(|s| s.to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let written = self
            .replica
            .store()
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
        Ok(Response::new(
            self.entry_to_proto(self.applied(written).await),
        ))
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        self.authorize("ListEntries", &req)?;
        let state = self.replica.state();
        let mut entries: Vec<_> = state.entries.values().cloned().collect();
        entries.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(Response::new(pb::ListEntriesResponse {
            entries: entries
                .into_iter()
                .map(|e| self.entry_to_proto(e))
                .collect(),
        }))
    }

    async fn get_entry(
        &self,
        req: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        self.authorize("GetEntry", &req)?;
        let id = req.into_inner().id;
        match self.replica.state().entries.get(&id) {
            Some(e) => Ok(Response::new(self.entry_to_proto(e.clone()))),
            None => Err(Status::not_found(format!("no entry with id {id}"))),
        }
    }

    async fn delete_entry(
        &self,
        req: Request<pb::DeleteEntryRequest>,
    ) -> Result<Response<pb::DeleteEntryResponse>, Status> {
        let actor = self.authorize("DeleteEntry", &req)?;
        let id = req.into_inner().id;
        let written = self
            .replica
            .store()
            .delete_entry(&id, &actor)
            .await
            .map_err(store_status)?;
        self.applied(written).await;
        // Each agent ends the client's tasks when the deletion reaches it.
        Ok(Response::new(pb::DeleteEntryResponse {
            deleted: true,
            ended_tasks: Vec::new(),
        }))
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.authorize("ListAudit", &req)?;
        let r = req.into_inner();
        let limit = if r.limit == 0 {
            AUDIT_PAGE_DEFAULT
        } else {
            r.limit
        };
        let records = self
            .replica
            .store()
            .list_audit(r.after_seq, limit)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ListAuditResponse {
            records: records
                .into_iter()
                .map(|a| pb::AuditRecord {
                    seq: a.seq,
                    at_unix_ms: a.at_unix_ms,
                    kind: a.kind,
                    actor: a.actor,
                    detail_json: a.detail.to_string(),
                })
                .collect(),
        }))
    }

    async fn get_status(
        &self,
        req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::Status>, Status> {
        self.authorize("GetStatus", &req)?;
        let entries = self.replica.state().entries.len();
        Ok(Response::new(pb::Status {
            trust_domain: self.trust_domain.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            // The server's CA is the node CA issue's; until then there is no bundle.
            bundle: Vec::new(),
            entries: u32::try_from(entries).unwrap_or(u32::MAX),
            // A node agent's journal; the server has none.
            task_events_journaled: 0,
            task_events_rejected: 0,
        }))
    }

    async fn grant_consent(
        &self,
        req: Request<pb::GrantConsentRequest>,
    ) -> Result<Response<pb::Consent>, Status> {
        let actor = self.authorize("GrantConsent", &req)?;
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
        let now = crate::clock::unix_secs();
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
        let written = self
            .replica
            .store()
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
        Ok(Response::new(consent_to_proto(self.applied(written).await)))
    }

    async fn list_consents(
        &self,
        req: Request<pb::ListConsentsRequest>,
    ) -> Result<Response<pb::ListConsentsResponse>, Status> {
        self.authorize("ListConsents", &req)?;
        let r = req.into_inner();
        let filter = ConsentFilter {
            client: (!r.client.is_empty()).then_some(r.client),
            include_withdrawn: r.include_withdrawn,
        };
        let state = self.replica.state();
        let mut consents: Vec<_> = state
            .consents
            .values()
            .filter(|c| {
                filter
                    .client
                    .as_ref()
                    .is_none_or(|client| &c.client == client)
            })
            .filter(|c| filter.include_withdrawn || c.withdrawn_at.is_none())
            .cloned()
            .collect();
        consents.sort_by(|a, b| (a.granted_at, &a.id).cmp(&(b.granted_at, &b.id)));
        Ok(Response::new(pb::ListConsentsResponse {
            consents: consents.into_iter().map(consent_to_proto).collect(),
        }))
    }

    async fn get_consent(
        &self,
        req: Request<pb::GetConsentRequest>,
    ) -> Result<Response<pb::Consent>, Status> {
        self.authorize("GetConsent", &req)?;
        let id = req.into_inner().id;
        match self.replica.state().consents.get(&id) {
            Some(c) => Ok(Response::new(consent_to_proto(c.clone()))),
            None => Err(Status::not_found(format!("no consent with id {id}"))),
        }
    }

    async fn withdraw_consent(
        &self,
        req: Request<pb::WithdrawConsentRequest>,
    ) -> Result<Response<pb::WithdrawConsentResponse>, Status> {
        let actor = self.authorize("WithdrawConsent", &req)?;
        let id = req.into_inner().id;
        let written = self
            .replica
            .store()
            .withdraw_consent(&id, &actor)
            .await
            .map_err(store_status)?;
        // The tasks the nodes reported under it are revoked on the feed now; each agent
        // also ends the tasks relying on it when the withdrawal reaches it.
        let withdrawal = self.applied(written).await;
        if let Some(version) = withdrawal.revocation_version {
            self.metrics
                .revocations_published(withdrawal.ended_tasks.len());
            self.published(version).await;
        }
        Ok(Response::new(pb::WithdrawConsentResponse {
            consent: Some(consent_to_proto(withdrawal.consent)),
            ended_tasks: withdrawal.ended_tasks,
        }))
    }

    async fn list_all_tasks(
        &self,
        req: Request<pb::ListAllTasksRequest>,
    ) -> Result<Response<pb::ListAllTasksResponse>, Status> {
        self.authorize("ListAllTasks", &req)?;
        let r = req.into_inner();
        let tasks = self
            .replica
            .store()
            .list_tasks(
                (!r.client.is_empty()).then_some(r.client.as_str()),
                r.include_ended,
                MAX_LIST_TASKS,
            )
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ListAllTasksResponse {
            tasks: tasks.into_iter().map(task_to_proto).collect(),
        }))
    }

    async fn revoke_task(
        &self,
        req: Request<pb::RevokeTaskRequest>,
    ) -> Result<Response<pb::RevokeTaskResponse>, Status> {
        let actor = self.authorize("RevokeTask", &req)?;
        let id = req.into_inner().task_id;
        if id.is_empty() || id.len() > tessera_store::MAX_TASK_ID_LEN {
            return Err(Status::invalid_argument(format!(
                "task_id must be 1..={} bytes",
                tessera_store::MAX_TASK_ID_LEN
            )));
        }
        let written = self
            .replica
            .store()
            .revoke_task(&id, &actor)
            .await
            .map_err(store_status)?;
        if written.version > 0 {
            self.metrics.revocations_published(1);
            self.published(written.version).await;
        }
        Ok(Response::new(pb::RevokeTaskResponse {
            task: Some(task_to_proto(written.value)),
        }))
    }
}
