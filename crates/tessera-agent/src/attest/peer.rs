//! Connections on the agent's unix sockets, carrying who connected.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

use super::sys;
use crate::h2_authority::AuthorityRewrite;

/// The kernel's word on the process at the other end of a connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Sequence number of the connection on its socket, for logs; given at accept
    /// ([`PeerConn::in_conn`]), 0 until then.
    pub conn_id: u64,
    /// Pid at connect time (SO_PEERCRED).
    pub pid: Option<i32>,
    /// Effective uid at connect time.
    pub uid: u32,
    /// Effective gid at connect time.
    pub gid: u32,
    /// A pidfd naming exactly the connecting process (SO_PEERPIDFD), or one
    /// opened right after accept on older kernels; `pidfd_from_kernel` says which
    /// (and [`PeerConn::new`] what the second kind guarantees).
    /// Always set on accepted connections ([`PeerConn::new`] refuses a peer it
    /// cannot pin); `None` only in hand-built test peers.
    pub pidfd: Option<Arc<OwnedFd>>,
    /// Whether `pidfd` came from SO_PEERPIDFD (immune to pid reuse).
    pub pidfd_from_kernel: bool,
    /// The connection's span (its id, the peer's pid and uid): every request on the
    /// connection runs in it, so each log line about the connection carries them.
    pub span: tracing::Span,
}

/// An accepted unix connection plus its [`PeerInfo`], read through
/// [`AuthorityRewrite`] so gRPC clients that send the socket path as
/// `:authority` are served.
#[derive(Debug)]
pub struct PeerConn {
    stream: AuthorityRewrite<UnixStream>,
    info: PeerInfo,
}

impl PeerConn {
    /// Reads the peer's credentials right after accept, and pins the peer process
    /// with a pidfd.
    ///
    /// Linux 6.5 and later: the kernel hands over a pidfd it took at `connect(2)`
    /// (SO_PEERPIDFD), so attestation always describes the process that connected,
    /// or refuses once it has exited.
    ///
    /// Before 6.5 the agent opens the pidfd itself (`pidfd_open`) from the pid
    /// SO_PEERCRED recorded at connect. From then on the same holds. Guaranteed: a
    /// connecting process that has exited by then is refused (no process, or a
    /// zombie whose pidfd reports it exited), and so is one whose pid now belongs to
    /// a process running as another user or group than the one that connected.
    /// Not guaranteed: if the connecting process exited *and* its pid was taken by
    /// another process of the same effective uid and gid, all before the agent
    /// accepted, the agent attests that other process (its executable, cgroup and
    /// groups) under the connecting process's credentials. Pids are handed out in
    /// order through the whole pid space, so that takes cycling through every free
    /// pid in the gap between a connect and its accept; run Linux 6.5 or later where
    /// that matters, notably for `k8s:*` selectors without a `unix:uid` selector.
    pub fn new(stream: UnixStream) -> io::Result<PeerConn> {
        let kernel_pidfd = sys::peer_pidfd(&stream)?;
        PeerConn::pin(stream, kernel_pidfd)
    }

    /// [`PeerConn::new`] as on a kernel without SO_PEERPIDFD.
    #[cfg(test)]
    pub(crate) fn new_without_peer_pidfd(stream: UnixStream) -> io::Result<PeerConn> {
        PeerConn::pin(stream, None)
    }

