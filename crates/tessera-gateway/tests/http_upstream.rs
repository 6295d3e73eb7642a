//! The real `tessera-gateway` binary in front of an MCP server no one here wrote (the
//! Python MCP SDK's MCPServer over streamable HTTP, `tests/interop/python/
//! upstream_server.py`), with a real agent issuing the gateway's SVID and the callers'
//! task SVIDs, and real clients: rmcp's (2025-11-25 sessions) and raw HTTP/2 requests
//! over mTLS (2026-07-28 stateless requests, hostile bodies).
//!
//! The upstream logs every request it receives (headers and body), so each test also
//! checks what reached it: identity headers, never a credential, never a refused call.

#[path = "../../../tests/tests/support/mcp.rs"]
#[allow(dead_code, unused_imports)]
mod support;
#[path = "support/gateway.rs"]
mod gateway;

use std::time::{Duration, Instant};

use gateway::{CONSENTED, Gw, SUBJECT, json_of, post, post2026, raw, tool_names};
use serde_json::{Value, json};
use support::{AgentCa, Leaf, args, foreign_ca, hostile_tls, mint};
use tessera_e2e::TRUST_DOMAIN;
use tessera_example_agent_runtime::{CallOutcome, McpConnection};

const ALLOWED_TOOLS: &[&str] = &["delete_branch", "get_pull_request", "list_pulls"];

#[tokio::test]
async fn an_allowed_call_reaches_the_python_server_with_the_callers_identity_and_never_its_credential()
 {
    let gw = Gw::start().await;
    let (_w, task, cred) = gw.begin(CONSENTED).await;
    let conn = gw.connect(&cred).await;
    let out = conn
        .call(
            "get_pull_request",
            args(json!({"repo": "acme/api", "number": 42})),
        )
        .await;
    assert_eq!(
        out,
        CallOutcome::Ok {
            text: "PR #42 in acme/api: Fix the flaky test (open)".into()
        },
        "gateway log:\n{}",
        gw.gateway.log_text()
    );
    // A raw request carrying credentials and forged identity headers of its own.
    let http = raw(&cred);
    let (status, _, body) = post2026(
        &http,
        &gw.url,
        "tools/call",
        json!({"name": "list_pulls", "arguments": {"repo": "acme/forged"}}),
        &[
            ("mcp-method", "tools/call"),
            ("mcp-name", "list_pulls"),
            ("authorization", "Bearer not-for-the-upstream"),
            ("cookie", "session=not-for-the-upstream"),
            ("tessera-task", "spiffe://e2e.test/client/root/task/forged"),
            ("tessera-subject", "root"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["isError"], json!(false), "{body}");

    let calls: Vec<Value> = gw
        .upstream_requests()
        .into_iter()
        .filter(|r| r["body"].as_str().is_some_and(|b| b.contains("tools/call")))
        .collect();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    for call in &calls {
        let h = &call["headers"];
        assert_eq!(h["tessera-task"], json!(task.spiffe_id), "{h}");
        assert_eq!(
            h["tessera-client"],
            json!(format!("spiffe://{TRUST_DOMAIN}/client/code-reviewer"))
        );
        assert_eq!(h["tessera-subject"], json!(SUBJECT));
        let scopes = h["tessera-scopes"].as_str().unwrap();
        for s in CONSENTED {
            assert!(scopes.split(' ').any(|x| x == *s), "{scopes}");
        }
        assert!(h.get("authorization").is_none(), "{h}");
        assert!(h.get("cookie").is_none(), "{h}");
    }
    // Every request that ever reached the upstream was free of credentials.
    for r in gw.upstream_requests() {
        assert!(r["headers"].get("authorization").is_none(), "{r}");
        assert!(r["headers"].get("cookie").is_none(), "{r}");
        assert!(!r["body"].as_str().unwrap_or("").contains("not-for-the-upstream"));
    }
    // The ops listener: live, ready, and counting.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |p: &str| plain.get(format!("{}{p}", gw.ops)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("tessera_gateway_requests_total{outcome=\"forwarded\"}"),
        "{metrics}"
    );
    conn.close().await;
}

#[tokio::test]
async fn out_of_scope_and_policy_forbidden_calls_are_refused_as_a_linked_server_refuses_them() {
    let gw = Gw::start().await;
    let (_w, _task, cred) = gw.begin(CONSENTED).await;
    let conn = gw.connect(&cred).await;
    // Not in the task's scopes.
    let out = conn
        .call("search_code", args(json!({"query": "tessera-oos-marker"})))
        .await;
    assert_eq!(out.denial_reason(), Some("out_of_scope"), "{out:?}");
    // In scope, forbidden by a Cedar policy on the call's arguments.
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
            assert_eq!(policy_ids, &vec!["protect-default-branch".to_owned()]);
        }
        other => panic!("expected a policy denial, got {other:?}"),
    }
    // The same tool with other arguments is allowed.
    let out = conn
        .call(
            "delete_branch",
            args(json!({"repo": "acme/api", "branch": "feature-x"})),
        )
        .await;
    assert!(out.is_ok(), "{out:?}");
    assert!(!gw.upstream_saw("tessera-oos-marker"));
    assert!(!gw.upstream_saw("\"branch\":\"main\""));
    assert!(gw.upstream_saw("feature-x"));
    // Audited like a linked server's decisions.
    let audit = std::fs::read_to_string(&gw.audit).unwrap_or_default();
    assert!(audit.contains("policy_forbids") || gw.gateway.log_text().contains("policy_forbids"));
    conn.close().await;
}

