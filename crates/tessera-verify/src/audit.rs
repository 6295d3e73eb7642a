//! Audit events: every decision as a `tracing` event (target `tessera_verify::audit`),
//! and optionally as one JSON object per line in a file.
//!
//! Fields: `client`, `task`, `subject`, `server`, `method`, `target`, `decision`
//! (`allow`/`deny`), `reason` (stable, see [`crate::Reason::as_str`]), `policy_ids`,
//! `latency_us`, `peer` (the full SPIFFE ID), `detail`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};
use tessera_identity::{ServerId, TaskId};

use crate::decision::Decision;
use crate::peer::Peer;
use crate::request::McpRequest;

/// The `tracing` target of audit events.
pub const AUDIT_TARGET: &str = "tessera_verify::audit";

/// Lines queued for the file writer before a request waits for it. A full queue
/// slows requests down rather than dropping a record.
const QUEUE_LINES: usize = 8192;

/// How long the file writer rests after a write before it looks for more lines.
/// Lines queued meanwhile are taken without waking it: waking the writer and writing
/// for every line cost more CPU than the rest of the audit record (the writer thread
/// alone used ~20 µs per call on a 2-core VM at 5 ms), so under load lines go out in
/// batches, each at most this late.
const LINGER: Duration = Duration::from_millis(20);

/// Where decisions are recorded. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct AuditLog {
    file: Option<Arc<FileSink>>,
}

/// The JSON-lines file, written by a thread of its own: a request serializes its line
/// and queues it; the `write` (and its wait on the disk) happens off the request path.
#[derive(Debug)]
struct FileSink {
    queue: Option<SyncSender<Message>>,
    writer: Option<JoinHandle<()>>,
}

enum Message {
    Line(Vec<u8>),
    /// Answered once every line queued before it has been written.
    Flush(SyncSender<()>),
}

/// One audit record, as written to the file.
#[derive(Serialize)]
struct Line<'a> {
    ts_ms: u64,
    peer: SpiffeId<'a>,
    client: Option<&'a str>,
    #[serde(serialize_with = "display_or_null")]
    task: Option<&'a TaskId>,
    subject: Option<&'a str>,
    server: &'a str,
    method: &'a str,
    target: &'a str,
    decision: &'a str,
    reason: &'a str,
    policy_ids: &'a [String],
    detail: &'a str,
    latency_us: u64,
}

// === impl AuditLog ===

impl AuditLog {
    /// Audit through `tracing` only.
    pub fn tracing_only() -> Self {
        Self { file: None }
    }

    /// Audit through `tracing` and as JSON lines appended to `path` (created 0600-ish by
    /// umask; rotate it externally with copy-truncate). Lines are written by a
    /// background thread in the order decisions were made, in batches, each line
    /// within a few milliseconds of its decision (see [`LINGER`]); [`Self::flush`]
    /// waits for them, and dropping the last clone writes every queued line before it
    /// returns.
    ///
    /// # Errors
    /// The I/O error opening the file or starting the writer thread.
    pub fn with_json_file(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let (queue, lines) = sync_channel(QUEUE_LINES);
        let writer = std::thread::Builder::new()
            .name("tessera-audit".into())
            .spawn(move || write_lines(file, lines))?;
        Ok(Self {
            file: Some(Arc::new(FileSink {
                queue: Some(queue),
                writer: Some(writer),
            })),
        })
    }

    /// Records one decision.
    pub fn record(
        &self,
        server: &ServerId,
        peer: &Peer,
        request: &McpRequest,
        decision: &Decision,
        latency: Duration,
    ) {
        trace(server, peer, request, decision, latency);
        let Some(file) = &self.file else { return };
        let line = Line {
            ts_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            peer: SpiffeId(peer),
            client: peer.client().map(|c| c.name.as_str()),
            task: peer.task().map(|t| &t.task),
            subject: peer.claims().map(|c| c.subject.as_str()),
            server: server.name.as_str(),
            method: request.method.as_str(),
            target: &request.target,
            decision: if decision.allowed { "allow" } else { "deny" },
            reason: decision.reason.as_str(),
            policy_ids: &decision.policy_ids,
            detail: &decision.detail,
            latency_us: latency.as_micros() as u64,
        };
        let mut bytes = Vec::with_capacity(512);
        if serde_json::to_writer(&mut bytes, &line).is_err() {
            // Serializing strings and numbers into a Vec cannot fail; if it ever did,
            // say so rather than write half a line.
            tracing::error!("tessera-verify: serializing an audit record failed");
            return;
        }
        bytes.push(b'\n');
        file.send(Message::Line(bytes));
    }

    /// Waits until every record made before this call is in the file (written, not
    /// fsynced). A no-op without a file.
    pub fn flush(&self) {
        let Some(file) = &self.file else { return };
        let (done, wait) = sync_channel(1);
        file.send(Message::Flush(done));
        let _ = wait.recv();
    }
}

// === impl FileSink ===

