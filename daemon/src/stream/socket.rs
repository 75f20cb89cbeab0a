//! Plain sockets at our end of a stream: a service's target, reached when
//! the peer opens a stream to it, and a forward's accepted connections.
//! Their direction ends are TCP's (or a unix socket's) shutdown of the
//! write side; a failed stream resets them, so that the program at the
//! other end sees an error, never a clean end.

use std::time::Duration;

use p2p_proto::control::{ErrorBody, Target};
use tokio::net::{TcpStream, UnixStream};

use super::local::{Reader, Style, Writer};
use super::pump::{self, Meter};

pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Connects to `target`, within `limit`.
pub async fn reach(target: &Target, limit: Duration) -> std::io::Result<Socket> {
    let connect = async {
        Ok(match target {
            Target::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port)).await?;
                // Interactive streams (ssh) want each write to leave now.
                s.set_nodelay(true)?;
                Socket::Tcp(s)
            }
            Target::Unix(path) => Socket::Unix(UnixStream::connect(path).await?),
        })
    };
    tokio::time::timeout(limit, connect)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", limit.as_secs()),
            ))
        })
}

/// Runs a stream between `channel` and `socket`; resets the socket when
/// the stream fails.
pub async fn pump(channel: pump::Channel, socket: Socket, meter: &Meter) -> Result<(), ErrorBody> {
    match socket {
        Socket::Tcp(mut s) => {
            let (r, w) = s.split();
            let result = run(channel, r, w, meter).await;
            if result.is_err() {
                // An abort reaches the program as a reset (RST), not as
                // the FIN of a clean end.
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
            result
        }
        Socket::Unix(mut s) => {
            let (r, w) = s.split();
            run(channel, r, w, meter).await
        }
    }
}

async fn run<R, W>(channel: pump::Channel, r: R, w: W, meter: &Meter) -> Result<(), ErrorBody>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut reader = Reader::new(r, Style::Raw);
    let mut writer = Writer::new(
        tokio::io::BufWriter::with_capacity(64 * 1024, w),
        Style::Raw,
    );
    pump::run(channel, &mut reader, &mut writer, meter).await
}
