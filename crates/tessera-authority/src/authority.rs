//! The authority: its configuration, issuance through the active CA, rotation and the
//! bundle it publishes. The CA set and its record on disk are in `state`; loading an
//! upstream intermediate in `upstream`.
//!
//! Three shapes, one type: a standalone agent's (a self-signed root with pathLen 0, or an
//! upstream intermediate; [`Authority::open`]), a cluster server's (the same from files,
//! the root with pathLen 1, also signing node CAs; [`Authority::open_cluster`]) and a
//! node's (a node CA handed over by the server, in memory; [`Authority::from_node_ca`]),
//! which issues clients and tasks only.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tessera_identity::{AnyId, NodeId, TrustDomain};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::ca::SigningCa;
use crate::issue::{IssuedSvid, SignedSvid, SvidSpec, issue, issue_for_key};
use crate::node_ca::ClusterPolicy;
use crate::{AuthorityError, TrustBundle, pem};

mod cluster;
mod root_files;
mod state;
mod upstream;

pub use root_files::GeneratedRoot;
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
    trust_domain: TrustDomain,
    source: Source,
    set: RwLock<CaSet>,
    bundle_tx: watch::Sender<Arc<TrustBundle>>,
}

/// Where an authority's CAs come from.
enum Source {
    /// Files in a directory: a self-signed root or an upstream intermediate.
    Files {
        config: AuthorityConfig,
        /// `Some` for a cluster's root, which also signs node CAs.
        cluster: Option<ClusterPolicy>,
    },
    /// A node CA the cluster's root signed, held by the node's agent in memory.
    Node { node: NodeId },
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Authority");
        d.field("trust_domain", &self.trust_domain);
        match &self.source {
            Source::Files { config, cluster } => d
                .field("dir", &config.dir)
                .field("cluster", &cluster.is_some()),
            Source::Node { node } => d.field("node", &node.to_string()),
        };
        d.finish_non_exhaustive()
    }
}

impl Authority {
    /// Opens a standalone authority: loads the CA from `config.dir`, or creates one (a
    /// root with pathLen 0: it signs leaves only) on first start.
    pub fn open(config: AuthorityConfig) -> Result<Authority, AuthorityError> {
        Self::open_at(config, OffsetDateTime::now_utc())
    }

    /// [`Authority::open`] at a given time (tests).
    pub fn open_at(
        config: AuthorityConfig,
        now: OffsetDateTime,
    ) -> Result<Authority, AuthorityError> {
        Self::open_files(config, None, now)
    }

    /// Opens a cluster's root authority (the server's): as [`Authority::open`], but a
    /// self-signed root gets pathLen 1 so it can sign node CAs
    /// ([`Authority::sign_node_ca`]), and an upstream chain must leave room for them.
    ///
    /// # Errors
    /// As [`Authority::open`]; also [`AuthorityError::RootPathLen`] for a directory whose
    /// root is not a cluster's (a standalone agent's), [`AuthorityError::PathLenTooShort`]
    /// for an upstream chain that allows no CA below the intermediate, and
    /// [`AuthorityError::InvalidRequest`] for a node CA TTL out of bounds.
    pub fn open_cluster(
        config: AuthorityConfig,
        policy: ClusterPolicy,
    ) -> Result<Authority, AuthorityError> {
        Self::open_cluster_at(config, policy, OffsetDateTime::now_utc())
    }

    /// [`Authority::open_cluster`] at a given time (tests).
    pub fn open_cluster_at(
        config: AuthorityConfig,
        policy: ClusterPolicy,
        now: OffsetDateTime,
    ) -> Result<Authority, AuthorityError> {
        policy.validate()?;
        Self::open_files(config, Some(policy), now)
    }

