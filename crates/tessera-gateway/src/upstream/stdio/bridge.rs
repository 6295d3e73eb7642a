//! The bridge: one child, many callers. Ids are rewritten on the way in and restored on
//! the way out; what the child sends is routed to the request it answers.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot, watch};

use super::jsonrpc::{
    self, METHOD_NOT_FOUND, Malformed, Message, REQUEST_CANCELLED, UPSTREAM_BUSY, UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
};
use super::lines::{Line, sanitize_for_log};
use super::session::{Orphaned, Sessions};
use super::{StdioConfig, StdioError};

/// The protocol version the bridge initializes the child with: the newest one that
/// still has `initialize` (2026-07-28 has none; the bridge speaks it to callers).
pub(super) const CHILD_PROTOCOL_VERSION: &str = "2025-11-25";
/// The stateless generation callers may speak through the bridge.
pub(super) const STATELESS_PROTOCOL_VERSION: &str = "2026-07-28";
/// How long a request waits for a child that is (re)starting before it is answered
/// with [`UPSTREAM_UNAVAILABLE`].
const READY_WAIT: Duration = Duration::from_secs(10);
/// Progress notifications queued for one request its caller is not reading; past it
/// they are dropped (progress is advisory), never buffered without bound.
const PROGRESS_QUEUE: usize = 32;
/// Messages queued for the child's stdin.
pub(super) const STDIN_QUEUE: usize = 256;
/// The most of a child's log message (`notifications/message`) written to the log.
const LOG_CHARS: usize = 4096;

/// State shared by the supervisor, the reader of the child's stdout and every request.
#[derive(Debug)]
pub(super) struct Bridge {
    pub(super) config: StdioConfig,
    /// The child's name in logs.
    pub(super) name: String,
    /// The child that is up and initialized, if any.
    current: watch::Sender<Option<Arc<Generation>>>,
    /// Set once the supervisor has stopped for good.
    stopped: AtomicBool,
    /// Ids (and progress tokens) on the child's side; never reused, across children.
    next_id: AtomicU64,
    pub(super) sessions: Sessions,
    random: Mutex<File>,
}

/// One run of the child: its stdin, what it still owes, and its `initialize` result.
#[derive(Debug)]
pub(super) struct Generation {
    pub(super) pid: Option<u32>,
    writer: mpsc::Sender<Vec<u8>>,
    pending: Mutex<Pending>,
    init: OnceLock<Map<String, Value>>,
}

#[derive(Debug, Default)]
struct Pending {
    /// Why no new request is accepted (the child exited).
    closed: bool,
    waiters: HashMap<u64, Waiter>,
}

/// A request the child owes an answer to.
#[derive(Debug)]
struct Waiter {
    caller_id: Value,
    /// The caller's own progress token, when it asked for progress.
    caller_token: Option<Value>,
    progress: Option<mpsc::Sender<Value>>,
    done: oneshot::Sender<Value>,
    /// The session the request came in (for the caller's `notifications/cancelled`).
    session: Option<String>,
}

/// A request sent to the child: its answer, progress on the way, and, when dropped
/// before the answer came (the caller went away, or timed out), a
/// `notifications/cancelled` to the child.
#[derive(Debug)]
pub(super) struct Call {
    run: Arc<Generation>,
    id: u64,
    pub(super) caller_id: Value,
    pub(super) done: oneshot::Receiver<Value>,
    pub(super) progress: Option<mpsc::Receiver<Value>>,
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.run.take(self.id).is_some() {
            self.run
                .send_now(&cancelled(self.id, "the caller went away"));
        }
    }
}

fn cancelled(id: u64, reason: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": id, "reason": reason},
    })
}

// === impl Generation ===

