//! `p2pd-lab-bench` (`scripts/bench-nat-lab`): connect time and throughput
//! per path through the NAT lab (`p2p_testkit::lab`: network namespaces,
//! needs root), printed as a Markdown table. Speed is measured here, never
//! asserted in a test.

use p2p_testkit::Tail;
use p2p_testkit::lab::{Lab, Nat, pair_ok};

fn main() {
    if let Some(why) = p2p_testkit::lab::cannot_run() {
        eprintln!("p2pd-lab-bench: cannot build the lab here: {why}");
        std::process::exit(2);
    }

    use std::time::{Duration, Instant};
    struct Row {
        path: &'static str,
        selected: String,
        open_p50: Duration,
        open_max: Duration,
        lines_per_s: f64,
        big_mb_s: f64,
    }
    let mut rows = Vec::new();
    for (name, nat, turn, impaired) in [
        ("direct (cone NATs, STUN)", Nat::Cone, false, false),
        (
            "relayed (symmetric NATs, TURN)",
            Nat::Symmetric,
            true,
            false,
        ),
        (
            "impaired (cone, 50 ms + 2% loss each way)",
            Nat::Cone,
            false,
            true,
        ),
    ] {
        let mut lab = Lab::build(nat);
        let impair = impaired.then(|| lab.impair_r2_uplink());
        let ice = if turn {
            vec![Lab::stun(), Lab::turn()]
        } else {
            vec![Lab::stun()]
        };
        let (s, a, b) = lab.start_peers(&ice);
        let mut opens = Vec::new();
        for _ in 0..7 {
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
        // 100-byte lines (99 bytes + newline), then 16 KiB messages.
        let (n_lines, n_big) = if impaired {
            (20_000, 200)
        } else {
            (100_000, 2_000)
        };
        let lines_per_s = n_lines as f64 / timed_transfer(&a, &tail, n_lines, 100);
        let big_mb_s =
            (n_big * 16 * 1024) as f64 / timed_transfer(&a, &tail, n_big, 16 * 1024) / 1e6;
        rows.push(Row {
            path: name,
            selected,
            open_p50: opens[opens.len() / 2],
            open_max: *opens.last().unwrap(),
            lines_per_s,
            big_mb_s,
        });
        drop((tail, a, b, s, impair));
    }
    let mut table = String::from(
        "| path | selected pair | pair to open p50 / max | 100-byte lines/s | 16 KiB msgs MB/s |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        table.push_str(&format!(
            "| {} | {} | {:.0} / {:.0} ms | {:.0} | {:.1} |\n",
            r.path,
            r.selected,
            r.open_p50.as_secs_f64() * 1e3,
            r.open_max.as_secs_f64() * 1e3,
            r.lines_per_s,
            r.big_mb_s
        ));
    }
    use std::io::Write;
    let _ = std::io::stdout().write_all(table.as_bytes());
}

/// Seconds to send `n` lines of `size` bytes (newline included) from `a`
/// until `tail` printed the last of them.
fn timed_transfer(a: &p2p_testkit::Daemon, tail: &Tail, n: usize, size: usize) -> f64 {
    let line = "x".repeat(size - 1);
    let input: String = (0..n).map(|_| format!("{line}\n")).collect();
    let t = std::time::Instant::now();
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
