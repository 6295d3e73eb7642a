//! Headers in and out: the MCP 2026-07-28 standard headers checked against the body,
//! what is forwarded upstream (an allowlist: never a credential), and the identity
//! headers the gateway adds.

use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tessera_verify::Peer;

/// The protocol version from which `Mcp-Method` (and `Mcp-Name`) are required.
pub const STANDARD_HEADERS_VERSION: &str = "2026-07-28";

/// Request headers forwarded to the upstream; every other one (Authorization, Cookie,
/// `Tessera-*`, hop-by-hop headers, ...) stays here.
const FORWARDED: &[&str] = &[
    "accept",
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "last-event-id",
];

/// Response headers passed back to the client.
const RETURNED: &[&str] = &["content-type", "mcp-session-id", "cache-control"];

/// `Tessera-Client`: the SPIFFE ID of the client (agent runtime) calling.
pub const TESSERA_CLIENT: HeaderName = HeaderName::from_static("tessera-client");
/// `Tessera-Task`: the SPIFFE ID of the task the call is made in.
pub const TESSERA_TASK: HeaderName = HeaderName::from_static("tessera-task");
/// `Tessera-Subject`: the user the task acts for (percent-encoded outside visible ASCII).
pub const TESSERA_SUBJECT: HeaderName = HeaderName::from_static("tessera-subject");
/// `Tessera-Scopes`: the task's scopes, space-separated.
pub const TESSERA_SCOPES: HeaderName = HeaderName::from_static("tessera-scopes");

/// Checks `Mcp-Method` and `Mcp-Name` against the body, as rmcp checks them for a linked
/// server: required when the request says protocol 2026-07-28 or later; when present,
/// they must agree with the body whatever the version (a proxy that routes on a header
/// while the server acts on the body is the classic confused deputy).
pub fn check_standard_headers(
    headers: &HeaderMap,
    method: &str,
    params: Option<&Value>,
) -> Result<(), String> {
    let required = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v >= STANDARD_HEADERS_VERSION);
    match single(headers, "mcp-method")? {
        None if required => return Err("missing required Mcp-Method header".into()),
        None => {}
        Some(v) if v != method => {
            return Err(format!(
                "Mcp-Method header `{}` does not match body method `{}`",
                short(v),
                short(method)
            ));
        }
        Some(_) => {}
    }
    let expected = name_of(method, params);
    match (single(headers, "mcp-name")?, expected) {
        (None, Some(_)) if required => {
            Err(format!("missing required Mcp-Name header for `{}`", short(method)))
        }
        (Some(raw), Some(expected)) => {
            let decoded = decode(raw).ok_or("Mcp-Name header is not valid Base64")?;
            if decoded != expected {
                return Err(format!(
                    "Mcp-Name header `{}` does not match body value `{}`",
                    short(&decoded),
                    short(expected)
                ));
            }
            Ok(())
        }
        (Some(_), None) => Err(format!(
            "Mcp-Name header on `{}`, which names nothing",
            short(method)
        )),
        (None, _) => Ok(()),
    }
}

/// The body value `Mcp-Name` must carry for `method` (SEP-2243).
fn name_of<'a>(method: &str, params: Option<&'a Value>) -> Option<&'a str> {
    let key = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => "uri",
        "tasks/get" | "tasks/update" | "tasks/cancel" => "taskId",
        _ => return None,
    };
    params?.get(key)?.as_str()
}

fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, String> {
    let mut all = headers.get_all(name).iter();
    let Some(v) = all.next() else { return Ok(None) };
    if all.next().is_some() {
        return Err(format!("duplicate {name} header"));
    }
    v.to_str()
        .map(Some)
        .map_err(|_| format!("{name} header contains invalid characters"))
}

/// SEP-2243's `=?base64?…?=` form, or the value itself.
fn decode(v: &str) -> Option<String> {
    match v.strip_prefix("=?base64?").and_then(|i| i.strip_suffix("?=")) {
        Some(inner) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(inner).ok()?;
            String::from_utf8(bytes).ok()
        }
        None => Some(v.to_owned()),
    }
}

fn short(s: &str) -> &str {
    super::jsonrpc::short(s)
}

/// The headers of a request as it goes upstream: the allowlisted ones of `inbound`, plus
/// the caller's identity when `identity` (loopback or unix upstream, or told so).
pub fn upstream_request_headers(
    inbound: &HeaderMap,
    peer: Option<&Peer>,
    identity: bool,
) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(FORWARDED.len() + 4);
    for &name in FORWARDED {
        for v in inbound.get_all(name) {
            out.append(HeaderName::from_static(name), v.clone());
        }
    }
    for (name, v) in inbound {
        if name.as_str().starts_with("mcp-param-") {
            out.append(name.clone(), v.clone());
        }
    }
    if identity && let Some(peer) = peer {
        add_identity(&mut out, peer);
    }
    out
}

