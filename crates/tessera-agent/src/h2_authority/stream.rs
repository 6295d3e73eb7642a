//! The layer as a stream: [`AuthorityRewrite`] reads a connection through a
//! [`Rewriter`] and passes writes through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Rewriter;

/// A connection read through a [`Rewriter`]; writes pass through.
#[derive(Debug)]
pub struct AuthorityRewrite<S> {
    inner: S,
    rewriter: Rewriter,
    /// Read from the socket, not yet through the rewriter.
    raw: BytesMut,
    /// Through the rewriter, not yet read by h2.
    ready: BytesMut,
    eof: bool,
}

impl<S> AuthorityRewrite<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        AuthorityRewrite {
            inner,
            rewriter: Rewriter::default(),
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            eof: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The rewriter's state, for tests and metrics.
    pub fn rewriter(&self) -> &Rewriter {
        &self.rewriter
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRewrite<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.is_passthrough() && this.raw.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.eof {
                // A truncated frame: h2 reads it as it was, then the end.
                this.ready = this.raw.split();
                if this.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if !this.raw.is_empty() {
                if let Err(e) = this.rewriter.feed(&mut this.raw, &mut this.ready) {
                    tracing::warn!(error = %e, "closing connection: its HTTP/2 header block cannot be repaired");
                    return Poll::Ready(Err(e.into()));
                }
                if !this.ready.is_empty() || this.rewriter.is_passthrough() {
                    continue;
                }
            }
            this.raw.reserve(16 * 1024);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut this.raw
            ))?;
            if n == 0 {
                this.eof = true;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRewrite<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
