//! [`BearerAuthLayer`] driven as a tower service with real `http::Request`s, in front of
//! rmcp's `StreamableHttpService` serving a handler wrapped in [`Enforced`], with the
//! stream guard between them as a server composes it. Tokens are real: minted by
//! [`AccessTokenMinter`] with the server's own SVID key, verified against the bundle.

use std::sync::Mutex;
use std::time::Duration;

use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{Value, json};
use tessera_proto::tessera::v1::{RevocationSet, RevokedTask};
use tower::ServiceExt;

use super::*;
use crate::audit::AuditLog;
use crate::authz::policy::PolicyStore;
use crate::mcp::{Enforced, StreamGuardLayer};
use crate::oauth::testkit::{ISSUER, RESOURCE, Server, b64, unix_now};
use crate::oauth::{AccessTokenGrant, AccessTokenMinter, GrantSubject};
use crate::revocation::RevocationWatcher;
use crate::testutil::{SERVER, TASK_ULID, TD, claims, task_id_str, task_peer};

const PRM_URL: &str = "https://127.0.0.1:8443/.well-known/oauth-protected-resource/mcp";

const POLICIES: &str = r#"
@id("calls") permit(principal, action == Action::"tools/call", resource);
@id("protect-main")
forbid(principal, action == Action::"tools/call", resource == Tool::"delete_branch")
when { context.arguments has branch && context.arguments.branch == "main" };
"#;

/// What the task was granted.
const TASK_SCOPES: &[&str] = &[
    "github/tool/get_pull_request",
    "github/tool/delete_branch",
    "github/tool/push",
    "github/resource/file:///docs/*",
];

/// What its token grants: `push` is the task's but not the token's.
const TOKEN_SCOPES: &[&str] = &["github/tool/get_pull_request", "github/tool/delete_branch"];

/// A handler with four tools (`merge` beyond the task), recording every call that
/// reaches it and whether it saw an `Authorization` header.
#[derive(Clone, Default)]
struct Tools {
    seen: Arc<Mutex<Vec<String>>>,
}

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let parts = ctx.extensions.get::<http::request::Parts>();
        let authorization = parts.is_some_and(|p| p.headers.contains_key(AUTHORIZATION));
        self.seen
            .lock()
            .unwrap()
            .push(format!("{} authorization={authorization}", request.name));
        Ok(CallToolResponse::Complete(CallToolResult::success(vec![
            ContentBlock::text(format!("ran {}", request.name)),
        ])))
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let tools = ["get_pull_request", "delete_branch", "push", "merge"]
            .iter()
            .map(|name| {
                serde_json::from_value(json!({"name": name, "inputSchema": {"type": "object"}}))
                    .unwrap()
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }
}

type Stack = tower::util::BoxCloneService<
    Request<Full<Bytes>>,
    Response<
        BearerResponseBody<
            crate::mcp::GuardedBody<
                http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>,
            >,
        >,
    >,
    std::convert::Infallible,
>;

/// One server: trust, feed, audit file, the composed stack, and a minter.
struct Fixture {
    server: Server,
    tools: Tools,
    watcher: RevocationWatcher,
    audit: AuditLog,
    audit_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    stack: Stack,
}

fn fixture(accepted: AcceptedAuth) -> Fixture {
    let watcher = RevocationWatcher::detached(Duration::from_secs(3600));
    watcher.apply(&RevocationSet::default());
    fixture_with(accepted, watcher)
}

