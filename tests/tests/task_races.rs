//! Tasks begun and ended concurrently, and calls abandoned by their callers halfway:
//! the store stays consistent and no task is left that cannot end.

#[path = "support/tasks.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use tessera_e2e::TestAgent;
use tessera_proto::tessera::v1::tasks_client::TasksClient;
use tessera_proto::tessera::v1::{
    BeginTaskRequest, EndTaskRequest, ListAllTasksRequest, RevocationSet, WithdrawConsentRequest,
};

use support::{await_revoked, begin, begin_req, feed, live_task_ids, setup, tasks};

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
