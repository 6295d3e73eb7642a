//! [`BearerAuthLayer`]: the OAuth 2.1 resource server in front of an rmcp service.
//!
//! Per request, before anything else sees it:
//! 1. `GET` of a [Protected Resource Metadata](super::prm) path: the document, to anyone.
//! 2. The credential: the connection's client certificate (the `Arc<Peer>` the server
//!    inserted per TLS connection) and/or one `Authorization: Bearer` header, each
//!    allowed only if [`AcceptedAuth`] says so. A token is verified by the
//!    [`AccessTokenVerifier`] (signature, chain, this server's `aud`, expiry, ...); a
//!    token bound to a certificate (RFC 8705 `cnf`) only on a connection that presented
//!    that certificate, and only while the certificate itself stands (not expired, its
//!    serial and task not revoked); a certificate and a token together only if the token is bound
//!    to that certificate (else which of the two speaks for the request would be a
//!    guess); and the token's task must still pass the checks every request gets
//!    (deadline, revocation by task id, feed fresh).
//! 3. The token's `Arc<Peer>` (the task, with the token's scopes) replaces whatever was
//!    in the request's extensions, and the `Authorization` header is removed: the
//!    token is never passed on. From here a bearer caller is served exactly as an mTLS
//!    one: [`crate::mcp::Enforced`] decides every call on the peer (scopes, Cedar with
//!    arguments, list filtering, audit), the stream guard ends its streams when its
//!    task ends, sessions bind to the task.
//! 4. Step-up: for a `POST` with a bearer token, the JSON-RPC body is read once
//!    (bounded, [`BearerAuthLayer::with_max_body_bytes`]) and handed on as the same
//!    bytes; a `tools/call`, `resources/read` or `prompts/get` whose target the task's
//!    signed scopes permit but the token's do not is answered `403 insufficient_scope`
//!    naming the scope to ask for. A target beyond the task goes on, and `Enforced`
//!    denies it (`out_of_scope`, as for mTLS): no token could ever grant it.
//!
//! Refusals and their challenges are listed in [`super::challenge`]. A token of an
//! ended task, or past its task's deadline, is a token that no longer works: `401
//! invalid_token` (audited with the reason, as the mTLS path audits it), which OAuth
//! clients answer by fetching a new token, and the token endpoint refuses an ended
//! task. A stale revocation feed is the server's trouble: `503` with `Retry-After`.
//! A request whose credential fails later, during a stream, is ended by the stream
//! guard as for mTLS.
//!
//! Compose, outermost first: the token endpoint (its requests carry no bearer token),
//! this layer, [`crate::mcp::StreamGuardLayer`], [`crate::mcp::SessionBindingLayer`],
//! the rmcp service; and per TLS connection insert the `Arc<Peer>` (when a certificate
//! was presented) and its [`CertThumbprint`] into every request's extensions.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, Limited};
use serde::Deserialize;
use tessera_identity::Scope;

use super::challenge::Challenge;
use super::prm::{ProtectedResourceMetadata, is_scope_char};
use super::{AccessTokenVerifier, CertThumbprint, VerifiedAccessToken};
use crate::authz::Authorizer;
use crate::decision::{Decision, Reason};
use crate::peer::{Credential, Peer};
use crate::request::{McpMethod, McpRequest};
use crate::revocation::{NodeCaStatus, RevocationStatus};

/// Default bound of a JSON-RPC body read for the step-up check: rmcp's own default
/// bound of a POST body (4 MiB), so the layer refuses nothing rmcp would take.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;

/// Longest `Authorization` header value looked at: the longest access token the
/// verifier accepts, plus the scheme and some spaces. Anything longer is refused
/// before it is scanned.
const MAX_AUTHORIZATION_BYTES: usize = 16 * 1024 + 64;

/// Which credentials a server accepts; see the module docs for what each admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptedAuth {
    /// A client certificate (an X.509-SVID) alone.
    pub mtls: bool,
    /// An access token in an `Authorization: Bearer` header.
    pub bearer: bool,
    /// Only access tokens bound to the client certificate of the connection they come
    /// on (RFC 8705): a stolen token is then useless without the key of that
    /// certificate.
    pub require_cert_bound_tokens: bool,
}

