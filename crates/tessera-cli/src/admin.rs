//! The connection to tessera-agent's Admin API over its unix socket, and the translation
//! of transport and gRPC failures into sentences that tell the operator what to do.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use tessera_proto::tessera::v1 as pb;
use tessera_proto::tessera::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::transport::connect_unix;

/// A connected Admin API client that knows which socket it talks to, for error messages.
#[derive(Debug, Clone)]
pub struct Admin {
    client: AdminClient<Channel>,
    socket: PathBuf,
}

impl Admin {
    /// Connects to the Admin API on the unix socket at `socket`.
    pub async fn connect(socket: &Path) -> anyhow::Result<Self> {
        let channel = connect_unix(socket)
            .await
            .map_err(|err| connect_error(socket, &err))?;
        Ok(Self {
            client: AdminClient::new(channel),
            socket: socket.to_path_buf(),
        })
    }

    /// `CreateEntry`.
    pub async fn create_entry(&mut self, req: pb::CreateEntryRequest) -> anyhow::Result<pb::Entry> {
        self.client
            .create_entry(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_error(&s, &self.socket))
    }

    /// `ListEntries`.
    pub async fn list_entries(&mut self) -> anyhow::Result<Vec<pb::Entry>> {
        self.client
            .list_entries(pb::ListEntriesRequest {})
            .await
            .map(|r| r.into_inner().entries)
            .map_err(|s| status_error(&s, &self.socket))
    }

    /// `GetEntry`; `None` when the agent has no entry with that id.
    pub async fn get_entry(&mut self, id: &str) -> anyhow::Result<Option<pb::Entry>> {
        match self
            .client
            .get_entry(pb::GetEntryRequest { id: id.to_owned() })
            .await
        {
            Ok(resp) => Ok(Some(resp.into_inner())),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(status_error(&s, &self.socket)),
        }
    }

