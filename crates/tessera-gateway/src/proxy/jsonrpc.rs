//! One JSON-RPC message, parsed once from a bounded body, and the answers the gateway
//! gives itself.
//!
//! Choices (each refusal is an HTTP 4xx with a JSON-RPC error body naming the rule):
//! - **Batches are refused** (`-32600`): MCP removed JSON-RPC batching in 2025-06-18,
//!   and a proxy that answered part of a batch itself would have to merge its answers
//!   into the upstream's. One message per request.
//! - A request needs an `id` that is a string or an integer; a message with a `method`
//!   and no `id` is a notification. `jsonrpc` must be `"2.0"`.
//! - What goes upstream is the message the gateway decided on, serialized again from
//!   its parse, not the caller's bytes: a body with duplicate keys cannot mean one thing
//!   to the gateway and another to the upstream's parser.

use serde_json::{Map, Value, json};

/// JSON-RPC: invalid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// MCP 2026-07-28: a standard header disagrees with the body.
pub const HEADER_MISMATCH: i64 = -32020;

/// A parsed message.
#[derive(Debug)]
pub enum Message {
    /// A request (has `method` and `id`).
    Request {
        /// Its `id`, echoed in the answer.
        id: Value,
        /// The method.
        method: String,
        /// The whole message.
        body: Map<String, Value>,
    },
    /// A notification (`method`, no `id`).
    Notification {
        /// The method.
        method: String,
        /// The whole message.
        body: Map<String, Value>,
    },
    /// A response to a request the server sent the client (`id` with `result` or `error`).
    Response {
        /// The whole message.
        body: Map<String, Value>,
    },
}

/// Why a body is not one JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The JSON-RPC code.
    pub code: i64,
    /// What was wrong, for the caller.
    pub message: String,
    /// The request's id, when one could be read.
    pub id: Value,
}

impl Invalid {
    fn new(code: i64, message: impl Into<String>, id: Value) -> Self {
        Self {
            code,
            message: message.into(),
            id,
        }
    }

    /// The answer, a JSON-RPC error response.
    pub fn to_json(&self) -> Value {
        error_response(&self.id, self.code, &self.message, None)
    }
}

// === impl Message ===

impl Message {
    /// Parses `bytes` as exactly one JSON-RPC 2.0 message.
    pub fn parse(bytes: &[u8]) -> Result<Self, Invalid> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            Invalid::new(PARSE_ERROR, format!("parse error: {e}"), Value::Null)
        })?;
        let body = match value {
            Value::Object(m) => m,
            Value::Array(_) => {
                return Err(Invalid::new(
                    INVALID_REQUEST,
                    "JSON-RPC batches are not accepted (MCP removed them in 2025-06-18): \
                     send one message per request",
                    Value::Null,
                ));
            }
            _ => {
                return Err(Invalid::new(
                    INVALID_REQUEST,
                    "a JSON-RPC message is an object",
                    Value::Null,
                ));
            }
        };
        let id = body.get("id").cloned();
        let id_echo = id
            .clone()
            .filter(|v| v.is_string() || v.is_i64() || v.is_u64())
            .unwrap_or(Value::Null);
        if body.get("jsonrpc") != Some(&Value::String("2.0".into())) {
            return Err(Invalid::new(
                INVALID_REQUEST,
                "\"jsonrpc\" must be \"2.0\"",
                id_echo,
            ));
        }
        if let Some(id) = &id
            && !(id.is_string() || id.is_i64() || id.is_u64())
        {
            return Err(Invalid::new(
                INVALID_REQUEST,
                "\"id\" must be a string or an integer",
                Value::Null,
            ));
        }
        match (body.get("method"), id) {
            (Some(Value::String(m)), Some(id)) => {
                let method = m.clone();
                if let Some(p) = body.get("params")
                    && !p.is_object()
                {
                    return Err(Invalid::new(
                        INVALID_REQUEST,
                        "\"params\" must be an object",
                        id,
                    ));
                }
                Ok(Self::Request { id, method, body })
            }
            (Some(Value::String(m)), None) => {
                let method = m.clone();
                if !method.starts_with("notifications/") {
                    // A request that lost its id would be executed without an answer
                    // the caller can match: refuse it rather than forward it.
                    return Err(Invalid::new(
                        INVALID_REQUEST,
                        format!("\"{}\" is not a notification: a request needs an \"id\"", short(&method)),
                        Value::Null,
                    ));
                }
                Ok(Self::Notification { method, body })
            }
            (Some(_), _) => Err(Invalid::new(
                INVALID_REQUEST,
                "\"method\" must be a string",
                id_echo,
            )),
            (None, Some(_)) => {
                let (r, e) = (body.contains_key("result"), body.contains_key("error"));
                if r == e {
                    return Err(Invalid::new(
                        INVALID_REQUEST,
                        "a response has exactly one of \"result\" and \"error\"",
                        id_echo,
                    ));
                }
                Ok(Self::Response { body })
            }
            (None, None) => Err(Invalid::new(
                INVALID_REQUEST,
                "neither a request, a notification nor a response",
                Value::Null,
            )),
        }
    }

    /// The whole message.
    pub fn body(&self) -> &Map<String, Value> {
        match self {
            Self::Request { body, .. } | Self::Notification { body, .. } | Self::Response { body } => {
                body
            }
        }
    }

    /// The request's `params`, if any.
    pub fn params(&self) -> Option<&Value> {
        self.body().get("params")
    }
}

