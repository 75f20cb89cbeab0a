//! `p2pd-bench`: starts a signald and two p2pd daemons (`a`, `b`) on
//! 127.0.0.1 in a temporary directory, measures pairing, round trips,
//! throughput, memory, CPU and fd figures through the control sockets and
//! the real `p2pctl`, measures the raw loopback path (UDP round trip, TCP
//! throughput) beside them, and prints a Markdown table.
//!
//! Every wait is bounded; every process started here is killed when the
//! bench ends, also on error (see [`Procs`]).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use p2p_bench::procfs;
use p2p_proto::control::{LinkState, ServerState, Status};
use serde_json::{Value, json};

#[derive(Parser)]
struct Cli {
    /// The signald binary.
    #[arg(long)]
    signald: PathBuf,
    /// The p2pd binary.
    #[arg(long)]
    p2pd: PathBuf,
    /// The p2pctl binary.
    #[arg(long)]
    p2pctl: PathBuf,
    /// Pairings timed for pair-to-open.
    #[arg(long, default_value_t = 20)]
    pairings: usize,
    /// Echoes for the daemon-to-daemon round trip.
    #[arg(long, default_value_t = 1000)]
    echoes: usize,
    /// Echoes for the round trip via `p2pctl send` (one process per message).
    #[arg(long, default_value_t = 1000)]
    ctl_echoes: usize,
    /// 100-byte lines sent through `p2pctl send` / `p2pctl tail`.
    #[arg(long, default_value_t = 1_000_000)]
    lines: usize,
    /// 16 KiB messages sent one way.
    #[arg(long, default_value_t = 16384)]
    big: usize,
    /// Pair/unpair cycles for the fd and RSS growth check.
    #[arg(long, default_value_t = 500)]
    cycles: usize,
    /// How long the CPU of a connected, quiet daemon is measured.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    idle_window: Duration,
    /// Run signald with its default per-connection rate limit (100 frames/s,
    /// burst 200). Back-to-back pair/unpair cycles exceed it after ~80
    /// cycles, so by default the limit is raised: the cycles measure p2pd's
    /// leaks, not signald's limiter.
    #[arg(long)]
    default_rate_limit: bool,
    /// How long one throughput run may go without progress before it is
    /// declared stalled.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    stall: Duration,
}

/// Bound for any single awaited state.
const WAIT: Duration = Duration::from_secs(30);

