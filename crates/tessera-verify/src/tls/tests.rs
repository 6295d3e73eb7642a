//! The hostile-certificate table: one case per rule, against the live verifier.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use time::{Duration, OffsetDateTime};

use super::*;
use tessera_testca::rcgen::{BasicConstraints, IsCa};
use tessera_testca::{Ca, Leaf};

use crate::peer::PeerError;
use crate::testutil::{SERVER, TD, claims, task_id_str};
use crate::trust::{TrustMaterial, TrustSource};

struct Fixture {
    ca: Ca,
    foreign: Ca,
    source: TrustSource,
}

fn fixture(extra_bundle: bool) -> Fixture {
    let ca = Ca::root(TD);
    let foreign = Ca::root("evil.example");
    let (chain, key) = ca.leaf(SERVER).mint().into_parts();
    let mut bundles = BTreeMap::new();
    bundles.insert(TD.parse().unwrap(), vec![ca.cert().clone()]);
    if extra_bundle {
        bundles.insert(
            "evil.example".parse().unwrap(),
            vec![foreign.cert().clone()],
        );
    }
    let m = TrustMaterial::new(
        SERVER.parse().unwrap(),
        chain,
        key,
        bundles,
        OffsetDateTime::now_utc().unix_timestamp(),
    )
    .unwrap();
    Fixture {
        ca,
        foreign,
        source: TrustSource::from_static(m),
    }
}

/// A task SVID of trust domain `td` with its claims, signed by `ca`.
fn task_leaf<'a>(ca: &'a Ca, td: &str) -> Leaf<'a> {
    let mut o = ca.leaf(&task_id_str(td));
    o.claims_der = Some(claims(td, &["github/tool/*"], 1_900_000_000).to_der());
    o
}

