//! [`Enforced`]: a `ServerHandler` decorator that authorizes every request.
//!
//! Every method the handler trait can receive gets an explicit decision, and what it
//! does not know is refused:
//!
//! | method | decision |
//! |---|---|
//! | `tools/call`, `resources/read`, `prompts/get`, `resources/subscribe` | the full decision on the named target: credential, scope, Cedar with the arguments |
//! | `completion/complete` | the full decision on the referenced prompt (`prompts/get`) or resource template (`resources/read`), with the completion's argument and its context arguments as the call's arguments |
//! | `subscriptions/listen` | the credential, then every requested resource URI as `resources/read`; the stream then ends with a `revoked` (or `expired`, ...) error when the credential stops passing |
//! | `initialize`, `server/discover`, `ping`, `logging/setLevel`, `resources/unsubscribe` | the credential (a live task of this server, not revoked, feed fresh) |
//! | `tools/list`, `resources/list`, `resources/templates/list`, `prompts/list` | the credential, then the result filtered by the full decision per item |
//! | `tasks/*`, `skills/*`, `resources/directory/read`, any other (custom) method | refused (`method_not_enforceable`), unless [`Enforced::dangerous_forward_unchecked_methods`]: then the credential |
//! | `notifications/initialized`, `cancelled`, `progress`, `roots/list_changed` | forwarded if the credential passes, else dropped |
//! | any other notification | dropped, unless [`Enforced::dangerous_forward_unchecked_methods`]: then as above |
//!
//! Every decision is audited (an untargeted one with its method name and an empty or
//! descriptive target). A request without a peer is refused, a notification dropped.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rmcp::model::*;
use rmcp::service::{NotificationContext, RequestContext, RoleServer, SubscriptionContext};
use rmcp::{ErrorData as McpError, ServerHandler};
use serde_json::json;
use tessera_identity::ScopeKind;

use crate::authz::Authorizer;
use crate::decision::{Decision, Reason};
use crate::peer::Peer;
use crate::request::{McpMethod, McpRequest};

/// The JSON-RPC error code of an authorization denial: outside the reserved
/// `-32768..-32000` range, as MCP 2026-07-28 asks of application codes.
pub const DENIAL_CODE: i32 = -31001;

/// At most this many resource URIs in one `subscriptions/listen` filter: each is one
/// decision and one audit record, and the filter comes from the caller.
pub const MAX_SUBSCRIPTION_URIS: usize = 256;

/// A custom method name is cut to this many bytes in audit records and logs: it comes
/// from the caller, in a body of up to megabytes.
const MAX_LOGGED_METHOD_BYTES: usize = 128;

/// Wraps a `ServerHandler` and authorizes every request with an [`Authorizer`].
#[derive(Debug, Clone)]
pub struct Enforced<H> {
    inner: H,
    authz: Arc<Authorizer>,
    hide_denied_tools: bool,
    forward_unchecked: bool,
}

/// The peer of a request: an `Arc<Peer>` in `ctx.extensions`, or in the extensions of the
/// `http::request::Parts` rmcp stores there for streamable HTTP.
pub fn peer_from_context(ctx: &RequestContext<RoleServer>) -> Option<Arc<Peer>> {
    peer_from_extensions(&ctx.extensions)
}

/// The peer of a notification, found like [`peer_from_context`].
pub fn peer_from_notification(ctx: &NotificationContext<RoleServer>) -> Option<Arc<Peer>> {
    peer_from_extensions(&ctx.extensions)
}

fn peer_from_extensions(extensions: &Extensions) -> Option<Arc<Peer>> {
    if let Some(p) = extensions.get::<Arc<Peer>>() {
        return Some(p.clone());
    }
    extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Arc<Peer>>())
        .cloned()
}

fn denial(reason: &str, policy_ids: &[String]) -> McpError {
    McpError::new(
        ErrorCode(DENIAL_CODE),
        format!("access denied: {reason}"),
        Some(json!({"authorization": {"reason": reason, "policy_ids": policy_ids}})),
    )
}

fn decision_error(d: &Decision) -> McpError {
    denial(d.reason.as_str(), &d.policy_ids)
}

fn unauthenticated() -> McpError {
    tracing::warn!(
        "tessera-verify: request without a peer identity refused (is the per-connection Arc<Peer> inserted?)"
    );
    denial("unauthenticated", &[])
}

