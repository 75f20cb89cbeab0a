//! `signald-bench`: runs signald under `signald-load` processes and prints a
//! Markdown table of what the server costs (RSS and CPU from `/proc`).
//!
//! With `--peerjs PATH` (the `peerjs` command of npm's `peer`), every idle,
//! relay and latency scenario runs against the PeerJS server too, in the
//! same run, and a last table sets each figure beside its target and its
//! ratio to PeerJS's.
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
    /// Client counts for signald clients held idle after an offer and an
    /// answer (0 skips): p2pd stays on its signaling link once paired.
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    signaled: Vec<usize>,
    /// The size of that offer's and answer's SDP.
    #[arg(long, default_value_t = 4096)]
    sdp_bytes: usize,
    /// Idle clients per load process (the fd limit is 20,000 per process).
    #[arg(long, default_value_t = 5000)]
    per_process: usize,
    /// Ping interval for the idle runs.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    ping_interval: Duration,
    /// How long idle clients are held before RSS is read (idle CPU is
    /// measured over it): two ping intervals and 2 s by default.
    #[arg(long, default_value = "12s", value_parser = humantime::parse_duration)]
    idle_window: Duration,
    /// Pair counts for the relay runs (0 skips).
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    relay: Vec<usize>,
    /// Frames in flight per pair in the relay runs.
    #[arg(long, default_value_t = 64)]
    relay_window: usize,
    /// Relay measurement time.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    relay_duration: Duration,
    /// Rounds of each relay run, signald then PeerJS in each; the summary
    /// takes the median round (by the ratio when PeerJS runs): the host's
    /// phases moved one server's figure by a third between runs a minute
    /// apart.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    relay_rounds: u64,
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
    /// Rounds of the cluster relay runs, same node then across nodes in
    /// each; the summary takes the median round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    cluster_rounds: u64,
    /// The PeerJS server's command (`node_modules/.bin/peerjs` of npm's
    /// `peer`): measured beside signald.
    #[arg(long)]
    peerjs: Option<PathBuf>,
}

/// The server a scenario measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Signald,
    Peerjs,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Signald => "signald",
            Kind::Peerjs => "PeerJS",
        }
    }

    /// `signald-load --protocol`.
    fn proto_arg(self) -> &'static str {
        match self {
            Kind::Signald => "signald",
            Kind::Peerjs => "peerjs",
        }
    }
}

/// A server under test, started with the testkit (readiness line, killed
/// on drop) plus what the bench reads from it.
struct Server {
    proc: Started,
    url: String,
}

enum Started {
    Signald(p2p_testkit::Signald),
    Peerjs(p2p_testkit::Proc),
}

impl Server {
    /// Signald, or the PeerJS server, for a scenario; `signald_args` only
    /// for signald. PeerJS gets what the issue's method gave it: its
    /// liveness timeout at 10 s (two keepalives) and no client limit.
    fn of(cli: &Cli, kind: Kind, signald_args: &[&str]) -> anyhow::Result<Self> {
        let Some(bin) = cli.peerjs.as_ref().filter(|_| kind == Kind::Peerjs) else {
            return Server::start(&cli.signald, signald_args);
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = Command::new(bin);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--key", "peerjs", "--path", "/"])
            .args(["--alive_timeout", "10000", "--concurrent_limit", "10000000"]);
        let proc = p2p_testkit::Proc::spawn("peerjs", cmd);
        proc.wait_line("Started PeerServer");
        Ok(Self {
            proc: Started::Peerjs(proc),
            url: format!("ws://127.0.0.1:{port}/peerjs"),
        })
    }

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
            proc: Started::Signald(signald),
        })
    }

    fn pid(&self) -> u32 {
        match &self.proc {
            Started::Signald(s) => s.proc().pid() as u32,
            Started::Peerjs(p) => p.pid() as u32,
        }
    }

    /// One of signald's metrics; `None` for PeerJS, which has none.
    fn metric(&self, name: &str) -> anyhow::Result<Option<f64>> {
        use std::io::Read;
        let Started::Signald(signald) = &self.proc else {
            return Ok(None);
        };
        let mut s = std::net::TcpStream::connect(signald.addr())?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .with_context(|| format!("metric {name}"))?
            .parse()
            .map(Some)
            .context("metric value")
    }

    fn stop(self) -> anyhow::Result<()> {
        let Started::Signald(mut signald) = self.proc else {
            // The PeerJS server is killed on drop.
            return Ok(());
        };
        signald.proc().signal(libc::SIGTERM);
        let status = signald.proc_mut().wait_exit();
        if !status.success() {
            bail!("signald exited with {status}");
        }
        Ok(())
    }
}

