//! Attestation against callers that change under the agent: the process that
//! connected exits, its executable is replaced on disk, or it execs another binary,
//! while someone else keeps using its connection.
//!
//! The agent takes the caller's credentials and a pidfd when it accepts a
//! connection, and attests the caller through `/proc/<pid>` on every request. To
//! control exactly when the connecting process goes away, these tests split the
//! roles across real processes (re-executions of this test binary, see
//! [`helper_process`]): a *connector* connects to the workload socket and hands the
//! connected socket to a *relay* child by inheritance, then waits, exits or execs;
//! the relay pumps bytes between that socket and a unix socket the test's gRPC
//! client connects to. The agent only ever sees the connector as the peer.

#[path = "support/serving.rs"]
mod serving;
use serving::still_serves;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tessera_e2e::{TRUST_DOMAIN, TestAgent};
use tessera_proto::tessera::v1::CreateEntryRequest;
use tessera_proto::workload::X509svidRequest;
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tonic::transport::Channel;

const ROLE: &str = "TESSERA_E2E_ATTEST_ROLE";
const WORKLOAD: &str = "TESSERA_E2E_ATTEST_WORKLOAD";
const RELAY: &str = "TESSERA_E2E_ATTEST_RELAY";
const FD: &str = "TESSERA_E2E_ATTEST_FD";
/// What the connector does once its socket is handed off: `wait` (until stdin
/// closes), `exit`, or `exec` (the program and arguments after this variable's `exec:`
/// prefix, separated by spaces).
const THEN: &str = "TESSERA_E2E_ATTEST_THEN";
/// Helpers never outlive a test that forgot them by more than this.
const HELPER_LIFETIME: Duration = Duration::from_secs(60);

/// Not a test: the entry point of this file's helper processes (this binary run with
/// `--exact helper_process --ignored` and [`ROLE`] set). Without [`ROLE`] it does nothing.
#[test]
#[ignore = "helper process entry point for the tests in this file"]
fn helper_process() {
    match std::env::var(ROLE).as_deref() {
        Ok("connector") => connector(),
        Ok("relay") => relay(),
        _ => {}
    }
}

fn env_path(key: &str) -> PathBuf {
    std::env::var_os(key)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{key} not set"))
}

