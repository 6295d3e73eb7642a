//! The connection to tessera-agent's Tasks API on the workload socket, as the calling
//! process (no admin rights: the agent attests the caller exactly as for FetchX509SVID),
//! and the translation of its failures into sentences.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use tessera_proto::WORKLOAD_HEADER;
use tessera_proto::tessera::v1 as pb;
use tessera_proto::tessera::v1::tasks_client::TasksClient;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::admin::{current_uid, io_cause};
use crate::svid::workload_path;
use crate::transport::connect_unix;

/// A connected Tasks API client that knows which socket it talks to, for error messages.
#[derive(Debug, Clone)]
pub struct TasksApi {
    client: TasksClient<Channel>,
    socket: PathBuf,
}

impl TasksApi {
    /// Connects to the Tasks API on the workload endpoint `socket` (`unix:///abs/path` or
    /// `/abs/path`).
    pub async fn connect(socket: &str) -> anyhow::Result<Self> {
        let path = workload_path(socket).map_err(|e| anyhow!(e))?;
        let channel = connect_unix(&path)
            .await
            .map_err(|err| connect_error(&path, &err))?;
        Ok(Self {
            client: TasksClient::new(channel),
            socket: path,
        })
    }

    /// `BeginTask`.
    pub async fn begin(
        &mut self,
        req: pb::BeginTaskRequest,
    ) -> anyhow::Result<pb::BeginTaskResponse> {
        self.client
            .begin_task(request(req))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_error(&s, &self.socket, None))
    }

    /// `EndTask`: ends one of the caller's own tasks.
    pub async fn end(&mut self, task_id: &str) -> anyhow::Result<pb::Task> {
        self.client
            .end_task(request(pb::EndTaskRequest {
                task_id: task_id.to_owned(),
            }))
            .await
            .map_err(|s| status_error(&s, &self.socket, Some(task_id)))?
            .into_inner()
            .task
            .ok_or_else(|| anyhow!("tessera-agent answered EndTask without the task"))
    }

    /// `ListTasks`: the caller's own tasks, live first.
    pub async fn list(&mut self, include_ended: bool) -> anyhow::Result<Vec<pb::Task>> {
        self.client
            .list_tasks(request(pb::ListTasksRequest { include_ended }))
            .await
            .map(|r| r.into_inner().tasks)
            .map_err(|s| status_error(&s, &self.socket, None))
    }
}

/// A request carrying the Workload API security header. The Tasks API shares the socket
/// with the Workload API, and the header costs nothing where it is not required.
fn request<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert(WORKLOAD_HEADER, MetadataValue::from_static("true"));
    req
}

/// Explains a failure to connect to the workload socket.
fn connect_error(socket: &Path, err: &(dyn std::error::Error + 'static)) -> anyhow::Error {
    let socket = socket.display();
    match io_cause(err).map(std::io::Error::kind) {
        Some(std::io::ErrorKind::PermissionDenied) => anyhow!(
            "cannot open the workload socket {socket} as uid {}: permission denied",
            current_uid().map_or_else(|| "(unknown)".to_owned(), |u| u.to_string())
        ),
        Some(std::io::ErrorKind::NotFound) => anyhow!(
            "cannot reach tessera-agent at {socket}: is it running? (no socket at that path; \
             set --socket or SPIFFE_ENDPOINT_SOCKET if it lives elsewhere)"
        ),
        _ => anyhow!("cannot reach tessera-agent at {socket}: is it running? ({err})"),
    }
}

/// Explains a gRPC status from the Tasks API.
fn status_error(status: &tonic::Status, socket: &Path, task_id: Option<&str>) -> anyhow::Error {
    status_message(status.code(), status.message(), socket, task_id)
}

/// The sentence for a Tasks API status; separate from [`status_error`] for tests.
fn status_message(
    code: tonic::Code,
    message: &str,
    socket: &Path,
    task_id: Option<&str>,
) -> anyhow::Error {
    use tonic::Code;
    let socket = socket.display();
    let detail = if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    };
    match code {
        // The agent names what is missing (no entry for the caller, no consent, scopes
        // outside the consent): its words are the most useful ones.
        Code::PermissionDenied if message.is_empty() => {
            anyhow!("refused by tessera-agent at {socket}")
        }
        Code::PermissionDenied => anyhow!("refused: {message}"),
        Code::NotFound => match task_id {
            Some(id) => anyhow!("no task {id} for this client"),
            None => anyhow!("not found: {message}"),
        },
        Code::InvalidArgument => anyhow!("tessera-agent rejected the request: {message}"),
        Code::FailedPrecondition => anyhow!("tessera-agent cannot do that now: {message}"),
        Code::Unavailable => {
            anyhow!("cannot reach tessera-agent at {socket}: is it running?{detail}")
        }
        Code::DeadlineExceeded => {
            anyhow!("tessera-agent at {socket} did not answer in time{detail}")
        }
        Code::Unimplemented => anyhow!(
            "tessera-agent at {socket} does not serve the Tasks API; are the CLI and agent the same version?{detail}"
        ),
        other => anyhow!("tessera-agent at {socket} failed: {other:?}{detail}"),
    }
}

/// An in-memory Tasks API server on a unix socket, for tests of the commands.
#[cfg(test)]
pub mod testing {
    use std::sync::{Arc, Mutex};

    use tessera_proto::tessera::v1::tasks_server::{self, TasksServer};
    use tonic::{Request, Response, Status};

