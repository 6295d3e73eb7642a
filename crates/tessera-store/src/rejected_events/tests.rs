use crate::testing::{begin, granted_consent, open_temp, raw_connection, task_id};
use crate::{
    MAX_REJECTED_EVENTS, MAX_REJECTION_MESSAGE_LEN, Rejection, RejectionReason, Settled, TaskEvent,
};

fn rejection(seq: u64, reason: RejectionReason, message: &str) -> Rejection {
    Rejection {
        seq,
        reason,
        message: message.to_owned(),
    }
}

#[tokio::test]
async fn a_rejected_event_leaves_the_journal_for_the_dead_letters_and_the_rest_flows_on() {
    let (_dir, _path, store) = open_temp().await;
    store.set_journal_task_events(true);
    let consent = granted_consent(&store, "c").await;
    for (label, serial) in [("t1", "01"), ("t2", "02"), ("t3", "03"), ("t4", "04")] {
        begin(&store, label, "c", &consent.id, serial).await;
    }
    let all = store.journal_batch(0, 10).await.unwrap();
    // The server handled the first three and rejected the second.
    let settled = store
        .journal_settle(
            all[2].seq,
            vec![rejection(
                all[1].seq,
                RejectionReason::TaskOfAnotherNode,
                "task t2 was reported by another node first",
            )],
        )
        .await
        .unwrap();
    assert_eq!(
        settled,
        Settled {
            deleted: 3,
            rejected: 1
        }
    );
    let left = store.journal_batch(0, 10).await.unwrap();
    assert_eq!(left, all[3..], "the fourth waits for the next report");

    let dead = store.rejected_task_events(10).await.unwrap();
    let [kept] = &dead[..] else {
        panic!("{dead:?}")
    };
    assert_eq!(kept.entry, all[1], "the event as it was journaled");
    let TaskEvent::Begun(b) = &kept.entry.event else {
        panic!("{kept:?}")
    };
    assert_eq!(b.task_id, task_id("t2").to_string());
    assert_eq!(kept.reason, RejectionReason::TaskOfAnotherNode);
    assert!(kept.message.contains("another node"));
    assert!((kept.rejected_at_ms - crate::clock::unix_millis()).abs() < 60_000);
    assert_eq!(store.rejected_task_event_count().await.unwrap(), 1);

    // Settling the same answer again (the reply was lost) keeps one copy.
    let again = store
        .journal_settle(
            all[2].seq,
            vec![rejection(
                all[1].seq,
                RejectionReason::TaskOfAnotherNode,
                "x",
            )],
        )
        .await
        .unwrap();
    assert_eq!(again, Settled::default());
    assert_eq!(store.rejected_task_event_count().await.unwrap(), 1);
}

#[tokio::test]
async fn a_rejection_beyond_the_acknowledgement_is_not_kept_and_the_event_stays_journaled() {
    let (_dir, _path, store) = open_temp().await;
    store.set_journal_task_events(true);
    let consent = granted_consent(&store, "c").await;
    begin(&store, "t1", "c", &consent.id, "01").await;
    begin(&store, "t2", "c", &consent.id, "02").await;
    let all = store.journal_batch(0, 10).await.unwrap();
    let settled = store
        .journal_settle(
            all[0].seq,
            vec![rejection(all[1].seq, RejectionReason::Malformed, "bad")],
        )
        .await
        .unwrap();
    assert_eq!(
        settled,
        Settled {
            deleted: 1,
            rejected: 0
        }
    );
    assert_eq!(store.journal_batch(0, 10).await.unwrap(), all[1..]);
    assert_eq!(store.rejected_task_event_count().await.unwrap(), 0);
}

#[tokio::test]
async fn a_long_message_is_cut_at_a_character_boundary() {
    let (_dir, _path, store) = open_temp().await;
    store.set_journal_task_events(true);
    let consent = granted_consent(&store, "c").await;
    begin(&store, "t1", "c", &consent.id, "01").await;
    let seq = store.journal_batch(0, 1).await.unwrap()[0].seq;
    let long = "é".repeat(MAX_REJECTION_MESSAGE_LEN);
    store
        .journal_settle(seq, vec![rejection(seq, RejectionReason::Unknown, &long)])
        .await
        .unwrap();
    let kept = &store.rejected_task_events(1).await.unwrap()[0];
    assert_eq!(kept.message.len(), MAX_REJECTION_MESSAGE_LEN);
    assert!(kept.message.chars().all(|c| c == 'é'));
    assert_eq!(kept.reason, RejectionReason::Unknown);
}

/// A server rejecting everything cannot fill the node's disk: the newest
/// `MAX_REJECTED_EVENTS` are kept.
#[tokio::test]
async fn only_the_newest_rejected_events_are_kept() {
    let (_dir, path, store) = open_temp().await;
    store.set_journal_task_events(true);
    let consent = granted_consent(&store, "c").await;
    begin(&store, "t1", "c", &consent.id, "01").await;
    let template = store.journal_batch(0, 1).await.unwrap()[0].seq;
    // The journal filled behind the store's back with copies of that begin: the test is
    // about the bound, not about beginning 10,000 tasks.
    let extra = u64::try_from(MAX_REJECTED_EVENTS).unwrap() + 5;
    let mut raw = raw_connection(&path).await;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
         INSERT INTO task_events (kind, task_id, body)
         SELECT kind, task_id, body FROM task_events, n WHERE seq = ?",
    )
    .bind(i64::try_from(extra).unwrap())
    .bind(i64::try_from(template).unwrap())
    .execute(&mut raw)
    .await
    .unwrap();
    let all = store.journal_batch(0, 1).await.unwrap();
    let first = all[0].seq;
    let last = first + extra;
    let rejections = (first..=last)
        .map(|seq| rejection(seq, RejectionReason::Malformed, &format!("event {seq}")))
        .collect();
    let settled = store.journal_settle(last, rejections).await.unwrap();
    assert_eq!(settled.rejected, extra + 1);
    assert_eq!(store.journal_depth().await.unwrap(), 0);
    assert_eq!(
        store.rejected_task_event_count().await.unwrap(),
        u64::try_from(MAX_REJECTED_EVENTS).unwrap()
    );
    let newest = store.rejected_task_events(1).await.unwrap();
    assert_eq!(newest[0].entry.seq, last);
    assert_eq!(newest[0].message, format!("event {last}"));
}
