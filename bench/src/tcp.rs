//! A plain TCP transfer across the NAT lab, beside p2pd's on the same
//! namespaces and wire: what a kernel TCP of the given congestion control
//! achieves on that path.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use p2p_testkit::lab::wire::enter_netns;

/// Sends `bytes` from namespace `client_ns` to a listener on `port` in
/// `server_ns` (reached as `connect_to`), with congestion control `cc`
/// (`cubic`, `bbr`) on both sockets; returns MB/s as the receiver saw it
/// (from the connection's start to its last byte).
pub fn transfer(
    server_ns: &str,
    client_ns: &str,
    connect_to: &str,
    port: u16,
    bytes: usize,
    cc: &str,
) -> anyhow::Result<f64> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = {
        let (ns, cc) = (server_ns.to_string(), cc.to_string());
        std::thread::spawn(move || -> anyhow::Result<f64> {
            enter_netns(&ns);
            let listener = TcpListener::bind(("0.0.0.0", port))?;
            set_cc(listener.as_raw_fd(), &cc)?;
            ready_tx.send(()).ok();
            let (mut conn, _) = listener.accept()?;
            let started = Instant::now();
            let mut buf = vec![0u8; 1 << 16];
            let mut got = 0;
            while got < bytes {
                let n = conn.read(&mut buf)?;
                anyhow::ensure!(n > 0, "the sender closed after {got} of {bytes} bytes");
                got += n;
            }
            Ok(bytes as f64 / started.elapsed().as_secs_f64() / 1e6)
        })
    };
    ready_rx.recv()?;
    let client = {
        let (ns, cc, to) = (
            client_ns.to_string(),
            cc.to_string(),
            connect_to.to_string(),
        );
        std::thread::spawn(move || -> anyhow::Result<()> {
            enter_netns(&ns);
            let mut conn = TcpStream::connect((to.as_str(), port))?;
            set_cc(conn.as_raw_fd(), &cc)?;
            let chunk = vec![b'x'; 1 << 16];
            let mut sent = 0;
            while sent < bytes {
                let n = chunk.len().min(bytes - sent);
                conn.write_all(&chunk[..n])?;
                sent += n;
            }
            conn.flush()?;
            // Keep the socket open until the receiver has read it all.
            let mut rest = [0u8; 1];
            let _ = conn.read(&mut rest);
            Ok(())
        })
    };
    let mb_s = server.join().expect("server thread")?;
    drop(client);
    Ok(mb_s)
}

fn set_cc(fd: i32, cc: &str) -> anyhow::Result<()> {
    // SAFETY: setsockopt on a socket we own, with a valid buffer and length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            cc.as_ptr().cast(),
            cc.len() as libc::socklen_t,
        )
    };
    anyhow::ensure!(
        rc == 0,
        "TCP congestion control {cc:?}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}
