//! The task lifecycle against a real CA and a real SQLite store, with calls held at
//! [`Pause`] points to force each interleaving of an end with a rotation or a begin.
//!
//! The rule they hold: an SVID is recorded before anyone can see it, no SVID of an
//! ended task is shown again, and a revocation covers (serials, `until`) every SVID its
//! task's process was ever shown, on the feed and in the store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_authority::{Authority, AuthorityConfig, CaMode, RotationPolicy};
use tessera_identity::{ClientId, ClientName, TrustDomain};
use tessera_store::{EntryKind, NewConsent, NewEntry, Store};
use time::OffsetDateTime;

use super::super::hooks::Pause;
use super::*;
use crate::attest::{Attestation, Selector};
use crate::metrics::Metrics;
use crate::svids::SvidCache;

const CLIENT: &str = "code-reviewer";

/// A task manager on a real CA and store, with a consent for [`CLIENT`]; shared with
/// other modules' tests (the server feed's follower).
pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub(crate) authority: Arc<Authority>,
    pub(crate) store: Store,
    pub(crate) manager: Arc<TaskManager>,
    pub(crate) consent: String,
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn trust_domain() -> TrustDomain {
    "tasks.test".try_into().unwrap()
}

fn client() -> ClientId {
    ClientId::new(trust_domain(), CLIENT.parse::<ClientName>().unwrap())
}

async fn fixture() -> Fixture {
    fixture_with(None).await
}

/// [`fixture`], in cluster mode as node `node` when given (its store journals).
pub(crate) async fn fixture_with(node: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let authority = Arc::new(
        Authority::open(AuthorityConfig {
            trust_domain: trust_domain(),
            dir: dir.path().join("ca"),
            mode: CaMode::SelfSigned,
            rotation: RotationPolicy {
                ca_ttl: Duration::from_secs(365 * 24 * 3600),
                max_svid_ttl: Duration::from_secs(3600),
            },
        })
        .unwrap(),
    );
    let store = Store::open(&dir.path().join("tessera.db")).await.unwrap();
    store.set_journal_task_events(node.is_some());
    let consent = store
        .grant_consent(
            NewConsent {
                client: CLIENT.into(),
                subject: "alice".into(),
                server: "github".into(),
                scopes: vec!["github/tool/*".into()],
                expires_at: now() + 3600,
            },
            "admin",
        )
        .await
        .unwrap()
        .id;
    let consents = ConsentCache::load(store.clone()).await.unwrap();
    let manager = TaskManager::start(
        Arc::clone(&authority),
        store.clone(),
        consents,
        Arc::new(Metrics::default()),
        TaskConfig {
            // Long enough that no rotation comes on its own: the tests rotate.
            svid_ttl: Duration::from_secs(600),
            default_lifetime: Duration::from_secs(900),
            max_lifetime: Duration::from_secs(3600),
            max_live_per_process: 16,
            jwt_svid_ttl: Duration::from_secs(300),
        },
        crate::tasks::FeedConfig {
            trust_domain: trust_domain().as_str().to_owned(),
            node: node.map(str::to_owned),
            heartbeat_interval: Duration::from_secs(1),
        },
    )
    .await
    .unwrap();
    Fixture {
        _dir: dir,
        authority,
        store,
        manager,
        consent,
    }
}

fn pid() -> i32 {
    i32::try_from(std::process::id()).unwrap()
}

/// A BeginTask for [`CLIENT`] under the fixture's consent.
pub(crate) fn request(entitled: Entitlement) -> BeginRequest {
    BeginRequest {
        client: client(),
        subject: "alice".into(),
        purpose: "review".into(),
        server: "github".parse().unwrap(),
        scopes: vec!["github/tool/get_pull_request".parse().unwrap()],
        lifetime: None,
        owner_pid: pid(),
        owner_fd: None,
        actor: "test".into(),
        entitled,
    }
}

/// Every SVID (serial → not_after) the task's process has been shown, as its
/// Workload API streams would see it.
#[derive(Clone)]
struct Shown(Arc<Mutex<BTreeMap<String, i64>>>);

