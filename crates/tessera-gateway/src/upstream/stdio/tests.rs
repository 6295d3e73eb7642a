//! The bridge against a real child process: a tiny MCP server in Python, written by
//! the test, whose tools misbehave on request (crash, garbage, oversized lines, slow
//! answers, progress, server-to-client requests). Requests go through the bridge's
//! `UpstreamService`, as the proxy sends them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;

/// The child: newline-delimited JSON-RPC on stdin/stdout, one thread per request so
/// that slow requests overlap.
const TINY_SERVER: &str = r#"
import json, os, sys, threading, time

out_lock = threading.Lock()
inits = 0
cancelled = []
replies = {}
reply_ready = threading.Condition()

def send(msg):
    with out_lock:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

def raw(text):
    with out_lock:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

def result(id, value):
    send({"jsonrpc": "2.0", "id": id, "result": value})

def text(id, value):
    result(id, {"content": [{"type": "text", "text": json.dumps(value)}]})

def call(id, params):
    name = params.get("name")
    args = params.get("arguments", {})
    meta = params.get("_meta", {})
    if name == "echo":
        text(id, {"args": args, "child_saw_id": id})
    elif name == "slow":
        time.sleep(args.get("ms", 100) / 1000)
        text(id, {"args": args, "child_saw_id": id})
    elif name == "crash":
        sys.stderr.write("crashing on purpose\n")
        sys.stderr.flush()
        os._exit(3)
    elif name == "garbage":
        raw("this is not json")
        raw('{"jsonrpc": "2.0", "id": ' + json.dumps(id) + ', "result": "' + "x" * 100000 + '"}')
        raw("[1, 2, 3]")
        text(id, {"after_garbage": True})
    elif name == "progress":
        token = meta.get("progressToken")
        for n in (1, 2):
            send({"jsonrpc": "2.0", "method": "notifications/progress",
                  "params": {"progressToken": token, "progress": n, "total": 2}})
            time.sleep(0.05)
        text(id, {"child_saw_token": token})
    elif name == "ask_roots":
        send({"jsonrpc": "2.0", "id": "child-1", "method": "roots/list"})
        send({"jsonrpc": "2.0", "id": "child-2", "method": "ping"})
        with reply_ready:
            reply_ready.wait_for(lambda: "child-1" in replies and "child-2" in replies, timeout=10)
        text(id, {"roots": replies.get("child-1"), "ping": replies.get("child-2")})
    elif name == "stderr":
        sys.stderr.write("a line on stderr \x1b[31mwith an escape\n")
        sys.stderr.flush()
        text(id, {})
    elif name == "state":
        text(id, {"inits": inits, "pid": os.getpid(), "cancelled": cancelled})
    elif name == "list_changed":
        send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        text(id, {})
    elif name == "touch":
        send({"jsonrpc": "2.0", "method": "notifications/resources/updated",
              "params": {"uri": args["uri"]}})
        text(id, {})
    else:
        send({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": "unknown tool"}})

for line in sys.stdin:
    msg = json.loads(line)
    method = msg.get("method")
    if method is None:
        with reply_ready:
            replies[msg["id"]] = msg.get("result", msg.get("error"))
            reply_ready.notify_all()
    elif method == "initialize":
        inits += 1
        result(msg["id"], {"protocolVersion": "2025-11-25",
                           "capabilities": {"tools": {"listChanged": True},
                                            "resources": {"subscribe": True}},
                           "serverInfo": {"name": "tiny", "version": "1.0"}})
    elif method == "notifications/cancelled":
        cancelled.append(msg["params"]["requestId"])
    elif method in ("resources/subscribe", "resources/unsubscribe"):
        sys.stderr.write(method + " " + msg["params"]["uri"] + "\n")
        sys.stderr.flush()
        result(msg["id"], {})
    elif method == "tools/call":
        threading.Thread(target=call, args=(msg["id"], msg["params"]), daemon=True).start()
    elif "id" in msg:
        result(msg["id"], {"method": method})
"#;

/// The Python interpreter itself, not a version manager's shim (the child runs with a
/// cleared environment).
fn python() -> Option<PathBuf> {
    static PYTHON: OnceLock<Option<PathBuf>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let out = std::process::Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .ok()?;
            let path = String::from_utf8(out.stdout).ok()?.trim().to_owned();
            (!path.is_empty()).then(|| PathBuf::from(path))
        })
        .clone()
}

