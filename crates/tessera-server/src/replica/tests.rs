use std::time::{Duration, Instant};

use tessera_pgtest::PgServer;

use super::*;
use crate::testing::{new_consent, new_entry, second_store};
use crate::{PgStoreOptions, ServerStoreError, Unavailable};

/// Generous: how long a replica may take to see a change before a test fails.
const PATIENCE: Duration = Duration::from_secs(30);

async fn replica(store: &PgStore, options: ReplicaOptions) -> Replica {
    Replica::start(store.clone(), options)
        .await
        .expect("start replica")
}

async fn reach(replica: &Replica, version: i64) -> Arc<ReplicaState> {
    tokio::time::timeout(PATIENCE, replica.wait_for_version(version))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "replica did not reach version {version}: {:?}",
                replica.state().version
            )
        })
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// A change written through one replica's store is in the other replica's memory soon
/// after the write returns, carried by the notification (the poll is an hour here).
/// Prints the p50/p99 of that delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_replica_reaches_the_others_memory() {
    let Some(pg) = PgServer::start_or_skip("replica").await else {
        return;
    };
    let options = pg.create_database().await.unwrap();
    let one = second_store(&pg, &options).await;
    let two = second_store(&pg, &options).await;
    let slow_poll = ReplicaOptions::default().poll_interval(Duration::from_secs(3600));
    let first = replica(&one, slow_poll.clone()).await;
    let second = replica(&two, slow_poll).await;
    until("both replicas listening", || {
        first.is_listening() && second.is_listening()
    })
    .await;

    let mut delays = Vec::new();
    let mut consents = Vec::new();
    for i in 0..200 {
        let (version, began) = if i % 2 == 0 {
            let written = one
                .create_entry(new_entry("c", &[&format!("s{i}")]), "")
                .await
                .unwrap();
            (written.version, Instant::now())
        } else {
            let written = one.grant_consent(new_consent("c"), "").await.unwrap();
            consents.push(written.value.id.clone());
            (written.version, Instant::now())
        };
        reach(&second, version).await;
        delays.push(began.elapsed());
    }
    let withdrawn = two.withdraw_consent(&consents[0], "").await.unwrap();
    let state = reach(&first, withdrawn.version).await;
    assert_eq!(state.consents[&consents[0]], withdrawn.value.consent);

    delays.sort();
    eprintln!(
        "change -> other replica's memory over {} writes: p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        percentile(&delays, 50),
        percentile(&delays, 99),
        delays[delays.len() - 1]
    );
    let snapshot = one.snapshot().await.unwrap();
    for replica in [&first, &second] {
        let state = reach(replica, snapshot.version).await;
        assert_eq!(
            state.entries.values().cloned().collect::<Vec<_>>().len(),
            100
        );
        assert_eq!(state.consents.len(), 100);
        assert_eq!(
            by_key(snapshot.entries.clone(), |e| e.id.clone()),
            state.entries,
            "the replica holds exactly the database's state"
        );
    }
}