impl AcceptedAuth {
    /// Client certificates only (the mTLS default of every Tessera server).
    pub const MTLS: Self = Self {
        mtls: true,
        bearer: false,
        require_cert_bound_tokens: false,
    };
    /// Access tokens only.
    pub const BEARER: Self = Self {
        mtls: false,
        bearer: true,
        require_cert_bound_tokens: false,
    };
    /// Either.
    pub const BOTH: Self = Self {
        mtls: true,
        bearer: true,
        require_cert_bound_tokens: false,
    };

    /// The same, accepting only certificate-bound tokens.
    pub fn require_cert_bound_tokens(mut self) -> Self {
        self.require_cert_bound_tokens = true;
        self
    }

    /// Whether a connection may come without a client certificate
    /// ([`crate::ServerTlsBuilder::client_certificate_optional`]): only when tokens not
    /// bound to one are accepted.
    pub fn allows_connections_without_certificate(&self) -> bool {
        self.bearer && !self.require_cert_bound_tokens
    }
}

/// Why a [`BearerAuthLayer`] cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BearerConfigError {
    /// Neither certificates nor tokens are accepted: nothing could ever get in.
    #[error("AcceptedAuth accepts neither client certificates nor bearer tokens")]
    NothingAccepted,
    /// Bound tokens are required but tokens are not accepted.
    #[error("require_cert_bound_tokens without bearer")]
    BoundWithoutBearer,
    /// The verifier checks tokens for another resource than the metadata publishes.
    #[error("the verifier's resource {verifier:?} is not the published resource {metadata:?}")]
    ResourceMismatch {
        /// The verifier's.
        verifier: String,
        /// The metadata's.
        metadata: String,
    },
}

/// A tower layer applying [`BearerAuthService`]. Build it once; clone it freely.
#[derive(Clone, Debug)]
pub struct BearerAuthLayer {
    shared: Arc<Shared>,
}

#[derive(Clone, Debug)]
struct Shared {
    verifier: AccessTokenVerifier,
    authz: Arc<Authorizer>,
    metadata: ProtectedResourceMetadata,
    accepted: AcceptedAuth,
    max_body: usize,
}

/// The service made by [`BearerAuthLayer`]. The inner service gets the request body
/// unread (`Either::Left`) or, after a step-up check read it, as the same bytes
/// (`Either::Right`); responses the layer makes itself are `Either::Right`.
#[derive(Clone, Debug)]
pub struct BearerAuthService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The request body the inner service gets.
pub type BearerRequestBody<B> = Either<B, Full<Bytes>>;

/// The response body [`BearerAuthService`] answers with.
pub type BearerResponseBody<RB> = Either<RB, Full<Bytes>>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the credential check let through.
enum Admitted {
    /// The connection's client certificate; the request goes on untouched.
    Certificate,
    /// A verified access token.
    Token(Arc<VerifiedAccessToken>),
}

/// How a refused request is answered.
enum Refusal {
    Challenge(Challenge),
    /// The revocation feed is stale: retry later.
    Unavailable,
}

impl From<Challenge> for Refusal {
    fn from(c: Challenge) -> Self {
        Self::Challenge(c)
    }
}

// === impl BearerAuthLayer ===

impl BearerAuthLayer {
    /// A layer admitting what `accepted` says, verifying tokens with `verifier`,
    /// deciding with `authz` (the same authorizer `Enforced` uses), and serving
    /// `metadata`.
    ///
    /// # Errors
    /// [`BearerConfigError`] when nothing is accepted, bound tokens are required
    /// without tokens, or `verifier` and `metadata` name different resources.
    pub fn new(
        verifier: AccessTokenVerifier,
        authz: Arc<Authorizer>,
        metadata: ProtectedResourceMetadata,
        accepted: AcceptedAuth,
    ) -> Result<Self, BearerConfigError> {
        if !accepted.mtls && !accepted.bearer {
            return Err(BearerConfigError::NothingAccepted);
        }
        if accepted.require_cert_bound_tokens && !accepted.bearer {
            return Err(BearerConfigError::BoundWithoutBearer);
        }
        if verifier.resource() != metadata.resource() {
            return Err(BearerConfigError::ResourceMismatch {
                verifier: verifier.resource().to_owned(),
                metadata: metadata.resource().to_owned(),
            });
        }
        let metadata = metadata.with_cert_bound_tokens(accepted.require_cert_bound_tokens);
        Ok(Self {
            shared: Arc::new(Shared {
                verifier,
                authz,
                metadata,
                accepted,
                max_body: DEFAULT_MAX_BODY_BYTES,
            }),
        })
    }

