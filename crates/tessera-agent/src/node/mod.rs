//! Cluster mode: this node's membership of a tessera-server's trust domain.
//!
//! At first start the agent makes two P-256 keys, proves its node once (`Attest`, with a
//! join token or a Kubernetes PSAT) and keeps what the server certified for them in the
//! data directory (`state`). Its authority is the node CA ([`Authority::from_node_ca`]),
//! so client and task SVIDs are issued here and BeginTask never waits on the network.
//! Both credentials are renewed at the server's `renew_after_unix` with fresh keys; the
//! node SVID is the client certificate of every later RPC (`tls`).

mod failover;
mod jwt_keys;
mod report;
mod revocations;
mod state;
mod sync;
mod tls;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_authority::{Authority, AuthorityError, IssuedSvid, NodeCaKey};
use tessera_identity::{NodeId, TrustDomain};
use tessera_proto::tessera::v1::node_client::NodeClient;
use tessera_proto::tessera::v1::{
    AttestRequest, NodeCredentials, RenewRequest, SignServerSvidRequest, attest_request,
};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::config::{AttestProof, ServerConfig};
use crate::drain;
use failover::{ConnectError, Replicas};
pub(crate) use jwt_keys::{
    ClusterJwtKeys, OtherNodesKeys, run_publisher as publish_jwt_keys, union as jwt_union,
};
pub(crate) use report::Reporter;
pub(crate) use revocations::ServerRevocations;
pub(crate) use state::{NodeState, StateError};
pub(crate) use sync::Syncer;
use tls::TlsSetupError;

/// Largest proof file read (join tokens are short; projected tokens a few KiB).
const MAX_PROOF_BYTES: u64 = 64 * 1024;

/// Bounds of the retry backoff towards the server. The ceiling is short because the
/// node's verifiers fail closed once the revocation feed is `staleness` (30 s by
/// default) behind: an agent still waiting out a 30 s backoff after the server came back
/// kept them refusing for that long (measured: ~14 s after a partition healed). At 5 s,
/// jittered down to 2.5 s, 1,000 agents retry a lost server 200 to 400 times a second,
/// which a replica that is up refuses or serves cheaply.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Credentials the agent would have to use for less than this are renewed (or, past
/// expiry, replaced by attesting again) before it serves.
const EXPIRY_MARGIN_SECS: i64 = 30;

/// Why joining or staying in the cluster failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NodeError {
    /// The saved credentials.
    #[error(transparent)]
    State(#[from] StateError),
    /// TLS towards the server.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// The server's addresses.
    #[error(transparent)]
    Address(#[from] ConnectError),
    /// The server answered with an error.
    #[error("the server refused {rpc}: {status}")]
    Refused {
        rpc: &'static str,
        status: tonic::Status,
    },
    /// What the server returned does not make a usable node CA.
    #[error("the node CA from the server: {0}")]
    Authority(#[from] AuthorityError),
    /// What the server returned is not what was asked for.
    #[error("the credentials from the server: {0}")]
    Invalid(String),
    /// No proof to attest with, or it cannot be read.
    #[error("attesting the node: {0}")]
    Proof(String),
}

impl NodeError {
    /// Worth retrying: the server was unreachable or busy, not refusing.
    fn is_transient(&self) -> bool {
        matches!(self, NodeError::Refused { status, .. } if matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::ResourceExhausted
                | tonic::Code::Aborted
                | tonic::Code::Unknown
        ))
    }
}

/// The node's standing with the server: its authority, and a channel authenticated
/// with the current node SVID (replaced at each renewal).
pub(crate) struct NodeLink {
    config: ServerConfig,
    dir: PathBuf,
    trust_domain: TrustDomain,
    node: NodeId,
    authority: Arc<Authority>,
    state: Mutex<NodeState>,
    replicas: Arc<Replicas>,
    channel: watch::Sender<Channel>,
}

impl std::fmt::Debug for NodeLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLink")
            .field("node", &self.node.to_string())
            .field("server", &self.replicas.current())
            .finish_non_exhaustive()
    }
}

