//! Child processes of a test: spawn a built binary, collect its stdout and
//! stderr in the background, wait for a line, signal it, and kill it on
//! drop (printing what it said when the test is failing).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound for any single awaited state; reaching it fails the test.
pub const WAIT: Duration = Duration::from_secs(20);

/// How long a browser may take to start and reach signald: Firefox took
/// over [`WAIT`] while the rest of the suite ran on the same two cores.
pub const BROWSER_START: Duration = Duration::from_secs(60);

/// A program built by this workspace, found beside the running test or
/// benchmark executable (`target/<profile>/` or its `deps/`): `cargo test
/// --workspace` builds every binary of the workspace there.
/// `P2P_TEST_BINS=DIR` takes them from DIR instead (e.g. to check that a
/// new test fails against an older build).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("P2P_TEST_BINS") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("the test executable's path");
            let mut dir = exe.parent().expect("a directory").to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo test --workspace`, scripts/test)",
        p.display()
    );
    p
}

/// The directory of the package whose test is running, as `cargo test`
/// sets it when it runs the test. Not `env!("CARGO_MANIFEST_DIR")`: clones
/// that share one target directory (CI's clean clone, a worktree) share
/// test binaries too, and the value compiled in may name a clone that is
/// gone.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .expect("CARGO_MANIFEST_DIR is set: run the tests with cargo test")
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

/// A child process whose stdout and stderr are collected in the background.
pub struct Proc {
    name: String,
    child: Child,
    log: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
    /// The threads collecting stdout and stderr: done once both reach EOF.
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Asked to stop (SIGTERM) before it is killed on drop.
    terminate_first: bool,
}

impl Proc {
    /// Spawns `cmd` with stdin from /dev/null and both outputs collected,
    /// in a process group of its own, which dies with it (see `Drop`).
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let log = log.clone();
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push_str(&format!("{line}\n"));
                    // The test may have stopped listening; the log still has it.
                    let _ = tx.send(line);
                }
            }));
        }
        Proc {
            name: name.to_string(),
            child,
            log,
            lines,
            readers,
            terminate_first: false,
        }
    }

    /// On drop, SIGTERM first and up to [`TERM_GRACE`] to exit, then the
    /// kill: for a process whose children are not in its group (a node
    /// script's browser, which puppeteer starts detached and closes only
    /// when the script exits by a signal it can handle).
    pub fn terminate_on_drop(&mut self) {
        self.terminate_first = true;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits (at most [`WAIT`]) for an output line containing `needle`;
    /// returns it.
    pub fn wait_line(&self, needle: &str) -> String {
        self.wait_line_within(needle, WAIT)
    }

    /// [`wait_line`](Self::wait_line) with its own bound, for a start-up
    /// that is slow by nature (a browser under the full suite's load).
    pub fn wait_line_within(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
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

    /// Everything the process printed so far, stdout and stderr.
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

    /// Stops the process (SIGSTOP) and waits until every one of its threads
    /// is stopped: `kill` returns before that, and a thread still running
    /// on the other core may handle one more event meanwhile.
    pub fn stop(&self) {
        self.signal(libc::SIGSTOP);
        let tasks = format!("/proc/{}/task", self.pid());
        wait_for("the process to stop", || {
            let stopped = std::fs::read_dir(&tasks).is_ok_and(|dir| {
                dir.flatten().all(|t| {
                    // The state follows the command name, which is in
                    // parentheses and may itself hold spaces.
                    std::fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
                        st.rsplit_once(')')
                            .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
                    })
                })
            });
            if stopped {
                Ok(())
            } else {
                Err("still running")
            }
        });
    }

    /// Waits (at most [`WAIT`]) for the process to exit, and for what it
    /// wrote to be in [`Proc::log`] (a loaded CI run read an empty log
    /// just after an exit whose message the failure dump then showed).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                // The pipes reach EOF once every holder is gone (children
                // left in its group may keep them open: not past WAIT).
                while !self.readers.iter().all(|r| r.is_finished()) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
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

    /// File descriptors and threads of the process, from /proc.
    pub fn fds_and_threads(&self) -> (usize, usize) {
        let pid = self.pid();
        let count = |p: String| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
        (
            count(format!("/proc/{pid}/fd")),
            count(format!("/proc/{pid}/task")),
        )
    }
}

/// How long a process asked with [`Proc::terminate_on_drop`] may take to
/// exit on SIGTERM.
pub const TERM_GRACE: Duration = Duration::from_secs(5);

impl Drop for Proc {
    fn drop(&mut self) {
        if self.terminate_first {
            self.signal(libc::SIGTERM);
            let until = Instant::now() + TERM_GRACE;
            while Instant::now() < until && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // The whole group: what the process started goes with it. A node
        // script's browser outlived its SIGKILLed parent, and after a few
        // suites dozens of Firefoxes filled the machine's memory (the OOM
        // killer then took a test binary).
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- {} output -----\n{}", self.name, self.log());
        }
    }
}

/// Polls `probe` every few milliseconds until it returns `Some`, failing
/// the test with `what` and the last value seen after [`WAIT`].
pub fn wait_for<T, L: std::fmt::Debug>(what: &str, mut probe: impl FnMut() -> Result<T, L>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => panic!("never {what}; last seen: {last:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
