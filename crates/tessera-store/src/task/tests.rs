//! Tasks, SVIDs, revocations, and the group-commit writer under them. Real database files
//! in temporary directories.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;

use super::*;
use crate::AuditRecord;
use crate::error::Unavailable;
use crate::testing::{
    begin, granted_consent as consent, label, new_task, now, open_temp, revocation, svid, task_id,
    task_spiffe_id,
};

fn all() -> TaskFilter {
    TaskFilter {
        client: None,
        include_ended: true,
    }
}

/// The id of every task the store holds, live or ended.
async fn stored_ids(store: &Store) -> Vec<String> {
    let tasks = store.list_tasks(&all()).await.unwrap();
    tasks.into_iter().map(|t| label(&t.id)).collect()
}

async fn count(store: &Store, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&store.inner.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn begin_get_and_audit() {
    let (_dir, _path, store) = open_temp().await;
    let c = consent(&store, "a").await;
    let task = new_task("01JTASK", "a", &c.id);
    let mut issued = svid("a", "01JTASK", "0A1B");
    issued.not_after = task.deadline;
    let before = store.list_audit(0, 100).await.unwrap().len();
    store
        .begin_task(task.clone(), issued.clone(), "uid:1000")
        .await
        .unwrap();

    let stored = store.get_task(&task_id("01JTASK")).await.unwrap().unwrap();
    // Serials are stored lowercase; the rest round-trips.
    assert_eq!(
        stored,
        TaskRecord {
            serials: vec!["0a1b".into()],
            ..task.clone()
        }
    );
    assert_eq!(store.get_task(&task_id("nope")).await.unwrap(), None);

    let audit = store.list_audit(0, 100).await.unwrap();
    let audit = &audit[before..];
    let kinds: Vec<_> = audit.iter().map(|r| r.kind.as_str()).collect();
    // The first SVID is audited inside the task's own record.
    assert_eq!(kinds, ["task.begin"]);
    assert!(audit.iter().all(|r| r.actor == "uid:1000"));
    assert_eq!(
        audit[0].detail,
        json!({
            "task": serde_json::to_value(&stored).unwrap(),
            "svid": {
                "serial": "0a1b",
                "spiffe_id": issued.spiffe_id,
                "not_after": issued.not_after,
            },
        })
    );
}

#[tokio::test]
async fn begin_checks_the_consent_inside_the_transaction() {
    let (_dir, _path, store) = open_temp().await;
    let c = consent(&store, "a").await;
    type Expect = fn(&StoreError) -> bool;
    let cases: Vec<(TaskRecord, Expect)> = vec![
        (
            new_task("t", "a", "no-such-consent"),
            |e| matches!(e, StoreError::NotFound(NotFound::Consent { id }) if id == "no-such-consent"),
        ),
        (new_task("t", "b", &c.id), |e| {
            matches!(
                e,
                StoreError::Conflict(Conflict::ConsentMismatch {
                    field: "client",
                    ..
                })
            )
        }),
        (
            TaskRecord {
                subject: "bob".into(),
                ..new_task("t", "a", &c.id)
            },
            |e| {
                matches!(
                    e,
                    StoreError::Conflict(Conflict::ConsentMismatch {
                        field: "subject",
                        ..
                    })
                )
            },
        ),
        (
            TaskRecord {
                server: "docs".into(),
                ..new_task("t", "a", &c.id)
            },
            |e| {
                matches!(
                    e,
                    StoreError::Conflict(Conflict::ConsentMismatch {
                        field: "server",
                        ..
                    })
                )
            },
        ),
        (
            TaskRecord {
                begun_at: c.expires_at,
                deadline: c.expires_at + 10,
                ..new_task("t", "a", &c.id)
            },
            |e| matches!(e, StoreError::Invalid(InvalidInput::ConsentExpired { .. })),
        ),
        (
            TaskRecord {
                deadline: now() - 1,
                ..new_task("t", "a", &c.id)
            },
            |e| matches!(e, StoreError::Invalid(InvalidInput::Deadline { .. })),
        ),
        (
            TaskRecord {
                scopes: vec![],
                ..new_task("t", "a", &c.id)
            },
            |e| {
                matches!(
                    e,
                    StoreError::Invalid(InvalidInput::ScopeCount { count: 0 })
                )
            },
        ),
        (
            TaskRecord {
                purpose: "p".repeat(MAX_PURPOSE_LEN + 1),
                ..new_task("t", "a", &c.id)
            },
            |e| {
                matches!(
                    e,
                    StoreError::Invalid(InvalidInput::Field {
                        field: "purpose",
                        ..
                    })
                )
            },
        ),
    ];
    for (task, expected) in cases {
        let error = store
            .begin_task(task.clone(), svid("a", "t", "01"), "a")
            .await
            .unwrap_err();
        assert!(expected(&error), "{task:?} gave {error:?}");
    }
    for serial in ["", "xyz", "12:34", &"a".repeat(MAX_SERIAL_HEX_LEN + 1)] {
        let error = store
            .begin_task(new_task("t", "a", &c.id), svid("a", "t", serial), "a")
            .await
            .unwrap_err();
        assert!(
            matches!(error, StoreError::Invalid(InvalidInput::Serial { .. })),
            "{serial}: {error:?}"
        );
    }
    assert!(store.list_tasks(&all()).await.unwrap().is_empty());
    assert_eq!(count(&store, "SELECT COUNT(*) FROM task_svids").await, 0);

    // A repeated task id or serial is a constraint error, and leaves nothing behind.
    begin(&store, "t", "a", &c.id, "01").await;
    let error = store
        .begin_task(new_task("t", "a", &c.id), svid("a", "t", "02"), "a")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Database(_)), "{error:?}");
    let error = store
        .begin_task(new_task("u", "a", &c.id), svid("a", "u", "01"), "a")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Database(_)), "{error:?}");
    assert_eq!(store.get_task(&task_id("u")).await.unwrap(), None);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM tasks").await, 1);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM task_svids").await, 1);
    let kinds: Vec<_> = store
        .list_audit(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds, ["consent.grant", "task.begin"]);
}

