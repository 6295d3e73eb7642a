//! Enforcement for rmcp 3 servers.
//!
//! - [`Enforced`] wraps any `ServerHandler` and gives every method an explicit decision
//!   (the table is in its module docs): it authorizes `tools/call`, `resources/read`,
//!   `prompts/get`, `resources/subscribe`, `completion/complete` (with its arguments) and
//!   each URI of a `subscriptions/listen` filter; checks the caller's credential for
//!   every other method and notification (`initialize`, `ping`, `logging/setLevel`, ...);
//!   filters `tools/list`, `resources/list`, `resources/templates/list` and
//!   `prompts/list` to what the caller may use; ends a subscription when its task is
//!   revoked or expires; and refuses methods it cannot attribute to a target (custom
//!   requests and notifications, `tasks/*`, skills) unless told otherwise.
//! - [`SessionBindingLayer`] binds each `Mcp-Session-Id` to the peer that opened it, in
//!   a table with hard limits ([`SessionLimits`]).
//! - [`StreamGuardLayer`] ends every open response stream (SSE) of a peer when its
//!   credential stops passing, so a revoked task's streams close when the revocation
//!   arrives, not at its next request.
//!
//! - [`proxy::ProxyRules`] applies [`Enforced`]'s table to JSON-RPC messages, for a
//!   proxy in front of a server that does not link this crate (tessera-gateway).
//!
//! ## Where the peer comes from
//!
//! The server parses [`crate::Peer`] once per TLS connection and inserts it as an
//! `Arc<Peer>` into the extensions of every HTTP request on that connection (a
//! `tower::ServiceBuilder::map_request` around the rmcp service, per connection, see the
//! crate docs). rmcp copies each POST's `http::request::Parts` into the handler's
//! `RequestContext.extensions`; [`Enforced`] reads `Parts.extensions.get::<Arc<Peer>>()`
//! (or an `Arc<Peer>` put directly into `RequestContext.extensions` by other transports).
//! No peer → refused.
//!
//! ## Denials
//!
//! Never a raw HTTP 403 (fatal for some clients): an authenticated caller that policy
//! refuses gets HTTP 200 with
//! - for `tools/call`: a `CallToolResult` with `isError: true` and the reason as text, so
//!   the model can read it; with [`Enforced::hide_denied_tools`], a JSON-RPC `-32602`
//!   "Unknown tool: <name>" instead, indistinguishable from a tool that does not exist;
//! - otherwise: a JSON-RPC error with code [`DENIAL_CODE`] (`-31001`, outside the
//!   JSON-RPC/MCP reserved range `-32768..-32000`), message `access denied: <reason>`, and
//!   `data: {"authorization": {"reason": "<stable reason>", "policy_ids": [...]}}`, the
//!   shape of draft SEP-2643.

mod context;
mod denial;
mod enforce;
pub mod proxy;
mod session;
mod streams;

pub use context::{peer_from_context, peer_from_notification};
pub use denial::DENIAL_CODE;
pub use enforce::{Enforced, MAX_SUBSCRIPTION_URIS};
pub use session::{SessionBinding, SessionBindingLayer, SessionBindingService, SessionLimits};
pub use streams::{GuardedBody, StreamGuardLayer, StreamGuardService};

#[cfg(test)]
mod tests;
