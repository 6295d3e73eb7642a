//! MCP over mTLS across processes: a real agent, the example MCP server process
//! (tessera-verify), and real MCP clients (rmcp's client in this process, and the
//! example agent-runtime binary): calls allowed and denied, a task's end refusing the
//! next call, and sessions bound to their peer. Certificates refused at the handshake
//! are in `mcp_handshake.rs`; open streams of a revoked task in `mcp_streams.rs`.

#[path = "support/mcp.rs"]
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Env, RUNTIME_BIN, SUBJECT, Trust, args, audit, begin, connect, post};
use tessera_e2e::{TRUST_DOMAIN, bin};
use tessera_example_agent_runtime::{
    CallOutcome, http_client, measure_refusal_after_end, tls_config,
};

#[tokio::test]
async fn allowed_out_of_scope_and_policy_forbidden_calls() {
    let env = Env::start(Trust::Workload, &[]).await.unwrap();
    let (_w, task, cred) = begin(
        &env,
        &[
            "github/tool/get_pull_request",
            "github/tool/list_pulls",
            "github/tool/delete_branch",
        ],
    )
    .await;
    let conn = connect(&env, &cred).await;

    // tools/list shows only what the task may use (search_code is out of its scopes).
    let mut tools = conn.list_tools().await.unwrap();
    tools.sort();
    assert_eq!(tools, ["delete_branch", "get_pull_request", "list_pulls"]);

    // An allowed call runs the tool, with argument-dependent data.
    let out = conn
        .call(
            "get_pull_request",
            args(json!({"repo": "acme/api", "number": 42})),
        )
        .await;
    let CallOutcome::Ok { text } = &out else {
        panic!("expected success, got {out:?}");
    };
    let pr: Value = serde_json::from_str(text).unwrap();
    assert_eq!(pr["repo"], "acme/api");
    assert_eq!(pr["number"], 42);

    // Outside the task's scopes: a tool error naming the reason.
    let out = conn
        .call("search_code", args(json!({"query": "fn main"})))
        .await;
    assert_eq!(out.denial_reason(), Some("out_of_scope"), "{out:?}");

    // Within scope, but Cedar forbids it by argument: the policy id is in the denial.
    let out = conn
        .call(
            "delete_branch",
            args(json!({"repo": "acme/api", "branch": "main"})),
        )
        .await;
    match &out {
        CallOutcome::Denied {
            reason, policy_ids, ..
        } => {
            assert_eq!(reason, "policy_forbids");
            assert_eq!(policy_ids, &["protect-default-branch"]);
        }
        other => panic!("expected a policy denial, got {other:?}"),
    }
    // The same tool with another argument is allowed.
    let out = conn
        .call(
            "delete_branch",
            args(json!({"repo": "acme/api", "branch": "fix/42"})),
        )
        .await;
    assert!(out.is_ok(), "{out:?}");

    // Every decision is audited with client, task, reason and policy ids.
    let events = audit(&env);
    let forbid = events
        .iter()
        .find(|e| e["reason"] == "policy_forbids")
        .expect("audit event for the forbidden call");
    assert_eq!(forbid["client"], "code-reviewer");
    assert_eq!(forbid["task"], task.id);
    assert_eq!(forbid["subject"], SUBJECT);
    assert_eq!(forbid["target"], "delete_branch");
    assert_eq!(forbid["policy_ids"], json!(["protect-default-branch"]));
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "out_of_scope" && e["target"] == "search_code")
    );
    assert!(
        events
            .iter()
            .any(|e| e["decision"] == "allow" && e["target"] == "get_pull_request")
    );
    conn.close().await;
}

