//! Our end of a stream: a plain socket (a service's target, a forwarded
//! connection), or a control connection that speaks the chunk framing of
//! `p2p_proto::control::pipe` (`connect`, `accept`).
//!
//! A plain socket ends a direction with a shutdown of its write side (TCP
//! FIN) and aborts with a reset, which its owner makes when the stream
//! fails; a control connection says both with chunks.

use bytes::BytesMut;
use p2p_proto::control::{ErrorBody, error_chunk, pipe};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How the local end frames what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Bytes as they are: EOF is the end of the direction.
    Raw,
    /// `p2p_proto::control::pipe` chunks.
    Framed,
}

/// What a read of the local end found.
#[derive(Debug)]
pub enum Read {
    /// This many bytes were appended.
    Data(usize),
    /// The direction ended cleanly.
    End,
    /// The local end went away or broke; the reason is for people.
    Abort(String),
}

/// The reading half of our end.
pub struct Reader<R> {
    r: R,
    style: Style,
    /// Bytes of the current `DATA` chunk not read yet (framed only).
    pending: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(r: R, style: Style) -> Self {
        Reader {
            r,
            style,
            pending: 0,
        }
    }

    /// Appends up to `max` (> 0) bytes to `buf`.
    pub async fn read(&mut self, buf: &mut BytesMut, max: usize) -> Read {
        match self.style {
            Style::Raw => match (&mut self.r).take(max as u64).read_buf(buf).await {
                Ok(0) => Read::End,
                Ok(n) => Read::Data(n),
                Err(e) => Read::Abort(format!("reading the local connection: {e}")),
            },
            Style::Framed => {
                while self.pending == 0 {
                    let mut h = [0; pipe::HEADER];
                    if let Err(e) = self.r.read_exact(&mut h).await {
                        return Read::Abort(match e.kind() {
                            std::io::ErrorKind::UnexpectedEof => {
                                "the local client went away without ending its input".into()
                            }
                            _ => format!("reading from the local client: {e}"),
                        });
                    }
                    match pipe::parse_header(h, false) {
                        Ok((pipe::END, _)) => return Read::End,
                        Ok((_, len)) => self.pending = len,
                        Err(e) => return Read::Abort(format!("the local client sent a {e}")),
                    }
                }
                let want = max.min(self.pending);
                match (&mut self.r).take(want as u64).read_buf(buf).await {
                    Ok(0) => Read::Abort("the local client went away mid-chunk".into()),
                    Ok(n) => {
                        self.pending -= n;
                        Read::Data(n)
                    }
                    Err(e) => Read::Abort(format!("reading from the local client: {e}")),
                }
            }
        }
    }
}

/// The writing half of our end.
pub struct Writer<W> {
    w: W,
    style: Style,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub fn new(w: W, style: Style) -> Self {
        Writer { w, style }
    }

    /// Writes bytes from the peer; flushes unless `more` are at hand.
    pub async fn data(&mut self, data: &[u8], more: bool) -> std::io::Result<()> {
        if self.style == Style::Framed {
            self.w
                .write_all(&pipe::header(pipe::DATA, data.len()))
                .await?;
        }
        self.w.write_all(data).await?;
        if !more {
            self.w.flush().await?;
        }
        Ok(())
    }

    /// The peer's direction ended: a shutdown of our write side, or the
    /// `END` chunk.
    pub async fn end(&mut self) -> std::io::Result<()> {
        match self.style {
            Style::Raw => self.w.shutdown().await,
            Style::Framed => {
                self.w.write_all(&pipe::header(pipe::END, 0)).await?;
                self.w.flush().await
            }
        }
    }

    /// How the stream ended, for a framed end (a raw one learns it from a
    /// reset that its owner makes).
    pub async fn finish(&mut self, outcome: &Result<(), ErrorBody>) {
        if self.style == Style::Raw {
            return;
        }
        let chunk = match outcome {
            Ok(()) => pipe::header(pipe::DONE, 0).to_vec(),
            Err(e) => error_chunk(e),
        };
        // The client may be gone already; nothing else to tell it then.
        let _ = self.w.write_all(&chunk).await;
        let _ = self.w.flush().await;
    }
}
