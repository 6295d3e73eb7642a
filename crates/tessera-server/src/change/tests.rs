use std::collections::BTreeSet;
use std::time::Duration;

use crate::testing::{new_consent, new_entry, second_store, store};
use crate::{Change, ServerStoreError};

/// Writers on two replicas commit concurrently while a reader follows the log with
/// `changes_since`: the reader sees every version exactly once, in order, and never
/// moves past a version that commits later. (Versions from a sequence would fail this:
/// a writer that drew v9 can commit after the one that drew v10.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_following_the_log_never_misses_a_concurrent_write() {
    let Some((pg, one)) = store("changes").await else {
        return;
    };
    let two = second_store(&pg, &one.connect).await;
    const WRITERS: usize = 8;
    const EACH: usize = 25;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = if w % 2 == 0 { one.clone() } else { two.clone() };
        writers.push(tokio::spawn(async move {
            for i in 0..EACH {
                store
                    .create_entry(new_entry(&format!("c{w}"), &[&format!("s{i}")]), "")
                    .await
                    .unwrap();
            }
        }));
    }
    let reader = {
        let store = one.clone();
        tokio::spawn(async move {
            let (mut at, mut seen) = (0, Vec::new());
            while seen.len() < WRITERS * EACH {
                let batch = store.changes_since(at, 7).await.unwrap();
                for change in &batch.changes {
                    assert!(matches!(change, Change::Entry { entry: Some(_), .. }));
                    seen.push(change.version());
                }
                at = batch.version;
                tokio::task::yield_now().await;
            }
            seen
        })
    };
    for writer in writers {
        writer.await.unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .unwrap()
        .unwrap();
    let expected: Vec<i64> = (1..=i64::try_from(WRITERS * EACH).unwrap()).collect();
    assert_eq!(seen, expected);
}

/// A batch reports each record as it is at the batch's version: a deleted entry is gone
/// even at the version that created it, a withdrawn consent is withdrawn.
#[tokio::test]
async fn changes_carry_each_record_as_of_the_batch_version() {
    let Some((_pg, store)) = store("changes").await else {
        return;
    };
    let kept = store
        .create_entry(new_entry("a", &["x"]), "")
        .await
        .unwrap();
    let gone = store
        .create_entry(new_entry("b", &["y"]), "")
        .await
        .unwrap();
    let consent = store.grant_consent(new_consent("a"), "").await.unwrap();
    store.delete_entry(&gone.value.id, "").await.unwrap();
    let withdrawn = store.withdraw_consent(&consent.value.id, "").await.unwrap();

    let batch = store.changes_since(0, 100).await.unwrap();
    assert_eq!((batch.version, batch.more), (5, false));
    assert_eq!(
        batch.changes,
        [
            Change::Entry {
                version: 1,
                id: kept.value.id.clone(),
                entry: Some(kept.value.clone())
            },
            Change::Entry {
                version: 2,
                id: gone.value.id.clone(),
                entry: None
            },
            Change::Consent {
                version: 3,
                id: consent.value.id.clone(),
                consent: Some(withdrawn.value.consent.clone())
            },
            Change::Entry {
                version: 4,
                id: gone.value.id.clone(),
                entry: None
            },
            Change::Consent {
                version: 5,
                id: consent.value.id.clone(),
                consent: Some(withdrawn.value.consent.clone())
            },
        ]
    );
    let page = store.changes_since(1, 2).await.unwrap();
    assert_eq!((page.version, page.more, page.changes.len()), (3, true, 2));
    let end = store.changes_since(5, 100).await.unwrap();
    assert_eq!((end.version, end.more, end.changes.len()), (5, false, 0));

    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot.version, 5);
    assert_eq!(snapshot.entries, [kept.value]);
    assert_eq!(snapshot.consents, [withdrawn.value.consent]);
    assert!(snapshot.nodes.is_empty());
}

/// After pruning, a reader behind the cut is told to take a snapshot; one at or past it
/// carries on. A reader ahead of the database (restored from a backup) is told the same.
#[tokio::test]
async fn a_reader_behind_the_pruned_log_or_ahead_of_it_must_take_a_snapshot() {
    let Some((_pg, store)) = store("changes").await else {
        return;
    };
    for i in 0..4 {
        store
            .create_entry(new_entry("a", &[&i.to_string()]), "")
            .await
            .unwrap();
    }
    sqlx::query("UPDATE changes SET at_ms = 100 WHERE version <= 3")
        .execute(&store.pool)
        .await
        .unwrap();
    assert_eq!(store.prune_changes(500).await.unwrap(), 3);
    assert_eq!(store.prune_changes(500).await.unwrap(), 0);
    for since in [0, 2, 5] {
        let error = store.changes_since(since, 10).await.unwrap_err();
        match error {
            ServerStoreError::SnapshotRequired {
                since: s,
                oldest: 3,
                current: 4,
            } => {
                assert_eq!(s, since)
            }
            other => panic!("{since}: {other:?}"),
        }
    }
    let batch = store.changes_since(3, 10).await.unwrap();
    assert_eq!(
        batch
            .changes
            .iter()
            .map(Change::version)
            .collect::<Vec<_>>(),
        [4]
    );
    assert_eq!(store.snapshot().await.unwrap().entries.len(), 4);
}

/// Replicas starting together migrate once; a database from a newer server is refused.
#[tokio::test]
async fn replicas_migrate_once_and_refuse_a_newer_schema() {
    let Some(pg) = tessera_pgtest::PgServer::start_or_skip("changes").await else {
        return;
    };
    let options = pg.create_database().await.unwrap();
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let options = options.clone();
            tokio::spawn(async move {
                crate::PgStore::connect(options, &crate::PgStoreOptions::default()).await
            })
        })
        .collect();
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.unwrap().unwrap());
    }
    let versions: BTreeSet<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations")
        .fetch_all(&stores[0].pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    // Each migration once, however many replicas raced to apply them.
    assert_eq!(
        versions,
        (1..=crate::SCHEMA_VERSION).collect::<BTreeSet<i64>>()
    );
    sqlx::query("INSERT INTO schema_migrations VALUES ($1, 'future', 0)")
        .bind(crate::SCHEMA_VERSION + 1)
        .execute(&stores[0].pool)
        .await
        .unwrap();
    let error = crate::PgStore::connect(options, &crate::PgStoreOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ServerStoreError::Migration(crate::error::MigrationError::SchemaTooNew { .. })
        ),
        "{error:?}"
    );
}
