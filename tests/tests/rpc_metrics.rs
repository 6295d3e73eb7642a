//! `tessera_rpcs_total{rpc,code}` as a real agent serves it on `/metrics`: every call
//! on either socket counted once, with the status it ended with, under a bounded set
//! of `rpc` labels.

use std::time::Duration;

use tessera_e2e::TestAgent;
use tessera_proto::tessera::v1::admin_client::AdminClient;
use tessera_proto::tessera::v1::tasks_client::TasksClient;
use tessera_proto::tessera::v1::{
    BeginTaskRequest, DeleteEntryRequest, GetStatusRequest, ListTasksRequest,
};
use tessera_proto::workload::X509svidRequest;
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

/// The agent's `/metrics` text.
async fn scrape(agent: &TestAgent) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(agent.http).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of `tessera_rpcs_total{rpc,code}`, if the series exists.
fn rpcs(metrics: &str, rpc: &str, code: &str) -> Option<f64> {
    let series = format!("tessera_rpcs_total{{rpc=\"{rpc}\",code=\"{code}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
}

/// Scrapes until `rpc` has been counted with `code` (a stream counts when the agent
/// sees it end, a moment after the client does), or fails after a generous bound.
async fn counted(agent: &TestAgent, rpc: &str, code: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = scrape(agent).await;
        if rpcs(&metrics, rpc, code).is_some() || tokio::time::Instant::now() > deadline {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn tasks(agent: &TestAgent) -> TasksClient<tonic::transport::Channel> {
    TasksClient::new(TestAgent::channel(&agent.workload).await.unwrap())
}

#[tokio::test]
async fn begin_task_refused_as_invalid_argument_is_counted() {
    let agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let err = tasks(&agent)
        .await
        .begin_task(BeginTaskRequest {
            purpose: "review PR 42".into(),
            subject: String::new(),
            server: "github".into(),
            scopes: vec!["github/tool/get_pull_request".into()],
            lifetime_secs: 0,
            client: String::new(),
            bind_to_parent: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    let metrics = counted(&agent, "BeginTask", "InvalidArgument").await;
    assert_eq!(
        rpcs(&metrics, "BeginTask", "InvalidArgument"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(rpcs(&metrics, "BeginTask", "Ok"), None, "{metrics}");
}

#[tokio::test]
async fn list_tasks_is_counted() {
    let agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let mut client = tasks(&agent).await;
    for _ in 0..2 {
        let listed = client
            .list_tasks(ListTasksRequest {
                include_ended: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(listed.tasks.is_empty());
    }

    let metrics = counted(&agent, "ListTasks", "Ok").await;
    assert_eq!(rpcs(&metrics, "ListTasks", "Ok"), Some(2.0), "{metrics}");
}

#[tokio::test]
async fn fetch_x509svid_stream_counts_at_its_end_with_its_final_code() {
    let agent = TestAgent::start("").await.unwrap();
    let entry = agent.register_self("code-reviewer").await.unwrap();
    let mut client =
        SpiffeWorkloadApiClient::new(TestAgent::channel(&agent.workload).await.unwrap());
    let open = || {
        let mut req = tonic::Request::new(X509svidRequest {});
        req.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        req
    };

    // A stream the caller closes after its answer ends Ok: for a stream that never
    // ends on its own, that is its normal end.
    let mut closed = client.fetch_x509svid(open()).await.unwrap().into_inner();
    assert_eq!(closed.message().await.unwrap().unwrap().svids.len(), 1);
    drop(closed);
    let metrics = counted(&agent, "FetchX509SVID", "Ok").await;
    assert_eq!(
        rpcs(&metrics, "FetchX509SVID", "Ok"),
        Some(1.0),
        "{metrics}"
    );

    // An open stream is not counted yet: it has no outcome.
    let mut stream = client.fetch_x509svid(open()).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().svids.len(), 1);
    let metrics = scrape(&agent).await;
    assert_eq!(
        rpcs(&metrics, "FetchX509SVID", "Ok"),
        Some(1.0),
        "{metrics}"
    );

    // Deleting the caller's entry ends the stream with PermissionDenied, and that is
    // how it counts.
    agent
        .admin_client()
        .await
        .unwrap()
        .delete_entry(DeleteEntryRequest { id: entry.id })
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("the stream ends once the entry is gone")
        .unwrap_err();
    assert_eq!(end.code(), tonic::Code::PermissionDenied, "{end:?}");
    let metrics = counted(&agent, "FetchX509SVID", "PermissionDenied").await;
    assert_eq!(
        rpcs(&metrics, "FetchX509SVID", "PermissionDenied"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        rpcs(&metrics, "FetchX509SVID", "Ok"),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn paths_a_socket_does_not_serve_share_one_label() {
    let agent = TestAgent::start("").await.unwrap();
    // The Admin API's path, on the workload socket: not a method served there.
    let mut misdirected = AdminClient::new(TestAgent::channel(&agent.workload).await.unwrap());
    for _ in 0..2 {
        let err = misdirected
            .get_status(GetStatusRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    }
    // The same call where it is served counts under its own name (the test agent's
    // start-up asks for the status too: count from here).
    let before = rpcs(&scrape(&agent).await, "GetStatus", "Ok").unwrap_or(0.0);
    agent
        .admin_client()
        .await
        .unwrap()
        .get_status(GetStatusRequest {})
        .await
        .unwrap();

    let metrics = scrape(&agent).await;
    assert_eq!(
        rpcs(&metrics, "unknown", "Unimplemented"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        rpcs(&metrics, "GetStatus", "Ok"),
        Some(before + 1.0),
        "{metrics}"
    );
    assert_eq!(
        rpcs(&metrics, "GetStatus", "Unimplemented"),
        None,
        "{metrics}"
    );
}
