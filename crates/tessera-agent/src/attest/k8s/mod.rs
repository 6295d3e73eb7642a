//! Kubernetes workload attestation: which pod and container a caller runs in,
//! and what the kubelet says about them, as `k8s:*` selectors.
//!
//! caller pid → `/proc/<pid>/cgroup` → (pod UID, container id) → the kubelet's
//! `/pods` → that pod and that container's status → selectors. A caller is
//! matched on pod UID *and* container id; a caller in a pod the kubelet does
//! not list (after a few brief retries: a container can start before the
//! kubelet reports it) is refused, never given some other pod's selectors.

mod cgroup;
mod kubelet;
mod pods;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

pub use cgroup::{CgroupError, CgroupView, PodContainer, parse as parse_cgroup};
pub use kubelet::{KubeletClient, KubeletError, KubeletSettings, KubeletTrust};

use super::Selector;
use crate::config::{DEFAULT_CGROUP_ROOT, IN_CLUSTER_CA, KubernetesConfig};

/// Why a caller's pod could not be attested. Every variant denies.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum K8sAttestError {
    /// `/proc/<pid>/cgroup` could not be read.
    #[error("reading /proc/{pid}/cgroup: {source}")]
    Proc {
        /// The caller's pid.
        pid: i32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The cgroup names a pod but no container of it.
    #[error("pid {pid}: {source}")]
    Cgroup {
        /// The caller's pid.
        pid: i32,
        /// Why.
        #[source]
        source: CgroupError,
    },
    /// The kubelet does not list that container in that pod, even after retrying.
    #[error("the kubelet lists no container {container_id} in pod {pod_uid}")]
    NotListed {
        /// The pod UID from the cgroup.
        pod_uid: String,
        /// The container id from the cgroup.
        container_id: String,
    },
    /// The kubelet could not be asked.
    #[error(transparent)]
    Kubelet(#[from] KubeletError),
}

/// Cache and retry timing; see the `[kubernetes]` config section.
#[derive(Clone, Copy, Debug)]
pub struct CacheTiming {
    /// A pod list younger than this answers hits without a refresh.
    pub ttl: Duration,
    /// Least time between two fetches.
    pub min_refresh_interval: Duration,
    /// Extra fetches for a container not listed yet.
    pub retry_attempts: u32,
    /// Pause between them.
    pub retry_interval: Duration,
}

/// The pod list as last fetched, indexed.
#[derive(Debug, Default)]
struct Fetched {
    index: pods::PodIndex,
    at: Option<Instant>,
    generation: u64,
}

/// The Kubernetes attestor. Shared by all connections.
#[derive(Debug)]
pub struct K8sAttestor {
    proc_root: PathBuf,
    cgroups: CgroupView,
    kubelet: KubeletClient,
    timing: CacheTiming,
    current: Mutex<Arc<Fetched>>,
    /// Held while fetching, so concurrent misses share one request; holds the
    /// time of the last fetch attempt, for rate limiting.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

impl K8sAttestor {
    /// An attestor reading `proc_root` (`/proc` with `hostPID: true`) and asking
    /// `kubelet`, checking callers' cgroups under `/sys/fs/cgroup` (see
    /// [`K8sAttestor::with_cgroup_root`]).
    pub fn new(proc_root: impl Into<PathBuf>, kubelet: KubeletClient, timing: CacheTiming) -> Self {
        K8sAttestor {
            proc_root: proc_root.into(),
            cgroups: CgroupView {
                root: DEFAULT_CGROUP_ROOT.into(),
                owner: 0,
            },
            kubelet,
            timing,
            current: Mutex::new(Arc::new(Fetched::default())),
            fetching: tokio::sync::Mutex::new(None),
        }
    }

    /// Checks callers' pod cgroups on disk under `root` (`kubernetes.cgroup_root`):
    /// where the cgroup hierarchies are mounted in the agent's view.
    pub fn with_cgroup_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.cgroups.root = root.into();
        self
    }

    /// Tests run unprivileged or cannot chown: their cgroup trees belong to them.
    #[cfg(test)]
    pub(crate) fn with_cgroup_owner(mut self, owner: u32) -> Self {
        self.cgroups.owner = owner;
        self
    }

    /// From the agent's configuration; reads the CA bundle now.
    pub fn from_config(
        proc_root: impl Into<PathBuf>,
        config: &KubernetesConfig,
    ) -> Result<Self, KubeletError> {
        let trust = if config.insecure_skip_kubelet_verify {
            KubeletTrust::DangerousAcceptAnyCertificate
        } else {
            KubeletTrust::CaBundle(
                config
                    .kubelet_ca
                    .clone()
                    .unwrap_or_else(|| IN_CLUSTER_CA.into()),
            )
        };
        let kubelet = KubeletClient::new(KubeletSettings {
            url: config.kubelet_url.clone(),
            server_name: config.kubelet_server_name.clone(),
            trust,
            token_file: config.token_file.clone(),
            timeout: config.request_timeout,
        })?;
        Ok(K8sAttestor::new(
            proc_root,
            kubelet,
            CacheTiming {
                ttl: config.pod_cache_ttl,
                min_refresh_interval: config.refresh_min_interval,
                retry_attempts: config.retry_attempts,
                retry_interval: config.retry_interval,
            },
        )
        .with_cgroup_root(&config.cgroup_root))
    }

    /// Where `pid` runs: `None` outside any pod (a host process).
    ///
    /// Blocking (a `/proc` read and a few `lstat`s under the cgroup root): call it
    /// off the async workers. The caller re-checks afterwards that `pid` still
    /// names the process it attests (pidfd), as for every other `/proc` read.
    pub fn placement(&self, pid: i32) -> Result<Option<PodContainer>, K8sAttestError> {
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        let text =
            std::fs::read_to_string(path).map_err(|source| K8sAttestError::Proc { pid, source })?;
        let cgroup_err = |source| K8sAttestError::Cgroup { pid, source };
        let Some(placement) = cgroup::parse_placement(&text).map_err(cgroup_err)? else {
            return Ok(None);
        };
        cgroup::verify(&self.cgroups, &placement).map_err(cgroup_err)?;
        Ok(Some(placement.pod))
    }

    /// The `k8s:*` selectors of the container `pc`.
    pub async fn resolve(
        &self,
        pc: &PodContainer,
    ) -> Result<Arc<BTreeSet<Selector>>, K8sAttestError> {
        let mut last_err = None;
        for attempt in 0..=self.timing.retry_attempts {
            if attempt > 0 {
                tokio::time::sleep(self.timing.retry_interval).await;
            }
            let seen = self.snapshot();
            let hit = seen.index.get(pc).cloned();
            let fresh = seen.at.is_some_and(|t| t.elapsed() < self.timing.ttl);
            if let (Some(sels), true) = (&hit, fresh) {
                return Ok(Arc::clone(sels));
            }
            match self.refresh(seen.generation).await {
                Ok(now) => {
                    if let Some(sels) = now.index.get(pc) {
                        return Ok(Arc::clone(sels));
                    }
                    // A container id never moves to another pod and is never
                    // reused, so a listed container stays resolved until the
                    // next list; but one the latest list lacks has ended, or
                    // has not been reported yet: retry, never fall back.
                    last_err = None;
                }
                Err(e) => {
                    if let Some(sels) = hit {
                        // Only labels could have changed since; keep answering
                        // from the last good list rather than failing every caller.
                        tracing::warn!(error = %e, "kubelet unreachable; answering from the last pod list");
                        return Ok(sels);
                    }
                    tracing::debug!(error = %e, attempt, "fetching pods from the kubelet failed");
                    last_err = Some(e);
                }
            }
        }
        Err(match last_err {
            Some(e) => K8sAttestError::Kubelet(e),
            None => K8sAttestError::NotListed {
                pod_uid: pc.pod_uid.clone(),
                container_id: pc.container_id.clone(),
            },
        })
    }

    /// The `k8s:*` selectors of `pid`; empty for a process in no pod.
    /// For tests and tools: the agent calls [`K8sAttestor::placement`] and
    /// [`K8sAttestor::resolve`] around its pid-reuse check.
    pub async fn selectors(&self, pid: i32) -> Result<BTreeSet<Selector>, K8sAttestError> {
        match self.placement(pid)? {
            None => Ok(BTreeSet::new()),
            Some(pc) => Ok(self.resolve(&pc).await?.as_ref().clone()),
        }
    }

    fn snapshot(&self) -> Arc<Fetched> {
        Arc::clone(&self.current.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Fetches a new list unless someone did since `seen_generation`; at most
    /// one fetch per `min_refresh_interval`, however many callers miss.
    async fn refresh(&self, seen_generation: u64) -> Result<Arc<Fetched>, KubeletError> {
        let mut last_attempt = self.fetching.lock().await;
        let current = self.snapshot();
        if current.generation != seen_generation {
            return Ok(current);
        }
        if let Some(t) = *last_attempt {
            let next = t + self.timing.min_refresh_interval;
            tokio::time::sleep_until(next).await;
        }
        *last_attempt = Some(Instant::now());
        let pods = self.kubelet.pods().await?;
        let fetched = Arc::new(Fetched {
            index: pods::index(&pods),
            at: Some(Instant::now()),
            generation: current.generation + 1,
        });
        tracing::debug!(
            pods = pods.len(),
            containers = fetched.index.len(),
            "fetched the kubelet's pod list"
        );
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&fetched);
        Ok(fetched)
    }
}

#[cfg(test)]
mod tests;
