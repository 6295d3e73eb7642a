use super::*;
use crate::testing::{new_consent, store};

fn begun(task: &str, consent: &str) -> TaskEvent {
    TaskEvent::Begun(TaskBegun::new(
        task.to_owned(),
        format!("spiffe://td/client/reviewer/task/{task}"),
        "reviewer".to_owned(),
        "alice".to_owned(),
        "github".to_owned(),
        vec!["github/tool/*".to_owned()],
        consent.to_owned(),
        crate::clock::unix_millis(),
        crate::clock::unix_secs() + 600,
        vec!["0a".to_owned()],
    ))
}

fn ended(task: &str, until: i64) -> TaskEvent {
    TaskEvent::Ended(TaskEnded::new(
        task.to_owned(),
        format!("spiffe://td/client/reviewer/task/{task}"),
        "reviewer".to_owned(),
        "ended".to_owned(),
        crate::clock::unix_millis(),
        vec!["0a".to_owned(), "0b".to_owned()],
        until,
    ))
}

fn id() -> String {
    ulid::Ulid::new().to_string()
}

/// Begins and ends are stored once each, a request's revocations share one feed version,
/// a resend publishes nothing, and a reader following by version gets each version once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_idempotent_and_publish_one_version_per_request() {
    let Some((_pg, store)) = store("task reports").await else {
        return;
    };
    let consent = store
        .grant_consent(new_consent("reviewer"), "uid:0")
        .await
        .unwrap()
        .value;
    let start = store.revocation_snapshot().await.unwrap();
    assert_eq!(start.version, 0);
    assert!(start.feed_id.starts_with("pg-"), "{}", start.feed_id);

    let (a, b, live) = (id(), id(), id());
    let later = crate::clock::unix_secs() + 300;
    let events = vec![
        begun(&a, &consent.id),
        begun(&live, &consent.id),
        ended(&a, later),
        ended(&b, later),
        ended(&b, later),
    ];
    let first = store.report_task_events("worker-1", &events).await.unwrap();
    assert_eq!((first.begun, first.ended, first.published), (2, 2, 2));
    assert!(first.revoked_at_begin.is_empty());
    assert_eq!(first.revocation_version, Some(1));
    let again = store.report_task_events("worker-1", &events).await.unwrap();
    assert_eq!(
        (again.begun, again.ended, again.revocation_version),
        (0, 0, None)
    );

    let since = store.revocations_since(0).await.unwrap();
    assert_eq!(since.feed_id, start.feed_id);
    assert_eq!(since.version, 1);
    let [delta] = &since.deltas[..] else {
        panic!("{:?}", since.deltas);
    };
    let ids: BTreeSet<&str> = delta.tasks.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(ids, BTreeSet::from([a.as_str(), b.as_str()]));
    assert!(
        delta
            .tasks
            .iter()
            .all(|t| t.serials == ["0a", "0b"] && t.node == "worker-1")
    );
    assert!(store.revocations_since(1).await.unwrap().deltas.is_empty());
    assert!(matches!(
        store.revocations_since(2).await.unwrap_err(),
        ServerStoreError::SnapshotRequired { .. }
    ));

    // Another node may not touch these tasks; nothing of its request is stored.
    let other = id();
    let refused = store
        .report_task_events(
            "worker-2",
            &[begun(&other, &consent.id), ended(&live, later)],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ServerStoreError::Conflict(Conflict::TaskOfAnotherNode { owner, .. }) if owner == "worker-1"),
        "{refused:?}"
    );
    let tasks = store.list_tasks(None, true, 100).await.unwrap();
    assert!(tasks.iter().all(|t| t.id != other));
    let listed_live = store.list_tasks(None, false, 100).await.unwrap();
    assert_eq!(
        listed_live
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        vec![live.as_str()]
    );

    // Withdrawing the consent ends the live task in the same transaction.
    let withdrawal = store.withdraw_consent(&consent.id, "uid:0").await.unwrap();
    assert_eq!(withdrawal.value.ended_tasks, vec![live.clone()]);
    assert_eq!(withdrawal.value.revocation_version, Some(2));
    // A begin under it now is revoked as it is stored.
    let late = id();
    let reported = store
        .report_task_events("worker-1", &[begun(&late, &consent.id)])
        .await
        .unwrap();
    assert_eq!(reported.revoked_at_begin, vec![late.clone()]);
    let snapshot = store.revocation_snapshot().await.unwrap();
    assert_eq!(snapshot.version, 3);
    assert_eq!(snapshot.tasks.len(), 4);
    let reason = |task: &str| {
        snapshot
            .tasks
            .iter()
            .find(|t| t.task_id == task)
            .map(|t| t.reason.clone())
    };
    assert_eq!(reason(&late).as_deref(), Some(REASON_CONSENT_WITHDRAWN));
    assert_eq!(reason(&live).as_deref(), Some(REASON_CONSENT_WITHDRAWN));

    // RevokeTask: unknown → NotFound; an ended task is returned as it is, publishing nothing.
    assert!(matches!(
        store.revoke_task(&id(), "uid:0").await.unwrap_err(),
        ServerStoreError::NotFound(NotFound::Task { .. })
    ));
    let again = store.revoke_task(&a, "uid:0").await.unwrap();
    assert_eq!(
        (again.version, again.value.end_reason.as_deref()),
        (0, Some("ended"))
    );
}

/// The pruning sweep deletes revocations and tasks once their `until` has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_revocations_and_tasks_are_pruned() {
    let Some((_pg, store)) = store("task pruning").await else {
        return;
    };
    let now = crate::clock::unix_secs();
    let (old, fresh) = (id(), id());
    store
        .report_task_events(
            "worker-1",
            &[ended(&old, now - 10), ended(&fresh, now + 300)],
        )
        .await
        .unwrap();
    let deleted = store.prune_revocations(now).await.unwrap();
    assert_eq!(deleted, 2, "the old revocation and its task row");
    let snapshot = store.revocation_snapshot().await.unwrap();
    assert_eq!(
        snapshot
            .tasks
            .iter()
            .map(|t| t.task_id.as_str())
            .collect::<Vec<_>>(),
        vec![fresh.as_str()]
    );
    assert_eq!(store.list_tasks(None, true, 10).await.unwrap().len(), 1);
}
