//! The watcher against a real tonic `Revocations` server on a unix socket.

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use tessera_proto::tessera::v1::revocations_server::{Revocations, RevocationsServer};
use tessera_proto::tessera::v1::{RevocationSet, RevokedTask, WatchRevocationsRequest};
use tokio::sync::watch;
use tokio_stream::Stream;

use super::*;
use crate::testutil::TASK_ULID;

type SetStream = Pin<Box<dyn Stream<Item = Result<RevocationSet, tonic::Status>> + Send>>;

#[derive(Clone)]
struct Feed {
    sets: watch::Receiver<RevocationSet>,
    kill: watch::Receiver<bool>,
    /// Streams open now: a stream counts until its client goes away.
    open: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl Revocations for Feed {
    type WatchStream = SetStream;

    async fn watch(
        &self,
        req: tonic::Request<WatchRevocationsRequest>,
    ) -> Result<tonic::Response<SetStream>, tonic::Status> {
        assert_eq!(req.metadata().get("workload.spiffe.io").unwrap(), "true");
        let mut kill = self.kill.clone();
        let mut sets = self.sets.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let open = Arc::clone(&self.open);
        open.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let first = { sets.borrow_and_update().clone() };
            if tx.send(Ok(first)).await.is_ok() {
                loop {
                    tokio::select! {
                        _ = async { kill.wait_for(|k| *k).await.map(|_| ()) } => break,
                        // tonic drops the stream when the client's connection closes.
                        _ = tx.closed() => break,
                        r = sets.changed() => {
                            if r.is_err() { break; }
                            let s = { sets.borrow_and_update().clone() };
                            if tx.send(Ok(s)).await.is_err() { break; }
                        }
                    }
                }
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type FollowStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<
                    Item = Result<tessera_proto::tessera::v1::RevocationUpdate, tonic::Status>,
                > + Send
                + 'static,
        >,
    >;

    // An agent from before Follow: the watcher falls back to Watch.
    async fn follow(
        &self,
        _: tonic::Request<tessera_proto::tessera::v1::FollowRevocationsRequest>,
    ) -> Result<tonic::Response<Self::FollowStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("Follow"))
    }
}

struct TestServer {
    kill: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    open: Arc<AtomicU64>,
}

fn serve(path: &Path, sets: watch::Receiver<RevocationSet>) -> TestServer {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let (kill, kill_rx) = watch::channel(false);
    let open = Arc::new(AtomicU64::new(0));
    let feed = Feed {
        sets,
        kill: kill_rx,
        open: Arc::clone(&open),
    };
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(RevocationsServer::new(feed))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await
            .unwrap();
    });
    TestServer { kill, task, open }
}

impl TestServer {
    /// Feed streams a client holds open right now.
    fn open_streams(&self) -> u64 {
        self.open.load(Ordering::SeqCst)
    }

    fn stop(self, path: &Path) {
        self.kill.send_replace(true);
        self.task.abort();
        let _ = std::fs::remove_file(path);
    }
}

