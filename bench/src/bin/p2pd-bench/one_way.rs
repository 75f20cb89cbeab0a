//! Throughput: `n` messages of `size` bytes from `p2pctl send` on `a` to
//! `p2pctl tail` on `b`, each payload checked, timed from spawning the
//! sender to the last line at the receiver; repeated, and reported as the
//! spread over the runs so that stalls show.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use p2p_bench::procfs;
use p2p_bench::raw::rcvbuf_errors;
use p2p_bench::table::{Row, spread};

use crate::measure::Raw;
use crate::{Bench, Cli};

/// One transfer's outcome.
struct Run {
    received: usize,
    corrupt: usize,
    secs: f64,
    drops: u64,
    cpu: String,
    note: String,
}

/// The line for message `i` of a run with `size`-byte messages: the index
/// in ten digits, then filler.
fn payload(i: usize, size: usize, buf: &mut Vec<u8>) {
    buf.clear();
    write!(buf, "{i:010}").unwrap();
    let fill = b"abcdefghijklmnopqrstuvwxyz";
    while buf.len() < size {
        buf.push(fill[buf.len() % fill.len()]);
    }
}

/// `cli.runs` transfers of `n` × `size` bytes, as one row.
pub fn row(bench: &mut Bench, cli: &Cli, n: usize, size: usize, raw: &Raw) -> Row {
    let runs: Vec<Run> = (0..cli.runs.max(1))
        .map(|_| transfer(bench, cli, n, size))
        .collect();
    let rates: Vec<f64> = runs.iter().map(|r| r.received as f64 / r.secs).collect();
    let mbs: Vec<f64> = runs
        .iter()
        .map(|r| (r.received * size) as f64 / r.secs / 1e6)
        .collect();
    let complete = runs
        .iter()
        .all(|r| r.received == n && r.corrupt == 0 && r.note.is_empty());
    let drops: u64 = runs.iter().map(|r| r.drops).sum();
    let details: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{} of {n} in {:.2} s, {} corrupt, UDP RcvbufErrors +{}; {}{}",
                r.received, r.secs, r.corrupt, r.drops, r.cpu, r.note
            )
        })
        .collect();
    let fastest = rates.iter().cloned().fold(0.0, f64::max);
    let slowest = rates.iter().cloned().fold(f64::INFINITY, f64::min);
    let even = slowest >= fastest * 2.0 / 3.0;
    let tcp = format!(
        "TCP 16 KiB writes {:.0} MB/s; UDP 1,200-byte datagrams one way {:.0} MB/s",
        raw.tcp_mbs, raw.udp_mbs
    );
    if size <= 100 {
        Row::new(
            format!(
                "{n} × {size}-byte lines, `p2pctl send` (stdin) → `p2pctl tail`, {} runs",
                runs.len()
            ),
            format!(
                "lines/s min / median / max {}; runs: {}",
                spread(&rates, |x| format!("{x:.0}")),
                details.join(" · ")
            ),
        )
        .raw(tcp)
        .target(
            "≥ 200,000 lines/s in every run, none below 2/3 of the fastest, complete, in order",
            complete && slowest >= 200_000.0 && even,
        )
    } else {
        Row::new(
            format!(
                "{n} × {} KiB messages, `p2pctl send` (stdin) → `p2pctl tail`, {} runs",
                size / 1024,
                runs.len()
            ),
            format!(
                "MB/s min / median / max {}; runs: {}",
                spread(&mbs, |x| format!("{x:.1}")),
                details.join(" · ")
            ),
        )
        .raw(tcp)
        .target(
            "≥ 150 MB/s in every run, 0 UDP receive drops",
            complete && mbs.iter().all(|m| *m >= 150.0) && drops == 0,
        )
        .comparison("aiortc 15.7 MB/s; webrtc defaults 3-16 MB/s")
    }
}

fn transfer(bench: &mut Bench, cli: &Cli, n: usize, size: usize) -> Run {
    let subs = bench.b.ctl.status().counters.subscribers;
    let mut tail = bench
        .b
        .daemon
        .ctl_cmd(&["tail"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("p2pctl tail");
    let out = tail.stdout.take().expect("piped");
    let mut err = tail.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    bench
        .b
        .daemon
        .wait_status("counting the tail", |s| s.counters.subscribers > subs);
    let drops0 = rcvbuf_errors().unwrap_or(0);
    let (a_pid, b_pid) = (bench.a.pid(), bench.b.pid());
    let cpu0 = (
        procfs::cpu_time(a_pid).unwrap_or_default(),
        procfs::cpu_time(b_pid).unwrap_or_default(),
    );
    let (progress_tx, progress) = mpsc::channel::<(usize, usize)>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(1 << 20, out);
        let mut line = Vec::with_capacity(size + 1);
        let mut want = Vec::with_capacity(size);
        let (mut got, mut bad) = (0usize, 0usize);
        while got < n {
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
        }
        let _ = progress_tx.send((got, bad));
    });
    let t0 = Instant::now();
    let mut send = bench
        .a
        .daemon
        .ctl_cmd(&["send"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("p2pctl send");
    let mut stdin = BufWriter::with_capacity(1 << 20, send.stdin.take().expect("piped"));
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
        "CPU % of a core: send {:.0}, p2pd a {:.0}, p2pd b {:.0}, tail {:.0}",
        share(procfs::cpu_time(send.id()).unwrap_or_default()),
        share(
            procfs::cpu_time(a_pid)
                .unwrap_or_default()
                .saturating_sub(cpu0.0)
        ),
        share(
            procfs::cpu_time(b_pid)
                .unwrap_or_default()
                .saturating_sub(cpu0.1)
        ),
        share(procfs::cpu_time(tail.id()).unwrap_or_default()),
    );
    // Let in-flight datagrams land before reading the drop counter.
    std::thread::sleep(Duration::from_millis(200));
    let drops = rcvbuf_errors().unwrap_or(0).saturating_sub(drops0);
    let _ = tail.kill();
    let _ = tail.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(st)) = send.try_wait() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = send.kill();
            let _ = send.wait();
            break None;
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
    match status {
        Some(st) if st.success() => {}
        Some(st) => note.push_str(&format!("; p2pctl send {st}: {}", send_err.trim())),
        None => note.push_str("; p2pctl send still running 10 s after the receiver stopped"),
    }
    if tail_err.contains("missed") {
        note.push_str(&format!("; p2pctl tail: {}", tail_err.trim()));
    }
    let run = Run {
        received: got,
        corrupt: bad,
        secs,
        drops,
        cpu,
        note,
    };
    eprintln!(
        "one way {size} B: {} of {n} in {:.2} s ({:.0}/s){}",
        run.received,
        run.secs,
        run.received as f64 / run.secs,
        run.note
    );
    run
}
