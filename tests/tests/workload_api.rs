//! The SPIFFE Workload API of a real tessera-agent, driven by the `spiffe`
//! crate's reference clients over a real unix socket.

use std::time::Duration;

use futures::StreamExt;
use tessera_e2e::{TRUST_DOMAIN, TestAgent};
use tessera_proto::tessera::v1::{CreateEntryRequest, DeleteEntryRequest};
use tessera_proto::workload::X509svidRequest;
use x509_parser::prelude::{FromDer, X509Certificate};

fn verifies_under(leaf: &[u8], cas: &[&[u8]]) -> bool {
    let (_, leaf) = X509Certificate::from_der(leaf).unwrap();
    cas.iter().any(|ca| {
        let (_, ca) = X509Certificate::from_der(ca).unwrap();
        leaf.verify_signature(Some(ca.public_key())).is_ok()
    })
}

#[tokio::test]
async fn registered_caller_gets_an_svid_that_chains_to_the_bundle() {
    let agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();

    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let ctx = client.fetch_x509_context().await.unwrap();
    let svid = ctx.default_svid().expect("an SVID");
    assert_eq!(
        svid.spiffe_id().to_string(),
        format!("spiffe://{TRUST_DOMAIN}/client/code-reviewer")
    );
    assert_eq!(svid.hint(), Some("code-reviewer"));

    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();
    let bundle = ctx
        .bundle_set()
        .get(&td)
        .expect("own trust domain's bundle");
    let cas: Vec<&[u8]> = bundle.authorities().iter().map(|c| c.as_ref()).collect();
    let leaf = svid.cert_chain()[0].as_ref();
    assert!(verifies_under(leaf, &cas), "SVID must chain to the bundle");
    let profile = tessera_identity::check_leaf_svid(leaf).unwrap();
    assert!(profile.not_after_unix - profile.not_before_unix <= 3600 + 10);

    // FetchX509Bundles agrees with the bundle in the SVID response.
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let b = bundles.get(&td).unwrap();
    assert_eq!(b.authorities().len(), cas.len());
}

#[tokio::test]
async fn x509_source_follows_rotation_on_the_open_stream() {
    let agent = TestAgent::start("client_svid_ttl = \"4s\"").await.unwrap();
    agent.register_self("rotating").await.unwrap();

    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let mut stream = client.stream_x509_svids().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    let next = tokio::time::timeout(Duration::from_secs(6), stream.next())
        .await
        .expect("a rotated SVID within the TTL")
        .unwrap()
        .unwrap();
    assert_eq!(first.spiffe_id(), next.spiffe_id());
    assert_ne!(
        first.cert_chain()[0].as_ref(),
        next.cert_chain()[0].as_ref(),
        "a new certificate"
    );

    // X509Source, the reference long-lived client, sees it too.
    let source = spiffe::X509Source::builder()
        .endpoint(agent.endpoint())
        .build()
        .await
        .unwrap();
    let mut updates = source.updated();
    let before = source.svid().unwrap();
    tokio::time::timeout(Duration::from_secs(6), updates.changed())
        .await
        .expect("X509Source update within the TTL")
        .unwrap();
    let after = source.svid().unwrap();
    assert_ne!(
        before.cert_chain()[0].as_ref(),
        after.cert_chain()[0].as_ref()
    );
    source.shutdown().await;
}

