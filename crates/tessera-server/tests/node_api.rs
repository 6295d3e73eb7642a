//! Cross-process: `tessera-server` replicas with a cluster root (`tessera-server ca init`)
//! on a real PostgreSQL, their Node API driven over real TLS as a node agent would, and
//! join tokens and evictions made with the stock `tessera` CLI.
//!
//! Needs the CLI binary: `cargo build -p tessera-cli --bins` first when run alone.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use tessera_authority::{Authority, NodeCaKey};
use tessera_pgtest::PgServer;
use tessera_proto::tessera::v1 as pb;
use tessera_proto::tessera::v1::admin_client::AdminClient;
use tessera_proto::tessera::v1::node_client::NodeClient;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Generous: how long a replica may take to start or a change to arrive before a test fails.
const PATIENCE: Duration = Duration::from_secs(60);
const TD: &str = "e2e.test";

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build -p tessera-cli --bins`",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tessera-server ca init --dir DIR`: the root every replica mounts.
fn ca_init(dir: &Path, trust_domain: &str) -> (PathBuf, PathBuf) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera-server"))
        .args(["--trust-domain", trust_domain, "ca", "init", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = dir.join("ca.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    (dir.join("ca.crt"), key)
}

/// A `tessera-server` process with the Node API on; killed on drop.
struct Replica {
    child: Child,
    admin: PathBuf,
    node: SocketAddr,
    http: SocketAddr,
    log: PathBuf,
}

impl Replica {
    fn start(pg: &PgServer, database: &str, dir: &Path, ca: &Path, name: &str) -> Replica {
        let password = dir.join("pgpassword");
        if !password.exists() {
            std::fs::write(&password, pg.password()).unwrap();
            std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let admin = dir.join(format!("{name}/admin.sock"));
        let node = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_tessera-server"))
            .arg("--database-url")
            .arg(format!(
                "postgres://{}@127.0.0.1:{}/{database}?sslmode=disable",
                tessera_pgtest::SUPERUSER,
                pg.port()
            ))
            .arg("--admin-socket")
            .arg(&admin)
            .arg("--http-listen")
            .arg(http.to_string())
            .arg("--node-listen")
            .arg(node.to_string())
            .env("TESSERA_SERVER_DATABASE_PASSWORD_FILE", &password)
            .env("TESSERA_SERVER_TRUST_DOMAIN", TD)
            .env("TESSERA_SERVER_CA_CERT_FILE", ca.join("ca.crt"))
            .env("TESSERA_SERVER_CA_KEY_FILE", ca.join("ca.key"))
            .env("TESSERA_SERVER_NODE_API_HEARTBEAT_INTERVAL", "300ms")
            .env("TESSERA_SERVER_NODE_API_SIGN_SERVER_SVID_PER_MINUTE", "3")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start tessera-server");
        let mut replica = Replica {
            child,
            admin,
            node,
            http,
            log,
        };
        let deadline = Instant::now() + PATIENCE;
        while !replica.log_text().contains("tessera-server serving") {
            if let Ok(Some(status)) = replica.child.try_wait() {
                panic!("tessera-server exited ({status}):\n{}", replica.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "not serving:\n{}",
                replica.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        replica
    }

    /// The body of `/metrics`.
    fn metrics(&self) -> String {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(self.http).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `tessera --admin-socket <this replica> ARGS --output json`.
    fn cli(&self, args: &[&str]) -> Value {
        let out = Command::new(bin("tessera"))
            .arg("--admin-socket")
            .arg(&self.admin)
            .args(args)
            .args(["--output", "json"])
            .output()
            .expect("run tessera");
        assert!(
            out.status.success(),
            "tessera {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    fn join_token(&self, node: Option<&str>) -> String {
        let mut args = vec!["node", "token", "create", "--ttl", "10m"];
        if let Some(node) = node {
            args.extend(["--node", node]);
        }
        self.cli(&args)["token"].as_str().unwrap().to_owned()
    }

    async fn admin(&self) -> AdminClient<Channel> {
        let path = self.admin.clone();
        let channel = Endpoint::from_static("http://admin.invalid")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        AdminClient::new(channel)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's side of a handshake: the server must present `spiffe://<td>/tessera/server`
/// under the pinned root.
#[derive(Debug)]
struct PinnedServer {
    roots: Arc<rustls::RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let leaf = tessera_identity::check_leaf_svid(end_entity)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        if leaf.spiffe_id != format!("spiffe://{TD}/tessera/server") {
            return Err(rustls::Error::General(format!(
                "unexpected server {}",
                leaf.spiffe_id
            )));
        }
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client certificate to present: a chain and its key (PKCS#8).
struct ClientCert {
    chain: Vec<Vec<u8>>,
    key: Vec<u8>,
}

/// A Node API client pinning `bundle`, presenting `cert` if given.
async fn node_client(
    addr: SocketAddr,
    bundle: &[Vec<u8>],
    cert: Option<&ClientCert>,
) -> NodeClient<Channel> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in bundle {
        roots.add(CertificateDer::from(der.clone())).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServer {
            roots: Arc::new(roots),
            provider,
        }));
    let mut config = match cert {
        Some(cert) => builder
            .with_client_auth_cert(
                cert.chain
                    .iter()
                    .map(|d| CertificateDer::from(d.clone()))
                    .collect(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key.clone())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let channel = Endpoint::from_static("http://tessera-server.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = ServerName::try_from("tessera-server").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await;
    NodeClient::new(channel.expect("connect to the Node API"))
}

fn bundle_of(ca: &Path) -> Vec<Vec<u8>> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_file_iter(ca.join("ca.crt"))
        .unwrap()
        .map(|c| c.unwrap().to_vec())
        .collect()
}

/// Node keys as an agent makes them.
struct NodeKeys {
    svid: NodeCaKey,
    ca: NodeCaKey,
}

impl NodeKeys {
    fn new() -> NodeKeys {
        NodeKeys {
            svid: NodeCaKey::generate().unwrap(),
            ca: NodeCaKey::generate().unwrap(),
        }
    }

    fn attest(&self, token: &str, name: &str) -> pb::AttestRequest {
        pb::AttestRequest {
            proof: Some(pb::attest_request::Proof::JoinToken(token.to_owned())),
            node_name: name.to_owned(),
            node_svid_public_key: self.svid.public_key_der(),
            node_ca_public_key: self.ca.public_key_der(),
        }
    }

    fn renew(&self) -> pb::RenewRequest {
        pb::RenewRequest {
            node_svid_public_key: self.svid.public_key_der(),
            node_ca_public_key: self.ca.public_key_der(),
        }
    }

    fn client_cert(&self, creds: &pb::NodeCredentials) -> ClientCert {
        ClientCert {
            chain: creds.node_svid_chain.clone(),
            key: self.svid.to_pkcs8_der().to_vec(),
        }
    }
}

fn signed_by(child: &[u8], issuer: &[u8]) -> bool {
    let (_, child) = X509Certificate::from_der(child).unwrap();
    let (_, issuer) = X509Certificate::from_der(issuer).unwrap();
    child.verify_signature(Some(issuer.public_key())).is_ok()
}

/// The next message of a sync stream, within the test's patience.
async fn next(stream: &mut tonic::Streaming<pb::SyncMessage>) -> pb::sync_message::Message {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("a sync message in time")
        .unwrap()
        .expect("the stream goes on")
        .message
        .unwrap()
}

fn database_name(options: &sqlx::postgres::PgConnectOptions) -> String {
    options.get_database().unwrap().to_owned()
}

/// A join token attests one node once; its node SVID and node CA chain to the bundle and
/// name it; renewal works until the node is evicted, then every call is refused; a server
/// SVID needs a server entry and a node caller; hostile input is refused without burning
/// the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_attests_once_renews_signs_servers_and_is_cut_off_by_eviction() {
    let Some(pg) = PgServer::start_or_skip("tessera-server node API").await else {
        return;
    };
    let database = database_name(&pg.create_database().await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    ca_init(&ca_dir, TD);
    let bundle = bundle_of(&ca_dir);
    // `ca init` never replaces a root.
    let again = Command::new(env!("CARGO_BIN_EXE_tessera-server"))
        .args(["--trust-domain", TD, "ca", "init", "--dir"])
        .arg(&ca_dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert_eq!(bundle_of(&ca_dir), bundle);
    let replica = Replica::start(&pg, &database, dir.path(), &ca_dir, "one");
    let mut anon = node_client(replica.node, &bundle, None).await;
    let keys = NodeKeys::new();
    let token = replica.join_token(Some("worker-1"));

    // Hostile input first; none of it consumes the token.
    let mut garbage = keys.attest(&token, "worker-1");
    garbage.node_svid_public_key = b"not a key at all".to_vec();
    assert_eq!(
        anon.attest(garbage).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut rsa_ish = keys.attest(&token, "worker-1");
    rsa_ish.node_ca_public_key = vec![0x30; 91];
    assert_eq!(
        anon.attest(rsa_ish).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let oversize = keys.attest(&"x".repeat(200 * 1024), "worker-1");
    let code = anon.attest(oversize).await.unwrap_err().code();
    assert!(
        matches!(
            code,
            Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted
        ),
        "{code:?}"
    );
    let wrong = keys.attest(&format!("{}x", &token[..token.len() - 1]), "worker-1");
    assert_eq!(
        anon.attest(wrong).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    let creds = anon
        .attest(keys.attest(&token, "worker-1"))
        .await
        .unwrap()
        .into_inner()
        .credentials
        .unwrap();
    assert_eq!(creds.node_id, format!("spiffe://{TD}/node/worker-1"));
    assert_eq!(creds.bundle, bundle);
    let leaf = tessera_identity::check_leaf_svid(&creds.node_svid_chain[0]).unwrap();
    assert_eq!(leaf.spiffe_id, creds.node_id);
    assert_eq!(creds.node_svid_chain.len(), 1);
    assert!(signed_by(&creds.node_svid_chain[0], &bundle[0]));
    let node_ca = Authority::from_node_ca(
        TD.parse().unwrap(),
        creds.node_ca_chain.clone(),
        NodeCaKey::from_pkcs8_der(&keys.ca.to_pkcs8_der()).unwrap(),
        bundle.clone(),
    )
    .expect("the node CA chains to the bundle and fits the node's key");
    assert_eq!(node_ca.node().unwrap().to_string(), creds.node_id);
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    assert!(creds.renew_after_unix > now && creds.renew_after_unix < leaf.not_after_unix);

    // Single use: the same token again is refused.
    let again = anon
        .attest(keys.attest(&token, "worker-1"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::PermissionDenied, "{again:?}");

    // A call that needs a node, without a client certificate.
    let status = anon.renew(keys.renew()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let server_key = NodeCaKey::generate().unwrap();
    let sign = |server: &str| pb::SignServerSvidRequest {
        server: server.to_owned(),
        public_key: server_key.public_key_der(),
        ttl_secs: 600,
    };
    assert_eq!(
        anon.sign_server_svid(sign("github"))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    let mut node = node_client(replica.node, &bundle, Some(&keys.client_cert(&creds))).await;
    let renewed = node
        .renew(keys.renew())
        .await
        .unwrap()
        .into_inner()
        .credentials
        .unwrap();
    assert_ne!(renewed.node_ca_chain, creds.node_ca_chain);
    tessera_identity::check_node_ca(&renewed.node_ca_chain[0], &TD.parse().unwrap())
        .expect("the renewed node CA names the node");
    let listed = replica.cli(&["node", "list"]);
    assert_eq!(listed[0]["name"], "worker-1");
    assert_eq!(listed[0]["status"], "active");
    // The list shows the node's current CA: the renewed one.
    let (_, renewed_ca) = X509Certificate::from_der(&renewed.node_ca_chain[0]).unwrap();
    assert_eq!(
        listed[0]["ca_serial"]
            .as_str()
            .unwrap()
            .trim_start_matches('0'),
        renewed_ca
            .raw_serial_as_string()
            .replace(':', "")
            .trim_start_matches('0')
    );

    // SignServerSvid: refused without a server entry, then signed by the root.
    let refused = node.sign_server_svid(sign("github")).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    replica.cli(&[
        "entry",
        "create",
        "--server",
        "github",
        "--selector",
        "unix:uid:1000",
    ]);
    // The admin call answered once this replica held the entry: no race here.
    let chain = node
        .sign_server_svid(sign("github"))
        .await
        .unwrap()
        .into_inner()
        .svid_chain;
    let svid = tessera_identity::check_leaf_svid(&chain[0]).unwrap();
    assert_eq!(svid.spiffe_id, format!("spiffe://{TD}/mcp/github"));
    assert!(
        signed_by(&chain[0], &bundle[0]),
        "the root signs server SVIDs, not a node CA"
    );
    assert!(svid.not_after_unix - svid.not_before_unix <= 600 + 10);
    // Rate limited per node (3 a minute in this test), refused calls included: the
    // refusal and the signing above were two, this is the third.
    assert!(node.sign_server_svid(sign("github")).await.is_ok());
    let limited = node.sign_server_svid(sign("github")).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);

    // Evicted: the same, still valid, SVID is refused at once, on every RPC.
    let evicted = replica.cli(&["node", "evict", "worker-1"]);
    assert_eq!(evicted["status"], "evicted");
    for status in [
        node.renew(keys.renew()).await.unwrap_err(),
        node.sync(pb::SyncRequest { since_version: 0 })
            .await
            .map(|_| ())
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let metrics = replica.metrics();
    for line in [
        "tessera_server_node_calls_total{rpc=\"Attest\",code=\"Ok\"} 1",
        "tessera_server_node_calls_total{rpc=\"Renew\",code=\"PermissionDenied\"} 1",
        "tessera_server_node_calls_total{rpc=\"SignServerSvid\",code=\"ResourceExhausted\"} 1",
        "tessera_server_node_calls_total{rpc=\"Sync\",code=\"PermissionDenied\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }

    // The audit log names the node for what it did, and the admin for the eviction.
    let out = Command::new(bin("tessera"))
        .arg("--admin-socket")
        .arg(&replica.admin)
        .args(["audit", "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let records: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by = |kind: &str| -> Vec<&Value> { records.iter().filter(|r| r["kind"] == kind).collect() };
    assert!(by("node.ca").iter().all(|r| r["actor"] == "node:worker-1"));
    assert_eq!(by("node.ca").len(), 2, "attest and renew");
    let signed = by("node.server_svid");
    assert_eq!(signed.len(), 2);
    assert!(signed.iter().all(|r| r["actor"] == "node:worker-1"
        && r["detail"]["spiffe_id"] == format!("spiffe://{TD}/mcp/github")));
    assert!(
        by("node.evict")[0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("uid:")
    );
    assert!(
        !String::from_utf8_lossy(&std::fs::read(dir.path().join("one.log")).unwrap())
            .contains(&token)
    );

    // And a token for the evicted name does not bring it back.
    let token = replica.join_token(Some("worker-1"));
    let back = anon
        .attest(NodeKeys::new().attest(&token, "worker-1"))
        .await
        .unwrap_err();
    assert_ne!(back.code(), Code::Ok);
}

/// A node SVID of another trust domain (another root) is refused in the handshake, and a
/// node CA's leaf naming a node is refused: only the root makes node SVIDs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_node_ca_signed_node_svids_are_refused() {
    let Some(pg) = PgServer::start_or_skip("tessera-server node API").await else {
        return;
    };
    let database = database_name(&pg.create_database().await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    ca_init(&ca_dir, TD);
    let bundle = bundle_of(&ca_dir);
    let replica = Replica::start(&pg, &database, dir.path(), &ca_dir, "one");

    // Another trust domain's root and a node SVID from it.
    let other_dir = dir.path().join("other");
    let (cert, key) = ca_init(&other_dir, "other.test");
    let other = Authority::open_cluster_root(
        "other.test".parse().unwrap(),
        &cert,
        &key,
        Default::default(),
    )
    .unwrap();
    let foreign_keys = NodeKeys::new();
    let foreign = other
        .issue_for_key(
            &tessera_authority::SvidSpec {
                spiffe_id: "spiffe://other.test/node/worker-1",
                ttl: Duration::from_secs(600),
                not_after_cap: None,
                claims: None,
            },
            &foreign_keys.svid.public_key_der(),
        )
        .unwrap();
    let cert = ClientCert {
        chain: foreign.chain_der,
        key: foreign_keys.svid.to_pkcs8_der().to_vec(),
    };
    let mut client = node_client(replica.node, &bundle, Some(&cert)).await;
    let refused = client.renew(foreign_keys.renew()).await.unwrap_err();
    // Refused in the handshake (the certificate does not chain to this root): the call
    // never reaches the service. (With TLS 1.3 the client learns it as the connection
    // closing, so the code depends on timing; it is a transport error either way.)
    assert!(
        matches!(
            refused.code(),
            Code::Unavailable | Code::Cancelled | Code::Unknown
        ) && std::error::Error::source(&refused).is_some(),
        "not a transport failure: {refused:?}"
    );

    // A real node's CA signing a leaf that claims to be a node: a node CA may sign
    // clients and tasks only, and the server takes node SVIDs from the root only.
    let keys = NodeKeys::new();
    let token = replica.join_token(None);
    let mut anon = node_client(replica.node, &bundle, None).await;
    let creds = anon
        .attest(keys.attest(&token, "worker-2"))
        .await
        .unwrap()
        .into_inner()
        .credentials
        .unwrap();
    let chain_leaf = {
        // Forge with rcgen directly: the authority refuses to (that is its own check).
        let ca_key = rcgen::KeyPair::try_from(keys.ca.to_pkcs8_der().as_slice()).unwrap();
        let issuer =
            rcgen::Issuer::from_ca_cert_der(&creds.node_ca_chain[0].clone().into(), ca_key)
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            format!("spiffe://{TD}/node/worker-2").try_into().unwrap(),
        )];
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
        ClientCert {
            chain: vec![leaf.der().to_vec(), creds.node_ca_chain[0].clone()],
            key: leaf_key.serialize_der(),
        }
    };
    let mut forged = node_client(replica.node, &bundle, Some(&chain_leaf)).await;
    let refused = forged.renew(keys.renew()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
}

/// Sync on replica 2 gives a snapshot, then the changes written through replica 1 as they
/// commit, heartbeats in between, and a stream resumed from a version starts with the
/// changes after it. Prints the propagation p50/p99.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_streams_a_snapshot_then_live_changes_across_replicas_and_resumes() {
    let Some(pg) = PgServer::start_or_skip("tessera-server node API").await else {
        return;
    };
    let database = database_name(&pg.create_database().await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    ca_init(&ca_dir, TD);
    let bundle = bundle_of(&ca_dir);
    let one = Replica::start(&pg, &database, dir.path(), &ca_dir, "one");
    let two = Replica::start(&pg, &database, dir.path(), &ca_dir, "two");
    one.cli(&[
        "entry",
        "create",
        "--client",
        "before",
        "--selector",
        "unix:uid:1",
    ]);

    let keys = NodeKeys::new();
    let token = one.join_token(None);
    let mut anon = node_client(two.node, &bundle, None).await;
    let creds = anon
        .attest(keys.attest(&token, "worker-3"))
        .await
        .unwrap()
        .into_inner()
        .credentials
        .unwrap();
    let mut node = node_client(two.node, &bundle, Some(&keys.client_cert(&creds))).await;
    let mut stream = node
        .sync(pb::SyncRequest { since_version: 0 })
        .await
        .unwrap()
        .into_inner();
    let pb::sync_message::Message::Snapshot(snapshot) = next(&mut stream).await else {
        panic!("the first message is a snapshot");
    };
    assert!(snapshot.entries.iter().any(|e| e.client == "before"));
    assert!(
        snapshot
            .nodes
            .iter()
            .any(|n| n.name == "worker-3" && n.status == "active")
    );
    let mut version = snapshot.version;

    // A node that never reads its stream must not hold back the others.
    let mut stalled_client = node_client(two.node, &bundle, Some(&keys.client_cert(&creds))).await;
    let _stalled = stalled_client
        .sync(pb::SyncRequest { since_version: 0 })
        .await
        .unwrap();

    // Live changes written on replica 1 reach the stream on replica 2.
    let mut admin = one.admin().await;
    let mut latencies = Vec::new();
    let mut mid_version = 0;
    for i in 0..40 {
        let started = Instant::now();
        let entry = admin
            .create_entry(pb::CreateEntryRequest {
                client: format!("c{i}"),
                selectors: vec![format!("unix:uid:{}", 1000 + i)],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        loop {
            match next(&mut stream).await {
                pb::sync_message::Message::Changes(changes) => {
                    assert!(
                        changes.changes.iter().all(|c| c.version > version),
                        "in order, no repeats"
                    );
                    version = changes.version;
                    let arrived = changes.changes.iter().any(|c| {
                        matches!(&c.change, Some(pb::change::Change::EntryPut(e)) if e.id == entry.id)
                    });
                    if arrived {
                        break;
                    }
                }
                pb::sync_message::Message::Heartbeat(h) => assert!(h.version <= version + 1000),
                pb::sync_message::Message::Snapshot(_) => panic!("no snapshot mid-stream here"),
            }
        }
        latencies.push(started.elapsed());
        if i == 19 {
            mid_version = version;
        }
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "change on replica 1 -> Sync stream on replica 2: p50 {p50:?}, p99 {p99:?} ({} changes)",
        latencies.len()
    );
    assert!(p99 < Duration::from_secs(10), "generous bound: {p99:?}");

    // Quiet: a heartbeat at the stream's version.
    loop {
        if let pb::sync_message::Message::Heartbeat(h) = next(&mut stream).await {
            assert_eq!(h.version, version);
            assert!(h.server_time_unix_ms > 0);
            break;
        }
    }

    // Resumed from a version the log holds: the changes after it, no snapshot.
    let mut resumed = node
        .sync(pb::SyncRequest {
            since_version: mid_version,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 20 {
        match next(&mut resumed).await {
            pb::sync_message::Message::Changes(changes) => {
                for c in changes.changes {
                    assert!(c.version > mid_version);
                    if let Some(pb::change::Change::EntryPut(e)) = c.change {
                        seen.push(e.client);
                    }
                }
            }
            pb::sync_message::Message::Heartbeat(_) => {}
            pb::sync_message::Message::Snapshot(_) => panic!("resumed stream sent a snapshot"),
        }
    }
    assert_eq!(seen, (20..40).map(|i| format!("c{i}")).collect::<Vec<_>>());

    // Evicting the node ends its open stream.
    one.cli(&["node", "evict", "worker-3"]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "stream not ended by eviction");
        match tokio::time::timeout(PATIENCE, stream.message())
            .await
            .unwrap()
        {
            Err(status) => {
                assert_eq!(status.code(), Code::PermissionDenied);
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("stream ended without a status"),
        }
    }
}
