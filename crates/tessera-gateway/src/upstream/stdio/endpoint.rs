//! The bridge as a streamable-HTTP MCP endpoint: what the proxy sends to.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::bridge::{Bridge, Call, sse_event};
use super::jsonrpc::{self, INVALID_REQUEST, Malformed, Message, PARSE_ERROR, SESSION_NOT_FOUND};
use super::session::SubscribeError;
use crate::upstream::UpstreamService;

/// The session header of streamable HTTP.
const SESSION_HEADER: &str = "mcp-session-id";
/// The longest session id accepted (the bridge issues 32 characters).
const MAX_SESSION_ID: usize = 128;
/// `-32602`: the request's parameters are refused.
const INVALID_PARAMS: i32 = -32602;

pub(super) fn service(bridge: Arc<Bridge>) -> UpstreamService {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Request<Body>| {
        let bridge = Arc::clone(&bridge);
        async move { Ok::<_, Infallible>(handle(&bridge, req).await) }
    }))
}

async fn handle(bridge: &Arc<Bridge>, req: Request<Body>) -> Response<Body> {
    let session = match session_header(&req) {
        Ok(session) => session,
        Err(resp) => return resp,
    };
    match *req.method() {
        Method::POST => post(bridge, session, req).await,
        Method::GET => get(bridge, session),
        Method::DELETE => delete(bridge, session),
        _ => {
            let mut resp = status(StatusCode::METHOD_NOT_ALLOWED);
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            resp
        }
    }
}