/// A figure, or a dash where a server has none.
fn or_dash(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v}"))
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

/// What the last table compares: each figure of signald, and of PeerJS
/// where it ran.
#[derive(Default)]
struct Summary {
    /// (clients, signald KiB per client, PeerJS KiB per client)
    idle: Vec<(usize, f64, Option<f64>)>,
    /// (clients, signald KiB per client idle after an offer and answer)
    signaled: Vec<(usize, f64)>,
    relay: Vec<RelayFigures>,
    /// signald's p50, p99 and CPU per frame, and PeerJS's
    latency: Option<(Latency, Option<Latency>)>,
    cluster: Option<ClusterFigures>,
}

/// Sorts `rounds` by `key`, lowest first, and returns the median one (the
/// lower middle of an even count): what each multi-round figure reports.
fn median_round<T: Copy>(rounds: &mut [T], key: impl Fn(&T) -> f64) -> T {
    rounds.sort_by(|a, b| key(a).total_cmp(&key(b)));
    rounds[(rounds.len() - 1) / 2]
}

/// One relay scenario's figures: the median round's.
struct RelayFigures {
    pairs: usize,
    /// signald's and PeerJS's CPU per frame, in µs.
    ours: f64,
    theirs: Option<f64>,
    /// Every round's signald ÷ PeerJS (or signald's figure alone),
    /// lowest first.
    rounds: Vec<f64>,
}

impl RelayFigures {
    /// The median round of `rounds`, each signald's and PeerJS's figure.
    fn median(pairs: usize, mut rounds: Vec<(f64, Option<f64>)>) -> RelayFigures {
        let key = |&(ours, theirs): &(f64, Option<f64>)| theirs.map_or(ours, |t| ours / t);
        let (ours, theirs) = median_round(&mut rounds, key);
        RelayFigures {
            pairs,
            ours,
            theirs,
            rounds: rounds.iter().map(key).collect(),
        }
    }
}

/// The latency run: p50 and p99 in ms, and the server's CPU per frame in
/// µs at that fixed rate.
#[derive(Clone, Copy)]
struct Latency {
    p50: f64,
    p99: f64,
    cpu_us: f64,
    /// The host's steal during the run, in percent of the machine's time.
    steal: f64,
}

struct ClusterFigures {
    /// The median round's figures.
    same_node_us: f64,
    across_us: f64,
    /// Every round's across ÷ same node, lowest first.
    ratios: Vec<f64>,
    pairings_per_s: f64,
    nodes: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let kinds: &[Kind] = if cli.peerjs.is_some() {
        &[Kind::Signald, Kind::Peerjs]
    } else {
        &[Kind::Signald]
    };
    let mut sum = Summary::default();
    println!("| scenario | figure |");
    println!("| --- | --- |");
    work_per_frame();
    let mut scenario = 0;
    // A count of 0 skips that scenario.
    for &n in cli.idle.iter().filter(|&&n| n > 0) {
        let mut got = Vec::new();
        for &kind in kinds {
            scenario += 1;
            got.push(idle(&cli, kind, n, scenario)?);
        }
        sum.idle.push((n, got[0], got.get(1).copied()));
    }
    for &n in cli.signaled.iter().filter(|&&n| n > 0) {
        scenario += 1;
        let ours = idle_after(&cli, Kind::Signald, n, scenario, Some(cli.sdp_bytes))?;
        sum.signaled.push((n, ours));
    }
    for &pairs in cli.relay.iter().filter(|&&n| n > 0) {
        let mut rounds = Vec::new();
        for round in 1..=cli.relay_rounds {
            let mut got = Vec::new();
            for &kind in kinds {
                scenario += 1;
                got.push(relay(&cli, kind, pairs, scenario, round)?);
            }
            rounds.push((got[0], got.get(1).copied()));
        }
        sum.relay.push(RelayFigures::median(pairs, rounds));
    }
    if cli.latency_pairs > 0 {
        let mut got = Vec::new();
        for &kind in kinds {
            scenario += 1;
            got.push(latency(&cli, kind, scenario)?);
        }
        sum.latency = Some((got[0], got.get(1).copied()));
    }
    if cli.cluster {
        sum.cluster = Some(cluster(&cli, scenario + 1)?);
    }
    summary(&cli, &sum);
    Ok(())
}

