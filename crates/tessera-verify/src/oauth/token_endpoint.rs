//! The co-located token endpoint: a JWT-SVID in, an access token for this one resource
//! out.
//!
//! [`TokenEndpointLayer`] answers three paths under the issuer and passes every other
//! request to the service it wraps:
//! - `GET /.well-known/oauth-authorization-server`: the RFC 8414 metadata;
//! - `POST /oauth/token`: the grants below;
//! - `/oauth/authorize`: refuses (`unsupported_response_type`); it exists because the
//!   metadata must name one.
//!
//! Grants (RFC 7523): `client_credentials` with `client_assertion_type =
//! urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and a `client_assertion`
//! (`client_id`, if sent, must equal its `sub`), and `grant_type =
//! urn:ietf:params:oauth:grant-type:jwt-bearer` with an `assertion`. The assertion is a
//! JWT-SVID of the server's own trust domain whose `aud` includes the issuer (or the
//! token endpoint URL, RFC 7523 §3), validated against the trust domain's JWT bundle.
//! `resource` is required and must be exactly the configured resource (RFC 8707). The
//! task must be for this server, live and not revoked; a client's own JWT-SVID gets a
//! token only when [`TokenEndpointConfig::accept_client_identities`] says so.
//!
//! Errors are RFC 6749 §5.2's (and RFC 8707's `invalid_target`), as JSON with
//! `Cache-Control: no-store`. Every issuance and refusal is an audit event (target
//! `tessera_verify::audit`, `event = "token"`); no token or assertion text is ever logged.
//!
//! Place the layer outermost (before any layer that requires a peer or a bearer token):
//! a token request carries no access token yet.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, PRAGMA};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt as _, Either, Full, LengthLimitError, Limited};
use tessera_identity::{JwtSvidError, Scope, TesseraId, validate_jwt_svid};

use super::CertThumbprint;
use super::access_token::{
    AccessTokenGrant, AccessTokenMinter, GrantSubject, MintError, join_scopes, parse_scopes, unix,
};
use super::metadata::{
    AUTHORIZE_PATH, AuthorizationServerMetadata, CLIENT_CREDENTIALS_GRANT,
    JWT_BEARER_CLIENT_ASSERTION, JWT_BEARER_GRANT, METADATA_PATH, TOKEN_PATH,
};
use crate::audit::AUDIT_TARGET;
use crate::revocation::{RevocationStatus, RevocationWatcher};
use crate::trust::TrustSource;

/// Default lifetime of an access token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);
/// Shortest configurable token lifetime.
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(10);
/// Longest configurable token lifetime.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Default bound of a token request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Most form parameters one token request may carry.
const MAX_PARAMETERS: usize = 32;

/// A configuration value that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenEndpointConfigError {
    /// The resource or issuer is not an absolute http(s) URL without query or fragment.
    #[error("{what} {url:?} is not usable: {reason}")]
    BadUrl {
        /// `resource` or `issuer`.
        what: &'static str,
        /// The value.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// The token TTL is outside [`MIN_TOKEN_TTL`]..=[`MAX_TOKEN_TTL`].
    #[error("token TTL {0:?} is outside 10s..=1h")]
    TtlOutOfBounds(Duration),
}

/// What the token endpoint issues, and for what.
#[derive(Clone, Debug)]
pub struct TokenEndpointConfig {
    issuer: String,
    resource: String,
    token_ttl: Duration,
    accept_client_identities: bool,
    max_body_bytes: usize,
}

