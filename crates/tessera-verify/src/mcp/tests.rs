//! [`Enforced`] driven through rmcp's own dispatch: raw JSON-RPC messages in, the
//! answers out, over an in-memory transport, with a probe handler that records which
//! calls reach it. Every method of the 2025-11-25 and 2026-07-28 schemas (as rmcp 3.11
//! models them), an unknown method and unknown notifications.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::*;
use rmcp::service::{
    NotificationContext, RequestContext, RoleServer, RunningService, SubscriptionContext,
    serve_directly,
};
use rmcp::transport::Transport;
use rmcp::{ErrorData as McpError, ServerHandler};
use serde_json::{Value, json};
use tessera_identity::TaskId;
use tessera_proto::tessera::v1::{RevocationSet, RevokedTask};
use tokio::sync::mpsc;

use super::{DENIAL_CODE, Enforced};
use crate::authz::Authorizer;
use crate::authz::policy::PolicyStore;
use crate::conn::ConnectionSpan;
use crate::peer::{Credential, Peer};
use crate::revocation::RevocationWatcher;
use crate::testutil::logs::formatted;
use crate::testutil::{SERVER, task_peer};

const POLICIES: &str = r#"
@id("calls") permit(principal, action == Action::"tools/call", resource);
@id("reads") permit(principal, action == Action::"resources/read", resource);
@id("prompts") permit(principal, action == Action::"prompts/get", resource);
@id("no-secret-repo")
forbid(principal, action == Action::"prompts/get", resource == Prompt::"review")
when { context.arguments has repo && context.arguments.repo == "acme/secrets" };
"#;

const SCOPES: &[&str] = &[
    "github/tool/get_pull_request",
    "github/prompt/review",
    "github/resource/file:///handbook/*",
];

fn authorizer(revocations: RevocationWatcher) -> Arc<Authorizer> {
    let schema = crate::authz::schema_with_arguments("{ repo?: String }");
    let store = Arc::new(PolicyStore::from_strs(POLICIES, &schema).unwrap());
    Arc::new(Authorizer::new(SERVER.parse().unwrap(), store, revocations))
}

/// A live task of the test client, with its own task id.
fn live_task() -> Peer {
    let Peer::Task {
        client,
        mut claims,
        credential,
        ..
    } = task_peer(SCOPES)
    else {
        unreachable!()
    };
    claims.task_id = TaskId::new();
    Peer::Task {
        task: client.task(claims.task_id),
        client,
        claims,
        credential,
    }
}

fn task_id(peer: &Peer) -> TaskId {
    peer.task().unwrap().task
}

/// A handler that answers everything and records what reached it.
#[derive(Clone, Default)]
struct Probe {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Probe {
    fn saw(&self, what: &str) {
        self.seen.lock().unwrap().push(what.to_owned());
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

#[allow(deprecated)]
impl ServerHandler for Probe {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_prompts()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_resources_list_changed()
                .enable_completions()
                .enable_logging()
                .enable_tasks()
                .enable_skills_with_directory_read()
                .build(),
        )
    }

    async fn ping(&self, _: RequestContext<RoleServer>) -> Result<(), McpError> {
        self.saw("ping");
        Ok(())
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        self.saw("initialize");
        self.negotiate_initialize(&request)
    }

    async fn discover(&self, _: RequestContext<RoleServer>) -> Result<DiscoverResult, McpError> {
        self.saw("server/discover");
        Ok(DiscoverResult::from_server_info(
            self.supported_protocol_versions().into_owned(),
            self.get_info(),
        ))
    }

    async fn complete(
        &self,
        _: CompleteRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        self.saw("completion/complete");
        Ok(CompleteResult::default())
    }

    async fn set_level(
        &self,
        _: SetLevelRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.saw("logging/setLevel");
        Ok(())
    }

    async fn get_prompt(
        &self,
        _: GetPromptRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        self.saw("prompts/get");
        Ok(GetPromptResponse::Complete(GetPromptResult::new(vec![])))
    }

    async fn list_prompts(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        self.saw("prompts/list");
        Ok(ListPromptsResult::with_all_items(vec![
            from(json!({"name": "review"})),
            from(json!({"name": "exfiltrate"})),
        ]))
    }