fn set(version: u64, revoked: &[&str]) -> RevocationSet {
    RevocationSet {
        version,
        trust_domain: "acme.corp".into(),
        revoked: revoked
            .iter()
            .map(|t| RevokedTask {
                task_id: (*t).into(),
                spiffe_id: String::new(),
                serials: vec!["0A1B".into()],
                reason: "ended".into(),
                revoked_at_unix_ms: 0,
                until_unix: 0,
                node: String::new(),
            })
            .collect(),
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn follows_feed_goes_stale_and_reconnects_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("workload.sock");
    let (tx, rx) = watch::channel(set(1, &[]));
    let server = serve(&sock, rx.clone());

    let mut config = WatcherConfig::new(&sock);
    config.staleness = Duration::from_millis(300);
    config.min_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(50);
    let (w, handle) = RevocationWatcher::spawn(config);
    let task: TaskId = TASK_ULID.parse().unwrap();

    eventually("first message", || w.version() == 1).await;
    assert!(w.is_fresh() && w.is_connected());
    assert_eq!(w.status(&task, "99"), RevocationStatus::NotRevoked);

    let t0 = Instant::now();
    tx.send_replace(set(2, &[TASK_ULID]));
    eventually("revocation applied", || {
        w.status(&task, "99") != RevocationStatus::NotRevoked
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(
        w.status(&task, "99"),
        RevocationStatus::Revoked {
            reason: "ended".into()
        }
    );
    let other: TaskId = "01BX5ZZKBKACTAV9WEVGEMMVRZ".parse().unwrap();
    assert!(
        matches!(w.status(&other, "0a1b"), RevocationStatus::Revoked { .. }),
        "by serial"
    );
    assert!(w.last_update_unix_ms() > 0);

    // The agent goes away: the set stays usable for the bound, then fails closed.
    server.stop(&sock);
    eventually("disconnect noticed", || !w.is_connected()).await;
    eventually("stale after the bound", || !w.is_fresh()).await;
    assert_eq!(w.status(&other, "99"), RevocationStatus::Stale);
    let reconnects_while_down = w.reconnects();
    assert!(reconnects_while_down > 0);

    // The agent comes back with a newer set: fresh again.
    tx.send_replace(set(3, &[]));
    let server = serve(&sock, rx);
    eventually("reconnected", || w.is_fresh() && w.version() == 3).await;
    assert_eq!(w.status(&task, "99"), RevocationStatus::NotRevoked);
    server.stop(&sock);
    handle.shutdown().await;
}

#[tokio::test]
async fn never_connected_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = WatcherConfig::new(dir.path().join("missing.sock"));
    config.min_backoff = Duration::from_millis(5);
    config.max_backoff = Duration::from_millis(10);
    let (w, handle) = RevocationWatcher::spawn(config);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let task: TaskId = TASK_ULID.parse().unwrap();
    assert_eq!(w.status(&task, "1"), RevocationStatus::Stale);
    assert!(w.reconnects() > 0);
    handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn detached_watcher_goes_stale_after_the_bound() {
    let w = RevocationWatcher::detached(Duration::from_secs(30));
    let task: TaskId = TASK_ULID.parse().unwrap();
    assert_eq!(w.status(&task, "1"), RevocationStatus::Stale);
    w.apply(&set(1, &[]));
    // Applied but never live: fresh for the bound from the message, then stale.
    assert_eq!(w.status(&task, "1"), RevocationStatus::NotRevoked);
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(w.is_fresh());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(w.status(&task, "1"), RevocationStatus::Stale);
}

/// The three questions a verifier asks: a certificate (task and serial), an access
/// token (its task alone), and a client's own certificate (its serial alone); each
/// stale when the feed is.
#[tokio::test(start_paused = true)]
async fn task_and_serial_questions_are_answered_apart() {
    let w = RevocationWatcher::detached(Duration::from_secs(30));
    let revoked: TaskId = TASK_ULID.parse().unwrap();
    let live = TaskId::new();
    for status in [
        w.status(&live, "1"),
        w.task_status(&live),
        w.serial_status("1"),
    ] {
        assert_eq!(status, RevocationStatus::Stale);
    }
    // The revoked task's SVID has serial 0A1B (kept as lowercase hex, as leaves report).
    w.apply(&set(1, &[TASK_ULID]));
    let is_revoked = |s: RevocationStatus| matches!(s, RevocationStatus::Revoked { .. });
    assert!(is_revoked(w.status(&revoked, "1")));
    assert!(is_revoked(w.task_status(&revoked)));
    assert!(
        is_revoked(w.status(&live, "0a1b")),
        "a certificate by serial"
    );
    assert!(is_revoked(w.serial_status("0a1b")));
    assert_eq!(
        w.task_status(&live),
        RevocationStatus::NotRevoked,
        "a token: task only"
    );
    assert_eq!(w.serial_status("0a1c"), RevocationStatus::NotRevoked);
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(w.task_status(&live), RevocationStatus::Stale);
    assert_eq!(w.serial_status("0a1c"), RevocationStatus::Stale);
}

#[test]
fn backoff_stays_within_bounds() {
    let min = Duration::from_millis(50);
    let max = Duration::from_secs(5);
    for attempt in 0..40 {
        let d = follow::backoff(attempt, min, max);
        assert!(d >= min && d <= max, "{attempt}: {d:?}");
    }
}

/// On the legacy `Watch`, a revoked set past tonic's 4 MiB default still reaches the
/// verifier; past the configured limit the stream ends and nothing is applied.
#[tokio::test]
async fn feed_messages_beyond_four_mib_are_accepted_up_to_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("workload.sock");
    // About 110 bytes each: some 6.5 MiB in one message.
    let ids: Vec<String> = (0..60_000).map(|_| TaskId::new().to_string()).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut big = set(1, &refs);
    for r in &mut big.revoked {
        r.spiffe_id = format!("spiffe://acme.corp/client/code-reviewer/task/{}", r.task_id);
    }
    let (_tx, rx) = watch::channel(big);
    let server = serve(&sock, rx);

    let mut config = WatcherConfig::new(&sock);
    config.min_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(50);
    let (w, handle) = RevocationWatcher::spawn(config.clone());
    eventually("the large set applied", || w.version() == 1).await;
    let last: TaskId = ids[ids.len() - 1].parse().unwrap();
    assert!(matches!(
        w.status(&last, "ff"),
        RevocationStatus::Revoked { .. }
    ));
    handle.shutdown().await;

    // With tonic's default limit the same message never applies.
    config.legacy_max_message_bytes = 4 << 20;
    let (small, handle) = RevocationWatcher::spawn(config);
    // Waiting for a retry (not a fixed time: encoding 6.5 MiB is slow on a loaded
    // machine) shows the stream was opened and ended by the oversized message.
    eventually("a retry after the oversized message", || {
        small.reconnects() > 0
    })
    .await;
    assert_eq!(
        small.version(),
        0,
        "a message over the limit is never applied"
    );
    assert!(!small.is_fresh());
    handle.shutdown().await;
    server.stop(&sock);
}

/// A message wakes the waiters of the tasks it newly revokes (by id or by a new
/// serial), and no others; a dropped watch stops counting.
#[tokio::test]
async fn a_message_wakes_only_the_waiters_of_tasks_it_revokes() {
    let w = RevocationWatcher::detached(Duration::from_secs(3600));
    w.apply(&set(1, &[]));
    let (a, b): (TaskId, TaskId) = (
        TASK_ULID.parse().unwrap(),
        "01BX5ZZKBKACTAV9WEVGEMMVRZ".parse().unwrap(),
    );
    let (mut wa, mut wb) = (w.watch_task(&a), w.watch_task(&b));
    let wa2 = w.watch_task(&a);
    assert_eq!(w.watched_tasks(), 2);
    async fn quiet(watch: &mut TaskWatch) -> bool {
        tokio::time::timeout(Duration::from_millis(200), watch.changed())
            .await
            .is_err()
    }

    w.apply(&set(2, &[TASK_ULID]));
    tokio::time::timeout(Duration::from_secs(5), wa.changed())
        .await
        .expect("the revoked task's waiter is woken");
    assert!(quiet(&mut wb).await, "another task's waiter sleeps on");
    // The same set again revokes nothing new.
    w.apply(&set(3, &[TASK_ULID]));
    assert!(quiet(&mut wa).await);
    // A new serial of an already revoked task wakes it again.
    let mut more = set(4, &[TASK_ULID]);
    more.revoked[0].serials.push("0C".into());
    w.apply(&more);
    tokio::time::timeout(Duration::from_secs(5), wa.changed())
        .await
        .expect("a new serial wakes the waiter");

    drop((wa, wa2));
    assert_eq!(w.watched_tasks(), 1);
    drop(wb);
    assert_eq!(w.watched_tasks(), 0);
}

#[tokio::test(start_paused = true)]
async fn stale_in_counts_down_from_the_last_message() {
    let w = RevocationWatcher::detached(Duration::from_secs(30));
    assert_eq!(w.stale_in(), Some(Duration::ZERO), "never heard: stale now");
    w.apply(&set(1, &[]));
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(w.stale_in(), Some(Duration::from_secs(20)));
    assert_eq!(RevocationWatcher::from_static([], []).stale_in(), None);
}

/// The watcher's task lives exactly as long as its guard: dropping the guard closes the
/// stream on the agent's socket (a verifier that lingered would hold it open), and
/// shutting it down returns once it has; either way the set then goes stale.
#[tokio::test]
async fn dropping_or_shutting_down_the_guard_closes_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("workload.sock");
    let (_tx, rx) = watch::channel(set(1, &[]));
    let server = serve(&sock, rx);
    let mut config = WatcherConfig::new(&sock);
    config.staleness = Duration::from_millis(200);

    let (w, guard) = RevocationWatcher::spawn(config.clone());
    eventually("the feed is live", || w.is_connected()).await;
    assert_eq!(server.open_streams(), 1);
    drop(guard);
    eventually("the agent sees the stream close", || {
        server.open_streams() == 0
    })
    .await;
    assert!(!w.is_connected(), "a stopped feed is not live");
    eventually("the set goes stale", || !w.is_fresh()).await;
    let task: TaskId = TASK_ULID.parse().unwrap();
    assert_eq!(w.status(&task, "99"), RevocationStatus::Stale);

    let (w, guard) = RevocationWatcher::spawn(config);
    eventually("the feed is live again", || w.is_connected()).await;
    assert_eq!(server.open_streams(), 1);
    guard.shutdown().await;
    assert!(!w.is_connected());
    eventually("the agent sees the stream close", || {
        server.open_streams() == 0
    })
    .await;
    server.stop(&sock);
}