impl Shown {
    fn track(manager: &TaskManager, task_id: &str) -> Shown {
        let shown = Shown(Arc::default());
        let mut rx = manager.subscribe_owner(pid());
        let (seen, id) = (Arc::clone(&shown.0), task_id.to_owned());
        tokio::spawn(async move {
            loop {
                for view in rx.borrow_and_update().iter().filter(|v| v.id == id) {
                    seen.lock()
                        .unwrap()
                        .insert(view.svid.serial_hex.clone(), view.svid.not_after_unix);
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        shown
    }

    fn get(&self) -> BTreeMap<String, i64> {
        self.0.lock().unwrap().clone()
    }
}

/// Whether the process's streams show the task right now.
fn shown_now(manager: &TaskManager, task_id: &str) -> bool {
    manager
        .subscribe_owner(pid())
        .borrow()
        .iter()
        .any(|v| v.id == task_id)
}

/// Lets spawned work (the tracker) catch up with what was just published.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The revocation on the feed and the one in the store (what a restarted agent
/// publishes) both cover every serial in `shown`, until its `not_after`, so a verifier
/// refuses each of them for as long as it could be presented.
async fn assert_revocation_covers(f: &Fixture, task_id: &str, shown: &BTreeMap<String, i64>) {
    assert!(!shown.is_empty(), "the task's first SVID was shown");
    let feed = f.manager.feed().current();
    let on_feed = feed
        .revoked
        .iter()
        .find(|r| r.task_id == task_id)
        .unwrap_or_else(|| panic!("task {task_id} is not on the revocation feed"));
    let stored = f.store.revocations(0).await.unwrap();
    let in_store = stored
        .iter()
        .find(|r| r.task_id == task_id)
        .unwrap_or_else(|| panic!("task {task_id} has no stored revocation"));
    for (what, r) in [("feed", &**on_feed), ("store", in_store)] {
        for (serial, not_after) in shown {
            assert!(
                r.serials.contains(serial),
                "{what}: serial {serial} was shown but is not revoked ({:?})",
                r.serials
            );
            assert!(
                r.until >= *not_after,
                "{what}: revocation kept until {} but SVID {serial} was shown and is valid until {not_after}",
                r.until
            );
        }
    }
    // The feed drops the entry only once every SVID shown has expired.
    let last = shown.values().max().copied().unwrap();
    f.manager.feed().prune(last - 1);
    assert!(f.manager.feed().contains(task_id), "pruned before {last}");
}

/// A rotated SVID's `not_after` must be later than the first's for the tests to tell
/// them apart: wait past the first SVID's issuance second.
async fn next_second() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_recorded_after_a_consent_withdrawal_is_never_shown() {
    let f = fixture().await;
    let (task, _) = f
        .manager
        .begin(request(Entitlement::granted()))
        .await
        .unwrap();
    let shown = Shown::track(&f.manager, &task.id.to_string());
    next_second().await;

    // The withdrawal prepares its revocations, a rotation issues a new SVID, the
    // withdrawal reaches the store first, and only then does the rotation try to record.
    let mut withdraw_held = f.manager.hooks.arm(Pause::WithdrawPrepared);
    let mut rotate_held = f.manager.hooks.arm(Pause::RotateIssued);
    let withdraw = tokio::spawn({
        let (m, c) = (Arc::clone(&f.manager), f.consent.clone());
        async move { m.withdraw_consent(&c, "admin").await }
    });
    withdraw_held.reached().await;
    let live = f
        .manager
        .lock_live()
        .get(&task.id.to_string())
        .cloned()
        .unwrap();
    let rotate = tokio::spawn({
        let m = Arc::clone(&f.manager);
        async move { m.rotate(&live).await }
    });
    rotate_held.reached().await;
    settle().await;
    withdraw_held.resume();
    let (_, ended) = withdraw.await.unwrap().unwrap().unwrap();
    assert_eq!(ended, [task.id.to_string()]);
    rotate_held.resume();
    let still_live = rotate.await.unwrap().unwrap();
    settle().await;

    assert!(
        !shown_now(&f.manager, &task.id.to_string()),
        "ended task still shown"
    );
    assert_revocation_covers(&f, &task.id.to_string(), &shown.get()).await;
    assert!(!still_live, "the rotation reports the task ended");
    assert_eq!(shown.get().len(), 1, "the rotated SVID was never shown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_recorded_before_a_consent_withdrawal_is_revoked_with_it() {
    let f = fixture().await;
    let (task, _) = f
        .manager
        .begin(request(Entitlement::granted()))
        .await
        .unwrap();
    let shown = Shown::track(&f.manager, &task.id.to_string());
    next_second().await;

    // The withdrawal prepares its revocations (with the first SVID's `until`), then a
    // whole rotation happens before the withdrawal reaches the store.
    let mut withdraw_held = f.manager.hooks.arm(Pause::WithdrawPrepared);
    let withdraw = tokio::spawn({
        let (m, c) = (Arc::clone(&f.manager), f.consent.clone());
        async move { m.withdraw_consent(&c, "admin").await }
    });
    withdraw_held.reached().await;
    let live = f
        .manager
        .lock_live()
        .get(&task.id.to_string())
        .cloned()
        .unwrap();
    assert!(f.manager.rotate(&live).await.unwrap());
    settle().await;
    assert_eq!(shown.get().len(), 2, "the rotated SVID is shown");
    withdraw_held.resume();
    withdraw.await.unwrap().unwrap().unwrap();
    settle().await;

    assert!(
        !shown_now(&f.manager, &task.id.to_string()),
        "ended task still shown"
    );
    assert_revocation_covers(&f, &task.id.to_string(), &shown.get()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_waits_for_a_stored_task_to_go_live_and_then_ends_it() {
    let f = fixture().await;
    let mut begin_held = f.manager.hooks.arm(Pause::BeginStored);
    let begin = tokio::spawn({
        let m = Arc::clone(&f.manager);
        async move { m.begin(request(Entitlement::granted())).await }
    });
    begin_held.reached().await;
    // The task is stored, not yet live. Give a withdrawal every chance to run now.
    let mut withdraw = tokio::spawn({
        let (m, c) = (Arc::clone(&f.manager), f.consent.clone());
        async move { m.withdraw_consent(&c, "admin").await }
    });
    let early = tokio::time::timeout(Duration::from_millis(500), &mut withdraw).await;
    begin_held.resume();
    let (task, svid) = begin.await.unwrap().unwrap();
    let withdrawn = match early {
        Ok(done) => done,
        Err(_) => withdraw.await,
    };
    let (_, ended) = withdrawn.unwrap().unwrap().unwrap();
    assert_eq!(ended, [task.id.to_string()]);
    settle().await;

    assert_eq!(f.manager.live_count(), 0, "a withdrawn task is live");
    assert!(
        !shown_now(&f.manager, &task.id.to_string()),
        "withdrawn task still shown"
    );
    let stored = f.store.get_task(&task.id).await.unwrap().unwrap();
    assert_eq!(stored.end_reason.as_deref(), Some("consent_withdrawn"));
    let shown = BTreeMap::from([(svid.serial_hex.clone(), svid.not_after_unix)]);
    assert_revocation_covers(&f, &task.id.to_string(), &shown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_revoke_of_a_task_not_yet_live_ends_it_once_it_is() {
    let f = fixture().await;
    let mut begin_held = f.manager.hooks.arm(Pause::BeginStored);
    let begin = tokio::spawn({
        let m = Arc::clone(&f.manager);
        async move { m.begin(request(Entitlement::granted())).await }
    });
    begin_held.reached().await;
    // Stored, so an administrator can list it and revoke it, but not yet live.
    let listed = f.store.live_tasks().await.unwrap();
    let id = listed[0].id;
    let mut revoke = tokio::spawn({
        let (m, id) = (Arc::clone(&f.manager), id);
        async move {
            m.end(&id.to_string(), EndReason::Revoked, "uid:0", None)
                .await
        }
    });
    let early = tokio::time::timeout(Duration::from_millis(500), &mut revoke).await;
    begin_held.resume();
    let (task, svid) = begin.await.unwrap().unwrap();
    assert_eq!(task.id, id);
    let revoked = match early {
        Ok(done) => done,
        Err(_) => revoke.await,
    };
    let revoked = revoked.unwrap().unwrap();
    assert_eq!(
        revoked.end_reason.as_deref(),
        Some("revoked"),
        "{revoked:?}"
    );
    settle().await;

    assert_eq!(f.manager.live_count(), 0, "a revoked task is live");
    assert!(
        !shown_now(&f.manager, &id.to_string()),
        "revoked task still shown"
    );
    let shown = BTreeMap::from([(svid.serial_hex.clone(), svid.not_after_unix)]);
    assert_revocation_covers(&f, &id.to_string(), &shown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_while_a_rotation_is_being_published_keeps_the_task_off_its_streams() {
    let f = fixture().await;
    let (task, _) = f
        .manager
        .begin(request(Entitlement::granted()))
        .await
        .unwrap();
    let shown = Shown::track(&f.manager, &task.id.to_string());
    next_second().await;

    let mut rotate_held = f.manager.hooks.arm(Pause::RotateRecorded);
    let live = f
        .manager
        .lock_live()
        .get(&task.id.to_string())
        .cloned()
        .unwrap();
    let rotate = tokio::spawn({
        let (m, live) = (Arc::clone(&f.manager), Arc::clone(&live));
        async move { m.rotate(&live).await }
    });
    rotate_held.reached().await;
    // Recorded, about to be shown: the task ends now.
    f.manager
        .end(&task.id.to_string(), EndReason::Ended, "test", None)
        .await
        .unwrap();
    rotate_held.resume();
    let _ = rotate.await.unwrap();
    settle().await;

    assert!(
        !shown_now(&f.manager, &task.id.to_string()),
        "an ended task is back on its process's streams"
    );
    // Whatever was shown is revoked, and so is every SVID the store recorded.
    assert_revocation_covers(&f, &task.id.to_string(), &shown.get()).await;
    let recorded = f.store.get_task(&task.id).await.unwrap().unwrap().serials;
    assert_eq!(recorded.len(), 2);
    let feed = f.manager.feed().current();
    let on_feed = feed
        .revoked
        .iter()
        .find(|r| r.task_id == task.id.to_string())
        .unwrap();
    assert_eq!(on_feed.serials, recorded);
    assert!(on_feed.until >= live.state().until);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_clients_tasks_revokes_each_and_spares_other_clients() {
    let f = fixture().await;
    let (a, _) = f
        .manager
        .begin(request(Entitlement::granted()))
        .await
        .unwrap();
    let (b, _) = f
        .manager
        .begin(request(Entitlement::granted()))
        .await
        .unwrap();
    let mut ended = f
        .manager
        .end_client_tasks(CLIENT, EndReason::EntryDeleted, "uid:0")
        .await
        .unwrap();
    ended.sort();
    let mut expected = vec![a.id.to_string(), b.id.to_string()];
    expected.sort();
    assert_eq!(ended, expected);
    assert_eq!(f.manager.live_count(), 0);
    for id in &expected {
        assert!(!shown_now(&f.manager, id));
        let stored = f
            .store
            .get_task(&id.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.end_reason.as_deref(), Some("entry_deleted"));
        assert!(f.manager.feed().contains(id));
    }
    assert!(
        f.manager
            .end_client_tasks("someone-else", EndReason::EntryDeleted, "uid:0")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_task_attested_before_its_entry_was_deleted_is_refused() {
    let f = fixture().await;
    let uid = nix::unistd::geteuid().as_raw();
    let selector = format!("unix:uid:{uid}");
    let entry = f
        .store
        .create_entry(
            NewEntry {
                kind: EntryKind::Client,
                client: CLIENT.into(),
                selectors: vec![selector.clone()],
                svid_ttl_secs: None,
            },
            "admin",
        )
        .await
        .unwrap();
    let metrics = Arc::new(Metrics::default());
    let cache = SvidCache::new(
        Arc::clone(&f.authority),
        f.store.clone(),
        Duration::from_secs(3600),
        metrics,
    )
    .await
    .unwrap();
    let (stop, stopped) = crate::drain::channel();
    let cache_task = tokio::spawn(Arc::clone(&cache).run(stopped));
    let att = Attestation {
        pid: pid(),
        uid,
        selectors: BTreeSet::from([selector.parse::<Selector>().unwrap()]),
    };
    let entitled = |attested| {
        super::super::service::entitlement(Arc::clone(&cache), attested, att.clone(), client())
    };

    // Attested while the entry exists: entitled.
    let attested = cache.current();
    assert_eq!(attested.clients_for(&att), [client()]);
    f.manager
        .begin(request(entitled(Arc::clone(&attested))))
        .await
        .unwrap();

    // Attested then, but the entry is deleted before the call holds the gate.
    assert!(f.store.delete_entry(&entry.id, "admin").await.unwrap());
    let err = f
        .manager
        .begin(request(entitled(attested)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TaskError::NotEntitled { ref client } if client == CLIENT),
        "{err}"
    );
    drop(stop);
    cache_task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_jwt_is_granted_only_to_its_live_process_and_its_expiry_is_revoked_with_it() {
    let f = fixture().await;
    let (task, _) = f
        .manager
        .begin(request(Entitlement::granted()))
        .await
        .unwrap();
    let id = task.id.to_string();
    let spiffe_id = client().task(task.id).to_string();
    let t = now();
    let long = Duration::from_secs(100_000);
    // Another process, or a look-alike ID of another client: nothing.
    assert!(
        f.manager
            .grant_jwt(pid() + 1, &spiffe_id, long, t)
            .is_none()
    );
    let other = spiffe_id.replace(CLIENT, "intruder");
    assert!(f.manager.grant_jwt(pid(), &other, long, t).is_none());
    // Its own process: the claims, the expiry capped by the deadline.
    let (claims, exp) = f.manager.grant_jwt(pid(), &spiffe_id, long, t).unwrap();
    assert_eq!(claims.task_id, task.id);
    assert_eq!(exp, task.deadline);
    assert!(f.manager.is_live(&id));

    f.manager
        .end(&id, EndReason::Ended, "test", None)
        .await
        .unwrap();
    assert!(!f.manager.is_live(&id));
    assert!(f.manager.grant_jwt(pid(), &spiffe_id, long, t).is_none());
    // The revocation outlives the token it granted, on the feed and in the store.
    let set = f.manager.feed().current();
    let entry = set.revoked.iter().find(|r| r.task_id == id).unwrap();
    assert!(
        entry.until >= exp + tessera_identity::JWT_LEEWAY_SECS,
        "{} < {exp}",
        entry.until
    );
    let stored = f.store.revocations(t).await.unwrap();
    let stored = stored.iter().find(|r| r.task_id == id).unwrap();
    assert_eq!(stored.until, entry.until);
}
