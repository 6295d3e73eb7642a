use std::collections::BTreeMap;

use super::*;
use crate::decision::Reason;
use crate::peer::Credential;
use crate::testutil::logs::{captured, formatted};
use crate::testutil::{SERVER, bearer_peer, task_peer};

const FIELDS: [&str; 14] = [
    "peer",
    "auth",
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
        credential: Credential::Certificate {
            serial_hex: "01".into(),
            not_after_unix: i64::MAX,
            node_ca_serials: Vec::new(),
        },
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
    assert_eq!(t["auth"], "mtls");
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

/// The audit record names how the caller authenticated.
#[test]
fn records_name_the_auth_method() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::with_json_file(&path).unwrap();
    let server: ServerId = SERVER.parse().unwrap();
    let req = McpRequest::call_tool("get_pull_request", None);
    let allow = Decision::allow(vec![]);
    let scopes = ["github/tool/*"];
    for peer in [
        task_peer(&scopes),
        bearer_peer(&scopes, &scopes, "j1", 60, false),
        bearer_peer(&scopes, &scopes, "j2", 60, true),
    ] {
        log.record(&server, &peer, &req, &allow, Duration::ZERO);
    }
    log.flush();
    let auth: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["auth"].to_string())
        .collect();
    assert_eq!(auth, [r#""mtls""#, r#""bearer""#, r#""bearer+cnf""#]);
}
