//! The core of the example agent runtime, usable as a library (the e2e tests and the
//! demo drive it directly):
//!
//! 1. [`Workload::connect`] to the agent's workload socket;
//! 2. [`Workload::begin_task`] (Tasks API), then [`Workload::task_credential`] picks the task
//!    SVID from the standard `FetchX509SVID` stream by hint = task id;
//! 3. [`tls_config`]: a rustls client config that presents the task SVID and accepts only a
//!    server presenting exactly `spiffe://<td>/mcp/<server>`;
//! 4. [`McpConnection::connect`]: rmcp's streamable-HTTP client over that TLS config (reqwest
//!    with our rustls config, HTTP/2, one connection kept open);
//! 5. [`McpConnection::call`] classifies each answer as a result, a denial (reason + policy
//!    ids) or an error;
//! 6. [`Workload::end_task`], and [`measure_refusal_after_end`] for the time from EndTask
//!    until the open connection is refused.
//!
//! [`bearer`] is the other way in: the same task presents no certificate but an OAuth
//! access token, obtained with its JWT-SVID from the server's own token endpoint (the MCP
//! specification's discovery, client credentials with `private_key_jwt`).

pub mod bearer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tessera_identity::ServerId;
use tessera_proto::tessera::v1::tasks_client::TasksClient;
use tessera_proto::tessera::v1::{BeginTaskRequest, EndTaskRequest, Task};
use tonic::transport::Channel;

/// The JSON-RPC code tessera-verify uses for denials outside `tools/call`.
pub const DENIAL_CODE: i32 = tessera_verify::mcp::DENIAL_CODE;

/// A connection to the agent's workload socket (Tasks API + SPIFFE Workload API).
#[derive(Clone, Debug)]
pub struct Workload {
    socket: PathBuf,
    tasks: TasksClient<Channel>,
}

/// What to ask for in `BeginTask`.
#[derive(Clone, Debug, Default)]
pub struct TaskRequest {
    /// The MCP server name, e.g. `github`.
    pub server: String,
    /// Scopes, e.g. `github/tool/get_pull_request`.
    pub scopes: Vec<String>,
    /// The human the task acts for.
    pub subject: String,
    /// Why the task runs.
    pub purpose: String,
    /// Requested lifetime in seconds (0 = the agent's default).
    pub lifetime_secs: u32,
}

/// The task SVID and the trust bundle, as picked from the Workload API stream.
#[derive(Debug)]
pub struct TaskCredential {
    /// The task's SPIFFE ID.
    pub spiffe_id: String,
    /// Certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
    /// CA certificates of the task's trust domain.
    pub bundle: Vec<CertificateDer<'static>>,
    /// The trust domain, e.g. `acme.corp`.
    pub trust_domain: String,
}

/// The outcome of one `tools/call`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CallOutcome {
    /// The tool ran; its text content.
    Ok {
        /// Text content of the result, joined by newlines.
        text: String,
    },
    /// tessera-verify refused the call.
    Denied {
        /// The stable reason, e.g. `out_of_scope`, `policy_forbids`, `revoked`.
        reason: String,
        /// The Cedar policies that decided, if any.
        policy_ids: Vec<String>,
        /// The message the server sent.
        message: String,
    },
    /// The tool returned an error result that is not an authorization denial.
    ToolError {
        /// Text content of the result.
        text: String,
    },
    /// A JSON-RPC error that is not an authorization denial (e.g. unknown tool).
    RpcError {
        /// The JSON-RPC code.
        code: i32,
        /// The message.
        message: String,
    },
    /// The request did not get an answer (TLS refused, connection closed, timeout, ...).
    TransportError {
        /// What happened.
        message: String,
    },
}

