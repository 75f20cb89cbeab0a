//! The raw loopback path the daemons' figures are compared with: a UDP
//! round trip and a TCP stream, and the kernel's UDP receive drop counter.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::table::pct;

/// p50/p99 of `n` 100-byte datagrams echoed by a second thread on loopback.
pub fn udp_rtt(n: usize) -> anyhow::Result<(Duration, Duration)> {
    let echo = UdpSocket::bind("127.0.0.1:0")?;
    let client = UdpSocket::bind("127.0.0.1:0")?;
    echo.set_read_timeout(Some(Duration::from_secs(5)))?;
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    client.connect(echo.local_addr()?)?;
    let warm = 100;
    let t = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = [0u8; 2048];
        for _ in 0..n + warm {
            let (len, from) = echo.recv_from(&mut buf)?;
            echo.send_to(&buf[..len], from)?;
        }
        Ok(())
    });
    let msg = [7u8; 100];
    let mut buf = [0u8; 2048];
    let mut v = Vec::with_capacity(n);
    for i in 0..n + warm {
        let t0 = Instant::now();
        client.send(&msg)?;
        client.recv(&mut buf)?;
        if i >= warm {
            v.push(t0.elapsed());
        }
    }
    t.join()
        .map_err(|_| anyhow::anyhow!("udp echo panicked"))??;
    v.sort();
    Ok((pct(&v, 0.5), pct(&v, 0.99)))
}

/// MB/s of 16 KiB writes over one loopback TCP connection for `dur`.
pub fn tcp_throughput(dur: Duration) -> anyhow::Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let rx = std::thread::spawn(move || -> std::io::Result<(u64, Instant)> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok((total, Instant::now())),
                k => total += k as u64,
            }
        }
    });
    let mut s = TcpStream::connect(addr)?;
    let chunk = vec![1u8; 16384];
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        for _ in 0..64 {
            s.write_all(&chunk)?;
        }
    }
    drop(s);
    let (total, end) = rx
        .join()
        .map_err(|_| anyhow::anyhow!("tcp reader panicked"))??;
    Ok(total as f64 / (end - t0).as_secs_f64() / 1e6)
}

/// MB/s received of 1,200-byte UDP datagrams sent one per syscall from one
/// loopback socket to another for `dur`: the size a data channel's packets
/// have (SCTP in DTLS under a 1,200-byte path MTU), so this is about the
/// most a one-way transfer could move here before any WebRTC work, with
/// one sender and one receiver thread as each daemon has (the crate batches
/// a few datagrams per syscall with GSO; this does not).
pub fn udp_throughput(dur: Duration) -> anyhow::Result<f64> {
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    for s in [&rx, &tx] {
        let s = socket2::SockRef::from(s);
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
    }
    rx.set_read_timeout(Some(Duration::from_millis(200)))?;
    tx.connect(rx.local_addr()?)?;
    let reader = std::thread::spawn(move || -> (u64, Option<Instant>) {
        let mut buf = [0u8; 2048];
        let mut total = 0u64;
        let mut last = None;
        while let Ok(n) = rx.recv(&mut buf) {
            total += n as u64;
            last = Some(Instant::now());
        }
        (total, last)
    });
    let datagram = [3u8; 1200];
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        for _ in 0..64 {
            // A full socket buffer is a drop, as on a real path: not an error.
            let _ = tx.send(&datagram);
        }
    }
    let (total, last) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("udp reader panicked"))?;
    let end = last.context("no datagram arrived")?;
    Ok(total as f64 / (end - t0).as_secs_f64() / 1e6)
}

/// `RcvbufErrors` of `/proc/net/snmp`: UDP datagrams the kernel dropped
/// because a socket's receive buffer was full.
pub fn rcvbuf_errors() -> anyhow::Result<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp")?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (head, vals) = (udp.next().context("Udp:")?, udp.next().context("Udp:")?);
    let i = head
        .split_whitespace()
        .position(|h| h == "RcvbufErrors")
        .context("no RcvbufErrors")?;
    Ok(vals.split_whitespace().nth(i).context("value")?.parse()?)
}
