//! A stdio MCP server the gateway starts and supervises, served as a streamable-HTTP
//! MCP endpoint.
//!
//! PLACEHOLDER owned by the gateway-stdio engineer (`wt-gateway-stdio`), who replaces this
//! file: the types are the contract's, and [`StdioUpstream::start`] refuses, so a config
//! naming a stdio upstream fails at startup with a clear error rather than serving.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::UpstreamService;

/// `[upstream.stdio]`: the command the gateway runs as its upstream.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioConfig {
    /// The program to run (looked up on `PATH`).
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment for the child.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its working directory.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

/// Why a stdio upstream could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StdioError {
    /// This build has no stdio bridge yet.
    #[error("stdio upstreams are not implemented in this build")]
    Unimplemented,
}

/// A supervised stdio MCP server, served as a streamable-HTTP MCP endpoint.
#[derive(Clone, Debug)]
pub struct StdioUpstream {
    _private: (),
}

impl StdioUpstream {
    /// Spawns and supervises the child, initializes it once, and serves it as a
    /// streamable-HTTP MCP endpoint. Placeholder: always refuses.
    pub async fn start(
        config: StdioConfig,
    ) -> Result<(StdioUpstream, tessera_verify::background::Background), StdioError> {
        let _ = config;
        Err(StdioError::Unimplemented)
    }

    /// Whether the child is up and initialized (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        false
    }

    /// The endpoint the proxy sends to.
    pub fn service(&self) -> UpstreamService {
        tower::util::BoxCloneSyncService::new(tower::service_fn(
            |_req: http::Request<axum::body::Body>| async {
                let mut resp =
                    http::Response::new(axum::body::Body::from("stdio upstream not implemented"));
                *resp.status_mut() = http::StatusCode::BAD_GATEWAY;
                Ok::<_, std::convert::Infallible>(resp)
            },
        ))
    }
}