impl CallOutcome {
    /// The denial reason, if this is a denial.
    pub fn denial_reason(&self) -> Option<&str> {
        match self {
            CallOutcome::Denied { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// Whether the tool ran.
    pub fn is_ok(&self) -> bool {
        matches!(self, CallOutcome::Ok { .. })
    }
}

impl fmt::Display for CallOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallOutcome::Ok { text } => write!(f, "ok: {text}"),
            CallOutcome::Denied {
                reason, policy_ids, ..
            } => {
                write!(f, "DENIED: {reason}")?;
                if !policy_ids.is_empty() {
                    write!(f, " (policy: {})", policy_ids.join(", "))?;
                }
                Ok(())
            }
            CallOutcome::ToolError { text } => write!(f, "tool error: {text}"),
            CallOutcome::RpcError { code, message } => write!(f, "error {code}: {message}"),
            CallOutcome::TransportError { message } => write!(f, "transport error: {message}"),
        }
    }
}

// === impl Workload ===

fn socket_path(s: &str) -> PathBuf {
    PathBuf::from(s.strip_prefix("unix://").unwrap_or(s))
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

impl Workload {
    /// Connects to the workload socket (a path or `unix:///path`).
    ///
    /// # Errors
    /// When the socket cannot be reached.
    pub async fn connect(socket: &str) -> anyhow::Result<Self> {
        let socket = socket_path(socket);
        let channel = tessera_proto::connect_unix(tessera_proto::unix_endpoint(), &socket)
            .await
            .with_context(|| format!("connecting to the workload socket {}", socket.display()))?;
        Ok(Self {
            socket,
            tasks: TasksClient::new(channel),
        })
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Begins a task. The task lives as long as this process (or until ended).
    ///
    /// # Errors
    /// The agent's refusal (e.g. `PermissionDenied` without a covering consent).
    pub async fn begin_task(&self, req: &TaskRequest) -> Result<Task, tonic::Status> {
        let resp = self
            .tasks
            .clone()
            .begin_task(with_header(BeginTaskRequest {
                purpose: req.purpose.clone(),
                subject: req.subject.clone(),
                server: req.server.clone(),
                scopes: req.scopes.clone(),
                lifetime_secs: req.lifetime_secs,
                client: String::new(),
                bind_to_parent: false,
            }))
            .await?
            .into_inner();
        resp.task
            .ok_or_else(|| tonic::Status::internal("BeginTask answered without a task"))
    }

    /// Ends a task; its SVID is revoked at once.
    ///
    /// # Errors
    /// The agent's refusal.
    pub async fn end_task(&self, task_id: &str) -> Result<Task, tonic::Status> {
        let resp = self
            .tasks
            .clone()
            .end_task(with_header(EndTaskRequest {
                task_id: task_id.to_owned(),
            }))
            .await?
            .into_inner();
        resp.task
            .ok_or_else(|| tonic::Status::internal("EndTask answered without a task"))
    }

    /// Picks the SVID with `hint` (the task id) from this process's `FetchX509SVID`
    /// stream, as any standard SPIFFE client can, waiting up to `within` for it.
    ///
    /// # Errors
    /// When the stream fails or no SVID with that hint arrives in time.
    pub async fn task_credential(
        &self,
        hint: &str,
        within: Duration,
    ) -> anyhow::Result<TaskCredential> {
        let client =
            spiffe::WorkloadApiClient::connect_to(format!("unix://{}", self.socket.display()))
                .await
                .context("Workload API")?;
        let mut stream = client
            .stream_x509_contexts()
            .await
            .context("FetchX509SVID")?;
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ctx = tokio::time::timeout(left, stream.next())
                .await
                .map_err(|_| anyhow!("no SVID with hint {hint:?} within {within:?}"))?
                .ok_or_else(|| anyhow!("FetchX509SVID stream closed"))?
                .context("FetchX509SVID")?;
            let Some(svid) = ctx.svids().iter().find(|s| s.hint() == Some(hint)) else {
                continue;
            };
            let td = svid.spiffe_id().trust_domain().clone();
            let bundle = ctx
                .bundle_set()
                .iter()
                .find(|(t, _)| **t == td)
                .map(|(_, b)| {
                    b.authorities()
                        .iter()
                        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                        .collect::<Vec<_>>()
                })
                .ok_or_else(|| anyhow!("no bundle for {td} in the stream"))?;
            return Ok(TaskCredential {
                spiffe_id: svid.spiffe_id().to_string(),
                chain: svid
                    .cert_chain()
                    .iter()
                    .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                    .collect(),
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                    svid.private_key().as_bytes().to_vec(),
                )),
                bundle,
                trust_domain: td.as_str().to_owned(),
            });
        }
    }
}

