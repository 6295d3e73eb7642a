//! [`Enforced`](super::Enforced)'s decision table for a proxy: the same decision on a
//! JSON-RPC message a proxy (tessera-gateway) parsed, instead of on an rmcp handler call.
//!
//! A proxy in front of a server that does not link this crate sees JSON, not typed
//! handler calls. [`ProxyRules::decide_request`] reads a request's `params` with rmcp's
//! own parameter types (so a body a linked server would refuse as invalid params is
//! refused here too) and applies the table of [`super::enforce`] row for row, with the
//! same [`Authorizer`] calls and the same audit records; [`Verdict::Deny`] carries the
//! denial in the shape [`Enforced`](super::Enforced) answers with (a `tools/call`
//! tool error, or a JSON-RPC [`DENIAL_CODE`](super::DENIAL_CODE) error).
//!
//! What a proxy does beyond a linked server's handler, because it only sees the wire:
//! list results come back as JSON ([`ListFilter::retain`]); a `subscriptions/listen`
//! stream is ended by [`super::StreamGuardLayer`] when the credential stops passing.

use std::sync::Arc;
use std::time::SystemTime;

use rmcp::ErrorData as McpError;
use rmcp::model::{
    CallToolRequestParams, CompleteRequestParams, GetPromptRequestParams,
    ReadResourceRequestParams, Reference, SubscribeRequestParams,
    SubscriptionsListenRequestParams,
};
use serde::Deserialize;
use serde_json::Value;
use tessera_identity::ScopeKind;

use super::denial::{call_tool_denial, decision_error, unauthenticated};
use super::enforce::{MAX_SUBSCRIPTION_URIS, completion_arguments, decide_untargeted};
use crate::authz::Authorizer;
use crate::decision::Decision;
use crate::peer::Peer;
use crate::request::{McpMethod, McpRequest};

/// What the proxy does with one JSON-RPC request.
#[derive(Debug)]
#[non_exhaustive]
pub enum Verdict {
    /// Send it upstream; when `filter` is set, its result is a list to filter with it.
    Forward {
        /// The list the result carries, for `*/list` methods.
        filter: Option<ListFilter>,
    },
    /// Answer it here, never sending it upstream.
    Deny(Denial),
}

/// A refused request's answer, as a linked server gives it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Denial {
    /// A JSON-RPC result (a `tools/call` refused by policy: `isError: true`, the reason
    /// as text and in `structuredContent`).
    Result(Value),
    /// A JSON-RPC error ([`super::DENIAL_CODE`], or `-32602` for invalid params).
    Error(McpError),
}

/// Which list a `*/list` result carries, and how its items are named for
/// [`Authorizer::permits_listing`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListFilter {
    /// The kind of target the items are.
    pub kind: ScopeKind,
    /// The result's member holding the array (`tools`, `resources`, ...).
    pub array: &'static str,
    /// Each item's member naming it (`name`, `uri`, `uriTemplate`).
    pub name: &'static str,
}

/// The decision table of [`super::Enforced`] over JSON-RPC messages.
#[derive(Clone, Debug)]
pub struct ProxyRules {
    authz: Arc<Authorizer>,
    hide_denied_tools: bool,
    forward_unchecked: bool,
}

// === impl ListFilter ===

impl ListFilter {
    /// The list a result of `method` carries, if it is one of the four filtered lists.
    pub fn for_method(method: &str) -> Option<Self> {
        let (kind, array, name) = match method {
            "tools/list" => (ScopeKind::Tool, "tools", "name"),
            "resources/list" => (ScopeKind::Resource, "resources", "uri"),
            "resources/templates/list" => (ScopeKind::Resource, "resourceTemplates", "uriTemplate"),
            "prompts/list" => (ScopeKind::Prompt, "prompts", "name"),
            _ => return None,
        };
        Some(Self { kind, array, name })
    }

    /// Keeps the items of `result` that `peer` may use, as [`super::Enforced`] does for a
    /// linked server; an item without a string name is dropped (it names nothing a
    /// decision could allow). Returns how many were dropped.
    pub fn retain(&self, authz: &Authorizer, peer: &Peer, result: &mut Value) -> usize {
        let Some(items) = result.get_mut(self.array).and_then(Value::as_array_mut) else {
            return 0;
        };
        let before = items.len();
        items.retain(|item| {
            item.get(self.name)
                .and_then(Value::as_str)
                .is_some_and(|name| authz.permits_listing(peer, self.kind, name))
        });
        before - items.len()
    }
}

