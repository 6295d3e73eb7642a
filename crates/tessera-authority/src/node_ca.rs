//! Node CAs (cluster mode): the server's root signs each attested node a short-lived
//! intermediate (pathLen 0) naming the node in the node-CA extension; the node's agent
//! signs client and task SVIDs with it, so BeginTask never waits on the network.
//!
//! A node CA is a key on a node, so what its theft buys is bounded: it may sign client
//! and task identities only. The authority built from it refuses anything else
//! ([`crate::AuthorityError::NodeCaMayNotIssue`]) and every verifier refuses a chain
//! through a node CA that ends in another kind (`tessera_identity::IntermediateCa::check_may_issue`).

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa,
    KeyUsagePurpose, SanType,
};
use tessera_identity::{NodeCaExtension, NodeId, TrustDomain};
use time::OffsetDateTime;

use crate::AuthorityError;
use crate::ca::{SigningCa, random_serial, validity};
use crate::chain::{check_path_lens, verify_to_roots};
use crate::keys::{ForeignKey, NodeCaKey};

/// Shortest node CA lifetime accepted: a node renews at half life, and its SVIDs are
/// capped by the CA's expiry.
pub const MIN_NODE_CA_TTL: Duration = Duration::from_secs(10 * 60);

/// Longest node CA lifetime accepted: a stolen node CA signs until it expires or its
/// node is evicted, so it stays short.
pub const MAX_NODE_CA_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// How a cluster's root signs node CAs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterPolicy {
    /// Lifetime of each node CA, [`MIN_NODE_CA_TTL`] to [`MAX_NODE_CA_TTL`]; 24 hours by
    /// default. The node renews at half life ([`IssuedNodeCa::renew_at_unix`]); a node CA
    /// never outlives the root that signed it.
    pub node_ca_ttl: Duration,
}

