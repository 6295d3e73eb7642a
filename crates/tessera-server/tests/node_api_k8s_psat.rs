//! Cross-process: a `tessera-server` with `[k8s_psat]` on attests a node over its real
//! TLS Node API from a projected service-account token. No Kubernetes API server runs
//! here: a local HTTPS server answers the TokenReview in the API server's response shape
//! (`authentication.k8s.io/v1`; written from the API reference, not captured from a
//! cluster) for the one token it knows, and refuses every other.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use serde_json::{Value, json};
use tessera_authority::NodeCaKey;
use tessera_pgtest::PgServer;
use tessera_proto::tessera::v1 as pb;
use tessera_proto::tessera::v1::node_client::NodeClient;
use tonic::Code;
use tonic::transport::Endpoint;

const TD: &str = "psat.test";
const PSAT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsidGVzc2VyYS1zZXJ2ZXIiXX0.c2lnbmF0dXJl";

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The stand-in API server: authenticates `PSAT` as the agent pod on `worker-7`.
async fn api_server() -> (SocketAddr, String, tokio::task::JoinHandle<()>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let own = req.headers().get("authorization").cloned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let review: Value = serde_json::from_slice(&body).unwrap();
                        let spec = &review["spec"];
                        let known = own.is_some_and(|v| v == "Bearer server-own-token")
                            && spec["token"] == PSAT
                            && spec["audiences"] == json!(["tessera-server"]);
                        let status = if known {
                            json!({
                                "authenticated": true,
                                "user": {
                                    "username": "system:serviceaccount:tessera-system:tessera-agent",
                                    "uid": "0d4c7a3e-8f2b-4e6a-9c1d-7b5e3f2a1c0d",
                                    "groups": ["system:serviceaccounts", "system:authenticated"],
                                    "extra": {
                                        "authentication.kubernetes.io/pod-name": ["tessera-agent-q8v4n"],
                                        "authentication.kubernetes.io/pod-uid": ["8a1e2f3c-1b2d-4c3e-9f4a-5b6c7d8e9f00"],
                                        "authentication.kubernetes.io/node-name": ["worker-7"],
                                    },
                                },
                                "audiences": ["tessera-server"],
                            })
                        } else {
                            json!({"user": {}, "error": "[invalid bearer token]"})
                        };
                        let answer = json!({
                            "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                            "metadata": {"creationTimestamp": null}, "spec": spec, "status": status,
                        });
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(201)
                                .body(Full::new(Bytes::from(answer.to_string())))
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, ca_pem, task)
}

/// Accepts the server's certificate if it chains to the pinned root (the name is
/// the SPIFFE ID, checked by the server tests; here only the attestation matters).
#[derive(Debug)]
struct PinnedRoot(
    Arc<rustls::RootCertStore>,
    Arc<rustls::crypto::CryptoProvider>,
);

impl ServerCertVerifier for PinnedRoot {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.0,
            intermediates,
            now,
            self.1.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.1.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.1.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projected_token_attests_the_pods_node_over_the_node_api() {
    let Some(pg) = PgServer::start_or_skip("tessera-server k8s_psat").await else {
        return;
    };
    let database = pg.create_database().await.unwrap();
    let database = database.get_database().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let (api, api_ca, _api_task) = api_server().await;

    let ca_dir = dir.path().join("ca");
    let out = Command::new(env!("CARGO_BIN_EXE_tessera-server"))
        .args(["--trust-domain", TD, "ca", "init", "--dir"])
        .arg(&ca_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let write = |name: &str, text: &str, mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    let password = write("pgpassword", pg.password(), 0o600);
    let api_ca = write("api-ca.crt", &api_ca, 0o644);
    let own_token = write("sa-token", "server-own-token\n", 0o600);
    let node = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = write(
        "server.toml",
        &format!(
            "trust_domain = \"{TD}\"\nadmin_socket = \"{admin}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             [database]\nurl = \"postgres://{user}@127.0.0.1:{port}/{database}?sslmode=disable\"\n\
             password_file = \"{password}\"\n\
             [ca]\ncert_file = \"{ca}/ca.crt\"\nkey_file = \"{ca}/ca.key\"\n\
             [listen]\nnode = \"{node}\"\n\
             [k8s_psat]\nenabled = true\nallowed_service_accounts = [\"tessera-system:tessera-agent\"]\n\
             api_server = \"https://{api}\"\nca_file = \"{api_ca}\"\ntoken_file = \"{own_token}\"\n",
            admin = dir.path().join("admin/admin.sock").display(),
            http = free_port(),
            user = tessera_pgtest::SUPERUSER,
            port = pg.port(),
            password = password.display(),
            ca = ca_dir.display(),
            api_ca = api_ca.display(),
            own_token = own_token.display(),
        ),
        0o644,
    );
    let log = dir.path().join("server.log");
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_tessera-server"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    while !read_log().contains("tessera-server serving") {
        assert!(Instant::now() < deadline, "not serving:\n{}", read_log());
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(
        read_log().contains("Kubernetes PSAT node attestation on"),
        "{}",
        read_log()
    );

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_dir.join("ca.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedRoot(Arc::new(roots), provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let channel = Endpoint::from_static("http://tessera-server.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(node).await?;
                let tls = connector
                    .connect(ServerName::try_from("tessera-server").unwrap(), tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    let mut client = NodeClient::new(channel);
    let (svid_key, ca_key) = (
        NodeCaKey::generate().unwrap(),
        NodeCaKey::generate().unwrap(),
    );
    let request = |token: &str, name: &str| pb::AttestRequest {
        proof: Some(pb::attest_request::Proof::K8sPsat(token.to_owned())),
        node_name: name.to_owned(),
        node_svid_public_key: svid_key.public_key_der(),
        node_ca_public_key: ca_key.public_key_der(),
    };

    // A token the API server does not authenticate: refused, nothing registered.
    let refused = client
        .attest(request("eyJhbGciOiJSUzI1NiJ9.forged.c2ln", "worker-7"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // The agent's token: the node is the pod's (worker-7), not the name it asked for.
    let creds = client
        .attest(request(PSAT, "some-other-node"))
        .await
        .unwrap()
        .into_inner()
        .credentials
        .unwrap();
    assert_eq!(creds.node_id, format!("spiffe://{TD}/node/worker-7"));
    let leaf = tessera_identity::check_leaf_svid(&creds.node_svid_chain[0]).unwrap();
    assert_eq!(
        leaf.spiffe_id.to_string(),
        format!("spiffe://{TD}/node/worker-7")
    );
    assert!(
        !read_log().contains("c2lnbmF0dXJl"),
        "the token is never logged"
    );
}
