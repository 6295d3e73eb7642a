//! `TESSERA_*` environment overrides, read through [`Env`] so tests hand in a map
//! instead of mutating the process environment (which every thread shares).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::Duration;

use super::error::{Origin, Problem};
use super::file::{Layers, LogFormat};

/// Where environment variables come from.
pub trait Env {
    /// The value of `name`, `None` when unset.
    fn var(&self, name: &str) -> Option<OsString>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }
}

/// A fixed set of variables (tests, or values gathered elsewhere).
impl<K, V> Env for HashMap<K, V>
where
    K: Borrow<str> + Hash + Eq,
    V: AsRef<OsStr>,
{
    fn var(&self, name: &str) -> Option<OsString> {
        self.get(name).map(|v| v.as_ref().to_owned())
    }
}

/// No variables at all.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<OsString> {
        None
    }
}

/// Reads each variable `env` sets over `layers`. A value that does not parse is a
/// problem, and the key keeps its value from below, so one run reports every bad
/// variable (and the layers below are still checked).
pub(super) fn apply(layers: &mut Layers, env: &dyn Env) {
    let mut r = Reader { layers, env };
    let l = &mut r;
    if let Some(v) = l.text("TESSERA_TRUST_DOMAIN", "trust_domain") {
        l.layers.raw.trust_domain = v;
    }
    if let Some(v) = l.text("TESSERA_DATA_DIR", "data_dir") {
        l.layers.raw.data_dir = v.into();
    }
    if let Some(v) = l.text("TESSERA_WORKLOAD_SOCKET", "workload_socket") {
        l.layers.raw.workload_socket = v.into();
    }
    if let Some(v) = l.text("TESSERA_ADMIN_SOCKET", "admin_socket") {
        l.layers.raw.admin_socket = v.into();
    }
    if let Some(v) = l.parsed("TESSERA_HTTP_LISTEN", "http_listen", |s| {
        s.parse::<SocketAddr>().map_err(|e| e.to_string())
    }) {
        l.layers.raw.http_listen = v;
    }
    if let Some(v) = l.parsed("TESSERA_ADMIN_UIDS", "admin_uids", |s| {
        s.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse::<u32>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    }) {
        l.layers.raw.admin_uids = v;
    }
    if let Some(v) = l.duration("TESSERA_CLIENT_SVID_TTL", "client_svid_ttl") {
        l.layers.raw.client_svid_ttl = v;
    }
    if let Some(v) = l.duration("TESSERA_TASK_SVID_TTL", "task_svid_ttl") {
        l.layers.raw.task_svid_ttl = v;
    }
    if let Some(v) = l.duration("TESSERA_JWT_SVID_TTL", "jwt_svid_ttl") {
        l.layers.raw.jwt_svid_ttl = v;
    }
    if let Some(v) = l.duration("TESSERA_TASK_DEFAULT_LIFETIME", "task_default_lifetime") {
        l.layers.raw.task_default_lifetime = v;
    }
    if let Some(v) = l.duration("TESSERA_TASK_MAX_LIFETIME", "task_max_lifetime") {
        l.layers.raw.task_max_lifetime = v;
    }
    if let Some(v) = l.number(
        "TESSERA_TASK_MAX_LIVE_PER_PROCESS",
        "task_max_live_per_process",
    ) {
        l.layers.raw.task_max_live_per_process = v;
    }
    if let Some(v) = l.number("TESSERA_EXE_HASH_MAX_BYTES", "exe_hash_max_bytes") {
        l.layers.raw.exe_hash_max_bytes = v;
    }
    if let Some(v) = l.number(
        "TESSERA_REVOCATION_MAX_WATCHERS_PER_IDENTITY",
        "revocation_max_watchers_per_identity",
    ) {
        l.layers.raw.revocation_max_watchers_per_identity = v;
    }
    if let Some(v) = l.duration(
        "TESSERA_REVOCATION_HEARTBEAT_INTERVAL",
        "revocation_heartbeat_interval",
    ) {
        l.layers.raw.revocation_heartbeat_interval = v;
    }
    if let Some(v) = l.duration("TESSERA_TASK_RETENTION", "task_retention") {
        l.layers.raw.task_retention = v;
    }
    if let Some(v) = l.duration("TESSERA_AUDIT_RETENTION", "audit_retention") {
        l.layers.raw.audit_retention = v;
    }
    if let Some(v) = l.text("TESSERA_AUDIT_LOG", "audit_log") {
        l.layers.raw.audit_log = (!v.is_empty()).then(|| v.into());
    }
    if let Some(v) = l.duration("TESSERA_CA_TTL", "ca.ttl") {
        l.layers.raw.ca.ttl = v;
    }
    if let Some(v) = l.duration("TESSERA_CA_JWT_KEY_TTL", "ca.jwt_key_ttl") {
        l.layers.raw.ca.jwt_key_ttl = v;
    }
    if let Some(v) = l.parsed("TESSERA_LOG_FORMAT", "log.format", |s| match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected `text` or `json`".into()),
    }) {
        l.layers.raw.log.format = v;
    }
    if let Some(v) = l.text("TESSERA_LOG_LEVEL", "log.level") {
        l.layers.raw.log.level = v;
    }

    if let Some(v) = l.boolean("TESSERA_KUBERNETES_ENABLED", "kubernetes.enabled") {
        l.layers.raw.kubernetes.enabled = v;
    }
    if let Some(v) = l.text("TESSERA_KUBERNETES_KUBELET_URL", "kubernetes.kubelet_url") {
        l.layers.raw.kubernetes.kubelet_url = v;
    }
    if let Some(v) = l.text("TESSERA_KUBERNETES_KUBELET_CA", "kubernetes.kubelet_ca") {
        l.layers.raw.kubernetes.kubelet_ca = (!v.is_empty()).then(|| v.into());
    }
    if let Some(v) = l.text(
        "TESSERA_KUBERNETES_KUBELET_SERVER_NAME",
        "kubernetes.kubelet_server_name",
    ) {
        l.layers.raw.kubernetes.kubelet_server_name = (!v.is_empty()).then_some(v);
    }
    if let Some(v) = l.boolean(
        "TESSERA_KUBERNETES_INSECURE_SKIP_KUBELET_VERIFY",
        "kubernetes.insecure_skip_kubelet_verify",
    ) {
        l.layers.raw.kubernetes.insecure_skip_kubelet_verify = v;
    }
    if let Some(v) = l.text("TESSERA_KUBERNETES_TOKEN_FILE", "kubernetes.token_file") {
        l.layers.raw.kubernetes.token_file = v.into();
    }
    if let Some(v) = l.text("TESSERA_KUBERNETES_CGROUP_ROOT", "kubernetes.cgroup_root") {
        l.layers.raw.kubernetes.cgroup_root = v.into();
    }

    // `[server]` is read from TESSERA_CLUSTER_*: TESSERA_SERVER_* is the server's own
    // prefix (the two run side by side in one pod spec or shell). The old names still
    // work, below the new ones; the agent warns at start when it sees them.
    if let Some(v) = l.cluster_text("ADDRESSES", "server.addresses") {
        l.layers.raw.server.addresses = v
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        // The variable names the whole list: a single address from the file goes.
        l.layers.raw.server.address.clear();
    } else if let Some(v) = l.cluster_text("ADDRESS", "server.address") {
        l.layers.raw.server.address = v;
        l.layers.raw.server.addresses.clear();
    }
    if let Some(v) = l.cluster_text("ID", "server.server_id") {
        l.layers.raw.server.server_id = v;
    }
    if let Some(v) = l.cluster_text("BUNDLE_FILE", "server.bundle_file") {
        l.layers.raw.server.bundle_file = (!v.is_empty()).then(|| v.into());
    }
    // The token's value must not end up in an error message: recorded as set, never
    // echoed (`Origin::Env` prints values).
    let token = [
        (
            "TESSERA_CLUSTER_JOIN_TOKEN",
            l.env.var("TESSERA_CLUSTER_JOIN_TOKEN"),
        ),
        (
            "TESSERA_SERVER_JOIN_TOKEN",
            l.env.var("TESSERA_SERVER_JOIN_TOKEN"),
        ),
    ]
    .into_iter()
    .find_map(|(var, v)| v.map(|v| (var, v)));
    if let Some((var, v)) = token {
        match v.into_string() {
            Ok(v) => {
                l.layers.set(
                    "server.join_token",
                    Origin::Env {
                        var,
                        value: "<redacted>".into(),
                    },
                );
                l.layers.raw.server.join_token = (!v.is_empty()).then_some(v);
            }
            Err(_) => l.refuse(var, "<redacted>".into(), "not valid UTF-8"),
        }
    }
    if let Some(v) = l.cluster_text("JOIN_TOKEN_FILE", "server.join_token_file") {
        l.layers.raw.server.join_token_file = (!v.is_empty()).then(|| v.into());
    }
    if let Some(v) = l.cluster_text("K8S_PSAT_TOKEN_FILE", "server.k8s_psat_token_file") {
        l.layers.raw.server.k8s_psat_token_file = (!v.is_empty()).then(|| v.into());
    }
    if let Some(v) = l.cluster_text("NODE_NAME", "server.node_name") {
        l.layers.raw.server.node_name = v;
    }
}

