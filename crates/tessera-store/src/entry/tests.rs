use std::collections::HashSet;

use super::*;
use crate::testing::{new_entry, open_temp};

#[tokio::test]
async fn create_list_get_delete_round_trip() {
    let (_dir, _path, store) = open_temp().await;
    let mut new = new_entry("code-reviewer", &["unix:uid:1001", "unix:sha256:ab"]);
    new.svid_ttl_secs = Some(600);
    let created = store.create_entry(new, "admin").await.unwrap();
    assert!(ulid::Ulid::from_string(&created.id).is_ok());
    assert_eq!(created.client, "code-reviewer");
    assert_eq!(created.selectors, ["unix:sha256:ab", "unix:uid:1001"]);
    assert_eq!(created.svid_ttl_secs, Some(600));
    assert!(created.created_at > 1_600_000_000);

    let other = store
        .create_entry(new_entry("docs-bot", &["unix:uid:1002"]), "admin")
        .await
        .unwrap();

    // Oldest first by creation time (seconds), then id: two entries made in one
    // second come in id order, which within one millisecond is random.
    let mut expected = vec![created.clone(), other.clone()];
    expected.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    assert_eq!(store.list_entries().await.unwrap(), expected);
    assert_eq!(
        store.get_entry(&created.id).await.unwrap(),
        Some(created.clone())
    );
    assert_eq!(
        store.get_entry("01ARZ3NDEKTSV4RRFFQ69G5FAV").await.unwrap(),
        None
    );

    assert!(store.delete_entry(&created.id, "admin").await.unwrap());
    assert!(!store.delete_entry(&created.id, "admin").await.unwrap());
    assert_eq!(store.get_entry(&created.id).await.unwrap(), None);
    assert_eq!(store.list_entries().await.unwrap(), vec![other]);
}

#[tokio::test]
async fn duplicate_selector_set_is_refused_with_existing_id() {
    let (_dir, _path, store) = open_temp().await;
    let first = store
        .create_entry(new_entry("a", &["k8s:ns:agents", "k8s:sa:a"]), "admin")
        .await
        .unwrap();
    // Same set in another order, with a repeat: still the same set.
    let error = store
        .create_entry(
            new_entry("a", &["k8s:sa:a", "k8s:ns:agents", "k8s:sa:a"]),
            "admin",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Conflict(Conflict::DuplicateEntry { existing_id }) if *existing_id == first.id),
        "{error:?}"
    );
    // Another client, or a different set, is not a duplicate.
    store
        .create_entry(new_entry("b", &["k8s:ns:agents", "k8s:sa:a"]), "admin")
        .await
        .unwrap();
    store
        .create_entry(new_entry("a", &["k8s:ns:agents"]), "admin")
        .await
        .unwrap();
    assert_eq!(store.list_entries().await.unwrap().len(), 3);
}

#[tokio::test]
async fn entries_survive_close_and_reopen() {
    let (_dir, path, store) = open_temp().await;
    let created = store
        .create_entry(new_entry("a", &["unix:uid:1"]), "admin")
        .await
        .unwrap();
    store.close().await;

    let store = Store::open(&path).await.unwrap();
    assert_eq!(store.list_entries().await.unwrap(), vec![created.clone()]);
    let audit = store.list_audit(0, 10).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].detail["entry"]["id"], created.id.as_str());
}

