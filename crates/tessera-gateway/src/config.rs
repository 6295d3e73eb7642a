//! The gateway's configuration: a TOML file, then `TESSERA_GATEWAY_*` environment
//! overrides, then checks that fail before anything is started.
//!
//! ```toml
//! # The identity the gateway serves as: spiffe://<trust_domain>/mcp/<server_name>.
//! trust_domain = "acme.corp"
//! server_name = "github"
//! # The agent's workload socket: the gateway's SVID, the bundle, the revocation feed.
//! workload_socket = "/run/tessera/workload.sock"
//! listen = "0.0.0.0:8443"          # TLS (mTLS with task SVIDs)
//! # Bearer tokens too (optional): mtls (default), bearer or both. With bearer or both the
//! # gateway serves /oauth/token and the RFC 8414 / RFC 9728 metadata.
//! # accept = "both"
//! # require_cert_bound_tokens = false   # true: tokens bound to the connection's cert (RFC 8705)
//! # resource_url = "https://github-mcp.internal:8443/mcp"   # default https://<listen>/mcp
//! # token_ttl_secs = 300                # 10 ..= 3600
//! ops_listen = "127.0.0.1:9090"    # plain HTTP: /healthz, /readyz, /metrics
//! policies = "/etc/tessera/github.cedar"
//! schema = "/etc/tessera/github.cedarschema"
//! audit_log = "/var/log/tessera/gateway-audit.jsonl"   # optional
//!
//! [upstream]                       # exactly one of http, unix, stdio
//! http = "http://127.0.0.1:8080/mcp"
//! # unix = "/run/mcp/server.sock"
//! # path = "/mcp"                  # the MCP path on the unix socket
//! # [upstream.stdio]
//! # command = "npx"
//! # args = ["-y", "@modelcontextprotocol/server-filesystem", "/data"]
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tessera_verify::oauth::{AcceptedAuth, OAuthServer};

use crate::upstream::stdio::StdioConfig;

/// The default bound on a request body: the same 4 MiB the bearer path reads at most.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// The default bound on a JSON list result the gateway has to read whole to filter.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Everything the gateway is told.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The trust domain, e.g. `acme.corp`.
    pub trust_domain: String,
    /// This gateway's server name: its identity is `spiffe://<td>/mcp/<server_name>`,
    /// the server tasks are granted scopes on.
    pub server_name: String,
    /// The agent's workload socket (path or `unix:///path`).
    pub workload_socket: String,
    /// The TLS listener for MCP clients.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The plain-HTTP listener for `/healthz`, `/readyz` and `/metrics`; none when absent.
    #[serde(default)]
    pub ops_listen: Option<SocketAddr>,
    /// Cedar policies (reloaded when the file changes).
    pub policies: PathBuf,
    /// The Cedar schema the policies are validated against.
    pub schema: PathBuf,
    /// Also write every decision as a JSON line here.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// Answer a refused `tools/call` as "Unknown tool" instead of naming the reason.
    #[serde(default)]
    pub hide_denied_tools: bool,
    /// Refuse task credentials once the revocation feed has been down this long.
    #[serde(default = "default_staleness")]
    pub revocation_staleness_secs: u64,
    /// How long to wait at start-up for the SVID and a current revocation feed.
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_secs: u64,
    /// The largest request body accepted (bytes); larger is refused with 413.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// The largest JSON list result read to be filtered (bytes); larger is a 502.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Most MCP sessions bound at once, and per task (see `SessionLimits`).
    #[serde(default)]
    pub max_sessions: Option<usize>,
    /// Most MCP sessions one task holds at once.
    #[serde(default)]
    pub max_sessions_per_peer: Option<usize>,
    /// Send the caller's identity headers (`Tessera-Client`, ...) to an upstream that is
    /// neither on loopback nor a unix socket. Off: a remote upstream gets none.
    #[serde(default)]
    pub identity_headers_to_remote: bool,
    /// Benchmark baseline only: keep mTLS (certificates verified at the handshake) but
    /// forward every request unparsed and unchecked. Never protects anything.
    #[serde(default)]
    pub dangerous_pass_through: bool,
    /// Which credentials callers may present: `mtls` (a task SVID as the TLS client
    /// certificate), `bearer` (an access token from the gateway's own token endpoint;
    /// a client certificate is optional and never enough alone) or `both`.
    #[serde(default)]
    pub accept: Accept,
    /// Refuse access tokens not bound to the client certificate of the connection they
    /// arrive on (RFC 8705): a stolen bound token is useless without the task's key.
    /// Needs `accept = "both"` (or `"bearer"`, which then still requires a certificate).
    #[serde(default)]
    pub require_cert_bound_tokens: bool,
    /// The URL clients dial, e.g. `https://github-mcp.internal:8443/mcp`: the OAuth
    /// resource every token is for; its origin is the issuer (the audience of the
    /// JWT-SVIDs tasks trade at the token endpoint). Default `https://<listen>/mcp`.
    #[serde(default)]
    pub resource_url: Option<String>,
    /// Lifetime of the access tokens the gateway issues, 10 to 3600 seconds (a token
    /// never outlives its assertion, the task's deadline or the gateway's SVID).
    #[serde(default = "default_token_ttl")]
    pub token_ttl_secs: u64,
    /// The upstream MCP server.
    pub upstream: UpstreamConfig,
}

