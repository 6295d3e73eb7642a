//! The example MCP server's start-up checks, run as an operator runs it.
//!
//! Also makes `cargo test --workspace` build this binary, which the cross-process
//! MCP tests and the demo start (cargo builds a package's binaries only for its own
//! integration tests).

use std::io::BufRead;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const SERVER: &str = env!("CARGO_BIN_EXE_tessera-example-mcp-server");

fn server(args: &[&str]) -> Output {
    Command::new(SERVER)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .env_remove("TESSERA_TRUST_DOMAIN")
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LOG", "off")
        .args(args)
        .output()
        .expect("running the example MCP server")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn without_an_identity_source_it_says_which_flags_give_one() {
    let out = server(&["--trust-domain", "example.org"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--workload-socket") && err.contains("SPIFFE_ENDPOINT_SOCKET"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "never announces a listener");
}

#[test]
fn a_policy_typo_fails_at_once_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("github.cedar");
    std::fs::write(
        &policies,
        "// deny merges\nforbid(principal, action, resource)\n  when { context.arguments.bogus };\n",
    )
    .unwrap();
    // The socket does not exist and the start-up wait is long: the policy error must
    // come first, not a Workload API timeout a minute later.
    let out = server(&[
        "--trust-domain",
        "example.org",
        "--workload-socket",
        dir.path().join("none.sock").to_str().unwrap(),
        "--ready-timeout-secs",
        "600",
        "--policies",
        policies.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(policies.to_str().unwrap()) && err.contains("line 3"),
        "names the file and the line: {err}"
    );
    assert!(!err.contains("timed out"), "{err}");
}

/// PEM trust material for `spiffe://example.org/mcp/github`, fitting the X.509-SVID
/// profile: the CA bundle, the server's SVID and its key, in `dir`.
fn pem_files(dir: &Path) -> [PathBuf; 3] {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.subject_alt_names = vec![SanType::URI("spiffe://example.org".try_into().unwrap())];
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::minutes(5);
    ca.not_after = now + time::Duration::hours(1);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.subject_alt_names = vec![SanType::URI(
        "spiffe://example.org/mcp/github".try_into().unwrap(),
    )];
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf.not_before = now - time::Duration::minutes(5);
    leaf.not_after = now + time::Duration::hours(1);
    let leaf_pem = leaf.signed_by(&key, &issuer).unwrap().pem();
    let files = [
        dir.join("bundle.pem"),
        dir.join("svid.pem"),
        dir.join("svid.key.pem"),
    ];
    for (path, text) in files.iter().zip([ca_pem, leaf_pem, key.serialize_pem()]) {
        std::fs::write(path, text).unwrap();
    }
    files
}

/// Runs the server with `args` until it announces its listener (then stops it) or
/// exits, for at most 30 s: its first stdout line, whether it was still running, and
/// its stderr.
fn start(dir: &Path, args: &[&str]) -> (Option<String>, bool, String) {
    let log = dir.join("stderr.log");
    let mut child = Command::new(SERVER)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .env_remove("TESSERA_TRUST_DOMAIN")
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LOG", "warn")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("running the example MCP server");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(read.ok().filter(|&n| n > 0).map(|_| line));
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).ok().flatten();
    // Without a line, stdout closed: the process is exiting, but its exit status
    // can lag the closed pipe on a busy machine; give it time to be reaped.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut running = child.try_wait().unwrap().is_none();
    while line.is_none() && running && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        running = child.try_wait().unwrap().is_none();
    }
    let _ = child.kill();
    let _ = child.wait();
    (line, running, std::fs::read_to_string(&log).unwrap())
}

/// Issue 13: without the agent's socket there is no revocation feed; the server says
/// so and refuses to start, unless `--dangerous-no-revocation` asks for it.
#[test]
fn without_an_agent_socket_it_runs_only_with_dangerous_no_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let [bundle, cert, key] = pem_files(dir.path());
    let mut args = vec![
        "--trust-domain",
        "example.org",
        "--bundle",
        bundle.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let (line, running, err) = start(dir.path(), &args);
    assert_eq!(line, None, "started without revocation: {err}");
    assert!(!running, "{err}");
    assert!(
        err.contains("--dangerous-no-revocation") && err.contains("--workload-socket"),
        "{err}"
    );

    args.push("--dangerous-no-revocation");
    let (line, running, err) = start(dir.path(), &args);
    assert!(
        line.as_deref()
            .is_some_and(|l| l.starts_with("listening on "))
            && running,
        "{line:?}: {err}"
    );
    assert!(err.contains("no revocation feed"), "warns: {err}");

    // With a socket the feed is always used: the flag is a contradiction.
    let (line, _, err) = start(
        dir.path(),
        &[
            "--trust-domain",
            "example.org",
            "--workload-socket",
            dir.path().join("agent.sock").to_str().unwrap(),
            "--dangerous-no-revocation",
        ],
    );
    assert_eq!(line, None, "{err}");
    assert!(err.contains("drop the flag"), "{err}");
}