impl Generation {
    pub(super) fn new(pid: Option<u32>, writer: mpsc::Sender<Vec<u8>>) -> Self {
        Generation {
            pid,
            writer,
            pending: Mutex::new(Pending::default()),
            init: OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, id: u64) -> Option<Waiter> {
        self.lock().waiters.remove(&id)
    }

    /// Queues a message for the child's stdin without waiting; a full queue drops it
    /// (used for notifications and the bridge's own answers, which nothing awaits).
    fn send_now(&self, msg: &Value) {
        if let Ok(line) = serde_json::to_vec(msg)
            && self.writer.try_send(line).is_err()
        {
            tracing::debug!(
                "stdio bridge: the child's stdin queue is full or closed; dropped a message"
            );
        }
    }

    /// Answers every request still owed with [`UPSTREAM_UNAVAILABLE`] and refuses new
    /// ones: a child that died never leaves a caller hanging.
    pub(super) fn close(&self, why: &str) {
        let waiters = {
            let mut pending = self.lock();
            pending.closed = true;
            std::mem::take(&mut pending.waiters)
        };
        for (_, w) in waiters {
            let _ = w.done.send(jsonrpc::error(
                w.caller_id,
                UPSTREAM_UNAVAILABLE,
                &format!("the upstream MCP server {why} before answering"),
                "upstream_exited",
            ));
        }
    }

    /// The child's answer to request `id`: back to its caller with the caller's id.
    fn complete(&self, id: &Value, mut msg: Map<String, Value>) {
        let Some(w) = jsonrpc::bridge_id(id).and_then(|id| self.take(id)) else {
            tracing::debug!(
                "stdio bridge: an answer to no pending request (cancelled or timed out); dropped"
            );
            return;
        };
        msg.insert("id".into(), w.caller_id);
        let _ = w.done.send(Value::Object(msg));
    }

    /// A progress notification: to the request whose (rewritten) token it names, with
    /// the caller's own token.
    fn progress(&self, mut msg: Map<String, Value>) {
        let Some(token) = msg
            .get("params")
            .and_then(|p| p.get("progressToken"))
            .and_then(jsonrpc::bridge_id)
        else {
            return;
        };
        let pending = self.lock();
        let Some(w) = pending.waiters.get(&token) else {
            return;
        };
        let (Some(tx), Some(caller_token)) = (&w.progress, &w.caller_token) else {
            return;
        };
        if let Some(params) = msg.get_mut("params").and_then(Value::as_object_mut) {
            params.insert("progressToken".into(), caller_token.clone());
        }
        if tx.try_send(Value::Object(msg)).is_err() {
            tracing::debug!("stdio bridge: a caller is not reading its progress; dropped one");
        }
    }
}

// === impl Bridge ===

impl Bridge {
    pub(super) fn new(config: StdioConfig) -> Result<Self, StdioError> {
        let random = File::open("/dev/urandom").map_err(StdioError::Random)?;
        Ok(Bridge {
            name: config.display_name(),
            sessions: Sessions::new(config.max_sessions),
            config,
            current: watch::channel(None).0,
            stopped: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            random: Mutex::new(random),
        })
    }

    pub(super) fn is_ready(&self) -> bool {
        self.current.borrow().is_some()
    }

    pub(super) fn child_pid(&self) -> Option<u32> {
        self.current.borrow().as_ref().and_then(|g| g.pid)
    }

