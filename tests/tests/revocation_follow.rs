//! `Revocations.Follow` on a real agent process, through its real Workload API socket,
//! with a client generated from the proto (tonic): a snapshot, then one small delta per
//! EndTask whatever the size of the set, heartbeats that say how current the feed is,
//! resuming by feed id and version, and a snapshot again from a restarted agent.

#[path = "support/tasks.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use prost::Message;
use support::{begin, begin_req, setup, tasks};
use tessera_e2e::TestAgent;
use tessera_proto::tessera::v1::revocations_client::RevocationsClient;
use tessera_proto::tessera::v1::{
    EndTaskRequest, FollowRevocationsRequest, RevocationUpdate, revocation_update,
};

const SCOPES: &[&str] = &["github/tool/get_pull_request"];

/// Fast heartbeats, so the tests see them without waiting a second each.
const CONFIG: &str = "revocation_heartbeat_interval = \"200ms\"";

async fn follow(
    agent: &TestAgent,
    feed_id: &str,
    since: u64,
) -> tonic::Streaming<RevocationUpdate> {
    RevocationsClient::new(TestAgent::channel(&agent.workload).await.unwrap())
        .follow(FollowRevocationsRequest {
            feed_id: feed_id.into(),
            since_version: since,
        })
        .await
        .expect("Follow is served")
        .into_inner()
}

async fn next(stream: &mut tonic::Streaming<RevocationUpdate>) -> RevocationUpdate {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("an update within 20 s")
        .expect("the stream is open")
        .expect("an update, not an error")
}

/// The next update that is not a heartbeat.
async fn next_change(stream: &mut tonic::Streaming<RevocationUpdate>) -> RevocationUpdate {
    loop {
        let u = next(stream).await;
        if !matches!(u.update, Some(revocation_update::Update::Heartbeat(_))) {
            return u;
        }
    }
}

/// Begins a task and ends it; returns its id.
async fn begin_and_end(agent: &TestAgent) -> String {
    let id = begin(agent, begin_req(SCOPES)).await.task.unwrap().id;
    tasks(agent)
        .await
        .end_task(EndTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap();
    id
}

/// Reads a whole (possibly paged) snapshot; returns its version and entry count.
async fn read_snapshot(stream: &mut tonic::Streaming<RevocationUpdate>) -> (String, u64, usize) {
    let mut entries = 0;
    loop {
        let u = next_change(stream).await;
        let Some(revocation_update::Update::Snapshot(s)) = u.update else {
            panic!("a snapshot first, got {u:?}")
        };
        entries += s.revoked.len();
        if !s.more {
            return (u.feed_id, s.version, entries);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_gets_a_snapshot_then_one_small_delta_per_end_task_whatever_the_set_size() {
    let (agent, _consent) = setup(CONFIG).await;
    let mut feed = follow(&agent, "", 0).await;
    let (feed_id, mut version, entries) = read_snapshot(&mut feed).await;
    assert_eq!(entries, 0);

    // With one revocation in the set.
    let first = begin_and_end(&agent).await;
    let u = next_change(&mut feed).await;
    let Some(revocation_update::Update::Delta(d)) = &u.update else {
        panic!("a delta after EndTask, got {u:?}")
    };
    assert_eq!((d.from_version, d.revoked.len()), (version, 1));
    assert_eq!(d.revoked[0].task_id, first);
    assert!(
        !d.revoked[0].serials.is_empty(),
        "it names the task's serials"
    );
    assert_eq!(u.feed_id, feed_id);
    let small = u.encoded_len();
    version = d.version;

    // Grow the set a hundredfold; each end is one delta of its own.
    for _ in 0..100 {
        begin_and_end(&agent).await;
        let u = next_change(&mut feed).await;
        let Some(revocation_update::Update::Delta(d)) = u.update else {
            panic!("a delta, got {u:?}")
        };
        assert_eq!(
            d.from_version, version,
            "deltas come in order, none skipped"
        );
        version = d.version;
    }
    let last = begin_and_end(&agent).await;
    let u = next_change(&mut feed).await;
    let Some(revocation_update::Update::Delta(d)) = &u.update else {
        panic!("a delta, got {u:?}")
    };
    assert_eq!(d.revoked[0].task_id, last);
    let large = u.encoded_len();
    // Serials are random: their hex may differ in length by a digit or two.
    assert!(
        large <= small + 8,
        "an EndTask costs {large} bytes per follower with 102 revocations, {small} with 1"
    );

    // A new follower gets all of it in a snapshot, bigger by far than a delta.
    let mut fresh = follow(&agent, "", 0).await;
    let (_, _, entries) = read_snapshot(&mut fresh).await;
    assert_eq!(entries, 102);
    eprintln!("Follow bytes per EndTask per follower: {small} with 1 revocation, {large} with 102");

    // Heartbeats carry how current the feed is: a standalone agent's own now.
    let beat = loop {
        let u = next(&mut feed).await;
        if matches!(u.update, Some(revocation_update::Update::Heartbeat(_))) {
            break u;
        }
    };
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    assert!(
        (now_ms - beat.current_as_of_unix_ms).abs() < 5_000,
        "current_as_of {} is not about now {now_ms}",
        beat.current_as_of_unix_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_resumes_by_version_and_a_restarted_agent_sends_a_new_snapshot() {
    let (mut agent, _consent) = setup(CONFIG).await;
    let before = begin_and_end(&agent).await;
    let mut feed = follow(&agent, "", 0).await;
    let (feed_id, version, entries) = read_snapshot(&mut feed).await;
    assert_eq!(entries, 1);
    drop(feed);

    // Missed while away: two ends.
    let a = begin_and_end(&agent).await;
    let b = begin_and_end(&agent).await;
    let mut resumed = follow(&agent, &feed_id, version).await;
    let mut got = Vec::new();
    let mut at = version;
    while got.len() < 2 {
        let u = next_change(&mut resumed).await;
        let Some(revocation_update::Update::Delta(d)) = u.update else {
            panic!("only the missed deltas, no snapshot: {u:?}")
        };
        assert_eq!(d.from_version, at);
        at = d.version;
        got.extend(d.revoked.into_iter().map(|r| r.task_id));
    }
    assert_eq!(got, [a.clone(), b.clone()]);
    drop(resumed);

    // In step: nothing but heartbeats, at the version the follower holds.
    let mut in_step = follow(&agent, &feed_id, at).await;
    let u = next(&mut in_step).await;
    let Some(revocation_update::Update::Heartbeat(h)) = u.update else {
        panic!("a heartbeat for a follower in step, got {u:?}")
    };
    assert_eq!(h.version, at);
    drop(in_step);

    // kill -9 and start again: another incarnation of the feed, so the follower's
    // version means nothing there; it gets a snapshot, with every end still in force.
    agent.kill();
    agent.spawn().await.unwrap();
    let started = Instant::now();
    let mut after = follow(&agent, &feed_id, at).await;
    let first = next_change(&mut after).await;
    assert_ne!(
        first.feed_id, feed_id,
        "a restarted agent's feed is a new one"
    );
    let Some(revocation_update::Update::Snapshot(s)) = first.update else {
        panic!("a snapshot from a restarted agent, got {first:?}")
    };
    assert!(!s.more);
    let ids: Vec<&str> = s.revoked.iter().map(|r| r.task_id.as_str()).collect();
    for id in [&before, &a, &b] {
        assert!(
            ids.contains(&id.as_str()),
            "{id} revoked before the restart is still: {ids:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(30));
}