/// `s` cut to 64 bytes for an error message (it comes from the caller).
pub fn short(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A JSON-RPC error response.
pub fn error_response(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(d) = data {
        error["data"] = d;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// A JSON-RPC result response.
pub fn result_response(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(body: &str) -> Invalid {
        Message::parse(body.as_bytes()).expect_err(body)
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert_eq!(invalid("{not json").code, PARSE_ERROR);
        assert_eq!(invalid("").code, PARSE_ERROR);
    }

    #[test]
    fn a_batch_is_refused_with_the_reason() {
        let e = invalid(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#);
        assert_eq!(e.code, INVALID_REQUEST);
        assert!(e.message.contains("batches"), "{}", e.message);
    }

    #[test]
    fn a_request_without_an_id_is_refused_not_forwarded_as_a_notification() {
        let e = invalid(r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x"}}"#);
        assert_eq!(e.code, INVALID_REQUEST);
        assert!(e.message.contains("needs an \"id\""), "{}", e.message);
    }

    #[test]
    fn wrong_version_odd_ids_and_non_object_params_are_refused() {
        assert_eq!(invalid(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#).code, INVALID_REQUEST);
        assert_eq!(invalid(r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#).code, INVALID_REQUEST);
        assert_eq!(invalid(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#).code, INVALID_REQUEST);
        assert_eq!(invalid(r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#).code, INVALID_REQUEST);
        let e = invalid(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":[1]}"#);
        assert_eq!(e.id, json!(7));
        assert_eq!(invalid(r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#).code, INVALID_REQUEST);
        assert_eq!(invalid("42").code, INVALID_REQUEST);
    }

    #[test]
    fn requests_notifications_and_responses_are_told_apart() {
        let m = Message::parse(br#"{"jsonrpc":"2.0","id":"a","method":"tools/list"}"#).unwrap();
        assert!(matches!(m, Message::Request { ref method, .. } if method == "tools/list"));
        let m = Message::parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert!(matches!(m, Message::Notification { .. }));
        let m = Message::parse(br#"{"jsonrpc":"2.0","id":3,"result":{}}"#).unwrap();
        assert!(matches!(m, Message::Response { .. }));
    }

    #[test]
    fn duplicate_keys_are_resolved_once_and_forwarded_resolved() {
        // serde_json keeps the last; what goes upstream is serialized from this parse,
        // so the upstream sees only the name that was decided on.
        let m = Message::parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
        )
        .unwrap();
        let out = serde_json::to_string(m.body()).unwrap();
        assert_eq!(out.matches("\"name\"").count(), 1, "{out}");
    }
}