#[tokio::test]
async fn serials_accumulate_with_record_task_svid() {
    let (_dir, _path, store) = open_temp().await;
    let c = consent(&store, "a").await;
    begin(&store, "t", "a", &c.id, "01").await;
    store
        .record_task_svid(&task_id("t"), svid("a", "t", "02"))
        .await
        .unwrap();
    let mut last = svid("a", "t", "FF03");
    last.not_after = now() + 10_000;
    store
        .record_task_svid(&task_id("t"), last.clone())
        .await
        .unwrap();
    let task = store.get_task(&task_id("t")).await.unwrap().unwrap();
    assert_eq!(task.serials, ["01", "02", "ff03"]);

    let error = store
        .record_task_svid(&task_id("nope"), svid("a", "nope", "04"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::NotFound(NotFound::Task { .. })),
        "{error:?}"
    );
    let error = store
        .record_task_svid(&task_id("t"), svid("a", "t", "02"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Database(_)), "{error:?}");

    // The revocation lists them all, and lasts as long as the longest-lived one.
    let short = Revocation {
        until: now() + 1,
        ..revocation("a", "t", "ended")
    };
    let EndOutcome::Ended(ended, revoked) = store
        .end_task(&task_id("t"), "ended", now(), short, "a")
        .await
        .unwrap()
    else {
        panic!("not ended");
    };
    assert_eq!(ended.serials, ["01", "02", "ff03"]);
    assert_eq!(revoked.serials, ["01", "02", "ff03"]);
    assert_eq!(revoked.until, last.not_after);

    let error = store
        .record_task_svid(&task_id("t"), svid("a", "t", "05"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::Conflict(Conflict::TaskEnded { .. })),
        "{error:?}"
    );
    assert_eq!(
        store
            .get_task(&task_id("t"))
            .await
            .unwrap()
            .unwrap()
            .serials,
        ["01", "02", "ff03"]
    );

    let issues = store
        .list_audit(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == "svid.issue")
        .count();
    // The first serial is in the task.begin record; each rotation has its own.
    assert_eq!(issues, 2);
}

