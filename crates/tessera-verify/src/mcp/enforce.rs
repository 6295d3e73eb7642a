//! [`Enforced`]: a `ServerHandler` decorator that authorizes every request.

use std::borrow::Cow;
use std::sync::Arc;

use rmcp::model::*;
use rmcp::service::{NotificationContext, RequestContext, RoleServer, SubscriptionContext};
use rmcp::{ErrorData as McpError, ServerHandler};
use serde_json::json;
use tessera_identity::ScopeKind;

use crate::authz::Authorizer;
use crate::decision::Decision;
use crate::peer::Peer;
use crate::request::McpRequest;

/// The JSON-RPC error code of an authorization denial: outside the reserved
/// `-32768..-32000` range, as MCP 2026-07-28 asks of application codes.
pub const DENIAL_CODE: i32 = -31001;

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
    if let Some(p) = ctx.extensions.get::<Arc<Peer>>() {
        return Some(p.clone());
    }
    ctx.extensions
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
    /// requests, `tasks/*`, skills) without any check. Off by default: they are refused.
    pub fn dangerous_forward_unchecked_methods(mut self) -> Self {
        self.forward_unchecked = true;
        self
    }

    /// The wrapped handler.
    pub fn inner(&self) -> &H {
        &self.inner
    }

    fn authorize(
        &self,
        ctx: &RequestContext<RoleServer>,
        req: &McpRequest,
    ) -> Result<(), McpError> {
        let peer = peer_from_context(ctx).ok_or_else(unauthenticated)?;
        let d = self.authz.check(&peer, req);
        if d.allowed {
            Ok(())
        } else {
            Err(decision_error(&d))
        }
    }

    fn lister(&self, ctx: &RequestContext<RoleServer>) -> Result<Arc<Peer>, McpError> {
        peer_from_context(ctx).ok_or_else(unauthenticated)
    }

    fn unchecked(&self, method: &str) -> Result<(), McpError> {
        if self.forward_unchecked {
            Ok(())
        } else {
            tracing::info!(
                method,
                "tessera-verify: method refused (not attributable to a scoped target)"
            );
            Err(denial("method_not_enforceable", &[]))
        }
    }
}

// Logging (`logging/setLevel`) and legacy `resources/subscribe` are deprecated in rmcp but
// still served to clients of older protocol versions, so the decorator must forward and
// enforce them too.
#[allow(deprecated)]
impl<H: ServerHandler> ServerHandler for Enforced<H> {
    async fn ping(&self, context: RequestContext<RoleServer>) -> Result<(), McpError> {
        self.inner.ping(context).await
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
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
        self.inner.discover(context).await
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let peer = self.lister(&context)?;
        let ok = match &request.r#ref {
            Reference::Prompt(p) => self
                .authz
                .permits_listing(&peer, ScopeKind::Prompt, &p.name),
            Reference::Resource(r) => {
                self.authz
                    .permits_listing(&peer, ScopeKind::Resource, &r.uri)
            }
            _ => false,
        };
        if !ok {
            return Err(denial("out_of_scope", &[]));
        }
        self.inner.complete(request, context).await
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
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
        let peer = self.lister(&context)?;
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
        let peer = self.lister(&context)?;
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
        let peer = self.lister(&context)?;
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

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        self.inner.listen(context).await
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
        self.inner.unsubscribe(request, context).await
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let peer = self.lister(&context)?;
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
        let peer = self.lister(&context)?;
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
        self.unchecked("custom")?;
        self.inner.on_custom_request(request, context).await
    }

    async fn on_cancelled(
        &self,
        notification: CancelledNotificationParam,
        context: NotificationContext<RoleServer>,
    ) {
        self.inner.on_cancelled(notification, context).await
    }

    async fn on_progress(
        &self,
        notification: ProgressNotificationParam,
        context: NotificationContext<RoleServer>,
    ) {
        self.inner.on_progress(notification, context).await
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.inner.on_initialized(context).await
    }

    async fn on_roots_list_changed(&self, context: NotificationContext<RoleServer>) {
        self.inner.on_roots_list_changed(context).await
    }

    async fn on_custom_notification(
        &self,
        notification: CustomNotification,
        context: NotificationContext<RoleServer>,
    ) {
        self.inner
            .on_custom_notification(notification, context)
            .await
    }

    fn get_info(&self) -> ServerConfig {
        self.inner.get_info()
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        self.unchecked("tasks/get")?;
        self.inner.get_task(request, context).await
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.unchecked("tasks/update")?;
        self.inner.update_task(request, context).await
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.unchecked("tasks/cancel")?;
        self.inner.cancel_task(request, context).await
    }

    async fn list_skills(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListSkillsResult, McpError> {
        self.unchecked("skills/list")?;
        self.inner.list_skills(request, context).await
    }

    async fn get_skill(
        &self,
        request: GetSkillRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetSkillResult, McpError> {
        self.unchecked("skills/get")?;
        self.inner.get_skill(request, context).await
    }

    async fn read_resource_directory(
        &self,
        request: ReadResourceDirectoryRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceDirectoryResult, McpError> {
        self.unchecked("resources/directory")?;
        self.inner.read_resource_directory(request, context).await
    }
}