/// Which credentials callers may present (`accept`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accept {
    /// A task (or client) X.509-SVID as the TLS client certificate; no token endpoint.
    #[default]
    Mtls,
    /// An access token from the gateway's token endpoint (`Authorization: Bearer`).
    Bearer,
    /// Either; a request with both must carry a token bound to that certificate.
    Both,
}

impl std::str::FromStr for Accept {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mtls" => Ok(Self::Mtls),
            "bearer" => Ok(Self::Bearer),
            "both" => Ok(Self::Both),
            _ => Err(format!("{s:?}: expected mtls, bearer or both")),
        }
    }
}

/// `[upstream]`: exactly one of `http`, `unix` (+ `path`) or `[upstream.stdio]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// A streamable-HTTP MCP endpoint, `http://host:port/path`.
    #[serde(default)]
    pub http: Option<String>,
    /// A unix socket serving streamable HTTP.
    #[serde(default)]
    pub unix: Option<PathBuf>,
    /// The MCP path on the unix socket.
    #[serde(default = "default_unix_path")]
    pub path: String,
    /// A stdio MCP server the gateway runs.
    #[serde(default)]
    pub stdio: Option<StdioConfig>,
}

/// Which upstream, once checked.
#[derive(Clone, Debug)]
pub enum Upstream {
    /// Over TCP.
    Http(http::Uri),
    /// Over a unix socket, at `path`.
    Unix {
        /// The socket.
        socket: PathBuf,
        /// The MCP path.
        path: String,
    },
    /// A supervised child.
    Stdio(StdioConfig),
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is invalid or names an unknown key.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// An environment override could not be used.
    #[error("environment variable {var}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Why.
        reason: String,
    },
    /// A value is out of range or contradicts another.
    #[error("{0}")]
    Invalid(String),
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_staleness() -> u64 {
    30
}
fn default_ready_timeout() -> u64 {
    15
}
fn default_max_request_bytes() -> usize {
    DEFAULT_MAX_REQUEST_BYTES
}
fn default_max_response_bytes() -> usize {
    DEFAULT_MAX_RESPONSE_BYTES
}
fn default_token_ttl() -> u64 {
    300
}
fn default_unix_path() -> String {
    "/mcp".to_owned()
}

/// Where environment overrides come from: the process environment, or a map in tests
/// (so tests never mutate the process's environment).
pub trait Env {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<S: std::hash::BuildHasher> Env for std::collections::HashMap<&str, &str, S> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| (*v).to_owned())
    }
}

// === impl GatewayConfig ===

