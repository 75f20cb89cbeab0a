//! The NAT lab: real NATs in network namespaces, built and torn down by
//! each test (`../shared/design/nat-lab.md` has the facts behind it).
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
//! them removes everything; each test checks that the host namespace's
//! links, routes and firewall ruleset are exactly as before. Needs root,
//! `ip netns`, iptables and coturn (`scripts/test` installs them as root);
//! elsewhere each test prints one `SKIPPED` line and passes.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use p2p_proto::control::{LinkState, ServerState, Status};

use crate::util::{Daemon, Proc, Signald, Tail};

const PUBLIC: &str = "198.51.100.1";
/// coturn's `static-auth-secret`; signald mints time-limited credentials
/// from it for every welcome (the TURN REST scheme).
const TURN_SECRET: &str = "lab-turn-shared-secret";

#[derive(Clone, Copy, PartialEq)]
enum Nat {
    Cone,
    Symmetric,
}

/// Runs a command, panicking with its output on failure.
fn run(args: &[&str]) -> String {
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

fn ns_sh(ns: &str, script: &str) {
    run(&["ip", "netns", "exec", ns, "sh", "-ec", script]);
}

/// Why this machine cannot run the lab, if it cannot (probed once).
fn cannot_run() -> Option<String> {
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

macro_rules! lab_or_skip {
    () => {
        if let Some(why) = cannot_run() {
            // Straight to stderr: the test harness would hide a println!.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED nat lab: {why}");
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
struct Lab {
    prefix: String,
    host_before: String,
    dir: tempfile::TempDir,
    procs: Vec<Proc>,
    alive: Vec<String>,
}

impl Lab {
    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn build(nat: Nat) -> Lab {
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
    fn start_coturn(&mut self) {
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
        let deadline = std::time::Instant::now() + crate::util::WAIT;
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
        self.procs.push(proc);
    }

    fn signald(&self, ice: &[String]) -> Signald {
        let mut args: Vec<String> = vec![
            "--listen".into(),
            format!("{PUBLIC}:8765"),
            "--ping-interval".into(),
            "500ms".into(),
            "--ping-timeout".into(),
            "2s".into(),
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
        Signald::start_in(Some(&self.ns("inet")), &args)
    }

    /// coturn, signald with `ice`, and p2pd `h1` and `h2` on the two LANs.
    fn start_peers(&mut self, ice: &[String]) -> (Signald, Daemon, Daemon) {
        self.start_coturn();
        let s = self.signald(ice);
        let a = self.daemon("h1", "h1", &[]);
        let b = self.daemon("h2", "h2", &[]);
        (s, a, b)
    }

    fn daemon(&self, host: &str, id: &str, extra: &[&str]) -> Daemon {
        let d = Daemon::spawn_in(
            Some(&self.ns(host)),
            &format!("ws://{PUBLIC}:8765/ws"),
            id,
            extra,
            tempfile::tempdir().unwrap(),
        );
        d.wait_status("connected to signald", |s| {
            s.server.state == ServerState::Connected
        });
        d
    }

    /// Puts an impairment box between r2's WAN and the internet bridge:
    /// 50 ms each way and 2% loss each way. Drop the result before the lab.
    fn impair_r2_uplink(&mut self) -> Impairment {
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
        Impairment::start(
            &d,
            "imp0",
            "imp1",
            std::time::Duration::from_millis(50),
            0.02,
        )
    }

    /// Deletes one namespace now (a router "losing power").
    fn kill_ns(&mut self, name: &str) {
        let ns = self.ns(name);
        run(&["ip", "netns", "del", &ns]);
        self.alive.retain(|n| *n != ns);
    }

    fn stun() -> String {
        format!("stun:{PUBLIC}:3478")
    }

    fn turn() -> String {
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

fn path_of(s: &Status) -> p2p_proto::control::Path {
    s.peer
        .as_ref()
        .and_then(|p| p.path.clone())
        .unwrap_or_else(|| panic!("no selected path in {s:#?}"))
}

fn pair_ok(a: &Daemon, b: &Daemon) -> p2p_proto::control::Path {
    let out = a.ctl(&["pair", &b.id, "--timeout", "30s"]);
    assert!(
        out.status.success(),
        "pair failed: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.proc.log(),
        b.proc.log()
    );
    b.wait_open_with(&a.id);
    // The stats may name the selected pair a moment after the open.
    let st = a.wait_status("reporting the selected path", |s| {
        s.peer.as_ref().is_some_and(|p| p.path.is_some())
    });
    path_of(&st)
}

/// Case 1: Cone NATs, STUN only: hole punching gives a direct path.
#[test]
fn lab_cone_nats_with_stun_connect_directly() {
    lab_or_skip!();
    let mut lab = Lab::build(Nat::Cone);
    let (_s, a, b) = lab.start_peers(&[Lab::stun()]);
    let path = pair_ok(&a, &b);
    assert_ne!(path.local_type, "relay", "{path:?}");
    assert_ne!(path.remote_type, "relay", "{path:?}");
    // Through the NAT: the peer is seen at its router's public address.
    assert!(
        path.remote_address.starts_with("198.51.100.12:"),
        "{path:?}"
    );
    assert!(
        ["srflx", "prflx"].contains(&path.remote_type.as_str()),
        "{path:?}"
    );
    a.ok(&["send", "through the cone"]);
}

/// Case 2: Symmetric NATs, STUN only: no path; pair fails in bounded time with a
/// reason a person can act on, and both daemons are ready again.
#[test]
fn lab_symmetric_nats_without_turn_fail_with_a_reason() {
    lab_or_skip!();
    let mut lab = Lab::build(Nat::Symmetric);
    let (_s, a, b) = lab.start_peers(&[Lab::stun()]);
    let out = a.ctl(&["pair", "h2", "--timeout", "60s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no network path to the peer")
            && err.contains("TURN relay; none is configured"),
        "{err}"
    );
    a.wait_idle();
    b.wait_idle();
}

/// Case 3: Symmetric NATs with TURN: relayed, and 1,000 lines arrive in order.
#[test]
fn lab_symmetric_nats_with_turn_relay_and_deliver_in_order() {
    lab_or_skip!();
    let mut lab = Lab::build(Nat::Symmetric);
    let (_s, a, b) = lab.start_peers(&[Lab::stun(), Lab::turn()]);
    let path = pair_ok(&a, &b);
    assert!(
        path.local_type == "relay" || path.remote_type == "relay",
        "{path:?}"
    );
    let tail = Tail::start(&b, &[]);
    let input: String = (0..1000).map(|i| format!("relayed {i}\n")).collect();
    let out = a.ctl_stdin(&["send"], input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..1000 {
        assert_eq!(tail.next_str(), format!("relayed {i}"));
    }
}

/// Case 4: Cone NATs with TURN offered: ICE still prefers the direct path;
/// `--relay-only` forces the relay.
#[test]
fn lab_cone_nats_prefer_direct_and_relay_only_forces_turn() {
    lab_or_skip!();
    let mut lab = Lab::build(Nat::Cone);
    let (_s, a, b) = lab.start_peers(&[Lab::stun(), Lab::turn()]);
    let path = pair_ok(&a, &b);
    assert!(
        path.local_type != "relay" && path.remote_type != "relay",
        "{path:?}"
    );
    a.ok(&["unpair"]);
    b.wait_idle();
    drop(b);
    let b = lab.daemon("h2", "h2relay", &["--relay-only"]);
    let path = pair_ok(&a, &b);
    assert_eq!(path.remote_type, "relay", "{path:?}");
    let st = b.status();
    assert_eq!(path_of(&st).local_type, "relay", "{st:#?}");
}

/// Case 6: The peer's router dies mid-transfer: the survivor notices, says so
/// in `status`, and pairs again once a new peer appears.
#[test]
fn lab_peer_router_dies_mid_transfer_and_the_survivor_recovers() {
    lab_or_skip!();
    let mut lab = Lab::build(Nat::Cone);
    let (_s, a, b) = lab.start_peers(&[Lab::stun()]);
    pair_ok(&a, &b);
    let events = Tail::start(&a, &["--json"]);
    // A transfer in flight when the router goes.
    let mut sender = b
        .ctl_cmd(&["send"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = sender.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        for i in 0..1_000_000 {
            if writeln!(stdin, "line {i}").is_err() {
                break;
            }
        }
    });
    assert_eq!(a_message(&events), "line 0");
    lab.kill_ns("r2");
    let ev = events.wait_event("peer_disconnected");
    assert_eq!(ev["peer_id"], "h2");
    let st = a.wait_idle();
    assert_eq!(st.link, LinkState::Idle);
    let _ = sender.kill();
    let _ = sender.wait();
    drop(feeder);
    // A new peer on the public network.
    let c = Daemon::spawn_in(
        Some(&lab.ns("inet")),
        &format!("ws://{PUBLIC}:8765/ws"),
        "newpeer",
        &["--bind", PUBLIC],
        tempfile::tempdir().unwrap(),
    );
    c.wait_status("connected", |s| s.server.state == ServerState::Connected);
    pair_ok(&c, &a);
}

fn a_message(events: &Tail) -> String {
    events.wait_event("message")["text"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A userspace link impairment (the kernel here has no `tc netem`): two
/// threads, one per direction, copy Ethernet frames between two interfaces
/// of a namespace through AF_PACKET sockets, holding each frame for `delay`
/// and dropping a `loss` fraction at random.
struct Impairment {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Impairment {
    fn start(ns: &str, a: &str, b: &str, delay: std::time::Duration, loss: f64) -> Impairment {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = [(a, b), (b, a)]
            .into_iter()
            .enumerate()
            .map(|(i, (from, to))| {
                let (ns, from, to, stop) = (
                    ns.to_string(),
                    from.to_string(),
                    to.to_string(),
                    stop.clone(),
                );
                std::thread::spawn(move || {
                    forward(&ns, &from, &to, delay, loss, 0x9e37_79b9 + i as u64, &stop)
                })
            })
            .collect();
        Impairment { stop, threads }
    }
}

impl Drop for Impairment {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Joins network namespace `ns` (this thread only).
fn enter_netns(ns: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// A raw AF_PACKET socket bound to interface `name`, non-blocking.
fn packet_socket(name: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket calls on values we own; the fd is wrapped at once.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            proto as i32,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let cname = std::ffi::CString::new(name).unwrap();
        let index = libc::if_nametoindex(cname.as_ptr());
        assert!(index > 0, "no interface {name}");
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        let rc = libc::bind(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind {name}: {}", std::io::Error::last_os_error());
        owned
    }
}

fn forward(
    ns: &str,
    from: &str,
    to: &str,
    delay: std::time::Duration,
    loss: f64,
    mut seed: u64,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::os::fd::AsRawFd;
    use std::time::Instant;
    enter_netns(ns);
    let rx = packet_socket(from);
    let tx = packet_socket(to);
    let mut queue: std::collections::VecDeque<(Instant, Vec<u8>)> = Default::default();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while queue.front().is_some_and(|(due, _)| *due <= now) {
            let (_, frame) = queue.pop_front().unwrap();
            // SAFETY: sending a buffer we own on a socket we own.
            unsafe { libc::send(tx.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        }
        let wait_ms = queue
            .front()
            .map(|(due, _)| due.saturating_duration_since(now).as_millis() as i32 + 1)
            .unwrap_or(20)
            .min(20);
        let mut pfd = libc::pollfd {
            fd: rx.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        if unsafe { libc::poll(&mut pfd, 1, wait_ms) } <= 0 {
            continue;
        }
        loop {
            // SAFETY: receiving into our buffer; `from` is a sockaddr_ll.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            let n = unsafe {
                libc::recvfrom(
                    rx.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    &mut addr as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n <= 0 {
                break;
            }
            // Our own sends on this interface come back as outgoing.
            if addr.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if (seed % 10_000) as f64 / 10_000.0 < loss {
                continue;
            }
            queue.push_back((Instant::now() + delay, buf[..n as usize].to_vec()));
        }
    }
}

/// Case 5: One uplink delayed 50 ms with 2% loss each way: pairs, and 10,000
/// lines arrive complete and in order.
#[test]
fn lab_impaired_uplink_still_pairs_and_delivers_in_order() {
    lab_or_skip!();
    let mut lab = Lab::build(Nat::Cone);
    let _impair = lab.impair_r2_uplink();
    let (_s, a, b) = lab.start_peers(&[Lab::stun()]);
    let path = pair_ok(&a, &b);
    assert!(
        path.remote_address.starts_with("198.51.100.12:"),
        "{path:?}"
    );
    // The impairment is really in the path: 50 ms each way is a floor for
    // the round trip ICE measures.
    let st = a.wait_status("reporting ICE's round trip", |s| {
        s.peer
            .as_ref()
            .and_then(|p| p.path.as_ref())
            .is_some_and(|p| p.rtt_ms.is_some())
    });
    let rtt = path_of(&st).rtt_ms.unwrap();
    assert!(rtt >= 95.0, "round trip {rtt} ms through a 2 x 50 ms link");
    let tail = Tail::start(&b, &[]);
    let input: String = (0..10_000).map(|i| format!("impaired {i}\n")).collect();
    let out = a.ctl_stdin(&["send"], input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..10_000 {
        assert_eq!(tail.next_str(), format!("impaired {i}"));
    }
}

/// The lab benchmark (`scripts/bench-nat-lab`): connect time and throughput
/// per path, printed as a Markdown table. Ignored by `cargo test`: speed is
/// measured here, never asserted.
#[test]
#[ignore = "benchmark; run with scripts/bench-nat-lab"]
fn lab_bench_paths() {
    lab_or_skip!();
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
        // 100-byte lines (99 bytes + newline).
        let n_lines = if impaired { 20_000 } else { 100_000 };
        let line = "x".repeat(99);
        let input: String = (0..n_lines).map(|_| format!("{line}\n")).collect();
        let t = Instant::now();
        let out = a.ctl_stdin(&["send"], input.as_bytes());
        assert!(out.status.success());
        for _ in 0..n_lines {
            tail.next();
        }
        let lines_per_s = n_lines as f64 / t.elapsed().as_secs_f64();
        // 16 KiB messages.
        let n_big = if impaired { 200 } else { 2_000 };
        let big = "y".repeat(16 * 1024 - 1);
        let input: String = (0..n_big).map(|_| format!("{big}\n")).collect();
        let t = Instant::now();
        let out = a.ctl_stdin(&["send"], input.as_bytes());
        assert!(out.status.success());
        for _ in 0..n_big {
            tail.next();
        }
        let big_mb_s = (n_big * 16 * 1024) as f64 / t.elapsed().as_secs_f64() / 1e6;
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
    let _ = std::io::stderr().write_all(table.as_bytes());
}
