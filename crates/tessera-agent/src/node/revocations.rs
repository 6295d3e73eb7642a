//! Cluster mode: the trust domain's revocations, followed from the server
//! (`Node.FollowRevocations`) and merged into this agent's own feed.
//!
//! What arrives becomes more deltas of the local feed, so verifiers on this node see
//! every node's ends and the server's own revocations (consent withdrawals, admin
//! revocations, evicted node CAs) beside this node's ends, which never wait for the
//! server. A revoked task that is live here is ended here first (reason from the feed;
//! its SVIDs leave the Workload API streams, and its local revocation, which lists
//! every SVID it was issued, goes on the feed), without journaling the end back to the
//! server. The feed's `current_as_of` follows the server's, only while this stream is
//! live and only once a complete snapshot is held: cut off from the server, it stops,
//! and this node's verifiers fail closed once it is older than their bound.
//!
//! Every message is hostile until checked: sizes bounded, entries in this trust domain,
//! versions in step; anything else drops the stream, and it is followed again from the
//! version held.

use std::sync::Arc;
use std::time::Duration;

use tessera_proto::tessera::v1::{
    FollowRevocationsRequest, RevocationSnapshot, RevocationUpdate, RevokedNodeCa, RevokedTask,
    revocation_update,
};
use tessera_store::{MAX_REASON_LEN, MAX_SERIAL_HEX_LEN, MAX_SPIFFE_ID_LEN, MAX_TASK_ID_LEN};

use super::{Backoff, NodeLink};
use crate::drain;
use crate::metrics::Metrics;
use crate::tasks::{EndReason, TaskManager};

/// A stream silent (not even a heartbeat) this long is presumed dead and reopened.
const SILENCE_LIMIT: Duration = Duration::from_secs(15);

/// Most entries a snapshot may gather over its pages before it is applied.
const MAX_SNAPSHOT_ENTRIES: usize = 2_000_000;

/// Most serials one revoked task may list (a task rotates at half life: a day-long task
/// with 5-minute SVIDs has ~600).
const MAX_SERIALS: usize = 10_000;

/// Why a stream was dropped (it is then followed again from the version held).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FollowError {
    #[error("FollowRevocations failed: {0}")]
    Rpc(tonic::Status),
    #[error("nothing from the server for {SILENCE_LIMIT:?}")]
    Silent,
    #[error("the server sent {0}")]
    Invalid(String),
    #[error("the server's feed moved on without this copy ({0}); following again")]
    Gap(String),
}

/// Where this agent's copy of the server's feed stands.
#[derive(Debug, Default)]
struct Position {
    feed_id: String,
    version: u64,
    /// A complete snapshot of `feed_id` has been applied.
    complete: bool,
}

/// Follows the server's revocation feed into the local one.
#[derive(Debug)]
pub(crate) struct ServerRevocations {
    link: Arc<NodeLink>,
    copy: ServerCopy,
}

/// What the server's messages are applied to: the local feed and live tasks.
#[derive(Debug)]
struct ServerCopy {
    tasks: Arc<TaskManager>,
    metrics: Arc<Metrics>,
    /// `spiffe://<td>/`: every revoked task's SPIFFE ID starts with it.
    prefix: String,
    trust_domain: String,
}

impl ServerRevocations {
    pub(crate) fn new(
        link: Arc<NodeLink>,
        tasks: Arc<TaskManager>,
        metrics: Arc<Metrics>,
    ) -> ServerRevocations {
        ServerRevocations {
            link,
            copy: ServerCopy::new(tasks, metrics),
        }
    }