#[tokio::test]
async fn end_task_refuses_the_next_call_on_the_open_connection_within_100ms() {
    let env = Env::start(Trust::Workload, &[]).await.unwrap();
    let (w, task, cred) = begin(&env, &["github/tool/get_pull_request"]).await;
    let conn = connect(&env, &cred).await;
    let a = args(json!({"repo": "acme/api", "number": 7}));
    assert!(conn.call("get_pull_request", a.clone()).await.is_ok());

    let m = measure_refusal_after_end(
        &w,
        &conn,
        &task.id,
        "get_pull_request",
        a,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(
        m.outcome.denial_reason(),
        Some("revoked"),
        "{:?}",
        m.outcome
    );
    // Measured from EndTask's answer: what is under test is the revocation reaching the
    // server, not the durable write before EndTask answers, whose fsync a busy disk can
    // stall for 100 ms and more. (Measured from EndTask's start, a full CI run once took
    // 195 ms, refused at the first attempt; which part was slow was not recorded then.)
    let after_end = m.elapsed.saturating_sub(m.end_task_rtt);
    assert!(
        after_end < Duration::from_millis(100),
        "refused {after_end:?} after EndTask answered ({} attempts; EndTask took {:?})",
        m.attempts,
        m.end_task_rtt
    );
    // It was the same connection: the server accepted exactly one for this task.
    let accepted = env
        .server
        .log_text()
        .lines()
        .filter(|l| l.contains("connection accepted") && l.contains(&task.spiffe_id))
        .count();
    assert_eq!(accepted, 1, "server log:\n{}", env.server.log_text());
    eprintln!(
        "EndTask → refusal: {:?} (EndTask RPC {:?}, {} attempts)",
        m.elapsed, m.end_task_rtt, m.attempts
    );
}

#[tokio::test]
async fn a_hijacked_session_id_is_refused() {
    let env = Env::start(Trust::Workload, &[]).await.unwrap();
    let (_w1, _t1, alice) = begin(&env, &["github/tool/get_pull_request"]).await;
    let (_w2, _t2, mallory) = begin(&env, &["github/tool/get_pull_request"]).await;
    let url = env.server.url.clone();
    let owner = http_client(tls_config(&alice, "github").unwrap()).unwrap();
    let thief = http_client(tls_config(&mallory, "github").unwrap()).unwrap();

    // A session-based (2025-06-18) client opens a session.
    let (status, sid, body) = post(
        &owner,
        &url,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "0"}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sid = sid.expect("a session id");
    let (status, _, body) = post(
        &owner,
        &url,
        Some(&sid),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert!(status == 202 || status == 200, "{status} {body}");
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (status, _, body) = post(&owner, &url, Some(&sid), list.clone()).await;
    assert_eq!(status, 200, "the owner uses its session: {body}");
    assert!(body.contains("get_pull_request"), "{body}");

    // Another peer (another task of the same client) presents the same id: 404, as for
    // an unknown session, without reaching rmcp.
    let (status, _, body) = post(&thief, &url, Some(&sid), list.clone()).await;
    assert_eq!(status, 404, "hijacked session accepted: {body}");
    // The owner is unaffected.
    let (status, _, _) = post(&owner, &url, Some(&sid), list).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_agent_runtime_binary_runs_a_task_end_to_end() {
    let env = Env::start(Trust::Workload, &[]).await.unwrap();
    let out = tokio::process::Command::new(bin(RUNTIME_BIN))
        .arg("--workload-socket")
        .arg(&env.agent.workload)
        .args(["--url", &env.server.url, "--server", "github"])
        .args(["--subject", SUBJECT, "--purpose", "review PR 42"])
        .args([
            "--scope",
            "github/tool/get_pull_request",
            "--scope",
            "github/tool/delete_branch",
        ])
        .args(["--list", "--json"])
        .args([
            "--call",
            "get_pull_request",
            r#"{"repo":"acme/api","number":42}"#,
        ])
        .args(["--call", "list_pulls", r#"{"repo":"acme/api"}"#])
        .args([
            "--call",
            "delete_branch",
            r#"{"repo":"acme/api","branch":"master"}"#,
        ])
        .args([
            "--after-end",
            "get_pull_request",
            r#"{"repo":"acme/api","number":42}"#,
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.server.log_text()
    );
    let doc: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(doc["task"]["client"], "code-reviewer");
    assert_eq!(
        doc["svid"]["claims"]["scopes"],
        json!(["github/tool/get_pull_request", "github/tool/delete_branch"])
    );
    assert_eq!(
        doc["server"]["spiffe_id"],
        format!("spiffe://{TRUST_DOMAIN}/mcp/github")
    );
    let mut tools: Vec<&str> = doc["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tools.sort();
    assert_eq!(tools, ["delete_branch", "get_pull_request"]);
    let calls = doc["calls"].as_array().unwrap();
    assert_eq!(calls[0]["outcome"], "ok");
    assert_eq!(calls[1]["outcome"], "denied");
    assert_eq!(calls[1]["reason"], "out_of_scope");
    assert_eq!(calls[2]["outcome"], "denied");
    assert_eq!(calls[2]["reason"], "policy_forbids");
    assert_eq!(calls[2]["policy_ids"], json!(["protect-default-branch"]));
    assert_eq!(doc["after_end"]["reason"], "revoked");
    assert!(doc["after_end"]["refused_after_ms"].as_f64().unwrap() < 100.0);

    // A client without consent cannot even begin the task.
    let out = tokio::process::Command::new(bin(RUNTIME_BIN))
        .arg("--workload-socket")
        .arg(&env.agent.workload)
        .args(["--url", &env.server.url, "--subject", "mallory@acme.corp"])
        .args(["--scope", "github/tool/get_pull_request", "--json"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["stage"], "begin_task");
    assert_eq!(doc["error"]["detail"]["code"], "PermissionDenied");
}

/// Opens a session (2025-06-18): `initialize`, then `notifications/initialized`.
async fn open_session(http: &reqwest::Client, url: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "e2e", "version": "0"}}});
    let (status, sid, body) = post(http, url, None, init).await;
    assert_eq!(status, 200, "{body}");
    let sid = sid.expect("a session id");
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, body) = post(http, url, Some(&sid), initialized).await;
    assert!(status == 202 || status == 200, "{status} {body}");
    sid
}

#[tokio::test]
async fn a_peer_past_its_session_limit_loses_only_its_own_oldest_session() {
    let env = Env::start(Trust::Workload, &["--max-sessions-per-peer", "2"])
        .await
        .unwrap();
    let (_w1, _t1, alice) = begin(&env, &["github/tool/get_pull_request"]).await;
    let (_w2, _t2, mallory) = begin(&env, &["github/tool/get_pull_request"]).await;
    let url = env.server.url.clone();
    let alice = http_client(tls_config(&alice, "github").unwrap()).unwrap();
    let mallory = http_client(tls_config(&mallory, "github").unwrap()).unwrap();
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});

    let kept = open_session(&alice, &url).await;
    let mut opened = Vec::new();
    for _ in 0..5 {
        opened.push(open_session(&mallory, &url).await);
    }
    // Its two newest sessions work; the older ones are gone (404, as for any unknown
    // session: its client opens a new one).
    for (i, sid) in opened.iter().enumerate() {
        let (status, _, body) = post(&mallory, &url, Some(sid), list.clone()).await;
        let want = if i >= 3 { 200 } else { 404 };
        assert_eq!(status, want, "session {i}: {body}");
    }
    // Another peer's session is untouched.
    let (status, _, body) = post(&alice, &url, Some(&kept), list).await;
    assert_eq!(status, 200, "{body}");
    // And the forgotten ones were closed in rmcp too, not left to its keep-alive.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !env
        .server
        .log_text()
        .contains("closed sessions past a limit")
    {
        assert!(Instant::now() < deadline, "{}", env.server.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