    fn open_files(
        config: AuthorityConfig,
        cluster: Option<ClusterPolicy>,
        now: OffsetDateTime,
    ) -> Result<Authority, AuthorityError> {
        ensure_private_dir(&config.dir)?;
        let set = match &config.mode {
            CaMode::SelfSigned => {
                let set = CaSet::load_or_create_root(
                    &config.dir,
                    &config.trust_domain,
                    config.rotation.ca_ttl,
                    root_path_len(cluster.is_some()),
                    now,
                )?;
                if cluster.is_some() {
                    // A standalone root (pathLen 0) would sign node CAs every verifier
                    // refuses; refuse it here, at start.
                    let cas =
                        std::iter::once(&set.active).chain(set.prepared.as_ref().map(|p| &p.0));
                    for ca in cas {
                        let found = tessera_identity::ca_path_len(&ca.cert_der)
                            .map_err(|e| AuthorityError::CaChain(e.to_string()))?;
                        if found != Some(1) {
                            return Err(AuthorityError::RootPathLen { expected: 1, found });
                        }
                    }
                }
                set
            }
            CaMode::Upstream {
                cert_chain,
                key,
                bundle,
            } => load_upstream(
                &config.trust_domain,
                cert_chain,
                key,
                bundle,
                u32::from(cluster.is_some()),
            )?,
        };
        let trust_domain = config.trust_domain.clone();
        Ok(Self::assemble(
            trust_domain,
            Source::Files { config, cluster },
            set,
            now,
        ))
    }

