//! JWT bundles reaching the trust seam: from a real Workload API server on a unix socket
//! (X.509 through the `spiffe` crate's `X509Source`, JWKS through `FetchJWTBundles`),
//! and from a JWKS file polled like the PEMs.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use tessera_authority::{JwtAuthority, JwtKeyPolicy};
use tessera_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use tessera_proto::workload::*;
use tessera_testca::Ca;
use time::OffsetDateTime;
use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;

use super::*;
use crate::oauth::testkit::{Signer, own_id};
use crate::testutil::{SERVER, TD};
use crate::trust::TrustMaterial;
use crate::trust::files::{FileTrustConfig, spawn as spawn_files};

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// A Workload API serving one X.509 SVID and a JWKS stream fed by the test.
struct Agent {
    x509: X509svidResponse,
    jwks: Option<watch::Receiver<JwtBundlesResponse>>,
}

fn unimplemented<T>() -> Result<T, tonic::Status> {
    Err(tonic::Status::unimplemented("not in this test"))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Agent {
    type FetchX509SVIDStream = Boxed<X509svidResponse>;
    type FetchX509BundlesStream = Boxed<X509BundlesResponse>;
    type FetchJWTBundlesStream = Boxed<JwtBundlesResponse>;
    type FetchWITSVIDStream = Boxed<WitsvidResponse>;
    type FetchWITBundlesStream = Boxed<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _: tonic::Request<X509svidRequest>,
    ) -> Result<tonic::Response<Self::FetchX509SVIDStream>, tonic::Status> {
        let first = self.x509.clone();
        // One message, then an open stream (the source keeps it).
        let stream = tokio_stream::iter([Ok(first)]).chain(tokio_stream::pending());
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn fetch_x509_bundles(
        &self,
        _: tonic::Request<X509BundlesRequest>,
    ) -> Result<tonic::Response<Self::FetchX509BundlesStream>, tonic::Status> {
        unimplemented()
    }

    async fn fetch_jwtsvid(
        &self,
        _: tonic::Request<JwtsvidRequest>,
    ) -> Result<tonic::Response<JwtsvidResponse>, tonic::Status> {
        unimplemented()
    }

    async fn fetch_jwt_bundles(
        &self,
        req: tonic::Request<JwtBundlesRequest>,
    ) -> Result<tonic::Response<Self::FetchJWTBundlesStream>, tonic::Status> {
        assert_eq!(req.metadata().get("workload.spiffe.io").unwrap(), "true");
        let Some(rx) = self.jwks.clone() else {
            return unimplemented();
        };
        Ok(tonic::Response::new(Box::pin(WatchStream::new(rx).map(Ok))))
    }

    async fn validate_jwtsvid(
        &self,
        _: tonic::Request<ValidateJwtsvidRequest>,
    ) -> Result<tonic::Response<ValidateJwtsvidResponse>, tonic::Status> {
        unimplemented()
    }

    async fn fetch_witsvid(
        &self,
        _: tonic::Request<WitsvidRequest>,
    ) -> Result<tonic::Response<Self::FetchWITSVIDStream>, tonic::Status> {
        unimplemented()
    }

    async fn fetch_wit_bundles(
        &self,
        _: tonic::Request<WitBundlesRequest>,
    ) -> Result<tonic::Response<Self::FetchWITBundlesStream>, tonic::Status> {
        unimplemented()
    }
}

use tokio_stream::StreamExt as _;

struct World {
    dir: tempfile::TempDir,
    socket: PathBuf,
    authority: JwtAuthority,
    jwks_tx: watch::Sender<JwtBundlesResponse>,
}

fn jwks_message(bundle: &JwtBundle) -> JwtBundlesResponse {
    JwtBundlesResponse {
        bundles: HashMap::from([(format!("spiffe://{TD}"), bundle.to_jwks())]),
    }
}

/// Starts the agent; `serve_jwt` false answers FetchJWTBundles with Unimplemented.
fn agent(serve_jwt: bool) -> World {
    let dir = tempfile::tempdir().unwrap();
    let authority = JwtAuthority::open(
        TD.parse().unwrap(),
        dir.path().join("authority"),
        JwtKeyPolicy::default(),
    )
    .unwrap();
    let ca = Ca::root(TD);
    let signer = Signer::new(&ca, SERVER);
    let x509 = X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: SERVER.into(),
            x509_svid: signer.chain.iter().flat_map(|c| c.to_vec()).collect(),
            x509_svid_key: signer.key.serialize_der(),
            bundle: ca.cert().to_vec(),
            hint: String::new(),
        }],
        ..Default::default()
    };
    let (jwks_tx, jwks_rx) = watch::channel(jwks_message(&authority.bundle()));
    let socket = dir.path().join("workload.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let svc = SpiffeWorkloadApiServer::new(Agent {
        x509,
        jwks: serve_jwt.then_some(jwks_rx),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    World {
        dir,
        socket,
        authority,
        jwks_tx,
    }
}

fn kids(m: &TrustMaterial) -> Vec<String> {
    m.jwt_bundle(&TD.parse().unwrap())
        .map(|b| b.keys().iter().map(|k| k.kid().to_owned()).collect())
        .unwrap_or_default()
}

async fn wait_for_kids(trust: &super::super::TrustSource, want: &[String]) {
    let mut rx = trust.subscribe();
    tokio::time::timeout(
        Duration::from_secs(20),
        rx.wait_for(|m| m.as_ref().is_some_and(|m| kids(m) == want)),
    )
    .await
    .expect("the bundle reached the trust seam")
    .unwrap();
}

