//! The measurements of `p2pd-bench` other than throughput: one function
//! each, returning its table rows.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use p2p_bench::procfs;
use p2p_bench::table::{Row, ms, pct, us};
use p2p_proto::control::LinkState;
use p2p_testkit::{Control, Follower};

use crate::{Bench, Node};

/// The raw loopback figures the daemons' are shown beside.
pub struct Raw {
    pub udp_p50: Duration,
    pub udp_p99: Duration,
    pub tcp_mbs: f64,
    /// One-way 1,200-byte datagrams, one per syscall (`raw::udp_throughput`).
    pub udp_mbs: f64,
}

fn wait_link(node: &mut Node, want: LinkState) {
    let deadline = Instant::now() + p2p_testkit::WAIT;
    while node.ctl.status().link != want {
        assert!(
            Instant::now() < deadline,
            "{} never {want:?}",
            node.daemon.id()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One pairing from `a` to `b` (wait: true); the time to its reply.
fn pair_once(bench: &mut Bench) -> (Duration, String) {
    let t0 = Instant::now();
    let pair = bench
        .a
        .ctl
        .pair(bench.b.daemon.id(), 20_000)
        .unwrap_or_else(|e| panic!("pairing failed: {e:?}"));
    let dt = t0.elapsed();
    assert_eq!(pair.state, LinkState::Open);
    let path = pair
        .path
        .map(|p| {
            format!(
                "{} {} → {} {}",
                p.local_type, p.local_address, p.remote_type, p.remote_address
            )
        })
        .unwrap_or_else(|| "?".into());
    wait_link(&mut bench.b, LinkState::Open);
    (dt, path)
}

fn unpair(bench: &mut Bench) {
    bench.a.ctl.unpair();
    wait_link(&mut bench.a, LinkState::Idle);
    wait_link(&mut bench.b, LinkState::Idle);
}

pub fn pair_to_open(bench: &mut Bench, n: usize) -> (Row, String) {
    let mut opens = Vec::new();
    let mut path = String::new();
    for _ in 0..n {
        let (dt, p) = pair_once(bench);
        opens.push(dt);
        path = p;
        unpair(bench);
    }
    opens.sort();
    eprintln!("opens: {opens:?}");
    let p50 = pct(&opens, 0.5);
    let row = Row::new(
        format!("pair → open (`pair` wait:true to its reply), {n} pairings"),
        format!(
            "p50 {}, p90 {}, max {} (min {})",
            ms(p50),
            ms(pct(&opens, 0.9)),
            ms(pct(&opens, 1.0)),
            ms(pct(&opens, 0.0)),
        ),
    )
    .target("p50 ≤ 30 ms", p50 <= Duration::from_millis(30))
    .comparison("aiortc 37 ms; webrtc defaults ~600 ms");
    (row, path)
}

pub fn rss_mib(bench: &Bench) -> anyhow::Result<f64> {
    let a = procfs::rss_bytes(bench.a.pid())?;
    let b = procfs::rss_bytes(bench.b.pid())?;
    Ok(a.max(b) as f64 / 1048576.0)
}

/// Pairs, stays quiet for `window`: the CPU row and the connected RSS. The
/// pairing is left open for what follows.
pub fn idle_connected(bench: &mut Bench, window: Duration) -> anyhow::Result<(Row, f64)> {
    pair_once(bench);
    std::thread::sleep(Duration::from_secs(1));
    let (a0, b0) = (
        procfs::cpu_time(bench.a.pid())?,
        procfs::cpu_time(bench.b.pid())?,
    );
    let w0 = Instant::now();
    std::thread::sleep(window);
    let secs = w0.elapsed().as_secs_f64();
    let cpu_a = (procfs::cpu_time(bench.a.pid())? - a0).as_secs_f64() / secs * 100.0;
    let cpu_b = (procfs::cpu_time(bench.b.pid())? - b0).as_secs_f64() / secs * 100.0;
    let row = Row::new(
        format!("CPU of a connected daemon, no traffic, {secs:.0} s"),
        format!("a {cpu_a:.2} %, b {cpu_b:.2} % of a core"),
    )
    .target("≤ 0.5 % of a core", cpu_a.max(cpu_b) <= 0.5)
    .comparison("10 ms keepalive ≈ 1.7 %");
    Ok((row, rss_mib(bench)?))
}

/// Round trips: a follower on `b` sends every message back through `b`'s
/// socket; plus the control socket alone (`status`).
pub fn echo(bench: &mut Bench, n: usize, raw: &Raw) -> anyhow::Result<Vec<Row>> {
    let mut stat = Vec::new();
    for _ in 0..1000 {
        let t0 = Instant::now();
        bench.a.ctl.status();
        stat.push(t0.elapsed());
    }
    stat.sort();

    let b_socket = bench.b.daemon.socket();
    let mut b_follow = Follower::start(&b_socket, 0);
    let b_closer = b_follow.closer();
    let mut b_send = Control::connect(&b_socket)?;
    // Receipt times at b's follower split the round trip into halves (same
    // process, same monotonic clock).
    let (seen_tx, seen) = std::sync::mpsc::channel::<Instant>();
    let echo = std::thread::spawn(move || -> u64 {
        let mut n = 0;
        while let Some(text) = b_follow.next_text() {
            let _ = seen_tx.send(Instant::now());
            if b_send.send_text(&text).is_err() {
                break;
            }
            n += 1;
        }
        n
    });
    let a_socket = bench.a.daemon.socket();
    let mut a_follow = Follower::start(&a_socket, 0);
    let mut a_send = Control::connect(&a_socket)?;
    let (mut rtt, mut half) = (Vec::new(), Vec::new());
    for i in 0..(n + 50) {
        let text = format!("echo {i}");
        let t0 = Instant::now();
        a_send
            .send_text(&text)
            .map_err(|e| anyhow::anyhow!("send: {e:?}"))?;
        let got = a_follow.next_text().context("a's follower ended")?;
        let dt = t0.elapsed();
        let at_b = seen
            .recv_timeout(p2p_testkit::WAIT)
            .context("b's follower saw nothing")?;
        if got != text {
            bail!("echo {i}: got {got:?}");
        }
        if i >= 50 {
            rtt.push(dt);
            half.push(at_b - t0);
        }
    }
    rtt.sort();
    half.sort();
    b_closer.shutdown(std::net::Shutdown::Both)?;
    let echoed = echo
        .join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))?;
    eprintln!("echoed {echoed}");
    let (rtt50, rtt99) = (pct(&rtt, 0.5), pct(&rtt, 0.99));
    Ok(vec![
        Row::new(
            format!(
                "round trip daemon to daemon, {} echoes (socket → a → b → follower → b's socket → b → a → follower)",
                rtt.len()
            ),
            format!("p50 {}, p99 {}, max {}", us(rtt50), us(rtt99), us(pct(&rtt, 1.0))),
        )
        .raw(format!("UDP echo p50 {}, p99 {}", us(raw.udp_p50), us(raw.udp_p99)))
        .target(
            "p50 ≤ 200 µs, p99 ≤ 1 ms",
            rtt50 <= Duration::from_micros(200) && rtt99 <= Duration::from_millis(1),
        )
        .comparison("aiortc 0.29 ms"),
        Row::new(
            "of which one way: `send` written to a's socket → message read by b's follower",
            format!("p50 {}, p99 {}", us(pct(&half, 0.5)), us(pct(&half, 0.99))),
        )
        .raw(format!("UDP echo p50 / 2 = {}", us(raw.udp_p50 / 2))),
        Row::new(
            "control socket alone: `status` request → reply, 1,000",
            format!("p50 {}, p99 {}", us(pct(&stat, 0.5)), us(pct(&stat, 0.99))),
        ),
    ])
}

/// Round trips via `p2pctl send TEXT`: one process per message.
pub fn ctl_echo(bench: &mut Bench, n: usize) -> anyhow::Result<Vec<Row>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut follow = Follower::start(&bench.a.daemon.socket(), 0);
    let mut rtt = Vec::new();
    for i in 0..n {
        let text = format!("ctl {i}");
        let t0 = Instant::now();
        // b sends, a's follower receives: one p2pctl process per message.
        bench.b.daemon.ok(&["send", &text]);
        let got = follow.next_text().context("a's follower ended")?;
        rtt.push(t0.elapsed());
        if got != text {
            bail!("p2pctl echo {i}: got {got:?}");
        }
    }
    rtt.sort();
    Ok(vec![Row::new(
        format!("one way via `p2pctl send TEXT` (one process spawn per message), {n} messages"),
        format!(
            "p50 {}, p99 {} (process spawn dominated)",
            ms(pct(&rtt, 0.5)),
            ms(pct(&rtt, 0.99))
        ),
    )])
}