    async fn list_resources(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        self.saw("resources/list");
        Ok(ListResourcesResult::with_all_items(vec![
            from(json!({"uri": "file:///handbook/a", "name": "a"})),
            from(json!({"uri": "file:///etc/passwd", "name": "passwd"})),
        ]))
    }

    async fn list_resource_templates(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        self.saw("resources/templates/list");
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            from(json!({"uriTemplate": "file:///handbook/{page}", "name": "page"})),
            from(json!({"uriTemplate": "file:///etc/{file}", "name": "etc"})),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        self.saw("resources/read");
        Ok(ReadResourceResponse::Complete(ReadResourceResult::new(
            vec![ResourceContents::text("hello", request.uri)],
        )))
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.clone())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        self.saw("subscriptions/listen");
        context.cancelled().await;
        Ok(())
    }

    async fn subscribe(
        &self,
        _: SubscribeRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.saw("resources/subscribe");
        Ok(())
    }

    async fn unsubscribe(
        &self,
        _: UnsubscribeRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.saw("resources/unsubscribe");
        Ok(())
    }

    async fn call_tool(
        &self,
        _: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        self.saw("tools/call");
        Ok(CallToolResponse::Complete(CallToolResult::success(vec![])))
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        self.saw("tools/list");
        let schema = json!({"type": "object"});
        Ok(ListToolsResult::with_all_items(vec![
            from(json!({"name": "get_pull_request", "inputSchema": schema})),
            from(json!({"name": "delete_branch", "inputSchema": schema})),
        ]))
    }

    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _: RequestContext<RoleServer>,
    ) -> Result<CustomResult, McpError> {
        self.saw(&request.method);
        Ok(CustomResult::new(json!({})))
    }

    async fn on_cancelled(
        &self,
        _: CancelledNotificationParam,
        _: NotificationContext<RoleServer>,
    ) {
        self.saw("notifications/cancelled");
    }

    async fn on_progress(&self, _: ProgressNotificationParam, _: NotificationContext<RoleServer>) {
        self.saw("notifications/progress");
    }

    async fn on_initialized(&self, _: NotificationContext<RoleServer>) {
        self.saw("notifications/initialized");
    }

    async fn on_roots_list_changed(&self, _: NotificationContext<RoleServer>) {
        self.saw("notifications/roots/list_changed");
    }

    async fn on_custom_notification(
        &self,
        notification: CustomNotification,
        _: NotificationContext<RoleServer>,
    ) {
        self.saw(&notification.method);
    }

    async fn get_task(
        &self,
        _: GetTaskParams,
        _: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        self.saw("tasks/get");
        Err(McpError::internal_error("probe", None))
    }

    async fn update_task(
        &self,
        _: UpdateTaskParams,
        _: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.saw("tasks/update");
        Ok(())
    }

    async fn cancel_task(
        &self,
        _: CancelTaskParams,
        _: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.saw("tasks/cancel");
        Ok(())
    }

    async fn list_skills(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListSkillsResult, McpError> {
        self.saw("skills/list");
        Ok(ListSkillsResult::default())
    }

    async fn get_skill(
        &self,
        _: GetSkillRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<GetSkillResult, McpError> {
        self.saw("skills/get");
        Err(McpError::internal_error("probe", None))
    }

    async fn read_resource_directory(
        &self,
        _: ReadResourceDirectoryRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<ReadResourceDirectoryResult, McpError> {
        self.saw("resources/directory/read");
        Err(McpError::internal_error("probe", None))
    }
}

/// An in-memory transport: the test writes client messages, reads server messages.
struct Pipe {
    rx: mpsc::UnboundedReceiver<ClientJsonRpcMessage>,
    tx: mpsc::UnboundedSender<ServerJsonRpcMessage>,
}

impl Transport<RoleServer> for Pipe {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: ServerJsonRpcMessage,
    ) -> impl Future<Output = Result<(), std::io::Error>> + Send + 'static {
        let sent = self
            .tx
            .send(item)
            .map_err(|_| std::io::Error::other("test side gone"));
        std::future::ready(sent)
    }

    fn receive(&mut self) -> impl Future<Output = Option<ClientJsonRpcMessage>> + Send {
        self.rx.recv()
    }

    fn close(&mut self) -> impl Future<Output = Result<(), std::io::Error>> + Send {
        std::future::ready(Ok(()))
    }
}

