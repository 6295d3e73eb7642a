//! `tessera-gateway`: put an MCP server you did not write behind Tessera's per-request
//! checks.
//!
//! Prints `listening on <addr>` (and `ops on <addr>` when the ops listener is on) to
//! stdout once it accepts connections; logs and audit go to stderr.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::FutureExt;
use futures::future::BoxFuture;
use tessera_gateway::config::{GatewayConfig, ProcessEnv, Upstream};
use tessera_gateway::front::{self, PeerMode};
use tessera_gateway::metrics::Metrics;
use tessera_gateway::ops;
use tessera_gateway::proxy::{Proxy, ProxyConfig};
use tessera_gateway::upstream::UpstreamService;
use tessera_gateway::upstream::http::{HttpUpstream, Target};
use tessera_gateway::upstream::stdio::StdioUpstream;
use tessera_identity::{ServerId, TrustDomain};
use tessera_verify::authz::policy::{PolicyFiles, PolicyStore};
use tessera_verify::mcp::proxy::ProxyRules;
use tessera_verify::mcp::{SessionBinding, SessionBindingLayer, SessionLimits, StreamGuardLayer};
use tessera_verify::revocation::WatcherConfig;
use tessera_verify::{AuditLog, Authorizer, RevocationWatcher, ServerTlsBuilder};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// An MCP-aware reverse proxy that gives an MCP server you did not write (any language,
/// streamable HTTP or stdio) the checks a server linking tessera-verify makes.
///
/// Clients connect over TLS presenting their task SVID (mTLS), or, with accept = "bearer"
/// or "both", an access token from the gateway's own token endpoint (<issuer>/oauth/token:
/// a task's JWT-SVID in, a token out; a request with no credential gets 401 naming the
/// Protected Resource Metadata). The gateway's own SVID,
/// spiffe://<trust_domain>/mcp/<server_name>, comes from the agent's workload socket, so
/// register the gateway binary with the agent as that MCP server. Every request is then
/// parsed once and decided exactly as a linked server decides it (revocation, task scopes,
/// Cedar policy with the call's arguments); refusals come back in the linked server's
/// shape; tools/resources/prompts lists come back filtered; a task that ends is refused on
/// its next request and its open streams close.
///
/// What reaches the upstream: never the caller's credential, bearer token included
/// (Authorization, Cookie and any inbound Tessera-* header are dropped; only MCP headers
/// pass), and, for a loopback or unix-socket upstream, the caller's
/// identity as headers an upstream can log or scope by:
///   Tessera-Client   spiffe://<td>/client/<client>
///   Tessera-Task     spiffe://<td>/client/<client>/task/<id>
///   Tessera-Subject  the user the task acts for (percent-encoded outside visible ASCII)
///   Tessera-Scopes   the task's scopes, space-separated
///
/// Everything is in the TOML file (--config); every scalar key but dangerous_pass_through
/// can be overridden by TESSERA_GATEWAY_<KEY> (e.g. TESSERA_GATEWAY_LISTEN,
/// TESSERA_GATEWAY_UPSTREAM_HTTP), and the workload socket by SPIFFE_ENDPOINT_SOCKET.
/// Example:
///
///   trust_domain = "acme.corp"
///   server_name = "github"
///   workload_socket = "/run/tessera/workload.sock"
///   listen = "0.0.0.0:8443"
///   accept = "both"                    # mtls (default) | bearer | both
///   resource_url = "https://github-mcp.internal:8443/mcp"   # default https://<listen>/mcp
///   token_ttl_secs = 300               # require_cert_bound_tokens = true: RFC 8705 tokens only
///   ops_listen = "127.0.0.1:9090"      # /healthz /readyz /metrics
///   policies = "github.cedar"
///   schema = "github.cedarschema"
///   [upstream]
///   http = "http://127.0.0.1:8080/mcp"  # or unix = "/run/mcp.sock" (+ path), or [upstream.stdio]
#[derive(Debug, Parser)]
#[command(name = "tessera-gateway", version, verbatim_doc_comment)]
struct Args {
    /// The gateway's TOML configuration.
    #[arg(long, env = "TESSERA_GATEWAY_CONFIG")]
    config: PathBuf,

    /// Check the configuration (file, overrides, policies against the schema) and exit.
    #[arg(long)]
    check: bool,

    /// BENCHMARK BASELINE ONLY: keep mTLS but forward every request unparsed and
    /// unchecked (no scopes, revocation, policy, filtering, session binding). Never use
    /// this to protect anything. Same as `dangerous_pass_through = true`.
    #[arg(long)]
    dangerous_pass_through: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut cfg = GatewayConfig::load(&args.config, &ProcessEnv)?;
    cfg.dangerous_pass_through |= args.dangerous_pass_through;
    run(cfg, args.check).await
}

