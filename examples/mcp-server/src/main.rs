//! `tessera-example-mcp-server`: an rmcp streamable-HTTP MCP server over TLS, with every
//! request authorized by tessera-verify (identity, task scope, revocation, Cedar policy).
//! Callers prove themselves with a task SVID (mTLS), an OAuth access token from this
//! server's own token endpoint (bearer), or either (`--accept`).
//!
//! Prints exactly one line to stdout once it accepts connections:
//! `listening on <addr>`; everything else (logs, audit) goes to stderr.
//!
//! * this file: flags, TLS, the Tessera checks and the HTTP server around the tools.
//! * `oauth`: the flags of the bearer path and the layers they build (token endpoint,
//!   resource server).
//! * `tools`: the pretend GitHub (tools, README resources, subscriptions); no identity
//!   or policy.

mod oauth;
mod tools;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tessera_identity::{ServerId, TrustDomain};
use tessera_verify::authz::policy::{PolicyFiles, PolicyStore};
use tessera_verify::mcp::{
    Enforced, SessionBinding, SessionBindingLayer, SessionLimits, StreamGuardLayer,
};
use tessera_verify::oauth::CertThumbprint;
use tessera_verify::revocation::WatcherConfig;
use tessera_verify::trust::files::FileTrustConfig;
use tessera_verify::unread;
use tessera_verify::{
    AuditLog, Authorizer, ConnectionSpan, Peer, RevocationWatcher, ServerTlsBuilder,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use tools::GitHub;

const DEFAULT_POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/github.cedar");
const DEFAULT_SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/github.cedarschema");

/// An example MCP server ("github") that authorizes every request with tessera-verify.
///
/// Trust comes from the SPIFFE Workload API (the agent issues this server's SVID
/// spiffe://<td>/mcp/<server-name>) or from PEM files (--bundle, --cert, --key).
/// Revocations come from the agent's feed on the workload socket; the server starts
/// listening only once the feed is current, and without a socket only with
/// --dangerous-no-revocation.
///
/// Callers: by default a task presents its X.509-SVID as the TLS client certificate
/// (--accept mtls). With --accept bearer or both, the server is also its own OAuth
/// authorization server, as the MCP specification has clients find it: a request without
/// a credential is answered 401 naming the Protected Resource Metadata
/// (/.well-known/oauth-protected-resource/mcp), whose authorization server's metadata
/// (/.well-known/oauth-authorization-server) names the token endpoint (/oauth/token).
/// There a task trades its JWT-SVID (FetchJWTSVID, audience = this server's issuer, the
/// origin of --resource-url) for an access token for --resource-url, and sends it as
/// `Authorization: Bearer`. A token is checked like the task's certificate: expiry,
/// revocation, scopes (narrowed to the token's), Cedar policy, audit.
#[derive(Debug, Parser)]
#[command(name = "tessera-example-mcp-server", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// This server's name: its identity is spiffe://<trust-domain>/mcp/<server-name>.
    #[arg(long, default_value = "github")]
    server_name: String,

    /// The trust domain, e.g. acme.corp.
    #[arg(long, env = "TESSERA_TRUST_DOMAIN")]
    trust_domain: String,

    /// The agent's workload socket (path or unix:///path): trust material (unless PEM
    /// files are given) and the revocation feed.
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET")]
    workload_socket: Option<String>,

    /// CA bundle (PEM) of the trust domain; with --cert and --key, trust comes from
    /// files (reloaded on change) instead of the Workload API.
    #[arg(long, requires_all = ["cert", "key"])]
    bundle: Option<PathBuf>,

    /// This server's certificate chain (PEM, leaf first).
    #[arg(long, requires = "bundle")]
    cert: Option<PathBuf>,

    /// This server's private key (PEM).
    #[arg(long, requires = "bundle")]
    key: Option<PathBuf>,

    /// The trust domain's JWT-SVID keys (a JWKS file, reloaded on change), with trust
    /// from files: what the token endpoint checks assertions against. From the Workload
    /// API they come with the SVID (FetchJWTBundles).
    #[arg(long, requires = "bundle", env = "TESSERA_MCP_JWT_BUNDLE")]
    jwt_bundle: Option<PathBuf>,

    /// Cedar policies.
    #[arg(long, default_value = DEFAULT_POLICIES)]
    policies: PathBuf,

    /// Cedar schema the policies are validated against.
    #[arg(long, default_value = DEFAULT_SCHEMA)]
    schema: PathBuf,

    /// Also write every authorization decision as a JSON line to this file.
    #[arg(long)]
    audit_log: Option<PathBuf>,

    /// Answer a denied tools/call as "Unknown tool" instead of naming the reason.
    #[arg(long)]
    hide_denied_tools: bool,

    /// Refuse task credentials once the revocation feed has been down this long.
    #[arg(long, default_value_t = 30)]
    revocation_staleness_secs: u64,

    /// How long to wait at start-up for the revocation feed to become current.
    #[arg(long, default_value_t = 15)]
    ready_timeout_secs: u64,

    /// Also accept Host headers naming this host (the listen address and loopback
    /// names are always accepted).
    #[arg(long = "allowed-host")]
    allowed_hosts: Vec<String>,

    /// Run without the agent's revocation feed, when there is no workload socket (trust
    /// from PEM files): a task that ends stays usable here until its SVID expires.
    /// Without a socket the server refuses to start unless this says so.
    #[arg(long)]
    dangerous_no_revocation: bool,

    /// Most MCP sessions bound at once, over all peers; past it the least recently used
    /// is closed.
    #[arg(long, default_value_t = SessionLimits::default().max_sessions)]
    max_sessions: usize,

    /// Most MCP sessions one peer (one task) holds at once; past it its least recently
    /// used is closed.
    #[arg(long, default_value_t = SessionLimits::default().max_sessions_per_peer)]
    max_sessions_per_peer: usize,

    /// Benchmark baseline only: keep mTLS (client certificates still required and
    /// verified) but skip every per-request check (no scopes, revocation, policy,
    /// session binding). Never use this to protect anything.
    #[arg(long)]
    dangerous_no_authorization: bool,

    #[command(flatten)]
    oauth: oauth::OAuthArgs,
}

