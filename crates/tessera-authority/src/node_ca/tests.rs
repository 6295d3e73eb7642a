//! Cluster mode: the root signs node CAs; a node's authority issues clients and tasks
//! with its node CA and nothing else; the root certifies the rest for a public key.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use tessera_identity::{
    ClientId, IdKind, NodeId, Scope, ServerId, TaskClaims, TaskId, TrustDomain, ca_path_len,
    check_leaf_svid, check_node_ca,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{
    Authority, AuthorityConfig, AuthorityError, CaMode, ClusterPolicy, IssuedNodeCa, NodeCaKey,
    RotationPolicy, SvidSpec,
};

const NODE: &str = "spiffe://acme.corp/node/worker-1";
const CLIENT: &str = "spiffe://acme.corp/client/code-reviewer";
const SERVER: &str = "spiffe://acme.corp/mcp/github";

fn td() -> TrustDomain {
    "acme.corp".parse().unwrap()
}

fn node() -> NodeId {
    NODE.parse().unwrap()
}

fn config(dir: &std::path::Path) -> AuthorityConfig {
    AuthorityConfig {
        trust_domain: td(),
        dir: dir.join("ca"),
        mode: CaMode::SelfSigned,
        rotation: RotationPolicy {
            ca_ttl: Duration::from_secs(30 * 24 * 3600),
            max_svid_ttl: Duration::from_secs(3600),
        },
    }
}

fn spec(id: &str) -> SvidSpec<'_> {
    SvidSpec {
        spiffe_id: id,
        ttl: Duration::from_secs(3600),
        not_after_cap: None,
        claims: None,
    }
}

/// Whether `child` carries a signature `issuer`'s key made.
fn signed_by(child: &[u8], issuer: &[u8]) -> bool {
    let (_, child) = X509Certificate::from_der(child).unwrap();
    let (_, issuer) = X509Certificate::from_der(issuer).unwrap();
    child.verify_signature(Some(issuer.public_key())).is_ok()
}

/// A cluster root, and a node's authority from the node CA it signed for worker-1.
fn cluster(dir: &std::path::Path) -> (Authority, Authority, IssuedNodeCa) {
    let root = Authority::open_cluster(config(dir), ClusterPolicy::default()).unwrap();
    let key = NodeCaKey::generate().unwrap();
    let issued = root.sign_node_ca(&node(), &key.public_key_der()).unwrap();
    let node_auth = Authority::from_node_ca(
        td(),
        issued.chain_der.clone(),
        key,
        root.bundle().certs.clone(),
    )
    .unwrap();
    (root, node_auth, issued)
}

fn task_claims() -> (String, TaskClaims) {
    let client: ClientId = CLIENT.parse().unwrap();
    let task = TaskId::new();
    let claims = TaskClaims {
        version: 1,
        task_id: task,
        client_id: client.clone(),
        subject: "alice@acme.corp".into(),
        purpose: "review PR 42".into(),
        server: SERVER.parse::<ServerId>().unwrap(),
        scopes: vec!["github/tool/get_pull_request".parse::<Scope>().unwrap()],
        consent_id: "c-1".into(),
        deadline_unix: OffsetDateTime::now_utc().unix_timestamp() + 600,
    };
    (client.task(task).to_string(), claims)
}

#[test]
fn a_cluster_root_has_path_len_1_and_a_standalone_one_keeps_0() {
    let dir = tempfile::tempdir().unwrap();
    let root = Authority::open_cluster(config(dir.path()), ClusterPolicy::default()).unwrap();
    assert_eq!(ca_path_len(&root.bundle().certs[0]).unwrap(), Some(1));
    // Reopened, it is the same root.
    let again = Authority::open_cluster(config(dir.path()), ClusterPolicy::default()).unwrap();
    assert_eq!(again.bundle().certs, root.bundle().certs);

    let dir = tempfile::tempdir().unwrap();
    let standalone = Authority::open(config(dir.path())).unwrap();
    assert_eq!(ca_path_len(&standalone.bundle().certs[0]).unwrap(), Some(0));
    // A standalone agent's directory is no cluster root.
    let err = Authority::open_cluster(config(dir.path()), ClusterPolicy::default()).unwrap_err();
    assert!(
        matches!(
            err,
            AuthorityError::RootPathLen {
                expected: 1,
                found: Some(0)
            }
        ),
        "{err}"
    );
}

