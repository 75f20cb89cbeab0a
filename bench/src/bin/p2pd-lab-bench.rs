//! `p2pd-lab-bench` (`scripts/bench-nat-lab`): open time and throughput per
//! path through the NAT lab (`p2p_testkit::lab`: network namespaces, needs
//! root), and on the impaired path a plain TCP transfer across the same
//! namespaces and wire, printed as Markdown tables, with the CPU each
//! process used during the 16 KiB transfer; then the longest pause of a
//! paced transfer across a move of one side to a new public address.
//! Speed is measured here, never asserted in a test. An argument runs only
//! the rows whose name contains it (`p2pd-lab-bench relayed`,
//! `p2pd-lab-bench move`).

use std::time::{Duration, Instant};

use p2p_testkit::lab::{Lab, Nat, pair_ok};
use p2p_testkit::{Daemon, Tail};

/// The impaired path: one uplink, each way.
const DELAY: Duration = Duration::from_millis(25);
const LOSS: f64 = 0.01;
/// Pairings timed per path.
const OPENS: usize = 7;
/// TCP port of the comparison transfer.
const TCP_PORT: u16 = 5001;

struct Path {
    name: &'static str,
    nat: Nat,
    turn: bool,
    impaired: bool,
    /// Extra p2pd flags (the crate's old SCTP timers, for comparison).
    flags: &'static [&'static str],
}

struct Row {
    name: &'static str,
    selected: String,
    open_p50: Duration,
    open_max: Duration,
    lines_per_s: f64,
    big_mb_s: f64,
    tcp: Option<(f64, f64)>,
    /// CPU of the 16 KiB transfer, as % of one core: p2pd a, p2pd b, coturn.
    cpu: (f64, f64, f64),
}

fn main() {
    if let Some(why) = p2p_testkit::lab::cannot_run() {
        eprintln!("p2pd-lab-bench: cannot build the lab here: {why}");
        std::process::exit(2);
    }
    let old_timers: &[&str] = &["--sctp-rto-min", "1s", "--sctp-rto-max", "60s"];
    let paths = [
        Path {
            name: "direct (cone NATs, STUN)",
            nat: Nat::Cone,
            turn: false,
            impaired: false,
            flags: &[],
        },
        Path {
            name: "relayed (symmetric NATs, TURN)",
            nat: Nat::Symmetric,
            turn: true,
            impaired: false,
            flags: &[],
        },
        Path {
            name: "impaired (cone, 25 ms + 1% loss each way)",
            nat: Nat::Cone,
            turn: false,
            impaired: true,
            flags: &[],
        },
        Path {
            name: "impaired, SCTP timers of RFC 9260 (RTO 1-60 s)",
            nat: Nat::Cone,
            turn: false,
            impaired: true,
            flags: old_timers,
        },
    ];
    let only = std::env::args().nth(1).unwrap_or_default();
    let moves: Vec<(&str, Vec<Duration>)> = MOVES
        .iter()
        .filter(|(name, _)| name.contains(only.as_str()))
        .map(|&(name, mover_answers)| {
            let pauses = (0..MOVE_TRIALS)
                .map(|_| longest_pause_across_a_move(mover_answers))
                .collect();
            (name, pauses)
        })
        .collect();
    let rows: Vec<Row> = paths
        .iter()
        .filter(|p| p.name.contains(only.as_str()))
        .map(measure)
        .collect();

    let mut out = String::from(
        "| path | selected pair | pair to open p50 / max | 100-byte lines/s | 16 KiB msgs MB/s | CPU % of a core during 16 KiB: p2pd a / b / coturn |\n|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        out.push_str(&format!(
            "| {} | {} | {:.0} / {:.0} ms | {:.0} | {:.2} | {:.0} / {:.0} / {:.0} |\n",
            r.name,
            r.selected,
            r.open_p50.as_secs_f64() * 1e3,
            r.open_max.as_secs_f64() * 1e3,
            r.lines_per_s,
            r.big_mb_s,
            r.cpu.0,
            r.cpu.1,
            r.cpu.2
        ));
    }
    out.push_str(
        "\n| impaired path | p2pd 16 KiB MB/s | TCP CUBIC MB/s | TCP BBR MB/s | p2pd / CUBIC |\n|---|---|---|---|---|\n",
    );
    for r in rows.iter().filter(|r| r.tcp.is_some()) {
        let (cubic, bbr) = r.tcp.unwrap();
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            r.name,
            r.big_mb_s,
            cubic,
            bbr,
            r.big_mb_s / cubic
        ));
    }
    if !moves.is_empty() {
        out.push_str(&format!(
            "\n| move to a new public address (cone NATs, STUN; a line every {} ms) | longest pause per trial | median / max | target |\n|---|---|---|---|\n",
            PACE.as_millis()
        ));
        for (name, mut pauses) in moves {
            let each: Vec<String> = pauses
                .iter()
                .map(|p| format!("{:.0}", p.as_secs_f64() * 1e3))
                .collect();
            pauses.sort();
            out.push_str(&format!(
                "| {name} | {} ms | {:.0} / {:.0} ms | ≤ 1000 ms |\n",
                each.join(", "),
                pauses[pauses.len() / 2].as_secs_f64() * 1e3,
                pauses.last().unwrap().as_secs_f64() * 1e3,
            ));
        }
    }
    use std::io::Write;
    let _ = std::io::stdout().write_all(out.as_bytes());
}

/// The moves timed: which side's router moves (`true`: the answerer's).
const MOVES: [(&str, bool); 2] = [
    ("move: the initiator's router moves", false),
    ("move: the answerer's router moves", true),
];
const MOVE_TRIALS: usize = 5;
/// One line per this, both before and after the move.
const PACE: Duration = Duration::from_millis(10);

