//! UDP socket buffers sized for a data channel, and the SCTP window that
//! matches what the kernel really granted.
//!
//! The crate's sockets get the kernel's default receive buffer (~208 KiB)
//! while SCTP advertises a 1 MiB window: bursts overflow the socket and the
//! drops cost whole seconds (`docs/webrtc.md`). [`BufferedRuntime`] is the
//! tokio runtime with one change: every UDP socket asks for
//! [`WANTED_BUFFER`] bytes before the crate wraps it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
    TokioRuntime,
};

/// Buffer size asked for; the kernel caps it at `net.core.rmem_max`.
pub const WANTED_BUFFER: usize = 4 * 1024 * 1024;
const MIN_WINDOW: u32 = 64 * 1024;
const MAX_WINDOW: u32 = 1024 * 1024;

#[derive(Debug)]
pub struct BufferedRuntime {
    inner: TokioRuntime,
    /// The receive buffer the kernel reports for a socket that asked for
    /// [`WANTED_BUFFER`] (Linux reports twice the usable payload size).
    granted_rcvbuf: usize,
}

impl BufferedRuntime {
    /// Probes what the kernel grants, once, with a throwaway socket.
    pub fn new() -> io::Result<Self> {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let granted_rcvbuf = size_buffers(&probe)?;
        tracing::debug!(granted_rcvbuf, "UDP receive buffer");
        Ok(Self {
            inner: TokioRuntime,
            granted_rcvbuf,
        })
    }

    /// The SCTP receive window for this buffer: a quarter of the reported
    /// size (half is kernel bookkeeping, and a datagram's accounting is about
    /// twice its payload), between 64 KiB (one whole message) and 1 MiB.
    pub fn sctp_window(&self) -> u32 {
        let quarter = (self.granted_rcvbuf / 4).min(u32::MAX as usize) as u32;
        quarter.clamp(MIN_WINDOW, MAX_WINDOW)
    }

    pub fn granted_rcvbuf(&self) -> usize {
        self.granted_rcvbuf
    }
}

fn size_buffers(sock: &std::net::UdpSocket) -> io::Result<usize> {
    let s = socket2::SockRef::from(sock);
    // Failures leave the default size, which the window then follows.
    let _ = s.set_recv_buffer_size(WANTED_BUFFER);
    let _ = s.set_send_buffer_size(WANTED_BUFFER);
    s.recv_buffer_size()
}

impl Runtime for BufferedRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        pool: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(pool, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        size_buffers(&socket)?;
        self.inner.wrap_udp_socket(socket)
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> std::time::Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        "tokio+buffers"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_follows_the_granted_buffer() {
        let rt = |granted_rcvbuf| BufferedRuntime {
            inner: TokioRuntime,
            granted_rcvbuf,
        };
        // Stock kernel: rmem_max 208 KiB, reported doubled.
        assert_eq!(rt(425_984).sctp_window(), 106_496);
        // rmem_max 4 MiB: capped at the crate's default window.
        assert_eq!(rt(8 << 20).sctp_window(), MAX_WINDOW);
        // Tiny buffers still fit one whole message.
        assert_eq!(rt(4096).sctp_window(), MIN_WINDOW);
    }
}
