//! A real `redis-server` for the cluster tests: on 127.0.0.1, a port picked
//! free, a temporary directory, no persistence (`--save '' --appendonly
//! no`), killed on drop. Where redis-server is not installed the test
//! prints one `SKIPPED` line and returns (`scripts/test` installs it as
//! root).

use std::path::PathBuf;
use std::process::Command;

use p2p_testkit::Proc;

pub struct Redis {
    proc: Option<Proc>,
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    /// Arguments beyond the plain TCP listener (TLS, ACL users).
    extra: Vec<String>,
    tls: bool,
}

/// `redis-server` on the PATH.
fn find() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("redis-server"))
        .find(|f| f.is_file())
}

impl Redis {
    /// Starts one for `test`, or prints the skip line and gives `None`.
    pub fn start(test: &str) -> Option<Redis> {
        Redis::start_with(test, false, &[])
    }

    /// Starts one with `extra` arguments; with `tls`, the port speaks only
    /// TLS (`--tls-port`; `extra` names the certificate files).
    pub fn start_with(test: &str, tls: bool, extra: &[&str]) -> Option<Redis> {
        let Some(bin) = find() else {
            p2p_testkit::skip(test, "redis-server is not installed");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut r = Redis {
            proc: None,
            bin,
            dir: tempfile::tempdir().expect("a temporary directory"),
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
        };
        r.spawn();
        Some(r)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(&self.bin);
        let port = self.port.to_string();
        let listen = if self.tls {
            ["--port", "0", "--tls-port", &port]
        } else {
            ["--port", &port, "--tls-port", "0"]
        };
        cmd.args(["--bind", "127.0.0.1"])
            .args(listen)
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra);
        let p = Proc::spawn("redis-server", cmd);
        p.wait_line("Ready to accept connections");
        self.proc = Some(p);
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// The URL with `user:password@`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        self.url()
            .replacen("://", &format!("://{user}:{password}@"), 1)
    }

    /// Kills it (SIGKILL: everything in it is lost, as it has no
    /// persistence).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(libc::SIGKILL);
            p.wait_exit();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn proc(&self) -> &Proc {
        self.proc.as_ref().expect("running")
    }
}