    fn assemble(
        trust_domain: TrustDomain,
        source: Source,
        set: CaSet,
        now: OffsetDateTime,
    ) -> Authority {
        let bundle = Arc::new(make_bundle(&trust_domain, &set, now));
        let (bundle_tx, _) = watch::channel(bundle);
        Authority {
            trust_domain,
            source,
            set: RwLock::new(set),
            bundle_tx,
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Issues an SVID now.
    pub fn issue(&self, spec: &SvidSpec<'_>) -> Result<IssuedSvid, AuthorityError> {
        self.issue_at(spec, OffsetDateTime::now_utc())
    }

    /// Issues an SVID as of `now`. A node's authority issues client and task SVIDs only
    /// ([`AuthorityError::NodeCaMayNotIssue`] for anything else).
    pub fn issue_at(
        &self,
        spec: &SvidSpec<'_>,
        now: OffsetDateTime,
    ) -> Result<IssuedSvid, AuthorityError> {
        self.check_node_may_issue(spec.spiffe_id)?;
        let active = Arc::clone(&self.read().active);
        let mut svid = issue(&active, &self.trust_domain, spec, now)?;
        svid.issuer_node = self.node().cloned();
        Ok(svid)
    }

    /// Signs an SVID for someone else's public key (a DER SubjectPublicKeyInfo, ECDSA
    /// P-256): the path by which a cluster's root gives an attested node what its node CA
    /// may not sign, an MCP server's, the node's own or an administrator's SVID. The
    /// SPIFFE ID must be of a Tessera shape. A node's authority signs clients and tasks
    /// only, as with [`Authority::issue`].
    ///
    /// # Errors
    /// [`AuthorityError::UnsupportedPublicKey`], [`AuthorityError::InvalidRequest`] for a
    /// SPIFFE ID that is not a Tessera identity of this trust domain,
    /// [`AuthorityError::NodeCaMayNotIssue`], [`AuthorityError::CaExpired`].
    pub fn issue_for_key(
        &self,
        spec: &SvidSpec<'_>,
        public_key: &[u8],
    ) -> Result<SignedSvid, AuthorityError> {
        self.issue_for_key_at(spec, public_key, OffsetDateTime::now_utc())
    }

    /// [`Authority::issue_for_key`] as of `now`.
    pub fn issue_for_key_at(
        &self,
        spec: &SvidSpec<'_>,
        public_key: &[u8],
        now: OffsetDateTime,
    ) -> Result<SignedSvid, AuthorityError> {
        spec.spiffe_id
            .parse::<AnyId>()
            .map_err(|e| AuthorityError::InvalidRequest(e.to_string()))?;
        self.check_node_may_issue(spec.spiffe_id)?;
        let active = Arc::clone(&self.read().active);
        let mut svid = issue_for_key(&active, &self.trust_domain, spec, public_key, now)?;
        svid.issuer_node = self.node().cloned();
        Ok(svid)
    }

    /// On a node's authority, refuses what a node CA may not sign (deny by default: a
    /// SPIFFE ID of no Tessera shape too).
    fn check_node_may_issue(&self, spiffe_id: &str) -> Result<(), AuthorityError> {
        let Some(node) = self.node() else {
            return Ok(());
        };
        let kind = spiffe_id.parse::<AnyId>().ok().map(|id| id.kind());
        if kind.is_some_and(tessera_identity::IdKind::issuable_by_node_ca) {
            return Ok(());
        }
        Err(AuthorityError::NodeCaMayNotIssue {
            node: node.clone(),
            spiffe_id: spiffe_id.to_owned(),
            kind,
        })
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
        if self.self_signed().is_err() {
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
        let (config, cluster) = self.self_signed()?;
        let ttl = time::Duration::try_from(config.rotation.ca_ttl)
            .map_err(|e| AuthorityError::InvalidRequest(e.to_string()))?;
        let (ca, key_pem) = SigningCa::generate_root(
            &self.trust_domain,
            now,
            ttl,
            root_path_len(cluster.is_some()),
        )?;
        ca.save(&config.dir, &key_pem)?;
        let mut s = self.write();
        s.prepared = Some((Arc::new(ca), key_pem));
        s.save(&config.dir)?;
        self.publish(&s, now);
        tracing::info!(ca = %s.prepared.as_ref().map(|p| p.0.name.as_str()).unwrap_or(""), "prepared next CA");
        Ok(())
    }

    /// Makes the prepared CA the signing CA; the old one is kept in the bundle
    /// until every SVID it could have signed has expired.
    pub fn activate_prepared(&self, now: OffsetDateTime) -> Result<(), AuthorityError> {
        let (config, cluster) = self.self_signed()?;
        let mut s = self.write();
        let Some((next, _)) = s.prepared.take() else {
            return Err(AuthorityError::InvalidRequest(
                "no prepared CA to activate".into(),
            ));
        };
        // What the old CA signed lives at most this long: its SVIDs, and in a cluster the
        // node CAs it signed, which are renewed under the new root at half life.
        let longest = cluster.map_or(config.rotation.max_svid_ttl, |c| {
            config.rotation.max_svid_ttl.max(c.node_ca_ttl)
        });
        let max_ttl = i64::try_from(longest.as_secs()).unwrap_or(i64::MAX);
        let old = std::mem::replace(&mut s.active, next);
        s.retiring.push(Retiring {
            name: old.name.clone(),
            cert_pem: pem::certs_to_pem(std::slice::from_ref(&old.cert_der)),
            until_unix: old
                .not_after
                .min(now.unix_timestamp().saturating_add(max_ttl)),
        });
        s.save(&config.dir)?;
        self.publish(&s, now);
        tracing::info!(active = %s.active.name, retired = %old.name, "activated new CA");
        Ok(())
    }

    /// Removes retired CAs whose SVIDs have all expired. Returns whether any went.
    pub fn prune(&self, now: OffsetDateTime) -> Result<bool, AuthorityError> {
        let Ok((config, _)) = self.self_signed() else {
            return Ok(false);
        };
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
        s.save(&config.dir)?;
        self.publish(&s, now);
        drop(s);
        for r in gone {
            // The key of a retired CA is no longer needed; destroy it.
            let _ = std::fs::remove_file(config.dir.join(format!("{}.key.pem", r.name)));
            let _ = std::fs::remove_file(config.dir.join(format!("{}.crt.pem", r.name)));
        }
        Ok(true)
    }

    /// The configuration and cluster policy of a self-signed authority, the only kind
    /// that rotates its own CA.
    fn self_signed(&self) -> Result<(&AuthorityConfig, Option<ClusterPolicy>), AuthorityError> {
        match &self.source {
            Source::Files {
                config:
                    config @ AuthorityConfig {
                        mode: CaMode::SelfSigned,
                        ..
                    },
                cluster,
            } => Ok((config, *cluster)),
            Source::Files { .. } => Err(AuthorityError::InvalidRequest(
                "CA rotation is the upstream PKI's job in upstream mode: replace the files and restart"
                    .into(),
            )),
            Source::Node { .. } => Err(AuthorityError::InvalidRequest(
                "a node CA is renewed by the cluster's server (Authority::renew_node_ca)".into(),
            )),
        }
    }

    fn publish(&self, s: &CaSet, now: OffsetDateTime) {
        let bundle = make_bundle(&self.trust_domain, s, now);
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

/// pathLen of a self-signed root: 0 standalone (leaves only), 1 in a cluster (node CAs).
fn root_path_len(cluster: bool) -> u8 {
    u8::from(cluster)
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
