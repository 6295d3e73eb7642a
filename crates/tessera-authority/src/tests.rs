//! Authority behaviour: issuance profile, persistence, rotation, upstream mode.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use tessera_identity::{ClientId, Scope, ServerId, TaskClaims, TaskId, TrustDomain};
use time::OffsetDateTime;

use crate::{Authority, AuthorityConfig, AuthorityError, CaMode, RotationPolicy, SvidSpec};

fn td() -> TrustDomain {
    "acme.corp".parse().unwrap()
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

fn verifies_under_bundle(leaf: &[u8], bundle: &[Vec<u8>]) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, leaf) = X509Certificate::from_der(leaf).unwrap();
    bundle.iter().any(|ca| {
        let (_, ca) = X509Certificate::from_der(ca).unwrap();
        leaf.verify_signature(Some(ca.public_key())).is_ok()
    })
}

#[test]
fn client_svid_is_accepted_by_the_spiffe_crate_and_chains_to_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let auth = Authority::open(config(dir.path())).unwrap();
    let svid = auth
        .issue(&spec("spiffe://acme.corp/client/code-reviewer"))
        .unwrap();
    let parsed =
        spiffe::X509Svid::parse_from_der(&svid.chain_concat(), &svid.key_pkcs8_der).unwrap();
    assert_eq!(
        parsed.spiffe_id().to_string(),
        "spiffe://acme.corp/client/code-reviewer"
    );
    assert!(verifies_under_bundle(
        &svid.chain_der[0],
        &auth.bundle().certs
    ));
    let leaf = tessera_identity::check_leaf_svid(&svid.chain_der[0]).unwrap();
    assert_eq!(leaf.serial_hex, svid.serial_hex);
    assert!(svid.not_after_unix - svid.not_before_unix <= 3600 + 10);
    assert!(
        !format!("{svid:?}").contains(&format!("{:?}", &svid.key_pkcs8_der[..8])),
        "Debug must not print the key"
    );
}

/// The key handed out with an SVID is the one its certificate names: a signature made
/// with the PKCS#8 key verifies under the certificate's public key (and under no other
/// SVID's). Each SVID gets a key of its own.
#[test]
fn the_svid_key_signs_what_its_certificate_verifies() {
    use ring::signature::{
        ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
    };
    use x509_parser::prelude::{FromDer, X509Certificate};

    let dir = tempfile::tempdir().unwrap();
    let auth = Authority::open(config(dir.path())).unwrap();
    let svids: Vec<_> = (0..20)
        .map(|_| auth.issue(&spec("spiffe://acme.corp/client/a")).unwrap())
        .collect();
    let public_key = |svid: &crate::IssuedSvid| {
        let (_, cert) = X509Certificate::from_der(&svid.chain_der[0]).unwrap();
        cert.public_key().subject_public_key.data.to_vec()
    };
    let rng = ring::rand::SystemRandom::new();
    for (i, svid) in svids.iter().enumerate() {
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &svid.key_pkcs8_der, &rng)
                .unwrap();
        let signature = key.sign(&rng, b"tessera").unwrap();
        for (j, other) in svids.iter().enumerate() {
            let verified = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public_key(other))
                .verify(b"tessera", signature.as_ref())
                .is_ok();
            assert_eq!(verified, i == j, "key of SVID {i} against certificate {j}");
        }
    }
}

#[test]
fn task_svid_carries_claims_that_decode() {
    let dir = tempfile::tempdir().unwrap();
    let auth = Authority::open(config(dir.path())).unwrap();
    let client: ClientId = "spiffe://acme.corp/client/code-reviewer".parse().unwrap();
    let task = TaskId::new();
    let task_id = client.task(task);
    let deadline = OffsetDateTime::now_utc().unix_timestamp() + 120;
    let claims = TaskClaims {
        version: 1,
        task_id: task,
        client_id: client.clone(),
        subject: "alice@acme.corp".into(),
        purpose: "review PR 42".into(),
        server: "spiffe://acme.corp/mcp/github".parse::<ServerId>().unwrap(),
        scopes: vec!["github/tool/get_pull_request".parse::<Scope>().unwrap()],
        consent_id: "c-1".into(),
        deadline_unix: deadline,
    };
    let id = task_id.to_string();
    let svid = auth
        .issue(&SvidSpec {
            spiffe_id: &id,
            ttl: Duration::from_secs(300),
            not_after_cap: Some(deadline),
            claims: Some(&claims),
        })
        .unwrap();
    assert!(
        svid.not_after_unix <= deadline,
        "a task SVID never outlives its task"
    );
    let leaf = tessera_identity::check_leaf_svid(&svid.chain_der[0]).unwrap();
    assert_eq!(leaf.claims.as_ref(), Some(&claims));
    spiffe::X509Svid::parse_from_der(&svid.chain_concat(), &svid.key_pkcs8_der).unwrap();
}