/// `Mcp-Session-Id`, if sent: one header of visible ASCII, bounded.
#[allow(clippy::result_large_err)]
fn session_header(req: &Request<Body>) -> Result<Option<String>, Response<Body>> {
    let mut values = req.headers().get_all(SESSION_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if values.next().is_some()
        || bytes.is_empty()
        || bytes.len() > MAX_SESSION_ID
        || !bytes.iter().all(|b| (0x21..=0x7e).contains(b))
    {
        return Err(json(
            StatusCode::BAD_REQUEST,
            &jsonrpc::error(
                Value::Null,
                INVALID_REQUEST,
                "malformed Mcp-Session-Id",
                "bad_session_id",
            ),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

fn session_not_found() -> Response<Body> {
    json(
        StatusCode::NOT_FOUND,
        &jsonrpc::error(
            Value::Null,
            SESSION_NOT_FOUND,
            "session not found: initialize again",
            "session_not_found",
        ),
    )
}

async fn post(bridge: &Arc<Bridge>, session: Option<String>, req: Request<Body>) -> Response<Body> {
    if let Some(id) = &session
        && let Err(orphaned) = bridge.sessions.touch(id)
    {
        bridge.unsubscribe_orphans(orphaned);
        return session_not_found();
    }
    let max = bridge.config.max_message_bytes;
    let body = match Limited::new(req.into_body(), max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                &jsonrpc::error(
                    Value::Null,
                    INVALID_REQUEST,
                    &format!("message larger than {max} bytes"),
                    "too_large",
                ),
            );
        }
        Err(_) => return status(StatusCode::BAD_REQUEST),
    };
    let msg = match Message::parse(&body) {
        Ok(msg) => msg,
        Err(Malformed::NotJson) => {
            return json(
                StatusCode::BAD_REQUEST,
                &jsonrpc::error(Value::Null, PARSE_ERROR, "not JSON", "parse_error"),
            );
        }
        Err(Malformed::NotJsonRpc) => {
            return json(
                StatusCode::BAD_REQUEST,
                &jsonrpc::error(
                    Value::Null,
                    INVALID_REQUEST,
                    "not one JSON-RPC 2.0 message (batches are not part of MCP)",
                    "invalid_request",
                ),
            );
        }
    };
    match msg {
        Message::Request { id, method, msg } => request(bridge, session, id, &method, msg).await,
        Message::Notification { method, msg } => {
            bridge.on_caller_notification(session.as_deref(), &method, msg);
            status(StatusCode::ACCEPTED)
        }
        Message::Response { .. } => {
            // The bridge sends callers no requests, so no answer is expected.
            tracing::debug!("stdio bridge: a caller posted a response to nothing; dropped");
            status(StatusCode::ACCEPTED)
        }
    }
}

async fn request(
    bridge: &Arc<Bridge>,
    session: Option<String>,
    id: Value,
    method: &str,
    msg: Map<String, Value>,
) -> Response<Body> {
    match method {
        "initialize" => match bridge.open_session(id).await {
            Ok((session, answer)) => {
                let mut resp = json(StatusCode::OK, &answer);
                if let Ok(value) = HeaderValue::from_str(&session) {
                    resp.headers_mut().insert(SESSION_HEADER, value);
                }
                resp
            }
            Err(answer) => json(StatusCode::OK, &answer),
        },
        "server/discover" => json(StatusCode::OK, &bridge.discover(id).await),
        "resources/subscribe" | "resources/unsubscribe" => {
            let uri = msg
                .get("params")
                .and_then(|p| p.get("uri"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            match (session, uri) {
                (Some(session), Some(uri)) => {
                    let answer = subscription(bridge, &session, id, method, &uri, msg).await;
                    json(StatusCode::OK, &answer)
                }
                // No session (nowhere to deliver updates) or no URI (the child's error
                // to give): the child answers as it would.
                (session, _) => forward(bridge, session, id, msg).await,
            }
        }
        _ => forward(bridge, session, id, msg).await,
    }
}

/// `resources/subscribe`/`unsubscribe` of a session: the child subscribes once per
/// URI, however many sessions do; updates go to the sessions that asked.
async fn subscription(
    bridge: &Arc<Bridge>,
    session: &str,
    id: Value,
    method: &str,
    uri: &str,
    msg: Map<String, Value>,
) -> Value {
    if method == "resources/unsubscribe" {
        if !bridge.sessions.unsubscribe(session, uri) {
            return jsonrpc::result(id, json!({}));
        }
        return answer_of(bridge, Some(session), id, msg).await;
    }
    match bridge.sessions.subscribe(session, uri) {
        Ok(false) => jsonrpc::result(id, json!({})),
        Ok(true) => {
            let answer = answer_of(bridge, Some(session), id, msg).await;
            if answer.get("error").is_some() {
                let _ = bridge.sessions.unsubscribe(session, uri);
            }
            answer
        }
        Err(SubscribeError::TooMany) => jsonrpc::error(
            id,
            INVALID_PARAMS,
            "this session holds as many resource subscriptions as it may",
            "too_many_subscriptions",
        ),
        Err(SubscribeError::UnknownSession) => jsonrpc::error(
            id,
            jsonrpc::SESSION_NOT_FOUND,
            "session not found",
            "session_not_found",
        ),
    }
}

/// The child's answer alone (progress, if any, is not relayed).
async fn answer_of(
    bridge: &Arc<Bridge>,
    session: Option<&str>,
    id: Value,
    msg: Map<String, Value>,
) -> Value {
    let mut call = match bridge.call(session, id, msg).await {
        Ok(call) => call,
        Err(answer) => return answer,
    };
    call.progress = None;
    let deadline = Instant::now() + bridge.config.request_timeout;
    tokio::select! {
        done = &mut call.done => done.unwrap_or_else(|_| bridge.timed_out(call.caller_id.clone())),
        () = tokio::time::sleep_until(deadline) => bridge.timed_out(call.caller_id.clone()),
    }
}

/// A request the child answers: JSON when the answer comes first, an SSE stream when a
/// progress notification does (then every progress notification, then the answer).
async fn forward(
    bridge: &Arc<Bridge>,
    session: Option<String>,
    id: Value,
    msg: Map<String, Value>,
) -> Response<Body> {
    let mut call = match bridge.call(session.as_deref(), id, msg).await {
        Ok(call) => call,
        Err(answer) => return json(StatusCode::OK, &answer),
    };
    let deadline = Instant::now() + bridge.config.request_timeout;
    tokio::select! {
        done = &mut call.done => {
            let answer = done.unwrap_or_else(|_| bridge.timed_out(call.caller_id.clone()));
            json(StatusCode::OK, &answer)
        }
        Some(first) = next_progress(&mut call.progress) => {
            sse(bridge, call, first, deadline)
        }
        () = tokio::time::sleep_until(deadline) => json(StatusCode::OK, &bridge.timed_out(call.caller_id.clone())),
    }
}

async fn next_progress(progress: &mut Option<mpsc::Receiver<Value>>) -> Option<Value> {
    match progress {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The SSE answer to one request. Dropping the body (the caller went away) drops the
/// [`Call`], which cancels the request at the child.
fn sse(bridge: &Arc<Bridge>, call: Call, first: Value, deadline: Instant) -> Response<Body> {
    struct State {
        bridge: Arc<Bridge>,
        call: Call,
        first: Option<Value>,
        deadline: Instant,
        finished: bool,
    }
    let state = State {
        bridge: Arc::clone(bridge),
        call,
        first: Some(first),
        deadline,
        finished: false,
    };
    let events = futures::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        if let Some(first) = st.first.take() {
            return Some((Ok::<_, Infallible>(sse_event(&first)), st));
        }
        let msg = tokio::select! {
            done = &mut st.call.done => {
                st.finished = true;
                done.unwrap_or_else(|_| st.bridge.timed_out(st.call.caller_id.clone()))
            }
            Some(progress) = next_progress(&mut st.call.progress) => progress,
            () = tokio::time::sleep_until(st.deadline) => {
                st.finished = true;
                st.bridge.timed_out(st.call.caller_id.clone())
            }
        };
        Some((Ok(sse_event(&msg)), st))
    });
    event_stream(Body::from_stream(events))
}

/// GET: the session's stream of list-changed notifications and the resource updates it
/// subscribed to. A new GET replaces the session's previous stream.
fn get(bridge: &Arc<Bridge>, session: Option<String>) -> Response<Body> {
    let Some(session) = session else {
        // No session, no stream (2026-07-28 listens with `subscriptions/listen`).
        let mut resp = status(StatusCode::METHOD_NOT_ALLOWED);
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    };
    if let Err(orphaned) = bridge.sessions.touch(&session) {
        bridge.unsubscribe_orphans(orphaned);
        return session_not_found();
    }
    let Some(rx) = bridge.sessions.open_stream(&session) else {
        return session_not_found();
    };
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let event: Bytes = rx.recv().await?;
        Some((Ok::<_, Infallible>(event), rx))
    });
    event_stream(Body::from_stream(events))
}

/// DELETE: the end of a session (its subscriptions too).
fn delete(bridge: &Arc<Bridge>, session: Option<String>) -> Response<Body> {
    let Some(session) = session else {
        return json(
            StatusCode::BAD_REQUEST,
            &jsonrpc::error(
                Value::Null,
                INVALID_REQUEST,
                "DELETE needs an Mcp-Session-Id",
                "no_session",
            ),
        );
    };
    match bridge.sessions.remove(&session) {
        Some(orphaned) => {
            bridge.unsubscribe_orphans(orphaned);
            status(StatusCode::OK)
        }
        None => session_not_found(),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = code;
    resp
}

fn json(code: StatusCode, msg: &Value) -> Response<Body> {
    let body = serde_json::to_vec(msg).expect("a JSON value serializes");
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn event_stream(body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
