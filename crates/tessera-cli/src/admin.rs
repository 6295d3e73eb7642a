//! The connection to tessera-agent's Admin API over its unix socket, and the translation
//! of transport and gRPC failures into sentences that tell the operator what to do.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use tessera_proto::tessera::v1 as pb;
use tessera_proto::tessera::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::remote::RemoteServer;
use crate::transport::connect_unix;

/// Where the Admin API is: an agent's or server's unix socket, or a server's TLS
/// listener reached with an admin SVID.
#[derive(Debug, Clone)]
pub enum AdminTarget {
    /// `--admin-socket`.
    Socket(PathBuf),
    /// `--server` with `--cert`, `--key`, `--ca`.
    Server(RemoteServer),
}

impl AdminTarget {
    /// A channel to the target, connected now.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        match self {
            AdminTarget::Socket(socket) => connect_unix(socket)
                .await
                .map_err(|err| connect_error(socket, &err)),
            AdminTarget::Server(server) => server.connect().await,
        }
    }

    /// A status from the target as a sentence that says what to do.
    pub fn status_error(&self, status: &tonic::Status) -> anyhow::Error {
        match self {
            AdminTarget::Socket(socket) => status_error(status, socket),
            AdminTarget::Server(server) => crate::remote::status_error(status, server),
        }
    }
}

impl From<&Path> for AdminTarget {
    fn from(socket: &Path) -> Self {
        AdminTarget::Socket(socket.to_path_buf())
    }
}

impl From<&PathBuf> for AdminTarget {
    fn from(socket: &PathBuf) -> Self {
        AdminTarget::Socket(socket.clone())
    }
}

/// A connected Admin API client that knows what it talks to, for error messages.
#[derive(Debug, Clone)]
pub struct Admin {
    client: AdminClient<Channel>,
    target: AdminTarget,
}

impl Admin {
    /// Connects to the Admin API on the unix socket at `socket`.
    pub async fn connect(socket: &Path) -> anyhow::Result<Self> {
        Self::open(&AdminTarget::Socket(socket.to_path_buf())).await
    }

    /// Connects to the Admin API at `target`.
    pub async fn open(target: &AdminTarget) -> anyhow::Result<Self> {
        Ok(Self {
            client: AdminClient::new(target.connect().await?),
            target: target.clone(),
        })
    }

    /// `CreateEntry`.
    pub async fn create_entry(&mut self, req: pb::CreateEntryRequest) -> anyhow::Result<pb::Entry> {
        self.client
            .create_entry(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.target.status_error(&s))
    }

    /// `ListEntries`.
    pub async fn list_entries(&mut self) -> anyhow::Result<Vec<pb::Entry>> {
        self.client
            .list_entries(pb::ListEntriesRequest {})
            .await
            .map(|r| r.into_inner().entries)
            .map_err(|s| self.target.status_error(&s))
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
            Err(s) => Err(self.target.status_error(&s)),
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
            Err(s) => Err(self.target.status_error(&s)),
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
            .map_err(|s| self.target.status_error(&s))
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
            .map_err(|s| self.target.status_error(&s))
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
            .map_err(|s| self.target.status_error(&s))
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
            Err(s) => Err(self.target.status_error(&s)),
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
            Err(s) => Err(self.target.status_error(&s)),
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
            .map_err(|s| self.target.status_error(&s))
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
            Err(s) => Err(self.target.status_error(&s)),
        }
    }

    /// `GetStatus`.
    pub async fn status(&mut self) -> anyhow::Result<pb::Status> {
        self.client
            .get_status(pb::GetStatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.target.status_error(&s))
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
pub fn connect_error(socket: &Path, err: &(dyn std::error::Error + 'static)) -> anyhow::Error {
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
pub mod testing;

#[cfg(test)]
mod tests;