/// A rustls client config presenting `cred` and accepting only `spiffe://<td>/mcp/<server>`
/// (ALPN h2, http/1.1).
///
/// # Errors
/// For an unusable bundle or key, or an invalid server name.
pub fn tls_config(cred: &TaskCredential, server: &str) -> anyhow::Result<rustls::ClientConfig> {
    let expected: ServerId = format!("spiffe://{}/mcp/{server}", cred.trust_domain)
        .parse()
        .map_err(|e| anyhow!("server {server:?}: {e}"))?;
    let mut cfg = tessera_verify::tls::client_config(
        &expected,
        cred.bundle.clone(),
        cred.chain.clone(),
        cred.key.clone_key(),
    )?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// An open MCP client session over mTLS.
#[derive(Debug)]
pub struct McpConnection {
    client: RunningService<RoleClient, rmcp::model::ClientConfig>,
}

/// A reqwest client that speaks TLS only through `tls` (our rustls config).
///
/// # Errors
/// When reqwest refuses the config.
pub fn http_client(tls: rustls::ClientConfig) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .no_proxy()
        .build()
        .context("building the HTTP client")
}

impl McpConnection {
    /// Connects and initializes an MCP session at `url` (e.g. `https://127.0.0.1:8443/mcp`).
    ///
    /// # Errors
    /// TLS refusal, HTTP failure, or a failed `initialize`.
    pub async fn connect(url: &str, tls: rustls::ClientConfig) -> anyhow::Result<Self> {
        let http = http_client(tls)?;
        let transport = StreamableHttpClientTransport::with_client(
            http,
            StreamableHttpClientTransportConfig::with_uri(url.to_owned()),
        );
        let client = rmcp::model::ClientConfig::default()
            .serve(transport)
            .await
            .map_err(|e| anyhow!("MCP initialize with {url}: {e}"))?;
        Ok(Self { client })
    }

    /// The server's name and version from `initialize`.
    pub fn server_info(&self) -> Option<String> {
        self.client
            .peer_info()
            .and_then(|i| i.server_info.clone())
            .map(|s| format!("{} {}", s.name, s.version))
    }

    /// `tools/list`: the names of the tools this task may use.
    ///
    /// # Errors
    /// A JSON-RPC error or transport failure.
    pub async fn list_tools(&self) -> anyhow::Result<Vec<String>> {
        let tools = self
            .client
            .list_all_tools()
            .await
            .map_err(|e| anyhow!("tools/list: {e}"))?;
        Ok(tools.into_iter().map(|t| t.name.to_string()).collect())
    }

    /// `tools/call`, classified.
    pub async fn call(&self, tool: &str, arguments: Option<Map<String, Value>>) -> CallOutcome {
        let mut params = CallToolRequestParams::new(tool.to_owned());
        if let Some(a) = arguments {
            params = params.with_arguments(a);
        }
        match self.client.call_tool(params).await {
            Ok(result) => classify_result(&result),
            Err(ServiceError::McpError(e)) => {
                let auth = e.data.as_ref().and_then(|d| d.get("authorization"));
                match auth {
                    Some(a) if e.code.0 == DENIAL_CODE => denied(a, e.message.to_string()),
                    _ => CallOutcome::RpcError {
                        code: e.code.0,
                        message: e.message.to_string(),
                    },
                }
            }
            Err(e) => CallOutcome::TransportError {
                message: e.to_string(),
            },
        }
    }

    /// Closes the session.
    pub async fn close(self) {
        let _ = self.client.cancel().await;
    }
}

