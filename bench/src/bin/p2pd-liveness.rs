//! `p2pd-liveness`: how soon a link follows its peer (issue 19), on
//! 127.0.0.1 with the release binaries built beside this one.
//!
//! - A peer killed with SIGKILL: from the kill to the survivor being idle
//!   (ready for the next pairing), with a restart bound of a minute, so
//!   only the check of the path can be what lets go.
//! - A peer frozen with SIGSTOP (signald pinging every 1 s, timing out
//!   after 2 s): from the stop to the survivor's link being lost
//!   (`reachable: false`), when a pairing with someone else may replace it.
//! - signald stopped and started again on its port: from its `listening`
//!   line to both daemons registered again.
//! - The CPU of two daemons holding an open, quiet link.
//!
//! Prints a Markdown table; BENCHMARKS.md records the figures.

use std::time::{Duration, Instant};

use clap::Parser;
use p2p_bench::procfs;
use p2p_bench::table::{self, Row, machine, ms, pct};
use p2p_proto::control::{LinkState, ServerState};
use p2p_testkit::{Daemon, Signald};

#[derive(Parser)]
struct Cli {
    /// Trials of each timed figure.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// How long the CPU of an open, quiet link is measured (the kernel
    /// counts CPU time in 10 ms ticks: 60 s resolve 0.017 % of a core).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_window: Duration,
    /// Only these figures (killed, frozen, signald, idle); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

const MINUTE_BOUND: &[&str] = &["--ice-restart-timeout", "60s"];

/// Polls `d`'s status over one control connection until `pred` holds;
/// the instant it first did.
fn until(d: &Daemon, what: &str, pred: impl Fn(&p2p_proto::control::Status) -> bool) -> Instant {
    let mut ctl = d.control();
    let limit = Instant::now() + Duration::from_secs(120);
    loop {
        if pred(&ctl.status()) {
            return Instant::now();
        }
        assert!(Instant::now() < limit, "{}: never {what}", d.id());
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn percentiles(name: &str, mut v: Vec<Duration>, target: Duration) -> Row {
    v.sort();
    let p99 = pct(&v, 0.99);
    Row::new(
        format!("{name}, {} trials", v.len()),
        format!(
            "p50 {}, p99 {}, max {}",
            ms(pct(&v, 0.5)),
            ms(p99),
            ms(*v.last().unwrap_or(&Duration::ZERO))
        ),
    )
    .target(format!("p99 ≤ {}", ms(target)), p99 <= target)
}

fn killed(trials: usize) -> Row {
    let s = Signald::start_with(&["--listen", "127.0.0.1:0"]);
    let a = Daemon::start_with(&s.url(), "alice", MINUTE_BOUND);
    let mut took = Vec::new();
    for i in 0..trials {
        // A fresh peer each time: signald keeps a killed one's ID reserved.
        let b = Daemon::start_with(&s.url(), &format!("bob{i}"), MINUTE_BOUND);
        if i % 2 == 0 {
            a.pair(&b);
        } else {
            b.pair(&a);
        }
        let t0 = Instant::now();
        b.proc().signal(libc::SIGKILL);
        let t1 = until(&a, "idle", |st| st.link == LinkState::Idle);
        took.push(t1 - t0);
    }
    percentiles(
        "SIGKILL of the peer → survivor idle",
        took,
        Duration::from_millis(1500),
    )
}

fn frozen(trials: usize) -> Row {
    let s = Signald::start_with(&[
        "--listen",
        "127.0.0.1:0",
        "--ping-interval",
        "1s",
        "--ping-timeout",
        "2s",
    ]);
    let a = Daemon::start_with(&s.url(), "alice", MINUTE_BOUND);
    let mut took = Vec::new();
    for i in 0..trials {
        let b = Daemon::start_with(&s.url(), &format!("bob{i}"), MINUTE_BOUND);
        a.pair(&b);
        let t0 = Instant::now();
        b.proc().signal(libc::SIGSTOP);
        let t1 = until(&a, "lost", |st| {
            st.peer.as_ref().is_some_and(|p| p.reachable == Some(false))
        });
        took.push(t1 - t0);
        a.ok(&["unpair"]);
        b.proc().signal(libc::SIGKILL);
    }
    percentiles(
        "SIGSTOP of the peer → survivor's link lost (signald times it out after 2 s)",
        took,
        Duration::from_millis(3500),
    )
}

fn signald_back(trials: usize) -> Row {
    let mut s = Signald::start_with(&["--listen", "127.0.0.1:0"]);
    let port = s.port();
    // p2pd's default reconnect cap (1 s), not the tests' 300 ms.
    let a = Daemon::builder(&s.url(), "alice")
        .default_reconnect()
        .start();
    let b = Daemon::builder(&s.url(), "bob").default_reconnect().start();
    let mut took = Vec::new();
    for i in 0..trials {
        s.proc().signal(libc::SIGTERM);
        s.proc_mut().wait_exit();
        for d in [&a, &b] {
            until(d, "disconnected", |st| {
                st.server.state != ServerState::Connected
            });
        }
        // Away for 4-5 s, so that the backoff has reached its cap.
        std::thread::sleep(Duration::from_millis(4000 + 100 * (i as u64 % 10)));
        s = Signald::start_on(port);
        let t0 = Instant::now();
        let t1 = [&a, &b]
            .map(|d| {
                until(d, "registered", |st| {
                    st.server.state == ServerState::Connected
                })
            })
            .into_iter()
            .max()
            .expect("two daemons");
        took.push(t1 - t0);
    }
    percentiles(
        "signald listening again → both daemons registered",
        took,
        Duration::from_secs(1),
    )
}

fn idle_cpu(window: Duration) -> anyhow::Result<Row> {
    let s = Signald::start_with(&["--listen", "127.0.0.1:0"]);
    let a = Daemon::start(&s.url(), "alice");
    let b = Daemon::start(&s.url(), "bob");
    a.pair(&b);
    std::thread::sleep(Duration::from_secs(1));
    let pids = [a.proc().pid() as u32, b.proc().pid() as u32];
    let before = [procfs::cpu_time(pids[0])?, procfs::cpu_time(pids[1])?];
    let t0 = Instant::now();
    std::thread::sleep(window);
    let secs = t0.elapsed().as_secs_f64();
    let pct: Vec<f64> = (0..2)
        .map(|i| {
            procfs::cpu_time(pids[i])
                .map(|t| (t - before[i]).as_secs_f64() / secs * 100.0)
                .unwrap_or(f64::NAN)
        })
        .collect();
    let worst = pct.iter().cloned().fold(0.0, f64::max);
    Ok(Row::new(
        format!("CPU of a daemon holding an open, quiet link, {secs:.0} s"),
        format!("a {:.3} %, b {:.3} % of a core", pct[0], pct[1]),
    )
    .target("≤ 0.1 % of a core", worst <= 0.1))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    eprintln!("machine: {}", machine());
    let want = |f: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == f);
    let mut rows = Vec::new();
    if want("killed") {
        rows.push(killed(cli.trials));
    }
    if want("frozen") {
        rows.push(frozen(cli.trials));
    }
    if want("signald") {
        rows.push(signald_back(cli.trials));
    }
    if want("idle") {
        rows.push(idle_cpu(cli.idle_window)?);
    }
    println!("machine: {}", machine());
    println!();
    table::print("p2pd", &rows);
    Ok(())
}
