use std::time::Duration;

use super::*;
use crate::limits::{MAX_CLIENT_LEN, MAX_SCOPE_LEN, MAX_SCOPES, MAX_SERVER_LEN, MAX_SUBJECT_LEN};
use crate::testing::{
    begin, granted_consent, label, new_consent, new_task, now, open_temp, revocation, svid, task_id,
};
use crate::{EndOutcome, TaskFilter};

fn revoke(task: &TaskRecord) -> Revocation {
    revocation(
        task.client.as_str(),
        &label(&task.id),
        END_REASON_CONSENT_WITHDRAWN,
    )
}

#[tokio::test]
async fn grant_list_get_withdraw_round_trip() {
    let (_dir, _path, store) = open_temp().await;
    let mut watch = store.watch_consents();
    assert_eq!(*watch.borrow_and_update(), 0);

    let mut new = new_consent("code-reviewer");
    new.scopes = vec![
        "github/tool/b".into(),
        "github/tool/a".into(),
        "github/tool/b".into(),
    ];
    let granted = store.grant_consent(new.clone(), "uid:0").await.unwrap();
    assert!(ulid::Ulid::from_string(&granted.id).is_ok());
    assert_eq!(granted.client, "code-reviewer");
    assert_eq!(granted.subject, "alice");
    assert_eq!(granted.server, "github");
    assert_eq!(granted.scopes, ["github/tool/a", "github/tool/b"]);
    assert_eq!(granted.expires_at, new.expires_at);
    assert_eq!(granted.granted_by, "uid:0");
    assert!((granted.granted_at - now()).abs() <= 2);
    assert_eq!(granted.withdrawn_at, None);
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), 1);

    let other = store
        .grant_consent(new_consent("docs-bot"), "uid:0")
        .await
        .unwrap();
    assert_eq!(
        store.get_consent(&granted.id).await.unwrap(),
        Some(granted.clone())
    );
    assert_eq!(store.get_consent("nope").await.unwrap(), None);
    let all = ConsentFilter::default();
    // Oldest first by grant second, then id: two consents granted in one millisecond
    // have ULIDs in random order.
    let listed_order = |mut consents: Vec<Consent>| {
        consents.sort_by(|a, b| (a.granted_at, &a.id).cmp(&(b.granted_at, &b.id)));
        consents
    };
    assert_eq!(
        store.list_consents(&all).await.unwrap(),
        listed_order(vec![granted.clone(), other.clone()])
    );
    let docs = ConsentFilter {
        client: Some("docs-bot".into()),
        include_withdrawn: false,
    };
    assert_eq!(
        store.list_consents(&docs).await.unwrap(),
        vec![other.clone()]
    );

    let at = now();
    let (withdrawn, revocations) = store
        .withdraw_consent(&granted.id, "uid:1", at, &revoke)
        .await
        .unwrap()
        .unwrap();
    assert!(revocations.is_empty());
    assert_eq!(withdrawn.withdrawn_at, Some(at));
    assert_eq!(
        withdrawn,
        Consent {
            withdrawn_at: Some(at),
            ..granted.clone()
        }
    );
    assert_eq!(*watch.borrow_and_update(), 3);
    assert_eq!(
        store.get_consent(&granted.id).await.unwrap(),
        Some(withdrawn.clone())
    );
    // Withdrawn ones are listed only on request.
    assert_eq!(
        store.list_consents(&all).await.unwrap(),
        vec![other.clone()]
    );
    let everything = ConsentFilter {
        client: None,
        include_withdrawn: true,
    };
    assert_eq!(
        store.list_consents(&everything).await.unwrap(),
        listed_order(vec![withdrawn.clone(), other])
    );

    // Twice: refused, nothing written. Unknown: None.
    let error = store
        .withdraw_consent(&granted.id, "uid:1", at + 5, &revoke)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Conflict(Conflict::ConsentWithdrawn { id, withdrawn_at }) if *id == granted.id && *withdrawn_at == at),
        "{error:?}"
    );
    assert_eq!(
        store
            .withdraw_consent("no-such", "uid:1", at, &revoke)
            .await
            .unwrap(),
        None
    );
    assert!(!watch.has_changed().unwrap());

    let audit = store.list_audit(0, 100).await.unwrap();
    let kinds: Vec<_> = audit.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["consent.grant", "consent.grant", "consent.withdraw"]
    );
    assert_eq!(
        audit[0].detail["consent"],
        serde_json::to_value(&granted).unwrap()
    );
    assert_eq!(audit[2].actor, "uid:1");
    assert_eq!(audit[2].detail["consent"]["withdrawn_at"], at);
    assert_eq!(audit[2].detail["ended_tasks"], json!([]));
}

