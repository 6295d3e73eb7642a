//! The bearer path's flags: which credentials callers may present, the resource URL
//! clients dial (and so the issuer and every well-known URL), and the access tokens'
//! lifetime; checked once at start-up into an [`OAuthPlan`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tessera_verify::oauth::{AcceptedAuth, BearerAuthLayer, OAuthServer, TokenEndpointLayer};
use tessera_verify::{Authorizer, RevocationWatcher, TrustSource};

/// Shortest and longest access-token lifetime this server issues: below 10 s a client
/// spends more time getting tokens than using them; above an hour a leaked token lives
/// longer than a task SVID's default lifetime twelve times over.
const TOKEN_TTL_BOUNDS: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(3600));

/// Which credentials a caller may present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Accept {
    /// A task (or client) X.509-SVID as the TLS client certificate; nothing else.
    Mtls,
    /// An access token from this server's token endpoint (`Authorization: Bearer`); a
    /// client certificate alone is not a credential.
    Bearer,
    /// Either. A request with both must carry a token bound to that certificate.
    Both,
}

/// Flags of the bearer path (MCP authorization: OAuth 2.1 with this server as its own
/// authorization server).
#[derive(Debug, Args)]
pub(crate) struct OAuthArgs {
    /// Which credentials callers may present: mtls (a task SVID as client certificate;
    /// no token endpoint, no metadata), bearer (an access token from this server's token
    /// endpoint; client certificates optional and never enough alone), or both.
    #[arg(long, value_enum, default_value_t = Accept::Mtls, env = "TESSERA_MCP_ACCEPT")]
    pub(crate) accept: Accept,

    /// Refuse access tokens that are not bound to the client certificate of the
    /// connection they arrive on (RFC 8705 `cnf`): the token endpoint binds a token when
    /// the request for it came over mTLS, and a stolen bound token is useless without the
    /// task's private key. Needs --accept both.
    #[arg(long, env = "TESSERA_MCP_REQUIRE_CERT_BOUND_TOKENS")]
    pub(crate) require_cert_bound_tokens: bool,

    /// The URL clients dial, e.g. https://github-mcp.internal:8443/mcp: the OAuth
    /// resource (RFC 8707 / RFC 9728) every token must be for. Its origin is the issuer
    /// (the audience of the JWT-SVIDs clients present) and where the metadata and token
    /// endpoint are served. Default https://<listen address>/mcp; set it when clients
    /// reach this server by a name or through a load balancer.
    #[arg(long, env = "TESSERA_MCP_RESOURCE_URL")]
    pub(crate) resource_url: Option<String>,

    /// Lifetime of the access tokens this server issues, e.g. 5m, 90s (10s to 1h). A
    /// token never outlives the assertion it was issued for, the task's deadline, or this
    /// server's SVID, whichever ends first.
    #[arg(long, default_value = "5m", value_parser = parse_ttl, env = "TESSERA_MCP_TOKEN_TTL")]
    pub(crate) token_ttl: Duration,
}

/// What the bearer path will serve, once the listen address is known.
#[derive(Clone, Debug)]
pub(crate) struct OAuthPlan {
    /// Accepts client certificates as credentials.
    pub(crate) mtls: bool,
    /// Bearer tokens only when bound to the connection's certificate.
    pub(crate) require_cert_bound_tokens: bool,
    /// The resource URL, exactly as clients dial it.
    pub(crate) resource: String,
    /// The issuer: the resource's origin.
    pub(crate) issuer: String,
    /// Token lifetime.
    pub(crate) token_ttl: Duration,
}

impl OAuthPlan {
    /// The credentials accepted, in the library's terms.
    pub(crate) fn accepted(&self) -> AcceptedAuth {
        let a = if self.mtls {
            AcceptedAuth::BOTH
        } else {
            AcceptedAuth::BEARER
        };
        if self.require_cert_bound_tokens {
            a.require_cert_bound_tokens()
        } else {
            a
        }
    }

    /// The token endpoint (with its RFC 8414 metadata) and the resource server (RFC 9728
    /// metadata, the bearer check, step-up), to stack in that order in front of the MCP
    /// service: tessera-verify's [`OAuthServer`], as tessera-gateway builds it too.
    ///
    /// # Errors
    /// A resource or issuer the library refuses.
    pub(crate) fn layers(
        &self,
        trust: TrustSource,
        revocations: RevocationWatcher,
        authz: Arc<Authorizer>,
    ) -> anyhow::Result<(TokenEndpointLayer, BearerAuthLayer)> {
        Ok(OAuthServer::new(&self.resource, self.accepted())?
            .with_token_ttl(self.token_ttl)
            .with_resource_name("tessera example MCP server (github)")
            .layers(trust, revocations, authz)?)
    }
}

