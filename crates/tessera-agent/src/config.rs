//! Agent configuration: embedded defaults < TOML file < `TESSERA_*` environment < flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Errors loading or validating configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("reading config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema (unknown keys are errors).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An environment variable holds a value that does not parse.
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A setting is out of range or inconsistent with another.
    #[error("invalid setting `{key}`: {reason}")]
    Invalid {
        /// The TOML key.
        key: &'static str,
        /// Why it is refused.
        reason: String,
    },
}

/// Everything the agent can be told. Every field has a default, documented in the README.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Trust domain of every identity this agent issues.
    pub trust_domain: String,
    /// Directory for the CA and the SQLite store (created 0700).
    pub data_dir: PathBuf,
    /// Unix socket serving the SPIFFE Workload API (mode 0777: attestation decides).
    pub workload_socket: PathBuf,
    /// Unix socket serving the Admin API (mode 0600, caller uid checked).
    pub admin_socket: PathBuf,
    /// Loopback address for `/healthz`, `/readyz` and `/metrics`.
    pub http_listen: SocketAddr,
    /// Uids besides the agent's own (and root) allowed on the admin socket.
    pub admin_uids: Vec<u32>,
    /// Lifetime of client SVIDs, e.g. "1h".
    #[serde(with = "humantime_serde")]
    pub client_svid_ttl: Duration,
    /// Lifetime of task SVIDs, e.g. "5m"; rotated at half life, never past the task's deadline.
    #[serde(with = "humantime_serde")]
    pub task_svid_ttl: Duration,
    /// Lifetime of JWT-SVIDs (FetchJWTSVID), e.g. "5m"; a task's never outlives the task.
    /// Bearer tokens: keep it short.
    #[serde(with = "humantime_serde")]
    pub jwt_svid_ttl: Duration,
    /// Task lifetime when BeginTask names none.
    #[serde(with = "humantime_serde")]
    pub task_default_lifetime: Duration,
    /// Longest task lifetime BeginTask may ask for.
    #[serde(with = "humantime_serde")]
    pub task_max_lifetime: Duration,
    /// Most live tasks one process may hold; BeginTask beyond it is refused with
    /// RESOURCE_EXHAUSTED. Every live task's SVID, key and bundle ride in each
    /// FetchX509SVID message of its process, and standard Workload API clients refuse
    /// messages over 4 MiB: the default keeps even tasks with the largest claims (16 KiB)
    /// at 2.1 MiB. Also bounds what one process can make the agent hold.
    pub task_max_live_per_process: usize,
    /// Most `Revocations.Watch` streams one identity (SPIFFE ID) may hold open at once;
    /// one more is refused with RESOURCE_EXHAUSTED until one closes. Each open stream
    /// costs the agent a task and, while it sends, a copy of the revoked set in its
    /// buffers; a verifier needs one.
    pub revocation_max_watchers_per_identity: usize,
    /// How long ended tasks (and their SVID records) are kept after they ended, e.g.
    /// "7d"; "0s" keeps them forever. A task whose revocation is still in force is kept
    /// regardless. Their audit records follow `audit_retention`.
    #[serde(with = "humantime_serde")]
    pub task_retention: Duration,
    /// How long audit records are kept, e.g. "90d"; "0s" (the default) keeps them
    /// forever. Ship them elsewhere with `audit_log` before they go.
    #[serde(with = "humantime_serde")]
    pub audit_retention: Duration,
    /// Also append every audit record as a JSON line to this file (mode 0600).
    pub audit_log: Option<PathBuf>,
    /// Largest executable the agent hashes for `unix:sha256` selectors, in bytes. A
    /// caller whose executable is larger is refused while any entry uses
    /// `unix:sha256`: hashing is the one attestation cost the caller chooses, and an
    /// executable can be made huge for free (a sparse file).
    pub exe_hash_max_bytes: u64,
    /// The signing CA.
    pub ca: CaConfig,
    /// Logging.
    pub log: LogConfig,
    /// The Kubernetes workload attestor (`k8s:*` selectors); off unless enabled.
    pub kubernetes: KubernetesConfig,
}

