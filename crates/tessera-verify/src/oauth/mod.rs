//! MCP authorization (OAuth 2.1) for a Tessera-protected server: the server is its own
//! co-located authorization server and resource server.
//!
//! | module | concept |
//! |---|---|
//! | [`access_token`] | access tokens (RFC 9068 JWTs signed with the server's own SVID key): mint, verify, cache |
//! | [`token_endpoint`] | `POST /oauth/token`: JWT-SVID assertions (RFC 7523) in, access tokens out |
//! | [`metadata`] | RFC 8414 authorization-server metadata |
//! | [`prm`] | RFC 9728 Protected Resource Metadata: which authorization server mints tokens for this resource |
//! | [`challenge`] | the `WWW-Authenticate: Bearer` challenges (401, 403 `insufficient_scope`) |
//! | [`resource`] | [`BearerAuthLayer`]: the resource server in front of rmcp (which credentials, token checks, step-up) |
//! | [`server`] | [`OAuthServer`]: both of the above for one resource URL, as every Tessera front wires them |
//!
//! Why the server's own X.509-SVID key signs: replicas of one server share an identity,
//! not keys. A token carries its signer's chain (`x5c`); any replica accepts it when the
//! chain verifies against the trust bundle and the leaf is exactly the server's own
//! SPIFFE ID. Nothing to distribute, and signing keys rotate with the SVID.

pub mod access_token;
pub mod challenge;
pub mod metadata;
mod peer;
pub mod prm;
pub mod resource;
pub mod server;
#[cfg(test)]
pub(crate) mod testkit;
pub mod token_endpoint;

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

pub use access_token::{
    AccessTokenError, AccessTokenGrant, AccessTokenMinter, AccessTokenVerifier, GrantSubject,
    MintError, MintedAccessToken, VerifiedAccessToken,
};
pub use metadata::AuthorizationServerMetadata;
pub use prm::{ProtectedResourceMetadata, ResourceMetadataError};
pub use resource::{AcceptedAuth, BearerAuthLayer, BearerAuthService, BearerConfigError};
pub use server::{OAuthServer, OAuthServerError};
pub use token_endpoint::{
    TokenEndpointConfig, TokenEndpointConfigError, TokenEndpointLayer, TokenEndpointService,
};

/// The SHA-256 of a client's leaf certificate DER: what RFC 8705 binds a token to
/// (`cnf.x5t#S256`).
///
/// A server that accepts mTLS inserts one per TLS connection into the request
/// extensions, beside the `Arc<Peer>`: the token endpoint binds the tokens it issues on
/// that connection to it, and the resource server refuses a bound token on a connection
/// that did not present that certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertThumbprint([u8; 32]);

impl CertThumbprint {
    /// The thumbprint of a certificate (DER).
    pub fn of_der(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// The thumbprint from its `x5t#S256` form (base64url, no padding).
    ///
    /// `None` if the text is not 32 bytes of base64url.
    pub fn from_base64url(text: &str) -> Option<Self> {
        // 32 bytes are 43 characters; anything longer is refused before decoding.
        if text.len() != 43 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// The `x5t#S256` form: base64url without padding.
    pub fn to_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for CertThumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertThumbprint({})", self.to_base64url())
    }
}
