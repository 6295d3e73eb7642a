//! Bearer mode: the MCP authorization specification's machine-to-machine path, fed by
//! the task's identity instead of a client certificate.
//!
//! 1. [`discover`]: a request without a credential is answered `401` with
//!    `WWW-Authenticate: Bearer resource_metadata="…"`; that Protected Resource Metadata
//!    (RFC 9728) names the authorization server, whose RFC 8414 metadata names the token
//!    endpoint. Each document is checked against where it came from (`resource` = the URL
//!    dialled, `issuer` = the server named), so a server cannot send the assertion elsewhere.
//! 2. [`Workload::task_jwt`]: the task's JWT-SVID from `FetchJWTSVID`, audience = the issuer.
//! 3. [`request_token`]: `client_credentials` with `private_key_jwt` (RFC 7523 §2.2) and
//!    `resource` (RFC 8707).
//! 4. [`McpConnection::connect_bearer`]: rmcp with `Authorization: Bearer`, TLS that checks
//!    the server's SPIFFE ID and presents no client certificate ([`server_only_tls`]).

use std::fmt;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use tessera_identity::ServerId;

use crate::{McpConnection, Workload, http_client};

/// Bound on a metadata document or token response: each is a few hundred bytes; a server
/// that sends more is not one to trust.
const MAX_DOCUMENT: usize = 64 * 1024;

/// `client_assertion_type` for a JWT (RFC 7523 §2.2).
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Where to get a token for an MCP URL, as the server's metadata says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    /// The Protected Resource Metadata URL from the `401` challenge.
    pub resource_metadata: String,
    /// The resource (RFC 8707 `resource`): exactly the URL dialled.
    pub resource: String,
    /// The authorization server's issuer: the assertion's audience.
    pub issuer: String,
    /// The token endpoint.
    pub token_endpoint: String,
}

/// An access token from the token endpoint. `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    /// The token: a credential, never logged.
    pub token: String,
    /// The scopes granted, space-separated.
    pub scope: String,
    /// Lifetime in seconds from issuance.
    pub expires_in: u64,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("scope", &self.scope)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Why the token endpoint gave no token.
#[derive(Debug)]
pub enum TokenError {
    /// The endpoint refused, with an RFC 6749 §5.2 error.
    Refused {
        /// HTTP status (400, or 401 for `invalid_client`).
        status: u16,
        /// The `error` code, e.g. `invalid_scope`.
        error: String,
        /// The `error_description`, if any.
        description: String,
    },
    /// No answer that could be read as one.
    Transport(anyhow::Error),
}

impl TokenError {
    /// The RFC 6749 error code, when the endpoint refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            TokenError::Refused { error, .. } => Some(error),
            TokenError::Transport(_) => None,
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Refused {
                status,
                error,
                description,
            } => write!(
                f,
                "token endpoint refused ({status} {error}): {description}"
            ),
            TokenError::Transport(e) => write!(f, "token request failed: {e:#}"),
        }
    }
}

impl std::error::Error for TokenError {}