/// Where the CA comes from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CaConfig {
    /// "self-signed" (a root kept in `data_dir/ca`) or "upstream" (files below).
    pub mode: CaModeName,
    /// Lifetime of each self-signed root; rotation prepares the next at half life.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Life of each JWT-SVID signing key (kept in `data_dir/ca` in either mode): the next
    /// key is published in the JWT bundle at half of it and signs from two thirds on.
    #[serde(with = "humantime_serde")]
    pub jwt_key_ttl: Duration,
    /// Upstream mode: intermediate certificate (then any further intermediates), PEM.
    pub upstream_cert: Option<PathBuf>,
    /// Upstream mode: the intermediate's private key, PEM, mode 0600.
    pub upstream_key: Option<PathBuf>,
    /// Upstream mode: the upstream root certificate(s), PEM.
    pub upstream_bundle: Option<PathBuf>,
}

/// CA mode names as written in TOML.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CaModeName {
    /// A self-signed root.
    SelfSigned,
    /// An upstream intermediate.
    Upstream,
}

/// Logging settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// "text" or "json".
    pub format: LogFormat,
    /// A tracing filter, e.g. "info" or "tessera_agent=debug,info". `RUST_LOG` wins if set.
    pub level: String,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

// === [kubernetes] ===

/// The Kubernetes workload attestor: caller pid → cgroup → pod UID and container
/// id → the kubelet's `/pods` → `k8s:*` selectors, added to the unix ones.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Attest callers' pods through the kubelet. Needs the host's pid namespace
    /// (`hostPID: true`) so `/proc/<pid>` names the caller.
    pub enabled: bool,
    /// Base URL of the kubelet's secure port (https only); `/pods` is appended.
    pub kubelet_url: String,
    /// PEM CA bundle the kubelet's serving certificate must chain to; the
    /// in-cluster CA (`/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`) when unset.
    pub kubelet_ca: Option<PathBuf>,
    /// Name the kubelet's certificate must carry (DNS name or IP); the URL's host when unset.
    pub kubelet_server_name: Option<String>,
    /// Accept any kubelet certificate. Whoever can answer on `kubelet_url` then
    /// chooses callers' pod metadata, hence their identities. For kubelets with
    /// self-signed serving certificates, reached over loopback, only.
    pub insecure_skip_kubelet_verify: bool,
    /// Service-account token presented to the kubelet; re-read on every request.
    pub token_file: PathBuf,
    /// How long a fetched pod list answers hits without a refresh (labels can change).
    #[serde(with = "humantime_serde")]
    pub pod_cache_ttl: Duration,
    /// Least time between two pod-list fetches, whatever the misses.
    #[serde(with = "humantime_serde")]
    pub refresh_min_interval: Duration,
    /// Extra fetches for a container the kubelet does not list yet, before denying.
    pub retry_attempts: u32,
    /// Pause between those fetches.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// Deadline for one kubelet request (connect, TLS, response, body).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Where the agent sees the host's cgroup hierarchies. A caller's pod cgroup
    /// read as an absolute path is checked there: every directory down to the pod's
    /// must be root's and writable by no one else. In a container, mount the host's
    /// `/sys/fs/cgroup` here read-only (the DaemonSet uses `/host/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
}

/// Where the agent looks for the cgroup hierarchies unless told otherwise.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The in-cluster CA and token, as every pod with a service account has them.
pub const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// See [`IN_CLUSTER_CA`].
pub const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            enabled: false,
            kubelet_url: "https://127.0.0.1:10250".into(),
            kubelet_ca: None,
            kubelet_server_name: None,
            insecure_skip_kubelet_verify: false,
            token_file: IN_CLUSTER_TOKEN.into(),
            pod_cache_ttl: Duration::from_secs(10),
            refresh_min_interval: Duration::from_millis(200),
            retry_attempts: 5,
            retry_interval: Duration::from_millis(200),
            request_timeout: Duration::from_secs(5),
            cgroup_root: DEFAULT_CGROUP_ROOT.into(),
        }
    }
}

