//! Server configuration: embedded defaults < TOML file < `TESSERA_SERVER_*` environment <
//! flags, as the agent's (`tessera_agent::config`): unknown keys are errors, and a refused
//! configuration lists every bad key, variable and flag at once, each with where its
//! value came from.
//!
//! The variables are `TESSERA_SERVER_*`, not the agent's `TESSERA_*`: the two run side by
//! side in development and in `tessera demo`, and an agent's `TESSERA_ADMIN_SOCKET` must
//! not move the server's socket onto it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;
use tessera_agent::config::{Env, LogConfig, LogFormat};
use tessera_identity::TrustDomain;

/// Everything the server can be told, parsed. Every key has a default, documented in
/// the README.
#[derive(Clone, Debug)]
pub struct Config {
    /// The trust domain this server is the control plane of.
    pub trust_domain: TrustDomain,
    /// PostgreSQL: where, and how many connections.
    pub database: DatabaseConfig,
    /// Unix socket serving the Admin API (mode 0600, caller uid checked).
    pub admin_socket: PathBuf,
    /// Uids besides the server's own (and root) allowed on the admin socket.
    pub admin_uids: Vec<u32>,
    /// Address for `/healthz`, `/readyz` and `/metrics`.
    pub http_listen: SocketAddr,
    /// How long the change log keeps a change; an agent or replica further behind
    /// takes a snapshot. At least a minute.
    pub change_retention: Duration,
    /// How long audit records are kept; `None`: forever.
    pub audit_retention: Option<Duration>,
    /// Logging (the agent's `[log]` section).
    pub log: LogConfig,
    /// The Kubernetes PSAT node attestor (`[k8s_psat]`); `None` unless enabled.
    pub k8s_psat: Option<crate::attest::k8s_psat::K8sPsatSettings>,
    /// `[ca]`: the cluster root and the lifetimes of what it signs.
    pub ca: CaConfig,
    /// `[listen]`: the Node API's TLS listener.
    pub node_listen: SocketAddr,
    /// `[node_api]`: the Node API's behaviour.
    pub node_api: NodeApiConfig,
}

/// `[ca]`: the cluster root every replica mounts (made by `tessera-server ca init`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaConfig {
    /// The root certificate (PEM). With `key_file`, enables the Node API; without both,
    /// the server serves its admin socket only.
    pub cert_file: Option<PathBuf>,
    /// The root's private key (PEM, mode 0600 or stricter).
    pub key_file: Option<PathBuf>,
    /// Lifetime of node CAs and node SVIDs (renewed by agents at half life).
    #[serde(with = "duration")]
    pub node_ca_ttl: Duration,
    /// Lifetime of the server's own SVID (renewed at half life), and the cap on MCP server
    /// SVIDs signed through `SignServerSvid`.
    #[serde(with = "duration")]
    pub server_svid_ttl: Duration,
}

impl Default for CaConfig {
    fn default() -> CaConfig {
        CaConfig {
            cert_file: None,
            key_file: None,
            node_ca_ttl: Duration::from_secs(24 * 3600),
            server_svid_ttl: Duration::from_secs(3600),
        }
    }
}

/// `[node_api]`: how the Node API serves agents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeApiConfig {
    /// Longest a `Sync` stream goes without a message: a heartbeat is sent at least this
    /// often, so an agent knows how current its copy is.
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// `SignServerSvid` calls one node may make per minute (a token bucket of this size,
    /// refilled over a minute); one more is RESOURCE_EXHAUSTED.
    pub sign_server_svid_per_minute: u32,
}

impl Default for NodeApiConfig {
    fn default() -> NodeApiConfig {
        NodeApiConfig {
            heartbeat_interval: Duration::from_secs(1),
            sign_server_svid_per_minute: 60,
        }
    }
}

/// `[listen]` in the file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct FileListen {
    node: SocketAddr,
}

impl Default for FileListen {
    fn default() -> FileListen {
        FileListen {
            node: SocketAddr::from(([0, 0, 0, 0], 8081)),
        }
    }
}

