//! Cross-process: `Node.PublishJwtKeys` on `tessera-server` replicas over real TLS and a
//! real PostgreSQL, as node agents call it: the bounds (malformed, too many, unmarked,
//! expired or outliving the node CA, another node's kid, no or an evicted node), and the
//! keys reaching another node's `Sync` stream through the other replica, withdrawn by
//! eviction.
//!
//! Needs the CLI binary: `cargo build -p tessera-cli --bins` first when run alone.

use serde_json::Value;
use tessera_pgtest::PgServer;
use tessera_proto::tessera::v1 as pb;
use tonic::Code;
use x509_parser::prelude::{FromDer, X509Certificate};

mod support;
use support::*;

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// A fresh P-256 public key as a node publishes it.
fn key(kid: &str, not_after: i64) -> pb::JwtSigningKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = pair.public_key_raw();
    pb::JwtSigningKey {
        kid: kid.into(),
        x: point[1..33].to_vec(),
        y: point[33..].to_vec(),
        not_after_unix: not_after,
    }
}

fn ca_not_after(creds: &pb::NodeCredentials) -> i64 {
    let (_, ca) = X509Certificate::from_der(&creds.node_ca_chain[0]).unwrap();
    ca.validity().not_after.timestamp()
}

fn publish(keys: Vec<pb::JwtSigningKey>) -> pb::PublishJwtKeysRequest {
    pb::PublishJwtKeysRequest { keys }
}

/// Reads `stream` until a `jwt_keys_put` for `node` arrives; its keys' ids.
async fn next_keys_of(stream: &mut tonic::Streaming<pb::SyncMessage>, node: &str) -> Vec<String> {
    loop {
        let msg = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("a sync message in time")
            .unwrap()
            .expect("the stream goes on");
        let changes = match msg.message {
            Some(pb::sync_message::Message::Changes(c)) => c.changes,
            _ => continue,
        };
        for change in changes {
            if let Some(pb::change::Change::JwtKeysPut(k)) = change.change
                && k.node == node
            {
                return k.keys.into_iter().map(|k| k.kid).collect();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_jwt_keys_are_bounded_reach_other_nodes_and_leave_with_eviction() {
    let Some(pg) = PgServer::start_or_skip("tessera-server node JWT keys").await else {
        return;
    };
    let database = database_name(&pg.create_database().await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    ca_init(&ca_dir, TD);
    let bundle = bundle_of(&ca_dir);
    let one = Replica::start(&pg, &database, dir.path(), &ca_dir, "one");
    let two = Replica::start(&pg, &database, dir.path(), &ca_dir, "two");
    let (_, creds_a, mut a) = attested_node(&one, &bundle, "worker-a").await;
    let (_, _, mut b) = attested_node(&two, &bundle, "worker-b").await;
    let ca_end = ca_not_after(&creds_a);
    let good = ca_end - 60;

    // Without a node SVID: no.
    let mut anon = node_client(one.node, &bundle, None).await;
    let status = anon
        .publish_jwt_keys(publish(vec![key("node-a1", good)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Hostile or careless sets, each refused whole, naming the key.
    let mut off_curve = key("node-a1", good);
    off_curve.y[31] ^= 1;
    let mut short = key("node-a1", good);
    short.x.truncate(31);
    let too_many: Vec<_> = (0..9).map(|i| key(&format!("node-a{i}"), good)).collect();
    for (what, keys, says) in [
        ("off the curve", vec![off_curve], "P-256"),
        ("a short coordinate", vec![short], "P-256"),
        ("too many", too_many, "at most 8"),
        ("no node mark", vec![key("a1", good)], "must start with"),
        ("a bad kid", vec![key("node-a/1", good)], "[A-Za-z0-9_-]"),
        (
            "an overlong kid",
            vec![key(&format!("node-{}", "a".repeat(60)), good)],
            "[A-Za-z0-9_-]",
        ),
        (
            "a repeated kid",
            vec![key("node-a1", good), key("node-a1", good)],
            "repeated",
        ),
        ("expired", vec![key("node-a1", now() - 1)], "has passed"),
        (
            "past the node CA",
            vec![key("node-a1", ca_end + 1)],
            "past the node CA",
        ),
    ] {
        let status = a.publish_jwt_keys(publish(keys)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().contains(says),
            "{what}: {}",
            status.message()
        );
    }

    // B follows the registrations through replica two.
    let mut stream = b
        .sync(pb::SyncRequest { since_version: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(first.message, Some(pb::sync_message::Message::Snapshot(ref s)) if s.jwt_keys.is_empty())
    );

    // A publishes through replica one; B's stream on replica two gets the set.
    let published = vec![key("node-a1", good), key("node-a2", good - 10)];
    let version = a
        .publish_jwt_keys(publish(published.clone()))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert_eq!(
        next_keys_of(&mut stream, "worker-a").await,
        ["node-a1", "node-a2"]
    );
    // The same set again writes nothing.
    let again = a
        .publish_jwt_keys(publish(published.clone()))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert_eq!(again, version, "an unchanged set is not a change");

    // B may not take A's kid (its own set is left as it was).
    let status = b
        .publish_jwt_keys(publish(vec![key("node-a1", good)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("another node's"),
        "{}",
        status.message()
    );
    b.publish_jwt_keys(publish(vec![key("node-b1", good)]))
        .await
        .unwrap();

    // A new follower gets every node's keys in its snapshot.
    let (_, _, mut c) = attested_node(&two, &bundle, "worker-c").await;
    let mut fresh = c
        .sync(pb::SyncRequest { since_version: 0 })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::sync_message::Message::Snapshot(snapshot)) =
        fresh.message().await.unwrap().unwrap().message
    else {
        panic!("a snapshot first");
    };
    let mut held: Vec<(String, Vec<String>)> = snapshot
        .jwt_keys
        .iter()
        .map(|k| {
            (
                k.node.clone(),
                k.keys.iter().map(|k| k.kid.clone()).collect(),
            )
        })
        .collect();
    held.sort();
    assert_eq!(
        held,
        [
            (
                "worker-a".to_owned(),
                vec!["node-a1".to_owned(), "node-a2".to_owned()]
            ),
            ("worker-b".to_owned(), vec!["node-b1".to_owned()]),
        ]
    );

    // Evicting A withdraws its keys at once: B's stream gets A's empty set, and A can
    // publish no more.
    let evicted = one.cli(&["node", "evict", "worker-a"]);
    assert_eq!(evicted["status"], "evicted");
    assert!(next_keys_of(&mut stream, "worker-a").await.is_empty());
    let status = a
        .publish_jwt_keys(publish(vec![key("node-a3", good)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // Audited, naming the node.
    let out = std::process::Command::new(bin("tessera"))
        .arg("--admin-socket")
        .arg(&one.admin)
        .args(["audit", "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let records: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let published: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "node.jwt_keys")
        .collect();
    assert_eq!(
        published.len(),
        2,
        "A once (the repeat wrote nothing), B once"
    );
    assert!(published.iter().any(|r| r["actor"] == "node:worker-a"
        && r["detail"]["node"] == "worker-a"
        && r["detail"]["kids"] == serde_json::json!(["node-a1", "node-a2"])));
}
