//! `Revocations.Follow` against an in-process tonic test double of the agent on a real
//! unix socket (each stream driven by the test), and the update rules on a detached
//! watcher.

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use tessera_identity::TaskId;
use tessera_proto::tessera::v1::revocation_update::Update;
use tessera_proto::tessera::v1::revocations_server::{Revocations, RevocationsServer};
use tessera_proto::tessera::v1::{
    FollowRevocationsRequest, RevocationDelta, RevocationHeartbeat, RevocationSet,
    RevocationSnapshot, RevocationUpdate, RevokedNodeCa, RevokedTask, WatchRevocationsRequest,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::Stream;

use crate::revocation::{
    EXPIRY_GRACE_SECS, FeedError, NodeCaStatus, RevocationStatus, RevocationWatcher, WatcherConfig,
};

const FEED: &str = "feed-a";
const NODE: &str = "spiffe://acme.corp/node/worker-1";

type UpdateTx = mpsc::Sender<Result<RevocationUpdate, tonic::Status>>;
type StreamsTx = mpsc::UnboundedSender<(FollowRevocationsRequest, UpdateTx)>;
type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// What the agent double is.
#[derive(Clone)]
enum Agent {
    /// Serves `Follow`: each stream is handed to the test to drive.
    Follows(StreamsTx),
    /// An agent from before `Follow`: `Watch` sends this set, then holds the stream.
    Old(RevocationSet),
    /// A cluster-mode agent as a verifier that cannot follow sees it: `Watch` refused.
    RefusesWatch,
}

#[tonic::async_trait]
impl Revocations for Agent {
    type WatchStream = Boxed<RevocationSet>;
    type FollowStream = Boxed<RevocationUpdate>;

    async fn watch(
        &self,
        req: tonic::Request<WatchRevocationsRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        assert_eq!(req.metadata().get("workload.spiffe.io").unwrap(), "true");
        match self {
            Agent::Old(set) => {
                let (tx, rx) = mpsc::channel(1);
                tx.send(Ok(set.clone())).await.unwrap();
                // Held open for as long as the client keeps the stream.
                tokio::spawn(async move { tx.closed().await });
                Ok(tonic::Response::new(Box::pin(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                )))
            }
            Agent::RefusesWatch => Err(tonic::Status::failed_precondition(
                "this agent runs in cluster mode: upgrade tessera-verify (Revocations.Follow)",
            )),
            Agent::Follows(_) => Err(tonic::Status::internal("the test expected no Watch")),
        }
    }

    async fn follow(
        &self,
        req: tonic::Request<FollowRevocationsRequest>,
    ) -> Result<tonic::Response<Self::FollowStream>, tonic::Status> {
        assert_eq!(req.metadata().get("workload.spiffe.io").unwrap(), "true");
        let Agent::Follows(streams) = self else {
            return Err(tonic::Status::unimplemented("Follow"));
        };
        let (tx, rx) = mpsc::channel(64);
        streams.send((req.into_inner(), tx)).unwrap();
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

struct TestAgent {
    streams: mpsc::UnboundedReceiver<(FollowRevocationsRequest, UpdateTx)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn serve(path: &Path, make: impl FnOnce(StreamsTx) -> Agent) -> TestAgent {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let (tx, streams) = mpsc::unbounded_channel();
    let agent = make(tx);
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(RevocationsServer::new(agent))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await
            .unwrap();
    });
    TestAgent { streams, task }
}

impl TestAgent {
    /// The next `Follow` stream the watcher opens: its request, and the sender of its
    /// updates.
    async fn next_stream(&mut self) -> (FollowRevocationsRequest, UpdateTx) {
        tokio::time::timeout(Duration::from_secs(10), self.streams.recv())
            .await
            .expect("the watcher follows within 10 s")
            .expect("the server runs")
    }
}

fn config(sock: &Path) -> WatcherConfig {
    let mut c = WatcherConfig::new(sock);
    c.min_backoff = Duration::from_millis(10);
    c.max_backoff = Duration::from_millis(50);
    c
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn revoked(task: &TaskId, serial: &str) -> RevokedTask {
    RevokedTask {
        task_id: task.to_string(),
        serials: vec![serial.to_owned()],
        reason: "ended".into(),
        revoked_at_unix_ms: now_ms(),
        until_unix: now_ms() / 1000 + 300,
        ..Default::default()
    }
}

fn node_ca(serial: &str) -> RevokedNodeCa {
    RevokedNodeCa {
        node: NODE.into(),
        serial: serial.into(),
        revoked_at_unix_ms: now_ms(),
        until_unix: now_ms() / 1000 + 3600,
    }
}

fn update(update: Update) -> RevocationUpdate {
    RevocationUpdate {
        feed_id: FEED.into(),
        update: Some(update),
        current_as_of_unix_ms: now_ms(),
    }
}

fn snapshot(version: u64, tasks: Vec<RevokedTask>, more: bool) -> RevocationUpdate {
    update(Update::Snapshot(RevocationSnapshot {
        version,
        trust_domain: "acme.corp".into(),
        revoked: tasks,
        revoked_node_cas: Vec::new(),
        more,
    }))
}

fn delta(from: u64, to: u64, tasks: Vec<RevokedTask>, cas: Vec<RevokedNodeCa>) -> RevocationUpdate {
    update(Update::Delta(RevocationDelta {
        from_version: from,
        version: to,
        revoked: tasks,
        revoked_node_cas: cas,
    }))
}

fn heartbeat(version: u64) -> RevocationUpdate {
    update(Update::Heartbeat(RevocationHeartbeat { version }))
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn is_revoked(s: RevocationStatus) -> bool {
    matches!(s, RevocationStatus::Revoked { .. })
}

#[tokio::test]
async fn a_snapshot_then_deltas_and_heartbeats_keep_the_set_current() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("workload.sock");
    let mut agent = serve(&sock, Agent::Follows);
    let (w, guard) = RevocationWatcher::spawn(config(&sock));
    let (a, b) = (TaskId::new(), TaskId::new());

    let (req, tx) = agent.next_stream().await;
    assert_eq!(
        (req.feed_id.as_str(), req.since_version),
        ("", 0),
        "nothing held"
    );
    assert_eq!(
        w.status(&a, "99"),
        RevocationStatus::Stale,
        "before the snapshot"
    );
    tx.send(Ok(snapshot(7, vec![revoked(&a, "0A")], false)))
        .await
        .unwrap();
    eventually("the snapshot applied", || w.is_fresh()).await;
    assert!(is_revoked(w.status(&a, "99")));
    assert!(is_revoked(w.serial_status("0a")), "serials in lowercase");
    assert_eq!(w.status(&b, "99"), RevocationStatus::NotRevoked);
    assert_eq!((w.feed_id().as_str(), w.version()), (FEED, 7));
    assert!(w.is_connected());

    tx.send(Ok(delta(
        7,
        8,
        vec![revoked(&b, "0B")],
        vec![node_ca("0C")],
    )))
    .await
    .unwrap();
    eventually("the delta applied", || w.version() == 8).await;
    assert!(is_revoked(w.task_status(&b)));
    assert_eq!(
        w.node_ca_status("0c"),
        NodeCaStatus::Revoked { node: NODE.into() }
    );
    tx.send(Ok(heartbeat(8))).await.unwrap();
    tx.send(Ok(delta(8, 9, Vec::new(), Vec::new())))
        .await
        .unwrap();
    eventually("a heartbeat in step keeps the stream", || w.version() == 9).await;
    assert_eq!(w.reconnects(), 0, "never dropped");
    assert!(w.is_fresh());
    guard.shutdown().await;
    assert!(!w.is_connected());
}

#[tokio::test]
async fn a_gap_drops_the_stream_and_follows_again_from_the_held_version() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("workload.sock");
    let mut agent = serve(&sock, Agent::Follows);
    let (w, guard) = RevocationWatcher::spawn(config(&sock));
    let (a, b) = (TaskId::new(), TaskId::new());

    let (_, tx) = agent.next_stream().await;
    tx.send(Ok(snapshot(1, Vec::new(), false))).await.unwrap();
    // 2 → 3 while the watcher holds 1: it missed 1 → 2.
    tx.send(Ok(delta(2, 3, vec![revoked(&a, "0A")], Vec::new())))
        .await
        .unwrap();
    let (req, tx2) = agent.next_stream().await;
    assert_eq!(
        (req.feed_id.as_str(), req.since_version),
        (FEED, 1),
        "follows again from what it holds"
    );
    tokio::time::timeout(Duration::from_secs(10), tx.closed())
        .await
        .expect("the out-of-step stream is dropped");
    assert_eq!(w.version(), 1, "nothing of the gapped delta applied");
    assert_eq!(w.status(&a, "99"), RevocationStatus::NotRevoked);

    // A heartbeat ahead of the held version is a gap too.
    tx2.send(Ok(heartbeat(3))).await.unwrap();
    let (req, tx3) = agent.next_stream().await;
    assert_eq!(req.since_version, 1);
    tx3.send(Ok(delta(1, 2, vec![revoked(&b, "0B")], Vec::new())))
        .await
        .unwrap();
    tx3.send(Ok(delta(2, 3, vec![revoked(&a, "0A")], Vec::new())))
        .await
        .unwrap();
    eventually("caught up", || w.version() == 3).await;
    assert!(is_revoked(w.status(&a, "99")) && is_revoked(w.status(&b, "99")));
    guard.shutdown().await;
}

#[tokio::test]
async fn a_reconnect_resumes_from_the_held_version_without_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("workload.sock");
    let mut agent = serve(&sock, Agent::Follows);
    let (w, guard) = RevocationWatcher::spawn(config(&sock));
    let (a, b) = (TaskId::new(), TaskId::new());

    let (_, tx) = agent.next_stream().await;
    tx.send(Ok(snapshot(4, vec![revoked(&a, "0A")], false)))
        .await
        .unwrap();
    tx.send(Ok(delta(4, 5, Vec::new(), Vec::new())))
        .await
        .unwrap();
    eventually("version 5", || w.version() == 5).await;
    // The agent ends the stream (a restart of its listener, a broken socket).
    drop(tx);
    let (req, tx) = agent.next_stream().await;
    assert_eq!((req.feed_id.as_str(), req.since_version), (FEED, 5));
    tx.send(Ok(delta(5, 6, vec![revoked(&b, "0B")], Vec::new())))
        .await
        .unwrap();
    eventually("the missed delta applied", || w.version() == 6).await;
    assert!(is_revoked(w.status(&a, "99")), "the held set was kept");
    assert!(is_revoked(w.status(&b, "99")));
    assert!(w.reconnects() >= 1);

    // Another incarnation of the feed answers with a snapshot, which replaces the set.
    drop(tx);
    let (req, tx) = agent.next_stream().await;
    assert_eq!(req.since_version, 6);
    let mut fresh = snapshot(1, vec![revoked(&b, "0B")], false);
    fresh.feed_id = "feed-b".into();
    tx.send(Ok(fresh)).await.unwrap();
    eventually("the new feed's snapshot", || w.feed_id() == "feed-b").await;
    assert_eq!(w.version(), 1);
    assert_eq!(w.status(&a, "99"), RevocationStatus::NotRevoked);
    assert!(is_revoked(w.status(&b, "99")));
    guard.shutdown().await;
}

/// An agent cut off from the server keeps its stream open and its heartbeats coming,
/// but the `current_as_of` it vouches for stops moving: the verifier goes stale at the
/// bound all the same, and is current again once it moves.
#[tokio::test]
async fn an_open_stream_whose_current_as_of_stops_advancing_goes_stale() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("workload.sock");
    let mut agent = serve(&sock, Agent::Follows);
    let mut c = config(&sock);
    c.staleness = Duration::from_millis(300);
    let (w, guard) = RevocationWatcher::spawn(c);

    let (_, tx) = agent.next_stream().await;
    let frozen = now_ms();
    let mut first = snapshot(1, Vec::new(), false);
    first.current_as_of_unix_ms = frozen;
    tx.send(Ok(first)).await.unwrap();
    eventually("fresh", || w.is_fresh()).await;
    let beating = tokio::spawn({
        let tx = tx.clone();
        async move {
            loop {
                let mut beat = heartbeat(1);
                beat.current_as_of_unix_ms = frozen;
                if tx.send(Ok(beat)).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    eventually("stale with the stream open", || !w.is_fresh()).await;
    assert!(w.is_connected(), "the stream never broke");
    assert_eq!(w.task_status(&TaskId::new()), RevocationStatus::Stale);
    beating.abort();

    tx.send(Ok(heartbeat(1))).await.unwrap();
    eventually("current again", || w.is_fresh()).await;
    assert_eq!(w.reconnects(), 0);
    guard.shutdown().await;
}

#[tokio::test]
async fn an_agent_without_follow_is_followed_through_watch() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("workload.sock");
    let a = TaskId::new();
    let set = RevocationSet {
        version: 3,
        trust_domain: "acme.corp".into(),
        revoked: vec![revoked(&a, "0A")],
    };
    let _agent = serve(&sock, |_| Agent::Old(set));
    let (w, guard) = RevocationWatcher::spawn(config(&sock));
    eventually("the legacy set applied", || w.version() == 3).await;
    assert!(w.is_fresh() && w.is_connected());
    assert!(is_revoked(w.status(&a, "99")));
    assert_eq!(w.feed_id(), "", "no feed to resume");
    guard.shutdown().await;
}

#[tokio::test]
async fn a_cluster_agent_refusing_watch_leaves_the_watcher_stale() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("workload.sock");
    let logs = crate::testutil::logs::formatted();
    let _agent = serve(&sock, |_| Agent::RefusesWatch);
    let (w, guard) = RevocationWatcher::spawn(config(&sock));
    eventually("tried again", || w.reconnects() >= 3).await;
    assert!(!w.is_fresh());
    assert!(!w.is_connected());
    assert_eq!(w.task_status(&TaskId::new()), RevocationStatus::Stale);
    let logged = String::from_utf8_lossy(&logs.lock().unwrap())
        .matches("refuses the legacy revocation feed")
        .count();
    assert_eq!(logged, 1, "logged once, clearly");
    guard.shutdown().await;
}

/// A message over `max_message_bytes` ends the stream before anything of it is
/// applied: the watcher stays stale (it never fails open on what it could not read).
#[tokio::test]
async fn an_oversized_message_leaves_the_watcher_stale_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("workload.sock");
    let mut agent = serve(&sock, Agent::Follows);
    let mut c = config(&sock);
    c.max_message_bytes = 16 << 10;
    let (w, guard) = RevocationWatcher::spawn(c);
    let big: Vec<RevokedTask> = (0..500)
        .map(|i| revoked(&TaskId::new(), &format!("{i:04x}")))
        .collect();

    let (_, tx) = agent.next_stream().await;
    tx.send(Ok(snapshot(1, big.clone(), false))).await.unwrap();
    let (req, tx) = agent.next_stream().await;
    assert_eq!(req.since_version, 0, "nothing applied: a snapshot again");
    assert!(!w.is_fresh());
    assert_eq!(w.revoked_count(), 0);
    // The same set in pages under the limit is taken.
    for (i, page) in big.chunks(50).enumerate() {
        let more = (i + 1) * 50 < big.len();
        tx.send(Ok(snapshot(1, page.to_vec(), more))).await.unwrap();
    }
    eventually("paged snapshot applied", || w.is_fresh()).await;
    assert_eq!(w.revoked_count(), 500);
    guard.shutdown().await;
}

#[tokio::test]
async fn entries_past_their_expiry_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("workload.sock");
    let mut agent = serve(&sock, Agent::Follows);
    let (w, guard) = RevocationWatcher::spawn(config(&sock));
    let (gone, kept) = (TaskId::new(), TaskId::new());
    let mut old = revoked(&gone, "0A");
    old.until_unix = now_ms() / 1000 - EXPIRY_GRACE_SECS - 5;
    let mut old_ca = node_ca("0D");
    old_ca.until_unix = old.until_unix;

    let (_, tx) = agent.next_stream().await;
    tx.send(Ok(snapshot(1, vec![old, revoked(&kept, "0B")], false)))
        .await
        .unwrap();
    tx.send(Ok(delta(1, 2, Vec::new(), vec![old_ca, node_ca("0E")])))
        .await
        .unwrap();
    eventually("applied", || w.version() == 2).await;
    // The sweep ran on the first message; the delta's expired CA goes at the next.
    w.prune_expired(now_ms() / 1000);
    assert_eq!(w.status(&gone, "99"), RevocationStatus::NotRevoked);
    assert_eq!(w.serial_status("0a"), RevocationStatus::NotRevoked);
    assert!(is_revoked(w.status(&kept, "99")));
    assert_eq!(w.node_ca_status("0d"), NodeCaStatus::NotRevoked);
    assert!(matches!(
        w.node_ca_status("0e"),
        NodeCaStatus::Revoked { .. }
    ));
    assert_eq!((w.revoked_count(), w.revoked_node_ca_count()), (1, 1));
    guard.shutdown().await;
}

