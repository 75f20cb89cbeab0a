//! Helpers for end-to-end tests: real `signald` and `p2pd` processes on
//! 127.0.0.1, driven through the real `p2pctl`.
//!
//! Processes are killed on drop; their stderr is kept and printed when a
//! test fails. Waiting is always for an observable state (a status field, a
//! line of output) under a generous deadline, never a fixed sleep.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2p_proto::control::{LinkState, ServerState, Status};

/// Upper bound for any single awaited state; reaching it fails the test.
pub const WAIT: Duration = Duration::from_secs(20);

/// A program built by this workspace. `p2pctl` is ours; `signald` and `p2pd`
/// sit beside it in the target directory (`cargo test --workspace` builds
/// them).
pub fn bin(name: &str) -> PathBuf {
    if name == "p2pctl" {
        return PathBuf::from(env!("CARGO_BIN_EXE_p2pctl"));
    }
    let dir = Path::new(env!("CARGO_BIN_EXE_p2pctl"))
        .parent()
        .expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (scripts/test)",
        p.display()
    );
    p
}

/// A command for `program`, run inside network namespace `netns` if given
/// (`ip netns exec` execs it, so the child's PID is the program's).
pub fn in_netns(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        None => Command::new(program),
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
    }
}

/// A child process whose stderr is collected in the background.
pub struct Proc {
    pub name: String,
    pub child: Child,
    log: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push_str(&format!("{line}\n"));
                    let _ = tx.send(line);
                }
            });
        }
        Proc {
            name: name.to_string(),
            child,
            log,
            lines,
        }
    }

    /// Waits for an output line containing `needle`; returns it.
    pub fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!(
                    "{} never printed {needle:?}; its output:\n{}",
                    self.name,
                    self.log()
                ),
            }
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child has no memory effects.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit; output:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- {} output -----\n{}", self.name, self.log());
        }
    }
}

/// A signald on 127.0.0.1 with short ping timings.
pub struct Signald {
    pub proc: Proc,
    pub port: u16,
}

impl Signald {
    pub fn start() -> Signald {
        Self::start_on(0)
    }

    pub fn start_on(port: u16) -> Signald {
        let args = [
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--ping-interval".into(),
            "100ms".into(),
            "--ping-timeout".into(),
            "300ms".into(),
        ];
        Self::start_in(None, &args)
    }

    /// Starts signald with `args`, inside network namespace `netns` if given.
    pub fn start_in(netns: Option<&str>, args: &[String]) -> Signald {
        let mut cmd = in_netns(netns, &bin("signald"));
        cmd.args(args);
        let proc = Proc::spawn("signald", cmd);
        let line = proc.wait_line("listening on");
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Signald { proc, port }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }
}

/// A p2pd with its own socket and state directory.
pub struct Daemon {
    pub proc: Proc,
    pub id: String,
    pub dir: tempfile::TempDir,
}

impl Daemon {
    pub fn start(server: &str, id: &str) -> Daemon {
        Self::start_with(server, id, &[])
    }

    pub fn start_with(server: &str, id: &str, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let d = Self::spawn(server, id, extra, dir);
        d.wait_status("connected to signald", |s| {
            s.server.state == ServerState::Connected
        });
        d
    }

    /// Spawns on loopback without waiting for anything but its socket.
    pub fn spawn(server: &str, id: &str, extra: &[&str], dir: tempfile::TempDir) -> Daemon {
        let extra = [&["--bind", "127.0.0.1"], extra].concat();
        Self::spawn_in(None, server, id, &extra, dir)
    }

    /// Spawns inside network namespace `netns` (if given), binding what
    /// `extra` says (by default every interface of that namespace).
    pub fn spawn_in(
        netns: Option<&str>,
        server: &str,
        id: &str,
        extra: &[&str],
        dir: tempfile::TempDir,
    ) -> Daemon {
        let mut cmd = in_netns(netns, &bin("p2pd"));
        cmd.args(["--server", server, "--id", id])
            .arg("--socket")
            .arg(dir.path().join("p2pd.sock"))
            .args(["--reconnect-max", "300ms"])
            .args(extra)
            .env("XDG_STATE_HOME", dir.path().join("state"))
            // P2PD_TEST_LOG=debug (or any filter) makes the daemons of a
            // failing test print more in the output dumped on failure.
            .env(
                "P2PD_LOG",
                std::env::var("P2PD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        let proc = Proc::spawn(&format!("p2pd {id}"), cmd);
        let d = Daemon {
            proc,
            id: id.to_string(),
            dir,
        };
        d.proc.wait_line("p2pd ready");
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("p2pd.sock")
    }

    /// A `p2pctl` command aimed at this daemon.
    pub fn ctl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("p2pctl"));
        cmd.arg("--socket").arg(self.socket()).args(args);
        cmd
    }

    /// Runs `p2pctl ARGS` to completion (stdin empty).
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("running p2pctl")
    }

    /// Runs `p2pctl ARGS` with `input` on stdin.
    pub fn ctl_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .ctl_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    /// Runs `p2pctl ARGS`, asserting success.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "p2pctl {args:?} failed: {}\nstderr: {}\ndaemon:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.proc.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn status(&self) -> Status {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status --json parses")
    }

    /// Polls `status` until `pred` holds.
    pub fn wait_status(&self, what: &str, pred: impl Fn(&Status) -> bool) -> Status {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.ctl(&["status", "--json"]);
            if out.status.success() {
                let s: Status = serde_json::from_slice(&out.stdout).unwrap();
                if pred(&s) {
                    return s;
                }
                if Instant::now() > deadline {
                    panic!(
                        "{}: never {what}; last status {s:#?}\nlog:\n{}",
                        self.id,
                        self.proc.log()
                    );
                }
            } else if Instant::now() > deadline {
                panic!("{}: status failed: {out:?}", self.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_open_with(&self, peer: &str) -> Status {
        self.wait_status(&format!("open with {peer}"), |s| {
            s.link == LinkState::Open && s.peer.as_ref().is_some_and(|p| p.id == peer)
        })
    }

    pub fn wait_idle(&self) -> Status {
        self.wait_status("idle", |s| s.link == LinkState::Idle && s.peer.is_none())
    }

    /// Pairs with `other` and waits until both sides report an open channel.
    pub fn pair(&self, other: &Daemon) {
        let out = self.ok(&["pair", &other.id]);
        assert!(out.contains("channel open"), "pair said {out:?}");
        other.wait_open_with(&self.id);
    }

    /// File descriptors and threads of the daemon process.
    pub fn fds_and_threads(&self) -> (usize, usize) {
        let pid = self.proc.pid();
        let count = |p: String| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
        (
            count(format!("/proc/{pid}/fd")),
            count(format!("/proc/{pid}/task")),
        )
    }
}

/// A running `p2pctl tail` whose stdout lines arrive on a channel.
pub struct Tail {
    pub child: Child,
    pub lines: mpsc::Receiver<Vec<u8>>,
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
            .unwrap();
        let stdout = child.stdout.take().unwrap();
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

    pub fn next(&self) -> Vec<u8> {
        self.lines
            .recv_timeout(WAIT)
            .expect("tail printed no line in time")
    }

    pub fn next_str(&self) -> String {
        String::from_utf8(self.next()).unwrap()
    }

    /// The next `--json` event object.
    pub fn next_event(&self) -> serde_json::Value {
        serde_json::from_slice(&self.next()).unwrap()
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
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
