//! The agent's side of node attestation and renewal against a stand-in Node service: a
//! real cluster root (`Authority::open_cluster`), real TLS on loopback, and just the two
//! RPCs the agent calls here. The server's own checks (join tokens in PostgreSQL,
//! eviction) are tessera-server's to test; the cross-process test runs the real one.

use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use rustls::pki_types::CertificateDer;
use tessera_authority::{AuthorityConfig, CaMode, ClusterPolicy, RotationPolicy, SvidSpec};
use tessera_identity::NodeName;
use tessera_proto::tessera::v1::node_server::{Node, NodeServer};
use tessera_proto::tessera::v1::{
    AttestResponse, RenewResponse, SignServerSvidRequest, SignServerSvidResponse, SyncMessage,
    SyncRequest,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

use super::*;

const TOKEN: &str = "join-token-for-tests";

/// The stand-in server: a cluster root, the node's token, and what it was asked.
struct Double {
    root: Arc<Authority>,
    td: TrustDomain,
    attests: AtomicUsize,
    renewed_for: Mutex<Vec<String>>,
}

impl Double {
    fn credentials(
        &self,
        node: &NodeId,
        svid_key: &[u8],
        ca_key: &[u8],
    ) -> Result<NodeCredentials, Status> {
        let ca = self
            .root
            .sign_node_ca(node, ca_key)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let svid = self
            .root
            .issue_for_key(
                &SvidSpec {
                    spiffe_id: &node.to_string(),
                    ttl: Duration::from_secs(3600),
                    not_after_cap: None,
                    claims: None,
                },
                svid_key,
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(NodeCredentials {
            node_id: node.to_string(),
            node_svid_chain: svid.chain_der,
            renew_after_unix: ca.renew_at_unix(),
            node_ca_chain: ca.chain_der,
            bundle: self.root.bundle().certs.clone(),
        })
    }
}

#[tonic::async_trait]
impl Node for Double {
    async fn attest(
        &self,
        request: Request<AttestRequest>,
    ) -> Result<Response<AttestResponse>, Status> {
        let r = request.into_inner();
        if r.proof != Some(attest_request::Proof::JoinToken(TOKEN.into())) {
            return Err(Status::permission_denied("unknown join token"));
        }
        self.attests.fetch_add(1, Ordering::SeqCst);
        let name: NodeName = r
            .node_name
            .parse()
            .map_err(|_| Status::invalid_argument("node name"))?;
        let node = NodeId::new(self.td.clone(), name);
        let credentials =
            self.credentials(&node, &r.node_svid_public_key, &r.node_ca_public_key)?;
        Ok(Response::new(AttestResponse {
            credentials: Some(credentials),
        }))
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        // The node is whoever the (verified) client certificate names.
        let Some(PeerCerts(Some(leaf))) = request.extensions().get::<PeerCerts>().cloned() else {
            return Err(Status::unauthenticated("a node SVID is required"));
        };
        let node: NodeId = tls::svid_spiffe_id(&leaf)
            .ok()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| Status::permission_denied("not a node SVID"))?;
        self.renewed_for.lock().unwrap().push(node.to_string());
        let r = request.into_inner();
        let credentials =
            self.credentials(&node, &r.node_svid_public_key, &r.node_ca_public_key)?;
        Ok(Response::new(RenewResponse {
            credentials: Some(credentials),
        }))
    }

    async fn sign_server_svid(
        &self,
        _: Request<SignServerSvidRequest>,
    ) -> Result<Response<SignServerSvidResponse>, Status> {
        Err(Status::unimplemented("not in this stand-in"))
    }

    type SyncStream =
        Pin<Box<dyn futures::Stream<Item = Result<SyncMessage, Status>> + Send + 'static>>;

    async fn sync(&self, _: Request<SyncRequest>) -> Result<Response<Self::SyncStream>, Status> {
        Err(Status::unimplemented("not in this stand-in"))
    }

    async fn report_task_events(
        &self,
        _: Request<tessera_proto::tessera::v1::ReportTaskEventsRequest>,
    ) -> Result<Response<tessera_proto::tessera::v1::ReportTaskEventsResponse>, Status> {
        Err(Status::unimplemented("not in this stand-in"))
    }

    type FollowRevocationsStream = Pin<
        Box<
            dyn futures::Stream<Item = Result<tessera_proto::tessera::v1::RevocationUpdate, Status>>
                + Send
                + 'static,
        >,
    >;

    async fn follow_revocations(
        &self,
        _: Request<tessera_proto::tessera::v1::FollowRevocationsRequest>,
    ) -> Result<Response<Self::FollowRevocationsStream>, Status> {
        Err(Status::unimplemented("not in this stand-in"))
    }

    async fn publish_jwt_keys(
        &self,
        _: Request<tessera_proto::tessera::v1::PublishJwtKeysRequest>,
    ) -> Result<Response<tessera_proto::tessera::v1::PublishJwtKeysResponse>, Status> {
        Err(Status::unimplemented("not in this stand-in"))
    }
}

/// The client's verified leaf, as the connection saw it.
#[derive(Clone, Debug)]
struct PeerCerts(Option<Vec<u8>>);

/// A server-side TLS connection that tells tonic its client's certificate.
struct TlsConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl Connected for TlsConn {
    type ConnectInfo = PeerCerts;
    fn connect_info(&self) -> PeerCerts {
        PeerCerts(
            self.0
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec()),
        )
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    double: Arc<Double>,
    server: ServerConfig,
    data_dir: PathBuf,
    td: TrustDomain,
}

/// A stand-in server on loopback presenting `presented_id`, and an agent config for it.
async fn fixture(presented_id: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let td: TrustDomain = "cluster.test".parse().unwrap();
    let root = Arc::new(
        Authority::open_cluster(
            AuthorityConfig {
                trust_domain: td.clone(),
                dir: dir.path().join("root"),
                mode: CaMode::SelfSigned,
                rotation: RotationPolicy::default(),
            },
            ClusterPolicy {
                node_ca_ttl: Duration::from_secs(3600),
            },
        )
        .unwrap(),
    );
    let own = root
        .issue(&SvidSpec {
            spiffe_id: presented_id,
            ttl: Duration::from_secs(3600),
            not_after_cap: None,
            claims: None,
        })
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in &root.bundle().certs {
        roots.add(CertificateDer::from(der.clone())).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            own.chain_der
                .iter()
                .cloned()
                .map(CertificateDer::from)
                .collect(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(own.key_pkcs8_der.to_vec().into()),
        )
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = async_stream(listener, acceptor);
    let double = Arc::new(Double {
        root: Arc::clone(&root),
        td: td.clone(),
        attests: AtomicUsize::new(0),
        renewed_for: Mutex::new(Vec::new()),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeServer::from_arc(Arc::clone(&double)))
            .serve_with_incoming(incoming),
    );
    let bundle_file = dir.path().join("root.pem");
    let pem: String = root
        .bundle()
        .certs
        .iter()
        .map(|der| pem_block(der))
        .collect();
    std::fs::write(&bundle_file, pem).unwrap();
    let data_dir = dir.path().join("agent");
    Fixture {
        server: ServerConfig {
            addresses: vec![addr.to_string().parse().unwrap()],
            server_id: format!("{}/tessera/server", td.id_string()),
            bundle_file,
            proof: Some(AttestProof::JoinToken(TOKEN.into())),
            node_name: "node-a".parse().unwrap(),
        },
        _dir: dir,
        double,
        data_dir,
        td,
    }
}

fn pem_block(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// Accepted TLS connections; a failed handshake is dropped, not the listener.
fn async_stream(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> impl futures::Stream<Item = Result<TlsConn, std::io::Error>> {
    futures::stream::unfold((listener, acceptor), |(listener, acceptor)| async move {
        loop {
            let (tcp, _) = listener.accept().await.ok()?;
            if let Ok(tls) = acceptor.accept(tcp).await {
                return Some((Ok(TlsConn(tls)), (listener, acceptor)));
            }
        }
    })
}

fn never_draining() -> (drain::Trigger, drain::Watch) {
    drain::channel()
}

#[tokio::test]
async fn first_start_attests_and_a_restart_reuses_the_saved_credentials() {
    let f = fixture("spiffe://cluster.test/tessera/server").await;
    let (_t, drain) = never_draining();
    let link = NodeLink::join(f.server.clone(), &f.data_dir, f.td.clone(), &drain)
        .await
        .unwrap();
    assert_eq!(link.node().to_string(), "spiffe://cluster.test/node/node-a");
    // The agent issues a client SVID with its node CA: leaf, node CA.
    let svid = link
        .authority()
        .issue(&SvidSpec {
            spiffe_id: "spiffe://cluster.test/client/reviewer",
            ttl: Duration::from_secs(60),
            not_after_cap: None,
            claims: None,
        })
        .unwrap();
    assert_eq!(svid.chain_der.len(), 2);
    assert_eq!(svid.issuer_node.as_ref(), Some(link.node()));
    // ... and refuses what a node CA may not sign.
    assert!(
        link.authority()
            .issue(&SvidSpec {
                spiffe_id: "spiffe://cluster.test/mcp/github",
                ttl: Duration::from_secs(60),
                not_after_cap: None,
                claims: None,
            })
            .is_err()
    );
    let file = NodeState::path(&f.data_dir.join("node"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A restart with no proof at all uses what was saved: no second Attest.
    let mut again = f.server.clone();
    again.proof = None;
    let link2 = NodeLink::join(again, &f.data_dir, f.td.clone(), &drain)
        .await
        .unwrap();
    assert_eq!(link2.node(), link.node());
    assert_eq!(f.double.attests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn renewal_goes_over_mtls_with_the_node_svid_and_switches_the_node_ca() {
    let f = fixture("spiffe://cluster.test/tessera/server").await;
    let (_t, drain) = never_draining();
    let link = NodeLink::join(f.server.clone(), &f.data_dir, f.td.clone(), &drain)
        .await
        .unwrap();
    let before = link.authority().bundle();
    let issue = || {
        link.authority()
            .issue(&SvidSpec {
                spiffe_id: "spiffe://cluster.test/client/reviewer",
                ttl: Duration::from_secs(60),
                not_after_cap: None,
                claims: None,
            })
            .unwrap()
            .chain_der[1]
            .clone()
    };
    let old_ca = issue();
    link.renew_once().await.unwrap();
    assert_eq!(
        *f.double.renewed_for.lock().unwrap(),
        vec!["spiffe://cluster.test/node/node-a".to_owned()]
    );
    assert_ne!(issue(), old_ca, "SVIDs now chain to the renewed node CA");
    assert_eq!(link.authority().bundle().certs, before.certs);
    // The renewed credentials are what a restart loads.
    let saved = NodeState::load(&f.data_dir.join("node")).unwrap().unwrap();
    assert_eq!(saved.credentials.node_ca_chain[0], issue());
}

#[tokio::test]
async fn a_refused_join_token_is_final() {
    let mut f = fixture("spiffe://cluster.test/tessera/server").await;
    f.server.proof = Some(AttestProof::JoinToken("wrong".into()));
    let (_t, drain) = never_draining();
    let err = NodeLink::join(f.server.clone(), &f.data_dir, f.td.clone(), &drain)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, NodeError::Refused { status, .. } if status.code() == tonic::Code::PermissionDenied),
        "{err}"
    );
    assert!(NodeState::load(&f.data_dir.join("node")).unwrap().is_none());
}

#[tokio::test]
async fn a_server_presenting_another_identity_gets_no_join_token() {
    // Signed by the right root, but not the server's ID: a node's stolen certificate
    // must not collect join tokens.
    let f = fixture("spiffe://cluster.test/node/impostor").await;
    let replicas = failover::Replicas::new(&f.server.addresses).unwrap();
    let err = attest(&f.server, &replicas, &f.td).await.unwrap_err();
    assert!(format!("{err:?}").contains("expected"), "{err:?}");
    assert_eq!(f.double.attests.load(Ordering::SeqCst), 0);
}