// === the update rules, on a detached watcher ===

#[tokio::test]
async fn a_paged_snapshot_replaces_the_set_only_on_its_last_page() {
    let w = RevocationWatcher::detached(Duration::from_secs(60));
    let (a, b, c) = (TaskId::new(), TaskId::new(), TaskId::new());
    w.apply_update(&snapshot(1, vec![revoked(&a, "0A")], true))
        .unwrap();
    assert!(!w.is_fresh(), "half a snapshot is no set");
    w.apply_update(&heartbeat(1)).unwrap();
    assert!(
        !w.is_fresh(),
        "a heartbeat between pages vouches for nothing"
    );
    w.apply_update(&snapshot(1, vec![revoked(&b, "0B")], false))
        .unwrap();
    assert!(w.is_fresh());
    assert!(is_revoked(w.task_status(&a)) && is_revoked(w.task_status(&b)));

    // The next snapshot's first page leaves the held set in place.
    let mut page = snapshot(1, vec![revoked(&c, "0C")], true);
    page.feed_id = "feed-b".into();
    w.apply_update(&page).unwrap();
    assert!(is_revoked(w.task_status(&a)));
    assert_eq!(w.task_status(&c), RevocationStatus::NotRevoked);
    // A page of another version inside it is refused.
    let mut other = snapshot(2, Vec::new(), false);
    other.feed_id = "feed-b".into();
    assert!(matches!(
        w.apply_update(&other),
        Err(FeedError::SnapshotPageMismatch { .. })
    ));
    assert_eq!(w.feed_id(), FEED, "the held set stays");
}

