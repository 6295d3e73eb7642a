//! The reporter's loop against a real store (cluster mode: tasks begun and ended by a
//! real task manager journal their events) and a stand-in for the server's answer.

use std::sync::Mutex;

use super::*;
use crate::tasks::{EndReason, Entitlement, fixture_with, test_request};

/// Begins and ends `n` tasks: 2n journaled events.
async fn tasks(f: &crate::tasks::Fixture, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let (task, _) = f
            .manager
            .begin(test_request(Entitlement::granted()))
            .await
            .unwrap();
        let id = task.id.to_string();
        f.manager
            .end(&id, EndReason::Ended, "test", None)
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

fn task_of(e: &ProtoEvent) -> (&'static str, String) {
    match e.event.as_ref().unwrap() {
        task_event::Event::Begun(b) => ("begun", b.task_id.clone()),
        task_event::Event::Ended(x) => ("ended", x.task_id.clone()),
    }
}

#[tokio::test]
async fn the_journal_reaches_the_server_in_order_and_is_deleted_once_acknowledged() {
    let f = fixture_with(Some("spiffe://tasks.test/node/a")).await;
    let ids = tasks(&f, 3).await;
    let metrics = Metrics::default();
    let sent: Mutex<Vec<ProtoEvent>> = Mutex::default();
    send_journal(&f.store, &metrics, |request: ReportTaskEventsRequest| {
        assert!(request.events.len() <= MAX_JOURNAL_BATCH);
        let acked = request.events.last().unwrap().seq;
        sent.lock().unwrap().extend(request.events);
        async move {
            Ok(ReportTaskEventsResponse {
                acknowledged_seq: acked,
                rejected: Vec::new(),
            })
        }
    })
    .await
    .unwrap();
    let sent = sent.into_inner().unwrap();
    let expected: Vec<(&str, String)> = ids
        .iter()
        .flat_map(|id| [("begun", id.clone()), ("ended", id.clone())])
        .collect();
    assert_eq!(sent.iter().map(task_of).collect::<Vec<_>>(), expected);
    assert!(sent.windows(2).all(|w| w[0].seq < w[1].seq));
    let task_event::Event::Ended(end) = sent[1].event.as_ref().unwrap() else {
        panic!("an end")
    };
    assert_eq!(end.reason, "ended");
    assert!(!end.serials.is_empty() && end.until_unix > 0);
    assert_eq!(
        f.store.journal_depth().await.unwrap(),
        0,
        "acknowledged, so deleted"
    );
    assert_eq!(metrics.task_events_acked.get(), 6);
}

#[tokio::test]
async fn while_the_server_is_away_the_journal_keeps_every_event_for_the_next_try() {
    let f = fixture_with(Some("spiffe://tasks.test/node/a")).await;
    tasks(&f, 2).await;
    let metrics = Metrics::default();
    let failed = send_journal(&f.store, &metrics, |_| async {
        Err(ReportError::Refused(tonic::Status::unavailable(
            "server down",
        )))
    })
    .await;
    assert!(matches!(failed, Err(ReportError::Refused(_))), "{failed:?}");
    assert_eq!(f.store.journal_depth().await.unwrap(), 4);

    // A partial acknowledgement deletes only what it covers; the rest goes next.
    let mut requests = 0;
    send_journal(&f.store, &metrics, |request: ReportTaskEventsRequest| {
        requests += 1;
        let acked = if requests == 1 {
            request.events[1].seq
        } else {
            request.events.last().unwrap().seq
        };
        async move {
            Ok(ReportTaskEventsResponse {
                acknowledged_seq: acked,
                rejected: Vec::new(),
            })
        }
    })
    .await
    .unwrap();
    assert_eq!(requests, 2);
    assert_eq!(f.store.journal_depth().await.unwrap(), 0);
}

#[tokio::test]
async fn an_acknowledgement_outside_the_batch_deletes_nothing() {
    let f = fixture_with(Some("spiffe://tasks.test/node/a")).await;
    tasks(&f, 1).await;
    let metrics = Metrics::default();
    let result = send_journal(&f.store, &metrics, |request: ReportTaskEventsRequest| {
        let beyond = request.events.last().unwrap().seq + 100;
        async move {
            Ok(ReportTaskEventsResponse {
                acknowledged_seq: beyond,
                rejected: Vec::new(),
            })
        }
    })
    .await;
    assert!(
        matches!(result, Err(ReportError::BadAck { .. })),
        "{result:?}"
    );
    assert_eq!(f.store.journal_depth().await.unwrap(), 2);
}

#[tokio::test]
async fn a_standalone_agent_journals_nothing_to_report() {
    let f = fixture_with(None).await;
    tasks(&f, 2).await;
    assert_eq!(f.store.journal_depth().await.unwrap(), 0);
}

/// One event the server will never take does not hold back the rest: it leaves the
/// journal for the rejected events (counted by reason), and everything after it is sent.
#[tokio::test]
async fn a_rejected_event_leaves_the_journal_and_the_events_after_it_flow_on() {
    let f = fixture_with(Some("spiffe://tasks.test/node/a")).await;
    let ids = tasks(&f, 3).await;
    let metrics = Metrics::default();
    let mut requests = 0;
    let mut sent = Vec::new();
    send_journal(&f.store, &metrics, |request: ReportTaskEventsRequest| {
        requests += 1;
        sent.extend(request.events.iter().map(task_of));
        // The second task's begin is another node's; its end is malformed (say).
        let rejected = request
            .events
            .iter()
            .filter(|e| task_of(e).1 == ids[1])
            .map(|e| RejectedTaskEvent {
                seq: e.seq,
                reason: match task_of(e).0 {
                    "begun" => TaskEventRejection::TaskOfAnotherNode.into(),
                    _ => TaskEventRejection::Malformed.into(),
                },
                message: format!("task {} rejected", ids[1]),
            })
            .collect();
        let acked = request.events.last().unwrap().seq;
        async move {
            Ok(ReportTaskEventsResponse {
                acknowledged_seq: acked,
                rejected,
            })
        }
    })
    .await
    .unwrap();
    assert_eq!(requests, 1);
    assert_eq!(sent.len(), 6);
    assert_eq!(
        f.store.journal_depth().await.unwrap(),
        0,
        "nothing is stuck"
    );
    let dead = f.store.rejected_task_events(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|d| match &d.entry.event {
        TaskEvent::Begun(b) => b.task_id == ids[1],
        TaskEvent::Ended(e) => e.task_id == ids[1],
    }));
    assert_eq!(metrics.task_events_acked.get(), 4);
    let rendered = metrics.render();
    for line in [
        "tessera_task_events_rejected_total{reason=\"task_of_another_node\"} 1",
        "tessera_task_events_rejected_total{reason=\"malformed\"} 1",
    ] {
        assert!(rendered.contains(line), "{line} not in:\n{rendered}");
    }

    // Later events flow as usual.
    tasks(&f, 1).await;
    send_journal(&f.store, &metrics, |request: ReportTaskEventsRequest| {
        let acked = request.events.last().unwrap().seq;
        async move {
            Ok(ReportTaskEventsResponse {
                acknowledged_seq: acked,
                rejected: Vec::new(),
            })
        }
    })
    .await
    .unwrap();
    assert_eq!(f.store.journal_depth().await.unwrap(), 0);
    assert_eq!(metrics.task_events_acked.get(), 6);
}

