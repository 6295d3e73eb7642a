//! The server feed's follower against a real task manager (real CA, real SQLite store,
//! cluster mode): what each message of the protocol does to the local feed, to live
//! tasks and to the journal.

use prost::Message;
use tessera_proto::tessera::v1::{RevocationDelta, RevocationHeartbeat};

use super::*;
use crate::tasks::{Entitlement, Fixture, fixture_with, test_request};

const NODE: &str = "spiffe://tasks.test/node/a";

fn revoked(id: &str, reason: &str) -> RevokedTask {
    RevokedTask {
        task_id: id.into(),
        spiffe_id: format!("spiffe://tasks.test/client/other/task/{id}"),
        serials: vec!["0f".into()],
        reason: reason.into(),
        revoked_at_unix_ms: 1,
        until_unix: i64::MAX / 2,
        node: "spiffe://tasks.test/node/b".into(),
    }
}

fn update(feed: &str, as_of: i64, u: revocation_update::Update) -> RevocationUpdate {
    RevocationUpdate {
        feed_id: feed.into(),
        update: Some(u),
        current_as_of_unix_ms: as_of,
    }
}

fn snapshot(version: u64, tasks: Vec<RevokedTask>, more: bool) -> revocation_update::Update {
    revocation_update::Update::Snapshot(RevocationSnapshot {
        version,
        trust_domain: "tasks.test".into(),
        revoked: tasks,
        revoked_node_cas: Vec::new(),
        more,
    })
}

fn delta(from: u64, to: u64, tasks: Vec<RevokedTask>) -> revocation_update::Update {
    revocation_update::Update::Delta(RevocationDelta {
        from_version: from,
        version: to,
        revoked: tasks,
        revoked_node_cas: Vec::new(),
    })
}

async fn setup() -> (Fixture, ServerCopy) {
    let f = fixture_with(Some(NODE)).await;
    let copy = ServerCopy::new(Arc::clone(&f.manager), Arc::new(Metrics::default()));
    (f, copy)
}

#[tokio::test]
async fn a_paged_snapshot_then_deltas_merge_in_and_only_a_complete_copy_vouches() {
    let (f, copy) = setup().await;
    let feed = f.manager.feed();
    let (mut position, mut pending) = (Position::default(), None);
    copy.apply(
        update("s1", 1_000, snapshot(7, vec![revoked("a", "ended")], true)),
        &mut position,
        &mut pending,
    )
    .await
    .unwrap();
    assert!(!feed.contains("a"), "nothing applied before the last page");
    assert_eq!(
        feed.current_as_of_ms(),
        0,
        "a partial snapshot vouches for nothing"
    );
    copy.apply(
        update("s1", 2_000, snapshot(7, vec![revoked("b", "ended")], false)),
        &mut position,
        &mut pending,
    )
    .await
    .unwrap();
    assert!(feed.contains("a") && feed.contains("b"));
    assert_eq!(feed.current_as_of_ms(), 2_000);
    assert_eq!((position.feed_id.as_str(), position.version), ("s1", 7));

    copy.apply(
        update("s1", 3_000, delta(7, 8, vec![revoked("c", "revoked")])),
        &mut position,
        &mut pending,
    )
    .await
    .unwrap();
    assert!(feed.contains("c"));
    assert_eq!(position.version, 8);
    copy.apply(
        update(
            "s1",
            4_000,
            revocation_update::Update::Heartbeat(RevocationHeartbeat { version: 8 }),
        ),
        &mut position,
        &mut pending,
    )
    .await
    .unwrap();
    assert_eq!(feed.current_as_of_ms(), 4_000, "heartbeats keep it moving");
}

#[tokio::test]
async fn a_gap_or_a_heartbeat_out_of_step_drops_the_stream_without_vouching() {
    let (f, copy) = setup().await;
    let (mut position, mut pending) = (Position::default(), None);
    let early = copy
        .apply(
            update("s1", 1_000, delta(0, 1, vec![revoked("a", "ended")])),
            &mut position,
            &mut pending,
        )
        .await;
    assert!(matches!(early, Err(FollowError::Gap(_))), "{early:?}");
    copy.apply(
        update("s1", 1_000, snapshot(3, Vec::new(), false)),
        &mut position,
        &mut pending,
    )
    .await
    .unwrap();
    let skipped = copy
        .apply(
            update("s1", 2_000, delta(4, 5, vec![revoked("a", "ended")])),
            &mut position,
            &mut pending,
        )
        .await;
    assert!(matches!(skipped, Err(FollowError::Gap(_))), "{skipped:?}");
    assert!(!f.manager.feed().contains("a"));
    let ahead = copy
        .apply(
            update(
                "s1",
                5_000,
                revocation_update::Update::Heartbeat(RevocationHeartbeat { version: 9 }),
            ),
            &mut position,
            &mut pending,
        )
        .await;
    assert!(matches!(ahead, Err(FollowError::Gap(_))), "{ahead:?}");
    assert_eq!(
        f.manager.feed().current_as_of_ms(),
        1_000,
        "a copy that missed something does not vouch past what it holds"
    );
}

