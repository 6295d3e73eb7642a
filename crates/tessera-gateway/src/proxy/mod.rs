//! The proxy: every MCP request is parsed once, decided exactly as a linked server
//! decides it ([`tessera_verify::mcp::proxy::ProxyRules`]), and either answered here (a
//! denial, in the linked server's shape) or sent upstream with the caller's identity in
//! headers and without the caller's credentials; list results coming back are filtered
//! to what the caller may use, in JSON answers and inside SSE streams.
//!
//! It sits inside [`tessera_verify::mcp::StreamGuardLayer`] (a revoked task's open
//! streams end) and [`tessera_verify::mcp::SessionBindingLayer`] (an `Mcp-Session-Id`
//! is usable only by the peer whose `initialize` created it), as `Enforced` does in a
//! linked server; `GET` (the session's stream) and `DELETE` (its end) pass through
//! those two and then straight upstream.
//!
//! | what comes in | what happens |
//! |---|---|
//! | body over `max_request_bytes` | 413, JSON-RPC `-32600` |
//! | not JSON / a batch / not JSON-RPC 2.0 / a request without an id | 400, `-32700` / `-32600` naming the rule |
//! | `Mcp-Method` / `Mcp-Name` disagreeing with the body (required from 2026-07-28) | 400, `-32020` |
//! | a request the rules refuse | 200: a `tools/call` tool error with `isError`, else `-31001` with `data.authorization` |
//! | a notification or client response whose credential fails | 202, dropped (as rmcp drops it after `Enforced`) |
//! | anything allowed | upstream; `initialize` and its result pass unchanged |

pub mod headers;
pub mod jsonrpc;
pub mod sse;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use tessera_verify::Peer;
use tessera_verify::mcp::proxy::{Denial, ProxyRules, Verdict};
use tower::ServiceExt;

use crate::metrics::{Metrics, Outcome};
use crate::upstream::UpstreamService;
use jsonrpc::{Invalid, Message};
use sse::Lister;

/// How the proxy is set up.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Largest request body read (bytes).
    pub max_request_bytes: usize,
    /// Largest JSON list answer (or SSE event) read to filter (bytes).
    pub max_response_bytes: usize,
    /// Whether the upstream gets the identity headers.
    pub identity_headers: bool,
}

/// The proxy service. Clone it per connection.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: the benchmark baseline (`dangerous_pass_through`), nothing checked.
    rules: Option<ProxyRules>,
    upstream: UpstreamService,
    config: ProxyConfig,
    metrics: Metrics,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("checks", &self.inner.rules.is_some())
            .field("config", &self.inner.config)
            .finish()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// === impl Proxy ===

impl Proxy {
    /// A proxy deciding with `rules`, sending to `upstream`.
    pub fn new(
        rules: ProxyRules,
        upstream: UpstreamService,
        config: ProxyConfig,
        metrics: Metrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                rules: Some(rules),
                upstream,
                config,
                metrics,
            }),
        }
    }

    /// The benchmark baseline: forwards every request without parsing or checking it
    /// (credentials are still stripped, no identity is added). Never protects anything.
    pub fn dangerous_pass_through(
        upstream: UpstreamService,
        config: ProxyConfig,
        metrics: Metrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                rules: None,
                upstream,
                config,
                metrics,
            }),
        }
    }
}

impl<B> tower::Service<Request<B>> for Proxy
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.handle(req).await) })
    }
}

