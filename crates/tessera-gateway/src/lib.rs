//! tessera-gateway: an MCP-aware reverse proxy that puts an MCP server tessera-verify is
//! not linked into (any language, over streamable HTTP or stdio) behind the same
//! per-request checks a linked server makes.
//!
//! ```text
//! agent runtime ──mTLS (task SVID)──▶ front      TLS, the peer parsed once per connection
//!                                       │
//!                                       ▼         StreamGuardLayer: a revoked task's streams end
//!                                       ▼         SessionBindingLayer: Mcp-Session-Id bound to its peer
//!                                     proxy       JSON-RPC parsed once, bounded; Mcp-Method/Mcp-Name
//!                                       │         checked against the body; the linked server's decision
//!                                       │         (tessera_verify::mcp::proxy); list results filtered
//!                                       ▼
//!                                     upstream    HTTP: loopback URL or unix socket (identity headers,
//!                                                 never the caller's credential); stdio: a supervised child
//! ```
//!
//! | module | concept |
//! |---|---|
//! | [`config`] | the TOML file and its `TESSERA_GATEWAY_*` overrides |
//! | [`front`] | the TLS listener and the per-connection peer |
//! | [`proxy`] | the decision per message, denials, filtering, headers |
//! | [`upstream`] | where allowed requests go: [`upstream::http`], [`upstream::stdio`] |
//! | [`ops`], [`metrics`] | `/healthz`, `/readyz`, `/metrics` on a separate plain-HTTP listener |
#![forbid(unsafe_code)]

pub mod config;
pub mod front;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod upstream;
