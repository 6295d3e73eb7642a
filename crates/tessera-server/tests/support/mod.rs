//! What the Node API tests share: `tessera-server` replicas as processes on a real
//! PostgreSQL, a cluster root from `tessera-server ca init`, and a node agent's side of
//! the TLS handshake and of attestation. Each test binary uses a part of it.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a part of the helpers"
)]

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
use tessera_authority::NodeCaKey;
use tessera_pgtest::PgServer;
use tessera_proto::tessera::v1 as pb;
use tessera_proto::tessera::v1::admin_client::AdminClient;
use tessera_proto::tessera::v1::cluster_admin_client::ClusterAdminClient;
use tessera_proto::tessera::v1::node_client::NodeClient;
use tonic::transport::{Channel, Endpoint};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Generous: how long a replica may take to start or a change to arrive before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(60);
pub const TD: &str = "e2e.test";

pub fn bin(name: &str) -> PathBuf {
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tessera-server ca init --dir DIR`: the root every replica mounts.
pub fn ca_init(dir: &Path, trust_domain: &str) -> (PathBuf, PathBuf) {
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
pub struct Replica {
    pub child: Child,
    pub admin: PathBuf,
    pub node: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
}

impl Replica {
    pub fn start(pg: &PgServer, database: &str, dir: &Path, ca: &Path, name: &str) -> Replica {
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
    pub fn metrics(&self) -> String {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(self.http).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `tessera --admin-socket <this replica> ARGS --output json`.
    pub fn cli(&self, args: &[&str]) -> Value {
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

    pub fn join_token(&self, node: Option<&str>) -> String {
        let mut args = vec!["node", "token", "create", "--ttl", "10m"];
        if let Some(node) = node {
            args.extend(["--node", node]);
        }
        self.cli(&args)["token"].as_str().unwrap().to_owned()
    }

    /// A channel to this replica's admin socket.
    pub async fn admin_channel(&self) -> Channel {
        let path = self.admin.clone();
        Endpoint::from_static("http://admin.invalid")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap()
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.admin_channel().await)
    }

    /// A join token for `node`, made through `tessera.v1.ClusterAdmin` (no CLI needed).
    pub async fn join_token_rpc(&self, node: &str) -> String {
        ClusterAdminClient::new(self.admin_channel().await)
            .create_join_token(pb::CreateJoinTokenRequest {
                ttl_secs: 600,
                node_name: node.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .token
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
pub struct PinnedServer {
    pub roots: Arc<rustls::RootCertStore>,
    pub provider: Arc<CryptoProvider>,
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
pub struct ClientCert {
    pub chain: Vec<Vec<u8>>,
    pub key: Vec<u8>,
}

/// A Node API client pinning `bundle`, presenting `cert` if given.
pub async fn node_client(
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

pub fn bundle_of(ca: &Path) -> Vec<Vec<u8>> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_file_iter(ca.join("ca.crt"))
        .unwrap()
        .map(|c| c.unwrap().to_vec())
        .collect()
}

/// Node keys as an agent makes them.
pub struct NodeKeys {
    pub svid: NodeCaKey,
    pub ca: NodeCaKey,
}

impl NodeKeys {
    pub fn new() -> NodeKeys {
        NodeKeys {
            svid: NodeCaKey::generate().unwrap(),
            ca: NodeCaKey::generate().unwrap(),
        }
    }

    pub fn attest(&self, token: &str, name: &str) -> pb::AttestRequest {
        pb::AttestRequest {
            proof: Some(pb::attest_request::Proof::JoinToken(token.to_owned())),
            node_name: name.to_owned(),
            node_svid_public_key: self.svid.public_key_der(),
            node_ca_public_key: self.ca.public_key_der(),
        }
    }

    pub fn renew(&self) -> pb::RenewRequest {
        pb::RenewRequest {
            node_svid_public_key: self.svid.public_key_der(),
            node_ca_public_key: self.ca.public_key_der(),
        }
    }

    pub fn client_cert(&self, creds: &pb::NodeCredentials) -> ClientCert {
        ClientCert {
            chain: creds.node_svid_chain.clone(),
            key: self.svid.to_pkcs8_der().to_vec(),
        }
    }
}

pub fn signed_by(child: &[u8], issuer: &[u8]) -> bool {
    let (_, child) = X509Certificate::from_der(child).unwrap();
    let (_, issuer) = X509Certificate::from_der(issuer).unwrap();
    child.verify_signature(Some(issuer.public_key())).is_ok()
}

pub fn database_name(options: &sqlx::postgres::PgConnectOptions) -> String {
    options.get_database().unwrap().to_owned()
}

/// A node attested through `replica` under `name`: its keys, credentials, and a Node API
/// client on `replica` presenting its node SVID.
pub async fn attested_node(
    replica: &Replica,
    bundle: &[Vec<u8>],
    name: &str,
) -> (NodeKeys, pb::NodeCredentials, NodeClient<Channel>) {
    let keys = NodeKeys::new();
    let token = replica.join_token_rpc(name).await;
    let mut anon = node_client(replica.node, bundle, None).await;
    let creds = anon
        .attest(keys.attest(&token, name))
        .await
        .unwrap()
        .into_inner()
        .credentials
        .unwrap();
    let client = node_client(replica.node, bundle, Some(&keys.client_cert(&creds))).await;
    (keys, creds, client)
}