#[test]
fn refuses_ids_outside_the_trust_domain_or_without_path() {
    let dir = tempfile::tempdir().unwrap();
    let auth = Authority::open(config(dir.path())).unwrap();
    for bad in [
        "spiffe://evil.corp/client/x",
        "spiffe://acme.corp",
        "not a uri",
    ] {
        let err = auth.issue(&spec(bad)).unwrap_err();
        assert!(
            matches!(err, AuthorityError::InvalidRequest(_)),
            "{bad}: {err}"
        );
    }
    let past = OffsetDateTime::now_utc().unix_timestamp() - 1;
    let err = auth
        .issue(&SvidSpec {
            not_after_cap: Some(past),
            ..spec("spiffe://acme.corp/client/x")
        })
        .unwrap_err();
    assert!(matches!(err, AuthorityError::InvalidRequest(_)), "{err}");
}

#[test]
fn ca_survives_reopen_and_key_file_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let first = Authority::open(config(dir.path())).unwrap().bundle();
    let second = Authority::open(config(dir.path())).unwrap().bundle();
    assert_eq!(first.certs, second.certs);
    let ca_dir = dir.path().join("ca");
    assert_eq!(
        std::fs::metadata(&ca_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let keys: Vec<_> = std::fs::read_dir(&ca_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".key.pem"))
        .collect();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        std::fs::metadata(&keys[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Loosened key permissions are refused, not silently used.
    std::fs::set_permissions(&keys[0], std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Authority::open(config(dir.path())).unwrap_err();
    assert!(
        matches!(err, AuthorityError::InsecureKeyFile { .. }),
        "{err}"
    );
}

#[test]
fn corrupt_state_is_an_error_not_a_new_ca() {
    let dir = tempfile::tempdir().unwrap();
    Authority::open(config(dir.path())).unwrap();
    std::fs::write(dir.path().join("ca/state.json"), b"{not json").unwrap();
    let err = Authority::open(config(dir.path())).unwrap_err();
    assert!(matches!(err, AuthorityError::CorruptState { .. }), "{err}");
}

#[test]
fn rotation_overlaps_old_and_new_until_the_old_ones_svids_expire() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = OffsetDateTime::now_utc();
    let auth = Authority::open_at(config(dir.path()), t0).unwrap();
    let old_ca = auth.bundle().certs[0].clone();
    let old_svid = auth
        .issue_at(&spec("spiffe://acme.corp/client/a"), t0)
        .unwrap();
    let mut rx = auth.subscribe_bundle();
    rx.borrow_and_update();

    // Before half life nothing happens.
    assert!(!auth.tick(t0 + time::Duration::days(10)).unwrap());

    // Half life: the next CA is published but does not sign yet.
    let t1 = t0 + time::Duration::days(15) + time::Duration::seconds(1);
    assert!(auth.tick(t1).unwrap());
    assert!(rx.has_changed().unwrap());
    assert_eq!(auth.bundle().certs.len(), 2);
    let svid = auth
        .issue_at(&spec("spiffe://acme.corp/client/a"), t1)
        .unwrap();
    assert!(verifies_under_bundle(
        &svid.chain_der[0],
        std::slice::from_ref(&old_ca)
    ));

    // Two thirds: the new CA signs; the old one stays for max_svid_ttl.
    let t2 = t0 + time::Duration::days(20) + time::Duration::seconds(1);
    assert!(auth.tick(t2).unwrap());
    let bundle = auth.bundle();
    assert_eq!(bundle.certs.len(), 2);
    assert!(bundle.certs.contains(&old_ca));
    let new_svid = auth
        .issue_at(&spec("spiffe://acme.corp/client/a"), t2)
        .unwrap();
    assert!(!verifies_under_bundle(
        &new_svid.chain_der[0],
        std::slice::from_ref(&old_ca)
    ));
    assert!(verifies_under_bundle(&new_svid.chain_der[0], &bundle.certs));
    assert!(verifies_under_bundle(&old_svid.chain_der[0], &bundle.certs));

    // The rotation survives a restart.
    drop(auth);
    let auth = Authority::open_at(config(dir.path()), t2).unwrap();
    assert_eq!(auth.bundle().certs.len(), 2);

    // After the old CA's last SVID expired, it leaves the bundle and its key is destroyed.
    let t3 = t2 + time::Duration::hours(1) + time::Duration::seconds(1);
    assert!(auth.tick(t3).unwrap());
    assert_eq!(auth.bundle().certs.len(), 1);
    assert!(!auth.bundle().certs.contains(&old_ca));
    let keys = std::fs::read_dir(dir.path().join("ca"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .to_string_lossy()
                .ends_with(".key.pem")
        })
        .count();
    assert_eq!(keys, 1);
}

#[test]
fn svid_never_outlives_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.rotation.ca_ttl = Duration::from_secs(600);
    let auth = Authority::open(cfg).unwrap();
    let svid = auth
        .issue(&SvidSpec {
            ttl: Duration::from_secs(86400),
            ..spec("spiffe://acme.corp/client/a")
        })
        .unwrap();
    assert!(svid.not_after_unix <= auth.active_ca_not_after());
}

/// Builds an upstream root and an intermediate signed by it (with `uris` as its URI
/// SANs), in PEM files.
fn upstream_files(
    dir: &std::path::Path,
    uris: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };
    let root_key = KeyPair::generate().unwrap();
    let mut root = CertificateParams::default();
    root.distinguished_name
        .push(DnType::CommonName, "Upstream Root");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root_cert = root.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root, root_key);

    let int_key = KeyPair::generate().unwrap();
    let mut int = CertificateParams::default();
    int.distinguished_name
        .push(DnType::CommonName, "Tessera Intermediate");
    int.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    int.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    let int_cert = int.signed_by(&int_key, &root_issuer).unwrap();

    let cert = dir.join("int.pem");
    let key = dir.join("int.key");
    let bundle = dir.join("root.pem");
    std::fs::write(&cert, int_cert.pem()).unwrap();
    std::fs::write(&key, int_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&bundle, root_cert.pem()).unwrap();
    (cert, key, bundle)
}

