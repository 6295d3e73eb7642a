//! Agent configuration: embedded defaults < TOML file < `TESSERA_*` environment < flags.
//!
//! Loading parses straight into typed values ([`TrustDomain`], [`CaMode`] carrying
//! the upstream files, durations, [`http::Uri`]): a [`Config`] that exists is one the
//! agent can run with, and every refused key or variable is reported in one
//! [`ConfigError`], each with where it came from. `file.rs` is the TOML schema and
//! its defaults, `env.rs` the environment overrides, `error.rs` the report.

mod env;
mod error;
mod file;
mod server;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use tessera_authority::CaMode;
use tessera_identity::TrustDomain;

pub use env::{Env, ProcessEnv, deprecated_cluster_vars};
pub use error::{ConfigError, Origin, Problem};
pub use file::{
    DEFAULT_CGROUP_ROOT, DEFAULT_EXE_HASH_MAX_BYTES, DEFAULT_MAX_LIVE_PER_PROCESS,
    DEFAULT_MAX_WATCHERS_PER_IDENTITY, DEFAULT_REVOCATION_HEARTBEAT_INTERVAL, IN_CLUSTER_CA,
    IN_CLUSTER_TOKEN, LogConfig, LogFormat,
};

pub use server::{AttestProof, DEFAULT_SERVER_ID_PATH, ServerConfig};

use crate::retention::Retention;
use file::{CaModeName, FileCa, FileConfig, FileKubernetes, Layers};

/// Everything the agent can be told, parsed. Every key has a default, documented in
/// the README.
#[derive(Clone, Debug)]
pub struct Config {
    /// Trust domain of every identity this agent issues.
    pub trust_domain: TrustDomain,
    /// Directory for the CA and the SQLite store (created 0700).
    pub data_dir: PathBuf,
    /// Unix socket serving the SPIFFE Workload API (mode 0777: attestation decides).
    pub workload_socket: PathBuf,
    /// Unix socket serving the Admin API (mode 0600, caller uid checked); never the
    /// workload socket.
    pub admin_socket: PathBuf,
    /// Address for `/healthz`, `/readyz` and `/metrics`.
    pub http_listen: SocketAddr,
    /// Uids besides the agent's own (and root) allowed on the admin socket.
    pub admin_uids: Vec<u32>,
    /// Lifetime of client SVIDs; at least [`MIN_TTL`].
    pub client_svid_ttl: Duration,
    /// Lifetime of task SVIDs; at least [`MIN_TTL`], rotated at half life, never past
    /// the task's deadline.
    pub task_svid_ttl: Duration,
    /// Lifetime of JWT-SVIDs (FetchJWTSVID), between [`MIN_TTL`] and
    /// [`MAX_JWT_SVID_TTL`]; a task's never outlives the task. Bearer tokens: keep it short.
    pub jwt_svid_ttl: Duration,
    /// Task lifetime when BeginTask names none; positive, at most `task_max_lifetime`.
    pub task_default_lifetime: Duration,
    /// Longest task lifetime BeginTask may ask for.
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
    /// How often an idle `Revocations.Follow` stream gets a heartbeat carrying how
    /// current the feed is; between [`MIN_HEARTBEAT_INTERVAL`] and
    /// [`MAX_HEARTBEAT_INTERVAL`]. Verifiers refuse task credentials once the feed is
    /// older than their staleness bound (30 s by default): keep it well under that.
    pub revocation_heartbeat_interval: Duration,
    /// What retention deletes (`task_retention`, `audit_retention`; "0s" is `None`,
    /// kept forever). A task whose revocation is still in force is kept regardless.
    pub retention: Retention,
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
    /// The Kubernetes workload attestor (`k8s:*` selectors); `None` unless enabled.
    pub kubernetes: Option<KubernetesConfig>,
    /// Cluster mode: the tessera-server this agent joins; `None` for a standalone agent
    /// (its own CA, entries and consents).
    pub server: Option<ServerConfig>,
}

/// Where the CA comes from, and for how long a self-signed one lives.
#[derive(Clone, Debug)]
pub struct CaConfig {
    /// A self-signed root kept in `data_dir/ca`, or an upstream intermediate from files.
    pub mode: CaMode,
    /// Lifetime of each self-signed root (rotation prepares the next at half life); at
    /// least twice the longest SVID TTL.
    pub ttl: Duration,
    /// Life of each JWT-SVID signing key (kept in `data_dir/ca` in either mode): the next
    /// key is published in the JWT bundle at half of it and signs from two thirds on; at
    /// least [`MIN_JWT_KEY_TTL`].
    pub jwt_key_ttl: Duration,
}

