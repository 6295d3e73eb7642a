//! MCP's OAuth path across processes: a real agent, the example MCP server accepting
//! bearer tokens from its own token endpoint, and clients that hold no certificate:
//! the stock Python MCP SDK (`PrivateKeyJWTOAuthProvider`, its assertion a task JWT-SVID
//! from py-spiffe) finding its way by the specification's discovery, and the example
//! agent runtime's bearer mode. Refusals are checked for the status and
//! `WWW-Authenticate` the specification gives them.

#[path = "support/mcp.rs"]
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{CONSENTED, McpServer, RUNTIME_BIN, SERVER_BIN, SUBJECT, Trust, args, grant};
use tessera_e2e::interop::{proto_dir, python, python_mcp_oauth_script, run_python_script};
use tessera_e2e::{TRUST_DOMAIN, TestAgent, bin};
use tessera_example_agent_runtime::bearer::{
    Discovery, connect_task_bearer, discover, request_token, server_only_tls,
};
use tessera_example_agent_runtime::{
    CallOutcome, TaskRequest, Workload, http_client, install_crypto_provider,
    measure_refusal_after_end, tls_config,
};

const CLIENT: &str = "code-reviewer";

fn origin(url: &str) -> &str {
    url.strip_suffix("/mcp").expect("an /mcp URL")
}

fn header(v: &Value) -> &str {
    v["www_authenticate"].as_str().unwrap_or_default()
}

/// An agent with `exe` registered as the code reviewer, the server binary as `github`,
/// consent for [`CONSENTED`], and a server started with `flags`.
async fn agent_and_server(exe: &std::path::Path, flags: &[&str]) -> (TestAgent, McpServer) {
    let agent = TestAgent::with_client(CLIENT, exe).await.unwrap();
    agent
        .register_exe("", "github", &bin(SERVER_BIN))
        .await
        .unwrap();
    grant(&agent, CLIENT, CONSENTED).await.unwrap();
    let server = McpServer::start(&agent, "main", Trust::Workload, flags)
        .await
        .unwrap();
    (agent, server)
}