fn fixture_with(accepted: AcceptedAuth, watcher: RevocationWatcher) -> Fixture {
    let server = Server::new();
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    let audit = AuditLog::with_json_file(&audit_path).unwrap();
    let schema = crate::authz::schema_with_arguments("{ branch?: String }");
    let store = Arc::new(PolicyStore::from_strs(POLICIES, &schema).unwrap());
    let authz = Arc::new(
        Authorizer::new(SERVER.parse().unwrap(), store, watcher.clone()).with_audit(audit.clone()),
    );
    let tools = Tools::default();
    let rmcp = StreamableHttpService::new(
        {
            let (authz, tools) = (authz.clone(), tools.clone());
            move || Ok(Enforced::new(tools.clone(), authz.clone()))
        },
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            .with_legacy_session_mode(false)
            .with_json_response(true),
    );
    let verifier = AccessTokenVerifier::new(server.trust.clone(), ISSUER, RESOURCE);
    let metadata = ProtectedResourceMetadata::new(RESOURCE, ISSUER).unwrap();
    let layer = BearerAuthLayer::new(verifier, authz.clone(), metadata, accepted).unwrap();
    let stack = tower::ServiceBuilder::new()
        .layer(layer)
        .layer(StreamGuardLayer::new(authz))
        .service(rmcp);
    Fixture {
        server,
        tools,
        watcher,
        audit,
        audit_path,
        _dir: dir,
        stack: tower::util::BoxCloneService::new(stack),
    }
}

impl Fixture {
    /// A token for the sample task with `scopes`, bound to `cnf` if given.
    fn token(&self, scopes: &[&str], cnf: Option<CertThumbprint>) -> String {
        self.token_for(RESOURCE, scopes, cnf)
    }

    fn token_for(&self, resource: &str, scopes: &[&str], cnf: Option<CertThumbprint>) -> String {
        let grant = AccessTokenGrant {
            subject: GrantSubject::Task(claims(TD, TASK_SCOPES, unix_now() + 3600)),
            scopes: scopes.iter().map(|s| s.parse().unwrap()).collect(),
            not_after_unix: None,
            ttl: Duration::from_secs(300),
            cnf,
        };
        AccessTokenMinter::new(self.server.trust.clone(), ISSUER, resource)
            .mint(&grant, SystemTime::now())
            .unwrap()
            .token
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, Value) {
        let resp = self.stack.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        // One JSON message, or the `data:` line of an SSE stream.
        let value = serde_json::from_str(&text)
            .ok()
            .or_else(|| {
                text.lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .find_map(|d| serde_json::from_str(d.trim()).ok())
            })
            .unwrap_or(Value::Null);
        (parts.status, parts.headers, value)
    }

    fn seen(&self) -> Vec<String> {
        std::mem::take(&mut *self.tools.seen.lock().unwrap())
    }

