use std::sync::{Arc, Mutex};

use tessera_proto::tessera::v1::admin_server::{self, AdminServer};
use tonic::{Request, Response, Status};

use super::pb;

/// Page size the mock uses when the request says 0, small to exercise paging.
pub const DEFAULT_PAGE: usize = 2;

/// What the mock agent holds.
#[derive(Debug, Default)]
pub struct State {
    /// Registration entries.
    pub entries: Vec<pb::Entry>,
    /// Audit records, in order.
    pub audit: Vec<pb::AuditRecord>,
    /// Consent records, in order of grant.
    pub consents: Vec<pb::Consent>,
    /// Tasks of every client.
    pub tasks: Vec<pb::Task>,
    /// When set, every call fails with PermissionDenied.
    pub deny: bool,
}

/// A mock agent; clone it to keep a handle on its state.
#[derive(Debug, Clone, Default)]
pub struct Mock(pub Arc<Mutex<State>>);

impl Mock {
    fn check(&self) -> Result<std::sync::MutexGuard<'_, State>, Status> {
        let state = self.0.lock().unwrap();
        if state.deny {
            return Err(Status::permission_denied("uid not allowed"));
        }
        Ok(state)
    }

    /// Appends an audit record with the next sequence number.
    pub fn audit(&self, kind: &str) {
        let mut state = self.0.lock().unwrap();
        let seq = state.audit.len() as i64 + 1;
        state.audit.push(pb::AuditRecord {
            seq,
            at_unix_ms: seq * 1_000,
            kind: kind.into(),
            actor: "uid:0".into(),
            detail_json: "{}".into(),
        });
    }
}

#[tonic::async_trait]
impl admin_server::Admin for Mock {
    async fn create_entry(
        &self,
        request: Request<pb::CreateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let mut state = self.check()?;
        let req = request.into_inner();
        let entry = pb::Entry {
            id: format!("01MOCK{:020}", state.entries.len()),
            spiffe_id: format!("spiffe://example.org/client/{}", req.client),
            client: req.client,
            selectors: req.selectors,
            svid_ttl_secs: req.svid_ttl_secs,
            created_at_unix: 0,
            server: req.server,
        };
        state.entries.push(entry.clone());
        Ok(Response::new(entry))
    }

    async fn list_entries(
        &self,
        _: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let entries = self.check()?.entries.clone();
        Ok(Response::new(pb::ListEntriesResponse { entries }))
    }