fn verify(v: &SpiffeClientVerifier, chain: &[CertificateDer<'static>]) -> Result<(), String> {
    v.verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn accepts_good_task_and_client_svids() {
    let f = fixture(false);
    let v = ServerTlsBuilder::new(f.source.clone()).client_verifier();
    let (task, _) = task_leaf(&f.ca, TD).mint().into_parts();
    verify(&v, &task).unwrap();
    let (client, _) =
        f.ca.leaf("spiffe://acme.corp/client/code-reviewer")
            .mint()
            .into_parts();
    verify(&v, &client).unwrap();
    assert!(v.client_auth_mandatory());
}

#[test]
fn refuses_foreign_trust_domain_unless_allowed() {
    let f = fixture(true);
    let (foreign, _) = task_leaf(&f.foreign, "evil.example").mint().into_parts();
    let strict = ServerTlsBuilder::new(f.source.clone()).client_verifier();
    let err = verify(&strict, &foreign).unwrap_err();
    assert!(err.contains("not allowed"), "{err}");
    let allowed = ServerTlsBuilder::new(f.source.clone())
        .allow_trust_domain("evil.example".parse().unwrap())
        .client_verifier();
    verify(&allowed, &foreign).unwrap();
}

#[test]
fn refuses_own_trust_domain_id_signed_by_foreign_ca() {
    let f = fixture(true);
    let (forged, _) = task_leaf(&f.foreign, TD).mint().into_parts();
    let v = ServerTlsBuilder::new(f.source.clone()).client_verifier();
    assert!(verify(&v, &forged).is_err());
}

/// Trust domains under one upstream root: the root is acme.corp's bundle, and the
/// server's own SVID comes through acme.corp's intermediate.
struct SharedRoot {
    root: Ca,
    /// acme.corp's intermediate, named `spiffe://acme.corp`.
    own: Ca,
    /// evil.example's intermediate, signed by the same root.
    evil: Ca,
    /// An intermediate of the root without any SPIFFE ID (a corporate PKI's).
    unnamed: Ca,
    source: TrustSource,
}

fn shared_root() -> SharedRoot {
    let root = Ca::unnamed_root("corporate root");
    let own = root.intermediate(&["spiffe://acme.corp"]);
    let evil = root.intermediate(&["spiffe://evil.example"]);
    let unnamed = root.intermediate(&[]);
    let (chain, key) = own.leaf(SERVER).mint().into_parts();
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
    SharedRoot {
        root,
        own,
        evil,
        unnamed,
        source: TrustSource::from_static(m),
    }
}

/// Issue 13: with a shared upstream root in the bundle, the root's signature on an
/// intermediate says nothing of its trust domain; the intermediate's name does.
#[test]
fn refuses_another_trust_domains_intermediate_under_a_shared_root() {
    let f = shared_root();
    let v = ServerTlsBuilder::new(f.source.clone()).client_verifier();
    verify(&v, &task_leaf(&f.own, TD).mint().chain).expect("own intermediate");
    let forged = task_leaf(&f.evil, TD).mint().chain;
    let err = verify(&v, &forged).unwrap_err();
    assert!(err.contains("IntermediateForeignTrustDomain"), "{err}");
    // Sent along, unused by the path, it is refused all the same.
    let (mut chain, _) = task_leaf(&f.own, TD).mint().into_parts();
    chain.push(f.evil.cert().clone());
    let err = verify(&v, &chain).unwrap_err();
    assert!(err.contains("IntermediateForeignTrustDomain"), "{err}");
    // A leaf signed by the root itself needs no intermediate and still passes.
    verify(&v, &task_leaf(&f.root, TD).mint().chain).expect("signed by the root");
}

#[test]
fn unnamed_intermediates_pass_unless_a_name_is_required() {
    let f = shared_root();
    let lenient = ServerTlsBuilder::new(f.source.clone()).client_verifier();
    let strict = ServerTlsBuilder::new(f.source.clone())
        .require_trust_domain_on_intermediates()
        .client_verifier();
    let via_unnamed = task_leaf(&f.unnamed, TD).mint().chain;
    verify(&lenient, &via_unnamed).expect("an upstream PKI's intermediate");
    let err = verify(&strict, &via_unnamed).unwrap_err();
    assert!(err.contains("UnnamedIntermediate"), "{err}");
    verify(&strict, &task_leaf(&f.own, TD).mint().chain).expect("named intermediate");
    assert!(verify(&strict, &task_leaf(&f.evil, TD).mint().chain).is_err());
}

/// The client side: a runtime pinning `spiffe://acme.corp/mcp/github` refuses that id
/// from evil.example's intermediate under the shared root.
#[test]
fn server_verifier_refuses_another_trust_domains_intermediate() {
    let f = shared_root();
    let expected: ServerId = SERVER.parse().unwrap();
    let check = |v: &ExpectedServerVerifier, chain: &[CertificateDer<'static>]| {
        v.verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from("mcp").unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let v = ExpectedServerVerifier::new(&expected, [f.root.cert().clone()]).unwrap();
    check(&v, &f.own.leaf(SERVER).mint().chain).expect("own intermediate");
    let err = check(&v, &f.evil.leaf(SERVER).mint().chain).unwrap_err();
    assert!(err.contains("IntermediateForeignTrustDomain"), "{err}");
    let via_unnamed = f.unnamed.leaf(SERVER).mint().chain;
    check(&v, &via_unnamed).expect("unnamed allowed by default");
    let strict = ExpectedServerVerifier::new(&expected, [f.root.cert().clone()])
        .unwrap()
        .require_trust_domain_on_intermediates();
    let err = check(&strict, &via_unnamed).unwrap_err();
    assert!(err.contains("UnnamedIntermediate"), "{err}");
}

/// A chain anchors in the bundle of its leaf's trust domain only, even when the
/// verifier allows and holds another trust domain's bundle.
#[test]
fn a_chain_anchors_only_in_its_leafs_trust_domain_bundle() {
    let f = fixture(true);
    let v = ServerTlsBuilder::new(f.source.clone())
        .allow_trust_domain("evil.example".parse().unwrap())
        .client_verifier();
    verify(&v, &task_leaf(&f.foreign, "evil.example").mint().chain).expect("evil.example's own");
    let err = verify(&v, &task_leaf(&f.foreign, TD).mint().chain).unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("unknown issuer"),
        "{err}"
    );
}

#[test]
fn refuses_expired_and_not_yet_valid() {
    let f = fixture(false);
    let v = ServerTlsBuilder::new(f.source.clone()).client_verifier();
    let now = OffsetDateTime::now_utc();
    let mut o = task_leaf(&f.ca, TD);
    o.not_before = now - Duration::hours(2);
    o.not_after = now - Duration::hours(1);
    let err = verify(&v, &o.mint().chain).unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");
    let mut o = task_leaf(&f.ca, TD);
    o.not_before = now + Duration::hours(1);
    o.not_after = now + Duration::hours(2);
    assert!(verify(&v, &o.mint().chain).is_err());
}

#[test]
fn refuses_two_uri_sans() {
    let f = fixture(false);
    let v = ServerTlsBuilder::new(f.source.clone()).client_verifier();
    let mut o = f.ca.leaf("spiffe://acme.corp/client/code-reviewer");
    o.uris.push("spiffe://acme.corp/client/other".into());
    let err = verify(&v, &o.mint().chain).unwrap_err();
    assert!(err.contains("UriSanCount { found: 2 }"), "{err}");
}

#[test]
fn refuses_ca_leaf() {
    let f = fixture(false);
    let v = ServerTlsBuilder::new(f.source.clone()).client_verifier();
    let mut o = f.ca.leaf("spiffe://acme.corp/client/code-reviewer");
    o.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let err = verify(&v, &o.mint().chain).unwrap_err();
    assert!(err.contains("LeafIsCa"), "{err}");
}

#[test]
fn refuses_task_svid_without_claims() {
    let f = fixture(false);
    let v = ServerTlsBuilder::new(f.source.clone()).client_verifier();
    let (chain, _) = f.ca.leaf(&task_id_str(TD)).mint().into_parts();
    let err = verify(&v, &chain).unwrap_err();
    assert!(err.contains("MissingClaims"), "{err}");
}

#[test]
fn refuses_non_tessera_spiffe_id() {
    let f = fixture(false);
    let v = ServerTlsBuilder::new(f.source.clone()).client_verifier();
    let (chain, _) =
        f.ca.leaf("spiffe://acme.corp/ns/default/sa/web")
            .mint()
            .into_parts();
    assert!(verify(&v, &chain).is_err());
}

#[test]
fn refuses_everything_before_material_exists() {
    let (_publisher, source) = TrustSource::channel();
    let f = fixture(false);
    let v = ServerTlsBuilder::new(source).client_verifier();
    assert!(verify(&v, &task_leaf(&f.ca, TD).mint().chain).is_err());
}

#[test]
fn material_refuses_wrong_own_id_and_foreign_chain() {
    let ca = Ca::root(TD);
    let other = Ca::root(TD);
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let bundles = || {
        let mut b = BTreeMap::new();
        b.insert(TD.parse().unwrap(), vec![ca.cert().clone()]);
        b
    };
    let (chain, key) = ca.leaf("spiffe://acme.corp/mcp/other").mint().into_parts();
    let err = TrustMaterial::new(SERVER.parse().unwrap(), chain, key, bundles(), now).unwrap_err();
    assert!(
        matches!(err, crate::trust::TrustError::WrongOwnId { .. }),
        "{err}"
    );
    let (chain, key) = other.leaf(SERVER).mint().into_parts();
    let err = TrustMaterial::new(SERVER.parse().unwrap(), chain, key, bundles(), now).unwrap_err();
    assert!(
        matches!(err, crate::trust::TrustError::OwnChain(_)),
        "{err}"
    );
    let (chain, _) = ca.leaf(SERVER).mint().into_parts();
    let (_, key) = ca.leaf(SERVER).mint().into_parts();
    let err = TrustMaterial::new(SERVER.parse().unwrap(), chain, key, bundles(), now).unwrap_err();
    assert!(matches!(err, crate::trust::TrustError::Key(_)), "{err}");
}

/// A full handshake: the client pins the server id, the server verifies the task SVID,
/// and the peer parsed from the connection is the task.
#[tokio::test]
async fn handshake_pins_server_and_yields_task_peer() {
    let f = fixture(false);
    let server = Arc::new(ServerTlsBuilder::new(f.source.clone()).build().unwrap());
    let (chain, key) = task_leaf(&f.ca, TD).mint().into_parts();
    let good = client_config(
        &SERVER.parse().unwrap(),
        [f.ca.cert().clone()],
        chain.clone(),
        key.clone_key(),
    )
    .unwrap();
    let wrong = client_config(
        &"spiffe://acme.corp/mcp/other".parse().unwrap(),
        [f.ca.cert().clone()],
        chain,
        key,
    )
    .unwrap();

    let run = |client: ClientConfig| {
        let server = server.clone();
        async move {
            let (a, b) = tokio::io::duplex(16 * 1024);
            let acceptor = tokio_rustls::TlsAcceptor::from(server);
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
            let s = tokio::spawn(async move { acceptor.accept(a).await });
            let c = connector
                .connect(ServerName::try_from("mcp").unwrap(), b)
                .await;
            let s = s.await.unwrap();
            (
                c.is_ok(),
                s.ok()
                    .map(|s| Peer::from_chain(s.get_ref().1.peer_certificates())),
            )
        }
    };
    let (ok, peer) = run(good).await;
    assert!(ok);
    let peer = peer.expect("server side completed").unwrap();
    assert_eq!(peer.spiffe_id(), task_id_str(TD));
    assert!(matches!(peer, Peer::Task { .. }));
    let (ok, _) = run(wrong).await;
    assert!(!ok, "client must refuse a server presenting another id");
}

/// A server that also accepts bearer tokens: a client without a certificate gets in
/// (and the connection proves no peer), a good certificate still yields its peer, and a
/// presented certificate that fails verification still fails the handshake.
#[tokio::test]
async fn optional_client_certificate_is_still_verified_when_presented() {
    let f = fixture(true);
    let optional = Arc::new(
        ServerTlsBuilder::new(f.source.clone())
            .client_certificate_optional()
            .build()
            .unwrap(),
    );
    let required = Arc::new(ServerTlsBuilder::new(f.source.clone()).build().unwrap());
    let expected: ServerId = SERVER.parse().unwrap();
    let bundle = [f.ca.cert().clone()];
    let anonymous = client_config_without_certificate(&expected, bundle.clone()).unwrap();
    let (chain, key) = task_leaf(&f.ca, TD).mint().into_parts();
    let task = client_config(&expected, bundle.clone(), chain, key).unwrap();
    // evil.example has a bundle here but is not allowed: a foreign task certificate.
    let (chain, key) = task_leaf(&f.foreign, "evil.example").mint().into_parts();
    let foreign = client_config(&expected, bundle.clone(), chain, key).unwrap();
    // An acme.corp id signed by the foreign CA.
    let (chain, key) = task_leaf(&f.foreign, TD).mint().into_parts();
    let forged = client_config(&expected, bundle, chain, key).unwrap();

    /// Whether both sides completed, and the peer's SPIFFE ID if the server saw one.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: &ClientConfig,
    ) -> (bool, Option<Result<String, PeerError>>) {
        let (a, b) = tokio::io::duplex(16 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client.clone()));
        let s = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut tls = acceptor.accept(a).await?;
            // TLS 1.3 reports a refused client certificate after the client's
            // handshake completes: read once so that the alert is sent.
            let mut byte = [0u8; 1];
            let _ = tls.read(&mut byte).await;
            Ok::<_, std::io::Error>(tls)
        });
        let mut client = connector
            .connect(ServerName::try_from("mcp").unwrap(), b)
            .await
            .ok();
        let client_ok = match client.as_mut() {
            Some(tls) => {
                use tokio::io::AsyncWriteExt;
                tls.write_all(b"x").await.is_ok() && tls.flush().await.is_ok()
            }
            None => false,
        };
        // The client stays connected until the server side is done with it.
        let server_side = s.await.unwrap();
        drop(client);
        let peer = server_side.ok().map(|tls| {
            let chain = tls.get_ref().1.peer_certificates();
            match chain {
                None => Err(PeerError::NoCertificate),
                Some(_) => Peer::from_chain(chain).map(|p| p.spiffe_id()),
            }
        });
        (client_ok, peer)
    }

    let (ok, peer) = handshake(optional.clone(), &anonymous).await;
    assert!(ok, "no certificate is allowed");
    assert_eq!(
        peer,
        Some(Err(PeerError::NoCertificate)),
        "and proves no peer"
    );
    let (ok, peer) = handshake(optional.clone(), &task).await;
    assert!(ok);
    assert_eq!(
        peer,
        Some(Ok(task_id_str(TD))),
        "a presented certificate proves its peer"
    );
    for (name, client) in [("foreign trust domain", &foreign), ("forged", &forged)] {
        let (_, peer) = handshake(optional.clone(), client).await;
        assert!(peer.is_none(), "{name}: the server refuses the handshake");
    }
    let (_, peer) = handshake(required, &anonymous).await;
    assert!(peer.is_none(), "required by default");
    let verifier = ServerTlsBuilder::new(f.source.clone())
        .client_certificate_optional()
        .client_verifier();
    assert!(verifier.offer_client_auth());
    assert!(!verifier.client_auth_mandatory());
}
