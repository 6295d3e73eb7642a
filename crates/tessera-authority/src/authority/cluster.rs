//! Cluster mode's side of the authority: a node's authority built from its node CA (and
//! renewed with the next), and a cluster root signing node CAs.

use std::sync::Arc;

use tessera_identity::{NodeId, TrustDomain};
use time::OffsetDateTime;

use super::state::CaSet;
use super::{Authority, Source};
use crate::AuthorityError;
use crate::keys::NodeCaKey;
use crate::node_ca::{self, IssuedNodeCa};

impl Authority {
    /// A node's authority, from the node CA the cluster's root signed for it: `chain` is
    /// [`IssuedNodeCa::chain_der`] (the node CA, then any intermediates above it), `key`
    /// the private key made on this node, `bundle` the cluster's trust bundle (what this
    /// authority publishes). It issues client and task SVIDs (chain: leaf, node CA, ...)
    /// and refuses every other identity ([`AuthorityError::NodeCaMayNotIssue`]).
    /// Renewal at half life is the caller's ([`Authority::renew_node_ca`]).
    ///
    /// # Errors
    /// [`AuthorityError::InvalidNodeCa`] for a certificate breaking the node-CA profile,
    /// [`AuthorityError::CaChain`] for a chain that does not verify to `bundle`,
    /// [`AuthorityError::PathLenTooShort`], [`AuthorityError::NodeCaKeyMismatch`],
    /// [`AuthorityError::CaExpired`].
    pub fn from_node_ca(
        trust_domain: TrustDomain,
        chain: Vec<Vec<u8>>,
        key: NodeCaKey,
        bundle: Vec<Vec<u8>>,
    ) -> Result<Authority, AuthorityError> {
        Self::from_node_ca_at(trust_domain, chain, key, bundle, OffsetDateTime::now_utc())
    }

    /// [`Authority::from_node_ca`] at a given time (tests).
    pub fn from_node_ca_at(
        trust_domain: TrustDomain,
        chain: Vec<Vec<u8>>,
        key: NodeCaKey,
        bundle: Vec<Vec<u8>>,
        now: OffsetDateTime,
    ) -> Result<Authority, AuthorityError> {
        let (active, node) = node_ca::load(&trust_domain, chain, key, &bundle, now)?;
        let set = CaSet {
            active,
            prepared: None,
            retiring: Vec::new(),
            upstream_roots: bundle,
        };
        tracing::info!(node = %node, "loaded node CA");
        Ok(Self::assemble(
            trust_domain,
            Source::Node { node },
            set,
            now,
        ))
    }

    /// The node whose CA this authority signs with, for a node's authority; `None` for a
    /// root or upstream one. Audit records of what it issues name it.
    pub fn node(&self) -> Option<&NodeId> {
        match &self.source {
            Source::Node { node } => Some(node),
            Source::Files { .. } => None,
        }
    }

    /// Replaces a node's CA with the renewed one the server signed (and, with it, the
    /// cluster's bundle, which may have rotated): checked as in
    /// [`Authority::from_node_ca`], and for the same node. SVIDs issued from then on
    /// chain to the new CA; the bundle is published if it changed.
    ///
    /// # Errors
    /// [`AuthorityError::InvalidRequest`] on an authority that is not a node's,
    /// [`AuthorityError::NodeMismatch`] for another node's CA, and every error of
    /// [`Authority::from_node_ca`].
    pub fn renew_node_ca(
        &self,
        chain: Vec<Vec<u8>>,
        key: NodeCaKey,
        bundle: Vec<Vec<u8>>,
    ) -> Result<(), AuthorityError> {
        self.renew_node_ca_at(chain, key, bundle, OffsetDateTime::now_utc())
    }

    /// [`Authority::renew_node_ca`] at a given time (tests).
    pub fn renew_node_ca_at(
        &self,
        chain: Vec<Vec<u8>>,
        key: NodeCaKey,
        bundle: Vec<Vec<u8>>,
        now: OffsetDateTime,
    ) -> Result<(), AuthorityError> {
        let Source::Node { node } = &self.source else {
            return Err(AuthorityError::InvalidRequest(
                "only a node's authority renews its node CA".into(),
            ));
        };
        let (active, found) = node_ca::load(&self.trust_domain, chain, key, &bundle, now)?;
        if &found != node {
            return Err(AuthorityError::NodeMismatch {
                expected: node.clone(),
                found,
            });
        }
        let mut s = self.write();
        s.active = active;
        s.upstream_roots = bundle;
        self.publish(&s, now);
        tracing::info!(node = %node, not_after = s.active.not_after, "renewed node CA");
        Ok(())
    }

    /// Signs `node`'s CA for its public key (a DER SubjectPublicKeyInfo, ECDSA P-256, made
    /// on the node), living the cluster's `node_ca_ttl` and never past the signing CA.
    /// The caller has attested the node; renewal at half life is the node's to ask for.
    ///
    /// # Errors
    /// [`AuthorityError::NotClusterRoot`] unless opened with [`Authority::open_cluster`],
    /// [`AuthorityError::UnsupportedPublicKey`], [`AuthorityError::InvalidRequest`] for a
    /// node of another trust domain, [`AuthorityError::CaExpired`].
    pub fn sign_node_ca(
        &self,
        node: &NodeId,
        public_key: &[u8],
    ) -> Result<IssuedNodeCa, AuthorityError> {
        self.sign_node_ca_at(node, public_key, OffsetDateTime::now_utc())
    }

    /// [`Authority::sign_node_ca`] at a given time (tests).
    pub fn sign_node_ca_at(
        &self,
        node: &NodeId,
        public_key: &[u8],
        now: OffsetDateTime,
    ) -> Result<IssuedNodeCa, AuthorityError> {
        let Source::Files {
            cluster: Some(policy),
            ..
        } = &self.source
        else {
            return Err(AuthorityError::NotClusterRoot(
                "node CAs are signed by a cluster's root (Authority::open_cluster)",
            ));
        };
        let active = Arc::clone(&self.read().active);
        let issued = node_ca::sign(
            &active,
            &self.trust_domain,
            node,
            public_key,
            policy.node_ca_ttl,
            now,
        )?;
        tracing::info!(node = %node, serial = %issued.serial_hex, "signed node CA");
        Ok(issued)
    }
}
