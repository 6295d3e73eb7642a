//! # tessera-verify
//!
//! The library an MCP server links to authorize **every** request, over mTLS or with an
//! OAuth access token minted for a task: *is this exact client, in this exact task,
//! allowed to perform this exact operation, right now?*
//!
//! | module | concept |
//! |---|---|
//! | [`trust`] | where the own SVID and the bundles come from (Workload API or PEM files), published through one `watch` seam |
//! | [`tls`] | rustls `ServerConfig` that requires (or, beside bearer tokens, allows) a SPIFFE client certificate; client configs pinning a server id |
//! | [`peer`] | the caller's identity ([`Peer`]) and what proved it ([`Credential`]): parsed once from the verified leaf, or from a verified access token |
//! | [`revocation`] | the agent's revocation feed (`Revocations.Follow`: snapshot, deltas, heartbeats; evicted node CAs), with a staleness bound that fails closed |
//! | [`authz`] | the per-request [`Decision`]: expiry, revocation, scopes, Cedar |
//! | [`mcp`] | enforcement for rmcp 3 servers ([`mcp::Enforced`]) and MCP session binding |
//! | [`oauth`] | MCP authorization: access tokens, the co-located token endpoint, metadata, the resource server ([`oauth::BearerAuthLayer`]: Protected Resource Metadata, `WWW-Authenticate` challenges, step-up) |
//! | [`audit`] | every decision as a `tracing` event and optional JSON lines |
//! | [`conn`] | one span per accepted connection ([`ConnectionSpan`]): its id, and the peer once proven |
//! | [`background`] | the one rule by which every background task stops: with its [`Background`] guard |
//! | [`unread`] | `Connection: close` on an HTTP/1.1 answer given before its request body was read (e.g. a refused token) |
//!
//! ## Serving rmcp over mTLS
//!
//! ```ignore
//! use std::sync::Arc;
//! use tessera_verify::{Authorizer, ConnectionSpan, Peer, ServerTlsBuilder, RevocationWatcher};
//! use tessera_verify::authz::policy::{PolicyFiles, PolicyStore};
//! use tessera_verify::mcp::{Enforced, SessionBindingLayer, StreamGuardLayer};
//! use tessera_verify::revocation::WatcherConfig;
//!
//! // 1. Trust: own SVID spiffe://<td>/mcp/<server> + bundle, from the agent ...
//! //    Each background task runs as long as its guard (`_t`, `_r`, `_p`): keep them.
//! let (trust, _t) = tessera_verify::trust::workload::connect(Some("unix:///run/tessera/workload.sock"), server_id.clone()).await?;
//! //    ... or from PEM files, polled for changes:
//! // let (trust, _t) = tessera_verify::trust::files::spawn(FileTrustConfig::new(server_id.clone(), bundle, chain, key))?;
//!
//! // 2. Revocations: Revocations.Follow on the agent's socket (stale, so refusing task
//! //    credentials, until its first complete snapshot and past its staleness bound).
//! let (revocations, _r) = RevocationWatcher::spawn(WatcherConfig::new("/run/tessera/workload.sock"));
//!
//! // 3. TLS: client certificate required; own trust domain only unless allow_trust_domain(..);
//! //    a chain through an evicted node's CA refused in the handshake.
//! let mut tls = ServerTlsBuilder::new(trust)
//!     .refuse_evicted_node_cas(revocations.clone())
//!     .build()?;
//! tls.alpn_protocols = vec![b"http/1.1".to_vec()];
//! let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
//!
//! // Policies, authorizer.
//! let policies = Arc::new(PolicyStore::load(PolicyFiles { policies, schema })?);
//! let _p = policies.spawn_watch(std::time::Duration::from_secs(2));
//! let authz = Arc::new(Authorizer::new(server_id, policies, revocations).with_audit(AuditLog::tracing_only()));
//!
//! // 4. rmcp service: wrap the handler; end a revoked task's open streams; bind sessions
//! //    to peers (SessionBindingLayer::with_binding(..on_evict(..)) to close forgotten
//! //    sessions in the session manager too).
//! let service = rmcp::transport::streamable_http_server::StreamableHttpService::new(
//!     { let authz = authz.clone(); move || Ok(Enforced::new(MyHandler::default(), authz.clone())) },
//!     Default::default(), Default::default());
//! let service = tower::ServiceBuilder::new()
//!     .layer(StreamGuardLayer::new(authz.clone()))
//!     .layer(SessionBindingLayer::new())
//!     .service(service);
//!
//! // 5. Per TLS connection: one span, the peer parsed ONCE, both in every request.
//! loop {
//!     let (tcp, remote) = listener.accept().await?;
//!     let (acceptor, service) = (acceptor.clone(), service.clone());
//!     let conn = ConnectionSpan::accepted(remote);
//!     let span = conn.span().clone();
//!     tokio::spawn(tracing::Instrument::instrument(async move {
//!         let tls = acceptor.accept(tcp).await?;           // handshake = chain + profile checks
//!         let peer = Arc::new(Peer::from_chain(tls.get_ref().1.peer_certificates())?);
//!         conn.record_peer(&peer);
//!         let svc = tower::ServiceBuilder::new()
//!             .map_request(move |mut req: http::Request<_>| {
//!                 req.extensions_mut().insert(peer.clone());
//!                 req.extensions_mut().insert(conn.clone());
//!                 req
//!             })
//!             .service(service);
//!         hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
//!             .serve_connection(hyper_util::rt::TokioIo::new(tls), hyper_util::service::TowerToHyperService::new(svc))
//!             .await
//!     }, span));
//! }
//! ```
//!
//! rmcp moves each POST's `http::request::Parts` (with its extensions) into the handler's
//! `RequestContext.extensions`; [`mcp::Enforced`] reads the `Arc<Peer>` from there and
//! refuses when it is missing. Non-rmcp servers call [`Authorizer::check`] per request.
//!
//! ## Serving bearer tokens
//!
//! MCP SDK clients speak OAuth 2.1, not mTLS. The same server also accepts them by
//! adding, to the stack above, its own token endpoint ([`oauth::TokenEndpointLayer`])
//! and [`oauth::BearerAuthLayer`], which publishes RFC 9728 metadata, answers `401` with a
//! `WWW-Authenticate: Bearer resource_metadata="…"` challenge, verifies each token
//! (minted by this server for exactly its resource URL, carrying the task), and puts the
//! token's [`Peer`] where the mTLS path puts the certificate's: from there a bearer
//! caller gets exactly the checks an mTLS caller gets, with the token's scopes.
//!
//! ```ignore
//! use tessera_verify::oauth::{AcceptedAuth, AccessTokenVerifier, BearerAuthLayer, CertThumbprint,
//!     ProtectedResourceMetadata, TokenEndpointConfig, TokenEndpointLayer};
//!
//! let (resource, issuer) = ("https://mcp.example:8443/mcp", "https://mcp.example:8443");
//! // Which credentials: certificates, tokens, or both (optionally only tokens bound to
//! // the connection's certificate, RFC 8705).
//! let accepted = AcceptedAuth::BOTH;
//! // TLS: a connection may come without a certificate; one presented is still verified.
//! let mut tls = ServerTlsBuilder::new(trust.clone()).client_certificate_optional().build()?;
//! let bearer = BearerAuthLayer::new(
//!     AccessTokenVerifier::new(trust.clone(), issuer, resource),
//!     authz.clone(),
//!     ProtectedResourceMetadata::new(resource, issuer)?,
//!     accepted,
//! )?;
//! // The co-located authorization server: JWT-SVIDs (checked against the JWT bundle the
//! // trust source carries) in, access tokens signed with the server's own SVID key out.
//! let token_endpoint = TokenEndpointLayer::new(
//!     TokenEndpointConfig::new(resource)?.with_token_ttl(Duration::from_secs(300))?,
//!     trust.clone(),
//!     revocations.clone(),
//! );
//! let service = tower::ServiceBuilder::new()
//!     .layer(token_endpoint)                       // POST /oauth/token carries no bearer token
//!     .layer(bearer)
//!     .layer(StreamGuardLayer::new(authz.clone()))
//!     .layer(SessionBindingLayer::new())
//!     .service(rmcp_service);
//! // Per connection, when a certificate was presented: its `Arc<Peer>` and its
//! // `CertThumbprint::of_der(leaf)` into every request's extensions, as above; and the
//! // whole per-connection service wrapped in `tessera_verify::unread::CloseUnread(svc)`:
//! // a 401 answered before the body was read must close an HTTP/1.1 connection, or the
//! // client's next request on it is cut (Python's httpx, intermittently).
//! ```
//!
//! A request with a certificate *and* a token is taken only if the token is bound to
//! that certificate (`cnf`); otherwise which of the two speaks for it would be a guess.
//! A token of an ended task is answered `401 invalid_token` on its next request. See
//! [`oauth::resource`] for the full behaviour and [`oauth::challenge`] for the answers.
//!
//! ## Agent runtimes
//!
//! [`tls::client_config`] builds a rustls `ClientConfig` that presents the task SVID and
//! accepts only a server presenting exactly `spiffe://<td>/mcp/<server>`;
//! [`tls::client_config_without_certificate`] pins the server the same way for a runtime
//! that sends an access token instead.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod audit;
pub mod authz;
pub mod background;
pub mod conn;
mod decision;
pub mod mcp;
pub mod oauth;
pub mod peer;
mod request;
pub mod revocation;
pub mod tls;
pub mod trust;
pub mod unread;

#[cfg(test)]
mod testutil;

pub use audit::AuditLog;
pub use authz::Authorizer;
pub use background::Background;
pub use conn::ConnectionSpan;
pub use decision::{Decision, Reason};
pub use peer::{AuthMethod, Credential, Peer, PeerError, TokenCredential};
pub use request::{McpMethod, McpRequest};
pub use revocation::{NodeCaStatus, RevocationStatus, RevocationWatcher};
pub use tls::{ServerTlsBuilder, TlsError};
pub use trust::{TrustError, TrustMaterial, TrustSource};