impl TokenEndpointConfig {
    /// A config for `resource`, exactly the URL clients dial (e.g.
    /// `https://127.0.0.1:8443/mcp`). The issuer is its origin; tokens live
    /// [`DEFAULT_TOKEN_TTL`]; tasks only; bodies up to [`DEFAULT_MAX_BODY_BYTES`].
    ///
    /// # Errors
    /// [`TokenEndpointConfigError::BadUrl`] for a resource that is not an absolute
    /// http(s) URL without a fragment.
    pub fn new(resource: &str) -> Result<Self, TokenEndpointConfigError> {
        let uri = check_url("resource", resource, true)?;
        let issuer = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or("https"),
            uri.authority().map(|a| a.as_str()).unwrap_or_default()
        );
        Ok(Self {
            issuer,
            resource: resource.to_owned(),
            token_ttl: DEFAULT_TOKEN_TTL,
            accept_client_identities: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        })
    }

    /// Another issuer than the resource's origin (e.g. behind a gateway with a path).
    /// A trailing `/` is dropped.
    ///
    /// # Errors
    /// [`TokenEndpointConfigError::BadUrl`] for an issuer that is not an absolute
    /// http(s) URL without query or fragment (RFC 8414 §2).
    pub fn with_issuer(mut self, issuer: &str) -> Result<Self, TokenEndpointConfigError> {
        check_url("issuer", issuer, false)?;
        self.issuer = issuer.strip_suffix('/').unwrap_or(issuer).to_owned();
        Ok(self)
    }

    /// The lifetime of the tokens issued (each still capped by the assertion, the task
    /// deadline and the server's own SVID).
    ///
    /// # Errors
    /// [`TokenEndpointConfigError::TtlOutOfBounds`] outside 10 s ..= 1 h.
    pub fn with_token_ttl(mut self, ttl: Duration) -> Result<Self, TokenEndpointConfigError> {
        if !(MIN_TOKEN_TTL..=MAX_TOKEN_TTL).contains(&ttl) {
            return Err(TokenEndpointConfigError::TtlOutOfBounds(ttl));
        }
        self.token_ttl = ttl;
        Ok(self)
    }

    /// Whether a client's own JWT-SVID (no task) gets a client token. Off by default:
    /// as over mTLS, only tasks carry consented scopes.
    pub fn accept_client_identities(mut self, accept: bool) -> Self {
        self.accept_client_identities = accept;
        self
    }

    /// Largest token request body accepted (at least 1 KiB).
    pub fn with_max_body_bytes(mut self, max: usize) -> Self {
        self.max_body_bytes = max.max(1024);
        self
    }

    /// The issuer identifier.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The resource tokens are for.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The token lifetime.
    pub fn token_ttl(&self) -> Duration {
        self.token_ttl
    }
}

fn check_url(
    what: &'static str,
    url: &str,
    allow_query: bool,
) -> Result<Uri, TokenEndpointConfigError> {
    let bad = |reason| TokenEndpointConfigError::BadUrl {
        what,
        url: url.to_owned(),
        reason,
    };
    if url.contains('#') {
        return Err(bad("has a fragment"));
    }
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("https" | "http") => {}
        _ => return Err(bad("not http(s)")),
    }
    if uri.authority().is_none() {
        return Err(bad("no host"));
    }
    if !allow_query && uri.query().is_some() {
        return Err(bad("has a query"));
    }
    Ok(uri)
}

// === the layer ===

/// Serves the token endpoint and the metadata in front of an inner service.
#[derive(Clone, Debug)]
pub struct TokenEndpointLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: TokenEndpointConfig,
    trust: TrustSource,
    revocations: RevocationWatcher,
    minter: AccessTokenMinter,
    metadata: Bytes,
    metadata_path: String,
    token_path: String,
    authorize_path: String,
    /// What an assertion's `aud` must include one of: the issuer (as configured and
    /// with a trailing `/`, the form URL libraries print an origin in) or the token
    /// endpoint URL.
    audiences: [String; 3],
}