#[tokio::test]
async fn tools_list_is_filtered_in_sse_answers_of_a_session_and_json_answers_of_a_stateless_request()
 {
    let gw = Gw::start().await;
    let (_w, _task, cred) = gw.begin(CONSENTED).await;
    // rmcp's client, a 2025-11-25 session: the Python server answers its POSTs as SSE.
    let conn = gw.connect(&cred).await;
    let mut names = conn.list_tools().await.unwrap();
    names.sort();
    assert_eq!(names, ALLOWED_TOOLS);
    conn.close().await;

    // The same by hand, to see the stream: initialize, then tools/list in the session.
    let http = raw(&cred);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "gateway-test", "version": "1"}}});
    let resp = http
        .post(&gw.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(init.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let session = resp.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    drop(resp.text().await);
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (status, ctype, body) = post(
        &http,
        &gw.url,
        &[
            ("mcp-session-id", &session),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        list.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("text/event-stream"), "{ctype}: {body}");
    assert_eq!(tool_names(&json_of(&body)), ALLOWED_TOOLS, "{body}");

    // The upstream did list search_code: it is the gateway that took it out.
    assert!(gw.upstream_requests().iter().any(|r| r["body"]
        .as_str()
        .is_some_and(|b| b.contains("tools/list"))));

    // A 2026-07-28 stateless request: the Python server answers JSON.
    let (status, ctype, msg) = post2026(
        &http,
        &gw.url,
        "tools/list",
        json!({}),
        &[("mcp-method", "tools/list")],
    )
    .await;
    assert_eq!(status, 200, "{msg}");
    assert!(ctype.starts_with("application/json"), "{ctype}");
    assert_eq!(tool_names(&msg), ALLOWED_TOOLS, "{msg}");

    // Another peer cannot use this session.
    let (_w2, _t2, other) = gw.begin(CONSENTED).await;
    let (status, _, _) = post(
        &raw(&other),
        &gw.url,
        &[
            ("mcp-session-id", &session),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        list.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 404, "a session is bound to the task that opened it");
}

#[tokio::test]
async fn both_protocol_generations_pass_and_a_header_that_disagrees_with_the_body_is_refused() {
    let gw = Gw::start().await;
    let (_w, _task, cred) = gw.begin(CONSENTED).await;
    let http = raw(&cred);
    let call = |name: &str, marker: &str| {
        json!({"name": name, "arguments": {"repo": marker, "number": 1}})
    };
    // 2026-07-28, headers agreeing with the body: passes.
    let (status, _, msg) = post2026(
        &http,
        &gw.url,
        "tools/call",
        call("get_pull_request", "acme/agreeing"),
        &[("mcp-method", "tools/call"), ("mcp-name", "get_pull_request")],
    )
    .await;
    assert_eq!(status, 200, "{msg}");
    assert_eq!(msg["result"]["isError"], json!(false), "{msg}");
    // Mcp-Name names another tool than the body calls.
    let (status, _, msg) = post2026(
        &http,
        &gw.url,
        "tools/call",
        call("get_pull_request", "acme/name-mismatch"),
        &[("mcp-method", "tools/call"), ("mcp-name", "list_pulls")],
    )
    .await;
    assert_eq!(status, 400, "{msg}");
    assert_eq!(msg["error"]["code"], json!(-32020), "{msg}");
    assert_eq!(msg["id"], json!(7));
    // Mcp-Method names another method.
    let (status, _, msg) = post2026(
        &http,
        &gw.url,
        "tools/call",
        call("get_pull_request", "acme/method-mismatch"),
        &[("mcp-method", "tools/list"), ("mcp-name", "get_pull_request")],
    )
    .await;
    assert_eq!((status, msg["error"]["code"].clone()), (400, json!(-32020)));
    // Under 2026-07-28 the headers are required.
    let (status, _, msg) = post2026(
        &http,
        &gw.url,
        "tools/call",
        call("get_pull_request", "acme/no-headers"),
        &[],
    )
    .await;
    assert_eq!((status, msg["error"]["code"].clone()), (400, json!(-32020)));
    // A 2026-07-28 call out of scope: the linked server's denial, HTTP 200.
    let (status, _, msg) = post2026(
        &http,
        &gw.url,
        "tools/call",
        json!({"name": "search_code", "arguments": {"query": "x"}}),
        &[("mcp-method", "tools/call"), ("mcp-name", "search_code")],
    )
    .await;
    assert_eq!(status, 200, "{msg}");
    assert_eq!(msg["result"]["isError"], json!(true), "{msg}");
    assert_eq!(
        msg["result"]["structuredContent"]["authorization"]["reason"],
        json!("out_of_scope")
    );
    // A 2025-11-25 session through rmcp's client works too.
    let conn = gw.connect(&cred).await;
    let out = conn
        .call("list_pulls", args(json!({"repo": "acme/session"})))
        .await;
    assert!(out.is_ok(), "{out:?}");
    conn.close().await;
    assert!(gw.upstream_saw("acme/agreeing"));
    for refused in ["name-mismatch", "method-mismatch", "no-headers"] {
        assert!(!gw.upstream_saw(refused), "{refused} reached the upstream");
    }
}

#[tokio::test]
async fn after_end_task_a_call_on_an_open_connection_is_refused_and_open_streams_close() {
    let gw = Gw::start().await;
    let (w, task, cred) = gw.begin(CONSENTED).await;
    let conn = gw.connect(&cred).await;
    let pr = || args(json!({"repo": "acme/api", "number": 42}));
    assert!(conn.call("get_pull_request", pr()).await.is_ok());
    // A session's server-to-client stream, held open through the gateway.
    let http = raw(&cred);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "gateway-test", "version": "1"}}});
    let resp = http
        .post(&gw.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(init.to_string())
        .send()
        .await
        .unwrap();
    let session = resp.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    drop(resp.text().await);
    let mut stream = http
        .get(&gw.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let stream_end = tokio::spawn(async move {
        while let Ok(Some(_)) = stream.chunk().await {}
    });
    w.end_task(&task.id).await.unwrap();
    // The revocation reaches the gateway through the agent's feed: wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = conn.call("get_pull_request", pr()).await;
        if !out.is_ok() || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(out.denial_reason(), Some("revoked"), "{out:?}");
    // And a new stateless request of the task as well.
    let (status, _, msg) = post2026(
        &raw(&cred),
        &gw.url,
        "tools/call",
        json!({"name": "list_pulls", "arguments": {"repo": "acme/after-end"}}),
        &[("mcp-method", "tools/call"), ("mcp-name", "list_pulls")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        msg["result"]["structuredContent"]["authorization"]["reason"],
        json!("revoked"),
        "{msg}"
    );
    assert!(!gw.upstream_saw("acme/after-end"));
    // The open stream was ended by the gateway when the revocation arrived.
    tokio::time::timeout(Duration::from_secs(10), stream_end)
        .await
        .expect("the revoked task's open stream is closed")
        .unwrap();
}

#[tokio::test]
async fn hostile_json_rpc_is_refused_clearly_and_never_reaches_the_upstream() {
    let gw = Gw::start().await;
    let (_w, _task, cred) = gw.begin(CONSENTED).await;
    let http = raw(&cred);
    let v = &[("mcp-protocol-version", "2025-11-25")];
    let cases: Vec<(&str, Vec<u8>, u16, i64, &str)> = vec![
        ("garbage", b"{\"jsonrpc\": \"2.0\", hostile".to_vec(), 400, -32700, "parse error"),
        (
            "batch",
            json!([{"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": "list_pulls", "arguments": {"repo": "acme/batch"}}}])
            .to_string()
            .into_bytes(),
            400,
            -32600,
            "batches",
        ),
        (
            "missing id",
            json!({"jsonrpc": "2.0", "method": "tools/call",
                   "params": {"name": "list_pulls", "arguments": {"repo": "acme/no-id"}}})
            .to_string()
            .into_bytes(),
            400,
            -32600,
            "needs an \"id\"",
        ),
        (
            "oversized",
            {
                let mut b = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_pulls","arguments":{"repo":"acme/huge","pad":""#.to_vec();
                b.extend(std::iter::repeat_n(b'a', 5 * 1024 * 1024));
                b.extend(br#""}}}"#);
                b
            },
            413,
            -32600,
            "exceeds",
        ),
        (
            "params not an object",
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["acme/array"]}"#.to_vec(),
            400,
            -32600,
            "params",
        ),
        (
            "invalid params",
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"repo":"acme/nameless"}}}"#.to_vec(),
            200,
            -32602,
            "invalid params",
        ),
    ];
    for (what, body, want_status, want_code, want_text) in cases {
        let (status, _, text) = post(&http, &gw.url, v, body).await;
        let msg = json_of(&text);
        assert_eq!(status, want_status, "{what}: {text}");
        assert_eq!(msg["error"]["code"], json!(want_code), "{what}: {text}");
        assert!(
            msg["error"]["message"].as_str().unwrap_or("").contains(want_text),
            "{what}: {text}"
        );
    }
    for marker in ["acme/batch", "acme/no-id", "acme/huge", "acme/array", "acme/nameless"] {
        assert!(!gw.upstream_saw(marker), "{marker} reached the upstream");
    }
    // The gateway still serves after all that.
    let conn = gw.connect(&cred).await;
    assert!(conn.call("list_pulls", args(json!({"repo": "acme/api"}))).await.is_ok());
    conn.close().await;
}