/// `[database]`. Its `Debug` leaves the password out (sqlx's options print it).
#[derive(Clone)]
pub struct DatabaseConfig {
    /// Connection options from `database.url` (without a password) and the password
    /// file's content, if any.
    pub connect: PgConnectOptions,
    /// `database.url` as given (it holds no password), for logs and `print-config`.
    pub url: String,
    /// The file the password was read from.
    pub password_file: Option<PathBuf>,
    /// Most connections the server holds for requests (the change listener has one more).
    pub max_connections: u32,
    /// How long a request waits for a connection before failing UNAVAILABLE.
    pub acquire_timeout: Duration,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url)
            .field("password_file", &self.password_file)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish_non_exhaustive()
    }
}

/// The settings flags can give, each overriding file and environment.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// `--trust-domain`.
    pub trust_domain: Option<String>,
    /// `--database-url`.
    pub database_url: Option<String>,
    /// `--admin-socket`.
    pub admin_socket: Option<PathBuf>,
    /// `--http-listen`.
    pub http_listen: Option<SocketAddr>,
    /// `--node-listen` (`listen.node`).
    pub node_listen: Option<SocketAddr>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
}

/// A refused configuration: every problem, each naming where its value came from.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// One line per problem: where the value came from, and why it is refused.
    pub problems: Vec<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid configuration ({} problem(s)):",
            self.problems.len()
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

/// The file's shape, with its defaults.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    trust_domain: String,
    database: FileDatabase,
    admin_socket: PathBuf,
    admin_uids: Vec<u32>,
    http_listen: SocketAddr,
    #[serde(with = "duration")]
    change_retention: Duration,
    #[serde(with = "duration")]
    audit_retention: Duration,
    log: LogConfig,
    k8s_psat: k8s_psat::FileK8sPsat,
    ca: CaConfig,
    listen: FileListen,
    node_api: NodeApiConfig,
}

/// `[database]` in the file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct FileDatabase {
    url: String,
    password_file: Option<PathBuf>,
    max_connections: u32,
    #[serde(with = "duration")]
    acquire_timeout: Duration,
}

impl Default for FileConfig {
    fn default() -> FileConfig {
        FileConfig {
            trust_domain: "tessera.local".into(),
            database: FileDatabase::default(),
            admin_socket: "/run/tessera-server/admin.sock".into(),
            admin_uids: Vec::new(),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            change_retention: Duration::from_secs(24 * 3600),
            audit_retention: Duration::ZERO,
            log: LogConfig {
                format: LogFormat::Text,
                level: "info".into(),
            },
            k8s_psat: k8s_psat::FileK8sPsat::default(),
            ca: CaConfig::default(),
            listen: FileListen::default(),
            node_api: NodeApiConfig::default(),
        }
    }
}

