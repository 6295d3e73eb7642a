//! How a real tessera-agent runs: shutdown with streams open, one log span per
//! connection, and configuration errors reported all at once.

use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tessera_e2e::{TestAgent, bin};
use tessera_proto::WORKLOAD_HEADER;
use tessera_proto::tessera::v1::WatchRevocationsRequest;
use tessera_proto::tessera::v1::revocations_client::RevocationsClient;
use tessera_proto::workload::X509svidRequest;
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

#[tokio::test]
async fn sigterm_ends_open_svid_and_revocation_streams_before_the_drain_deadline() {
    let mut agent = TestAgent::start("").await.unwrap();
    agent.register_self("verifier").await.unwrap();
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let mut svids = client.stream_x509_svids().await.unwrap();
    svids.next().await.unwrap().unwrap();
    let mut feed = RevocationsClient::new(TestAgent::channel(&agent.workload).await.unwrap())
        .watch(WatchRevocationsRequest {})
        .await
        .unwrap()
        .into_inner();
    feed.message()
        .await
        .unwrap()
        .expect("the revoked set, first thing");

    // Waiting for the exit off this runtime, so the clients' connections keep being
    // served meanwhile (HTTP/2's graceful shutdown needs the client to answer a PING).
    let (status, agent) = tokio::task::spawn_blocking(move || {
        let status = agent.terminate(Duration::from_secs(30));
        (status, agent)
    })
    .await
    .unwrap();
    let status = status.unwrap();
    let log = agent.log_text();
    assert!(status.success(), "{status}\n{log}");
    // Every stream ended when the drain began: nothing was left for the deadline
    // (10 s) to abandon.
    assert!(!log.contains("shutdown deadline passed"), "{log}");
    assert!(!log.contains("did not stop"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(!agent.workload.exists() && !agent.admin.exists());
    // Both clients see their stream end rather than wait on a dead connection.
    let end = tokio::time::timeout(Duration::from_secs(10), feed.message())
        .await
        .expect("the revocation stream ends");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
    let end = tokio::time::timeout(Duration::from_secs(10), svids.next())
        .await
        .expect("the SVID stream ends");
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
}

/// The `conn` span a JSON log line was emitted in.
fn conn_span(line: &Value) -> &Value {
    line["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|s| s["name"] == "conn"))
        .unwrap_or_else(|| panic!("no conn span in {line}"))
}

#[tokio::test]
async fn log_lines_of_one_connection_carry_its_id_and_peer() {
    let agent = TestAgent::start("[log]\nformat = \"json\"").await.unwrap();
    // Nothing is registered: every FetchX509SVID is refused, and each refusal logged.
    let fetch = |client: &mut SpiffeWorkloadApiClient<tonic::transport::Channel>| {
        let mut req = tonic::Request::new(X509svidRequest {});
        req.metadata_mut()
            .insert(WORKLOAD_HEADER, "true".parse().unwrap());
        let mut client = client.clone();
        async move {
            let err = client.fetch_x509svid(req).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
        }
    };
    let mut one = SpiffeWorkloadApiClient::new(TestAgent::channel(&agent.workload).await.unwrap());
    fetch(&mut one).await;
    fetch(&mut one).await;
    let mut other =
        SpiffeWorkloadApiClient::new(TestAgent::channel(&agent.workload).await.unwrap());
    fetch(&mut other).await;

    let log = agent.log_text();
    let refusals: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "caller matches no entry")
        .collect();
    assert_eq!(refusals.len(), 3, "{log}");
    let ids: Vec<u64> = refusals
        .iter()
        .map(|l| {
            conn_span(l)["id"]
                .as_u64()
                .expect("a numeric connection id")
        })
        .collect();
    assert_eq!(ids[0], ids[1], "one connection, one id: {log}");
    assert_ne!(ids[1], ids[2], "another connection, another id: {log}");
    // The span names the peer as the kernel reported it at accept.
    for l in &refusals {
        let span = conn_span(l);
        assert_eq!(span["pid"], u64::from(std::process::id()), "{l}");
        assert_eq!(
            span["uid"],
            u64::from(nix::unistd::geteuid().as_raw()),
            "{l}"
        );
    }
}

#[test]
fn every_bad_setting_is_reported_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "trust_domain = \"Not A Domain\"\n").unwrap();
    let out = Command::new(bin("tessera-agent"))
        .arg("--config")
        .arg(&config)
        .arg("print-config")
        .env("TESSERA_CLIENT_SVID_TTL", "soon")
        .env("TESSERA_ADMIN_UIDS", "root")
        .env_remove("TESSERA_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for source in [
        "environment variable TESSERA_ADMIN_UIDS=\"root\"",
        "environment variable TESSERA_CLIENT_SVID_TTL=\"soon\"",
        "`trust_domain` in config file",
    ] {
        assert!(err.contains(source), "{source} missing from: {err}");
    }
}
