//! The few JSON-RPC shapes the bridge reads and writes: which kind a message is, and
//! the errors the bridge answers with itself.

use serde_json::{Map, Value, json};

/// JSON-RPC error code: the child is not running, not yet initialized, or exited
/// before answering. Application codes stay outside `-32768..-32000`, as MCP 2026-07-28
/// asks (the verifier's denials are `-31001`).
pub const UPSTREAM_UNAVAILABLE: i32 = -31010;
/// JSON-RPC error code: the child already owes `max_in_flight` answers.
pub const UPSTREAM_BUSY: i32 = -31011;
/// JSON-RPC error code: the child did not answer within `request_timeout`.
pub const UPSTREAM_TIMEOUT: i32 = -31012;

/// Standard JSON-RPC codes the bridge uses.
pub(super) const PARSE_ERROR: i32 = -32700;
pub(super) const INVALID_REQUEST: i32 = -32600;
pub(super) const METHOD_NOT_FOUND: i32 = -32601;
/// What LSP and MCP SDKs use for a request its sender cancelled.
pub(super) const REQUEST_CANCELLED: i32 = -32800;
/// Session unknown (MCP streamable HTTP answers it with HTTP 404).
pub(super) const SESSION_NOT_FOUND: i32 = -32001;

/// One JSON-RPC message, by kind. The object is kept whole so that what the bridge
/// does not touch reaches the other side unchanged.
#[derive(Debug)]
pub(super) enum Message {
    /// `method` and `id`: a request expecting an answer.
    Request {
        id: Value,
        method: String,
        msg: Map<String, Value>,
    },
    /// `method`, no `id`.
    Notification {
        method: String,
        msg: Map<String, Value>,
    },
    /// `id` and `result` or `error`, no `method`.
    Response { id: Value, msg: Map<String, Value> },
}

/// Why a message was not JSON-RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Malformed {
    /// Not JSON at all.
    NotJson,
    /// JSON, but not one JSON-RPC 2.0 object (a batch, a scalar, a wrong `jsonrpc`, a
    /// method that is not a string, an id that is neither string nor number).
    NotJsonRpc,
}

impl Message {
    /// Parses and classifies one message.
    pub(super) fn parse(bytes: &[u8]) -> Result<Message, Malformed> {
        let value: Value = serde_json::from_slice(bytes).map_err(|_| Malformed::NotJson)?;
        let Value::Object(msg) = value else {
            return Err(Malformed::NotJsonRpc);
        };
        if msg.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(Malformed::NotJsonRpc);
        }
        let id = match msg.get("id") {
            None => None,
            Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.clone()),
            // `null` ids are only for errors about unparseable requests; a request with
            // one cannot be answered distinctly, so it is not accepted.
            Some(_) => return Err(Malformed::NotJsonRpc),
        };
        match (msg.get("method"), id) {
            (Some(Value::String(m)), Some(id)) => Ok(Message::Request {
                id,
                method: m.clone(),
                msg,
            }),
            (Some(Value::String(m)), None) => Ok(Message::Notification {
                method: m.clone(),
                msg,
            }),
            (None, Some(id)) if msg.contains_key("result") || msg.contains_key("error") => {
                Ok(Message::Response { id, msg })
            }
            _ => Err(Malformed::NotJsonRpc),
        }
    }
}

/// A JSON-RPC error response.
pub(super) fn error(id: Value, code: i32, message: &str, reason: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": code, "message": message, "data": {"reason": reason}},
    })
}

/// A JSON-RPC success response.
pub(super) fn result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// `params._meta.progressToken` of a request, if any.
pub(super) fn progress_token(msg: &Map<String, Value>) -> Option<&Value> {
    msg.get("params")?.get("_meta")?.get("progressToken")
}

/// Replaces `params._meta.progressToken` (which must exist).
pub(super) fn set_progress_token(msg: &mut Map<String, Value>, token: Value) {
    if let Some(meta) = msg
        .get_mut("params")
        .and_then(|p| p.get_mut("_meta"))
        .and_then(Value::as_object_mut)
    {
        meta.insert("progressToken".into(), token);
    }
}

/// The bridge's ids (and progress tokens) on the child's side: plain integers, so
/// that a caller's id of any shape is never confused with one.
pub(super) fn bridge_id(value: &Value) -> Option<u64> {
    value.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_classified_by_their_members() {
        let req = br#"{"jsonrpc":"2.0","id":"a","method":"tools/list"}"#;
        assert!(
            matches!(Message::parse(req), Ok(Message::Request { method, .. }) if method == "tools/list")
        );
        let note = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        assert!(matches!(
            Message::parse(note),
            Ok(Message::Notification { .. })
        ));
        let resp = br#"{"jsonrpc":"2.0","id":7,"result":{}}"#;
        assert!(matches!(Message::parse(resp), Ok(Message::Response { id, .. }) if id == 7));
    }

    #[test]
    fn batches_scalars_odd_ids_and_other_versions_are_not_json_rpc() {
        for bad in [
            &br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#[..],
            br#"42"#,
            br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}"#,
            br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":5}"#,
            br#"{"jsonrpc":"2.0","id":1}"#,
        ] {
            assert_eq!(
                Message::parse(bad).unwrap_err(),
                Malformed::NotJsonRpc,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(Message::parse(b"not json").unwrap_err(), Malformed::NotJson);
    }

    #[test]
    fn progress_token_is_read_and_replaced_in_meta() {
        let Ok(Message::Request { mut msg, .. }) = Message::parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":"caller"}}}"#,
        ) else {
            panic!()
        };
        assert_eq!(progress_token(&msg), Some(&Value::from("caller")));
        set_progress_token(&mut msg, Value::from(9));
        assert_eq!(progress_token(&msg), Some(&Value::from(9)));
    }
}