    /// Reads at most `bytes` of a bearer request's body for the step-up check; a
    /// longer body is refused `413`. Keep it at least rmcp's own bound
    /// (`StreamableHttpServerConfig::max_request_body_bytes`).
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.shared).max_body = bytes;
        self
    }

    /// The metadata served.
    pub fn metadata(&self) -> &ProtectedResourceMetadata {
        &self.shared.metadata
    }
}

impl<S> tower::Layer<S> for BearerAuthLayer {
    type Service = BearerAuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuthService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

impl<S, B, RB> tower::Service<Request<B>> for BearerAuthService<S>
where
    S: tower::Service<Request<BearerRequestBody<B>>, Response = Response<RB>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    RB: Send + 'static,
{
    type Response = Response<BearerResponseBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        if shared.metadata.serves(req.uri().path()) {
            let resp = shared.metadata_response(req.method());
            return Box::pin(async move { Ok(resp) });
        }
        let token = match shared.admit(&mut req) {
            Ok(Admitted::Certificate) => None,
            Ok(Admitted::Token(token)) => Some(token),
            Err(refusal) => {
                let resp = shared.refusal(refusal);
                return Box::pin(async move { Ok(resp) });
            }
        };
        // The clone that was polled ready serves this call; a fresh clone is left behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // A token holding all of its task's scopes (the default grant) can never need a
        // step-up: its body is not read here, only by rmcp.
        let Some(token) = token.filter(|t| req.method() == Method::POST && t.narrower_than_task())
        else {
            return Box::pin(async move {
                let resp = inner.call(req.map(Either::Left)).await?;
                Ok(resp.map(Either::Left))
            });
        };
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = match Limited::new(body, shared.max_body).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    let too_large = e.is::<http_body_util::LengthLimitError>();
                    return Ok(plain(if too_large {
                        StatusCode::PAYLOAD_TOO_LARGE
                    } else {
                        StatusCode::BAD_REQUEST
                    }));
                }
            };
            if let Some(challenge) = shared.step_up(&token, &bytes) {
                return Ok(shared.refusal(challenge.into()));
            }
            let req = Request::from_parts(parts, Either::Right(Full::new(bytes)));
            let resp = inner.call(req).await?;
            Ok(resp.map(Either::Left))
        })
    }
}

// === impl Shared ===

impl Shared {
    /// Decides which credential speaks for `req`; for a token, puts its peer in the
    /// extensions and takes the header out.
    fn admit(&self, req: &mut Request<impl Sized>) -> Result<Admitted, Refusal> {
        if carries_query_token(req.uri().query()) {
            return Err(Challenge::InvalidRequest(
                "access tokens go in the Authorization header only",
            )
            .into());
        }
        let mut headers = req.headers().get_all(AUTHORIZATION).iter();
        let token = match (headers.next(), headers.next()) {
            (None, _) => None,
            (Some(value), None) => bearer_token(value)?,
            (Some(_), Some(_)) => {
                return Err(Challenge::InvalidRequest("more than one Authorization header").into());
            }
        };
        let certificate = req.extensions().get::<Arc<Peer>>().is_some()
            || req.extensions().get::<CertThumbprint>().is_some();
        let Some(token) = token else {
            if certificate && self.accepted.mtls {
                // Another scheme's credential is not ours to pass on either.
                req.headers_mut().remove(AUTHORIZATION);
                return Ok(Admitted::Certificate);
            }
            return Err(Challenge::Authenticate.into());
        };
        if !self.accepted.bearer {
            return Err(
                Challenge::InvalidToken("bearer tokens are not accepted here".into()).into(),
            );
        }
        let now = SystemTime::now();
        let verified = self.verifier.verify(token, now).map_err(|e| {
            // Debug, not Display: the error can quote the token's own (hostile) text,
            // which must not be able to start a log line of its own.
            tracing::info!(reason = e.reason(), error = ?e, "access token refused");
            Challenge::InvalidToken(e.reason().to_owned())
        })?;
        let presented = req.extensions().get::<CertThumbprint>();
        let now_unix = unix_secs(now);
        match (verified.cnf(), presented) {
            (Some(bound), Some(presented)) if bound == presented => {
                // The token speaks for the request, but only with its certificate: a
                // certificate revoked or expired since the handshake takes it down too.
                if let Some(cert) = req.extensions().get::<Arc<Peer>>() {
                    self.certificate_still_good(cert, now_unix)?;
                }
            }
            (Some(_), _) => {
                tracing::info!(
                    jti = verified.jti(),
                    "certificate-bound token without its certificate"
                );
                return Err(Challenge::InvalidToken(
                    "the token is bound to a certificate this connection did not present".into(),
                )
                .into());
            }
            (None, _) if self.accepted.require_cert_bound_tokens => {
                return Err(Challenge::InvalidToken(
                    "only certificate-bound tokens are accepted".into(),
                )
                .into());
            }
            (None, _) if certificate => {
                tracing::info!(
                    jti = verified.jti(),
                    "client certificate and a token not bound to it"
                );
                return Err(Challenge::InvalidToken(
                    "a client certificate and a token not bound to it".into(),
                )
                .into());
            }
            (None, _) => {}
        }
        self.credential(verified.peer(), req.method(), now)?;
        req.extensions_mut().insert(verified.peer().clone());
        req.headers_mut().remove(AUTHORIZATION);
        Ok(Admitted::Token(verified))
    }

