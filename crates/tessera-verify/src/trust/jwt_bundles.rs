//! JWT bundles (JWKS per trust domain) from the Workload API's `FetchJWTBundles` stream.
//!
//! The stream carries the full set in every message; a message is parsed whole
//! ([`JwtBundle::from_jwks`] for each trust domain) before anything of it is used, and a
//! message that fails is dropped with the last good set kept, as for X.509 material. The
//! follower reconnects with backoff while the agent is away; an agent that does not
//! serve JWT bundles (`Unimplemented`) is not asked again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tessera_identity::{JwtBundle, MAX_JWKS_LEN, TrustDomain};
use tessera_proto::workload::JwtBundlesRequest;
use tessera_proto::workload::JwtBundlesResponse;
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tokio::sync::watch;

use super::TrustError;

/// JWT bundles by trust domain, as one message of the stream gave them.
pub(crate) type JwtBundles = BTreeMap<TrustDomain, Arc<JwtBundle>>;

/// Largest `FetchJWTBundles` message accepted: a few trust domains of the largest JWKS.
const MAX_MESSAGE_BYTES: usize = 16 * MAX_JWKS_LEN;

/// The unix socket path of a Workload API endpoint (`unix:///path` or `unix:/path`, as
/// `SPIFFE_ENDPOINT_SOCKET` spells it); `None` for anything else (TCP endpoints).
pub(crate) fn socket_path(endpoint: &str) -> Option<PathBuf> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))?;
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// Parses one stream message into bundles; every trust domain must parse.
///
/// # Errors
/// [`TrustError::JwtBundle`] naming the first key or document refused.
pub(crate) fn parse_message(msg: &JwtBundlesResponse) -> Result<JwtBundles, TrustError> {
    let mut out = BTreeMap::new();
    for (key, jwks) in &msg.bundles {
        let err = |reason: String| TrustError::JwtBundle {
            trust_domain: key.chars().take(64).collect(),
            reason,
        };
        // SPIRE keys the map `spiffe://td`; older servers send the bare name.
        let td: TrustDomain = key
            .strip_prefix("spiffe://")
            .unwrap_or(key)
            .parse()
            .map_err(|e| err(format!("not a trust domain: {e}")))?;
        let bundle = JwtBundle::from_jwks(td.clone(), jwks).map_err(|e| err(e.to_string()))?;
        out.insert(td, Arc::new(bundle));
    }
    Ok(out)
}

/// Follows the stream on `socket`, sending each good set on `tx`, until `tx` has no
/// receiver left or the agent says it does not serve JWT bundles. Never returns early
/// otherwise: run it under a stop signal.
pub(crate) async fn follow(socket: PathBuf, tx: watch::Sender<Option<JwtBundles>>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match stream_once(&socket, &tx).await {
            Ended::Unimplemented => {
                tracing::warn!(
                    socket = %socket.display(),
                    "the agent serves no JWT bundles; JWT-SVID assertions will be refused"
                );
                return;
            }
            Ended::Closed => return,
            Ended::Delivered => backoff = MIN_BACKOFF,
            Ended::Failed => {}
        }
        let jitter = rand::random_range(0..=backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

enum Ended {
    /// The agent answered `Unimplemented`.
    Unimplemented,
    /// No one listens any more.
    Closed,
    /// The stream delivered at least one message, then broke.
    Delivered,
    /// Connecting or the first message failed.
    Failed,
}

async fn stream_once(socket: &Path, tx: &watch::Sender<Option<JwtBundles>>) -> Ended {
    let channel = match tessera_proto::connect_unix(
        tessera_proto::unix_endpoint()
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_timeout(Duration::from_secs(5)),
        socket,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "JWT bundle stream: connect failed");
            return Ended::Failed;
        }
    };
    let mut client =
        SpiffeWorkloadApiClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut req = tonic::Request::new(JwtBundlesRequest {});
    req.metadata_mut().insert(
        tessera_proto::WORKLOAD_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    let mut stream = match client.fetch_jwt_bundles(req).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::Unimplemented => return Ended::Unimplemented,
        Err(s) => {
            tracing::debug!(code = ?s.code(), "JWT bundle stream refused");
            return Ended::Failed;
        }
    };
    let mut delivered = false;
    loop {
        let msg = tokio::select! {
            _ = tx.closed() => return Ended::Closed,
            msg = stream.message() => msg,
        };
        match msg {
            Ok(Some(msg)) => match parse_message(&msg) {
                Ok(bundles) => {
                    delivered = true;
                    if tx.send(Some(bundles)).is_err() {
                        return Ended::Closed;
                    }
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "JWT bundle update refused; keeping the last good bundles"
                ),
            },
            Ok(None) | Err(_) => {
                tracing::debug!("JWT bundle stream ended; reconnecting");
                return if delivered {
                    Ended::Delivered
                } else {
                    Ended::Failed
                };
            }
        }
    }
}

#[cfg(test)]
mod tests;
