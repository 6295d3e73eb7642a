use super::*;

fn rev(id: &str, until: i64) -> Revocation {
    Revocation {
        task_id: id.into(),
        spiffe_id: format!("spiffe://td/client/c/task/{id}"),
        serials: vec!["01".into()],
        reason: "ended".into(),
        revoked_at_ms: 0,
        until,
    }
}

fn config(node: Option<&str>) -> FeedConfig {
    FeedConfig {
        trust_domain: "td".into(),
        node: node.map(str::to_owned),
        heartbeat_interval: Duration::from_secs(1),
    }
}

fn decode(bytes: &Bytes) -> RevocationUpdate {
    RevocationUpdate::decode(bytes.clone()).expect("an encoded update")
}

fn delta_of(bytes: &Bytes) -> RevocationDelta {
    match decode(bytes).update {
        Some(revocation_update::Update::Delta(d)) => d,
        other => panic!("not a delta: {other:?}"),
    }
}

#[test]
fn add_is_idempotent_per_task_and_makes_one_delta_per_change() {
    let feed = RevocationFeed::new(config(None), vec![rev("a", 100)]);
    let mut rx = feed.subscribe();
    rx.borrow_and_update();
    feed.add([rev("b", 100), rev("a", 100)]);
    assert!(rx.has_changed().unwrap());
    assert_eq!(feed.version(), 2);
    assert!(feed.contains("a") && feed.contains("b"));
    let deltas = feed.deltas_after(1).unwrap();
    assert_eq!(deltas.len(), 1);
    let d = delta_of(&deltas[0].bytes);
    assert_eq!((d.from_version, d.version), (1, 2));
    assert_eq!(d.revoked.len(), 1, "only what was new: {d:?}");
    assert_eq!(d.revoked[0].task_id, "b");
    // Nothing new: no version.
    feed.add([rev("b", 100)]);
    assert_eq!(feed.version(), 2);
}

#[test]
fn a_later_expiry_for_a_held_task_replaces_it_and_is_passed_on() {
    let feed = RevocationFeed::new(config(None), vec![rev("a", 100)]);
    // An earlier or equal expiry is nothing new.
    feed.add([rev("a", 50), rev("a", 100)]);
    assert_eq!(feed.version(), 1);
    // A later one (a contested id's revocation growing to the latest claimed deadline)
    // is a delta of its own, so verifiers behind this agent keep refusing that long.
    feed.add([rev("a", 900)]);
    assert_eq!(feed.version(), 2);
    let d = delta_of(&feed.deltas_after(1).unwrap()[0].bytes);
    assert_eq!(d.revoked.len(), 1);
    assert_eq!(
        (d.revoked[0].task_id.as_str(), d.revoked[0].until_unix),
        ("a", 900)
    );
    assert!(feed.contains("a"));
}

#[test]
fn a_delta_is_encoded_once_and_its_bytes_do_not_grow_with_the_set() {
    let feed = RevocationFeed::new(config(None), Vec::new());
    feed.add([rev("first", 100)]);
    let small = feed.deltas_after(1).unwrap()[0].bytes.len();
    feed.add((0..10_000).map(|i| rev(&format!("t{i:05}"), 100)));
    let v = feed.version();
    feed.add([rev("last0", 100)]);
    let deltas = feed.deltas_after(v).unwrap();
    assert_eq!(deltas.len(), 1);
    assert_eq!(
        deltas[0].bytes.len(),
        small,
        "one revocation costs the same bytes at 1 entry and at 10,001"
    );
    // Every follower gets the same allocation.
    let again = feed.deltas_after(v).unwrap();
    assert_eq!(deltas[0].bytes.as_ptr(), again[0].bytes.as_ptr());
}

#[test]
fn resume_gives_the_missed_deltas_and_a_stale_or_foreign_version_is_behind() {
    let feed = RevocationFeed::new(config(None), Vec::new());
    for i in 0..5 {
        feed.add([rev(&format!("t{i}"), 100)]);
    }
    assert_eq!(feed.version(), 6);
    let missed = feed.deltas_after(3).unwrap();
    assert_eq!(
        missed
            .iter()
            .map(|d| (d.from, d.version))
            .collect::<Vec<_>>(),
        [(3, 4), (4, 5), (5, 6)]
    );
    assert!(feed.deltas_after(6).unwrap().is_empty(), "in step");
    assert!(feed.deltas_after(7).is_err(), "a version from the future");
}

#[test]
fn the_ring_is_bounded_and_a_follower_behind_it_needs_a_snapshot() {
    let feed = RevocationFeed::new(config(None), Vec::new());
    for i in 0..RING_MAX_DELTAS + 10 {
        feed.add([rev(&format!("t{i}"), 100)]);
    }
    assert!(feed.deltas_after(1).is_err());
    let v = feed.version();
    let oldest = v - RING_MAX_DELTAS as u64;
    assert_eq!(feed.deltas_after(oldest).unwrap().len(), RING_MAX_DELTAS);
    assert!(feed.deltas_after(oldest - 1).is_err());
}

