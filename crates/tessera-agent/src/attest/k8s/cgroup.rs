//! Which pod and container a process runs in, from its `/proc/<pid>/cgroup`.
//!
//! The kubelet names a pod's cgroup after the pod's UID and the runtime names a
//! container's cgroup after the container id, so the path alone says both:
//!
//! | driver   | pod segment                                   | container segment                   |
//! |----------|-----------------------------------------------|-------------------------------------|
//! | cgroupfs | `pod<uid>`                                    | `<id>` (containerd, Docker), `crio-<id>` |
//! | systemd  | `kubepods-<qos>-pod<uid with _>.slice`        | `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` |
//!
//! cgroup v1 has one line per hierarchy (`N:controllers:/path`), v2 one line
//! (`0::/path`). With cgroup namespaces (the default on v2) the path is relative
//! to the *reader's* namespace root and may start with `/../..`, so the parser
//! looks for the pod segment anywhere below a `kubepods` segment instead of
//! anchoring at the root.

/// A process's place in Kubernetes: the pod it belongs to and its container.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodContainer {
    /// The pod's UID, lower-case, with dashes (as in `metadata.uid`).
    pub pod_uid: String,
    /// The container id, 64 lower-case hex digits (as in `containerStatuses[].containerID`
    /// without its `containerd://` / `cri-o://` / `docker://` scheme).
    pub container_id: String,
}

/// Why a cgroup file names a pod but no container the agent could resolve.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CgroupError {
    /// The process sits in a pod's cgroup but not in a container's (or in a
    /// runtime helper's, like CRI-O's `conmon`): it is not a workload.
    #[error("process is in pod {pod_uid}'s cgroup but in no container of it")]
    NoContainer {
        /// The pod's UID.
        pod_uid: String,
    },
    /// Two hierarchies (cgroup v1) place the process in different containers.
    #[error("cgroup hierarchies disagree about the process's container")]
    Conflicting,
}

/// Parses the contents of `/proc/<pid>/cgroup`.
///
/// `Ok(None)`: the process is not in a Kubernetes pod (a host process, a system
/// service, a plain Docker container). `Err`: it is in a pod, but which container
/// cannot be told; the caller must be denied rather than guessed at.
pub fn parse(contents: &str) -> Result<Option<PodContainer>, CgroupError> {
    let mut found: Option<PodContainer> = None;
    let mut pod_only: Option<String> = None;
    for line in contents.lines() {
        // hierarchy-id:controllers:path. The path may itself contain ':'.
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        match parse_path(path) {
            PathPlace::Outside => {}
            PathPlace::PodOnly(uid) => {
                if pod_only.as_ref().is_some_and(|p| *p != uid) {
                    return Err(CgroupError::Conflicting);
                }
                pod_only = Some(uid);
            }
            PathPlace::Container(pc) => {
                if found.as_ref().is_some_and(|f| *f != pc) {
                    return Err(CgroupError::Conflicting);
                }
                found = Some(pc);
            }
        }
    }
    match (found, pod_only) {
        (Some(pc), Some(uid)) if pc.pod_uid != uid => Err(CgroupError::Conflicting),
        (Some(pc), _) => Ok(Some(pc)),
        (None, Some(pod_uid)) => Err(CgroupError::NoContainer { pod_uid }),
        (None, None) => Ok(None),
    }
}

enum PathPlace {
    Outside,
    PodOnly(String),
    Container(PodContainer),
}

fn parse_path(path: &str) -> PathPlace {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Only below a kubelet-managed hierarchy: `kubepods`, `kubepods.slice`,
    // `kubepods-besteffort.slice`, or kind's `kubelet-kubepods.slice`.
    let Some(anchor) = segments.iter().position(|s| s.contains("kubepods")) else {
        return PathPlace::Outside;
    };
    for (i, seg) in segments.iter().enumerate().skip(anchor) {
        let Some(pod_uid) = pod_uid_of(seg) else {
            continue;
        };
        return match segments.get(i + 1).and_then(|s| container_id_of(s)) {
            Some(container_id) => PathPlace::Container(PodContainer {
                pod_uid,
                container_id,
            }),
            None => PathPlace::PodOnly(pod_uid),
        };
    }
    PathPlace::Outside
}

/// `pod<uid>` (cgroupfs) or `…-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_of(segment: &str) -> Option<String> {
    let raw = if let Some(stem) = segment.strip_suffix(".slice") {
        let at = stem.rfind("-pod")?;
        stem[at + 4..].replace('_', "-")
    } else {
        segment.strip_prefix("pod")?.to_owned()
    };
    is_uuid(&raw).then(|| raw.to_ascii_lowercase())
}

