//! A real `signald` process.

use crate::proc::{Proc, bin, in_netns};

/// The tests' ping timings; see [`Signald::start`].
const PING_INTERVAL: &str = "100ms";
const PING_TIMEOUT: &str = "2s";

/// A running signald; killed on drop.
pub struct Signald {
    proc: Proc,
    addr: String,
}

impl Signald {
    /// On 127.0.0.1, an ephemeral port, pinging every 100 ms with a 2 s
    /// timeout. The timeout is long enough that a loaded CI machine (two
    /// cores, a dozen daemons, browsers starting) does not see a signaling
    /// link drop that no test asked for: at 300 ms, `pair` now and then met
    /// a peer that was reconnecting after a scheduling stall. Tests that
    /// must hold a process still, or need other timings, pick their own
    /// with [`start_pinging`](Self::start_pinging).
    pub fn start() -> Signald {
        Self::start_on(0)
    }

    /// Like [`start`](Self::start) on a given port (to restart in place).
    pub fn start_on(port: u16) -> Signald {
        let listen = format!("127.0.0.1:{port}");
        Self::start_with(&[
            "--listen",
            &listen,
            "--ping-interval",
            PING_INTERVAL,
            "--ping-timeout",
            PING_TIMEOUT,
        ])
    }

    /// Like [`start`](Self::start), with extra arguments.
    pub fn start_plus(extra: &[&str]) -> Signald {
        Self::start_pinging(PING_INTERVAL, PING_TIMEOUT, extra)
    }

    /// On 127.0.0.1 with these ping timings and extra arguments, for tests
    /// that must hold a process still for longer than the default timeout,
    /// or need other timings.
    pub fn start_pinging(interval: &str, timeout: &str, extra: &[&str]) -> Signald {
        let args = [
            &[
                "--listen",
                "127.0.0.1:0",
                "--ping-interval",
                interval,
                "--ping-timeout",
                timeout,
            ],
            extra,
        ]
        .concat();
        Self::start_with(&args)
    }

    /// With exactly these arguments (give `--listen`).
    pub fn start_with(args: &[&str]) -> Signald {
        Self::start_in(None, args)
    }

    /// With these arguments, inside network namespace `netns` if given.
    pub fn start_in(netns: Option<&str>, args: &[&str]) -> Signald {
        let mut cmd = in_netns(netns, &bin("signald"));
        cmd.args(args).env("SIGNALD_LOG", "info");
        Self::spawn(cmd)
    }

    /// Spawns a prepared command (environment, file descriptors...) and
    /// waits for its `signald listening on ADDR` line.
    pub fn spawn(cmd: std::process::Command) -> Signald {
        let proc = Proc::spawn("signald", cmd);
        let line = proc.wait_line("signald listening on ");
        let addr = line
            .rsplit("listening on ")
            .next()
            .map(|a| a.trim().to_string())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Signald { proc, addr }
    }

    /// `HOST:PORT` as signald printed it.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {}", self.addr))
    }

    /// The WebSocket URL clients connect to.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The same over TLS (for a signald given --tls-cert and --tls-key).
    pub fn wss_url(&self) -> String {
        format!("wss://{}/ws", self.addr)
    }

    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    pub fn proc_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}
