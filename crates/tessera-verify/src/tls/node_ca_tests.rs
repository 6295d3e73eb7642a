//! The issuance split (cluster mode): a chain through a node CA ends in a client or task
//! leaf, or is refused, on both sides of the handshake.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;

use super::*;
use tessera_testca::rcgen::CustomExtension;
use tessera_testca::{Ca, Leaf, node_ca_extension};

use crate::testutil::{SERVER, TD, claims, task_id_str};
use crate::trust::{TrustMaterial, TrustSource};

const NODE: &str = "spiffe://acme.corp/node/worker-1";
const CLIENT: &str = "spiffe://acme.corp/client/code-reviewer";

/// A cluster: the root (pathLen 1) serves the MCP server its SVID; worker-1's node CA.
struct Cluster {
    root: Ca,
    node_ca: Ca,
    source: TrustSource,
}

fn cluster() -> Cluster {
    let root = Ca::cluster_root(TD);
    let node_ca = root.node_ca(NODE);
    let (chain, key) = root.leaf(SERVER).mint().into_parts();
    let mut bundles = BTreeMap::new();
    bundles.insert(TD.parse().unwrap(), vec![root.cert().clone()]);
    let m = TrustMaterial::new(
        SERVER.parse().unwrap(),
        chain,
        key,
        bundles,
        OffsetDateTime::now_utc().unix_timestamp(),
    )
    .unwrap();
    Cluster {
        root,
        node_ca,
        source: TrustSource::from_static(m),
    }
}

fn task_leaf(ca: &Ca) -> Leaf<'_> {
    let mut o = ca.leaf(&task_id_str(TD));
    o.claims_der = Some(claims(TD, &["github/tool/*"], 1_900_000_000).to_der());
    o
}