// === impl ProxyRules ===

impl ProxyRules {
    /// The rules deciding with `authz`.
    pub fn new(authz: Arc<Authorizer>) -> Self {
        Self {
            authz,
            hide_denied_tools: false,
            forward_unchecked: false,
        }
    }

    /// As [`super::Enforced::hide_denied_tools`].
    pub fn hide_denied_tools(mut self) -> Self {
        self.hide_denied_tools = true;
        self
    }

    /// As [`super::Enforced::dangerous_forward_unchecked_methods`].
    pub fn dangerous_forward_unchecked_methods(mut self) -> Self {
        self.forward_unchecked = true;
        self
    }

    /// The authorizer deciding.
    pub fn authorizer(&self) -> &Arc<Authorizer> {
        &self.authz
    }

    /// The decision on a JSON-RPC request `method` with `params` from `peer` (`None`:
    /// no peer, refused), audited as [`super::Enforced`] audits it.
    pub fn decide_request(
        &self,
        peer: Option<&Peer>,
        method: &str,
        params: Option<&Value>,
    ) -> Verdict {
        let Some(peer) = peer else {
            return Verdict::Deny(Denial::Error(unauthenticated()));
        };
        match self.decide(peer, method, params) {
            Ok(filter) => Verdict::Forward { filter },
            Err(denial) => Verdict::Deny(denial),
        }
    }

    /// Whether a client notification `method` is forwarded: its credential passes and
    /// the method is one the handler trait names (or unchecked methods are forwarded).
    pub fn admit_notification(&self, peer: Option<&Peer>, method: &str) -> bool {
        let Some(peer) = peer else {
            tracing::warn!("notification without a peer identity dropped");
            return false;
        };
        let enforceable = matches!(
            method,
            "notifications/initialized"
                | "notifications/cancelled"
                | "notifications/progress"
                | "notifications/roots/list_changed"
        );
        let d = decide_untargeted(
            &self.authz,
            peer,
            "notification",
            method,
            enforceable,
            self.forward_unchecked,
        );
        if !d.allowed {
            tracing::info!(reason = d.reason.as_str(), "notification dropped");
        }
        d.allowed
    }

    /// Whether a client's JSON-RPC response (to a request the server sent it: sampling,
    /// elicitation, roots) is forwarded: its credential passes. Not audited, as rmcp
    /// routes responses without a handler call.
    pub fn admit_response(&self, peer: Option<&Peer>) -> bool {
        peer.is_some_and(|peer| {
            self.authz
                .decide(peer, &McpRequest::untargeted("response", ""), SystemTime::now())
                .allowed
        })
    }

