//! From the kubelet's pod list to selectors, indexed by (pod UID, container id).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::cgroup::PodContainer;
use crate::attest::Selector;

/// Selectors of every running container the kubelet listed.
pub(super) type PodIndex = HashMap<PodContainer, Arc<BTreeSet<Selector>>>;

/// Indexes `pods` by (pod UID, container id). A caller is matched on both, so
/// a container id from one pod can never pick up another pod's identity.
pub(super) fn index(pods: &[Pod]) -> PodIndex {
    let mut out = PodIndex::new();
    for pod in pods {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            continue;
        };
        let pod_uid = uid.to_ascii_lowercase();
        let pod_selectors = pod_selectors(pod, &pod_uid);
        let Some(status) = &pod.status else {
            continue;
        };
        let statuses = [
            &status.container_statuses,
            &status.init_container_statuses,
            &status.ephemeral_container_statuses,
        ];
        for cs in statuses.into_iter().flatten().flatten() {
            let Some(container_id) = container_id(cs) else {
                continue;
            };
            let mut sels = pod_selectors.clone();
            sels.extend(Selector::k8s("container-name", &cs.name));
            sels.extend(Selector::k8s("container-image", &cs.image));
            // The resolved digest too, so an entry can pin the exact image.
            if !cs.image_id.is_empty() && cs.image_id != cs.image {
                sels.extend(Selector::k8s("container-image", &cs.image_id));
            }
            out.insert(
                PodContainer {
                    pod_uid: pod_uid.clone(),
                    container_id,
                },
                Arc::new(sels),
            );
        }
    }
    out
}

fn pod_selectors(pod: &Pod, pod_uid: &str) -> BTreeSet<Selector> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let mut sels = BTreeSet::new();
    sels.extend(Selector::k8s("pod-uid", pod_uid));
    if let Some(ns) = &meta.namespace {
        sels.extend(Selector::k8s("ns", ns));
    }
    if let Some(name) = &meta.name {
        sels.extend(Selector::k8s("pod-name", name));
    }
    // An empty serviceAccountName means the namespace's `default` account.
    let sa = spec
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    sels.extend(Selector::k8s("sa", sa));
    if let Some(node) = spec.and_then(|s| s.node_name.as_deref()) {
        sels.extend(Selector::k8s("node-name", node));
    }
    for (k, v) in meta.labels.iter().flatten() {
        sels.extend(Selector::k8s("pod-label", format!("{k}:{v}")));
    }
    sels
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → `<id>`, lower-case.
fn container_id(cs: &ContainerStatus) -> Option<String> {
    let raw = cs.container_id.as_deref()?;
    let id = raw.split_once("://").map_or(raw, |(_, id)| id);
    (!id.is_empty()).then(|| id.to_ascii_lowercase())
}
