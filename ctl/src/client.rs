//! The typed client of p2pd's control socket.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::traits::StreamCommon as _;
use interprocess::local_socket::traits::tokio::Stream as _;
use interprocess::local_socket::{GenericFilePath, ToFsName};
use p2p_proto::control::{ErrorBody, MAX_LINE_BYTES, Reply, Request};
use p2p_proto::lines::{LineRead, read_line_capped};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, ReadBuf};

/// Why a command failed; `main` turns it into an exit code and one line.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Nothing answers on the socket (exit 3).
    #[error("no p2pd answering on {}: {source} (start it with `p2pd`, or `systemctl --user start p2pd`; --socket or P2PD_SOCKET pick another)", path.display())]
    NoDaemon {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The daemon refused the request (exit 1).
    #[error("{}", .0.message)]
    Refused(ErrorBody),
    /// The command line is wrong in a way clap cannot see (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Something answers on the socket, but it is not our daemon, or the
    /// socket's directory could hold anyone's (exit 3: no daemon of ours).
    #[error("not talking to {}: {why}", path.display())]
    NotOurs { path: PathBuf, why: String },
    /// Anything else (exit 1).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<std::io::Error> for CtlError {
    fn from(e: std::io::Error) -> Self {
        CtlError::Other(anyhow::Error::new(e).context("talking to p2pd"))
    }
}

pub type Result<T> = std::result::Result<T, CtlError>;

/// One connection to the daemon.
pub struct Client {
    pub reader: ReplyReader,
    pub writer: RequestWriter,
}

/// The reading half of a [`Client`].
pub struct ReplyReader {
    reader: BufReader<Shared>,
    line: Vec<u8>,
}

/// The writing half of a [`Client`].
pub struct RequestWriter {
    writer: BufWriter<Shared>,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Client> {
        let no_daemon = |source| CtlError::NoDaemon {
            path: path.to_path_buf(),
            source,
        };
        let not_ours = |why: String| CtlError::NotOurs {
            path: path.to_path_buf(),
            why,
        };
        // The directory first: a socket another user could have put there
        // (the /tmp fallback) is not one to send requests to.
        if let Some(dir) = path.parent()
            && dir.exists()
            && let Some(why) = p2p_proto::control::socket_dir_problem(dir)
        {
            return Err(not_ours(why));
        }
        let name = path.to_fs_name::<GenericFilePath>().map_err(no_daemon)?;
        let stream = Stream::connect(name).await.map_err(no_daemon)?;
        // And the process that answers must run as us, or as root.
        // SAFETY: getuid has no preconditions and cannot fail.
        let me = unsafe { libc::getuid() };
        match stream.peer_creds().map(|c| c.euid()) {
            Ok(Some(uid)) if uid == me || uid == 0 => {}
            Ok(Some(uid)) => {
                return Err(not_ours(format!(
                    "the process serving it runs as uid {uid}, not as us (uid {me})"
                )));
            }
            Ok(None) | Err(_) => {
                return Err(not_ours("cannot tell which user serves it".into()));
            }
        }
        let stream = Arc::new(stream);
        Ok(Client {
            reader: ReplyReader {
                reader: BufReader::with_capacity(64 * 1024, Shared(stream.clone())),
                line: Vec::new(),
            },
            writer: RequestWriter {
                writer: BufWriter::with_capacity(64 * 1024, Shared(stream)),
            },
        })
    }

    /// Sends one request and waits for its reply.
    pub async fn call(&mut self, req: &Request) -> Result<Reply> {
        self.writer.write(req).await?;
        self.writer.flush().await?;
        self.reader.read_reply().await
    }
}

impl RequestWriter {
    /// Queues a request without flushing (for pipelining).
    pub async fn write(&mut self, req: &Request) -> Result<()> {
        let mut line = serde_json::to_vec(req).map_err(anyhow::Error::from)?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<()> {
        self.writer.flush().await?;
        Ok(())
    }

    /// The connection's writing side.
    pub fn into_inner(self) -> impl AsyncWrite + Unpin {
        self.writer
    }

    /// Signals that no more requests follow (the daemon sees EOF).
    pub async fn finish(&mut self) -> Result<()> {
        self.writer.flush().await?;
        self.writer.shutdown().await?;
        Ok(())
    }
}

impl ReplyReader {
    /// Reads the next reply; a daemon-side error becomes `Refused`.
    pub async fn read_reply(&mut self) -> Result<Reply> {
        self.next_reply().await?.ok_or_else(|| {
            CtlError::Other(anyhow::anyhow!(
                "p2pd closed the connection without replying"
            ))
        })
    }