#[test]
fn a_snapshot_is_paged_under_the_message_limit_and_holds_every_entry_once() {
    let feed = RevocationFeed::new(
        config(None),
        (0..20_000)
            .map(|i| rev(&format!("task-{i:06}"), 100))
            .collect(),
    );
    feed.add_remote(
        Vec::new(),
        vec![RevokedNodeCa {
            node: "spiffe://td/node/b".into(),
            serial: "ca01".into(),
            revoked_at_unix_ms: 1,
            until_unix: 100,
        }],
    );
    let (version, pages) = feed.snapshot();
    assert!(pages.len() >= 2, "20,000 entries do not fit one page");
    let mut ids = HashSet::new();
    let mut cas = 0;
    for (i, page) in pages.iter().enumerate() {
        assert!(page.len() < 1024 * 1024, "page {i}: {} bytes", page.len());
        let update = decode(page);
        assert_eq!(update.feed_id, feed.feed_id());
        let Some(revocation_update::Update::Snapshot(s)) = update.update else {
            panic!("not a snapshot")
        };
        assert_eq!(s.version, version);
        assert_eq!(s.more, i + 1 < pages.len(), "only the last page ends it");
        for t in s.revoked {
            assert!(ids.insert(t.task_id), "an entry on two pages");
        }
        cas += s.revoked_node_cas.len();
    }
    assert_eq!(ids.len(), 20_000);
    assert_eq!(cas, 1);
    // Encoded once per version.
    let (_, again) = feed.snapshot();
    assert!(Arc::ptr_eq(&pages, &again));
}

#[test]
fn a_huge_change_is_split_into_deltas_that_each_fit_a_message() {
    let feed = RevocationFeed::new(config(None), Vec::new());
    feed.add((0..20_000).map(|i| rev(&format!("task-{i:06}"), 100)));
    let deltas = feed.deltas_after(1).unwrap();
    assert!(deltas.len() >= 2);
    let mut n = 0;
    let mut at = 1;
    for d in &deltas {
        assert!(d.bytes.len() < 1024 * 1024);
        let delta = delta_of(&d.bytes);
        assert_eq!(delta.from_version, at, "contiguous");
        at = delta.version;
        n += delta.revoked.len();
    }
    assert_eq!(n, 20_000);
}

#[test]
fn prune_keeps_entries_until_their_svids_expire_plus_a_grace() {
    let feed = RevocationFeed::new(config(None), vec![rev("a", 100), rev("b", 200)]);
    assert_eq!(feed.prune(100 + PRUNE_GRACE_SECS - 1), 0);
    let v = feed.version();
    assert_eq!(feed.prune(100 + PRUNE_GRACE_SECS), 1);
    assert!(!feed.contains("a") && feed.contains("b"));
    // Legacy watchers learn by a new version; followers by an empty delta that keeps
    // their chain of versions whole.
    let d = delta_of(&feed.deltas_after(v).unwrap()[0].bytes);
    assert!(d.revoked.is_empty() && d.from_version == v);
    let legacy = RevocationSet::decode(feed.legacy_set()).unwrap();
    assert_eq!(legacy.revoked.len(), 1);
    assert_eq!(legacy.version, feed.version());
}

#[test]
fn the_legacy_set_is_encoded_once_per_version() {
    let feed = RevocationFeed::new(config(None), vec![rev("a", 100)]);
    let a = feed.legacy_set();
    let b = feed.legacy_set();
    assert_eq!(a.as_ptr(), b.as_ptr());
    let set = RevocationSet::decode(a).unwrap();
    assert_eq!((set.version, set.trust_domain.as_str()), (1, "td"));
    feed.add([rev("b", 100)]);
    assert_eq!(
        RevocationSet::decode(feed.legacy_set())
            .unwrap()
            .revoked
            .len(),
        2
    );
}

#[test]
fn cluster_freshness_is_the_servers_never_ahead_of_it() {
    let standalone = RevocationFeed::new(config(None), Vec::new());
    assert!(standalone.current_as_of_ms() >= now_ms() - 1000);
    let cluster = RevocationFeed::new(config(Some("spiffe://td/node/a")), Vec::new());
    assert_eq!(
        cluster.current_as_of_ms(),
        0,
        "nothing vouched for before the server"
    );
    cluster.server_current_as_of(1_000);
    cluster.server_current_as_of(500);
    assert_eq!(cluster.current_as_of_ms(), 1_000, "it only moves forward");
    cluster.server_current_as_of(i64::MAX);
    assert!(
        cluster.current_as_of_ms() <= now_ms(),
        "never past our own now"
    );
    // Local ends name the node in cluster mode.
    cluster.add([rev("a", 100)]);
    assert_eq!(cluster.tasks()[0].node, "spiffe://td/node/a");
}

#[test]
fn server_entries_merge_and_only_new_ones_are_reported() {
    let feed = RevocationFeed::new(config(Some("spiffe://td/node/a")), vec![rev("mine", 100)]);
    let server = |id: &str| RevokedTask {
        task_id: id.into(),
        spiffe_id: format!("spiffe://td/client/c/task/{id}"),
        serials: vec!["0f".into()],
        reason: "consent_withdrawn".into(),
        revoked_at_unix_ms: 1,
        until_unix: 100,
        node: "spiffe://td/node/b".into(),
    };
    let added = feed.add_remote(vec![server("mine"), server("theirs")], Vec::new());
    assert_eq!(added, ["theirs"]);
    assert!(
        feed.add_remote(vec![server("theirs")], Vec::new())
            .is_empty()
    );
    assert!(feed.contains("theirs"));
}

#[test]
fn feed_ids_differ_between_incarnations() {
    let a = RevocationFeed::new(config(None), Vec::new());
    let b = RevocationFeed::new(config(None), Vec::new());
    assert_ne!(a.feed_id(), b.feed_id());
    assert_eq!(a.feed_id().len(), 32);
}
