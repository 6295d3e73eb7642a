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