#[test]
fn upstream_intermediate_signs_and_chain_includes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, bundle) = upstream_files(dir.path(), &[]);
    let mut cfg = config(dir.path());
    cfg.mode = CaMode::Upstream {
        cert_chain: cert,
        key,
        bundle,
    };
    let auth = Authority::open(cfg).unwrap();
    let svid = auth.issue(&spec("spiffe://acme.corp/client/a")).unwrap();
    assert_eq!(svid.chain_der.len(), 2, "leaf + intermediate");
    assert_eq!(auth.bundle().certs.len(), 1, "bundle = upstream root");
    assert!(verifies_under_bundle(
        &svid.chain_der[1],
        &auth.bundle().certs
    ));
    assert!(verifies_under_bundle(
        &svid.chain_der[0],
        &svid.chain_der[1..]
    ));
    spiffe::X509Svid::parse_from_der(&svid.chain_concat(), &svid.key_pkcs8_der).unwrap();
    assert!(
        auth.prepare_next(OffsetDateTime::now_utc()).is_err(),
        "no self-rotation upstream"
    );
}

#[test]
fn upstream_with_wrong_key_or_foreign_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, bundle) = upstream_files(dir.path(), &[]);
    let other = tempfile::tempdir().unwrap();
    let (_, other_key, other_bundle) = upstream_files(other.path(), &[]);

    let mut cfg = config(dir.path());
    cfg.mode = CaMode::Upstream {
        cert_chain: cert.clone(),
        key: other_key,
        bundle: bundle.clone(),
    };
    assert!(matches!(
        Authority::open(cfg).unwrap_err(),
        AuthorityError::UpstreamKeyMismatch
    ));

    let mut cfg = config(dir.path());
    cfg.mode = CaMode::Upstream {
        cert_chain: cert,
        key,
        bundle: other_bundle,
    };
    assert!(matches!(
        Authority::open(cfg).unwrap_err(),
        AuthorityError::UpstreamCa(_)
    ));
}

/// Issue 13: an upstream intermediate naming another trust domain would be refused by
/// every verifier; the agent refuses it at start, and accepts its own domain's name.
#[test]
fn upstream_intermediate_naming_another_trust_domain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, bundle) = upstream_files(dir.path(), &["spiffe://evil.example"]);
    let mut cfg = config(dir.path());
    cfg.mode = CaMode::Upstream {
        cert_chain: cert,
        key,
        bundle,
    };
    let err = Authority::open(cfg).unwrap_err();
    assert!(
        matches!(&err, AuthorityError::UpstreamCa(m) if m.contains("evil.example")),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (cert, key, bundle) = upstream_files(dir.path(), &["spiffe://acme.corp"]);
    let mut cfg = config(dir.path());
    cfg.mode = CaMode::Upstream {
        cert_chain: cert,
        key,
        bundle,
    };
    let auth = Authority::open(cfg).unwrap();
    let svid = auth.issue(&spec("spiffe://acme.corp/client/a")).unwrap();
    let td = td();
    assert_eq!(
        tessera_identity::check_intermediate(&svid.chain_der[1], &td).map(|ca| ca.binding),
        Ok(tessera_identity::CaBinding::Named)
    );
}
