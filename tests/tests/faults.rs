//! Faults: the agent killed with SIGKILL while tasks begin and end, then
//! restarted. The store stays consistent and no revoked task comes back.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use tessera_e2e::TestAgent;
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