fn socket_path(s: &str) -> PathBuf {
    PathBuf::from(s.strip_prefix("unix://").unwrap_or(s))
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
    run(args).await
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let td: TrustDomain = args
        .trust_domain
        .parse()
        .map_err(|e| anyhow::anyhow!("--trust-domain {:?}: {e}", args.trust_domain))?;
    let server_id: ServerId = format!("{}/mcp/{}", td.id_string(), args.server_name)
        .parse()
        .map_err(|e| anyhow::anyhow!("--server-name {:?}: {e}", args.server_name))?;

    // Flags that cannot work together fail before any waiting (the resource URL's
    // default follows the bound port, so the plan is made again after binding).
    args.oauth.plan(args.listen)?;
    if args.dangerous_no_authorization && args.oauth.accept != oauth::Accept::Mtls {
        bail!("--dangerous-no-authorization is an mTLS benchmark baseline; drop --accept");
    }

    // Deny by default: without the feed, EndTask, a consent withdrawal or an admin
    // revocation would not reach this server, so running so must be asked for.
    // (The no-authorization baseline checks nothing per request anyway.)
    match (&args.workload_socket, args.dangerous_no_revocation) {
        (Some(_), true) => bail!(
            "--dangerous-no-revocation with a workload socket: the server always follows \
             the agent's revocation feed when it has one; drop the flag"
        ),
        (None, false) if args.bundle.is_some() && !args.dangerous_no_authorization => bail!(
            "no --workload-socket (or SPIFFE_ENDPOINT_SOCKET), so no revocation feed: tasks \
             that end would stay usable here until their SVIDs expire. Give the agent's \
             socket, or pass --dangerous-no-revocation to run so knowingly"
        ),
        _ => {}
    }

    // 0. Local files first: a typo in a policy fails at once, not after the
    // wait for an SVID.
    let local = if args.dangerous_no_authorization {
        None
    } else {
        let policies = Arc::new(
            PolicyStore::load(PolicyFiles {
                policies: args.policies.clone(),
                schema: args.schema.clone(),
            })
            .context("loading Cedar policies")?,
        );
        tracing::info!(policies = ?policies.policy_ids(), "policies loaded");
        let audit = match &args.audit_log {
            Some(path) => AuditLog::with_json_file(path)
                .with_context(|| format!("opening audit log {}", path.display()))?,
            None => AuditLog::tracing_only(),
        };
        Some((policies, audit))
    };

    // 1. Trust: own SVID + bundle.
    let (trust, _trust_refresh) = match (&args.bundle, &args.cert, &args.key) {
        (Some(bundle), Some(cert), Some(key)) => {
            let mut cfg =
                FileTrustConfig::new(server_id.clone(), bundle.clone(), cert.clone(), key.clone());
            cfg.poll_interval = Duration::from_secs(2);
            if let Some(jwks) = &args.jwt_bundle {
                cfg = cfg.with_jwt_bundle(jwks.clone());
            }
            tessera_verify::trust::files::spawn(cfg).context("loading trust from PEM files")?
        }
        _ => {
            let Some(sock) = &args.workload_socket else {
                bail!(
                    "give --workload-socket (or SPIFFE_ENDPOINT_SOCKET), or --bundle/--cert/--key"
                );
            };
            let endpoint = format!("unix://{}", socket_path(sock).display());
            tokio::time::timeout(
                Duration::from_secs(args.ready_timeout_secs),
                tessera_verify::trust::workload::connect(Some(&endpoint), server_id.clone()),
            )
            .await
            .context("timed out waiting for this server's SVID from the Workload API")?
            .with_context(|| format!("Workload API: no SVID for {server_id}"))?
        }
    };
    trust.ready().await?;

    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
        args.listen.ip().to_string(),
    ];
    hosts.extend(args.allowed_hosts.iter().cloned());
    hosts.extend(args.oauth.resource_host());
    let http_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_sse_keep_alive(None);

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let plan = args.oauth.plan(addr)?;
    let accepted = plan.as_ref().map(oauth::OAuthPlan::accepted);

    // 2. TLS: own trust domain only, h2 and http/1.1. A client certificate is required
    // unless tokens that need none are accepted; one that is presented is always
    // verified in full.
    let mut tls_builder = ServerTlsBuilder::new(trust.clone());
    let peers = match accepted {
        Some(a) if a.allows_connections_without_certificate() => {
            tls_builder = tls_builder.client_certificate_optional();
            PeerMode::Optional
        }
        _ if args.dangerous_no_authorization => PeerMode::Skip,
        _ => PeerMode::Required,
    };
    let mut tls = tls_builder.build()?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let Some((policies, audit)) = local else {
        tracing::warn!(
            "--dangerous-no-authorization: mTLS only, NO per-request authorization (benchmark baseline)"
        );
        let service = StreamableHttpService::new(
            || Ok(GitHub::default()),
            Arc::new(LocalSessionManager::default()),
            http_config,
        );
        announce(addr)?;
        return serve(listener, acceptor, service, peers).await;
    };

    // 3. Revocations (wait until current), then the authorizer. The feed is followed as
    // long as its guard lives: until `run` returns.
    let (revocations, _revocation_feed) = match &args.workload_socket {
        Some(sock) => {
            let mut cfg = WatcherConfig::new(socket_path(sock));
            cfg.staleness = Duration::from_secs(args.revocation_staleness_secs);
            let (w, feed) = RevocationWatcher::spawn(cfg);
            let deadline = Instant::now() + Duration::from_secs(args.ready_timeout_secs);
            while !w.is_fresh() {
                if Instant::now() > deadline {
                    bail!(
                        "the revocation feed on {sock} did not become current within {}s \
                         (is this binary registered with the agent?)",
                        args.ready_timeout_secs
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (w, Some(feed))
        }
        None => {
            tracing::warn!(
                "--dangerous-no-revocation: no revocation feed, ended tasks stay usable until their SVIDs expire"
            );
            (RevocationWatcher::from_static([], []), None)
        }
    };
    let _policy_reload = policies.spawn_watch(Duration::from_secs(2));
    let authz = Arc::new(
        Authorizer::new(server_id.clone(), policies, revocations.clone()).with_audit(audit),
    );

    // 4. rmcp service: enforce in the handler, bind sessions to peers (a session the
    // table forgets is closed in rmcp too, so its limits bound rmcp's sessions), end a
    // revoked task's open streams.
    let hide = args.hide_denied_tools;
    let sessions = Arc::new(LocalSessionManager::default());
    let service = StreamableHttpService::new(
        {
            let authz = authz.clone();
            move || {
                let e = Enforced::new(GitHub::default(), authz.clone());
                Ok(if hide { e.hide_denied_tools() } else { e })
            }
        },
        sessions.clone(),
        http_config,
    );
    let limits = SessionLimits::default()
        .with_max_sessions(args.max_sessions)
        .with_max_sessions_per_peer(args.max_sessions_per_peer);
    let binding = SessionBinding::new(limits).on_evict(move |ids| {
        let sessions = sessions.clone();
        tokio::spawn(async move {
            let count = ids.len();
            for id in ids {
                if let Err(e) = sessions.close_session(&id.into()).await {
                    tracing::debug!(error = %e, "closing a forgotten session");
                }
            }
            tracing::info!(count, "closed sessions past a limit or idle");
        });
    });
    let service = tower::ServiceBuilder::new()
        .layer(StreamGuardLayer::new(authz.clone()))
        .layer(SessionBindingLayer::with_binding(Arc::new(binding)))
        .service(service);
    let Some(plan) = plan else {
        tracing::info!(%server_id, %addr, "serving MCP over mTLS");
        announce(addr)?;
        return serve(listener, acceptor, service, peers).await;
    };

    // 5. The bearer path: the token endpoint and its metadata in front, then the resource
    // server (metadata, the token check, step-up), so a bearer caller reaches the layers
    // above with a Peer exactly where a certificate would have put one.
    let (token_endpoint, bearer) = plan.layers(trust, revocations, authz)?;
    let service = tower::ServiceBuilder::new()
        .layer(token_endpoint)
        .layer(bearer)
        .service(service);
    tracing::info!(
        %server_id, %addr, resource = %plan.resource, issuer = %plan.issuer,
        accept = ?args.oauth.accept, "serving MCP (bearer tokens from the token endpoint at {}/oauth/token)",
        plan.issuer
    );
    announce(addr)?;
    serve(listener, acceptor, service, peers).await
}

/// What a connection's client certificate is to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerMode {
    /// Required and verified at the handshake; its peer goes into every request.
    Required,
    /// Optional (bearer tokens accepted): when presented, verified at the handshake and
    /// its peer goes into every request; when not, the token has to prove the caller.
    Optional,
    /// Verified at the handshake, not parsed (the no-authorization baseline).
    Skip,
}

fn announce(addr: SocketAddr) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    Ok(())
}