#[test]
fn a_node_ca_names_its_node_lives_24h_and_renews_at_half_life() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _, issued) = cluster(dir.path());
    assert_eq!(issued.chain_der.len(), 1, "a self-signed root adds nothing");
    assert_eq!(check_node_ca(&issued.chain_der[0], &td()), Ok(node()));
    assert_eq!(ca_path_len(&issued.chain_der[0]).unwrap(), Some(0));
    assert!(signed_by(&issued.chain_der[0], &root.bundle().certs[0]));
    let life = issued.not_after_unix - issued.not_before_unix;
    assert!((24 * 3600..=24 * 3600 + 10).contains(&life), "{life}");
    assert_eq!(issued.renew_at_unix(), issued.not_before_unix + life / 2);
    assert_eq!(issued.serial_hex.len(), 32);
}

#[test]
fn a_node_ca_never_outlives_its_root_and_its_ttl_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.rotation.ca_ttl = Duration::from_secs(3600);
    let root = Authority::open_cluster(cfg, ClusterPolicy::default()).unwrap();
    let key = NodeCaKey::generate().unwrap();
    let issued = root.sign_node_ca(&node(), &key.public_key_der()).unwrap();
    assert!(issued.not_after_unix <= root.active_ca_not_after());

    for ttl in [Duration::from_secs(60), Duration::from_secs(31 * 24 * 3600)] {
        let dir = tempfile::tempdir().unwrap();
        let err = Authority::open_cluster(config(dir.path()), ClusterPolicy { node_ca_ttl: ttl })
            .unwrap_err();
        assert!(matches!(err, AuthorityError::InvalidRequest(_)), "{err}");
    }
}

/// The issue's chain: leaf, node CA; the root in the bundle. Checked link by link, by
/// our profile checks and by the `spiffe` crate, as a client would.
#[test]
fn a_nodes_authority_issues_clients_and_tasks_through_its_node_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (root, node_auth, issued) = cluster(dir.path());
    assert_eq!(node_auth.node(), Some(&node()));
    assert_eq!(root.node(), None);
    assert_eq!(node_auth.bundle().certs, root.bundle().certs);

    let client = node_auth.issue(&spec(CLIENT)).unwrap();
    let (task_id, claims) = task_claims();
    let task = node_auth
        .issue(&SvidSpec {
            spiffe_id: &task_id,
            ttl: Duration::from_secs(300),
            not_after_cap: Some(claims.deadline_unix),
            claims: Some(&claims),
        })
        .unwrap();
    for svid in [&client, &task] {
        assert_eq!(svid.issuer_node, Some(node()));
        assert_eq!(svid.chain_der.len(), 2, "leaf, node CA");
        assert_eq!(svid.chain_der[1], issued.chain_der[0]);
        assert!(signed_by(&svid.chain_der[0], &svid.chain_der[1]));
        assert!(!signed_by(&svid.chain_der[0], &root.bundle().certs[0]));
        assert!(svid.not_after_unix <= issued.not_after_unix);
        let parsed =
            spiffe::X509Svid::parse_from_der(&svid.chain_concat(), &svid.key_pkcs8_der).unwrap();
        assert_eq!(parsed.spiffe_id().to_string(), svid.spiffe_id);
        assert_eq!(parsed.cert_chain().len(), 2);
    }
    assert_eq!(
        check_leaf_svid(&task.chain_der[0]).unwrap().claims,
        Some(claims)
    );
    let bundle = spiffe::X509Bundle::parse_from_der(
        spiffe::TrustDomain::new("acme.corp").unwrap(),
        &node_auth.bundle().concat_der(),
    )
    .unwrap();
    assert_eq!(bundle.authorities().len(), 1);
    assert!(signed_by(
        &issued.chain_der[0],
        bundle.authorities()[0].as_ref()
    ));
    // Root rotation and the rest are the server's.
    assert!(!node_auth.tick(OffsetDateTime::now_utc()).unwrap());
    assert!(node_auth.prepare_next(OffsetDateTime::now_utc()).is_err());
}