impl OAuthArgs {
    /// The host of --resource-url (without port or brackets): clients send it as `Host`,
    /// so rmcp's Host check must accept it.
    pub(crate) fn resource_host(&self) -> Option<String> {
        let rest = self.resource_url.as_deref()?.strip_prefix("https://")?;
        let authority = rest.split('/').next()?;
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next()?,
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        (!host.is_empty()).then(|| host.to_owned())
    }

    /// Checks the flags; `None` for an mTLS-only server.
    ///
    /// # Errors
    /// A flag that needs bearer on an mTLS-only server, cert-bound tokens without mTLS,
    /// or a resource URL that is not a plain `https` URL.
    pub(crate) fn plan(&self, listen: SocketAddr) -> anyhow::Result<Option<OAuthPlan>> {
        if self.accept == Accept::Mtls {
            if self.require_cert_bound_tokens || self.resource_url.is_some() {
                bail!(
                    "--require-cert-bound-tokens and --resource-url are for bearer tokens; \
                     add --accept both (or bearer)"
                );
            }
            return Ok(None);
        }
        let resource = match &self.resource_url {
            Some(u) => u.clone(),
            None => format!("https://{listen}/mcp"),
        };
        let mtls = self.accept == Accept::Both;
        // The library checks the URL and derives the issuer, as it will when serving.
        let issuer = OAuthServer::new(&resource, AcceptedAuth::BOTH)
            .with_context(|| format!("--resource-url {resource:?}"))?
            .issuer()
            .to_owned();
        Ok(Some(OAuthPlan {
            mtls,
            require_cert_bound_tokens: self.require_cert_bound_tokens,
            resource,
            issuer,
            token_ttl: self.token_ttl,
        }))
    }
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    let (min, max) = TOKEN_TTL_BOUNDS;
    if d < min || d > max {
        return Err(format!("{s:?}: must be between 10s and 1h"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(accept: Accept, bound: bool, url: Option<&str>) -> OAuthArgs {
        OAuthArgs {
            accept,
            require_cert_bound_tokens: bound,
            resource_url: url.map(str::to_owned),
            token_ttl: Duration::from_secs(300),
        }
    }

    const LISTEN: &str = "127.0.0.1:8443";

    #[test]
    fn the_resource_defaults_to_the_listen_address_and_its_origin_is_the_issuer() {
        let plan = args(Accept::Both, false, None)
            .plan(LISTEN.parse().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(plan.resource, "https://127.0.0.1:8443/mcp");
        assert_eq!(plan.issuer, "https://127.0.0.1:8443");
        assert!(plan.mtls);
        let plan = args(
            Accept::Bearer,
            false,
            Some("https://mcp.acme.corp/github/mcp"),
        )
        .plan(LISTEN.parse().unwrap())
        .unwrap()
        .unwrap();
        assert_eq!(plan.issuer, "https://mcp.acme.corp");
        assert!(!plan.mtls);
    }

    #[test]
    fn flags_that_cannot_work_together_are_refused_at_start() {
        let listen = LISTEN.parse().unwrap();
        assert!(
            args(Accept::Mtls, false, None)
                .plan(listen)
                .unwrap()
                .is_none()
        );
        assert!(args(Accept::Mtls, true, None).plan(listen).is_err());
        assert!(
            args(Accept::Mtls, false, Some("https://h/mcp"))
                .plan(listen)
                .is_err()
        );
        // Bound tokens with bearer only: a certificate is needed, but is no credential alone.
        let plan = args(Accept::Bearer, true, None)
            .plan(listen)
            .unwrap()
            .unwrap();
        assert!(!plan.accepted().allows_connections_without_certificate());
        assert!(!plan.accepted().mtls);
        for bad in [
            "http://h/mcp",
            "https://u@h/mcp",
            "https://h/mcp?x=1",
            "https://h/mcp#f",
            "https:///mcp",
        ] {
            assert!(
                args(Accept::Both, false, Some(bad)).plan(listen).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_resource_host_is_what_clients_send_as_host() {
        let host = |u: &str| args(Accept::Both, false, Some(u)).resource_host();
        assert_eq!(
            host("https://mcp.acme.corp:8443/mcp").as_deref(),
            Some("mcp.acme.corp")
        );
        assert_eq!(
            host("https://mcp.acme.corp/mcp").as_deref(),
            Some("mcp.acme.corp")
        );
        assert_eq!(host("https://[::1]:8443/mcp").as_deref(), Some("::1"));
        assert_eq!(args(Accept::Both, false, None).resource_host(), None);
    }

    #[test]
    fn token_lifetimes_are_bounded() {
        assert_eq!(parse_ttl("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_ttl("10s"), Ok(Duration::from_secs(10)));
        assert!(parse_ttl("9s").is_err());
        assert!(parse_ttl("2h").is_err());
        assert!(parse_ttl("soon").is_err());
    }
}