#[tokio::test]
async fn python_mcp_sdk_gets_in_by_discovery_steps_up_and_is_refused_as_the_spec_says() {
    let Some(python) = python() else { return };
    let (agent, server) =
        agent_and_server(&python, &["--accept", "both", "--token-ttl", "10s"]).await;
    // The same server identity at another URL: its tokens are for another resource.
    let other = McpServer::start(&agent, "other", Trust::Workload, &["--accept", "bearer"])
        .await
        .unwrap();
    let server_id = format!("spiffe://{TRUST_DOMAIN}/mcp/github");
    let proto = proto_dir();
    let r = run_python_script(
        &python,
        &python_mcp_oauth_script(),
        &[
            &agent.workload_path(),
            proto.to_str().unwrap(),
            &server.url,
            &server_id,
            &other.url,
            "10",
        ],
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\nserver log:\n{}\nagent log:\n{}",
            server.log_text(),
            agent.log_text()
        )
    });
    let context = format!("{r:#}\nserver log:\n{}", server.log_text());
    let url = server.url.as_str();

    // Discovery, exactly as the specification walks it.
    let d = r["discovery"].as_array().expect("discovery trace");
    let steps: Vec<(String, String, u64)> = d
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, String, u64)> = [
        ("POST", "/mcp", 401),
        ("GET", "/.well-known/oauth-protected-resource/mcp", 200),
        ("GET", "/.well-known/oauth-authorization-server", 200),
        ("POST", "/oauth/token", 200),
        ("POST", "/mcp", 200),
    ]
    .iter()
    .map(|(m, p, s)| (m.to_string(), p.to_string(), *s))
    .collect();
    assert_eq!(steps[..want.len()], want[..], "{context}");
    assert!(
        header(&d[0]).contains(&format!(
            r#"resource_metadata="{}/.well-known/oauth-protected-resource/mcp""#,
            origin(url)
        )),
        "{context}"
    );
    let token_request = &d[3];
    assert_eq!(token_request["resource"], url, "{context}");
    // No scope asked (the 401 names none): the token gets all of the task's.
    assert_eq!(
        token_request["form_keys"],
        json!([
            "client_assertion",
            "client_assertion_type",
            "grant_type",
            "resource"
        ]),
        "{context}"
    );
    // The SDK asked for assertions with the issuer as audience, nothing else.
    assert_eq!(r["audiences"], json!([origin(url)]), "{context}");

    // The token carries the task's scopes; lists and calls follow them.
    let mut granted: Vec<&str> = r["granted_scope"].as_str().unwrap().split(' ').collect();
    granted.sort();
    assert_eq!(
        granted,
        ["github/tool/get_pull_request", "github/tool/list_pulls"],
        "{context}"
    );
    assert_eq!(
        r["tools"],
        json!(["get_pull_request", "list_pulls"]),
        "{context}"
    );
    assert_eq!(r["allowed"]["is_error"], false, "{context}");
    assert!(
        r["allowed"]["text"].as_str().unwrap().contains("acme/api"),
        "{context}"
    );

    // A narrower token: lists follow it; a call within the task but beyond it gets 403
    // insufficient_scope naming the scope, the SDK asks for the union, the call goes through.
    assert_eq!(r["narrow_tools"], json!(["get_pull_request"]), "{context}");
    let step_up = r["step_up_trace"].as_array().unwrap();
    let challenge = step_up
        .iter()
        .find(|e| e["status"] == 403)
        .unwrap_or_else(|| panic!("no 403 in the step-up: {context}"));
    assert!(
        header(challenge).contains(r#"error="insufficient_scope""#)
            && header(challenge).contains(r#"scope="github/tool/list_pulls""#),
        "{context}"
    );
    let again = step_up
        .iter()
        .find(|e| e["path"] == "/oauth/token")
        .unwrap_or_else(|| panic!("no token request in the step-up: {context}"));
    let asked: Vec<&str> = again["scope"].as_str().unwrap().split(' ').collect();
    assert!(
        asked.contains(&"github/tool/get_pull_request")
            && asked.contains(&"github/tool/list_pulls"),
        "{context}"
    );
    assert_eq!(r["step_up"]["is_error"], false, "{context}");

    // Beyond the task: the call itself is refused, as for mTLS (HTTP 200, a denial).
    assert_eq!(r["out_of_task"]["is_error"], true, "{context}");
    assert_eq!(r["out_of_task"]["reason"], "out_of_scope", "{context}");

    // The token endpoint: scopes beyond the task, another resource.
    assert_eq!(r["scope_beyond_task"]["status"], 400, "{context}");
    assert_eq!(
        r["scope_beyond_task"]["error"], "invalid_scope",
        "{context}"
    );
    assert_eq!(
        r["other_resource_at_token_endpoint"]["status"], 400,
        "{context}"
    );
    assert_eq!(
        r["other_resource_at_token_endpoint"]["error"], "invalid_target",
        "{context}"
    );

    // A token the other deployment minted for itself, and an expired one: 401 with
    // invalid_token and the way to a new one.
    assert_eq!(r["other_server_issued"], 200, "{context}");
    // (The description names the check that failed, so the right status cannot come
    // from the wrong reason.)
    for (case, why) in [("token_for_other_resource", "aud"), ("expired", "expired")] {
        let c = &r[case];
        assert_eq!(c["status"], 401, "{case}: {context}");
        assert!(
            header(c).starts_with("Bearer ")
                && header(c).contains(r#"error="invalid_token""#)
                && header(c).contains(&format!(r#"error_description="at_{why}"#))
                && header(c).contains("resource_metadata="),
            "{case}: {context}"
        );
    }
    // The SDK noticed its own token expiring and fetched another.
    assert_eq!(r["after_expiry"]["is_error"], false, "{context}");
    assert!(
        r["after_expiry_token_requests"].as_u64().unwrap() >= 1,
        "{context}"
    );

    // After EndTask: its unexpired token is refused (401 invalid_token), a leftover
    // unexpired assertion authenticates no one any more (RFC 7523 §3.2: invalid_client,
    // 401), and the SDK's open session
    // cannot go on: its token is refused and the agent signs no JWT-SVID for an ended
    // task, which the SDK raises.
    let c = &r["ended_task_token"];
    assert_eq!(c["status"], 401, "{context}");
    assert!(
        header(c).contains(r#"error="invalid_token", error_description="at_revoked""#),
        "{context}"
    );
    assert_eq!(r["ended_task_token_endpoint"]["status"], 401, "{context}");
    assert_eq!(
        r["ended_task_token_endpoint"]["error"], "invalid_client",
        "{context}"
    );
    let ended = &r["ended_task_sdk"];
    let raised = ended["exception"].to_string();
    assert!(
        ended["reason"] == "revoked" || raised.contains("no identity issued"),
        "the ended task's session went on: {context}"
    );
    assert!(
        r["ended_task_trace"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["status"] == 401 && header(e).contains(r#"error="invalid_token""#)),
        "{context}"
    );
}

/// Begins a task for [`SUBJECT`] on `github` as this (registered) process.
async fn begin_task(
    agent: &TestAgent,
    scopes: &[&str],
) -> (Workload, tessera_proto::tessera::v1::Task) {
    install_crypto_provider();
    let w = Workload::connect(&agent.endpoint()).await.unwrap();
    let task = w
        .begin_task(&TaskRequest {
            server: "github".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            subject: SUBJECT.into(),
            purpose: "review PR 42".into(),
            lifetime_secs: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("BeginTask: {e}\nagent log:\n{}", agent.log_text()));
    (w, task)
}

#[tokio::test]
async fn a_bearer_task_without_a_certificate_calls_and_is_refused_after_end_task() {
    let exe = std::env::current_exe().unwrap();
    let (agent, server) = agent_and_server(&exe, &["--accept", "bearer"]).await;
    agent
        .register_exe(CLIENT, "", &bin(RUNTIME_BIN))
        .await
        .unwrap();
    let (w, task) = begin_task(
        &agent,
        &["github/tool/get_pull_request", "github/tool/list_pulls"],
    )
    .await;
    let (conn, token, discovery) =
        connect_task_bearer(&w, &server.url, &task.spiffe_id, "github", None)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\nserver log:\n{}", server.log_text()));
    assert_eq!(discovery.resource, server.url);
    assert_eq!(discovery.issuer, origin(&server.url));
    // No scope asked: all of the task's.
    let mut granted: Vec<&str> = token.scope.split(' ').collect();
    granted.sort();
    assert_eq!(
        granted,
        ["github/tool/get_pull_request", "github/tool/list_pulls"]
    );

    let mut tools = conn.list_tools().await.unwrap();
    tools.sort();
    assert_eq!(tools, ["get_pull_request", "list_pulls"]);
    let out = conn
        .call(
            "get_pull_request",
            args(json!({"repo": "acme/api", "number": 42})),
        )
        .await;
    assert!(out.is_ok(), "{out:?}\n{}", server.log_text());
    let out = conn
        .call(
            "delete_branch",
            args(json!({"repo": "acme/api", "branch": "feature-x"})),
        )
        .await;
    assert_eq!(out.denial_reason(), Some("out_of_scope"), "{out:?}");

    let m = measure_refusal_after_end(
        &w,
        &conn,
        &task.id,
        "get_pull_request",
        args(json!({"repo": "acme/api", "number": 42})),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // The bearer layer refuses the ended task's token before MCP sees the call: a 401,
    // which rmcp's client reports as "Auth required".
    match &m.outcome {
        CallOutcome::TransportError { message } if message.contains("Auth required") => {}
        other => panic!(
            "after EndTask, expected a 401: {other:?}\n{}",
            server.log_text()
        ),
    }
    assert!(
        server.log_text().contains("at_revoked"),
        "{}",
        server.log_text()
    );

    // And the ended task gets no new token.
    let tls = server_only_tls(
        w.x509_bundle(TRUST_DOMAIN).await.unwrap(),
        TRUST_DOMAIN,
        "github",
    )
    .unwrap();
    let http = http_client(tls).unwrap();
    let refused = match w.task_jwt(&task.spiffe_id, &discovery.issuer).await {
        // The agent already refuses the JWT-SVID of an ended task; nothing to present.
        Err(_) => None,
        Ok(assertion) => Some(
            request_token(&http, &discovery, &assertion, None)
                .await
                .expect_err("a token for an ended task"),
        ),
    };
    if let Some(e) = refused {
        assert_eq!(e.code(), Some("invalid_grant"), "{e}");
    }
}

#[tokio::test]
async fn each_server_accepts_only_the_credentials_it_is_configured_for() {
    let exe = std::env::current_exe().unwrap();
    let (agent, mtls_only) = agent_and_server(&exe, &[]).await;
    let bearer_only = McpServer::start(&agent, "bearer", Trust::Workload, &["--accept", "bearer"])
        .await
        .unwrap();
    let (w, task) = begin_task(&agent, &["github/tool/get_pull_request"]).await;
    let cred = w
        .task_credential(&task.id, Duration::from_secs(5))
        .await
        .unwrap();

    // The default (mTLS) server: no certificate, no connection; and no token endpoint.
    let no_cert =
        http_client(server_only_tls(cred.bundle.clone(), TRUST_DOMAIN, "github").unwrap()).unwrap();
    assert!(
        no_cert.get(&mtls_only.url).send().await.is_err(),
        "an mTLS server served a client without a certificate"
    );
    let with_cert = http_client(tls_config(&cred, "github").unwrap()).unwrap();
    let resp = with_cert
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            origin(&mtls_only.url)
        ))
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(
        !body.contains("token_endpoint"),
        "an mTLS-only server published authorization-server metadata: {body}"
    );

    // The bearer-only server: a client certificate alone is not a credential.
    let e = discover(&with_cert, &bearer_only.url).await;
    assert!(e.is_ok(), "{e:?}\n{}", bearer_only.log_text());
    let resp = with_cert
        .post(&bearer_only.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let www = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(www.contains("resource_metadata="), "{www}");
}

#[tokio::test]
async fn cert_bound_tokens_are_refused_without_their_certificate() {
    let exe = std::env::current_exe().unwrap();
    let (agent, server) =
        agent_and_server(&exe, &["--accept", "both", "--require-cert-bound-tokens"]).await;
    let scopes = ["github/tool/get_pull_request"];
    let (w, task) = begin_task(&agent, &scopes).await;
    let (_, other_task) = begin_task(&agent, &scopes).await;
    let cred = w
        .task_credential(&task.id, Duration::from_secs(5))
        .await
        .unwrap();
    let other = w
        .task_credential(&other_task.id, Duration::from_secs(5))
        .await
        .unwrap();
    let with_cert = http_client(tls_config(&cred, "github").unwrap()).unwrap();
    let with_other_cert = http_client(tls_config(&other, "github").unwrap()).unwrap();
    // A certificate alone is a credential on this server (no 401 to discover from), so
    // the token endpoint is taken from the metadata, as a configured client would.
    let metadata: Value = with_cert
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            origin(&server.url)
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["tls_client_certificate_bound_access_tokens"], true);
    let discovery = Discovery {
        resource_metadata: String::new(),
        resource: server.url.clone(),
        issuer: metadata["issuer"].as_str().unwrap().to_owned(),
        token_endpoint: metadata["token_endpoint"].as_str().unwrap().to_owned(),
    };
    let assertion = w
        .task_jwt(&task.spiffe_id, &discovery.issuer)
        .await
        .unwrap();
    // Issued over mTLS: bound to this task's certificate.
    let bound = request_token(&with_cert, &discovery, &assertion, None)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));

    let initialize = |http: &reqwest::Client, token: &str| {
        http.post(&server.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .bearer_auth(token)
            .body(
                json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
                    "protocolVersion":"2025-06-18","capabilities":{},
                    "clientInfo":{"name":"e2e","version":"0"}}})
                .to_string(),
            )
            .send()
    };
    // With its certificate: served.
    let resp = initialize(&with_cert, &bound.token).await.unwrap();
    assert_eq!(resp.status(), 200, "{}", server.log_text());
    // The same token over a connection with another (valid) certificate: 401.
    let resp = initialize(&with_other_cert, &bound.token).await.unwrap();
    assert_eq!(resp.status(), 401, "{}", server.log_text());
    let www = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(www.contains(r#"error="invalid_token""#), "{www}");
    // And without a certificate there is no connection to present it on: a server that
    // takes only bound tokens keeps client certificates required.
    let no_cert =
        http_client(server_only_tls(cred.bundle.clone(), TRUST_DOMAIN, "github").unwrap()).unwrap();
    assert!(
        initialize(&no_cert, &bound.token).await.is_err(),
        "a connection without a certificate was accepted"
    );
}

#[tokio::test]
async fn typescript_mcp_sdk_gets_in_with_a_task_jwt_svid_as_its_static_assertion() {
    let Some(node) = tessera_e2e::clients::node() else {
        return;
    };
    let exe = std::env::current_exe().unwrap();
    let (agent, server) = agent_and_server(&exe, &["--accept", "bearer"]).await;
    let (w, task) = begin_task(&agent, &["github/tool/get_pull_request"]).await;
    // What the README's TypeScript snippet starts from: the task's JWT-SVID for the
    // issuer (FetchJWTSVID through any Workload API client) and the trust bundle.
    let issuer = origin(&server.url);
    let assertion = w.task_jwt(&task.spiffe_id, issuer).await.unwrap();
    let bundle: String = w
        .x509_bundle(TRUST_DOMAIN)
        .await
        .unwrap()
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (bundle_file, assertion_file) = (dir.path().join("bundle.pem"), dir.path().join("jwt"));
    std::fs::write(&bundle_file, bundle).unwrap();
    std::fs::write(&assertion_file, assertion).unwrap();
    let out = std::process::Command::new(node)
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/node/mcp_oauth.cjs"))
        .args([
            server.url.as_str(),
            &format!("spiffe://{TRUST_DOMAIN}/mcp/github"),
        ])
        .arg(&bundle_file)
        .arg(&task.spiffe_id)
        .arg(&assertion_file)
        .env(
            "NODE_PATH",
            tessera_e2e::clients::typescript_client_dir().join("node_modules"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let context = format!("{r:#}\nserver log:\n{}", server.log_text());
    let paths: Vec<&str> = r["trace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    // Discovery as the specification walks it, then the token, then the call.
    for step in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-authorization-server",
        "/oauth/token",
    ] {
        assert!(paths.contains(&step), "no {step}: {context}");
    }
    assert_eq!(r["trace"][0]["status"], 401, "{context}");
    assert_eq!(
        r["granted_scope"], "github/tool/get_pull_request",
        "{context}"
    );
    assert_eq!(r["tools"], json!(["get_pull_request"]), "{context}");
    assert_eq!(r["allowed"]["is_error"], false, "{context}");
    assert!(
        r["allowed"]["text"].as_str().unwrap().contains("acme/api"),
        "{context}"
    );
}