    /// `DeleteEntry`: the ids of the tasks it ended, or `None` when the agent had no
    /// entry with that id.
    pub async fn delete_entry(&mut self, id: &str) -> anyhow::Result<Option<Vec<String>>> {
        match self
            .client
            .delete_entry(pb::DeleteEntryRequest { id: id.to_owned() })
            .await
        {
            Ok(resp) => {
                let resp = resp.into_inner();
                Ok(resp.deleted.then_some(resp.ended_tasks))
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(status_error(&s, &self.socket)),
        }
    }

    /// `ListAudit`: up to `limit` records (0: the agent's page size) with `seq > after_seq`.
    pub async fn list_audit(
        &mut self,
        after_seq: i64,
        limit: u32,
    ) -> anyhow::Result<Vec<pb::AuditRecord>> {
        self.client
            .list_audit(pb::ListAuditRequest { after_seq, limit })
            .await
            .map(|r| r.into_inner().records)
            .map_err(|s| status_error(&s, &self.socket))
    }

    /// `GrantConsent`.
    pub async fn grant_consent(
        &mut self,
        req: pb::GrantConsentRequest,
    ) -> anyhow::Result<pb::Consent> {
        self.client
            .grant_consent(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_error(&s, &self.socket))
    }

    /// `ListConsents`: for one client (empty: every client), optionally with withdrawn ones.
    pub async fn list_consents(
        &mut self,
        client: String,
        include_withdrawn: bool,
    ) -> anyhow::Result<Vec<pb::Consent>> {
        self.client
            .list_consents(pb::ListConsentsRequest {
                client,
                include_withdrawn,
            })
            .await
            .map(|r| r.into_inner().consents)
            .map_err(|s| status_error(&s, &self.socket))
    }

    /// `GetConsent`; `None` when the agent has no consent with that id.
    pub async fn get_consent(&mut self, id: &str) -> anyhow::Result<Option<pb::Consent>> {
        match self
            .client
            .get_consent(pb::GetConsentRequest { id: id.to_owned() })
            .await
        {
            Ok(resp) => Ok(Some(resp.into_inner())),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(status_error(&s, &self.socket)),
        }
    }

    /// `WithdrawConsent`; `None` when the agent has no consent with that id.
    pub async fn withdraw_consent(
        &mut self,
        id: &str,
    ) -> anyhow::Result<Option<pb::WithdrawConsentResponse>> {
        match self
            .client
            .withdraw_consent(pb::WithdrawConsentRequest { id: id.to_owned() })
            .await
        {
            Ok(resp) => Ok(Some(resp.into_inner())),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(status_error(&s, &self.socket)),
        }
    }

    /// `ListAllTasks`: every client's tasks (or one client's), optionally with ended ones.
    pub async fn list_all_tasks(
        &mut self,
        client: String,
        include_ended: bool,
    ) -> anyhow::Result<Vec<pb::Task>> {
        self.client
            .list_all_tasks(pb::ListAllTasksRequest {
                client,
                include_ended,
            })
            .await
            .map(|r| r.into_inner().tasks)
            .map_err(|s| status_error(&s, &self.socket))
    }

    /// `RevokeTask`; `None` when the agent has no task with that id.
    pub async fn revoke_task(&mut self, task_id: &str) -> anyhow::Result<Option<pb::Task>> {
        match self
            .client
            .revoke_task(pb::RevokeTaskRequest {
                task_id: task_id.to_owned(),
            })
            .await
        {
            Ok(resp) => resp
                .into_inner()
                .task
                .map(Some)
                .ok_or_else(|| anyhow!("tessera-agent answered RevokeTask without the task")),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(status_error(&s, &self.socket)),
        }
    }

    /// `GetStatus`.
    pub async fn status(&mut self) -> anyhow::Result<pb::Status> {
        self.client
            .get_status(pb::GetStatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_error(&s, &self.socket))
    }
}

/// The effective uid of this process, as the agent sees it through `SO_PEERCRED`.
///
/// Read from the owner of `/proc/self` (the effective uid) because the workspace forbids
/// the `unsafe` a `geteuid()` call would need.
pub fn current_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

fn uid_text() -> String {
    current_uid().map_or_else(|| "(unknown)".to_owned(), |uid| uid.to_string())
}

/// The first `io::Error` in an error's source chain: what actually went wrong on the socket.
pub fn io_cause<'e>(err: &'e (dyn std::error::Error + 'static)) -> Option<&'e std::io::Error> {
    std::iter::successors(Some(err), |e| e.source()).find_map(|e| e.downcast_ref())
}

/// Explains a failure to connect to the admin socket.
fn connect_error(socket: &Path, err: &(dyn std::error::Error + 'static)) -> anyhow::Error {
    let io_kind = io_cause(err).map(std::io::Error::kind);
    let socket = socket.display();
    match io_kind {
        Some(std::io::ErrorKind::PermissionDenied) => anyhow!(
            "cannot open the admin socket {socket} as uid {}: run as the agent's user or root",
            uid_text()
        ),
        Some(std::io::ErrorKind::NotFound) => anyhow!(
            "cannot reach tessera-agent at {socket}: is it running? (no socket at that path; \
             set --admin-socket or TESSERA_ADMIN_SOCKET if it lives elsewhere)"
        ),
        _ => anyhow!("cannot reach tessera-agent at {socket}: is it running? ({err})"),
    }
}

/// Explains a gRPC status returned by (or on the way to) the agent.
pub fn status_error(status: &tonic::Status, socket: &Path) -> anyhow::Error {
    status_message(status.code(), status.message(), socket, current_uid())
}

/// The sentence for a gRPC status code; separate from [`status_error`] for tests.
fn status_message(
    code: tonic::Code,
    message: &str,
    socket: &Path,
    uid: Option<u32>,
) -> anyhow::Error {
    use tonic::Code;
    let socket = socket.display();
    let detail = if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    };
    match code {
        Code::PermissionDenied => {
            let uid = uid.map_or_else(|| "(unknown)".to_owned(), |u| u.to_string());
            anyhow!("the admin socket refused uid {uid}: run as the agent's user or root{detail}")
        }
        Code::Unavailable => {
            anyhow!("cannot reach tessera-agent at {socket}: is it running?{detail}")
        }
        Code::DeadlineExceeded => {
            anyhow!("tessera-agent at {socket} did not answer in time{detail}")
        }
        Code::InvalidArgument => anyhow!("tessera-agent rejected the request: {message}"),
        Code::AlreadyExists => anyhow!("already exists: {message}"),
        Code::NotFound => anyhow!("not found: {message}"),
        Code::Unimplemented => anyhow!(
            "tessera-agent at {socket} does not implement this call; are the CLI and agent the same version?{detail}"
        ),
        other => anyhow!("tessera-agent at {socket} failed: {other:?}{detail}"),
    }
}

/// An in-memory Admin API server on a unix socket, for tests of the commands.
#[cfg(test)]
pub mod testing {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_names_the_uid_and_the_fix() {
        let err = status_message(
            tonic::Code::PermissionDenied,
            "",
            Path::new("/run/tessera/admin.sock"),
            Some(1001),
        );
        assert_eq!(
            err.to_string(),
            "the admin socket refused uid 1001: run as the agent's user or root"
        );
    }

    #[test]
    fn unavailable_asks_whether_the_agent_runs() {
        let err = status_message(tonic::Code::Unavailable, "", Path::new("/tmp/a.sock"), None);
        assert_eq!(
            err.to_string(),
            "cannot reach tessera-agent at /tmp/a.sock: is it running?"
        );
    }

    #[tokio::test]
    async fn connecting_to_a_missing_socket_says_the_agent_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let err = Admin::connect(&socket).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot reach tessera-agent at {}: is it running?",
                socket.display()
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_refusing_agent_names_our_uid() {
        let mock = testing::Mock::default();
        mock.0.lock().unwrap().deny = true;
        let (_dir, socket) = testing::serve(mock).await;
        let mut admin = Admin::connect(&socket).await.unwrap();
        let err = admin.status().await.unwrap_err().to_string();
        let uid = current_uid().unwrap();
        assert!(
            err.starts_with(&format!(
                "the admin socket refused uid {uid}: run as the agent's user or root"
            )),
            "{err}"
        );
    }

    #[test]
    fn current_uid_is_known_on_linux() {
        assert!(current_uid().is_some());
    }
}