    /// Requests the current child owes.
    #[cfg(test)]
    pub(super) fn in_flight(&self) -> usize {
        self.current
            .borrow()
            .as_ref()
            .map_or(0, |g| g.lock().waiters.len())
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A new session id: 128 random bits, hex.
    fn session_id(&self) -> Result<String, std::io::Error> {
        let mut bytes = [0u8; 16];
        self.random
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read_exact(&mut bytes)?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Serves `run` (once it is initialized), or nothing while the child restarts.
    pub(super) fn publish(&self, run: Option<Arc<Generation>>) {
        self.current.send_replace(run);
    }

    /// The supervisor is gone: requests fail at once instead of waiting for a child.
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.current.send_replace(None);
    }

    /// The initialized child, waiting up to [`READY_WAIT`] for one that is starting.
    async fn ready(&self) -> Option<Arc<Generation>> {
        let mut rx = self.current.subscribe();
        if self.stopped.load(Ordering::Acquire) {
            return None;
        }
        let wait = READY_WAIT.min(self.config.request_timeout);
        match tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await {
            Ok(Ok(run)) => run.clone(),
            _ => None,
        }
    }

    fn unavailable(&self, caller_id: Value) -> Value {
        let why = if self.stopped.load(Ordering::Acquire) {
            "the upstream MCP server has been stopped"
        } else {
            "the upstream MCP server is not running (starting or restarting)"
        };
        jsonrpc::error(caller_id, UPSTREAM_UNAVAILABLE, why, "upstream_unavailable")
    }

    /// A timeout answer for `caller_id`.
    pub(super) fn timed_out(&self, caller_id: Value) -> Value {
        jsonrpc::error(
            caller_id,
            UPSTREAM_TIMEOUT,
            &format!(
                "the upstream MCP server did not answer within {}",
                humantime::format_duration(self.config.request_timeout)
            ),
            "upstream_timeout",
        )
    }

    /// Sends a caller's request to the child under a fresh id (and progress token).
    /// Errors come back as the JSON-RPC answer to give the caller.
    pub(super) async fn call(
        &self,
        session: Option<&str>,
        caller_id: Value,
        mut msg: Map<String, Value>,
    ) -> Result<Call, Value> {
        let Some(run) = self.ready().await else {
            return Err(self.unavailable(caller_id));
        };
        let id = self.next_id();
        msg.insert("id".into(), Value::from(id));
        let caller_token = jsonrpc::progress_token(&msg).cloned();
        let (progress_tx, progress_rx) = match caller_token {
            Some(_) => {
                jsonrpc::set_progress_token(&mut msg, Value::from(id));
                let (tx, rx) = mpsc::channel(PROGRESS_QUEUE);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let (done_tx, done_rx) = oneshot::channel();
        {
            let mut pending = run.lock();
            if pending.closed {
                return Err(self.unavailable(caller_id));
            }
            if pending.waiters.len() >= self.config.max_in_flight {
                return Err(jsonrpc::error(
                    caller_id,
                    UPSTREAM_BUSY,
                    "the upstream MCP server has too many requests in flight",
                    "upstream_busy",
                ));
            }
            pending.waiters.insert(
                id,
                Waiter {
                    caller_id: caller_id.clone(),
                    caller_token,
                    progress: progress_tx,
                    done: done_tx,
                    session: session.map(str::to_owned),
                },
            );
        }
        let call = Call {
            run: Arc::clone(&run),
            id,
            caller_id,
            done: done_rx,
            progress: progress_rx,
        };
        let line = serde_json::to_vec(&msg).expect("a JSON object serializes");
        match tokio::time::timeout(self.config.request_timeout, run.writer.send(line)).await {
            Ok(Ok(())) => Ok(call),
            // The child is gone (its writer ended) or not reading its stdin.
            Ok(Err(_)) => Err(self.unavailable(call.caller_id.clone())),
            Err(_) => Err(self.timed_out(call.caller_id.clone())),
        }
    }

    /// A caller's `initialize`: a new session, answered from the child's cached result.
    pub(super) async fn open_session(&self, caller_id: Value) -> Result<(String, Value), Value> {
        let Some(run) = self.ready().await else {
            return Err(self.unavailable(caller_id));
        };
        let init = run.init.get().cloned().unwrap_or_default();
        let id = self.session_id().map_err(|e| {
            tracing::error!(error = %e, "stdio bridge: reading /dev/urandom for a session id");
            self.unavailable(caller_id.clone())
        })?;
        let orphaned = self.sessions.create(id.clone());
        self.unsubscribe_orphans(orphaned);
        Ok((id, jsonrpc::result(caller_id, Value::Object(init))))
    }

    /// A 2026-07-28 `server/discover`: what the cached `initialize` result says.
    pub(super) async fn discover(&self, caller_id: Value) -> Value {
        let Some(run) = self.ready().await else {
            return self.unavailable(caller_id);
        };
        let init = run.init.get().cloned().unwrap_or_default();
        let mut versions = vec![Value::from(STATELESS_PROTOCOL_VERSION)];
        if let Some(v) = init.get("protocolVersion")
            && v != STATELESS_PROTOCOL_VERSION
        {
            versions.push(v.clone());
        }
        let mut result = json!({
            "resultType": "complete",
            "supportedVersions": versions,
            "capabilities": init.get("capabilities").cloned().unwrap_or_else(|| json!({})),
            // What one caller is shown may differ from another's (the gateway filters
            // by caller), so no intermediary may share it.
            "ttlMs": 0,
            "cacheScope": "private",
        });
        if let Some(instructions) = init.get("instructions") {
            result["instructions"] = instructions.clone();
        }
        if let Some(info) = init.get("serverInfo") {
            result["_meta"] = json!({"io.modelcontextprotocol/serverInfo": info});
        }
        jsonrpc::result(caller_id, result)
    }

    /// Tells the child to stop sending updates no session wants any more.
    pub(super) fn unsubscribe_orphans(&self, Orphaned(uris): Orphaned) {
        if uris.is_empty() {
            return;
        }
        let Some(run) = self.current.borrow().clone() else {
            return;
        };
        for uri in uris {
            run.send_now(&json!({
                "jsonrpc": "2.0", "id": self.next_id(),
                "method": "resources/unsubscribe", "params": {"uri": uri},
            }));
        }
    }

    /// A notification a caller posted.
    pub(super) fn on_caller_notification(
        &self,
        session: Option<&str>,
        method: &str,
        msg: Map<String, Value>,
    ) {
        match method {
            // The child was initialized once, by the bridge.
            "notifications/initialized" => {}
            "notifications/cancelled" => {
                let Some(session) = session else {
                    // Without a session a caller's id names nothing unambiguously; a
                    // stateless caller cancels by closing its request instead.
                    return;
                };
                let Some(request_id) = msg.get("params").and_then(|p| p.get("requestId")) else {
                    return;
                };
                let Some(run) = self.current.borrow().clone() else {
                    return;
                };
                let found = {
                    let mut pending = run.lock();
                    let id = pending
                        .waiters
                        .iter()
                        .find(|(_, w)| {
                            w.session.as_deref() == Some(session) && &w.caller_id == request_id
                        })
                        .map(|(id, _)| *id);
                    id.and_then(|id| pending.waiters.remove(&id).map(|w| (id, w)))
                };
                if let Some((id, w)) = found {
                    run.send_now(&cancelled(id, "cancelled by the caller"));
                    let _ = w.done.send(jsonrpc::error(
                        w.caller_id,
                        REQUEST_CANCELLED,
                        "request cancelled",
                        "cancelled",
                    ));
                }
            }
            other => {
                tracing::debug!(
                    method = other,
                    "stdio bridge: a caller's notification the child does not get; dropped"
                );
            }
        }
    }

    /// One line from the child's stdout.
    pub(super) fn on_child_line(&self, run: &Generation, line: Line) {
        let bytes = match line {
            Line::Complete(bytes) => bytes,
            Line::Oversized { bytes } => {
                tracing::warn!(
                    child = %self.name, pid = run.pid, bytes, max = self.config.max_message_bytes,
                    "stdio upstream wrote a message larger than max_message_bytes; dropped"
                );
                return;
            }
        };
        let msg = match Message::parse(&bytes) {
            Ok(msg) => msg,
            Err(why) => {
                // Size only: the line may carry data no log should hold.
                tracing::warn!(
                    child = %self.name, pid = run.pid, bytes = bytes.len(),
                    "stdio upstream wrote a line to stdout that is not {}; dropped",
                    if why == Malformed::NotJson { "JSON" } else { "a JSON-RPC 2.0 message" }
                );
                return;
            }
        };
        match msg {
            Message::Response { id, msg } => run.complete(&id, msg),
            Message::Request { id, method, .. } => {
                let reply = if method == "ping" {
                    jsonrpc::result(id, json!({}))
                } else {
                    tracing::info!(
                        child = %self.name, method = %method,
                        "stdio upstream sent a server-to-client request; answered -32601 (the gateway does not relay them to callers)"
                    );
                    jsonrpc::error(
                        id,
                        METHOD_NOT_FOUND,
                        "tessera-gateway does not relay server-to-client requests to its callers",
                        "not_relayed",
                    )
                };
                run.send_now(&reply);
            }
            Message::Notification { method, msg } => self.notification(run, &method, msg),
        }
    }

    fn notification(&self, run: &Generation, method: &str, msg: Map<String, Value>) {
        match method {
            "notifications/progress" => run.progress(msg),
            "notifications/message" => {
                let params = msg.get("params");
                let level = params
                    .and_then(|p| p.get("level"))
                    .and_then(Value::as_str)
                    .unwrap_or("info");
                let data = params.and_then(|p| p.get("data")).map(|d| match d {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
                tracing::info!(
                    child = %self.name, pid = run.pid, level,
                    "{}", sanitize_for_log(data.unwrap_or_default().as_bytes(), LOG_CHARS)
                );
            }
            "notifications/resources/updated" => {
                if let Some(uri) = msg
                    .get("params")
                    .and_then(|p| p.get("uri"))
                    .and_then(Value::as_str)
                {
                    let event = sse_event(&Value::Object(msg.clone()));
                    self.sessions.to_subscribers(uri, &event);
                }
            }
            "notifications/tools/list_changed"
            | "notifications/resources/list_changed"
            | "notifications/prompts/list_changed" => {
                self.sessions.to_all(&sse_event(&Value::Object(msg)));
            }
            // The child cancelling a request of its own, which the bridge already answered.
            "notifications/cancelled" => {}
            other => {
                tracing::debug!(child = %self.name, method = other, "stdio bridge: a notification no caller gets; dropped");
            }
        }
    }

    /// Initializes a new child: `initialize` (no client capabilities), the result
    /// cached, `notifications/initialized`, then the subscriptions sessions hold.
    pub(super) async fn initialize(&self, run: &Arc<Generation>) -> Result<(), String> {
        let id = self.next_id();
        let (done_tx, done_rx) = oneshot::channel();
        run.lock().waiters.insert(
            id,
            Waiter {
                caller_id: Value::from(id),
                caller_token: None,
                progress: None,
                done: done_tx,
                session: None,
            },
        );
        let request = json!({
            "jsonrpc": "2.0", "id": id, "method": "initialize",
            "params": {
                "protocolVersion": CHILD_PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "tessera-gateway", "version": env!("CARGO_PKG_VERSION")},
            },
        });
        let line = serde_json::to_vec(&request).expect("serializes");
        if run.writer.send(line).await.is_err() {
            return Err("its stdin closed".into());
        }
        let answer = match tokio::time::timeout(self.config.init_timeout, done_rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => return Err("it exited".into()),
            Err(_) => {
                run.take(id);
                return Err(format!(
                    "it did not answer initialize within {}",
                    humantime::format_duration(self.config.init_timeout)
                ));
            }
        };
        let Some(result) = answer.get("result").and_then(Value::as_object) else {
            let err = answer
                .get("error")
                .map(Value::to_string)
                .unwrap_or_default();
            return Err(format!(
                "it refused initialize: {}",
                sanitize_for_log(err.as_bytes(), 512)
            ));
        };
        if !result.get("protocolVersion").is_some_and(Value::is_string) {
            return Err("its initialize result has no protocolVersion".into());
        }
        let _ = run.init.set(result.clone());
        run.send_now(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        for uri in self.sessions.subscribed_uris() {
            run.send_now(&json!({
                "jsonrpc": "2.0", "id": self.next_id(),
                "method": "resources/subscribe", "params": {"uri": uri},
            }));
        }
        Ok(())
    }
}

/// One server-sent event carrying a JSON-RPC message (serialized JSON has no raw
/// newline, so one `data:` line holds it).
pub(super) fn sse_event(msg: &Value) -> Bytes {
    let mut out = b"event: message\ndata: ".to_vec();
    serde_json::to_writer(&mut out, msg).expect("a JSON value serializes");
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}