impl KubernetesConfig {
    /// The kubelet URL, checked: https, a host, no path beyond `/`, no query.
    pub fn kubelet_uri(&self) -> Result<http::Uri, ConfigError> {
        let bad = |reason: String| ConfigError::Invalid {
            key: "kubernetes.kubelet_url",
            reason,
        };
        let uri: http::Uri = self
            .kubelet_url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad(
                "must be https (the token must not travel in clear; the read-only port is not supported)".into(),
            ));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad("has no host".into()));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad(
                "must be a base URL such as https://127.0.0.1:10250".into()
            ));
        }
        Ok(uri)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        self.kubelet_uri()?;
        if self.insecure_skip_kubelet_verify && self.kubelet_ca.is_some() {
            return Err(ConfigError::Invalid {
                key: "kubernetes.insecure_skip_kubelet_verify",
                reason: "conflicts with kubernetes.kubelet_ca: choose one".into(),
            });
        }
        if self.insecure_skip_kubelet_verify {
            tracing::warn!(
                url = %self.kubelet_url,
                "kubernetes.insecure_skip_kubelet_verify is set: the kubelet's certificate is not checked"
            );
        }
        if self.retry_attempts > 20 {
            return Err(ConfigError::Invalid {
                key: "kubernetes.retry_attempts",
                reason: "at most 20 (callers wait for every attempt)".into(),
            });
        }
        for (key, d) in [
            ("kubernetes.retry_interval", self.retry_interval),
            ("kubernetes.refresh_min_interval", self.refresh_min_interval),
            ("kubernetes.request_timeout", self.request_timeout),
        ] {
            if d.is_zero() || d > Duration::from_secs(60) {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be positive and at most 60s".into(),
                });
            }
        }
        if !self.cgroup_root.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "kubernetes.cgroup_root",
                reason: "must be an absolute path".into(),
            });
        }
        if self.pod_cache_ttl > Duration::from_secs(600) {
            return Err(ConfigError::Invalid {
                key: "kubernetes.pod_cache_ttl",
                reason: "at most 10m (pod labels are selectors and can change)".into(),
            });
        }
        Ok(())
    }

    /// `TESSERA_KUBERNETES_*` overrides.
    fn apply_env(&mut self, lookup: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn boolean(var: &'static str, v: String) -> Result<bool, ConfigError> {
            match v.as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(ConfigError::Env {
                    var,
                    value: v,
                    reason: "expected true or false".into(),
                }),
            }
        }
        if let Some(v) = lookup("TESSERA_KUBERNETES_ENABLED") {
            self.enabled = boolean("TESSERA_KUBERNETES_ENABLED", v)?;
        }
        if let Some(v) = lookup("TESSERA_KUBERNETES_KUBELET_URL") {
            self.kubelet_url = v;
        }
        if let Some(v) = lookup("TESSERA_KUBERNETES_KUBELET_CA") {
            self.kubelet_ca = (!v.is_empty()).then(|| v.into());
        }
        if let Some(v) = lookup("TESSERA_KUBERNETES_KUBELET_SERVER_NAME") {
            self.kubelet_server_name = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = lookup("TESSERA_KUBERNETES_INSECURE_SKIP_KUBELET_VERIFY") {
            self.insecure_skip_kubelet_verify =
                boolean("TESSERA_KUBERNETES_INSECURE_SKIP_KUBELET_VERIFY", v)?;
        }
        if let Some(v) = lookup("TESSERA_KUBERNETES_TOKEN_FILE") {
            self.token_file = v.into();
        }
        if let Some(v) = lookup("TESSERA_KUBERNETES_CGROUP_ROOT") {
            self.cgroup_root = v.into();
        }
        Ok(())
    }
}

// === end [kubernetes] ===