    fn pin(stream: UnixStream, kernel_pidfd: Option<OwnedFd>) -> io::Result<PeerConn> {
        let cred = stream.peer_cred()?;
        let pid = cred.pid();
        // Without a pidfd, nothing tells a live caller from a reused pid, so such a
        // connection is refused rather than attested by pid alone.
        let (pidfd, from_kernel) = match kernel_pidfd {
            Some(fd) => (fd, true),
            None => match pid {
                Some(p) if p > 0 => {
                    let fd = sys::pidfd_open(p).map_err(|e| {
                        let kind = match e.raw_os_error() {
                            Some(libc::ESRCH) => io::ErrorKind::NotFound,
                            _ => e.kind(),
                        };
                        io::Error::new(
                            kind,
                            format!("cannot pin the connecting process {p} (pidfd_open: {e})"),
                        )
                    })?;
                    same_credentials(p, &fd, cred.uid(), cred.gid())?;
                    (fd, false)
                }
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the kernel gave no pid for the connecting process",
                    ));
                }
            },
        };
        let pidfd = Some(Arc::new(pidfd));
        Ok(PeerConn {
            stream: AuthorityRewrite::new(stream),
            info: PeerInfo {
                conn_id: 0,
                pid,
                uid: cred.uid(),
                gid: cred.gid(),
                pidfd,
                pidfd_from_kernel: from_kernel,
                span: tracing::Span::none(),
            },
        })
    }

    /// Names the connection: its sequence number and the span its requests run in.
    pub fn in_conn(mut self, conn_id: u64, span: tracing::Span) -> PeerConn {
        self.info.conn_id = conn_id;
        self.info.span = span;
        self
    }

    /// Who connected.
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }
}

/// Checks that the process `pidfd` names (opened from `pid` after the fact) runs
/// with the effective uid and gid SO_PEERCRED recorded at connect. A mismatch means
/// the pid was reused between connect and accept; a legitimate caller changing its
/// credentials in that instant is refused too, and may reconnect.
fn same_credentials(pid: i32, pidfd: &OwnedFd, uid: u32, gid: u32) -> io::Result<()> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let effective = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok())
    };
    let (now_uid, now_gid) = (effective("Uid:"), effective("Gid:"));
    // The status read counts only if it was the pidfd's process that answered.
    if sys::pidfd_exited(pidfd).unwrap_or(true) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("the connecting process {pid} exited before it could be pinned"),
        ));
    }
    if now_uid != Some(uid) || now_gid != Some(gid) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "pid {pid} runs as uid {now_uid:?} gid {now_gid:?}, not as the process that \
                 connected (uid {uid} gid {gid}): the pid was reused before accept"
            ),
        ));
    }
    Ok(())
}

impl PeerInfo {
    /// Whether the connecting process has exited (its pid may now be someone else's).
    pub fn has_exited(&self) -> bool {
        match &self.pidfd {
            Some(fd) => sys::pidfd_exited(fd).unwrap_or(true),
            None => false,
        }
    }
}

