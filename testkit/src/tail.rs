//! A running `p2pctl tail`, and the check that N lines sent arrive whole.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;

use crate::daemon::Daemon;
use crate::proc::WAIT;

/// `p2pctl tail ARGS` whose stdout lines arrive on a channel.
pub struct Tail {
    child: Child,
    lines: mpsc::Receiver<Vec<u8>>,
}

impl Tail {
    /// Starts `p2pctl tail ARGS` on `d` and waits until the daemon counts it
    /// as a follower, so nothing sent afterwards can be missed.
    pub fn start(d: &Daemon, args: &[&str]) -> Tail {
        let before = d.status().counters.subscribers;
        let mut child = d
            .ctl_cmd(&[&["tail"], args].concat())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("running p2pctl tail");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::with_capacity(1 << 20, stdout);
            loop {
                let mut line = Vec::new();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if line.last() == Some(&b'\n') {
                            line.pop();
                        }
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        if !args.contains(&"--no-follow") {
            d.wait_status("counting the new follower", |s| {
                s.counters.subscribers > before
            });
        }
        Tail { child, lines }
    }

    /// The next line, without its newline.
    pub fn next(&self) -> Vec<u8> {
        self.next_within(WAIT)
            .expect("tail printed no line in time")
    }

    /// The next line, or `None` if none came within `limit` (or `tail`
    /// ended): for a test that says how far a stream got before it stopped.
    pub fn next_within(&self, limit: std::time::Duration) -> Option<Vec<u8>> {
        self.lines.recv_timeout(limit).ok()
    }

    pub fn next_str(&self) -> String {
        String::from_utf8(self.next()).expect("a UTF-8 line")
    }

    /// The next `--json` event object, as the raw JSON the daemon wrote.
    pub fn next_event(&self) -> serde_json::Value {
        serde_json::from_slice(&self.next()).expect("an event object")
    }

    /// Skips events until one with `"event": kind` arrives.
    pub fn wait_event(&self, kind: &str) -> serde_json::Value {
        loop {
            let ev = self.next_event();
            if ev["event"] == kind {
                return ev;
            }
        }
    }

    /// The process, e.g. to stop it with a signal.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `n` lines `"{prefix} {i}"` from `sender` with `p2pctl send` and
/// checks that `tail` (on the receiving daemon) prints each once, in order.
pub fn transfer(sender: &Daemon, tail: &Tail, n: usize, prefix: &str) {
    let input: String = (0..n).map(|i| format!("{prefix} {i}\n")).collect();
    let out = sender.ctl_stdin(&["send"], input.as_bytes());
    assert!(
        out.status.success(),
        "send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..n {
        assert_eq!(
            tail.next_str(),
            format!("{prefix} {i}"),
            "message {i} out of order or lost"
        );
    }
}
