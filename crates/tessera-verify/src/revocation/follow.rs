//! Following the agent's feed: `Revocations.Follow`, or the legacy `Watch` from an
//! agent that predates it.
//!
//! The protocol (tessera.v1.RevocationUpdate): a follower asks with the feed id and
//! version it holds (nothing at first). The agent answers with a snapshot (pages of one
//! version, all but the last with `more`) when it cannot resume from there, then deltas
//! (`from_version` → `version`) and heartbeats (`version`), each with
//! `current_as_of_unix_ms`. A delta or heartbeat that does not start at the held version
//! of the held feed means something was missed: the stream is dropped and the watcher
//! follows again with what it holds, which gets it the missing deltas (or a snapshot).
//!
//! Failures and what they leave: a broken stream reconnects with exponential backoff and
//! full jitter, resuming where it was; `Follow` answered `UNIMPLEMENTED` (an old agent)
//! falls back to `Watch` on the same connection; `Watch` answered
//! `FAILED_PRECONDITION` (a cluster-mode agent that only serves `Follow`, which this
//! would not be reached for unless `Follow` itself failed) is logged once at error and
//! leaves the set to go stale: the legacy set cannot carry evicted node CAs nor the
//! cluster's freshness, so it is never trusted in its place.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tessera_proto::tessera::v1::RevocationSnapshot;
use tessera_proto::tessera::v1::revocations_client::RevocationsClient;
use tessera_proto::tessera::v1::{FollowRevocationsRequest, WatchRevocationsRequest};
use tonic::Code;
use tonic::transport::Channel;

use super::set::{Added, RevokedSet};
use super::{RevocationWatcher, WatcherConfig};

/// The most entries (tasks and node CAs) one snapshot may hold, over all its pages: a
/// bound on what an agent can make the verifier buffer before the last page (2 million
/// revocations are some 600 MiB; a real trust domain holds far fewer, as entries leave
/// when their SVIDs expire).
pub const MAX_SNAPSHOT_ENTRIES: usize = 2_000_000;

/// Why a feed message could not be applied: the stream is dropped and followed again
/// from what is held.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The message carries no update.
    #[error("feed message without an update")]
    Empty,
    /// A delta or heartbeat that does not follow from the held version: something was
    /// missed (or the sender went back).
    #[error("feed out of step: holding version {held}, the sender is at {sender}")]
    OutOfStep {
        /// The version held.
        held: u64,
        /// The delta's `from_version`, or the heartbeat's version.
        sender: u64,
    },
    /// A delta or heartbeat of another feed incarnation than the held set's, or before
    /// any complete snapshot.
    #[error("feed message of feed {got:?} while holding {held:?}")]
    OtherFeed {
        /// The held feed id (empty: none).
        held: String,
        /// The message's feed id.
        got: String,
    },
    /// A delta whose `version` is not after its `from_version`.
    #[error("delta from version {from} to {to} does not move forward")]
    VersionNotIncreasing {
        /// `from_version`.
        from: u64,
        /// `version`.
        to: u64,
    },
    /// A delta between two pages of a snapshot.
    #[error("delta inside a paged snapshot")]
    DeltaInsideSnapshot,
    /// A page of another version or feed than the pages before it.
    #[error(
        "snapshot page of version {got} (feed {got_feed:?}) inside snapshot {expected} (feed {expected_feed:?})"
    )]
    SnapshotPageMismatch {
        /// The version of the pages so far.
        expected: u64,
        /// Their feed id.
        expected_feed: String,
        /// The page's version.
        got: u64,
        /// The page's feed id.
        got_feed: String,
    },
    /// A snapshot of more than [`MAX_SNAPSHOT_ENTRIES`] entries.
    #[error("snapshot holds more than {max} entries")]
    SnapshotTooLarge {
        /// The bound.
        max: usize,
    },
}

/// A snapshot whose pages are arriving.
#[derive(Debug)]
pub(super) struct PendingSnapshot {
    feed_id: String,
    version: u64,
    set: RevokedSet,
    entries: usize,
}

/// A whole snapshot, ready to replace the held set.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub version: u64,
    pub set: RevokedSet,
}

/// Adds one snapshot page to `pending`; the whole snapshot once `page` is the last.
pub(super) fn gather(
    pending: &mut Option<PendingSnapshot>,
    feed_id: &str,
    page: &RevocationSnapshot,
) -> Result<Option<Snapshot>, FeedError> {
    let mut gathering = match pending.take() {
        Some(p) if p.feed_id == feed_id && p.version == page.version => p,
        Some(p) => {
            return Err(FeedError::SnapshotPageMismatch {
                expected: p.version,
                expected_feed: p.feed_id,
                got: page.version,
                got_feed: feed_id.to_owned(),
            });
        }
        None => PendingSnapshot {
            feed_id: feed_id.to_owned(),
            version: page.version,
            set: RevokedSet::default(),
            entries: 0,
        },
    };
    gathering.entries = gathering
        .entries
        .saturating_add(page.revoked.len())
        .saturating_add(page.revoked_node_cas.len());
    if gathering.entries > MAX_SNAPSHOT_ENTRIES {
        return Err(FeedError::SnapshotTooLarge {
            max: MAX_SNAPSHOT_ENTRIES,
        });
    }
    // What is new matters only against the held set, when the snapshot replaces it.
    let mut ignored = Added::default();
    for t in &page.revoked {
        gathering.set.add_task(t, &mut ignored);
    }
    for ca in &page.revoked_node_cas {
        gathering.set.add_node_ca(ca, &mut ignored);
    }
    if page.more {
        *pending = Some(gathering);
        return Ok(None);
    }
    Ok(Some(Snapshot {
        version: gathering.version,
        set: gathering.set,
    }))
}