/// One server (the probe wrapped in [`Enforced`]) on an in-memory transport, as after a
/// 2025-11-25 `initialize` that declared the tasks extension; a message carrying the
/// 2026-07-28 `_meta` is served the 2026-07-28 way.
struct Harness {
    probe: Probe,
    to_server: mpsc::UnboundedSender<ClientJsonRpcMessage>,
    from_server: mpsc::UnboundedReceiver<ServerJsonRpcMessage>,
    /// Server messages read while looking for another one.
    read: Vec<Value>,
    next_id: u64,
    _running: RunningService<RoleServer, Enforced<Probe>>,
}

/// `_meta` of a 2026-07-28 request.
fn meta_2026() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "walk", "version": "0"},
        "io.modelcontextprotocol/clientCapabilities": {
            "extensions": {"io.modelcontextprotocol/tasks": {}}
        },
    })
}

impl Harness {
    fn start(authz: Arc<Authorizer>) -> Self {
        let probe = Probe::default();
        let (to_server, rx) = mpsc::unbounded_channel();
        let (tx, from_server) = mpsc::unbounded_channel();
        let info: InitializeRequestParams = from(json!({
            "protocolVersion": "2025-11-25",
            "capabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}},
            "clientInfo": {"name": "walk", "version": "0"},
        }));
        let running = serve_directly(
            Enforced::new(probe.clone(), authz),
            Pipe { rx, tx },
            Some(info),
        );
        Self {
            probe,
            to_server,
            from_server,
            read: Vec::new(),
            next_id: 1,
            _running: running,
        }
    }

    /// Sends `msg` (a request or notification as JSON) from `peer`.
    fn send(&self, mut msg: Value, peer: Option<&Arc<Peer>>, v2026: bool) {
        if v2026 {
            msg["params"]
                .as_object_mut()
                .map(|p| p.insert("_meta".into(), meta_2026()))
                .unwrap_or_else(|| {
                    msg["params"] = json!({"_meta": meta_2026()});
                    None
                });
        }
        let mut m: ClientJsonRpcMessage = from(msg);
        if let Some(p) = peer {
            match &mut m {
                JsonRpcMessage::Request(r) => {
                    r.request.extensions_mut().insert(p.clone());
                }
                JsonRpcMessage::Notification(n) => {
                    n.notification.extensions_mut().insert(p.clone());
                }
                _ => unreachable!(),
            }
        }
        self.to_server.send(m).unwrap();
    }

    /// Sends request `method` with `params` and waits for its answer.
    async fn call(
        &mut self,
        method: &str,
        params: Value,
        peer: Option<&Arc<Peer>>,
        v2026: bool,
    ) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if !params.is_null() {
            msg["params"] = params;
        }
        self.send(msg, peer, v2026);
        self.answer(id).await
    }

    /// The server message answering request `id`.
    async fn answer(&mut self, id: u64) -> Value {
        if let Some(i) = self.read.iter().position(|m| m["id"] == id) {
            return self.read.remove(i);
        }
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.from_server.recv())
                .await
                .unwrap_or_else(|_| panic!("no answer to request {id} within 10 s"))
                .expect("server gone");
            let msg = serde_json::to_value(msg).unwrap();
            if msg["id"] == id {
                return msg;
            }
            self.read.push(msg);
        }
    }

    /// The next server notification `method`, within `within`.
    async fn notification(&mut self, method: &str, within: Duration) -> Option<Value> {
        if let Some(i) = self.read.iter().position(|m| m["method"] == method) {
            return Some(self.read.remove(i));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.from_server.recv())
                .await
                .ok()??;
            let msg = serde_json::to_value(msg).unwrap();
            if msg["method"] == method {
                return Some(msg);
            }
            self.read.push(msg);
        }
    }
}

/// What a method should come to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// Reaches the handler and succeeds.
    Allowed,
    /// Refused by the enforcement with this reason; never reaches the handler.
    Denied(&'static str),
    /// Refused by rmcp itself before any handler (the method does not exist in that
    /// protocol version); never reaches the handler.
    NotInVersion,
}