#[tokio::test]
async fn grant_limits_are_enforced() {
    let (_dir, _path, store) = open_temp().await;
    let base = new_consent("a");
    type Expect = fn(&StoreError) -> bool;
    let many: Vec<String> = (0..=MAX_SCOPES).map(|i| format!("s/{i}")).collect();
    let cases: Vec<(NewConsent, Expect)> = vec![
        (
            NewConsent {
                client: String::new(),
                ..base.clone()
            },
            |e| matches!(e, StoreError::Invalid(InvalidInput::Client { len: 0 })),
        ),
        (
            NewConsent {
                client: "c".repeat(MAX_CLIENT_LEN + 1),
                ..base.clone()
            },
            |e| matches!(e, StoreError::Invalid(InvalidInput::Client { len: 129 })),
        ),
        (
            NewConsent {
                subject: String::new(),
                ..base.clone()
            },
            |e| {
                matches!(
                    e,
                    StoreError::Invalid(InvalidInput::Field {
                        field: "subject",
                        len: 0,
                        ..
                    })
                )
            },
        ),
        (
            NewConsent {
                subject: "s".repeat(MAX_SUBJECT_LEN + 1),
                ..base.clone()
            },
            |e| {
                matches!(
                    e,
                    StoreError::Invalid(InvalidInput::Field {
                        field: "subject",
                        len: 257,
                        ..
                    })
                )
            },
        ),
        (
            NewConsent {
                server: "s".repeat(MAX_SERVER_LEN + 1),
                ..base.clone()
            },
            |e| {
                matches!(
                    e,
                    StoreError::Invalid(InvalidInput::Field {
                        field: "server",
                        len: 129,
                        ..
                    })
                )
            },
        ),
        (
            NewConsent {
                scopes: vec![],
                ..base.clone()
            },
            |e| {
                matches!(
                    e,
                    StoreError::Invalid(InvalidInput::ScopeCount { count: 0 })
                )
            },
        ),
        (
            NewConsent {
                scopes: many,
                ..base.clone()
            },
            |e| {
                matches!(
                    e,
                    StoreError::Invalid(InvalidInput::ScopeCount { count: 65 })
                )
            },
        ),
        (
            NewConsent {
                scopes: vec!["a".into(), "x".repeat(MAX_SCOPE_LEN + 1)],
                ..base.clone()
            },
            |e| {
                matches!(
                    e,
                    StoreError::Invalid(InvalidInput::Scope {
                        index: 1,
                        len: 1025
                    })
                )
            },
        ),
        (
            NewConsent {
                expires_at: now() - 1,
                ..base.clone()
            },
            |e| matches!(e, StoreError::Invalid(InvalidInput::ConsentExpired { .. })),
        ),
        (
            NewConsent {
                expires_at: 0,
                ..base.clone()
            },
            |e| {
                matches!(
                    e,
                    StoreError::Invalid(InvalidInput::ConsentExpired { expires_at: 0, .. })
                )
            },
        ),
    ];
    for (new, expected) in cases {
        let error = store.grant_consent(new.clone(), "uid:0").await.unwrap_err();
        assert!(expected(&error), "{new:?} gave {error:?}");
    }
    let error = store
        .grant_consent(base.clone(), &"x".repeat(3000))
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        StoreError::Invalid(InvalidInput::AuditField { field: "actor", .. })
    ));
    assert!(
        store
            .list_consents(&ConsentFilter::default())
            .await
            .unwrap()
            .is_empty()
    );

    // The limits themselves are fine.
    let max = NewConsent {
        client: "c".repeat(MAX_CLIENT_LEN),
        subject: "s".repeat(MAX_SUBJECT_LEN),
        server: "s".repeat(MAX_SERVER_LEN),
        scopes: (0..MAX_SCOPES)
            .map(|i| format!("{i}{}", "x".repeat(MAX_SCOPE_LEN - 2)))
            .collect(),
        expires_at: now() + 10,
    };
    store.grant_consent(max, "uid:0").await.unwrap();
}

