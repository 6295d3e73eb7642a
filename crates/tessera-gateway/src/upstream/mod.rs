//! Where the proxy sends what it allowed: an upstream MCP server, always seen as a
//! streamable-HTTP MCP endpoint (a stdio server is bridged to one by [`stdio`]).

pub mod http;
pub mod stdio;

/// An upstream MCP server as the proxy sees it: a streamable-HTTP MCP endpoint.
///
/// POST a JSON-RPC message → `application/json` or `text/event-stream`; GET → the
/// server-to-client stream of a session; DELETE → the end of a session. Both protocol
/// generations (2025-11-25 sessions, 2026-07-28 stateless requests).
pub type UpstreamService = tower::util::BoxCloneSyncService<
    ::http::Request<axum::body::Body>,
    ::http::Response<axum::body::Body>,
    std::convert::Infallible,
>;
