//! Which pod and container a process runs in, from its `/proc/<pid>/cgroup`.
//!
//! The kubelet names a pod's cgroup after the pod's UID and the runtime names a
//! container's cgroup after the container id, so the path alone says both:
//!
//! | driver   | kubelet root      | QoS level (optional)          | pod segment                          | container segment                   |
//! |----------|-------------------|-------------------------------|--------------------------------------|-------------------------------------|
//! | cgroupfs | `kubepods`        | `besteffort`, `burstable`     | `pod<uid>`                           | `<id>` (containerd, Docker), `crio-<id>` |
//! | systemd  | `kubepods.slice`  | `kubepods-<qos>.slice`        | `kubepods[-<qos>]-pod<uid with _>.slice` | `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` |
//!
//! A kubelet run with `--cgroup-root=/kubelet` (kind) puts that root under
//! `kubelet` (`kubelet.slice/kubelet-kubepods.slice` with systemd).
//!
//! Only root can create a cgroup where the kubelet does, but anyone can create one
//! *named* like the kubelet's where they are allowed to create cgroups at all:
//! systemd delegates `user@<uid>.service` to every logged-in user, so
//! `/user.slice/…/user@1000.service/x/kubepods/pod<uid>/<id>` is an unprivileged
//! user's to make, with any pod's UID and container id (both readable in that pod's
//! `/proc/<pid>/cgroup`). So the layout is anchored, never searched for: the kubelet
//! root must be the path's first segment, and the pod and container segments must
//! sit exactly where the kubelet puts them. A path that names a pod anywhere else
//! is refused outright ([`CgroupError::Unanchored`]), not treated as a host process.
//!
//! cgroup v1 has one line per hierarchy (`N:controllers:/path`), v2 one line
//! (`0::/path`). With cgroup namespaces (the default for containers on v2) the path
//! is relative to the *reader's* namespace root and starts with `/..` once per level
//! up to the common ancestor of the reader's root and the caller's cgroup. The
//! kernel computes those `..`, so what follows them is the caller's branch below
//! that ancestor, and the layout must then start right there, at the kubelet root
//! or one of the levels below it: when the agent runs in a pod, that ancestor is one
//! of the kubelet's own cgroups (or `/`), where only root creates cgroups.
//!
//! Where the agent can see the caller's cgroup in its own view of the cgroup
//! filesystem (absolute paths: the agent is in the host's cgroup namespace), it
//! also checks that every directory from the hierarchy's root down to the pod's is
//! owned by root and writable by no one else ([`verify`]), so a cgroup subtree
//! delegated to a user can never stand in for the kubelet's, whatever its names.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A process's place in Kubernetes: the pod it belongs to and its container.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodContainer {
    /// The pod's UID, lower-case, with dashes (as in `metadata.uid`).
    pub pod_uid: String,
    /// The container id, 64 lower-case hex digits (as in `containerStatuses[].containerID`
    /// without its `containerd://` / `cri-o://` / `docker://` scheme).
    pub container_id: String,
}

/// Why a cgroup file places a process in no container the agent will vouch for.
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
    /// A path names a pod or the kubelet's hierarchy, but does not follow the
    /// kubelet's layout from its root: it was made to look like one (e.g. inside a
    /// user's delegated cgroup subtree).
    #[error("cgroup path {path:?} imitates the kubelet's but is not where the kubelet puts pods")]
    Unanchored {
        /// The path as the cgroup file gave it.
        path: String,
    },
    /// In the agent's view of the cgroup filesystem, a directory on the way to the
    /// pod's cgroup is not the kubelet's (not root's, writable by others, or absent).
    #[error("cgroup directory {dir} is not the kubelet's: {reason}")]
    NotKubelets {
        /// The directory, under `kubernetes.cgroup_root`.
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// None of the hierarchies that place the process in a pod is mounted under
    /// the agent's cgroup root, so the placement cannot be checked.
    #[error(
        "none of the caller's cgroup hierarchies is visible under {root} (kubernetes.cgroup_root)"
    )]
    NotVisible {
        /// The agent's cgroup root.
        root: PathBuf,
    },
}

/// Where a cgroup file places a process, with the lines that say so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Placement {
    /// The pod and container.
    pub pod: PodContainer,
    /// Each hierarchy line that named them.
    lines: Vec<Anchored>,
}

/// One hierarchy line whose path follows the kubelet's layout.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Anchored {
    /// The line's controllers field: empty on the v2 line, e.g. `memory` or
    /// `name=systemd` on v1 lines.
    controllers: String,
    /// The path's segments from the hierarchy root through the container's
    /// directory; `None` when the path was relative to the agent's cgroup
    /// namespace (it starts with `..`), so the agent cannot locate it on disk.
    absolute: Option<Vec<String>>,
    /// Index in `absolute` of the pod's directory.
    pod_at: usize,
}

/// Parses the contents of `/proc/<pid>/cgroup`.
///
/// `Ok(None)`: the process is not in a Kubernetes pod (a host process, a system
/// service, a plain Docker container). `Err`: it is in a pod but which container
/// cannot be told, or its path only imitates a pod's; the caller must be denied
/// rather than guessed at.
pub fn parse(contents: &str) -> Result<Option<PodContainer>, CgroupError> {
    Ok(parse_placement(contents)?.map(|p| p.pod))
}

