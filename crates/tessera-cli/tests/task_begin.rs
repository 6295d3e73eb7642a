//! `tessera task begin --write` as a shell script runs it: the real binary against an
//! in-process Tasks API on a unix socket.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tessera_proto::tessera::v1 as pb;
use tessera_proto::tessera::v1::tasks_server::{Tasks, TasksServer};
use tonic::{Request, Response, Status};

const TASK_ID: &str = "01JB8X4Q6V3M2N7P5R9T0W1Y2Z";

#[derive(Default, Clone)]
struct Mock(Arc<Mutex<Vec<pb::BeginTaskRequest>>>);

#[tonic::async_trait]
impl Tasks for Mock {
    async fn begin_task(
        &self,
        request: Request<pb::BeginTaskRequest>,
    ) -> Result<Response<pb::BeginTaskResponse>, Status> {
        let req = request.into_inner();
        self.0.lock().unwrap().push(req.clone());
        if req
            .scopes
            .iter()
            .any(|s| s != "github/tool/get_pull_request")
        {
            return Err(Status::permission_denied(
                "no live consent covers github/tool/merge_pull_request",
            ));
        }
        let spiffe_id = format!("spiffe://example.org/client/demo/task/{TASK_ID}");
        let certified = rcgen::generate_simple_self_signed(vec!["demo.invalid".into()]).unwrap();
        let task = pb::Task {
            id: TASK_ID.into(),
            spiffe_id: spiffe_id.clone(),
            client: "demo".into(),
            subject: req.subject,
            server: req.server,
            scopes: req.scopes,
            deadline_unix: 4_070_908_800,
            ..pb::Task::default()
        };
        Ok(Response::new(pb::BeginTaskResponse {
            task: Some(task),
            svid: Some(pb::TaskSvid {
                spiffe_id,
                x509_svid: certified.cert.der().to_vec(),
                x509_svid_key: certified.signing_key.serialize_der(),
                bundle: certified.cert.der().to_vec(),
                hint: TASK_ID.into(),
            }),
        }))
    }

    async fn end_task(
        &self,
        _: Request<pb::EndTaskRequest>,
    ) -> Result<Response<pb::EndTaskResponse>, Status> {
        Err(Status::not_found("no such task"))
    }

    async fn list_tasks(
        &self,
        _: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        Ok(Response::new(pb::ListTasksResponse { tasks: Vec::new() }))
    }
}

async fn tessera(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("--socket")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn begin_prints_the_task_id_first_and_writes_a_private_key() {
    let mock = Mock::default();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("workload.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TasksServer::new(mock.clone()))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let out = dir.path().join("svid");
    let out_arg = out.display().to_string();

    let output = tessera(
        &socket,
        &[
            "task",
            "begin",
            "--server",
            "github",
            "--subject",
            "alice@acme.corp",
            "--scope",
            "github/tool/get_pull_request",
            "--write",
            &out_arg,
        ],
    )
    .await;
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.lines().next(), Some(TASK_ID), "{stdout}");
    assert!(mock.0.lock().unwrap()[0].bind_to_parent);
    let mode = |name: &str| {
        std::fs::metadata(out.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("key.pem"), 0o600);
    assert_eq!(mode("."), 0o700);
    assert!(out.join("svid.pem").exists() && out.join("bundle.pem").exists());

    // Refused: the agent's reason, verbatim, and a failing exit status.
    let output = tessera(
        &socket,
        &[
            "task",
            "begin",
            "--server",
            "github",
            "--subject",
            "alice@acme.corp",
            "--scope",
            "github/tool/merge_pull_request",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        "error: refused: no live consent covers github/tool/merge_pull_request\n"
    );

    // A scope for another server never reaches the agent.
    let before = mock.0.lock().unwrap().len();
    let output = tessera(
        &socket,
        &[
            "task",
            "begin",
            "--server",
            "github",
            "--subject",
            "alice",
            "--scope",
            "docs/tool/x",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(mock.0.lock().unwrap().len(), before);
}