#[tokio::test]
async fn end_task_ends_once() {
    let (_dir, _path, store) = open_temp().await;
    let c = consent(&store, "a").await;
    begin(&store, "t", "a", &c.id, "01").await;
    let given = Revocation {
        task_id: "ignored".into(),
        serials: vec!["ignored".into()],
        ..revocation("a", "t", "ended")
    };
    let at = now();
    let outcome = store
        .end_task(&task_id("t"), "ended", at, given.clone(), "uid:1000")
        .await
        .unwrap();
    let EndOutcome::Ended(task, revoked) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(task.ended_at, Some(at));
    assert_eq!(task.end_reason.as_deref(), Some("ended"));
    assert_eq!(task.serials, ["01"]);
    assert_eq!(
        revoked,
        Revocation {
            task_id: task_id("t").to_string(),
            serials: vec!["01".into()],
            ..given.clone()
        }
    );
    assert_eq!(
        store.get_task(&task_id("t")).await.unwrap(),
        Some(task.clone())
    );

    let again = store
        .end_task(&task_id("t"), "deadline", at + 5, given.clone(), "uid:1000")
        .await
        .unwrap();
    assert_eq!(again, EndOutcome::AlreadyEnded(task.clone()));
    assert_eq!(
        store
            .end_task(&task_id("nope"), "ended", at, given.clone(), "a")
            .await
            .unwrap(),
        EndOutcome::NotFound
    );
    assert_eq!(store.revocations(at).await.unwrap(), vec![revoked.clone()]);

    let audit = store.list_audit(0, 100).await.unwrap();
    let ends: Vec<&AuditRecord> = audit.iter().filter(|r| r.kind == "task.end").collect();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].actor, "uid:1000");
    assert_eq!(ends[0].detail["reason"], "ended");
    assert_eq!(ends[0].detail["ended_at"], at);
    assert_eq!(
        ends[0].detail["revocation"],
        serde_json::to_value(&revoked).unwrap()
    );

    let error = store
        .end_task(&task_id("t"), "", at, given.clone(), "a")
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Invalid(InvalidInput::Field {
                field: "end reason",
                ..
            })
        ),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_end_task_calls_end_it_exactly_once() {
    let (_dir, _path, store) = open_temp().await;
    let c = consent(&store, "a").await;
    begin(&store, "t", "a", &c.id, "01").await;
    let barrier = Arc::new(Barrier::new(16));
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .end_task(
                        &task_id("t"),
                        "ended",
                        now(),
                        revocation("a", "t", "ended"),
                        &format!("caller-{i}"),
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut ended = 0;
    let mut already = 0;
    for call in calls {
        match call.await.unwrap() {
            EndOutcome::Ended(..) => ended += 1,
            EndOutcome::AlreadyEnded(task) => {
                assert!(task.ended_at.is_some());
                already += 1;
            }
            EndOutcome::NotFound => panic!("not found"),
        }
    }
    assert_eq!((ended, already), (1, 15));
    assert_eq!(count(&store, "SELECT COUNT(*) FROM revocations").await, 1);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM audit WHERE kind = 'task.end'").await,
        1
    );
}

