//! [`Tracked`]: a connection counted by a [`Drain`] until dropped.

use std::fmt;
use std::io::{self, BufRead, IoSlice, IoSliceMut, Read, Write};
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use super::{Drain, Guard};

/// A connection counted by a [`Drain`] until this wrapper is dropped (the
/// stream is closed first, then the count goes down).
///
/// It derefs to the inner stream and forwards the I/O traits the inner type
/// has: [`Read`], [`Write`] and [`BufRead`] (also through `&Tracked<S>` when
/// `&S` implements them, as `&TcpStream` does), vectored reads and writes
/// included, [`AsFd`], and, with the `tokio` feature, tokio's `AsyncRead`,
/// `AsyncWrite` (with `is_write_vectored` as the inner type says) and
/// `AsyncBufRead` for an `Unpin` inner type (wrap others in `Box::pin`).
pub struct Tracked<S> {
    // Declared first: dropped (closed) before the guard uncounts it.
    stream: S,
    guard: Guard,
}

impl<S> Tracked<S> {
    pub(crate) fn new(stream: S, guard: Guard) -> Self {
        Tracked { stream, guard }
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The inner stream, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Unwraps the stream, which stops being counted: the drain no longer
    /// waits for it.
    pub fn into_inner(self) -> S {
        let Tracked { stream, guard } = self;
        drop(guard);
        stream
    }

    /// The drain counting this connection (to check
    /// [`is_closed`](Drain::is_closed) while serving it, for instance).
    pub fn drain(&self) -> Drain {
        self.guard.drain()
    }
}

impl<S: fmt::Debug> fmt::Debug for Tracked<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Tracked").field(&self.stream).finish()
    }
}

impl<S> Deref for Tracked<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.stream
    }
}

impl<S> DerefMut for Tracked<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}

impl<S: AsFd> AsFd for Tracked<S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl<S: AsRawFd> AsRawFd for Tracked<S> {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

impl<S: Read> Read for Tracked<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        self.stream.read_vectored(bufs)
    }
    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        self.stream.read_to_end(buf)
    }
    fn read_to_string(&mut self, buf: &mut String) -> io::Result<usize> {
        self.stream.read_to_string(buf)
    }
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.stream.read_exact(buf)
    }
}

impl<S: Write> Write for Tracked<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.stream.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.stream.write_all(buf)
    }
}

impl<S: BufRead> BufRead for Tracked<S> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.stream.fill_buf()
    }
    fn consume(&mut self, amount: usize) {
        self.stream.consume(amount)
    }
}

impl<'a, S> Read for &'a Tracked<S>
where
    &'a S: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut stream: &'a S = &self.stream;
        stream.read(buf)
    }
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let mut stream: &'a S = &self.stream;
        stream.read_vectored(bufs)
    }
}

impl<'a, S> Write for &'a Tracked<S>
where
    &'a S: Write,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut stream: &'a S = &self.stream;
        stream.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut stream: &'a S = &self.stream;
        stream.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        let mut stream: &'a S = &self.stream;
        stream.flush()
    }
}

#[cfg(feature = "tokio")]
mod tokio_impls {
    use std::io::{self, IoSlice};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

    use super::Tracked;

    impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
        #[inline]
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
        #[inline]
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
        }

        #[inline]
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
        }

        #[inline]
        fn is_write_vectored(&self) -> bool {
            self.stream.is_write_vectored()
        }

        #[inline]
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().stream).poll_flush(cx)
        }

        #[inline]
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
        }
    }

    impl<S: AsyncBufRead + Unpin> AsyncBufRead for Tracked<S> {
        fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
            Pin::new(&mut self.get_mut().stream).poll_fill_buf(cx)
        }

        fn consume(self: Pin<&mut Self>, amount: usize) {
            Pin::new(&mut self.get_mut().stream).consume(amount)
        }
    }
}
