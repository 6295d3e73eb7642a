//! Who is calling the Node API: the node SVID on the connection, checked on every call
//! against the trust domain, the root, and the node's status in this replica's copy (an
//! evicted node is refused at once, whatever its certificate says).

use tessera_identity::{AnyId, NodeId, TrustDomain};
use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::tls::PeerInfo;
use crate::{NodeStatus, Replica};

/// The active node a call comes from, or the status refusing it: UNAUTHENTICATED without
/// a client certificate, PERMISSION_DENIED for one that is not an active node's SVID
/// signed by the root itself.
pub(crate) async fn node_of<T>(
    req: &Request<T>,
    trust_domain: &TrustDomain,
    bundle: &[Vec<u8>],
    replica: &Replica,
) -> Result<NodeId, Status> {
    let leaf = req
        .extensions()
        .get::<PeerInfo>()
        .and_then(|info| info.leaf.clone())
        .ok_or_else(|| Status::unauthenticated("a node SVID (client certificate) is required"))?;
    let svid = tessera_identity::check_leaf_svid(&leaf).map_err(|e| {
        Status::permission_denied(format!("the client certificate is not an SVID: {e}"))
    })?;
    if &svid.trust_domain != trust_domain {
        return Err(Status::permission_denied(format!(
            "{} is not in trust domain {trust_domain}",
            svid.spiffe_id
        )));
    }
    let Ok(AnyId::Node(node)) = svid.spiffe_id.parse::<AnyId>() else {
        return Err(Status::permission_denied(format!(
            "{} is not a node SVID",
            svid.spiffe_id
        )));
    };
    // The handshake verified a path to a root, which may run through a node CA; a node
    // CA must not make node SVIDs (a stolen one would become any node), so the leaf
    // must be signed by a root directly, as the server signs node SVIDs.
    if !signed_by_a_root(&leaf, bundle) {
        return Err(Status::permission_denied(
            "a node SVID must be signed by the cluster root",
        ));
    }
    let status = replica
        .state()
        .nodes
        .get(node.name.as_str())
        .map(|n| n.status);
    let status = match status {
        Some(status) => Some(status),
        // Attested a moment ago through another replica, whose change this one has not
        // applied yet: ask PostgreSQL. Only a root-signed node SVID gets this far.
        None => replica
            .store()
            .get_node(node.name.as_str())
            .await
            .map_err(crate::wire::store_status)?
            .map(|n| n.status),
    };
    match status {
        Some(NodeStatus::Active) => Ok(node),
        Some(_) => Err(Status::permission_denied(format!(
            "node {} was evicted",
            node.name
        ))),
        None => Err(Status::permission_denied(format!(
            "node {} is not registered",
            node.name
        ))),
    }
}

fn signed_by_a_root(leaf: &[u8], bundle: &[Vec<u8>]) -> bool {
    let Ok((_, leaf)) = X509Certificate::from_der(leaf) else {
        return false;
    };
    bundle.iter().any(|root| {
        X509Certificate::from_der(root)
            .is_ok_and(|(_, root)| leaf.verify_signature(Some(root.public_key())).is_ok())
    })
}
