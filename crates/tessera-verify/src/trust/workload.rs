//! Trust material from the SPIFFE Workload API (`spiffe::X509Source`).
//!
//! The server's own SVID is the one whose SPIFFE ID is exactly its configured
//! `spiffe://<td>/mcp/<server>`: picked by id (both as the source's picker and when
//! reading the context), not the stream's first SVID, so a workload that also holds
//! other identities never serves the wrong one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::x509_source::SvidPicker;
use spiffe::{X509Source, X509Svid};
use tessera_identity::{ServerId, TrustDomain};

use super::material::unix_now;
use super::{TrustError, TrustMaterial, TrustSource};
use crate::background::Background;

/// Picks the SVID whose SPIFFE ID equals the configured one.
#[derive(Debug)]
struct ById(String);

impl SvidPicker for ById {
    fn pick_svid(&self, svids: &[Arc<X509Svid>]) -> Option<usize> {
        svids
            .iter()
            .position(|s| s.spiffe_id().to_string() == self.0)
    }
}

/// Connects to the Workload API at `endpoint` (`unix:///path`; `None` reads
/// `SPIFFE_ENDPOINT_SOCKET`), waits for the first valid material for `own_id`, publishes
/// it, and spawns a task that republishes on every update.
///
/// An update that fails validation (no SVID for `own_id`, expired, key mismatch, no own
/// bundle) is logged and the last good material kept. Updates are followed for as long
/// as the returned guard lives (see [`crate::background`]); when it goes, the
/// `X509Source` is shut down and its stream to the agent closed.
///
/// # Errors
/// [`TrustError::WorkloadApi`] if the source cannot be built, or the first material is
/// unusable.
pub async fn connect(
    endpoint: Option<&str>,
    own_id: ServerId,
) -> Result<(TrustSource, Background), TrustError> {
    let mut builder = X509Source::builder().picker(ById(own_id.to_string()));
    if let Some(ep) = endpoint {
        builder = builder.endpoint(ep);
    }
    let source = builder
        .build()
        .await
        .map_err(|e| TrustError::WorkloadApi(e.to_string()))?;
    // Unusable first material: close the source's stream before giving up, or its
    // supervisor would keep the agent's socket open with no one to stop it.
    if let Err(e) = material_from(&source, &own_id) {
        let _ = source.shutdown_with_timeout(SOURCE_SHUTDOWN_GRACE).await;
        return Err(e);
    }
    from_x509_source(source, own_id)
}

/// How long a stopping task waits for the `X509Source` to close before it aborts it.
const SOURCE_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Publishes material from an existing `X509Source` and follows its updates; the task
/// owns the source and shuts it down when its guard goes.
///
/// # Errors
/// As [`connect`], for the first material. The source is then dropped without a
/// shutdown (it is consumed): [`connect`] checks the first material itself and shuts
/// its source down on refusal.
pub fn from_x509_source(
    source: X509Source,
    own_id: ServerId,
) -> Result<(TrustSource, Background), TrustError> {
    let first = material_from(&source, &own_id)?;
    let (publisher, trust) = TrustSource::channel();
    publisher.publish(first);
    let mut updates = source.updated();
    let task = Background::spawn("trust-workload", move |stop| async move {
        loop {
            let changed = tokio::select! {
                _ = stop.cancelled() => break,
                changed = updates.changed() => changed,
            };
            if changed.is_err() {
                tracing::warn!("X509Source closed; keeping the last material");
                break;
            }
            if publisher.is_closed() {
                break;
            }
            match material_from(&source, &own_id) {
                Ok(m) => publisher.publish(m),
                Err(e) => tracing::warn!(
                    error = %e,
                    "Workload API update refused; keeping the last good material"
                ),
            }
        }
        if let Err(e) = source.shutdown_with_timeout(SOURCE_SHUTDOWN_GRACE).await {
            tracing::warn!(error = %e, "X509Source did not shut down in time; aborted");
        }
    });
    Ok((trust, task))
}

fn material_from(source: &X509Source, own_id: &ServerId) -> Result<TrustMaterial, TrustError> {
    let ctx = source
        .x509_context()
        .map_err(|e| TrustError::WorkloadApi(e.to_string()))?;
    let want = own_id.to_string();
    let svid = ctx
        .svids()
        .iter()
        .find(|s| s.spiffe_id().to_string() == want)
        .ok_or_else(|| TrustError::WorkloadApi(format!("no SVID for {want} in the stream")))?;
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        svid.private_key().as_bytes().to_vec(),
    ));
    let mut bundles = BTreeMap::new();
    for (td, bundle) in ctx.bundle_set().iter() {
        let Ok(td) = td.as_str().parse::<TrustDomain>() else {
            tracing::warn!(
                trust_domain = td.as_str(),
                "skipping bundle with an invalid trust domain"
            );
            continue;
        };
        let certs = bundle
            .authorities()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        bundles.insert(td, certs);
    }
    TrustMaterial::new(own_id.clone(), chain, key, bundles, unix_now())
}
