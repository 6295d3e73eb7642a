//! MCP over mTLS across processes: a real agent, the example MCP server process
//! (tessera-verify), and real MCP clients (rmcp's client in this process, and the
//! example agent-runtime binary).

#[path = "support/mcp.rs"]
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, IsCa, KeyUsagePurpose};
use serde_json::{Value, json};
use support::{
    AgentCa, Env, Leaf, RUNTIME_BIN, SUBJECT, Trust, args, audit, begin, connect, foreign_ca,
    hostile_tls, mint, post,
};
use tessera_e2e::{TRUST_DOMAIN, bin};
use tessera_example_agent_runtime::{
    CallOutcome, McpConnection, http_client, measure_refusal_after_end, tls_config,
};
use tessera_testca::Ca;
use time::OffsetDateTime;

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
async fn hostile_certificates_are_refused_at_the_handshake() {
    // This server takes its SVID and bundle from PEM files (the path for servers
    // without an agent-issued identity); the others use the Workload API.
    let env = Env::start(Trust::Files, &[]).await.unwrap();
    let ca = AgentCa::load(&env.agent).unwrap();
    // A real task, to copy its id and signed claims into forgeries that differ from it
    // in exactly one property.
    let (_w, task, cred) = begin(&env, &["github/tool/get_pull_request"]).await;
    let leaf = tessera_identity::check_leaf_svid(cred.chain[0].as_ref()).unwrap();
    let claims_der = leaf.claims.as_ref().unwrap().to_der();

    // Control: a forgery with nothing wrong (same id, claims, CA) gets through, so the
    // refusals below are about the one property under test.
    let good = || Leaf {
        claims_der: Some(claims_der.clone()),
        ..Leaf::new(&task.spiffe_id, &ca.issuer)
    };
    let control = async |good: Leaf<'_>| {
        let m = mint(&good).unwrap();
        let conn = McpConnection::connect(&env.server.url, hostile_tls(&ca, m.chain, m.key))
            .await
            .expect("a well-formed certificate from the agent's CA is accepted");
        let out = conn
            .call(
                "get_pull_request",
                args(json!({"repo": "acme/api", "number": 1})),
            )
            .await;
        assert!(out.is_ok(), "{out:?}");
        conn.close().await;
    };
    control(good()).await;

    // Another live task of the same client: its claims are genuine, just not this URI's.
    let (_w2, other_task, other_cred) = begin(&env, &["github/tool/get_pull_request"]).await;
    let other_claims = tessera_identity::check_leaf_svid(other_cred.chain[0].as_ref())
        .unwrap()
        .claims
        .unwrap()
        .to_der();
    // The agent CA's name and key id, but another key: only the signature is wrong.
    let impostor = Ca::from_pem(
        &ca.bundle_pem,
        &rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let (evil, _) = foreign_ca().unwrap();
    let foreign_id = task.spiffe_id.replace(TRUST_DOMAIN, "evil.test");
    // A consistent task of the other trust domain: its claims name that domain too.
    let mut foreign_claims = leaf.claims.clone().unwrap();
    foreign_claims.client_id = "spiffe://evil.test/client/code-reviewer".parse().unwrap();
    foreign_claims.server = "spiffe://evil.test/mcp/github".parse().unwrap();
    let now = OffsetDateTime::now_utc();
    let cases: Vec<(&str, Leaf<'_>, &str)> = vec![
        (
            "another trust domain",
            Leaf {
                claims_der: Some(foreign_claims.to_der()),
                ..Leaf::new(&foreign_id, &evil)
            },
            "trust domain evil.test is not allowed",
        ),
        (
            "expired",
            Leaf {
                claims_der: Some(claims_der.clone()),
                not_before: now - time::Duration::hours(2),
                not_after: now - time::Duration::hours(1),
                ..Leaf::new(&task.spiffe_id, &ca.issuer)
            },
            "certificate expired",
        ),
        (
            "two URI SANs",
            Leaf {
                uris: vec![
                    task.spiffe_id.clone(),
                    format!("spiffe://{TRUST_DOMAIN}/client/other"),
                ],
                claims_der: Some(claims_der.clone()),
                ..Leaf::new(&task.spiffe_id, &ca.issuer)
            },
            "UriSanCount { found: 2 }",
        ),
        (
            "no task claims",
            Leaf::new(&task.spiffe_id, &ca.issuer),
            "MissingClaims",
        ),
        (
            "a CA certificate as the leaf",
            Leaf {
                is_ca: IsCa::Ca(BasicConstraints::Unconstrained),
                ..good()
            },
            "LeafIsCa",
        ),
        (
            "no BasicConstraints",
            Leaf {
                is_ca: IsCa::NoCa,
                ..good()
            },
            "MissingBasicConstraints",
        ),
        (
            "keyCertSign without digitalSignature",
            Leaf {
                key_usages: vec![KeyUsagePurpose::KeyCertSign],
                ..good()
            },
            "MissingDigitalSignature",
        ),
        (
            "digitalSignature plus keyCertSign",
            Leaf {
                key_usages: vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                ],
                ..good()
            },
            "LeafKeyCertSign",
        ),
        (
            "not yet valid",
            Leaf {
                not_before: now + time::Duration::hours(1),
                not_after: now + time::Duration::hours(2),
                ..good()
            },
            "certificate not valid yet",
        ),
        (
            "signed by another key under the agent CA's name",
            Leaf {
                issuer: &impostor,
                ..good()
            },
            "BadSignature",
        ),
        (
            "claims extension that is not DER",
            Leaf {
                claims_der: Some(b"\x30\x84\xff\xff\xff\xffnot DER".to_vec()),
                ..good()
            },
            "InvalidClaims",
        ),
        (
            "claims of another task",
            Leaf {
                claims_der: Some(other_claims),
                ..good()
            },
            "ClaimsTaskMismatch",
        ),
    ];
    for (name, leaf, log_says) in cases {
        let m = mint(&leaf).unwrap();
        let before = env
            .server
            .log_text()
            .matches("TLS handshake refused")
            .count();
        let result =
            McpConnection::connect(&env.server.url, hostile_tls(&ca, m.chain, m.key)).await;
        assert!(result.is_err(), "{name}: connection was accepted");
        // The client sees the alert before the server has logged why: wait for the line.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut log = env.server.log_text();
        while log.matches("TLS handshake refused").count() <= before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            log = env.server.log_text();
        }
        assert!(
            log.matches("TLS handshake refused").count() > before,
            "{name}: no handshake refusal logged:\n{log}"
        );
        assert!(
            log.contains(log_says),
            "{name}: log does not say {log_says:?}:\n{log}"
        );
    }
    // The server is still up and serves a good credential.
    control(good()).await;
    // None of them reached the authorizer: the only calls allowed are the two control
    // calls (each connection's `initialize` and notifications are decided too).
    let events = audit(&env);
    assert!(
        events.iter().all(|e| e["peer"] == task.spiffe_id.as_str()),
        "{events:#?}"
    );
    assert!(
        !events.iter().any(|e| e["task"] == other_task.id.as_str()),
        "{events:#?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["decision"] == "allow" && e["method"] == "tools/call")
            .count(),
        2,
        "{events:#?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["decision"] == "allow" && e["method"] == "initialize")
            .count(),
        2,
        "{events:#?}"
    );
}