impl NodeLink {
    /// Joins the cluster: the saved credentials when they are still valid (renewed first
    /// when due), else `Attest` with the configured proof. Unreachable servers are retried
    /// with backoff until `drain` starts; a refusal is final.
    pub(crate) async fn join(
        config: ServerConfig,
        data_dir: &Path,
        trust_domain: TrustDomain,
        drain: &drain::Watch,
    ) -> Result<Arc<NodeLink>, NodeError> {
        let dir = data_dir.join("node");
        let replicas = Replicas::new(&config.addresses)?;
        let saved = match NodeState::load(&dir) {
            Ok(s) => s,
            // A corrupt file is replaced by attesting again; an insecure one is not
            // silently overwritten (its keys may have leaked: the operator must look).
            Err(e @ StateError::Malformed { .. }) => {
                tracing::warn!(error = %e, "saved node credentials unusable; attesting again");
                None
            }
            Err(e) => return Err(e.into()),
        };
        let now = unix_now();
        let usable = saved.filter(|s| {
            s.svid_not_after()
                .is_some_and(|t| t > now + EXPIRY_MARGIN_SECS)
        });
        let (state, fresh) = match usable {
            Some(s) => (s, false),
            None => {
                let s = retry(drain, "attest", || {
                    attest(&config, &replicas, &trust_domain)
                })
                .await?;
                (s, true)
            }
        };
        let node = node_id(&state.credentials, &trust_domain)?;
        let authority = match Authority::from_node_ca(
            trust_domain.clone(),
            state.credentials.node_ca_chain.clone(),
            state.ca_key_copy(),
            state.credentials.bundle.clone(),
        ) {
            Ok(a) => a,
            // The node SVID still works but the node CA expired: renew before serving.
            Err(AuthorityError::CaExpired { .. }) if !fresh => {
                let s = retry(drain, "renew", || {
                    renew(&config, &replicas, &trust_domain, &state)
                })
                .await?;
                let a = Authority::from_node_ca(
                    trust_domain.clone(),
                    s.credentials.node_ca_chain.clone(),
                    s.ca_key_copy(),
                    s.credentials.bundle.clone(),
                )?;
                return Self::assemble(config, replicas, dir, trust_domain, node, a, s, true);
            }
            Err(e) => return Err(e.into()),
        };
        Self::assemble(
            config,
            replicas,
            dir,
            trust_domain,
            node,
            authority,
            state,
            fresh,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        config: ServerConfig,
        replicas: Arc<Replicas>,
        dir: PathBuf,
        trust_domain: TrustDomain,
        node: NodeId,
        authority: Authority,
        state: NodeState,
        save: bool,
    ) -> Result<Arc<NodeLink>, NodeError> {
        if save {
            state.save(&dir)?;
        }
        let channel = mtls_channel(&config, &replicas, &state)?;
        tracing::info!(node = %node, servers = %replicas.describe(), "joined the cluster");
        Ok(Arc::new(NodeLink {
            config,
            dir,
            trust_domain,
            node,
            authority: Arc::new(authority),
            state: Mutex::new(state),
            replicas,
            channel: watch::Sender::new(channel),
        }))
    }

    /// The node's authority (its node CA): clients and tasks only.
    pub(crate) fn authority(&self) -> Arc<Authority> {
        Arc::clone(&self.authority)
    }

    /// This node's SPIFFE ID.
    pub(crate) fn node(&self) -> &NodeId {
        &self.node
    }

    /// The replica in use (or to be tried next), for messages naming it.
    pub(crate) fn server_address(&self) -> &http::uri::Authority {
        self.replicas.current()
    }

    /// Every replica's address, for messages naming "the server".
    pub(crate) fn server_addresses(&self) -> String {
        self.replicas.describe()
    }

    /// The channel of the current node SVID, shared by every RPC and stream to the
    /// server (Sync, Renew, SignServerSvid, task events, the revocation feed): its
    /// connections fail over between the replicas together. Take a fresh one for each
    /// new call or stream: renewal replaces it (a stream on the old one keeps working
    /// until it ends).
    pub(crate) fn channel(&self) -> Channel {
        self.channel.borrow().clone()
    }

    /// Changes at every renewal of the node's credentials (a new node CA, so a new cap
    /// on what it publishes).
    pub(crate) fn subscribe_renewals(&self) -> watch::Receiver<Channel> {
        self.channel.subscribe()
    }

    /// The node directory (saved credentials, the other nodes' JWT keys).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// A client on [`NodeLink::channel`].
    pub(crate) fn client(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel())
    }