/// Log lines of this test binary, from one global subscriber.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&buf);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || LogWriter(Arc::clone(&writer)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged(needle: &str) -> bool {
    String::from_utf8_lossy(&logs().lock().unwrap()).contains(needle)
}

struct Tiny {
    upstream: StdioUpstream,
    guard: Option<tessera_verify::background::Background>,
    _dir: tempfile::TempDir,
}

impl Tiny {
    async fn start(tweak: impl FnOnce(&mut StdioConfig)) -> Tiny {
        let _ = logs();
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("tiny_server.py");
        std::fs::write(&script, TINY_SERVER).unwrap();
        let python = python().expect("python3 is needed for the stdio bridge tests");
        let mut config = StdioConfig::new(
            python.display().to_string(),
            ["-u".to_owned(), script.display().to_string()],
        );
        config.name = Some("tiny".into());
        config.restart_backoff = Duration::from_millis(50);
        config.max_message_bytes = 64 << 10;
        tweak(&mut config);
        let (upstream, guard) = StdioUpstream::start(config).await.unwrap();
        let tiny = Tiny {
            upstream,
            guard: Some(guard),
            _dir: dir,
        };
        tiny.wait_ready().await;
        tiny
    }

    async fn wait_ready(&self) {
        wait_until("the child is initialized", || self.upstream.is_ready()).await;
    }

    async fn send(&self, req: Request<Body>) -> Response<Body> {
        self.upstream.service().oneshot(req).await.unwrap()
    }

    async fn post(&self, session: Option<&str>, msg: Value) -> Response<Body> {
        let mut req = Request::post("/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(session) = session {
            req = req.header("mcp-session-id", session);
        }
        self.send(req.body(Body::from(msg.to_string())).unwrap())
            .await
    }

    /// A caller's `initialize`: the session id the bridge issued, and the answer.
    async fn initialize(&self, id: Value) -> (String, Value) {
        let resp = self
            .post(
                None,
                json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {"roots": {}},
                    "clientInfo": {"name": "test", "version": "0"}}}),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let session = resp.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        (session, json_body(resp).await)
    }

    /// `tools/call NAME ARGS` as caller `id` in `session`; the JSON answer.
    async fn call(&self, session: Option<&str>, id: Value, name: &str, args: Value) -> Value {
        let resp = self
            .post(
                session,
                json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                       "params": {"name": name, "arguments": args}}),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        json_body(resp).await
    }

    async fn state(&self) -> Value {
        tool_text(&self.call(None, json!("state"), "state", json!({})).await)
    }
}

async fn json_body(resp: Response<Body>) -> Value {
    assert_eq!(resp.headers()["content-type"], "application/json");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// The JSON a tool of the tiny server put in its text content.
fn tool_text(answer: &Value) -> Value {
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("not a tool result: {answer}"));
    serde_json::from_str(text).unwrap()
}

