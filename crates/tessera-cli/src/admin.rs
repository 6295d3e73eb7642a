//! The connection to tessera-agent's Admin API over its unix socket, and the translation
//! of transport and gRPC failures into sentences that tell the operator what to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use hyper_util::rt::TokioIo;
use tessera_proto::tessera::v1 as pb;
use tessera_proto::tessera::v1::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};

/// How long to wait for the socket to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any single admin call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected Admin API client that knows which socket it talks to, for error messages.
#[derive(Debug, Clone)]
pub struct Admin {
    client: AdminClient<Channel>,
    socket: PathBuf,
}

impl Admin {
    /// Connects to the Admin API on the unix socket at `socket`.
    pub async fn connect(socket: &Path) -> anyhow::Result<Self> {
        let path = socket.to_path_buf();
        // The URI is a placeholder: the connector below ignores it and dials the socket.
        let channel = Endpoint::try_from("http://tessera.invalid")?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
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

    /// `DeleteEntry`; `false` when the agent had no entry with that id.
    pub async fn delete_entry(&mut self, id: &str) -> anyhow::Result<bool> {
        match self
            .client
            .delete_entry(pb::DeleteEntryRequest { id: id.to_owned() })
            .await
        {
            Ok(resp) => Ok(resp.into_inner().deleted),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
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

/// Explains a failure to connect to the admin socket.
fn connect_error(socket: &Path, err: &(dyn std::error::Error + 'static)) -> anyhow::Error {
    let io_kind = std::iter::successors(Some(err), |e| e.source())
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
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

    #[test]
    fn current_uid_is_known_on_linux() {
        assert!(current_uid().is_some());
    }
}
