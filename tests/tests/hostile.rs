//! Hostile input on the agent's sockets: each gets a clear error or a closed
//! connection, the agent stays up, and nothing is granted.

use std::time::Duration;

use tessera_e2e::TestAgent;
use tessera_proto::tessera::v1::CreateEntryRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn still_serves(agent: &TestAgent) {
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    client
        .fetch_x509_svid()
        .await
        .expect("agent still serves after hostile input");
    agent
        .admin_client()
        .await
        .unwrap()
        .list_entries(tessera_proto::tessera::v1::ListEntriesRequest {})
        .await
        .expect("admin API still answers");
}

/// Writes `bytes` and reads until the agent closes (or 2 s pass).
async fn send_raw(path: &std::path::Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn garbage_and_truncated_frames_are_dropped_and_the_agent_stays_up() {
    let agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut truncated = preface.to_vec();
    // A SETTINGS frame header announcing 1 KiB of payload, then nothing.
    truncated.extend_from_slice(&[0x00, 0x04, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00]);
    let mut bogus_frame = preface.to_vec();
    // A frame of an unknown type with a 16 MiB length.
    bogus_frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xee, 0x00, 0x00, 0x00, 0x00, 0x01]);
    let inputs: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect(),
        vec![0u8; 65536],
        truncated,
        bogus_frame,
        preface[..10].to_vec(),
    ];
    for socket in [&agent.workload, &agent.admin] {
        for input in &inputs {
            let reply = send_raw(socket, input).await;
            // Whatever came back, it was not an SVID or a listing.
            assert!(
                reply.len() < 1024,
                "unexpectedly large reply to garbage: {} bytes",
                reply.len()
            );
        }
    }
    still_serves(&agent).await;
}

#[tokio::test]
async fn oversized_request_is_refused_and_the_agent_stays_up() {
    let agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let mut admin = agent.admin_client().await.unwrap();
    let err = admin
        .create_entry(CreateEntryRequest {
            client: "big".into(),
            selectors: vec![format!("unix:path:/{}", "a".repeat(256 * 1024))],
            svid_ttl_secs: 0,
            server: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::ResourceExhausted | tonic::Code::OutOfRange | tonic::Code::InvalidArgument
        ),
        "{err:?}"
    );
    // Just under the transport limit, the agent's own limits answer precisely.
    let err = admin
        .create_entry(CreateEntryRequest {
            client: "big".into(),
            selectors: vec![format!("unix:path:/{}", "a".repeat(16 * 1024))],
            svid_ttl_secs: 0,
            server: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    still_serves(&agent).await;
}

#[tokio::test]
async fn many_idle_connections_do_not_starve_real_callers() {
    let agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(
            tokio::net::UnixStream::connect(&agent.workload)
                .await
                .unwrap(),
        );
    }
    still_serves(&agent).await;
    drop(idle);
}

#[tokio::test]
async fn a_symlink_to_a_registered_path_is_not_that_path() {
    let agent = TestAgent::start("").await.unwrap();
    let cli = std::fs::canonicalize(tessera_e2e::bin("tessera")).unwrap();
    let link = agent.dir.path().join("innocent-looking");
    std::os::unix::fs::symlink(&cli, &link).unwrap();
    // Registered by the link's path: running through the link still reports
    // the real executable, so the entry does not match.
    agent
        .admin_client()
        .await
        .unwrap()
        .create_entry(CreateEntryRequest {
            client: "by-link".into(),
            selectors: vec![format!("unix:path:{}", link.display())],
            svid_ttl_secs: 0,
            server: String::new(),
        })
        .await
        .unwrap();
    let out = std::process::Command::new(&link)
        .args(["--socket", &agent.endpoint(), "svid", "fetch"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn a_copied_binary_with_another_hash_is_refused() {
    let agent = TestAgent::start("").await.unwrap();
    let cli = std::fs::canonicalize(tessera_e2e::bin("tessera")).unwrap();
    let copy = agent.dir.path().join("tessera-copy");
    std::fs::copy(&cli, &copy).unwrap();
    let digest = {
        let out = std::process::Command::new("sha256sum")
            .arg(&cli)
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    agent
        .admin_client()
        .await
        .unwrap()
        .create_entry(CreateEntryRequest {
            client: "pinned".into(),
            selectors: vec![
                format!("unix:path:{}", copy.display()),
                format!("unix:sha256:{digest}"),
            ],
            svid_ttl_secs: 0,
            server: String::new(),
        })
        .await
        .unwrap();
    let fetch = |exe: &std::path::Path| {
        std::process::Command::new(exe)
            .args(["--socket", &agent.endpoint(), "svid", "fetch"])
            .output()
            .unwrap()
    };
    assert!(
        fetch(&copy).status.success(),
        "identical copy matches path and hash"
    );
    // Replace the copy with different content at the same path: the hash no longer matches.
    let mut bytes = std::fs::read(&cli).unwrap();
    bytes.extend_from_slice(b"tampered");
    let tmp = agent.dir.path().join("tessera-copy.new");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::set_permissions(
        &tmp,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    std::fs::rename(&tmp, &copy).unwrap();
    let out = fetch(&copy);
    assert!(
        !out.status.success(),
        "tampered binary must not get the identity"
    );
}