    /// Follows until `drain` starts, reconnecting with backoff and resuming from the
    /// feed id and version held.
    pub(crate) async fn run(self, drain: drain::Watch) {
        let mut position = Position::default();
        let mut backoff = Backoff::default();
        loop {
            let result = tokio::select! {
                () = drain.signaled() => return,
                r = self.follow(&mut position, &mut backoff) => r,
            };
            let wait = backoff.next();
            match result {
                Ok(()) => tracing::info!("the server ended the revocation stream; following again"),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?wait, server = %self.link.server_address(), "following the server's revocations interrupted; this node's feed stops vouching for the cluster meanwhile")
                }
            }
            tokio::select! {
                () = drain.signaled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn follow(
        &self,
        position: &mut Position,
        backoff: &mut Backoff,
    ) -> Result<(), FollowError> {
        let request = FollowRevocationsRequest {
            feed_id: position.feed_id.clone(),
            since_version: if position.complete {
                position.version
            } else {
                0
            },
        };
        let mut stream = self
            .link
            .client()
            .follow_revocations(request)
            .await
            .map_err(FollowError::Rpc)?
            .into_inner();
        tracing::info!(feed = %position.feed_id, since = position.version, "following the server's revocations");
        let mut pending: Option<RevocationSnapshot> = None;
        loop {
            let update = tokio::time::timeout(SILENCE_LIMIT, stream.message())
                .await
                .map_err(|_| FollowError::Silent)?
                .map_err(FollowError::Rpc)?;
            let Some(update) = update else {
                return Ok(());
            };
            self.copy.apply(update, position, &mut pending).await?;
            backoff.reset();
        }
    }
}

impl ServerCopy {
    fn new(tasks: Arc<TaskManager>, metrics: Arc<Metrics>) -> ServerCopy {
        let trust_domain = tasks.feed().trust_domain().to_owned();
        ServerCopy {
            tasks,
            metrics,
            prefix: format!("spiffe://{trust_domain}/"),
            trust_domain,
        }
    }

    /// Applies one message; snapshot pages wait in `pending` for the last.
    async fn apply(
        &self,
        update: RevocationUpdate,
        position: &mut Position,
        pending: &mut Option<RevocationSnapshot>,
    ) -> Result<(), FollowError> {
        let as_of = update.current_as_of_unix_ms;
        match update.update {
            Some(revocation_update::Update::Snapshot(page)) => {
                if !page.trust_domain.is_empty() && page.trust_domain != self.trust_domain {
                    return Err(FollowError::Invalid(format!(
                        "a snapshot of trust domain {:?}",
                        page.trust_domain
                    )));
                }
                let more = page.more;
                let snapshot = match pending.take() {
                    None => page,
                    Some(mut s) if s.version == page.version => {
                        s.revoked.extend(page.revoked);
                        s.revoked_node_cas.extend(page.revoked_node_cas);
                        s
                    }
                    Some(s) => {
                        return Err(FollowError::Invalid(format!(
                            "a snapshot page of version {} within one of version {}",
                            page.version, s.version
                        )));
                    }
                };
                if snapshot.revoked.len() + snapshot.revoked_node_cas.len() > MAX_SNAPSHOT_ENTRIES {
                    return Err(FollowError::Invalid(format!(
                        "a snapshot of more than {MAX_SNAPSHOT_ENTRIES} entries"
                    )));
                }
                if more {
                    *pending = Some(snapshot);
                    return Ok(());
                }
                // The whole set, as the server holds it: merged in. Entries the copy had
                // and the snapshot lacks are kept until their `until`: deltas cannot take
                // a revocation back from this node's followers, and keeping one longer
                // only refuses an expired credential (fail closed).
                let version = snapshot.version;
                self.merge(snapshot.revoked, snapshot.revoked_node_cas)
                    .await?;
                *position = Position {
                    feed_id: update.feed_id,
                    version,
                    complete: true,
                };
            }
            Some(revocation_update::Update::Delta(delta)) => {
                if pending.is_some() {
                    return Err(FollowError::Invalid(
                        "a delta inside a paged snapshot".into(),
                    ));
                }
                if !position.complete || update.feed_id != position.feed_id {
                    return Err(FollowError::Gap(format!(
                        "a delta of feed {:?} before its snapshot",
                        update.feed_id
                    )));
                }
                if delta.from_version != position.version || delta.version <= delta.from_version {
                    return Err(FollowError::Gap(format!(
                        "a delta {}..{} at version {}",
                        delta.from_version, delta.version, position.version
                    )));
                }
                self.merge(delta.revoked, delta.revoked_node_cas).await?;
                position.version = delta.version;
            }
            Some(revocation_update::Update::Heartbeat(beat)) => {
                if pending.is_some() || !position.complete {
                    // Not yet a complete copy: nothing to vouch for.
                    return Ok(());
                }
                if update.feed_id != position.feed_id || beat.version != position.version {
                    self.metrics.server_feed_lag.set(
                        i64::try_from(beat.version.saturating_sub(position.version))
                            .unwrap_or(i64::MAX),
                    );
                    return Err(FollowError::Gap(format!(
                        "a heartbeat at version {} of feed {:?}, the copy is at {} of {:?}",
                        beat.version, update.feed_id, position.version, position.feed_id
                    )));
                }
                self.metrics.server_feed_lag.set(0);
            }
            None => return Err(FollowError::Invalid("an empty update".into())),
        }
        if position.complete && pending.is_none() {
            // Only a complete, in-step copy vouches for the cluster.
            self.tasks.feed().server_current_as_of(as_of);
            self.metrics.server_feed_current_as_of.set(as_of);
            self.metrics
                .server_feed_version
                .set(i64::try_from(position.version).unwrap_or(i64::MAX));
        }
        Ok(())
    }