impl Default for Config {
    fn default() -> Self {
        Config {
            trust_domain: "tessera.local".into(),
            data_dir: "/var/lib/tessera".into(),
            workload_socket: "/run/tessera/workload.sock".into(),
            admin_socket: "/run/tessera/admin.sock".into(),
            http_listen: "127.0.0.1:8089".parse().expect("static address"),
            admin_uids: Vec::new(),
            client_svid_ttl: Duration::from_secs(3600),
            task_svid_ttl: Duration::from_secs(300),
            jwt_svid_ttl: Duration::from_secs(300),
            task_default_lifetime: Duration::from_secs(15 * 60),
            task_max_lifetime: Duration::from_secs(24 * 3600),
            task_max_live_per_process: DEFAULT_MAX_LIVE_PER_PROCESS,
            revocation_max_watchers_per_identity: DEFAULT_MAX_WATCHERS_PER_IDENTITY,
            task_retention: Duration::from_secs(7 * 24 * 3600),
            audit_retention: Duration::ZERO,
            audit_log: None,
            exe_hash_max_bytes: DEFAULT_EXE_HASH_MAX_BYTES,
            ca: CaConfig::default(),
            log: LogConfig::default(),
            kubernetes: KubernetesConfig::default(),
        }
    }
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            mode: CaModeName::SelfSigned,
            ttl: Duration::from_secs(365 * 24 * 3600),
            jwt_key_ttl: Duration::from_secs(24 * 3600),
            upstream_cert: None,
            upstream_key: None,
            upstream_bundle: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Shortest SVID lifetime accepted: rotation at half life must stay meaningful.
const MIN_TTL: Duration = Duration::from_secs(2);

/// Longest [`Config::jwt_svid_ttl`] accepted: a JWT-SVID is a bearer token, and a
/// verifier that cannot see the revocation feed honours it until it expires.
const MAX_JWT_SVID_TTL: Duration = Duration::from_secs(3600);

/// Shortest [`CaConfig::jwt_key_ttl`] accepted: the rotation schedule's sixths must be
/// whole seconds.
const MIN_JWT_KEY_TTL: Duration = Duration::from_secs(6);

/// Default for [`Config::task_max_live_per_process`]: 128 tasks with claims near their
/// 16 KiB limit make a FetchX509SVID message of 2.1 MiB, under the 4 MiB standard
/// clients accept, with room for a second root in the bundle and intermediates in the
/// chain (measured by the e2e test
/// `at_the_default_limit_a_standard_client_still_receives_every_task_svid`).
pub const DEFAULT_MAX_LIVE_PER_PROCESS: usize = 128;

/// Default for [`Config::exe_hash_max_bytes`]: 512 MiB, twice the largest
/// interpreters and statically linked runtimes (python, node, a debug build of this
/// agent are 5-250 MB), and under a second of one core to hash with SHA extensions
/// (the e2e test `a_huge_executable_does_not_stall_the_agent` prints what its
/// 191 MiB hashes cost: about 0.3 s each here).
pub const DEFAULT_EXE_HASH_MAX_BYTES: u64 = 512 * 1024 * 1024;

/// Highest [`Config::exe_hash_max_bytes`] accepted: 16 GiB already costs each
/// uncached caller ten seconds of a core.
const EXE_HASH_MAX_BYTES_LIMIT: u64 = 16 * 1024 * 1024 * 1024;

/// Highest [`Config::task_max_live_per_process`] accepted: a sanity bound, not a target
/// (past the default, the process's clients must accept larger messages).
const MAX_LIVE_PER_PROCESS_LIMIT: usize = 1_000_000;

/// Default for [`Config::revocation_max_watchers_per_identity`]: a verifier holds one
/// stream, and an identity rarely runs more than a few processes on one node; the rest
/// is room for reconnects overlapping a stream the agent has not yet seen close.
pub const DEFAULT_MAX_WATCHERS_PER_IDENTITY: usize = 32;

/// Highest [`Config::revocation_max_watchers_per_identity`] accepted.
const MAX_WATCHERS_PER_IDENTITY_LIMIT: usize = 100_000;

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text over the defaults.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies `TESSERA_*` overrides from `lookup` (the process environment in
    /// production, a map in tests).
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        fn dur(var: &'static str, v: String) -> Result<Duration, ConfigError> {
            humantime::parse_duration(&v).map_err(|e| ConfigError::Env {
                var,
                value: v,
                reason: e.to_string(),
            })
        }
        if let Some(v) = lookup("TESSERA_TRUST_DOMAIN") {
            self.trust_domain = v;
        }
        if let Some(v) = lookup("TESSERA_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = lookup("TESSERA_WORKLOAD_SOCKET") {
            self.workload_socket = v.into();
        }
        if let Some(v) = lookup("TESSERA_ADMIN_SOCKET") {
            self.admin_socket = v.into();
        }
        if let Some(v) = lookup("TESSERA_HTTP_LISTEN") {
            self.http_listen =
                v.parse()
                    .map_err(|e: std::net::AddrParseError| ConfigError::Env {
                        var: "TESSERA_HTTP_LISTEN",
                        value: v.clone(),
                        reason: e.to_string(),
                    })?;
        }
        if let Some(v) = lookup("TESSERA_ADMIN_UIDS") {
            self.admin_uids = v
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse::<u32>())
                .collect::<Result<_, _>>()
                .map_err(|e| ConfigError::Env {
                    var: "TESSERA_ADMIN_UIDS",
                    value: v.clone(),
                    reason: e.to_string(),
                })?;
        }
        if let Some(v) = lookup("TESSERA_CLIENT_SVID_TTL") {
            self.client_svid_ttl = dur("TESSERA_CLIENT_SVID_TTL", v)?;
        }
        if let Some(v) = lookup("TESSERA_TASK_SVID_TTL") {
            self.task_svid_ttl = dur("TESSERA_TASK_SVID_TTL", v)?;
        }
        if let Some(v) = lookup("TESSERA_JWT_SVID_TTL") {
            self.jwt_svid_ttl = dur("TESSERA_JWT_SVID_TTL", v)?;
        }
        if let Some(v) = lookup("TESSERA_TASK_DEFAULT_LIFETIME") {
            self.task_default_lifetime = dur("TESSERA_TASK_DEFAULT_LIFETIME", v)?;
        }
        if let Some(v) = lookup("TESSERA_TASK_MAX_LIFETIME") {
            self.task_max_lifetime = dur("TESSERA_TASK_MAX_LIFETIME", v)?;
        }
        if let Some(v) = lookup("TESSERA_TASK_MAX_LIVE_PER_PROCESS") {
            self.task_max_live_per_process = v.parse().map_err(|e| ConfigError::Env {
                var: "TESSERA_TASK_MAX_LIVE_PER_PROCESS",
                value: v.clone(),
                reason: format!("{e}"),
            })?;
        }
        if let Some(v) = lookup("TESSERA_EXE_HASH_MAX_BYTES") {
            self.exe_hash_max_bytes = v.parse().map_err(|e| ConfigError::Env {
                var: "TESSERA_EXE_HASH_MAX_BYTES",
                value: v.clone(),
                reason: format!("{e}"),
            })?;
        }
        if let Some(v) = lookup("TESSERA_REVOCATION_MAX_WATCHERS_PER_IDENTITY") {
            self.revocation_max_watchers_per_identity =
                v.parse().map_err(|e| ConfigError::Env {
                    var: "TESSERA_REVOCATION_MAX_WATCHERS_PER_IDENTITY",
                    value: v.clone(),
                    reason: format!("{e}"),
                })?;
        }
        if let Some(v) = lookup("TESSERA_TASK_RETENTION") {
            self.task_retention = dur("TESSERA_TASK_RETENTION", v)?;
        }
        if let Some(v) = lookup("TESSERA_AUDIT_RETENTION") {
            self.audit_retention = dur("TESSERA_AUDIT_RETENTION", v)?;
        }
        if let Some(v) = lookup("TESSERA_AUDIT_LOG") {
            self.audit_log = (!v.is_empty()).then(|| v.into());
        }
        if let Some(v) = lookup("TESSERA_CA_TTL") {
            self.ca.ttl = dur("TESSERA_CA_TTL", v)?;
        }
        if let Some(v) = lookup("TESSERA_CA_JWT_KEY_TTL") {
            self.ca.jwt_key_ttl = dur("TESSERA_CA_JWT_KEY_TTL", v)?;
        }
        if let Some(v) = lookup("TESSERA_LOG_FORMAT") {
            self.log.format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    return Err(ConfigError::Env {
                        var: "TESSERA_LOG_FORMAT",
                        value: v,
                        reason: "expected `text` or `json`".into(),
                    });
                }
            };
        }
        if let Some(v) = lookup("TESSERA_LOG_LEVEL") {
            self.log.level = v;
        }
        self.kubernetes.apply_env(&lookup)?;
        Ok(())
    }

    /// What retention deletes, as the store's pruning understands it (zero: never).
    pub fn retention(&self) -> crate::retention::Retention {
        let keep = |d: Duration| (!d.is_zero()).then_some(d);
        crate::retention::Retention {
            ended_tasks: keep(self.task_retention),
            audit: keep(self.audit_retention),
        }
    }

    /// Checks ranges and cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        tessera_identity::TrustDomain::try_from(self.trust_domain.as_str()).map_err(|e| {
            ConfigError::Invalid {
                key: "trust_domain",
                reason: e.to_string(),
            }
        })?;
        for (key, ttl) in [
            ("client_svid_ttl", self.client_svid_ttl),
            ("task_svid_ttl", self.task_svid_ttl),
            ("jwt_svid_ttl", self.jwt_svid_ttl),
        ] {
            if ttl < MIN_TTL {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("must be at least {}", humantime::format_duration(MIN_TTL)),
                });
            }
        }
        if self.task_default_lifetime.is_zero()
            || self.task_default_lifetime > self.task_max_lifetime
        {
            return Err(ConfigError::Invalid {
                key: "task_default_lifetime",
                reason: "must be positive and at most task_max_lifetime".into(),
            });
        }
        if !(1..=MAX_LIVE_PER_PROCESS_LIMIT).contains(&self.task_max_live_per_process) {
            return Err(ConfigError::Invalid {
                key: "task_max_live_per_process",
                reason: format!("must be between 1 and {MAX_LIVE_PER_PROCESS_LIMIT}"),
            });
        }
        if !(1..=EXE_HASH_MAX_BYTES_LIMIT).contains(&self.exe_hash_max_bytes) {
            return Err(ConfigError::Invalid {
                key: "exe_hash_max_bytes",
                reason: format!("must be between 1 and {EXE_HASH_MAX_BYTES_LIMIT} (16 GiB)"),
            });
        }
        if !(1..=MAX_WATCHERS_PER_IDENTITY_LIMIT)
            .contains(&self.revocation_max_watchers_per_identity)
        {
            return Err(ConfigError::Invalid {
                key: "revocation_max_watchers_per_identity",
                reason: format!("must be between 1 and {MAX_WATCHERS_PER_IDENTITY_LIMIT}"),
            });
        }
        if self.ca.ttl < self.client_svid_ttl.max(self.task_svid_ttl) * 2 {
            return Err(ConfigError::Invalid {
                key: "ca.ttl",
                reason: "must be at least twice the longest SVID TTL".into(),
            });
        }
        if self.jwt_svid_ttl > MAX_JWT_SVID_TTL {
            return Err(ConfigError::Invalid {
                key: "jwt_svid_ttl",
                reason: format!(
                    "must be at most {}: a JWT-SVID is a bearer token",
                    humantime::format_duration(MAX_JWT_SVID_TTL)
                ),
            });
        }
        if self.ca.jwt_key_ttl < MIN_JWT_KEY_TTL {
            return Err(ConfigError::Invalid {
                key: "ca.jwt_key_ttl",
                reason: format!(
                    "must be at least {}",
                    humantime::format_duration(MIN_JWT_KEY_TTL)
                ),
            });
        }
        if !self.http_listen.ip().is_loopback() {
            // Metrics reveal entry counts and timings; keep them off the network
            // unless an operator puts a proxy in front.
            tracing::warn!(addr = %self.http_listen, "http_listen is not a loopback address");
        }
        if self.workload_socket == self.admin_socket {
            return Err(ConfigError::Invalid {
                key: "admin_socket",
                reason: "must differ from workload_socket".into(),
            });
        }
        if self.ca.mode == CaModeName::Upstream
            && (self.ca.upstream_cert.is_none()
                || self.ca.upstream_key.is_none()
                || self.ca.upstream_bundle.is_none())
        {
            return Err(ConfigError::Invalid {
                key: "ca.mode",
                reason:
                    "upstream mode needs ca.upstream_cert, ca.upstream_key and ca.upstream_bundle"
                        .into(),
            });
        }
        self.kubernetes.validate()?;
        Ok(())
    }

    /// The effective configuration as TOML (for `tessera-agent print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

