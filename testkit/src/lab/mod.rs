//! The NAT lab: real NATs in network namespaces, built and torn down by
//! each test or benchmark (`../shared/design/nat-lab.md` has the facts
//! behind it). This module builds the topology; [`wire`] is the userspace
//! delay and loss link; the cases live in `ctl/tests/nat_lab.rs` and the
//! benchmark in `bench/src/bin/p2pd-lab-bench.rs`.
//!
//! ```text
//!  inet: bridge 198.51.100.0/24 — signald + coturn on .1, no forwarding
//!   ├── r1: wan 198.51.100.11, NAT, lan 10.0.1.1 ── h1: 10.0.1.2 (p2pd)
//!   └── r2: wan 198.51.100.12, NAT, lan 10.0.2.1 ── h2: 10.0.2.2 (p2pd)
//! ```
//!
//! Routers drop unsolicited input on their WAN side; `MASQUERADE` gives a
//! cone NAT (endpoint-independent mapping), `--random-fully` a symmetric
//! one. Every veth is created inside the lab's namespaces, so deleting
//! them removes everything; dropping a [`Lab`] checks that the host
//! namespace's links, routes and firewall ruleset are exactly as before.
//! Needs root, `ip netns`, iptables and coturn (`scripts/test` installs
//! them as root); elsewhere [`lab_or_skip!`](crate::lab_or_skip) prints one
//! `SKIPPED` line.

pub mod wire;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use p2p_proto::control::Status;

use crate::{Daemon, Proc, Signald};
use wire::Impairment;

pub const PUBLIC: &str = "198.51.100.1";
/// coturn's `static-auth-secret`; signald mints time-limited credentials
/// from it for every welcome (the TURN REST scheme).
const TURN_SECRET: &str = "lab-turn-shared-secret";

/// The kind of NAT both routers do.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Nat {
    Cone,
    Symmetric,
}

/// Runs a command, panicking with its output on failure.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn ns_sh(ns: &str, script: &str) {
    run(&["ip", "netns", "exec", ns, "sh", "-ec", script]);
}

/// Why this machine cannot run the lab, if it cannot (probed once).
pub fn cannot_run() -> Option<String> {
    static VERDICT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    VERDICT.get_or_init(probe_lab).clone()
}

fn probe_lab() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "iptables", "turnserver"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "{tool} is not installed (scripts/test installs it as root)"
            ));
        }
    }
    let probe = format!("p2pprobe{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return Some("`ip netns add` does not work here".into());
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    None
}

#[macro_export]
macro_rules! lab_or_skip {
    () => {
        if let Some(why) = $crate::lab::cannot_run() {
            $crate::skip("nat lab", &why);
            return;
        }
    };
}

