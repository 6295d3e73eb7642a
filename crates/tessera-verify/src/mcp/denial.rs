//! How a denial reads on the wire: a JSON-RPC error with [`DENIAL_CODE`] and the stable
//! reason in its `data` (the shape of draft SEP-2643), never an HTTP 403.

use rmcp::ErrorData as McpError;
use rmcp::model::{CallToolResult, ContentBlock, ErrorCode};
use serde_json::json;

use crate::decision::Decision;

/// The JSON-RPC error code of an authorization denial: outside the reserved
/// `-32768..-32000` range, as MCP 2026-07-28 asks of application codes.
pub const DENIAL_CODE: i32 = -31001;

/// A denial for `reason` (a stable reason string) naming the deciding `policy_ids`.
pub(super) fn denial(reason: &str, policy_ids: &[String]) -> McpError {
    McpError::new(
        ErrorCode(DENIAL_CODE),
        format!("access denied: {reason}"),
        Some(json!({"authorization": {"reason": reason, "policy_ids": policy_ids}})),
    )
}

/// The denial a refused [`Decision`] answers with.
pub(super) fn decision_error(d: &Decision) -> McpError {
    denial(d.reason.as_str(), &d.policy_ids)
}

/// The denial of a request that reached the handler without a peer: a server that
/// forgot to insert the per-connection `Arc<Peer>`, made visible in the log.
pub(super) fn unauthenticated() -> McpError {
    tracing::warn!(
        "request without a peer identity refused (is the per-connection Arc<Peer> inserted?)"
    );
    denial("unauthenticated", &[])
}

/// The answer to a `tools/call` that `d` refused: a tool result with `isError: true`, the
/// reason as text (for the model) and in `structuredContent`; with `hide`, JSON-RPC
/// `-32602` "Unknown tool: <name>", as for a tool that does not exist. Shared by
/// [`super::Enforced`] and [`super::proxy`].
pub(super) fn call_tool_denial(
    d: &Decision,
    name: &str,
    hide: bool,
) -> Result<CallToolResult, McpError> {
    if hide {
        return Err(McpError::invalid_params(format!("Unknown tool: {name}"), None));
    }
    let mut text = format!("access denied: {}", d.reason.as_str());
    if !d.policy_ids.is_empty() {
        text.push_str(&format!(" (policies: {})", d.policy_ids.join(", ")));
    }
    let mut result = CallToolResult::error(vec![ContentBlock::text(text)]);
    result.structured_content = Some(json!({
        "authorization": {"reason": d.reason.as_str(), "policy_ids": d.policy_ids}
    }));
    Ok(result)
}