/// A fresh lab; h1 (behind r1) and h2 paired, h1 initiating unless
/// `mover_answers`; a line every [`PACE`] from h2 to h1 for 1 s before r1
/// moves to a new public address and 4 s after. Every line must arrive in
/// order; returns the longest gap between two arrivals.
fn longest_pause_across_a_move(mover_answers: bool) -> Duration {
    let mut lab = Lab::build(Nat::Cone);
    lab.start_coturn();
    let s = lab.signald(&[Lab::stun()]);
    let h1 = lab.daemon("h1", "h1", &[]);
    let h2 = lab.daemon("h2", "h2", &[]);
    if mover_answers {
        pair_ok(&h2, &h1);
    } else {
        pair_ok(&h1, &h2);
    }
    let tail = Tail::start(&h1, &[]);
    let mut sender = h2
        .ctl_cmd(&["send"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("p2pctl send");
    let mut stdin = sender.stdin.take().expect("piped");
    let n = (5.0 / PACE.as_secs_f64()) as usize;
    let before = (1.0 / PACE.as_secs_f64()) as usize;
    let (moved_tx, moved_rx) = std::sync::mpsc::channel();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let start = Instant::now();
        for i in 0..n {
            if i == before {
                moved_tx.send(()).ok();
            }
            writeln!(stdin, "line {i}").expect("send's stdin");
            stdin.flush().expect("send's stdin");
            let next = start + PACE * (i as u32 + 1);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    });
    let mut last = None;
    let mut longest = Duration::ZERO;
    let mut moved = false;
    for i in 0..n {
        if !moved && moved_rx.try_recv().is_ok() {
            lab.rebind_r1();
            moved = true;
        }
        assert_eq!(tail.next_str(), format!("line {i}"), "lost or out of order");
        let now = Instant::now();
        if let Some(prev) = last {
            longest = longest.max(now - prev);
        }
        last = Some(now);
    }
    feeder.join().expect("feeder");
    assert!(sender.wait().expect("send").success());
    if std::env::var_os("MOVE_LOGS").is_some() {
        eprintln!(
            "=== h1 (moves)\n{}\n=== h2\n{}",
            h1.proc().log(),
            h2.proc().log()
        );
    }
    drop((tail, h1, h2, s));
    longest
}

fn measure(p: &Path) -> Row {
    let mut lab = Lab::build(p.nat);
    let impair = p.impaired.then(|| lab.impair_r2_uplink(DELAY, LOSS));
    let ice = if p.turn {
        vec![Lab::stun(), Lab::turn()]
    } else {
        vec![Lab::stun()]
    };
    lab.start_coturn();
    let s = lab.signald(&ice);
    let a = lab.daemon("h1", "h1", p.flags);
    let b = lab.daemon("h2", "h2", p.flags);
    let mut opens = Vec::new();
    for _ in 0..OPENS {
        let t = Instant::now();
        pair_ok(&a, &b);
        opens.push(t.elapsed());
        a.ok(&["unpair"]);
        a.wait_idle();
        b.wait_idle();
    }
    opens.sort();
    let selected = {
        let p = pair_ok(&a, &b);
        format!("{} -> {}", p.local_type, p.remote_type)
    };
    let tail = Tail::start(&b, &[]);
    // 100-byte lines (99 bytes + newline), then 16 KiB messages: 8 MB on
    // the impaired path (long enough to leave slow start), 32 MB elsewhere.
    let (n_lines, n_big) = if p.impaired {
        (20_000, 500)
    } else {
        (100_000, 2_000)
    };
    let lines_per_s = n_lines as f64 / timed_transfer(&a, &tail, n_lines, 100);
    let big_bytes = n_big * 16 * 1024;
    let pids = [Some(a.proc().pid()), Some(b.proc().pid()), lab.coturn_pid()];
    let cpu = |pid: Option<i32>| {
        pid.and_then(|p| p2p_bench::procfs::cpu_time(p as u32).ok())
            .unwrap_or_default()
    };
    let before = pids.map(cpu);
    let secs = timed_transfer(&a, &tail, n_big, 16 * 1024);
    let share = |i: usize| (cpu(pids[i]).saturating_sub(before[i])).as_secs_f64() / secs * 100.0;
    let cpu_shares = (share(0), share(1), share(2));
    let big_mb_s = big_bytes as f64 / secs / 1e6;
    drop((tail, a, b, s));
    let tcp = p.impaired.then(|| {
        lab.forward_tcp_to_h2(TCP_PORT);
        let run = |cc| {
            p2p_bench::tcp::transfer(
                &lab.ns("h2"),
                &lab.ns("h1"),
                "198.51.100.12",
                TCP_PORT,
                big_bytes,
                cc,
            )
            .unwrap_or_else(|e| panic!("TCP {cc}: {e:#}"))
        };
        (run("cubic"), run("bbr"))
    });
    drop(impair);
    Row {
        name: p.name,
        selected,
        open_p50: opens[opens.len() / 2],
        open_max: *opens.last().unwrap(),
        lines_per_s,
        big_mb_s,
        tcp,
        cpu: cpu_shares,
    }
}

/// Seconds to send `n` lines of `size` bytes (newline included) from `a`
/// until `tail` printed the last of them.
fn timed_transfer(a: &Daemon, tail: &Tail, n: usize, size: usize) -> f64 {
    let line = "x".repeat(size - 1);
    let input: String = (0..n).map(|_| format!("{line}\n")).collect();
    let t = Instant::now();
    let out = a.ctl_stdin(&["send"], input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..n {
        tail.next();
    }
    t.elapsed().as_secs_f64()
}
