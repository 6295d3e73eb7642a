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
use std::sync::Arc;

/// Every attestor the agent runs, composed: a caller's selectors are its unix
/// selectors plus, when the Kubernetes attestor is enabled and the caller runs
/// in a pod, its `k8s:*` selectors. A caller in a pod that cannot be resolved
/// is refused outright.
#[derive(Debug, Default)]
pub struct Attestor {
    unix: Arc<UnixAttestor>,
    k8s: Option<Arc<k8s::K8sAttestor>>,
}

/// The selectors attestation may skip unless some registration entry uses them: the
/// executable's hash reads the whole binary, user and group names go through NSS
/// (reading /etc/passwd and /etc/group on every call), and supplementary groups need
/// `/proc/<pid>/status` read and parsed (5–6 % of the agent's CPU under BeginTask load).
/// An entry matches only if every one of its selectors is attested, so leaving out a
/// kind no entry names cannot change which entries match. The uid, gid and path are
/// always attested.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// `unix:sha256`.
    pub exe_hash: bool,
    /// `unix:user`, `unix:group`, `unix:supplementary_group`.
    pub names: bool,
    /// `unix:supplementary_gid`, `unix:supplementary_group`.
    pub groups: bool,
}

impl Needs {
    /// Everything.
    pub const ALL: Needs = Needs {
        exe_hash: true,
        names: true,
        groups: true,
    };

    /// What entries with these selectors (canonical text, e.g. `unix:user:alice`) need.
    pub fn of<'a>(selectors: impl IntoIterator<Item = &'a str>) -> Needs {
        let mut needs = Needs::default();
        for s in selectors {
            needs.exe_hash |= s.starts_with("unix:sha256:");
            needs.names |= s.starts_with("unix:user:")
                || s.starts_with("unix:group:")
                || s.starts_with("unix:supplementary_group:");
            needs.groups |= s.starts_with("unix:supplementary_gid:")
                || s.starts_with("unix:supplementary_group:");
        }
        needs
    }
}

impl Attestor {
    /// Composes `unix` with an optional Kubernetes attestor.
    pub fn new(unix: UnixAttestor, k8s: Option<k8s::K8sAttestor>) -> Self {
        Attestor {
            unix: Arc::new(unix),
            k8s: k8s.map(Arc::new),
        }
    }

    /// Attests the peer of a connection (see [`UnixAttestor::attest`]).
    ///
    /// Every `/proc` read and `lstat` runs on the blocking pool, and hashing there
    /// too behind its own limit, so no caller can hold a runtime worker. The cgroup
    /// is read before the unix attestor's reads, whose final pidfd check then covers
    /// it too; the kubelet lookup afterwards is keyed by what was read, not by the pid.
    pub async fn attest(&self, peer: &PeerInfo, needs: Needs) -> Result<Attestation, AttestError> {
        let Some(k8s) = &self.k8s else {
            return self.unix.attest(peer, needs).await;
        };
        let pid = peer.pid.filter(|p| *p > 0).ok_or(AttestError::NoPid)?;
        let (unix, on_k8s, on_peer) = (Arc::clone(&self.unix), Arc::clone(k8s), peer.clone());
        let (placement, read) = unix::off_workers(move || {
            let placement = on_k8s.placement(pid).map_err(|source| match source {
                k8s::K8sAttestError::Proc { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    AttestError::Exited { pid }
                }
                source => AttestError::Kubernetes { pid, source },
            })?;
            Ok((placement, unix.read(&on_peer, needs)?))
        })
        .await?;
        let mut att = self.unix.complete(read).await?;
        if let Some(pc) = placement {
            let sels = k8s
                .resolve(&pc)
                .await
                .map_err(|source| AttestError::Kubernetes { pid, source })?;
            att.selectors.extend(sels.iter().cloned());
        }
        Ok(att)
    }

    /// The caller's parent process (see [`UnixAttestor::parent_of`]); its `/proc`
    /// reads run on the blocking pool.
    pub async fn parent_of(&self, peer: &PeerInfo) -> Result<(i32, OwnedFd), AttestError> {
        let (unix, peer) = (Arc::clone(&self.unix), peer.clone());
        unix::off_workers(move || unix.parent_of(&peer)).await
    }
}

#[cfg(test)]
mod needs_tests {
    use super::Needs;

    #[test]
    fn needs_follow_the_selectors_entries_use() {
        assert_eq!(
            Needs::of(["unix:uid:1000", "unix:path:/bin/x"]),
            Needs::default()
        );
        assert_eq!(
            Needs::of(["unix:uid:1000", "unix:sha256:ab"]),
            Needs {
                exe_hash: true,
                ..Needs::default()
            }
        );
        for named in [
            "unix:user:alice",
            "unix:group:dev",
            "unix:supplementary_group:docker",
        ] {
            assert!(Needs::of([named]).names, "{named}");
        }
        assert!(!Needs::of(["unix:user:alice", "unix:gid:4"]).groups);
        for grouped in [
            "unix:supplementary_gid:27",
            "unix:supplementary_group:docker",
        ] {
            assert!(Needs::of([grouped]).groups, "{grouped}");
        }
        // A path that merely contains the word does not count.
        assert_eq!(Needs::of(["unix:path:/opt/unix:user:x"]), Needs::default());
    }
}