#[tokio::test]
async fn withdraw_ends_exactly_the_live_tasks_relying_on_it() {
    let (_dir, _path, store) = open_temp().await;
    let target = granted_consent(&store, "a").await;
    let other = granted_consent(&store, "a").await;
    begin(&store, "t1", "a", &target.id, "01").await;
    begin(&store, "t2", "a", &target.id, "02").await;
    store
        .record_task_svid(&task_id("t2"), svid("a", "t2", "03"))
        .await
        .unwrap();
    begin(&store, "t3", "a", &target.id, "04").await; // ended before the withdrawal
    begin(&store, "t4", "a", &other.id, "05").await; // another consent
    let before = store
        .end_task(
            &task_id("t3"),
            "ended",
            now(),
            revocation("a", "t3", "ended"),
            "a",
        )
        .await
        .unwrap();
    assert!(matches!(before, EndOutcome::Ended(..)));
    let seq_before = store.list_audit(0, 1000).await.unwrap().last().unwrap().seq;

    let at = now();
    let (consent, mut revocations) = store
        .withdraw_consent(&target.id, "uid:7", at, &revoke)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(consent.withdrawn_at, Some(at));
    revocations.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    let ids: Vec<_> = revocations
        .iter()
        .map(|r| label(&r.task_id.parse().unwrap()))
        .collect();
    assert_eq!(ids, ["t1", "t2"]);
    assert_eq!(revocations[0].serials, ["01"]);
    assert_eq!(revocations[1].serials, ["02", "03"]);
    assert_eq!(revocations[1].reason, END_REASON_CONSENT_WITHDRAWN);
    assert_eq!(
        revocations[1].spiffe_id,
        format!("spiffe://acme.corp/client/a/task/{}", task_id("t2"))
    );

    for id in ["t1", "t2"] {
        let task = store.get_task(&task_id(id)).await.unwrap().unwrap();
        assert_eq!(task.ended_at, Some(at));
        assert_eq!(
            task.end_reason.as_deref(),
            Some(END_REASON_CONSENT_WITHDRAWN)
        );
    }
    // The earlier-ended task keeps its own end; the other consent's task lives on.
    let t3 = store.get_task(&task_id("t3")).await.unwrap().unwrap();
    assert_eq!(t3.end_reason.as_deref(), Some("ended"));
    assert_eq!(
        store
            .get_task(&task_id("t4"))
            .await
            .unwrap()
            .unwrap()
            .ended_at,
        None
    );
    let live: Vec<_> = store
        .live_tasks()
        .await
        .unwrap()
        .into_iter()
        .map(|t| label(&t.id))
        .collect();
    assert_eq!(live, ["t4"]);

    let mut stored = store.revocations(now()).await.unwrap();
    stored.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    let stored_ids: Vec<_> = stored
        .iter()
        .map(|r| label(&r.task_id.parse().unwrap()))
        .collect();
    assert_eq!(stored_ids, ["t1", "t2", "t3"]);
    assert_eq!(stored[..2], revocations[..]);

    let audit = store.list_audit(seq_before, 100).await.unwrap();
    let kinds: Vec<_> = audit.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["consent.withdraw", "task.end", "task.end"]);
    assert!(audit.iter().all(|r| r.actor == "uid:7"));
    assert_eq!(
        audit[0].detail["ended_tasks"],
        json!([task_id("t1").to_string(), task_id("t2").to_string()])
    );
    assert_eq!(audit[1].detail["reason"], END_REASON_CONSENT_WITHDRAWN);

    // No new task can rely on it.
    let error = store
        .begin_task(new_task("t5", "a", &target.id), svid("a", "t5", "06"), "a")
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Conflict(Conflict::ConsentWithdrawn { .. })
        ),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_task_escapes_a_withdrawal_racing_with_begins() {
    let (_dir, _path, store) = open_temp().await;
    let consent = granted_consent(&store, "a").await;
    let beginners: Vec<_> = (0..4)
        .map(|worker| {
            let store = store.clone();
            let consent_id = consent.id.clone();
            tokio::spawn(async move {
                let mut begun = 0;
                loop {
                    let id = format!("w{worker}-{begun}");
                    let serial = format!("{worker:02x}{begun:08x}");
                    match store
                        .begin_task(
                            new_task(&id, "a", &consent_id),
                            svid("a", &id, &serial),
                            "a",
                        )
                        .await
                    {
                        Ok(()) => begun += 1,
                        Err(StoreError::Conflict(Conflict::ConsentWithdrawn { .. })) => {
                            return begun;
                        }
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                }
            })
        })
        .collect();
    // Let some tasks begin, then withdraw while they keep coming.
    while store.live_tasks().await.unwrap().len() < 20 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (_, revocations) = store
        .withdraw_consent(&consent.id, "admin", now(), &revoke)
        .await
        .unwrap()
        .unwrap();
    let mut begun = 0;
    for beginner in beginners {
        begun += beginner.await.unwrap();
    }
    assert!(store.live_tasks().await.unwrap().is_empty());
    assert_eq!(revocations.len(), begun);
    let all = store
        .list_tasks(&TaskFilter {
            client: None,
            include_ended: true,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), begun);
    assert!(
        all.iter()
            .all(|t| t.end_reason.as_deref() == Some(END_REASON_CONSENT_WITHDRAWN))
    );
    assert_eq!(store.revocations(now()).await.unwrap().len(), begun);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_withdrawals_exactly_one_wins() {
    let (_dir, _path, store) = open_temp().await;
    let consent = granted_consent(&store, "a").await;
    begin(&store, "t1", "a", &consent.id, "aa").await;
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let id = consent.id.clone();
            tokio::spawn(async move { store.withdraw_consent(&id, "admin", now(), &revoke).await })
        })
        .collect();
    let mut won = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(Some((_, revocations))) => {
                assert_eq!(revocations.len(), 1);
                won += 1;
            }
            Err(StoreError::Conflict(Conflict::ConsentWithdrawn { .. })) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.revocations(now()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn corrupt_scopes_are_an_error_not_skipped() {
    let (_dir, _path, store) = open_temp().await;
    sqlx::query(
        "INSERT INTO consents (id, client, subject, server, scopes, expires_at, granted_by, granted_at)
         VALUES ('bad', 'a', 's', 'g', '{\"x\":1}', 0, '', 0)",
    )
    .execute(&store.inner.pool)
    .await
    .unwrap();
    let error = store.get_consent("bad").await.unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Corrupt {
                table: "consents",
                ..
            }
        ),
        "{error:?}"
    );
    let error = store
        .list_consents(&ConsentFilter::default())
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
}