#[tokio::test]
async fn a_live_task_the_server_revoked_ends_here_with_its_reason_and_is_not_echoed() {
    let (f, copy) = setup().await;
    let (task, _svid) = f
        .manager
        .begin(test_request(Entitlement::granted()))
        .await
        .unwrap();
    let id = task.id.to_string();
    assert!(f.manager.is_live(&id));
    let journaled = f.store.journal_batch(0, 10).await.unwrap();
    assert_eq!(journaled.len(), 1, "the begin is journaled for the server");

    let (mut position, mut pending) = (Position::default(), None);
    let mut server_view = revoked(&id, "consent_withdrawn");
    server_view.spiffe_id = format!("spiffe://tasks.test/client/code-reviewer/task/{id}");
    server_view.serials = Vec::new();
    copy.apply(
        update("s1", 1_000, snapshot(1, vec![server_view], false)),
        &mut position,
        &mut pending,
    )
    .await
    .unwrap();

    assert!(
        !f.manager.is_live(&id),
        "ended here: its SVIDs leave the streams"
    );
    let stored = f.store.get_task(&task.id).await.unwrap().unwrap();
    assert_eq!(stored.end_reason.as_deref(), Some("consent_withdrawn"));
    assert_eq!(
        f.store.journal_batch(0, 10).await.unwrap(),
        journaled,
        "an end the server decided is not reported back to it"
    );
    // The feed holds the local entry: every serial the task was issued, this node named.
    let entry = f
        .manager
        .feed()
        .tasks()
        .into_iter()
        .find(|t| t.task_id == id)
        .unwrap();
    assert_eq!(entry.serials, stored.serials);
    assert_eq!(entry.node, NODE);
    assert_eq!(entry.reason, "consent_withdrawn");
}

#[tokio::test]
async fn hostile_entries_are_refused_and_nothing_of_the_message_is_applied() {
    let (f, copy) = setup().await;
    let mut foreign = revoked("x", "ended");
    foreign.spiffe_id = "spiffe://evil.test/client/c/task/x".into();
    let mut mismatched = revoked("y", "ended");
    mismatched.spiffe_id = "spiffe://tasks.test/client/c/task/other".into();
    let mut long_serial = revoked("z", "ended");
    long_serial.serials = vec!["f".repeat(MAX_SERIAL_HEX_LEN + 1)];
    for bad in [foreign, mismatched, long_serial] {
        let (mut position, mut pending) = (Position::default(), None);
        let ok = revoked("fine", "ended");
        let result = copy
            .apply(
                update("s1", 1, snapshot(1, vec![ok, bad.clone()], false)),
                &mut position,
                &mut pending,
            )
            .await;
        assert!(
            matches!(result, Err(FollowError::Invalid(_))),
            "{bad:?}: {result:?}"
        );
        assert!(!f.manager.feed().contains("fine"));
        assert!(!position.complete);
    }
    let mut other_td = RevocationSnapshot {
        version: 1,
        trust_domain: "evil.test".into(),
        revoked: Vec::new(),
        revoked_node_cas: Vec::new(),
        more: false,
    };
    other_td.trust_domain = "evil.test".into();
    let (mut position, mut pending) = (Position::default(), None);
    let result = copy
        .apply(
            update("s1", 1, revocation_update::Update::Snapshot(other_td)),
            &mut position,
            &mut pending,
        )
        .await;
    assert!(matches!(result, Err(FollowError::Invalid(_))), "{result:?}");
}

#[tokio::test]
async fn evicted_node_cas_reach_the_local_feed() {
    let (f, copy) = setup().await;
    let (mut position, mut pending) = (Position::default(), None);
    let ca = RevokedNodeCa {
        node: "spiffe://tasks.test/node/b".into(),
        serial: "0abc".into(),
        revoked_at_unix_ms: 1,
        until_unix: i64::MAX / 2,
    };
    copy.apply(
        update("s1", 1, snapshot(1, Vec::new(), false)),
        &mut position,
        &mut pending,
    )
    .await
    .unwrap();
    let v = f.manager.feed().version();
    copy.apply(
        update(
            "s1",
            2,
            revocation_update::Update::Delta(RevocationDelta {
                from_version: 1,
                version: 2,
                revoked: Vec::new(),
                revoked_node_cas: vec![ca.clone()],
            }),
        ),
        &mut position,
        &mut pending,
    )
    .await
    .unwrap();
    let deltas = f.manager.feed().deltas_after(v).unwrap();
    assert_eq!(deltas.len(), 1);
    let sent = RevocationUpdate::decode(deltas[0].bytes.clone()).unwrap();
    let Some(revocation_update::Update::Delta(d)) = sent.update else {
        panic!("a delta")
    };
    assert_eq!(
        d.revoked_node_cas,
        [ca],
        "passed on to this node's verifiers"
    );
}