fn text_of(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| {
            serde_json::to_value(c)
                .ok()?
                .get("text")?
                .as_str()
                .map(str::to_owned)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn denied(auth: &Value, message: String) -> CallOutcome {
    CallOutcome::Denied {
        reason: auth
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned(),
        policy_ids: auth
            .get("policy_ids")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        message,
    }
}

fn classify_result(result: &CallToolResult) -> CallOutcome {
    let text = text_of(result);
    if result.is_error != Some(true) {
        return CallOutcome::Ok { text };
    }
    match result
        .structured_content
        .as_ref()
        .and_then(|s| s.get("authorization"))
    {
        Some(a) => denied(a, text),
        None => CallOutcome::ToolError { text },
    }
}

/// The result of [`measure_refusal_after_end`].
#[derive(Clone, Debug, Serialize)]
pub struct RefusalMeasurement {
    /// From sending EndTask until the first refused call's answer.
    pub elapsed: Duration,
    /// How long EndTask itself took.
    pub end_task_rtt: Duration,
    /// Calls made after EndTask (the last one refused).
    pub attempts: u32,
    /// The refusal.
    pub outcome: CallOutcome,
}

/// Ends the task and calls `tool` again on the already-open connection until it is
/// refused; measures from sending EndTask to the refusal.
///
/// # Errors
/// When EndTask fails, or the call is still allowed after `within`.
pub async fn measure_refusal_after_end(
    workload: &Workload,
    conn: &McpConnection,
    task_id: &str,
    tool: &str,
    arguments: Option<Map<String, Value>>,
    within: Duration,
) -> anyhow::Result<RefusalMeasurement> {
    let start = Instant::now();
    workload.end_task(task_id).await.context("EndTask")?;
    let end_task_rtt = start.elapsed();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcome = conn.call(tool, arguments.clone()).await;
        if !outcome.is_ok() {
            return Ok(RefusalMeasurement {
                elapsed: start.elapsed(),
                end_task_rtt,
                attempts,
                outcome,
            });
        }
        if start.elapsed() > within {
            bail!("{tool} still allowed {within:?} after EndTask");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// A task's facts for display: id, SPIFFE ID, subject, purpose, scopes, deadline.
pub fn task_json(task: &Task) -> Value {
    json!({
        "id": task.id,
        "spiffe_id": task.spiffe_id,
        "client": task.client,
        "subject": task.subject,
        "server": task.server,
        "scopes": task.scopes,
        "purpose": task.purpose,
        "consent_id": task.consent_id,
        "deadline_unix": task.deadline_unix,
    })
}

/// The SVID's facts for display: SPIFFE ID, signed claims, expiry.
pub fn svid_json(cred: &TaskCredential) -> Value {
    match cred
        .chain
        .first()
        .map(|c| tessera_identity::check_leaf_svid(c.as_ref()))
    {
        Some(Ok(leaf)) => json!({
            "spiffe_id": leaf.spiffe_id,
            "serial": leaf.serial_hex,
            "not_after_unix": leaf.not_after_unix,
            "claims": leaf.claims.as_ref().map(|c| json!({
                "task_id": c.task_id.to_string(),
                "subject": c.subject,
                "purpose": c.purpose,
                "server": c.server.to_string(),
                "scopes": c.scopes.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "consent_id": c.consent_id,
                "deadline_unix": c.deadline_unix,
            })),
        }),
        Some(Err(e)) => json!({"spiffe_id": cred.spiffe_id, "error": e.to_string()}),
        None => json!({"spiffe_id": cred.spiffe_id}),
    }
}

/// Parses a `--call` argument object.
///
/// # Errors
/// When `s` is not a JSON object.
pub fn parse_arguments(s: &str) -> anyhow::Result<Option<Map<String, Value>>> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(s).with_context(|| format!("arguments {s:?}"))? {
        Value::Object(m) => Ok(Some(m)),
        Value::Null => Ok(None),
        other => bail!("arguments must be a JSON object, got {other}"),
    }
}

/// Installs ring as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