    /// The audit file's records so far.
    fn audit(&self) -> Vec<Value> {
        self.audit.flush();
        std::fs::read_to_string(&self.audit_path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A JSON-RPC POST to `/mcp`.
fn post() -> http::request::Builder {
    Request::post("/mcp")
        .header(HOST, "127.0.0.1:8443")
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "application/json, text/event-stream")
}

fn rpc(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
}

fn call(tool: &str, arguments: Value) -> Value {
    rpc("tools/call", json!({"name": tool, "arguments": arguments}))
}

/// `body` POSTed with the `Authorization` value `authorization`, if any.
fn request(body: Value, authorization: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = post();
    if let Some(a) = authorization {
        b = b.header(AUTHORIZATION, a);
    }
    b.body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
        .unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn challenge(headers: &http::HeaderMap) -> &str {
    headers
        .get(WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

fn invalid_token(description: &str) -> String {
    format!(
        r#"Bearer error="invalid_token", error_description="{description}", resource_metadata="{PRM_URL}""#
    )
}

/// The authorization denial in a `tools/call` answer, if it is one.
fn denial(answer: &Value) -> Option<&str> {
    answer["result"]["structuredContent"]["authorization"]["reason"]
        .as_str()
        .or_else(|| answer["error"]["data"]["authorization"]["reason"].as_str())
}

#[tokio::test]
async fn no_credential_gets_a_challenge_naming_the_metadata() {
    let f = fixture(AcceptedAuth::BOTH);
    let (status, headers, _) = f
        .send(request(call("get_pull_request", json!({})), None))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&headers),
        format!(r#"Bearer resource_metadata="{PRM_URL}""#)
    );
    assert!(f.seen().is_empty());

    // The metadata it names, at both well-known paths, without credentials.
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
        let (status, headers, doc) = f.send(req).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        assert_eq!(doc["resource"], RESOURCE, "{path}");
        assert_eq!(doc["authorization_servers"], json!([ISSUER]));
    }
    let req = Request::post("/.well-known/oauth-protected-resource")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(f.send(req).await.0, StatusCode::METHOD_NOT_ALLOWED);
}

/// A good token is served exactly as the task's certificate would be: allowed calls
/// run (without the token), Cedar and the scopes decide the rest, lists are filtered to
/// the token's scopes, and each decision is audited as `bearer`.
#[tokio::test]
async fn a_bearer_caller_goes_through_every_check_an_mtls_caller_does() {
    let f = fixture(AcceptedAuth::BOTH);
    let token = f.token(TOKEN_SCOPES, None);
    let auth = bearer(&token);

    let (status, _, answer) = f
        .send(request(
            call("get_pull_request", json!({"number": 1})),
            Some(&auth),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["result"]["content"][0]["text"],
        "ran get_pull_request"
    );
    assert_eq!(
        f.seen(),
        ["get_pull_request authorization=false"],
        "the handler never sees the token"
    );

    // Cedar forbids it: the same denial as for mTLS.
    let (status, _, answer) = f
        .send(request(
            call("delete_branch", json!({"branch": "main"})),
            Some(&auth),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(denial(&answer), Some("policy_forbids"), "{answer}");
    // Beyond the task: passed on and denied as for mTLS.
    let (status, _, answer) = f.send(request(call("merge", json!({})), Some(&auth))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(denial(&answer), Some("out_of_scope"), "{answer}");
    assert!(f.seen().is_empty(), "no refused call ran");

    let (status, _, answer) = f
        .send(request(rpc("tools/list", json!({})), Some(&auth)))
        .await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = answer["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["get_pull_request", "delete_branch"],
        "the token's scopes, not the task's"
    );

    let audit = f.audit();
    let calls: Vec<(&str, &str, &str)> = audit
        .iter()
        .filter(|r| r["method"] == "tools/call")
        .map(|r| {
            (
                r["target"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
                r["auth"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("get_pull_request", "allowed", "bearer"),
            ("delete_branch", "policy_forbids", "bearer"),
            ("merge", "out_of_scope", "bearer"),
        ]
    );
    assert!(
        audit
            .iter()
            .all(|r| r["task"] == TASK_ULID && r["peer"] == task_id_str(TD))
    );
}

/// Within the task but not the token: 403 naming the scope to step up to, before the
/// handler; the body was read once and the same bytes serve a good call after it.
#[tokio::test]
async fn a_scope_of_the_task_but_not_the_token_is_a_step_up_challenge() {
    let f = fixture(AcceptedAuth::BOTH);
    let auth = bearer(&f.token(TOKEN_SCOPES, None));
    let (status, headers, _) = f.send(request(call("push", json!({})), Some(&auth))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        challenge(&headers),
        format!(
            r#"Bearer error="insufficient_scope", scope="github/tool/push", resource_metadata="{PRM_URL}", error_description="the access token does not grant github/tool/push""#
        )
    );
    assert!(f.seen().is_empty());
    let audit = f.audit();
    let last = audit.last().unwrap();
    assert_eq!(
        (&last["target"], &last["reason"], &last["decision"]),
        (&json!("push"), &json!("insufficient_scope"), &json!("deny"))
    );

    // Stepped up: a token with the scope gets in.
    let auth = bearer(&f.token(&["github/tool/push"], None));
    let (status, _, answer) = f.send(request(call("push", json!({})), Some(&auth))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(f.seen(), ["push authorization=false"]);

    // A resource: the exact URI is the scope to ask for; one that cannot be written
    // as an OAuth scope token (a quote) steps up to the task's scope that permits it.
    let auth = bearer(&f.token(&["github/resource/file:///docs/a"], None));
    for (uri, scope) in [
        ("file:///docs/b", "github/resource/file:///docs/b"),
        ("file:///docs/x\"y", "github/resource/file:///docs/*"),
    ] {
        let read = rpc("resources/read", json!({"uri": uri}));
        let (status, headers, _) = f.send(request(read, Some(&auth))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
        assert!(
            challenge(&headers).starts_with(&format!(
                r#"Bearer error="insufficient_scope", scope="{scope}", resource_metadata="{PRM_URL}""#
            )),
            "{uri}: {}",
            challenge(&headers)
        );
    }

    // The same operation over mTLS is decided by `Enforced` alone (no step-up).
    let mut req = request(call("push", json!({})), None);
    req.extensions_mut()
        .insert(Arc::new(task_peer(&["github/tool/get_pull_request"])));
    let (status, _, answer) = f.send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(denial(&answer), Some("out_of_scope"));
}

#[tokio::test]
async fn tokens_that_do_not_verify_are_invalid_token() {
    let f = fixture(AcceptedAuth::BOTH);
    let other = f.token_for("https://127.0.0.1:8443/other", TOKEN_SCOPES, None);
    // Signed by the server's own key, well formed, expired a minute ago.
    let now = unix_now();
    let expired = f.server.signer.sign(
        &f.server.signer.header(),
        &json!({
            "iss": ISSUER, "sub": task_id_str(TD), "aud": RESOURCE,
            "exp": now - 60, "iat": now - 360, "jti": "AAAAAAAAAAAAAAAAAAAAAA",
            "client_id": format!("spiffe://{TD}/client/code-reviewer"),
            "scope": "github/tool/get_pull_request",
            "tessera_task": base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                claims(TD, TASK_SCOPES, now + 3600).to_der()
            ),
        }),
    );
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "at+jwt"})),
        b64(&json!({"aud": RESOURCE}))
    );
    for (token, reason) in [
        ("abc.def.ghi".to_owned(), "at_malformed"),
        (other, "at_audience"),
        (expired, "at_expired"),
        (none, "at_algorithm"),
    ] {
        let (status, headers, _) = f
            .send(request(
                call("get_pull_request", json!({})),
                Some(&bearer(&token)),
            ))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{reason}");
        assert_eq!(challenge(&headers), invalid_token(reason));
    }
    assert!(f.seen().is_empty());
}

/// A token of an ended task stops working on the next request, like the task's
/// certificate; so does every task token while the feed is stale (503, not 401).
#[tokio::test]
async fn a_token_of_an_ended_task_is_refused_on_its_next_request() {
    let f = fixture(AcceptedAuth::BOTH);
    let auth = bearer(&f.token(TOKEN_SCOPES, None));
    let req = || request(call("get_pull_request", json!({})), Some(&auth));
    assert_eq!(f.send(req()).await.0, StatusCode::OK);
    f.watcher.apply(&RevocationSet {
        version: 2,
        revoked: vec![RevokedTask {
            task_id: TASK_ULID.into(),
            reason: "ended".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let (status, headers, _) = f.send(req()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&headers), invalid_token("revoked"));
    assert_eq!(
        f.seen(),
        ["get_pull_request authorization=false"],
        "only the first ran"
    );
    let last = f.audit().pop().unwrap();
    assert_eq!(
        (&last["reason"], &last["auth"], &last["task"]),
        (&json!("revoked"), &json!("bearer"), &json!(TASK_ULID))
    );
    // The task's certificate on an open connection: refused too, as JSON-RPC.
    let mut mtls = request(call("get_pull_request", json!({})), None);
    mtls.extensions_mut()
        .insert(Arc::new(task_peer(TASK_SCOPES)));
    let (status, _, answer) = f.send(mtls).await;
    assert_eq!((status, denial(&answer)), (StatusCode::OK, Some("revoked")));

    // A feed that never delivered is stale: the server's trouble, retry later.
    let never = fixture_with(
        AcceptedAuth::BOTH,
        RevocationWatcher::detached(Duration::from_secs(30)),
    );
    let auth = bearer(&never.token(TOKEN_SCOPES, None));
    let (status, headers, _) = never
        .send(request(call("get_pull_request", json!({})), Some(&auth)))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[RETRY_AFTER], "5");
    assert!(never.seen().is_empty());
}

/// The connection's certificate as the server inserts it: its peer and thumbprint.
fn with_certificate(mut req: Request<Full<Bytes>>, leaf: &[u8]) -> Request<Full<Bytes>> {
    req.extensions_mut()
        .insert(Arc::new(task_peer(TASK_SCOPES)));
    req.extensions_mut().insert(CertThumbprint::of_der(leaf));
    req
}

#[tokio::test]
async fn a_bound_token_works_only_with_its_certificate() {
    let f = fixture(AcceptedAuth::BOTH);
    let leaf = b"the client's leaf DER";
    let bound = bearer(&f.token(TOKEN_SCOPES, Some(CertThumbprint::of_der(leaf))));
    let req = || request(call("get_pull_request", json!({})), Some(&bound));

    let (status, _, answer) = f.send(with_certificate(req(), leaf)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(f.audit().pop().unwrap()["auth"], "bearer+cnf");

    let refused =
        invalid_token("the token is bound to a certificate this connection did not present");
    let (status, headers, _) = f.send(req()).await;
    assert_eq!(
        (status, challenge(&headers)),
        (StatusCode::UNAUTHORIZED, refused.as_str()),
        "no certificate"
    );
    let (status, headers, _) = f.send(with_certificate(req(), b"another leaf")).await;
    assert_eq!(
        (status, challenge(&headers)),
        (StatusCode::UNAUTHORIZED, refused.as_str()),
        "another certificate"
    );
    assert_eq!(f.seen(), ["get_pull_request authorization=false"]);
}

/// A bound token stands with its certificate: once that certificate is revoked (by
/// serial), the token does not carry the connection past it.
#[tokio::test]
async fn a_bound_token_falls_with_its_revoked_certificate() {
    // The certificate `with_certificate` inserts has serial 42; its task is not revoked.
    let f = fixture_with(
        AcceptedAuth::BOTH,
        RevocationWatcher::from_static([], ["42".to_owned()]),
    );
    let leaf = b"the client's leaf DER";
    let bound = bearer(&f.token(TOKEN_SCOPES, Some(CertThumbprint::of_der(leaf))));
    let req = with_certificate(
        request(call("get_pull_request", json!({})), Some(&bound)),
        leaf,
    );
    let (status, headers, _) = f.send(req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&headers),
        invalid_token("the certificate the token is bound to is revoked")
    );
    // The same token without a certificate is no way around it either.
    let (status, _, _) = f
        .send(request(call("get_pull_request", json!({})), Some(&bound)))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(f.seen().is_empty());
}

/// A certificate and a token on one request: the token must be bound to that
/// certificate, else neither is taken.
#[tokio::test]
async fn a_certificate_and_an_unbound_token_are_refused_together() {
    let f = fixture(AcceptedAuth::BOTH);
    let unbound = bearer(&f.token(TOKEN_SCOPES, None));
    let req = with_certificate(
        request(call("get_pull_request", json!({})), Some(&unbound)),
        b"leaf",
    );
    let (status, headers, _) = f.send(req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&headers),
        invalid_token("a client certificate and a token not bound to it")
    );
    // The certificate alone is fine on a server accepting mTLS, and a credential of
    // another scheme beside it is not passed on.
    let req = with_certificate(
        request(
            call("get_pull_request", json!({})),
            Some("Basic dXNlcjpwYXNz"),
        ),
        b"leaf",
    );
    let (status, _, answer) = f.send(req).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(f.audit().pop().unwrap()["auth"], "mtls");
    assert_eq!(f.seen(), ["get_pull_request authorization=false"]);
}

#[tokio::test]
async fn accepted_methods_are_configuration() {
    // Bearer only: a certificate alone is not enough.
    let f = fixture(AcceptedAuth::BEARER);
    let req = with_certificate(request(call("get_pull_request", json!({})), None), b"leaf");
    let (status, headers, _) = f.send(req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&headers),
        format!(r#"Bearer resource_metadata="{PRM_URL}""#)
    );
    // Bound tokens only: an unbound one is refused even without a certificate.
    let f = fixture(AcceptedAuth::BEARER.require_cert_bound_tokens());
    let unbound = bearer(&f.token(TOKEN_SCOPES, None));
    let (status, headers, _) = f
        .send(request(call("get_pull_request", json!({})), Some(&unbound)))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&headers),
        invalid_token("only certificate-bound tokens are accepted")
    );
    let req = Request::get("/.well-known/oauth-protected-resource/mcp")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (_, _, doc) = f.send(req).await;
    assert_eq!(doc["tls_client_certificate_bound_access_tokens"], true);
    // mTLS only: a token is not a credential here.
    let f = fixture(AcceptedAuth::MTLS);
    let token = bearer(&f.token(TOKEN_SCOPES, None));
    let (status, headers, _) = f
        .send(request(call("get_pull_request", json!({})), Some(&token)))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&headers),
        invalid_token("bearer tokens are not accepted here")
    );
    assert!(f.seen().is_empty());

    let server = Server::new();
    let authz = Arc::new(Authorizer::new(
        SERVER.parse().unwrap(),
        Arc::new(PolicyStore::from_strs("", crate::authz::BASE_SCHEMA).unwrap()),
        RevocationWatcher::from_static([], []),
    ));
    let verifier = || AccessTokenVerifier::new(server.trust.clone(), ISSUER, RESOURCE);
    let metadata = |r: &str| ProtectedResourceMetadata::new(r, ISSUER).unwrap();
    let nothing = AcceptedAuth {
        mtls: false,
        bearer: false,
        require_cert_bound_tokens: false,
    };
    assert_eq!(
        BearerAuthLayer::new(verifier(), authz.clone(), metadata(RESOURCE), nothing).unwrap_err(),
        BearerConfigError::NothingAccepted
    );
    assert_eq!(
        BearerAuthLayer::new(
            verifier(),
            authz.clone(),
            metadata(RESOURCE),
            AcceptedAuth::MTLS.require_cert_bound_tokens()
        )
        .unwrap_err(),
        BearerConfigError::BoundWithoutBearer
    );
    assert!(matches!(
        BearerAuthLayer::new(
            verifier(),
            authz,
            metadata("https://127.0.0.1:8443/other"),
            AcceptedAuth::BOTH
        ),
        Err(BearerConfigError::ResourceMismatch { .. })
    ));
}

/// The `Authorization` header is hostile input: exactly one, `Bearer` in any case,
/// spaces only, a `b64token`, bounded; anything else refused before verification.
#[tokio::test]
async fn header_tricks_are_refused() {
    let f = fixture(AcceptedAuth::BEARER);
    let token = f.token(TOKEN_SCOPES, None);
    for accepted in [
        format!("Bearer {token}"),
        format!("bearer {token}"),
        format!("BEARER   {token}"),
    ] {
        let (status, _, answer) = f
            .send(request(
                call("get_pull_request", json!({})),
                Some(&accepted),
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{accepted:.12}: {answer}");
    }
    assert_eq!(f.seen().len(), 3);

    let malformed = |what: &str| {
        format!(
            r#"Bearer error="invalid_request", error_description="{what}", resource_metadata="{PRM_URL}""#
        )
    };
    let header = malformed("malformed bearer token");
    let cases: Vec<(Request<Full<Bytes>>, StatusCode, String)> = vec![
        (
            {
                let mut r = request(call("get_pull_request", json!({})), Some(&bearer(&token)));
                r.headers_mut().append(
                    AUTHORIZATION,
                    HeaderValue::from_str(&bearer(&token)).unwrap(),
                );
                r
            },
            StatusCode::BAD_REQUEST,
            malformed("more than one Authorization header"),
        ),
        (
            request(
                call("get_pull_request", json!({})),
                Some(&format!("Bearer\t{token}")),
            ),
            StatusCode::BAD_REQUEST,
            malformed("malformed Authorization header"),
        ),
        (
            request(call("get_pull_request", json!({})), Some("Bearer")),
            StatusCode::BAD_REQUEST,
            header.clone(),
        ),
        (
            request(
                call("get_pull_request", json!({})),
                Some(&format!("Bearer {token}!")),
            ),
            StatusCode::BAD_REQUEST,
            header.clone(),
        ),
        (
            request(
                call("get_pull_request", json!({})),
                Some(&format!("Bearer {token} x")),
            ),
            StatusCode::BAD_REQUEST,
            header.clone(),
        ),
        (
            {
                let mut r = request(call("get_pull_request", json!({})), None);
                let mut bytes = format!("Bearer {token}").into_bytes();
                bytes.push(0xE9);
                r.headers_mut()
                    .insert(AUTHORIZATION, HeaderValue::from_bytes(&bytes).unwrap());
                r
            },
            StatusCode::BAD_REQUEST,
            malformed("the Authorization header is not ASCII"),
        ),
        (
            request(
                call("get_pull_request", json!({})),
                Some(&format!("Bearer {}", "a".repeat(20_000))),
            ),
            StatusCode::UNAUTHORIZED,
            invalid_token("the token is too large"),
        ),
        (
            {
                let mut r = request(call("get_pull_request", json!({})), None);
                *r.uri_mut() = format!("/mcp?access_token={token}").parse().unwrap();
                r
            },
            StatusCode::BAD_REQUEST,
            malformed("access tokens go in the Authorization header only"),
        ),
        (
            request(
                call("get_pull_request", json!({})),
                Some(&format!("Basic {token}")),
            ),
            StatusCode::UNAUTHORIZED,
            format!(r#"Bearer resource_metadata="{PRM_URL}""#),
        ),
        (
            request(
                call("get_pull_request", json!({})),
                Some(&format!("DPoP {token}")),
            ),
            StatusCode::UNAUTHORIZED,
            format!(r#"Bearer resource_metadata="{PRM_URL}""#),
        ),
    ];
    for (i, (req, status, header)) in cases.into_iter().enumerate() {
        let (got, headers, _) = f.send(req).await;
        assert_eq!(
            (got, challenge(&headers)),
            (status, header.as_str()),
            "case {i}"
        );
    }
    assert!(f.seen().is_empty(), "no trick reached the handler");
}

/// A body larger than the bound is refused before the handler; a batch or a
/// notification is not a step-up's business and goes on.
#[tokio::test]
async fn the_body_is_read_once_and_bounded() {
    let f = fixture(AcceptedAuth::BEARER);
    let auth = bearer(&f.token(TOKEN_SCOPES, None));
    let big = call(
        "get_pull_request",
        json!({"pad": "x".repeat(DEFAULT_MAX_BODY_BYTES)}),
    );
    let (status, _, _) = f.send(request(big, Some(&auth))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        DEFAULT_MAX_BODY_BYTES,
        StreamableHttpServerConfig::default().max_request_body_bytes,
        "the layer refuses nothing rmcp would take"
    );
    assert!(f.seen().is_empty());
    assert_eq!(
        targeted(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"push"}}"#),
        Some((McpMethod::ToolsCall, "push".into()))
    );
    assert_eq!(
        targeted(br#"{"method":"resources/read","params":{"uri":"file:///a\"b"}}"#),
        Some((McpMethod::ResourcesRead, "file:///a\"b".into()))
    );
    for body in [
        &br#"[{"method":"tools/call","params":{"name":"push"}}]"#[..],
        br#"{"method":"tools/list"}"#,
        br#"{"method":"tools/call","params":{"name":7}}"#,
        br#"{"method":"tools/call","params":{"name":"a","name":"b"}}"#,
        b"not json",
    ] {
        assert_eq!(targeted(body), None, "{}", String::from_utf8_lossy(body));
    }
}