fn authority_kids(a: &JwtAuthority) -> Vec<String> {
    a.bundle()
        .keys()
        .iter()
        .map(|k| k.kid().to_owned())
        .collect()
}

#[tokio::test]
async fn workload_trust_carries_the_jwt_bundle_and_follows_its_rotation() {
    let w = agent(true);
    let endpoint = format!("unix://{}", w.socket.display());
    let (trust, _guard) = crate::trust::workload::connect(Some(&endpoint), own_id())
        .await
        .unwrap();
    let first = trust.current().unwrap();
    assert_eq!(
        kids(&first),
        authority_kids(&w.authority),
        "connect waits for it"
    );
    assert_eq!(first.own_id().to_string(), SERVER);

    // Rotation: the next key is published beside the active one.
    w.authority.prepare_next(OffsetDateTime::now_utc()).unwrap();
    let rotated = authority_kids(&w.authority);
    assert_eq!(rotated.len(), 2);
    let mut seen = trust.subscribe();
    w.jwks_tx.send_replace(JwtBundlesResponse {
        bundles: HashMap::from([(format!("spiffe://{TD}"), b"{\"keys\": 7}".to_vec())]),
    });
    w.jwks_tx.send_replace(jwks_message(&w.authority.bundle()));
    wait_for_kids(&trust, &rotated).await;
    // The unparseable message never replaced the good bundle.
    while seen.has_changed().unwrap_or(false) {
        let m = seen.borrow_and_update().clone().unwrap();
        assert!(!kids(&m).is_empty(), "a bad JWKS was published");
    }
    // The X.509 half is the same throughout.
    assert!(Arc::ptr_eq(
        trust.current().unwrap().certified_key(),
        first.certified_key()
    ));
}

#[tokio::test]
async fn an_agent_without_jwt_bundles_still_gives_x509_material() {
    let w = agent(false);
    let endpoint = format!("unix://{}", w.socket.display());
    let (trust, _guard) = crate::trust::workload::connect(Some(&endpoint), own_id())
        .await
        .unwrap();
    let m = trust.current().unwrap();
    assert!(kids(&m).is_empty());
    assert_eq!(m.own_id().to_string(), SERVER);
}

#[test]
fn a_message_is_taken_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let a = JwtAuthority::open(
        TD.parse().unwrap(),
        dir.path().join("a"),
        JwtKeyPolicy::default(),
    )
    .unwrap();
    let good = a.bundle().to_jwks();
    let ok = parse_message(&JwtBundlesResponse {
        bundles: HashMap::from([
            (format!("spiffe://{TD}"), good.clone()),
            ("other.corp".into(), good.clone()),
        ]),
    })
    .unwrap();
    assert_eq!(ok.len(), 2, "bare and spiffe:// keys");
    for bad in [
        HashMap::from([
            (format!("spiffe://{TD}"), good.clone()),
            ("other.corp".into(), b"[]".to_vec()),
        ]),
        HashMap::from([("spiffe://Not A Domain".into(), good.clone())]),
        HashMap::from([(TD.into(), vec![b' '; MAX_JWKS_LEN + 1])]),
    ] {
        assert!(parse_message(&JwtBundlesResponse { bundles: bad }).is_err());
    }
    assert_eq!(
        socket_path("unix:///run/a.sock"),
        Some(PathBuf::from("/run/a.sock"))
    );
    assert_eq!(
        socket_path("unix:/run/a.sock"),
        Some(PathBuf::from("/run/a.sock"))
    );
    assert_eq!(socket_path("tcp://127.0.0.1:1"), None);
    assert_eq!(socket_path("unix://relative"), None);
}

// === files ===

fn pem_of(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

#[tokio::test]
async fn a_jwks_file_is_loaded_and_reloaded_on_change() {
    let w = agent(false);
    let ca = Ca::root(TD);
    let signer = Signer::new(&ca, SERVER);
    let d = w.dir.path();
    std::fs::write(d.join("bundle.pem"), ca.cert_pem()).unwrap();
    std::fs::write(d.join("chain.pem"), pem_of("CERTIFICATE", &signer.chain[0])).unwrap();
    std::fs::write(d.join("key.pem"), signer.key.serialize_pem()).unwrap();
    std::fs::write(d.join("jwks.json"), w.authority.bundle().to_jwks()).unwrap();
    let mut config = FileTrustConfig::new(
        own_id(),
        d.join("bundle.pem"),
        d.join("chain.pem"),
        d.join("key.pem"),
    )
    .with_jwt_bundle(d.join("jwks.json"));
    config.poll_interval = Duration::from_millis(50);

    let (trust, _guard) = spawn_files(config.clone()).unwrap();
    assert_eq!(
        kids(&trust.current().unwrap()),
        authority_kids(&w.authority)
    );
    w.authority.prepare_next(OffsetDateTime::now_utc()).unwrap();
    // A different length makes the change visible even within one mtime tick.
    std::fs::write(d.join("jwks.json"), w.authority.bundle().to_jwks()).unwrap();
    wait_for_kids(&trust, &authority_kids(&w.authority)).await;

    // A broken JWKS is refused whole (first load) ...
    std::fs::write(
        d.join("bad.json"),
        b"{\"keys\": [{\"use\": \"jwt-svid\", \"kty\": \"RSA\"}]}",
    )
    .unwrap();
    assert!(
        crate::trust::files::load(&config.clone().with_jwt_bundle(d.join("bad.json"))).is_err()
    );
    // ... as is an oversize one, without reading it all.
    std::fs::write(d.join("big.json"), vec![b' '; MAX_JWKS_LEN + 1]).unwrap();
    let err = crate::trust::files::load(&config.with_jwt_bundle(d.join("big.json"))).unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
}