impl TokenEndpointLayer {
    /// A token endpoint for `config`, validating assertions and signing tokens with
    /// `trust` (the server's own trust material, JWT bundles included), and refusing
    /// tasks the `revocations` feed names (or all, while it is stale).
    pub fn new(
        config: TokenEndpointConfig,
        trust: TrustSource,
        revocations: RevocationWatcher,
    ) -> Self {
        let issuer = config.issuer().to_owned();
        let issuer_path = issuer
            .parse::<Uri>()
            .ok()
            .map(|u| u.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let metadata = AuthorizationServerMetadata::new(&issuer);
        let audiences = [
            issuer.clone(),
            format!("{issuer}/"),
            metadata.token_endpoint.clone(),
        ];
        Self {
            shared: Arc::new(Shared {
                minter: AccessTokenMinter::new(trust.clone(), &issuer, config.resource()),
                metadata: Bytes::from(metadata.to_json()),
                metadata_path: format!("{METADATA_PATH}{issuer_path}"),
                token_path: format!("{issuer_path}{TOKEN_PATH}"),
                authorize_path: format!("{issuer_path}{AUTHORIZE_PATH}"),
                audiences,
                config,
                trust,
                revocations,
            }),
        }
    }
}

impl<S> tower::Layer<S> for TokenEndpointLayer {
    type Service = TokenEndpointService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenEndpointService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`TokenEndpointLayer`].
#[derive(Clone, Debug)]
pub struct TokenEndpointService<S> {
    inner: S,
    shared: Arc<Shared>,
}

type EndpointBody = Full<Bytes>;

impl<S, B, RB> tower::Service<Request<B>> for TokenEndpointService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    RB: Send + 'static,
{
    type Response = Response<Either<EndpointBody, RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        let shared = &self.shared;
        if path == shared.metadata_path {
            let resp = if req.method() == Method::GET || req.method() == Method::HEAD {
                json_response(StatusCode::OK, shared.metadata.clone(), false)
            } else {
                method_not_allowed("GET, HEAD")
            };
            return Box::pin(async move { Ok(resp.map(Either::Left)) });
        }
        if path == shared.authorize_path {
            let resp = error_response(&Refusal::new(
                OAuthError::UnsupportedResponseType,
                "authorize",
                "no interactive flow; use the token endpoint with a JWT-SVID",
            ));
            return Box::pin(async move { Ok(resp.map(Either::Left)) });
        }
        if path == shared.token_path {
            if req.method() != Method::POST {
                let resp = method_not_allowed("POST");
                return Box::pin(async move { Ok(resp.map(Either::Left)) });
            }
            let shared = shared.clone();
            return Box::pin(async move {
                let resp = token(&shared, req, SystemTime::now()).await;
                Ok(resp.map(Either::Left))
            });
        }
        // The clone that was polled ready serves this call; a fresh clone is left behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move { Ok(inner.call(req).await?.map(Either::Right)) })
    }
}

// === errors ===

/// The error codes of RFC 6749 §5.2, RFC 8707 §2 and the authorization endpoint's one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OAuthError {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    InvalidTarget,
    UnsupportedResponseType,
    ServerError,
}

impl OAuthError {
    fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::UnsupportedResponseType => "unsupported_response_type",
            Self::ServerError => "server_error",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::InvalidClient => StatusCode::UNAUTHORIZED,
            Self::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// One refusal: the RFC error, a stable reason for audit, a description for the client.
#[derive(Debug)]
struct Refusal {
    error: OAuthError,
    reason: &'static str,
    description: String,
    status: Option<StatusCode>,
}

impl Refusal {
    fn new(error: OAuthError, reason: &'static str, description: impl Into<String>) -> Self {
        Self {
            error,
            reason,
            description: description.into(),
            status: None,
        }
    }

    fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }
}

fn json_response(status: StatusCode, body: Bytes, no_store: bool) -> Response<EndpointBody> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if no_store {
        // RFC 6749 §5.1: responses carrying (or refusing) tokens are never cached.
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    }
    resp
}

fn error_response(refusal: &Refusal) -> Response<EndpointBody> {
    let body = serde_json::json!({
        "error": refusal.error.as_str(),
        "error_description": refusal.description,
    });
    json_response(
        refusal.status.unwrap_or_else(|| refusal.error.status()),
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
        true,
    )
}

