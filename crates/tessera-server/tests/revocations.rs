//! Cross-process: the cluster's revocation feed. `tessera-server` replicas on a real
//! PostgreSQL; nodes attest with join tokens and speak the Node API over real TLS as an
//! agent would: `ReportTaskEvents` on one replica, `FollowRevocations` on another; the
//! administrator's side through the admin socket.
//!
//! Needs the CLI binary: `cargo build -p tessera-cli --bins` first when run alone.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use tessera_identity::TaskId;
use tessera_pgtest::PgServer;
use tessera_proto::tessera::v1 as pb;
use tessera_proto::tessera::v1::node_client::NodeClient;
use tonic::Code;
use tonic::transport::Channel;
use x509_parser::prelude::{FromDer, X509Certificate};

mod support;
use support::*;

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn spiffe_id(task: &str) -> String {
    format!("spiffe://{TD}/client/reviewer/task/{task}")
}

fn begun(seq: u64, task: &str, consent: &str) -> pb::TaskEvent {
    pb::TaskEvent {
        seq,
        event: Some(pb::task_event::Event::Begun(pb::TaskBegun {
            task_id: task.to_owned(),
            spiffe_id: spiffe_id(task),
            client: "reviewer".into(),
            subject: "alice".into(),
            server: "github".into(),
            scopes: vec!["github/tool/get_pull_request".into()],
            consent_id: consent.to_owned(),
            begun_at_unix_ms: now_ms(),
            deadline_unix: now_ms() / 1000 + 600,
            serials: vec!["0a1b2c".into()],
        })),
    }
}

fn ended(seq: u64, task: &str) -> pb::TaskEvent {
    pb::TaskEvent {
        seq,
        event: Some(pb::task_event::Event::Ended(pb::TaskEnded {
            task_id: task.to_owned(),
            spiffe_id: spiffe_id(task),
            reason: "ended".into(),
            ended_at_unix_ms: now_ms(),
            serials: vec!["0a1b2c".into(), "0d0e0f".into()],
            until_unix: now_ms() / 1000 + 300,
        })),
    }
}

async fn report(
    node: &mut NodeClient<Channel>,
    events: Vec<pb::TaskEvent>,
) -> Result<u64, tonic::Status> {
    node.report_task_events(pb::ReportTaskEventsRequest { events })
        .await
        .map(|r| r.into_inner().acknowledged_seq)
}

/// The whole answer: what was acknowledged and what was rejected.
async fn report_answer(
    node: &mut NodeClient<Channel>,
    events: Vec<pb::TaskEvent>,
) -> pb::ReportTaskEventsResponse {
    node.report_task_events(pb::ReportTaskEventsRequest { events })
        .await
        .unwrap()
        .into_inner()
}

async fn follow(
    node: &mut NodeClient<Channel>,
    feed_id: &str,
    since_version: u64,
) -> tonic::Streaming<pb::RevocationUpdate> {
    node.follow_revocations(pb::FollowRevocationsRequest {
        feed_id: feed_id.to_owned(),
        since_version,
    })
    .await
    .unwrap()
    .into_inner()
}

/// The next message of a revocation stream, within the test's patience.
async fn next(stream: &mut tonic::Streaming<pb::RevocationUpdate>) -> pb::RevocationUpdate {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("a revocation update in time")
        .unwrap()
        .expect("the stream goes on")
}

/// A whole snapshot (every page): its messages.
async fn snapshot(
    stream: &mut tonic::Streaming<pb::RevocationUpdate>,
) -> Vec<pb::RevocationUpdate> {
    let mut pages = Vec::new();
    loop {
        let update = next(stream).await;
        let Some(pb::revocation_update::Update::Snapshot(page)) = &update.update else {
            panic!("expected a snapshot page, got {update:?}");
        };
        let more = page.more;
        pages.push(update);
        if !more {
            return pages;
        }
    }
}

fn snapshot_of(update: &pb::RevocationUpdate) -> &pb::RevocationSnapshot {
    match &update.update {
        Some(pb::revocation_update::Update::Snapshot(s)) => s,
        other => panic!("not a snapshot: {other:?}"),
    }
}

