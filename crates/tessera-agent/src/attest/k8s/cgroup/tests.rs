use super::*;

const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
const CID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";

type Parsed = Result<Option<PodContainer>, CgroupError>;

fn unanchored(path: &str) -> Parsed {
    Err(CgroupError::Unanchored { path: path.into() })
}

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
            "agent in a cgroup namespace, caller in the agent's QoS class (starts at the pod slice)",
            format!("0::/../../kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope\n"),
            ok(),
        ),
        (
            "agent in a cgroup namespace, caller a Guaranteed pod (starts at the pod slice)",
            format!("0::/../../../kubepods-pod{u}.slice/cri-containerd-{CID}.scope\n"),
            ok(),
        ),
        (
            "agent in a cgroup namespace, cgroupfs driver, starting at the QoS level",
            format!("0::/../../besteffort/pod{UID}/{CID}\n"),
            ok(),
        ),
        (
            "agent in a cgroup namespace, cgroupfs driver, starting at the pod level",
            format!("0::/../../pod{UID}/{CID}\n"),
            ok(),
        ),
        (
            "kind node, agent in a cgroup namespace",
            format!(
                "0::/../../../kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{CID}.scope\n"
            ),
            ok(),
        ),
        (
            "a process in a sub-cgroup of its own container",
            format!("0::/kubepods/burstable/pod{UID}/{CID}/init.scope\n"),
            ok(),
        ),
        // ---- negatives ----
        (
            "kind node on cgroup v1 without a cgroup namespace (kubepods nested under docker/<id>)",
            format!("4:memory:/docker/4f1e3c0a/kubepods/besteffort/pod{UID}/{CID}\n"),
            unanchored(&format!(
                "/docker/4f1e3c0a/kubepods/besteffort/pod{UID}/{CID}"
            )),
        ),
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
            "malformed pod uid under the kubelet root",
            format!("0::/kubepods/besteffort/pod{}/{CID}\n", &UID[..35]),
            unanchored(&format!("/kubepods/besteffort/pod{}/{CID}", &UID[..35])),
        ),
        (
            "pod-looking segment outside any kubepods hierarchy",
            format!("0::/system.slice/pod{UID}/{CID}\n"),
            unanchored(&format!("/system.slice/pod{UID}/{CID}")),
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

/// An unprivileged user may create cgroups in its systemd-delegated subtree,
/// named as it likes, and move its own processes there; a pod's UID and container
/// id are readable by anyone who can read a process of that pod. None of these
/// shapes may give the victim pod's identity.
#[test]
fn cgroup_paths_imitating_a_pod_are_refused() {
    let u = UID.replace('-', "_");
    let delegated = "/user.slice/user-1000.slice/user@1000.service";
    let cases: Vec<(&str, String)> = vec![
        (
            "v2, cgroupfs layout inside a delegated subtree",
            format!("0::{delegated}/x/kubepods/besteffort/pod{UID}/{CID}\n"),
        ),
        (
            "v2, systemd layout inside a delegated subtree",
            format!(
                "0::{delegated}/app.slice/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{CID}.scope\n"
            ),
        ),
        (
            "v2, read by an agent in a cgroup namespace",
            format!("0::/../../../..{delegated}/kubepods/pod{UID}/{CID}\n"),
        ),
        (
            "v2, delegated subtree with a relative-looking name",
            format!(
                "0::/../../..{delegated}/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope\n"
            ),
        ),
        (
            "v1, only the name=systemd hierarchy (delegated) imitates the pod",
            format!(
                "4:memory:/user.slice/user-1000.slice\n\
                 1:name=systemd:{delegated}/kubepods/burstable/pod{UID}/{CID}\n\
                 0::{delegated}\n"
            ),
        ),
        (
            "hybrid, only the unified hierarchy (delegated) imitates the pod",
            format!(
                "4:memory:/user.slice/user-1000.slice\n\
                 1:name=systemd:/user.slice/user-1000.slice/session-2.scope\n\
                 0::{delegated}/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{CID}.scope\n"
            ),
        ),
        (
            "nested below a container that is not a pod",
            format!("0::/system.slice/docker-abc.scope/kubepods/besteffort/pod{UID}/{CID}\n"),
        ),
        (
            "an extra level between the QoS class and the pod",
            format!("0::/kubepods/besteffort/extra/pod{UID}/{CID}\n"),
        ),
        (
            "a pod slice that does not extend its parent's name",
            format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope\n"
            ),
        ),
        (
            "dot-dot inside the path (the kernel writes it only as a prefix)",
            format!("0::/kubepods/../kubepods/pod{UID}/{CID}\n"),
        ),
    ];
    for (name, contents) in cases {
        let got = parse(&contents);
        assert!(
            matches!(got, Err(CgroupError::Unanchored { .. })),
            "{name}: {got:?}\n{contents}"
        );
    }
}

// === on disk ===