/// A change whose notification never came (committed without NOTIFY, as a notification
/// lost in transit would look) arrives with the periodic catch-up; a replica behind a
/// pruned log reloads a snapshot.
#[tokio::test]
async fn a_lost_notification_loses_nothing_and_a_pruned_log_means_a_snapshot() {
    let Some(pg) = PgServer::start_or_skip("replica").await else {
        return;
    };
    let options = pg.create_database().await.unwrap();
    let store = second_store(&pg, &options).await;
    let replica = replica(
        &store,
        ReplicaOptions::default().poll_interval(Duration::from_millis(200)),
    )
    .await;

    let silent = |n: i64| {
        let store = store.clone();
        async move {
            // What `change::record` does, minus the NOTIFY.
            let mut tx = store.begin().await.unwrap();
            sqlx::query(
                "INSERT INTO entries (id, kind, client, selectors, selectors_sha256, created_at)
                 VALUES ($1, 'client', 'silent', ARRAY['x'], sha256(convert_to($1, 'UTF8')), 0)",
            )
            .bind(format!("silent-{n}"))
            .execute(&mut *tx)
            .await
            .unwrap();
            let version: i64 = sqlx::query_scalar(
                "UPDATE change_version SET version = version + 1 RETURNING version",
            )
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            sqlx::query("INSERT INTO changes VALUES ($1, 0, 'entry', $2)")
                .bind(version)
                .bind(format!("silent-{n}"))
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            version
        }
    };
    let version = silent(1).await;
    let state = reach(&replica, version).await;
    assert!(state.entries.contains_key("silent-1"));

    // Now changes the replica has not seen, pruned from the log before it looks.
    let slow = Replica::start(
        store.clone(),
        ReplicaOptions::default().poll_interval(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    until("listening", || slow.is_listening()).await;
    silent(2).await;
    silent(3).await;
    assert_eq!(
        store.prune_changes(1).await.unwrap(),
        3,
        "the silent changes are dated 1970"
    );
    let written = store
        .create_entry(new_entry("loud", &["y"]), "")
        .await
        .unwrap();
    let state = reach(&slow, written.version).await;
    let ids: Vec<&str> = state.entries.keys().map(String::as_str).collect();
    assert_eq!(ids.len(), 4);
    assert!(
        ids.contains(&"silent-2") && ids.contains(&"silent-3"),
        "{ids:?}"
    );
}

/// PostgreSQL stops: both replicas keep answering reads from memory and refuse writes
/// with Unavailable. It starts again: writes work without restarting anything, and what
/// replica 2 writes reaches replica 1 by the re-established stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_down_reads_answer_writes_are_unavailable_and_both_recover() {
    let Some(mut pg) = PgServer::start_or_skip("replica").await else {
        return;
    };
    let options = pg.create_database().await.unwrap();
    let one = second_store(&pg, &options).await;
    let two = second_store(&pg, &options).await;
    let fast = ReplicaOptions::default()
        .poll_interval(Duration::from_secs(3600))
        .max_backoff(Duration::from_millis(200));
    let first = replica(&one, fast.clone()).await;
    let second = replica(&two, fast).await;
    let before = one
        .create_entry(new_entry("before", &["x"]), "")
        .await
        .unwrap();
    reach(&first, before.version).await;
    reach(&second, before.version).await;

    pg.stop().await.unwrap();
    until("both replicas notice", || {
        !first.is_listening() && !second.is_listening()
    })
    .await;
    for replica in [&first, &second] {
        let state = replica.state();
        assert_eq!(
            state.entries[&before.value.id], before.value,
            "reads are served from memory"
        );
    }
    for store in [&one, &two] {
        let began = Instant::now();
        let error = store
            .create_entry(new_entry("during", &["x"]), "")
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                ServerStoreError::Unavailable(Unavailable::Database { .. })
            ),
            "{error:?}"
        );
        assert!(began.elapsed() < PATIENCE, "refused promptly, not hung");
        let error = store
            .grant_consent(new_consent("during"), "")
            .await
            .unwrap_err();
        assert!(
            matches!(error, ServerStoreError::Unavailable(_)),
            "{error:?}"
        );
    }

    pg.start_again().await.unwrap();
    let restarted = Instant::now();
    let after = one
        .create_entry(new_entry("after", &["x"]), "")
        .await
        .unwrap();
    let by_two = two.grant_consent(new_consent("after"), "").await.unwrap();
    let state = reach(&first, by_two.version).await;
    assert_eq!(state.entries[&after.value.id], after.value);
    assert_eq!(state.consents[&by_two.value.id], by_two.value);
    until("both replicas listening again", || {
        first.is_listening() && second.is_listening()
    })
    .await;
    eprintln!(
        "replicas following changes again {:?} after PostgreSQL started",
        restarted.elapsed()
    );
    let state = reach(&second, by_two.version).await;
    assert_eq!(state.entries.len(), 2);
    assert!(state.entries.values().all(|e| e.client != "during"));
    first.shutdown().await;
    second.shutdown().await;
}

