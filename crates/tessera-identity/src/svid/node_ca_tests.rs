//! Node CAs: one certificate per node-CA rule, and what a node CA may sign.

use rcgen::{BasicConstraints, CertificateParams, CustomExtension, IsCa, KeyUsagePurpose};

use super::tests::{ca, der, leaf};
use super::*;
use crate::node_ca::{NODE_CA_OID, NODE_CA_OID_ARCS};

const NODE: &str = "spiffe://acme.corp/node/worker-1";

fn td() -> TrustDomain {
    "acme.corp".parse().unwrap()
}

fn node_ext(der: Vec<u8>) -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(NODE_CA_OID_ARCS, der);
    ext.set_criticality(false);
    ext
}

fn good_ext() -> Vec<u8> {
    NodeCaExtension::new(NODE.parse().unwrap()).to_der()
}

/// A node CA that passes every rule: named `spiffe://acme.corp`, pathLen 0,
/// keyCertSign, the extension once, non-critical.
fn node_ca_params() -> CertificateParams {
    let mut p = ca();
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.custom_extensions = vec![node_ext(good_ext())];
    p
}

#[test]
fn a_good_node_ca_names_its_node() {
    let cert = der(&node_ca_params());
    let node_ca = check_intermediate(&cert, &td()).unwrap();
    assert_eq!(node_ca.binding, CaBinding::Named);
    assert_eq!(node_ca.node, Some(NODE.parse().unwrap()));
    assert_eq!(check_node_ca(&cert, &td()), Ok(NODE.parse().unwrap()));
    check_signing_cert(&cert).unwrap();
    assert_eq!(has_node_ca_extension(&cert), Ok(true));
    assert_eq!(has_node_ca_extension(&der(&ca())), Ok(false));
}

#[test]
fn a_plain_intermediate_is_no_node_ca() {
    let mut p = ca();
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let cert = der(&p);
    assert_eq!(check_intermediate(&cert, &td()).unwrap().node, None);
    assert_eq!(check_node_ca(&cert, &td()), Err(ProfileError::NotNodeCa));
}

#[test]
fn hostile_node_cas_are_refused() {
    type Mutate = Box<dyn Fn(&mut CertificateParams)>;
    let ext_of = |node: &str| {
        let node: NodeId = node.parse().unwrap();
        NodeCaExtension::new(node).to_der()
    };
    let foreign = ext_of("spiffe://evil.example/node/worker-1");
    // `NodeCa` with a node name holding a space: what an encoder other than ours wrote.
    let bad_name = {
        let node = b"spiffe://acme.corp/node/a b";
        let mut der = vec![0x30, (3 + 2 + node.len()) as u8, 0x02, 0x01, 0x01, 0x0c];
        der.push(node.len() as u8);
        der.extend_from_slice(node);
        der
    };
    type Want = fn(&ProfileError) -> bool;
    let cases: Vec<(&str, Mutate, Want)> = vec![
        (
            "extension twice",
            Box::new(|p| p.custom_extensions.push(node_ext(good_ext()))),
            |e| matches!(e, ProfileError::DuplicateExtension { oid } if oid == NODE_CA_OID),
        ),
        (
            "malformed DER",
            Box::new(|p| p.custom_extensions = vec![node_ext(vec![0x30, 0x05, 0x02, 0x01])]),
            |e| matches!(e, ProfileError::InvalidNodeCa(NodeCaError::Der(_))),
        ),
        (
            "critical",
            Box::new(|p| {
                let mut ext = node_ext(good_ext());
                ext.set_criticality(true);
                p.custom_extensions = vec![ext];
            }),
            |e| matches!(e, ProfileError::NodeCaCritical),
        ),
        (
            "node name invalid",
            Box::new(move |p| p.custom_extensions = vec![node_ext(bad_name.clone())]),
            |e| {
                matches!(
                    e,
                    ProfileError::InvalidNodeCa(NodeCaError::InvalidNodeId(_))
                )
            },
        ),
        (
            "node of another trust domain",
            Box::new(move |p| p.custom_extensions = vec![node_ext(foreign.clone())]),
            |e| matches!(e, ProfileError::NodeCaForeignNode { .. }),
        ),
        (
            "no SPIFFE ID on the CA",
            Box::new(|p| p.subject_alt_names.clear()),
            |e| matches!(e, ProfileError::NodeCaUnnamed { .. }),
        ),
        (
            "pathLen missing",
            Box::new(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)),
            |e| matches!(e, ProfileError::NodeCaPathLen { found: None }),
        ),
        (
            "pathLen 1",
            Box::new(|p| p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1))),
            |e| matches!(e, ProfileError::NodeCaPathLen { found: Some(1) }),
        ),
        (
            "CA flag missing",
            Box::new(|p| p.is_ca = IsCa::ExplicitNoCa),
            |e| matches!(e, ProfileError::SigningCertNotCa),
        ),
        (
            "no BasicConstraints",
            Box::new(|p| p.is_ca = IsCa::NoCa),
            |e| matches!(e, ProfileError::MissingBasicConstraints),
        ),
        (
            "no keyCertSign",
            Box::new(|p| p.key_usages = vec![KeyUsagePurpose::CrlSign]),
            |e| matches!(e, ProfileError::MissingKeyCertSign),
        ),
    ];
    for (case, mutate, want) in cases {
        let mut p = node_ca_params();
        mutate(&mut p);
        let cert = der(&p);
        let err = check_intermediate(&cert, &td()).unwrap_err();
        assert!(want(&err), "case {case}: check_intermediate gave {err:?}");
        assert!(
            check_node_ca(&cert, &td()).is_err(),
            "case {case}: check_node_ca accepted it"
        );
    }
}

