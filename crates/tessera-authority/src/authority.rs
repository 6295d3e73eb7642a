//! The authority: its configuration, issuance through the active CA, rotation and the
//! bundle it publishes. The CA set and its record on disk are in `state`; loading an
//! upstream intermediate in `upstream`.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tessera_identity::TrustDomain;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::ca::SigningCa;
use crate::issue::{IssuedSvid, SvidSpec, issue};
use crate::{AuthorityError, TrustBundle, pem};

mod state;
mod upstream;

pub(crate) use state::ensure_private_dir;
use state::{CaSet, Retiring};
use upstream::load_upstream;

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
            CaMode::SelfSigned => CaSet::load_or_create_root(
                &config.dir,
                &config.trust_domain,
                config.rotation.ca_ttl,
                now,
            )?,
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
        s.save(&self.config.dir)?;
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
        s.save(&self.config.dir)?;
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
        s.save(&self.config.dir)?;
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