pub fn rss_row(bench: &Bench, idle: f64, connected: f64) -> anyhow::Result<Row> {
    let after = rss_mib(bench)?;
    let verdict = match (idle <= 15.0 && connected <= 30.0, after <= 30.0) {
        (true, true) => "yes",
        (true, false) => "before traffic; **no** after it",
        _ => "**no**",
    };
    Ok(Row::new(
        "daemon RSS (larger of the two): idle / connected / connected after the traffic above",
        format!("{idle:.1} / {connected:.1} / {after:.1} MiB"),
    )
    .verdict("≤ 15 MiB idle, ≤ 30 MiB connected", verdict))
}

struct Snapshot {
    fds: (usize, usize),
    threads: (usize, usize),
    rss: (f64, f64),
}

impl Snapshot {
    fn take(bench: &Bench) -> anyhow::Result<Snapshot> {
        let (fa, ta) = bench.a.daemon.fds_and_threads();
        let (fb, tb) = bench.b.daemon.fds_and_threads();
        let rss = |n: &Node| -> anyhow::Result<f64> {
            Ok(procfs::rss_bytes(n.pid())? as f64 / 1048576.0)
        };
        Ok(Snapshot {
            fds: (fa, fb),
            threads: (ta, tb),
            rss: (rss(&bench.a)?, rss(&bench.b)?),
        })
    }