/// Starting a replica needs the database (it would have nothing to serve).
#[tokio::test]
async fn a_replica_does_not_start_without_postgres() {
    let Some(mut pg) = PgServer::start_or_skip("replica").await else {
        return;
    };
    let options = pg.create_database().await.unwrap();
    let store = PgStore::connect(
        options,
        &PgStoreOptions::default().acquire_timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    pg.stop().await.unwrap();
    let error = Replica::start(store, ReplicaOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, ServerStoreError::Unavailable(_)),
        "{error:?}"
    );
}

/// A follower that subscribes, takes the state, then applies the updates as
/// `subscribe` says, holds exactly the replica's copy after writes from both replicas and
/// after a reload from a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_applying_updates_holds_the_replicas_copy() {
    let Some(pg) = PgServer::start_or_skip("replica").await else {
        return;
    };
    let options = pg.create_database().await.unwrap();
    let one = second_store(&pg, &options).await;
    let two = second_store(&pg, &options).await;
    one.create_entry(new_entry("early", &["x"]), "")
        .await
        .unwrap();
    let followed = replica(
        &two,
        ReplicaOptions::default().poll_interval(Duration::from_secs(3600)),
    )
    .await;
    until("listening", || followed.is_listening()).await;

    let mut updates = followed.subscribe();
    let mut copy = ReplicaState::clone(&followed.state());
    let writer = {
        let one = one.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for i in 0..60 {
                last = match i % 3 {
                    0 => {
                        one.create_entry(new_entry("w", &[&format!("s{i}")]), "")
                            .await
                            .unwrap()
                            .version
                    }
                    1 => {
                        one.grant_consent(new_consent("w"), "")
                            .await
                            .unwrap()
                            .version
                    }
                    _ => {
                        let id = one.list_entries().await.unwrap().pop().unwrap().id;
                        one.delete_entry(&id, "").await.unwrap().version
                    }
                };
            }
            last
        })
    };
    let last = writer.await.unwrap();
    let mut reloads = 0;
    // Then a reload: a change the replica never hears of (no NOTIFY), pruned from the
    // log together with everything before it, then a notification: the replica's next
    // catch-up finds the log pruned past it and loads a snapshot.
    reach(&followed, last).await;
    let final_write = {
        let mut tx = one.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO entries (id, kind, client, selectors, selectors_sha256, created_at)
             VALUES ('silent', 'client', 'silent', ARRAY['x'], sha256('silent'), 0)",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        let v: i64 =
            sqlx::query_scalar("UPDATE change_version SET version = version + 1 RETURNING version")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        sqlx::query("INSERT INTO changes VALUES ($1, 0, 'entry', 'silent')")
            .bind(v)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        v
    };
    assert_eq!(
        one.prune_changes(1).await.unwrap(),
        u64::try_from(final_write).unwrap()
    );
    sqlx::query("SELECT pg_notify('tessera_changes', $1)")
        .bind(final_write.to_string())
        .execute(&one.pool)
        .await
        .unwrap();
    while copy.version < final_write {
        match tokio::time::timeout(PATIENCE, updates.recv())
            .await
            .expect("an update")
        {
            Ok(ReplicaUpdate::Changes { from, to, changes }) => {
                if to <= copy.version {
                    continue;
                }
                assert_eq!(from, copy.version, "updates chain without gaps");
                for change in changes.iter() {
                    copy.apply(change.clone());
                }
                copy.version = to;
            }
            Ok(ReplicaUpdate::Reloaded { version }) => {
                reloads += 1;
                copy = ReplicaState::clone(&followed.state());
                assert!(copy.version >= version);
            }
            Err(lagged) => panic!("{lagged:?}"),
        }
    }
    assert_eq!(reloads, 1);
    assert_eq!(copy, *reach(&followed, final_write).await);
    assert_eq!(copy.entries.len(), 2, "early and silent");
    assert_eq!(copy.consents.len(), 20);
}
