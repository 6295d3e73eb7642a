//! Shared by the task suites (`tasks.rs`, `task_ends.rs`, `task_races.rs`): an agent
//! with this process registered and a consent, and the Tasks, Revocations and Workload
//! API calls their tests make and wait on.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use tessera_e2e::TestAgent;
use tessera_proto::tessera::v1::revocations_client::RevocationsClient;
use tessera_proto::tessera::v1::tasks_client::TasksClient;
use tessera_proto::tessera::v1::{
    BeginTaskRequest, BeginTaskResponse, ListTasksRequest, RevocationSet, WatchRevocationsRequest,
};
use tonic::transport::Channel;

pub const SUBJECT: &str = "alice@acme.corp";

pub async fn setup(extra: &str) -> (TestAgent, String) {
    let agent = TestAgent::start(extra).await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let consent = grant(
        &agent,
        "code-reviewer",
        &["github/tool/get_*", "github/tool/list_pulls"],
    )
    .await;
    (agent, consent)
}

pub async fn grant(agent: &TestAgent, client: &str, scopes: &[&str]) -> String {
    agent
        .grant(client, SUBJECT, "github", scopes)
        .await
        .unwrap()
}

pub async fn tasks(agent: &TestAgent) -> TasksClient<Channel> {
    TasksClient::new(TestAgent::channel(&agent.workload).await.unwrap())
}

pub fn begin_req(scopes: &[&str]) -> BeginTaskRequest {
    BeginTaskRequest {
        purpose: "review PR 42".into(),
        subject: SUBJECT.into(),
        server: "github".into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        lifetime_secs: 0,
        client: String::new(),
        bind_to_parent: false,
    }
}

pub async fn begin(agent: &TestAgent, req: BeginTaskRequest) -> BeginTaskResponse {
    tasks(agent)
        .await
        .begin_task(req)
        .await
        .unwrap()
        .into_inner()
}

/// The ids of the caller's live tasks, as ListTasks (read from the store) gives them.
pub async fn live_task_ids(agent: &TestAgent) -> Vec<String> {
    tasks(agent)
        .await
        .list_tasks(ListTasksRequest {
            include_ended: false,
        })
        .await
        .unwrap()
        .into_inner()
        .tasks
        .into_iter()
        .map(|t| t.id)
        .collect()
}

pub async fn feed(agent: &TestAgent) -> tonic::Streaming<RevocationSet> {
    RevocationsClient::new(TestAgent::channel(&agent.workload).await.unwrap())
        .watch(WatchRevocationsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Waits until the feed lists `task_id`; returns the reason and how long it took.
pub async fn await_revoked(
    feed: &mut tonic::Streaming<RevocationSet>,
    task_id: &str,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let set = tokio::time::timeout(left, feed.next())
            .await
            .unwrap_or_else(|_| panic!("{task_id} not revoked within {within:?}"))
            .expect("feed open")
            .expect("feed message");
        if let Some(r) = set.revoked.iter().find(|r| r.task_id == task_id) {
            assert!(!r.serials.is_empty(), "revocation lists the task's serials");
            return r.reason.clone();
        }
    }
}

/// Waits until the caller's FetchX509SVID stream no longer carries `hint`.
pub async fn await_dropped<S>(stream: &mut S, hint: &str, within: Duration)
where
    S: futures::Stream<Item = Result<spiffe::X509Context, spiffe::WorkloadApiError>> + Unpin,
{
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ctx = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| panic!("task SVID {hint} still in the stream after {within:?}"))
            .expect("stream open")
            .expect("stream message");
        if !ctx.svids().iter().any(|s| s.hint() == Some(hint)) {
            return;
        }
    }
}