// The agent's self-signed root has pathLenConstraint 0 ("signs leaves only"). webpki's
// trust anchors keep only subject, key and name constraints, so tessera-verify applies
// the anchor's constraint itself (tls/path_len.rs): a leaf under an intermediate the
// root signed must be refused at the handshake. Minting that intermediate needs the CA
// key (or a mis-issued CA certificate): this is defence in depth.
#[tokio::test]
async fn a_leaf_under_an_intermediate_beyond_the_roots_path_length_is_refused() {
    let env = Env::start(Trust::Files, &[]).await.unwrap();
    let ca = AgentCa::load(&env.agent).unwrap();
    let (_w, task, cred) = begin(&env, &["github/tool/get_pull_request"]).await;
    let claims = tessera_identity::check_leaf_svid(cred.chain[0].as_ref())
        .unwrap()
        .claims
        .unwrap()
        .to_der();
    let m = mint(&Leaf {
        claims_der: Some(claims),
        via_intermediate: true,
        ..Leaf::new(&task.spiffe_id, &ca.issuer)
    })
    .unwrap();
    assert_eq!(m.chain.len(), 2, "leaf and intermediate are both sent");
    if let Ok(conn) =
        McpConnection::connect(&env.server.url, hostile_tls(&ca, m.chain, m.key)).await
    {
        let out = conn
            .call(
                "get_pull_request",
                args(json!({"repo": "acme/api", "number": 1})),
            )
            .await;
        conn.close().await;
        panic!("a chain one CA longer than the root allows was accepted; its call: {out:?}");
    }
    let log = env.server.log_text();
    assert!(log.contains("PathLenConstraintViolated"), "{log}");
    // The same leaf signed by the root itself is fine: the refusal is the path length.
    let direct = mint(&Leaf {
        claims_der: tessera_identity::check_leaf_svid(cred.chain[0].as_ref())
            .unwrap()
            .claims
            .map(|c| c.to_der()),
        ..Leaf::new(&task.spiffe_id, &ca.issuer)
    })
    .unwrap();
    let conn = McpConnection::connect(&env.server.url, hostile_tls(&ca, direct.chain, direct.key))
        .await
        .expect("the leaf without the intermediate is accepted");
    conn.close().await;
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

// === streams and subscriptions of a revoked task ===

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

/// An upstream PKI shared by two trust domains: a root (no SPIFFE ID) in PEM, and
/// intermediates for `e2e.test` and `evil.test` signed by it, each with its key.
struct SharedUpstream {
    root_pem: String,
    root: rustls_pki_types::CertificateDer<'static>,
    own: (Ca, String, String),
    evil: (Ca, rustls_pki_types::CertificateDer<'static>),
}

fn shared_upstream() -> SharedUpstream {
    let root = Ca::unnamed_root("Corporate Root");
    let intermediate = |td: &str| {
        root.constrained_intermediate(&format!("{td} CA"), &[&format!("spiffe://{td}")], 0)
    };
    let (own, evil) = (intermediate(TRUST_DOMAIN), intermediate("evil.test"));
    let (own_pem, own_key) = (own.cert_pem().to_owned(), own.key_pem().to_owned());
    let evil_cert = evil.cert().clone();
    SharedUpstream {
        root_pem: root.cert_pem().to_owned(),
        root: root.cert().clone(),
        own: (own, own_pem, own_key),
        evil: (evil, evil_cert),
    }
}

/// Issue 13: an agent in upstream mode, its intermediate from a PKI whose root also
/// signed another trust domain's. That domain's CA mints a task SVID of this one, with
/// the genuine claims of a live task: the example server refuses it at the handshake,
/// while the same SVID from this domain's intermediate is served.
#[tokio::test]
async fn another_trust_domains_intermediate_under_a_shared_root_is_refused() {
    let pki = shared_upstream();
    let files = tempfile::tempdir().unwrap();
    let path = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (cert, key, bundle) = (
        path("int.pem", &pki.own.1),
        path("int.key", &pki.own.2),
        path("root.pem", &pki.root_pem),
    );
    std::fs::set_permissions(
        &key,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    let agent = tessera_e2e::TestAgent::start(&format!(
        "[ca]\nmode = \"upstream\"\nupstream_cert = \"{}\"\nupstream_key = \"{}\"\n\
         upstream_bundle = \"{}\"\n",
        cert.display(),
        key.display(),
        bundle.display()
    ))
    .await
    .unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    support::register_server(&agent, "github", &bin(support::SERVER_BIN))
        .await
        .unwrap();
    let consent = support::grant(&agent, "code-reviewer", support::CONSENTED)
        .await
        .unwrap();
    let server = support::McpServer::start(&agent, "upstream", Trust::Workload, &[])
        .await
        .unwrap();
    let env = Env {
        agent,
        server,
        consent,
    };
    // The agent's own chain: leaf, then its upstream intermediate; served as usual.
    let (_w, task, cred) = begin(&env, &["github/tool/get_pull_request"]).await;
    assert_eq!(cred.chain.len(), 2, "leaf + upstream intermediate");
    let conn = connect(&env, &cred).await;
    let out = conn
        .call(
            "get_pull_request",
            args(json!({"repo": "acme/api", "number": 1})),
        )
        .await;
    assert!(out.is_ok(), "{out:?}");
    conn.close().await;

    let claims_der = tessera_identity::check_leaf_svid(cred.chain[0].as_ref())
        .unwrap()
        .claims
        .unwrap()
        .to_der();
    let tls = |chain, key| {
        let expected = format!("spiffe://{TRUST_DOMAIN}/mcp/github")
            .parse()
            .unwrap();
        let mut cfg =
            tessera_verify::tls::client_config(&expected, [pki.root.clone()], chain, key).unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg
    };
    // Control: minted with this domain's intermediate, the copy is served, so the
    // refusal below is about the intermediate alone.
    let mut own = mint(&Leaf {
        claims_der: Some(claims_der.clone()),
        ..Leaf::new(&task.spiffe_id, &pki.own.0)
    })
    .unwrap();
    own.chain.push(cred.chain[1].clone());
    let conn = McpConnection::connect(&env.server.url, tls(own.chain, own.key))
        .await
        .expect("this domain's intermediate");
    conn.close().await;

    let mut forged = mint(&Leaf {
        claims_der: Some(claims_der),
        ..Leaf::new(&task.spiffe_id, &pki.evil.0)
    })
    .unwrap();
    forged.chain.push(pki.evil.1.clone());
    let refused = McpConnection::connect(&env.server.url, tls(forged.chain, forged.key)).await;
    if let Ok(conn) = refused {
        let out = conn
            .call(
                "get_pull_request",
                args(json!({"repo": "acme/api", "number": 1})),
            )
            .await;
        panic!("evil.test's CA minted an e2e.test task the server accepted; a call: {out:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !env
        .server
        .log_text()
        .contains("IntermediateForeignTrustDomain")
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        env.server
            .log_text()
            .contains("IntermediateForeignTrustDomain"),
        "{}",
        env.server.log_text()
    );
}