impl Connected for PeerConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};

    use super::*;

    /// Where [`connect_twice_and_exit`] connects.
    const CONNECT_TO: &str = "TESSERA_TEST_PEER_CONNECT_TO";

    /// Not a test: a process that connects twice to [`CONNECT_TO`] and exits (this
    /// binary run with `--exact … --ignored` and [`CONNECT_TO`] set).
    #[test]
    #[ignore = "helper process entry point for the pid-reuse tests"]
    fn connect_twice_and_exit() {
        if let Some(path) = std::env::var_os(CONNECT_TO) {
            let a = std::os::unix::net::UnixStream::connect(&path).unwrap();
            let b = std::os::unix::net::UnixStream::connect(&path).unwrap();
            drop((a, b));
            std::process::exit(0);
        }
    }

    fn connect_twice_and_exit_process(path: &std::path::Path) -> i32 {
        let status = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "attest::peer::tests::connect_twice_and_exit",
                "--ignored",
                "--nocapture",
            ])
            .env(CONNECT_TO, path)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = status.id() as i32;
        let out = status.wait_with_output().unwrap();
        assert!(out.status.success());
        pid
    }

    /// Starts `sleep` as nobody, with exactly `pid` (the kernel hands out the pid
    /// after `ns_last_pid`; another fork on the machine may win it, so retry).
    /// `None` where `ns_last_pid` cannot be written (not root in the pid namespace).
    fn impostor_with_pid(pid: i32) -> Option<Child> {
        for _ in 0..200 {
            if std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).is_err() {
                return None;
            }
            let mut child = Command::new("sleep")
                .arg("30")
                .uid(65534)
                .gid(65534)
                .spawn()
                .unwrap();
            if child.id() as i32 == pid {
                return Some(child);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("pid {pid} was taken by other processes 200 times in a row");
    }

    async fn accept(listener: &std::os::unix::net::UnixListener) -> UnixStream {
        let (s, _) = listener.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        UnixStream::from_std(s).unwrap()
    }

    /// Kernels before 6.5 (no SO_PEERPIDFD): the agent opens the pidfd from the pid
    /// SO_PEERCRED recorded at connect. Here the connecting process (root) exits
    /// before the agent accepts, and its pid is given to a process running as
    /// nobody, which is what `pidfd_open` then pins. The credentials do not match the
    /// connection's, so it is refused; with SO_PEERPIDFD the kernel's pidfd names
    /// the exited connector and it is refused as well.
    #[tokio::test]
    async fn without_peer_pidfd_a_pid_reused_by_another_user_before_accept_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "SKIPPED (needs root to pick a pid and switch users): pid reuse before accept"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let pid = connect_twice_and_exit_process(&path);
        let Some(mut impostor) = impostor_with_pid(pid) else {
            eprintln!("SKIPPED (cannot write ns_last_pid): pid reuse before accept");
            return;
        };
        let first = accept(&listener).await;
        assert_eq!(first.peer_cred().unwrap().pid(), Some(pid));
        assert_eq!(first.peer_cred().unwrap().uid(), 0);
        let pinned = PeerConn::new_without_peer_pidfd(first);
        let _ = impostor.kill();
        let _ = impostor.wait();
        let err = pinned
            .map(|c| format!("pinned pid {:?} as the connecting process", c.info().pid))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        assert!(err.to_string().contains("reused"), "{err}");

        let second = accept(&listener).await;
        if sys::peer_pidfd(&second).is_ok_and(|fd| fd.is_none()) {
            return; // A kernel without SO_PEERPIDFD: nothing more to compare.
        }
        // Refused at accept (6.5-6.15), or pinned to the exited connector (later
        // kernels hand out pidfds of reaped processes): never to the impostor.
        match PeerConn::new(second) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}"),
            Ok(c) => assert!(c.info().has_exited(), "SO_PEERPIDFD named a live process"),
        }
    }

    /// Kernels before 6.5: a connecting process that exited before accept, whether
    /// reaped (its pid names nothing) or not (a zombie), is refused.
    #[tokio::test]
    async fn without_peer_pidfd_a_connector_gone_before_accept_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // Reaped: nothing has the pid.
        connect_twice_and_exit_process(&path);
        let err = PeerConn::new_without_peer_pidfd(accept(&listener).await).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        // A zombie: the pid is still its, but it has exited.
        let mut zombie = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "attest::peer::tests::connect_twice_and_exit",
                "--ignored",
            ])
            .env(CONNECT_TO, &path)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let zpid = zombie.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !std::fs::read_to_string(format!("/proc/{zpid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        }) {
            assert!(std::time::Instant::now() < deadline, "helper did not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = accept(&listener).await; // the first process's second connection
        let conn = accept(&listener).await;
        assert_eq!(conn.peer_cred().unwrap().pid(), Some(zpid));
        let err = PeerConn::new_without_peer_pidfd(conn).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        zombie.wait().unwrap();
    }

    /// Kernels before 6.5: a live caller is pinned and attested as itself.
    #[tokio::test]
    async fn without_peer_pidfd_a_live_caller_is_pinned() {
        let (a, _b) = UnixStream::pair().unwrap();
        let conn = PeerConn::new_without_peer_pidfd(a).unwrap();
        assert!(!conn.info().pidfd_from_kernel);
        assert_eq!(conn.info().pid, Some(std::process::id() as i32));
        assert!(!conn.info().has_exited());
        let att = std::sync::Arc::new(crate::attest::UnixAttestor::default())
            .attest(conn.info(), crate::attest::Needs::default())
            .await
            .unwrap();
        let own = std::fs::canonicalize("/proc/self/exe").unwrap();
        assert!(att.satisfies([format!("unix:path:{}", own.display()).as_str()]));
    }
}