    fn decide(
        &self,
        peer: &Peer,
        method: &str,
        params: Option<&Value>,
    ) -> Result<Option<ListFilter>, Denial> {
        match method {
            "tools/call" => {
                let p: CallToolRequestParams = parse(params)?;
                let req = McpRequest::call_tool(p.name.to_string(), p.arguments);
                let d = self.authz.check(peer, &req);
                if !d.allowed {
                    return Err(match call_tool_denial(&d, &p.name, self.hide_denied_tools) {
                        Ok(result) => Denial::Result(
                            serde_json::to_value(result).expect("a CallToolResult serializes"),
                        ),
                        Err(e) => Denial::Error(e),
                    });
                }
                Ok(None)
            }
            "resources/read" => {
                let p: ReadResourceRequestParams = parse(params)?;
                self.full(peer, &McpRequest::read_resource(p.uri))
            }
            "resources/subscribe" => {
                let p: SubscribeRequestParams = parse(params)?;
                self.full(peer, &McpRequest::read_resource(p.uri))
            }
            "prompts/get" => {
                let p: GetPromptRequestParams = parse(params)?;
                self.full(peer, &McpRequest::get_prompt(p.name, p.arguments))
            }
            "completion/complete" => {
                let p: CompleteRequestParams = parse(params)?;
                let arguments = Some(completion_arguments(&p));
                match &p.r#ref {
                    Reference::Prompt(prompt) => {
                        self.full(peer, &McpRequest::get_prompt(prompt.name.clone(), arguments))
                    }
                    Reference::Resource(r) => self.full(
                        peer,
                        &McpRequest {
                            method: McpMethod::ResourcesRead,
                            target: r.uri.clone(),
                            arguments,
                        },
                    ),
                    _ => self.unchecked(peer, "completion/complete", p.r#ref.reference_type()),
                }
            }
            "subscriptions/listen" => {
                let p: SubscriptionsListenRequestParams = parse(params)?;
                self.admit(peer, "subscriptions/listen")?;
                let uris = p.notifications.resource_subscriptions.unwrap_or_default();
                if uris.len() > MAX_SUBSCRIPTION_URIS {
                    return Err(Denial::Error(McpError::invalid_params(
                        format!("at most {MAX_SUBSCRIPTION_URIS} resource subscriptions per request"),
                        None,
                    )));
                }
                for uri in uris {
                    self.full(peer, &McpRequest::read_resource(uri))?;
                }
                Ok(None)
            }
            "initialize" => self.admit(peer, "initialize"),
            "server/discover" => self.admit(peer, "server/discover"),
            "ping" => self.admit(peer, "ping"),
            "logging/setLevel" => self.admit(peer, "logging/setLevel"),
            "resources/unsubscribe" => self.admit(peer, "resources/unsubscribe"),
            "tools/list" | "resources/list" | "resources/templates/list" | "prompts/list" => {
                let filter = ListFilter::for_method(method);
                let name = match method {
                    "tools/list" => "tools/list",
                    "resources/list" => "resources/list",
                    "resources/templates/list" => "resources/templates/list",
                    _ => "prompts/list",
                };
                self.admit(peer, name)?;
                Ok(filter)
            }
            "tasks/get" => self.unchecked(peer, "tasks/get", ""),
            "tasks/update" => self.unchecked(peer, "tasks/update", ""),
            "tasks/cancel" => self.unchecked(peer, "tasks/cancel", ""),
            "skills/list" => self.unchecked(peer, "skills/list", ""),
            "skills/get" => self.unchecked(peer, "skills/get", ""),
            "resources/directory/read" => {
                let uri = params
                    .and_then(|p| p.get("uri"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                self.unchecked(peer, "resources/directory/read", uri)
            }
            other => self.unchecked(peer, "custom", other),
        }
    }

    /// The full decision on a targeted request.
    fn full(&self, peer: &Peer, req: &McpRequest) -> Result<Option<ListFilter>, Denial> {
        let d = self.authz.check(peer, req);
        if d.allowed {
            Ok(None)
        } else {
            Err(Denial::Error(decision_error(&d)))
        }
    }

    /// The credential checks of an untargeted method.
    fn admit(&self, peer: &Peer, method: &'static str) -> Result<Option<ListFilter>, Denial> {
        self.full(peer, &McpRequest::untargeted(method, ""))
    }

    /// A method not attributable to a scoped target: refused unless forwarding unchecked.
    fn unchecked(
        &self,
        peer: &Peer,
        method: &'static str,
        target: &str,
    ) -> Result<Option<ListFilter>, Denial> {
        let d: Decision = decide_untargeted(
            &self.authz,
            peer,
            method,
            target,
            false,
            self.forward_unchecked,
        );
        if d.allowed {
            Ok(None)
        } else {
            Err(Denial::Error(decision_error(&d)))
        }
    }
}

/// `params` as rmcp's type for the method: what rmcp refuses as `-32602` for a linked
/// server is refused the same here (a missing `params` reads as `{}`).
fn parse<'a, T: Deserialize<'a>>(params: Option<&'a Value>) -> Result<T, Denial> {
    static EMPTY: std::sync::LazyLock<Value> =
        std::sync::LazyLock::new(|| Value::Object(Default::default()));
    let params = params.unwrap_or(&EMPTY);
    T::deserialize(params)
        .map_err(|e| Denial::Error(McpError::invalid_params(format!("invalid params: {e}"), None)))
}