#[tokio::test]
async fn hostile_certificates_are_refused_at_the_tls_handshake() {
    let gw = Gw::start().await;
    let ca = AgentCa::load(&gw.agent).unwrap();
    let (_w, task, cred) = gw.begin(CONSENTED).await;
    let leaf = tessera_identity::check_leaf_svid(cred.chain[0].as_ref()).unwrap();
    let claims_der = leaf.claims.as_ref().unwrap().to_der();
    let (evil, _) = foreign_ca().unwrap();
    let mut foreign_claims = leaf.claims.clone().unwrap();
    foreign_claims.client_id = "spiffe://evil.test/client/code-reviewer".parse().unwrap();
    foreign_claims.server = "spiffe://evil.test/mcp/github".parse().unwrap();
    let foreign_id = task.spiffe_id.replace(TRUST_DOMAIN, "evil.test");
    let now = time::OffsetDateTime::now_utc();
    let good = || Leaf {
        claims_der: Some(claims_der.clone()),
        ..Leaf::new(&task.spiffe_id, &ca.issuer)
    };
    // Control: a forgery with nothing wrong is accepted, so each refusal below is about
    // its one property.
    let m = mint(&good()).unwrap();
    let conn = McpConnection::connect(&gw.url, hostile_tls(&ca, m.chain, m.key))
        .await
        .expect("a well-formed certificate of the agent's CA is accepted");
    conn.close().await;
    let before = gw.upstream_requests().len();
    let cases: Vec<(&str, Leaf<'_>)> = vec![
        (
            "another trust domain",
            Leaf {
                claims_der: Some(foreign_claims.to_der()),
                ..Leaf::new(&foreign_id, &evil)
            },
        ),
        (
            "expired",
            Leaf {
                not_before: now - time::Duration::hours(2),
                not_after: now - time::Duration::hours(1),
                ..good()
            },
        ),
    ];
    for (what, leaf) in cases {
        let m = mint(&leaf).unwrap();
        let r = McpConnection::connect(&gw.url, hostile_tls(&ca, m.chain, m.key)).await;
        assert!(r.is_err(), "{what}: accepted");
    }
    // No client certificate at all.
    let expected = format!("spiffe://{TRUST_DOMAIN}/mcp/github").parse().unwrap();
    let mut anon = tessera_verify::tls::client_config_without_certificate(&expected, ca.bundle.clone()).unwrap();
    anon.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let r = McpConnection::connect(&gw.url, anon).await;
    assert!(r.is_err(), "no certificate: accepted");
    let log = gw.gateway.log_text();
    assert!(log.contains("TLS handshake refused"), "{log}");
    assert_eq!(gw.upstream_requests().len(), before, "a refused handshake reached the upstream");
}
