//! A cluster root held in two PEM files that every server replica mounts (e.g. from a
//! Kubernetes Secret), made once by `tessera-server ca init`. Replicas must all sign with
//! the same root, so none of them creates or rotates it: rotating it is the operator's
//! (make a new pair, publish both roots, switch), as in upstream mode.

use std::path::Path;
use std::sync::Arc;

use rcgen::KeyPair;
use tessera_identity::TrustDomain;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::state::CaSet;
use super::{Authority, Source};
use crate::ca::{SigningCa, validity};
use crate::chain::verify_to_roots;
use crate::node_ca::ClusterPolicy;
use crate::{AuthorityConfig, AuthorityError, CaMode, RotationPolicy, pem};

/// A new cluster root: its certificate and its private key, both PEM.
pub struct GeneratedRoot {
    /// The root certificate (the trust bundle verifiers and agents pin).
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM; zeroed on drop, never printed by `Debug`.
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for GeneratedRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedRoot")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Makes a cluster root for `trust_domain` (ECDSA P-256, pathLen 1, living `ttl`),
    /// for [`Authority::open_cluster_root`]. Nothing is written: the caller stores it.
    pub fn generate_cluster_root(
        trust_domain: &TrustDomain,
        ttl: std::time::Duration,
    ) -> Result<GeneratedRoot, AuthorityError> {
        let ttl = time::Duration::try_from(ttl)
            .map_err(|e| AuthorityError::InvalidRequest(e.to_string()))?;
        let (ca, key_pem) =
            SigningCa::generate_root(trust_domain, OffsetDateTime::now_utc(), ttl, 1)?;
        Ok(GeneratedRoot {
            cert_pem: pem::certs_to_pem(std::slice::from_ref(&ca.cert_der)),
            key_pem: Zeroizing::new(key_pem),
        })
    }

    /// Opens a cluster's root authority from a self-signed root certificate (`cert`, one
    /// PEM certificate) and its key (`key`, mode 0600 or stricter), as
    /// [`Authority::open_cluster`] does from a directory, but never creating or rotating
    /// anything: every replica mounting the same files signs with the same root.
    ///
    /// # Errors
    /// [`AuthorityError::UpstreamCa`] for a file that is not one self-signed CA
    /// certificate of `trust_domain`, [`AuthorityError::RootPathLen`] unless its pathLen
    /// is 1, [`AuthorityError::UpstreamKeyMismatch`], [`AuthorityError::CaExpired`], and
    /// the file errors.
    pub fn open_cluster_root(
        trust_domain: TrustDomain,
        cert: &Path,
        key: &Path,
        policy: ClusterPolicy,
    ) -> Result<Authority, AuthorityError> {
        policy.validate()?;
        let certs = pem::read_certs(cert)?;
        let [cert_der] = <[Vec<u8>; 1]>::try_from(certs).map_err(|certs| {
            AuthorityError::UpstreamCa(format!(
                "{} holds {} certificates; the cluster root file holds exactly one",
                cert.display(),
                certs.len()
            ))
        })?;
        let roots = vec![cert_der.clone()];
        verify_to_roots(std::slice::from_ref(&cert_der), &roots)
            .map_err(|e| AuthorityError::UpstreamCa(format!("not self-signed: {e}")))?;
        let issuing =
            tessera_identity::check_intermediate(&cert_der, &trust_domain).map_err(|e| {
                AuthorityError::UpstreamCa(format!("not a root of {trust_domain}: {e}"))
            })?;
        if issuing.node.is_some() {
            return Err(AuthorityError::UpstreamCa(
                "the cluster root file holds a node CA".into(),
            ));
        }
        let found = tessera_identity::ca_path_len(&cert_der)
            .map_err(|e| AuthorityError::CaChain(e.to_string()))?;
        if found != Some(1) {
            return Err(AuthorityError::RootPathLen { expected: 1, found });
        }
        let now = OffsetDateTime::now_utc();
        let (_, not_after) = validity(&cert_der).map_err(AuthorityError::UpstreamCa)?;
        if not_after <= now.unix_timestamp() {
            return Err(AuthorityError::CaExpired {
                ca_not_after: not_after,
            });
        }
        let key_pem = Zeroizing::new(pem::read_key(key)?);
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| AuthorityError::BadPem {
            path: key.to_owned(),
            reason: e.to_string(),
        })?;
        // Leaves and node CAs chain to the root directly: nothing after them.
        let ca = SigningCa::from_parts("root".into(), cert_der, Vec::new(), key_pair)?;
        let set = CaSet {
            active: Arc::new(ca),
            prepared: None,
            retiring: Vec::new(),
            upstream_roots: roots,
        };
        // Upstream mode as far as rotation is concerned: the files are the operator's.
        let config = AuthorityConfig {
            trust_domain: trust_domain.clone(),
            dir: cert.parent().map(Path::to_owned).unwrap_or_default(),
            mode: CaMode::Upstream {
                cert_chain: cert.to_owned(),
                key: key.to_owned(),
                bundle: cert.to_owned(),
            },
            rotation: RotationPolicy::default(),
        };
        Ok(Self::assemble(
            trust_domain,
            Source::Files {
                config,
                cluster: Some(policy),
            },
            set,
            now,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use tessera_identity::NodeId;

    use super::*;

    fn write_root(
        dir: &Path,
        td: &TrustDomain,
        key_mode: u32,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let root =
            Authority::generate_cluster_root(td, std::time::Duration::from_secs(3600)).unwrap();
        let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        std::fs::write(&cert, &root.cert_pem).unwrap();
        std::fs::write(&key, root.key_pem.as_bytes()).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(key_mode)).unwrap();
        (cert, key)
    }

    #[test]
    fn two_replicas_opening_the_same_files_sign_node_cas_under_one_root() {
        let td: TrustDomain = "acme.corp".parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_root(dir.path(), &td, 0o600);
        let a = Authority::open_cluster_root(td.clone(), &cert, &key, ClusterPolicy::default())
            .unwrap();
        let b = Authority::open_cluster_root(td.clone(), &cert, &key, ClusterPolicy::default())
            .unwrap();
        assert_eq!(a.bundle().certs, b.bundle().certs);
        assert_eq!(a.bundle().certs.len(), 1);
        let node = NodeId::new(td.clone(), "worker-1".parse().unwrap());
        let node_key = crate::NodeCaKey::generate().unwrap();
        let ca = b.sign_node_ca(&node, &node_key.public_key_der()).unwrap();
        // The node CA chains straight to the root both replicas publish.
        assert_eq!(ca.chain_der.len(), 1);
        Authority::from_node_ca(td, ca.chain_der, node_key, a.bundle().certs.clone()).unwrap();
    }

    #[test]
    fn a_readable_key_or_a_standalone_root_is_refused() {
        let td: TrustDomain = "acme.corp".parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_root(dir.path(), &td, 0o644);
        let e = Authority::open_cluster_root(td.clone(), &cert, &key, ClusterPolicy::default())
            .unwrap_err();
        assert!(matches!(e, AuthorityError::InsecureKeyFile { .. }), "{e}");

        let other: TrustDomain = "other.corp".parse().unwrap();
        let (cert, key) = write_root(dir.path(), &other, 0o600);
        let e =
            Authority::open_cluster_root(td, &cert, &key, ClusterPolicy::default()).unwrap_err();
        assert!(matches!(e, AuthorityError::UpstreamCa(_)), "{e}");
    }
}
