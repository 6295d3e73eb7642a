//! The only unsafe code in the agent: two socket options and a pidfd poll that
//! neither std, tokio nor rustix wrap. Each block states why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SO_PEERPIDFD` (Linux 6.5+), the same value on every generic-ABI architecture.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
const SO_PEERPIDFD: libc::c_int = 77;

/// A pidfd for the process that connected to `sock`, taken by the kernel at
/// connect time. Unlike a pid, it can never come to name another process.
/// `Ok(None)` when the kernel does not support it; an error when the peer is gone.
pub(crate) fn peer_pidfd(sock: &impl AsRawFd) -> io::Result<Option<OwnedFd>> {
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    ))]
    {
        let mut fd: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `sock` is an open socket for the duration of the call; `fd` and
        // `len` are valid, properly sized out-pointers for an int option.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERPIDFD,
                (&mut fd as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                // Kernels before 6.5 do not know the option.
                Some(libc::ENOPROTOOPT) => Ok(None),
                // Kernels that know it answer EINVAL (6.5-6.15) or ESRCH when the
                // peer has already been reaped: its pid may name another process by
                // now, so there is no one to attest. Never fall back to the pid here.
                Some(libc::EINVAL) | Some(libc::ESRCH) => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the connecting process is already gone (SO_PEERPIDFD: {err})"),
                )),
                _ => Err(err),
            };
        }
        if fd < 0 {
            return Ok(None);
        }
        // SAFETY: the kernel just returned a new file descriptor we now own.
        Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )))]
    {
        let _ = sock;
        Ok(None)
    }
}

/// `pidfd_open(2)`: the fallback on kernels without `SO_PEERPIDFD`.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall with integer arguments; on success it returns a
    // new descriptor that we take ownership of exactly once.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: rc is a fresh, valid descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) })
}

/// Whether the process behind `pidfd` has exited (a pidfd polls readable then).
pub(crate) fn pidfd_exited(pidfd: &OwnedFd) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd; a zero timeout never blocks.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP) != 0)
}

/// Registers a pidfd with the tokio reactor; it polls readable once the process exits.
pub(crate) fn async_pidfd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of `fd`, so the descriptor stays open
    // for exactly as long as it is registered, and AsyncFd deregisters it before
    // the OwnedFd closes it on drop.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_pidfd_names_the_connecting_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = peer_pidfd(&a).unwrap();
        if let Some(fd) = fd {
            assert!(!pidfd_exited(&fd).unwrap());
        }
    }

    #[test]
    fn exited_child_is_seen_through_its_pidfd() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let fd = pidfd_open(child.id() as i32).unwrap();
        child.wait().unwrap();
        assert!(pidfd_exited(&fd).unwrap());
    }
}