#[tokio::test]
async fn revocations_list_and_prune() {
    let (_dir, _path, store) = open_temp().await;
    let c = consent(&store, "a").await;
    let t0 = now();
    for (id, until) in [("t1", t0 + 10), ("t2", t0 + 20), ("t3", t0 + 30)] {
        begin(&store, id, "a", &c.id, &format!("0{}", &id[1..])).await;
        // Short-lived SVIDs, so `until` is what we give.
        sqlx::query("UPDATE task_svids SET not_after = ? WHERE task_id = ?")
            .bind(t0)
            .bind(task_id(id).to_string())
            .execute(&store.inner.pool)
            .await
            .unwrap();
        let rev = Revocation {
            until,
            ..revocation("a", id, "ended")
        };
        store
            .end_task(&task_id(id), "ended", t0, rev, "a")
            .await
            .unwrap();
    }
    begin(&store, "live", "a", &c.id, "99").await;

    let ids = |revs: Vec<Revocation>| -> Vec<String> {
        revs.into_iter()
            .map(|r| label(&r.task_id.parse().unwrap()))
            .collect()
    };
    assert_eq!(
        ids(store.revocations(t0).await.unwrap()),
        ["t1", "t2", "t3"]
    );
    // until > now: one ending exactly now is no longer in force.
    assert_eq!(ids(store.revocations(t0 + 10).await.unwrap()), ["t2", "t3"]);
    assert_eq!(
        ids(store.revocations(t0 + 30).await.unwrap()),
        Vec::<String>::new()
    );

    assert_eq!(store.prune_revocations(t0 + 9).await.unwrap(), 0);
    assert_eq!(store.prune_revocations(t0 + 20).await.unwrap(), 2);
    assert_eq!(ids(store.revocations(0).await.unwrap()), ["t3"]);
    assert_eq!(store.prune_revocations(t0 + 20).await.unwrap(), 0);
    // Tasks are kept.
    assert_eq!(store.list_tasks(&all()).await.unwrap().len(), 4);
}

#[tokio::test]
async fn list_tasks_orders_live_first_then_newest_and_filters() {
    let (_dir, _path, store) = open_temp().await;
    let ca = consent(&store, "a").await;
    let cb = consent(&store, "b").await;
    let t0 = now();
    for (i, (id, client, consent_id)) in [
        ("a1", "a", &ca.id),
        ("a2", "a", &ca.id),
        ("b1", "b", &cb.id),
        ("a3", "a", &ca.id),
    ]
    .into_iter()
    .enumerate()
    {
        let task = TaskRecord {
            begun_at: t0 + i as i64,
            deadline: t0 + 300,
            ..new_task(id, client, consent_id)
        };
        store
            .begin_task(task, svid(client, id, &format!("{i:02}")), "x")
            .await
            .unwrap();
    }
    store
        .end_task(
            &task_id("a3"),
            "ended",
            t0 + 5,
            revocation("a", "a3", "ended"),
            "x",
        )
        .await
        .unwrap();

    let ids = |tasks: Vec<TaskRecord>| -> Vec<String> {
        tasks.into_iter().map(|t| label(&t.id)).collect()
    };
    assert_eq!(
        ids(store.list_tasks(&all()).await.unwrap()),
        ["b1", "a2", "a1", "a3"]
    );
    assert_eq!(
        ids(store.list_tasks(&TaskFilter::default()).await.unwrap()),
        ["b1", "a2", "a1"]
    );
    let only_a = TaskFilter {
        client: Some("a".parse().unwrap()),
        include_ended: true,
    };
    assert_eq!(
        ids(store.list_tasks(&only_a).await.unwrap()),
        ["a2", "a1", "a3"]
    );
    assert_eq!(ids(store.live_tasks().await.unwrap()), ["a1", "a2", "b1"]);
}

