//! Tasks against a real agent: per-task SVIDs bounded by consent, and every way
//! a task ends removing its SVID from the stream and putting it on the feed.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tessera_e2e::{TRUST_DOMAIN, TestAgent};
use tessera_proto::tessera::v1::revocations_client::RevocationsClient;
use tessera_proto::tessera::v1::tasks_client::TasksClient;
use tessera_proto::tessera::v1::{
    BeginTaskRequest, BeginTaskResponse, EndTaskRequest, ListAllTasksRequest, ListTasksRequest,
    RevocationSet, RevokeTaskRequest, WatchRevocationsRequest, WithdrawConsentRequest,
};
use tonic::transport::Channel;

const SUBJECT: &str = "alice@acme.corp";

async fn setup(extra: &str) -> (TestAgent, String) {
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

async fn grant(agent: &TestAgent, client: &str, scopes: &[&str]) -> String {
    agent
        .grant(client, SUBJECT, "github", scopes)
        .await
        .unwrap()
}

async fn tasks(agent: &TestAgent) -> TasksClient<Channel> {
    TasksClient::new(TestAgent::channel(&agent.workload).await.unwrap())
}

fn begin_req(scopes: &[&str]) -> BeginTaskRequest {
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

async fn begin(agent: &TestAgent, req: BeginTaskRequest) -> BeginTaskResponse {
    tasks(agent)
        .await
        .begin_task(req)
        .await
        .unwrap()
        .into_inner()
}

/// The ids of the caller's live tasks, as ListTasks (read from the store) gives them.
async fn live_task_ids(agent: &TestAgent) -> Vec<String> {
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

async fn feed(agent: &TestAgent) -> tonic::Streaming<RevocationSet> {
    RevocationsClient::new(TestAgent::channel(&agent.workload).await.unwrap())
        .watch(WatchRevocationsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Waits until the feed lists `task_id`; returns the reason and how long it took.
async fn await_revoked(
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
async fn await_dropped<S>(stream: &mut S, hint: &str, within: Duration)
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
async fn end_task_drops_the_svid_and_revokes_it() {
    let (agent, _) = setup("").await;
    let mut feed = feed(&agent).await;
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let mut stream = client.stream_x509_contexts().await.unwrap();
    stream.next().await.unwrap().unwrap();
    let task = begin(&agent, begin_req(&["github/tool/list_pulls"]))
        .await
        .task
        .unwrap();
    let ctx = stream.next().await.unwrap().unwrap();
    assert!(
        ctx.svids()
            .iter()
            .any(|s| s.hint() == Some(task.id.as_str()))
    );

    let ended = tasks(&agent)
        .await
        .end_task(EndTaskRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(ended.end_reason, "ended");
    assert_eq!(
        await_revoked(&mut feed, &task.id, Duration::from_secs(2)).await,
        "ended"
    );
    await_dropped(&mut stream, &task.id, Duration::from_secs(2)).await;

    // Ending twice is harmless and reports the same end.
    let again = tasks(&agent)
        .await
        .end_task(EndTaskRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(again.end_reason, "ended");
}

#[tokio::test]
async fn deadline_ends_the_task() {
    let (agent, _) = setup("").await;
    let mut feed = feed(&agent).await;
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let mut stream = client.stream_x509_contexts().await.unwrap();
    stream.next().await.unwrap().unwrap();
    let mut req = begin_req(&["github/tool/list_pulls"]);
    req.lifetime_secs = 2;
    let resp = begin(&agent, req).await;
    let task = resp.task.unwrap();
    assert!(task.deadline_unix - task.begun_at_unix <= 2);
    assert_eq!(
        await_revoked(&mut feed, &task.id, Duration::from_secs(5)).await,
        "deadline"
    );
    await_dropped(&mut stream, &task.id, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn withdrawing_consent_ends_its_tasks_only() {
    let (agent, consent) = setup("").await;
    let other = grant(&agent, "code-reviewer", &["github/tool/search_code"]).await;
    let mut feed = feed(&agent).await;
    let a = begin(&agent, begin_req(&["github/tool/list_pulls"]))
        .await
        .task
        .unwrap();
    let b = begin(&agent, begin_req(&["github/tool/search_code"]))
        .await
        .task
        .unwrap();
    assert_eq!(a.consent_id, consent);
    assert_eq!(b.consent_id, other);

    let resp = agent
        .admin_client()
        .await
        .unwrap()
        .withdraw_consent(WithdrawConsentRequest {
            id: consent.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.ended_tasks, vec![a.id.clone()]);
    assert_eq!(
        await_revoked(&mut feed, &a.id, Duration::from_secs(2)).await,
        "consent_withdrawn"
    );
    assert_eq!(live_task_ids(&agent).await, [b.id]);

    // The withdrawn consent no longer admits new tasks.
    let err = tasks(&agent)
        .await
        .begin_task(begin_req(&["github/tool/list_pulls"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn admin_revoke_ends_the_task() {
    let (agent, _) = setup("").await;
    let mut feed = feed(&agent).await;
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let mut stream = client.stream_x509_contexts().await.unwrap();
    stream.next().await.unwrap().unwrap();
    let task = begin(&agent, begin_req(&["github/tool/list_pulls"]))
        .await
        .task
        .unwrap();
    let revoked = agent
        .admin_client()
        .await
        .unwrap()
        .revoke_task(RevokeTaskRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(revoked.end_reason, "revoked");
    assert_eq!(
        await_revoked(&mut feed, &task.id, Duration::from_secs(2)).await,
        "revoked"
    );
    await_dropped(&mut stream, &task.id, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn process_exit_ends_the_task_bound_to_it() {
    let (agent, _) = setup("").await;
    let mut feed = feed(&agent).await;
    // The CLI, registered as this client, begins a task bound to its parent
    // shell (the default for `tessera task begin`); when the shell exits, the
    // task must end.
    let helper = tessera_e2e::bin("tessera");
    agent
        .admin_client()
        .await
        .unwrap()
        .create_entry(tessera_proto::tessera::v1::CreateEntryRequest {
            client: "code-reviewer".into(),
            selectors: vec![
                format!("unix:uid:{}", nix::unistd::geteuid()),
                format!(
                    "unix:path:{}",
                    std::fs::canonicalize(&helper).unwrap().display()
                ),
            ],
            svid_ttl_secs: 0,
            server: String::new(),
        })
        .await
        .unwrap();
    let script = format!(
        "{} --socket {} task begin --server github --scope github/tool/list_pulls --subject {SUBJECT} && sleep 1",
        helper.display(),
        agent.endpoint()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let task_id = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(
        await_revoked(&mut feed, &task_id, Duration::from_secs(3)).await,
        "process_exited"
    );
    // The feed is told first; the store follows within milliseconds.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let all = agent
            .admin_client()
            .await
            .unwrap()
            .list_all_tasks(ListAllTasksRequest {
                client: String::new(),
                include_ended: true,
            })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        let t = all.iter().find(|t| t.id == task_id).expect("task listed");
        if t.end_reason == "process_exited" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "store never recorded the end: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
async fn revocation_survives_kill_9_and_restart() {
    let (mut agent, _) = setup("").await;
    let task = begin(&agent, begin_req(&["github/tool/list_pulls"]))
        .await
        .task
        .unwrap();
    let live = begin(&agent, begin_req(&["github/tool/list_pulls"]))
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
    agent.kill();
    agent.spawn().await.unwrap();
    let mut feed = feed(&agent).await;
    let set = feed.next().await.unwrap().unwrap();
    let reason = |id: &str| {
        set.revoked
            .iter()
            .find(|r| r.task_id == id)
            .map(|r| r.reason.clone())
    };
    assert_eq!(
        reason(&task.id).as_deref(),
        Some("ended"),
        "ended task stays revoked"
    );
    // A task live at the crash lost its process binding: it is revoked, not resurrected.
    assert_eq!(reason(&live.id).as_deref(), Some("agent_restart"));
}

#[tokio::test]
async fn parallel_begin_and_end_leave_the_store_consistent() {
    let (agent, _) = setup("").await;
    let mut handles = Vec::new();
    for _ in 0..8 {
        let channel = TestAgent::channel(&agent.workload).await.unwrap();
        handles.push(tokio::spawn(async move {
            let mut client = TasksClient::new(channel);
            let mut ids = Vec::new();
            for _ in 0..25 {
                let t = client
                    .begin_task(begin_req(&["github/tool/list_pulls"]))
                    .await
                    .unwrap()
                    .into_inner()
                    .task
                    .unwrap();
                client
                    .end_task(EndTaskRequest {
                        task_id: t.id.clone(),
                    })
                    .await
                    .unwrap();
                ids.push(t.id);
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    assert_eq!(all.len(), 200);
    let listed = agent
        .admin_client()
        .await
        .unwrap()
        .list_all_tasks(ListAllTasksRequest {
            client: String::new(),
            include_ended: true,
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(listed.len(), 200);
    assert!(
        listed
            .iter()
            .all(|t| t.end_reason == "ended" && t.ended_at_unix > 0)
    );
    let set = feed(&agent).await.next().await.unwrap().unwrap();
    for id in &all {
        assert_eq!(
            set.revoked.iter().filter(|r| &r.task_id == id).count(),
            1,
            "{id}"
        );
    }
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
async fn a_begin_task_abandoned_by_its_caller_leaves_no_task_that_cannot_end() {
    let (agent, _) = setup("").await;
    let channel = TestAgent::channel(&agent.workload).await.unwrap();
    // Deadlines from 0.5 to 10 ms. The client gives up at its deadline and resets the
    // stream, and the agent (which enforces grpc-timeout too) drops the call: for the
    // shorter ones before anything was stored, for the longer ones while the task's
    // write is queued or committing, which the store applies regardless.
    let mut timed_out = 0;
    for i in 0..40u64 {
        let mut req = tonic::Request::new(begin_req(&["github/tool/list_pulls"]));
        req.set_timeout(Duration::from_micros(500 + i * 250));
        if TasksClient::new(channel.clone())
            .begin_task(req)
            .await
            .is_err()
        {
            timed_out += 1;
        }
    }
    assert!(
        timed_out > 0,
        "no call was abandoned; the test proves nothing"
    );

    // Every task the store holds as live is live in the agent too: it ends, once, and
    // reaches the feed.
    let mut client = tasks(&agent).await;
    let live = live_task_ids(&agent).await;
    assert!(
        live.len() > 40 - timed_out,
        "no abandoned call got as far as the store; the test proves nothing"
    );
    let mut feed = feed(&agent).await;
    for id in &live {
        let ended = client
            .end_task(EndTaskRequest {
                task_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap();
        assert_eq!(ended.end_reason, "ended", "task {id} could not be ended");
        await_revoked(&mut feed, id, Duration::from_secs(5)).await;
    }
    eprintln!(
        "{timed_out} of 40 calls abandoned, {} of them after reaching the store; {} tasks \
         were live and ended",
        live.len() - (40 - timed_out),
        live.len()
    );
}

#[tokio::test]
async fn a_consent_withdrawal_abandoned_by_its_caller_still_revokes_its_tasks() {
    use tessera_proto::tessera::v1::GetConsentRequest;

    let agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let admin = agent.admin_client().await.unwrap();
    let mut feed = feed(&agent).await;
    // (consent, its task, whether the withdrawal was answered)
    let mut cases = Vec::new();
    for i in 0..16u64 {
        let subject = format!("user{i}@acme.corp");
        let consent = agent
            .grant("code-reviewer", &subject, "github", &["github/tool/*"])
            .await
            .unwrap();
        let task = begin(
            &agent,
            BeginTaskRequest {
                subject,
                ..begin_req(&["github/tool/list_pulls"])
            },
        )
        .await
        .task
        .unwrap()
        .id;
        // Deadlines from 0.2 to 4.7 ms: the client gives up on the shorter ones before
        // sending, the longer ones while the agent is withdrawing (it then drops the call).
        let mut req = tonic::Request::new(WithdrawConsentRequest {
            id: consent.clone(),
        });
        req.set_timeout(Duration::from_micros(200 + i * 300));
        let answered = admin.clone().withdraw_consent(req).await.is_ok();
        cases.push((consent, task, answered));
    }

    // The store and the agent agree on every case: a consent the store holds as
    // withdrawn had its task revoked (on the feed) and ended; any other's task is live.
    let mut withdrawn = std::collections::HashSet::new();
    let mut abandoned_after_the_store = 0;
    for (consent, task, answered) in &cases {
        let stored = admin
            .clone()
            .get_consent(GetConsentRequest {
                id: consent.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if stored.withdrawn_at_unix > 0 {
            withdrawn.insert(task.as_str());
            abandoned_after_the_store += usize::from(!answered);
        } else {
            assert!(!answered, "an answered withdrawal is in the store");
        }
    }
    assert!(
        abandoned_after_the_store > 0,
        "no withdrawal was abandoned after reaching the store; the test proves nothing"
    );
    let mut pending = withdrawn.clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = RevocationSet::default();
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        last = tokio::time::timeout(left, feed.next())
            .await
            .unwrap_or_else(|_| panic!("withdrawn in the store but never revoked: {pending:?}"))
            .expect("feed open")
            .expect("feed message");
        for r in &last.revoked {
            pending.remove(r.task_id.as_str());
        }
    }
    assert!(
        last.revoked
            .iter()
            .all(|r| withdrawn.contains(r.task_id.as_str()) && r.reason == "consent_withdrawn"),
        "only the withdrawn consents' tasks are revoked: {:?}",
        last.revoked
    );
    let live = live_task_ids(&agent).await;
    for (_, task, _) in &cases {
        assert_eq!(
            live.contains(task),
            !withdrawn.contains(task.as_str()),
            "{task}"
        );
    }
    eprintln!(
        "{} of {} withdrawals reached the store, {abandoned_after_the_store} of them abandoned by their caller",
        withdrawn.len(),
        cases.len()
    );
}

#[tokio::test]
async fn deleting_a_client_entry_ends_its_tasks_and_drops_its_svids_from_every_stream() {
    use tessera_proto::tessera::v1::{DeleteEntryRequest, ListAuditRequest};

    let agent = TestAgent::start("").await.unwrap();
    let entry = agent.register_self("code-reviewer").await.unwrap();
    grant(&agent, "code-reviewer", &["github/tool/*"]).await;
    // The same process is also an MCP server, so its stream outlives the client
    // identity and shows what is left of it.
    agent
        .register_exe("", "github", &std::env::current_exe().unwrap())
        .await
        .unwrap();
    let mut feed = feed(&agent).await;
    let workload = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let mut stream = workload.stream_x509_contexts().await.unwrap();
    let a = begin(&agent, begin_req(&["github/tool/list_pulls"]))
        .await
        .task
        .unwrap()
        .id;
    let b = begin(&agent, begin_req(&["github/tool/get_pull_request"]))
        .await
        .task
        .unwrap()
        .id;
    loop {
        let ctx = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("both task SVIDs shown")
            .unwrap()
            .unwrap();
        let hints: Vec<_> = ctx.svids().iter().filter_map(|s| s.hint()).collect();
        if hints.contains(&a.as_str()) && hints.contains(&b.as_str()) {
            break;
        }
    }

    let mut ended = agent
        .admin_client()
        .await
        .unwrap()
        .delete_entry(DeleteEntryRequest {
            id: entry.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .ended_tasks;
    ended.sort();
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(ended, expected, "DeleteEntry ends the client's tasks");

    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let set = tokio::time::timeout(left, feed.next())
            .await
            .expect("both tasks revoked")
            .expect("feed open")
            .expect("feed message");
        let reasons: Vec<&str> = [&a, &b]
            .iter()
            .filter_map(|id| set.revoked.iter().find(|r| &&r.task_id == id))
            .map(|r| r.reason.as_str())
            .collect();
        if reasons.len() == 2 {
            assert_eq!(reasons, ["entry_deleted", "entry_deleted"]);
            break;
        }
    }
    // Neither the task SVIDs nor the client SVID are shown any more; the server's is.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ctx = tokio::time::timeout(left, stream.next())
            .await
            .expect("the deleted identity's SVIDs leave the stream")
            .expect("stream open")
            .expect("stream message");
        let ids: Vec<String> = ctx
            .svids()
            .iter()
            .map(|s| s.spiffe_id().to_string())
            .collect();
        if ids == [format!("spiffe://{TRUST_DOMAIN}/mcp/github")] {
            break;
        }
        assert!(ids.iter().any(|id| id.ends_with("/mcp/github")), "{ids:?}");
    }
    let stored = agent
        .admin_client()
        .await
        .unwrap()
        .list_all_tasks(ListAllTasksRequest {
            client: "code-reviewer".into(),
            include_ended: true,
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|t| t.end_reason == "entry_deleted"));
    let audit = agent
        .admin_client()
        .await
        .unwrap()
        .list_audit(ListAuditRequest {
            after_seq: 0,
            limit: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    for id in [&a, &b] {
        assert!(
            audit.iter().any(|r| r.kind == "task.end"
                && r.detail_json.contains(id.as_str())
                && r.detail_json.contains("entry_deleted")
                && r.actor.starts_with("uid:")),
            "audited end of {id}"
        );
    }
    // And the process can no longer begin tasks as that client.
    let err = tasks(&agent)
        .await
        .begin_task(begin_req(&["github/tool/list_pulls"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
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

#[tokio::test]
async fn a_rotated_task_svid_is_refused_by_a_verifier_once_its_task_ends() {
    use tessera_verify::revocation::{RevocationStatus, RevocationWatcher, WatcherConfig};

    // 4 s SVIDs rotate about every 2 s; the task lives on.
    let (agent, _) = setup("task_svid_ttl = \"4s\"").await;
    let workload = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let mut stream = workload.stream_x509_contexts().await.unwrap();
    let resp = begin(&agent, begin_req(&["github/tool/list_pulls"])).await;
    let task = resp.task.unwrap();
    let first = x509_parser::parse_x509_certificate(&resp.svid.unwrap().x509_svid)
        .unwrap()
        .1
        .raw_serial_as_string()
        .replace(':', "");
    // Wait for a rotated SVID on the stream.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (rotated, rotated_not_after) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ctx = tokio::time::timeout(left, stream.next())
            .await
            .expect("the task SVID rotates")
            .unwrap()
            .unwrap();
        let Some(svid) = ctx
            .svids()
            .iter()
            .find(|s| s.hint() == Some(task.id.as_str()))
        else {
            continue;
        };
        let der = svid.leaf().as_bytes().to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let serial = cert.raw_serial_as_string().replace(':', "");
        if serial != first {
            break (serial, cert.validity().not_after.timestamp());
        }
    };
    tasks(&agent)
        .await
        .end_task(EndTaskRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap();

    let mut feed = feed(&agent).await;
    let set = feed.next().await.unwrap().unwrap();
    let entry = set.revoked.iter().find(|r| r.task_id == task.id).unwrap();
    assert!(entry.serials.contains(&rotated), "{:?}", entry.serials);
    assert!(
        entry.until_unix >= rotated_not_after,
        "kept until {} but the rotated SVID is valid until {rotated_not_after}",
        entry.until_unix
    );
    let (watcher, handle) = RevocationWatcher::spawn(WatcherConfig::new(&agent.workload));
    let deadline = Instant::now() + Duration::from_secs(5);
    while watcher.version() < set.version {
        assert!(Instant::now() < deadline, "the verifier never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let task_id = task.id.parse().unwrap();
    assert!(matches!(
        watcher.status(&task_id, &rotated),
        RevocationStatus::Revoked { .. }
    ));
    handle.shutdown().await;
}
