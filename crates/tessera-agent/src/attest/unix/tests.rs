use super::*;
use crate::attest::PeerConn;

#[test]
fn ppid_is_read_after_the_last_parenthesis() {
    assert_eq!(parse_ppid("123 (bash) S 77 123 123 0"), Some(77));
    assert_eq!(parse_ppid("123 (a) b) (c) R 9 1"), Some(9));
    assert_eq!(parse_ppid("garbage"), None);
}

#[tokio::test]
async fn parent_of_this_process_is_our_parent() {
    let (a, _b) = tokio::net::UnixStream::pair().unwrap();
    let conn = PeerConn::new(a).unwrap();
    let (ppid, _fd) = UnixAttestor::default().parent_of(conn.info()).unwrap();
    assert_eq!(ppid as u32, std::os::unix::process::parent_id());
}

#[test]
fn groups_line_is_parsed() {
    let status = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 27 1000 \nVmPeak:\t1 kB\n";
    assert_eq!(supplementary_gids(status), vec![4, 27, 1000]);
    assert!(supplementary_gids("Name:\tx\n").is_empty());
}

#[tokio::test]
async fn attests_this_process_with_its_own_exe_hash() {
    let (a, _b) = tokio::net::UnixStream::pair().unwrap();
    let conn = PeerConn::new(a).unwrap();
    let att = Arc::new(UnixAttestor::default())
        .attest(conn.info(), Needs::ALL)
        .await
        .unwrap();
    let lean = Arc::new(UnixAttestor::default())
        .attest(conn.info(), Needs::default())
        .await
        .unwrap();
    let kinds = |a: &Attestation| {
        a.selectors
            .iter()
            .map(|s| s.as_str().rsplit_once(':').unwrap().0.to_owned())
            .collect::<BTreeSet<_>>()
    };
    // Without entries that use them, no hash and no NSS lookups; uid, gid and path
    // are always there.
    for always in ["unix:uid", "unix:gid", "unix:path"] {
        assert!(kinds(&lean).contains(always), "{always}");
    }
    for costly in [
        "unix:sha256",
        "unix:user",
        "unix:group",
        "unix:supplementary_gid",
        "unix:supplementary_group",
    ] {
        assert!(!kinds(&lean).contains(costly), "{costly}");
    }
    assert!(kinds(&att).contains("unix:sha256"));
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    if !supplementary_gids(&own).is_empty() {
        assert!(kinds(&att).contains("unix:supplementary_gid"));
    }
    if nix::unistd::User::from_uid(conn.info().uid.into()).is_ok_and(|u| u.is_some()) {
        assert!(kinds(&att).contains("unix:user"), "{:?}", kinds(&att));
    }
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let want = format!("unix:sha256:{}", hex::encode(Sha256::digest(&exe)));
    assert!(att.satisfies([want.as_str()]), "{:?}", att.selectors);
    let uid = format!("unix:uid:{}", nix::unistd::geteuid());
    assert!(att.satisfies([uid.as_str(), want.as_str()]));
    assert!(!att.satisfies([uid.as_str(), "unix:uid:4242424"]));
    assert!(
        !att.satisfies(std::iter::empty::<&str>()),
        "empty entries match no one"
    );
}

