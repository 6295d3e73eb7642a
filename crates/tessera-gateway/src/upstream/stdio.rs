//! A stdio MCP server the gateway starts and supervises, served to the proxy as a
//! streamable-HTTP MCP endpoint.
//!
//! Most MCP servers (`npx @modelcontextprotocol/server-filesystem …`) speak only stdio:
//! one process, newline-delimited JSON-RPC on stdin/stdout, one client. The gateway has
//! many callers, so the bridge multiplexes them onto **one child**:
//!
//! ```text
//! proxy ──POST/GET/DELETE──▶ endpoint ──▶ bridge ──stdin──▶ child (supervised)
//!                              ▲            │  ids rewritten   │
//!                              └── JSON/SSE ┘◀──── stdout ─────┘  stderr → tracing
//! ```
//!
//! - [`child`]: spawning (own process group, a cleared environment plus what the config
//!   passes), `kill_on_drop`, restart on exit with exponential backoff, stderr line by
//!   line to `tracing` naming the child.
//! - [`lines`]: the bounded line reader on the child's stdout: a line past
//!   [`StdioConfig::max_message_bytes`] or one that is not a JSON-RPC message is logged
//!   (size only, never content) and dropped; the bridge goes on.
//! - [`bridge`]: the child is initialized once per process by the bridge (MCP
//!   2025-11-25, no client capabilities); each caller's request gets a fresh bridge id
//!   (so callers' ids never collide) and its progress token is rewritten the same way;
//!   responses and progress notifications go back to the request that caused them, with
//!   the caller's own id and token. A child that dies answers every request it still
//!   owed with a JSON-RPC error ([`UPSTREAM_UNAVAILABLE`]), never a hang.
//! - [`session`]: callers' `initialize` is answered from the cached result with an
//!   `Mcp-Session-Id` the bridge issues; the session's GET stream carries list-changed
//!   notifications and `notifications/resources/updated` for the URIs *that session*
//!   subscribed to (the child sees one subscription per URI, counted across sessions).
//! - [`endpoint`]: the HTTP surface (POST → `application/json`, or `text/event-stream`
//!   once a progress notification comes first; GET → the session's stream; DELETE → the
//!   end of the session). A 2026-07-28 stateless request (no session) goes to the same
//!   initialized child; `server/discover` is answered from the cached result.
//!
//! What a stdio child cannot get: the caller's identity. There are no headers on a pipe,
//! and every caller shares one child, so `Tessera-Client`/`Tessera-Task`/… never reach
//! it; the gateway's own checks are the only per-caller control in front of it.
//!
//! Server-to-client requests from the child are answered by the bridge, never relayed:
//! `ping` gets `{}`; `roots/list`, `sampling/createMessage`, `elicitation/create` and any
//! other get `-32601` (the bridge initializes the child with no client capabilities, so a
//! conforming child does not ask). Over stdio such a request carries nothing that names
//! the caller request it belongs to, so relaying it could hand one caller's question to
//! another. `notifications/message` (the child's log) goes to the gateway's log, not to
//! callers, for the same reason.

mod bridge;
mod child;
mod endpoint;
mod jsonrpc;
mod lines;
mod session;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::UpstreamService;

pub use jsonrpc::{UPSTREAM_BUSY, UPSTREAM_TIMEOUT, UPSTREAM_UNAVAILABLE};

/// `[upstream.stdio]`: the command the gateway runs as its upstream, and the bounds of
/// the bridge in front of it. Only `command` is required.
///
/// ```toml
/// [upstream.stdio]
/// command = "npx"
/// args = ["-y", "@modelcontextprotocol/server-filesystem@2026.8.31", "/srv/docs"]
/// env = { NODE_ENV = "production" }
/// # restart_backoff = "250ms"   restart_backoff_max = "30s"   init_timeout = "60s"
/// # request_timeout = "10m"     max_message_bytes = 4194304    max_in_flight = 1024
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioConfig {
    /// The program to run (looked up on the child's `PATH`).
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment for the child, on top of the variables `inherit_env` passes through.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of the gateway's own environment variables the child gets (when set).
    /// The child starts from an empty environment: the gateway's may hold settings and
    /// secrets a third-party server has no business reading. Default: `PATH`, `HOME`,
    /// `LANG`, `LC_ALL`, `TZ`, `TMPDIR` (what `npx`/`node`/`python` need to run).
    #[serde(default = "default_inherit_env")]
    pub inherit_env: Vec<String>,
    /// Its working directory (default: the gateway's).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// The child's name in the gateway's log (default: the command's file name).
    #[serde(default)]
    pub name: Option<String>,
    /// First wait before restarting a child that exited; doubled after each exit that
    /// follows a short run, up to `restart_backoff_max`, and reset once a child has run
    /// for `restart_backoff_max` (default 250 ms).
    #[serde(default = "default_restart_backoff", with = "duration")]
    pub restart_backoff: Duration,
    /// Longest wait between restarts (default 30 s).
    #[serde(default = "default_restart_backoff_max", with = "duration")]
    pub restart_backoff_max: Duration,
    /// How long the child has to answer the bridge's `initialize` before it is killed
    /// and restarted (default 60 s: a first `npx -y` downloads the package).
    #[serde(default = "default_init_timeout", with = "duration")]
    pub init_timeout: Duration,
    /// How long one request may wait for the child's answer; past it the caller gets
    /// [`UPSTREAM_TIMEOUT`] and the child `notifications/cancelled` (default 10 min).
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
    /// The largest JSON-RPC message either way, in bytes (default 4 MiB, at most
    /// 64 MiB). A caller's larger body gets 413; a larger line from the child is
    /// dropped and logged.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Requests the child may owe at once; past it a caller gets [`UPSTREAM_BUSY`]
    /// at once (default 1,024).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Bridge sessions (callers' `initialize`) held at once; past it the oldest is
    /// forgotten and its next request gets 404, on which MCP clients initialize again
    /// (default 100,000, the front's session bound). Idle sessions go after 10 min.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
}