#[tokio::test]
async fn ended_tasks_and_revocations_survive_close_and_reopen() {
    let (_dir, path, store) = open_temp().await;
    let c = consent(&store, "a").await;
    begin(&store, "t1", "a", &c.id, "01").await;
    begin(&store, "t2", "a", &c.id, "02").await;
    store
        .record_task_svid(&task_id("t2"), svid("a", "t2", "03"))
        .await
        .unwrap();
    let EndOutcome::Ended(ended, revoked) = store
        .end_task(
            &task_id("t1"),
            "ended",
            now(),
            revocation("a", "t1", "ended"),
            "a",
        )
        .await
        .unwrap()
    else {
        panic!("not ended");
    };
    let audit = store.list_audit(0, 100).await.unwrap();
    store.close().await;
    drop(store);

    let store = Store::open(&path).await.unwrap();
    assert_eq!(store.get_task(&task_id("t1")).await.unwrap(), Some(ended));
    assert_eq!(store.revocations(now()).await.unwrap(), vec![revoked]);
    let live = store.live_tasks().await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].serials, ["02", "03"]);
    assert_eq!(store.get_consent(&c.id).await.unwrap(), Some(c));
    assert_eq!(store.list_audit(0, 100).await.unwrap(), audit);
    // And it is still ended: a second end is refused as such.
    assert!(matches!(
        store
            .end_task(
                &task_id("t1"),
                "ended",
                now(),
                revocation("a", "t1", "ended"),
                "a"
            )
            .await
            .unwrap(),
        EndOutcome::AlreadyEnded(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_broadcast_delivers_committed_rows_in_seq_order() {
    let (_dir, _path, store) = open_temp().await;
    let mut rx = store.subscribe_audit();
    let c = consent(&store, "a").await;
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            let consent_id = c.id.clone();
            tokio::spawn(async move {
                let id = format!("t{i}");
                begin(&store, &id, "a", &consent_id, &format!("{i:04x}")).await;
                store
                    .end_task(
                        &task_id(&id),
                        "ended",
                        now(),
                        revocation("a", &id, "ended"),
                        "a",
                    )
                    .await
                    .unwrap();
            })
        })
        .collect();
    // A failing write publishes nothing.
    let _ = store
        .begin_task(new_task("bad", "a", "nope"), svid("a", "bad", "ff"), "a")
        .await
        .unwrap_err();

    let mut received = Vec::new();
    // consent.grant, then per task: task.begin and task.end.
    while received.len() < 1 + 20 * 2 {
        let record = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("audit record delivered")
            .unwrap();
        // Delivered only after commit: a fresh read already sees it.
        let committed = store.list_audit(record.seq - 1, 1).await.unwrap();
        assert_eq!(committed, vec![record.clone()]);
        received.push(record);
    }
    for call in calls {
        call.await.unwrap();
    }
    assert!(received.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(received, store.list_audit(0, 1000).await.unwrap());
    assert!(rx.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_write_in_a_batch_fails_alone() {
    let (_dir, _path, store) = open_temp().await;
    let c = consent(&store, "a").await;
    begin(&store, "existing", "a", &c.id, "e0").await;
    let commits_before = store.writer_stats().commits;
    let barrier = Arc::new(Barrier::new(48));
    let calls: Vec<_> = (0..48)
        .map(|i| {
            let store = store.clone();
            let consent_id = c.id.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                let id = format!("t{i}");
                let (task, issued) = match i % 4 {
                    // Consent that does not exist: fails before writing anything.
                    1 => (
                        new_task(&id, "a", "no-such-consent"),
                        svid("a", &id, &format!("{i:04x}")),
                    ),
                    // Serial already used: the task row is written, then the SVID insert
                    // hits the constraint, so only the savepoint keeps the task out.
                    3 => (new_task(&id, "a", &consent_id), svid("a", &id, "e0")),
                    _ => (
                        new_task(&id, "a", &consent_id),
                        svid("a", &id, &format!("{i:04x}")),
                    ),
                };
                barrier.wait().await;
                (i, store.begin_task(task, issued, "a").await)
            })
        })
        .collect();
    for call in calls {
        let (i, result) = call.await.unwrap();
        match (i % 4, result) {
            (1, Err(StoreError::NotFound(NotFound::Consent { .. }))) => {}
            (3, Err(StoreError::Database(_))) => {}
            (0 | 2, Ok(())) => {}
            (_, other) => panic!("call {i}: {other:?}"),
        }
    }
    // They really shared transactions.
    let batches = store.writer_stats().commits - commits_before;
    assert!(batches < 48, "{batches} commits for 48 writes");

    let ids: HashSet<String> = stored_ids(&store).await.into_iter().collect();
    let expected: HashSet<String> = (0..48)
        .filter(|i| i % 2 == 0)
        .map(|i| format!("t{i}"))
        .chain(["existing".to_owned()])
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM task_svids").await, 25);
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM audit WHERE kind = 'task.begin'"
        )
        .await,
        25
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM audit WHERE kind = 'task.begin'
             AND json_extract(detail, '$.svid.serial') =
                 (SELECT serial FROM task_svids s WHERE s.task_id = json_extract(detail, '$.task.id'))"
        )
        .await,
        25
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_callers_begin_and_end_500_tasks_each_consistently() {
    let (_dir, _path, store) = open_temp().await;
    let c = consent(&store, "a").await;
    let commits_before = store.writer_stats().commits;
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            let consent_id = c.id.clone();
            tokio::spawn(async move {
                for i in 0..500 {
                    let id = format!("w{w}-{i}");
                    let serial = format!("{w:02x}{i:06x}");
                    store
                        .begin_task(
                            new_task(&id, "a", &consent_id),
                            svid("a", &id, &serial),
                            "a",
                        )
                        .await
                        .unwrap();
                    let outcome = store
                        .end_task(
                            &task_id(&id),
                            "ended",
                            now(),
                            revocation("a", &id, "ended"),
                            "a",
                        )
                        .await
                        .unwrap();
                    assert!(matches!(outcome, EndOutcome::Ended(..)), "{outcome:?}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let batches = store.writer_stats().commits - commits_before;
    assert!(batches < 8000, "{batches} commits for 8000 writes");

    assert_eq!(count(&store, "SELECT COUNT(*) FROM tasks").await, 4000);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM tasks WHERE ended_at IS NULL").await,
        0
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM task_svids").await, 4000);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM revocations").await,
        4000
    );
    // Every ended task has exactly one revocation, with its serial.
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM tasks t
             WHERE (SELECT COUNT(*) FROM revocations r
                    WHERE r.task_id = t.id AND r.serials = json_array(
                        (SELECT serial FROM task_svids s WHERE s.task_id = t.id))) != 1"
        )
        .await,
        0
    );
    let kinds: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind, COUNT(*) FROM audit GROUP BY kind ORDER BY kind")
            .fetch_all(&store.inner.pool)
            .await
            .unwrap();
    let kinds: HashMap<_, _> = kinds.into_iter().collect();
    assert_eq!(kinds["task.begin"], 4000);
    assert!(!kinds.contains_key("svid.issue"), "{kinds:?}");
    assert_eq!(kinds["task.end"], 4000);
    assert_eq!(store.revocations(now()).await.unwrap().len(), 4000);
}

#[tokio::test]
async fn a_queued_write_is_applied_even_if_its_caller_gives_up() {
    let (_dir, _path, store) = open_temp().await;
    let c = consent(&store, "a").await;
    // Another connection holds the write lock, so the writer (on its own thread) cannot
    // answer before the caller gives up, however the threads are scheduled.
    let mut blocker = store.inner.pool.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let call = store.begin_task(new_task("t", "a", &c.id), svid("a", "t", "01"), "a");
    // Polled until queued, then dropped before the reply.
    let gave_up = tokio::time::timeout(Duration::from_millis(50), call).await;
    assert!(gave_up.is_err(), "should not have been answered yet");
    sqlx::query("ROLLBACK")
        .execute(&mut *blocker)
        .await
        .unwrap();
    drop(blocker);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.get_task(&task_id("t")).await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "write lost");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn writes_after_close_fail_with_closed() {
    let (_dir, _path, store) = open_temp().await;
    let c = consent(&store, "a").await;
    // Queued before close: applied.
    let queued = {
        let store = store.clone();
        let id = c.id.clone();
        tokio::spawn(async move { begin(&store, "t", "a", &id, "01").await })
    };
    tokio::task::yield_now().await;
    store.close().await;
    queued.await.unwrap();
    let error = store
        .begin_task(new_task("u", "a", &c.id), svid("a", "u", "02"), "a")
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::Unavailable(Unavailable::Closed)),
        "{error:?}"
    );
    let error = store.append_audit("k", "", &json!({})).await.unwrap_err();
    assert!(
        matches!(error, StoreError::Unavailable(Unavailable::Closed)),
        "{error:?}"
    );
    // Closing twice is fine.
    store.close().await;
}

