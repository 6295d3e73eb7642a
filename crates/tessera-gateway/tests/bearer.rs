//! Bearer access tokens at the gateway (`accept = "bearer"` / `"both"`): a task without
//! a client certificate trades its JWT-SVID at the gateway's own token endpoint and calls
//! the Python MCP SDK upstream through it with `Authorization: Bearer`, exactly as the
//! agent runtime's `--auth bearer` does against a linked server. The upstream logs every
//! request it receives, so the tests also check the token never reached it.

#[path = "support/gateway.rs"]
mod gateway;
#[path = "../../../tests/tests/support/mcp.rs"]
mod support;

use std::time::{Duration, Instant};

use gateway::{CONSENTED, Gw, post2026};
use serde_json::json;
use support::args;
use tessera_e2e::TRUST_DOMAIN;
use tessera_example_agent_runtime::bearer::{connect_task_bearer, server_only_tls};
use tessera_example_agent_runtime::{CallOutcome, http_client};

fn pr() -> Option<serde_json::Map<String, serde_json::Value>> {
    args(json!({"repo": "acme/api", "number": 42}))
}

#[tokio::test]
async fn a_task_without_a_certificate_calls_with_a_token_the_upstream_never_sees_and_is_refused_after_end_task()
 {
    let gw = Gw::try_start("accept = \"bearer\"", true).await.unwrap();
    let (w, task, _cred) = gw.begin(CONSENTED).await;
    // Discovery (the 401's metadata), the task's JWT-SVID, the token, an MCP session:
    // no client certificate anywhere.
    let (conn, token, discovery) =
        connect_task_bearer(&w, &gw.url, &task.spiffe_id, "github", None)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\ngateway log:\n{}", gw.gateway.log_text()));
    assert_eq!(discovery.resource, gw.url);
    assert!(discovery.token_endpoint.ends_with("/oauth/token"));

    let out = conn.call("get_pull_request", pr()).await;
    assert_eq!(
        out,
        CallOutcome::Ok {
            text: "PR #42 in acme/api: Fix the flaky test (open)".into()
        },
        "gateway log:\n{}",
        gw.gateway.log_text()
    );
    // Out of the task's scopes: refused by the gateway, never forwarded.
    let out = conn
        .call("search_code", args(json!({"query": "tessera-bearer-oos"})))
        .await;
    assert_eq!(out.denial_reason(), Some("out_of_scope"), "{out:?}");
    assert!(!gw.upstream_saw("tessera-bearer-oos"));

    // The token's peer reached the proxy as a certificate's would: the upstream got the
    // task's identity headers; and it never got the token, in any header or body.
    let requests = gw.upstream_requests();
    let call = requests
        .iter()
        .find(|r| {
            r["body"]
                .as_str()
                .is_some_and(|b| b.contains("get_pull_request"))
        })
        .expect("the allowed call reached the upstream");
    assert_eq!(call["headers"]["tessera-task"], json!(task.spiffe_id));
    assert!(!requests.is_empty());
    for r in &requests {
        assert!(r["headers"].get("authorization").is_none(), "{r}");
        assert!(
            !r.to_string().contains(&token.token),
            "the token reached the upstream"
        );
    }

    // EndTask: the still-unexpired token is refused before the proxy, as 401 invalid_token.
    w.end_task(&task.id).await.unwrap();
    let tls = server_only_tls(
        w.x509_bundle(TRUST_DOMAIN).await.unwrap(),
        TRUST_DOMAIN,
        "github",
    )
    .unwrap();
    let http = http_client(tls).unwrap();
    let bearer = format!("Bearer {}", token.token);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, challenge) = loop {
        let resp = http
            .post(&gw.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", gateway::V2026)
            .header("mcp-method", "tools/call")
            .header("mcp-name", "list_pulls")
            .header("authorization", &bearer)
            .body(
                json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
                    "name": "list_pulls", "arguments": {"repo": "acme/after-end"},
                    "_meta": gateway::meta2026()}})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if status == 401 || Instant::now() > deadline {
            break (status, challenge);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 401, "{}", gw.gateway.log_text());
    assert!(challenge.contains("invalid_token"), "{challenge}");
    assert!(!gw.upstream_saw("acme/after-end"));
    // The open session is refused too (rmcp reports the 401 as "Auth required").
    match conn.call("get_pull_request", pr()).await {
        CallOutcome::TransportError { message } if message.contains("Auth required") => {}
        other => panic!("after EndTask, expected a 401: {other:?}"),
    }
}

#[tokio::test]
async fn with_accept_both_a_certificate_still_works_and_no_credential_is_challenged() {
    let gw = Gw::try_start("accept = \"both\"", true).await.unwrap();
    let (_w, task, cred) = gw.begin(CONSENTED).await;
    // mTLS as before, now with the certificate optional at the handshake.
    let conn = gw.connect(&cred).await;
    let out = conn.call("get_pull_request", pr()).await;
    assert!(out.is_ok(), "{out:?}\n{}", gw.gateway.log_text());
    conn.close().await;
    assert!(
        gw.upstream_requests()
            .iter()
            .any(|r| r["headers"]["tessera-task"] == json!(task.spiffe_id))
    );

    // Neither a certificate nor a token: 401 naming the Protected Resource Metadata, and
    // nothing forwarded.
    let w = tessera_example_agent_runtime::Workload::connect(&gw.agent.endpoint())
        .await
        .unwrap();
    let tls = server_only_tls(
        w.x509_bundle(TRUST_DOMAIN).await.unwrap(),
        TRUST_DOMAIN,
        "github",
    )
    .unwrap();
    let before = gw.upstream_requests().len();
    let (status, _, _) = post2026(
        &http_client(tls).unwrap(),
        &gw.url,
        "tools/call",
        json!({"name": "list_pulls", "arguments": {"repo": "acme/anonymous"}}),
        &[("mcp-method", "tools/call"), ("mcp-name", "list_pulls")],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(gw.upstream_requests().len(), before);
}