/// Accepts TLS connections; per connection opens one span (its id, then the peer),
/// parses the peer once and serves HTTP (h2 or http/1.1) with the `Arc<Peer>` and the
/// span inserted into every request.
async fn serve<S, B>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    service: S,
    peers: PeerMode,
) -> anyhow::Result<()>
where
    S: tower::Service<
            http::Request<unread::Tracked<hyper::body::Incoming>>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => r?,
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("shutting down");
                return Ok(());
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, service) = (acceptor.clone(), service.clone());
        let conn = ConnectionSpan::accepted(remote);
        let span = conn.span().clone();
        tokio::spawn(
            async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::info!(error = %e, "TLS handshake refused");
                        return;
                    }
                };
                let chain = tls.get_ref().1.peer_certificates();
                let presented = chain.is_some_and(|c| !c.is_empty());
                let peer = match peers {
                    PeerMode::Skip => None,
                    PeerMode::Optional if !presented => None,
                    PeerMode::Required | PeerMode::Optional => match Peer::from_chain(chain) {
                        Ok(p) => {
                            conn.record_peer(&p);
                            Some(Arc::new(p))
                        }
                        Err(e) => {
                            tracing::info!(error = %e, "connection refused: no usable peer identity");
                            return;
                        }
                    },
                };
                // What a token issued on, or presented over, this connection is bound to
                // (RFC 8705).
                let thumbprint = peer
                    .as_ref()
                    .and(chain.and_then(|c| c.first()))
                    .map(|leaf| CertThumbprint::of_der(leaf));
                tracing::info!("connection accepted");
                let executor = InConnection(conn.span().clone());
                let svc = tower::ServiceBuilder::new()
                    .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                        if peers != PeerMode::Skip {
                            req.extensions_mut().insert(conn.clone());
                        }
                        if let Some(p) = &peer {
                            req.extensions_mut().insert(p.clone());
                        }
                        if let Some(t) = thumbprint {
                            req.extensions_mut().insert(t);
                        }
                        req
                    })
                    .service(unread::CloseUnread(service));
                let result = hyper_util::server::conn::auto::Builder::new(executor)
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(tls),
                        hyper_util::service::TowerToHyperService::new(svc),
                    )
                    .await;
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
}

/// Spawns what hyper hands its executor (a task per HTTP/2 stream) inside the
/// connection's span, so those streams' lines name the connection too.
#[derive(Clone, Debug)]
struct InConnection(tracing::Span);

impl<F> hyper::rt::Executor<F> for InConnection
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut.instrument(self.0.clone()));
    }
}