#[tokio::test]
async fn spiffe_ids_are_stored_as_given() {
    let (_dir, _path, store) = open_temp().await;
    let c = consent(&store, "a").await;
    begin(&store, "t", "a", &c.id, "01").await;
    let spiffe_id: String = sqlx::query_scalar("SELECT spiffe_id FROM task_svids")
        .fetch_one(&store.inner.pool)
        .await
        .unwrap();
    assert_eq!(spiffe_id, task_spiffe_id("a", "t"));
}

/// Every page a commit writes is appended to the WAL and fsynced before the caller hears
/// back, so pages per BeginTask are what a durable task costs (schema v2 cut them from 13
/// to ~8; see migrations/0002). The bound leaves room for B-tree page splits.
#[tokio::test]
async fn a_begin_task_commit_writes_at_most_nine_wal_frames() {
    let (_dir, path, store) = open_temp().await;
    let consent = consent(&store, "a").await;
    // Serials as the CA makes them: issuance-ordered.
    let serial = |i: usize| format!("{:012x}{:020x}", 0x0190_0000_0000_u64 + i as u64, i);
    for i in 0..3 {
        begin(&store, &format!("t{i:04}"), "a", &consent.id, &serial(i)).await;
    }
    let mut wal = path.into_os_string();
    wal.push("-wal");
    let before = std::fs::metadata(&wal).unwrap().len();
    for i in 3..23 {
        begin(&store, &format!("t{i:04}"), "a", &consent.id, &serial(i)).await;
    }
    let after = std::fs::metadata(&wal).unwrap().len();
    let frame = u64::from(crate::store::PAGE_SIZE) + 24;
    let frames = (after - before) / frame;
    assert_eq!((after - before) % frame, 0);
    assert!(frames <= 20 * 9, "{frames} frames for 20 tasks");
    store.close().await;
}

