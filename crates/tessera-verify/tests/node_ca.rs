//! Cluster mode end to end, with the real authority: the cluster's root signs a node CA
//! for a key made on the node, the node's authority issues a task SVID, and an MCP
//! server (tessera-verify's rustls config) accepts it over a real TCP TLS handshake;
//! a server SVID a stolen node CA key signs is refused by the runtime's client config.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tessera_authority::{
    Authority, AuthorityConfig, CaMode, ClusterPolicy, IssuedSvid, NodeCaKey, RotationPolicy,
    SvidSpec,
};
use tessera_identity::{ClientId, Scope, ServerId, TaskClaims, TaskId, TrustDomain};
use tessera_verify::tls::client_config;
use tessera_verify::{Peer, ServerTlsBuilder, TrustMaterial, TrustSource};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};

const TD: &str = "acme.corp";
const SERVER: &str = "spiffe://acme.corp/mcp/github";
const NODE: &str = "spiffe://acme.corp/node/worker-1";

fn ders(chain: &[Vec<u8>]) -> Vec<CertificateDer<'static>> {
    chain
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect()
}

fn key(svid: &IssuedSvid) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key_pkcs8_der.to_vec()))
}

struct Cluster {
    _dir: tempfile::TempDir,
    root: Authority,
    node: Authority,
    node_ca_key: NodeCaKey,
    node_ca_chain: Vec<Vec<u8>>,
}

fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let td: TrustDomain = TD.parse().unwrap();
    let root = Authority::open_cluster(
        AuthorityConfig {
            trust_domain: td.clone(),
            dir: dir.path().join("ca"),
            mode: CaMode::SelfSigned,
            rotation: RotationPolicy::default(),
        },
        ClusterPolicy::default(),
    )
    .unwrap();
    // The node makes its key; the server signs its public half.
    let node_ca_key = NodeCaKey::generate().unwrap();
    let issued = root
        .sign_node_ca(&NODE.parse().unwrap(), &node_ca_key.public_key_der())
        .unwrap();
    let kept = NodeCaKey::from_pkcs8_der(&node_ca_key.to_pkcs8_der()).unwrap();
    let node = Authority::from_node_ca(
        td,
        issued.chain_der.clone(),
        kept,
        root.bundle().certs.clone(),
    )
    .unwrap();
    Cluster {
        _dir: dir,
        root,
        node,
        node_ca_key,
        node_ca_chain: issued.chain_der,
    }
}

fn task_svid(node: &Authority) -> IssuedSvid {
    let client: ClientId = "spiffe://acme.corp/client/code-reviewer".parse().unwrap();
    let task = TaskId::new();
    let claims = TaskClaims {
        version: tessera_identity::TASK_CLAIMS_VERSION,
        task_id: task,
        client_id: client.clone(),
        subject: "alice@acme.corp".into(),
        purpose: "review PR 42".into(),
        server: SERVER.parse::<ServerId>().unwrap(),
        scopes: vec!["github/tool/get_pull_request".parse::<Scope>().unwrap()],
        consent_id: "consent-1".into(),
        deadline_unix: OffsetDateTime::now_utc().unix_timestamp() + 600,
    };
    node.issue(&SvidSpec {
        spiffe_id: &client.task(task).to_string(),
        ttl: Duration::from_secs(300),
        not_after_cap: Some(claims.deadline_unix),
        claims: Some(&claims),
    })
    .unwrap()
}

