//! A fast upstream for the bench: rmcp's own streamable-HTTP server (stateful sessions
//! for 2025-11-25 clients, `_meta`-carrying stateless calls for 2026-07-28) over plain
//! HTTP/1.1 on loopback, in this process, with the example "github" server's tool
//! names so the same Cedar policies apply. The Python SDK upstream costs milliseconds a
//! call of its own, which hid the gateway's share; this one costs tens of microseconds.

use std::net::SocketAddr;
use std::sync::Arc;

use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct PullRequestArgs {
    pub repo: String,
    pub number: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RepoArgs {
    pub repo: String,
}

#[derive(Debug, Clone)]
pub struct FastGitHub {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl FastGitHub {
    #[tool(description = "Reads one pull request.")]
    fn get_pull_request(
        &self,
        Parameters(PullRequestArgs { repo, number }): Parameters<PullRequestArgs>,
    ) -> String {
        format!("PR #{number} in {repo}: Fix the flaky test (open)")
    }

    #[tool(description = "Lists open pull requests.")]
    fn list_pulls(&self, Parameters(RepoArgs { repo }): Parameters<RepoArgs>) -> String {
        format!("{repo}: #41, #42, #43")
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for FastGitHub {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// Serves [`FastGitHub`] at `http://<addr>/mcp` until the returned task is aborted.
pub async fn start() -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(["127.0.0.1".to_owned(), "localhost".to_owned()])
        .with_sse_keep_alive(None);
    let service = StreamableHttpService::new(
        || {
            Ok(FastGitHub {
                tool_router: FastGitHub::tool_router(),
            })
        },
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // Nagle off, as the gateway's own connections: small JSON answers must not wait
    // for the peer's delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((addr, task))
}