/// A large backlog of expired revocations is pruned in chunks, each its own transaction,
/// so writes queued meanwhile are not held behind all of it.
#[tokio::test]
async fn a_large_prune_runs_in_chunks_of_its_own_transactions() {
    let (_dir, _path, store) = open_temp().await;
    let c = consent(&store, "a").await;
    let expired = PRUNE_CHUNK * 2 + 10;
    let t0 = now();
    for i in 0..expired + 3 {
        let id = format!("t{i:05}");
        begin(&store, &id, "a", &c.id, &format!("{i:08x}")).await;
        let mut revocation = revocation("a", &id, "ended");
        // The last three stay in force. (The store raises `until` to the SVIDs' expiry,
        // five minutes from now.)
        revocation.until = if i < expired { t0 + 10 } else { t0 + 3600 };
        store
            .end_task(&task_id(&id), "ended", t0, revocation, "uid:1000")
            .await
            .unwrap();
    }
    let before = store.writer_stats().commits;
    assert_eq!(store.prune_revocations(t0 + 400).await.unwrap(), expired);
    // Three chunks: two full ones and the rest.
    assert_eq!(store.writer_stats().commits - before, 3);
    assert_eq!(store.revocations(0).await.unwrap().len(), 3);
    assert_eq!(store.prune_revocations(t0 + 400).await.unwrap(), 0);
}