/// `method` cut to [`MAX_LOGGED_METHOD_BYTES`] at a character boundary.
fn loggable(method: &str) -> &str {
    if method.len() <= MAX_LOGGED_METHOD_BYTES {
        return method;
    }
    let mut end = MAX_LOGGED_METHOD_BYTES;
    while !method.is_char_boundary(end) {
        end -= 1;
    }
    &method[..end]
}

/// A completion's arguments as the call's: the already resolved ones from its context,
/// and the one being completed (its partial value).
fn completion_arguments(
    request: &CompleteRequestParams,
) -> serde_json::Map<String, serde_json::Value> {
    let mut arguments: serde_json::Map<_, _> = request
        .context
        .as_ref()
        .and_then(|c| c.arguments.as_ref())
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    arguments.insert(
        request.argument.name.clone(),
        serde_json::Value::String(request.argument.value.clone()),
    );
    arguments
}

// === impl Enforced ===

impl<H: ServerHandler> Enforced<H> {
    /// Wraps `inner`.
    pub fn new(inner: H, authz: Arc<Authorizer>) -> Self {
        Self {
            inner,
            authz,
            hide_denied_tools: false,
            forward_unchecked: false,
        }
    }

    /// Answers a denied `tools/call` as JSON-RPC `-32602` "Unknown tool: <name>" (as for a
    /// tool that does not exist) instead of a tool error naming the reason.
    pub fn hide_denied_tools(mut self) -> Self {
        self.hide_denied_tools = true;
        self
    }

    /// Forwards methods that cannot be attributed to one tool/resource/prompt (custom
    /// requests and notifications, `tasks/*`, skills) after the credential checks only.
    /// Off by default: they are refused (notifications dropped).
    pub fn dangerous_forward_unchecked_methods(mut self) -> Self {
        self.forward_unchecked = true;
        self
    }

    /// The wrapped handler.
    pub fn inner(&self) -> &H {
        &self.inner
    }

    /// The full decision on `req`; the peer when allowed.
    fn authorize(
        &self,
        ctx: &RequestContext<RoleServer>,
        req: &McpRequest,
    ) -> Result<Arc<Peer>, McpError> {
        let peer = peer_from_context(ctx).ok_or_else(unauthenticated)?;
        let d = self.authz.check(&peer, req);
        if d.allowed {
            Ok(peer)
        } else {
            Err(decision_error(&d))
        }
    }

    /// The credential checks for an untargeted `method`; the peer when allowed.
    fn admit(
        &self,
        ctx: &RequestContext<RoleServer>,
        method: &'static str,
    ) -> Result<Arc<Peer>, McpError> {
        self.authorize(ctx, &McpRequest::untargeted(method, ""))
    }

    /// Decides and records an untargeted `method` acting on `target`: the credential
    /// checks, then, unless `enforceable` or forwarding unchecked methods, a refusal.
    fn untargeted(
        &self,
        peer: &Peer,
        method: &'static str,
        target: &str,
        enforceable: bool,
    ) -> Decision {
        let started = Instant::now();
        let req = McpRequest::untargeted(method, loggable(target));
        let mut d = self.authz.decide(peer, &req, SystemTime::now());
        if d.allowed && !enforceable && !self.forward_unchecked {
            d = Decision::deny(
                Reason::MethodNotEnforceable,
                "names no tool, resource or prompt to decide on",
            );
        }
        self.authz.record(peer, &req, &d, started.elapsed());
        d
    }

    /// A method that cannot be attributed to a scoped target: refused, or with
    /// [`Self::dangerous_forward_unchecked_methods`] admitted on the credential.
    fn unchecked(
        &self,
        ctx: &RequestContext<RoleServer>,
        method: &'static str,
        target: &str,
    ) -> Result<(), McpError> {
        let peer = peer_from_context(ctx).ok_or_else(unauthenticated)?;
        let d = self.untargeted(&peer, method, target, false);
        if d.allowed {
            return Ok(());
        }
        if d.reason == Reason::MethodNotEnforceable {
            tracing::info!(
                method,
                target = loggable(target),
                "tessera-verify: method refused (not attributable to a scoped target)"
            );
        }
        Err(decision_error(&d))
    }