/// Connects to the workload socket, hands the socket to a relay child, tells the test
/// (`handed off <relay pid>` on stdout), then does what [`THEN`] says.
fn connector() {
    let relay_path = env_path(RELAY);
    let sock = std::os::unix::net::UnixStream::connect(env_path(WORKLOAD)).unwrap();
    // Inherited across exec by the relay only: cleared here, set again below.
    set_cloexec(&sock, false);
    let relay = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_process", "--ignored", "--nocapture"])
        .env(ROLE, "relay")
        .env(FD, sock.as_raw_fd().to_string())
        .env(RELAY, &relay_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    set_cloexec(&sock, true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !relay_path.exists() {
        assert!(Instant::now() < deadline, "relay did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    // From here on only the relay holds the connection.
    drop(sock);
    println!("handed off {}", relay.id());
    std::io::stdout().flush().unwrap();
    let then = std::env::var(THEN).unwrap_or_default();
    if let Some(cmd) = then.strip_prefix("exec:") {
        let mut words = cmd.split(' ');
        let program = words.next().unwrap();
        let err = std::os::unix::process::CommandExt::exec(
            std::process::Command::new(program).args(words),
        );
        panic!("exec {cmd}: {err}");
    }
    if then == "wait" {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    }
    std::process::exit(0);
}

fn set_cloexec(sock: &impl std::os::fd::AsFd, on: bool) {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(sock, FcntlArg::F_SETFD(flags)).unwrap();
}

/// Serves one connection on [`RELAY`], pumping bytes both ways between it and the
/// inherited socket [`FD`].
fn relay() {
    std::thread::spawn(|| {
        std::thread::sleep(HELPER_LIFETIME);
        std::process::exit(1);
    });
    let upstream: RawFd = std::env::var(FD).unwrap().parse().unwrap();
    let listener = std::os::unix::net::UnixListener::bind(env_path(RELAY)).unwrap();
    let (mut down, _) = listener.accept().unwrap();
    let mut down_w = down.try_clone().unwrap();
    // `nix::sys::socket::{send, recv}` work on a raw descriptor without taking
    // ownership, which this crate's `forbid(unsafe_code)` requires.
    let to_agent = std::thread::spawn(move || {
        use nix::sys::socket::{MsgFlags, Shutdown, send, shutdown};
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match down.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut sent = 0;
            while sent < n {
                match send(upstream, &buf[sent..n], MsgFlags::MSG_NOSIGNAL) {
                    Ok(k) => sent += k,
                    Err(_) => return,
                }
            }
        }
        let _ = shutdown(upstream, Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match nix::sys::socket::recv(upstream, &mut buf, nix::sys::socket::MsgFlags::empty()) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if down_w.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = down_w.shutdown(std::net::Shutdown::Write);
    let _ = to_agent.join();
    std::process::exit(0);
}

/// A connector process (running `exe`) whose workload connection the test uses
/// through its relay.
struct Handoff {
    connector: Child,
    stdin: Option<ChildStdin>,
    relay_pid: i32,
    /// The relay serves exactly one connection: this one.
    channel: Channel,
}

impl Handoff {
    /// Starts `exe` (this test binary or a copy) as a connector that then does `then`.
    async fn start(agent: &TestAgent, exe: &Path, tag: &str, then: &str) -> Handoff {
        let relay = agent.dir.path().join(format!("relay-{tag}.sock"));
        let mut connector = Command::new(exe)
            .args(["--exact", "helper_process", "--ignored", "--nocapture"])
            .env(ROLE, "connector")
            .env(WORKLOAD, &agent.workload)
            .env(RELAY, &relay)
            .env(THEN, then)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = connector.stdin.take();
        let mut lines = BufReader::new(connector.stdout.take().unwrap()).lines();
        let relay_pid = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(pid) = line.strip_prefix("handed off ") {
                    return pid.trim().parse::<i32>().unwrap();
                }
            }
            panic!("connector exited without handing off");
        })
        .await
        .expect("connector hands off within 20 s");
        let channel = TestAgent::channel(&relay).await.unwrap();
        Handoff {
            connector,
            stdin,
            relay_pid,
            channel,
        }
    }

    /// A Workload API client over the connector's connection.
    fn client(&self) -> SpiffeWorkloadApiClient<Channel> {
        SpiffeWorkloadApiClient::new(self.channel.clone())
    }

    /// Lets a `wait` connector exit, and reaps it.
    async fn exit_connector(&mut self) {
        drop(self.stdin.take());
        self.reap_connector().await;
    }

    async fn reap_connector(&mut self) {
        tokio::time::timeout(Duration::from_secs(10), self.connector.wait())
            .await
            .expect("connector exits")
            .unwrap();
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.relay_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The SPIFFE IDs a `FetchX509SVID` answers with, or the status it fails with.
async fn fetch_ids(
    client: &mut SpiffeWorkloadApiClient<Channel>,
) -> Result<Vec<String>, tonic::Status> {
    let mut stream = fetch_stream(client).await?;
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("first FetchX509SVID message within 10 s")?
        .expect("stream yields a message");
    Ok(ids(&first))
}

async fn fetch_stream(
    client: &mut SpiffeWorkloadApiClient<Channel>,
) -> Result<tonic::Streaming<tessera_proto::workload::X509svidResponse>, tonic::Status> {
    let mut req = tonic::Request::new(X509svidRequest {});
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    Ok(client.fetch_x509svid(req).await?.into_inner())
}

fn ids(msg: &tessera_proto::workload::X509svidResponse) -> Vec<String> {
    let mut ids: Vec<String> = msg.svids.iter().map(|s| s.spiffe_id.clone()).collect();
    ids.sort();
    ids
}

fn client_id(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/client/{name}")
}

fn assert_no_identity(result: Result<Vec<String>, tonic::Status>, what: &str) {
    match result {
        Err(status) => {
            assert_eq!(
                status.code(),
                tonic::Code::PermissionDenied,
                "{what}: {status:?}"
            );
            assert_eq!(status.message(), "no identity issued", "{what}");
        }
        Ok(ids) => panic!("{what}: the agent issued {ids:?}"),
    }
}

async fn create_entry(agent: &TestAgent, client: &str, selectors: Vec<String>) {
    agent
        .admin_client()
        .await
        .unwrap()
        .create_entry(CreateEntryRequest {
            client: client.into(),
            selectors,
            svid_ttl_secs: 0,
            server: String::new(),
        })
        .await
        .unwrap();
}

fn uid_selector() -> String {
    format!("unix:uid:{}", nix::unistd::geteuid())
}

fn sha256_hex(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

// What the pidfd guard covers: the agent holds a pidfd naming exactly the process that
// connected (SO_PEERPIDFD, taken by the kernel at connect; pidfd_open at accept on
// kernels before 6.5), reads /proc/<pid>, then checks that pidfd's process has not
// exited. A pid cannot be reused while its process lives (even as a zombie), so a
// passing check means the /proc reads described the connector; once the connector has
// exited, every request on its connection is refused, whether or not its pid now names
// another (perhaps registered) process. Forcing real pid reuse in a test would mean
// cycling through the pid space; refusing the exited connector is the observable half,
// and the one that must hold for the guard to hold.
#[tokio::test]
async fn a_connection_whose_connecting_process_exited_gets_no_identity() {
    let mut agent = TestAgent::start("").await.unwrap();
    // The connector is this test binary, registered by uid and exact path: while it
    // lives, its connection is served.
    agent.register_self("code-reviewer").await.unwrap();
    let exe = std::env::current_exe().unwrap();

    let mut alive = Handoff::start(&agent, &exe, "alive", "wait").await;
    let mut client = alive.client();
    assert_eq!(
        fetch_ids(&mut client).await.unwrap(),
        [client_id("code-reviewer")],
        "control: the relay carries a registered, live connector's connection"
    );
    // The connector exits; its connection (held by the relay) stays open. The next
    // request on the very same HTTP/2 connection is refused.
    alive.exit_connector().await;
    assert_no_identity(
        fetch_ids(&mut client).await,
        "request on the connection of an exited connector",
    );

    // The connector exits before the first request is even sent.
    let mut gone = Handoff::start(&agent, &exe, "gone", "exit").await;
    gone.reap_connector().await;
    let mut client = gone.client();
    assert_no_identity(
        fetch_ids(&mut client).await,
        "first request after the connector exited",
    );
    // The Tasks API, on the same connection, attests the same way.
    let err = tessera_proto::tessera::v1::tasks_client::TasksClient::new(gone.channel.clone())
        .begin_task(tessera_proto::tessera::v1::BeginTaskRequest {
            purpose: "pid reuse".into(),
            subject: "alice@acme.corp".into(),
            server: "github".into(),
            scopes: vec!["github/tool/list_pulls".into()],
            lifetime_secs: 0,
            client: String::new(),
            bind_to_parent: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    assert!(
        agent.log_text().contains("exited during attestation"),
        "the agent logs why:\n{}",
        agent.log_text()
    );
    still_serves(&mut agent).await;
}

/// Copies this test binary to `path`, executable.
fn copy_exe(path: &Path, extra: &[u8]) {
    let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    bytes.extend_from_slice(extra);
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(
        path,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
}

/// Waits until the open stream's next message, then returns its ids.
async fn next_ids(
    stream: &mut tonic::Streaming<tessera_proto::workload::X509svidResponse>,
) -> Result<Vec<String>, tonic::Status> {
    let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the open stream reacts within 10 s")?
        .expect("stream still open");
    Ok(ids(&msg))
}

// `unix:path` names a file, `unix:sha256` names content. A process started from a
// registered path keeps running the old inode after the file at that path is
// replaced; /proc/<pid>/exe then reads "<path> (deleted)", so it no longer is that path,
// while it still runs exactly the content whose hash was registered, and not the new
// content now at the path.
#[tokio::test]
async fn a_running_binary_replaced_on_disk_loses_its_path_identity() {
    let mut agent = TestAgent::start("").await.unwrap();
    agent.register_self("test-process").await.unwrap();
    let path = agent.dir.path().join("runtime");
    copy_exe(&path, b"");
    let old_hash = sha256_hex(&path);
    let replacement = agent.dir.path().join("runtime.new");
    copy_exe(&replacement, b"version 2");
    let new_hash = sha256_hex(&replacement);
    assert_ne!(old_hash, new_hash);
    let uid = uid_selector();
    let by_path = format!("unix:path:{}", path.display());
    create_entry(&agent, "by-path", vec![uid.clone(), by_path.clone()]).await;
    create_entry(
        &agent,
        "by-path-and-old-hash",
        vec![
            uid.clone(),
            by_path.clone(),
            format!("unix:sha256:{old_hash}"),
        ],
    )
    .await;
    create_entry(
        &agent,
        "by-old-hash",
        vec![uid.clone(), format!("unix:sha256:{old_hash}")],
    )
    .await;
    create_entry(
        &agent,
        "by-new-hash",
        vec![uid.clone(), format!("unix:sha256:{new_hash}")],
    )
    .await;

    let old = Handoff::start(&agent, &path, "old", "wait").await;
    let mut client = old.client();
    assert_eq!(
        fetch_ids(&mut client).await.unwrap(),
        [
            client_id("by-old-hash"),
            client_id("by-path"),
            client_id("by-path-and-old-hash"),
        ],
        "control: before the replacement"
    );
    let mut stream = fetch_stream(&mut client).await.unwrap();
    next_ids(&mut stream).await.unwrap();

    // The way installers update a binary: write a new file, rename it over the old one.
    std::fs::rename(&replacement, &path).unwrap();
    let exe_link =
        std::fs::read_link(format!("/proc/{}/exe", old.connector.id().unwrap())).unwrap();
    assert_eq!(
        exe_link,
        PathBuf::from(format!("{} (deleted)", path.display()))
    );
    let after = [client_id("by-old-hash")];
    assert_eq!(
        fetch_ids(&mut client).await.unwrap(),
        after,
        "a new request on the old process's connection"
    );
    // The open stream is re-attested on its next change (here: an unrelated entry).
    create_entry(&agent, "unrelated", vec!["unix:uid:4242424".into()]).await;
    assert_eq!(
        next_ids(&mut stream).await.unwrap(),
        after,
        "the open stream drops the path identities"
    );

    // A process started from the new file is what the path means now.
    let new = Handoff::start(&agent, &path, "new", "wait").await;
    assert_eq!(
        fetch_ids(&mut new.client()).await.unwrap(),
        [client_id("by-new-hash"), client_id("by-path")],
    );
    drop((old, new));
    still_serves(&mut agent).await;
}

// KNOWN GAP (security), kept failing on purpose and ignored so the suite stays green;
// run it with `cargo test -p tessera-e2e --test attestation -- --ignored`.
//
// The agent attests the process SO_PEERCRED named at connect, reading /proc/<pid> at
// request time, and the pidfd check only asks whether that process *exited*. A process
// that connects, passes its socket on (fork, or a child inheriting it) and then execs a
// registered binary keeps its pid, and its pidfd stays live: the agent attests the
// registered binary and hands its identity to whoever holds the socket. Here the
// connector is this (unregistered) test binary, the relay keeps its socket, and the
// connector execs `sleep`, registered by path. SPIRE's unix attestor shares this
// limitation. One fix: before answering, require that the attested process still
// holds its end of the connection (the peer socket's inode, from sock_diag
// UNIX_DIAG_PEER, among the links in /proc/<pid>/fd); a process that exec'd with
// CLOEXEC, or gave its socket away and closed it, no longer does.
#[tokio::test]
#[ignore = "KNOWN GAP: a connector that execs a registered binary lends its identity to the socket's new holder"]
async fn a_connection_handed_off_before_exec_into_a_registered_binary_gets_no_identity() {
    let agent = TestAgent::start("").await.unwrap();
    let sleep = std::fs::canonicalize("/usr/bin/sleep").unwrap();
    create_entry(
        &agent,
        "sleeper",
        vec![uid_selector(), format!("unix:path:{}", sleep.display())],
    )
    .await;
    let exe = std::env::current_exe().unwrap();
    let h = Handoff::start(
        &agent,
        &exe,
        "exec",
        &format!("exec:{} 30", sleep.display()),
    )
    .await;
    // The connector is now `sleep`, alive, with the same pid; wait for the exec.
    let pid = h.connector.id().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .as_deref()
        != Some(sleep.as_path())
    {
        assert!(Instant::now() < deadline, "connector did not exec sleep");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_no_identity(
        fetch_ids(&mut h.client()).await,
        "the socket's holder is the unregistered relay, not sleep",
    );
}

// === unix:path across mount namespaces ===

/// Whether `unshare -Urm` (util-linux) works here: a user namespace in which this
/// process may create a mount namespace and bind-mount.
fn unshare_works() -> bool {
    std::process::Command::new("unshare")
        .args(["-Urm", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd` with `sh -c` inside new user and mount namespaces (`unshare -Urm`), as
/// any unprivileged user may.
fn in_own_namespaces(cmd: &str) -> std::process::Output {
    std::process::Command::new("unshare")
        .args(["-Urm", "sh", "-c", cmd])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

// `/proc/<pid>/exe` names the executable as the caller's mount namespace sees it. Any
// user can make its own user and mount namespaces, bind-mount any binary over a
// registered path there and run it: the link then reads the registered path. The
// agent matches `unix:path` by file identity in its own view of that path instead.
#[tokio::test]
async fn a_binary_bind_mounted_over_a_registered_path_is_not_that_path() {
    if !unshare_works() {
        eprintln!(
            "\n\n*** SKIPPED a_binary_bind_mounted_over_a_registered_path_is_not_that_path: \
             `unshare -Urm true` fails here (no util-linux, or user namespaces are off); \
             unix::tests cover the file-identity match ***\n"
        );
        return;
    }
    let mut agent = TestAgent::start("").await.unwrap();
    agent.register_self("test-process").await.unwrap();
    let cli = std::fs::canonicalize(tessera_e2e::bin("tessera")).unwrap();
    // The registered program, and the attacker's own copy of a client (same
    // content, so only the path tells them apart).
    let registered = agent.dir.path().join("registered-runtime");
    let decoy = agent.dir.path().join("decoy");
    for p in [&registered, &decoy] {
        std::fs::copy(&cli, p).unwrap();
    }
    create_entry(
        &agent,
        "runtime",
        vec![
            uid_selector(),
            format!("unix:path:{}", registered.display()),
        ],
    )
    .await;
    let fetch = format!("--socket {} svid fetch", agent.endpoint());

    // Control: the registered file, run from another mount namespace, is still
    // that file in the agent's view.
    let out = in_own_namespaces(&format!("exec {} {fetch}", registered.display()));
    assert!(
        out.status.success(),
        "the registered binary from another mount namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&client_id("runtime")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = in_own_namespaces(&format!(
        "mount --bind {decoy} {registered} && exec {registered} {fetch}",
        decoy = decoy.display(),
        registered = registered.display(),
    ));
    assert!(
        !out.status.success(),
        "a decoy bind-mounted over the registered path got {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no identity issued"),
        "refused as matching no entry: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    still_serves(&mut agent).await;
}

// === huge executables ===

/// Copies the `tessera` CLI to `path` and makes the file `len` bytes long: the ELF
/// loader ignores the trailing (sparse, so free) bytes, attestation hashes them all.
fn huge_copy_of_the_cli(path: &Path, len: u64) {
    std::fs::copy(tessera_e2e::bin("tessera"), path).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Callers running `exe`, one after another on each of `n` tasks, until `stop`:
/// each a `svid fetch`, so each is attested. With `touch`, the file's times change
/// before each run, so its hash is never cached. Returns how many runs completed.
fn hostile_callers(
    agent: &TestAgent,
    exes: Vec<PathBuf>,
    touch: bool,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<usize>> {
    exes.into_iter()
        .map(|exe| {
            let endpoint = agent.endpoint();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let mut runs = 0;
                while !*stop.borrow_and_update() {
                    if touch {
                        std::fs::File::open(&exe)
                            .unwrap()
                            .set_modified(std::time::SystemTime::now())
                            .unwrap();
                    }
                    let run = Command::new(&exe)
                        .args(["--socket", &endpoint, "svid", "fetch"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .kill_on_drop(true)
                        .status();
                    tokio::select! {
                        _ = run => runs += 1,
                        _ = stop.changed() => break,
                    }
                }
                runs
            })
        })
        .collect()
}

/// What a legitimate caller saw while hostile callers ran.
#[derive(Debug, Default)]
struct Served {
    begin: Vec<Duration>,
    end: Vec<Duration>,
    feed: Vec<Duration>,
    health: Vec<Duration>,
}

impl Served {
    fn worst(v: &[Duration]) -> Duration {
        v.iter().copied().max().unwrap_or_default()
    }

    fn median(v: &[Duration]) -> Duration {
        let mut v = v.to_vec();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }

    fn report(&self, phase: &str) {
        for (what, v) in [
            ("BeginTask", &self.begin),
            ("EndTask", &self.end),
            ("EndTask -> feed", &self.feed),
            ("/healthz", &self.health),
        ] {
            eprintln!(
                "{phase}: {what}: n={} median={:?} max={:?}",
                v.len(),
                Self::median(v),
                Self::worst(v)
            );
        }
    }

    /// Each at most `bound`: a stalled agent fails here, not by hanging the test.
    fn assert_within(&self, bound: Duration, phase: &str) {
        assert!(self.begin.len() >= 3, "{phase}: too few rounds: {self:?}");
        for (what, v) in [
            ("BeginTask", &self.begin),
            ("EndTask", &self.end),
            ("the feed", &self.feed),
            ("/healthz", &self.health),
        ] {
            assert!(
                Self::worst(v) <= bound,
                "{phase}: {what} took {:?} (bound {bound:?})",
                Self::worst(v)
            );
        }
    }
}

/// The status line of `GET /healthz` (HTTP/1.1 by hand: the check is the latency).
async fn healthz(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    answer.lines().next().unwrap_or_default().to_owned()
}

/// `fut`'s output, or a failure naming `what` after `bound`.
async fn within<F: std::future::Future>(bound: Duration, what: &str, fut: F) -> F::Output {
    tokio::time::timeout(bound, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {bound:?}"))
}

/// For `rounds`, a registered caller begins and ends a task, waits for its
/// revocation on the feed, and asks for /healthz; every step has `bound` (else the
/// test fails with the steps seen so far).
async fn serve_rounds(agent: &TestAgent, rounds: usize, bound: Duration) -> Served {
    use tessera_proto::tessera::v1::revocations_client::RevocationsClient;
    use tessera_proto::tessera::v1::tasks_client::TasksClient;
    use tessera_proto::tessera::v1::{BeginTaskRequest, EndTaskRequest, WatchRevocationsRequest};
    let mut served = Served::default();
    let mut tasks = TasksClient::new(TestAgent::channel(&agent.workload).await.unwrap());
    let mut feed = within(
        bound,
        "WatchRevocations",
        RevocationsClient::new(TestAgent::channel(&agent.workload).await.unwrap())
            .watch(WatchRevocationsRequest {}),
    )
    .await
    .unwrap()
    .into_inner();
    for _ in 0..rounds {
        let t = Instant::now();
        let task = within(
            bound,
            "BeginTask",
            tasks.begin_task(BeginTaskRequest {
                purpose: "work while others hash".into(),
                subject: "alice@acme.corp".into(),
                server: "github".into(),
                scopes: vec!["github/tool/list_pulls".into()],
                lifetime_secs: 0,
                client: String::new(),
                bind_to_parent: false,
            }),
        )
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
        served.begin.push(t.elapsed());

        let t = Instant::now();
        within(
            bound,
            "EndTask",
            tasks.end_task(EndTaskRequest {
                task_id: task.id.clone(),
            }),
        )
        .await
        .unwrap();
        let ended = Instant::now();
        served.end.push(ended - t);
        loop {
            let set = within(
                bound.saturating_sub(ended.elapsed()),
                "the revocation feed",
                feed.message(),
            )
            .await
            .unwrap()
            .expect("feed open");
            if set.revoked.iter().any(|r| r.task_id == task.id) {
                break;
            }
        }
        served.feed.push(ended.elapsed());

        let t = Instant::now();
        let status = within(bound, "/healthz", healthz(agent.http)).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        served.health.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served
}

// With any `unix:sha256` entry, every caller's executable is hashed. A caller chooses
// its executable, and a sparse file costs nothing however large: hashing used to run
// on the runtime's workers, so a few callers running a 100 GB copy of a binary
// stopped BeginTask, EndTask, the revocation feed and health alike. Now executables
// over `exe_hash_max_bytes` are refused unhashed, and the others are hashed off the
// workers, a few at a time: callers with executables just under the limit, changed
// before every call so nothing is cached, only slow down each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_executable_does_not_stall_the_agent() {
    const LIMIT: u64 = 192 * 1024 * 1024;
    const BOUND: Duration = Duration::from_secs(2);
    const HOSTILE: usize = 4;
    let mut agent = TestAgent::start(&format!("exe_hash_max_bytes = {LIMIT}"))
        .await
        .unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    agent
        .grant(
            "code-reviewer",
            "alice@acme.corp",
            "github",
            &["github/tool/list_pulls"],
        )
        .await
        .unwrap();
    // One entry hashing executables makes attestation hash every caller's.
    let cli = std::fs::canonicalize(tessera_e2e::bin("tessera")).unwrap();
    create_entry(
        &agent,
        "pinned-cli",
        vec![uid_selector(), format!("unix:sha256:{}", sha256_hex(&cli))],
    )
    .await;
    // Warm-up: this process's own (cached) hash, and the baseline.
    let baseline = serve_rounds(&agent, 3, BOUND).await;
    baseline.report("no hostile callers");

    // 100 GB executables: refused without reading them.
    let huge: Vec<PathBuf> = (0..HOSTILE)
        .map(|i| {
            let p = agent.dir.path().join(format!("huge-{i}"));
            huge_copy_of_the_cli(&p, 100 << 30);
            p
        })
        .collect();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let callers = hostile_callers(&agent, huge, false, stopped);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let served = serve_rounds(&agent, 10, BOUND).await;
    stop.send(true).unwrap();
    let mut runs = 0;
    for c in callers {
        runs += c.await.unwrap();
    }
    served.report("4 callers running 100 GB executables");
    eprintln!("100 GB callers refused: {runs}");
    served.assert_within(BOUND, "100 GB executables");
    assert!(runs >= HOSTILE, "the hostile callers ran");
    assert!(
        agent.log_text().contains("over exe_hash_max_bytes"),
        "the log names the knob:\n{}",
        agent.log_text()
    );

    // Just under the limit, and never cached: hashed every time, a few at a time.
    let under: Vec<PathBuf> = (0..HOSTILE)
        .map(|i| {
            let p = agent.dir.path().join(format!("under-{i}"));
            huge_copy_of_the_cli(&p, LIMIT - 4096);
            p
        })
        .collect();
    let pid = agent.pid().unwrap();
    let (cpu0, t0) = (tessera_e2e::proc_cpu_time(pid).unwrap(), Instant::now());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let callers = hostile_callers(&agent, under, true, stopped);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let served = serve_rounds(&agent, 20, BOUND).await;
    stop.send(true).unwrap();
    let mut hashes = 0;
    for c in callers {
        hashes += c.await.unwrap();
    }
    let (cpu, wall) = (
        tessera_e2e::proc_cpu_time(pid).unwrap() - cpu0,
        t0.elapsed(),
    );
    served.report("4 callers running executables just under the limit");
    eprintln!(
        "{hashes} hashes of {} MiB; agent CPU {cpu:?} over {wall:?} ({:.2} cores)",
        (LIMIT - 4096) >> 20,
        cpu.as_secs_f64() / wall.as_secs_f64()
    );
    served.assert_within(BOUND, "executables just under the limit");
    assert!(hashes >= 1, "the hostile callers were hashed");
    still_serves(&mut agent).await;
}