    /// An MCP server SVID for `server` (`spiffe://<td>/mcp/<server>`), signed by the
    /// cluster's root through `SignServerSvid` for a key made here (the key never
    /// leaves). The answer is checked: the leaf names exactly that server and certifies
    /// that key.
    pub(crate) async fn sign_server_svid(
        &self,
        server: &str,
        ttl: Duration,
    ) -> Result<IssuedSvid, NodeError> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let key = NodeCaKey::generate()?;
        let chain = self
            .client()
            .sign_server_svid(SignServerSvidRequest {
                server: server.to_owned(),
                public_key: key.public_key_der(),
                ttl_secs: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
            })
            .await
            .map_err(|status| NodeError::Refused {
                rpc: "SignServerSvid",
                status,
            })?
            .into_inner()
            .svid_chain;
        let expected = format!("{}/mcp/{server}", self.trust_domain.id_string());
        let leaf = chain
            .first()
            .ok_or_else(|| NodeError::Invalid("an empty server SVID chain".into()))?;
        let named = tls::svid_spiffe_id(leaf).map_err(NodeError::Invalid)?;
        if named != expected {
            return Err(NodeError::Invalid(format!(
                "a server SVID for {named:?}, asked for {expected:?}"
            )));
        }
        let (_, cert) = X509Certificate::from_der(leaf)
            .map_err(|e| NodeError::Invalid(format!("the server SVID: {e}")))?;
        if cert.public_key().raw != key.public_key_der().as_slice() {
            return Err(NodeError::Invalid(
                "the server SVID certifies another key".into(),
            ));
        }
        let validity = cert.validity();
        let svid = IssuedSvid {
            spiffe_id: named,
            serial_hex: hex::encode(cert.raw_serial()),
            not_before_unix: validity.not_before.timestamp(),
            not_after_unix: validity.not_after.timestamp(),
            chain_der: chain.clone(),
            key_pkcs8_der: key.to_pkcs8_der(),
            issuer_node: None,
        };
        Ok(svid)
    }

    /// When the current credentials are due for renewal, unix seconds.
    fn renew_after(&self) -> i64 {
        self.state
            .lock()
            .expect("node state lock")
            .credentials
            .renew_after_unix
    }

    /// Renews the credentials at `renew_after_unix` (at once when already past), with
    /// backoff on failure, until `drain` starts.
    pub(crate) async fn run_renewal(self: Arc<Self>, drain: drain::Watch) {
        let mut backoff = Backoff::default();
        loop {
            let wait = u64::try_from(self.renew_after() - unix_now()).unwrap_or(0);
            tokio::select! {
                () = drain.signaled() => return,
                () = tokio::time::sleep(Duration::from_secs(wait)) => {}
            }
            match self.renew_once().await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the node credentials failed; will retry");
                    tokio::select! {
                        () = drain.signaled() => return,
                        () = tokio::time::sleep(backoff.next()) => {}
                    }
                }
            }
        }
    }

    /// One renewal: new keys, `Renew`, the authority switched to the new node CA, the
    /// state saved, the channel replaced.
    pub(crate) async fn renew_once(&self) -> Result<(), NodeError> {
        let next = {
            let current = self.state.lock().expect("node state lock");
            // Hold no lock across the RPC: copy what the call needs.
            NodeState {
                svid_key: copy_key(&current.svid_key),
                ca_key: copy_key(&current.ca_key),
                credentials: current.credentials.clone(),
            }
        };
        let renewed = renew(&self.config, &self.replicas, &self.trust_domain, &next).await?;
        let node = node_id(&renewed.credentials, &self.trust_domain)?;
        if node != self.node {
            return Err(NodeError::Invalid(format!(
                "renewed for {node}, this node is {}",
                self.node
            )));
        }
        self.authority.renew_node_ca(
            renewed.credentials.node_ca_chain.clone(),
            renewed.ca_key_copy(),
            renewed.credentials.bundle.clone(),
        )?;
        renewed.save(&self.dir)?;
        let channel = mtls_channel(&self.config, &self.replicas, &renewed)?;
        *self.state.lock().expect("node state lock") = renewed;
        self.channel.send_replace(channel);
        tracing::info!(node = %self.node, "renewed the node credentials");
        Ok(())
    }
}