/// [`parse`], keeping what [`verify`] checks on disk.
pub(super) fn parse_placement(contents: &str) -> Result<Option<Placement>, CgroupError> {
    let mut found: Option<Placement> = None;
    let mut pod_only: Option<String> = None;
    for line in contents.lines() {
        // hierarchy-id:controllers:path. The path may itself contain ':'.
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        match parse_path(path) {
            PathPlace::Outside => {}
            PathPlace::Unanchored => {
                return Err(CgroupError::Unanchored {
                    path: path.chars().take(512).collect(),
                });
            }
            PathPlace::PodOnly(uid) => {
                if pod_only.as_ref().is_some_and(|p| *p != uid) {
                    return Err(CgroupError::Conflicting);
                }
                pod_only = Some(uid);
            }
            PathPlace::Container {
                pod,
                absolute,
                pod_at,
            } => {
                let line = Anchored {
                    controllers: controllers.to_owned(),
                    absolute,
                    pod_at,
                };
                match &mut found {
                    Some(f) if f.pod != pod => return Err(CgroupError::Conflicting),
                    Some(f) => f.lines.push(line),
                    None => {
                        found = Some(Placement {
                            pod,
                            lines: vec![line],
                        })
                    }
                }
            }
        }
    }
    match (found, pod_only) {
        (Some(p), Some(uid)) if p.pod.pod_uid != uid => Err(CgroupError::Conflicting),
        (Some(p), _) => Ok(Some(p)),
        (None, Some(pod_uid)) => Err(CgroupError::NoContainer { pod_uid }),
        (None, None) => Ok(None),
    }
}