impl Inner {
    async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let peer = parts.extensions.get::<Arc<Peer>>().cloned();
        let Some(rules) = &self.rules else {
            let headers = headers::upstream_request_headers(&parts.headers, None, false);
            return self.forward(parts.method, headers, Body::new(body)).await;
        };
        match parts.method {
            Method::POST => {}
            Method::GET | Method::DELETE => {
                // The session's stream and its end: StreamGuardLayer and
                // SessionBindingLayer have decided; nothing here names a target.
                let headers = headers::upstream_request_headers(
                    &parts.headers,
                    peer.as_deref(),
                    self.config.identity_headers,
                );
                return self.forward(parts.method, headers, Body::empty()).await;
            }
            _ => return plain(StatusCode::METHOD_NOT_ALLOWED, "use POST, GET or DELETE"),
        }
        let json = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        if !json {
            self.metrics.count(Outcome::Invalid);
            return plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            );
        }
        let bytes = match Limited::new(body, self.config.max_request_bytes).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                self.metrics.count(Outcome::Invalid);
                let too_large = e.downcast_ref::<http_body_util::LengthLimitError>().is_some();
                return if too_large {
                    invalid(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &Invalid {
                            code: jsonrpc::INVALID_REQUEST,
                            message: format!(
                                "request body exceeds {} bytes",
                                self.config.max_request_bytes
                            ),
                            id: Value::Null,
                        },
                    )
                } else {
                    plain(StatusCode::BAD_REQUEST, "request body could not be read")
                };
            }
        };
        let msg = match Message::parse(&bytes) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.count(Outcome::Invalid);
                tracing::info!(code = e.code, reason = %e.message, "malformed JSON-RPC refused");
                return invalid(StatusCode::BAD_REQUEST, &e);
            }
        };
        let method = match &msg {
            Message::Request { method, .. } | Message::Notification { method, .. } => {
                Some(method.as_str())
            }
            Message::Response { .. } => None,
        };
        if let Some(method) = method
            && let Err(why) = headers::check_standard_headers(&parts.headers, method, msg.params())
        {
            self.metrics.count(Outcome::Invalid);
            tracing::info!(reason = %why, "standard headers disagree with the body; refused");
            let id = match &msg {
                Message::Request { id, .. } => id.clone(),
                _ => Value::Null,
            };
            return invalid(
                StatusCode::BAD_REQUEST,
                &Invalid {
                    code: jsonrpc::HEADER_MISMATCH,
                    message: why,
                    id,
                },
            );
        }
        let lister = match &msg {
            Message::Request { id, method, .. } => {
                match rules.decide_request(peer.as_deref(), method, msg.params()) {
                    Verdict::Forward { filter } => filter.zip(peer.clone()).map(|(filter, peer)| {
                        Lister {
                            filter,
                            authz: rules.authorizer().clone(),
                            peer,
                        }
                    }),
                    Verdict::Deny(denial) => {
                        self.metrics.count(Outcome::Denied);
                        return denied(id, denial);
                    }
                    _ => {
                        self.metrics.count(Outcome::Denied);
                        return plain(StatusCode::INTERNAL_SERVER_ERROR, "unknown verdict");
                    }
                }
            }
            Message::Notification { method, .. } => {
                if !rules.admit_notification(peer.as_deref(), method) {
                    self.metrics.count(Outcome::Denied);
                    return plain(StatusCode::ACCEPTED, "");
                }
                None
            }
            Message::Response { .. } => {
                if !rules.admit_response(peer.as_deref()) {
                    self.metrics.count(Outcome::Denied);
                    tracing::info!("client response dropped: its credential no longer passes");
                    return plain(StatusCode::ACCEPTED, "");
                }
                None
            }
        };
        let headers = headers::upstream_request_headers(
            &parts.headers,
            peer.as_deref(),
            self.config.identity_headers,
        );
        let body = Body::from(serde_json::to_vec(msg.body()).expect("a JSON map serializes"));
        let resp = self.forward(Method::POST, headers, body).await;
        match lister {
            Some(lister) => self.filter(resp, lister).await,
            None => resp,
        }
    }

    /// Sends a request upstream; its answer with the allowlisted headers.
    async fn forward(&self, method: Method, headers: http::HeaderMap, body: Body) -> Response<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.headers_mut() = headers;
        let resp = match self.upstream.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        if resp.status().is_server_error() {
            self.metrics.count(Outcome::UpstreamError);
        } else {
            self.metrics.count(Outcome::Forwarded);
        }
        let (mut parts, body) = resp.into_parts();
        parts.headers = headers::client_response_headers(&parts.headers);
        Response::from_parts(parts, body)
    }

    /// A list answer with what the caller may not use taken out.
    async fn filter(&self, resp: Response<Body>, lister: Lister) -> Response<Body> {
        let kind = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let (mut parts, body) = resp.into_parts();
        if kind.starts_with("text/event-stream") {
            let body = sse::filter_stream(body, lister, self.config.max_response_bytes);
            return Response::from_parts(parts, body);
        }
        if !kind.starts_with("application/json") {
            // Not a list answer we can read: nothing unfiltered goes back.
            tracing::warn!(content_type = %kind, "list answer of an unexpected type withheld");
            return crate::upstream::http::bad_gateway("unexpected upstream answer");
        }
        let bytes = match Limited::new(body, self.config.max_response_bytes).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                tracing::warn!(error = %e, "list answer unreadable or over the bound; withheld");
                return crate::upstream::http::bad_gateway("upstream list answer too large");
            }
        };
        let Ok(mut msg) = serde_json::from_slice::<Value>(&bytes) else {
            return crate::upstream::http::bad_gateway("upstream answer is not JSON");
        };
        let dropped = lister.filter_response(&mut msg);
        if dropped > 0 {
            tracing::debug!(dropped, "list filtered");
        }
        parts.headers.remove(http::header::CONTENT_LENGTH);
        Response::from_parts(parts, Body::from(msg.to_string()))
    }
}

/// The answer to a request the rules refused, in the linked server's shape: HTTP 200.
fn denied(id: &Value, denial: Denial) -> Response<Body> {
    let msg = match denial {
        Denial::Result(result) => jsonrpc::result_response(id, result),
        Denial::Error(e) => {
            let data = e.data.clone();
            jsonrpc::error_response(id, i64::from(e.code.0), &e.message, data)
        }
        _ => jsonrpc::error_response(id, -32603, "denied", None),
    };
    json_response(StatusCode::OK, &msg)
}

fn invalid(status: StatusCode, e: &Invalid) -> Response<Body> {
    json_response(status, &e.to_json())
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r
}
