//! Tessera's Python and TypeScript clients (`clients/`) against a real agent and the
//! example MCP server: each client's own test suite (pytest, `node --test`) runs as a
//! child process of this test, which asserts on its exit status and closing counts.
//! What the suites cover: begin, call, rotation followed mid-session (the agent runs
//! with a 16 s task SVID TTL), end on exit, on exception and on SIGTERM/SIGINT (the
//! task is on the revocation feed), consent refusal as a typed error, the server
//! verified by SPIFFE ID.

#[path = "support/mcp.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::{CONSENTED, McpServer, SERVER_BIN, SUBJECT, Trust, grant, register_server};
use tessera_e2e::clients::{
    Summary, node, node_test_summary, pytest_summary, python, python_client_dir,
    typescript_client_dir,
};
use tessera_e2e::{TestAgent, bin};

/// Task SVIDs live this long, so the suites see rotations and an expired first SVID
/// within seconds. Not less: the agent backdates not_before by 10 s and rotates at half
/// of not_before..not_after, so below about 12 s the half life is already past at
/// issuance and the agent re-issues the task SVID continuously (hundreds of stream
/// messages a second).
const SVID_TTL_SECS: u32 = 16;

/// The client the interpreter is registered as: the one the example server's Cedar
/// policy lets call tools.
const CLIENT: &str = "code-reviewer";

/// An agent (short task TTL) with `exe` registered as `client`, consent for it on
/// `github`, and the example MCP server.
async fn env_for(exe: &Path, client: &str) -> (TestAgent, McpServer) {
    let agent = TestAgent::start(&format!("task_svid_ttl = \"{SVID_TTL_SECS}s\""))
        .await
        .expect("agent");
    agent.register_exe(client, "", exe).await.expect("register");
    register_server(&agent, "github", &bin(SERVER_BIN))
        .await
        .expect("register server");
    grant(&agent, client, CONSENTED).await.expect("grant");
    let server = McpServer::start(&agent, "main", Trust::Workload, &[])
        .await
        .expect("MCP server");
    (agent, server)
}

fn suite_env(cmd: &mut Command, agent: &TestAgent, server: &McpServer) {
    cmd.env("TESSERA_TEST_SOCKET", &agent.workload)
        .env("TESSERA_TEST_MCP_URL", &server.url)
        .env("TESSERA_TEST_SUBJECT", SUBJECT)
        .env("TESSERA_TEST_SVID_TTL", SVID_TTL_SECS.to_string())
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdin(Stdio::null());
}

/// Runs a suite; fails unless it exited 0 with at least `least` passed and nothing
/// failed or skipped (a skip would hide a missing agent or dependency).
fn check_suite(
    name: &str,
    cmd: &mut Command,
    parse: fn(&str) -> Option<Summary>,
    least: u32,
    agent: &TestAgent,
    server: &McpServer,
) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- {name} stdout\n{stdout}\n--- {name} stderr\n{stderr}");
    let summary = parse(&stdout);
    let report = || {
        format!(
            "{name}: {:?}, {summary:?}\nagent log:\n{}\nserver log:\n{}",
            out.status,
            agent.log_text(),
            server.log_text()
        )
    };
    assert!(out.status.success(), "{}", report());
    let s = summary.unwrap_or_else(|| panic!("no closing summary: {}", report()));
    assert_eq!(s.failed, 0, "{}", report());
    assert_eq!(
        s.skipped,
        0,
        "a skipped test hides a missing piece: {}",
        report()
    );
    assert!(s.passed >= least, "only {} passed: {}", s.passed, report());
}

#[tokio::test]
async fn python_client_suite_against_a_real_agent_and_the_example_server() {
    let Some(python) = python() else { return };
    let (agent, server) = env_for(&python, CLIENT).await;
    let mut cmd = Command::new(&python);
    cmd.args([
        "-m",
        "pytest",
        "-q",
        "-rfEs",
        "-p",
        "no:cacheprovider",
        "tests",
    ])
    .current_dir(python_client_dir());
    suite_env(&mut cmd, &agent, &server);
    check_suite("pytest", &mut cmd, pytest_summary, 20, &agent, &server);
}

#[tokio::test]
async fn typescript_client_suite_against_a_real_agent_and_the_example_server() {
    let Some(node) = node() else { return };
    let (agent, server) = env_for(&node, CLIENT).await;
    let mut cmd = Command::new(&node);
    let dir = typescript_client_dir();
    // Node 20's runner takes files, not globs: every compiled *.test.js.
    let mut files: Vec<_> = std::fs::read_dir(dir.join("dist/test"))
        .expect("dist/test")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".test.js"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no compiled tests in dist/test");
    cmd.args(["--test", "--test-reporter=tap", "--test-concurrency=1"])
        .args(&files)
        .current_dir(&dir);
    suite_env(&mut cmd, &agent, &server);
    check_suite(
        "node --test",
        &mut cmd,
        node_test_summary,
        8,
        &agent,
        &server,
    );
}

fn demo(envs: &[(&str, &std::ffi::OsStr)]) -> (bool, String) {
    let mut cmd = Command::new(bin("tessera"));
    cmd.arg("demo")
        .env("TESSERA_DEMO_NO_BUILD", "1")
        .env_remove("TESSERA_DEMO_NO_CLIENTS")
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running tessera demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    (out.status.success(), stdout)
}

#[test]
fn demo_tells_the_story_from_python_and_node_when_they_are_ready() {
    let (Some(python), Some(_)) = (python(), node()) else {
        return;
    };
    let (ok, stdout) = demo(&[("TESSERA_DEMO_PYTHON", python.as_os_str())]);
    assert!(ok, "{stdout}");
    let epilogue = stdout
        .split("── Also in Python and Node")
        .nth(1)
        .unwrap_or_else(|| panic!("no clients section:\n{stdout}"));
    for runtime in ["Python", "Node"] {
        assert!(
            epilogue.contains(&format!(
                "✔ {runtime}: task spiffe://demo.tessera.dev/client/code-reviewer/task/"
            )),
            "{runtime} did not tell the story:\n{epilogue}"
        );
    }
    assert!(epilogue.contains("policy_forbids") && epilogue.contains("revoked"));
    assert!(stdout.contains("Every step behaved as shown"));
}

#[test]
fn demo_says_so_when_python_and_node_are_not_ready() {
    let none = std::ffi::OsStr::new("/nonexistent/tessera-clients");
    let (ok, stdout) = demo(&[
        (
            "TESSERA_DEMO_PYTHON",
            std::ffi::OsStr::new("/nonexistent/python3"),
        ),
        ("TESSERA_DEMO_CLIENTS", none),
    ]);
    assert!(ok, "a missing client is not a failed step:\n{stdout}");
    assert!(
        stdout.contains("Python: not run: no Python with tessera-client"),
        "{stdout}"
    );
    assert!(stdout.contains("Node: not run"), "{stdout}");
    assert!(stdout.contains("Every step behaved as shown"));
}