#[test]
fn a_nodes_authority_refuses_server_node_admin_and_other_identities() {
    let dir = tempfile::tempdir().unwrap();
    let (_, node_auth, _) = cluster(dir.path());
    let foreign_key = NodeCaKey::generate().unwrap().public_key_der();
    for (id, kind) in [
        (SERVER, Some(IdKind::Server)),
        ("spiffe://acme.corp/node/worker-2", Some(IdKind::Node)),
        (NODE, Some(IdKind::Node)),
        ("spiffe://acme.corp/admin/alice", Some(IdKind::Admin)),
        ("spiffe://acme.corp/ns/default/sa/web", None),
    ] {
        let err = node_auth.issue(&spec(id)).unwrap_err();
        assert!(
            matches!(&err, AuthorityError::NodeCaMayNotIssue { node: n, spiffe_id, kind: k }
                if *n == node() && spiffe_id == id && *k == kind),
            "{id}: {err}"
        );
        assert!(
            matches!(
                node_auth.issue_for_key(&spec(id), &foreign_key),
                Err(AuthorityError::NodeCaMayNotIssue { .. } | AuthorityError::InvalidRequest(_))
            ),
            "{id}"
        );
    }
    let err = node_auth
        .sign_node_ca(
            &"spiffe://acme.corp/node/worker-2".parse().unwrap(),
            &foreign_key,
        )
        .unwrap_err();
    assert!(matches!(err, AuthorityError::NotClusterRoot(_)), "{err}");
}

/// What a node CA may not sign, the root signs for the attested node's public key.
#[test]
fn the_root_certifies_server_node_and_admin_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _, _) = cluster(dir.path());
    let key = NodeCaKey::generate().unwrap();
    for (id, kind) in [
        (SERVER, IdKind::Server),
        (NODE, IdKind::Node),
        ("spiffe://acme.corp/admin/alice", IdKind::Admin),
    ] {
        let signed = root
            .issue_for_key(&spec(id), &key.public_key_der())
            .unwrap();
        assert_eq!(signed.issuer_node, None);
        assert_eq!(signed.chain_der.len(), 1);
        let leaf = check_leaf_svid(&signed.chain_der[0]).unwrap();
        assert_eq!(leaf.kind, Some(kind));
        assert_eq!(leaf.serial_hex, signed.serial_hex);
        assert!(signed_by(&signed.chain_der[0], &root.bundle().certs[0]));
        let (_, cert) = X509Certificate::from_der(&signed.chain_der[0]).unwrap();
        assert_eq!(cert.public_key().raw, key.public_key_der().as_slice());
    }
    // Only Tessera shapes, only P-256 keys.
    let err = root
        .issue_for_key(&spec("spiffe://acme.corp/ns/x"), &key.public_key_der())
        .unwrap_err();
    assert!(matches!(err, AuthorityError::InvalidRequest(_)), "{err}");
    let err = root.issue_for_key(&spec(SERVER), b"not a key").unwrap_err();
    assert!(
        matches!(err, AuthorityError::UnsupportedPublicKey(_)),
        "{err}"
    );
}

#[test]
fn only_a_cluster_root_signs_node_cas() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = Authority::open(config(dir.path())).unwrap();
    let key = NodeCaKey::generate().unwrap();
    let err = standalone
        .sign_node_ca(&node(), &key.public_key_der())
        .unwrap_err();
    assert!(matches!(err, AuthorityError::NotClusterRoot(_)), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let root = Authority::open_cluster(config(dir.path()), ClusterPolicy::default()).unwrap();
    let err = root
        .sign_node_ca(
            &"spiffe://evil.example/node/worker-1".parse().unwrap(),
            &key.public_key_der(),
        )
        .unwrap_err();
    assert!(matches!(err, AuthorityError::InvalidRequest(_)), "{err}");
}

