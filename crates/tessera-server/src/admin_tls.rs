//! Who may use `tessera.v1.Admin` and `ClusterAdmin` over the server's TLS listener: a
//! caller presenting an admin SVID (`spiffe://<td>/admin/<name>`) signed by the cluster
//! root itself. Node, client, task and server identities are refused PERMISSION_DENIED,
//! a caller without a certificate UNAUTHENTICATED.
//!
//! The handshake already verified the chain to the bundle; what it cannot know is what
//! the identity is for. A node CA chains to the root too, so "signed by the root itself"
//! matters: a stolen node CA must not mint administrators.
//!
//! The check runs as a tonic interceptor on the TLS-served Admin services and leaves its
//! verdict in the request ([`TlsAdminCaller`]); `AdminService::authorize` turns it into
//! the answer, so refusals are counted and logged where the admin socket's are. A call
//! reaching `authorize` with no verdict and no unix-socket credentials is refused.

use std::sync::Arc;

use tessera_identity::{AnyId, TrustDomain};
use tonic::{Request, Status};

use crate::ca::ServerCa;
use crate::node_api::tls::PeerInfo;

/// The verdict on a TLS caller of the Admin API: the actor to record (its SPIFFE ID), or
/// the refusal.
#[derive(Clone, Debug)]
pub(crate) struct TlsAdminCaller(pub(crate) Result<String, Status>);

/// The interceptor for Admin services on the TLS listener.
pub(crate) fn interceptor(
    ca: Arc<ServerCa>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let leaf = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|info| info.leaf.clone());
        let verdict = check(leaf.as_deref().map(Vec::as_slice), &ca);
        req.extensions_mut().insert(TlsAdminCaller(verdict));
        Ok(req)
    }
}

/// The admin identity a verified client leaf names, or why it may not administer.
fn check(leaf: Option<&[u8]>, ca: &ServerCa) -> Result<String, Status> {
    let Some(leaf) = leaf else {
        return Err(Status::unauthenticated(
            "the Admin API over TLS needs an admin SVID (client certificate)",
        ));
    };
    verdict(leaf, ca.authority().trust_domain(), &ca.bundle())
}

/// [`check`] on its parts, for tests.
fn verdict(leaf: &[u8], trust_domain: &TrustDomain, bundle: &[Vec<u8>]) -> Result<String, Status> {
    let svid = tessera_identity::check_leaf_svid(leaf).map_err(|e| {
        Status::permission_denied(format!("the client certificate is not an SVID: {e}"))
    })?;
    if &svid.trust_domain != trust_domain {
        return Err(Status::permission_denied(format!(
            "{} is not in trust domain {trust_domain}",
            svid.spiffe_id
        )));
    }
    match svid.spiffe_id.parse::<AnyId>() {
        Ok(AnyId::Admin(_)) => {}
        _ => {
            tracing::warn!(caller = %svid.spiffe_id, "admin call over TLS refused: not an admin SVID");
            return Err(Status::permission_denied(format!(
                "{} is not an admin SVID (spiffe://{trust_domain}/admin/<name>)",
                svid.spiffe_id
            )));
        }
    }
    if !signed_by_a_root(leaf, bundle) {
        tracing::warn!(caller = %svid.spiffe_id, "admin call over TLS refused: not signed by the root");
        return Err(Status::permission_denied(
            "an admin SVID must be signed by the cluster root",
        ));
    }
    Ok(svid.spiffe_id)
}

/// Whether a root of `bundle` signed `leaf` itself (no intermediate). The Node API's
/// caller check has the same rule for node SVIDs (`node_api::caller`, another team's
/// module this session, hence the copy).
fn signed_by_a_root(leaf: &[u8], bundle: &[Vec<u8>]) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok((_, leaf)) = X509Certificate::from_der(leaf) else {
        return false;
    };
    bundle.iter().any(|root| {
        X509Certificate::from_der(root)
            .is_ok_and(|(_, root)| leaf.verify_signature(Some(root.public_key())).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tessera_authority::{Authority, ClusterPolicy, SvidSpec};

    use super::*;

    fn root(td: &TrustDomain) -> (tempfile::TempDir, Authority) {
        let dir = tempfile::tempdir().unwrap();
        let files = Authority::generate_cluster_root(td, Duration::from_secs(3600)).unwrap();
        std::fs::write(dir.path().join("ca.crt"), files.cert_pem).unwrap();
        std::fs::write(dir.path().join("ca.key"), files.key_pem).unwrap();
        std::fs::set_permissions(
            dir.path().join("ca.key"),
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
        )
        .unwrap();
        let a = Authority::open_cluster_root(
            td.clone(),
            &dir.path().join("ca.crt"),
            &dir.path().join("ca.key"),
            ClusterPolicy {
                node_ca_ttl: Duration::from_secs(3600),
            },
        )
        .unwrap();
        (dir, a)
    }

    fn leaf(a: &Authority, id: &str) -> Vec<u8> {
        a.issue(&SvidSpec {
            spiffe_id: id,
            ttl: Duration::from_secs(600),
            not_after_cap: None,
            claims: None,
        })
        .unwrap()
        .chain_der[0]
            .clone()
    }

    #[test]
    fn only_an_admin_svid_from_the_root_may_administer() {
        let td: TrustDomain = "adm.test".parse().unwrap();
        let (_d, a) = root(&td);
        let bundle = a.bundle().certs.clone();
        let ok = verdict(&leaf(&a, "spiffe://adm.test/admin/alice"), &td, &bundle).unwrap();
        assert_eq!(ok, "spiffe://adm.test/admin/alice");
        for id in [
            "spiffe://adm.test/node/n1",
            "spiffe://adm.test/client/code-reviewer",
            "spiffe://adm.test/mcp/github",
            "spiffe://adm.test/tessera/server",
        ] {
            let e = verdict(&leaf(&a, id), &td, &bundle).unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{id}");
        }
        // Another root's admin SVID (the handshake would refuse it; the check does too).
        let (_d2, other) = root(&td);
        let e = verdict(&leaf(&other, "spiffe://adm.test/admin/alice"), &td, &bundle).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
    }
}