/// Whether a delta (from `sender`) or heartbeat (at `sender`) of feed `got` follows
/// from the held set of feed `held_feed` at `held`.
pub(super) fn check_in_step(
    held_feed: &str,
    held: u64,
    complete: bool,
    got: &str,
    sender: u64,
) -> Result<(), FeedError> {
    if !complete || held_feed.is_empty() || held_feed != got {
        return Err(FeedError::OtherFeed {
            held: held_feed.to_owned(),
            got: got.to_owned(),
        });
    }
    if sender != held {
        return Err(FeedError::OutOfStep { held, sender });
    }
    Ok(())
}

/// Why one stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Feed(#[from] FeedError),
    #[error("the agent ended the stream")]
    Ended,
}

/// Follows the feed for ever: one stream at a time, reconnecting with backoff.
pub(super) async fn run(w: RevocationWatcher, config: WatcherConfig) {
    let mut attempt: u32 = 0;
    loop {
        let end = stream_once(&w, &config).await;
        match &end {
            StreamEnd::Feed(e) => {
                tracing::info!(error = %e, "revocation feed out of step; following again from the held version")
            }
            StreamEnd::Status(s) if s.code() == Code::FailedPrecondition => {}
            e => tracing::warn!(error = %e, "revocation feed failed; reconnecting"),
        }
        if w.set_disconnected() {
            attempt = 0;
        }
        let delay = backoff(attempt, config.min_backoff, config.max_backoff);
        attempt = attempt.saturating_add(1);
        if !w.is_fresh() {
            tracing::error!(
                staleness_secs = config.staleness.as_secs_f64(),
                "revocation feed is stale; task credentials are refused until it is back"
            );
        }
        tokio::time::sleep(delay).await;
        w.inner.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

fn with_workload_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

async fn stream_once(w: &RevocationWatcher, config: &WatcherConfig) -> StreamEnd {
    let channel = match connect(&config.socket).await {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    let mut client =
        RevocationsClient::new(channel.clone()).max_decoding_message_size(config.max_message_bytes);
    let (feed_id, since_version) = {
        let held = w.held();
        if w.inner.complete.load(Ordering::Acquire) && !held.feed_id.is_empty() {
            (held.feed_id.clone(), held.version)
        } else {
            (String::new(), 0)
        }
    };
    let resumed = !feed_id.is_empty();
    let req = with_workload_header(FollowRevocationsRequest {
        feed_id,
        since_version,
    });
    let mut stream = match client.follow(req).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == Code::Unimplemented => {
            return watch_legacy(w, channel, config).await;
        }
        Err(s) => return s.into(),
    };
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return StreamEnd::Ended,
            Err(s) => return s.into(),
        };
        if let Err(e) = w.apply_update(&msg) {
            return e.into();
        }
        if !w.is_connected() {
            w.set_connected(false);
            tracing::info!(
                feed_id = %msg.feed_id,
                version = w.version(),
                resumed,
                "revocation feed live"
            );
        }
        w.maybe_prune();
    }
}

/// The legacy full-set `Watch`, on an agent that does not serve `Follow`.
async fn watch_legacy(
    w: &RevocationWatcher,
    channel: Channel,
    config: &WatcherConfig,
) -> StreamEnd {
    let mut client =
        RevocationsClient::new(channel).max_decoding_message_size(config.legacy_max_message_bytes);
    let mut stream = match client
        .watch(with_workload_header(WatchRevocationsRequest {}))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => {
            if s.code() == Code::FailedPrecondition {
                refused_legacy(w, &s);
            }
            return s.into();
        }
    };
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return StreamEnd::Ended,
            Err(s) => {
                if s.code() == Code::FailedPrecondition {
                    refused_legacy(w, &s);
                }
                return s.into();
            }
        };
        w.apply(&msg);
        if !w.is_connected() {
            w.set_connected(true);
            tracing::info!(
                version = msg.version,
                revoked = msg.revoked.len(),
                "revocation feed live (legacy Watch: the agent does not serve Follow)"
            );
        }
        w.maybe_prune();
    }
}

/// Logs, once per watcher, that the agent refuses the legacy feed; the set stays stale.
fn refused_legacy(w: &RevocationWatcher, status: &tonic::Status) {
    if !w.inner.legacy_refusal_logged.swap(true, Ordering::AcqRel) {
        tracing::error!(
            message = status.message(),
            "the agent refuses the legacy revocation feed (Revocations.Watch) and does not \
             serve Revocations.Follow: task credentials are refused (fail closed) until it \
             serves one this verifier can follow"
        );
    } else {
        tracing::debug!(
            message = status.message(),
            "legacy revocation feed refused again"
        );
    }
}

/// Exponential backoff with full jitter: a uniform delay in `[min, min * 2^attempt]`,
/// capped at `max`.
pub(super) fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let ceiling = min
        .saturating_mul(1u32 << attempt.min(16))
        .min(max)
        .max(min);
    let span = ceiling.saturating_sub(min).as_millis() as u64;
    let jitter = if span == 0 {
        0
    } else {
        rand::random_range(0..=span)
    };
    min + Duration::from_millis(jitter)
}

async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    tessera_proto::connect_unix(
        tessera_proto::unix_endpoint()
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_timeout(Duration::from_secs(5)),
        socket,
    )
    .await
}

#[cfg(test)]
mod tests;
