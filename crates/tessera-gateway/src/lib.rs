//! tessera-gateway: an MCP-aware reverse proxy that puts an MCP server tessera-verify is
//! not linked into (any language, over streamable HTTP or stdio) behind the same
//! per-request checks a linked server makes.
//!
//! ```text
//! agent runtime ──mTLS / bearer──▶ front (TLS, auth, session binding, stream guard)
//!                                    │
//!                                    ▼
//!                                  proxy (JSON-RPC parsed once, the linked server's decision,
//!                                    │    list results filtered, identity headers added)
//!                                    ▼
//!                                  upstream (HTTP: loopback URL or unix socket; stdio: a
//!                                            supervised child behind a streamable-HTTP bridge)
//! ```
#![forbid(unsafe_code)]

pub mod upstream;