    /// Whether a notification is forwarded: a peer whose credential passes, and a
    /// method the handler trait names (`enforceable`) or forwarding unchecked methods.
    fn admit_notification(
        &self,
        ctx: &NotificationContext<RoleServer>,
        method: &str,
        enforceable: bool,
    ) -> bool {
        let Some(peer) = peer_from_notification(ctx) else {
            tracing::warn!(
                method = loggable(method),
                "tessera-verify: notification without a peer identity dropped"
            );
            return false;
        };
        let d = self.untargeted(&peer, "notification", method, enforceable);
        if !d.allowed {
            tracing::info!(
                method = loggable(method),
                reason = d.reason.as_str(),
                "tessera-verify: notification dropped"
            );
        }
        d.allowed
    }
}

// Logging (`logging/setLevel`) and legacy `resources/subscribe` are deprecated in rmcp but
// still served to clients of older protocol versions, so the decorator must forward and
// enforce them too.
#[allow(deprecated)]
impl<H: ServerHandler> ServerHandler for Enforced<H> {
    async fn ping(&self, context: RequestContext<RoleServer>) -> Result<(), McpError> {
        self.admit(&context, "ping")?;
        self.inner.ping(context).await
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        self.admit(&context, "initialize")?;
        self.inner.initialize(request, context).await
    }

    fn negotiate_initialize(
        &self,
        request: &InitializeRequestParams,
    ) -> Result<InitializeResult, McpError> {
        self.inner.negotiate_initialize(request)
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        self.inner.supported_protocol_versions()
    }

    async fn discover(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<DiscoverResult, McpError> {
        self.admit(&context, "server/discover")?;
        self.inner.discover(context).await
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let arguments = Some(completion_arguments(&request));
        let req = match &request.r#ref {
            Reference::Prompt(p) => Some(McpRequest::get_prompt(p.name.clone(), arguments)),
            Reference::Resource(r) => Some(McpRequest {
                method: McpMethod::ResourcesRead,
                target: r.uri.clone(),
                arguments,
            }),
            // A kind of reference this version does not know names nothing to decide on.
            _ => None,
        };
        match req {
            Some(req) => drop(self.authorize(&context, &req)?),
            None => self.unchecked(
                &context,
                "completion/complete",
                request.r#ref.reference_type(),
            )?,
        }
        self.inner.complete(request, context).await
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.admit(&context, "logging/setLevel")?;
        self.inner.set_level(request, context).await
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        self.authorize(
            &context,
            &McpRequest::get_prompt(request.name.clone(), request.arguments.clone()),
        )?;
        self.inner.get_prompt(request, context).await
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let peer = self.admit(&context, "prompts/list")?;
        let mut result = self.inner.list_prompts(request, context).await?;
        result.prompts.retain(|p| {
            self.authz
                .permits_listing(&peer, ScopeKind::Prompt, &p.name)
        });
        Ok(result)
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let peer = self.admit(&context, "resources/list")?;
        let mut result = self.inner.list_resources(request, context).await?;
        result.resources.retain(|r| {
            self.authz
                .permits_listing(&peer, ScopeKind::Resource, &r.uri)
        });
        Ok(result)
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let peer = self.admit(&context, "resources/templates/list")?;
        let mut result = self.inner.list_resource_templates(request, context).await?;
        result.resource_templates.retain(|t| {
            self.authz
                .permits_listing(&peer, ScopeKind::Resource, &t.uri_template)
        });
        Ok(result)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        self.authorize(&context, &McpRequest::read_resource(request.uri.clone()))?;
        self.inner.read_resource(request, context).await
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        self.inner.accepted_subscription_filter(requested)
    }

