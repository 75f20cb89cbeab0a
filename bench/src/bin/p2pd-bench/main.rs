//! `p2pd-bench`: starts a signald and two p2pd daemons (`a`, `b`) on
//! 127.0.0.1, measures pairing, round trips, throughput, memory, CPU and fd
//! figures through the control sockets and the real `p2pctl`, measures the
//! raw loopback path beside them, and prints a Markdown table.
//!
//! Each measurement is one function of [`measure`] that returns its rows;
//! the throughput runs are in [`one_way`], the byte streams' in
//! [`streams`]. The programs are the ones built
//! beside this binary (`P2P_TEST_BINS=DIR` picks others); every process is
//! killed when the bench ends, also on error.

mod measure;
mod one_way;
mod streams;

use std::time::Duration;

use clap::Parser;
use p2p_bench::raw::{tcp_throughput, udp_rtt, udp_throughput};
use p2p_bench::table::{self, machine, us};
use p2p_testkit::{Control, Daemon, Signald};

#[derive(Parser)]
struct Cli {
    /// Pairings timed for pair-to-open.
    #[arg(long, default_value_t = 20)]
    pairings: usize,
    /// Echoes for the daemon-to-daemon round trip.
    #[arg(long, default_value_t = 1000)]
    echoes: usize,
    /// Echoes for the round trip via `p2pctl send` (one process per message).
    #[arg(long, default_value_t = 1000)]
    ctl_echoes: usize,
    /// 100-byte lines sent through `p2pctl send` / `p2pctl tail`, per run.
    #[arg(long, default_value_t = 1_000_000)]
    lines: usize,
    /// 16 KiB messages sent one way, per run.
    #[arg(long, default_value_t = 16384)]
    big: usize,
    /// Runs of each throughput transfer (their spread is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
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
    /// MiB through one `connect` -> `accept` stream, per run (0 skips the
    /// stream rows).
    #[arg(long, default_value_t = 1024)]
    stream_mib: u64,
    /// Concurrent 1 MiB connections through `forward`.
    #[arg(long, default_value_t = 100)]
    forward_streams: usize,
    /// Open idle streams for the memory per stream (at most p2pd's
    /// default --max-streams-per-service, 128).
    #[arg(long, default_value_t = 100)]
    idle_streams: usize,
    /// How long one throughput run may go without progress before it is
    /// declared stalled.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    stall: Duration,
}

/// A daemon with a control connection held open.
pub struct Node {
    daemon: Daemon,
    ctl: Control,
}

impl Node {
    fn start(url: &str, id: &str) -> Node {
        let daemon = Daemon::builder(url, id).start();
        let ctl = daemon.control();
        Node { daemon, ctl }
    }

    pub fn pid(&self) -> u32 {
        self.daemon.proc().pid() as u32
    }
}

/// What every measurement runs on.
pub struct Bench {
    _signald: Signald,
    a: Node,
    b: Node,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    eprintln!("machine: {}", machine());
    // The raw path first, before any daemon runs.
    let (udp_p50, udp_p99) = udp_rtt(1000)?;
    let tcp_mbs = tcp_throughput(Duration::from_secs(2))?;
    let udp_mbs = udp_throughput(Duration::from_secs(2))?;
    eprintln!(
        "raw: UDP RTT p50 {} p99 {}, TCP {tcp_mbs:.0} MB/s, UDP 1,200-byte datagrams {udp_mbs:.0} MB/s",
        us(udp_p50),
        us(udp_p99)
    );
    let raw = measure::Raw {
        udp_p50,
        udp_p99,
        tcp_mbs,
        udp_mbs,
    };
    let mut args = vec!["--listen", "127.0.0.1:0"];
    if !cli.default_rate_limit {
        args.extend(["--rate-limit", "100000", "--rate-burst", "100000"]);
        args.extend(["--rate-limit-bytes", "4000000000"]);
        args.extend(["--rate-burst-bytes", "4000000000"]);
    }
    let signald = Signald::start_with(&args);
    let url = signald.url();
    let mut bench = Bench {
        a: Node::start(&url, "a"),
        b: Node::start(&url, "b"),
        _signald: signald,
    };
    // The default policy, --trust known, as users run it: the key check
    // is part of every open measured below.
    bench.a.daemon.trust_each_other(&bench.b.daemon);
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle = measure::rss_mib(&bench)?;

    let mut rows = Vec::new();
    let (open_row, path) = measure::pair_to_open(&mut bench, cli.pairings);
    rows.push(open_row);
    let (cpu_row, rss_connected) = measure::idle_connected(&mut bench, cli.idle_window)?;
    rows.push(cpu_row);
    rows.extend(measure::echo(&mut bench, cli.echoes, &raw)?);
    rows.extend(measure::ctl_echo(&mut bench, cli.ctl_echoes)?);
    if cli.lines > 0 {
        rows.push(one_way::row(&mut bench, &cli, cli.lines, 100, &raw));
    }
    if cli.big > 0 {
        rows.push(one_way::row(&mut bench, &cli, cli.big, 16384, &raw));
    }
    if cli.stream_mib > 0 {
        rows.push(streams::throughput(&mut bench, &cli)?);
        rows.push(streams::forwarded(&mut bench, &cli)?);
        rows.push(streams::idle_memory(&mut bench, &cli)?);
    }
    rows.push(measure::rss_row(&bench, rss_idle, rss_connected)?);
    rows.push(measure::cycles(&mut bench, cli.cycles)?);

    println!("machine: {}", machine());
    println!(
        "load average at the end (other tenants included): {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!("ICE path: {path}");
    println!();
    table::print("p2pd", &rows);
    Ok(())
}
