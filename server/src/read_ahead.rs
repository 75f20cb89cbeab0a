//! Reads a client's socket in large pieces while keeping nothing for an
//! idle client.
//!
//! The WebSocket library reads at most `read_buffer_size` bytes per call
//! into a buffer it keeps for the connection's whole life. Large, that
//! buffer is most of what an idle client costs; small (128 bytes), a burst
//! of frames costs a `recv` per 128 bytes. Between the two sits this
//! adapter: it reads up to [`AHEAD`] bytes at once into a buffer on the
//! stack, hands the library what it asked for, and keeps the rest on the
//! heap only until the library has taken it. So a burst costs a `recv`
//! per 4 KiB, and a client with nothing to read holds no buffer here.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one `recv` takes.
const AHEAD: usize = 4096;

pub struct ReadAhead<S> {
    inner: S,
    /// Bytes read and not yet handed on; empty (no allocation) otherwise.
    rest: Vec<u8>,
    /// How much of `rest` was handed on.
    at: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            rest: Vec::new(),
            at: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.rest.len() {
            let n = buf.remaining().min(this.rest.len() - this.at);
            buf.put_slice(&this.rest[this.at..this.at + n]);
            this.at += n;
            if this.at == this.rest.len() {
                this.rest = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= AHEAD {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let mut scratch = [MaybeUninit::<u8>::uninit(); AHEAD];
        let mut ahead = ReadBuf::uninit(&mut scratch);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut ahead))?;
        let got = ahead.filled();
        let n = buf.remaining().min(got.len());
        buf.put_slice(&got[..n]);
        if n < got.len() {
            this.rest = got[n..].to_vec();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_see_every_byte_in_order_and_nothing_is_kept_after() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&data).await.unwrap();
        drop(tx);
        let mut r = ReadAhead::new(rx);
        let mut got = Vec::new();
        let mut piece = [0u8; 100];
        loop {
            let n = r.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, data);
        assert_eq!(r.rest.capacity(), 0);
    }
}