/// The `data:` payloads of an SSE body.
async fn sse_messages(resp: Response<Body>) -> Vec<Value> {
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// The next chunk of an SSE stream, as text (bounded wait).
async fn next(stream: &mut axum::body::BodyDataStream) -> String {
    use futures::StreamExt;
    let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
    String::from_utf8(chunk.unwrap().unwrap().unwrap().to_vec()).unwrap()
}

/// Waits (bounded, generously) for `cond`.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn callers_initialize_is_answered_from_the_cache_with_a_session_the_bridge_issues() {
    let tiny = Tiny::start(|_| {}).await;
    let (a, answer) = tiny.initialize(json!(1)).await;
    let (b, _) = tiny.initialize(json!(1)).await;
    assert_ne!(a, b, "each caller gets its own session");
    assert_eq!(a.len(), 32);
    assert_eq!(answer["id"], 1);
    assert_eq!(answer["result"]["serverInfo"]["name"], "tiny");
    assert_eq!(answer["result"]["protocolVersion"], "2025-11-25");
    // The child saw one initialize: the bridge's.
    assert_eq!(tiny.state().await["inits"], 1);

    // A session's requests reach the child; an unknown session is 404; DELETE ends one.
    let out = tiny.call(Some(&a), json!(2), "echo", json!({"n": 1})).await;
    assert_eq!(tool_text(&out)["args"]["n"], 1);
    let resp = tiny
        .post(
            Some("f00"),
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let delete = Request::delete("/mcp")
        .header("mcp-session-id", &a)
        .body(Body::empty())
        .unwrap();
    assert_eq!(tiny.send(delete).await.status(), StatusCode::OK);
    let resp = tiny
        .post(
            Some(&a),
            json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = tiny
        .post(
            Some(&b),
            json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}),
        )
        .await;
    assert_eq!(json_body(resp).await["result"]["method"], "tools/list");
}