/// A rustls client config for bearer mode: no client certificate; the server must present
/// exactly `spiffe://<td>/mcp/<server>` chaining to `bundle` (ALPN h2, http/1.1).
///
/// # Errors
/// For an unusable bundle or an invalid server name.
pub fn server_only_tls(
    bundle: Vec<CertificateDer<'static>>,
    trust_domain: &str,
    server: &str,
) -> anyhow::Result<rustls::ClientConfig> {
    let expected: ServerId = format!("spiffe://{trust_domain}/mcp/{server}")
        .parse()
        .map_err(|e| anyhow!("server {server:?}: {e}"))?;
    let mut cfg = tessera_verify::tls::client_config_without_certificate(&expected, bundle)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

#[derive(Deserialize)]
struct ResourceMetadata {
    resource: String,
    authorization_servers: Vec<String>,
}

#[derive(Deserialize)]
struct ServerMetadata {
    issuer: String,
    token_endpoint: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    expires_in: u64,
    #[serde(default)]
    scope: String,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Follows the specification's discovery from an unauthenticated request to `url`.
///
/// # Errors
/// When the server does not challenge, or a document is missing, oversized, or names
/// another resource or issuer than the one it was fetched for.
pub async fn discover(http: &reqwest::Client, url: &str) -> anyhow::Result<Discovery> {
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":0,"method":"ping"}"#)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
        bail!(
            "{url} answered {} without a credential, not 401",
            resp.status()
        );
    }
    let challenge = resp
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .context("401 without a WWW-Authenticate header")?;
    let resource_metadata = auth_param(challenge, "resource_metadata")
        .context("the challenge names no resource_metadata")?;
    let prm: ResourceMetadata = get_json(http, &resource_metadata).await?;
    // RFC 9728 §3.3: metadata for another resource is not metadata for this one.
    if prm.resource != url {
        bail!(
            "protected resource metadata is for {:?}, not {url:?}",
            prm.resource
        );
    }
    let issuer = prm
        .authorization_servers
        .first()
        .context("the resource names no authorization server")?
        .clone();
    let as_url = format!(
        "{}/.well-known/oauth-authorization-server{}",
        origin(&issuer)?,
        path_of(&issuer)
    );
    let asm: ServerMetadata = get_json(http, &as_url).await?;
    // RFC 8414 §3.3: the issuer in the document is the one it was asked for.
    if asm.issuer != issuer {
        bail!(
            "authorization server metadata names {:?}, fetched for {issuer:?}",
            asm.issuer
        );
    }
    Ok(Discovery {
        resource_metadata,
        resource: prm.resource,
        issuer,
        token_endpoint: asm.token_endpoint,
    })
}

/// Asks the token endpoint for an access token for `discovery.resource`, authenticating
/// with `assertion` (a JWT-SVID whose audience is the issuer). `scope` `None` asks for
/// all of the task's scopes.
///
/// # Errors
/// [`TokenError::Refused`] with the endpoint's RFC 6749 error, or [`TokenError::Transport`].
pub async fn request_token(
    http: &reqwest::Client,
    discovery: &Discovery,
    assertion: &str,
    scope: Option<&str>,
) -> Result<AccessToken, TokenError> {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER_ASSERTION),
        ("client_assertion", assertion),
        ("resource", discovery.resource.as_str()),
    ];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&form)
        .finish();
    let resp = http
        .post(&discovery.token_endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| TokenError::Transport(e.into()))?;
    let status = resp.status();
    let bytes = read_bounded(resp).await.map_err(TokenError::Transport)?;
    if !status.is_success() {
        let e: ErrorResponse = serde_json::from_slice(&bytes)
            .map_err(|e| TokenError::Transport(anyhow!("token endpoint answered {status}: {e}")))?;
        return Err(TokenError::Refused {
            status: status.as_u16(),
            error: e.error,
            description: e.error_description,
        });
    }
    let t: TokenResponse = serde_json::from_slice(&bytes)
        .map_err(|e| TokenError::Transport(anyhow!("token response: {e}")))?;
    if !t.token_type.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Transport(anyhow!(
            "token_type {:?}, not Bearer",
            t.token_type
        )));
    }
    Ok(AccessToken {
        token: t.access_token,
        scope: t.scope,
        expires_in: t.expires_in,
    })
}

impl Workload {
    /// The task's JWT-SVID (`FetchJWTSVID` for `task_spiffe_id`) with `audience`.
    ///
    /// # Errors
    /// When the Workload API refuses (e.g. the task ended or is not this process's).
    pub async fn task_jwt(&self, task_spiffe_id: &str, audience: &str) -> anyhow::Result<String> {
        let client = self.spiffe_client().await?;
        let id: spiffe::SpiffeId = task_spiffe_id
            .parse()
            .map_err(|e| anyhow!("task SPIFFE ID {task_spiffe_id:?}: {e}"))?;
        client
            .fetch_jwt_token([audience], Some(&id))
            .await
            .context("FetchJWTSVID")
    }

    /// The CA certificates of `trust_domain` from `FetchX509Bundles`: what a bearer-mode
    /// runtime checks the server's certificate against.
    ///
    /// # Errors
    /// When the Workload API fails or has no bundle for `trust_domain`.
    pub async fn x509_bundle(
        &self,
        trust_domain: &str,
    ) -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let client = self.spiffe_client().await?;
        let td: spiffe::TrustDomain = trust_domain
            .parse()
            .map_err(|e| anyhow!("trust domain {trust_domain:?}: {e}"))?;
        let set = client
            .fetch_x509_bundles()
            .await
            .context("FetchX509Bundles")?;
        let bundle = set
            .get(&td)
            .with_context(|| format!("no X.509 bundle for {trust_domain}"))?;
        Ok(bundle
            .authorities()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect())
    }

    async fn spiffe_client(&self) -> anyhow::Result<spiffe::WorkloadApiClient> {
        spiffe::WorkloadApiClient::connect_to(format!("unix://{}", self.socket().display()))
            .await
            .context("Workload API")
    }
}