impl crate::svids::ServerSvidSigner for NodeLink {
    fn sign<'a>(
        &'a self,
        server: &'a str,
        ttl: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<IssuedSvid>> + Send + 'a>>
    {
        Box::pin(async move { Ok(self.sign_server_svid(server, ttl).await?) })
    }
}

/// The channel authenticated with `state`'s node SVID, pinned to the roots of the
/// bundle the server returned (which verified under the configured ones at first
/// contact).
fn mtls_channel(
    config: &ServerConfig,
    replicas: &Arc<Replicas>,
    state: &NodeState,
) -> Result<Channel, NodeError> {
    let tls = tls::client_config(
        &config.server_id,
        &state.credentials.bundle,
        Some((&state.credentials.node_svid_chain, &state.svid_key)),
    )?;
    Ok(tls::channel(replicas, tls)?)
}

/// `Attest` with the configured proof and fresh keys, TLS pinned to `bundle_file`.
async fn attest(
    config: &ServerConfig,
    replicas: &Arc<Replicas>,
    trust_domain: &TrustDomain,
) -> Result<NodeState, NodeError> {
    let proof = match &config.proof {
        None => {
            return Err(NodeError::Proof(
                "no saved credentials and no proof configured: set server.join_token_file \
                 (or server.join_token, server.k8s_psat_token_file)"
                    .into(),
            ));
        }
        Some(AttestProof::JoinToken(t)) => attest_request::Proof::JoinToken(t.clone()),
        Some(AttestProof::JoinTokenFile(p)) => attest_request::Proof::JoinToken(read_proof(p)?),
        Some(AttestProof::K8sPsatFile(p)) => attest_request::Proof::K8sPsat(read_proof(p)?),
    };
    let roots = read_bundle(&config.bundle_file)?;
    let tls = tls::client_config(&config.server_id, &roots, None)?;
    let mut client = NodeClient::new(tls::channel(replicas, tls)?);
    let svid_key = NodeCaKey::generate()?;
    let ca_key = NodeCaKey::generate()?;
    let response = client
        .attest(AttestRequest {
            proof: Some(proof),
            node_name: config.node_name.to_string(),
            node_svid_public_key: svid_key.public_key_der(),
            node_ca_public_key: ca_key.public_key_der(),
        })
        .await
        .map_err(|status| NodeError::Refused {
            rpc: "Attest",
            status,
        })?
        .into_inner();
    let credentials = response
        .credentials
        .ok_or_else(|| NodeError::Invalid("Attest returned no credentials".into()))?;
    check_credentials(&credentials, trust_domain)?;
    tracing::info!(node = %credentials.node_id, "node attested");
    Ok(NodeState {
        svid_key,
        ca_key,
        credentials,
    })
}