    fn describe(&self) -> String {
        format!(
            "fds a {} b {}, threads a {} b {}, RSS a {:.1} b {:.1} MiB",
            self.fds.0, self.fds.1, self.threads.0, self.threads.1, self.rss.0, self.rss.1
        )
    }
}

/// `n` pair/unpair cycles: fds, threads and RSS before, at a tenth, after.
pub fn cycles(bench: &mut Bench, n: usize) -> anyhow::Result<Row> {
    if bench.a.ctl.status().link != LinkState::Idle {
        unpair(bench);
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = Snapshot::take(bench)?;
    let mut mid = None;
    let mut opens = Vec::new();
    for i in 0..n {
        opens.push(pair_once(bench).0);
        unpair(bench);
        if i + 1 == n / 10 {
            std::thread::sleep(Duration::from_millis(500));
            mid = Some(Snapshot::take(bench)?);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = Snapshot::take(bench)?;
    opens.sort();
    let flat = after.fds.0 <= before.fds.0
        && after.fds.1 <= before.fds.1
        && after.rss.0 - before.rss.0 < 1.0
        && after.rss.1 - before.rss.1 < 1.0;
    let mid = mid
        .map(|m| format!("; after {}: {}", n / 10, m.describe()))
        .unwrap_or_default();
    Ok(Row::new(
        format!("{n} pair/unpair cycles: before → after"),
        format!(
            "before: {}{mid}; after {n}: {}; open p50 {} / max {} during the cycles",
            before.describe(),
            after.describe(),
            ms(pct(&opens, 0.5)),
            ms(pct(&opens, 1.0)),
        ),
    )
    .target("flat fds and RSS", flat))
}