impl FileSink {
    fn send(&self, message: Message) {
        let sent = self.queue.as_ref().map(|q| q.send(message));
        if !matches!(sent, Some(Ok(()))) {
            tracing::error!("tessera-verify: the audit writer thread is gone; record lost");
        }
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain it and exit.
        drop(self.queue.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: writes what is queued, flushing whenever the queue runs dry,
/// so a burst costs one `write` and a quiet log is never left in a buffer; then rests
/// for [`LINGER`] so that the lines of the next moments need no wake-up.
fn write_lines(file: File, lines: Receiver<Message>) {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut waiting = Vec::new();
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Line(bytes) => {
                    if let Err(e) = out.write_all(&bytes) {
                        tracing::error!(error = %e, "tessera-verify: writing the audit file failed");
                    }
                }
                Message::Flush(done) => waiting.push(done),
            }
            next = lines.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            tracing::error!(error = %e, "tessera-verify: writing the audit file failed");
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
        std::thread::sleep(LINGER);
    }
    let _ = out.flush();
}

/// Emits the `tracing` audit event.
pub(crate) fn trace(
    server: &ServerId,
    peer: &Peer,
    request: &McpRequest,
    decision: &Decision,
    latency: Duration,
) {
    tracing::info!(
        target: AUDIT_TARGET,
        peer = %SpiffeId(peer),
        client = peer.client().map(|c| c.name.as_str()).unwrap_or(""),
        task = %OrEmpty(peer.task().map(|t| &t.task)),
        subject = peer.claims().map(|c| c.subject.as_str()).unwrap_or(""),
        server = %server.name,
        method = request.method.as_str(),
        // The target (tool name, resource URI) and the detail (which can quote argument
        // names) come from the peer: recorded as `str`, which text formatters quote and
        // escape like `subject`, so a `\n` in them cannot end the line and forge another.
        target = request.target.as_str(),
        decision = if decision.allowed { "allow" } else { "deny" },
        reason = decision.reason.as_str(),
        policy_ids = ?decision.policy_ids,
        detail = decision.detail.as_str(),
        latency_us = latency.as_micros() as u64,
        "authorization decision"
    );
}

/// A peer's SPIFFE ID, written straight into the event or line that records it: the
/// same text as [`Peer::spiffe_id`] without building a `String` per decision first.
struct SpiffeId<'a>(&'a Peer);

impl std::fmt::Display for SpiffeId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Peer::Task { task, .. } => task.fmt(f),
            Peer::Client { client, .. } => client.fmt(f),
            Peer::Server { server, .. } => server.fmt(f),
        }
    }
}

impl Serialize for SpiffeId<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A value's text, or nothing.
struct OrEmpty<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrEmpty<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => Ok(()),
        }
    }
}