#[test]
fn a_leaf_never_carries_the_node_ca_extension() {
    let mut p = leaf("spiffe://acme.corp/client/a");
    p.custom_extensions = vec![node_ext(good_ext())];
    assert_eq!(
        check_leaf_svid(&der(&p)).unwrap_err(),
        ProfileError::NodeCaExtensionOnLeaf
    );
}

#[test]
fn node_and_admin_leaves_have_a_kind_but_no_workload_id() {
    for (id, kind) in [
        (NODE, IdKind::Node),
        ("spiffe://acme.corp/admin/alice", IdKind::Admin),
    ] {
        let svid = check_leaf_svid(&der(&leaf(id))).unwrap();
        assert_eq!(svid.kind, Some(kind), "{id}");
        assert_eq!(svid.tessera_id, None, "{id}");
    }
    let svid = check_leaf_svid(&der(&leaf("spiffe://acme.corp/mcp/github"))).unwrap();
    assert_eq!(svid.kind, Some(IdKind::Server));
    let svid = check_leaf_svid(&der(&leaf("spiffe://acme.corp/ns/x"))).unwrap();
    assert_eq!(svid.kind, None);
}

/// The issuance split: a node CA signs clients and tasks, nothing else; a plain
/// intermediate is not restricted by it.
#[test]
fn a_node_ca_may_issue_clients_and_tasks_only() {
    let node_ca = check_intermediate(&der(&node_ca_params()), &td()).unwrap();
    let plain = check_intermediate(&der(&ca()), &td()).unwrap();
    for kind in [Some(IdKind::Client), Some(IdKind::Task)] {
        node_ca.check_may_issue(kind).unwrap();
        plain.check_may_issue(kind).unwrap();
    }
    for kind in [
        Some(IdKind::Server),
        Some(IdKind::Node),
        Some(IdKind::Admin),
        None,
    ] {
        assert_eq!(
            node_ca.check_may_issue(kind),
            Err(ProfileError::NodeCaMayNotIssue {
                node: NODE.into(),
                kind
            })
        );
        plain.check_may_issue(kind).unwrap();
    }
    let err = node_ca.check_may_issue(Some(IdKind::Server)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "node CA of \"spiffe://acme.corp/node/worker-1\" may not issue a server SVID"
    );
}
