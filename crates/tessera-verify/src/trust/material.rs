//! Validated trust material: own SVID (chain + key) and per-trust-domain bundles.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};

use super::anchor_limits::AnchorLimits;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tessera_identity::{JwtBundle, ProfileError, ServerId, TrustDomain, check_leaf_svid};

/// Why trust material was refused or could not be obtained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The own certificate chain is empty.
    #[error("the own certificate chain is empty")]
    EmptyChain,
    /// The own leaf breaks the X.509-SVID profile.
    #[error("own SVID breaks the X.509-SVID profile: {0}")]
    OwnProfile(#[source] ProfileError),
    /// The own leaf names another identity than the configured server id.
    #[error("own SVID is {found:?}, expected {expected:?}")]
    WrongOwnId {
        /// The configured id.
        expected: String,
        /// What the certificate says.
        found: String,
    },
    /// The own leaf is outside its validity window.
    #[error(
        "own SVID is not valid now (not_before {not_before_unix}, not_after {not_after_unix}, now {now_unix})"
    )]
    OwnNotValidNow {
        /// Start of validity.
        not_before_unix: i64,
        /// End of validity.
        not_after_unix: i64,
        /// The time checked.
        now_unix: i64,
    },
    /// The private key does not load or does not match the leaf.
    #[error("own private key: {0}")]
    Key(#[source] rustls::Error),
    /// No bundle for the own trust domain.
    #[error("no trust bundle for the own trust domain {0}")]
    MissingOwnBundle(String),
    /// A bundle certificate was refused.
    #[error("bundle for {trust_domain}: {reason}")]
    Bundle {
        /// The trust domain of the bundle.
        trust_domain: String,
        /// Why.
        reason: String,
    },
    /// The own chain does not verify against the own bundle.
    #[error("own SVID does not chain to the own bundle: {0}")]
    OwnChain(#[source] rustls::Error),
    /// A PEM file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The Workload API failed or has no SVID for the server.
    #[error("workload API: {0}")]
    WorkloadApi(String),
    /// A JWT bundle (JWKS) was refused.
    #[error("JWT bundle for {trust_domain}: {reason}")]
    JwtBundle {
        /// The trust domain the bundle was given for.
        trust_domain: String,
        /// Why.
        reason: String,
    },
    /// The publisher went away.
    #[error("trust source closed")]
    Closed,
}

/// One validated set of trust material. Built only through [`TrustMaterial::new`], which
/// checks everything, so holding one means it is usable.
///
/// Cloning shares every part (the sources swap the JWT bundles of a material without
/// re-validating its X.509 half).
#[derive(Clone)]
pub struct TrustMaterial {
    own_id: ServerId,
    certified_key: Arc<CertifiedKey>,
    not_after_unix: i64,
    bundles: BTreeMap<TrustDomain, Bundle>,
    /// JWT-SVID keys per trust domain (from FetchJWTBundles or a JWKS file); empty when
    /// the source has none, and then no JWT-SVID validates.
    jwt_bundles: BTreeMap<TrustDomain, Arc<JwtBundle>>,
}

#[derive(Clone)]
struct Bundle {
    roots: Arc<RootCertStore>,
    verifier: Arc<dyn ClientCertVerifier>,
    limits: AnchorLimits,
}

/// The crypto provider used everywhere in this crate: ring.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

// === impl TrustMaterial ===

impl TrustMaterial {
    /// Validates and assembles material.
    ///
    /// Checks: the chain is non-empty; its leaf passes the SVID profile and is exactly
    /// `own_id`; no node CA signed it (cluster mode: server SVIDs come from the root);
    /// it is valid at `now_unix`; the key loads (ring) and matches the leaf; a
    /// non-empty bundle exists for the own trust domain; every bundle certificate is a
    /// usable trust anchor; the own chain verifies against the own bundle. Extra trust
    /// domains in `bundles` are kept but only *used* if the TLS verifier allows them.
    ///
    /// # Errors
    /// The first check that fails, as a [`TrustError`].
    pub fn new(
        own_id: ServerId,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundles: BTreeMap<TrustDomain, Vec<CertificateDer<'static>>>,
        now_unix: i64,
    ) -> Result<Self, TrustError> {
        let leaf_der = chain.first().ok_or(TrustError::EmptyChain)?;
        let leaf = check_leaf_svid(leaf_der.as_ref()).map_err(TrustError::OwnProfile)?;
        let expected = own_id.to_string();
        if leaf.spiffe_id != expected {
            return Err(TrustError::WrongOwnId {
                expected,
                found: leaf.spiffe_id,
            });
        }
        if now_unix < leaf.not_before_unix || now_unix >= leaf.not_after_unix {
            return Err(TrustError::OwnNotValidNow {
                not_before_unix: leaf.not_before_unix,
                not_after_unix: leaf.not_after_unix,
                now_unix,
            });
        }
        // The issuance split holds for the own chain too: an MCP server SVID comes from the
        // root, never through a node CA (a verifier would refuse it at every handshake).
        for der in &chain[1..] {
            tessera_identity::check_intermediate(der.as_ref(), own_id.trust_domain())
                .and_then(|ca| ca.check_may_issue(leaf.kind))
                .map_err(TrustError::OwnProfile)?;
        }
        let provider = provider();
        let certified_key =
            CertifiedKey::from_der(chain.clone(), key, &provider).map_err(TrustError::Key)?;

        let mut built = BTreeMap::new();
        for (td, certs) in bundles {
            let bundle_err = |reason: String| TrustError::Bundle {
                trust_domain: td.to_string(),
                reason,
            };
            if certs.is_empty() {
                return Err(bundle_err("empty bundle".into()));
            }
            let limits = AnchorLimits::of(&certs)
                .map_err(|e| bundle_err(format!("unusable trust anchor: {e}")))?;
            let mut roots = RootCertStore::empty();
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| bundle_err(format!("unusable trust anchor: {e}")))?;
            }
            let roots = Arc::new(roots);
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(|e| bundle_err(format!("building verifier: {e}")))?;
            built.insert(
                td,
                Bundle {
                    roots,
                    verifier,
                    limits,
                },
            );
        }
        let own_td = own_id.trust_domain().clone();
        let own_bundle = built
            .get(&own_td)
            .ok_or_else(|| TrustError::MissingOwnBundle(own_td.to_string()))?;
        let parsed = ParsedCertificate::try_from(leaf_der).map_err(TrustError::OwnChain)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &own_bundle.roots,
            &chain[1..],
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now_unix.max(0) as u64)),
            provider.signature_verification_algorithms.all,
        )
        .map_err(TrustError::OwnChain)?;

        Ok(Self {
            own_id,
            certified_key: Arc::new(certified_key),
            not_after_unix: leaf.not_after_unix,
            bundles: built,
            jwt_bundles: BTreeMap::new(),
        })
    }

    /// The same material with `jwt_bundles` as its JWT-SVID keys, replacing any before.
    ///
    /// Each bundle must be keyed by its own trust domain; the own trust domain's may be
    /// absent (a source that serves no JWT bundle), and then JWT-SVID assertions are
    /// refused. The JWKS documents were validated when parsed ([`JwtBundle::from_jwks`]).
    ///
    /// # Errors
    /// [`TrustError::JwtBundle`] for a bundle filed under another trust domain.
    pub fn with_jwt_bundles(
        mut self,
        jwt_bundles: BTreeMap<TrustDomain, Arc<JwtBundle>>,
    ) -> Result<Self, TrustError> {
        for (td, bundle) in &jwt_bundles {
            if bundle.trust_domain() != td {
                return Err(TrustError::JwtBundle {
                    trust_domain: td.to_string(),
                    reason: format!("holds the keys of {}", bundle.trust_domain()),
                });
            }
        }
        self.jwt_bundles = jwt_bundles;
        Ok(self)
    }

    /// The JWT-SVID keys of `trust_domain`, if the source gave any.
    pub fn jwt_bundle(&self, trust_domain: &TrustDomain) -> Option<&Arc<JwtBundle>> {
        self.jwt_bundles.get(trust_domain)
    }

    /// Every JWT bundle, keyed by trust domain.
    pub fn jwt_bundles(&self) -> &BTreeMap<TrustDomain, Arc<JwtBundle>> {
        &self.jwt_bundles
    }

    /// The server's own identity.
    pub fn own_id(&self) -> &ServerId {
        &self.own_id
    }

    /// The own SVID with its signing key, as rustls serves it.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// End of the own SVID's validity, seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> i64 {
        self.not_after_unix
    }

    /// The trust domains that have a bundle.
    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.bundles.keys()
    }

    /// The trust anchors of `trust_domain`, if it has a bundle.
    pub fn roots(&self, trust_domain: &TrustDomain) -> Option<&Arc<RootCertStore>> {
        self.bundles.get(trust_domain).map(|b| &b.roots)
    }

    /// The webpki client verifier for `trust_domain`'s bundle, built once per material.
    pub(crate) fn client_verifier(
        &self,
        trust_domain: &TrustDomain,
    ) -> Option<&Arc<dyn ClientCertVerifier>> {
        self.bundles.get(trust_domain).map(|b| &b.verifier)
    }

    /// The path-length limits of `trust_domain`'s anchors, with its root store.
    pub(crate) fn anchor_limits(
        &self,
        trust_domain: &TrustDomain,
    ) -> Option<(&RootCertStore, &AnchorLimits)> {
        self.bundles
            .get(trust_domain)
            .map(|b| (b.roots.as_ref(), &b.limits))
    }
}

impl fmt::Debug for TrustMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustMaterial")
            .field("own_id", &self.own_id.to_string())
            .field("not_after_unix", &self.not_after_unix)
            .field(
                "trust_domains",
                &self.bundles.keys().map(|t| t.as_str()).collect::<Vec<_>>(),
            )
            .field(
                "jwt_trust_domains",
                &self
                    .jwt_bundles
                    .keys()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}