/// The authorization reason in a denial (a JSON-RPC error or a flagged tool result).
fn denial_reason(answer: &Value) -> Option<&str> {
    if answer["error"]["code"] == DENIAL_CODE {
        return answer["error"]["data"]["authorization"]["reason"].as_str();
    }
    if answer["result"]["isError"] == true {
        return answer["result"]["structuredContent"]["authorization"]["reason"].as_str();
    }
    None
}

/// One request of the walk: method, params, 2026-07-28 or not, what it comes to for a
/// live task with [`SCOPES`], and the handler method it reaches when allowed.
struct Case {
    method: &'static str,
    params: Value,
    v2026: bool,
    live: Want,
    reaches: &'static str,
}

fn case(method: &'static str, params: Value, v2026: bool, live: Want) -> Case {
    Case {
        method,
        params,
        v2026,
        live,
        reaches: method,
    }
}

fn complete(reference: Value, argument: (&str, &str)) -> Value {
    json!({"ref": reference, "argument": {"name": argument.0, "value": argument.1},
        "context": {"arguments": {"tone": "kind"}}})
}

/// Every client request of both schemas, in scope and out of it.
fn requests() -> Vec<Case> {
    use Want::*;
    let mut cases = Vec::new();
    for v2026 in [false, true] {
        let prompt = |name: &str| json!({"type": "ref/prompt", "name": name});
        let template = |uri: &str| json!({"type": "ref/resource", "uri": uri});
        cases.extend([
            case(
                "completion/complete",
                complete(prompt("review"), ("repo", "acme/ap")),
                v2026,
                Allowed,
            ),
            // The argument being completed is an argument: a policy on it applies.
            case(
                "completion/complete",
                complete(prompt("review"), ("repo", "acme/secrets")),
                v2026,
                Denied("policy_forbids"),
            ),
            case(
                "completion/complete",
                complete(prompt("exfiltrate"), ("repo", "acme/ap")),
                v2026,
                Denied("out_of_scope"),
            ),
            case(
                "completion/complete",
                complete(template("file:///handbook/{page}"), ("page", "intro")),
                v2026,
                Allowed,
            ),
            case(
                "completion/complete",
                complete(template("file:///etc/{file}"), ("file", "pass")),
                v2026,
                Denied("out_of_scope"),
            ),
            case(
                "logging/setLevel",
                json!({"level": "debug"}),
                v2026,
                Allowed,
            ),
            case("prompts/list", Value::Null, v2026, Allowed),
            case("prompts/get", json!({"name": "review"}), v2026, Allowed),
            case(
                "prompts/get",
                json!({"name": "exfiltrate"}),
                v2026,
                Denied("out_of_scope"),
            ),
            case("resources/list", Value::Null, v2026, Allowed),
            case("resources/templates/list", Value::Null, v2026, Allowed),
            case(
                "resources/read",
                json!({"uri": "file:///handbook/a"}),
                v2026,
                Allowed,
            ),
            case(
                "resources/read",
                json!({"uri": "file:///etc/passwd"}),
                v2026,
                Denied("out_of_scope"),
            ),
            case("tools/list", Value::Null, v2026, Allowed),
            case(
                "tools/call",
                json!({"name": "get_pull_request", "arguments": {}}),
                v2026,
                Allowed,
            ),
            case(
                "tools/call",
                json!({"name": "delete_branch", "arguments": {}}),
                v2026,
                Denied("out_of_scope"),
            ),
            case(
                "tasks/get",
                json!({"taskId": "t-1"}),
                v2026,
                Denied("method_not_enforceable"),
            ),
            case(
                "tasks/cancel",
                json!({"taskId": "t-1"}),
                v2026,
                Denied("method_not_enforceable"),
            ),
            // Not a JSON-RPC method MCP defines: refused, never forwarded.
            case(
                "tools/destroy_everything",
                json!({}),
                v2026,
                Denied("method_not_enforceable"),
            ),
        ]);
    }
    // 2025-11-25 only.
    cases.extend([
        case(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "walk", "version": "0"}}),
            false,
            Allowed,
        ),
        case("ping", Value::Null, false, Allowed),
        case(
            "resources/subscribe",
            json!({"uri": "file:///handbook/a"}),
            false,
            Allowed,
        ),
        case(
            "resources/subscribe",
            json!({"uri": "file:///etc/passwd"}),
            false,
            Denied("out_of_scope"),
        ),
        case(
            "resources/unsubscribe",
            json!({"uri": "file:///handbook/a"}),
            false,
            Allowed,
        ),
        // The 2025-11-25 tasks methods rmcp 3.11 does not model (custom requests).
        case(
            "tasks/result",
            json!({"taskId": "t-1"}),
            false,
            Denied("method_not_enforceable"),
        ),
        case(
            "tasks/list",
            json!({}),
            false,
            Denied("method_not_enforceable"),
        ),
        // Not in 2025-11-25: rmcp answers "method not found" itself.
        case(
            "subscriptions/listen",
            json!({"notifications": {"toolsListChanged": true}}),
            false,
            NotInVersion,
        ),
    ]);
    // 2026-07-28 only.
    cases.extend([
        case("server/discover", Value::Null, true, Allowed),
        case(
            "tasks/update",
            json!({"taskId": "t-1", "inputResponses": {}}),
            true,
            Denied("method_not_enforceable"),
        ),
        case(
            "skills/list",
            json!({}),
            true,
            Denied("method_not_enforceable"),
        ),
        case(
            "skills/get",
            json!({"uri": "skill://acme/review/SKILL.md"}),
            true,
            Denied("method_not_enforceable"),
        ),
        case(
            "resources/directory/read",
            json!({"uri": "file:///handbook/"}),
            true,
            Denied("method_not_enforceable"),
        ),
        case(
            "subscriptions/listen",
            json!({"notifications": {"resourceSubscriptions": ["file:///etc/passwd"]}}),
            true,
            Denied("out_of_scope"),
        ),
        // Gone in 2026-07-28.
        case("ping", Value::Null, true, NotInVersion),
        case(
            "resources/subscribe",
            json!({"uri": "file:///handbook/a"}),
            true,
            NotInVersion,
        ),
    ]);
    cases
}