    /// Whether the certificate a bound token came with still stands: not expired, and
    /// neither its task nor its serial revoked.
    fn certificate_still_good(&self, cert: &Peer, now_unix: i64) -> Result<(), Refusal> {
        let Credential::Certificate {
            serial_hex,
            not_after_unix,
            node_ca_serials,
        } = cert.credential()
        else {
            return Ok(());
        };
        if now_unix >= *not_after_unix {
            return Err(Challenge::InvalidToken(
                "the certificate the token is bound to has expired".into(),
            )
            .into());
        }
        let feed = self.authz.revocations();
        for serial in node_ca_serials {
            match feed.node_ca_status(serial) {
                NodeCaStatus::NotRevoked => {}
                NodeCaStatus::Revoked { node } => {
                    return Err(Challenge::InvalidToken(format!(
                        "the certificate the token is bound to was issued through the CA of evicted node {node}"
                    ))
                    .into());
                }
                // Covered below, and fail-closed either way.
                _ => return Err(Refusal::Unavailable),
            }
        }
        let status = match cert.task() {
            Some(task) => feed.status(&task.task, serial_hex),
            None => feed.serial_status(serial_hex),
        };
        match status {
            RevocationStatus::NotRevoked => Ok(()),
            RevocationStatus::Revoked { .. } => Err(Challenge::InvalidToken(
                "the certificate the token is bound to is revoked".into(),
            )
            .into()),
            RevocationStatus::Stale => Err(Refusal::Unavailable),
        }
    }

    /// The checks every request of the token's task gets, here so that a token that
    /// no longer works is answered as one (`401`); audited like the mTLS path's.
    /// Anything else the authorizer would refuse (a client's own token: `not_a_task`)
    /// goes on and is refused by `Enforced` exactly as for a certificate.
    fn credential(&self, peer: &Peer, method: &Method, now: SystemTime) -> Result<(), Refusal> {
        let started = Instant::now();
        let req = McpRequest::untargeted("bearer", method.as_str());
        let d = self.authz.decide(peer, &req, now);
        let refusal = match d.reason {
            Reason::Expired | Reason::Revoked => {
                Refusal::Challenge(Challenge::InvalidToken(d.reason.as_str().to_owned()))
            }
            Reason::RevocationFeedStale => Refusal::Unavailable,
            _ => return Ok(()),
        };
        self.authz.record(peer, &req, &d, started.elapsed());
        Err(refusal)
    }