/// `<id>`, `crio-<id>`, or `<runtime>-<id>.scope` for the runtimes Kubernetes uses.
fn container_id_of(segment: &str) -> Option<String> {
    let stem = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = ["cri-containerd-", "crio-", "docker-", "containerd-"]
        .iter()
        .find_map(|p| stem.strip_prefix(p))
        .unwrap_or(stem);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const CID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";

    type Parsed = Result<Option<PodContainer>, CgroupError>;

    fn ok() -> Parsed {
        Ok(Some(PodContainer {
            pod_uid: UID.into(),
            container_id: CID.into(),
        }))
    }

    /// Real-world `/proc/<pid>/cgroup` shapes: runtime × cgroup driver × cgroup version.
    #[test]
    fn cgroup_files_from_each_runtime_and_driver() {
        let u = UID.replace('-', "_");
        let cases: Vec<(&str, String, Parsed)> = vec![
            (
                "containerd, systemd driver, cgroup v2",
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope\n"
                ),
                ok(),
            ),
            (
                "containerd, systemd driver, cgroup v2, guaranteed QoS (no qos slice)",
                format!("0::/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{CID}.scope\n"),
                ok(),
            ),
            (
                "containerd, systemd driver, cgroup v2, read from inside another cgroup namespace",
                format!(
                    "0::/../../../kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{CID}.scope\n"
                ),
                ok(),
            ),
            (
                "containerd, cgroupfs driver, cgroup v2",
                format!("0::/kubepods/besteffort/pod{UID}/{CID}\n"),
                ok(),
            ),
            (
                "containerd, cgroupfs driver, cgroup v1 (hybrid: every hierarchy, plus the v2 line)",
                format!(
                    "12:hugetlb:/kubepods/burstable/pod{UID}/{CID}\n\
                     11:memory:/kubepods/burstable/pod{UID}/{CID}\n\
                     10:cpu,cpuacct:/kubepods/burstable/pod{UID}/{CID}\n\
                     9:pids:/kubepods/burstable/pod{UID}/{CID}\n\
                     2:rdma:/\n\
                     1:name=systemd:/kubepods/burstable/pod{UID}/{CID}\n\
                     0::/\n"
                ),
                ok(),
            ),
            (
                "containerd, systemd driver, cgroup v1",
                format!(
                    "11:pids:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope\n\
                     4:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope\n\
                     1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope\n"
                ),
                ok(),
            ),
            (
                "CRI-O, systemd driver, cgroup v2",
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-{CID}.scope\n"
                ),
                ok(),
            ),
            (
                "CRI-O, cgroupfs driver, cgroup v1",
                format!(
                    "8:memory:/kubepods/burstable/pod{UID}/crio-{CID}\n5:cpu,cpuacct:/kubepods/burstable/pod{UID}/crio-{CID}\n"
                ),
                ok(),
            ),
            (
                "Docker (dockershim / cri-dockerd), cgroupfs driver, cgroup v1",
                format!(
                    "12:memory:/kubepods/burstable/pod{UID}/{CID}\n1:name=systemd:/kubepods/burstable/pod{UID}/{CID}\n"
                ),
                ok(),
            ),
            (
                "Docker (cri-dockerd), systemd driver, cgroup v2",
                format!(
                    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/docker-{CID}.scope\n"
                ),
                ok(),
            ),
            (
                "kind node (kubelet inside a container), systemd driver, cgroup v2",
                format!(
                    "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{CID}.scope\n"
                ),
                ok(),
            ),
            (
                "kind node on cgroup v1 (nested under the node's docker cgroup)",
                format!("4:memory:/docker/4f1e3c0a/kubepods/besteffort/pod{UID}/{CID}\n"),
                ok(),
            ),
            // ---- negatives ----
            (
                "host process in a login session",
                "0::/user.slice/user-1000.slice/session-2.scope\n".into(),
                Ok(None),
            ),
            (
                "system service (the container runtime itself)",
                "0::/system.slice/containerd.service\n".into(),
                Ok(None),
            ),
            (
                "plain Docker container, not a pod",
                format!("0::/system.slice/docker-{CID}.scope\n"),
                Ok(None),
            ),
            ("empty file", String::new(), Ok(None)),
            (
                "CRI-O conmon (a runtime helper inside the pod slice)",
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-conmon-{CID}.scope\n"
                ),
                Err(CgroupError::NoContainer {
                    pod_uid: UID.into(),
                }),
            ),
            (
                "pod-level cgroup without a container",
                format!("0::/kubepods/besteffort/pod{UID}\n"),
                Err(CgroupError::NoContainer {
                    pod_uid: UID.into(),
                }),
            ),
            (
                "truncated container id",
                format!("0::/kubepods/besteffort/pod{UID}/{}\n", &CID[..63]),
                Err(CgroupError::NoContainer {
                    pod_uid: UID.into(),
                }),
            ),
            (
                "malformed pod uid is not a pod",
                format!("0::/kubepods/besteffort/pod{}/{CID}\n", &UID[..35]),
                Ok(None),
            ),
            (
                "pod-looking segment outside any kubepods hierarchy",
                format!("0::/system.slice/pod{UID}/{CID}\n"),
                Ok(None),
            ),
            (
                "v1 hierarchies naming two different containers",
                format!(
                    "11:memory:/kubepods/burstable/pod{UID}/{CID}\n\
                     10:pids:/kubepods/burstable/pod{UID}/{}\n",
                    "a".repeat(64)
                ),
                Err(CgroupError::Conflicting),
            ),
        ];
        assert!(cases.len() >= 8);
        for (name, contents, want) in cases {
            assert_eq!(parse(&contents), want, "{name}:\n{contents}");
        }
    }

    #[test]
    fn upper_case_ids_are_normalised() {
        let got = parse(&format!(
            "0::/kubepods/pod{}/{}\n",
            UID.to_uppercase(),
            CID.to_uppercase()
        ));
        assert_eq!(got, ok());
    }
}