#[tokio::test]
async fn messages_out_of_step_are_refused_and_change_nothing() {
    let w = RevocationWatcher::detached(Duration::from_secs(60));
    let a = TaskId::new();
    assert!(matches!(
        w.apply_update(&delta(0, 1, vec![revoked(&a, "0A")], Vec::new())),
        Err(FeedError::OtherFeed { .. })
    ));
    assert!(matches!(
        w.apply_update(&heartbeat(0)),
        Err(FeedError::OtherFeed { .. })
    ));
    w.apply_update(&snapshot(5, Vec::new(), false)).unwrap();
    let mut other = delta(5, 6, vec![revoked(&a, "0A")], Vec::new());
    other.feed_id = "feed-b".into();
    assert!(matches!(
        w.apply_update(&other),
        Err(FeedError::OtherFeed { .. })
    ));
    assert_eq!(
        w.apply_update(&delta(4, 6, vec![revoked(&a, "0A")], Vec::new())),
        Err(FeedError::OutOfStep { held: 5, sender: 4 })
    );
    assert!(matches!(
        w.apply_update(&delta(5, 5, vec![revoked(&a, "0A")], Vec::new())),
        Err(FeedError::VersionNotIncreasing { .. })
    ));
    assert_eq!(
        w.apply_update(&heartbeat(6)),
        Err(FeedError::OutOfStep { held: 5, sender: 6 })
    );
    w.apply_update(&snapshot(9, Vec::new(), true)).unwrap();
    assert_eq!(
        w.apply_update(&delta(5, 6, Vec::new(), Vec::new())),
        Err(FeedError::DeltaInsideSnapshot)
    );
    let empty = RevocationUpdate {
        feed_id: FEED.into(),
        update: None,
        current_as_of_unix_ms: now_ms(),
    };
    assert_eq!(w.apply_update(&empty), Err(FeedError::Empty));
    assert_eq!(w.version(), 5);
    assert_eq!(w.task_status(&a), RevocationStatus::NotRevoked);
}

