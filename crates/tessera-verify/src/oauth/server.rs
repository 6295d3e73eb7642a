//! [`OAuthServer`]: the token endpoint and the resource server of one protected MCP
//! endpoint, built together from the few things an operator decides (the resource URL
//! clients dial, which credentials count, the tokens' lifetime), so every Tessera front
//! (a linked server, tessera-gateway) wires the bearer path the same way.

use std::sync::Arc;
use std::time::Duration;

use super::{
    AcceptedAuth, AccessTokenVerifier, BearerAuthLayer, BearerConfigError,
    ProtectedResourceMetadata, ResourceMetadataError, TokenEndpointConfig,
    TokenEndpointConfigError, TokenEndpointLayer,
};
use crate::{Authorizer, RevocationWatcher, TrustSource};

/// A bearer path that cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OAuthServerError {
    /// The resource URL is not one a client could dial as written.
    #[error("resource URL {resource:?}: {reason}")]
    BadResource {
        /// The URL given.
        resource: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The token endpoint refused its configuration (e.g. a lifetime out of bounds).
    #[error("the token endpoint's configuration: {0}")]
    TokenEndpoint(#[from] TokenEndpointConfigError),
    /// The Protected Resource Metadata refused the resource or issuer.
    #[error("the protected resource metadata: {0}")]
    Metadata(#[from] ResourceMetadataError),
    /// The resource server refused the accepted credentials.
    #[error("the bearer layer: {0}")]
    Bearer(#[from] BearerConfigError),
}

/// The co-located authorization server (token endpoint, RFC 8414 metadata) and resource
/// server (RFC 9728 metadata, the bearer check, step-up) for one resource URL.
#[derive(Clone, Debug)]
pub struct OAuthServer {
    resource: String,
    issuer: String,
    accepted: AcceptedAuth,
    token_ttl: Option<Duration>,
    resource_name: Option<String>,
}

impl OAuthServer {
    /// For `resource`, the URL clients dial (`https://host:port/path`); the issuer (the
    /// audience of the JWT-SVIDs clients trade) is its origin.
    ///
    /// # Errors
    /// [`OAuthServerError::BadResource`] for anything but a plain `https` URL with a host
    /// (no userinfo, query or fragment: RFC 8707).
    pub fn new(resource: &str, accepted: AcceptedAuth) -> Result<Self, OAuthServerError> {
        let issuer = origin(resource)?;
        Ok(Self {
            resource: resource.to_owned(),
            issuer,
            accepted,
            token_ttl: None,
            resource_name: None,
        })
    }

    /// The lifetime of the tokens issued (checked by [`TokenEndpointConfig`]: 10 s ..= 1 h).
    pub fn with_token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = Some(ttl);
        self
    }

    /// A human-readable name in the Protected Resource Metadata.
    pub fn with_resource_name(mut self, name: impl Into<String>) -> Self {
        self.resource_name = Some(name.into());
        self
    }

    /// The resource URL, exactly as given.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The issuer: the resource's origin.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The credentials accepted.
    pub fn accepted(&self) -> AcceptedAuth {
        self.accepted
    }

    /// The token endpoint and the resource server, to stack in that order in front of
    /// the MCP service: a bearer caller then reaches the service with an `Arc<Peer>` in
    /// its extensions exactly where a client certificate would have put one. Both sign or
    /// check with the server's own SVID from `trust` and follow `revocations`; the
    /// resource server decides with `authz`.
    ///
    /// # Errors
    /// A token lifetime out of bounds, or an issuer or resource the metadata refuses.
    pub fn layers(
        &self,
        trust: TrustSource,
        revocations: RevocationWatcher,
        authz: Arc<Authorizer>,
    ) -> Result<(TokenEndpointLayer, BearerAuthLayer), OAuthServerError> {
        let mut config = TokenEndpointConfig::new(&self.resource)?.with_issuer(&self.issuer)?;
        if let Some(ttl) = self.token_ttl {
            config = config.with_token_ttl(ttl)?;
        }
        let token_endpoint = TokenEndpointLayer::new(config, trust.clone(), revocations.clone());
        let verifier = AccessTokenVerifier::new(trust, &self.issuer, &self.resource)
            .with_revocations(revocations);
        // No scopes_supported: an SDK asks for all it lists when a challenge names none,
        // and a task holds only some; without it the token gets the task's own scopes.
        let mut metadata = ProtectedResourceMetadata::new(&self.resource, &self.issuer)?;
        if let Some(name) = &self.resource_name {
            metadata = metadata.with_resource_name(name);
        }
        let bearer = BearerAuthLayer::new(verifier, authz, metadata, self.accepted)?;
        Ok((token_endpoint, bearer))
    }
}

/// `https://host:port` of an `https://host:port/path` resource URL, refusing anything a
/// client could not dial as written (userinfo, query, fragment, another scheme).
fn origin(resource: &str) -> Result<String, OAuthServerError> {
    let bad = |reason| OAuthServerError::BadResource {
        resource: resource.to_owned(),
        reason,
    };
    let rest = resource
        .strip_prefix("https://")
        .ok_or_else(|| bad("must be an https:// URL"))?;
    if rest.contains(['?', '#', '@']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("no userinfo, query or fragment (RFC 8707)"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    Ok(format!("https://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issuer_is_the_resource_origin() {
        let s =
            OAuthServer::new("https://mcp.acme.corp:8443/github/mcp", AcceptedAuth::BOTH).unwrap();
        assert_eq!(s.issuer(), "https://mcp.acme.corp:8443");
        assert_eq!(s.resource(), "https://mcp.acme.corp:8443/github/mcp");
    }

    #[test]
    fn a_resource_a_client_could_not_dial_as_written_is_refused() {
        for bad in [
            "http://h/mcp",
            "https://u@h/mcp",
            "https://h/mcp?x=1",
            "https://h/mcp#f",
            "https:///mcp",
            "https://h /mcp",
        ] {
            assert!(
                matches!(
                    OAuthServer::new(bad, AcceptedAuth::BEARER),
                    Err(OAuthServerError::BadResource { .. })
                ),
                "{bad}"
            );
        }
    }
}