fn display_or_null<T: std::fmt::Display, S: Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, OnceLock};
    use std::thread::ThreadId;

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};

    use super::*;
    use crate::decision::Reason;
    use crate::testutil::{SERVER, task_peer};

    const FIELDS: [&str; 13] = [
        "peer",
        "client",
        "task",
        "subject",
        "server",
        "method",
        "target",
        "decision",
        "reason",
        "policy_ids",
        "detail",
        "latency_us",
        "message",
    ];

    fn client_peer() -> Peer {
        Peer::Client {
            client: "spiffe://acme.corp/client/code-reviewer".parse().unwrap(),
            serial_hex: "01".into(),
            not_after_unix: i64::MAX,
        }
    }

    fn record_both(log: &AuditLog) -> (Peer, Peer) {
        let server: ServerId = SERVER.parse().unwrap();
        let (task, client) = (task_peer(&["github/tool/*"]), client_peer());
        let req = McpRequest::call_tool("get_pull_request", None);
        let allow = Decision::allow(vec!["p1".into()]);
        let deny = Decision::deny(Reason::NotATask, "client is not a task");
        log.record(&server, &task, &req, &allow, Duration::from_micros(7));
        log.record(&server, &client, &req, &deny, Duration::from_micros(3));
        (task, client)
    }

    #[test]
    fn file_lines_carry_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::with_json_file(&path).unwrap();
        let (task, client) = record_both(&log);
        log.flush();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        let t = &lines[0];
        assert_eq!(t["peer"], task.spiffe_id());
        assert_eq!(t["task"], task.task().unwrap().task.to_string());
        assert_eq!(t["client"], "code-reviewer");
        assert_eq!(t["subject"], task.claims().unwrap().subject);
        assert_eq!(t["server"], "github");
        assert_eq!(t["method"], "tools/call");
        assert_eq!(t["target"], "get_pull_request");
        assert_eq!(t["decision"], "allow");
        assert_eq!(t["reason"], "allowed");
        assert_eq!(t["policy_ids"], serde_json::json!(["p1"]));
        assert_eq!(t["detail"], "");
        assert_eq!(t["latency_us"], 7);
        assert!(t["ts_ms"].as_u64().unwrap() > 0);
        let c = &lines[1];
        assert_eq!(c["peer"], client.spiffe_id());
        assert_eq!(c["task"], serde_json::Value::Null);
        assert_eq!(c["subject"], serde_json::Value::Null);
        assert_eq!(c["decision"], "deny");
        assert_eq!(c["reason"], "not_a_task");
    }

    /// Audit events' fields, with the thread that emitted each.
    type Captured = Arc<Mutex<Vec<(ThreadId, BTreeMap<String, String>)>>>;

    /// Captures the fields of audit events.
    #[derive(Default)]
    struct Capture(Captured);

    /// The audit events of every thread of this test binary, captured by a subscriber
    /// installed once as the global default. (One scoped to the test's thread with
    /// `with_default` lost, now and then, the race for the audit callsite's cached
    /// interest against other tests emitting the same event with no subscriber, and
    /// captured nothing; a global subscriber is interested whichever thread comes first.)
    fn captured() -> &'static Captured {
        &installed().0
    }

    /// Every event of this test binary as `tracing-subscriber`'s text formatter writes
    /// it (no colours), from the same global subscriber as [`captured`].
    fn formatted() -> &'static Arc<Mutex<Vec<u8>>> {
        &installed().1
    }

    fn installed() -> &'static (Captured, Arc<Mutex<Vec<u8>>>) {
        static INSTALLED: OnceLock<(Captured, Arc<Mutex<Vec<u8>>>)> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            let capture = Capture::default();
            let events = Arc::clone(&capture.0);
            let text = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&text);
            let fmt = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || TextSink(Arc::clone(&sink)));
            tracing::subscriber::set_global_default(
                tracing_subscriber::registry().with(capture).with(fmt),
            )
            .expect("no other test installs a global subscriber");
            (events, text)
        })
    }

    /// Appends formatted events to a shared buffer.
    struct TextSink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for TextSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Fields<'a>(&'a mut BTreeMap<String, String>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            if event.metadata().target() == AUDIT_TARGET {
                let mut fields = BTreeMap::new();
                event.record(&mut Fields(&mut fields));
                let thread = std::thread::current().id();
                self.0.lock().unwrap().push((thread, fields));
            }
        }
    }

    #[test]
    fn tracing_events_carry_every_field() {
        let captured = captured();
        let (task, client) = record_both(&AuditLog::tracing_only());
        let me = std::thread::current().id();
        let events: Vec<BTreeMap<String, String>> = captured
            .lock()
            .unwrap()
            .iter()
            .filter(|(thread, _)| *thread == me)
            .map(|(_, fields)| fields.clone())
            .collect();
        assert_eq!(events.len(), 2);
        for e in events.iter() {
            let names: Vec<&str> = e.keys().map(String::as_str).collect();
            let mut want = FIELDS.to_vec();
            want.sort_unstable();
            assert_eq!(names, want);
        }
        assert_eq!(events[0]["peer"], task.spiffe_id());
        assert_eq!(events[0]["task"], task.task().unwrap().task.to_string());
        assert_eq!(events[0]["decision"], "allow");
        assert_eq!(events[0]["policy_ids"], r#"["p1"]"#);
        assert_eq!(events[1]["peer"], client.spiffe_id());
        assert_eq!(events[1]["task"], "");
        assert_eq!(events[1]["reason"], "not_a_task");
    }

    /// Issue 13: a tool name, resource URI or denial detail holding a line break must not
    /// start a line of its own in a text log, where it could pass for another decision.
    #[test]
    fn a_line_break_in_a_target_or_detail_cannot_forge_an_audit_line() {
        let text = formatted();
        let log = AuditLog::tracing_only();
        let server: ServerId = SERVER.parse().unwrap();
        let peer = task_peer(&["github/tool/*"]);
        let forged = " decision=\"allow\" reason=\"allowed\"";
        let cases = [
            (
                McpRequest::call_tool(format!("get_pull_request\nFORGED-TOOL{forged}"), None),
                Decision::deny(Reason::OutOfScope, "out of scope"),
                "FORGED-TOOL",
            ),
            (
                McpRequest::read_resource(format!("file:///handbook/a\r\nFORGED-URI{forged}")),
                Decision::deny(Reason::OutOfScope, "out of scope"),
                "FORGED-URI",
            ),
            (
                McpRequest::call_tool("get_pull_request", None),
                Decision::deny(
                    Reason::UnsupportedArguments,
                    format!("argument a\nFORGED-DETAIL{forged}: float"),
                ),
                "FORGED-DETAIL",
            ),
        ];
        for (request, decision, _) in &cases {
            log.record(&server, &peer, request, decision, Duration::from_micros(1));
        }
        let text = String::from_utf8(text.lock().unwrap().clone()).unwrap();
        for (_, _, marker) in cases {
            let lines: Vec<&str> = text.lines().filter(|l| l.contains(marker)).collect();
            assert_eq!(lines.len(), 1, "{marker}: {lines:#?}");
            assert!(
                lines[0].contains("authorization decision") && lines[0].contains("peer="),
                "{marker} started a line of its own: {:?}",
                lines[0]
            );
        }
    }
}