fn default_inherit_env() -> Vec<String> {
    ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"]
        .map(String::from)
        .to_vec()
}
fn default_restart_backoff() -> Duration {
    Duration::from_millis(250)
}
fn default_restart_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_init_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_max_message_bytes() -> usize {
    4 << 20
}
fn default_max_in_flight() -> usize {
    1024
}
fn default_max_sessions() -> usize {
    100_000
}

/// Smallest accepted `max_message_bytes`: an `initialize` result must fit.
const MIN_MESSAGE_BYTES: usize = 1 << 10;
/// Largest accepted `max_message_bytes`.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

impl StdioConfig {
    /// A config running `command args…` with every bound at its default.
    pub fn new(
        command: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        StdioConfig {
            command: command.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            inherit_env: default_inherit_env(),
            cwd: None,
            name: None,
            restart_backoff: default_restart_backoff(),
            restart_backoff_max: default_restart_backoff_max(),
            init_timeout: default_init_timeout(),
            request_timeout: default_request_timeout(),
            max_message_bytes: default_max_message_bytes(),
            max_in_flight: default_max_in_flight(),
            max_sessions: default_max_sessions(),
        }
    }

    /// The child's name in logs.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            std::path::Path::new(&self.command)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.command.clone())
        })
    }

    /// Refuses a config the bridge cannot serve safely, naming the field.
    pub fn validate(&self) -> Result<(), StdioError> {
        let bad = |field: &'static str, why: String| Err(StdioError::Config { field, why });
        if self.command.trim().is_empty() {
            return bad("command", "is empty".into());
        }
        if self.command.contains('\0') || self.args.iter().any(|a| a.contains('\0')) {
            return bad("command", "contains a NUL byte".into());
        }
        for key in self.env.keys().chain(&self.inherit_env) {
            if key.is_empty() || key.contains(['=', '\0']) {
                return bad(
                    "env",
                    format!("{key:?} is not an environment variable name"),
                );
            }
        }
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&self.max_message_bytes) {
            return bad(
                "max_message_bytes",
                format!("must be {MIN_MESSAGE_BYTES}..={MAX_MESSAGE_BYTES}"),
            );
        }
        if self.restart_backoff.is_zero() || self.restart_backoff > self.restart_backoff_max {
            return bad(
                "restart_backoff",
                "must be above zero and at most restart_backoff_max".into(),
            );
        }
        for (field, d) in [
            ("init_timeout", self.init_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if d.is_zero() {
                return bad(field, "must be above zero".into());
            }
        }
        for (field, n) in [
            ("max_in_flight", self.max_in_flight),
            ("max_sessions", self.max_sessions),
        ] {
            if n == 0 {
                return bad(field, "must be at least 1".into());
            }
        }
        Ok(())
    }
}

/// Durations in the config as `humantime` writes them: `"250ms"`, `"30s"`, `"10m"`.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| D::Error::custom(format!("{s:?}: {e}")))
    }
}

/// Why a stdio upstream could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StdioError {
    /// A config value the bridge refuses.
    #[error("[upstream.stdio] {field} {why}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The first child could not be started (a later failure is retried with backoff).
    #[error("starting the stdio upstream {command:?}: {source}")]
    Spawn {
        /// The configured command.
        command: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The gateway's randomness source (for session ids) is unusable.
    #[error("reading /dev/urandom for session ids: {0}")]
    Random(#[source] std::io::Error),
}

/// A supervised stdio MCP server, served as a streamable-HTTP MCP endpoint. Cheap to
/// clone; every clone serves the same child.
#[derive(Clone, Debug)]
pub struct StdioUpstream {
    bridge: Arc<bridge::Bridge>,
}

impl StdioUpstream {
    /// Spawns and supervises the child (restarted on exit with backoff; stderr line by
    /// line to `tracing`), initializes it once, and serves it as a streamable-HTTP MCP
    /// endpoint.
    ///
    /// Returns as soon as the first child is running ([`Self::is_ready`] turns true once
    /// it has answered `initialize`); fails when the config is refused or the first
    /// child cannot be started at all (e.g. the command does not exist). The child lives
    /// exactly as long as the returned guard: dropping it (or awaiting
    /// [`Background::shutdown`](tessera_verify::background::Background::shutdown))
    /// closes the child's stdin, waits briefly, then kills its process group; requests
    /// still in flight get [`UPSTREAM_UNAVAILABLE`].
    pub async fn start(
        config: StdioConfig,
    ) -> Result<(StdioUpstream, tessera_verify::background::Background), StdioError> {
        config.validate()?;
        let first = child::spawn(&config).map_err(|source| StdioError::Spawn {
            command: config.command.clone(),
            source,
        })?;
        let bridge = Arc::new(bridge::Bridge::new(config)?);
        let supervised = Arc::clone(&bridge);
        let guard = tessera_verify::background::Background::spawn("stdio-upstream", |stop| {
            child::supervise(supervised, first, stop)
        });
        Ok((StdioUpstream { bridge }, guard))
    }

    /// Whether a child is up and has answered the bridge's `initialize` (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        self.bridge.is_ready()
    }

    /// The process id of the current child, while one runs (for logs and tests).
    pub fn child_pid(&self) -> Option<u32> {
        self.bridge.child_pid()
    }

    /// The endpoint the proxy sends to.
    pub fn service(&self) -> UpstreamService {
        endpoint::service(Arc::clone(&self.bridge))
    }
}
