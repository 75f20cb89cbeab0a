//! `signald-bench`: runs signald under `signald-load` processes and prints a
//! Markdown table of what the server costs (RSS and CPU from `/proc`).
//!
//! Each scenario gets a fresh server. Idle clients are spread over several
//! load processes (at most `--per-process` each, under the 20,000-fd limit),
//! each from its own 127.0.0.x source address so ephemeral ports never run out.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use p2p_bench::procfs;
use serde_json::Value;

#[derive(Parser)]
struct Cli {
    /// The signald binary.
    #[arg(long)]
    signald: PathBuf,
    /// The signald-load binary.
    #[arg(long)]
    load: PathBuf,
    /// Idle client counts to measure (0 skips).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,19000")]
    idle: Vec<usize>,
    /// Idle clients per load process (the fd limit is 20,000 per process).
    #[arg(long, default_value_t = 5000)]
    per_process: usize,
    /// Ping interval for the idle runs.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    ping_interval: Duration,
    /// How long idle CPU is measured.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    idle_window: Duration,
    /// Pair counts for the relay runs (0 skips).
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    relay: Vec<usize>,
    /// Relay measurement time.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    relay_duration: Duration,
    /// Pairs for the latency run (0 skips it).
    #[arg(long, default_value_t = 1000)]
    latency_pairs: usize,
    /// Load processes sharing the latency pairs.
    #[arg(long, default_value_t = 2)]
    latency_procs: usize,
    /// Latency measurement time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    latency_duration: Duration,
    /// Also measure two `--cluster` nodes on a redis-server started here:
    /// same-node against cross-node relay and latency, pairings per
    /// second across nodes, idle clients per node.
    #[arg(long)]
    cluster: bool,
    /// The redis-server binary for `--cluster`.
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// Pairs for the cluster relay runs.
    #[arg(long, default_value_t = 100)]
    cluster_pairs: usize,
    /// Pairs for the cluster latency runs (10 frames/s each).
    #[arg(long, default_value_t = 200)]
    cluster_latency_pairs: usize,
    /// Idle clients on one cluster node.
    #[arg(long, default_value_t = 5000)]
    cluster_idle: usize,
    /// Each cluster measurement's length.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    cluster_duration: Duration,
}

/// A signald under test, started with the testkit (readiness line, killed
/// on drop) plus what the bench reads from it.
struct Server {
    signald: p2p_testkit::Signald,
    url: String,
}

impl Server {
    fn start(bin: &PathBuf, args: &[&str]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        // Every client comes from 127.0.0.1: the per-address limits that
        // guard a public server would measure themselves, not signald.
        cmd.args(["--listen", "127.0.0.1:0", "--max-clients", "100000"])
            .args(["--max-conns-per-ip", "0", "--max-handshakes-per-ip", "0"])
            .args(["--registrations-per-ip", "0"])
            .args(args)
            .env("SIGNALD_LOG", "warn");
        let signald = p2p_testkit::Signald::spawn(cmd);
        Ok(Self {
            url: signald.url(),
            signald,
        })
    }

    fn pid(&self) -> u32 {
        self.signald.proc().pid() as u32
    }

    fn metric(&self, name: &str) -> anyhow::Result<f64> {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(self.signald.addr())?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .with_context(|| format!("metric {name}"))?
            .parse()
            .context("metric value")
    }

    fn stop(mut self) -> anyhow::Result<()> {
        self.signald.proc().signal(libc::SIGTERM);
        let status = self.signald.proc_mut().wait_exit();
        if !status.success() {
            bail!("signald exited with {status}");
        }
        Ok(())
    }
}

struct Load {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
}

impl Load {
    fn start(bin: &PathBuf, args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            stdin: child.stdin.take(),
            out: BufReader::new(child.stdout.take().context("stdout")?),
            child,
        })
    }

    /// The next JSON line, which must be `event`.
    fn expect(&mut self, event: &str) -> anyhow::Result<Value> {
        let mut line = String::new();
        if self.out.read_line(&mut line)? == 0 {
            bail!("load process ended before {event:?}");
        }
        let v: Value = serde_json::from_str(&line).with_context(|| format!("line {line:?}"))?;
        if v["event"] != event {
            bail!("expected {event:?}, got {v}");
        }
        Ok(v)
    }

    fn finish(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            bail!("signald-load exited with {status}");
        }
        Ok(())
    }
}

