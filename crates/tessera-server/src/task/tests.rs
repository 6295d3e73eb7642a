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

/// Another node's events for a task are not stored, whether they come before or after
/// the owner's: the owner keeps the task, the task id is revoked at once (reason
/// `contested`, for as long as the longer claim needs), each contested task is audited
/// once naming both nodes, and the rest of the request is stored as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_for_another_nodes_task_revokes_it_and_the_rest_is_stored() {
    let Some((_pg, store)) = store("contested tasks").await else {
        return;
    };
    let consent = store
        .grant_consent(new_consent("reviewer"), "uid:0")
        .await
        .unwrap()
        .value;
    let (owned, mine, other_ended) = (id(), id(), id());
    let now = crate::clock::unix_secs();
    store
        .report_task_events(
            "worker-1",
            &[
                begun(&owned, &consent.id),
                begun(&other_ended, &consent.id),
                ended(&other_ended, now + 30),
            ],
        )
        .await
        .unwrap();
    let before = store.revocation_snapshot().await.unwrap();

    // worker-2 claims worker-1's live task (a begin and an end) and its ended one (with a
    // later expiry), among events of its own.
    let far = now + 7200;
    let mut late_begin = begun(&owned, &consent.id);
    if let TaskEvent::Begun(b) = &mut late_begin {
        b.serials = vec!["ff01".to_owned()];
    }
    let events = [
        begun(&mine, &consent.id),
        late_begin,
        ended(&owned, far),
        ended(&other_ended, far),
    ];
    let reported = store.report_task_events("worker-2", &events).await.unwrap();
    assert_eq!((reported.begun, reported.ended), (1, 0));
    assert_eq!(
        reported
            .contested
            .iter()
            .map(|c| (c.index, c.task_id.as_str(), c.owner.as_str()))
            .collect::<Vec<_>>(),
        [
            (1, owned.as_str(), "worker-1"),
            (2, owned.as_str(), "worker-1"),
            (3, other_ended.as_str(), "worker-1"),
        ]
    );
    assert_eq!(reported.revocation_version, Some(before.version + 1));

    // The owner keeps its tasks; the live one is ended as contested.
    let tasks = store.list_tasks(None, true, 100).await.unwrap();
    let task = |id: &str| tasks.iter().find(|t| t.id == id).unwrap().clone();
    assert_eq!(task(&owned).node, "worker-1");
    assert_eq!(task(&owned).end_reason.as_deref(), Some(REASON_CONTESTED));
    assert_eq!(task(&other_ended).node, "worker-1");
    assert_eq!(task(&other_ended).end_reason.as_deref(), Some("ended"));
    assert_eq!(task(&mine).node, "worker-2");
    assert!(task(&mine).ended_at_ms.is_none());

    // On the feed: the live one revoked as contested with both sides' serials, until the
    // later claim; the one ended before keeps its reason but now lasts as long.
    let snapshot = store.revocation_snapshot().await.unwrap();
    let revoked = |id: &str| {
        snapshot
            .tasks
            .iter()
            .find(|t| t.task_id == id)
            .unwrap()
            .clone()
    };
    let r = revoked(&owned);
    assert_eq!(
        (r.reason.as_str(), r.node.as_str()),
        (REASON_CONTESTED, "worker-1")
    );
    assert_eq!(r.until, far);
    assert!(r.serials.contains(&"0a".to_owned()) && r.serials.contains(&"ff01".to_owned()));
    let r = revoked(&other_ended);
    assert_eq!((r.reason.as_str(), r.until), ("ended", far));
    let since = store.revocations_since(before.version).await.unwrap();
    let [delta] = &since.deltas[..] else {
        panic!("{:?}", since.deltas);
    };
    let ids: BTreeSet<&str> = delta.tasks.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(
        ids,
        BTreeSet::from([owned.as_str(), other_ended.as_str()]),
        "the extended revocation reaches followers again"
    );

    // One audit record per contested task, naming both nodes.
    let audit = store.list_audit(0, 100).await.unwrap();
    let contested: Vec<_> = audit
        .iter()
        .filter(|r| r.kind == "task.contested")
        .collect();
    assert_eq!(contested.len(), 2, "{audit:?}");
    let detail = &contested[0].detail;
    assert_eq!(detail["owner"], "worker-1");
    assert_eq!(detail["node"], "worker-2");

    // The same claim again changes nothing more on the feed.
    let again = store.report_task_events("worker-2", &events).await.unwrap();
    assert_eq!(again.contested.len(), 3);
    let after = store.revocation_snapshot().await.unwrap();
    assert_eq!(after.tasks, snapshot.tasks);
}

/// A request's begins are stored in one statement: many at once, scopes of any count
/// (none, several) kept as given, and a repeat within the request stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_begins_in_one_request_are_stored_with_their_scopes() {
    let Some((_pg, store)) = store("batched begins").await else {
        return;
    };
    let consent = store
        .grant_consent(new_consent("reviewer"), "uid:0")
        .await
        .unwrap()
        .value;
    let ids: Vec<String> = (0..300).map(|_| id()).collect();
    let mut events: Vec<TaskEvent> = ids.iter().map(|t| begun(t, &consent.id)).collect();
    if let TaskEvent::Begun(b) = &mut events[1] {
        b.scopes = Vec::new();
    }
    if let TaskEvent::Begun(b) = &mut events[2] {
        b.scopes = vec!["github/tool/a".to_owned(), "github/tool/b".to_owned()];
    }
    events.push(begun(&ids[0], &consent.id));
    let reported = store.report_task_events("worker-1", &events).await.unwrap();
    assert_eq!(reported.begun, 300);
    assert!(reported.contested.is_empty() && reported.revoked_at_begin.is_empty());
    let tasks = store.list_tasks(None, false, 1000).await.unwrap();
    assert_eq!(tasks.len(), 300);
    let scopes = |id: &str| tasks.iter().find(|t| t.id == id).unwrap().scopes.clone();
    assert_eq!(scopes(&ids[0]), ["github/tool/*"]);
    assert!(scopes(&ids[1]).is_empty());
    assert_eq!(scopes(&ids[2]), ["github/tool/a", "github/tool/b"]);
}