/// Ended tasks past their retention are deleted with their SVID records, in chunks;
/// a task whose revocation is still in force, a live task and one that ended after the
/// cutoff are kept.
#[tokio::test]
async fn ended_tasks_past_the_cutoff_are_deleted_unless_still_revoked() {
    let (_dir, _path, store) = open_temp().await;
    let c = consent(&store, "a").await;
    let t0 = now();
    let old = PRUNE_CHUNK + 5;
    async fn end(store: &Store, id: &str, ended_at: i64, until: i64) {
        let mut revocation = revocation("a", id, "ended");
        revocation.until = until;
        store
            .end_task(&task_id(id), "ended", ended_at, revocation, "uid:1000")
            .await
            .unwrap();
    }
    for i in 0..old {
        let id = format!("t{i:05}");
        begin(&store, &id, "a", &c.id, &format!("{i:08x}")).await;
        end(&store, &id, t0, t0).await;
    }
    begin(&store, "still-revoked", "a", &c.id, "ff01").await;
    end(&store, "still-revoked", t0, t0 + 3600).await;
    begin(&store, "ended-later", "a", &c.id, "ff02").await;
    end(&store, "ended-later", t0 + 1000, t0).await;
    begin(&store, "live", "a", &c.id, "ff03").await;

    // Until their revocations are pruned, no task goes.
    assert_eq!(store.prune_ended_tasks(t0 + 500).await.unwrap(), 0);
    // (The store raised each `until` to its SVID's expiry, five minutes from now.)
    assert_eq!(store.prune_revocations(t0 + 400).await.unwrap(), old + 1);

    let commits = store.writer_stats().commits;
    assert_eq!(store.prune_ended_tasks(t0 + 500).await.unwrap(), old);
    assert_eq!(store.writer_stats().commits - commits, 2, "two chunks");
    let mut left = stored_ids(&store).await;
    left.sort();
    assert_eq!(left, ["ended-later", "live", "still-revoked"]);
    assert_eq!(count(&store, "SELECT count(*) FROM task_svids").await, 3);
    assert!(store.get_task(&task_id("t00000")).await.unwrap().is_none());
    assert_eq!(store.prune_ended_tasks(t0 + 500).await.unwrap(), 0);
}

/// Pruning finds ended tasks through their partial index, not by reading every task.
#[tokio::test]
async fn pruning_finds_ended_tasks_through_their_index() {
    let (_dir, _path, store) = open_temp().await;
    let plan: Vec<(i64, i64, i64, String)> =
        sqlx::query_as(concat!("EXPLAIN QUERY PLAN ", prunable_tasks!()))
            .bind(0)
            .bind(10)
            .fetch_all(&store.inner.pool)
            .await
            .unwrap();
    let outer = plan.iter().find(|(_, parent, _, _)| *parent == 0).unwrap();
    assert!(
        outer.3.starts_with("SEARCH tasks") && outer.3.contains("INDEX tasks_ended_by_time"),
        "{plan:?}"
    );
}

/// A client's task list is read through its index, not by scanning every task on the
/// node (a scan would grow with everyone's retained history).
#[tokio::test]
async fn listing_one_clients_tasks_uses_the_client_index() {
    let (_dir, _path, store) = open_temp().await;
    let plan: Vec<(i64, i64, i64, String)> =
        sqlx::query_as(concat!("EXPLAIN QUERY PLAN ", one_clients_tasks!()))
            .bind("a")
            .bind(false)
            .fetch_all(&store.inner.pool)
            .await
            .unwrap();
    let outer = plan.iter().find(|(_, parent, _, _)| *parent == 0).unwrap();
    assert!(outer.3.contains("USING INDEX tasks_by_client"), "{plan:?}");
}

/// A task row whose id or client is not a valid one (written behind the store's back) is
/// refused as corrupt, naming the column, wherever tasks are read: handing it on as text
/// would give the agent an id it could not build a SPIFFE ID from.
#[tokio::test]
async fn a_task_row_with_a_malformed_id_or_client_is_corrupt() {
    for (column, value) in [("id", "not-a-task-id"), ("client", "Not A Client")] {
        let (_dir, path, store) = open_temp().await;
        let c = consent(&store, "a").await;
        begin(&store, "t", "a", &c.id, "01").await;
        let mut conn = crate::testing::raw_connection(&path).await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE tasks SET {column} = ? WHERE id = ?"
        )))
        .bind(value)
        .bind(task_id("t").to_string())
        .execute(&mut conn)
        .await
        .unwrap();
        let is_corrupt = |error: &StoreError| {
            matches!(error, StoreError::Corrupt { table: "tasks", reason, .. }
                if reason.starts_with(&format!("{column}: ")))
        };
        let error = store.list_tasks(&all()).await.unwrap_err();
        assert!(is_corrupt(&error), "{column}: {error:?}");
        let error = store.live_tasks().await.unwrap_err();
        assert!(is_corrupt(&error), "{column}: {error:?}");
    }
}
