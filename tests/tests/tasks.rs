//! Tasks against a real agent: per-task SVIDs bounded by consent, each client's tasks
//! its own, and the limits a task and a caller live within. How tasks end is in
//! `task_ends.rs`; begins and ends racing each other in `task_races.rs`.

#[path = "support/tasks.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use tessera_e2e::{TRUST_DOMAIN, TestAgent};
use tessera_proto::tessera::v1::revocations_client::RevocationsClient;
use tessera_proto::tessera::v1::{
    BeginTaskRequest, EndTaskRequest, ListTasksRequest, WatchRevocationsRequest,
};

use support::{SUBJECT, await_revoked, begin, begin_req, feed, live_task_ids, setup, tasks};

#[tokio::test]
async fn task_svid_appears_in_the_stream_with_its_hint_and_claims() {
    let (agent, consent) = setup("").await;
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.svids().len(), 1, "client SVID only");

    let resp = begin(&agent, begin_req(&["github/tool/get_pull_request"])).await;
    let task = resp.task.unwrap();
    let svid = resp.svid.unwrap();
    assert_eq!(
        task.spiffe_id,
        format!(
            "spiffe://{TRUST_DOMAIN}/client/code-reviewer/task/{}",
            task.id
        )
    );
    assert_eq!(svid.hint, task.id);
    assert_eq!(task.consent_id, consent);

    let ctx = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ctx.svids().len(), 2);
    assert_eq!(
        ctx.default_svid().unwrap().hint(),
        Some("code-reviewer"),
        "client SVID stays the default"
    );
    let task_svid = ctx
        .svids()
        .iter()
        .find(|s| s.hint() == Some(task.id.as_str()))
        .expect("task SVID by hint");
    assert_eq!(task_svid.spiffe_id().to_string(), task.spiffe_id);

    let leaf = tessera_identity::check_leaf_svid(task_svid.cert_chain()[0].as_ref()).unwrap();
    let claims = leaf.claims.expect("claims extension");
    assert_eq!(claims.task_id.to_string(), task.id);
    assert_eq!(claims.subject, SUBJECT);
    assert_eq!(claims.purpose, "review PR 42");
    assert_eq!(claims.consent_id, consent);
    assert_eq!(
        claims
            .scopes
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
        ["github/tool/get_pull_request"]
    );
    assert!(
        leaf.not_after_unix <= claims.deadline_unix,
        "never outlives the task"
    );
}

