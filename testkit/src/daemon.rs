//! A real `p2pd` process, and `p2pctl` aimed at it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use p2p_proto::control::{LinkState, ServerState, Status};

use crate::control::Control;
use crate::proc::{Proc, WAIT, bin, in_netns};
use crate::signald::Signald;

/// How a daemon is started; see [`Daemon::builder`].
pub struct DaemonBuilder {
    server: String,
    id: String,
    args: Vec<String>,
    netns: Option<String>,
    dir: Option<tempfile::TempDir>,
    loopback: bool,
    /// The tests' short reconnect cap, or p2pd's default (for benchmarks).
    fast_reconnect: bool,
}

impl DaemonBuilder {
    /// Extra p2pd arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Runs inside this network namespace and binds what the arguments say
    /// (by default every interface there) instead of 127.0.0.1.
    pub fn netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.to_string());
        self.loopback = false;
        self
    }

    /// Uses this directory for the socket and the state (e.g. one prepared
    /// with a token), instead of a fresh one.
    pub fn dir(mut self, dir: tempfile::TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Keeps p2pd's own `--reconnect-max` instead of the tests' 300 ms
    /// (for a benchmark of how soon daemons are back at signald).
    pub fn default_reconnect(mut self) -> Self {
        self.fast_reconnect = false;
        self
    }

    /// Starts p2pd and waits until its control socket serves.
    pub fn spawn(self) -> Daemon {
        let dir = match self.dir {
            Some(d) => d,
            None => tempfile::tempdir().expect("a temporary directory"),
        };
        let mut cmd = in_netns(self.netns.as_deref(), &bin("p2pd"));
        cmd.args(["--server", &self.server, "--id", &self.id])
            .arg("--socket")
            .arg(dir.path().join("p2pd.sock"));
        if self.fast_reconnect {
            cmd.args(["--reconnect-max", "300ms"]);
        }
        if self.loopback {
            cmd.args(["--bind", "127.0.0.1"]);
        }
        cmd.args(&self.args)
            .env("XDG_STATE_HOME", dir.path().join("state"))
            .env_remove("P2PD_SOCKET")
            // P2PD_TEST_LOG=debug (or any filter) makes the daemons of a
            // failing test print more in the output dumped on failure.
            .env(
                "P2PD_LOG",
                std::env::var("P2PD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        let proc = Proc::spawn(&format!("p2pd {}", self.id), cmd);
        let d = Daemon {
            proc,
            id: self.id,
            dir,
        };
        d.proc.wait_line("p2pd ready");
        d
    }

    /// Starts p2pd and waits until it is registered at signald.
    pub fn start(self) -> Daemon {
        let d = self.spawn();
        d.wait_status("connected to signald", |s| {
            s.server.state == ServerState::Connected
        });
        d
    }
}

/// A running p2pd with its own socket and state directory; killed on drop.
pub struct Daemon {
    proc: Proc,
    id: String,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// A daemon registering as `id` at `server`, bound to 127.0.0.1.
    pub fn builder(server: &str, id: &str) -> DaemonBuilder {
        DaemonBuilder {
            server: server.to_string(),
            id: id.to_string(),
            args: Vec::new(),
            netns: None,
            dir: None,
            loopback: true,
            fast_reconnect: true,
        }
    }

    /// Started and registered at signald.
    pub fn start(server: &str, id: &str) -> Daemon {
        Self::builder(server, id).start()
    }

    /// Started with extra arguments and registered at signald.
    pub fn start_with(server: &str, id: &str, extra: &[&str]) -> Daemon {
        Self::builder(server, id).args(extra).start()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    pub fn proc_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("p2pd.sock")
    }

    /// `$XDG_STATE_HOME/p2pd` of this daemon (its token, later its keys).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state").join("p2pd")
    }

    /// A typed control connection.
    pub fn control(&self) -> Control {
        Control::connect(&self.socket()).expect("connecting the control socket")
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
        self.spawn_ctl_stdin(args, input.to_vec())
            .wait_with_output()
            .expect("waiting for p2pctl")
    }

    /// Starts `p2pctl ARGS` with `input` fed to its stdin from a thread,
    /// and returns at once (stdout and stderr piped): for a test that acts
    /// while the command runs, then waits for its output.
    pub fn spawn_ctl_stdin(&self, args: &[&str], input: Vec<u8>) -> Child {
        let mut child = self
            .ctl_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running p2pctl");
        let mut stdin = child.stdin.take().expect("piped");
        // p2pctl may stop reading early (a refusal): that is not our error.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        child
    }

    /// Runs `p2pctl ARGS`, asserting success; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "p2pctl {args:?} failed: {}\nstderr: {}\ndaemon:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.proc.log()
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Runs `p2pctl ARGS`, asserting exit code 1 and a one-line error
    /// containing `needle`; returns that line.
    pub fn refused(&self, args: &[&str], needle: &str) -> String {
        let out = self.ctl(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "p2pctl {args:?}: {err}");
        assert!(
            err.contains(needle),
            "p2pctl {args:?}: {err:?} lacks {needle:?}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        err
    }

    /// `p2pctl status --json`, parsed.
    pub fn status(&self) -> Status {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status --json parses")
    }

    /// Polls `status` until `pred` holds.
    pub fn wait_status(&self, what: &str, pred: impl Fn(&Status) -> bool) -> Status {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.ctl(&["status", "--json"]);
            if out.status.success() {
                let s: Status = serde_json::from_slice(&out.stdout).expect("status parses");
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

    /// Stops the daemon with SIGTERM (asserting a clean exit) and hands
    /// back its directory, e.g. to start it again with the same key and
    /// token.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.proc.signal(libc::SIGTERM);
        let st = self.proc.wait_exit();
        assert!(st.success(), "{} exited with {st}", self.id);
        std::mem::replace(
            &mut self.dir,
            tempfile::tempdir().expect("a temporary directory"),
        )
    }

    /// `ID@fingerprint`, as `p2pctl id` prints it.
    pub fn token(&self) -> String {
        self.ok(&["id"]).trim().to_string()
    }

    /// Pins `other`'s key, as a user would: `p2pctl trust` with the token
    /// the other side's `p2pctl id` printed.
    pub fn trust(&self, other: &Daemon) {
        self.ok(&["trust", &other.token()]);
    }

    /// Each pins the other's key.
    pub fn trust_each_other(&self, other: &Daemon) {
        self.trust(other);
        other.trust(self);
    }

    /// Pairs with `other` (each trusting the other first, as under the
    /// default `--trust known` they must) and waits until both sides report
    /// an open channel.
    pub fn pair(&self, other: &Daemon) {
        self.trust_each_other(other);
        let out = self.ok(&["pair", &other.id]);
        assert!(out.contains("channel open"), "pair said {out:?}");
        other.wait_open_with(&self.id);
    }

    /// File descriptors and threads of the daemon process.
    pub fn fds_and_threads(&self) -> (usize, usize) {
        self.proc.fds_and_threads()
    }
}

/// A signald and two daemons registered as `a` and `b`, with `a` paired to
/// `b` and the channel open on both sides.
pub fn paired(a: &str, b: &str) -> (Signald, Daemon, Daemon) {
    let s = Signald::start();
    let da = Daemon::start(&s.url(), a);
    let db = Daemon::start(&s.url(), b);
    da.pair(&db);
    (s, da, db)
}