fn method_not_allowed(allow: &'static str) -> Response<EndpointBody> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

// === the token request ===

/// The parameters of a token request this endpoint reads; others are ignored (RFC 6749
/// §3.2), but none may appear twice.
#[derive(Debug, Default)]
struct Form {
    grant_type: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
    assertion: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    resource: Option<String>,
    scope: Option<String>,
}

fn parse_form(body: &[u8]) -> Result<Form, Refusal> {
    let mut form = Form::default();
    let mut seen = std::collections::HashSet::new();
    for (i, (name, value)) in form_urlencoded::parse(body).enumerate() {
        if i == MAX_PARAMETERS {
            return Err(Refusal::new(
                OAuthError::InvalidRequest,
                "too_many_parameters",
                format!("more than {MAX_PARAMETERS} parameters"),
            ));
        }
        if !seen.insert(name.clone()) {
            // RFC 6749 §3.2; RFC 8707 allows several `resource`s, but a token here is
            // for exactly one resource.
            let (error, reason) = if name == "resource" {
                (OAuthError::InvalidTarget, "repeated_resource")
            } else {
                (OAuthError::InvalidRequest, "repeated_parameter")
            };
            return Err(Refusal::new(
                error,
                reason,
                format!("parameter {:?} is repeated", truncated(&name)),
            ));
        }
        let slot = match name.as_ref() {
            "grant_type" => &mut form.grant_type,
            "client_assertion_type" => &mut form.client_assertion_type,
            "client_assertion" => &mut form.client_assertion,
            "assertion" => &mut form.assertion,
            "client_id" => &mut form.client_id,
            "client_secret" => &mut form.client_secret,
            "resource" => &mut form.resource,
            "scope" => &mut form.scope,
            _ => continue,
        };
        *slot = Some(value.into_owned());
    }
    Ok(form)
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Whether the content type is `application/x-www-form-urlencoded` (parameters such as
/// `charset` allowed).
fn is_form(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

async fn read_body<B>(body: B, max: usize) -> Result<Bytes, Refusal>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(max)),
        Err(_) => Err(Refusal::new(
            OAuthError::InvalidRequest,
            "body_unreadable",
            "the request body could not be read",
        )),
    }
}

fn too_large(max: usize) -> Refusal {
    Refusal::new(
        OAuthError::InvalidRequest,
        "body_too_large",
        format!("the request body is larger than {max} bytes"),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

/// Which grant, and so which error a bad assertion earns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grant {
    /// `client_credentials` + `private_key_jwt`: a bad assertion is failed client
    /// authentication (`invalid_client`, 401).
    ClientCredentials,
    /// The JWT bearer grant: a bad assertion is a bad grant (`invalid_grant`).
    JwtBearer,
}

impl Grant {
    fn as_str(self) -> &'static str {
        match self {
            Grant::ClientCredentials => CLIENT_CREDENTIALS_GRANT,
            Grant::JwtBearer => JWT_BEARER_GRANT,
        }
    }

    fn bad_assertion(self) -> OAuthError {
        match self {
            Grant::ClientCredentials => OAuthError::InvalidClient,
            Grant::JwtBearer => OAuthError::InvalidGrant,
        }
    }
}

/// What the audit record of a request says about its caller, as far as known.
#[derive(Debug, Default)]
struct Caller {
    grant: Option<Grant>,
    subject: Option<String>,
    bound: bool,
}

async fn token<B>(shared: &Shared, req: Request<B>, now: SystemTime) -> Response<EndpointBody>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut caller = Caller::default();
    match issue(shared, req, now, &mut caller).await {
        Ok(body) => json_response(StatusCode::OK, body, true),
        Err(refusal) => {
            tracing::warn!(
                target: AUDIT_TARGET,
                event = "token",
                decision = "deny",
                error = refusal.error.as_str(),
                reason = refusal.reason,
                detail = %refusal.description,
                grant = caller.grant.map(Grant::as_str),
                subject = caller.subject.as_deref(),
                resource = %shared.config.resource,
                "token request refused"
            );
            error_response(&refusal)
        }
    }
}