    // rmcp acknowledges the subscription (with the filter the inner handler accepts)
    // before it calls `listen`, and `accepted_subscription_filter` does not see the
    // caller: so a refusal comes as the stream's final error right after the
    // acknowledgement, before the inner handler sees the subscription at all.
    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let ctx = context.request_context();
        let peer = self.admit(ctx, "subscriptions/listen")?;
        let uris = context
            .requested()
            .resource_subscriptions
            .as_deref()
            .unwrap_or_default();
        if uris.len() > MAX_SUBSCRIPTION_URIS {
            return Err(McpError::invalid_params(
                format!("at most {MAX_SUBSCRIPTION_URIS} resource subscriptions per request"),
                None,
            ));
        }
        for uri in uris {
            self.authorize(ctx, &McpRequest::read_resource(uri.clone()))?;
        }
        let authz = self.authz.clone();
        let listening = self.inner.listen(context);
        tokio::select! {
            done = listening => done,
            ended = authz.until_denied(&peer) => {
                // Dropping the inner `listen` drops its subscription context, which
                // stops its sink; the final error then ends the stream.
                authz.record(
                    &peer,
                    &McpRequest::untargeted("subscriptions/listen", "stream ended"),
                    &ended,
                    Duration::ZERO,
                );
                tracing::info!(
                    peer = %peer.spiffe_id(),
                    reason = ended.reason.as_str(),
                    "tessera-verify: subscription ended: the credential no longer passes"
                );
                Err(decision_error(&ended))
            }
        }
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.authorize(&context, &McpRequest::read_resource(request.uri.clone()))?;
        self.inner.subscribe(request, context).await
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.admit(&context, "resources/unsubscribe")?;
        self.inner.unsubscribe(request, context).await
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let peer = peer_from_context(&context).ok_or_else(unauthenticated)?;
        let req = McpRequest::call_tool(request.name.to_string(), request.arguments.clone());
        let d = self.authz.check(&peer, &req);
        if !d.allowed {
            if self.hide_denied_tools {
                return Err(McpError::invalid_params(
                    format!("Unknown tool: {}", request.name),
                    None,
                ));
            }
            let mut text = format!("access denied: {}", d.reason.as_str());
            if !d.policy_ids.is_empty() {
                text.push_str(&format!(" (policies: {})", d.policy_ids.join(", ")));
            }
            let mut result = CallToolResult::error(vec![ContentBlock::text(text)]);
            result.structured_content = Some(json!({
                "authorization": {"reason": d.reason.as_str(), "policy_ids": d.policy_ids}
            }));
            return Ok(CallToolResponse::Complete(result));
        }
        self.inner.call_tool(request, context).await
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let peer = self.admit(&context, "tools/list")?;
        let mut result = self.inner.list_tools(request, context).await?;
        result
            .tools
            .retain(|t| self.authz.permits_listing(&peer, ScopeKind::Tool, &t.name));
        Ok(result)
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.inner.get_tool(name)
    }

    async fn on_custom_request(
        &self,
        request: CustomRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<CustomResult, McpError> {
        self.unchecked(&context, "custom", &request.method)?;
        self.inner.on_custom_request(request, context).await
    }

    async fn on_cancelled(
        &self,
        notification: CancelledNotificationParam,
        context: NotificationContext<RoleServer>,
    ) {
        if self.admit_notification(&context, "notifications/cancelled", true) {
            self.inner.on_cancelled(notification, context).await
        }
    }

    async fn on_progress(
        &self,
        notification: ProgressNotificationParam,
        context: NotificationContext<RoleServer>,
    ) {
        if self.admit_notification(&context, "notifications/progress", true) {
            self.inner.on_progress(notification, context).await
        }
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        if self.admit_notification(&context, "notifications/initialized", true) {
            self.inner.on_initialized(context).await
        }
    }

    async fn on_roots_list_changed(&self, context: NotificationContext<RoleServer>) {
        if self.admit_notification(&context, "notifications/roots/list_changed", true) {
            self.inner.on_roots_list_changed(context).await
        }
    }

    async fn on_custom_notification(
        &self,
        notification: CustomNotification,
        context: NotificationContext<RoleServer>,
    ) {
        if self.admit_notification(&context, &notification.method, false) {
            self.inner
                .on_custom_notification(notification, context)
                .await
        }
    }

    fn get_info(&self) -> ServerConfig {
        self.inner.get_info()
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        self.unchecked(&context, "tasks/get", "")?;
        self.inner.get_task(request, context).await
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.unchecked(&context, "tasks/update", "")?;
        self.inner.update_task(request, context).await
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.unchecked(&context, "tasks/cancel", "")?;
        self.inner.cancel_task(request, context).await
    }

    async fn list_skills(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListSkillsResult, McpError> {
        self.unchecked(&context, "skills/list", "")?;
        self.inner.list_skills(request, context).await
    }

    async fn get_skill(
        &self,
        request: GetSkillRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetSkillResult, McpError> {
        self.unchecked(&context, "skills/get", "")?;
        self.inner.get_skill(request, context).await
    }

    async fn read_resource_directory(
        &self,
        request: ReadResourceDirectoryRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceDirectoryResult, McpError> {
        self.unchecked(&context, "resources/directory/read", &request.uri)?;
        self.inner.read_resource_directory(request, context).await
    }
}