/// Client notifications of both schemas: those the handler trait names are forwarded
/// for a live task; the others (2025-11-25's `notifications/tasks/status`, which rmcp
/// 3.11 does not model, and an unknown one) are dropped.
fn notifications() -> Vec<(&'static str, Value, bool)> {
    vec![
        ("notifications/initialized", Value::Null, true),
        (
            "notifications/cancelled",
            json!({"requestId": 999, "reason": "walk"}),
            true,
        ),
        (
            "notifications/progress",
            json!({"progressToken": "p", "progress": 1}),
            true,
        ),
        ("notifications/roots/list_changed", Value::Null, true),
        (
            "notifications/tasks/status",
            json!({"taskId": "t-1", "status": "working"}),
            false,
        ),
        ("notifications/whatever", json!({"x": 1}), false),
    ]
}

/// Runs every request of [`requests`] as `peer` and checks each against `want` (given
/// the live-task expectation).
async fn walk_requests(
    h: &mut Harness,
    peer: Option<&Arc<Peer>>,
    want: impl Fn(Want) -> Want,
) -> Vec<String> {
    let mut failures = Vec::new();
    for c in requests() {
        h.probe.clear();
        let expect = want(c.live);
        let version = if c.v2026 { "2026-07-28" } else { "2025-11-25" };
        let what = format!("{version} {} {}", c.method, c.params);
        let call = h.call(c.method, c.params.clone(), peer, c.v2026);
        // Only an accepted subscription stays open; every other request is answered.
        let Ok(answer) = tokio::time::timeout(Duration::from_secs(5), call).await else {
            failures.push(format!("{what}: want {expect:?}, got no answer in 5 s"));
            continue;
        };
        let reached = h.probe.seen().iter().any(|m| m == c.reaches);
        let ok = match expect {
            Want::Allowed => {
                reached && answer.get("result").is_some() && denial_reason(&answer).is_none()
            }
            Want::Denied(reason) => !reached && denial_reason(&answer) == Some(reason),
            Want::NotInVersion => {
                !reached && answer["error"]["code"] == ErrorCode::METHOD_NOT_FOUND.0
            }
        };
        if !ok {
            failures.push(format!(
                "{what}: want {expect:?}, got {answer} (handler saw {:?})",
                h.probe.seen()
            ));
        }
    }
    failures
}

