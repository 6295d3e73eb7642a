//! Faults: the agent killed with SIGKILL while tasks begin and end, then
//! restarted. The store stays consistent and no revoked task comes back; an MCP
//! server that loses the revocation feed fails closed, then recovers.

#[path = "support/mcp.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use support::{Env, Trust, args, audit, begin, connect};
use tessera_e2e::TestAgent;
use tessera_example_agent_runtime::{CallOutcome, McpConnection};
use tessera_proto::tessera::v1::revocations_client::RevocationsClient;
use tessera_proto::tessera::v1::tasks_client::TasksClient;
use tessera_proto::tessera::v1::{
    BeginTaskRequest, EndTaskRequest, GrantConsentRequest, ListAllTasksRequest,
    WatchRevocationsRequest,
};

fn begin_req() -> BeginTaskRequest {
    BeginTaskRequest {
        purpose: "fault test".into(),
        subject: "alice".into(),
        server: "github".into(),
        scopes: vec!["github/tool/list_pulls".into()],
        lifetime_secs: 0,
        client: String::new(),
        bind_to_parent: false,
    }
}

#[tokio::test]
async fn sigkill_during_begin_and_end_leaves_a_consistent_store() {
    let mut agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    agent
        .admin_client()
        .await
        .unwrap()
        .grant_consent(GrantConsentRequest {
            client: "code-reviewer".into(),
            subject: "alice".into(),
            server: "github".into(),
            scopes: vec!["github/tool/*".into()],
            expires_at_unix: 0,
            ttl_secs: 3600,
        })
        .await
        .unwrap();

    // What callers were told: task id -> "ended" acknowledged or not.
    let mut acknowledged_end: HashMap<String, bool> = HashMap::new();
    for round in 0..4u64 {
        let mut workers = Vec::new();
        for _ in 0..4 {
            let channel = TestAgent::channel(&agent.workload).await.unwrap();
            workers.push(tokio::spawn(async move {
                let mut client = TasksClient::new(channel);
                let mut seen = Vec::new();
                loop {
                    let Ok(resp) = client.begin_task(begin_req()).await else {
                        break;
                    };
                    let id = resp.into_inner().task.unwrap().id;
                    let ended = client
                        .end_task(EndTaskRequest {
                            task_id: id.clone(),
                        })
                        .await
                        .is_ok();
                    seen.push((id, ended));
                    if !ended {
                        break;
                    }
                }
                seen
            }));
        }
        // Kill at a different point in each round.
        tokio::time::sleep(Duration::from_millis(150 + 97 * round)).await;
        agent.kill();
        for w in workers {
            for (id, ended) in w.await.unwrap() {
                acknowledged_end.insert(id, ended);
            }
        }
        agent.spawn().await.unwrap();

        // After restart: nothing is live, every task ever begun is listed as ended,
        // and every acknowledged end is still there with its reason.
        let tasks = agent
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
        let by_id: HashMap<&str, &tessera_proto::tessera::v1::Task> =
            tasks.iter().map(|t| (t.id.as_str(), t)).collect();
        assert!(
            tasks.iter().all(|t| t.ended_at_unix > 0),
            "round {round}: a task survived the crash live"
        );
        for (id, ended) in &acknowledged_end {
            let t = by_id
                .get(id.as_str())
                .unwrap_or_else(|| panic!("round {round}: begun task {id} lost"));
            if *ended {
                assert_eq!(
                    t.end_reason, "ended",
                    "round {round}: {id} was acknowledged as ended"
                );
            }
        }
        // Every ended task is on the revocation feed.
        let mut feed = RevocationsClient::new(TestAgent::channel(&agent.workload).await.unwrap())
            .watch(WatchRevocationsRequest {})
            .await
            .unwrap()
            .into_inner();
        let set = feed.next().await.unwrap().unwrap();
        for t in &tasks {
            assert!(
                set.revoked.iter().any(|r| r.task_id == t.id),
                "round {round}: ended task {} missing from the revocation feed",
                t.id
            );
        }
    }
    assert!(
        acknowledged_end.len() > 4,
        "the test should have begun tasks"
    );
}

async fn call_once(conn: &McpConnection) -> CallOutcome {
    conn.call(
        "get_pull_request",
        args(json!({"repo": "acme/api", "number": 7})),
    )
    .await
}

/// Calls `get_pull_request` every 50 ms until `done` holds for the outcome or `within`
/// passes; returns the outcome and when it came.
async fn call_until(
    conn: &McpConnection,
    within: Duration,
    done: impl Fn(&CallOutcome) -> bool,
) -> (CallOutcome, Instant) {
    let deadline = Instant::now() + within;
    loop {
        let out = call_once(conn).await;
        if done(&out) {
            return (out, Instant::now());
        }
        assert!(Instant::now() < deadline, "still {out:?} after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn losing_the_revocation_feed_fails_closed_after_the_staleness_bound_and_recovers() {
    const STALENESS: Duration = Duration::from_secs(2);
    let mut env = Env::start(Trust::Workload, &["--revocation-staleness-secs", "2"])
        .await
        .unwrap();
    let (_w, old_task, cred) = begin(&env, &["github/tool/get_pull_request"]).await;
    let conn = connect(&env, &cred).await;
    let out = call_once(&conn).await;
    assert!(out.is_ok(), "{out:?}");

    // The agent dies: the server keeps its last revocation set for the staleness bound.
    env.agent.kill();
    let killed = Instant::now();
    let out = call_once(&conn).await;
    assert!(
        out.is_ok(),
        "refused at once, before the staleness bound: {out:?}"
    );
    // ... and then refuses task credentials, saying why.
    let (out, refused) = call_until(&conn, STALENESS * 4, |o| !o.is_ok()).await;
    assert_eq!(
        out.denial_reason(),
        Some("revocation_feed_stale"),
        "{out:?}\nserver log:\n{}",
        env.server.log_text()
    );
    let after = refused - killed;
    assert!(
        after >= STALENESS - Duration::from_millis(100),
        "refused after {after:?}, before the {STALENESS:?} bound"
    );
    eprintln!("feed lost -> refusal: {after:?} (bound {STALENESS:?})");
    assert!(
        audit(&env)
            .iter()
            .any(|e| e["reason"] == "revocation_feed_stale"
                && e["task"] == old_task.id.as_str()
                && e["decision"] == "deny"),
        "the stale refusal is audited"
    );

    // The agent comes back. The task that was live at the crash is revoked on restart
    // (agent_restart), so once the watcher has reconnected its calls are refused as
    // revoked, on the same open connection.
    env.agent.spawn().await.unwrap();
    let restarted = Instant::now();
    let (out, back) = call_until(&conn, Duration::from_secs(15), |o| {
        o.denial_reason() != Some("revocation_feed_stale")
    })
    .await;
    assert_eq!(out.denial_reason(), Some("revoked"), "{out:?}");
    eprintln!("agent ready again -> feed current: {:?}", back - restarted);
    conn.close().await;

    // A task begun after the restart, on a new connection, is served again.
    let (_w2, new_task, cred) = begin(&env, &["github/tool/get_pull_request"]).await;
    assert_ne!(new_task.id, old_task.id);
    let conn = connect(&env, &cred).await;
    let out = call_once(&conn).await;
    assert!(out.is_ok(), "{out:?}");
    conn.close().await;
    let events = audit(&env);
    assert!(
        events
            .iter()
            .any(|e| e["task"] == new_task.id.as_str() && e["decision"] == "allow"),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["task"] == old_task.id.as_str() && e["reason"] == "revoked"),
        "{events:#?}"
    );
}