/// A `sleep` started with `sh -c CMD` in new user and mount namespaces, once
/// `/proc/<pid>/exe` reads `exe`; `None` where `unshare -Urm` does not work.
fn sleep_in_own_namespaces(cmd: &str, exe: &Path) -> Option<std::process::Child> {
    let works = std::process::Command::new("unshare")
        .args(["-Urm", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        return None;
    }
    let child = std::process::Command::new("unshare")
        .args(["-Urm", "sh", "-c", cmd])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_link(format!("/proc/{}/exe", child.id()))
        .ok()
        .as_deref()
        != Some(exe)
    {
        assert!(std::time::Instant::now() < deadline, "{cmd} did not start");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Some(child)
}

async fn attest_pid(pid: i32) -> Attestation {
    let peer = PeerInfo {
        conn_id: 0,
        pid: Some(pid),
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        pidfd: Some(Arc::new(crate::attest::sys::pidfd_open(pid).unwrap())),
        pidfd_from_kernel: false,
        span: tracing::Span::none(),
    };
    Arc::new(UnixAttestor::default())
        .attest(&peer, Needs::ALL)
        .await
        .unwrap()
}

/// The path `/proc/<pid>/exe` gives is the caller's mount namespace's: in its own
/// user and mount namespaces a process can bind-mount any binary over a registered
/// path. The path is attested only if it is the same file in the agent's view.
#[tokio::test]
async fn a_path_is_attested_only_if_it_is_the_same_file_in_the_agents_view() {
    let dir = tempfile::tempdir().unwrap();
    let (registered, decoy) = (dir.path().join("registered"), dir.path().join("decoy"));
    let sleep = std::fs::canonicalize("/bin/sleep").unwrap();
    std::fs::copy(&sleep, &registered).unwrap();
    std::fs::copy(&sleep, &decoy).unwrap();
    let path = format!("unix:path:{}", registered.display());
    let Some(mut honest) =
        sleep_in_own_namespaces(&format!("exec {} 30", registered.display()), &registered)
    else {
        eprintln!("\n*** SKIPPED: `unshare -Urm true` fails here (no user namespaces) ***\n");
        return;
    };
    let att = attest_pid(honest.id() as i32).await;
    let _ = honest.kill();
    let _ = honest.wait();
    assert!(att.satisfies([path.as_str()]), "{:?}", att.selectors);

    let mut decoyed = sleep_in_own_namespaces(
        &format!(
            "mount --bind {} {r} && exec {r} 30",
            decoy.display(),
            r = registered.display()
        ),
        &registered,
    )
    .unwrap();
    let att = attest_pid(decoyed.id() as i32).await;
    let _ = decoyed.kill();
    let _ = decoyed.wait();
    assert!(!att.satisfies([path.as_str()]), "{:?}", att.selectors);
    // Its content is still attested: the hash is read through the running inode.
    assert!(
        att.selectors
            .iter()
            .any(|s| s.as_str().starts_with("unix:sha256:")),
        "{:?}",
        att.selectors
    );
}

#[tokio::test]
async fn exited_caller_is_refused() {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    let pidfd = crate::attest::sys::pidfd_open(pid).unwrap();
    child.wait().unwrap();
    let peer = PeerInfo {
        conn_id: 0,
        pid: Some(pid),
        uid: 0,
        gid: 0,
        pidfd: Some(std::sync::Arc::new(pidfd)),
        pidfd_from_kernel: false,
        span: tracing::Span::none(),
    };
    let err = Arc::new(UnixAttestor::default())
        .attest(&peer, Needs::ALL)
        .await
        .unwrap_err();
    assert!(matches!(err, AttestError::Exited { .. }), "{err}");
}

/// NSS lookups (user and group names, which may go to LDAP or sssd) and `/proc`
/// reads happen in `read`, on the blocking pool: one that never returns holds a
/// blocking thread, not the runtime. Here a `/proc/<pid>/status` that blocks (a
/// FIFO nobody writes) stands in for a stalled lookup, on a runtime with a single
/// worker thread: another caller is still attested meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn a_stalled_attestation_read_does_not_stall_other_callers() {
    let (a, _b) = tokio::net::UnixStream::pair().unwrap();
    let conn = PeerConn::new(a).unwrap();
    let pid = conn.info().pid.unwrap();
    let fake_proc = tempfile::tempdir().unwrap();
    let dir = fake_proc.path().join(pid.to_string());
    std::fs::create_dir(&dir).unwrap();
    let status = dir.join("status");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&status)
            .status()
            .unwrap()
            .success()
    );
    let stalled = Arc::new(UnixAttestor::new(fake_proc.path()));
    let peer = conn.info().clone();
    let stuck = tokio::spawn(async move { stalled.attest(&peer, Needs::ALL).await });

    let other = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        Arc::new(UnixAttestor::default()).attest(conn.info(), Needs::ALL),
    )
    .await
    .expect("another caller is attested while one read is stalled")
    .unwrap();
    assert!(other.satisfies([format!("unix:uid:{}", conn.info().uid).as_str()]));
    assert!(!stuck.is_finished());

    // Let the stalled read finish (the runtime waits for blocking work at exit):
    // a status without `Groups:` and no exe link refuses the caller.
    std::fs::write(&status, "Name:\tx\n").unwrap();
    assert!(stuck.await.unwrap().is_err());
}