/// Sends every notification of [`notifications`] as `peer`, then one the handler
/// records from `witness`; returns what reached the handler before it.
async fn walk_notifications(
    h: &mut Harness,
    peer: Option<&Arc<Peer>>,
    witness: &Arc<Peer>,
) -> Vec<String> {
    h.probe.clear();
    for (method, params, _) in notifications() {
        let mut msg = json!({"jsonrpc": "2.0", "method": method});
        if !params.is_null() {
            msg["params"] = params;
        }
        h.send(msg, peer, false);
    }
    // rmcp hands notifications to the handler in order; a request after them, from a
    // peer whose notifications pass, marks where they end.
    h.send(
        json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}),
        Some(witness),
        false,
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = h.probe.seen();
        if let Some(end) = seen
            .iter()
            .rposition(|m| m == "notifications/roots/list_changed")
        {
            let before: Vec<String> = seen[..end].to_vec();
            // The witness is the last; when `peer` may send, its own roots/list_changed
            // comes before it.
            return before;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the witness notification never arrived: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn every_method_of_both_schemas_gets_an_explicit_decision() {
    let revoked = Arc::new(live_task());
    let authz = authorizer(RevocationWatcher::from_static([task_id(&revoked)], []));
    let mut h = Harness::start(authz);
    let live = Arc::new(live_task());

    let mut failures = walk_requests(&mut h, Some(&live), |w| w).await;
    // A revoked task gets nothing, whatever the method.
    failures.extend(
        walk_requests(&mut h, Some(&revoked), |w| match w {
            Want::NotInVersion => Want::NotInVersion,
            _ => Want::Denied("revoked"),
        })
        .await,
    );
    // Nor does a request that carries no peer at all.
    failures.extend(
        walk_requests(&mut h, None, |w| match w {
            Want::NotInVersion => Want::NotInVersion,
            _ => Want::Denied("unauthenticated"),
        })
        .await,
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Lists are filtered to what the task may use.
    let names = |v: &Value, key: &str, field: &str| -> Vec<String> {
        v["result"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i[field].as_str().unwrap().to_owned())
            .collect()
    };
    let tools = h.call("tools/list", Value::Null, Some(&live), false).await;
    assert_eq!(names(&tools, "tools", "name"), ["get_pull_request"]);
    let prompts = h
        .call("prompts/list", Value::Null, Some(&live), false)
        .await;
    assert_eq!(names(&prompts, "prompts", "name"), ["review"]);
    let resources = h
        .call("resources/list", Value::Null, Some(&live), false)
        .await;
    assert_eq!(
        names(&resources, "resources", "uri"),
        ["file:///handbook/a"]
    );
    let templates = h
        .call("resources/templates/list", Value::Null, Some(&live), false)
        .await;
    assert_eq!(
        names(&templates, "resourceTemplates", "uriTemplate"),
        ["file:///handbook/{page}"]
    );

    // Notifications: the known ones reach the handler from a live task; unknown ones
    // never do, and nothing does from a revoked task or without a peer.
    let forwarded: Vec<String> = notifications()
        .into_iter()
        .filter(|n| n.2)
        .map(|n| n.0.to_owned())
        .collect();
    assert_eq!(
        walk_notifications(&mut h, Some(&live), &live).await,
        forwarded
    );
    assert_eq!(
        walk_notifications(&mut h, Some(&revoked), &live).await,
        Vec::<String>::new()
    );
    assert_eq!(
        walk_notifications(&mut h, None, &live).await,
        Vec::<String>::new()
    );
}

/// Feed messages for a detached watcher: nothing revoked, then `task` revoked.
fn feed(version: u64, revoked: Option<&TaskId>) -> RevocationSet {
    RevocationSet {
        version,
        revoked: revoked
            .map(|t| RevokedTask {
                task_id: t.to_string(),
                reason: "ended".into(),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// Opens a 2026-07-28 subscription for `peer`; returns its request id once
/// acknowledged and handed to the handler.
async fn listen(h: &mut Harness, peer: &Arc<Peer>, notifications: Value) -> u64 {
    let id = h.next_id;
    h.next_id += 1;
    h.send(
        json!({"jsonrpc": "2.0", "id": id, "method": "subscriptions/listen",
            "params": {"notifications": notifications}}),
        Some(peer),
        true,
    );
    h.notification(
        "notifications/subscriptions/acknowledged",
        Duration::from_secs(10),
    )
    .await
    .expect("the subscription is acknowledged");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !h.probe.seen().iter().any(|m| m == "subscriptions/listen") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the handler never got the subscription"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    id
}

#[tokio::test]
async fn a_subscription_ends_when_its_task_is_revoked() {
    let watcher = RevocationWatcher::detached(Duration::from_secs(3600));
    watcher.apply(&feed(1, None));
    let authz = authorizer(watcher.clone());
    let mut h = Harness::start(authz);
    let live = Arc::new(live_task());
    let other = Arc::new(live_task());
    let id = listen(
        &mut h,
        &live,
        json!({"toolsListChanged": true, "resourceSubscriptions": ["file:///handbook/a"]}),
    )
    .await;
    h.probe.clear();
    let other_id = listen(&mut h, &other, json!({"toolsListChanged": true})).await;

    // Another task ending leaves it open.
    watcher.apply(&feed(2, Some(&TaskId::new())));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), h.answer(id))
            .await
            .is_err(),
        "the subscription ended without its task being revoked"
    );
    // Its own task ending closes it, with the reason.
    watcher.apply(&feed(3, Some(&task_id(&live))));
    let answer = tokio::time::timeout(Duration::from_secs(5), h.answer(id))
        .await
        .expect("the subscription of a revoked task is still open 5 s after the revocation");
    assert_eq!(denial_reason(&answer), Some("revoked"), "{answer}");
    // The other task's subscription is still open.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), h.answer(other_id))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_subscription_ends_when_its_svid_expires() {
    let authz = authorizer(RevocationWatcher::from_static([], []));
    let mut h = Harness::start(authz);
    let Peer::Task {
        client,
        task,
        claims,
        ..
    } = live_task()
    else {
        unreachable!()
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let short = Arc::new(Peer::Task {
        client,
        task,
        claims,
        credential: Credential::Certificate {
            serial_hex: "42".into(),
            not_after_unix: now + 2,
            node_ca_serials: Vec::new(),
        },
    });
    let id = listen(&mut h, &short, json!({"toolsListChanged": true})).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), h.answer(id))
        .await
        .expect("the subscription outlived its SVID by 8 s");
    assert_eq!(denial_reason(&answer), Some("expired"), "{answer}");
}

/// rmcp runs the handler on its own task, outside the connection's future: a request
/// carrying its connection's span (as the example server inserts it next to the peer)
/// is still decided, and audited, inside it.
#[tokio::test]
async fn a_decision_names_the_connection_its_request_came_on() {
    let _ = formatted();
    let mut h = Harness::start(authorizer(RevocationWatcher::from_static([], [])));
    let peer = Arc::new(live_task());
    let conn = ConnectionSpan::accepted("harness");
    conn.record_peer(&peer);
    let mut m: ClientJsonRpcMessage = from(json!({
        "jsonrpc": "2.0",
        "id": 1000,
        "method": "tools/call",
        "params": {"name": "conn_span_enforced", "arguments": {}},
    }));
    let JsonRpcMessage::Request(r) = &mut m else {
        unreachable!()
    };
    r.request.extensions_mut().insert(peer.clone());
    r.request.extensions_mut().insert(conn.clone());
    h.to_server.send(m).unwrap();
    h.answer(1000).await;

    let text = String::from_utf8(formatted().lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("authorization decision") && l.contains("conn_span_enforced"))
        .collect();
    assert_eq!(lines.len(), 1, "the decision was audited once: {lines:#?}");
    let want = format!(
        "conn{{id={} remote=harness peer={}}}",
        conn.id(),
        peer.spiffe_id()
    );
    for line in lines {
        assert!(line.contains(&want), "{want} missing: {line}");
    }
}