impl Default for FileDatabase {
    fn default() -> FileDatabase {
        FileDatabase {
            url: "postgres://tessera@localhost:5432/tessera".into(),
            password_file: None,
            max_connections: 8,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

/// Durations written like `90s`, `5m`, `24h`.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// The merged layers, and where each overridden key's value came from.
struct Layers {
    raw: FileConfig,
    file: Option<PathBuf>,
    origins: HashMap<&'static str, String>,
    problems: Vec<String>,
}

impl Layers {
    fn origin(&self, key: &'static str) -> String {
        match (self.origins.get(key), &self.file) {
            (Some(origin), _) => origin.clone(),
            (None, Some(path)) => format!("`{key}` in config file {}", path.display()),
            (None, None) => format!("`{key}` (built-in default)"),
        }
    }

    fn refuse(&mut self, key: &'static str, reason: impl std::fmt::Display) {
        let problem = format!("{}: {reason}", self.origin(key));
        self.problems.push(problem);
    }

    /// Reads `var` for `key`, parsed by `parse`; a bad value is a problem and leaves
    /// the layer below in force.
    fn env<T>(
        &mut self,
        env: &dyn Env,
        var: &'static str,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let raw = env.var(var)?;
        let Some(value) = raw.to_str() else {
            self.problems
                .push(format!("environment variable {var}: not valid UTF-8"));
            return None;
        };
        match parse(value) {
            Ok(parsed) => {
                self.origins
                    .insert(key, format!("environment variable {var}={value:?}"));
                Some(parsed)
            }
            Err(reason) => {
                self.problems
                    .push(format!("environment variable {var}={value:?}: {reason}"));
                None
            }
        }
    }
}

fn text(s: &str) -> Result<String, String> {
    Ok(s.to_owned())
}

fn parse<T: FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| e.to_string())
}

fn duration_text(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

// === impl Config ===

impl Config {
    /// Loads the configuration: the defaults, then the TOML file at `file`, then the
    /// variables `env` holds, then `flags`. Reads the database password file.
    pub fn load(file: Option<&Path>, env: &dyn Env, flags: &Flags) -> Result<Config, ConfigError> {
        let mut layers = Layers {
            raw: FileConfig::default(),
            file: file.map(Path::to_owned),
            origins: HashMap::new(),
            problems: Vec::new(),
        };
        if let Some(path) = file {
            match std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| toml::from_str::<FileConfig>(&text).map_err(|e| e.to_string()))
            {
                Ok(raw) => layers.raw = raw,
                Err(reason) => layers
                    .problems
                    .push(format!("config file {}: {reason}", path.display())),
            }
        }
        apply_env(&mut layers, env);
        apply_flags(&mut layers, flags);
        Config::check(layers)
    }

    /// The effective configuration as TOML (for `tessera-server print-config`); it
    /// parses back to the same configuration.
    pub fn to_toml(&self) -> String {
        let file = FileConfig {
            trust_domain: self.trust_domain.to_string(),
            database: FileDatabase {
                url: self.database.url.clone(),
                password_file: self.database.password_file.clone(),
                max_connections: self.database.max_connections,
                acquire_timeout: self.database.acquire_timeout,
            },
            admin_socket: self.admin_socket.clone(),
            admin_uids: self.admin_uids.clone(),
            http_listen: self.http_listen,
            change_retention: self.change_retention,
            audit_retention: self.audit_retention.unwrap_or_default(),
            log: self.log.clone(),
            k8s_psat: k8s_psat::to_file(self.k8s_psat.as_ref()),
            ca: self.ca.clone(),
            listen: FileListen {
                node: self.node_listen,
            },
            node_api: self.node_api.clone(),
        };
        toml::to_string_pretty(&file).expect("config serializes")
    }

    fn check(mut l: Layers) -> Result<Config, ConfigError> {
        let raw = l.raw.clone();
        let trust_domain = TrustDomain::try_from(raw.trust_domain.as_str())
            .map_err(|e| l.refuse("trust_domain", e))
            .ok();
        let connect = database_options(&raw.database.url)
            .map_err(|reason| l.refuse("database.url", reason))
            .ok();
        let password = match &raw.database.password_file {
            None => None,
            Some(path) => match read_password(path) {
                Ok(password) => Some(password),
                Err(reason) => {
                    l.refuse("database.password_file", reason);
                    None
                }
            },
        };
        if !(1..=1000).contains(&raw.database.max_connections) {
            l.refuse("database.max_connections", "must be between 1 and 1000");
        }
        if raw.database.acquire_timeout.is_zero()
            || raw.database.acquire_timeout > Duration::from_secs(60)
        {
            l.refuse(
                "database.acquire_timeout",
                "must be positive and at most 60s",
            );
        }
        if raw.change_retention < Duration::from_secs(60) {
            l.refuse(
                "change_retention",
                "must be at least 1m (agents catching up after a short outage should not need a snapshot)",
            );
        }
        if raw.ca.cert_file.is_some() != raw.ca.key_file.is_some() {
            l.refuse(
                "ca.cert_file",
                "set both ca.cert_file and ca.key_file, or neither",
            );
        }
        if !(tessera_authority::MIN_NODE_CA_TTL..=tessera_authority::MAX_NODE_CA_TTL)
            .contains(&raw.ca.node_ca_ttl)
        {
            l.refuse("ca.node_ca_ttl", "must be between 10m and 30d");
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(7 * 24 * 3600))
            .contains(&raw.ca.server_svid_ttl)
        {
            l.refuse("ca.server_svid_ttl", "must be between 1m and 7d");
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60))
            .contains(&raw.node_api.heartbeat_interval)
        {
            l.refuse(
                "node_api.heartbeat_interval",
                "must be between 100ms and 60s",
            );
        }
        if !(1..=10_000).contains(&raw.node_api.sign_server_svid_per_minute) {
            l.refuse(
                "node_api.sign_server_svid_per_minute",
                "must be between 1 and 10000",
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log.level) {
            l.refuse("log.level", e);
        }
        let k8s_psat = k8s_psat::check(&mut l, &raw.k8s_psat);
        if !l.problems.is_empty() {
            return Err(ConfigError {
                problems: l.problems,
            });
        }
        let mut connect = connect.expect("refused above otherwise");
        if let Some(password) = password {
            connect = connect.password(&password);
        }
        Ok(Config {
            trust_domain: trust_domain.expect("refused above otherwise"),
            database: DatabaseConfig {
                connect,
                url: raw.database.url,
                password_file: raw.database.password_file,
                max_connections: raw.database.max_connections,
                acquire_timeout: raw.database.acquire_timeout,
            },
            admin_socket: raw.admin_socket,
            admin_uids: raw.admin_uids,
            http_listen: raw.http_listen,
            change_retention: raw.change_retention,
            audit_retention: (!raw.audit_retention.is_zero()).then_some(raw.audit_retention),
            log: raw.log,
            k8s_psat,
            ca: raw.ca,
            node_listen: raw.listen.node,
            node_api: raw.node_api,
        })
    }
}

/// Parses `database.url`, refusing one that carries a password: configuration is not
/// secret (it is printed, logged, put in ConfigMaps); the password goes in
/// `database.password_file`.
fn database_options(url: &str) -> Result<PgConnectOptions, String> {
    let after_scheme = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or("must start with postgres:// or postgresql://")?;
    let authority = after_scheme.split(['/', '?']).next().unwrap_or_default();
    let userinfo_has_password = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let query_has_password = url
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|p| p.starts_with("password=")));
    if userinfo_has_password || query_has_password {
        return Err("must not hold a password; put it in database.password_file".into());
    }
    PgConnectOptions::from_str(url).map_err(|e| e.to_string())
}

