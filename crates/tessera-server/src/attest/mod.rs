//! Node attestation: how a node proves its name to the server once, before it holds a
//! node SVID. Each proof kind of `tessera.v1.AttestRequest` has one [`NodeAttestor`];
//! the Node service picks the attestor by the proof's kind and refuses a kind no
//! attestor is configured for (deny by default).
//!
//! An attestor checks the evidence and registers the node in one step, so that a proof
//! is never accepted without the node being recorded (a join token is consumed in the
//! same transaction that registers the node).
//!
//! * `join_token`: single-use tokens from `tessera node token create`.

mod join_token;

pub use join_token::JoinTokenAttestor;

use crate::{AttestationKind, Node, ServerStoreError, Written};

/// Proves a node's name from the evidence an agent sent, and registers it.
///
/// Implementations treat `evidence` as hostile: it comes off the network from a caller
/// that has no credentials yet. It is bounded in size by the Node service before it
/// reaches an attestor ([`crate::MAX_ATTESTATION_EVIDENCE_LEN`]).
#[tonic::async_trait]
pub trait NodeAttestor: Send + Sync + 'static {
    /// The proof kind this attestor accepts.
    fn kind(&self) -> AttestationKind;

    /// Checks `evidence` (a join token, a projected service-account token…) and registers
    /// the node it proves, returning the node's record and the change's version.
    /// `requested_name` is the name the agent asked for; an attestor whose evidence names
    /// the node itself (Kubernetes) uses the evidence's name instead.
    async fn attest(
        &self,
        evidence: &str,
        requested_name: &str,
    ) -> Result<Written<Node>, AttestError>;
}

/// Why an attestation failed. Each variant maps to one gRPC status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The evidence does not prove a node (malformed, unknown, expired, used, for
    /// another node, of a namespace or service account not allowed…). PERMISSION_DENIED.
    /// The reason is for the server's log and the caller; it never holds the evidence.
    #[error("attestation refused: {0}")]
    Refused(String),
    /// Something the attestor depends on (PostgreSQL, the Kubernetes API) cannot be
    /// reached now; the agent retries. UNAVAILABLE.
    #[error("attestation unavailable: {0}")]
    Unavailable(String),
    /// The store refused or failed the registration.
    #[error(transparent)]
    Store(#[from] ServerStoreError),
}

/// The attestors a server runs, by proof kind.
#[derive(Default, Clone)]
pub struct Attestors {
    join_token: Option<std::sync::Arc<dyn NodeAttestor>>,
    k8s_psat: Option<std::sync::Arc<dyn NodeAttestor>>,
}

impl std::fmt::Debug for Attestors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attestors")
            .field("join_token", &self.join_token.is_some())
            .field("k8s_psat", &self.k8s_psat.is_some())
            .finish()
    }
}

impl Attestors {
    /// Adds (or replaces) the attestor for its kind.
    pub fn with(mut self, attestor: std::sync::Arc<dyn NodeAttestor>) -> Attestors {
        match attestor.kind() {
            AttestationKind::JoinToken => self.join_token = Some(attestor),
            AttestationKind::K8sPsat => self.k8s_psat = Some(attestor),
        }
        self
    }

    /// The attestor for `kind`, if one is configured.
    pub fn get(&self, kind: AttestationKind) -> Option<&dyn NodeAttestor> {
        match kind {
            AttestationKind::JoinToken => self.join_token.as_deref(),
            AttestationKind::K8sPsat => self.k8s_psat.as_deref(),
        }
    }
}