    /// The step-up challenge for a JSON-RPC `body` the token does not cover but its
    /// task does; audited as an `insufficient_scope` denial.
    fn step_up(&self, token: &VerifiedAccessToken, body: &[u8]) -> Option<Challenge> {
        let started = Instant::now();
        let (method, target) = targeted(body)?;
        let kind = method.scope_kind()?;
        let server = &self.authz.server().name;
        if token
            .scopes()
            .iter()
            .any(|s| s.permits(server, kind, &target))
        {
            return None;
        }
        // Beyond the task too: no token could grant it; `Enforced` denies it as for mTLS.
        let granted = token
            .task_scopes()
            .iter()
            .find(|s| s.permits(server, kind, &target))?;
        // The exact target, the least a token can grant; else the task's scope that
        // permits it, when the target cannot be written as an OAuth scope token.
        let quotable = |s: &String| s.chars().all(is_scope_char);
        let scope = Scope::new(server.clone(), kind, &target)
            .ok()
            .filter(|s| !s.is_prefix())
            .map(|s| s.to_string())
            .filter(quotable)
            .or_else(|| Some(granted.to_string()).filter(quotable));
        let request = McpRequest {
            method,
            target: target.into_owned(),
            arguments: None,
        };
        let d = Decision::deny(
            Reason::InsufficientScope,
            format!(
                "{server}/{kind}/{} is within the task's scopes, not the token's",
                request.target
            ),
        );
        self.authz
            .record(token.peer(), &request, &d, started.elapsed());
        Some(Challenge::InsufficientScope { scope })
    }

    /// The metadata document, for a `GET` (or `HEAD`).
    fn metadata_response<RB>(&self, method: &Method) -> Response<BearerResponseBody<RB>> {
        if method != Method::GET && method != Method::HEAD {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED);
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            self.metadata.json().clone()
        };
        let mut r = Response::new(Either::Right(Full::new(body)));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    }

    /// The answer to a refused request.
    fn refusal<RB>(&self, refusal: Refusal) -> Response<BearerResponseBody<RB>> {
        match refusal {
            Refusal::Unavailable => {
                let mut r = plain(StatusCode::SERVICE_UNAVAILABLE);
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("5"));
                r
            }
            Refusal::Challenge(c) => {
                let mut r = plain(c.status());
                let published = self.metadata.scopes_supported();
                r.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    c.header(self.metadata.metadata_url(), published),
                );
                r.headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
        }
    }
}

/// Seconds since the Unix epoch (0 before it).
fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An empty response with `status`.
fn plain<RB>(status: StatusCode) -> Response<BearerResponseBody<RB>> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
    *r.status_mut() = status;
    r
}

/// Whether a query string carries an `access_token` parameter (RFC 6750 §2.3), which
/// this server never reads: refused rather than passed on, since it would be.
fn carries_query_token(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            name.eq_ignore_ascii_case("access_token") || name.eq_ignore_ascii_case("access%5Ftoken")
        })
    })
}

/// The bearer token in one `Authorization` value: `None` for another scheme (a client
/// that does not know this server takes tokens), else the token, which must be a
/// `b64token` (RFC 6750 §2.1) after `Bearer` (any case) and one or more spaces.
fn bearer_token(value: &HeaderValue) -> Result<Option<&str>, Refusal> {
    if value.len() > MAX_AUTHORIZATION_BYTES {
        return Err(Challenge::InvalidToken("the token is too large".into()).into());
    }
    let Ok(text) = value.to_str() else {
        return Err(Challenge::InvalidRequest("the Authorization header is not ASCII").into());
    };
    let scheme_end = text.find([' ', '\t']).unwrap_or(text.len());
    let (scheme, rest) = text.split_at(scheme_end);
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_start_matches(' ');
    if token.len() == rest.len() && !rest.is_empty() {
        // Separated by a tab, not a space.
        return Err(Challenge::InvalidRequest("malformed Authorization header").into());
    }
    let body = token.trim_end_matches('=');
    let b64token =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '+' | '/');
    if body.is_empty() || !body.chars().all(b64token) {
        return Err(Challenge::InvalidRequest("malformed bearer token").into());
    }
    Ok(Some(token))
}

/// The JSON-RPC fields the step-up check reads; everything else is left to rmcp.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    uri: Option<Cow<'a, str>>,
}

/// The targeted method and its target, if `body` is one JSON-RPC request of
/// `tools/call`, `resources/read` or `prompts/get`. Anything else (a batch, a
/// notification, a body rmcp will refuse) is not a step-up's business: `None`.
fn targeted(body: &[u8]) -> Option<(McpMethod, Cow<'_, str>)> {
    let message: Message<'_> = serde_json::from_slice(body).ok()?;
    let params = message.params?;
    match message.method?.as_ref() {
        "tools/call" => Some((McpMethod::ToolsCall, params.name?)),
        "prompts/get" => Some((McpMethod::PromptsGet, params.name?)),
        "resources/read" => Some((McpMethod::ResourcesRead, params.uri?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