#[tokio::test]
async fn entry_changes_are_audited_in_order() {
    let (_dir, _path, store) = open_temp().await;
    let before = store
        .append_audit("test.marker", "t", &json!({}))
        .await
        .unwrap();
    let created = store
        .create_entry(new_entry("a", &["unix:uid:1"]), "uid:0")
        .await
        .unwrap();
    let _ = store
        .create_entry(new_entry("a", &["unix:uid:1"]), "uid:0")
        .await
        .unwrap_err();
    assert!(!store.delete_entry("no-such-entry", "uid:0").await.unwrap());
    store.delete_entry(&created.id, "uid:1").await.unwrap();

    let audit = store.list_audit(before, 100).await.unwrap();
    let kinds: Vec<_> = audit.iter().map(|r| r.kind.as_str()).collect();
    // The refused duplicate and the no-op delete wrote nothing.
    assert_eq!(kinds, ["entry.create", "entry.delete"]);
    assert!(audit[0].seq > before && audit[1].seq > audit[0].seq);
    assert!(audit[1].at_unix_ms >= audit[0].at_unix_ms);
    assert_eq!(audit[0].actor, "uid:0");
    assert_eq!(audit[1].actor, "uid:1");
    let expected = serde_json::to_value(&created).unwrap();
    assert_eq!(audit[0].detail["entry"], expected);
    assert_eq!(audit[1].detail["entry"], expected);
}

#[tokio::test]
async fn entry_change_rolls_back_when_its_audit_record_fails() {
    let (_dir, _path, store) = open_temp().await;
    let kept = store
        .create_entry(new_entry("a", &["unix:uid:1"]), "admin")
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TRIGGER audit_down BEFORE INSERT ON audit
         BEGIN SELECT RAISE(ABORT, 'audit down'); END",
    )
    .execute(&store.inner.pool)
    .await
    .unwrap();
    let revision = store.entries_revision();

    let error = store
        .create_entry(new_entry("b", &["unix:uid:2"]), "admin")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Database(_)), "{error:?}");
    let error = store.delete_entry(&kept.id, "admin").await.unwrap_err();
    assert!(matches!(error, StoreError::Database(_)), "{error:?}");

    assert_eq!(store.list_entries().await.unwrap(), vec![kept]);
    assert_eq!(store.entries_revision(), revision);
}

#[tokio::test]
async fn revision_bumps_and_watchers_are_notified() {
    let (_dir, _path, store) = open_temp().await;
    let mut watch = store.watch_entries();
    assert_eq!(store.entries_revision(), 0);
    assert_eq!(*watch.borrow_and_update(), 0);

    let created = store
        .create_entry(new_entry("a", &["unix:uid:1"]), "admin")
        .await
        .unwrap();
    assert_eq!(store.entries_revision(), 1);
    tokio::time::timeout(std::time::Duration::from_secs(5), watch.changed())
        .await
        .expect("notified")
        .unwrap();
    assert_eq!(*watch.borrow_and_update(), 1);

    // Failures and no-ops do not bump.
    let _ = store
        .create_entry(new_entry("a", &["unix:uid:1"]), "admin")
        .await
        .unwrap_err();
    assert!(!store.delete_entry("nope", "admin").await.unwrap());
    assert_eq!(store.entries_revision(), 1);
    assert!(!watch.has_changed().unwrap());

    // A clone shares the counter.
    let clone = store.clone();
    clone.delete_entry(&created.id, "admin").await.unwrap();
    assert_eq!(store.entries_revision(), 2);
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_from_16_tasks_all_land_with_unique_ids() {
    let (_dir, _path, store) = open_temp().await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create_entry(new_entry(&format!("client-{i}"), &["unix:uid:1"]), "admin")
                    .await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for task in tasks {
        let entry = task.await.unwrap().unwrap();
        assert!(ids.insert(entry.id));
    }
    assert_eq!(ids.len(), 16);
    let listed: HashSet<_> = store
        .list_entries()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(store.entries_revision(), 16);
    assert_eq!(store.list_audit(0, 100).await.unwrap().len(), 16);
}

#[tokio::test]
async fn concurrent_duplicates_create_exactly_one_entry() {
    let (_dir, _path, store) = open_temp().await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create_entry(new_entry("a", &["unix:uid:1"]), "admin")
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => created += 1,
            Err(StoreError::Conflict(Conflict::DuplicateEntry { .. })) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created, 1);
}