/// `current_as_of` is the sender's clock: behind this host's, the set is that much
/// older; ahead of it, the set is never younger than now.
#[tokio::test(start_paused = true)]
async fn freshness_counts_from_the_senders_current_as_of() {
    let w = RevocationWatcher::detached(Duration::from_secs(30));
    let mut behind = snapshot(1, Vec::new(), false);
    behind.current_as_of_unix_ms = now_ms() - 20_000;
    w.apply_update(&behind).unwrap();
    let left = w.stale_in().unwrap();
    assert!(
        left <= Duration::from_secs(10) && left > Duration::from_secs(9),
        "{left:?}"
    );
    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(!w.is_fresh());

    let w = RevocationWatcher::detached(Duration::from_secs(30));
    let mut ahead = snapshot(1, Vec::new(), false);
    ahead.current_as_of_unix_ms = now_ms() + 3_600_000;
    w.apply_update(&ahead).unwrap();
    tokio::time::advance(Duration::from_secs(31)).await;
    assert!(!w.is_fresh(), "a clock ahead buys no time");
    // A message vouching for nothing (0) leaves it stale.
    let mut zero = heartbeat(1);
    zero.current_as_of_unix_ms = 0;
    w.apply_update(&zero).unwrap();
    assert!(!w.is_fresh());
}

