//! The example MCP server's start-up checks, run as an operator runs it.
//!
//! Also makes `cargo test --workspace` build this binary, which the cross-process
//! MCP tests and the demo start (cargo builds a package's binaries only for its own
//! integration tests).

use std::process::{Command, Output};

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