/// Reads the password file: owner-only (0600 or stricter; or root's and our group's
/// only, as a Kubernetes Secret with `fsGroup` mounts it: see
/// [`tessera_authority::is_private_file`]), its first line.
fn read_password(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if !tessera_authority::is_private_file(&meta) {
        return Err(format!(
            "{} has mode {mode:04o}; it holds a password and must be 0600 or stricter \
             (or root's and 0440 to our own group, as a Secret mounted with fsGroup)",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let password = text.lines().next().unwrap_or_default().to_owned();
    if password.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(password)
}

fn apply_env(l: &mut Layers, env: &dyn Env) {
    k8s_psat::apply_env(l, env);
    if let Some(v) = l.env(env, "TESSERA_SERVER_TRUST_DOMAIN", "trust_domain", text) {
        l.raw.trust_domain = v;
    }
    if let Some(v) = l.env(env, "TESSERA_SERVER_DATABASE_URL", "database.url", text) {
        l.raw.database.url = v;
    }
    if let Some(v) = l.env(
        env,
        "TESSERA_SERVER_DATABASE_PASSWORD_FILE",
        "database.password_file",
        text,
    ) {
        l.raw.database.password_file = (!v.is_empty()).then(|| v.into());
    }
    if let Some(v) = l.env(
        env,
        "TESSERA_SERVER_DATABASE_MAX_CONNECTIONS",
        "database.max_connections",
        parse,
    ) {
        l.raw.database.max_connections = v;
    }
    if let Some(v) = l.env(
        env,
        "TESSERA_SERVER_DATABASE_ACQUIRE_TIMEOUT",
        "database.acquire_timeout",
        duration_text,
    ) {
        l.raw.database.acquire_timeout = v;
    }
    if let Some(v) = l.env(env, "TESSERA_SERVER_ADMIN_SOCKET", "admin_socket", text) {
        l.raw.admin_socket = v.into();
    }
    if let Some(v) = l.env(env, "TESSERA_SERVER_ADMIN_UIDS", "admin_uids", |s| {
        s.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse::<u32>().map_err(|e| e.to_string()))
            .collect()
    }) {
        l.raw.admin_uids = v;
    }
    if let Some(v) = l.env(env, "TESSERA_SERVER_HTTP_LISTEN", "http_listen", parse) {
        l.raw.http_listen = v;
    }
    if let Some(v) = l.env(
        env,
        "TESSERA_SERVER_CHANGE_RETENTION",
        "change_retention",
        duration_text,
    ) {
        l.raw.change_retention = v;
    }
    if let Some(v) = l.env(
        env,
        "TESSERA_SERVER_AUDIT_RETENTION",
        "audit_retention",
        duration_text,
    ) {
        l.raw.audit_retention = v;
    }
    if let Some(v) = l.env(
        env,
        "TESSERA_SERVER_LOG_FORMAT",
        "log.format",
        |s| match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected `text` or `json`".into()),
        },
    ) {
        l.raw.log.format = v;
    }
    if let Some(v) = l.env(env, "TESSERA_SERVER_LOG_LEVEL", "log.level", text) {
        l.raw.log.level = v;
    }
    if let Some(v) = l.env(env, "TESSERA_SERVER_CA_CERT_FILE", "ca.cert_file", text) {
        l.raw.ca.cert_file = (!v.is_empty()).then(|| v.into());
    }
    if let Some(v) = l.env(env, "TESSERA_SERVER_CA_KEY_FILE", "ca.key_file", text) {
        l.raw.ca.key_file = (!v.is_empty()).then(|| v.into());
    }
    if let Some(v) = l.env(
        env,
        "TESSERA_SERVER_CA_NODE_CA_TTL",
        "ca.node_ca_ttl",
        duration_text,
    ) {
        l.raw.ca.node_ca_ttl = v;
    }
    if let Some(v) = l.env(
        env,
        "TESSERA_SERVER_CA_SERVER_SVID_TTL",
        "ca.server_svid_ttl",
        duration_text,
    ) {
        l.raw.ca.server_svid_ttl = v;
    }
    if let Some(v) = l.env(env, "TESSERA_SERVER_LISTEN_NODE", "listen.node", parse) {
        l.raw.listen.node = v;
    }
    if let Some(v) = l.env(
        env,
        "TESSERA_SERVER_NODE_API_HEARTBEAT_INTERVAL",
        "node_api.heartbeat_interval",
        duration_text,
    ) {
        l.raw.node_api.heartbeat_interval = v;
    }
    if let Some(v) = l.env(
        env,
        "TESSERA_SERVER_NODE_API_SIGN_SERVER_SVID_PER_MINUTE",
        "node_api.sign_server_svid_per_minute",
        parse,
    ) {
        l.raw.node_api.sign_server_svid_per_minute = v;
    }
}

fn apply_flags(l: &mut Layers, flags: &Flags) {
    let by_flag = |l: &mut Layers, key: &'static str, flag: &str| {
        l.origins.insert(key, format!("flag {flag} (`{key}`)"));
    };
    if let Some(v) = &flags.trust_domain {
        l.raw.trust_domain = v.clone();
        by_flag(l, "trust_domain", "--trust-domain");
    }
    if let Some(v) = &flags.database_url {
        l.raw.database.url = v.clone();
        by_flag(l, "database.url", "--database-url");
    }
    if let Some(v) = &flags.admin_socket {
        l.raw.admin_socket = v.clone();
        by_flag(l, "admin_socket", "--admin-socket");
    }
    if let Some(v) = flags.http_listen {
        l.raw.http_listen = v;
        by_flag(l, "http_listen", "--http-listen");
    }
    if let Some(v) = flags.node_listen {
        l.raw.listen.node = v;
        by_flag(l, "listen.node", "--node-listen");
    }
    if let Some(v) = flags.log_format {
        l.raw.log.format = v;
        by_flag(l, "log.format", "--log-format");
    }
}

mod k8s_psat;
#[cfg(test)]
mod tests;