impl GatewayConfig {
    /// Reads `path`, applies the overrides in `env`, and checks the result.
    pub fn load(path: &Path, env: &impl Env) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path, env)
    }

    /// Parses `text` (read from `path`, for messages), applies `env`, checks.
    pub fn from_toml(text: &str, path: &Path, env: &impl Env) -> Result<Self, ConfigError> {
        let mut cfg: GatewayConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        cfg.apply_env(env)?;
        cfg.upstream()?;
        cfg.bearer(cfg.listen)?;
        if cfg.max_request_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "max_request_bytes below 1024 cannot carry an MCP request".into(),
            ));
        }
        Ok(cfg)
    }

    /// `TESSERA_GATEWAY_<KEY>` overrides every scalar key (`upstream.http` as
    /// `TESSERA_GATEWAY_UPSTREAM_HTTP`), except `dangerous_pass_through`; and
    /// `SPIFFE_ENDPOINT_SOCKET` the workload socket, as for every Tessera workload.
    fn apply_env(&mut self, env: &impl Env) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(var: &'static str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map_err(|e: T::Err| ConfigError::Env {
                var,
                reason: e.to_string(),
            })
        }
        if let Some(v) = env.var("SPIFFE_ENDPOINT_SOCKET") {
            self.workload_socket = v;
        }
        macro_rules! over {
            ($var:literal, $field:expr, string) => {
                if let Some(v) = env.var($var) {
                    $field = v;
                }
            };
            ($var:literal, $field:expr, some) => {
                if let Some(v) = env.var($var) {
                    $field = Some(parse($var, &v)?);
                }
            };
            ($var:literal, $field:expr, parsed) => {
                if let Some(v) = env.var($var) {
                    $field = parse($var, &v)?;
                }
            };
        }
        over!("TESSERA_GATEWAY_TRUST_DOMAIN", self.trust_domain, string);
        over!("TESSERA_GATEWAY_SERVER_NAME", self.server_name, string);
        over!(
            "TESSERA_GATEWAY_WORKLOAD_SOCKET",
            self.workload_socket,
            string
        );
        over!("TESSERA_GATEWAY_LISTEN", self.listen, parsed);
        over!("TESSERA_GATEWAY_OPS_LISTEN", self.ops_listen, some);
        over!("TESSERA_GATEWAY_POLICIES", self.policies, parsed);
        over!("TESSERA_GATEWAY_SCHEMA", self.schema, parsed);
        over!("TESSERA_GATEWAY_AUDIT_LOG", self.audit_log, some);
        over!("TESSERA_GATEWAY_UPSTREAM_HTTP", self.upstream.http, some);
        over!("TESSERA_GATEWAY_UPSTREAM_UNIX", self.upstream.unix, some);
        over!("TESSERA_GATEWAY_UPSTREAM_PATH", self.upstream.path, string);
        over!(
            "TESSERA_GATEWAY_MAX_REQUEST_BYTES",
            self.max_request_bytes,
            parsed
        );
        over!(
            "TESSERA_GATEWAY_MAX_RESPONSE_BYTES",
            self.max_response_bytes,
            parsed
        );
        over!("TESSERA_GATEWAY_MAX_SESSIONS", self.max_sessions, some);
        over!(
            "TESSERA_GATEWAY_MAX_SESSIONS_PER_PEER",
            self.max_sessions_per_peer,
            some
        );
        over!(
            "TESSERA_GATEWAY_HIDE_DENIED_TOOLS",
            self.hide_denied_tools,
            parsed
        );
        over!(
            "TESSERA_GATEWAY_REVOCATION_STALENESS_SECS",
            self.revocation_staleness_secs,
            parsed
        );
        over!(
            "TESSERA_GATEWAY_READY_TIMEOUT_SECS",
            self.ready_timeout_secs,
            parsed
        );
        over!(
            "TESSERA_GATEWAY_IDENTITY_HEADERS_TO_REMOTE",
            self.identity_headers_to_remote,
            parsed
        );
        over!("TESSERA_GATEWAY_ACCEPT", self.accept, parsed);
        over!(
            "TESSERA_GATEWAY_REQUIRE_CERT_BOUND_TOKENS",
            self.require_cert_bound_tokens,
            parsed
        );
        over!("TESSERA_GATEWAY_RESOURCE_URL", self.resource_url, some);
        over!(
            "TESSERA_GATEWAY_TOKEN_TTL_SECS",
            self.token_ttl_secs,
            parsed
        );
        // `dangerous_pass_through` has no variable on purpose: only the file or the loud
        // `--dangerous-pass-through` flag turn the checks off.
        Ok(())
    }

    /// The bearer path for a gateway listening on `listen` (the default resource URL's
    /// origin), checked; `None` when only client certificates are accepted.
    ///
    /// # Errors
    /// Bearer keys on an mTLS-only gateway, bearer with `dangerous_pass_through`, a
    /// token lifetime outside 10 s ..= 1 h, or a resource URL that is not plain `https`.
    pub fn bearer(&self, listen: SocketAddr) -> Result<Option<OAuthServer>, ConfigError> {
        if self.accept == Accept::Mtls {
            if self.require_cert_bound_tokens || self.resource_url.is_some() {
                return Err(ConfigError::Invalid(
                    "require_cert_bound_tokens and resource_url are for bearer tokens; \
                     set accept = \"both\" (or \"bearer\")"
                        .into(),
                ));
            }
            return Ok(None);
        }
        if self.dangerous_pass_through {
            return Err(ConfigError::Invalid(
                "dangerous_pass_through is an mTLS benchmark baseline; drop accept".into(),
            ));
        }
        if !(10..=3600).contains(&self.token_ttl_secs) {
            return Err(ConfigError::Invalid(format!(
                "token_ttl_secs {}: must be between 10 and 3600",
                self.token_ttl_secs
            )));
        }
        let resource = match &self.resource_url {
            Some(u) => u.clone(),
            None => format!("https://{listen}/mcp"),
        };
        let mut accepted = match self.accept {
            Accept::Both => AcceptedAuth::BOTH,
            _ => AcceptedAuth::BEARER,
        };
        if self.require_cert_bound_tokens {
            accepted = accepted.require_cert_bound_tokens();
        }
        let server = OAuthServer::new(&resource, accepted)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?
            .with_token_ttl(std::time::Duration::from_secs(self.token_ttl_secs))
            .with_resource_name(format!("tessera-gateway ({})", self.server_name));
        Ok(Some(server))
    }

    /// The upstream, checked: exactly one kind, an `http://` URL with a host.
    pub fn upstream(&self) -> Result<Upstream, ConfigError> {
        let u = &self.upstream;
        match (&u.http, &u.unix, &u.stdio) {
            (Some(url), None, None) => {
                let uri: http::Uri = url
                    .parse()
                    .map_err(|e| ConfigError::Invalid(format!("upstream.http {url:?}: {e}")))?;
                if uri.scheme_str() != Some("http") || uri.host().is_none() {
                    return Err(ConfigError::Invalid(format!(
                        "upstream.http {url:?}: give an http://host:port/path URL (TLS to \
                         the upstream is not supported: keep it on loopback or a unix socket)"
                    )));
                }
                Ok(Upstream::Http(uri))
            }
            (None, Some(socket), None) => {
                if !self.upstream.path.starts_with('/') {
                    return Err(ConfigError::Invalid(format!(
                        "upstream.path {:?} must start with /",
                        self.upstream.path
                    )));
                }
                Ok(Upstream::Unix {
                    socket: socket.clone(),
                    path: self.upstream.path.clone(),
                })
            }
            (None, None, Some(stdio)) => Ok(Upstream::Stdio(stdio.clone())),
            _ => Err(ConfigError::Invalid(
                "[upstream] needs exactly one of http = \"http://…\", unix = \"/path.sock\" \
                 or [upstream.stdio]"
                    .into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const BASE: &str = r#"
        trust_domain = "acme.corp"
        server_name = "github"
        workload_socket = "/run/w.sock"
        policies = "p.cedar"
        schema = "p.cedarschema"
    "#;

    fn load(extra: &str, env: &[(&str, &str)]) -> Result<GatewayConfig, ConfigError> {
        let env: HashMap<&str, &str> = env.iter().copied().collect();
        GatewayConfig::from_toml(&format!("{BASE}\n{extra}"), Path::new("g.toml"), &env)
    }

    #[test]
    fn an_http_upstream_on_loopback_is_accepted_with_safe_defaults() {
        let cfg = load("[upstream]\nhttp = \"http://127.0.0.1:8080/mcp\"", &[]).unwrap();
        assert!(matches!(cfg.upstream().unwrap(), Upstream::Http(u) if u.path() == "/mcp"));
        assert_eq!(cfg.max_request_bytes, DEFAULT_MAX_REQUEST_BYTES);
        assert!(!cfg.identity_headers_to_remote);
        assert!(!cfg.dangerous_pass_through);
    }

    #[test]
    fn two_upstreams_or_none_are_refused() {
        let both = "[upstream]\nhttp = \"http://127.0.0.1:1/mcp\"\nunix = \"/x.sock\"";
        assert!(matches!(load(both, &[]), Err(ConfigError::Invalid(_))));
        assert!(matches!(
            load("[upstream]", &[]),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn an_https_or_hostless_upstream_url_is_refused() {
        for url in ["https://127.0.0.1/mcp", "/mcp", "ftp://x/"] {
            let r = load(&format!("[upstream]\nhttp = \"{url}\""), &[]);
            assert!(matches!(r, Err(ConfigError::Invalid(_))), "{url}");
        }
    }

    #[test]
    fn an_unknown_key_is_refused_not_ignored() {
        let r = load(
            "[upstream]\nhttp = \"http://127.0.0.1:1/\"\nhttps = \"x\"",
            &[],
        );
        assert!(matches!(r, Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn environment_overrides_the_file() {
        let cfg = load(
            "[upstream]\nhttp = \"http://127.0.0.1:1/mcp\"",
            &[
                ("TESSERA_GATEWAY_LISTEN", "127.0.0.1:9443"),
                ("SPIFFE_ENDPOINT_SOCKET", "/other.sock"),
                ("TESSERA_GATEWAY_MAX_REQUEST_BYTES", "65536"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.listen.port(), 9443);
        assert_eq!(cfg.workload_socket, "/other.sock");
        assert_eq!(cfg.max_request_bytes, 65536);
        let bad = load(
            "[upstream]\nhttp = \"http://127.0.0.1:1/mcp\"",
            &[("TESSERA_GATEWAY_LISTEN", "nope")],
        );
        assert!(matches!(bad, Err(ConfigError::Env { .. })));
    }

    const UP: &str = "[upstream]\nhttp = \"http://127.0.0.1:1/mcp\"";

    #[test]
    fn bearer_tokens_are_off_unless_asked_for() {
        let cfg = load(UP, &[]).unwrap();
        assert_eq!(cfg.accept, Accept::Mtls);
        assert!(cfg.bearer(cfg.listen).unwrap().is_none());
    }

    #[test]
    fn bearer_defaults_its_resource_to_the_listen_address() {
        let cfg = load(&format!("accept = \"both\"\n{UP}"), &[]).unwrap();
        let server = cfg
            .bearer("127.0.0.1:8443".parse().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(server.resource(), "https://127.0.0.1:8443/mcp");
        assert_eq!(server.issuer(), "https://127.0.0.1:8443");
        assert!(server.accepted().mtls);
        let cfg = load(
            UP,
            &[
                ("TESSERA_GATEWAY_ACCEPT", "bearer"),
                (
                    "TESSERA_GATEWAY_RESOURCE_URL",
                    "https://gw.acme.corp/github/mcp",
                ),
            ],
        )
        .unwrap();
        let server = cfg.bearer(cfg.listen).unwrap().unwrap();
        assert_eq!(server.issuer(), "https://gw.acme.corp");
        assert!(!server.accepted().mtls);
        assert!(server.accepted().allows_connections_without_certificate());
    }

    #[test]
    fn bearer_settings_that_cannot_work_are_refused_at_load() {
        for extra in [
            "require_cert_bound_tokens = true",
            "resource_url = \"https://h/mcp\"",
            "accept = \"both\"\nresource_url = \"http://h/mcp\"",
            "accept = \"both\"\nresource_url = \"https://u@h/mcp\"",
            "accept = \"both\"\ntoken_ttl_secs = 5",
            "accept = \"both\"\ntoken_ttl_secs = 7200",
            "accept = \"both\"\ndangerous_pass_through = true",
        ] {
            let r = load(&format!("{extra}\n{UP}"), &[]);
            assert!(matches!(r, Err(ConfigError::Invalid(_))), "{extra}");
        }
        assert!(matches!(
            load(&format!("accept = \"oauth\"\n{UP}"), &[]),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            load(UP, &[("TESSERA_GATEWAY_ACCEPT", "any")]),
            Err(ConfigError::Env { .. })
        ));
    }
}