#[test]
fn a_node_ca_that_does_not_fit_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _, _) = cluster(dir.path());
    let bundle = root.bundle().certs.clone();
    let key = NodeCaKey::generate().unwrap();
    let issued = root.sign_node_ca(&node(), &key.public_key_der()).unwrap();

    let other_key = NodeCaKey::generate().unwrap();
    let err = Authority::from_node_ca(td(), issued.chain_der.clone(), other_key, bundle.clone())
        .unwrap_err();
    assert!(matches!(err, AuthorityError::NodeCaKeyMismatch), "{err}");

    let elsewhere = tempfile::tempdir().unwrap();
    let other_root =
        Authority::open_cluster(config(elsewhere.path()), ClusterPolicy::default()).unwrap();
    let key = NodeCaKey::from_pkcs8_der(&key.to_pkcs8_der()).unwrap();
    let err = Authority::from_node_ca(
        td(),
        issued.chain_der.clone(),
        key,
        other_root.bundle().certs.clone(),
    )
    .unwrap_err();
    assert!(matches!(err, AuthorityError::CaChain(_)), "{err}");

    // The root itself is no node CA.
    let err = Authority::from_node_ca(
        td(),
        bundle.clone(),
        NodeCaKey::generate().unwrap(),
        bundle.clone(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            AuthorityError::InvalidNodeCa(tessera_identity::ProfileError::NotNodeCa)
        ),
        "{err}"
    );

    let err = Authority::from_node_ca(
        "other.corp".parse().unwrap(),
        issued.chain_der.clone(),
        NodeCaKey::generate().unwrap(),
        bundle.clone(),
    )
    .unwrap_err();
    assert!(matches!(err, AuthorityError::InvalidNodeCa(_)), "{err}");

    let key = NodeCaKey::generate().unwrap();
    let issued = root.sign_node_ca(&node(), &key.public_key_der()).unwrap();
    let later = OffsetDateTime::now_utc() + time::Duration::days(2);
    let err = Authority::from_node_ca_at(td(), issued.chain_der, key, bundle, later).unwrap_err();
    assert!(matches!(err, AuthorityError::CaExpired { .. }), "{err}");
}

#[test]
fn a_renewed_node_ca_replaces_the_old_one_for_the_same_node_only() {
    let dir = tempfile::tempdir().unwrap();
    let (root, node_auth, first) = cluster(dir.path());
    let bundle = root.bundle().certs.clone();
    let key = NodeCaKey::generate().unwrap();
    let second = root.sign_node_ca(&node(), &key.public_key_der()).unwrap();
    node_auth
        .renew_node_ca(second.chain_der.clone(), key, bundle.clone())
        .unwrap();
    let svid = node_auth.issue(&spec(CLIENT)).unwrap();
    assert_eq!(svid.chain_der[1], second.chain_der[0]);
    assert_ne!(svid.chain_der[1], first.chain_der[0]);

    let key = NodeCaKey::generate().unwrap();
    let other = root
        .sign_node_ca(
            &"spiffe://acme.corp/node/worker-2".parse().unwrap(),
            &key.public_key_der(),
        )
        .unwrap();
    let err = node_auth
        .renew_node_ca(other.chain_der, key, bundle.clone())
        .unwrap_err();
    assert!(matches!(err, AuthorityError::NodeMismatch { .. }), "{err}");
    let key = NodeCaKey::generate().unwrap();
    let err = root
        .renew_node_ca(second.chain_der.clone(), key, bundle)
        .unwrap_err();
    assert!(matches!(err, AuthorityError::InvalidRequest(_)), "{err}");
}

/// A cluster root rotates like a standalone one, keeps pathLen 1, and keeps the old root
/// in the bundle as long as a node CA it signed may live.
#[test]
fn a_cluster_root_rotates_with_path_len_1_and_covers_its_node_cas() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = OffsetDateTime::now_utc();
    let root =
        Authority::open_cluster_at(config(dir.path()), ClusterPolicy::default(), t0).unwrap();
    let old = root.bundle().certs[0].clone();
    let t1 = t0 + time::Duration::days(16);
    assert!(root.tick(t1).unwrap());
    let t2 = t0 + time::Duration::days(21);
    assert!(root.tick(t2).unwrap());
    let bundle = root.bundle();
    assert_eq!(bundle.certs.len(), 2);
    for cert in &bundle.certs {
        assert_eq!(ca_path_len(cert).unwrap(), Some(1));
    }
    // max_svid_ttl is 1h, the node CA TTL 24h: the old root stays for the latter.
    assert!(!root.tick(t2 + time::Duration::hours(2)).unwrap());
    assert!(root.bundle().certs.contains(&old));
    assert!(root.tick(t2 + time::Duration::hours(25)).unwrap());
    assert!(!root.bundle().certs.contains(&old));
    // Restarted mid-way, it is still a cluster root.
    drop(root);
    Authority::open_cluster_at(config(dir.path()), ClusterPolicy::default(), t2).unwrap();
}