    /// Like [`read_reply`](Self::read_reply), but `None` at a clean end.
    pub async fn next_reply(&mut self) -> Result<Option<Reply>> {
        let Some(line) = self.read_line().await? else {
            return Ok(None);
        };
        let reply: Reply = serde_json::from_slice(line)
            .map_err(|e| anyhow::anyhow!("unreadable reply from p2pd: {e}"))?;
        match reply {
            Reply::Err { error, .. } => Err(CtlError::Refused(error)),
            ok => Ok(Some(ok)),
        }
    }

    /// The next reply of a request whose success carries no payload (a
    /// `send`): `Some(Ok(()))`, `Some(Err(refusal))`, or `None` at a clean
    /// end. Decoding the full [`Reply`] tries each of its untagged variants
    /// and formats an error for every miss; for the empty `{"ok":true}` that
    /// was four fifths of `p2pctl send`'s CPU, and this runs once per line.
    pub async fn next_ack(&mut self) -> Result<Option<std::result::Result<(), ErrorBody>>> {
        #[derive(serde::Deserialize)]
        struct AckView {
            ok: bool,
            #[serde(default)]
            error: Option<ErrorBody>,
        }
        let Some(line) = self.read_line().await? else {
            return Ok(None);
        };
        let ack: AckView = serde_json::from_slice(line)
            .map_err(|e| anyhow::anyhow!("unreadable reply from p2pd: {e}"))?;
        match (ack.ok, ack.error) {
            (true, _) => Ok(Some(Ok(()))),
            (false, Some(error)) => Ok(Some(Err(error))),
            (false, None) => {
                Err(anyhow::anyhow!("unreadable reply from p2pd: ok is false, no error").into())
            }
        }
    }

    /// The next streamed event line, undecoded; `None` when the daemon hung
    /// up. Decode it with [`decode_event`] or a lighter view of
    /// [`Event`](p2p_proto::control::Event).
    pub async fn next_event_line(&mut self) -> Result<Option<&[u8]>> {
        self.read_line().await
    }

    /// The connection's reading side, with what is buffered already (a
    /// stream's first chunks may have come with its reply).
    pub fn into_inner(self) -> impl AsyncRead + Unpin {
        self.reader
    }

    /// Whether more bytes are already buffered (so output can wait to flush).
    pub fn has_buffered_input(&self) -> bool {
        !self.reader.buffer().is_empty()
    }

    async fn read_line(&mut self) -> Result<Option<&[u8]>> {
        match read_line_capped(&mut self.reader, &mut self.line, MAX_LINE_BYTES * 2).await {
            Ok(LineRead::Line) => Ok(Some(&self.line[..])),
            Ok(LineRead::Eof) => Ok(None),
            Ok(LineRead::TooLong) => Err(anyhow::anyhow!("p2pd sent an overlong line").into()),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Decodes an event line from [`ReplyReader::next_event_line`].
pub fn decode_event<'a, T: serde::Deserialize<'a>>(line: &'a [u8]) -> Result<T> {
    serde_json::from_slice(line)
        .map_err(|e| anyhow::anyhow!("unreadable event from p2pd: {e}").into())
}

/// One end of a shared stream: `&Stream` reads and writes, so the reader and
/// the writer each hold the stream rather than a split half.
struct Shared(Arc<Stream>);

impl AsyncRead for Shared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut &*self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut &*self.0).poll_flush(cx)
    }

    /// Half-closes the socket so the daemon sees EOF while replies still
    /// flow back (interprocess's own `poll_shutdown` does nothing).
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        use std::os::fd::{AsFd, AsRawFd};
        let Stream::UdSocket(s) = &*self.0;
        // SAFETY: the descriptor is owned by the stream, alive for this call.
        let rc = unsafe { libc::shutdown(s.as_fd().as_raw_fd(), libc::SHUT_WR) };
        Poll::Ready(if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        })
    }
}
