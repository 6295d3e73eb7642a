use crate::testing::{begin, granted_consent, open_temp, revocation, task_id};
use crate::{EndOutcome, StoreError, TaskEvent};

async fn end(store: &crate::Store, label: &str) -> EndOutcome {
    store
        .end_task(
            &task_id(label),
            "ended",
            crate::testing::now(),
            revocation("c", label, "ended"),
            "uid:1000",
        )
        .await
        .expect("end task")
}

#[tokio::test]
async fn a_standalone_store_journals_nothing() {
    let (_dir, _path, store) = open_temp().await;
    let consent = granted_consent(&store, "c").await;
    begin(&store, "t1", "c", &consent.id, "0a").await;
    end(&store, "t1").await;
    assert_eq!(store.journal_depth().await.unwrap(), 0);
    assert!(store.journal_batch(0, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn begin_and_end_are_journaled_in_order_with_what_the_server_needs() {
    let (_dir, _path, store) = open_temp().await;
    store.set_journal_task_events(true);
    let consent = granted_consent(&store, "c").await;
    let journal = store.watch_journal();
    begin(&store, "t1", "c", &consent.id, "0A").await;
    assert!(
        journal.has_changed().unwrap(),
        "the reporter is woken by the commit"
    );
    store
        .record_task_svid(&task_id("t1"), crate::testing::svid("c", "t1", "0b"))
        .await
        .unwrap();
    end(&store, "t1").await;
    let events = store.journal_batch(0, 10).await.unwrap();
    assert_eq!(events.len(), 2, "a rotation is not an event: {events:?}");
    assert!(events[0].seq < events[1].seq);
    let TaskEvent::Begun(b) = &events[0].event else {
        panic!("first a begin: {events:?}")
    };
    assert_eq!(b.task_id, task_id("t1").to_string());
    assert_eq!(b.consent_id, consent.id);
    assert_eq!(b.serials, ["0a"]);
    assert_eq!(b.spiffe_id, crate::testing::task_spiffe_id("c", "t1"));
    let TaskEvent::Ended(e) = &events[1].event else {
        panic!("then the end: {events:?}")
    };
    assert_eq!(e.reason, "ended");
    assert_eq!(e.serials, ["0a", "0b"], "every serial the task was issued");
    assert!(e.until >= crate::testing::now() + 290);
}

#[tokio::test]
async fn a_refused_begin_journals_nothing_because_it_is_the_same_transaction() {
    let (_dir, _path, store) = open_temp().await;
    store.set_journal_task_events(true);
    let consent = granted_consent(&store, "c").await;
    store
        .withdraw_consent(&consent.id, "admin", crate::testing::now(), &|t| {
            revocation("c", &crate::testing::label(&t.id), "consent_withdrawn")
        })
        .await
        .unwrap();
    let refused = store
        .begin_task(
            crate::testing::new_task("t1", "c", &consent.id),
            crate::testing::svid("c", "t1", "0a"),
            "uid:1000",
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(store.journal_depth().await.unwrap(), 0);
    // And a second end of an ended task writes no second event.
    let consent = granted_consent(&store, "c").await;
    begin(&store, "t2", "c", &consent.id, "0b").await;
    end(&store, "t2").await;
    assert!(matches!(
        end(&store, "t2").await,
        EndOutcome::AlreadyEnded(_)
    ));
    assert_eq!(store.journal_depth().await.unwrap(), 2);
}

#[tokio::test]
async fn an_end_decided_by_the_server_is_not_echoed_back() {
    let (_dir, _path, store) = open_temp().await;
    store.set_journal_task_events(true);
    let consent = granted_consent(&store, "c").await;
    begin(&store, "t1", "c", &consent.id, "0a").await;
    let outcome = store
        .end_task_from_server(
            &task_id("t1"),
            "revoked",
            crate::testing::now(),
            revocation("c", "t1", "revoked"),
            "tessera-server",
        )
        .await
        .unwrap();
    assert!(matches!(outcome, EndOutcome::Ended(..)));
    let events = store.journal_batch(0, 10).await.unwrap();
    assert_eq!(events.len(), 1, "only the begin: {events:?}");
    assert!(matches!(events[0].event, TaskEvent::Begun(_)));
}

#[tokio::test]
async fn ack_deletes_up_to_the_acknowledged_seq_and_seqs_are_never_reused() {
    let (_dir, _path, store) = open_temp().await;
    store.set_journal_task_events(true);
    let consent = granted_consent(&store, "c").await;
    for (label, serial) in [("t1", "01"), ("t2", "02"), ("t3", "03")] {
        begin(&store, label, "c", &consent.id, serial).await;
    }
    let all = store.journal_batch(0, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(store.journal_ack(all[1].seq).await.unwrap(), 2);
    let left = store.journal_batch(0, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].seq, all[2].seq);
    // Acknowledging again is harmless; emptying the journal does not reset the seq.
    assert_eq!(store.journal_ack(all[1].seq).await.unwrap(), 0);
    store.journal_ack(all[2].seq).await.unwrap();
    assert_eq!(store.journal_depth().await.unwrap(), 0);
    begin(&store, "t4", "c", &consent.id, "04").await;
    let next = store.journal_batch(0, 10).await.unwrap();
    assert!(
        next[0].seq > all[2].seq,
        "{} after {}",
        next[0].seq,
        all[2].seq
    );
}

#[tokio::test]
async fn batches_come_in_order_and_are_bounded() {
    let (_dir, _path, store) = open_temp().await;
    store.set_journal_task_events(true);
    let consent = granted_consent(&store, "c").await;
    for i in 0..5 {
        begin(&store, &format!("t{i}"), "c", &consent.id, &format!("a{i}")).await;
    }
    let first = store.journal_batch(0, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let rest = store.journal_batch(first[1].seq, 100).await.unwrap();
    assert_eq!(rest.len(), 3);
    assert!(rest.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(rest[0].seq > first[1].seq);
}

#[tokio::test]
async fn the_journal_survives_a_restart() {
    let (_dir, path, store) = open_temp().await;
    store.set_journal_task_events(true);
    let consent = granted_consent(&store, "c").await;
    begin(&store, "t1", "c", &consent.id, "0a").await;
    end(&store, "t1").await;
    let before = store.journal_batch(0, 10).await.unwrap();
    // Closed without acknowledging: as after a kill, nothing was sent.
    store.close().await;
    let reopened = crate::Store::open(&path).await.unwrap();
    assert_eq!(reopened.journal_batch(0, 10).await.unwrap(), before);
}

#[tokio::test]
async fn pending_counts_events_and_ends_so_the_reporter_can_send_ends_at_once() {
    let (_dir, _path, store) = open_temp().await;
    store.set_journal_task_events(true);
    let consent = granted_consent(&store, "c").await;
    assert_eq!(
        store.journal_pending().await.unwrap(),
        crate::JournalPending::default()
    );
    begin(&store, "t1", "c", &consent.id, "0a").await;
    begin(&store, "t2", "c", &consent.id, "0b").await;
    let p = store.journal_pending().await.unwrap();
    assert_eq!((p.events, p.ends), (2, 0), "begins only: may linger");
    end(&store, "t1").await;
    let p = store.journal_pending().await.unwrap();
    assert_eq!((p.events, p.ends), (3, 1), "an end: send now");
    let last = store
        .journal_batch(0, 10)
        .await
        .unwrap()
        .last()
        .unwrap()
        .seq;
    store.journal_ack(last).await.unwrap();
    assert_eq!(
        store.journal_pending().await.unwrap(),
        crate::JournalPending::default()
    );
}
