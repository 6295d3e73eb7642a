//! The TOML schema: every key a config file may hold, with its built-in default.
//!
//! These are the raw layers only: env and flags override them field by field
//! (`env.rs`, `Overrides`), and `Config::from_layers` turns the result into typed
//! values. `print-config` writes the typed config back in this shape.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{Origin, Problem};

/// Default for [`super::Config::task_max_live_per_process`]: 128 tasks with claims near
/// their 16 KiB limit make a FetchX509SVID message of 2.1 MiB, under the 4 MiB standard
/// clients accept, with room for a second root in the bundle and intermediates in the
/// chain (measured by the e2e test
/// `at_the_default_limit_a_standard_client_still_receives_every_task_svid`).
pub const DEFAULT_MAX_LIVE_PER_PROCESS: usize = 128;

/// Default for [`super::Config::exe_hash_max_bytes`]: 512 MiB, twice the largest
/// interpreters and statically linked runtimes (python, node, a debug build of this
/// agent are 5-250 MB), and under a second of one core to hash with SHA extensions
/// (the e2e test `a_huge_executable_does_not_stall_the_agent` prints what its
/// 191 MiB hashes cost: about 0.3 s each here).
pub const DEFAULT_EXE_HASH_MAX_BYTES: u64 = 512 * 1024 * 1024;

/// Default for [`super::Config::revocation_max_watchers_per_identity`]: a verifier holds
/// one stream, and an identity rarely runs more than a few processes on one node; the
/// rest is room for reconnects overlapping a stream the agent has not yet seen close.
pub const DEFAULT_MAX_WATCHERS_PER_IDENTITY: usize = 32;

/// Default for [`super::Config::revocation_heartbeat_interval`]: a follower's staleness
/// bound (30 s by default) is many heartbeats long, so one lost heartbeat never makes
/// a verifier refuse.
pub const DEFAULT_REVOCATION_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Where the agent looks for the cgroup hierarchies unless told otherwise.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The in-cluster CA and token, as every pod with a service account has them.
pub const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// See [`IN_CLUSTER_CA`].
pub const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Logging settings (`[log]`); already typed, so shared by the file and the config.
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

/// The top level of the file. Field meanings: the typed [`super::Config`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileConfig {
    pub trust_domain: String,
    pub data_dir: PathBuf,
    pub workload_socket: PathBuf,
    pub admin_socket: PathBuf,
    pub http_listen: SocketAddr,
    pub admin_uids: Vec<u32>,
    #[serde(with = "humantime_serde")]
    pub client_svid_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub task_svid_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub jwt_svid_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub task_default_lifetime: Duration,
    #[serde(with = "humantime_serde")]
    pub task_max_lifetime: Duration,
    pub task_max_live_per_process: usize,
    pub revocation_max_watchers_per_identity: usize,
    #[serde(with = "humantime_serde")]
    pub revocation_heartbeat_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub task_retention: Duration,
    #[serde(with = "humantime_serde")]
    pub audit_retention: Duration,
    pub audit_log: Option<PathBuf>,
    pub exe_hash_max_bytes: u64,
    pub ca: FileCa,
    pub log: LogConfig,
    pub kubernetes: FileKubernetes,
    pub server: FileServer,
}

/// `[ca]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileCa {
    pub mode: CaModeName,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub jwt_key_ttl: Duration,
    pub upstream_cert: Option<PathBuf>,
    pub upstream_key: Option<PathBuf>,
    pub upstream_bundle: Option<PathBuf>,
}

/// `ca.mode` as written in TOML.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum CaModeName {
    SelfSigned,
    Upstream,
}

/// `[server]`: cluster mode. Empty strings mean "unset" so every key has a TOML form
/// (`print-config` writes them back).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileServer {
    pub address: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    pub server_id: String,
    pub bundle_file: Option<PathBuf>,
    pub join_token: Option<String>,
    pub join_token_file: Option<PathBuf>,
    pub k8s_psat_token_file: Option<PathBuf>,
    pub node_name: String,
}

/// `[kubernetes]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileKubernetes {
    pub enabled: bool,
    pub kubelet_url: String,
    pub kubelet_ca: Option<PathBuf>,
    pub kubelet_server_name: Option<String>,
    pub insecure_skip_kubelet_verify: bool,
    pub token_file: PathBuf,
    #[serde(with = "humantime_serde")]
    pub pod_cache_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub refresh_min_interval: Duration,
    pub retry_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub cgroup_root: PathBuf,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
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
            revocation_heartbeat_interval: DEFAULT_REVOCATION_HEARTBEAT_INTERVAL,
            task_retention: Duration::from_secs(7 * 24 * 3600),
            audit_retention: Duration::ZERO,
            audit_log: None,
            exe_hash_max_bytes: DEFAULT_EXE_HASH_MAX_BYTES,
            ca: FileCa::default(),
            log: LogConfig::default(),
            kubernetes: FileKubernetes::default(),
            server: FileServer::default(),
        }
    }
}

impl Default for FileCa {
    fn default() -> Self {
        FileCa {
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

impl Default for FileKubernetes {
    fn default() -> Self {
        FileKubernetes {
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

/// Serde helpers for durations written like "5m" or "1h".
mod humantime_serde {
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

/// The file (or the defaults) with the env and flag overrides written over it, and
/// where each overridden key came from, so a refusal names what to change.
#[derive(Debug)]
pub(super) struct Layers {
    pub raw: FileConfig,
    /// `Some` when a file was given: its path, if it came from one.
    file: Option<Option<PathBuf>>,
    overridden: HashMap<&'static str, Origin>,
    pub problems: Vec<Problem>,
}

impl Layers {
    /// The built-in defaults alone.
    pub(super) fn defaults() -> Layers {
        Layers {
            raw: FileConfig::default(),
            file: None,
            overridden: HashMap::new(),
            problems: Vec::new(),
        }
    }

    /// `text` over the defaults. A file that does not parse is one problem, and the
    /// defaults stand in for it so the other layers are still checked.
    pub(super) fn from_toml(text: &str, path: Option<PathBuf>) -> Layers {
        let mut layers = Layers::defaults();
        match toml::from_str(text) {
            Ok(raw) => layers.raw = raw,
            Err(e) => layers.problems.push(Problem {
                origin: Origin::File {
                    path: path.clone(),
                    key: None,
                },
                reason: e.to_string(),
            }),
        }
        layers.file = Some(path);
        layers
    }

    /// Records that `key` now holds a value from `origin`.
    pub(super) fn set(&mut self, key: &'static str, origin: Origin) {
        self.overridden.insert(key, origin);
    }

    /// Records that `key` now holds the value of command-line `flag`.
    pub(super) fn set_by_flag(&mut self, key: &'static str, flag: &'static str) {
        self.set(key, Origin::Flag { flag, key });
    }

    /// Where the value of `key` came from.
    pub(super) fn origin(&self, key: &'static str) -> Origin {
        if let Some(o) = self.overridden.get(key) {
            return o.clone();
        }
        match &self.file {
            Some(path) => Origin::File {
                path: path.clone(),
                key: Some(key),
            },
            None => Origin::Default { key },
        }
    }

    /// Refuses the value `key` holds now.
    pub(super) fn refuse(&mut self, key: &'static str, reason: impl Into<String>) {
        self.problems.push(Problem {
            origin: self.origin(key),
            reason: reason.into(),
        });
    }
}
