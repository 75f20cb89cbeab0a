//! Byte streams (issue 22): `p2pctl connect` on `a` to `p2pctl accept` on
//! `b`, timed at the receiver from its first byte to its last, beside the
//! same bytes through one plain TCP connection on loopback; 100
//! concurrent streams through a `forward`; and the memory an open, idle
//! stream costs each daemon.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use p2p_bench::procfs;
use p2p_bench::table::{Row, spread};

use crate::{Bench, Cli};

/// Chunks written into the sender's stdin.
const CHUNK: usize = 256 * 1024;

/// The CPU a child used, from `wait4` (it has exited then, so /proc no
/// longer has it).
fn wait_cpu(child: &mut Child) -> anyhow::Result<(bool, Duration)> {
    let mut status = 0;
    // SAFETY: rusage is plain data, written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own child's, not yet reaped.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    anyhow::ensure!(pid > 0, "wait4: {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((ok, tv(usage.ru_utime) + tv(usage.ru_stime)))
}

/// Reads `from` to its end; the bytes and the time from the first byte to
/// the last.
fn receive(mut from: impl Read) -> (u64, Duration) {
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    let mut first = None;
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                first.get_or_insert_with(Instant::now);
                got += n as u64;
            }
        }
    }
    (got, first.map_or(Duration::ZERO, |f| f.elapsed()))
}

/// Writes `bytes` of a pattern into `to`, then closes it.
fn send(mut to: impl Write, bytes: u64) {
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 7 + 3) as u8).collect();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        if to.write_all(&chunk[..n]).is_err() {
            return;
        }
        left -= n as u64;
    }
}

struct Run {
    mbs: f64,
    complete: bool,
    cpu: String,
}

/// One stream of `bytes` from `a` to `b`.
fn stream_once(bench: &mut Bench, bytes: u64) -> anyhow::Result<Run> {
    let (pa, pb) = (bench.a.pid(), bench.b.pid());
    let (ca, cb) = (procfs::cpu_time(pa)?, procfs::cpu_time(pb)?);
    let mut acc = bench
        .b
        .daemon
        .ctl_cmd(&["accept", "bench", "--peer", "a", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    bench
        .b
        .daemon
        .wait_status("accepting", |s| !s.accepts.is_empty());
    let out = acc.stdout.take().expect("piped");
    let receiver = std::thread::spawn(move || receive(out));
    let mut conn = bench
        .a
        .daemon
        .ctl_cmd(&["connect", "b/bench", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let input = conn.stdin.take().expect("piped");
    let sender = std::thread::spawn(move || send(input, bytes));
    let (got, took) = receiver.join().expect("the receiver");
    sender.join().expect("the sender");
    let (conn_ok, conn_cpu) = wait_cpu(&mut conn)?;
    let (acc_ok, acc_cpu) = wait_cpu(&mut acc)?;
    let secs = took.as_secs_f64().max(1e-9);
    let share = |d: Duration| format!("{:.0}%", d.as_secs_f64() / secs * 100.0);
    let cpu = format!(
        "CPU p2pd a {}, p2pd b {}, connect {}, accept {}",
        share(procfs::cpu_time(pa)? - ca),
        share(procfs::cpu_time(pb)? - cb),
        share(conn_cpu),
        share(acc_cpu)
    );
    Ok(Run {
        mbs: got as f64 / secs / 1e6,
        complete: got == bytes && conn_ok && acc_ok,
        cpu,
    })
}

/// The same bytes through one TCP connection on loopback, timed the same
/// way: the physical reference.
fn tcp_once(bytes: u64) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let sender = std::thread::spawn(move || {
        if let Ok(c) = TcpStream::connect(addr) {
            send(c, bytes);
        }
    });
    let (conn, _) = listener.accept()?;
    let (got, took) = receive(conn);
    sender.join().expect("the sender");
    anyhow::ensure!(got == bytes, "TCP moved {got} of {bytes} bytes");
    Ok(got as f64 / took.as_secs_f64().max(1e-9) / 1e6)
}

/// Rows: throughput of one stream, over `cli.runs` runs, beside TCP.
pub fn throughput(bench: &mut Bench, cli: &Cli) -> anyhow::Result<Row> {
    let bytes = cli.stream_mib << 20;
    let mut runs = Vec::new();
    let mut tcp = Vec::new();
    for _ in 0..cli.runs.max(1) {
        runs.push(stream_once(bench, bytes)?);
        tcp.push(tcp_once(bytes)?);
    }
    let mbs: Vec<f64> = runs.iter().map(|r| r.mbs).collect();
    let complete = runs.iter().all(|r| r.complete);
    let worst = mbs.iter().cloned().fold(f64::INFINITY, f64::min);
    let cpu: Vec<String> = runs.iter().map(|r| r.cpu.clone()).collect();
    Ok(Row::new(
        format!(
            "stream throughput, {} MiB `connect` -> `accept`, MB/s min/median/max over {} runs",
            cli.stream_mib,
            runs.len()
        ),
        format!(
            "{}{}; {}",
            spread(&mbs, |v| format!("{v:.0}")),
            if complete { "" } else { ", INCOMPLETE" },
            cpu.join("; ")
        ),
    )
    .raw(format!(
        "one TCP connection: {}",
        spread(&tcp, |v| format!("{v:.0}"))
    ))
    .target(">= 200 MB/s in every run", complete && worst >= 200.0))
}

/// A service on `b`'s side that reads each connection to its end, then
/// says how many bytes it read (8 bytes, big-endian) and closes.
fn counting_service() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let (got, _) = receive(&mut conn);
                let _ = conn.write_all(&got.to_be_bytes());
            });
        }
    });
    Ok(port)
}