fn mkdirs(root: &Path, rel: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let mut dir = root.to_owned();
    for seg in rel.split('/').filter(|s| !s.is_empty()) {
        dir.push(seg);
        if !dir.exists() {
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    dir
}

fn v2_root() -> (tempfile::TempDir, CgroupView) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    let view = CgroupView {
        root: dir.path().to_owned(),
        owner: nix::unistd::geteuid().as_raw(),
    };
    (dir, view)
}

fn placed(contents: &str) -> Placement {
    parse_placement(contents).unwrap().unwrap()
}

#[test]
fn the_kubelets_directories_on_disk_pass() {
    let (_d, view) = v2_root();
    let path = format!("kubepods/besteffort/pod{UID}/{CID}");
    mkdirs(&view.root, &path, 0o755);
    verify(&view, &placed(&format!("0::/{path}\n"))).unwrap();
    // A process below its container's cgroup: the same check.
    mkdirs(&view.root, &format!("{path}/sub"), 0o755);
    verify(&view, &placed(&format!("0::/{path}/sub\n"))).unwrap();
}

#[test]
fn a_pod_directory_others_may_write_to_is_refused() {
    let (_d, view) = v2_root();
    mkdirs(&view.root, "kubepods/besteffort", 0o755);
    mkdirs(
        &view.root,
        &format!("kubepods/besteffort/pod{UID}/{CID}"),
        0o775,
    );
    let err = verify(
        &view,
        &placed(&format!("0::/kubepods/besteffort/pod{UID}/{CID}\n")),
    )
    .unwrap_err();
    assert!(
        matches!(&err, CgroupError::NotKubelets { dir, .. } if dir.ends_with(format!("pod{UID}"))),
        "{err}"
    );
}

#[test]
fn a_kubelet_root_owned_by_another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED (needs root to chown): a_kubelet_root_owned_by_another_user_is_refused");
        return;
    }
    let (_d, view) = v2_root();
    let view = CgroupView { owner: 0, ..view };
    let container = mkdirs(&view.root, &format!("kubepods/pod{UID}/{CID}"), 0o755);
    // A delegated subtree: systemd hands the directory itself to the user.
    let kubepods = view.root.join("kubepods");
    std::os::unix::fs::chown(&kubepods, Some(1000), Some(1000)).unwrap();
    let err = verify(&view, &placed(&format!("0::/kubepods/pod{UID}/{CID}\n"))).unwrap_err();
    assert!(
        matches!(&err, CgroupError::NotKubelets { dir, reason } if *dir == kubepods && reason.contains("uid 1000")),
        "{err}"
    );
    // The container's own directory may be handed to a user (user-namespaced pods).
    std::os::unix::fs::chown(&kubepods, Some(0), Some(0)).unwrap();
    std::os::unix::fs::chown(&container, Some(100_000), Some(100_000)).unwrap();
    verify(&view, &placed(&format!("0::/kubepods/pod{UID}/{CID}\n"))).unwrap();
}

#[test]
fn a_missing_or_linked_cgroup_directory_is_refused() {
    let (_d, view) = v2_root();
    let line = format!("0::/kubepods/pod{UID}/{CID}\n");
    mkdirs(&view.root, &format!("kubepods/pod{UID}"), 0o755);
    let err = verify(&view, &placed(&line)).unwrap_err();
    assert!(matches!(err, CgroupError::NotKubelets { .. }), "{err}");
    // A link to a real pod's directory is not that directory.
    let elsewhere = mkdirs(&view.root, &format!("real/pod{UID}/{CID}"), 0o755);
    std::fs::remove_dir_all(view.root.join("kubepods")).unwrap();
    mkdirs(&view.root, "kubepods", 0o755);
    std::os::unix::fs::symlink(
        elsewhere.parent().unwrap(),
        view.root.join(format!("kubepods/pod{UID}")),
    )
    .unwrap();
    let err = verify(&view, &placed(&line)).unwrap_err();
    assert!(
        matches!(&err, CgroupError::NotKubelets { reason, .. } if reason == "not a directory"),
        "{err}"
    );
}

#[test]
fn v1_and_hybrid_hierarchies_are_found_by_controller() {
    let (_d, view) = v2_root();
    std::fs::remove_file(view.root.join("cgroup.controllers")).unwrap();
    mkdirs(&view.root, "unified", 0o755);
    std::fs::write(view.root.join("unified/cgroup.controllers"), "").unwrap();
    let path = format!("kubepods/burstable/pod{UID}/{CID}");
    for hierarchy in ["cpu,cpuacct", "systemd", "unified"] {
        mkdirs(&view.root, &format!("{hierarchy}/{path}"), 0o755);
    }
    let file =
        format!("10:cpu,cpuacct:/{path}\n1:name=systemd:/{path}\n0::/{path}\n11:hugetlb:/{path}\n");
    // hugetlb is not mounted here: its line cannot be checked, the others are.
    verify(&view, &placed(&file)).unwrap();
    std::fs::set_permissions(
        view.root.join("systemd/kubepods"),
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o777),
    )
    .unwrap();
    assert!(matches!(
        verify(&view, &placed(&file)),
        Err(CgroupError::NotKubelets { .. })
    ));
}

#[test]
fn a_placement_no_mounted_hierarchy_shows_is_refused_unless_relative() {
    let dir = tempfile::tempdir().unwrap();
    let view = CgroupView {
        root: dir.path().to_owned(),
        owner: nix::unistd::geteuid().as_raw(),
    };
    let err = verify(&view, &placed(&format!("0::/kubepods/pod{UID}/{CID}\n"))).unwrap_err();
    assert!(matches!(err, CgroupError::NotVisible { .. }), "{err}");
    // Relative to the agent's cgroup namespace: nothing to look up, the
    // anchoring in the parser is the check.
    verify(&view, &placed(&format!("0::/../../pod{UID}/{CID}\n"))).unwrap();
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
