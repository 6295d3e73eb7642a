//! Streams and subscriptions of a task over MCP: a subscription outside the task's
//! scopes is refused, and a revoked task's open streams end when the revocation
//! arrives.

#[path = "support/mcp.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Env, Trust, audit, begin, post};
use tessera_example_agent_runtime::{http_client, tls_config};

/// The README scope of `acme/api` and one tool: what the stream tests' tasks hold.
const README_SCOPES: &[&str] = &[
    "github/tool/get_pull_request",
    "github/resource/repo://acme/api/*",
];

/// An open response of the server, read chunk by chunk.
struct Stream {
    resp: reqwest::Response,
    text: String,
}

impl Stream {
    /// Reads until `needle` is in the text, for at most `within`; whether it came.
    async fn read_until(&mut self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.text.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Ok(Ok(Some(chunk))) => self.text.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return false,
            }
        }
        true
    }

    /// Reads to the end, for at most `within`; whether it ended (cleanly or not).
    async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Ok(Ok(Some(chunk))) => self.text.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(Ok(None) | Err(_)) => return true,
                Err(_) => return false,
            }
        }
    }
}

/// POSTs a 2026-07-28 `subscriptions/listen` (request id 1) for `notifications`.
async fn listen_2026(http: &reqwest::Client, url: &str, notifications: Value) -> Stream {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "subscriptions/listen", "params": {
    "notifications": notifications,
    "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "e2e", "version": "0"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }}});
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    Stream {
        resp,
        text: String::new(),
    }
}

/// The `data:` messages of an SSE text.
fn sse_messages(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}

#[tokio::test]
async fn a_subscription_to_resources_outside_the_task_scopes_is_refused() {
    let env = Env::start(Trust::Workload, &[]).await.unwrap();
    support::grant(&env.agent, "code-reviewer", README_SCOPES)
        .await
        .unwrap();
    let (_w, _task, cred) = begin(&env, README_SCOPES).await;
    let http = http_client(tls_config(&cred, "github").unwrap()).unwrap();
    let url = env.server.url.clone();

    // Its own README: acknowledged and kept open.
    let mut ok = listen_2026(
        &http,
        &url,
        json!({"resourceSubscriptions": ["repo://acme/api/README.md"]}),
    )
    .await;
    assert!(
        ok.read_until("subscriptions/acknowledged", Duration::from_secs(5))
            .await,
        "{}",
        ok.text
    );
    assert!(
        !ok.ends_within(Duration::from_millis(300)).await,
        "{}",
        ok.text
    );

    // Another repository's README: refused, and the stream ends.
    let mut refused = listen_2026(
        &http,
        &url,
        json!({"resourceSubscriptions": ["repo://acme/api/README.md", "repo://acme/secrets/README.md"]}),
    )
    .await;
    assert!(
        refused.ends_within(Duration::from_secs(5)).await,
        "a subscription to repo://acme/secrets is still open: {}",
        refused.text
    );
    let messages = sse_messages(&refused.text);
    let answer = messages
        .iter()
        .find(|m| m["id"] == 1)
        .unwrap_or_else(|| panic!("no final answer: {}", refused.text));
    assert_eq!(
        answer["error"]["data"]["authorization"]["reason"], "out_of_scope",
        "{answer}"
    );
    let events = audit(&env);
    assert!(
        events.iter().any(
            |e| e["target"] == "repo://acme/secrets/README.md" && e["reason"] == "out_of_scope"
        ),
        "{events:#?}"
    );
}

#[tokio::test]
async fn a_revoked_tasks_open_streams_end_when_the_revocation_arrives() {
    let env = Env::start(Trust::Workload, &[]).await.unwrap();
    support::grant(&env.agent, "code-reviewer", README_SCOPES)
        .await
        .unwrap();
    let (w, task, cred) = begin(&env, README_SCOPES).await;
    let http = http_client(tls_config(&cred, "github").unwrap()).unwrap();
    let url = env.server.url.clone();

    // A session (2025-06-18, like 2025-11-25) subscribed to its README, with its
    // standalone GET stream open (where `notifications/resources/updated` would come).
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "e2e", "version": "0"}}});
    let (status, sid, body) = post(&http, &url, None, init.clone()).await;
    assert_eq!(status, 200, "{body}");
    let sid = sid.expect("a session id");
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, body) = post(&http, &url, Some(&sid), initialized).await;
    assert!(status == 202 || status == 200, "{status} {body}");
    let subscribe = json!({"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe",
        "params": {"uri": "repo://acme/api/README.md"}});
    let (status, _, body) = post(&http, &url, Some(&sid), subscribe).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"result\""), "subscribe refused: {body}");
    let get = |http: &reqwest::Client| {
        http.get(&url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &sid)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
    };
    let resp = get(&http).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut standalone = Stream {
        resp,
        text: String::new(),
    };

    // A 2026-07-28 subscription on the same connection.
    let mut listen = listen_2026(
        &http,
        &url,
        json!({"resourceSubscriptions": ["repo://acme/api/README.md"]}),
    )
    .await;
    assert!(
        listen
            .read_until("subscriptions/acknowledged", Duration::from_secs(5))
            .await,
        "{}",
        listen.text
    );
    assert!(!standalone.ends_within(Duration::from_millis(300)).await);
    assert!(!listen.ends_within(Duration::from_millis(300)).await);

    let ended = Instant::now();
    w.end_task(&task.id).await.unwrap();
    // Generous: the revocation reaches the server within milliseconds.
    assert!(
        listen.ends_within(Duration::from_secs(5)).await,
        "the subscription of an ended task is still open 5 s later: {}",
        listen.text
    );
    assert!(
        standalone.ends_within(Duration::from_secs(5)).await,
        "the session's GET stream of an ended task is still open 5 s later: {}",
        standalone.text
    );
    eprintln!("EndTask → both streams closed: {:?}", ended.elapsed());
    // If the subscription got its final answer before the stream closed, it says why.
    if let Some(answer) = sse_messages(&listen.text).iter().find(|m| m["id"] == 1) {
        assert_eq!(
            answer["error"]["data"]["authorization"]["reason"], "revoked",
            "{answer}"
        );
    }

    // Nothing is open to it any more: no new stream, no ping, no new session.
    // (401 `invalid_token`: on it clients stop reopening the stream.)
    let resp = get(&http).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains(r#"error="invalid_token""#)
    );
    let ping = json!({"jsonrpc": "2.0", "id": 3, "method": "ping"});
    let (status, _, body) = post(&http, &url, Some(&sid), ping).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""reason":"revoked""#),
        "ping answered: {body}"
    );
    let (_, _, body) = post(&http, &url, None, init).await;
    assert!(
        body.contains(r#""reason":"revoked""#),
        "initialize answered: {body}"
    );
    let log = env.server.log_text();
    assert!(log.contains("open stream ended"), "{log}");
}