#[tokio::test]
async fn scopes_beyond_consent_are_refused_naming_what_is_missing() {
    let (agent, _) = setup("").await;
    let err = tasks(&agent)
        .await
        .begin_task(begin_req(&[
            "github/tool/get_pull_request",
            "github/tool/delete_repo",
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("github/tool/delete_repo"),
        "{}",
        err.message()
    );
    assert!(
        !err.message().contains("get_pull_request"),
        "only the missing scope: {}",
        err.message()
    );

    // Another subject has no consent at all.
    let mut req = begin_req(&["github/tool/get_pull_request"]);
    req.subject = "mallory@acme.corp".into();
    let err = tasks(&agent).await.begin_task(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("no live consent"),
        "{}",
        err.message()
    );

    // A scope for another server is a malformed request.
    let err = tasks(&agent)
        .await
        .begin_task(begin_req(&["gitlab/tool/get_pull_request"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn another_client_cannot_end_or_list_the_first_ones_tasks() {
    let (agent, _) = setup("").await;
    let task = begin(&agent, begin_req(&["github/tool/list_pulls"]))
        .await
        .task
        .unwrap();
    // The CLI binary is registered as another client.
    let cli = tessera_e2e::bin("tessera");
    agent
        .admin_client()
        .await
        .unwrap()
        .create_entry(tessera_proto::tessera::v1::CreateEntryRequest {
            client: "intruder".into(),
            selectors: vec![format!(
                "unix:path:{}",
                std::fs::canonicalize(&cli).unwrap().display()
            )],
            svid_ttl_secs: 0,
            server: String::new(),
        })
        .await
        .unwrap();
    let out = agent.cli(&["task", "end", &task.id]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no task"), "{stderr}");
    let out = agent.cli(&["task", "mine", "--all", "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&task.id));
    // Still live for its owner.
    assert!(live_task_ids(&agent).await.contains(&task.id));
}

#[tokio::test]
async fn a_process_at_its_live_task_limit_is_refused_until_one_of_them_ends() {
    let (agent, _) = setup("task_max_live_per_process = 3").await;
    // Concurrent BeginTasks of one process: exactly the limit get through.
    let mut handles = Vec::new();
    for _ in 0..5 {
        let mut client = tasks(&agent).await;
        handles.push(tokio::spawn(async move {
            client
                .begin_task(begin_req(&["github/tool/list_pulls"]))
                .await
        }));
    }
    let mut live = Vec::new();
    let mut refused = Vec::new();
    for h in handles {
        match h.await.unwrap() {
            Ok(r) => live.push(r.into_inner().task.unwrap().id),
            Err(status) => refused.push(status),
        }
    }
    assert_eq!(live.len(), 3, "refused: {refused:?}");
    for status in &refused {
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("3 live tasks")
                && status.message().contains("task_max_live_per_process"),
            "{}",
            status.message()
        );
    }

    let mut client = tasks(&agent).await;
    client
        .end_task(EndTaskRequest {
            task_id: live[0].clone(),
        })
        .await
        .unwrap();
    client
        .begin_task(begin_req(&["github/tool/list_pulls"]))
        .await
        .expect("a place was freed by EndTask");
    let status = client
        .begin_task(begin_req(&["github/tool/list_pulls"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    // The refusals left nothing behind: the store holds the 4 tasks begun, 3 live.
    let listed = client
        .list_tasks(ListTasksRequest {
            include_ended: true,
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(listed.len(), 4);
    assert_eq!(listed.iter().filter(|t| t.ended_at_unix == 0).count(), 3);
}

/// The largest task a request can make: the longest subject and purpose, and resource
/// scopes filling the claims extension close to its 16 KiB limit.
fn largest_task_req(subject: &str) -> BeginTaskRequest {
    BeginTaskRequest {
        purpose: "p".repeat(tessera_identity::MAX_PURPOSE_LEN),
        subject: subject.into(),
        server: "github".into(),
        scopes: (0..14)
            .map(|i| format!("github/resource/{i:02}{}", "r".repeat(998)))
            .collect(),
        lifetime_secs: 0,
        client: String::new(),
        bind_to_parent: false,
    }
}

#[tokio::test]
async fn at_the_default_limit_a_standard_client_still_receives_every_task_svid() {
    use prost::Message;
    use tessera_proto::workload::X509svidRequest;
    use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

    let limit = 128; // the agent's documented default
    let agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let subject = "s".repeat(tessera_identity::MAX_SUBJECT_LEN);
    agent
        .grant("code-reviewer", &subject, "github", &["github/resource/*"])
        .await
        .unwrap();
    let mut client = tasks(&agent).await;
    for _ in 0..limit {
        client.begin_task(largest_task_req(&subject)).await.unwrap();
    }
    let status = client
        .begin_task(largest_task_req(&subject))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    // What the stream sends this process, measured with no size limit.
    let mut raw = SpiffeWorkloadApiClient::new(TestAgent::channel(&agent.workload).await.unwrap())
        .max_decoding_message_size(usize::MAX);
    let mut req = tonic::Request::new(X509svidRequest {});
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let message = raw
        .fetch_x509svid(req)
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        message.svids.len(),
        limit + 1,
        "client SVID and every task's"
    );
    let claims = tessera_identity::check_leaf_svid(&message.svids[1].x509_svid)
        .unwrap()
        .claims
        .unwrap()
        .to_der()
        .len();
    assert!(
        claims > 15_000,
        "claims are near their limit ({claims} bytes)"
    );
    let bytes = message.encoded_len();
    eprintln!(
        "FetchX509SVID with {limit} live tasks of {claims}-byte claims: {bytes} bytes ({:.2} MiB)",
        bytes as f64 / (1024.0 * 1024.0)
    );

    // The spiffe crate's client, with its default 4 MiB limit, takes it.
    let ctx = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap()
        .fetch_x509_context()
        .await
        .expect("the stream message fits a standard client");
    assert_eq!(ctx.svids().len(), limit + 1);
}

#[tokio::test]
async fn revocation_watch_streams_are_bounded_per_identity() {
    let (agent, _) = setup("revocation_max_watchers_per_identity = 2").await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = feed(&agent).await;
        stream.next().await.unwrap().unwrap();
        open.push(stream);
    }
    let refused = RevocationsClient::new(TestAgent::channel(&agent.workload).await.unwrap())
        .watch(WatchRevocationsRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains("revocation_max_watchers_per_identity"),
        "{}",
        refused.message()
    );
    // The streams still open keep working.
    let task = begin(&agent, begin_req(&["github/tool/list_pulls"]))
        .await
        .task
        .unwrap();
    tasks(&agent)
        .await
        .end_task(EndTaskRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap();
    for stream in &mut open {
        await_revoked(stream, &task.id, Duration::from_secs(2)).await;
    }
    // Closing one frees its place (the agent notices the stream's reset).
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match RevocationsClient::new(TestAgent::channel(&agent.workload).await.unwrap())
            .watch(WatchRevocationsRequest {})
            .await
        {
            Ok(stream) => {
                let set = stream.into_inner().next().await.unwrap().unwrap();
                assert!(set.revoked.iter().any(|r| r.task_id == task.id));
                break;
            }
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                assert!(
                    Instant::now() < deadline,
                    "the closed stream's place never came back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("{s}"),
        }
    }
}