/// Reads deltas (skipping heartbeats) until one revokes `task`; returns it.
async fn delta_revoking(
    stream: &mut tonic::Streaming<pb::RevocationUpdate>,
    task: &str,
) -> (pb::RevocationUpdate, pb::RevocationDelta) {
    loop {
        let update = next(stream).await;
        match &update.update {
            Some(pb::revocation_update::Update::Delta(d)) => {
                if d.revoked.iter().any(|t| t.task_id == task) {
                    let d = d.clone();
                    return (update, d);
                }
            }
            Some(pb::revocation_update::Update::Heartbeat(_)) => {}
            other => panic!("expected a delta, got {other:?}"),
        }
    }
}

async fn grant(replica: &Replica) -> String {
    replica
        .admin()
        .await
        .grant_consent(pb::GrantConsentRequest {
            client: "reviewer".into(),
            subject: "alice".into(),
            server: "github".into(),
            scopes: vec!["github/tool/*".into()],
            ttl_secs: 3600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

async fn all_tasks(replica: &Replica) -> Vec<pb::Task> {
    replica
        .admin()
        .await
        .list_all_tasks(pb::ListAllTasksRequest {
            client: String::new(),
            include_ended: true,
        })
        .await
        .unwrap()
        .into_inner()
        .tasks
}

fn serial_of(der: &[u8]) -> String {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.raw_serial_as_string()
        .replace(':', "")
        .to_ascii_lowercase()
        .trim_start_matches('0')
        .to_owned()
}

/// A task begun and ended on node A (reported to replica one) reaches node B's stream
/// on replica two as a delta; a resend changes nothing; B may not end A's task; a bad
/// event is refused by name; B resuming on replica one with (feed id, version) gets only
/// the deltas after it, and with another feed id a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_ended_on_one_node_reaches_a_follower_on_another_replica_and_resumes_there() {
    let Some(pg) = PgServer::start_or_skip("tessera-server revocations").await else {
        return;
    };
    let database = database_name(&pg.create_database().await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    ca_init(&ca_dir, TD);
    let bundle = bundle_of(&ca_dir);
    let one = Replica::start(&pg, &database, dir.path(), &ca_dir, "one");
    let two = Replica::start(&pg, &database, dir.path(), &ca_dir, "two");
    let (_, _, mut a) = attested_node(&one, &bundle, "worker-a").await;
    let (_, _, mut b) = attested_node(&two, &bundle, "worker-b").await;
    let consent = grant(&one).await;

    let mut stream = follow(&mut b, "", 0).await;
    let first = snapshot(&mut stream).await;
    assert_eq!(first.len(), 1);
    let feed_id = first[0].feed_id.clone();
    assert!(!feed_id.is_empty());
    let start = snapshot_of(&first[0]);
    assert!(start.revoked.is_empty() && start.trust_domain == TD);
    assert!((first[0].current_as_of_unix_ms - now_ms()).abs() < 60_000);

    let task = TaskId::new().to_string();
    let events = vec![begun(1, &task, &consent), ended(2, &task)];
    assert_eq!(report(&mut a, events.clone()).await.unwrap(), 2);
    let (update, delta) = delta_revoking(&mut stream, &task).await;
    assert_eq!(update.feed_id, feed_id);
    assert_eq!(delta.from_version, start.version);
    let revoked = &delta.revoked[0];
    assert_eq!(
        (
            revoked.node.as_str(),
            revoked.reason.as_str(),
            revoked.spiffe_id.clone()
        ),
        ("worker-a", "ended", spiffe_id(&task))
    );
    assert_eq!(revoked.serials, vec!["0a1b2c", "0d0e0f"]);
    let after_first = delta.version;

    // At least once: the same events again are acknowledged and change nothing.
    assert_eq!(report(&mut a, events).await.unwrap(), 2);
    let tasks = all_tasks(&two).await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(
        (tasks[0].id.as_str(), tasks[0].end_reason.as_str()),
        (task.as_str(), "ended")
    );

    // A node may only report its own tasks: B's end of A's task is rejected by seq (the
    // task, already ended, stays A's and revoked), and does not refuse the request.
    let answer = report_answer(&mut b, vec![ended(1, &task)]).await;
    assert_eq!(answer.acknowledged_seq, 1);
    let [rejected] = &answer.rejected[..] else {
        panic!("{answer:?}");
    };
    assert_eq!(
        (rejected.seq, rejected.reason()),
        (1, pb::TaskEventRejection::TaskOfAnotherNode)
    );
    assert!(rejected.message.contains(&task), "{rejected:?}");
    let (_, contested) = delta_revoking(&mut stream, &task).await;
    assert_eq!(
        contested.from_version, after_first,
        "the resend published nothing"
    );
    assert_eq!(contested.revoked[0].node, "worker-a");
    assert_eq!(
        contested.revoked[0].reason, "ended",
        "an ended task keeps its first reason"
    );
    let after_first = contested.version;

    // B claiming a task A holds live: rejected, the task id revoked at once (contested),
    // audited naming both nodes; the task stays A's.
    let live = TaskId::new().to_string();
    assert_eq!(
        report(&mut a, vec![begun(3, &live, &consent)])
            .await
            .unwrap(),
        3
    );
    let answer = report_answer(&mut b, vec![begun(2, &live, &consent)]).await;
    assert_eq!(
        answer
            .rejected
            .iter()
            .map(|r| (r.seq, r.reason()))
            .collect::<Vec<_>>(),
        [(2, pb::TaskEventRejection::TaskOfAnotherNode)]
    );
    let (_, delta) = delta_revoking(&mut stream, &live).await;
    assert_eq!(delta.from_version, after_first);
    assert_eq!(
        (
            delta.revoked[0].reason.as_str(),
            delta.revoked[0].node.as_str()
        ),
        ("contested", "worker-a")
    );
    let after_first = delta.version;
    let held = all_tasks(&one).await;
    let held = held.iter().find(|t| t.id == live).unwrap();
    assert_eq!(held.end_reason, "contested");
    // Still A's: its own end of the task is taken without a word (a no-op: revoked).
    let answer = report_answer(&mut a, vec![ended(4, &live)]).await;
    assert_eq!((answer.acknowledged_seq, answer.rejected.len()), (4, 0));
    let audit = one
        .admin()
        .await
        .list_audit(pb::ListAuditRequest {
            after_seq: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    let contested: Vec<serde_json::Value> = audit
        .iter()
        .filter(|r| r.kind == "task.contested")
        .map(|r| serde_json::from_str(&r.detail_json).unwrap())
        .collect();
    assert_eq!(contested.len(), 2, "{audit:?}");
    let detail = contested
        .iter()
        .find(|d| d["task"] == live.as_str())
        .unwrap();
    assert_eq!(
        (&detail["owner"], &detail["node"]),
        (&"worker-a".into(), &"worker-b".into())
    );

    // Hostile input is rejected by name, and the rest of the request is stored.
    let good = TaskId::new().to_string();
    let mut foreign = ended(2, &TaskId::new().to_string());
    if let Some(pb::task_event::Event::Ended(e)) = &mut foreign.event {
        e.spiffe_id = e.spiffe_id.replace(TD, "evil.test");
    }
    let answer = report_answer(&mut a, vec![ended(1, &good), foreign]).await;
    assert_eq!(answer.acknowledged_seq, 2);
    let [rejected] = &answer.rejected[..] else {
        panic!("{answer:?}");
    };
    assert_eq!(
        (rejected.seq, rejected.reason()),
        (2, pb::TaskEventRejection::Malformed)
    );
    assert!(
        rejected.message.starts_with("event 1 (seq 2)"),
        "{rejected:?}"
    );
    assert!(all_tasks(&one).await.iter().any(|t| t.id == good));
    let (_, delta) = delta_revoking(&mut stream, &good).await;
    assert_eq!(delta.from_version, after_first);
    let after_first = delta.version;
    // A request that is wrong as a whole is still refused.
    let refused = report(&mut a, vec![ended(3, &good), ended(3, &good)])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    // The next revocation follows the one before directly.
    let second = TaskId::new().to_string();
    assert_eq!(report(&mut a, vec![ended(3, &second)]).await.unwrap(), 3);
    let (_, delta) = delta_revoking(&mut stream, &second).await;
    assert_eq!(delta.from_version, after_first);
    assert_eq!(delta.revoked.len(), 1);

    // Quiet: heartbeats at the stream's version, vouching for now.
    loop {
        let update = next(&mut stream).await;
        if let Some(pb::revocation_update::Update::Heartbeat(h)) = update.update {
            assert_eq!(h.version, delta.version);
            assert!((update.current_as_of_unix_ms - now_ms()).abs() < 10_000);
            break;
        }
    }

    // Moving to replica one with (feed id, version): only what came after, no snapshot.
    let mut a_follows = follow(&mut a, &feed_id, after_first).await;
    let update = next(&mut a_follows).await;
    let Some(pb::revocation_update::Update::Delta(resumed)) = update.update else {
        panic!("a resumed stream starts with the deltas after its version: {update:?}");
    };
    assert_eq!(resumed.from_version, after_first);
    assert_eq!(
        resumed
            .revoked
            .iter()
            .map(|t| t.task_id.clone())
            .collect::<Vec<_>>(),
        vec![second.clone()]
    );
    // Up to date already: a heartbeat, not a snapshot.
    let mut current = follow(&mut a, &feed_id, delta.version).await;
    assert!(matches!(
        next(&mut current).await.update,
        Some(pb::revocation_update::Update::Heartbeat(_))
    ));
    // Another feed id (another database): a snapshot holding both.
    let mut other = follow(&mut a, "some-other-feed", after_first).await;
    let pages = snapshot(&mut other).await;
    let ids: BTreeSet<String> = pages
        .iter()
        .flat_map(|p| snapshot_of(p).revoked.iter().map(|t| t.task_id.clone()))
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from([task.clone(), live.clone(), good.clone(), second.clone()])
    );

    let metrics = one.metrics();
    for line in [
        "tessera_server_report_batches_total 6",
        "tessera_server_revocations_published_total 3",
        "tessera_server_task_events_rejected_total{reason=\"malformed\"} 1",
        "tessera_server_node_calls_total{rpc=\"ReportTaskEvents\",code=\"InvalidArgument\"} 1",
        "tessera_server_revocation_stream_up 1",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    // Node B, on replica two, was rejected there and followed there.
    let metrics = two.metrics();
    for line in [
        "tessera_server_task_events_rejected_total{reason=\"task_of_another_node\"} 2",
        "tessera_server_revocation_deltas_sent_total 5",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
}

/// Revocations the server makes itself reach followers at once: a task begun under a
/// consent withdrawn (or unknown) at the server, `RevokeTask` of a live task (NOT_FOUND for
/// an unknown one), `WithdrawConsent` ending the tasks reported under it (its answer
/// lists them), and `EvictNode` publishing every CA of the node (current and renewed-away),
/// which also ends the evicted node's own stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_revocations_and_evictions_are_published_at_once() {
    let Some(pg) = PgServer::start_or_skip("tessera-server revocations").await else {
        return;
    };
    let database = database_name(&pg.create_database().await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    ca_init(&ca_dir, TD);
    let bundle = bundle_of(&ca_dir);
    let one = Replica::start(&pg, &database, dir.path(), &ca_dir, "one");
    let two = Replica::start(&pg, &database, dir.path(), &ca_dir, "two");
    let (keys_a, creds_a, mut a) = attested_node(&one, &bundle, "worker-a").await;
    let (_, _, mut b) = attested_node(&two, &bundle, "worker-b").await;
    let mut stream = follow(&mut b, "", 0).await;
    snapshot(&mut stream).await;
    let mut admin = one.admin().await;

    // Live tasks under a consent, then the consent withdrawn at the server.
    let consent = grant(&one).await;
    let (t1, t2) = (TaskId::new().to_string(), TaskId::new().to_string());
    report(
        &mut a,
        vec![begun(1, &t1, &consent), begun(2, &t2, &consent)],
    )
    .await
    .unwrap();
    let withdrawn = admin
        .withdraw_consent(pb::WithdrawConsentRequest {
            id: consent.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        withdrawn
            .ended_tasks
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([t1.clone(), t2.clone()])
    );
    let (_, delta) = delta_revoking(&mut stream, &t1).await;
    assert!(
        delta
            .revoked
            .iter()
            .all(|t| t.reason == "consent_withdrawn" && t.node == "worker-a")
    );
    assert_eq!(delta.revoked.len(), 2, "one transaction, one version");

    // A node that had not heard yet begins a task under it: revoked as it is stored.
    let late = TaskId::new().to_string();
    report(&mut a, vec![begun(3, &late, &consent)])
        .await
        .unwrap();
    let (_, delta) = delta_revoking(&mut stream, &late).await;
    assert_eq!(delta.revoked[0].reason, "consent_withdrawn");
    // Under a consent the server never granted: the same.
    let unknown = TaskId::new().to_string();
    report(
        &mut a,
        vec![begun(4, &unknown, "01JXXXXXXXXXXXXXXXXXXXXXXX")],
    )
    .await
    .unwrap();
    delta_revoking(&mut stream, &unknown).await;

    // RevokeTask of a live task, while its node is nowhere near this replica.
    let live_consent = grant(&two).await;
    let live = TaskId::new().to_string();
    report(&mut a, vec![begun(5, &live, &live_consent)])
        .await
        .unwrap();
    let listed = all_tasks(&two).await;
    let live_row = listed.iter().find(|t| t.id == live).unwrap();
    assert_eq!(live_row.ended_at_unix, 0);
    let mut admin_two = two.admin().await;
    let revoked = admin_two
        .revoke_task(pb::RevokeTaskRequest {
            task_id: live.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(revoked.end_reason, "revoked");
    let (_, delta) = delta_revoking(&mut stream, &live).await;
    assert_eq!(delta.revoked[0].reason, "revoked");
    let missing = admin_two
        .revoke_task(pb::RevokeTaskRequest {
            task_id: TaskId::new().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // The node's own end of it later is a no-op: the server's reason stands.
    report(&mut a, vec![ended(6, &live)]).await.unwrap();
    let row = all_tasks(&one)
        .await
        .into_iter()
        .find(|t| t.id == live)
        .unwrap();
    assert_eq!(row.end_reason, "revoked");

    // Eviction publishes every CA of the node still valid: the first and the renewed one.
    let first_ca = serial_of(&creds_a.node_ca_chain[0]);
    let renewed = a
        .renew(keys_a.renew())
        .await
        .unwrap()
        .into_inner()
        .credentials
        .unwrap();
    let second_ca = serial_of(&renewed.node_ca_chain[0]);
    assert_ne!(first_ca, second_ca);
    // A task of the node still live when it is evicted ends with it, in the same delta:
    // an access token issued for it carries no chain to refuse.
    let on_evicted = TaskId::new().to_string();
    report(&mut a, vec![begun(7, &on_evicted, &live_consent)])
        .await
        .unwrap();
    let mut a_stream = follow(&mut a, "", 0).await;
    snapshot(&mut a_stream).await;
    one.cli(&["node", "evict", "worker-a"]);
    let serials: BTreeSet<String> = loop {
        let update = next(&mut stream).await;
        if let Some(pb::revocation_update::Update::Delta(d)) = update.update
            && !d.revoked_node_cas.is_empty()
        {
            assert!(
                d.revoked_node_cas
                    .iter()
                    .all(|c| c.node == "worker-a" && c.until_unix > 0)
            );
            let ended: Vec<(&str, &str)> = d
                .revoked
                .iter()
                .map(|t| (t.task_id.as_str(), t.reason.as_str()))
                .collect();
            assert_eq!(ended, [(on_evicted.as_str(), "node_evicted")]);
            break d
                .revoked_node_cas
                .iter()
                .map(|c| c.serial.trim_start_matches('0').to_owned())
                .collect();
        }
    };
    assert_eq!(serials, BTreeSet::from([first_ca, second_ca]));
    // The evicted node's own stream ends.
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "stream not ended by eviction");
        match tokio::time::timeout(PATIENCE, a_stream.message())
            .await
            .unwrap()
        {
            Err(status) => {
                assert_eq!(status.code(), Code::PermissionDenied);
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("stream ended without a status"),
        }
    }

    // Every server-side revocation left an audit record naming who made it.
    let audit = admin
        .list_audit(pb::ListAuditRequest {
            after_seq: 0,
            limit: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    let kinds: Vec<&str> = audit.iter().map(|r| r.kind.as_str()).collect();
    for kind in [
        "task.report",
        "task.revoke",
        "consent.withdraw",
        "node.evict",
    ] {
        assert!(kinds.contains(&kind), "{kind} not in {kinds:?}");
    }
    let withdraw = audit.iter().find(|r| r.kind == "consent.withdraw").unwrap();
    assert!(withdraw.detail_json.contains(&t1));
}

/// A begin racing the withdrawal of its consent is revoked by one of the two, never by
/// neither: after both answered, the task is ended and on the feed, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_racing_a_withdrawal_is_always_revoked() {
    let Some(pg) = PgServer::start_or_skip("tessera-server revocations").await else {
        return;
    };
    let database = database_name(&pg.create_database().await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    ca_init(&ca_dir, TD);
    let bundle = bundle_of(&ca_dir);
    let one = Replica::start(&pg, &database, dir.path(), &ca_dir, "one");
    let two = Replica::start(&pg, &database, dir.path(), &ca_dir, "two");
    let (_, _, a) = attested_node(&one, &bundle, "worker-a").await;
    let (_, _, mut b) = attested_node(&two, &bundle, "worker-b").await;

    let mut raced = Vec::new();
    for round in 0..20u64 {
        let consent = grant(&two).await;
        let task = TaskId::new().to_string();
        let mut reporter = a.clone();
        let event = begun(round + 1, &task, &consent);
        let reported = tokio::spawn(async move { report(&mut reporter, vec![event]).await });
        let mut admin = two.admin().await;
        let withdrawn = admin
            .withdraw_consent(pb::WithdrawConsentRequest { id: consent })
            .await
            .unwrap()
            .into_inner();
        reported.await.unwrap().unwrap();
        raced.push((task, withdrawn.ended_tasks));
    }
    let by_withdrawal = raced.iter().filter(|(t, ended)| ended.contains(t)).count();
    eprintln!(
        "{by_withdrawal} of 20 raced begins were ended by the withdrawal, the rest as stored"
    );

    let tasks = all_tasks(&one).await;
    let mut stream = follow(&mut b, "", 0).await;
    let revoked: BTreeSet<String> = snapshot(&mut stream)
        .await
        .iter()
        .flat_map(|p| snapshot_of(p).revoked.iter().map(|t| t.task_id.clone()))
        .collect();
    for (task, _) in &raced {
        let row = tasks.iter().find(|t| &t.id == task).expect("stored");
        assert_eq!(row.end_reason, "consent_withdrawn", "{task}");
        assert!(revoked.contains(task), "{task} not on the feed");
    }
}

/// While PostgreSQL is down a replica stops vouching (`current_as_of` stops advancing, so
/// the agents' verifiers go stale and fail closed) and refuses reports with UNAVAILABLE
/// (the agent keeps them and retries); once PostgreSQL is back it recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stops_vouching_while_postgres_is_down_and_recovers_by_itself() {
    let Some(mut pg) = PgServer::start_or_skip("tessera-server revocations").await else {
        return;
    };
    let database = database_name(&pg.create_database().await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    ca_init(&ca_dir, TD);
    let bundle = bundle_of(&ca_dir);
    let one = Replica::start(&pg, &database, dir.path(), &ca_dir, "one");
    let (_, _, mut a) = attested_node(&one, &bundle, "worker-a").await;
    let mut stream = follow(&mut a, "", 0).await;
    let first = snapshot(&mut stream).await;
    let version = snapshot_of(&first[0]).version;

    pg.stop().await.unwrap();
    let stopped_at = now_ms();
    // Refused, not lost: the agent keeps the events and retries.
    let task = TaskId::new().to_string();
    let down = report(&mut a, vec![ended(1, &task)]).await.unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");

    // Heartbeats go on, but the time they vouch for stops: two seconds of heartbeats
    // carrying the same `current_as_of`, behind the moment PostgreSQL went away plus the
    // vouching window.
    let deadline = Instant::now() + PATIENCE;
    let frozen = loop {
        assert!(Instant::now() < deadline, "current_as_of never stopped");
        let update = next(&mut stream).await;
        let at = update.current_as_of_unix_ms;
        let held_since = Instant::now();
        let mut same = true;
        while held_since.elapsed() < Duration::from_secs(2) {
            let later = next(&mut stream).await;
            assert!(later.current_as_of_unix_ms >= at, "never moves back");
            if later.current_as_of_unix_ms != at {
                same = false;
                break;
            }
        }
        if same {
            break at;
        }
    };
    assert!(
        frozen <= stopped_at + i64::try_from(tessera_server::VOUCH_WINDOW.as_millis()).unwrap(),
        "vouched for {frozen}, PostgreSQL stopped at {stopped_at}"
    );
    assert!(
        one.metrics()
            .contains("tessera_server_revocation_stream_up 0")
    );

    pg.start_again().await.unwrap();
    // Reports succeed again (the agent's retry), and the replica vouches for now again.
    let deadline = Instant::now() + PATIENCE;
    loop {
        match report(&mut a, vec![ended(1, &task)]).await {
            Ok(seq) => {
                assert_eq!(seq, 1);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(Instant::now() < deadline, "reports never recovered");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let restarted_at = now_ms();
    let (update, delta) = delta_revoking(&mut stream, &task).await;
    assert_eq!(delta.from_version, version);
    let deadline = Instant::now() + PATIENCE;
    let mut latest = update.current_as_of_unix_ms;
    while latest < restarted_at {
        assert!(Instant::now() < deadline, "never vouched again: {latest}");
        latest = next(&mut stream).await.current_as_of_unix_ms;
    }
}

/// A set too large for one message comes as snapshot pages, each under 1 MiB, all of one
/// version, every one but the last with `more`, together holding every revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_20000_revocations_is_paged_under_one_mebibyte() {
    let Some(pg) = PgServer::start_or_skip("tessera-server revocations").await else {
        return;
    };
    let database = database_name(&pg.create_database().await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    ca_init(&ca_dir, TD);
    let bundle = bundle_of(&ca_dir);
    let one = Replica::start(&pg, &database, dir.path(), &ca_dir, "one");
    let (_, _, mut a) = attested_node(&one, &bundle, "worker-a").await;
    let mut all = BTreeSet::new();
    let mut seq = 0;
    for _ in 0..20 {
        let events: Vec<_> = (0..1000)
            .map(|_| {
                seq += 1;
                let task = TaskId::new().to_string();
                all.insert(task.clone());
                ended(seq, &task)
            })
            .collect();
        assert_eq!(report(&mut a, events).await.unwrap(), seq);
    }
    // The copy applies the last report a moment after it is acknowledged: follow again
    // until the snapshot holds it.
    let deadline = Instant::now() + PATIENCE;
    let pages = loop {
        let mut stream = follow(&mut a, "", 0).await;
        let pages = snapshot(&mut stream).await;
        let count: usize = pages.iter().map(|p| snapshot_of(p).revoked.len()).sum();
        if count == all.len() {
            break pages;
        }
        assert!(
            Instant::now() < deadline,
            "the copy holds {count} of {}",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(pages.len() > 1, "{} pages", pages.len());
    let version = snapshot_of(&pages[0]).version;
    let mut seen = BTreeSet::new();
    for (i, page) in pages.iter().enumerate() {
        let len = page.encoded_len();
        assert!(len < 1024 * 1024, "page {i} is {len} bytes");
        let s = snapshot_of(page);
        assert_eq!(s.version, version);
        assert_eq!(s.more, i + 1 < pages.len());
        seen.extend(s.revoked.iter().map(|t| t.task_id.clone()));
    }
    assert_eq!(seen, all);
    eprintln!(
        "20,000 revocations: {} snapshot pages, {} bytes",
        pages.len(),
        pages.iter().map(|p| p.encoded_len()).sum::<usize>()
    );
}
