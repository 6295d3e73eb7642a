//! Cross-process: `tessera-server` replicas with a cluster root (`tessera-server ca init`)
//! on a real PostgreSQL, their Node API driven over real TLS as a node agent would, and
//! join tokens and evictions made with the stock `tessera` CLI.
//!
//! Needs the CLI binary: `cargo build -p tessera-cli --bins` first when run alone.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_authority::{Authority, NodeCaKey};
use tessera_pgtest::PgServer;
use tessera_proto::tessera::v1 as pb;
use tonic::Code;
use x509_parser::prelude::{FromDer, X509Certificate};

mod support;
use support::*;

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