    async fn get_entry(
        &self,
        request: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let id = request.into_inner().id;
        self.check()?
            .entries
            .iter()
            .find(|e| e.id == id)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found("no such entry"))
    }

    async fn delete_entry(
        &self,
        request: Request<pb::DeleteEntryRequest>,
    ) -> Result<Response<pb::DeleteEntryResponse>, Status> {
        let id = request.into_inner().id;
        let mut state = self.check()?;
        let before = state.entries.len();
        state.entries.retain(|e| e.id != id);
        let deleted = state.entries.len() != before;
        Ok(Response::new(pb::DeleteEntryResponse {
            deleted,
            ended_tasks: Vec::new(),
        }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let req = request.into_inner();
        let limit = if req.limit == 0 {
            DEFAULT_PAGE
        } else {
            req.limit as usize
        };
        let records = self
            .check()?
            .audit
            .iter()
            .filter(|r| r.seq > req.after_seq)
            .take(limit)
            .cloned()
            .collect();
        Ok(Response::new(pb::ListAuditResponse { records }))
    }

    async fn grant_consent(
        &self,
        request: Request<pb::GrantConsentRequest>,
    ) -> Result<Response<pb::Consent>, Status> {
        let mut state = self.check()?;
        let req = request.into_inner();
        if req.scopes.is_empty() {
            return Err(Status::invalid_argument(
                "a consent needs at least one scope",
            ));
        }
        let now = crate::output::now_unix();
        let expires_at_unix = if req.expires_at_unix != 0 {
            req.expires_at_unix
        } else {
            now + i64::from(req.ttl_secs)
        };
        let consent = pb::Consent {
            id: format!("01CONSENT{:017}", state.consents.len()),
            client: req.client,
            subject: req.subject,
            server: req.server,
            scopes: req.scopes,
            expires_at_unix,
            granted_by: "uid:0".into(),
            granted_at_unix: now,
            withdrawn_at_unix: 0,
        };
        state.consents.push(consent.clone());
        Ok(Response::new(consent))
    }

    async fn list_consents(
        &self,
        request: Request<pb::ListConsentsRequest>,
    ) -> Result<Response<pb::ListConsentsResponse>, Status> {
        let req = request.into_inner();
        let consents = self
            .check()?
            .consents
            .iter()
            .filter(|c| req.client.is_empty() || c.client == req.client)
            .filter(|c| req.include_withdrawn || c.withdrawn_at_unix == 0)
            .cloned()
            .collect();
        Ok(Response::new(pb::ListConsentsResponse { consents }))
    }

    async fn get_consent(
        &self,
        request: Request<pb::GetConsentRequest>,
    ) -> Result<Response<pb::Consent>, Status> {
        let id = request.into_inner().id;
        self.check()?
            .consents
            .iter()
            .find(|c| c.id == id)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found("no such consent"))
    }

    async fn withdraw_consent(
        &self,
        request: Request<pb::WithdrawConsentRequest>,
    ) -> Result<Response<pb::WithdrawConsentResponse>, Status> {
        let id = request.into_inner().id;
        let mut state = self.check()?;
        let now = crate::output::now_unix();
        let consent = state
            .consents
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or_else(|| Status::not_found("no such consent"))?;
        if consent.withdrawn_at_unix == 0 {
            consent.withdrawn_at_unix = now;
        }
        let consent = consent.clone();
        let mut ended_tasks = Vec::new();
        for task in &mut state.tasks {
            if task.consent_id == id && task.ended_at_unix == 0 {
                task.ended_at_unix = now;
                task.end_reason = "consent_withdrawn".into();
                ended_tasks.push(task.id.clone());
            }
        }
        Ok(Response::new(pb::WithdrawConsentResponse {
            consent: Some(consent),
            ended_tasks,
        }))
    }

    async fn list_all_tasks(
        &self,
        request: Request<pb::ListAllTasksRequest>,
    ) -> Result<Response<pb::ListAllTasksResponse>, Status> {
        let req = request.into_inner();
        let tasks = self
            .check()?
            .tasks
            .iter()
            .filter(|t| req.client.is_empty() || t.client == req.client)
            .filter(|t| req.include_ended || t.ended_at_unix == 0)
            .cloned()
            .collect();
        Ok(Response::new(pb::ListAllTasksResponse { tasks }))
    }

    async fn revoke_task(
        &self,
        request: Request<pb::RevokeTaskRequest>,
    ) -> Result<Response<pb::RevokeTaskResponse>, Status> {
        let id = request.into_inner().task_id;
        let mut state = self.check()?;
        let task = state
            .tasks
            .iter_mut()
            .find(|t| t.id == id)
            .ok_or_else(|| Status::not_found("no such task"))?;
        if task.ended_at_unix == 0 {
            task.ended_at_unix = crate::output::now_unix();
            task.end_reason = "revoked".into();
        }
        Ok(Response::new(pb::RevokeTaskResponse {
            task: Some(task.clone()),
        }))
    }

    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::Status>, Status> {
        let entries = self.check()?.entries.len() as u32;
        Ok(Response::new(pb::Status {
            trust_domain: "example.org".into(),
            version: "test".into(),
            bundle: Vec::new(),
            entries,
            ..Default::default()
        }))
    }
}

/// Serves `mock` on a socket in a fresh temporary directory; keep the directory alive.
pub async fn serve(mock: Mock) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdminServer::new(mock))
            .serve_with_incoming(incoming),
    );
    (dir, path)
}