/// A fresh 127.x.y.z source address per scenario and load process: a port
/// reused towards the server while the server side still holds it in
/// TIME_WAIT (from an earlier run) costs a 1 s SYN retransmission.
fn source_ip(scenario: usize, k: usize) -> String {
    let run = std::process::id() % 250 + 1;
    format!("127.{run}.{}.{}", scenario % 250, 10 + k)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    println!("| scenario | figure |");
    println!("| --- | --- |");
    let mut scenario = 0;
    // A count of 0 skips that scenario.
    for &n in cli.idle.iter().filter(|&&n| n > 0) {
        scenario += 1;
        idle(&cli, n, scenario)?;
    }
    for &pairs in cli.relay.iter().filter(|&&n| n > 0) {
        scenario += 1;
        relay(&cli, pairs, scenario)?;
    }
    if cli.latency_pairs > 0 {
        scenario += 1;
        latency(&cli, scenario)?;
    }
    if cli.cluster {
        cluster(&cli, scenario + 1)?;
    }
    Ok(())
}

/// A redis-server for the cluster runs: loopback, a free port, no
/// persistence, a temporary directory; killed on drop.
struct Redis {
    proc: p2p_testkit::Proc,
    url: String,
    dir: PathBuf,
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.proc.signal(libc::SIGKILL);
        self.proc.wait_exit();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Redis {
    fn start(bin: &PathBuf) -> anyhow::Result<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("signald-bench-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir);
        let proc = p2p_testkit::Proc::spawn("redis-server", cmd);
        proc.wait_line("Ready to accept connections");
        Ok(Redis {
            proc,
            url: format!("redis://127.0.0.1:{port}/"),
            dir,
        })
    }

    fn pid(&self) -> u32 {
        self.proc.pid() as u32
    }
}

/// CPU seconds of each process since `cpu0`, per `n` events, in µs.
fn per_event(pids: &[u32], cpu0: &[Duration], n: f64) -> anyhow::Result<Vec<f64>> {
    pids.iter()
        .zip(cpu0)
        .map(|(p, c0)| Ok((procfs::cpu_time(*p)? - *c0).as_secs_f64() * 1e6 / n.max(1.0)))
        .collect()
}

fn cpus(pids: &[u32]) -> anyhow::Result<Vec<Duration>> {
    pids.iter().map(|p| procfs::cpu_time(*p)).collect()
}

fn cluster(cli: &Cli, scenario: usize) -> anyhow::Result<()> {
    let redis = Redis::start(&cli.redis_server)?;
    let node = |name: &str| {
        Server::start(
            &cli.signald,
            &["--cluster", &redis.url, "--node-id", name]
                .iter()
                .chain(&NO_RATE_LIMITS)
                .copied()
                .collect::<Vec<_>>(),
        )
    };
    let (n1, n2) = (node("n1")?, node("n2")?);
    let pids = [n1.pid(), n2.pid(), redis.pid()];
    let dur = cli.cluster_duration;
    for (k, (label, b)) in [("same node", &n1.url), ("across nodes", &n2.url)]
        .into_iter()
        .enumerate()
    {
        let mut cpu0 = Vec::new();
        let (frames, secs) = p2p_bench::cluster::relay(
            &n1.url,
            b,
            cli.cluster_pairs,
            8,
            dur,
            &format!("r{k}-"),
            || cpu0 = cpus(&pids).unwrap_or_default(),
        )?;
        let us = per_event(&pids, &cpu0, frames as f64)?;
        println!(
            "| cluster relay, {label}, {} pairs × 8 in flight, candidate-sized JSON | \
             {:.0} frames/s; CPU per frame: node 1 {:.2} µs, node 2 {:.2} µs, redis {:.2} µs \
             (total {:.2} µs) |",
            cli.cluster_pairs,
            frames as f64 / secs,
            us[0],
            us[1],
            us[2],
            us.iter().sum::<f64>(),
        );
        let samples = p2p_bench::cluster::latency(
            &n1.url,
            b,
            cli.cluster_latency_pairs,
            10.0,
            dur,
            &format!("l{k}-"),
        )?;
        let ms = |p: f64| match samples.len() {
            0 => 0.0,
            n => samples[((n as f64 * p) as usize).min(n - 1)] as f64 / 1000.0,
        };
        println!(
            "| cluster latency, {label}, {} pairs × 10 frames/s, send → receipt | \
             {} samples: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms |",
            cli.cluster_latency_pairs,
            samples.len(),
            ms(0.5),
            ms(0.99),
            ms(1.0),
        );
    }
    let cpu0 = cpus(&pids)?;
    let (done, secs) = p2p_bench::cluster::pairings(&n1.url, &n2.url, 50, dur, "p-")?;
    let us = per_event(&pids, &cpu0, done as f64)?;
    println!(
        "| cluster pairings across nodes, 50 pairs pairing and unpairing in a loop | \
         {:.0} pairings/s (each: pair, both `paired`, unpair, the notice); CPU per pairing: \
         node 1 {:.0} µs, node 2 {:.0} µs, redis {:.0} µs |",
        done as f64 / secs,
        us[0],
        us[1],
        us[2],
    );
    if cli.cluster_idle > 0 {
        let (rss0, redis0) = (
            procfs::rss_bytes(n1.pid())?,
            procfs::rss_bytes(redis.pid())?,
        );
        let args: Vec<String> = [
            "--url",
            &n1.url,
            "--source-ip",
            &source_ip(scenario, 0),
            "idle",
            "--clients",
            &cli.cluster_idle.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut l = Load::start(&cli.load, &args)?;
        let v = l.expect("connected")?;
        let connected = v["clients"].as_u64().unwrap_or(0);
        std::thread::sleep(Duration::from_secs(1));
        let cpu0 = cpus(&pids)?;
        let w0 = Instant::now();
        std::thread::sleep(Duration::from_secs(10));
        let window = w0.elapsed().as_secs_f64();
        let pct: Vec<f64> = per_event(&pids, &cpu0, 1.0)?
            .iter()
            .map(|us| us / 1e6 / window * 100.0)
            .collect();
        let rss = procfs::rss_bytes(n1.pid())?;
        let redis_rss = procfs::rss_bytes(redis.pid())?;
        drop(l.stdin.take());
        l.expect("done")?;
        l.finish()?;
        println!(
            "| cluster idle, {connected} clients on node 1 (30 s pings) | node RSS {:.2} KiB/client, \
             redis RSS {:.2} KiB/client; idle CPU node 1 {:.2} %, node 2 {:.2} %, redis {:.2} % \
             of a core over 10 s |",
            rss.saturating_sub(rss0) as f64 / connected.max(1) as f64 / 1024.0,
            redis_rss.saturating_sub(redis0) as f64 / connected.max(1) as f64 / 1024.0,
            pct[0],
            pct[1],
            pct[2],
        );
    }
    n1.stop()?;
    n2.stop()?;
    Ok(())
}

fn idle(cli: &Cli, n: usize, scenario: usize) -> anyhow::Result<()> {
    let interval = humantime::format_duration(cli.ping_interval).to_string();
    let timeout = humantime::format_duration(cli.ping_interval * 3 / 2).to_string();
    let srv = Server::start(
        &cli.signald,
        &["--ping-interval", &interval, "--ping-timeout", &timeout],
    )?;
    std::thread::sleep(Duration::from_millis(200));
    let rss0 = procfs::rss_bytes(srv.pid())?;
    let procs = n.div_ceil(cli.per_process);
    let mut loads = Vec::new();
    for k in 0..procs {
        let share = n / procs + usize::from(k < n % procs);
        let args: Vec<String> = [
            "--url",
            &srv.url,
            "--source-ip",
            &source_ip(scenario, k),
            "idle",
            "--clients",
            &share.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        loads.push(Load::start(&cli.load, &args)?);
    }
    let t0 = Instant::now();
    let mut connected = 0u64;
    let mut failed = 0u64;
    for l in &mut loads {
        let v = l.expect("connected")?;
        connected += v["clients"].as_u64().unwrap_or(0);
        failed += v["failed"].as_u64().unwrap_or(0);
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    // Let the first round of pings pass before measuring.
    std::thread::sleep(Duration::from_secs(1));
    let cpu0 = procfs::cpu_time(srv.pid())?;
    let w0 = Instant::now();
    std::thread::sleep(cli.idle_window);
    let cpu = procfs::cpu_time(srv.pid())? - cpu0;
    let window = w0.elapsed();
    let rss = procfs::rss_bytes(srv.pid())?;
    let timeouts = srv.metric("signald_timeouts_total")?;
    let clients_now = srv.metric("signald_clients")?;
    let mut closes = 0;
    let mut pings = 0;
    for mut l in loads {
        drop(l.stdin.take());
        let v = l.expect("done")?;
        closes += v["unexpected_closes"].as_u64().unwrap_or(0);
        pings += v["pings"].as_u64().unwrap_or(0);
        l.finish()?;
    }
    srv.stop()?;
    let per_client = (rss.saturating_sub(rss0)) as f64 / connected.max(1) as f64 / 1024.0;
    let cpu_pct = cpu.as_secs_f64() / window.as_secs_f64() * 100.0;
    println!(
        "| idle {n} clients ({procs} load processes), pings every {interval} | \
         {connected} connected ({failed} failed) in {connect_secs:.1} s = {:.0} conn/s; \
         server RSS {:.1} MiB → {per_client:.2} KiB/client; idle CPU {cpu_pct:.2}% of a core \
         over {:.0} s; {pings} pings answered; false timeouts {timeouts} (server) + \
         {closes} unexpected closes; clients at end {clients_now} |",
        connected as f64 / connect_secs,
        rss as f64 / 1048576.0,
        window.as_secs_f64(),
    );
    Ok(())
}

/// The per-connection rate limits (100 frames/s and 64 KiB/s by default)
/// out of the way: the relay figures would measure them.
const NO_RATE_LIMITS: [&str; 8] = [
    "--rate-limit",
    "100000000",
    "--rate-burst",
    "100000000",
    "--rate-limit-bytes",
    "4000000000",
    "--rate-burst-bytes",
    "4000000000",
];

fn relay_server(cli: &Cli) -> anyhow::Result<Server> {
    Server::start(&cli.signald, &NO_RATE_LIMITS)
}

fn relay(cli: &Cli, pairs: usize, scenario: usize) -> anyhow::Result<()> {
    let srv = relay_server(cli)?;
    let window = if pairs == 1 { 64 } else { 8 };
    let args: Vec<String> = [
        "--url",
        &srv.url,
        "--source-ip",
        &source_ip(scenario, 0),
        "relay",
        "--pairs",
        &pairs.to_string(),
        "--window",
        &window.to_string(),
        "--duration",
        &humantime::format_duration(cli.relay_duration).to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut l = Load::start(&cli.load, &args)?;
    l.expect("connected")?;
    l.expect("start")?;
    let cpu0 = procfs::cpu_time(srv.pid())?;
    let v = l.expect("done")?;
    let cpu = procfs::cpu_time(srv.pid())? - cpu0;
    l.finish()?;
    let relayed = srv.metric("signald_frames_relayed_total")?;
    srv.stop()?;
    let frames = v["frames"].as_f64().unwrap_or(0.0);
    let secs = v["secs"].as_f64().unwrap_or(1.0);
    let us = cpu.as_secs_f64() * 1e6 / frames.max(1.0);
    println!(
        "| relay {pairs} pair(s), {window} frames in flight per pair, candidate-sized JSON | \
         {:.0} frames/s over {secs:.1} s ({relayed} relayed in all); server CPU {:.2} s \
         = {:.4} CPU s per 1,000 frames = {us:.2} µs/frame |",
        frames / secs,
        cpu.as_secs_f64(),
        us / 1000.0,
    );
    Ok(())
}

fn latency(cli: &Cli, scenario: usize) -> anyhow::Result<()> {
    let srv = relay_server(cli)?;
    let procs = cli.latency_procs.max(1);
    let mut loads = Vec::new();
    for k in 0..procs {
        let pairs = cli.latency_pairs / procs + usize::from(k < cli.latency_pairs % procs);
        let args: Vec<String> = [
            "--url",
            &srv.url,
            "--source-ip",
            &source_ip(scenario, k),
            "--prefix",
            &format!("lat{k}-"),
            "latency",
            "--pairs",
            &pairs.to_string(),
            "--rate",
            "10",
            "--duration",
            &humantime::format_duration(cli.latency_duration).to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        loads.push(Load::start(&cli.load, &args)?);
    }
    for l in &mut loads {
        l.expect("connected")?;
    }
    for l in &mut loads {
        l.expect("start")?;
    }
    let cpu0 = procfs::cpu_time(srv.pid())?;
    let t0 = Instant::now();
    let mut samples: Vec<u64> = Vec::new();
    for l in &mut loads {
        let v = l.expect("done")?;
        samples.extend(
            v["latencies_us"]
                .as_array()
                .context("latencies_us")?
                .iter()
                .filter_map(Value::as_u64),
        );
    }
    let cpu = procfs::cpu_time(srv.pid())? - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    for l in loads {
        l.finish()?;
    }
    srv.stop()?;
    samples.sort_unstable();
    let ms = |p: f64| -> f64 {
        if samples.is_empty() {
            return 0.0;
        }
        samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)] as f64 / 1000.0
    };
    println!(
        "| latency {} pairs × 10 frames/s ({procs} load processes), send → receipt | \
         {} samples: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms; \
         server CPU {:.1}% of a core |",
        cli.latency_pairs,
        samples.len(),
        ms(0.50),
        ms(0.99),
        ms(0.999),
        ms(1.0),
        cpu.as_secs_f64() / wall * 100.0,
    );
    Ok(())
}