fn verify_client(
    v: &SpiffeClientVerifier,
    chain: &[CertificateDer<'static>],
) -> Result<(), String> {
    v.verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn verify_server(
    v: &ExpectedServerVerifier,
    chain: &[CertificateDer<'static>],
) -> Result<(), String> {
    v.verify_server_cert(
        &chain[0],
        &chain[1..],
        &ServerName::try_from("mcp").unwrap(),
        &[],
        UnixTime::now(),
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

#[test]
fn client_and_task_svids_through_a_node_ca_are_accepted() {
    let c = cluster();
    let v = ServerTlsBuilder::new(c.source.clone()).client_verifier();
    let task = task_leaf(&c.node_ca).mint().chain;
    assert_eq!(task.len(), 2, "leaf, node CA");
    verify_client(&v, &task).unwrap();
    verify_client(&v, &c.node_ca.leaf(CLIENT).mint().chain).unwrap();
    // Named intermediates only: a node CA is named, so that policy passes it too.
    let strict = ServerTlsBuilder::new(c.source.clone())
        .require_trust_domain_on_intermediates()
        .client_verifier();
    verify_client(&strict, &task).unwrap();
}

/// Detection is by the extension, not by the chain's shape: the same chain through a
/// plain intermediate (the trust domain's own CA, as in upstream mode) passes; through
/// the node CA it is refused.
#[test]
fn a_server_leaf_through_a_node_ca_is_refused_by_the_client_and_by_mcp_servers() {
    let c = cluster();
    let expected: ServerId = SERVER.parse().unwrap();
    let client_side = ExpectedServerVerifier::new(&expected, [c.root.cert().clone()]).unwrap();
    let forged = c.node_ca.leaf(SERVER).mint().chain;
    let err = verify_server(&client_side, &forged).unwrap_err();
    assert!(err.contains("NodeCaMayNotIssue"), "{err}");
    let server_side = ServerTlsBuilder::new(c.source.clone()).client_verifier();
    let err = verify_client(&server_side, &forged).unwrap_err();
    assert!(err.contains("NodeCaMayNotIssue"), "{err}");

    let plain = c
        .root
        .ca_with("plain", &["spiffe://acme.corp"], Some(0), Vec::new());
    let via_plain = plain.leaf(SERVER).mint().chain;
    verify_server(&client_side, &via_plain).expect("a plain intermediate signs servers");
    verify_client(&server_side, &via_plain).expect("a plain intermediate signs servers");
    // Signed by the root itself, as tessera-server does it.
    verify_server(&client_side, &c.root.leaf(SERVER).mint().chain).unwrap();
}

#[test]
fn node_and_admin_leaves_through_a_node_ca_are_refused() {
    let c = cluster();
    let server_side = ServerTlsBuilder::new(c.source.clone()).client_verifier();
    let expected: ServerId = SERVER.parse().unwrap();
    let client_side = ExpectedServerVerifier::new(&expected, [c.root.cert().clone()]).unwrap();
    for id in [
        NODE,
        "spiffe://acme.corp/node/worker-2",
        "spiffe://acme.corp/admin/alice",
    ] {
        let chain = c.node_ca.leaf(id).mint().chain;
        let err = verify_server(&client_side, &chain).unwrap_err();
        assert!(err.contains("NodeCaMayNotIssue"), "{id}: {err}");
        // An MCP server takes no node or admin for a peer at all.
        assert!(verify_client(&server_side, &chain).is_err(), "{id}");
        assert!(
            verify_client(&server_side, &c.root.leaf(id).mint().chain).is_err(),
            "{id} from the root"
        );
    }
}

/// Even sent along unused (the leaf signed by the root), a node CA in the chain makes
/// a server leaf suspect: refused, as a foreign trust domain's intermediate is.
#[test]
fn a_node_ca_sent_along_with_a_server_leaf_is_refused() {
    let c = cluster();
    let expected: ServerId = SERVER.parse().unwrap();
    let v = ExpectedServerVerifier::new(&expected, [c.root.cert().clone()]).unwrap();
    let mut chain = c.root.leaf(SERVER).mint().chain;
    chain.push(c.node_ca.cert().clone());
    let err = verify_server(&v, &chain).unwrap_err();
    assert!(err.contains("NodeCaMayNotIssue"), "{err}");
}

/// A node CA that signed another CA: refused by its own pathLen 0 (webpki), by the
/// cluster root's pathLen 1, and a "node CA" without pathLen 0 breaks the profile.
#[test]
fn a_node_ca_signing_a_ca_is_refused() {
    let c = cluster();
    let v = ServerTlsBuilder::new(c.source.clone()).client_verifier();
    let sub = c
        .node_ca
        .ca_with("sub", &["spiffe://acme.corp"], Some(0), Vec::new());
    let chain = task_leaf(&sub).mint().chain;
    assert_eq!(chain.len(), 3, "leaf, sub CA, node CA");
    let err = verify_client(&v, &chain).unwrap_err();
    assert!(
        err.contains("PathLenConstraintViolated") || err.contains("path length"),
        "{err}"
    );

    let unconstrained = c.root.ca_with(
        "node CA without pathLen",
        &["spiffe://acme.corp"],
        None,
        vec![node_ca_extension(NODE)],
    );
    let err = verify_client(&v, &task_leaf(&unconstrained).mint().chain).unwrap_err();
    assert!(err.contains("NodeCaPathLen"), "{err}");
    let sub = unconstrained.ca_with("sub", &["spiffe://acme.corp"], Some(0), Vec::new());
    assert!(verify_client(&v, &task_leaf(&sub).mint().chain).is_err());
}

#[test]
fn hostile_node_cas_are_refused() {
    let c = cluster();
    let v = ServerTlsBuilder::new(c.source.clone()).client_verifier();
    let named = ["spiffe://acme.corp"];
    let critical = {
        let mut ext = node_ca_extension(NODE);
        ext.set_criticality(true);
        ext
    };
    let malformed = CustomExtension::from_oid_content(
        tessera_identity::NODE_CA_OID_ARCS,
        vec![0x30, 0x03, 0x02, 0x01],
    );
    let cases: Vec<(&str, Ca, &str)> = vec![
        (
            "extension twice",
            c.root.ca_with(
                "twice",
                &named,
                Some(0),
                vec![node_ca_extension(NODE), node_ca_extension(NODE)],
            ),
            "DuplicateExtension",
        ),
        (
            "malformed DER",
            c.root
                .ca_with("malformed", &named, Some(0), vec![malformed]),
            "InvalidNodeCa",
        ),
        (
            "critical",
            c.root.ca_with("critical", &named, Some(0), vec![critical]),
            "NodeCaCritical",
        ),
        (
            "another trust domain's node",
            c.root.ca_with(
                "foreign node",
                &named,
                Some(0),
                vec![node_ca_extension("spiffe://evil.example/node/worker-1")],
            ),
            "NodeCaForeignNode",
        ),
        (
            "no SPIFFE ID on the CA",
            c.root
                .ca_with("unnamed", &[], Some(0), vec![node_ca_extension(NODE)]),
            "NodeCaUnnamed",
        ),
        (
            "pathLen 1",
            c.root
                .ca_with("len 1", &named, Some(1), vec![node_ca_extension(NODE)]),
            "NodeCaPathLen",
        ),
    ];
    for (case, ca, want) in cases {
        let err = verify_client(&v, &task_leaf(&ca).mint().chain).unwrap_err();
        assert!(err.contains(want), "case {case}: {err}");
    }
    // (The CA flag missing, and every rule above, case by case: identity's
    // `svid::node_ca_tests`.)
}

#[test]
fn a_node_ca_is_no_trust_anchor() {
    let c = cluster();
    let (chain, key) = c.root.leaf(SERVER).mint().into_parts();
    let mut bundles = BTreeMap::new();
    bundles.insert(
        TD.parse().unwrap(),
        vec![c.root.cert().clone(), c.node_ca.cert().clone()],
    );
    let err = TrustMaterial::new(
        SERVER.parse().unwrap(),
        chain,
        key,
        bundles,
        OffsetDateTime::now_utc().unix_timestamp(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("node CA"), "{err}");
    let expected: ServerId = SERVER.parse().unwrap();
    assert!(ExpectedServerVerifier::new(&expected, [c.node_ca.cert().clone()]).is_err());
}

#[test]
fn an_mcp_server_refuses_its_own_svid_from_a_node_ca() {
    let c = cluster();
    let (chain, key) = c.node_ca.leaf(SERVER).mint().into_parts();
    let mut bundles = BTreeMap::new();
    bundles.insert(TD.parse().unwrap(), vec![c.root.cert().clone()]);
    let err = TrustMaterial::new(
        SERVER.parse().unwrap(),
        chain,
        key,
        bundles,
        OffsetDateTime::now_utc().unix_timestamp(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("may not issue a server"), "{err}");
}

/// Real handshakes: a task through a node CA is the peer; a server leaf a node CA
/// signed makes the client abort.
#[tokio::test]
async fn handshakes_accept_a_node_ca_task_and_refuse_a_node_ca_server() {
    let c = cluster();
    let expected: ServerId = SERVER.parse().unwrap();
    let (task_chain, task_key) = task_leaf(&c.node_ca).mint().into_parts();

    let handshake = |server: ServerConfig, client: ClientConfig| async move {
        let (a, b) = tokio::io::duplex(16 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let s = tokio::spawn(async move { acceptor.accept(a).await });
        let c = connector
            .connect(ServerName::try_from("mcp").unwrap(), b)
            .await;
        let s = s.await.unwrap();
        (
            c.map(|_| ()).map_err(|e| e.to_string()),
            s.map(|s| Peer::from_chain(s.get_ref().1.peer_certificates())),
        )
    };

    let server = ServerTlsBuilder::new(c.source.clone()).build().unwrap();
    let client = client_config(
        &expected,
        [c.root.cert().clone()],
        task_chain.clone(),
        task_key.clone_key(),
    )
    .unwrap();
    let (client_result, server_result) = handshake(server, client).await;
    client_result.unwrap();
    let peer = server_result.unwrap().unwrap();
    assert!(matches!(peer, Peer::Task { .. }), "{peer:?}");
    assert_eq!(peer.spiffe_id(), task_id_str(TD));

    // A stolen node CA key serves an MCP server SVID: the runtime refuses it.
    let (forged, forged_key) = c.node_ca.leaf(SERVER).mint().into_parts();
    let impostor = ServerConfig::builder_with_provider(crate::trust::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(forged, forged_key)
        .unwrap();
    let client = client_config(&expected, [c.root.cert().clone()], task_chain, task_key).unwrap();
    let (client_result, _) = handshake(impostor, client).await;
    let err = client_result.unwrap_err();
    assert!(err.contains("NodeCaMayNotIssue"), "{err}");
}