#[tokio::test]
async fn request_without_security_header_is_invalid_argument() {
    let agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let channel = TestAgent::channel(&agent.workload).await.unwrap();
    let mut raw =
        tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
    let err = raw.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("security header"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn unregistered_caller_is_permission_denied() {
    let agent = TestAgent::start("").await.unwrap();
    // An entry for someone else: same binary, another uid.
    agent
        .admin_client()
        .await
        .unwrap()
        .create_entry(CreateEntryRequest {
            client: "someone-else".into(),
            selectors: vec!["unix:uid:4242424".into()],
            svid_ttl_secs: 0,
            server: String::new(),
        })
        .await
        .unwrap();
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    // PermissionDenied with SPIRE's wording, which the spiffe crate maps to NoIdentityIssued.
    let err = client.fetch_x509_svid().await.unwrap_err();
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "expected NoIdentityIssued, got {err:?}"
    );
    let err = client.fetch_x509_bundles().await.unwrap_err();
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "{err:?}"
    );
    // On the wire it is PermissionDenied and nothing else.
    let channel = TestAgent::channel(&agent.workload).await.unwrap();
    let mut raw =
        tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
    let mut req = tonic::Request::new(X509svidRequest {});
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let status = raw.fetch_x509svid(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn deleting_the_entry_ends_the_open_stream_with_permission_denied() {
    let agent = TestAgent::start("").await.unwrap();
    let entry = agent.register_self("short-lived").await.unwrap();
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let mut stream = client.stream_x509_svids().await.unwrap();
    stream.next().await.unwrap().unwrap();
    agent
        .admin_client()
        .await
        .unwrap()
        .delete_entry(DeleteEntryRequest { id: entry.id })
        .await
        .unwrap();
    let item = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream reacts to the deletion");
    match item {
        Some(Err(spiffe::WorkloadApiError::NoIdentityIssued)) => {}
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}

#[tokio::test]
async fn ca_survives_restart_and_old_svids_still_chain() {
    let mut agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let before = client.fetch_x509_context().await.unwrap();
    agent.kill();
    agent.spawn().await.unwrap();
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let after = client.fetch_x509_context().await.unwrap();
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();
    let cas_before: Vec<Vec<u8>> = before
        .bundle_set()
        .get(&td)
        .unwrap()
        .authorities()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    let cas_after: Vec<Vec<u8>> = after
        .bundle_set()
        .get(&td)
        .unwrap()
        .authorities()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    assert_eq!(cas_before, cas_after, "same CA after restart");
    let old_leaf = before.default_svid().unwrap().cert_chain()[0].as_ref();
    let cas: Vec<&[u8]> = cas_after.iter().map(Vec::as_slice).collect();
    assert!(verifies_under(old_leaf, &cas));
    // The entry survived too (it was served without re-registering).
    assert_eq!(
        after.default_svid().unwrap().spiffe_id(),
        before.default_svid().unwrap().spiffe_id()
    );
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_removes_sockets() {
    let mut agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    // An open stream must not hold up shutdown.
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let mut stream = client.stream_x509_svids().await.unwrap();
    stream.next().await.unwrap().unwrap();
    let status = agent.terminate(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "{status}\n{}", agent.log_text());
    assert!(!agent.workload.exists() && !agent.admin.exists());
}

#[tokio::test]
async fn health_ready_and_metrics_are_served() {
    let agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    client.fetch_x509_svid().await.unwrap();
    let get = |path: &str| {
        let addr = agent.http;
        let path = path.to_owned();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    // A stream counts when it ends: the client above closed it, and the agent sees
    // that a moment later.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let metrics = get("/metrics").await;
        if metrics.contains("rpc=\"FetchX509SVID\"") || std::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        metrics.contains("tessera_svids_issued_total{kind=\"client\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tessera_entries 1"), "{metrics}");
    assert!(
        metrics.contains("rpc=\"FetchX509SVID\",code=\"Ok\""),
        "{metrics}"
    );
    // The store writer's counters: registering the entry was at least one durable write.
    let value = |series: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
    };
    assert!(
        value("tessera_store_commits_total ") >= Some(1.0),
        "{metrics}"
    );
    assert!(
        value("tessera_store_writes_total ") >= Some(1.0),
        "{metrics}"
    );
    assert!(
        value("tessera_store_commit_seconds_total ") > Some(0.0),
        "{metrics}"
    );
    assert!(
        value("tessera_store_wal_checkpoints_total{by=\"writer\"} ").is_some(),
        "{metrics}"
    );
}

#[tokio::test]
async fn admin_socket_is_0600_and_workload_socket_is_open() {
    use std::os::unix::fs::PermissionsExt;
    let agent = TestAgent::start("").await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&agent.admin), 0o600);
    assert_eq!(mode(&agent.workload), 0o777);
    assert_eq!(mode(&agent.dir.path().join("data/tessera.db")), 0o600);
}
