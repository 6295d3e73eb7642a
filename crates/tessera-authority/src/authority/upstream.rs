//! Upstream mode: an intermediate CA from an upstream PKI, loaded from PEM files and
//! checked at start (its chain verifies to a bundle root, every certificate of it fits
//! the trust domain, it has not expired), so a mixed-up file fails the start rather
//! than every handshake.

use std::path::Path;
use std::sync::Arc;

use rcgen::KeyPair;
use tessera_identity::TrustDomain;
use time::OffsetDateTime;

use super::state::CaSet;
use crate::ca::{SigningCa, validity};
use crate::chain::{check_path_lens, verify_to_roots};
use crate::{AuthorityError, pem};

/// Loads and checks the upstream intermediate, its further intermediates and the
/// upstream roots (the bundle). `below` is how many CAs the intermediate will sign under
/// itself on the way to a leaf: 0 standalone, 1 in cluster mode (the node CAs).
pub(super) fn load_upstream(
    td: &TrustDomain,
    cert_chain: &Path,
    key: &Path,
    bundle: &Path,
    below: u32,
) -> Result<CaSet, AuthorityError> {
    let mut chain = pem::read_certs(cert_chain)?;
    let roots = pem::read_certs(bundle)?;
    let key_pem = pem::read_key(key)?;
    let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| AuthorityError::BadPem {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let cert_der = chain.remove(0);
    let after_leaf: Vec<Vec<u8>> = std::iter::once(cert_der.clone())
        .chain(chain.iter().cloned())
        .collect();
    let root = verify_to_roots(&after_leaf, &roots).map_err(AuthorityError::UpstreamCa)?;
    check_path_lens(&after_leaf, root, below)?;
    // Verifiers refuse chains whose intermediates name another trust domain (under a
    // shared upstream root, that is how one domain's CA is told from another's), so a
    // mixed-up file is refused here, at start, rather than at every handshake.
    let misfit = |e: tessera_identity::ProfileError| {
        AuthorityError::UpstreamCa(format!("the upstream CA chain does not fit {td}: {e}"))
    };
    let issuing = tessera_identity::check_intermediate(&cert_der, td).map_err(misfit)?;
    let mut cas = vec![issuing.clone()];
    for der in &chain {
        cas.push(tessera_identity::check_intermediate(der, td).map_err(misfit)?);
    }
    // A node CA may sign clients and tasks only, and never a CA: as the trust domain's
    // CA, which signs servers and node CAs, it would be refused by every verifier.
    if let Some(node) = cas.iter().find_map(|ca| ca.node.as_ref()) {
        return Err(AuthorityError::UpstreamCa(format!(
            "the upstream CA chain holds the node CA of {node}; give the trust domain's CA"
        )));
    }
    if issuing.binding == tessera_identity::CaBinding::Unnamed {
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
    let ca = SigningCa::from_parts("upstream".into(), cert_der, after_leaf, key_pair)?;
    Ok(CaSet {
        active: Arc::new(ca),
        prepared: None,
        retiring: Vec::new(),
        upstream_roots: roots,
    })
}