/// One TLS handshake over loopback TCP; the client's result and the server's peer.
async fn handshake(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
) -> (Result<(), String>, Result<Peer, String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let accepted = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        Peer::from_chain(tls.get_ref().1.peer_certificates()).map_err(|e| e.to_string())
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let connected = connector
        .connect(ServerName::try_from("mcp").unwrap(), tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    (connected, accepted.await.unwrap())
}

/// The MCP server's TLS config: its SVID from the cluster's root, the root's bundle.
fn mcp_server(root: &Authority) -> rustls::ServerConfig {
    mcp_server_with(root, |b| b)
}

/// [`mcp_server`] with `tweak` applied to its builder.
fn mcp_server_with(
    root: &Authority,
    tweak: impl FnOnce(ServerTlsBuilder) -> ServerTlsBuilder,
) -> rustls::ServerConfig {
    let svid = root
        .issue(&SvidSpec {
            spiffe_id: SERVER,
            ttl: Duration::from_secs(3600),
            not_after_cap: None,
            claims: None,
        })
        .unwrap();
    let mut bundles = BTreeMap::new();
    bundles.insert(TD.parse().unwrap(), ders(&root.bundle().certs));
    let material = TrustMaterial::new(
        SERVER.parse().unwrap(),
        ders(&svid.chain_der),
        key(&svid),
        bundles,
        OffsetDateTime::now_utc().unix_timestamp(),
    )
    .unwrap();
    tweak(ServerTlsBuilder::new(TrustSource::from_static(material)))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_task_svid_from_a_node_ca_is_accepted_end_to_end() {
    let c = cluster();
    let task = task_svid(&c.node);
    assert_eq!(task.chain_der.len(), 2, "leaf, node CA");
    assert_eq!(task.issuer_node, Some(NODE.parse().unwrap()));
    let client = client_config(
        &SERVER.parse().unwrap(),
        ders(&c.root.bundle().certs),
        ders(&task.chain_der),
        key(&task),
    )
    .unwrap();
    let (connected, peer) = handshake(mcp_server(&c.root), client).await;
    connected.unwrap();
    let peer = peer.unwrap();
    assert_eq!(peer.spiffe_id(), task.spiffe_id);
    assert!(matches!(peer, Peer::Task { .. }), "{peer:?}");
}

/// The node's authority will not issue a server SVID; a thief with the node CA's key
/// signs one anyway, and the runtime refuses to talk to it.
#[tokio::test]
async fn a_server_svid_from_a_stolen_node_ca_key_is_refused_by_the_runtime() {
    let c = cluster();
    assert!(
        c.node
            .issue(&SvidSpec {
                spiffe_id: SERVER,
                ttl: Duration::from_secs(3600),
                not_after_cap: None,
                claims: None,
            })
            .is_err()
    );
    let node_ca_pem = pem::encode(&pem::Pem::new("CERTIFICATE", c.node_ca_chain[0].clone()));
    let key_pem = pem::encode(&pem::Pem::new(
        "PRIVATE KEY",
        c.node_ca_key.to_pkcs8_der().to_vec(),
    ));
    let stolen = tessera_testca::Ca::from_pem(&node_ca_pem, &key_pem).unwrap();
    let forged = stolen.leaf(SERVER).mint();
    let mut forged_chain = forged.chain.clone();
    forged_chain.push(CertificateDer::from(c.node_ca_chain[0].clone()));
    let impostor = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(forged_chain, forged.key)
    .unwrap();

    let task = task_svid(&c.node);
    let client = client_config(
        &SERVER.parse().unwrap(),
        ders(&c.root.bundle().certs),
        ders(&task.chain_der),
        key(&task),
    )
    .unwrap();
    let (connected, _) = handshake(impostor, client).await;
    let err = connected.unwrap_err();
    assert!(err.contains("NodeCaMayNotIssue"), "{err}");

    // The genuine server, signed by the root, is accepted by the same client.
    let client = client_config(
        &SERVER.parse().unwrap(),
        ders(&c.root.bundle().certs),
        ders(&task.chain_der),
        key(&task),
    )
    .unwrap();
    let (connected, _) = handshake(mcp_server(&c.root), client).await;
    connected.unwrap();
}

/// Revocation feed messages for the eviction tests.
mod feed {
    use tessera_proto::tessera::v1::revocation_update::Update;
    use tessera_proto::tessera::v1::{
        RevocationDelta, RevocationSnapshot, RevocationUpdate, RevokedNodeCa,
    };

    pub const FEED: &str = "feed-1";

    fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    pub fn empty_snapshot() -> RevocationUpdate {
        RevocationUpdate {
            feed_id: FEED.into(),
            update: Some(Update::Snapshot(RevocationSnapshot {
                version: 1,
                trust_domain: "acme.corp".into(),
                ..Default::default()
            })),
            current_as_of_unix_ms: now_ms(),
        }
    }

    pub fn evict(node: &str, serial: &str) -> RevocationUpdate {
        RevocationUpdate {
            feed_id: FEED.into(),
            update: Some(Update::Delta(RevocationDelta {
                from_version: 1,
                version: 2,
                revoked: Vec::new(),
                revoked_node_cas: vec![RevokedNodeCa {
                    node: node.into(),
                    serial: serial.into(),
                    revoked_at_unix_ms: now_ms(),
                    until_unix: now_ms() / 1000 + 3600,
                }],
            })),
            current_as_of_unix_ms: now_ms(),
        }
    }
}

/// Evicting a node: a connection already open through its CA is refused at its next
/// request (reason `revoked`, naming the node), a long-lived stream's guard wakes, and
/// a new handshake through the CA is refused outright. Real authority, real TLS.
#[tokio::test]
async fn an_evicted_node_ca_is_refused_on_an_open_connection_and_at_the_handshake() {
    use tessera_verify::authz::BASE_SCHEMA;
    use tessera_verify::authz::policy::PolicyStore;
    use tessera_verify::{Authorizer, McpMethod, McpRequest, Reason, RevocationWatcher};

    let dir = tempfile::tempdir().unwrap();
    let td: TrustDomain = TD.parse().unwrap();
    let root = Authority::open_cluster(
        AuthorityConfig {
            trust_domain: td.clone(),
            dir: dir.path().join("ca"),
            mode: CaMode::SelfSigned,
            rotation: RotationPolicy::default(),
        },
        ClusterPolicy::default(),
    )
    .unwrap();
    let node_key = NodeCaKey::generate().unwrap();
    let issued = root
        .sign_node_ca(&NODE.parse().unwrap(), &node_key.public_key_der())
        .unwrap();
    let node = Authority::from_node_ca(
        td,
        issued.chain_der.clone(),
        node_key,
        root.bundle().certs.clone(),
    )
    .unwrap();

    let watcher = RevocationWatcher::detached(Duration::from_secs(3600));
    watcher.apply_update(&feed::empty_snapshot()).unwrap();
    let server = mcp_server_with(&root, |b: ServerTlsBuilder| {
        b.refuse_evicted_node_cas(watcher.clone())
    });

    let task = task_svid(&node);
    let client = || {
        client_config(
            &SERVER.parse().unwrap(),
            ders(&root.bundle().certs),
            ders(&task.chain_der),
            key(&task),
        )
        .unwrap()
    };
    let (connected, peer) = handshake(server.clone(), client()).await;
    connected.unwrap();
    let peer = peer.unwrap();
    assert_eq!(
        peer.node_ca_serials(),
        std::slice::from_ref(&issued.serial_hex)
    );

    let policies = Arc::new(
        PolicyStore::from_strs("permit(principal, action, resource);", BASE_SCHEMA).unwrap(),
    );
    let authz = Arc::new(Authorizer::new(
        SERVER.parse().unwrap(),
        policies,
        watcher.clone(),
    ));
    let call = McpRequest {
        method: McpMethod::ToolsCall,
        target: "get_pull_request".into(),
        arguments: None,
    };
    assert!(authz.check(&peer, &call).allowed, "before the eviction");
    let guard = tokio::spawn({
        let (authz, peer) = (authz.clone(), peer.clone());
        async move { authz.until_denied(&peer).await }
    });

    watcher
        .apply_update(&feed::evict(NODE, &issued.serial_hex))
        .unwrap();
    let d = authz.check(&peer, &call);
    assert!(!d.allowed);
    assert_eq!(d.reason, Reason::Revoked);
    assert!(d.detail.contains(NODE), "{}", d.detail);
    let ended = tokio::time::timeout(Duration::from_secs(10), guard)
        .await
        .expect("the stream guard wakes on the eviction")
        .unwrap();
    assert_eq!(ended.reason, Reason::Revoked);

    // TLS 1.3: the client finishes its side before the server reads its certificate,
    // so only the server's side tells.
    let (_, peer) = handshake(server, client()).await;
    let err = peer.unwrap_err();
    assert!(err.contains("EvictedNodeCa") && err.contains(NODE), "{err}");
}
