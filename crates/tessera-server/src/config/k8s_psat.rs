//! `[k8s_psat]`: the Kubernetes PSAT node attestor (see `attest::k8s_psat`). Off by
//! default; on, it needs an allow-list and an API server (in a pod, the one
//! `KUBERNETES_SERVICE_HOST`/`_PORT` name).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_agent::config::Env;

use super::{Layers, duration, duration_text, parse, text};
use crate::attest::k8s_psat::{DEFAULT_AUDIENCE, K8sPsatSettings, ServiceAccountRef};

/// The service-account mount every pod gets.
const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// `[k8s_psat]` in the file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileK8sPsat {
    enabled: bool,
    /// `namespace:service-account`, each allowed to attest its pods' nodes.
    allowed_service_accounts: Vec<String>,
    audience: String,
    /// Empty: from `KUBERNETES_SERVICE_HOST`/`_PORT`.
    api_server: String,
    ca_file: PathBuf,
    token_file: PathBuf,
    #[serde(with = "duration")]
    timeout: Duration,
}

impl Default for FileK8sPsat {
    fn default() -> FileK8sPsat {
        FileK8sPsat {
            enabled: false,
            allowed_service_accounts: Vec::new(),
            audience: DEFAULT_AUDIENCE.into(),
            api_server: String::new(),
            ca_file: IN_CLUSTER_CA.into(),
            token_file: IN_CLUSTER_TOKEN.into(),
            timeout: Duration::from_secs(5),
        }
    }
}

fn list(s: &str) -> Result<Vec<String>, String> {
    Ok(s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

pub(super) fn apply_env(l: &mut Layers, env: &dyn Env) {
    if let Some(v) = l.env(
        env,
        "TESSERA_SERVER_K8S_PSAT_ENABLED",
        "k8s_psat.enabled",
        parse,
    ) {
        l.raw.k8s_psat.enabled = v;
    }
    if let Some(v) = l.env(
        env,
        "TESSERA_SERVER_K8S_PSAT_ALLOWED_SERVICE_ACCOUNTS",
        "k8s_psat.allowed_service_accounts",
        list,
    ) {
        l.raw.k8s_psat.allowed_service_accounts = v;
    }
    if let Some(v) = l.env(
        env,
        "TESSERA_SERVER_K8S_PSAT_API_SERVER",
        "k8s_psat.api_server",
        text,
    ) {
        l.raw.k8s_psat.api_server = v;
    }
    if let Some(v) = l.env(
        env,
        "TESSERA_SERVER_K8S_PSAT_TIMEOUT",
        "k8s_psat.timeout",
        duration_text,
    ) {
        l.raw.k8s_psat.timeout = v;
    }
    // In a pod, the API server is the `kubernetes` Service, as client-go finds it.
    if l.raw.k8s_psat.api_server.is_empty() {
        let var = |name| env.var(name).and_then(|v| v.into_string().ok());
        let (host, port) = (
            var("KUBERNETES_SERVICE_HOST"),
            var("KUBERNETES_SERVICE_PORT"),
        );
        if let Some(url) = K8sPsatSettings::in_cluster_url(host.as_deref(), port.as_deref()) {
            l.origins.insert(
                "k8s_psat.api_server",
                "environment variables KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT".into(),
            );
            match url {
                Ok(url) => l.raw.k8s_psat.api_server = url.to_string(),
                Err(reason) => l.refuse("k8s_psat.api_server", reason),
            }
        }
    }
}

/// The attestor's settings if enabled; problems go to `l`.
pub(super) fn check(l: &mut Layers, raw: &FileK8sPsat) -> Option<K8sPsatSettings> {
    if !raw.enabled {
        return None;
    }
    let mut allowed = Vec::new();
    for sa in &raw.allowed_service_accounts {
        match sa.parse::<ServiceAccountRef>() {
            Ok(sa) => allowed.push(sa),
            Err(reason) => l.refuse("k8s_psat.allowed_service_accounts", reason),
        }
    }
    if raw.allowed_service_accounts.is_empty() {
        l.refuse(
            "k8s_psat.allowed_service_accounts",
            "is empty: name the agents' service accounts (namespace:name) that may attest nodes",
        );
    }
    if raw.audience.is_empty() {
        l.refuse("k8s_psat.audience", "must not be empty");
    }
    if raw.timeout.is_zero() || raw.timeout > Duration::from_secs(60) {
        l.refuse("k8s_psat.timeout", "must be positive and at most 60s");
    }
    let api_server = if raw.api_server.is_empty() {
        l.refuse(
            "k8s_psat.api_server",
            "is not set and KUBERNETES_SERVICE_HOST is not either (not in a pod?)",
        );
        None
    } else {
        match raw.api_server.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => Some(uri),
            Ok(_) => {
                l.refuse("k8s_psat.api_server", "must be https://host[:port]");
                None
            }
            Err(e) => {
                l.refuse("k8s_psat.api_server", e);
                None
            }
        }
    };
    Some(K8sPsatSettings {
        api_server: api_server?,
        ca_file: raw.ca_file.clone(),
        token_file: raw.token_file.clone(),
        audience: raw.audience.clone(),
        allowed_service_accounts: allowed,
        timeout: raw.timeout,
    })
}

/// The file form of `settings` (for `print-config`).
pub(super) fn to_file(settings: Option<&K8sPsatSettings>) -> FileK8sPsat {
    match settings {
        None => FileK8sPsat::default(),
        Some(s) => FileK8sPsat {
            enabled: true,
            allowed_service_accounts: s
                .allowed_service_accounts
                .iter()
                .map(ToString::to_string)
                .collect(),
            audience: s.audience.clone(),
            api_server: s.api_server.to_string(),
            ca_file: s.ca_file.clone(),
            token_file: s.token_file.clone(),
            timeout: s.timeout,
        },
    }
}
