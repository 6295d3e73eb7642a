//! Connections on the agent's unix sockets, carrying who connected.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

use super::sys;
use crate::h2_authority::AuthorityRewrite;

/// The kernel's word on the process at the other end of a connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Sequence number of the connection, for logs.
    pub conn_id: u64,
    /// Pid at connect time (SO_PEERCRED).
    pub pid: Option<i32>,
    /// Effective uid at connect time.
    pub uid: u32,
    /// Effective gid at connect time.
    pub gid: u32,
    /// A pidfd naming exactly the connecting process (SO_PEERPIDFD), or one
    /// opened right after accept on older kernels; `pidfd_from_kernel` says which.
    /// Always set on accepted connections ([`PeerConn::new`] refuses a peer it
    /// cannot pin); `None` only in hand-built test peers.
    pub pidfd: Option<Arc<OwnedFd>>,
    /// Whether `pidfd` came from SO_PEERPIDFD (immune to pid reuse).
    pub pidfd_from_kernel: bool,
}

/// An accepted unix connection plus its [`PeerInfo`], read through
/// [`AuthorityRewrite`] so gRPC clients that send the socket path as
/// `:authority` are served.
#[derive(Debug)]
pub struct PeerConn {
    stream: AuthorityRewrite<UnixStream>,
    info: PeerInfo,
}

static CONN_SEQ: AtomicU64 = AtomicU64::new(1);

impl PeerConn {
    /// Reads the peer's credentials right after accept.
    pub fn new(stream: UnixStream) -> io::Result<PeerConn> {
        let cred = stream.peer_cred()?;
        let pid = cred.pid();
        // Without a pidfd, nothing tells a live caller from a reused pid, so such a
        // connection is refused rather than attested by pid alone.
        let (pidfd, from_kernel) = match sys::peer_pidfd(&stream)? {
            Some(fd) => (fd, true),
            None => match pid {
                Some(p) if p > 0 => {
                    let fd = sys::pidfd_open(p).map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("cannot pin the connecting process {p} (pidfd_open: {e})"),
                        )
                    })?;
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
                conn_id: CONN_SEQ.fetch_add(1, Ordering::Relaxed),
                pid,
                uid: cred.uid(),
                gid: cred.gid(),
                pidfd,
                pidfd_from_kernel: from_kernel,
            },
        })
    }

    /// Who connected.
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }
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