/// Processes started by the bench and its temporary directory: all killed
/// and removed on drop, whatever the way out.
struct Procs {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Procs {
    fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    fn dump_logs(&self) {
        for (name, _) in &self.children {
            let text = std::fs::read_to_string(self.log(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            eprintln!("----- last lines of {name}'s log -----");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }

    /// SIGTERM, then SIGKILL after a bounded wait.
    fn stop_all(&mut self) {
        for (_, c) in &self.children {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, c) in &mut self.children {
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        if !self.children.is_empty() && std::thread::panicking() {
            self.dump_logs();
        }
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One JSON-lines connection to a control socket.
struct Ctl {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Ctl {
    fn connect(path: &Path) -> anyhow::Result<Self> {
        let s =
            UnixStream::connect(path).with_context(|| format!("connecting {}", path.display()))?;
        s.set_read_timeout(Some(WAIT))?;
        s.set_write_timeout(Some(WAIT))?;
        Ok(Self {
            r: BufReader::with_capacity(1 << 20, s.try_clone()?),
            w: s,
        })
    }

    fn send_line(&mut self, req: &Value) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        self.w.write_all(&line)?;
        Ok(())
    }

    fn read_value(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        if self
            .r
            .read_line(&mut line)
            .context("reading the control socket")?
            == 0
        {
            bail!("p2pd closed the control connection");
        }
        serde_json::from_str(&line).with_context(|| format!("bad line {line:?}"))
    }

    /// Sends one request, returns the successful reply or the error as Err.
    fn call(&mut self, req: &Value) -> anyhow::Result<Value> {
        self.send_line(req)?;
        let v = self.read_value()?;
        if v["ok"] != true {
            bail!("{req} failed: {}", v["error"]);
        }
        Ok(v)
    }

    fn status(&mut self) -> anyhow::Result<Status> {
        let v = self.call(&json!({"cmd": "status"}))?;
        serde_json::from_value(v["status"].clone()).context("status object")
    }

    /// A follower: `tail` with no replay; events come from `next_event`.
    fn follower(path: &Path) -> anyhow::Result<Self> {
        let mut c = Self::connect(path)?;
        c.call(&json!({"cmd": "tail", "replay": 0, "follow": true}))?;
        Ok(c)
    }

    /// The next message text, skipping other events; `lagged` is an error.
    fn next_message(&mut self) -> anyhow::Result<String> {
        loop {
            let v = self.read_value()?;
            match v["event"].as_str() {
                Some("message") => {
                    return v["text"].as_str().map(str::to_string).context("no text");
                }
                Some("lagged") => bail!("follower lagged: {v}"),
                _ => {}
            }
        }
    }
}

struct Daemon {
    id: String,
    pid: u32,
    socket: PathBuf,
    ctl: Ctl,
}

impl Daemon {
    fn start(cli: &Cli, procs: &mut Procs, url: &str, id: &str) -> anyhow::Result<Self> {
        let home = procs.dir.join(id);
        std::fs::DirBuilder::new().mode(0o700).create(&home)?;
        let socket = home.join("p2pd.sock");
        let name = format!("p2pd-{id}");
        let child = Command::new(&cli.p2pd)
            .args(["--server", url, "--id", id, "--bind", "127.0.0.1"])
            .arg("--socket")
            .arg(&socket)
            .env("XDG_STATE_HOME", home.join("state"))
            .env("P2PD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(File::create(procs.log(&name))?)
            .stderr(File::create(procs.log(&name))?)
            .spawn()
            .with_context(|| format!("starting {}", cli.p2pd.display()))?;
        let pid = child.id();
        procs.children.push((name, child));
        let deadline = Instant::now() + WAIT;
        let mut ctl = loop {
            match Ctl::connect(&socket) {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => return Err(e.context("p2pd never listened")),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        loop {
            if ctl.status()?.server.state == ServerState::Connected {
                break;
            }
            if Instant::now() > deadline {
                bail!("p2pd {id} never connected to signald");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Self {
            id: id.to_string(),
            pid,
            socket,
            ctl,
        })
    }

    fn wait_status(
        &mut self,
        what: &str,
        pred: impl Fn(&Status) -> bool,
    ) -> anyhow::Result<Status> {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.ctl.status()?;
            if pred(&s) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("p2pd {}: never {what}; last status {s:?}", self.id);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn wait_idle(&mut self) -> anyhow::Result<()> {
        self.wait_status("idle", |s| s.link == LinkState::Idle && s.peer.is_none())?;
        Ok(())
    }

    fn wait_open(&mut self) -> anyhow::Result<()> {
        self.wait_status("open", |s| s.link == LinkState::Open)?;
        Ok(())
    }

    /// `pair` with wait; returns the time to its reply and the reply.
    fn pair(&mut self, peer: &str) -> anyhow::Result<(Duration, Value)> {
        let t0 = Instant::now();
        let v = self.ctl.call(&json!({
            "cmd": "pair", "peer_id": peer, "wait": true, "timeout_ms": 20_000
        }))?;
        let dt = t0.elapsed();
        if v["pair"]["state"] != "open" {
            bail!("pair replied {v}");
        }
        Ok((dt, v))
    }

    fn unpair(&mut self) -> anyhow::Result<()> {
        self.ctl.call(&json!({"cmd": "unpair"}))?;
        Ok(())
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn rss_mib(&self) -> anyhow::Result<f64> {
        Ok(procfs::rss_bytes(self.pid)? as f64 / 1048576.0)
    }
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

fn rcvbuf_errors() -> anyhow::Result<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp")?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (head, vals) = (udp.next().context("Udp:")?, udp.next().context("Udp:")?);
    let i = head
        .split_whitespace()
        .position(|h| h == "RcvbufErrors")
        .context("no RcvbufErrors")?;
    Ok(vals.split_whitespace().nth(i).context("value")?.parse()?)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|x| x.1.trim().to_string())
            })
        })
        .unwrap_or_default();
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    format!(
        "nproc {}, CPU {cpu}, kernel {}, net.core.rmem_max {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        read("/proc/sys/kernel/osrelease"),
        read("/proc/sys/net/core/rmem_max"),
    )
}

struct Row {
    figure: String,
    p2pd: String,
    raw: String,
    target: String,
    met: String,
    comparison: String,
}

fn row(figure: &str, p2pd: String, raw: &str, target: &str, met: &str, cmp: &str) -> Row {
    Row {
        figure: figure.into(),
        p2pd,
        raw: raw.into(),
        target: target.into(),
        met: met.into(),
        comparison: cmp.into(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let dir = std::env::temp_dir().join(format!("p2pd-bench-{}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let mut procs = Procs {
        dir,
        children: Vec::new(),
    };
    let result = run(&cli, &mut procs);
    if result.is_err() {
        procs.dump_logs();
    }
    procs.stop_all();
    result
}

fn run(cli: &Cli, procs: &mut Procs) -> anyhow::Result<()> {
    eprintln!("machine: {}", machine());
    // The raw path first, before any daemon runs.
    let (udp_p50, udp_p99) = udp_rtt(1000)?;
    let tcp_mbs = tcp_throughput(Duration::from_secs(2))?;
    eprintln!(
        "raw: UDP RTT p50 {} p99 {}, TCP {tcp_mbs:.0} MB/s",
        us(udp_p50),
        us(udp_p99)
    );

    let url = start_signald(cli, procs)?;
    let mut a = Daemon::start(cli, procs, &url, "a")?;
    let mut b = Daemon::start(cli, procs, &url, "b")?;
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle = a.rss_mib()?.max(b.rss_mib()?);
    let mut rows = Vec::new();

    // Pair to open.
    let mut opens = Vec::new();
    let mut path = String::new();
    for i in 0..cli.pairings {
        let (dt, v) = a.pair(&b.id).with_context(|| format!("pairing {i}"))?;
        opens.push(dt);
        path = format!(
            "{} {} → {} {}",
            v["pair"]["path"]["local_type"].as_str().unwrap_or("?"),
            v["pair"]["path"]["local_address"].as_str().unwrap_or("?"),
            v["pair"]["path"]["remote_type"].as_str().unwrap_or("?"),
            v["pair"]["path"]["remote_address"].as_str().unwrap_or("?"),
        );
        b.wait_open()?;
        a.unpair()?;
        a.wait_idle()?;
        b.wait_idle()?;
    }
    opens.sort();
    eprintln!("opens: {opens:?}");

    // Connected and quiet: RSS and CPU.
    a.pair(&b.id)?;
    b.wait_open()?;
    std::thread::sleep(Duration::from_secs(1));
    let (cpu_a0, cpu_b0) = (procfs::cpu_time(a.pid)?, procfs::cpu_time(b.pid)?);
    let w0 = Instant::now();
    std::thread::sleep(cli.idle_window);
    let window = w0.elapsed().as_secs_f64();
    let cpu_a = (procfs::cpu_time(a.pid)? - cpu_a0).as_secs_f64() / window * 100.0;
    let cpu_b = (procfs::cpu_time(b.pid)? - cpu_b0).as_secs_f64() / window * 100.0;
    let rss_conn = a.rss_mib()?.max(b.rss_mib()?);
    let cpu_max = cpu_a.max(cpu_b);
    let open_p50 = pct(&opens, 0.5);
    rows.push(row(
        &format!(
            "pair → open (`pair` wait:true to its reply), {} pairings",
            opens.len()
        ),
        format!(
            "p50 {}, p90 {}, max {} (min {})",
            ms(open_p50),
            ms(pct(&opens, 0.9)),
            ms(pct(&opens, 1.0)),
            ms(pct(&opens, 0.0)),
        ),
        "–",
        "p50 ≤ 30 ms",
        met(open_p50 <= Duration::from_millis(30)),
        "aiortc 37 ms; webrtc defaults ~600 ms",
    ));
    rows.push(row(
        &format!("CPU of a connected daemon, no traffic, {window:.0} s"),
        format!("a {cpu_a:.2} %, b {cpu_b:.2} % of a core"),
        "–",
        "≤ 0.5 % of a core",
        met(cpu_max <= 0.5),
        "10 ms keepalive ≈ 1.7 %",
    ));

    // Control-socket round trip alone (status), to split the echo path.
    let mut stat = Vec::new();
    for _ in 0..1000 {
        let t0 = Instant::now();
        a.ctl.call(&json!({"cmd": "status"}))?;
        stat.push(t0.elapsed());
    }
    stat.sort();

    // Echo: a follower on b sends every message back through b's socket.
    let mut b_follow = Ctl::follower(&b.socket)?;
    let b_follow_shut = b_follow.w.try_clone()?;
    let mut b_send = Ctl::connect(&b.socket)?;
    // Receipt times at b's follower, to split the round trip into halves
    // (same process, same monotonic clock).
    let (seen_tx, seen) = mpsc::channel::<Instant>();
    let echo = std::thread::spawn(move || -> anyhow::Result<u64> {
        let mut n = 0;
        while let Ok(text) = b_follow.next_message() {
            let _ = seen_tx.send(Instant::now());
            b_send.call(&json!({"cmd": "send", "text": text}))?;
            n += 1;
        }
        Ok(n)
    });
    let mut a_follow = Ctl::follower(&a.socket)?;
    b.wait_status("counting the echo follower", |s| {
        s.counters.subscribers >= 1
    })?;
    let mut a_send = Ctl::connect(&a.socket)?;
    let mut rtt = Vec::new();
    let mut half = Vec::new();
    for i in 0..(cli.echoes + 50) {
        let text = format!("echo {i}");
        let t0 = Instant::now();
        a_send.call(&json!({"cmd": "send", "text": text}))?;
        let got = a_follow.next_message()?;
        let dt = t0.elapsed();
        let at_b = seen
            .recv_timeout(WAIT)
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
    let (rtt50, rtt99) = (pct(&rtt, 0.5), pct(&rtt, 0.99));
    rows.push(row(
        &format!(
            "round trip daemon to daemon, {} echoes (socket → a → b → follower → b's socket → b → a → follower)",
            rtt.len()
        ),
        format!("p50 {}, p99 {}, max {}", us(rtt50), us(rtt99), us(pct(&rtt, 1.0))),
        &format!("UDP echo p50 {}, p99 {}", us(udp_p50), us(udp_p99)),
        "p50 ≤ 200 µs, p99 ≤ 1 ms",
        met(rtt50 <= Duration::from_micros(200) && rtt99 <= Duration::from_millis(1)),
        "aiortc 0.29 ms",
    ));
    rows.push(row(
        "of which one way: `send` written to a's socket → message read by b's follower",
        format!("p50 {}, p99 {}", us(pct(&half, 0.5)), us(pct(&half, 0.99))),
        &format!("UDP echo p50 / 2 = {}", us(udp_p50 / 2)),
        "–",
        "–",
        "–",
    ));
    rows.push(row(
        "control socket alone: `status` request → reply, 1,000",
        format!("p50 {}, p99 {}", us(pct(&stat, 0.5)), us(pct(&stat, 0.99))),
        "–",
        "–",
        "–",
        "–",
    ));

    // Echo via p2pctl: one `p2pctl send TEXT` process per message.
    let mut ctl_rtt = Vec::new();
    for i in 0..cli.ctl_echoes {
        let text = format!("ctl {i}");
        let t0 = Instant::now();
        let out = Command::new(&cli.p2pctl)
            .arg("--socket")
            .arg(&a.socket)
            .args(["send", &text])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("p2pctl send: {}", String::from_utf8_lossy(&out.stderr));
        }
        let got = a_follow.next_message()?;
        ctl_rtt.push(t0.elapsed());
        if got != text {
            bail!("p2pctl echo {i}: got {got:?}");
        }
    }
    ctl_rtt.sort();
    if !ctl_rtt.is_empty() {
        rows.push(row(
            &format!(
                "round trip via `p2pctl send TEXT` (one process spawn per message), {} echoes",
                ctl_rtt.len()
            ),
            format!(
                "p50 {}, p99 {} (process spawn dominated)",
                ms(pct(&ctl_rtt, 0.5)),
                ms(pct(&ctl_rtt, 0.99))
            ),
            "–",
            "–",
            "–",
            "–",
        ));
    }
    b_follow_shut.shutdown(std::net::Shutdown::Both)?;
    let echoed = echo
        .join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    drop(a_follow);
    drop(a_send);
    eprintln!("echoed {echoed}");

    // One-way throughput through p2pctl send (stdin) → p2pctl tail.
    let tcp = format!("TCP 16 KiB writes {tcp_mbs:.0} MB/s");
    if cli.lines > 0 {
        let t = one_way(cli, &mut a, &mut b, cli.lines, 100)?;
        rows.push(row(
            &format!(
                "{} × 100-byte lines, `p2pctl send` (stdin) → `p2pctl tail`",
                cli.lines
            ),
            t.describe(),
            &tcp,
            "≥ 100,000 lines/s, complete, in order",
            met(t.ok() && t.per_sec >= 100_000.0),
            "–",
        ));
    }
    if cli.big > 0 {
        let t = one_way(cli, &mut a, &mut b, cli.big, 16384)?;
        rows.push(row(
            &format!(
                "{} × 16 KiB messages, `p2pctl send` (stdin) → `p2pctl tail`",
                cli.big
            ),
            t.describe(),
            &tcp,
            "≥ 100 MB/s, 0 UDP receive drops",
            met(t.ok() && t.mb_s >= 100.0 && t.drops == 0),
            "aiortc 15.7 MB/s; webrtc defaults 3-16 MB/s",
        ));
    }
    let rss_after_traffic = a.rss_mib()?.max(b.rss_mib()?);
    rows.push(row(
        "daemon RSS (larger of the two): idle / connected / connected after the traffic above",
        format!("{rss_idle:.1} / {rss_conn:.1} / {rss_after_traffic:.1} MiB"),
        "–",
        "≤ 15 MiB idle, ≤ 30 MiB connected",
        match (
            rss_idle <= 15.0 && rss_conn <= 30.0,
            rss_after_traffic <= 30.0,
        ) {
            (true, true) => "yes",
            (true, false) => "before traffic; **no** after it",
            _ => "**no**",
        },
        "–",
    ));

    // Pair/unpair cycles.
    a.unpair()?;
    a.wait_idle()?;
    b.wait_idle()?;
    std::thread::sleep(Duration::from_millis(500));
    let before = snapshot(&a, &b)?;
    let mut mid = None;
    let mut cycle_opens = Vec::new();
    for i in 0..cli.cycles {
        let (dt, _) = a.pair(&b.id).with_context(|| format!("cycle {i}"))?;
        cycle_opens.push(dt);
        b.wait_open()?;
        a.unpair()?;
        a.wait_idle()?;
        b.wait_idle()?;
        if i + 1 == cli.cycles / 10 {
            std::thread::sleep(Duration::from_millis(500));
            mid = Some(snapshot(&a, &b)?);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = snapshot(&a, &b)?;
    cycle_opens.sort();
    let flat = after.fds_a <= before.fds_a
        && after.fds_b <= before.fds_b
        && after.rss_a - before.rss_a < 1.0
        && after.rss_b - before.rss_b < 1.0;
    let mid = mid
        .map(|m| format!("; after {}: {}", cli.cycles / 10, m.describe()))
        .unwrap_or_default();
    rows.push(row(
        &format!("{} pair/unpair cycles: before → after", cli.cycles),
        format!(
            "before: {}{mid}; after {}: {}; open p50 {} / max {} during the cycles",
            before.describe(),
            cli.cycles,
            after.describe(),
            ms(pct(&cycle_opens, 0.5)),
            ms(pct(&cycle_opens, 1.0)),
        ),
        "–",
        "flat fds and RSS",
        met(flat),
        "–",
    ));

    println!("machine: {}", machine());
    println!(
        "load average at the end (other tenants included): {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!("ICE path: {path}");
    println!();
    println!("| figure | p2pd | raw loopback | target | met? | comparison |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.figure, r.p2pd, r.raw, r.target, r.met, r.comparison
        );
    }
    Ok(())
}

struct Snapshot {
    fds_a: usize,
    fds_b: usize,
    threads_a: usize,
    threads_b: usize,
    rss_a: f64,
    rss_b: f64,
}

impl Snapshot {
    fn describe(&self) -> String {
        format!(
            "fds a {} b {}, threads a {} b {}, RSS a {:.1} b {:.1} MiB",
            self.fds_a, self.fds_b, self.threads_a, self.threads_b, self.rss_a, self.rss_b
        )
    }
}

fn snapshot(a: &Daemon, b: &Daemon) -> anyhow::Result<Snapshot> {
    Ok(Snapshot {
        fds_a: a.fds(),
        fds_b: b.fds(),
        threads_a: a.threads(),
        threads_b: b.threads(),
        rss_a: a.rss_mib()?,
        rss_b: b.rss_mib()?,
    })
}

fn start_signald(cli: &Cli, procs: &mut Procs) -> anyhow::Result<String> {
    let mut child = Command::new(&cli.signald)
        .args(["--listen", "127.0.0.1:0"])
        .args(if cli.default_rate_limit {
            &[][..]
        } else {
            &["--rate-limit", "100000", "--rate-burst", "100000"][..]
        })
        .env("SIGNALD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(procs.log("signald"))?)
        .spawn()
        .with_context(|| format!("starting {}", cli.signald.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    procs.children.push(("signald".into(), child));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so signald never blocks on a full pipe.
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    let line = rx.recv_timeout(WAIT).context("signald printed nothing")?;
    let addr = line
        .trim()
        .strip_prefix("signald listening on ")
        .with_context(|| format!("unexpected readiness line {line:?}"))?;
    Ok(format!("ws://{addr}/ws"))
}

struct OneWay {
    n: usize,
    size: usize,
    received: usize,
    out_of_order: usize,
    secs: f64,
    per_sec: f64,
    mb_s: f64,
    drops: u64,
    send_status: String,
    cpu: String,
    note: String,
}

impl OneWay {
    fn ok(&self) -> bool {
        self.received == self.n && self.out_of_order == 0 && self.note.is_empty()
    }

    fn describe(&self) -> String {
        let lines = if self.size <= 100 {
            format!("{:.0} lines/s, ", self.per_sec)
        } else {
            String::new()
        };
        format!(
            "{lines}{:.1} MB/s ({} of {} received, {} out of order/corrupt, {:.2} s); \
             UDP RcvbufErrors +{}; send exit: {}; {}{}",
            self.mb_s,
            self.received,
            self.n,
            self.out_of_order,
            self.secs,
            self.drops,
            self.send_status,
            self.cpu,
            self.note,
        )
    }
}

/// The line for message `i` of a run with `size`-byte messages: the index in
/// ten digits, then filler.
fn payload(i: usize, size: usize, buf: &mut Vec<u8>) {
    buf.clear();
    write!(buf, "{i:010}").unwrap();
    let fill = b"abcdefghijklmnopqrstuvwxyz";
    while buf.len() < size {
        buf.push(fill[buf.len() % fill.len()]);
    }
}

/// `n` messages of `size` bytes from `p2pctl send` on a to `p2pctl tail` on
/// b; timed from spawning the sender to the last line at the receiver.
fn one_way(
    cli: &Cli,
    a: &mut Daemon,
    b: &mut Daemon,
    n: usize,
    size: usize,
) -> anyhow::Result<OneWay> {
    let subs = b.ctl.status()?.counters.subscribers;
    let mut tail = Command::new(&cli.p2pctl)
        .arg("--socket")
        .arg(&b.socket)
        .arg("tail")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = tail.stdout.take().context("tail stdout")?;
    let mut err = tail.stderr.take().context("tail stderr")?;
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    b.wait_status("counting the tail", |s| s.counters.subscribers > subs)?;
    let drops0 = rcvbuf_errors()?;
    let (cpu_a0, cpu_b0) = (procfs::cpu_time(a.pid)?, procfs::cpu_time(b.pid)?);
    let (progress_tx, progress) = mpsc::channel::<(usize, usize)>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(1 << 20, out);
        let mut line = Vec::with_capacity(size + 1);
        let mut want = Vec::with_capacity(size);
        let (mut got, mut bad) = (0usize, 0usize);
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            payload(got, size, &mut want);
            if line != want {
                bad += 1;
            }
            got += 1;
            if got % 1024 == 0 || got == n {
                let _ = progress_tx.send((got, bad));
            }
            if got == n {
                break;
            }
        }
        let _ = progress_tx.send((got, bad));
    });
    let t0 = Instant::now();
    let mut send = Command::new(&cli.p2pctl)
        .arg("--socket")
        .arg(&a.socket)
        .arg("send")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = BufWriter::with_capacity(1 << 20, send.stdin.take().context("stdin")?);
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(size + 1);
        for i in 0..n {
            payload(i, size, &mut buf);
            buf.push(b'\n');
            stdin.write_all(&buf)?;
        }
        stdin.flush()
    });
    let (mut got, mut bad) = (0, 0);
    let mut note = String::new();
    let mut last = Instant::now();
    while got < n {
        match progress.recv_timeout(Duration::from_millis(200)) {
            Ok((g, b)) => {
                if g > got {
                    last = Instant::now();
                }
                (got, bad) = (g, b);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if last.elapsed() > cli.stall {
            note = format!("; STALLED: no line for {:?}", cli.stall);
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    // CPU of each process over the run, in % of a core (the four share 2).
    let share = |d: Duration| d.as_secs_f64() / secs * 100.0;
    let cpu = format!(
        "CPU % of a core: p2pctl send {:.0}, p2pd a {:.0}, p2pd b {:.0}, p2pctl tail {:.0}",
        share(procfs::cpu_time(send.id()).unwrap_or_default()),
        share(procfs::cpu_time(a.pid)? - cpu_a0),
        share(procfs::cpu_time(b.pid)? - cpu_b0),
        share(procfs::cpu_time(tail.id()).unwrap_or_default()),
    );
    // Let in-flight datagrams land before reading the drop counter.
    std::thread::sleep(Duration::from_millis(200));
    let drops = rcvbuf_errors()?.saturating_sub(drops0);
    let _ = tail.kill();
    let _ = tail.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    let send_status = loop {
        if let Some(st) = send.try_wait()? {
            break if st.success() {
                "0".to_string()
            } else {
                format!("{st}")
            };
        }
        if Instant::now() > deadline {
            let _ = send.kill();
            let _ = send.wait();
            break "killed (still running 10 s after the receiver stopped)".to_string();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut send_err = String::new();
    if let Some(mut e) = send.stderr.take() {
        let _ = e.read_to_string(&mut send_err);
    }
    let _ = writer.join();
    let _ = reader.join();
    let tail_err = err_thread.join().unwrap_or_default();
    for (who, e) in [("send", send_err.trim()), ("tail", tail_err.trim())] {
        if !e.is_empty() && (who != "tail" || !e.contains("closed")) {
            eprintln!("p2pctl {who} stderr: {e}");
            if who == "send" || e.contains("missed") {
                note.push_str(&format!("; p2pctl {who}: {e}"));
            }
        }
    }
    let t = OneWay {
        n,
        size,
        received: got,
        out_of_order: bad,
        secs,
        per_sec: got as f64 / secs,
        mb_s: (got * size) as f64 / secs / 1e6,
        drops,
        send_status,
        cpu,
        note,
    };
    eprintln!("one way {size} B: {}", t.describe());
    Ok(t)
}

/// p50/p99 of `n` 100-byte datagrams echoed by a second thread on loopback.
fn udp_rtt(n: usize) -> anyhow::Result<(Duration, Duration)> {
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
fn tcp_throughput(dur: Duration) -> anyhow::Result<f64> {
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