    /// Checks the entries, ends those live here, and adds all of them to the local feed.
    async fn merge(
        &self,
        revoked: Vec<RevokedTask>,
        node_cas: Vec<RevokedNodeCa>,
    ) -> Result<(), FollowError> {
        for t in &revoked {
            self.check_task(t)?;
        }
        for c in &node_cas {
            check_node_ca(c)?;
        }
        // Ended here first, so the feed's entry for each is the local one, which lists
        // every serial the task was issued (the server may know only the first).
        let live: Vec<&RevokedTask> = revoked
            .iter()
            .filter(|t| self.tasks.is_live(&t.task_id))
            .collect();
        let ends = live.iter().map(|t| {
            let tasks = Arc::clone(&self.tasks);
            let reason = EndReason::from_feed(&t.reason);
            let id = t.task_id.clone();
            async move {
                match tasks.end_from_server(&id, reason).await {
                    Ok(Some(_)) => tracing::info!(task = %id, reason = reason.as_str(), "ended a task the server revoked"),
                    Ok(None) => {}
                    // Revoked in memory and on the feed already; a restart ends whatever
                    // the store still thinks is live.
                    Err(e) => tracing::error!(task = %id, error = %e, "recording the end of a task the server revoked failed"),
                }
            }
        });
        futures::future::join_all(ends).await;
        self.tasks.feed().add_remote(revoked, node_cas);
        Ok(())
    }

    fn check_task(&self, t: &RevokedTask) -> Result<(), FollowError> {
        let bad = |what: &str| Err(FollowError::Invalid(format!("a revoked task with {what}")));
        if t.task_id.is_empty() || t.task_id.len() > MAX_TASK_ID_LEN {
            return bad("a task id of unusable length");
        }
        if t.spiffe_id.len() > MAX_SPIFFE_ID_LEN || !t.spiffe_id.starts_with(&self.prefix) {
            return bad(&format!(
                "SPIFFE ID {:?} outside the trust domain",
                t.spiffe_id
            ));
        }
        if !t.spiffe_id.ends_with(&format!("/task/{}", t.task_id)) {
            return bad("a SPIFFE ID that names another task");
        }
        if t.serials.len() > MAX_SERIALS
            || t.serials
                .iter()
                .any(|s| s.is_empty() || s.len() > MAX_SERIAL_HEX_LEN)
        {
            return bad("unusable serials");
        }
        if t.reason.len() > MAX_REASON_LEN || t.node.len() > MAX_SPIFFE_ID_LEN {
            return bad("an oversized reason or node");
        }
        Ok(())
    }
}

fn check_node_ca(c: &RevokedNodeCa) -> Result<(), FollowError> {
    if c.serial.is_empty()
        || c.serial.len() > MAX_SERIAL_HEX_LEN
        || c.node.len() > MAX_SPIFFE_ID_LEN
    {
        return Err(FollowError::Invalid(
            "a revoked node CA of unusable size".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
