//! The example runtime's failure reporting, run as a script runs it.
//!
//! Also makes `cargo test --workspace` build this binary, which the cross-process
//! MCP tests and the demo start (cargo builds a package's binaries only for its own
//! integration tests).

use std::process::{Command, Output};

use serde_json::Value;

const RUNTIME: &str = env!("CARGO_BIN_EXE_tessera-example-agent-runtime");

fn runtime(socket: &str, extra: &[&str]) -> Output {
    Command::new(RUNTIME)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .env("RUST_BACKTRACE", "0")
        .args(["--workload-socket", socket])
        .args(["--url", "https://127.0.0.1:9/mcp"])
        .args(["--scope", "github/tool/get_pull_request"])
        .args(["--subject", "alice@example.com"])
        .args(extra)
        .output()
        .expect("running the example runtime")
}

fn json_error(out: &Output) -> serde_json::Map<String, Value> {
    let doc: Value = serde_json::from_slice(&out.stdout).expect("--json prints one JSON object");
    doc["error"].as_object().expect("an error object").clone()
}

#[test]
fn a_missing_workload_socket_is_reported_at_the_connect_stage() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("workload.sock");
    let socket = socket.to_str().unwrap();

    let out = runtime(socket, &["--json"]);
    assert_eq!(out.status.code(), Some(2));
    let err = json_error(&out);
    assert_eq!(err["stage"], "connect");
    assert!(
        err["message"].as_str().unwrap().contains(socket),
        "the message names the socket: {err:?}"
    );

    let out = runtime(&format!("unix://{socket}"), &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error at connect: ") && stderr.contains(socket),
        "unix:// URIs name the same path: {stderr}"
    );
}

#[test]
fn bad_tool_arguments_are_refused_before_anything_is_contacted() {
    // The socket does not exist: the arguments are checked first, so the stage
    // reported is "arguments", not "connect".
    let out = runtime(
        "/nonexistent/workload.sock",
        &["--json", "--call", "get_pull_request", "{not json"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = json_error(&out);
    assert_eq!(err["stage"], "arguments");
    assert!(
        err["message"].as_str().unwrap().contains("{not json"),
        "{err:?}"
    );
}
