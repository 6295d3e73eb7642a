//! The hostile-certificate table: one case per rule, against the live verifier.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use time::{Duration, OffsetDateTime};

use super::*;
use crate::testutil::{Ca, LeafOpts, SERVER, TD, claims, task_id_str};
use crate::trust::{TrustMaterial, TrustSource};

struct Fixture {
    ca: Ca,
    foreign: Ca,
    source: TrustSource,
}

fn fixture(extra_bundle: bool) -> Fixture {
    let ca = Ca::new(TD);
    let foreign = Ca::new("evil.example");
    let (chain, key) = ca.leaf(LeafOpts::id(SERVER));
    let mut bundles = BTreeMap::new();
    bundles.insert(TD.parse().unwrap(), vec![ca.cert.clone()]);
    if extra_bundle {
        bundles.insert("evil.example".parse().unwrap(), vec![foreign.cert.clone()]);
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

fn task_opts(td: &str) -> LeafOpts {
    let mut o = LeafOpts::id(&task_id_str(td));
    o.claims = Some(claims(td, &["github/tool/*"], 1_900_000_000));
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
    let (task, _) = f.ca.leaf(task_opts(TD));
    verify(&v, &task).unwrap();
    let (client, _) =
        f.ca.leaf(LeafOpts::id("spiffe://acme.corp/client/code-reviewer"));
    verify(&v, &client).unwrap();
    assert!(v.client_auth_mandatory());
}

#[test]
fn refuses_foreign_trust_domain_unless_allowed() {
    let f = fixture(true);
    let (foreign, _) = f.foreign.leaf(task_opts("evil.example"));
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
    let (forged, _) = f.foreign.leaf(task_opts(TD));
    let v = ServerTlsBuilder::new(f.source.clone()).client_verifier();
    assert!(verify(&v, &forged).is_err());
}

#[test]
fn refuses_expired_and_not_yet_valid() {
    let f = fixture(false);
    let v = ServerTlsBuilder::new(f.source.clone()).client_verifier();
    let now = OffsetDateTime::now_utc();
    let mut o = task_opts(TD);
    o.not_before = now - Duration::hours(2);
    o.not_after = now - Duration::hours(1);
    let err = verify(&v, &f.ca.leaf(o).0).unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");
    let mut o = task_opts(TD);
    o.not_before = now + Duration::hours(1);
    o.not_after = now + Duration::hours(2);
    assert!(verify(&v, &f.ca.leaf(o).0).is_err());
}

#[test]
fn refuses_two_uri_sans() {
    let f = fixture(false);
    let v = ServerTlsBuilder::new(f.source.clone()).client_verifier();
    let mut o = LeafOpts::id("spiffe://acme.corp/client/code-reviewer");
    o.uris.push("spiffe://acme.corp/client/other".into());
    let err = verify(&v, &f.ca.leaf(o).0).unwrap_err();
    assert!(err.contains("UriSanCount { found: 2 }"), "{err}");
}

#[test]
fn refuses_ca_leaf() {
    let f = fixture(false);
    let v = ServerTlsBuilder::new(f.source.clone()).client_verifier();
    let mut o = LeafOpts::id("spiffe://acme.corp/client/code-reviewer");
    o.ca = true;
    let err = verify(&v, &f.ca.leaf(o).0).unwrap_err();
    assert!(err.contains("LeafIsCa"), "{err}");
}

#[test]
fn refuses_task_svid_without_claims() {
    let f = fixture(false);
    let v = ServerTlsBuilder::new(f.source.clone()).client_verifier();
    let (chain, _) = f.ca.leaf(LeafOpts::id(&task_id_str(TD)));
    let err = verify(&v, &chain).unwrap_err();
    assert!(err.contains("MissingClaims"), "{err}");
}

#[test]
fn refuses_non_tessera_spiffe_id() {
    let f = fixture(false);
    let v = ServerTlsBuilder::new(f.source.clone()).client_verifier();
    let (chain, _) =
        f.ca.leaf(LeafOpts::id("spiffe://acme.corp/ns/default/sa/web"));
    assert!(verify(&v, &chain).is_err());
}

#[test]
fn refuses_everything_before_material_exists() {
    let (_publisher, source) = TrustSource::channel();
    let f = fixture(false);
    let v = ServerTlsBuilder::new(source).client_verifier();
    assert!(verify(&v, &f.ca.leaf(task_opts(TD)).0).is_err());
}

#[test]
fn material_refuses_wrong_own_id_and_foreign_chain() {
    let ca = Ca::new(TD);
    let other = Ca::new(TD);
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let bundles = || {
        let mut b = BTreeMap::new();
        b.insert(TD.parse().unwrap(), vec![ca.cert.clone()]);
        b
    };
    let (chain, key) = ca.leaf(LeafOpts::id("spiffe://acme.corp/mcp/other"));
    let err = TrustMaterial::new(SERVER.parse().unwrap(), chain, key, bundles(), now).unwrap_err();
    assert!(
        matches!(err, crate::trust::TrustError::WrongOwnId { .. }),
        "{err}"
    );
    let (chain, key) = other.leaf(LeafOpts::id(SERVER));
    let err = TrustMaterial::new(SERVER.parse().unwrap(), chain, key, bundles(), now).unwrap_err();
    assert!(
        matches!(err, crate::trust::TrustError::OwnChain(_)),
        "{err}"
    );
    let (chain, _) = ca.leaf(LeafOpts::id(SERVER));
    let (_, key) = ca.leaf(LeafOpts::id(SERVER));
    let err = TrustMaterial::new(SERVER.parse().unwrap(), chain, key, bundles(), now).unwrap_err();
    assert!(matches!(err, crate::trust::TrustError::Key(_)), "{err}");
}

/// A full handshake: the client pins the server id, the server verifies the task SVID,
/// and the peer parsed from the connection is the task.
#[tokio::test]
async fn handshake_pins_server_and_yields_task_peer() {
    let f = fixture(false);
    let server = Arc::new(ServerTlsBuilder::new(f.source.clone()).build().unwrap());
    let (chain, key) = f.ca.leaf(task_opts(TD));
    let good = client_config(
        &SERVER.parse().unwrap(),
        [f.ca.cert.clone()],
        chain.clone(),
        key.clone_key(),
    )
    .unwrap();
    let wrong = client_config(
        &"spiffe://acme.corp/mcp/other".parse().unwrap(),
        [f.ca.cert.clone()],
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
