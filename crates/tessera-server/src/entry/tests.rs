use tessera_store::{EntryKind, NewEntry};

use super::*;
use crate::testing::{new_entry, store};

#[tokio::test]
async fn entries_are_created_listed_and_deleted_with_audit_and_versions() {
    let Some((_pg, store)) = store("entries").await else {
        return;
    };
    let a = store
        .create_entry(
            new_entry("reviewer", &["unix:uid:1001", "unix:path:/bin/r"]),
            "uid:0",
        )
        .await
        .unwrap();
    assert_eq!(a.version, 1);
    assert_eq!(
        a.value.selectors,
        ["unix:path:/bin/r", "unix:uid:1001"],
        "sorted"
    );
    let mut server = new_entry("github", &["unix:uid:1002", "unix:uid:1002"]);
    server.kind = EntryKind::Server;
    server.svid_ttl_secs = Some(600);
    let b = store.create_entry(server, "uid:0").await.unwrap();
    assert_eq!(b.version, 2);
    assert_eq!(b.value.selectors, ["unix:uid:1002"], "deduplicated");

    assert_eq!(
        store.list_entries().await.unwrap(),
        [a.value.clone(), b.value.clone()]
    );
    assert_eq!(
        store.get_entry(&b.value.id).await.unwrap(),
        Some(b.value.clone())
    );
    assert_eq!(store.get_entry("nope").await.unwrap(), None);

    let deleted = store.delete_entry(&a.value.id, "uid:0").await.unwrap();
    assert_eq!((deleted.value, deleted.version), (a.value.clone(), 3));
    let again = store.delete_entry(&a.value.id, "uid:0").await.unwrap_err();
    assert!(
        matches!(again, ServerStoreError::NotFound(NotFound::Entry { .. })),
        "{again:?}"
    );
    assert_eq!(
        store.list_entries().await.unwrap(),
        std::slice::from_ref(&b.value)
    );

    let audit = store.list_audit(0, 10).await.unwrap();
    let kinds: Vec<&str> = audit.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["entry.create", "entry.create", "entry.delete"]);
    assert_eq!(audit[2].detail["entry"]["id"], a.value.id.as_str());
    assert_eq!(audit[2].actor, "uid:0");
    assert_eq!(store.current_version().await.unwrap(), 3);
}

/// The same selector set, in any order, for the same client and kind is one entry; for
/// another client or kind it is another.
#[tokio::test]
async fn a_duplicate_entry_is_refused_naming_the_existing_one() {
    let Some((_pg, store)) = store("entries").await else {
        return;
    };
    let first = store
        .create_entry(new_entry("reviewer", &["a", "b"]), "")
        .await
        .unwrap();
    let error = store
        .create_entry(new_entry("reviewer", &["b", "a", "a"]), "")
        .await
        .unwrap_err();
    match error {
        ServerStoreError::Conflict(Conflict::DuplicateEntry { existing_id }) => {
            assert_eq!(existing_id, first.value.id)
        }
        other => panic!("{other:?}"),
    }
    store
        .create_entry(new_entry("other", &["a", "b"]), "")
        .await
        .unwrap();
    let mut server = new_entry("reviewer", &["a", "b"]);
    server.kind = EntryKind::Server;
    store.create_entry(server, "").await.unwrap();
    assert_eq!(
        store.current_version().await.unwrap(),
        3,
        "the refusal made no change"
    );
}

/// The agent store's limits hold here too, and a refused entry changes nothing. The
/// largest allowed selector set (32 KiB) is stored: its uniqueness is checked on a digest.
#[tokio::test]
async fn entries_out_of_limits_are_refused_and_the_largest_allowed_is_stored() {
    let Some((_pg, store)) = store("entries").await else {
        return;
    };
    let long = "x".repeat(MAX_SELECTOR_LEN + 1);
    let too_many: Vec<String> = (0..=MAX_SELECTORS).map(|i| i.to_string()).collect();
    let cases: Vec<NewEntry> = vec![
        new_entry("", &["a"]),
        new_entry(&"c".repeat(MAX_CLIENT_LEN + 1), &["a"]),
        new_entry("c", &[]),
        new_entry("c", &[""]),
        new_entry("c", &[&long]),
        NewEntry {
            selectors: too_many,
            ..new_entry("c", &[])
        },
        NewEntry {
            svid_ttl_secs: Some(0),
            ..new_entry("c", &["a"])
        },
    ];
    for case in cases {
        let error = store.create_entry(case.clone(), "").await.unwrap_err();
        assert!(
            matches!(error, ServerStoreError::Invalid(_)),
            "{case:?}: {error:?}"
        );
    }
    let error = store
        .create_entry(
            new_entry("c", &["a"]),
            &"a".repeat(tessera_store::MAX_AUDIT_ACTOR_LEN + 1),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, ServerStoreError::Invalid(_)), "{error:?}");
    assert_eq!(store.current_version().await.unwrap(), 0);
    assert!(store.list_audit(0, 10).await.unwrap().is_empty());

    let largest: Vec<String> = (0..MAX_SELECTORS)
        .map(|i| format!("{i:02}{}", "s".repeat(MAX_SELECTOR_LEN - 2)))
        .collect();
    let created = store
        .create_entry(
            NewEntry {
                selectors: largest.clone(),
                ..new_entry("c", &[])
            },
            "",
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .get_entry(&created.value.id)
            .await
            .unwrap()
            .unwrap()
            .selectors,
        largest
    );
}