enum PathPlace {
    Outside,
    Unanchored,
    PodOnly(String),
    Container {
        pod: PodContainer,
        absolute: Option<Vec<String>>,
        pod_at: usize,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Driver {
    Cgroupfs,
    Systemd,
}

fn parse_path(path: &str) -> PathPlace {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let ups = segments.iter().take_while(|s| **s == "..").count();
    let rest = &segments[ups..];
    // The kernel writes `..` only as a prefix; anything else is not its path.
    let place = if rest.contains(&"..") {
        None
    } else {
        anchored(rest, ups > 0)
    };
    match place {
        Some(Ok((pod, pod_at))) => PathPlace::Container {
            pod,
            absolute: (ups == 0).then(|| {
                rest[..=pod_at + 1]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect()
            }),
            pod_at,
        },
        Some(Err(pod_uid)) => PathPlace::PodOnly(pod_uid),
        None if rest.iter().any(|s| imitates_kubelet(s)) => PathPlace::Unanchored,
        None => PathPlace::Outside,
    }
}

/// Matches the kubelet's layout from the first segment of `rest`: `Ok` with the pod,
/// its container and the pod segment's index; `Err(pod uid)` for a pod's cgroup
/// without a container's; `None` if `rest` does not follow the layout.
///
/// `relative`: the path came after `..` segments, so it may start below the
/// kubelet root (the caller shares that much of its path with the agent).
fn anchored(rest: &[&str], relative: bool) -> Option<Result<(PodContainer, usize), String>> {
    // The kubelet root, and the stem systemd slice names below it extend.
    let (driver, stem, mut at) = match rest {
        ["kubelet.slice", "kubelet-kubepods.slice", ..] => {
            (Driver::Systemd, "kubelet-kubepods".to_owned(), 2)
        }
        ["kubelet", "kubepods", ..] => (Driver::Cgroupfs, String::new(), 2),
        ["kubepods.slice", ..] => (Driver::Systemd, "kubepods".to_owned(), 1),
        ["kubepods", ..] => (Driver::Cgroupfs, String::new(), 1),
        ["kubelet-kubepods.slice", ..] if relative => {
            (Driver::Systemd, "kubelet-kubepods".to_owned(), 1)
        }
        [first, ..] if relative => {
            // Starts below the root: at the QoS level or the pod level.
            if matches!(*first, "besteffort" | "burstable") || first.starts_with("pod") {
                (Driver::Cgroupfs, String::new(), 0)
            } else {
                let stem = first.strip_suffix(".slice")?;
                let root = ["kubelet-kubepods", "kubepods"]
                    .into_iter()
                    .find(|r| stem.starts_with(&format!("{r}-")))?;
                (Driver::Systemd, root.to_owned(), 0)
            }
        }
        _ => return None,
    };
    let mut stem = stem;
    // The QoS level, absent for Guaranteed pods.
    if let Some(seg) = rest.get(at) {
        match driver {
            Driver::Cgroupfs if matches!(*seg, "besteffort" | "burstable") => at += 1,
            Driver::Systemd => {
                for qos in ["besteffort", "burstable"] {
                    if *seg == format!("{stem}-{qos}.slice") {
                        stem = format!("{stem}-{qos}");
                        at += 1;
                        break;
                    }
                }
            }
            Driver::Cgroupfs => {}
        }
    }
    // The pod level: exactly here, or the path is not the kubelet's.
    let seg = rest.get(at)?;
    let pod_uid = match driver {
        Driver::Cgroupfs => seg.strip_prefix("pod").filter(|u| is_uuid(u))?.to_owned(),
        Driver::Systemd => {
            let body = seg.strip_suffix(".slice")?;
            let uid = match body.strip_prefix(&format!("{stem}-pod")) {
                Some(uid) => uid,
                // A relative path starting at the pod level: its parent is not
                // in the path, so the stem is whichever QoS class it names.
                None if at == 0 => ["-besteffort-pod", "-burstable-pod"]
                    .into_iter()
                    .find_map(|q| body.strip_prefix(&format!("{stem}{q}")))?,
                None => return None,
            };
            let uid = uid.replace('_', "-");
            is_uuid(&uid).then_some(uid)?
        }
    }
    .to_ascii_lowercase();
    Some(match rest.get(at + 1).and_then(|s| container_id_of(s)) {
        Some(container_id) => Ok((
            PodContainer {
                pod_uid,
                container_id,
            },
            at,
        )),
        None => Err(pod_uid),
    })
}

/// Whether a segment looks like part of the kubelet's hierarchy: a path holding
/// one anywhere but where the kubelet puts it is an imitation.
fn imitates_kubelet(segment: &str) -> bool {
    segment.contains("kubepods") || pod_uid_of(segment).is_some()
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

// === the placement on disk ===

/// The agent's view of the cgroup filesystem, and who must own the kubelet's part of it.
#[derive(Clone, Debug)]
pub struct CgroupView {
    /// Where the hierarchies are mounted: `/sys/fs/cgroup`, or the host's mounted
    /// into the agent's container (`kubernetes.cgroup_root`).
    pub root: PathBuf,
    /// The only owner the kubelet's directories may have: root (0). Tests use their own uid.
    pub owner: u32,
}

/// Checks `placement` against the cgroup filesystem under `view.root`: for each
/// hierarchy line with an absolute path whose hierarchy is mounted there, every
/// directory from that hierarchy's root down to the pod's must be a directory owned
/// by `view.owner` that no one else may write to, and the container's directory
/// must exist in it. A directory only its owner may write to holds only
/// directories its owner made, so the pod's and the container's cgroups were made
/// by root: by the kubelet and the runtime, not by a user imitating them.
///
/// Lines relative to the agent's cgroup namespace cannot be located and are left to
/// the anchoring in [`parse_placement`]; if every line is absolute and none of their
/// hierarchies is mounted under the root, the placement is refused.
pub(super) fn verify(view: &CgroupView, placement: &Placement) -> Result<(), CgroupError> {
    let mut checked = 0;
    let mut relative = 0;
    for line in &placement.lines {
        let Some(segments) = &line.absolute else {
            relative += 1;
            continue;
        };
        let Some(mut dir) = hierarchy_dir(&view.root, &line.controllers) else {
            continue;
        };
        check_dir(&dir, view.owner, true)?;
        for (i, seg) in segments.iter().enumerate() {
            dir.push(seg);
            check_dir(&dir, view.owner, i <= line.pod_at)?;
        }
        checked += 1;
    }
    if checked == 0 && relative == 0 {
        return Err(CgroupError::NotVisible {
            root: view.root.clone(),
        });
    }
    Ok(())
}

/// Where the hierarchy of a `/proc/<pid>/cgroup` line is mounted under `root`.
fn hierarchy_dir(root: &Path, controllers: &str) -> Option<PathBuf> {
    if controllers.is_empty() {
        // The v2 line: `root` itself on a v2-only host, `root/unified` on a hybrid one.
        return [root.to_owned(), root.join("unified")]
            .into_iter()
            .find(|d| d.join("cgroup.controllers").is_file());
    }
    let name = controllers.strip_prefix("name=").unwrap_or(controllers);
    // `cpu,cpuacct` is mounted under that name, with `cpu` and `cpuacct` links to it.
    std::iter::once(name)
        .chain(name.split(','))
        .filter(|n| !n.is_empty() && !n.contains('/') && *n != "." && *n != "..")
        .map(|n| root.join(n))
        .find(|d| d.is_dir())
}

fn check_dir(dir: &Path, owner: u32, kubelets: bool) -> Result<(), CgroupError> {
    let bad = |reason: String| CgroupError::NotKubelets {
        dir: dir.to_owned(),
        reason,
    };
    // lstat: a link is not a cgroup, wherever it points.
    let meta = std::fs::symlink_metadata(dir).map_err(|e| bad(e.to_string()))?;
    if !meta.is_dir() {
        return Err(bad("not a directory".into()));
    }
    if !kubelets {
        // The container's own directory: runtimes may hand it to a user-namespaced
        // container's root; that it exists inside root's pod directory is the point.
        return Ok(());
    }
    if meta.uid() != owner {
        return Err(bad(format!(
            "owned by uid {}, not {owner}: a delegated subtree",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(bad(format!(
            "mode {:o}: others may create cgroups in it",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