/// What the host namespace looks like to someone checking it was not
/// touched.
fn host_snapshot() -> String {
    let mut s = run(&["ip", "-o", "link", "show"]);
    // Counters and flags of links can change by themselves; keep names.
    s = s
        .lines()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n");
    s.push_str(&run(&["ip", "route", "show", "table", "all"]));
    s.push_str(&run(&["ip", "rule", "show"]));
    s.push_str(
        &run(&["iptables-save"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    );
    s
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// One lab topology; deleted (with everything in it) on drop.
pub struct Lab {
    prefix: String,
    host_before: String,
    dir: tempfile::TempDir,
    procs: Vec<Proc>,
    alive: Vec<String>,
    coturn: Option<i32>,
}

impl Lab {
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn build(nat: Nat) -> Lab {
        let host_before = host_snapshot();
        let prefix = format!(
            "p2p{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            prefix,
            host_before,
            dir: tempfile::tempdir().unwrap(),
            procs: Vec::new(),
            alive: Vec::new(),
            coturn: None,
        };
        for n in ["inet", "r1", "h1", "r2", "h2"] {
            let ns = lab.ns(n);
            run(&["ip", "netns", "add", &ns]);
            lab.alive.push(ns.clone());
            ns_sh(
                &ns,
                "ip link set lo up
                 sysctl -qw net.ipv6.conf.all.disable_ipv6=1
                 sysctl -qw net.ipv6.conf.default.disable_ipv6=1
                 sysctl -qw net.ipv4.conf.all.rp_filter=0
                 sysctl -qw net.ipv4.conf.default.rp_filter=0
                 sysctl -qw net.ipv4.ip_forward=0",
            );
        }
        let inet = lab.ns("inet");
        ns_sh(
            &inet,
            &format!(
                "ip link add br0 type bridge
                 ip link set br0 address 02:00:00:00:00:01
                 ip addr add {PUBLIC}/24 dev br0
                 ip link set br0 up
                 sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true"
            ),
        );
        for (i, lan) in [(1, "10.0.1"), (2, "10.0.2")] {
            let r = lab.ns(&format!("r{i}"));
            let h = lab.ns(&format!("h{i}"));
            run(&[
                "ip",
                "-n",
                &inet,
                "link",
                "add",
                &format!("wan{i}"),
                "type",
                "veth",
                "peer",
                "name",
                "wan",
                "netns",
                &r,
            ]);
            run(&[
                "ip", "-n", &r, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
                "netns", &h,
            ]);
            ns_sh(&inet, &format!("ip link set wan{i} master br0 up"));
            let masquerade = match nat {
                Nat::Cone => "MASQUERADE",
                Nat::Symmetric => "MASQUERADE --random-fully",
            };
            ns_sh(
                &r,
                &format!(
                    "ip addr add 198.51.100.1{i}/24 dev wan
                     ip link set wan up
                     ip addr add {lan}.1/24 dev lan
                     ip link set lan up
                     sysctl -qw net.ipv4.ip_forward=1
                     iptables -t nat -A POSTROUTING -o wan -j {masquerade}
                     iptables -P FORWARD DROP
                     iptables -A FORWARD -i lan -o wan -j ACCEPT
                     iptables -A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
                     iptables -A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
                     iptables -A INPUT -i wan -j DROP"
                ),
            );
            ns_sh(
                &h,
                &format!(
                    "ip addr add {lan}.2/24 dev eth0
                     ip link set eth0 up
                     ip route add default via {lan}.1"
                ),
            );
        }
        lab
    }

    /// coturn on the public address, checking TURN REST credentials against
    /// the shared secret, with private peer addresses denied (else it tries
    /// to relay to LAN addresses and tears the allocation down).
    pub fn start_coturn(&mut self) {
        let dir = self.dir.path();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns("inet"), "turnserver", "-n"])
            .arg(format!("--listening-ip={PUBLIC}"))
            .arg(format!("--relay-ip={PUBLIC}"))
            .args([
                "--listening-port=3478",
                "--min-port=49152",
                "--max-port=49252",
            ])
            .args(["--use-auth-secret", "--realm=lab", "--fingerprint"])
            .arg(format!("--static-auth-secret={TURN_SECRET}"))
            .args([
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--verbose",
                "--simple-log",
            ])
            .args([
                "--denied-peer-ip=10.0.0.0-10.255.255.255",
                "--denied-peer-ip=172.16.0.0-172.31.255.255",
                "--denied-peer-ip=192.168.0.0-192.168.255.255",
            ])
            .arg(format!("--userdb={}", dir.join("turndb").display()))
            .arg(format!("--log-file={}", dir.join("turn.log").display()))
            .arg(format!("--pidfile={}", dir.join("turn.pid").display()));
        let proc = Proc::spawn("coturn", cmd);
        // Ready once its UDP port is bound.
        let inet = self.ns("inet");
        let deadline = std::time::Instant::now() + crate::WAIT;
        loop {
            let ss = run(&["ip", "netns", "exec", &inet, "ss", "-uln"]);
            if ss.contains(&format!("{PUBLIC}:3478")) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "coturn did not bind; log:\n{}",
                proc.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.coturn = Some(proc.pid());
        self.procs.push(proc);
    }

    /// coturn's PID once [`start_coturn`](Self::start_coturn) ran (`ip
    /// netns exec` execs it, so this is turnserver itself).
    pub fn coturn_pid(&self) -> Option<i32> {
        self.coturn
    }

    pub fn signald(&self, ice: &[String]) -> Signald {
        self.signald_with(ice, &[])
    }

    /// signald with `ice` and `extra` arguments.
    pub fn signald_with(&self, ice: &[String], extra: &[&str]) -> Signald {
        self.signald_pinging(ice, extra, ("500ms", "2s"))
    }

    /// signald for a test with another WebRTC stack: pings every second
    /// and a 5 s timeout. aiortc's one asyncio thread, setting up its next
    /// connection under the full suite's load, once left signald's pings
    /// unanswered past 2 s, and signald dropped it mid-pairing; how soon
    /// signald notices a stalled client is not what these tests test.
    pub fn signald_for_stacks(&self, ice: &[String]) -> Signald {
        self.signald_pinging(ice, &[], ("1s", "5s"))
    }

    /// signald with `ice`, `extra` arguments and these ping interval and
    /// timeout.
    fn signald_pinging(&self, ice: &[String], extra: &[&str], pings: (&str, &str)) -> Signald {
        let mut args: Vec<String> = vec![
            "--listen".into(),
            format!("{PUBLIC}:8765"),
            "--ping-interval".into(),
            pings.0.into(),
            "--ping-timeout".into(),
            pings.1.into(),
        ];
        if ice.iter().any(|s| s.starts_with("turn:")) {
            let secret = self.dir.path().join("turn-secret");
            std::fs::write(&secret, format!("{TURN_SECRET}\n")).unwrap();
            args.push("--turn-secret-file".into());
            args.push(secret.display().to_string());
        }
        for s in ice {
            args.push("--ice-server".into());
            args.push(s.clone());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Signald::start_in(Some(&self.ns("inet")), &args)
    }

    /// coturn, signald with `ice`, and p2pd `h1` and `h2` on the two LANs.
    pub fn start_peers(&mut self, ice: &[String]) -> (Signald, Daemon, Daemon) {
        self.start_coturn();
        let s = self.signald(ice);
        let a = self.daemon("h1", "h1", &[]);
        let b = self.daemon("h2", "h2", &[]);
        (s, a, b)
    }

    pub fn daemon(&self, host: &str, id: &str, extra: &[&str]) -> Daemon {
        Daemon::builder(&Self::server_url(), id)
            .netns(&self.ns(host))
            .args(extra)
            .start()
    }

    /// Puts an impairment box between r2's WAN and the internet bridge:
    /// `delay` each way and `loss` (a fraction) each way. Drop the result
    /// before the lab.
    pub fn impair_r2_uplink(&mut self, delay: std::time::Duration, loss: f64) -> Impairment {
        let inet = self.ns("inet");
        let r2 = self.ns("r2");
        let d = self.ns("d2");
        run(&["ip", "netns", "add", &d]);
        self.alive.push(d.clone());
        ns_sh(&inet, "ip link del wan2");
        run(&[
            "ip", "-n", &r2, "link", "add", "wan", "type", "veth", "peer", "name", "imp0", "netns",
            &d,
        ]);
        run(&[
            "ip", "-n", &d, "link", "add", "imp1", "type", "veth", "peer", "name", "wan2", "netns",
            &inet,
        ]);
        let offloads = "tx off tso off gso off gro off >/dev/null 2>&1 || true";
        ns_sh(
            &inet,
            &format!("ip link set wan2 master br0 up\nethtool -K wan2 {offloads}"),
        );
        ns_sh(
            &d,
            &format!(
                "ip link set lo up
                 sysctl -qw net.ipv6.conf.all.disable_ipv6=1
                 ip link set imp0 up
                 ip link set imp1 up
                 ethtool -K imp0 {offloads}
                 ethtool -K imp1 {offloads}"
            ),
        );
        ns_sh(
            &r2,
            &format!(
                "ip addr add 198.51.100.12/24 dev wan
                 ip link set wan up
                 ethtool -K wan {offloads}"
            ),
        );
        Impairment::start(&d, "imp0", "imp1", delay, loss)
    }

    /// Forwards TCP `port` on r2's public address to h2, so that a plain
    /// TCP transfer can take exactly the path p2pd's packets take (for the
    /// benchmark's comparison).
    pub fn forward_tcp_to_h2(&self, port: u16) {
        ns_sh(
            &self.ns("r2"),
            &format!(
                "iptables -t nat -A PREROUTING -i wan -p tcp --dport {port} -j DNAT --to-destination 10.0.2.2:{port}
                 iptables -A FORWARD -i wan -o lan -p tcp --dport {port} -j ACCEPT"
            ),
        );
    }

    /// Router r1's mapping changes under its peer, as after a NAT reboot
    /// with a new lease or a hop to another network: its NAT moves to a
    /// second public address (198.51.100.21) and forgets every mapping
    /// (conntrack flushed). Packets to the old mapping are dropped from
    /// now on; h1's next packets leave from the new address.
    pub fn rebind_r1(&self) {
        ns_sh(
            &self.ns("r1"),
            "ip addr add 198.51.100.21/24 dev wan
             iptables -t nat -R POSTROUTING 1 -o wan -j SNAT --to-source 198.51.100.21
             conntrack -F 2>/dev/null",
        );
    }

    /// h1 itself gets a new address (10.0.1.3 for 10.0.1.2, the default
    /// route made again), as a host moved to another network does: its
    /// sockets stay, what they send leaves from the new address.
    pub fn renumber_h1(&self) {
        ns_sh(
            &self.ns("h1"),
            "ip addr del 10.0.1.2/24 dev eth0
             ip addr add 10.0.1.3/24 dev eth0
             ip route replace default via 10.0.1.1",
        );
    }

    /// Deletes one namespace now (a router "losing power").
    pub fn kill_ns(&mut self, name: &str) {
        let ns = self.ns(name);
        run(&["ip", "netns", "del", &ns]);
        self.alive.retain(|n| *n != ns);
    }

    /// signald's URL as the lab's hosts reach it.
    pub fn server_url() -> String {
        format!("ws://{PUBLIC}:8765/ws")
    }

    pub fn stun() -> String {
        format!("stun:{PUBLIC}:3478")
    }

    pub fn turn() -> String {
        format!("turn:{PUBLIC}:3478")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.procs.clear();
        for ns in self.alive.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        if !std::thread::panicking() {
            let after = host_snapshot();
            assert_eq!(
                self.host_before, after,
                "the lab left the host namespace changed"
            );
        }
    }
}

pub fn path_of(s: &Status) -> p2p_proto::control::Path {
    s.peer
        .as_ref()
        .and_then(|p| p.path.clone())
        .unwrap_or_else(|| panic!("no selected path in {s:#?}"))
}

pub fn pair_ok(a: &Daemon, b: &Daemon) -> p2p_proto::control::Path {
    a.trust_each_other(b);
    let out = a.ctl(&["pair", b.id(), "--timeout", "30s"]);
    assert!(
        out.status.success(),
        "pair failed: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.proc().log(),
        b.proc().log()
    );
    b.wait_open_with(a.id());
    // The stats may name the selected pair a moment after the open.
    let st = a.wait_status("reporting the selected path", |s| {
        s.peer.as_ref().is_some_and(|p| p.path.is_some())
    });
    path_of(&st)
}
