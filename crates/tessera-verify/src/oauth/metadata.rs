//! RFC 8414 authorization-server metadata of the co-located token endpoint.
//!
//! Served at `/.well-known/oauth-authorization-server` (with the issuer's path, if any,
//! appended, RFC 8414 §3.1). It names the one thing this authorization server does:
//! access tokens for JWT-SVID assertions at the token endpoint.

use serde::Serialize;

/// The grant type of RFC 7523 §2.1 (an assertion as the grant).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The client assertion type of RFC 7523 §2.2 (an assertion as client authentication).
pub const JWT_BEARER_CLIENT_ASSERTION: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The `client_credentials` grant type (RFC 6749 §4.4).
pub const CLIENT_CREDENTIALS_GRANT: &str = "client_credentials";

/// Path of the metadata document for an issuer without a path.
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// The token endpoint's path under the issuer.
pub const TOKEN_PATH: &str = "/oauth/token";

/// The authorization endpoint's path under the issuer: it exists because RFC 8414 (and
/// MCP SDKs parsing the metadata) require one, and refuses every request
/// (`unsupported_response_type`): Tessera has no interactive flow.
pub const AUTHORIZE_PATH: &str = "/oauth/authorize";

/// The metadata document (RFC 8414 §2), as served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuthorizationServerMetadata {
    /// The issuer identifier: the resource's origin unless configured.
    pub issuer: String,
    /// `{issuer}/oauth/authorize` (refuses everything; see [`AUTHORIZE_PATH`]).
    pub authorization_endpoint: String,
    /// `{issuer}/oauth/token`.
    pub token_endpoint: String,
    /// Empty: no response type of the authorization endpoint is supported.
    pub response_types_supported: Vec<String>,
    /// `client_credentials` and the JWT bearer grant.
    pub grant_types_supported: Vec<String>,
    /// `private_key_jwt` (the JWT-SVID is the client assertion).
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// `ES256`: what JWT-SVIDs are signed with.
    pub token_endpoint_auth_signing_alg_values_supported: Vec<String>,
    /// RFC 8705 §3.3: tokens requested over mTLS are bound to the client certificate.
    pub tls_client_certificate_bound_access_tokens: bool,
}

impl AuthorizationServerMetadata {
    /// The metadata of `issuer` (no trailing `/`).
    pub fn new(issuer: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            authorization_endpoint: format!("{issuer}{AUTHORIZE_PATH}"),
            token_endpoint: format!("{issuer}{TOKEN_PATH}"),
            response_types_supported: Vec::new(),
            grant_types_supported: vec![CLIENT_CREDENTIALS_GRANT.into(), JWT_BEARER_GRANT.into()],
            token_endpoint_auth_methods_supported: vec!["private_key_jwt".into()],
            token_endpoint_auth_signing_alg_values_supported: vec!["ES256".into()],
            tls_client_certificate_bound_access_tokens: true,
        }
    }

    /// The document as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and lists serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}