/// Serde helpers for durations written like "5m" or "1h".
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip_through_toml() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn file_values_override_defaults_and_env_overrides_file() {
        let mut c = Config::from_toml(
            "trust_domain = \"acme.corp\"\nclient_svid_ttl = \"30m\"\n[log]\nformat = \"json\"\n",
        )
        .unwrap();
        assert_eq!(c.trust_domain, "acme.corp");
        assert_eq!(c.client_svid_ttl, Duration::from_secs(1800));
        assert_eq!(c.log.format, LogFormat::Json);
        let env: HashMap<&str, &str> = [
            ("TESSERA_TRUST_DOMAIN", "prod.acme.corp"),
            ("TESSERA_ADMIN_UIDS", "1000, 1001"),
            ("TESSERA_TASK_SVID_TTL", "90s"),
            ("TESSERA_TASK_MAX_LIVE_PER_PROCESS", "500"),
            ("TESSERA_AUDIT_RETENTION", "90d"),
            ("TESSERA_EXE_HASH_MAX_BYTES", "1048576"),
            ("TESSERA_REVOCATION_MAX_WATCHERS_PER_IDENTITY", "4"),
            ("TESSERA_JWT_SVID_TTL", "2m"),
            ("TESSERA_CA_JWT_KEY_TTL", "12h"),
        ]
        .into();
        c.apply_env(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.trust_domain, "prod.acme.corp");
        assert_eq!(c.admin_uids, vec![1000, 1001]);
        assert_eq!(c.task_svid_ttl, Duration::from_secs(90));
        assert_eq!(c.task_max_live_per_process, 500);
        assert_eq!(c.exe_hash_max_bytes, 1 << 20);
        assert_eq!(c.revocation_max_watchers_per_identity, 4);
        assert_eq!(c.jwt_svid_ttl, Duration::from_secs(120));
        assert_eq!(c.ca.jwt_key_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(
            c.retention(),
            crate::retention::Retention {
                ended_tasks: Some(Duration::from_secs(7 * 24 * 3600)),
                audit: Some(Duration::from_secs(90 * 24 * 3600)),
            }
        );
        let bad: HashMap<&str, &str> = [("TESSERA_TASK_MAX_LIVE_PER_PROCESS", "many")].into();
        let err = c
            .apply_env(|k| bad.get(k).map(|v| v.to_string()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("TESSERA_TASK_MAX_LIVE_PER_PROCESS"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = Config::from_toml("trust_domian = \"x\"").unwrap_err();
        assert!(err.contains("trust_domian"), "{err}");
        let err = Config::from_toml("[ca]\nmdoe = \"upstream\"").unwrap_err();
        assert!(err.contains("mdoe"), "{err}");
    }

    #[test]
    fn invalid_settings_are_refused() {
        let cases: &[(&str, &str)] = &[
            ("trust_domain = \"Bad Domain\"", "trust_domain"),
            ("client_svid_ttl = \"1s\"", "client_svid_ttl"),
            ("[ca]\nmode = \"upstream\"", "ca.mode"),
            ("[ca]\nttl = \"1h\"", "ca.ttl"),
            ("task_default_lifetime = \"48h\"", "task_default_lifetime"),
            ("task_max_live_per_process = 0", "task_max_live_per_process"),
            ("exe_hash_max_bytes = 0", "exe_hash_max_bytes"),
            ("jwt_svid_ttl = \"1s\"", "jwt_svid_ttl"),
            ("jwt_svid_ttl = \"2h\"", "jwt_svid_ttl"),
            ("[ca]\njwt_key_ttl = \"5s\"", "ca.jwt_key_ttl"),
            ("exe_hash_max_bytes = 17179869185", "exe_hash_max_bytes"),
            (
                "[kubernetes]\nenabled = true\ncgroup_root = \"sys/fs/cgroup\"",
                "kubernetes.cgroup_root",
            ),
            (
                "task_max_live_per_process = 1000001",
                "task_max_live_per_process",
            ),
            (
                "revocation_max_watchers_per_identity = 0",
                "revocation_max_watchers_per_identity",
            ),
            (
                "workload_socket = \"/tmp/x.sock\"\nadmin_socket = \"/tmp/x.sock\"",
                "admin_socket",
            ),
        ];
        for (toml, key) in cases {
            let c = Config::from_toml(toml).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn kubernetes_is_off_by_default_and_configurable_from_file_and_env() {
        let c = Config::default();
        assert!(!c.kubernetes.enabled);
        let mut c = Config::from_toml(
            "[kubernetes]\nenabled = true\nkubelet_url = \"https://10.0.0.7:10250\"\n\
             kubelet_server_name = \"node-a\"\nretry_attempts = 3\nretry_interval = \"100ms\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(c.kubernetes.enabled);
        assert_eq!(c.kubernetes.retry_attempts, 3);
        assert_eq!(c.kubernetes.retry_interval, Duration::from_millis(100));
        let env: HashMap<&str, &str> = [
            ("TESSERA_KUBERNETES_KUBELET_URL", "https://[fd00::7]:10250"),
            (
                "TESSERA_KUBERNETES_KUBELET_CA",
                "/etc/tessera/kubelet-ca.pem",
            ),
            ("TESSERA_KUBERNETES_KUBELET_SERVER_NAME", ""),
            (
                "TESSERA_KUBERNETES_TOKEN_FILE",
                "/var/run/secrets/tokens/kubelet",
            ),
            ("TESSERA_KUBERNETES_CGROUP_ROOT", "/host/sys/fs/cgroup"),
        ]
        .into();
        assert_eq!(c.kubernetes.cgroup_root, Path::new("/sys/fs/cgroup"));
        c.apply_env(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.kubernetes.cgroup_root, Path::new("/host/sys/fs/cgroup"));
        assert_eq!(c.kubernetes.kubelet_url, "https://[fd00::7]:10250");
        assert_eq!(
            c.kubernetes.kubelet_ca.as_deref(),
            Some(Path::new("/etc/tessera/kubelet-ca.pem"))
        );
        assert_eq!(c.kubernetes.kubelet_server_name, None);
        assert_eq!(
            c.kubernetes.token_file,
            Path::new("/var/run/secrets/tokens/kubelet")
        );
        c.validate().unwrap();
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);

        let mut c = Config::default();
        c.apply_env(|k| (k == "TESSERA_KUBERNETES_ENABLED").then(|| "true".into()))
            .unwrap();
        assert!(c.kubernetes.enabled);
        let err = c
            .apply_env(|k| (k == "TESSERA_KUBERNETES_ENABLED").then(|| "yes please".into()))
            .unwrap_err();
        assert!(
            err.to_string().contains("TESSERA_KUBERNETES_ENABLED"),
            "{err}"
        );
    }

    #[test]
    fn invalid_kubernetes_settings_are_refused() {
        let cases: &[(&str, &str)] = &[
            (
                "kubelet_url = \"http://127.0.0.1:10255\"",
                "kubernetes.kubelet_url",
            ),
            (
                "kubelet_url = \"https://127.0.0.1:10250/pods\"",
                "kubernetes.kubelet_url",
            ),
            ("kubelet_url = \"not a url\"", "kubernetes.kubelet_url"),
            (
                "insecure_skip_kubelet_verify = true\nkubelet_ca = \"/ca.pem\"",
                "kubernetes.insecure_skip_kubelet_verify",
            ),
            ("retry_attempts = 1000", "kubernetes.retry_attempts"),
            ("retry_interval = \"0s\"", "kubernetes.retry_interval"),
            ("request_timeout = \"10m\"", "kubernetes.request_timeout"),
            ("pod_cache_ttl = \"1h\"", "kubernetes.pod_cache_ttl"),
        ];
        for (body, key) in cases {
            let toml = format!("[kubernetes]\nenabled = true\n{body}\n");
            let c = Config::from_toml(&toml).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
            // Disabled, the section is not checked: it is not used.
            let off =
                Config::from_toml(&toml.replace("enabled = true", "enabled = false")).unwrap();
            off.validate().unwrap();
        }
        let err = Config::from_toml("[kubernetes]\nkubelet_ulr = \"x\"").unwrap_err();
        assert!(err.contains("kubelet_ulr"), "{err}");
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let mut c = Config::default();
        let err = c
            .apply_env(|k| (k == "TESSERA_CLIENT_SVID_TTL").then(|| "soon".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("TESSERA_CLIENT_SVID_TTL"));
    }
}
