//! Trust material from the SPIFFE Workload API: the own SVID and X.509 bundles from
//! `spiffe::X509Source`, the JWT bundles from `FetchJWTBundles` ([`super::jwt_bundles`]).
//!
//! The server's own SVID is the one whose SPIFFE ID is exactly its configured
//! `spiffe://<td>/mcp/<server>`: picked by id (both as the source's picker and when
//! reading the context), not the stream's first SVID, so a workload that also holds
//! other identities never serves the wrong one.
//!
//! Either stream's update republishes the material with the other's latest good part,
//! so a JWT key rotation reaches the token endpoint as an SVID rotation reaches TLS.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::x509_source::SvidPicker;
use spiffe::{X509Source, X509Svid};
use tessera_identity::{ServerId, TrustDomain};

use tokio::sync::watch;

use super::jwt_bundles::{self, JwtBundles};
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
/// The JWT bundles follow on the same socket (`FetchJWTBundles`): the call waits up to
/// [`FIRST_JWT_BUNDLES_WAIT`] for them so a token endpoint can serve at once, and
/// returns without them otherwise (they are published when they come; until then
/// JWT-SVID assertions are refused). A TCP endpoint gets no JWT bundles.
///
/// An update that fails validation (no SVID for `own_id`, expired, key mismatch, no own
/// bundle, a JWKS that does not parse) is logged and the last good material kept.
/// Updates are followed for as long as the returned guard lives (see
/// [`crate::background`]); when it goes, the `X509Source` is shut down and both streams
/// to the agent closed.
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
    let socket = match endpoint {
        Some(ep) => jwt_bundles::socket_path(ep),
        None => std::env::var("SPIFFE_ENDPOINT_SOCKET")
            .ok()
            .and_then(|ep| jwt_bundles::socket_path(&ep)),
    };
    if socket.is_none() {
        tracing::warn!("Workload API endpoint is not a unix socket; no JWT bundles");
    }
    let (trust, task, mut jwt_gone) = follow(source, own_id.clone(), socket.clone())?;
    if socket.is_some() {
        let mut rx = trust.subscribe();
        let td = own_id.trust_domain().clone();
        let has_jwt = |m: &Option<Arc<TrustMaterial>>| {
            m.as_ref().is_some_and(|m| m.jwt_bundle(&td).is_some())
        };
        // Until the bundle comes, or the agent says it serves none.
        let first = async {
            tokio::select! {
                _ = rx.wait_for(has_jwt) => true,
                _ = jwt_gone.wait_for(|gone| *gone) => false,
            }
        };
        if !tokio::time::timeout(FIRST_JWT_BUNDLES_WAIT, first)
            .await
            .unwrap_or(false)
        {
            tracing::warn!(
                "no JWT bundle from the agent yet; JWT-SVID assertions are refused until one comes"
            );
        }
    }
    Ok((trust, task))
}

/// How long [`connect`] waits for the first JWT bundles after the X.509 material.
pub const FIRST_JWT_BUNDLES_WAIT: Duration = Duration::from_secs(2);

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
    follow(source, own_id, None).map(|(trust, task, _)| (trust, task))
}

/// Publishes the first material and follows both streams (JWT bundles only with a
/// socket). The receiver turns `true` once the JWT stream is given up for good (no
/// socket, or an agent that serves no JWT bundles).
fn follow(
    source: X509Source,
    own_id: ServerId,
    jwt_socket: Option<PathBuf>,
) -> Result<(TrustSource, Background, watch::Receiver<bool>), TrustError> {
    let mut x509 = material_from(&source, &own_id)?;
    let (publisher, trust) = TrustSource::channel();
    publisher.publish(x509.clone());
    let mut updates = source.updated();
    let (jwt_tx, mut jwt_rx) = watch::channel::<Option<JwtBundles>>(None);
    let (gone_tx, gone_rx) = watch::channel(false);
    let task = Background::spawn("trust-workload", move |stop| async move {
        let jwt_follower = async move {
            match jwt_socket {
                Some(socket) => jwt_bundles::follow(socket, jwt_tx).await,
                None => drop(jwt_tx),
            }
            gone_tx.send_replace(true);
            // Done (no socket, or no JWT service): the other stream goes on.
            std::future::pending::<()>().await
        };
        tokio::pin!(jwt_follower);
        let mut jwt: JwtBundles = BTreeMap::new();
        let mut jwt_open = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = &mut jwt_follower => {}
                changed = jwt_rx.changed(), if jwt_open => {
                    if changed.is_err() {
                        jwt_open = false;
                        continue;
                    }
                    let Some(bundles) = jwt_rx.borrow_and_update().clone() else { continue };
                    jwt = bundles;
                }
                changed = updates.changed() => {
                    if changed.is_err() {
                        tracing::warn!("X509Source closed; keeping the last material");
                        break;
                    }
                    match material_from(&source, &own_id) {
                        Ok(m) => x509 = m,
                        Err(e) => {
                            tracing::warn!(
                                error = %e,
                                "Workload API update refused; keeping the last good material"
                            );
                            continue;
                        }
                    }
                }
            }
            if publisher.is_closed() {
                break;
            }
            match x509.clone().with_jwt_bundles(jwt.clone()) {
                Ok(m) => publisher.publish(m),
                Err(e) => tracing::warn!(error = %e, "JWT bundles refused; keeping the last"),
            }
        }
        if let Err(e) = source.shutdown_with_timeout(SOURCE_SHUTDOWN_GRACE).await {
            tracing::warn!(error = %e, "X509Source did not shut down in time; aborted");
        }
    });
    Ok((trust, task, gone_rx))
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
