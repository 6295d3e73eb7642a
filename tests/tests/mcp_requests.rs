//! Hostile JSON-RPC from a caller holding a valid task credential: unknown methods,
//! huge bodies and batch tricks against the example MCP server. Each gets a clear
//! JSON-RPC error or an HTTP 4xx, a forbidden call never runs, and the server stays up.

#[path = "support/mcp.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Env, Trust, args, audit, begin, connect, post};
use tessera_example_agent_runtime::{http_client, tls_config};

/// The JSON-RPC messages in a response body: plain JSON (one message or an array) or
/// an SSE stream of `data:` lines.
fn messages(body: &str) -> Vec<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        return match v {
            Value::Array(items) => items,
            v => vec![v],
        };
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}

fn call(id: u64, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}})
}

/// Opens a 2025-06-18 session: `initialize`, then `notifications/initialized`.
async fn open_session(http: &reqwest::Client, url: &str) -> String {
    let (status, sid, body) = post(http, url, None, initialize(1)).await;
    assert_eq!(status, 200, "{body}");
    let sid = sid.expect("a session id");
    let (status, _, body) = post(
        http,
        url,
        Some(&sid),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert!(status == 202 || status == 200, "{status} {body}");
    sid
}

fn initialize(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "e2e", "version": "0"}}})
}

/// The authorization denial answering request `id` in `body`: a JSON-RPC error, or
/// (for `tools/call`) a tool result flagged `isError`; never a successful result.
fn denial_for(body: &str, id: u64) -> Value {
    let msgs = messages(body);
    let msg = msgs
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("no answer to request {id} in {body}"));
    let auth = match msg.get("result") {
        Some(result) => {
            assert_eq!(result["isError"], true, "request {id} succeeded: {msg}");
            &result["structuredContent"]["authorization"]
        }
        None => &msg["error"]["data"]["authorization"],
    };
    assert!(
        auth.is_object(),
        "request {id}: not an authorization denial: {msg}"
    );
    auth.clone()
}

/// A body the server does not accept comes back 4xx within `within`, with a reason.
async fn assert_refused_4xx(
    http: &reqwest::Client,
    url: &str,
    session: Option<&str>,
    body: Value,
    what: &str,
) -> u16 {
    let started = Instant::now();
    let (status, _, text) = post(http, url, session, body).await;
    assert!(
        (400..500).contains(&status),
        "{what}: HTTP {status}: {}",
        text.chars().take(500).collect::<String>()
    );
    assert!(!text.trim().is_empty(), "{what}: a 4xx without a reason");
    assert!(!text.contains("\"deleted\""), "{what}: {text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{what}: answered only after {:?}",
        started.elapsed()
    );
    status
}

#[tokio::test]
async fn hostile_json_rpc_gets_clear_errors_and_a_forbidden_call_never_runs() {
    let mut env = Env::start(Trust::Workload, &[]).await.unwrap();
    let (_w, _task, cred) = begin(
        &env,
        &["github/tool/get_pull_request", "github/tool/delete_branch"],
    )
    .await;
    let http = http_client(tls_config(&cred, "github").unwrap()).unwrap();
    let url = env.server.url.clone();
    let sid = open_session(&http, &url).await;
    let allowed = || {
        call(
            2,
            "get_pull_request",
            json!({"repo": "acme/api", "number": 1}),
        )
    };
    // In the task's scopes, but Cedar's protect-default-branch forbids it.
    let forbidden = |pad: &str| {
        call(
            3,
            "delete_branch",
            json!({"repo": "acme/api", "branch": "main", "pad": pad}),
        )
    };

    // An unknown method: a JSON-RPC error naming why, not a crash or a silent drop.
    let (status, _, body) = post(
        &http,
        &url,
        Some(&sid),
        json!({"jsonrpc": "2.0", "id": 9, "method": "tools/destroy_everything"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let denial = denial_for(&body, 9);
    assert_eq!(denial["reason"], "method_not_enforceable", "{denial}");

    // Batches were removed from MCP in 2025-06-18: an array is refused whole, so the
    // forbidden call in it never reaches the authorizer, let alone the tool.
    assert_refused_4xx(
        &http,
        &url,
        Some(&sid),
        json!([allowed(), forbidden("")]),
        "a batch of an allowed and a forbidden call",
    )
    .await;
    assert_refused_4xx(&http, &url, Some(&sid), json!([]), "an empty batch").await;
    assert_refused_4xx(
        &http,
        &url,
        Some(&sid),
        json!([initialize(7), forbidden("")]),
        "a batch carrying initialize in a session",
    )
    .await;
    assert_refused_4xx(
        &http,
        &url,
        None,
        json!([initialize(7), forbidden("")]),
        "a batch carrying initialize without a session",
    )
    .await;

    // 10 MB bodies are refused before they are parsed: 413.
    let ten_mb = "x".repeat(10 << 20);
    for (what, body) in [
        (
            "10 MB allowed call",
            call(4, "get_pull_request", json!({"repo": ten_mb, "number": 1})),
        ),
        ("10 MB forbidden call", forbidden(&ten_mb)),
        (
            "10 MB unknown method",
            json!({"jsonrpc": "2.0", "id": 6, "method": "nope", "params": {"pad": ten_mb}}),
        ),
    ] {
        assert_eq!(
            assert_refused_4xx(&http, &url, Some(&sid), body, what).await,
            413,
            "{what}"
        );
    }
    // Just under the limit, the forbidden call is parsed and denied by policy.
    let (status, _, body) = post(&http, &url, Some(&sid), forbidden(&"x".repeat(3 << 20))).await;
    assert_eq!(
        status,
        200,
        "{}",
        body.chars().take(500).collect::<String>()
    );
    let denial = denial_for(&body, 3);
    assert_eq!(denial["reason"], "policy_forbids", "{denial}");
    assert!(!body.contains("\"deleted\""), "the tool ran");

    // The server is up and serves a fresh session and an allowed call.
    let conn = connect(&env, &cred).await;
    let out = conn
        .call(
            "get_pull_request",
            args(json!({"repo": "acme/api", "number": 2})),
        )
        .await;
    assert!(out.is_ok(), "{out:?}");
    conn.close().await;
    assert!(
        env.server.child.try_wait().unwrap().is_none(),
        "server exited:\n{}",
        env.server.log_text()
    );

    // The destructive tool never ran, and nothing allowed it.
    let log = env.server.log_text();
    assert!(!log.contains("tool delete_branch ran"), "{log}");
    let events = audit(&env);
    assert!(
        !events
            .iter()
            .any(|e| e["target"] == "delete_branch" && e["decision"] == "allow"),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["target"] == "delete_branch" && e["reason"] == "policy_forbids"),
        "the under-limit forbidden call was audited as denied: {events:#?}"
    );
}

// The log line the test above relies on exists: an allowed delete_branch logs it.
#[tokio::test]
async fn an_allowed_destructive_call_is_visible_in_the_server_log() {
    let env = Env::start(Trust::Workload, &[]).await.unwrap();
    let (_w, _task, cred) = begin(&env, &["github/tool/delete_branch"]).await;
    let conn = connect(&env, &cred).await;
    let out = conn
        .call(
            "delete_branch",
            args(json!({"repo": "acme/api", "branch": "fix/42"})),
        )
        .await;
    assert!(out.is_ok(), "{out:?}");
    conn.close().await;
    assert!(env.server.log_text().contains("tool delete_branch ran"));
}