/// A delta wakes the waiters of the tasks it revokes and of the peers whose chain
/// holds a node CA it evicts, and no others.
#[tokio::test]
async fn a_delta_wakes_only_the_waiters_it_concerns() {
    let w = RevocationWatcher::detached(Duration::from_secs(3600));
    w.apply_update(&snapshot(1, Vec::new(), false)).unwrap();
    let (a, b, c) = (TaskId::new(), TaskId::new(), TaskId::new());
    let mut wa = w.watch_task(&a);
    let mut wb = w.watch_task(&b);
    let mut wc = w.watch(&c, &["0c".to_owned()]);
    assert_eq!(w.watched_tasks(), 3);
    async fn quiet(watch: &mut super::super::TaskWatch) -> bool {
        tokio::time::timeout(Duration::from_millis(200), watch.changed())
            .await
            .is_err()
    }
    async fn woken(watch: &mut super::super::TaskWatch) {
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("woken");
    }

    w.apply_update(&delta(1, 2, vec![revoked(&a, "0A")], Vec::new()))
        .unwrap();
    woken(&mut wa).await;
    assert!(quiet(&mut wb).await && quiet(&mut wc).await);

    w.apply_update(&delta(2, 3, Vec::new(), vec![node_ca("0C")]))
        .unwrap();
    woken(&mut wc).await;
    assert!(quiet(&mut wa).await && quiet(&mut wb).await);
    // The same entries again revoke nothing new.
    w.apply_update(&delta(3, 4, vec![revoked(&a, "0A")], vec![node_ca("0c")]))
        .unwrap();
    assert!(quiet(&mut wa).await && quiet(&mut wc).await);

    drop((wa, wb, wc));
    assert_eq!(w.watched_tasks(), 0);
}
