//! Retention: ended tasks and audit records past their configured age are deleted from
//! the store, so its file does not grow with every task ever begun.
//!
//! A pass runs at start and then every [`INTERVAL`]; each store call deletes in small
//! transactions of its own, so BeginTask and EndTask writes queued meanwhile wait for
//! one chunk, never for a whole backlog.

use std::sync::Arc;
use std::time::Duration;

use crate::drain;
use crate::metrics::{Metrics, PrunedLabel};
use tessera_store::Store;
use time::OffsetDateTime;

/// How often a pass runs.
pub(crate) const INTERVAL: Duration = Duration::from_secs(60);

/// How long records are kept; `None` keeps them forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Ended tasks (and their SVID records), from the time they ended. A task whose
    /// revocation is still in force is kept regardless.
    pub ended_tasks: Option<Duration>,
    /// Audit records, from the time they were written.
    pub audit: Option<Duration>,
}

/// Prunes until the drain starts. Returns at once when nothing is ever deleted.
pub(crate) async fn run(
    store: Store,
    retention: Retention,
    metrics: Arc<Metrics>,
    drain: drain::Watch,
) {
    if retention.ended_tasks.is_none() && retention.audit.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = drain.signaled() => return,
            _ = tick.tick() => {
                prune(&store, retention, &metrics, OffsetDateTime::now_utc()).await;
            }
        }
    }
}

/// One pass at `now`: returns how many tasks and audit records it deleted.
pub(crate) async fn prune(
    store: &Store,
    retention: Retention,
    metrics: &Metrics,
    now: OffsetDateTime,
) -> (u64, u64) {
    let mut deleted = (0, 0);
    if let Some(keep) = retention.ended_tasks {
        let before = (now - keep).unix_timestamp();
        match store.prune_ended_tasks(before).await {
            Ok(n) => deleted.0 = n,
            Err(e) => {
                tracing::error!(error = %e, "deleting ended tasks past their retention failed")
            }
        }
    }
    if let Some(keep) = retention.audit {
        let before_ms =
            i64::try_from((now - keep).unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MIN);
        match store.prune_audit(before_ms).await {
            Ok(n) => deleted.1 = n,
            Err(e) => {
                tracing::error!(error = %e, "deleting audit records past their retention failed")
            }
        }
    }
    let (tasks, audit) = deleted;
    for (what, n) in [("tasks", tasks), ("audit", audit)] {
        metrics
            .pruned
            .get_or_create(&PrunedLabel { what })
            .inc_by(n);
    }
    if tasks + audit > 0 {
        tracing::info!(tasks, audit, "deleted records past their retention");
    }
    deleted
}

#[cfg(test)]
mod tests {
    use tessera_store::{NewConsent, Revocation, SvidIssued, TaskFilter, TaskRecord};

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    /// A store holding one ended task (its revocation already pruned) and one live task.
    async fn store_with_tasks(dir: &tempfile::TempDir) -> (Store, i64) {
        let store = Store::open(&dir.path().join("tessera.db")).await.unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let consent = store
            .grant_consent(
                NewConsent {
                    client: "a".into(),
                    subject: "alice".into(),
                    server: "github".into(),
                    scopes: vec!["github/tool/*".into()],
                    expires_at: now + 3600,
                },
                "admin",
            )
            .await
            .unwrap();
        for (n, id) in [ENDED, LIVE].into_iter().enumerate() {
            let task = TaskRecord {
                id: id.parse().unwrap(),
                client: "a".parse().unwrap(),
                subject: "alice".into(),
                server: "github".into(),
                scopes: vec!["github/tool/x".into()],
                purpose: "test".into(),
                consent_id: consent.id.clone(),
                pid: 1,
                begun_at: now,
                deadline: now + 300,
                ended_at: None,
                end_reason: None,
                serials: Vec::new(),
            };
            let svid = SvidIssued {
                serial: format!("{:x}", n + 1),
                spiffe_id: format!("spiffe://t/client/a/task/{id}"),
                not_after: now + 300,
            };
            store.begin_task(task, svid, "uid:0").await.unwrap();
        }
        let revocation = Revocation {
            task_id: ENDED.into(),
            spiffe_id: format!("spiffe://t/client/a/task/{ENDED}"),
            serials: Vec::new(),
            reason: "ended".into(),
            revoked_at_ms: now * 1000,
            until: now + 300,
        };
        store
            .end_task(&ENDED.parse().unwrap(), "ended", now, revocation, "uid:0")
            .await
            .unwrap();
        assert_eq!(store.prune_revocations(now + 400).await.unwrap(), 1);
        (store, now)
    }

    /// The ids of the two tasks the tests begin: one ended, one live.
    const ENDED: &str = "00000000000000000000000001";
    const LIVE: &str = "00000000000000000000000002";

    /// Every task the store holds, live or ended.
    async fn stored_task_ids(store: &Store) -> Vec<String> {
        let all = TaskFilter {
            client: None,
            include_ended: true,
        };
        let tasks = store.list_tasks(&all).await.unwrap();
        tasks.into_iter().map(|t| t.id.to_string()).collect()
    }

    #[tokio::test]
    async fn a_pass_deletes_what_is_past_its_retention_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, now) = store_with_tasks(&dir).await;
        let metrics = Metrics::default();
        let retention = Retention {
            ended_tasks: Some(DAY),
            audit: Some(DAY),
        };
        let start = OffsetDateTime::from_unix_timestamp(now).unwrap();

        // Within retention: nothing goes.
        assert_eq!(prune(&store, retention, &metrics, start).await, (0, 0));
        assert_eq!(stored_task_ids(&store).await.len(), 2);

        // Two days on: the ended task and every audit record go, the live task stays.
        let later = start + 2 * DAY;
        let audit = u64::try_from(store.list_audit(0, 1000).await.unwrap().len()).unwrap();
        assert_eq!(prune(&store, retention, &metrics, later).await, (1, audit));
        assert_eq!(stored_task_ids(&store).await, [LIVE]);
        assert!(store.list_audit(0, 1000).await.unwrap().is_empty());
        let rendered = metrics.render();
        assert!(
            rendered.contains("tessera_store_pruned_total{what=\"tasks\"} 1"),
            "{rendered}"
        );
        assert!(
            rendered.contains(&format!(
                "tessera_store_pruned_total{{what=\"audit\"}} {audit}"
            )),
            "{rendered}"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn zero_retention_keeps_everything_forever() {
        let dir = tempfile::tempdir().unwrap();
        let (store, now) = store_with_tasks(&dir).await;
        let metrics = Metrics::default();
        let config =
            crate::config::Config::from_toml("task_retention = \"0s\"\naudit_retention = \"0s\"")
                .unwrap();
        let keep = config.retention;
        assert_eq!(
            keep,
            Retention {
                ended_tasks: None,
                audit: None,
            }
        );
        let far = OffsetDateTime::from_unix_timestamp(now).unwrap() + 3650 * DAY;
        let audit = store.list_audit(0, 1000).await.unwrap().len();
        assert_eq!(prune(&store, keep, &metrics, far).await, (0, 0));
        assert_eq!(stored_task_ids(&store).await.len(), 2);
        assert_eq!(store.list_audit(0, 1000).await.unwrap().len(), audit);
        store.close().await;
    }
}
