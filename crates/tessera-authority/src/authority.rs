//! The authority: the set of CAs (active, prepared, retiring), persistence and rotation.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rcgen::KeyPair;
use serde::{Deserialize, Serialize};
use tessera_identity::TrustDomain;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::ca::{SigningCa, validity};
use crate::issue::{IssuedSvid, SvidSpec, issue};
use crate::{AuthorityError, TrustBundle, pem};

/// Where the signing CA comes from.
#[derive(Clone, Debug)]
pub enum CaMode {
    /// A self-signed root created in the data directory on first start.
    SelfSigned,
    /// An intermediate CA issued by an upstream PKI, loaded from PEM files.
    Upstream {
        /// The intermediate certificate, optionally followed by further intermediates.
        cert_chain: PathBuf,
        /// The intermediate's private key (PKCS#8 or SEC1 PEM; mode 0600 or stricter).
        key: PathBuf,
        /// The upstream root certificate(s): the trust bundle verifiers get.
        bundle: PathBuf,
    },
}

/// When a self-signed CA is replaced.
#[derive(Clone, Copy, Debug)]
pub struct RotationPolicy {
    /// Lifetime of each new self-signed CA.
    pub ca_ttl: Duration,
    /// The longest SVID lifetime the agent hands out; a retired CA stays in the
    /// bundle this long after it stops signing, so every SVID it signed still verifies.
    pub max_svid_ttl: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            ca_ttl: Duration::from_secs(365 * 24 * 3600),
            max_svid_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// How to build an [`Authority`].
#[derive(Clone, Debug)]
pub struct AuthorityConfig {
    /// The trust domain every SVID belongs to.
    pub trust_domain: TrustDomain,
    /// Directory holding the CA files (created with mode 0700).
    pub dir: PathBuf,
    /// Self-signed or upstream.
    pub mode: CaMode,
    /// Rotation schedule (self-signed mode).
    pub rotation: RotationPolicy,
}

/// On-disk record of which CA files play which role.
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    active: String,
    prepared: Option<String>,
    retiring: Vec<Retiring>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct Retiring {
    name: String,
    cert_pem: String,
    until_unix: i64,
}

struct CaSet {
    active: Arc<SigningCa>,
    prepared: Option<(Arc<SigningCa>, String)>,
    retiring: Vec<Retiring>,
    /// Upstream roots (upstream mode) — the bundle then is exactly these.
    upstream_roots: Vec<Vec<u8>>,
}

/// The signing authority of one trust domain. Cheap to share behind an `Arc`.
pub struct Authority {
    config: AuthorityConfig,
    set: RwLock<CaSet>,
    bundle_tx: watch::Sender<Arc<TrustBundle>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.config.trust_domain)
            .field("dir", &self.config.dir)
            .finish_non_exhaustive()
    }
}

const STATE_FILE: &str = "state.json";

impl Authority {
    /// Opens the authority: loads the CA from `config.dir`, or creates one on first start.
    pub fn open(config: AuthorityConfig) -> Result<Authority, AuthorityError> {
        Self::open_at(config, OffsetDateTime::now_utc())
    }