/// 100 (`cli.forward_streams`) concurrent connections of 1 MiB each
/// through `p2pctl forward` on `a` to a service on `b`.
pub fn forwarded(bench: &mut Bench, cli: &Cli) -> anyhow::Result<Row> {
    let port = counting_service()?;
    bench.b.daemon.ok(&[
        "expose",
        "count",
        &format!("tcp:127.0.0.1:{port}"),
        "--peer",
        "a",
    ]);
    let mut fwd = bench
        .a
        .daemon
        .ctl_cmd(&["forward", "0", "b/count"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(fwd.stdout.take().expect("piped")),
        &mut line,
    )?;
    let listen: std::net::SocketAddr = line
        .strip_prefix("forwarding ")
        .and_then(|l| l.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("forward said {line:?}"))?;
    let each = 1u64 << 20;
    let n = cli.forward_streams;
    let started = Instant::now();
    let clients: Vec<_> = (0..n)
        .map(|_| {
            std::thread::spawn(move || -> Option<Duration> {
                let t = Instant::now();
                let mut c = TcpStream::connect(listen).ok()?;
                send(&mut c, each);
                c.shutdown(Shutdown::Write).ok()?;
                let mut answer = [0u8; 8];
                c.read_exact(&mut answer).ok()?;
                (u64::from_be_bytes(answer) == each).then(|| t.elapsed())
            })
        })
        .collect();
    let mut times: Vec<Duration> = clients
        .into_iter()
        .filter_map(|c| c.join().ok().flatten())
        .collect();
    let total = started.elapsed();
    // SAFETY: our own child.
    unsafe { libc::kill(fwd.id() as i32, libc::SIGTERM) };
    let _ = fwd.wait();
    bench.b.daemon.ok(&["unexpose", "count"]);
    times.sort();
    let complete = times.len() == n;
    let p50 = times.get(times.len() / 2).copied().unwrap_or_default();
    let max = times.last().copied().unwrap_or_default();
    Ok(Row::new(
        format!("{n} concurrent 1 MiB streams through `forward`"),
        format!(
            "{} of {n} complete in {:.2} s ({:.0} MB/s in all); per connection p50 {} ms, max {} ms",
            times.len(),
            total.as_secs_f64(),
            (times.len() as u64 * each) as f64 / total.as_secs_f64() / 1e6,
            p50.as_millis(),
            max.as_millis()
        ),
    )
    .target("every one complete", complete))
}

/// The memory each daemon holds per open, idle stream: RSS before and
/// with `cli.idle_streams` streams open (connect processes whose stdin
/// stays open, to an echo service).
pub fn idle_memory(bench: &mut Bench, cli: &Cli) -> anyhow::Result<Row> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        // Connections are held open, never answered, until the bench ends.
        let mut conns = Vec::new();
        for c in listener.incoming().flatten() {
            conns.push(c);
        }
    });
    bench.b.daemon.ok(&[
        "expose",
        "idle",
        &format!("tcp:127.0.0.1:{port}"),
        "--peer",
        "a",
    ]);
    let n = cli.idle_streams;
    let (pa, pb) = (bench.a.pid(), bench.b.pid());
    std::thread::sleep(Duration::from_millis(500));
    let (ra, rb) = (procfs::rss_bytes(pa)?, procfs::rss_bytes(pb)?);
    let mut children = Vec::new();
    for _ in 0..n {
        children.push(
            bench
                .a
                .daemon
                .ctl_cmd(&["connect", "b/idle", "--quiet"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()?,
        );
    }
    bench
        .a
        .daemon
        .wait_status("every idle stream open", |s| s.streams.len() == n);
    std::thread::sleep(Duration::from_millis(500));
    let per = |after: u64, before: u64| after.saturating_sub(before) as f64 / n as f64 / 1024.0;
    let (ka, kb) = (
        per(procfs::rss_bytes(pa)?, ra),
        per(procfs::rss_bytes(pb)?, rb),
    );
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    bench
        .a
        .daemon
        .wait_status("the idle streams gone", |s| s.streams.is_empty());
    bench.b.daemon.ok(&["unexpose", "idle"]);
    Ok(Row::new(
        format!("memory per open idle stream ({n} open), RSS growth"),
        format!("p2pd a (opener) {ka:.0} KiB, p2pd b (acceptor) {kb:.0} KiB"),
    )
    .target("<= 256 KiB", ka <= 256.0 && kb <= 256.0))
}