async fn issue<B>(
    shared: &Shared,
    req: Request<B>,
    now: SystemTime,
    caller: &mut Caller,
) -> Result<Bytes, Refusal>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    if !is_form(parts.headers.get(CONTENT_TYPE)) {
        return Err(Refusal::new(
            OAuthError::InvalidRequest,
            "content_type",
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let max = shared.config.max_body_bytes;
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large(max));
    }
    if parts.headers.contains_key(http::header::AUTHORIZATION) {
        // Only assertions authenticate here; a second, unchecked credential is refused
        // rather than ignored.
        return Err(Refusal::new(
            OAuthError::InvalidClient,
            "authorization_header",
            "client authentication is a JWT-SVID assertion only",
        ));
    }
    let form = parse_form(&read_body(body, max).await?)?;
    if form.client_secret.is_some() {
        return Err(Refusal::new(
            OAuthError::InvalidClient,
            "client_secret",
            "client authentication is a JWT-SVID assertion only",
        ));
    }

    let (grant, assertion) = match form.grant_type.as_deref() {
        None => {
            return Err(Refusal::new(
                OAuthError::InvalidRequest,
                "grant_type_missing",
                "grant_type is required",
            ));
        }
        Some(CLIENT_CREDENTIALS_GRANT) => {
            caller.grant = Some(Grant::ClientCredentials);
            if form.assertion.is_some() {
                return Err(Refusal::new(
                    OAuthError::InvalidRequest,
                    "assertion_with_client_credentials",
                    "client_credentials takes a client_assertion, not an assertion",
                ));
            }
            if form.client_assertion_type.as_deref() != Some(JWT_BEARER_CLIENT_ASSERTION) {
                return Err(Refusal::new(
                    OAuthError::InvalidClient,
                    "client_assertion_type",
                    format!("client_assertion_type must be {JWT_BEARER_CLIENT_ASSERTION}"),
                ));
            }
            let Some(assertion) = form.client_assertion.as_deref() else {
                return Err(Refusal::new(
                    OAuthError::InvalidClient,
                    "client_assertion_missing",
                    "client_assertion is required",
                ));
            };
            (Grant::ClientCredentials, assertion)
        }
        Some(JWT_BEARER_GRANT) => {
            caller.grant = Some(Grant::JwtBearer);
            if form.client_assertion.is_some() || form.client_assertion_type.is_some() {
                return Err(Refusal::new(
                    OAuthError::InvalidRequest,
                    "client_assertion_with_jwt_bearer",
                    "the jwt-bearer grant takes one assertion, not a client_assertion too",
                ));
            }
            let Some(assertion) = form.assertion.as_deref() else {
                return Err(Refusal::new(
                    OAuthError::InvalidRequest,
                    "assertion_missing",
                    "assertion is required",
                ));
            };
            (Grant::JwtBearer, assertion)
        }
        Some(other) => {
            return Err(Refusal::new(
                OAuthError::UnsupportedGrantType,
                "unsupported_grant_type",
                format!("grant_type {:?} is not supported", truncated(other)),
            ));
        }
    };

    match form.resource.as_deref() {
        Some(r) if r == shared.config.resource => {}
        Some(_) => {
            return Err(Refusal::new(
                OAuthError::InvalidTarget,
                "resource_unknown",
                format!(
                    "this server issues tokens for {} only",
                    shared.config.resource
                ),
            ));
        }
        None => {
            return Err(Refusal::new(
                OAuthError::InvalidTarget,
                "resource_missing",
                "resource is required (RFC 8707)",
            ));
        }
    }

    let material = shared.trust.current().ok_or_else(|| {
        Refusal::new(
            OAuthError::ServerError,
            "no_trust_material",
            "the server has no trust material yet",
        )
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
    })?;
    let own_td = material.own_id().trust_domain();
    let bad = |reason: &'static str, description: String| {
        Refusal::new(grant.bad_assertion(), reason, description)
    };
    let Some(bundle) = material.jwt_bundle(own_td) else {
        return Err(Refusal::new(
            OAuthError::ServerError,
            "no_jwt_bundle",
            "the server has no JWT bundle to check assertions with",
        )
        .with_status(StatusCode::SERVICE_UNAVAILABLE));
    };
    let now_unix = unix(now);
    let mut result = Err(JwtSvidError::AudienceMismatch);
    for audience in &shared.audiences {
        result = validate_jwt_svid(assertion, [bundle.as_ref()], audience, now_unix);
        if result != Err(JwtSvidError::AudienceMismatch) {
            break;
        }
    }
    let valid = result.map_err(|e| bad(e.reason(), format!("assertion refused: {e}")))?;
    caller.subject = Some(valid.subject.to_string());
    if let Some(client_id) = form.client_id.as_deref()
        && client_id != valid.claims.sub
    {
        return Err(Refusal::new(
            OAuthError::InvalidClient,
            "client_id_mismatch",
            "client_id does not match the assertion's subject",
        ));
    }

    let requested = match form.scope.as_deref() {
        None => None,
        Some(text) => Some(parse_scopes(text).map_err(|e| {
            Refusal::new(
                OAuthError::InvalidScope,
                "scope_invalid",
                format!("scope: {e}"),
            )
        })?),
    };
    let (subject, scopes) = match (valid.subject, valid.task) {
        (TesseraId::Task(_), Some(task)) => {
            if &task.server != material.own_id() {
                return Err(bad(
                    "task_for_another_server",
                    format!("the task is for {}", task.server),
                ));
            }
            if task.deadline_unix <= now_unix {
                return Err(bad(
                    "task_deadline",
                    "the task's deadline has passed".into(),
                ));
            }
            match shared.revocations.task_status(&task.task_id) {
                RevocationStatus::NotRevoked => {}
                RevocationStatus::Revoked { reason } => {
                    return Err(bad(
                        "task_revoked",
                        format!("the task is revoked ({reason})"),
                    ));
                }
                RevocationStatus::Stale => {
                    return Err(bad(
                        "revocation_feed_stale",
                        "the task's revocation status is unknown (feed stale)".into(),
                    ));
                }
            }
            let scopes = match requested {
                None => task.scopes.clone(),
                Some(requested) => {
                    let uncovered: Vec<&Scope> = requested
                        .iter()
                        .filter(|r| !task.scopes.iter().any(|g| g.covers(r)))
                        .collect();
                    if !uncovered.is_empty() {
                        let names: Vec<String> = uncovered.iter().map(|s| s.to_string()).collect();
                        return Err(Refusal::new(
                            OAuthError::InvalidScope,
                            "scope_not_granted",
                            format!("not within the task's scopes: {}", names.join(" ")),
                        ));
                    }
                    requested
                }
            };
            (GrantSubject::Task(task), scopes)
        }
        (TesseraId::Client(client), None) => {
            if !shared.config.accept_client_identities {
                return Err(Refusal::new(
                    OAuthError::UnauthorizedClient,
                    "client_identity_not_accepted",
                    "this server issues tokens to tasks only",
                ));
            }
            if requested.as_ref().is_some_and(|r| !r.is_empty()) {
                return Err(Refusal::new(
                    OAuthError::InvalidScope,
                    "scope_not_granted",
                    "a client identity has no granted scopes",
                ));
            }
            (GrantSubject::Client(client), Vec::new())
        }
        _ => {
            return Err(Refusal::new(
                OAuthError::UnauthorizedClient,
                "subject_not_accepted",
                "only tasks (and clients, where enabled) get tokens",
            ));
        }
    };

    let cnf = parts.extensions.get::<CertThumbprint>().copied();
    caller.bound = cnf.is_some();
    let grant_spec = AccessTokenGrant {
        subject,
        scopes,
        not_after_unix: Some(valid.claims.exp),
        ttl: shared.config.token_ttl,
        cnf,
    };
    let minted = shared.minter.mint(&grant_spec, now).map_err(|e| match e {
        MintError::NoLifetime => bad("no_lifetime", "no lifetime left for a token".into()),
        other => Refusal::new(OAuthError::ServerError, "mint_failed", other.to_string()),
    })?;
    let (task, client) = match &grant_spec.subject {
        GrantSubject::Task(t) => (Some(t.task_id.to_string()), t.client_id.to_string()),
        GrantSubject::Client(c) => (None, c.to_string()),
    };
    tracing::info!(
        target: AUDIT_TARGET,
        event = "token",
        decision = "allow",
        reason = "issued",
        grant = grant.as_str(),
        subject = caller.subject.as_deref(),
        client = %client,
        task = task.as_deref(),
        scope = %minted.scope,
        jti = %minted.jti,
        exp = minted.exp_unix,
        auth = if caller.bound { "bearer+cnf" } else { "bearer" },
        resource = %shared.config.resource,
        "access token issued"
    );
    let body = serde_json::json!({
        "access_token": minted.token,
        "token_type": "Bearer",
        "expires_in": (minted.exp_unix - now_unix).max(0),
        "scope": join_scopes(&grant_spec.scopes),
    });
    Ok(Bytes::from(serde_json::to_vec(&body).unwrap_or_default()))
}

#[cfg(test)]
mod tests;
