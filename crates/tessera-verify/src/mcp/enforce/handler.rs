//! The `ServerHandler` impl of [`Enforced`]: each method's decision, per the table in
//! [`super`].

use std::borrow::Cow;
use std::time::Duration;

use rmcp::model::*;
use rmcp::service::{NotificationContext, RequestContext, RoleServer, SubscriptionContext};
use rmcp::{ErrorData as McpError, ServerHandler};
use tessera_identity::ScopeKind;

use super::{Enforced, MAX_SUBSCRIPTION_URIS, completion_arguments};
use crate::mcp::context::{connection_of, in_connection, peer_from_context};
use crate::mcp::denial::{call_tool_denial, decision_error, unauthenticated};
use crate::request::{McpMethod, McpRequest};

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
        let conn = connection_of(&ctx.extensions);
        let listening = self.inner.listen(context);
        tokio::select! {
            done = listening => done,
            ended = authz.until_denied(&peer) => {
                let end = || {
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
                        "subscription ended: the credential no longer passes"
                    );
                };
                match &conn {
                    Some(conn) => conn.span().in_scope(end),
                    None => end(),
                }
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
        let d = in_connection(&context.extensions, || self.authz.check(&peer, &req));
        if !d.allowed {
            return call_tool_denial(&d, &request.name, self.hide_denied_tools)
                .map(CallToolResponse::Complete);
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
