//! The example server's tools: a pretend GitHub with canned, argument-dependent answers,
//! and each repository's README as a resource (`repo://<owner>/<name>/README.md`) that
//! clients can subscribe to (`resources/subscribe` up to 2025-11-25,
//! `subscriptions/listen` from 2026-07-28). Nothing here knows about identity or policy:
//! tessera-verify's `Enforced` wraps it.

use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{
    ListResourcesResult, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, ResourceContents, ServerCapabilities, ServerConfig, SubscribeRequestParams,
    SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

/// `get_pull_request` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct PullRequestArgs {
    /// `owner/name`, e.g. `acme/api`.
    pub repo: String,
    /// The pull request number.
    pub number: u64,
}

/// `list_pulls` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RepoArgs {
    /// `owner/name`, e.g. `acme/api`.
    pub repo: String,
}

/// `search_code` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SearchArgs {
    /// What to search for.
    pub query: String,
}

/// `delete_branch` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct BranchArgs {
    /// `owner/name`, e.g. `acme/api`.
    pub repo: String,
    /// The branch to delete.
    pub branch: String,
}

/// A pretend GitHub.
#[derive(Debug, Clone)]
pub struct GitHub {
    tool_router: ToolRouter<Self>,
}

impl Default for GitHub {
    fn default() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }
}

/// A stable small number derived from text, so answers depend on the arguments.
fn mix(s: &str) -> u64 {
    s.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(1099511628211)
    })
}

#[tool_router]
impl GitHub {
    #[tool(
        description = "Get one pull request of a repository: title, author, state, diff stats.",
        annotations(read_only_hint = true)
    )]
    fn get_pull_request(
        &self,
        Parameters(PullRequestArgs { repo, number }): Parameters<PullRequestArgs>,
    ) -> String {
        let h = mix(&format!("{repo}#{number}"));
        let authors = ["alice", "bob", "carol", "dave"];
        json!({
            "repo": repo,
            "number": number,
            "title": format!("Fix flaky test in module {}", h % 97),
            "author": authors[(h % authors.len() as u64) as usize],
            "state": if number % 5 == 0 { "merged" } else { "open" },
            "additions": h % 500,
            "deletions": (h >> 8) % 200,
            "head": format!("fix/{number}"),
        })
        .to_string()
    }

    #[tool(
        description = "List the open pull requests of a repository.",
        annotations(read_only_hint = true)
    )]
    fn list_pulls(&self, Parameters(RepoArgs { repo }): Parameters<RepoArgs>) -> String {
        let h = mix(&repo);
        let pulls: Vec<_> = (0..3)
            .map(|i| {
                let n = 40 + (h >> (i * 8)) % 20 + i * 20;
                json!({"number": n, "title": format!("Change #{n} in {repo}")})
            })
            .collect();
        json!({"repo": repo, "pulls": pulls}).to_string()
    }

    #[tool(
        description = "Search code across repositories.",
        annotations(read_only_hint = true)
    )]
    fn search_code(&self, Parameters(SearchArgs { query }): Parameters<SearchArgs>) -> String {
        let h = mix(&query);
        json!({
            "query": query,
            "hits": [
                {"repo": "acme/api", "path": format!("src/handlers/{}.rs", h % 13), "line": h % 400},
                {"repo": "acme/web", "path": format!("app/lib/{}.ts", (h >> 4) % 17), "line": (h >> 12) % 300},
            ],
        })
        .to_string()
    }

    #[tool(
        description = "Delete a branch of a repository. Destructive: cannot be undone.",
        annotations(destructive_hint = true, read_only_hint = false)
    )]
    fn delete_branch(
        &self,
        Parameters(BranchArgs { repo, branch }): Parameters<BranchArgs>,
    ) -> String {
        // The one destructive tool says when it runs, so tests can tell from the
        // server's log that a forbidden call never reached it.
        tracing::info!(%repo, %branch, "tool delete_branch ran");
        json!({"repo": repo, "branch": branch, "deleted": true}).to_string()
    }
}

/// The repositories whose READMEs are resources.
const REPOS: &[&str] = &["acme/api", "acme/web", "acme/secrets"];

fn readme_uri(repo: &str) -> String {
    format!("repo://{repo}/README.md")
}

#[tool_handler(router = self.tool_router)]
// `resources/subscribe` is deprecated in rmcp (2026-07-28 replaced it) but still what
// clients of earlier versions send.
#[allow(deprecated)]
impl ServerHandler for GitHub {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .build(),
        )
        .with_instructions(
            "A pretend GitHub protected by tessera-verify: every call is checked against the \
             caller's task SVID, its scopes, and Cedar policy.",
        )
    }

    async fn list_resources(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let resources = REPOS
            .iter()
            .map(|repo| {
                serde_json::from_value(json!({
                    "uri": readme_uri(repo),
                    "name": format!("{repo} README"),
                    "mimeType": "text/markdown",
                }))
                .map_err(|e| McpError::internal_error(e.to_string(), None))
            })
            .collect::<Result<_, _>>()?;
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let Some(repo) = REPOS.iter().find(|r| readme_uri(r) == request.uri) else {
            return Err(McpError::resource_not_found(
                format!("no resource {}", request.uri),
                None,
            ));
        };
        let text = format!(
            "# {repo}\n\nBuild with `make`; {} open pulls.\n",
            mix(repo) % 9
        );
        Ok(ReadResourceResponse::Complete(ReadResourceResult::new(
            vec![ResourceContents::text(text, request.uri)],
        )))
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        // Updates of known READMEs; rmcp intersects with what was requested.
        let known = SubscriptionFilter::builder()
            .resource_subscriptions(REPOS.iter().map(|r| readme_uri(r)))
            .build();
        Some(requested.intersection(&known))
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        tracing::info!(uri = %request.uri, "resources/subscribe");
        Ok(())
    }

    async fn unsubscribe(
        &self,
        _: UnsubscribeRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        Ok(())
    }
}
