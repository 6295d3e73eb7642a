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

mod handler;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use rmcp::model::*;
use rmcp::service::{NotificationContext, RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, ServerHandler};

use crate::authz::Authorizer;
use crate::decision::{Decision, Reason};
use crate::mcp::context::{in_connection, peer_from_context, peer_from_notification};
use crate::mcp::denial::{decision_error, unauthenticated};
use crate::peer::Peer;
use crate::request::McpRequest;

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
pub(crate) fn completion_arguments(
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

/// Decides and records an untargeted `method` acting on `target`: the credential checks,
/// then, unless `enforceable` or `forward_unchecked`, a refusal
/// (`method_not_enforceable`). Shared by [`Enforced`] and [`crate::mcp::proxy`].
pub(crate) fn decide_untargeted(
    authz: &Authorizer,
    peer: &Peer,
    method: &'static str,
    target: &str,
    enforceable: bool,
    forward_unchecked: bool,
) -> Decision {
    let started = Instant::now();
    let req = McpRequest::untargeted(method, loggable(target));
    let mut d = authz.decide(peer, &req, SystemTime::now());
    if d.allowed && !enforceable && !forward_unchecked {
        d = Decision::deny(
            Reason::MethodNotEnforceable,
            "names no tool, resource or prompt to decide on",
        );
    }
    authz.record(peer, &req, &d, started.elapsed());
    if d.reason == Reason::MethodNotEnforceable {
        tracing::info!(
            method,
            target = loggable(target),
            "method refused (not attributable to a scoped target)"
        );
    }
    d
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
        in_connection(&ctx.extensions, || {
            let peer = peer_from_context(ctx).ok_or_else(unauthenticated)?;
            let d = self.authz.check(&peer, req);
            if d.allowed {
                Ok(peer)
            } else {
                Err(decision_error(&d))
            }
        })
    }

    /// The credential checks for an untargeted `method`; the peer when allowed.
    fn admit(
        &self,
        ctx: &RequestContext<RoleServer>,
        method: &'static str,
    ) -> Result<Arc<Peer>, McpError> {
        self.authorize(ctx, &McpRequest::untargeted(method, ""))
    }

    /// Decides and records an untargeted `method` acting on `target` (see
    /// [`decide_untargeted`]).
    fn untargeted(
        &self,
        peer: &Peer,
        method: &'static str,
        target: &str,
        enforceable: bool,
    ) -> Decision {
        decide_untargeted(
            &self.authz,
            peer,
            method,
            target,
            enforceable,
            self.forward_unchecked,
        )
    }

    /// A method that cannot be attributed to a scoped target: refused, or with
    /// [`Self::dangerous_forward_unchecked_methods`] admitted on the credential.
    fn unchecked(
        &self,
        ctx: &RequestContext<RoleServer>,
        method: &'static str,
        target: &str,
    ) -> Result<(), McpError> {
        in_connection(&ctx.extensions, || {
            let peer = peer_from_context(ctx).ok_or_else(unauthenticated)?;
            let d = self.untargeted(&peer, method, target, false);
            if d.allowed {
                return Ok(());
            }
            Err(decision_error(&d))
        })
    }

    /// Whether a notification is forwarded: a peer whose credential passes, and a
    /// method the handler trait names (`enforceable`) or forwarding unchecked methods.
    fn admit_notification(
        &self,
        ctx: &NotificationContext<RoleServer>,
        method: &str,
        enforceable: bool,
    ) -> bool {
        in_connection(&ctx.extensions, || {
            self.admit_notification_here(ctx, method, enforceable)
        })
    }

    /// [`Self::admit_notification`], inside the connection's span.
    fn admit_notification_here(
        &self,
        ctx: &NotificationContext<RoleServer>,
        method: &str,
        enforceable: bool,
    ) -> bool {
        let Some(peer) = peer_from_notification(ctx) else {
            tracing::warn!(
                method = loggable(method),
                "notification without a peer identity dropped"
            );
            return false;
        };
        let d = self.untargeted(&peer, "notification", method, enforceable);
        if !d.allowed {
            tracing::info!(
                method = loggable(method),
                reason = d.reason.as_str(),
                "notification dropped"
            );
        }
        d.allowed
    }
}