impl Default for ClusterPolicy {
    fn default() -> Self {
        ClusterPolicy {
            node_ca_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl ClusterPolicy {
    pub(crate) fn validate(&self) -> Result<(), AuthorityError> {
        if !(MIN_NODE_CA_TTL..=MAX_NODE_CA_TTL).contains(&self.node_ca_ttl) {
            return Err(AuthorityError::InvalidRequest(format!(
                "node CA TTL {}s is outside {}s..={}s",
                self.node_ca_ttl.as_secs(),
                MIN_NODE_CA_TTL.as_secs(),
                MAX_NODE_CA_TTL.as_secs()
            )));
        }
        Ok(())
    }
}

/// A node CA certificate the root signed for a node's public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedNodeCa {
    /// The node it belongs to (named in its node-CA extension).
    pub node: NodeId,
    /// The node CA certificate first, then the intermediates above it (upstream mode):
    /// what the node sends after each leaf, and gives [`crate::Authority::from_node_ca`].
    pub chain_der: Vec<Vec<u8>>,
    /// Serial number, lower-case hex: what an eviction revokes.
    pub serial_hex: String,
    /// notBefore, unix seconds.
    pub not_before_unix: i64,
    /// notAfter, unix seconds.
    pub not_after_unix: i64,
}

impl IssuedNodeCa {
    /// Midpoint of the validity: when the node should ask for the next one.
    pub fn renew_at_unix(&self) -> i64 {
        self.not_before_unix + (self.not_after_unix - self.not_before_unix) / 2
    }
}

/// Clock skew allowance: certificates are valid a little before they are made.
const BACKDATE: time::Duration = time::Duration::seconds(10);

/// Signs `node`'s CA for the SubjectPublicKeyInfo `public_key` with `ca`, living `ttl`
/// (capped by `ca`'s own expiry).
pub(crate) fn sign(
    ca: &SigningCa,
    trust_domain: &TrustDomain,
    node: &NodeId,
    public_key: &[u8],
    ttl: Duration,
    now: OffsetDateTime,
) -> Result<IssuedNodeCa, AuthorityError> {
    if node.trust_domain() != trust_domain {
        return Err(AuthorityError::InvalidRequest(format!(
            "{node} is not in trust domain {trust_domain}"
        )));
    }
    let key = ForeignKey::from_spki_der(public_key)?;
    let now_unix = now.unix_timestamp();
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let not_after = now_unix.saturating_add(ttl).min(ca.not_after);
    if not_after <= now_unix {
        return Err(AuthorityError::CaExpired {
            ca_not_after: ca.not_after,
        });
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tessera");
    dn.push(
        DnType::CommonName,
        format!("Tessera node CA {} {}", trust_domain, node.name),
    );
    params.distinguished_name = dn;
    // The trust domain's ID, without a path: verifiers refuse a CA naming a path, so the
    // node is named in the extension instead.
    params.subject_alt_names =
        vec![SanType::URI(trust_domain.id_string().try_into().map_err(
            |_| AuthorityError::InvalidRequest("trust domain not IA5".into()),
        )?)];
    // pathLen 0: a node CA signs leaves only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = (now - BACKDATE)
        .max(OffsetDateTime::from_unix_timestamp(ca.not_before).unwrap_or(now - BACKDATE));
    params.not_after = OffsetDateTime::from_unix_timestamp(not_after)
        .map_err(|e| AuthorityError::InvalidRequest(e.to_string()))?;
    let mut ext = CustomExtension::from_oid_content(
        tessera_identity::NODE_CA_OID_ARCS,
        NodeCaExtension::new(node.clone()).to_der(),
    );
    ext.set_criticality(false);
    params.custom_extensions.push(ext);

    let cert = params.signed_by(&key, &ca.issuer)?;
    let der = cert.der().to_vec();
    // Parse back what we made: a node CA that is not exactly that never leaves.
    let named = tessera_identity::check_node_ca(&der, trust_domain)?;
    if &named != node {
        return Err(AuthorityError::SelfCheck(
            tessera_identity::ProfileError::NotNodeCa,
        ));
    }
    let (not_before_unix, not_after_unix) = validity(&der).map_err(AuthorityError::CaChain)?;
    let serial_hex = crate::ca::hex_serial(&der);
    let mut chain_der = Vec::with_capacity(1 + ca.chain_after_leaf.len());
    chain_der.push(der);
    chain_der.extend(ca.chain_after_leaf.iter().cloned());
    Ok(IssuedNodeCa {
        node: named,
        chain_der,
        serial_hex,
        not_before_unix,
        not_after_unix,
    })
}

/// Checks a node CA the server gave this node (its chain, the key made here, the
/// cluster's bundle) and makes it a signing CA: the node CA fits the node-CA profile for
/// `trust_domain`, every further certificate is a plain CA of the trust domain, the chain
/// verifies to a bundle root whose path lengths allow it, it is valid at `now`, and the
/// key is the certificate's.
pub(crate) fn load(
    trust_domain: &TrustDomain,
    chain: Vec<Vec<u8>>,
    key: NodeCaKey,
    bundle: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<(Arc<SigningCa>, NodeId), AuthorityError> {
    let Some(cert_der) = chain.first().cloned() else {
        return Err(AuthorityError::CaChain("the node CA chain is empty".into()));
    };
    let node = tessera_identity::check_node_ca(&cert_der, trust_domain)
        .map_err(AuthorityError::InvalidNodeCa)?;
    for der in &chain[1..] {
        let ca = tessera_identity::check_intermediate(der, trust_domain)
            .map_err(AuthorityError::InvalidNodeCa)?;
        if ca.node.is_some() {
            return Err(AuthorityError::CaChain(
                "a node CA above the node CA in its chain".into(),
            ));
        }
    }
    let root = verify_to_roots(&chain, bundle).map_err(AuthorityError::CaChain)?;
    check_path_lens(&chain, root, 0)?;
    let (not_before, not_after) = validity(&cert_der).map_err(AuthorityError::CaChain)?;
    let t = now.unix_timestamp();
    if not_after <= t {
        return Err(AuthorityError::CaExpired {
            ca_not_after: not_after,
        });
    }
    if not_before > t + BACKDATE.whole_seconds() {
        return Err(AuthorityError::CaChain(format!(
            "the node CA is not valid before {not_before} (unix); the clocks disagree"
        )));
    }
    if key_mismatch(&cert_der, &key) {
        return Err(AuthorityError::NodeCaKeyMismatch);
    }
    let name = format!("node-{}", node.name);
    let ca = SigningCa::from_parts(name, cert_der, chain, key.key)?;
    Ok((Arc::new(ca), node))
}

/// Whether `key` is not the key `cert_der` certifies.
fn key_mismatch(cert_der: &[u8], key: &NodeCaKey) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(cert_der).map_or(true, |(_, cert)| {
        cert.public_key().subject_public_key.data.as_ref() != key.key.public_key_raw()
    })
}

#[cfg(test)]
mod tests;