/// Whether the upstream can be reached now, for `/readyz`.
type Probe = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

fn http_probe(up: HttpUpstream) -> Probe {
    Arc::new(move || {
        let up = up.clone();
        async move { up.is_reachable().await }.boxed()
    })
}

fn socket_path(s: &str) -> PathBuf {
    PathBuf::from(s.strip_prefix("unix://").unwrap_or(s))
}

async fn run(cfg: GatewayConfig, check_only: bool) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let td: TrustDomain = cfg
        .trust_domain
        .parse()
        .map_err(|e| anyhow::anyhow!("trust_domain {:?}: {e}", cfg.trust_domain))?;
    let server_id: ServerId = format!("{}/mcp/{}", td.id_string(), cfg.server_name)
        .parse()
        .map_err(|e| anyhow::anyhow!("server_name {:?}: {e}", cfg.server_name))?;
    let upstream_cfg = cfg.upstream()?;

    // Local files first: a typo in a policy fails at once, not after the wait for an SVID.
    let policies = Arc::new(
        PolicyStore::load(PolicyFiles {
            policies: cfg.policies.clone(),
            schema: cfg.schema.clone(),
        })
        .context("loading Cedar policies")?,
    );
    if check_only {
        println!("configuration ok: {server_id}, upstream {upstream_cfg:?}");
        return Ok(());
    }
    let audit = match &cfg.audit_log {
        Some(path) => AuditLog::with_json_file(path)
            .with_context(|| format!("opening audit log {}", path.display()))?,
        None => AuditLog::tracing_only(),
    };

    // Trust: own SVID and the bundle, from the agent.
    let ready_timeout = Duration::from_secs(cfg.ready_timeout_secs);
    let endpoint = format!("unix://{}", socket_path(&cfg.workload_socket).display());
    let (trust, _trust_refresh) = tokio::time::timeout(
        ready_timeout,
        tessera_verify::trust::workload::connect(Some(&endpoint), server_id.clone()),
    )
    .await
    .context("timed out waiting for the gateway's SVID from the Workload API")?
    .with_context(|| format!("Workload API: no SVID for {server_id} (is the gateway registered with the agent as this MCP server?)"))?;
    trust.ready().await?;

    // The upstream.
    let (upstream, identity_ok, ready_upstream, _stdio_guard): (UpstreamService, bool, Probe, _) =
        match upstream_cfg {
            Upstream::Http(uri) => {
                let up = HttpUpstream::new(Target::Url(uri))?;
                (up.service(), up.is_local(), http_probe(up), None)
            }
            Upstream::Unix { socket, path } => {
                let up = HttpUpstream::new(Target::Unix { socket, path })?;
                (up.service(), true, http_probe(up), None)
            }
            Upstream::Stdio(stdio) => {
                let (up, guard) = StdioUpstream::start(stdio)
                    .await
                    .context("starting the stdio upstream")?;
                let probe = up.clone();
                let ready: Probe =
                    Arc::new(move || futures::future::ready(probe.is_ready()).boxed());
                // Identity headers reach the bridge, never the child (it speaks stdio).
                (up.service(), true, ready, Some(guard))
            }
        };
    let identity_headers = identity_ok || cfg.identity_headers_to_remote;
    if !identity_ok && cfg.identity_headers_to_remote {
        tracing::warn!("identity headers go to a remote upstream (identity_headers_to_remote)");
    }

    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    // The bearer path, if any, is checked before anything is served; a client certificate
    // stays required unless tokens that need none are accepted, and one that is presented
    // is always verified in full.
    let oauth = cfg.bearer(addr)?;
    let mut tls_builder = ServerTlsBuilder::new(trust.clone());
    let peers = match &oauth {
        Some(o) if o.accepted().allows_connections_without_certificate() => {
            tls_builder = tls_builder.client_certificate_optional();
            PeerMode::Optional
        }
        _ => PeerMode::Required,
    };
    let mut tls = tls_builder.build()?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let metrics = Metrics::new();
    let proxy_cfg = ProxyConfig {
        max_request_bytes: cfg.max_request_bytes,
        max_response_bytes: cfg.max_response_bytes,
        identity_headers,
    };

    if cfg.dangerous_pass_through {
        tracing::warn!(
            "DANGEROUS PASS-THROUGH: mTLS only, NO per-request authorization, no filtering (benchmark baseline)"
        );
        let proxy = Proxy::dangerous_pass_through(upstream, proxy_cfg, metrics.clone());
        let ops_addr = start_ops(&cfg, metrics, Arc::new(|| async { Ok(()) }.boxed())).await?;
        announce(addr, ops_addr)?;
        return Ok(front::serve(listener, acceptor, proxy, PeerMode::Skip).await?);
    }

    // Revocations (wait until current), then the authorizer.
    let mut wcfg = WatcherConfig::new(socket_path(&cfg.workload_socket));
    wcfg.staleness = Duration::from_secs(cfg.revocation_staleness_secs);
    let (revocations, _revocation_feed) = RevocationWatcher::spawn(wcfg);
    let deadline = Instant::now() + ready_timeout;
    while !revocations.is_fresh() {
        if Instant::now() > deadline {
            bail!(
                "the revocation feed on {} did not become current within {}s (is the gateway registered with the agent?)",
                cfg.workload_socket,
                cfg.ready_timeout_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _policy_reload = policies.spawn_watch(Duration::from_secs(2));
    let authz = Arc::new(
        Authorizer::new(server_id.clone(), policies, revocations.clone()).with_audit(audit),
    );
    let mut rules = ProxyRules::new(authz.clone());
    if cfg.hide_denied_tools {
        rules = rules.hide_denied_tools();
    }
    let proxy = Proxy::new(rules, upstream.clone(), proxy_cfg, metrics.clone());

    // Sessions bound to the peer that opened them; a session the table forgets (past a
    // limit, or idle) is ended upstream too.
    let mut limits = SessionLimits::default();
    if let Some(n) = cfg.max_sessions {
        limits = limits.with_max_sessions(n);
    }
    if let Some(n) = cfg.max_sessions_per_peer {
        limits = limits.with_max_sessions_per_peer(n);
    }
    let binding = SessionBinding::new(limits).on_evict(move |ids| {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let count = ids.len();
            for id in ids {
                let Ok(v) = http::HeaderValue::from_str(&id) else {
                    continue;
                };
                let mut req = http::Request::new(axum::body::Body::empty());
                *req.method_mut() = http::Method::DELETE;
                req.headers_mut().insert("mcp-session-id", v);
                let _ = upstream.clone().oneshot(req).await;
            }
            tracing::info!(count, "ended sessions past a limit or idle");
        });
    });
    let service = tower::ServiceBuilder::new()
        .layer(StreamGuardLayer::new(authz.clone()))
        .layer(SessionBindingLayer::with_binding(Arc::new(binding)))
        .service(proxy);
    let ready: ops::ReadyCheck = {
        let (trust, revocations) = (trust.clone(), revocations.clone());
        Arc::new(move || {
            let (trust, revocations, up) =
                (trust.clone(), revocations.clone(), ready_upstream.clone());
            async move {
                if trust.current().is_none() {
                    return Err("no SVID".into());
                }
                if !revocations.is_fresh() {
                    return Err("revocation feed not current".into());
                }
                if !up().await {
                    return Err("upstream not reachable".into());
                }
                Ok(())
            }
            .boxed()
        })
    };
    let ops_addr = start_ops(&cfg, metrics, ready).await?;
    // The bearer path in front: the token endpoint and its metadata, then the resource
    // server (metadata, the token check, step-up), so a bearer caller reaches the session
    // binding and the proxy with a Peer exactly where a certificate would have put one.
    let Some(oauth) = oauth else {
        tracing::info!(%server_id, %addr, identity_headers, "gateway serving MCP over mTLS");
        announce(addr, ops_addr)?;
        return Ok(front::serve(listener, acceptor, service, peers).await?);
    };
    let (token_endpoint, bearer) = oauth.layers(trust, revocations, authz)?;
    let service = tower::ServiceBuilder::new()
        .layer(token_endpoint)
        .layer(bearer)
        .service(service);
    tracing::info!(
        %server_id, %addr, identity_headers, resource = oauth.resource(), issuer = oauth.issuer(),
        "gateway serving MCP (bearer tokens from {}/oauth/token)", oauth.issuer()
    );
    announce(addr, ops_addr)?;
    Ok(front::serve(listener, acceptor, service, peers).await?)
}

async fn start_ops(
    cfg: &GatewayConfig,
    metrics: Metrics,
    ready: ops::ReadyCheck,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = cfg.ops_listen else {
        return Ok(None);
    };
    let listener = ops::bind(addr)
        .await
        .with_context(|| format!("binding ops_listen {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = ops::serve(listener, metrics, ready).await {
            tracing::error!(error = %e, "ops listener ended");
        }
    });
    Ok(Some(bound))
}

fn announce(addr: SocketAddr, ops: Option<SocketAddr>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if let Some(ops) = ops {
        writeln!(out, "ops on {ops}")?;
    }
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    Ok(())
}