/// The last table: each figure beside its target and its ratio to PeerJS.
fn summary(cli: &Cli, sum: &Summary) {
    println!();
    println!("| figure | signald | PeerJS | signald ÷ PeerJS | target | met? |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let ratio = |a: f64, b: Option<f64>| b.map_or("–".into(), |b| format!("{:.2}", a / b));
    let yes = |ok: bool| if ok { "yes" } else { "**no**" };
    for &(n, ours, theirs) in &sum.idle {
        let target = if n >= 10_000 { "≤ 3 KiB" } else { "–" };
        let met = if n >= 10_000 { yes(ours <= 3.0) } else { "–" };
        println!(
            "| memory per idle client, {n} clients | {ours:.2} KiB | {} | {} | {target} | {met} |",
            theirs.map_or("–".into(), |t| format!("{t:.2} KiB")),
            ratio(ours, theirs),
        );
    }
    for &(n, ours) in &sum.signaled {
        println!(
            "| memory per idle client after an offer and an answer of {} bytes, {n} clients | {ours:.2} KiB | – | – | – | – |",
            cli.sdp_bytes,
        );
    }
    for r in &sum.relay {
        let (pairs, ours, theirs) = (r.pairs, r.ours, r.theirs);
        let (target, met) = match (pairs >= 1000, theirs) {
            (true, Some(t)) => ("≤ 0.15 of PeerJS", yes(ours / t <= 0.15)),
            (true, None) => ("≤ 0.15 of PeerJS", "– (no PeerJS run)"),
            (false, _) => ("–", "–"),
        };
        let rounds: Vec<String> = r.rounds.iter().map(|x| format!("{x:.3}")).collect();
        println!(
            "| CPU per relayed frame, {pairs} pairs × {} in flight, the median of {} rounds | {ours:.2} µs | {} | {} (rounds {}) | {target} | {met} |",
            cli.relay_window,
            r.rounds.len(),
            theirs.map_or("–".into(), |t| format!("{t:.2} µs")),
            theirs.map_or("–".into(), |t| format!("{:.3}", ours / t)),
            rounds.join(", "),
        );
    }
    if let Some((ours, theirs)) = sum.latency {
        println!(
            "| relay latency p50 / p99, {} pairs × 10 frames/s | {:.3} / {:.3} ms (host steal {:.1}%) | {} | {} | p99 < 1 ms | {} |",
            cli.latency_pairs,
            ours.p50,
            ours.p99,
            ours.steal,
            theirs.map_or("–".into(), |t| format!("{:.3} / {:.3} ms", t.p50, t.p99)),
            ratio(ours.p99, theirs.map(|t| t.p99)),
            yes(ours.p99 < 1.0),
        );
        println!(
            "| CPU per relayed frame at a fixed {} frames/s ({} pairs × 10/s) | {:.2} µs | {} | {} | – | – |",
            cli.latency_pairs * 10,
            cli.latency_pairs,
            ours.cpu_us,
            theirs.map_or("–".into(), |t| format!("{:.2} µs", t.cpu_us)),
            ratio(ours.cpu_us, theirs.map(|t| t.cpu_us)),
        );
    }
    if let Some(c) = &sum.cluster {
        println!(
            "| cluster: CPU per relayed frame, same node (the median round) | {:.2} µs | – | – | – | – |",
            c.same_node_us
        );
        println!(
            "| cluster: CPU per relayed frame across nodes (both nodes and Redis), median of {} rounds | {:.2} µs ({:.2} × same node; rounds {}) | – | – | ≤ 2 × same node | {} |",
            c.ratios.len(),
            c.across_us,
            c.across_us / c.same_node_us,
            c.ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            yes(c.across_us <= 2.0 * c.same_node_us),
        );
        println!(
            "| cluster: pairings per second, {} nodes | {:.0}/s | – | – | – | – |",
            c.nodes, c.pairings_per_s
        );
    }
    // Scale: what one node would hold in 4 GiB, from the largest idle run.
    if let Some(&(n, ours, theirs)) = sum.idle.last() {
        let per_4g = |kib: f64| 4.0 * 1024.0 * 1024.0 / kib;
        println!(
            "| idle clients one process would hold in 4 GiB (from the {n}-client figure) | {:.0} | {} | – | – | – |",
            per_4g(ours),
            theirs.map_or("–".into(), |t| format!("{:.0}", per_4g(t))),
        );
    }
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

/// Three nodes on one Redis: relay on one node and across two, pairings
/// across all three, idle clients on one.
fn cluster(cli: &Cli, scenario: usize) -> anyhow::Result<ClusterFigures> {
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
    let (n1, n2, n3) = (node("n1")?, node("n2")?, node("n3")?);
    let pids = [n1.pid(), n2.pid(), redis.pid(), n3.pid()];
    let dur = cli.cluster_duration;
    // Same node and across nodes are measured back to back, round after
    // round: the host's load drifts (steal, the load generator's share of
    // two vCPUs), and a ratio of two runs seconds apart reads that drift
    // too. The figure is the median round's ratio.
    let mut rounds: Vec<[f64; 2]> = Vec::new();
    for round in 1..=cli.cluster_rounds {
        let mut pair = [0.0; 2];
        for (k, (label, b)) in [("same node", &n1.url), ("across nodes", &n2.url)]
            .into_iter()
            .enumerate()
        {
            let mut cpu0 = Vec::new();
            let mut ticks0 = None;
            let (frames, secs) = p2p_bench::cluster::relay(
                &n1.url,
                b,
                cli.cluster_pairs,
                8,
                dur,
                &format!("r{round}{k}-"),
                || {
                    cpu0 = cpus(&pids).unwrap_or_default();
                    ticks0 = procfs::MachineTicks::now().ok();
                },
            )?;
            let us = per_event(&pids, &cpu0, frames as f64)?;
            let steal = procfs::MachineTicks::now()?
                .steal_pct_since(&ticks0.context("the relay never started measuring")?);
            pair[k] = us.iter().sum::<f64>();
            println!(
                "| cluster relay, {label}, {} pairs × 8 in flight, candidate-sized JSON (round {round}) | \
                 {:.0} frames/s; CPU per frame: node 1 {:.2} µs, node 2 {:.2} µs, redis {:.2} µs, \
                 node 3 (idle) {:.2} µs (total {:.2} µs); host steal {steal:.1}% |",
                cli.cluster_pairs,
                frames as f64 / secs,
                us[0],
                us[1],
                us[2],
                us[3],
                pair[k],
            );
        }
        rounds.push(pair);
    }
    for (k, (label, b)) in [("same node", &n1.url), ("across nodes", &n2.url)]
        .into_iter()
        .enumerate()
    {
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
    let links = [
        (n1.url.as_str(), n2.url.as_str()),
        (n2.url.as_str(), n3.url.as_str()),
        (n3.url.as_str(), n1.url.as_str()),
    ];
    let (done, secs) = p2p_bench::cluster::pairings(&links, 50, dur, "p-")?;
    let us = per_event(&pids, &cpu0, done as f64)?;
    let pairings_per_s = done as f64 / secs;
    println!(
        "| cluster pairings across 3 nodes, 3 × 50 pairs (node 1→2, 2→3, 3→1) pairing and \
         unpairing in a loop | {pairings_per_s:.0} pairings/s (each: pair, both `paired`, \
         unpair, the notice); CPU per pairing: node 1 {:.0} µs, node 2 {:.0} µs, node 3 {:.0} µs, \
         redis {:.0} µs |",
        us[0], us[1], us[3], us[2],
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
    n3.stop()?;
    let [same_node_us, across_us] = median_round(&mut rounds, |r| r[1] / r[0]);
    let ratios: Vec<f64> = rounds.iter().map(|r| r[1] / r[0]).collect();
    Ok(ClusterFigures {
        same_node_us,
        across_us,
        ratios,
        pairings_per_s,
        nodes: 3,
    })
}

/// `n` idle clients; their cost per client (KiB of RSS).
fn idle(cli: &Cli, kind: Kind, n: usize, scenario: usize) -> anyhow::Result<f64> {
    idle_after(cli, kind, n, scenario, None)
}

/// [`idle`], or with `sdp` each pair of the `n` clients first exchanges an
/// offer and an answer of that many bytes (signald only).
fn idle_after(
    cli: &Cli,
    kind: Kind,
    n: usize,
    scenario: usize,
    sdp: Option<usize>,
) -> anyhow::Result<f64> {
    let interval = humantime::format_duration(cli.ping_interval).to_string();
    let timeout = humantime::format_duration(cli.ping_interval * 2).to_string();
    let srv = Server::of(
        cli,
        kind,
        &["--ping-interval", &interval, "--ping-timeout", &timeout],
    )?;
    std::thread::sleep(Duration::from_millis(200));
    let rss0 = procfs::rss_bytes(srv.pid())?;
    let procs = n.div_ceil(cli.per_process);
    let mut loads = Vec::new();
    for k in 0..procs {
        let share = n / procs + usize::from(k < n % procs);
        let mut args: Vec<String> = [
            "--url",
            &srv.url,
            "--source-ip",
            &source_ip(scenario, k),
            "--protocol",
            kind.proto_arg(),
            "--prefix",
            &format!("idle{k}-"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match sdp {
            None => args.extend(["idle".into(), "--clients".into(), share.to_string()]),
            Some(bytes) => args.extend([
                "signaled".into(),
                "--pairs".into(),
                (share / 2).to_string(),
                "--sdp-bytes".into(),
                bytes.to_string(),
            ]),
        }
        loads.push(Load::start(&cli.load, &args)?);
    }
    let t0 = Instant::now();
    let mut connected = 0u64;
    let mut failed = 0u64;
    for l in &mut loads {
        let v = l.expect("connected")?;
        connected += v["clients"].as_u64().unwrap_or(0);
        failed += v["failed"].as_u64().unwrap_or(0);
        if sdp.is_some() {
            l.expect("signaled")?;
        }
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
    let timeouts = or_dash(srv.metric("signald_timeouts_total")?);
    let clients_now = or_dash(srv.metric("signald_clients")?);
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
    let (keep, name) = match kind {
        Kind::Signald => ("pings every", "pings answered"),
        Kind::Peerjs => ("a HEARTBEAT every", "heartbeats sent"),
    };
    let after = sdp.map_or(String::new(), |b| {
        format!(" after an offer and an answer of {b} bytes")
    });
    println!(
        "| {} idle {n} clients{after} ({procs} load processes), {keep} {interval} | \
         {connected} connected ({failed} failed) in {connect_secs:.1} s = {:.0} conn/s; \
         server RSS {:.1} MiB → {per_client:.2} KiB/client; idle CPU {cpu_pct:.2}% of a core \
         over {:.0} s; {pings} {name}; false timeouts {timeouts} (server) + \
         {closes} unexpected closes; clients at end {clients_now} |",
        kind.name(),
        connected as f64 / connect_secs,
        rss as f64 / 1048576.0,
        window.as_secs_f64(),
    );
    Ok(per_client)
}

/// signald's own work on one relayed candidate, in process and on one
/// thread: parsing and checking it, and writing the frame its peer gets.
/// The relay figures add the sockets, the wake-ups and the scheduling,
/// and how those batch depends on the load (BENCHMARKS.md, round 9).
fn work_per_frame() {
    use p2p_proto::signal::ClientFrame;
    let frames = [
        (
            "as the load sends it, `type` last",
            p2p_bench::frames::candidate(12345),
        ),
        (
            "`type` first, as browsers send it",
            type_first(&p2p_bench::frames::candidate(12345)),
        ),
    ];
    for (how, text) in frames {
        let n = 200_000;
        let t0 = Instant::now();
        let mut bytes = 0;
        for _ in 0..n {
            let Ok(ClientFrame::Relay(frame)) = ClientFrame::parse(std::hint::black_box(&text))
            else {
                panic!("the bench's candidate is relayable: {text}");
            };
            bytes += frame.to_json("b5c3d6e1f0a9").len();
        }
        let ns = t0.elapsed().as_nanos() as f64 / n as f64;
        println!(
            "| signald's work per relayed candidate ({} bytes, {how}; parse, check, rewrite; one thread) | {ns:.0} ns ({} bytes out) |",
            text.len(),
            bytes / n,
        );
    }
}

/// The same frame with `type` moved to the front.
fn type_first(text: &str) -> String {
    let v: Value = serde_json::from_str(text).expect("the bench's own JSON");
    format!(r#"{{"type":{},"candidate":{}}}"#, v["type"], v["candidate"])
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

fn relay_server(cli: &Cli, kind: Kind) -> anyhow::Result<Server> {
    Server::of(cli, kind, &NO_RATE_LIMITS)
}

/// `pairs` pairs relaying with `--relay-window` in flight; the server's CPU
/// per frame, in µs.
fn relay(cli: &Cli, kind: Kind, pairs: usize, scenario: usize, round: u64) -> anyhow::Result<f64> {
    let srv = relay_server(cli, kind)?;
    let window = cli.relay_window;
    let args: Vec<String> = [
        "--url",
        &srv.url,
        "--source-ip",
        &source_ip(scenario, 0),
        "--protocol",
        kind.proto_arg(),
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
    let ticks0 = procfs::MachineTicks::now()?;
    let v = l.expect("done")?;
    let cpu = procfs::cpu_time(srv.pid())? - cpu0;
    let steal = procfs::MachineTicks::now()?.steal_pct_since(&ticks0);
    l.finish()?;
    let relayed = or_dash(srv.metric("signald_frames_relayed_total")?);
    srv.stop()?;
    let frames = v["frames"].as_f64().unwrap_or(0.0);
    let secs = v["secs"].as_f64().unwrap_or(1.0);
    let us = cpu.as_secs_f64() * 1e6 / frames.max(1.0);
    println!(
        "| {} relay {pairs} pair(s), {window} frames in flight per pair, candidate-sized JSON (round {round}) | \
         {:.0} frames/s over {secs:.1} s ({relayed} relayed in all); server CPU {:.2} s \
         = {:.4} CPU s per 1,000 frames = {us:.2} µs/frame; host steal {steal:.1}% |",
        kind.name(),
        frames / secs,
        cpu.as_secs_f64(),
        us / 1000.0,
    );
    Ok(us)
}

/// Pairs sending 10 frames/s each; p50 and p99 from send to receipt, ms.
fn latency(cli: &Cli, kind: Kind, scenario: usize) -> anyhow::Result<Latency> {
    let srv = relay_server(cli, kind)?;
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
            "--protocol",
            kind.proto_arg(),
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
    let ticks0 = procfs::MachineTicks::now()?;
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
    let steal = procfs::MachineTicks::now()?.steal_pct_since(&ticks0);
    let wall = t0.elapsed().as_secs_f64();
    for l in loads {
        l.finish()?;
    }
    srv.stop()?;
    samples.sort_unstable();
    let cpu_us = cpu.as_secs_f64() * 1e6 / samples.len().max(1) as f64;
    let ms = |p: f64| -> f64 {
        if samples.is_empty() {
            return 0.0;
        }
        samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)] as f64 / 1000.0
    };
    println!(
        "| {} latency {} pairs × 10 frames/s ({procs} load processes), send → receipt | \
         {} samples: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms; \
         server CPU {:.1}% of a core = {cpu_us:.2} µs/frame; host steal {steal:.1}% of the \
         machine's time |",
        kind.name(),
        cli.latency_pairs,
        samples.len(),
        ms(0.50),
        ms(0.99),
        ms(0.999),
        ms(1.0),
        cpu.as_secs_f64() / wall * 100.0,
    );
    Ok(Latency {
        p50: ms(0.50),
        p99: ms(0.99),
        cpu_us,
        steal,
    })
}