#[tokio::test]
async fn limits_are_rejected() {
    let (_dir, _path, store) = open_temp().await;
    let long_client = "c".repeat(MAX_CLIENT_LEN + 1);
    let long_selector = "s".repeat(MAX_SELECTOR_LEN + 1);
    let many: Vec<String> = (0..=MAX_SELECTORS).map(|i| format!("s:{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();

    type Expect = fn(&StoreError) -> bool;
    let cases: Vec<(NewEntry, Expect)> = vec![
        (new_entry("", &["s"]), |e| {
            matches!(e, StoreError::Invalid(InvalidInput::Client { len: 0 }))
        }),
        (new_entry(&long_client, &["s"]), |e| {
            matches!(e, StoreError::Invalid(InvalidInput::Client { len: 129 }))
        }),
        (new_entry("a", &[]), |e| {
            matches!(
                e,
                StoreError::Invalid(InvalidInput::SelectorCount { count: 0 })
            )
        }),
        (new_entry("a", &many), |e| {
            matches!(
                e,
                StoreError::Invalid(InvalidInput::SelectorCount { count: 33 })
            )
        }),
        (new_entry("a", &["ok", ""]), |e| {
            matches!(
                e,
                StoreError::Invalid(InvalidInput::Selector { index: 1, len: 0 })
            )
        }),
        (new_entry("a", &[&long_selector]), |e| {
            matches!(
                e,
                StoreError::Invalid(InvalidInput::Selector {
                    index: 0,
                    len: 1025
                })
            )
        }),
        (
            NewEntry {
                svid_ttl_secs: Some(0),
                ..new_entry("a", &["s"])
            },
            |e| matches!(e, StoreError::Invalid(InvalidInput::SvidTtl)),
        ),
    ];
    for (new, expected) in cases {
        let error = store.create_entry(new.clone(), "admin").await.unwrap_err();
        assert!(expected(&error), "{new:?} gave {error:?}");
    }
    let error = store
        .create_entry(new_entry("a", &["s"]), &"x".repeat(3000))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Invalid(InvalidInput::AuditField { field: "actor", .. })
        ),
        "{error:?}"
    );

    // The limits themselves are accepted.
    let max_selectors: Vec<String> = (0..MAX_SELECTORS).map(|i| format!("s:{i}")).collect();
    let max_selectors: Vec<&str> = max_selectors.iter().map(String::as_str).collect();
    store
        .create_entry(
            new_entry(&"c".repeat(MAX_CLIENT_LEN), &max_selectors),
            "admin",
        )
        .await
        .unwrap();
    store
        .create_entry(new_entry("a", &[&"s".repeat(MAX_SELECTOR_LEN)]), "admin")
        .await
        .unwrap();
    assert_eq!(store.list_entries().await.unwrap().len(), 2);
    assert_eq!(store.entries_revision(), 2);
}

#[tokio::test]
async fn corrupt_selectors_are_an_error_not_skipped() {
    let (_dir, _path, store) = open_temp().await;
    store
        .create_entry(new_entry("a", &["unix:uid:1"]), "admin")
        .await
        .unwrap();
    // Valid JSON (passes the CHECK) but not an array of strings.
    sqlx::query(
        "INSERT INTO entries (id, client, selectors, svid_ttl_secs, created_at)
         VALUES ('bad', 'b', '{\"uid\":1}', NULL, 0)",
    )
    .execute(&store.inner.pool)
    .await
    .unwrap();

    let error = store.list_entries().await.unwrap_err();
    assert!(
        matches!(&error, StoreError::Corrupt { table: "entries", id, .. } if id == "bad"),
        "{error:?}"
    );
    let error = store.get_entry("bad").await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
}

#[tokio::test]
async fn out_of_range_ttl_is_corrupt() {
    let (_dir, _path, store) = open_temp().await;
    sqlx::query(
        "INSERT INTO entries (id, client, selectors, svid_ttl_secs, created_at)
         VALUES ('big', 'b', '[\"s\"]', 5000000000, 0)",
    )
    .execute(&store.inner.pool)
    .await
    .unwrap();
    let error = store.get_entry("big").await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
}
