//! The cluster root as this replica uses it: the [`Authority`] opened from the files every
//! replica mounts (`ca.cert_file`, `ca.key_file`), and the server's own SVID
//! `spiffe://<td>/tessera/server`, which it presents on the Node API's TLS listener and
//! renews at half life.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tessera_authority::{Authority, ClusterPolicy, SvidSpec};
use tessera_identity::TrustDomain;
use tokio::sync::watch;

use crate::config::CaConfig;

/// The path of the server's own SPIFFE ID: `spiffe://<td>/tessera/server`. Agents pin it.
pub const SERVER_ID_PATH: &str = "/tessera/server";

/// Shortest wait between two attempts to renew the server's SVID after a failure.
const RENEW_RETRY: Duration = Duration::from_secs(5);

/// The cluster root and the server's own SVID.
pub(crate) struct ServerCa {
    authority: Arc<Authority>,
    own: Arc<OwnSvid>,
    svid_ttl: Duration,
}

impl std::fmt::Debug for ServerCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCa")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

/// The certificate rustls presents: swapped in place on renewal, so open listeners pick
/// the new one up at their next handshake.
#[derive(Debug)]
struct OwnSvid {
    current: RwLock<(Arc<CertifiedKey>, i64)>,
}

impl ResolvesServerCert for OwnSvid {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0,
        ))
    }
}

// === impl ServerCa ===

impl ServerCa {
    /// Opens the root from `config`'s files and issues the server's first SVID.
    pub(crate) fn open(
        trust_domain: &TrustDomain,
        cert: &Path,
        key: &Path,
        config: &CaConfig,
    ) -> anyhow::Result<ServerCa> {
        let authority = Authority::open_cluster_root(
            trust_domain.clone(),
            cert,
            key,
            ClusterPolicy {
                node_ca_ttl: config.node_ca_ttl,
            },
        )
        .with_context(|| format!("opening the cluster root {}", cert.display()))?;
        let authority = Arc::new(authority);
        let first = issue_own(&authority, config.server_svid_ttl)?;
        Ok(ServerCa {
            authority,
            own: Arc::new(OwnSvid {
                current: RwLock::new(first),
            }),
            svid_ttl: config.server_svid_ttl,
        })
    }

    /// The cluster's root authority.
    pub(crate) fn authority(&self) -> &Arc<Authority> {
        &self.authority
    }

    /// The trust bundle's certificates (DER), as agents receive them.
    pub(crate) fn bundle(&self) -> Vec<Vec<u8>> {
        self.authority.bundle().certs.clone()
    }

    /// TLS for the Node API: the server's SVID, TLS 1.2+ on ring, h2, and a client
    /// certificate verified against the bundle when one is sent. Whether a call needs one
    /// (all but `Attest`) and whose it must be is the Node service's check.
    pub(crate) fn tls_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for der in self.bundle() {
            roots
                .add(CertificateDer::from(der))
                .context("adding a bundle root")?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .context("building the client certificate verifier")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::clone(&self.own) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// Renews the server's SVID at half life until `stop`.
    pub(crate) async fn renew(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let half_life = self
                .own
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .1;
            let wait = u64::try_from(half_life - crate::clock::unix_secs()).unwrap_or(0);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(Duration::from_secs(wait)) => {}
            }
            match issue_own(&self.authority, self.svid_ttl) {
                Ok(next) => {
                    tracing::info!(renew_at = next.1, "renewed the server's SVID");
                    *self
                        .own
                        .current
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
                }
                Err(error) => {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "renewing the server's SVID failed"
                    );
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        () = tokio::time::sleep(RENEW_RETRY) => {}
                    }
                }
            }
        }
    }
}

/// Issues the server's SVID (a key made here, in memory only) and returns it for rustls
/// with its half life, unix seconds.
fn issue_own(authority: &Authority, ttl: Duration) -> anyhow::Result<(Arc<CertifiedKey>, i64)> {
    let id = format!("{}{SERVER_ID_PATH}", authority.trust_domain().id_string());
    let svid = authority
        .issue(&SvidSpec {
            spiffe_id: &id,
            ttl,
            not_after_cap: None,
            claims: None,
        })
        .context("issuing the server's SVID")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key_pkcs8_der.to_vec()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .context("loading the server's SVID key")?;
    let chain = svid
        .chain_der
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    Ok((
        Arc::new(CertifiedKey::new(chain, signing)),
        svid.half_life_unix(),
    ))
}