/// The Kubernetes workload attestor: caller pid → cgroup → pod UID and container
/// id → the kubelet's `/pods` → `k8s:*` selectors, added to the unix ones. It needs
/// the host's pid namespace (`hostPID: true`) so `/proc/<pid>` names the caller.
#[derive(Clone, Debug)]
pub struct KubernetesConfig {
    /// Base URL of the kubelet's secure port: https, a host, no path, no query;
    /// `/pods` is appended.
    pub kubelet_url: http::Uri,
    /// PEM CA bundle the kubelet's serving certificate must chain to; the
    /// in-cluster CA ([`IN_CLUSTER_CA`]) when unset. Never set together with
    /// `insecure_skip_kubelet_verify`.
    pub kubelet_ca: Option<PathBuf>,
    /// Name the kubelet's certificate must carry (DNS name or IP); the URL's host when unset.
    pub kubelet_server_name: Option<String>,
    /// Accept any kubelet certificate. Whoever can answer on `kubelet_url` then
    /// chooses callers' pod metadata, hence their identities. For kubelets with
    /// self-signed serving certificates, reached over loopback, only.
    pub insecure_skip_kubelet_verify: bool,
    /// Service-account token presented to the kubelet; re-read on every request.
    pub token_file: PathBuf,
    /// How long a fetched pod list answers hits without a refresh (labels can
    /// change); at most 10 minutes.
    pub pod_cache_ttl: Duration,
    /// Least time between two pod-list fetches, whatever the misses.
    pub refresh_min_interval: Duration,
    /// Extra fetches for a container the kubelet does not list yet, before denying;
    /// at most 20.
    pub retry_attempts: u32,
    /// Pause between those fetches.
    pub retry_interval: Duration,
    /// Deadline for one kubelet request (connect, TLS, response, body).
    pub request_timeout: Duration,
    /// Where the agent sees the host's cgroup hierarchies (absolute). A caller's pod
    /// cgroup read as an absolute path is checked there: every directory down to the
    /// pod's must be root's and writable by no one else. In a container, mount the
    /// host's `/sys/fs/cgroup` here read-only (the DaemonSet uses `/host/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
}