/// `Renew` over mTLS with `current`'s node SVID, for fresh keys.
async fn renew(
    config: &ServerConfig,
    replicas: &Arc<Replicas>,
    trust_domain: &TrustDomain,
    current: &NodeState,
) -> Result<NodeState, NodeError> {
    let mut client = NodeClient::new(mtls_channel(config, replicas, current)?);
    let svid_key = NodeCaKey::generate()?;
    let ca_key = NodeCaKey::generate()?;
    let response = client
        .renew(RenewRequest {
            node_svid_public_key: svid_key.public_key_der(),
            node_ca_public_key: ca_key.public_key_der(),
        })
        .await
        .map_err(|status| NodeError::Refused {
            rpc: "Renew",
            status,
        })?
        .into_inner();
    let credentials = response
        .credentials
        .ok_or_else(|| NodeError::Invalid("Renew returned no credentials".into()))?;
    check_credentials(&credentials, trust_domain)?;
    Ok(NodeState {
        svid_key,
        ca_key,
        credentials,
    })
}

/// What every set of credentials must hold before the agent keeps it.
fn check_credentials(c: &NodeCredentials, trust_domain: &TrustDomain) -> Result<(), NodeError> {
    node_id(c, trust_domain)?;
    if c.node_svid_chain.is_empty() || c.node_ca_chain.is_empty() || c.bundle.is_empty() {
        return Err(NodeError::Invalid("a chain or the bundle is empty".into()));
    }
    Ok(())
}

fn node_id(c: &NodeCredentials, trust_domain: &TrustDomain) -> Result<NodeId, NodeError> {
    let node: NodeId = c
        .node_id
        .parse()
        .map_err(|e| NodeError::Invalid(format!("node_id {:?}: {e}", c.node_id)))?;
    if node.trust_domain() != trust_domain {
        return Err(NodeError::Invalid(format!(
            "{node} is not in trust domain {trust_domain}"
        )));
    }
    Ok(node)
}

fn copy_key(key: &NodeCaKey) -> NodeCaKey {
    NodeCaKey::from_pkcs8_der(&key.to_pkcs8_der()).expect("a key we hold re-parses")
}

/// A token file, size-bounded, trimmed.
fn read_proof(path: &Path) -> Result<String, NodeError> {
    let fail = |e: &dyn std::fmt::Display| NodeError::Proof(format!("{}: {e}", path.display()));
    let len = std::fs::metadata(path).map_err(|e| fail(&e))?.len();
    if len > MAX_PROOF_BYTES {
        return Err(fail(&format!("larger than {MAX_PROOF_BYTES} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(&e))?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(fail(&"empty"));
    }
    Ok(token)
}

/// The configured roots (PEM).
fn read_bundle(path: &Path) -> Result<Vec<Vec<u8>>, NodeError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsSetupError::Bundle(format!("{}: {e}", path.display())))?;
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

/// Runs `op` until it succeeds, fails for good, or the drain starts.
async fn retry<T, F, Fut>(drain: &drain::Watch, what: &str, mut op: F) -> Result<T, NodeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, NodeError>>,
{
    let mut backoff = Backoff::default();
    loop {
        match op().await {
            Err(e) if e.is_transient() => {
                let wait = backoff.next();
                tracing::warn!(error = %e, retry_in = ?wait, "{what}: the server is unavailable");
                tokio::select! {
                    () = drain.signaled() => return Err(e),
                    () = tokio::time::sleep(wait) => {}
                }
            }
            other => return other,
        }
    }
}

/// Exponential backoff with jitter, so a fleet of agents does not reconnect in step.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The next wait: the current bound with up to half of it taken off at random.
    pub(crate) fn next(&mut self) -> Duration {
        let bound = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let jitter = rand::random::<f64>() * 0.5;
        bound.mul_f64(1.0 - jitter)
    }

    /// Back to the shortest wait after a success.
    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