impl McpConnection {
    /// Connects and initializes an MCP session at `url`, sending `token` as
    /// `Authorization: Bearer` on every request; `tls` presents no client certificate
    /// (see [`server_only_tls`]).
    ///
    /// # Errors
    /// TLS refusal, HTTP failure (a `401` for a refused token), or a failed `initialize`.
    pub async fn connect_bearer(
        url: &str,
        tls: rustls::ClientConfig,
        token: &AccessToken,
    ) -> anyhow::Result<Self> {
        let http = http_client(tls)?;
        let transport = StreamableHttpClientTransport::with_client(
            http,
            StreamableHttpClientTransportConfig::with_uri(url.to_owned())
                .auth_header(token.token.clone()),
        );
        let client = rmcp::model::ClientConfig::default()
            .serve(transport)
            .await
            .map_err(|e| anyhow!("MCP initialize with {url}: {e}"))?;
        Ok(Self { client })
    }
}

/// Bearer mode end to end for an already begun task: discovery, the task's JWT-SVID, the
/// token, then an MCP session. Returns the session, the token and what was discovered.
///
/// # Errors
/// Any step's failure, naming the step.
pub async fn connect_task_bearer(
    workload: &Workload,
    url: &str,
    task_spiffe_id: &str,
    server: &str,
    scope: Option<&str>,
) -> anyhow::Result<(McpConnection, AccessToken, Discovery)> {
    let td = task_spiffe_id
        .strip_prefix("spiffe://")
        .and_then(|s| s.split('/').next())
        .with_context(|| format!("task SPIFFE ID {task_spiffe_id:?}"))?;
    let tls = server_only_tls(workload.x509_bundle(td).await?, td, server)?;
    let http = http_client(tls.clone())?;
    let discovery = discover(&http, url).await?;
    let assertion = workload.task_jwt(task_spiffe_id, &discovery.issuer).await?;
    let token = request_token(&http, &discovery, &assertion, scope).await?;
    let conn = McpConnection::connect_bearer(url, tls, &token).await?;
    Ok((conn, token, discovery))
}

/// The value of `name` in a `WWW-Authenticate: Bearer` challenge (quoted or token form).
fn auth_param(challenge: &str, name: &str) -> Option<String> {
    if challenge.len() > 8 * 1024 {
        return None;
    }
    let rest = challenge.trim_start();
    let rest = rest
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("bearer "))
        .map(|_| &rest[7..])?;
    let mut s = rest;
    loop {
        s = s.trim_start_matches([' ', ',']);
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        s = &s[eq + 1..];
        let value;
        if let Some(quoted) = s.strip_prefix('"') {
            let end = quoted.find('"')?;
            value = &quoted[..end];
            s = &quoted[end + 1..];
        } else {
            let end = s.find(',').unwrap_or(s.len());
            value = s[..end].trim();
            s = &s[end..];
        }
        if key.eq_ignore_ascii_case(name) {
            return Some(value.to_owned());
        }
        if s.is_empty() {
            return None;
        }
    }
}

fn origin(url: &str) -> anyhow::Result<String> {
    let u = reqwest::Url::parse(url).with_context(|| format!("URL {url:?}"))?;
    if u.scheme() != "https" {
        bail!("{url:?} is not https");
    }
    Ok(u.origin().ascii_serialization())
}

fn path_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| u.path().trim_end_matches('/').to_owned())
        .unwrap_or_default()
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> anyhow::Result<T> {
    origin(url)?;
    let resp = http
        .get(url)
        .header("accept", "application/json")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("GET {url}: {}", resp.status());
    }
    let bytes = read_bounded(resp).await?;
    serde_json::from_slice(&bytes).with_context(|| format!("GET {url}: not the expected JSON"))
}

async fn read_bounded(mut resp: reqwest::Response) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > MAX_DOCUMENT {
            bail!("response larger than {MAX_DOCUMENT} bytes");
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resource_metadata_url_is_read_from_a_challenge_in_any_order() {
        let c = r#"Bearer error="invalid_token", error_description="expired, sorry", resource_metadata="https://h:1/.well-known/oauth-protected-resource/mcp""#;
        assert_eq!(
            auth_param(c, "resource_metadata").as_deref(),
            Some("https://h:1/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(auth_param(c, "error").as_deref(), Some("invalid_token"));
        assert_eq!(auth_param("Basic realm=x", "realm"), None);
        assert_eq!(auth_param("bearer scope=a", "scope").as_deref(), Some("a"));
        assert_eq!(auth_param(r#"Bearer x="unterminated"#, "x"), None);
    }

    #[test]
    fn a_token_is_never_in_debug_output() {
        let t = AccessToken {
            token: "eyJsecret".into(),
            scope: "s".into(),
            expires_in: 1,
        };
        assert!(!format!("{t:?}").contains("eyJsecret"));
    }
}
