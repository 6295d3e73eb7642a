//! Workload attestation: who is calling, from the kernel's point of view.

pub mod k8s;
mod peer;
mod selector;
pub(crate) mod sys;
mod unix;

pub use peer::{PeerConn, PeerInfo};
pub use selector::{Selector, SelectorError};
pub use unix::{AttestError, Attestation, UnixAttestor};

// === Attestor: unix selectors ∪ k8s selectors ===

use std::os::fd::OwnedFd;

/// Every attestor the agent runs, composed: a caller's selectors are its unix
/// selectors plus, when the Kubernetes attestor is enabled and the caller runs
/// in a pod, its `k8s:*` selectors. A caller in a pod that cannot be resolved
/// is refused outright.
#[derive(Debug, Default)]
pub struct Attestor {
    unix: UnixAttestor,
    k8s: Option<k8s::K8sAttestor>,
}

impl Attestor {
    /// Composes `unix` with an optional Kubernetes attestor.
    pub fn new(unix: UnixAttestor, k8s: Option<k8s::K8sAttestor>) -> Self {
        Attestor { unix, k8s }
    }

    /// Attests the peer of a connection (see [`UnixAttestor::attest`]).
    ///
    /// The cgroup is read before the unix attestor's reads, whose final pidfd
    /// check then covers it too; the kubelet lookup afterwards is keyed by
    /// what was read, not by the pid.
    pub async fn attest(
        &self,
        peer: &PeerInfo,
        want_hash: bool,
    ) -> Result<Attestation, AttestError> {
        let Some(k8s) = &self.k8s else {
            return self.unix.attest(peer, want_hash);
        };
        let pid = peer.pid.filter(|p| *p > 0).ok_or(AttestError::NoPid)?;
        let placement = k8s.placement(pid).map_err(|source| match source {
            k8s::K8sAttestError::Proc { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                AttestError::Exited { pid }
            }
            source => AttestError::Kubernetes { pid, source },
        })?;
        let mut att = self.unix.attest(peer, want_hash)?;
        if let Some(pc) = placement {
            let sels = k8s
                .resolve(&pc)
                .await
                .map_err(|source| AttestError::Kubernetes { pid, source })?;
            att.selectors.extend(sels.iter().cloned());
        }
        Ok(att)
    }

    /// The caller's parent process (see [`UnixAttestor::parent_of`]).
    pub fn parent_of(&self, peer: &PeerInfo) -> Result<(i32, OwnedFd), AttestError> {
        self.unix.parent_of(peer)
    }
}
