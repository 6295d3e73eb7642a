//! Trust material from PEM files, for servers that run without an agent, and an
//! optional JWKS file of the own trust domain's JWT-SVID keys (for the token endpoint).
//!
//! The files are polled (size + mtime) every [`FileTrustConfig::poll_interval`]; a change
//! triggers a reload, and a reload that fails validation keeps the last good material and
//! logs why. A half-written pair (new chain, old key) fails as a key mismatch and is
//! retried on the next change, so writing the chain and then the key converges.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use tessera_identity::{JwtBundle, MAX_JWKS_LEN, ServerId, TrustDomain};

use super::material::unix_now;
use super::{TrustError, TrustMaterial, TrustPublisher, TrustSource};
use crate::background::Background;

/// Where the PEM files are and how often to look at them.
#[derive(Clone, Debug)]
pub struct FileTrustConfig {
    /// The server's own identity; the leaf in `cert_chain` must be exactly this.
    pub own_id: ServerId,
    /// CA certificates (PEM) of the own trust domain.
    pub bundle: PathBuf,
    /// The own certificate chain (PEM), leaf first.
    pub cert_chain: PathBuf,
    /// The own private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// Bundles (PEM) of other trust domains. They are only *accepted* by the TLS verifier
    /// when that trust domain is on its explicit allow-list.
    pub extra_bundles: Vec<(TrustDomain, PathBuf)>,
    /// The own trust domain's JWT bundle: a JWKS (as `FetchJWTBundles` or a SPIFFE
    /// bundle endpoint serves it, at most [`MAX_JWKS_LEN`] bytes). Without it, JWT-SVID
    /// assertions are refused.
    pub jwt_bundle: Option<PathBuf>,
    /// How often to check the files for changes.
    pub poll_interval: Duration,
}

impl FileTrustConfig {
    /// A config for the own bundle, chain and key, polled every 5 seconds.
    pub fn new(own_id: ServerId, bundle: PathBuf, cert_chain: PathBuf, key: PathBuf) -> Self {
        Self {
            own_id,
            bundle,
            cert_chain,
            key,
            extra_bundles: Vec::new(),
            jwt_bundle: None,
            poll_interval: Duration::from_secs(5),
        }
    }

    /// The same config with the own trust domain's JWKS file.
    pub fn with_jwt_bundle(mut self, jwks: PathBuf) -> Self {
        self.jwt_bundle = Some(jwks);
        self
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [
            self.bundle.as_path(),
            self.cert_chain.as_path(),
            self.key.as_path(),
        ]
        .into_iter()
        .chain(self.extra_bundles.iter().map(|(_, p)| p.as_path()))
        .chain(self.jwt_bundle.as_deref())
    }
}

/// Loads and validates the files once.
///
/// # Errors
/// A [`TrustError`] for an unreadable file, bad PEM, or material that fails validation.
pub fn load(config: &FileTrustConfig) -> Result<TrustMaterial, TrustError> {
    let chain = read_certs(&config.cert_chain)?;
    let key = read_key(&config.key)?;
    let mut bundles = BTreeMap::new();
    bundles.insert(
        config.own_id.trust_domain().clone(),
        read_certs(&config.bundle)?,
    );
    for (td, path) in &config.extra_bundles {
        bundles.insert(td.clone(), read_certs(path)?);
    }
    let material = TrustMaterial::new(config.own_id.clone(), chain, key, bundles, unix_now())?;
    let Some(path) = &config.jwt_bundle else {
        return Ok(material);
    };
    let td = config.own_id.trust_domain().clone();
    let jwks = read_bounded(path, MAX_JWKS_LEN)?;
    let bundle = JwtBundle::from_jwks(td.clone(), &jwks).map_err(|e| file_err(path, e))?;
    material.with_jwt_bundles(BTreeMap::from([(td, Arc::new(bundle))]))
}

/// Reads a file of at most `max` bytes; a larger one is refused without reading it all.
fn read_bounded(path: &Path, max: usize) -> Result<Vec<u8>, TrustError> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| file_err(path, e))?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_err(path, e))?;
    if bytes.len() > max {
        return Err(file_err(path, format!("larger than {max} bytes")));
    }
    Ok(bytes)
}

/// Loads the files, publishes them, and spawns a task that reloads them on change.
///
/// The first load must succeed. The files are polled for as long as the returned guard
/// lives (see [`crate::background`]), or until every [`TrustSource`] is dropped.
///
/// # Errors
/// As [`load`], for the first load.
pub fn spawn(config: FileTrustConfig) -> Result<(TrustSource, Background), TrustError> {
    let first = load(&config)?;
    let (publisher, source) = TrustSource::channel();
    let mut good = fingerprint(&config);
    publisher.publish(first);
    let task = Background::spawn("trust-files", move |stop| async move {
        let mut failed: Option<Vec<Stamp>> = None;
        let mut tick = tokio::time::interval(config.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while stop.run_until_cancelled(tick.tick()).await.is_some() {
            if publisher.is_closed() {
                return;
            }
            let now = fingerprint(&config);
            if now == good || Some(&now) == failed.as_ref() {
                continue;
            }
            reload(&config, &publisher, &now, &mut good, &mut failed);
        }
    });
    Ok((source, task))
}

fn reload(
    config: &FileTrustConfig,
    publisher: &TrustPublisher,
    now: &[Stamp],
    good: &mut Vec<Stamp>,
    failed: &mut Option<Vec<Stamp>>,
) {
    match load(config) {
        Ok(material) => {
            publisher.publish(material);
            *good = now.to_vec();
            *failed = None;
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                cert_chain = %config.cert_chain.display(),
                "reloading trust files failed; keeping the last good material"
            );
            *failed = Some(now.to_vec());
        }
    }
}

type Stamp = Option<(u64, SystemTime)>;

fn fingerprint(config: &FileTrustConfig) -> Vec<Stamp> {
    config
        .paths()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)))
        })
        .collect()
}

fn file_err(path: &Path, reason: impl ToString) -> TrustError {
    TrustError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn read_pems(path: &Path) -> Result<Vec<pem::Pem>, TrustError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    pem::parse_many(bytes).map_err(|e| file_err(path, e))
}

/// Reads every `CERTIFICATE` block of a PEM file, in order.
///
/// # Errors
/// [`TrustError::File`] if the file cannot be read, is not PEM, or has no certificate.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let certs: Vec<_> = read_pems(path)?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(file_err(path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// Reads the first private key block (PKCS#8, SEC1 or PKCS#1) of a PEM file.
///
/// # Errors
/// [`TrustError::File`] if the file cannot be read, is not PEM, or has no key.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TrustError> {
    for p in read_pems(path)? {
        let key = match p.tag() {
            "PRIVATE KEY" => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(p.into_contents())),
            "EC PRIVATE KEY" => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(p.into_contents())),
            "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(p.into_contents())),
            _ => continue,
        };
        return Ok(key);
    }
    Err(file_err(path, "no private key block"))
}