#[tokio::test]
async fn a_rejection_of_an_event_not_in_the_batch_settles_nothing() {
    let f = fixture_with(Some("spiffe://tasks.test/node/a")).await;
    tasks(&f, 1).await;
    let metrics = Metrics::default();
    for beyond in [1, 100] {
        let result = send_journal(&f.store, &metrics, |request: ReportTaskEventsRequest| {
            let first = request.events[0].seq;
            let last = request.events.last().unwrap().seq;
            // Acknowledges only the first, but rejects the second (or one never sent).
            let seq = if beyond == 1 { last } else { last + beyond };
            async move {
                Ok(ReportTaskEventsResponse {
                    acknowledged_seq: first,
                    rejected: vec![RejectedTaskEvent {
                        seq,
                        reason: TaskEventRejection::Malformed.into(),
                        message: String::new(),
                    }],
                })
            }
        })
        .await;
        assert!(
            matches!(result, Err(ReportError::BadRejection { .. })),
            "{result:?}"
        );
        assert_eq!(f.store.journal_depth().await.unwrap(), 2);
        assert_eq!(f.store.rejected_task_event_count().await.unwrap(), 0);
    }
}

#[tokio::test]
async fn a_rejection_reason_newer_than_the_agent_is_still_a_rejection() {
    let f = fixture_with(Some("spiffe://tasks.test/node/a")).await;
    tasks(&f, 1).await;
    let metrics = Metrics::default();
    send_journal(&f.store, &metrics, |request: ReportTaskEventsRequest| {
        let first = request.events[0].seq;
        let acked = request.events.last().unwrap().seq;
        async move {
            Ok(ReportTaskEventsResponse {
                acknowledged_seq: acked,
                rejected: vec![RejectedTaskEvent {
                    seq: first,
                    reason: 99,
                    message: "a reason from the future".into(),
                }],
            })
        }
    })
    .await
    .unwrap();
    let dead = f.store.rejected_task_events(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, tessera_store::RejectionReason::Unknown);
    assert_eq!(f.store.journal_depth().await.unwrap(), 0);
}