/// The `[server]` variables under their old `TESSERA_SERVER_*` names that `env` sets
/// (each with its new `TESSERA_CLUSTER_*` name): still read, but the prefix is the
/// server's own, so the agent warns at start.
pub fn deprecated_cluster_vars(env: &dyn Env) -> Vec<(&'static str, &'static str)> {
    CLUSTER_VARS
        .iter()
        .filter(|(_, old)| !old.is_empty() && env.var(old).is_some())
        .copied()
        .collect()
}

/// Each `[server]` variable: (new name, deprecated name).
const CLUSTER_VARS: &[(&str, &str)] = &[
    // No old name: the list is new (an empty name is never set).
    ("TESSERA_CLUSTER_ADDRESSES", ""),
    ("TESSERA_CLUSTER_ADDRESS", "TESSERA_SERVER_ADDRESS"),
    ("TESSERA_CLUSTER_ID", "TESSERA_SERVER_ID"),
    ("TESSERA_CLUSTER_BUNDLE_FILE", "TESSERA_SERVER_BUNDLE_FILE"),
    ("TESSERA_CLUSTER_JOIN_TOKEN", "TESSERA_SERVER_JOIN_TOKEN"),
    (
        "TESSERA_CLUSTER_JOIN_TOKEN_FILE",
        "TESSERA_SERVER_JOIN_TOKEN_FILE",
    ),
    (
        "TESSERA_CLUSTER_K8S_PSAT_TOKEN_FILE",
        "TESSERA_SERVER_K8S_PSAT_TOKEN_FILE",
    ),
    ("TESSERA_CLUSTER_NODE_NAME", "TESSERA_SERVER_NODE_NAME"),
];