/// The settings flags can give, each overriding file and environment.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// `--trust-domain`.
    pub trust_domain: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--workload-socket`.
    pub workload_socket: Option<PathBuf>,
    /// `--admin-socket`.
    pub admin_socket: Option<PathBuf>,
    /// `--http-listen`.
    pub http_listen: Option<SocketAddr>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
}

/// Shortest SVID lifetime accepted: rotation at half life must stay meaningful.
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// Longest [`Config::jwt_svid_ttl`] accepted: a JWT-SVID is a bearer token, and a
/// verifier that cannot see the revocation feed honours it until it expires.
pub const MAX_JWT_SVID_TTL: Duration = Duration::from_secs(3600);

/// Shortest [`CaConfig::jwt_key_ttl`] accepted: the rotation schedule's sixths must be
/// whole seconds.
pub const MIN_JWT_KEY_TTL: Duration = Duration::from_secs(6);

/// Highest [`Config::exe_hash_max_bytes`] accepted: 16 GiB already costs each
/// uncached caller ten seconds of a core.
const EXE_HASH_MAX_BYTES_LIMIT: u64 = 16 * 1024 * 1024 * 1024;

/// Highest [`Config::task_max_live_per_process`] accepted: a sanity bound, not a target
/// (past the default, the process's clients must accept larger messages).
const MAX_LIVE_PER_PROCESS_LIMIT: usize = 1_000_000;

/// Shortest [`Config::revocation_heartbeat_interval`] accepted.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

/// Longest [`Config::revocation_heartbeat_interval`] accepted: a third of the
/// verifiers' default staleness bound.
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// Highest [`Config::revocation_max_watchers_per_identity`] accepted.
const MAX_WATCHERS_PER_IDENTITY_LIMIT: usize = 100_000;

impl Default for Config {
    /// The built-in defaults, which are a valid configuration.
    fn default() -> Self {
        Config::from_layers(Layers::defaults()).expect("the built-in defaults are valid")
    }
}

impl Config {
    /// Loads the agent's configuration: the defaults, then the TOML file at `file`,
    /// then the variables `env` holds, then `flags`.
    pub fn load(file: Option<&Path>, env: &dyn Env, flags: &Flags) -> Result<Config, ConfigError> {
        let mut layers = match file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => Layers::from_toml(&text, Some(path.to_owned())),
                Err(e) => {
                    let mut layers = Layers::defaults();
                    layers.problems.push(Problem {
                        origin: Origin::File {
                            path: Some(path.to_owned()),
                            key: None,
                        },
                        reason: format!("cannot be read: {e}"),
                    });
                    layers
                }
            },
            None => Layers::defaults(),
        };
        env::apply(&mut layers, env);
        flags.apply(&mut layers);
        Config::from_layers(layers)
    }

    /// Parses TOML text over the defaults, without environment or flags.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_and_env(text, &env::NoEnv)
    }

    /// Parses TOML text over the defaults, then `env`'s variables over it.
    pub fn from_toml_and_env(text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut layers = Layers::from_toml(text, None);
        env::apply(&mut layers, env);
        Config::from_layers(layers)
    }

    /// The effective configuration as TOML (for `tessera-agent print-config`); it
    /// parses back to the same configuration.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.to_file()).expect("config serializes")
    }

    /// Checks every key of the merged layers, collecting every refusal.
    fn from_layers(mut l: Layers) -> Result<Config, ConfigError> {
        let raw = l.raw.clone();

        let trust_domain = match TrustDomain::try_from(raw.trust_domain.as_str()) {
            Ok(td) => Some(td),
            Err(e) => {
                l.refuse("trust_domain", e.to_string());
                None
            }
        };
        for (key, ttl) in [
            ("client_svid_ttl", raw.client_svid_ttl),
            ("task_svid_ttl", raw.task_svid_ttl),
            ("jwt_svid_ttl", raw.jwt_svid_ttl),
        ] {
            if ttl < MIN_TTL {
                l.refuse(
                    key,
                    format!("must be at least {}", humantime::format_duration(MIN_TTL)),
                );
            }
        }
        if raw.task_default_lifetime.is_zero() || raw.task_default_lifetime > raw.task_max_lifetime
        {
            l.refuse(
                "task_default_lifetime",
                "must be positive and at most task_max_lifetime",
            );
        }
        if !(1..=MAX_LIVE_PER_PROCESS_LIMIT).contains(&raw.task_max_live_per_process) {
            l.refuse(
                "task_max_live_per_process",
                format!("must be between 1 and {MAX_LIVE_PER_PROCESS_LIMIT}"),
            );
        }
        if !(1..=MAX_WATCHERS_PER_IDENTITY_LIMIT)
            .contains(&raw.revocation_max_watchers_per_identity)
        {
            l.refuse(
                "revocation_max_watchers_per_identity",
                format!("must be between 1 and {MAX_WATCHERS_PER_IDENTITY_LIMIT}"),
            );
        }
        if !(MIN_HEARTBEAT_INTERVAL..=MAX_HEARTBEAT_INTERVAL)
            .contains(&raw.revocation_heartbeat_interval)
        {
            l.refuse(
                "revocation_heartbeat_interval",
                format!(
                    "must be between {} and {}",
                    humantime::format_duration(MIN_HEARTBEAT_INTERVAL),
                    humantime::format_duration(MAX_HEARTBEAT_INTERVAL)
                ),
            );
        }
        if !(1..=EXE_HASH_MAX_BYTES_LIMIT).contains(&raw.exe_hash_max_bytes) {
            l.refuse(
                "exe_hash_max_bytes",
                format!("must be between 1 and {EXE_HASH_MAX_BYTES_LIMIT} (16 GiB)"),
            );
        }
        if raw.ca.ttl < raw.client_svid_ttl.max(raw.task_svid_ttl) * 2 {
            l.refuse("ca.ttl", "must be at least twice the longest SVID TTL");
        }
        if raw.jwt_svid_ttl > MAX_JWT_SVID_TTL {
            l.refuse(
                "jwt_svid_ttl",
                format!(
                    "must be at most {}: a JWT-SVID is a bearer token",
                    humantime::format_duration(MAX_JWT_SVID_TTL)
                ),
            );
        }
        if raw.ca.jwt_key_ttl < MIN_JWT_KEY_TTL {
            l.refuse(
                "ca.jwt_key_ttl",
                format!(
                    "must be at least {}",
                    humantime::format_duration(MIN_JWT_KEY_TTL)
                ),
            );
        }
        if raw.workload_socket == raw.admin_socket {
            l.refuse("admin_socket", "must differ from workload_socket");
        }
        let ca_mode = match (
            raw.ca.mode,
            raw.ca.upstream_cert,
            raw.ca.upstream_key,
            raw.ca.upstream_bundle,
        ) {
            (CaModeName::SelfSigned, ..) => Some(CaMode::SelfSigned),
            (CaModeName::Upstream, Some(cert_chain), Some(key), Some(bundle)) => {
                Some(CaMode::Upstream {
                    cert_chain,
                    key,
                    bundle,
                })
            }
            (CaModeName::Upstream, ..) => {
                l.refuse(
                    "ca.mode",
                    "upstream mode needs ca.upstream_cert, ca.upstream_key and ca.upstream_bundle",
                );
                None
            }
        };
        let k8s_enabled = raw.kubernetes.enabled;
        let kubernetes = if k8s_enabled {
            kubernetes(&mut l, raw.kubernetes)
        } else {
            // Disabled, the section is not checked: it is not used.
            None
        };

        let server = server::parse(&mut l, raw.server, trust_domain.as_ref());

        if let Some(e) = ConfigError::from_problems(std::mem::take(&mut l.problems)) {
            return Err(e);
        }
        let keep = |d: Duration| (!d.is_zero()).then_some(d);
        Ok(Config {
            trust_domain: trust_domain.expect("refused above otherwise"),
            data_dir: raw.data_dir,
            workload_socket: raw.workload_socket,
            admin_socket: raw.admin_socket,
            http_listen: raw.http_listen,
            admin_uids: raw.admin_uids,
            client_svid_ttl: raw.client_svid_ttl,
            task_svid_ttl: raw.task_svid_ttl,
            jwt_svid_ttl: raw.jwt_svid_ttl,
            task_default_lifetime: raw.task_default_lifetime,
            task_max_lifetime: raw.task_max_lifetime,
            task_max_live_per_process: raw.task_max_live_per_process,
            revocation_max_watchers_per_identity: raw.revocation_max_watchers_per_identity,
            revocation_heartbeat_interval: raw.revocation_heartbeat_interval,
            retention: Retention {
                ended_tasks: keep(raw.task_retention),
                audit: keep(raw.audit_retention),
            },
            audit_log: raw.audit_log,
            exe_hash_max_bytes: raw.exe_hash_max_bytes,
            ca: CaConfig {
                mode: ca_mode.expect("refused above otherwise"),
                ttl: raw.ca.ttl,
                jwt_key_ttl: raw.ca.jwt_key_ttl,
            },
            log: raw.log,
            kubernetes: if k8s_enabled {
                Some(kubernetes.expect("refused above otherwise"))
            } else {
                None
            },
            server,
        })
    }

    /// Back to the file's shape, for printing.
    fn to_file(&self) -> FileConfig {
        let (mode, upstream_cert, upstream_key, upstream_bundle) = match &self.ca.mode {
            CaMode::SelfSigned => (CaModeName::SelfSigned, None, None, None),
            CaMode::Upstream {
                cert_chain,
                key,
                bundle,
            } => (
                CaModeName::Upstream,
                Some(cert_chain.clone()),
                Some(key.clone()),
                Some(bundle.clone()),
            ),
        };
        let kubernetes = match &self.kubernetes {
            None => FileKubernetes::default(),
            Some(k) => FileKubernetes {
                enabled: true,
                kubelet_url: k.kubelet_url.to_string(),
                kubelet_ca: k.kubelet_ca.clone(),
                kubelet_server_name: k.kubelet_server_name.clone(),
                insecure_skip_kubelet_verify: k.insecure_skip_kubelet_verify,
                token_file: k.token_file.clone(),
                pod_cache_ttl: k.pod_cache_ttl,
                refresh_min_interval: k.refresh_min_interval,
                retry_attempts: k.retry_attempts,
                retry_interval: k.retry_interval,
                request_timeout: k.request_timeout,
                cgroup_root: k.cgroup_root.clone(),
            },
        };
        FileConfig {
            trust_domain: self.trust_domain.to_string(),
            data_dir: self.data_dir.clone(),
            workload_socket: self.workload_socket.clone(),
            admin_socket: self.admin_socket.clone(),
            http_listen: self.http_listen,
            admin_uids: self.admin_uids.clone(),
            client_svid_ttl: self.client_svid_ttl,
            task_svid_ttl: self.task_svid_ttl,
            jwt_svid_ttl: self.jwt_svid_ttl,
            task_default_lifetime: self.task_default_lifetime,
            task_max_lifetime: self.task_max_lifetime,
            task_max_live_per_process: self.task_max_live_per_process,
            revocation_max_watchers_per_identity: self.revocation_max_watchers_per_identity,
            revocation_heartbeat_interval: self.revocation_heartbeat_interval,
            task_retention: self.retention.ended_tasks.unwrap_or_default(),
            audit_retention: self.retention.audit.unwrap_or_default(),
            audit_log: self.audit_log.clone(),
            exe_hash_max_bytes: self.exe_hash_max_bytes,
            ca: FileCa {
                mode,
                ttl: self.ca.ttl,
                jwt_key_ttl: self.ca.jwt_key_ttl,
                upstream_cert,
                upstream_key,
                upstream_bundle,
            },
            log: self.log.clone(),
            kubernetes,
            server: server::to_file(self.server.as_ref()),
        }
    }
}

/// The `[kubernetes]` section of an enabled attestor, or `None` with its problems
/// recorded.
fn kubernetes(l: &mut Layers, k: FileKubernetes) -> Option<KubernetesConfig> {
    let mut ok = true;
    let kubelet_url = match kubelet_uri(&k.kubelet_url) {
        Ok(uri) => Some(uri),
        Err(reason) => {
            l.refuse("kubernetes.kubelet_url", reason);
            None
        }
    };
    if k.insecure_skip_kubelet_verify && k.kubelet_ca.is_some() {
        l.refuse(
            "kubernetes.insecure_skip_kubelet_verify",
            "conflicts with kubernetes.kubelet_ca: choose one",
        );
        ok = false;
    }
    if k.retry_attempts > 20 {
        l.refuse(
            "kubernetes.retry_attempts",
            "at most 20 (callers wait for every attempt)",
        );
        ok = false;
    }
    for (key, d) in [
        ("kubernetes.retry_interval", k.retry_interval),
        ("kubernetes.refresh_min_interval", k.refresh_min_interval),
        ("kubernetes.request_timeout", k.request_timeout),
    ] {
        if d.is_zero() || d > Duration::from_secs(60) {
            l.refuse(key, "must be positive and at most 60s");
            ok = false;
        }
    }
    if !k.cgroup_root.is_absolute() {
        l.refuse("kubernetes.cgroup_root", "must be an absolute path");
        ok = false;
    }
    if k.pod_cache_ttl > Duration::from_secs(600) {
        l.refuse(
            "kubernetes.pod_cache_ttl",
            "at most 10m (pod labels are selectors and can change)",
        );
        ok = false;
    }
    Some(KubernetesConfig {
        kubelet_url: kubelet_url?,
        kubelet_ca: k.kubelet_ca,
        kubelet_server_name: k.kubelet_server_name,
        insecure_skip_kubelet_verify: k.insecure_skip_kubelet_verify,
        token_file: k.token_file,
        pod_cache_ttl: k.pod_cache_ttl,
        refresh_min_interval: k.refresh_min_interval,
        retry_attempts: k.retry_attempts,
        retry_interval: k.retry_interval,
        request_timeout: k.request_timeout,
        cgroup_root: k.cgroup_root,
    })
    .filter(|_| ok)
}

/// The kubelet URL, checked: https, a host, no path beyond `/`, no query.
fn kubelet_uri(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    if uri.scheme_str() != Some("https") {
        return Err(
            "must be https (the token must not travel in clear; the read-only port is not supported)".into(),
        );
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("must be a base URL such as https://127.0.0.1:10250".into());
    }
    Ok(uri)
}

/// Equal when they print the same: every field has its TOML form, and
/// [`CaMode`] has no `PartialEq` of its own.
impl PartialEq for Config {
    fn eq(&self, other: &Config) -> bool {
        self.to_file() == other.to_file()
    }
}

// === impl Flags ===

impl Flags {
    fn apply(&self, l: &mut Layers) {
        if let Some(v) = &self.trust_domain {
            l.raw.trust_domain = v.clone();
            l.set_by_flag("trust_domain", "--trust-domain");
        }
        if let Some(v) = &self.data_dir {
            l.raw.data_dir = v.clone();
            l.set_by_flag("data_dir", "--data-dir");
        }
        if let Some(v) = &self.workload_socket {
            l.raw.workload_socket = v.clone();
            l.set_by_flag("workload_socket", "--workload-socket");
        }
        if let Some(v) = &self.admin_socket {
            l.raw.admin_socket = v.clone();
            l.set_by_flag("admin_socket", "--admin-socket");
        }
        if let Some(v) = self.http_listen {
            l.raw.http_listen = v;
            l.set_by_flag("http_listen", "--http-listen");
        }
        if let Some(v) = self.log_format {
            l.raw.log.format = v;
            l.set_by_flag("log.format", "--log-format");
        }
    }
}