    /// [`Authority::open`] at a given time (tests).
    pub fn open_at(
        config: AuthorityConfig,
        now: OffsetDateTime,
    ) -> Result<Authority, AuthorityError> {
        ensure_private_dir(&config.dir)?;
        let set = match &config.mode {
            CaMode::SelfSigned => load_or_create_root(&config, now)?,
            CaMode::Upstream {
                cert_chain,
                key,
                bundle,
            } => load_upstream(&config.trust_domain, cert_chain, key, bundle)?,
        };
        let bundle = Arc::new(make_bundle(&config.trust_domain, &set, now));
        let (bundle_tx, _) = watch::channel(bundle);
        Ok(Authority {
            config,
            set: RwLock::new(set),
            bundle_tx,
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }

    /// Issues an SVID now.
    pub fn issue(&self, spec: &SvidSpec<'_>) -> Result<IssuedSvid, AuthorityError> {
        self.issue_at(spec, OffsetDateTime::now_utc())
    }

    /// Issues an SVID as of `now`.
    pub fn issue_at(
        &self,
        spec: &SvidSpec<'_>,
        now: OffsetDateTime,
    ) -> Result<IssuedSvid, AuthorityError> {
        let active = Arc::clone(&self.read().active);
        issue(&active, &self.config.trust_domain, spec, now)
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle_tx.borrow().clone()
    }

    /// A receiver that sees every bundle change (current value first).
    pub fn subscribe_bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.bundle_tx.subscribe()
    }

    /// notAfter of the active CA, unix seconds.
    pub fn active_ca_not_after(&self) -> i64 {
        self.read().active.not_after
    }

    /// Applies the rotation schedule as of `now` (self-signed mode; no-op upstream):
    /// prepare the next CA at half of the active one's life, activate it at two
    /// thirds, and drop retired CAs from the bundle once their last SVID has expired.
    /// Returns whether the bundle or the active CA changed.
    pub fn tick(&self, now: OffsetDateTime) -> Result<bool, AuthorityError> {
        if !matches!(self.config.mode, CaMode::SelfSigned) {
            return Ok(false);
        }
        let (nb, na, prepared) = {
            let s = self.read();
            (
                s.active.not_before,
                s.active.not_after,
                s.prepared.is_some(),
            )
        };
        let life = na - nb;
        let t = now.unix_timestamp();
        let mut changed = false;
        if !prepared && t >= nb + life / 2 {
            self.prepare_next(now)?;
            changed = true;
        }
        if t >= nb + life * 2 / 3 && self.read().prepared.is_some() {
            self.activate_prepared(now)?;
            changed = true;
        }
        changed |= self.prune(now)?;
        Ok(changed)
    }

    /// Creates the next CA and publishes it in the bundle without signing with it yet,
    /// so verifiers learn it before they meet SVIDs it signed.
    pub fn prepare_next(&self, now: OffsetDateTime) -> Result<(), AuthorityError> {
        self.require_self_signed()?;
        let ttl = time::Duration::try_from(self.config.rotation.ca_ttl)
            .map_err(|e| AuthorityError::InvalidRequest(e.to_string()))?;
        let (ca, key_pem) = SigningCa::generate_root(&self.config.trust_domain, now, ttl)?;
        ca.save(&self.config.dir, &key_pem)?;
        let mut s = self.write();
        s.prepared = Some((Arc::new(ca), key_pem));
        self.persist(&s)?;
        self.publish(&s, now);
        tracing::info!(ca = %s.prepared.as_ref().map(|p| p.0.name.as_str()).unwrap_or(""), "prepared next CA");
        Ok(())
    }

    /// Makes the prepared CA the signing CA; the old one is kept in the bundle
    /// until every SVID it could have signed has expired.
    pub fn activate_prepared(&self, now: OffsetDateTime) -> Result<(), AuthorityError> {
        self.require_self_signed()?;
        let mut s = self.write();
        let Some((next, _)) = s.prepared.take() else {
            return Err(AuthorityError::InvalidRequest(
                "no prepared CA to activate".into(),
            ));
        };
        let max_ttl =
            i64::try_from(self.config.rotation.max_svid_ttl.as_secs()).unwrap_or(i64::MAX);
        let old = std::mem::replace(&mut s.active, next);
        s.retiring.push(Retiring {
            name: old.name.clone(),
            cert_pem: pem::certs_to_pem(std::slice::from_ref(&old.cert_der)),
            until_unix: old
                .not_after
                .min(now.unix_timestamp().saturating_add(max_ttl)),
        });
        self.persist(&s)?;
        self.publish(&s, now);
        tracing::info!(active = %s.active.name, retired = %old.name, "activated new CA");
        Ok(())
    }

    /// Removes retired CAs whose SVIDs have all expired. Returns whether any went.
    pub fn prune(&self, now: OffsetDateTime) -> Result<bool, AuthorityError> {
        let t = now.unix_timestamp();
        let mut s = self.write();
        let before = s.retiring.len();
        let gone: Vec<Retiring> = s
            .retiring
            .iter()
            .filter(|r| r.until_unix <= t)
            .cloned()
            .collect();
        s.retiring.retain(|r| r.until_unix > t);
        if s.retiring.len() == before {
            return Ok(false);
        }
        self.persist(&s)?;
        self.publish(&s, now);
        drop(s);
        for r in gone {
            // The key of a retired CA is no longer needed; destroy it.
            let _ = std::fs::remove_file(self.config.dir.join(format!("{}.key.pem", r.name)));
            let _ = std::fs::remove_file(self.config.dir.join(format!("{}.crt.pem", r.name)));
        }
        Ok(true)
    }

    fn require_self_signed(&self) -> Result<(), AuthorityError> {
        match self.config.mode {
            CaMode::SelfSigned => Ok(()),
            CaMode::Upstream { .. } => Err(AuthorityError::InvalidRequest(
                "CA rotation is the upstream PKI's job in upstream mode: replace the files and restart"
                    .into(),
            )),
        }
    }

    fn persist(&self, s: &CaSet) -> Result<(), AuthorityError> {
        let state = StateFile {
            version: 1,
            active: s.active.name.clone(),
            prepared: s.prepared.as_ref().map(|p| p.0.name.clone()),
            retiring: s.retiring.clone(),
        };
        let json = serde_json::to_vec_pretty(&state).expect("state serializes");
        pem::write_atomic(&self.config.dir.join(STATE_FILE), &json, 0o600)
    }

    fn publish(&self, s: &CaSet, now: OffsetDateTime) {
        let bundle = make_bundle(&self.config.trust_domain, s, now);
        self.bundle_tx.send_if_modified(|cur| {
            if **cur == bundle {
                false
            } else {
                *cur = Arc::new(bundle);
                true
            }
        });
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CaSet> {
        self.set.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CaSet> {
        self.set.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn make_bundle(td: &TrustDomain, s: &CaSet, now: OffsetDateTime) -> TrustBundle {
    if !s.upstream_roots.is_empty() {
        return TrustBundle {
            trust_domain: td.clone(),
            certs: s.upstream_roots.clone(),
        };
    }
    let t = now.unix_timestamp();
    let mut certs = vec![s.active.cert_der.clone()];
    if let Some((p, _)) = &s.prepared {
        certs.push(p.cert_der.clone());
    }
    for r in s.retiring.iter().filter(|r| r.until_unix > t) {
        if let Ok(mut ders) = ::pem::parse_many(&r.cert_pem)
            .map(|v| v.into_iter().map(|p| p.into_contents()).collect::<Vec<_>>())
        {
            certs.append(&mut ders);
        }
    }
    TrustBundle {
        trust_domain: td.clone(),
        certs,
    }
}

pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), AuthorityError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| AuthorityError::io("creating", dir, e))?;
    }
    let mode = std::fs::metadata(dir)
        .map_err(|e| AuthorityError::io("reading", dir, e))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(AuthorityError::InsecureKeyFile {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

fn load_or_create_root(
    config: &AuthorityConfig,
    now: OffsetDateTime,
) -> Result<CaSet, AuthorityError> {
    let state_path = config.dir.join(STATE_FILE);
    if !state_path.exists() {
        let ttl = time::Duration::try_from(config.rotation.ca_ttl)
            .map_err(|e| AuthorityError::InvalidRequest(e.to_string()))?;
        let (ca, key_pem) = SigningCa::generate_root(&config.trust_domain, now, ttl)?;
        ca.save(&config.dir, &key_pem)?;
        let state = StateFile {
            version: 1,
            active: ca.name.clone(),
            prepared: None,
            retiring: Vec::new(),
        };
        pem::write_atomic(
            &state_path,
            &serde_json::to_vec_pretty(&state).expect("state serializes"),
            0o600,
        )?;
        tracing::info!(ca = %ca.name, dir = %config.dir.display(), "created self-signed root CA");
        return Ok(CaSet {
            active: Arc::new(ca),
            prepared: None,
            retiring: Vec::new(),
            upstream_roots: Vec::new(),
        });
    }
    let corrupt = |reason: String| AuthorityError::CorruptState {
        path: state_path.clone(),
        reason,
    };
    let text =
        std::fs::read(&state_path).map_err(|e| AuthorityError::io("reading", &state_path, e))?;
    let state: StateFile = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
    if state.version != 1 {
        return Err(corrupt(format!("unknown version {}", state.version)));
    }
    let active = SigningCa::load(&config.dir, &state.active)?;
    if active.cert_der.is_empty() || !trust_domain_matches(&active.cert_der, &config.trust_domain) {
        return Err(corrupt(format!(
            "CA {} is not for trust domain {}",
            state.active,
            config.trust_domain.as_str()
        )));
    }
    let prepared = match &state.prepared {
        Some(name) => {
            let ca = SigningCa::load(&config.dir, name)?;
            let key_pem = pem::read_key(&config.dir.join(format!("{name}.key.pem")))?;
            Some((Arc::new(ca), key_pem))
        }
        None => None,
    };
    tracing::info!(ca = %active.name, "loaded self-signed root CA");
    Ok(CaSet {
        active: Arc::new(active),
        prepared,
        retiring: state.retiring,
        upstream_roots: Vec::new(),
    })
}

fn trust_domain_matches(cert_der: &[u8], td: &TrustDomain) -> bool {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(cert_der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value
        .general_names
        .iter()
        .any(|n| matches!(n, GeneralName::URI(u) if *u == td.id_string()))
}

fn load_upstream(
    td: &TrustDomain,
    cert_chain: &Path,
    key: &Path,
    bundle: &Path,
) -> Result<CaSet, AuthorityError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let mut chain = pem::read_certs(cert_chain)?;
    let roots = pem::read_certs(bundle)?;
    let key_pem = pem::read_key(key)?;
    let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| AuthorityError::BadPem {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let cert_der = chain.remove(0);
    // Every certificate in the chain must verify under the next, the last under a root.
    let mut issuers: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
    let mut subject = cert_der.as_slice();
    loop {
        let (_, child) = X509Certificate::from_der(subject)
            .map_err(|e| AuthorityError::UpstreamCa(e.to_string()))?;
        let candidates: Vec<&[u8]> = if issuers.is_empty() {
            roots.iter().map(Vec::as_slice).collect()
        } else {
            vec![issuers[0]]
        };
        let verified = candidates.iter().any(|issuer_der| {
            X509Certificate::from_der(issuer_der)
                .map(|(_, issuer)| child.verify_signature(Some(issuer.public_key())).is_ok())
                .unwrap_or(false)
        });
        if !verified {
            return Err(AuthorityError::UpstreamCa(format!(
                "certificate '{}' does not verify under {}",
                child.subject(),
                if issuers.is_empty() {
                    "any bundle root"
                } else {
                    "the next chain certificate"
                }
            )));
        }
        if issuers.is_empty() {
            break;
        }
        subject = issuers.remove(0);
    }
    // Verifiers refuse chains whose intermediates name another trust domain (under a
    // shared upstream root, that is how one domain's CA is told from another's), so a
    // mixed-up file is refused here, at start, rather than at every handshake.
    let misfit = |e: tessera_identity::ProfileError| {
        AuthorityError::UpstreamCa(format!("the upstream CA chain does not fit {td}: {e}"))
    };
    let issuing = tessera_identity::check_intermediate(&cert_der, td).map_err(misfit)?;
    for der in &chain {
        tessera_identity::check_intermediate(der, td).map_err(misfit)?;
    }
    if issuing == tessera_identity::CaBinding::Unnamed {
        tracing::warn!(
            trust_domain = %td,
            "the upstream CA certificate carries no SPIFFE ID (URI SAN spiffe://<trust domain>): \
             verifiers cannot tell it from another trust domain's CA under the same root \
             unless that root is in this trust domain's bundle only"
        );
    }
    let (_, na) = validity(&cert_der).map_err(AuthorityError::UpstreamCa)?;
    if na <= OffsetDateTime::now_utc().unix_timestamp() {
        return Err(AuthorityError::CaExpired { ca_not_after: na });
    }
    // SVID chains carry the intermediate itself, then any further intermediates.
    let after_leaf: Vec<Vec<u8>> = std::iter::once(cert_der.clone()).chain(chain).collect();
    let ca = SigningCa::from_parts("upstream".into(), cert_der, after_leaf, key_pair)?;
    Ok(CaSet {
        active: Arc::new(ca),
        prepared: None,
        retiring: Vec::new(),
        upstream_roots: roots,
    })
}