fn add_identity(out: &mut HeaderMap, peer: &Peer) {
    let put = |out: &mut HeaderMap, name: HeaderName, v: &str| {
        out.insert(name, HeaderValue::from_str(&encode(v)).expect("encoded is visible ASCII"));
    };
    if let Some(client) = peer.client() {
        put(out, TESSERA_CLIENT, &client.to_string());
    }
    if let Some(task) = peer.task() {
        put(out, TESSERA_TASK, &task.to_string());
    }
    if let Some(claims) = peer.claims() {
        put(out, TESSERA_SUBJECT, &claims.subject);
        let scopes: Vec<String> = claims.scopes.iter().map(ToString::to_string).collect();
        put(out, TESSERA_SCOPES, &scopes.join(" "));
    }
}

/// Percent-encodes every byte outside visible ASCII (and `%` itself), so any subject
/// becomes a valid header value that decodes back exactly.
pub fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'%' || b == b' ' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The headers of an upstream response as they go back to the client.
pub fn client_response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(RETURNED.len());
    for &name in RETURNED {
        for v in upstream.get_all(name) {
            out.append(HeaderName::from_static(name), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_2026_request_needs_headers_that_agree_with_the_body() {
        let p = json!({"name": "get_pull_request"});
        let v = ("mcp-protocol-version", "2026-07-28");
        let ok = headers(&[v, ("mcp-method", "tools/call"), ("mcp-name", "get_pull_request")]);
        assert!(check_standard_headers(&ok, "tools/call", Some(&p)).is_ok());
        let b64 = headers(&[v, ("mcp-method", "tools/call"), ("mcp-name", "=?base64?Z2V0X3B1bGxfcmVxdWVzdA==?=")]);
        assert!(check_standard_headers(&b64, "tools/call", Some(&p)).is_ok());
        let other = headers(&[v, ("mcp-method", "tools/call"), ("mcp-name", "delete_branch")]);
        assert!(check_standard_headers(&other, "tools/call", Some(&p)).unwrap_err().contains("does not match"));
        let method = headers(&[v, ("mcp-method", "tools/list"), ("mcp-name", "get_pull_request")]);
        assert!(check_standard_headers(&method, "tools/call", Some(&p)).is_err());
        assert!(check_standard_headers(&headers(&[v]), "tools/call", Some(&p)).unwrap_err().contains("missing"));
        let dup = headers(&[v, ("mcp-method", "tools/call"), ("mcp-method", "tools/call"), ("mcp-name", "get_pull_request")]);
        assert!(check_standard_headers(&dup, "tools/call", Some(&p)).unwrap_err().contains("duplicate"));
    }

    #[test]
    fn an_older_request_may_omit_the_headers_but_not_contradict_the_body() {
        let p = json!({"name": "a"});
        let v = ("mcp-protocol-version", "2025-11-25");
        assert!(check_standard_headers(&headers(&[v]), "tools/call", Some(&p)).is_ok());
        let lie = headers(&[v, ("mcp-method", "tools/call"), ("mcp-name", "b")]);
        assert!(check_standard_headers(&lie, "tools/call", Some(&p)).is_err());
    }

    #[test]
    fn credentials_and_spoofed_identity_never_go_upstream() {
        let inbound = headers(&[
            ("authorization", "Bearer secret"),
            ("cookie", "s=1"),
            ("tessera-task", "spiffe://evil/client/x/task/y"),
            ("tessera-subject", "root"),
            ("proxy-authorization", "Basic x"),
            ("content-type", "application/json"),
            ("mcp-session-id", "abc"),
            ("mcp-param-region", "eu"),
        ]);
        let out = upstream_request_headers(&inbound, None, true);
        for gone in ["authorization", "cookie", "tessera-task", "tessera-subject", "proxy-authorization"] {
            assert!(out.get(gone).is_none(), "{gone} forwarded");
        }
        assert_eq!(out["mcp-session-id"], "abc");
        assert_eq!(out["mcp-param-region"], "eu");
    }

    #[test]
    fn subjects_are_encoded_reversibly_into_header_values() {
        assert_eq!(encode("alice@acme.corp"), "alice@acme.corp");
        assert_eq!(encode("Zoë\r\n%"), "Zo%C3%AB%0D%0A%25");
    }
}
