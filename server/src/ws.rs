//! A client's WebSocket: tungstenite's protocol state driven straight from
//! the connection task's poll.
//!
//! tungstenite speaks the protocol over blocking-style `Read` and `Write`
//! and reports a socket that would block as `WouldBlock`. tokio-tungstenite
//! bridges that to tokio by keeping the stream with two waker proxies of
//! its own and registering the task's waker with them on every poll, then
//! polling the socket with a proxy's waker: an atomic register per call,
//! and a waker clone whenever the task changes, on signald's hottest path
//! (BENCHMARKS.md, round 12: about 5 % of a relayed frame's CPU in
//! `AtomicWaker::register` alone). Here the stream is lent to tungstenite
//! for one call at a time ([`Bridge`]), with the caller's own context: the
//! socket registers the task's waker itself, once, and only when it is not
//! ready. tungstenite's [`WebSocketContext`] keeps the rest (framing,
//! masking, fragments, control frames, the close handshake), unchanged.
//!
//! The methods follow `futures`' `Stream` and `Sink` contract as
//! tokio-tungstenite implements it: a message handed over is accepted even
//! when the socket would block (it waits in the write buffer, and the next
//! [`Ws::poll_ready`] writes it out first); the end of the stream and a
//! closed connection read as `None`.

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error, Message};

/// A server-side WebSocket over `S`.
pub struct Ws<S> {
    io: S,
    ctx: WebSocketContext,
    /// False after a message was accepted that the socket did not take
    /// yet: it is written out before another is taken.
    ready: bool,
    /// The stream reported its end (or an error) once: from then on it
    /// reads as ended.
    ended: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Ws<S> {
    /// The connection after the upgrade; `part` is what was read past the
    /// HTTP head (the client's first frames, if it did not wait).
    pub fn from_partially_read(io: S, part: Vec<u8>, config: WebSocketConfig) -> Self {
        Ws {
            io,
            ctx: WebSocketContext::from_partially_read(part, Role::Server, Some(config)),
            ready: true,
            ended: false,
        }
    }

    /// Runs one tungstenite call with the stream lent to it under `cx`.
    fn with<R>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&mut WebSocketContext, &mut Bridge<'_, '_, S>) -> R,
    ) -> R {
        let mut io = Bridge {
            io: &mut self.io,
            cx,
        };
        f(&mut self.ctx, &mut io)
    }

    /// The next message from the client; `None` once the connection ended
    /// (a completed close handshake included).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match pending(self.with(cx, |ws, io| ws.read(io))) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(m)) => Poll::Ready(Some(Ok(m))),
            Poll::Ready(Err(e)) => {
                self.ended = true;
                match e {
                    Error::AlreadyClosed | Error::ConnectionClosed => Poll::Ready(None),
                    e => Poll::Ready(Some(Err(e))),
                }
            }
        }
    }

    /// Ready to take a message: what an earlier one left in the write
    /// buffer has gone to the socket.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.ready {
            return Poll::Ready(Ok(()));
        }
        self.poll_flush(cx)
    }

    /// Takes a message (after [`Ws::poll_ready`]): buffered, and written as
    /// far as the socket takes it.
    pub fn start_send(&mut self, cx: &mut Context<'_>, msg: Message) -> Result<(), Error> {
        match self.with(cx, |ws, io| ws.write(io, msg)) {
            Ok(()) => Ok(()),
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.ready = false;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Writes everything buffered to the socket and flushes it.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let r = std::task::ready!(pending(self.with(cx, |ws, io| ws.flush(io))));
        self.ready = true;
        Poll::Ready(match r {
            // The close handshake just completed: flushed, not an error.
            Err(Error::ConnectionClosed) => Ok(()),
            r => r,
        })
    }

    pub async fn next(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Hands over a message without waiting for it to be flushed.
    pub async fn feed(&mut self, msg: Message) -> Result<(), Error> {
        poll_fn(|cx| self.poll_ready(cx)).await?;
        let mut msg = Some(msg);
        poll_fn(|cx| Poll::Ready(self.start_send(cx, msg.take().expect("polled once")))).await
    }

    pub async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Sends a message and flushes it.
    pub async fn send(&mut self, msg: Message) -> Result<(), Error> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Starts the close handshake with `frame` and writes it out; the
    /// client's reply is read with [`Ws::next`].
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), Error> {
        let mut frame = Some(frame);
        poll_fn(|cx| {
            let r = match frame.take() {
                Some(f) => self.with(cx, |ws, io| ws.close(io, f)),
                None => self.with(cx, |ws, io| ws.flush(io)),
            };
            match pending(r) {
                Poll::Ready(Err(Error::ConnectionClosed)) => Poll::Ready(Ok(())),
                r => r,
            }
        })
        .await
    }
}

/// tungstenite's "the socket would block" as a poll that is not ready (the
/// socket registered the task's waker when it said so).
fn pending<T>(r: Result<T, Error>) -> Poll<Result<T, Error>> {
    match r {
        Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        r => Poll::Ready(r),
    }
}

/// The stream lent to tungstenite for one call: tokio's polls as
/// `Read`/`Write`, `Pending` as `WouldBlock`.
struct Bridge<'a, 'c, S> {
    io: &'a mut S,
    cx: &'a mut Context<'c>,
}

fn would_block<T>(p: Poll<io::Result<T>>) -> io::Result<T> {
    match p {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl<S: AsyncRead + Unpin> Read for Bridge<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        would_block(Pin::new(&mut *self.io).poll_read(self.cx, &mut buf))?;
        Ok(buf.filled().len())
    }
}

impl<S: AsyncWrite + Unpin> Write for Bridge<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        would_block(Pin::new(&mut *self.io).poll_write(self.cx, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        would_block(Pin::new(&mut *self.io).poll_flush(self.cx))
    }
}
