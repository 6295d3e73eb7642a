//! Enforcement for rmcp 3 servers.
//!
//! - [`Enforced`] wraps any `ServerHandler`: it authorizes `tools/call`, `resources/read`,
//!   `prompts/get` (and `resources/subscribe`, `completion/complete`), filters
//!   `tools/list`, `resources/list`, `resources/templates/list` and `prompts/list` to what
//!   the caller may use, and refuses methods it cannot attribute to a target (custom
//!   requests, `tasks/*`, skills) unless told otherwise.
//! - [`SessionBindingLayer`] binds each `Mcp-Session-Id` to the peer that opened it.
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

mod enforce;
mod session;

pub use enforce::{DENIAL_CODE, Enforced, peer_from_context};
pub use session::{SessionBinding, SessionBindingLayer, SessionBindingService};