    use super::pb;
    use tessera_testca::Ca;

    /// What the mock agent holds.
    #[derive(Debug, Default)]
    pub struct State {
        /// Scopes a consent covers; a request outside them is refused.
        pub consented: Vec<String>,
        /// The caller's tasks.
        pub tasks: Vec<pb::Task>,
        /// Every BeginTask request received.
        pub begun: Vec<pb::BeginTaskRequest>,
        /// Whether every request carried the workload header.
        pub missing_header: bool,
    }

    /// A mock agent; clone it to keep a handle on its state.
    #[derive(Debug, Clone, Default)]
    pub struct Mock(pub Arc<Mutex<State>>);

    impl Mock {
        fn state<T>(&self, request: &Request<T>) -> std::sync::MutexGuard<'_, State> {
            let mut state = self.0.lock().unwrap();
            if request.metadata().get(super::WORKLOAD_HEADER).is_none() {
                state.missing_header = true;
            }
            state
        }
    }

    #[tonic::async_trait]
    impl tasks_server::Tasks for Mock {
        async fn begin_task(
            &self,
            request: Request<pb::BeginTaskRequest>,
        ) -> Result<Response<pb::BeginTaskResponse>, Status> {
            let mut state = self.state(&request);
            let req = request.into_inner();
            state.begun.push(req.clone());
            let missing: Vec<&String> = req
                .scopes
                .iter()
                .filter(|s| !state.consented.contains(s))
                .collect();
            if !missing.is_empty() {
                return Err(Status::permission_denied(format!(
                    "no live consent of client demo for subject {:?} on server {:?} covers {:?}",
                    req.subject, req.server, missing
                )));
            }
            let now = crate::output::now_unix();
            let id = format!("01TASK{:020}", state.tasks.len());
            let spiffe_id = format!("spiffe://example.org/client/demo/task/{id}");
            let ca = Ca::unnamed_root("Test CA");
            let mut leaf = ca.leaf(&spiffe_id);
            leaf.not_after = time::OffsetDateTime::now_utc() + time::Duration::minutes(5);
            let minted = leaf.mint();
            let mut chain = minted.leaf().to_vec();
            chain.extend_from_slice(ca.cert());
            let task = pb::Task {
                id: id.clone(),
                spiffe_id: spiffe_id.clone(),
                client: "demo".into(),
                subject: req.subject,
                server: req.server,
                scopes: req.scopes,
                purpose: req.purpose,
                consent_id: "01CONSENT".into(),
                begun_at_unix: now,
                deadline_unix: now + i64::from(req.lifetime_secs.max(300)),
                ended_at_unix: 0,
                end_reason: String::new(),
                pid: 4242,
            };
            state.tasks.push(task.clone());
            Ok(Response::new(pb::BeginTaskResponse {
                task: Some(task),
                svid: Some(pb::TaskSvid {
                    spiffe_id,
                    x509_svid: chain,
                    x509_svid_key: minted.key.secret_der().to_vec(),
                    bundle: ca.cert().to_vec(),
                    hint: id,
                }),
            }))
        }

        async fn end_task(
            &self,
            request: Request<pb::EndTaskRequest>,
        ) -> Result<Response<pb::EndTaskResponse>, Status> {
            let mut state = self.state(&request);
            let id = request.into_inner().task_id;
            let task = state
                .tasks
                .iter_mut()
                .find(|t| t.id == id)
                .ok_or_else(|| Status::not_found("no such task"))?;
            if task.ended_at_unix == 0 {
                task.ended_at_unix = crate::output::now_unix();
                task.end_reason = "ended".into();
            }
            Ok(Response::new(pb::EndTaskResponse {
                task: Some(task.clone()),
            }))
        }

        async fn list_tasks(
            &self,
            request: Request<pb::ListTasksRequest>,
        ) -> Result<Response<pb::ListTasksResponse>, Status> {
            let state = self.state(&request);
            let include_ended = request.into_inner().include_ended;
            let tasks = state
                .tasks
                .iter()
                .filter(|t| include_ended || t.ended_at_unix == 0)
                .cloned()
                .collect();
            Ok(Response::new(pb::ListTasksResponse { tasks }))
        }
    }

    /// Serves `mock` on a socket in a fresh temporary directory; keep the directory alive.
    pub async fn serve(mock: Mock) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workload.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TasksServer::new(mock))
                .serve_with_incoming(incoming),
        );
        (dir, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_prints_the_agents_reason_verbatim() {
        let reason = "no live consent of client demo for subject \"alice\" on server \"github\" \
                      covers github/tool/merge";
        let err = status_message(
            tonic::Code::PermissionDenied,
            reason,
            Path::new("/run/w.sock"),
            None,
        );
        assert_eq!(err.to_string(), format!("refused: {reason}"));
    }

    #[test]
    fn not_found_names_the_task() {
        let err = status_message(
            tonic::Code::NotFound,
            "no such task",
            Path::new("/run/w.sock"),
            Some("01ABC"),
        );
        assert_eq!(err.to_string(), "no task 01ABC for this client");
    }

    #[tokio::test]
    async fn connecting_to_a_missing_socket_says_the_agent_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("workload.sock");
        let err = TasksApi::connect(&format!("unix://{}", socket.display()))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "cannot reach tessera-agent at {}: is it running? (no socket",
                socket.display()
            )),
            "{err}"
        );
    }
}