struct Reader<'a> {
    layers: &'a mut Layers,
    env: &'a dyn Env,
}

impl Reader<'_> {
    /// The variable's text, recorded as the origin of `key`. Not UTF-8 is refused
    /// rather than treated as unset: an ignored `TESSERA_ADMIN_SOCKET` would put the
    /// admin socket somewhere the operator did not choose.
    fn text(&mut self, var: &'static str, key: &'static str) -> Option<String> {
        match self.env.var(var)?.into_string() {
            Ok(value) => {
                self.layers.set(
                    key,
                    Origin::Env {
                        var,
                        value: value.clone(),
                    },
                );
                Some(value)
            }
            Err(raw) => {
                self.refuse(var, raw.to_string_lossy().into_owned(), "not valid UTF-8");
                None
            }
        }
    }

    /// `TESSERA_CLUSTER_<suffix>`, else its deprecated `TESSERA_SERVER_<suffix>`.
    fn cluster_text(&mut self, suffix: &str, key: &'static str) -> Option<String> {
        let (new, old) = CLUSTER_VARS
            .iter()
            .find(|(new, _)| new.strip_prefix("TESSERA_CLUSTER_") == Some(suffix))
            .copied()
            .expect("a known [server] variable");
        self.text(new, key)
            .or_else(|| (!old.is_empty()).then(|| self.text(old, key)).flatten())
    }

    fn parsed<T>(
        &mut self,
        var: &'static str,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let value = match self.env.var(var)?.into_string() {
            Ok(v) => v,
            Err(raw) => {
                self.refuse(var, raw.to_string_lossy().into_owned(), "not valid UTF-8");
                return None;
            }
        };
        match parse(&value) {
            Ok(v) => {
                self.layers.set(key, Origin::Env { var, value });
                Some(v)
            }
            // The key keeps its value from below, whose origin stays on record:
            // a check that refuses that value too names the layer it came from.
            Err(reason) => {
                self.refuse(var, value, reason);
                None
            }
        }
    }

    fn duration(&mut self, var: &'static str, key: &'static str) -> Option<Duration> {
        self.parsed(var, key, |s| {
            humantime::parse_duration(s).map_err(|e| e.to_string())
        })
    }

    fn number<T>(&mut self, var: &'static str, key: &'static str) -> Option<T>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        self.parsed(var, key, |s| s.parse::<T>().map_err(|e| e.to_string()))
    }

    fn boolean(&mut self, var: &'static str, key: &'static str) -> Option<bool> {
        self.parsed(var, key, |s| match s {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err("expected true or false".into()),
        })
    }

    fn refuse(&mut self, var: &'static str, value: String, reason: impl Into<String>) {
        self.layers.problems.push(Problem {
            origin: Origin::Env { var, value },
            reason: reason.into(),
        });
    }
}
