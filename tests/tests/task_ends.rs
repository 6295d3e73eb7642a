//! Every way a task ends (EndTask, its deadline, its consent withdrawn, an admin
//! revoke, its process exiting, its client's entry deleted) removing its SVID from the
//! stream and putting it on the feed, durably, for every SVID it was issued.

#[path = "support/tasks.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use tessera_e2e::{TRUST_DOMAIN, TestAgent};
use tessera_proto::tessera::v1::{
    EndTaskRequest, ListAllTasksRequest, RevokeTaskRequest, WithdrawConsentRequest,
};

use support::{
    SUBJECT, await_dropped, await_revoked, begin, begin_req, feed, grant, live_task_ids, setup,
    tasks,
};

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