#[tokio::test]
async fn stateless_requests_and_server_discover_reach_the_initialized_child() {
    let tiny = Tiny::start(|_| {}).await;
    let out = tiny
        .post(
            None,
            json!({"jsonrpc": "2.0", "id": "s1", "method": "tools/call", "params": {
                "name": "echo", "arguments": {"x": "y"},
                "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}}),
        )
        .await;
    let out = json_body(out).await;
    assert_eq!(out["id"], "s1");
    assert_eq!(tool_text(&out)["args"]["x"], "y");

    let discover = tiny
        .post(
            None,
            json!({"jsonrpc": "2.0", "id": 9, "method": "server/discover", "params": {}}),
        )
        .await;
    let discover = json_body(discover).await;
    assert_eq!(
        discover["result"]["supportedVersions"],
        json!(["2026-07-28", "2025-11-25"])
    );
    assert_eq!(discover["result"]["cacheScope"], "private");
    assert_eq!(
        discover["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "tiny"
    );
    assert_eq!(
        tiny.state().await["inits"],
        1,
        "no initialize per stateless request"
    );
}

#[tokio::test]
async fn concurrent_callers_with_colliding_ids_each_get_their_own_answer() {
    let tiny = Arc::new(Tiny::start(|_| {}).await);
    let (a, _) = tiny.initialize(json!(0)).await;
    let (b, _) = tiny.initialize(json!(0)).await;
    let mut calls = Vec::new();
    for n in 0..40u64 {
        let tiny = Arc::clone(&tiny);
        let session = if n % 2 == 0 { a.clone() } else { b.clone() };
        calls.push(tokio::spawn(async move {
            // Every caller uses id 1; slower ones first, so answers come back out of order.
            let out = tiny
                .call(
                    Some(&session),
                    json!(1),
                    "slow",
                    json!({"n": n, "ms": 200 - n * 4}),
                )
                .await;
            (n, out)
        }));
    }
    let mut child_ids = std::collections::HashSet::new();
    for call in calls {
        let (n, out) = call.await.unwrap();
        assert_eq!(out["id"], 1, "the caller's own id comes back");
        let text = tool_text(&out);
        assert_eq!(
            text["args"]["n"], n,
            "caller {n} got another caller's answer"
        );
        assert!(
            child_ids.insert(text["child_saw_id"].to_string()),
            "ids collided at the child"
        );
    }
}

#[tokio::test]
async fn garbage_and_oversized_lines_from_the_child_are_dropped_and_the_bridge_goes_on() {
    let tiny = Tiny::start(|_| {}).await;
    let out = tiny.call(None, json!(5), "garbage", json!({})).await;
    // The oversized line carried a "response" to id 5 (the child's view of it): it was
    // dropped, and the real answer came after it.
    assert_eq!(tool_text(&out)["after_garbage"], true);
    assert!(logged("a message larger than max_message_bytes; dropped"));
    assert!(logged("bytes=100"), "the size is logged");
    assert!(logged("that is not JSON; dropped"));
    assert!(logged("that is not a JSON-RPC 2.0 message; dropped"));
    assert!(
        !logged("this is not json"),
        "content of a dropped line is never logged"
    );
    let out = tiny
        .call(None, json!(6), "echo", json!({"still": "works"}))
        .await;
    assert_eq!(tool_text(&out)["args"]["still"], "works");
}

#[tokio::test]
async fn a_child_that_dies_answers_its_in_flight_requests_and_is_restarted() {
    let tiny = Arc::new(Tiny::start(|_| {}).await);
    let first_pid = tiny.upstream.child_pid().unwrap();
    // A slow request in flight when the child crashes gets an error, not a hang.
    let slow = {
        let tiny = Arc::clone(&tiny);
        tokio::spawn(async move {
            tiny.call(None, json!("slow"), "slow", json!({"ms": 20000}))
                .await
        })
    };
    wait_until("the slow call is in flight", || {
        tiny.upstream.bridge.in_flight() == 1
    })
    .await;
    let crash = tiny.call(None, json!("crash"), "crash", json!({})).await;
    assert_eq!(crash["error"]["code"], UPSTREAM_UNAVAILABLE, "{crash}");
    assert_eq!(crash["id"], "crash");
    let slow = slow.await.unwrap();
    assert_eq!(slow["error"]["code"], UPSTREAM_UNAVAILABLE, "{slow}");
    assert_eq!(slow["error"]["data"]["reason"], "upstream_exited");
    assert!(
        logged("crashing on purpose"),
        "the child's stderr is in the log"
    );

    // Restarted, initialized again, and calls work.
    wait_until("a new child is up", || {
        tiny.upstream
            .child_pid()
            .is_some_and(|pid| pid != first_pid)
    })
    .await;
    let out = tiny
        .call(None, json!(7), "echo", json!({"after": "restart"}))
        .await;
    assert_eq!(tool_text(&out)["args"]["after"], "restart");
    let state = tiny.state().await;
    assert_eq!(
        state["inits"], 1,
        "the new child was initialized by the bridge"
    );
    assert_ne!(state["pid"], first_pid);
    assert!(logged("restarting in"));
}

#[tokio::test]
async fn progress_turns_the_answer_into_an_sse_stream_with_the_callers_token() {
    let tiny = Tiny::start(|_| {}).await;
    let resp = tiny
        .post(
            None,
            json!({"jsonrpc": "2.0", "id": "p", "method": "tools/call", "params": {
                "name": "progress", "arguments": {}, "_meta": {"progressToken": "mine"}}}),
        )
        .await;
    let messages = sse_messages(resp).await;
    assert_eq!(messages.len(), 3, "{messages:?}");
    for (n, progress) in messages[..2].iter().enumerate() {
        assert_eq!(progress["method"], "notifications/progress");
        assert_eq!(progress["params"]["progressToken"], "mine");
        assert_eq!(progress["params"]["progress"], n + 1);
    }
    assert_eq!(messages[2]["id"], "p");
    let child_token = &tool_text(&messages[2])["child_saw_token"];
    assert!(
        child_token.is_u64(),
        "the child saw the bridge's token, not the caller's: {child_token}"
    );
}

#[tokio::test]
async fn server_to_client_requests_are_answered_by_the_bridge_not_relayed() {
    let tiny = Tiny::start(|_| {}).await;
    let out = tiny.call(None, json!(1), "ask_roots", json!({})).await;
    let text = tool_text(&out);
    assert_eq!(text["roots"]["code"], -32601, "{text}");
    assert_eq!(text["ping"], json!({}));
}

#[tokio::test]
async fn a_caller_that_goes_away_cancels_its_request_at_the_child() {
    let tiny = Tiny::start(|_| {}).await;
    let pending = tiny.call(None, json!(1), "slow", json!({"ms": 30000}));
    // The caller gives up before the answer.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), pending)
            .await
            .is_err()
    );
    let mut cancelled = Value::Null;
    for _ in 0..100 {
        cancelled = tiny.state().await["cancelled"].clone();
        if cancelled.as_array().is_some_and(|c| !c.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cancelled.as_array().map(Vec::len), Some(1), "{cancelled}");
}

#[tokio::test]
async fn a_request_past_request_timeout_is_answered_with_a_timeout_error() {
    let tiny = Tiny::start(|c| c.request_timeout = Duration::from_millis(300)).await;
    let out = tiny.call(None, json!(1), "slow", json!({"ms": 5000})).await;
    assert_eq!(out["error"]["code"], UPSTREAM_TIMEOUT, "{out}");
}

#[tokio::test]
async fn requests_past_max_in_flight_are_refused_at_once() {
    let tiny = Arc::new(Tiny::start(|c| c.max_in_flight = 1).await);
    let first = {
        let tiny = Arc::clone(&tiny);
        tokio::spawn(async move { tiny.call(None, json!(1), "slow", json!({"ms": 1000})).await })
    };
    wait_until("the slow call is in flight", || {
        tiny.upstream.bridge.in_flight() == 1
    })
    .await;
    let busy = tiny.call(None, json!(2), "echo", json!({})).await;
    assert_eq!(busy["error"]["code"], UPSTREAM_BUSY, "{busy}");
    assert!(first.await.unwrap().get("result").is_some());
}

#[tokio::test]
async fn hostile_caller_messages_are_refused_before_the_child() {
    let tiny = Tiny::start(|_| {}).await;
    let raw = |body: &'static str| {
        Request::post("/mcp")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    assert_eq!(
        tiny.send(raw("{not json")).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        tiny.send(raw(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#))
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"x":"{}"}}}}"#,
        "a".repeat(70_000)
    );
    let resp = tiny
        .send(Request::post("/mcp").body(Body::from(big)).unwrap())
        .await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let resp = tiny
        .send(
            Request::post("/mcp")
                .header("mcp-session-id", "bad id")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = tiny
        .send(Request::put("/mcp").body(Body::empty()).unwrap())
        .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    // A caller's notifications and responses are accepted and go nowhere.
    let resp = tiny
        .post(
            None,
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = tiny
        .post(
            None,
            json!({"jsonrpc": "2.0", "id": "child-1", "result": {"roots": []}}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(tiny.state().await["inits"], 1);
}

#[tokio::test]
async fn resource_updates_reach_only_the_subscribed_session_and_list_changes_reach_all() {
    let tiny = Tiny::start(|_| {}).await;
    let (a, _) = tiny.initialize(json!(1)).await;
    let (b, _) = tiny.initialize(json!(1)).await;
    let stream = |s: &str| {
        Request::get("/mcp")
            .header("mcp-session-id", s)
            .body(Body::empty())
            .unwrap()
    };
    let mut stream_a = tiny.send(stream(&a)).await.into_body().into_data_stream();
    let mut stream_b = tiny.send(stream(&b)).await.into_body().into_data_stream();
    let subscribe = |id: u64| {
        json!({"jsonrpc": "2.0", "id": id, "method": "resources/subscribe",
                                     "params": {"uri": "file:///watched"}})
    };
    assert!(json_body(tiny.post(Some(&a), subscribe(2)).await).await["result"].is_object());

    tiny.call(
        Some(&a),
        json!(3),
        "touch",
        json!({"uri": "file:///watched"}),
    )
    .await;
    tiny.call(Some(&a), json!(4), "list_changed", json!({}))
        .await;
    assert!(
        next(&mut stream_a)
            .await
            .contains("notifications/resources/updated")
    );
    assert!(
        next(&mut stream_a)
            .await
            .contains("notifications/tools/list_changed")
    );
    // b did not subscribe: its first event is the list change.
    assert!(
        next(&mut stream_b)
            .await
            .contains("notifications/tools/list_changed")
    );

    // The child was asked once, and told when the last subscriber left.
    assert!(json_body(tiny.post(Some(&b), subscribe(5)).await).await["result"].is_object());
    let delete = |s: &str| {
        Request::delete("/mcp")
            .header("mcp-session-id", s)
            .body(Body::empty())
            .unwrap()
    };
    tiny.send(delete(&a)).await;
    tiny.send(delete(&b)).await;
    wait_until("the child is told to unsubscribe", || {
        logged("resources/unsubscribe file:///watched")
    })
    .await;
    let logs = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert_eq!(
        logs.matches("resources/subscribe file:///watched").count(),
        1
    );
}

#[tokio::test]
async fn the_childs_stderr_is_logged_with_its_name_and_escapes_neutralized() {
    let tiny = Tiny::start(|_| {}).await;
    tiny.call(None, json!(1), "stderr", json!({})).await;
    wait_until("the stderr line is logged", || logged("a line on stderr")).await;
    let logs = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    let line = logs
        .lines()
        .find(|l| l.contains("a line on stderr"))
        .unwrap();
    assert!(line.contains("child=tiny"), "{line}");
    assert!(line.contains("\\u{1b}[31mwith an escape"), "{line}");
}

#[tokio::test]
async fn the_child_gets_only_the_environment_it_is_given() {
    let python = python().expect("python3");
    let mut config = StdioConfig::new(
        python.display().to_string(),
        [
            "-c",
            "import os, sys; sys.stderr.write(' '.join(sorted(os.environ)))",
        ],
    );
    config.env.insert("GIVEN".into(), "yes".into());
    let stderr = child::spawn(&config).unwrap().stderr_for_test().await;
    let names: Vec<&str> = stderr.split(' ').collect();
    assert!(names.contains(&"GIVEN"), "{names:?}");
    // Nothing of the gateway's own environment beyond what inherit_env names (Python
    // itself may add LC_CTYPE).
    let allowed = [
        "GIVEN", "PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "LC_CTYPE",
    ];
    assert!(names.iter().all(|n| allowed.contains(n)), "{names:?}");
}

#[tokio::test]
async fn a_command_that_does_not_exist_fails_start_naming_it() {
    let err = StdioUpstream::start(StdioConfig::new(
        "/nonexistent/mcp-server",
        Vec::<String>::new(),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, StdioError::Spawn { .. }));
    assert!(err.to_string().contains("/nonexistent/mcp-server"), "{err}");
    let err = StdioUpstream::start(StdioConfig::new("", Vec::<String>::new()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("command"), "{err}");
}

#[tokio::test]
async fn dropping_the_guard_stops_the_child_and_fails_requests_at_once() {
    let mut tiny = Tiny::start(|_| {}).await;
    let pid = tiny.upstream.child_pid().unwrap();
    tiny.guard.take().unwrap().shutdown().await;
    assert!(!tiny.upstream.is_ready());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "the child is gone"
    );
    let out = tiny.call(None, json!(1), "echo", json!({})).await;
    assert_eq!(out["error"]["code"], UPSTREAM_UNAVAILABLE);
}

#[test]
fn config_parses_from_toml_with_defaults_and_refuses_unknown_keys() {
    let c: StdioConfig = toml::from_str(
        r#"command = "npx"
           args = ["-y", "@modelcontextprotocol/server-everything"]
           request_timeout = "90s""#,
    )
    .unwrap();
    assert_eq!(c.request_timeout, Duration::from_secs(90));
    assert_eq!(c.max_message_bytes, 4 << 20);
    assert_eq!(c.display_name(), "npx");
    c.validate().unwrap();
    assert!(toml::from_str::<StdioConfig>("command = \"x\"\nshell = true").is_err());
    let mut c = StdioConfig::new("x", ["y"]);
    c.max_message_bytes = 10;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("max_message_bytes")
    );
}