/// Upstream mode in a cluster: root → upstream intermediate → node CA → leaf. The
/// intermediate must allow a CA below it, and so must the root.
#[test]
fn upstream_cluster_mode_checks_path_lengths_and_chains_three_levels() {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };
    let files = |dir: &std::path::Path, root_len: Option<u8>, int_len: u8| {
        let root_key = KeyPair::generate().unwrap();
        let mut root = CertificateParams::default();
        root.distinguished_name
            .push(DnType::CommonName, "Upstream Root");
        root.is_ca = IsCa::Ca(root_len.map_or(BasicConstraints::Unconstrained, |n| {
            BasicConstraints::Constrained(n)
        }));
        root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root_cert = root.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root, root_key);
        let int_key = KeyPair::generate().unwrap();
        let mut int = CertificateParams::default();
        int.distinguished_name
            .push(DnType::CommonName, "Tessera Intermediate");
        int.is_ca = IsCa::Ca(BasicConstraints::Constrained(int_len));
        int.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        int.subject_alt_names = vec![SanType::URI("spiffe://acme.corp".try_into().unwrap())];
        let int_cert = int.signed_by(&int_key, &root_issuer).unwrap();
        std::fs::write(dir.join("int.pem"), int_cert.pem()).unwrap();
        std::fs::write(dir.join("int.key"), int_key.serialize_pem()).unwrap();
        std::fs::set_permissions(dir.join("int.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::write(dir.join("root.pem"), root_cert.pem()).unwrap();
        let mut cfg = config(dir);
        cfg.mode = CaMode::Upstream {
            cert_chain: dir.join("int.pem"),
            key: dir.join("int.key"),
            bundle: dir.join("root.pem"),
        };
        cfg
    };

    // The intermediate of a standalone deployment (pathLen 0) cannot sign node CAs.
    let dir = tempfile::tempdir().unwrap();
    let cfg = files(dir.path(), None, 0);
    Authority::open(cfg.clone()).expect("fine standalone");
    let err = Authority::open_cluster(cfg, ClusterPolicy::default()).unwrap_err();
    assert!(
        matches!(
            err,
            AuthorityError::PathLenTooShort {
                path_len: 0,
                needed: 1,
                ..
            }
        ),
        "{err}"
    );
    // Nor under a root that allows one CA only (the intermediate itself).
    let dir = tempfile::tempdir().unwrap();
    let err = Authority::open_cluster(files(dir.path(), Some(1), 1), ClusterPolicy::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            AuthorityError::PathLenTooShort {
                path_len: 1,
                needed: 2,
                ..
            }
        ),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let root =
        Authority::open_cluster(files(dir.path(), Some(2), 1), ClusterPolicy::default()).unwrap();
    let key = NodeCaKey::generate().unwrap();
    let issued = root.sign_node_ca(&node(), &key.public_key_der()).unwrap();
    assert_eq!(issued.chain_der.len(), 2, "node CA, upstream intermediate");
    let bundle = root.bundle().certs.clone();
    let node_auth =
        Authority::from_node_ca(td(), issued.chain_der.clone(), key, bundle.clone()).unwrap();
    let svid = node_auth.issue(&spec(CLIENT)).unwrap();
    assert_eq!(
        svid.chain_der.len(),
        3,
        "leaf, node CA, upstream intermediate"
    );
    assert!(signed_by(&svid.chain_der[0], &svid.chain_der[1]));
    assert!(signed_by(&svid.chain_der[1], &svid.chain_der[2]));
    assert!(signed_by(&svid.chain_der[2], &bundle[0]));
    let parsed =
        spiffe::X509Svid::parse_from_der(&svid.chain_concat(), &svid.key_pkcs8_der).unwrap();
    assert_eq!(parsed.cert_chain().len(), 3);
    // The server's own MCP-server SVIDs still come from the intermediate directly.
    let server = root
        .issue_for_key(
            &spec(SERVER),
            &NodeCaKey::generate().unwrap().public_key_der(),
        )
        .unwrap();
    assert_eq!(server.chain_der.len(), 2);
}
