//! Hostile input on the agent's sockets: each gets a clear error or a closed
//! connection, the agent stays up, and nothing is granted.

#[path = "support/serving.rs"]
mod serving;
use serving::still_serves;

use std::time::{Duration, Instant};

use tessera_e2e::{TRUST_DOMAIN, TestAgent};
use tessera_proto::tessera::v1::{CreateEntryRequest, ListEntriesRequest};
use tessera_proto::workload::X509svidRequest;
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codegen::Body as _;
use tonic::codegen::http;
use tower::ServiceExt;

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
    let mut agent = TestAgent::start("").await.unwrap();
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
    still_serves(&mut agent).await;
}

#[tokio::test]
async fn oversized_request_is_refused_and_the_agent_stays_up() {
    let mut agent = TestAgent::start("").await.unwrap();
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
    still_serves(&mut agent).await;
}

#[tokio::test]
async fn many_idle_connections_do_not_starve_real_callers() {
    let mut agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(
            tokio::net::UnixStream::connect(&agent.workload)
                .await
                .unwrap(),
        );
    }
    still_serves(&mut agent).await;
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

/// Sends one gRPC request whose body is exactly `body` (length-prefixed messages as
/// the caller wrote them, right or wrong) over a well-formed HTTP/2 connection, and
/// returns the status the agent answers with. A body that is not valid UTF-8 cannot
/// be sent this way; the cases below keep every byte ASCII.
async fn raw_grpc(socket: &std::path::Path, method: &str, body: String) -> tonic::Status {
    let channel = TestAgent::channel(socket).await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://tessera.invalid{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("workload.spiffe.io", "true")
        .body(tonic::body::Body::new(body))
        .unwrap();
    let answer = async {
        let mut resp = channel.oneshot(req).await.unwrap();
        if let Some(status) = tonic::Status::from_header_map(resp.headers()) {
            return status;
        }
        loop {
            let frame =
                std::future::poll_fn(|cx| std::pin::Pin::new(resp.body_mut()).poll_frame(cx))
                    .await
                    .expect("the agent ends the response with a grpc-status")
                    .expect("a well-formed response body");
            if let Some(status) = frame
                .trailers_ref()
                .and_then(tonic::Status::from_header_map)
            {
                return status;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer within 10 s"))
}

/// The 5-byte gRPC message prefix: compressed flag, then the length, big-endian.
fn prefix(compressed: bool, len: u32) -> String {
    let mut bytes = vec![u8::from(compressed)];
    bytes.extend_from_slice(&len.to_be_bytes());
    String::from_utf8(bytes).expect("an ASCII length")
}

#[tokio::test]
async fn malformed_grpc_messages_on_the_admin_socket_get_a_clear_status() {
    let mut agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let entries = || async {
        agent
            .admin_client()
            .await
            .unwrap()
            .list_entries(ListEntriesRequest {})
            .await
            .unwrap()
            .into_inner()
            .entries
            .len()
    };
    let before = entries().await;
    const CREATE: &str = "/tessera.v1.Admin/CreateEntry";
    let cases: Vec<(&str, &str, String, &[tonic::Code])> = vec![
        (
            "a message cut short (1124 bytes announced, 10 sent)",
            CREATE,
            prefix(false, 0x464) + "\x0a\x08truncat",
            &[tonic::Code::Internal, tonic::Code::Cancelled],
        ),
        (
            "a 64 MiB message announced",
            CREATE,
            prefix(false, 0x0400_0000) + "\x0a\x03big",
            &[tonic::Code::ResourceExhausted, tonic::Code::OutOfRange],
        ),
        (
            "bytes that are not protobuf (wire type 7)",
            CREATE,
            prefix(false, 3) + "\x0f\x0f\x0f",
            &[tonic::Code::Internal, tonic::Code::InvalidArgument],
        ),
        (
            "the compressed flag without a grpc-encoding",
            CREATE,
            prefix(true, 3) + "\x0a\x01x",
            &[tonic::Code::Internal, tonic::Code::Unimplemented],
        ),
    ];
    for (what, method, body, expected) in cases {
        let status = raw_grpc(&agent.admin, method, body).await;
        eprintln!("{what}: {:?} {}", status.code(), status.message());
        assert!(
            expected.contains(&status.code()),
            "{what}: expected one of {expected:?}, got {status:?}"
        );
        assert!(
            !status.message().is_empty(),
            "{what}: a status without a message"
        );
    }
    // The same framing errors on the workload socket.
    let status = raw_grpc(
        &agent.workload,
        "/SpiffeWorkloadAPI/FetchX509SVID",
        prefix(false, 0x464) + "\x0a\x08truncat",
    )
    .await;
    assert_ne!(status.code(), tonic::Code::Ok, "{status:?}");
    // Control: the same path with a well-formed empty message succeeds.
    let status = raw_grpc(
        &agent.admin,
        "/tessera.v1.Admin/ListEntries",
        prefix(false, 0),
    )
    .await;
    assert_eq!(status.code(), tonic::Code::Ok, "{status:?}");

    assert_eq!(entries().await, before, "no entry was created");
    still_serves(&mut agent).await;
}

/// Lifts this process's soft open-file limit to at least `want` (up to the hard limit).
fn raise_nofile(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < want {
        assert!(
            hard >= want,
            "this test needs {want} open files; the hard limit is {hard}"
        );
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_open_svid_streams_are_all_served_and_a_new_caller_still_is() {
    const STREAMS: usize = 1000;
    // One connection per stream, as 1,000 separate runtimes would have, plus headroom.
    raise_nofile(STREAMS as u64 + 512);
    let mut agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let want = format!("spiffe://{TRUST_DOMAIN}/client/code-reviewer");

    let started = Instant::now();
    // Bounded concurrency while connecting only (the listen backlog is finite); every
    // stream stays open to the end.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..STREAMS {
        let (gate, socket, want) = (gate.clone(), agent.workload.clone(), want.clone());
        opening.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let mut client = SpiffeWorkloadApiClient::new(TestAgent::channel(&socket).await?);
            let mut req = tonic::Request::new(X509svidRequest {});
            req.metadata_mut()
                .insert("workload.spiffe.io", "true".parse().unwrap());
            let mut stream = client.fetch_x509svid(req).await?.into_inner();
            let first = stream.message().await?.expect("a first message");
            assert_eq!(first.svids.len(), 1);
            assert_eq!(first.svids[0].spiffe_id, want);
            anyhow::Ok((client, stream))
        });
    }
    let mut open = Vec::with_capacity(STREAMS);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    while let Some(joined) = tokio::time::timeout_at(deadline, opening.join_next())
        .await
        .unwrap_or_else(|_| panic!("only {} streams served within 25 s", open.len()))
    {
        open.push(joined.unwrap().unwrap_or_else(|e| {
            panic!("stream {} failed: {e:#}\n{}", open.len(), agent.log_text())
        }));
    }
    let all_served = started.elapsed();
    assert_eq!(open.len(), STREAMS);

    // The agent counts them, and a new caller is served while they are all open.
    tessera_example_agent_runtime::install_crypto_provider();
    let metrics = reqwest::get(format!("http://{}/metrics", agent.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open_streams: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tessera_open_streams "))
        .expect("tessera_open_streams in /metrics")
        .trim()
        .parse()
        .unwrap();
    assert!(
        open_streams >= STREAMS as f64,
        "tessera_open_streams {open_streams}"
    );
    let newcomer = Instant::now();
    still_serves(&mut agent).await;
    let newcomer = newcomer.elapsed();

    // Every open stream still follows changes: a new entry for this process reaches all.
    let fanout = Instant::now();
    agent
        .admin_client()
        .await
        .unwrap()
        .create_entry(CreateEntryRequest {
            client: "second-identity".into(),
            selectors: vec![format!("unix:uid:{}", nix::unistd::geteuid())],
            svid_ttl_secs: 0,
            server: String::new(),
        })
        .await
        .unwrap();
    for (i, (_, stream)) in open.iter_mut().enumerate() {
        let next = tokio::time::timeout(Duration::from_secs(15), stream.message())
            .await
            .unwrap_or_else(|_| panic!("stream {i} got no update within 15 s"))
            .unwrap()
            .expect("stream still open");
        assert_eq!(next.svids.len(), 2, "stream {i}");
    }
    let fanout = fanout.elapsed();
    let mem = agent.memory().unwrap();
    eprintln!(
        "{STREAMS} streams: all first SVIDs in {all_served:?}; newcomer served in {newcomer:?}; \
         entry change reached all in {fanout:?}; agent VmRSS {} MiB, VmHWM {} MiB",
        mem.rss >> 20,
        mem.peak_rss >> 20
    );
    drop(open);
    still_serves(&mut agent).await;
}

/// Issue 13: free text from a socket (here a consent's subject, from the admin API) is
/// logged quoted and escaped, so a line break in it cannot start a log line of its own.
#[tokio::test]
async fn a_line_break_in_a_consent_subject_cannot_forge_an_agent_log_line() {
    let agent = TestAgent::start("").await.unwrap();
    let subject = "alice@acme.corp\nFORGED-SUBJECT INFO tessera_agent::tasks: task begun";
    agent
        .grant(
            "code-reviewer",
            subject,
            "github",
            &["github/tool/get_pull_request"],
        )
        .await
        .unwrap();
    let log = agent.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("FORGED-SUBJECT"))
        .collect();
    assert!(
        !lines.is_empty(),
        "the grant is logged with its subject:\n{log}"
    );
    for line in lines {
        assert!(
            line.contains("consent granted"),
            "the subject started a line of its own: {line:?}"
        );
    }
}
