//! Interop: p2pd against WebRTC stacks it does not share code with, aiortc
//! (Python, `interop/aiortc_peer.py`) and Chromium (`interop/peer.html`),
//! through the NAT lab's cone NATs with signald's STUN server. Each peer
//! speaks protocol 1 as a third-party client (no token, no stable key, so
//! p2pd runs with `--trust any`), sends `hello 0..N` when the channel
//! opens and echoes what it receives as `echo:<message>`. Both print the
//! same event words (`open p2p`, `kept h1`, `restart-offer …`), so each
//! scenario below is written once for both stacks.
//!
//! Needs root (the lab), python3-aiortc and python3-websockets, and
//! chromium; `scripts/test` installs them as root, elsewhere each test
//! prints one `SKIPPED` line.

use std::path::PathBuf;
use std::process::Command;

use p2p_testkit::lab::{Lab, Nat};
use p2p_testkit::proc::in_netns;
use p2p_testkit::{Daemon, Proc, Tail, lab_or_skip, skip};

const HELLOS: usize = 50;
const ECHOES: usize = 500;

fn here(file: &str) -> PathBuf {
    p2p_testkit::manifest_dir().join("tests/interop").join(file)
}

/// The other WebRTC stack, found on this machine.
enum Stack {
    /// Debian's python3, which has aiortc.
    Aiortc(PathBuf),
    /// The Chromium binary, run headless.
    Chromium(PathBuf),
}

impl Stack {
    /// aiortc, or `None` after one skip line.
    fn aiortc() -> Option<Stack> {
        let py = PathBuf::from("/usr/bin/python3");
        let ok = Command::new(&py)
            .args(["-c", "import aiortc, websockets"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            skip(
                "interop aiortc",
                "/usr/bin/python3 lacks aiortc (apt-get install python3-aiortc python3-websockets)",
            );
            return None;
        }
        Some(Stack::Aiortc(py))
    }

    /// Chromium, or `None` after one skip line.
    fn chromium() -> Option<Stack> {
        let bin = PathBuf::from("/usr/lib/chromium/chromium");
        if !bin.is_file() {
            skip(
                "interop chromium",
                "chromium is not installed (apt-get install chromium)",
            );
            return None;
        }
        Some(Stack::Chromium(bin))
    }

    /// The peer's signaling ID.
    fn id(&self) -> &'static str {
        match self {
            Stack::Aiortc(_) => "py",
            Stack::Chromium(_) => "br",
        }
    }

    /// Starts the peer in lab host h2, pairing with `pair` if given, and
    /// waits for its welcome.
    fn start(&self, lab: &Lab, pair: Option<&str>) -> Peer {
        let id = self.id();
        let ns = lab.ns("h2");
        let peer = match self {
            Stack::Aiortc(py) => {
                let mut cmd = in_netns(Some(&ns), py);
                cmd.arg(here("aiortc_peer.py"))
                    .args(["--url", &Lab::server_url(), "--id", id])
                    .args(["--hellos", &HELLOS.to_string()]);
                if let Some(p) = pair {
                    cmd.args(["--pair", p]);
                }
                Peer {
                    proc: Proc::spawn(id, cmd),
                    prefix: "",
                    _profile: None,
                }
            }
            Stack::Chromium(bin) => {
                let profile = tempfile::tempdir().unwrap();
                let mut page = format!(
                    "file://{}?url={}&id={id}&hellos={HELLOS}",
                    here("peer.html").display(),
                    Lab::server_url()
                );
                if let Some(p) = pair {
                    page.push_str(&format!("&pair={p}"));
                }
                let mut cmd = in_netns(Some(&ns), bin);
                cmd.args([
                    "--headless=new",
                    // The lab runs as root, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    // Host candidates as addresses, not mDNS names: p2pd
                    // does not resolve .local (docs/webrtc.md).
                    "--disable-features=WebRtcHideLocalIpsWithMdns",
                    // Console lines ("P2P …") go to stderr.
                    "--enable-logging=stderr",
                    "--v=0",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg(page)
                // Its process-singleton directory goes in TMPDIR; a
                // browser that is killed leaves it behind, so it goes
                // with the profile rather than into /tmp.
                .env("TMPDIR", profile.path());
                Peer {
                    proc: Proc::spawn(id, cmd),
                    prefix: "P2P ",
                    _profile: Some(profile),
                }
            }
        };
        let welcome = format!("{}welcome {id}", peer.prefix);
        peer.proc
            .wait_line_within(&welcome, p2p_testkit::BROWSER_START);
        peer
    }
}

/// A running peer of the other stack.
struct Peer {
    // Dropped in this order: the browser ends before its profile goes.
    proc: Proc,
    /// What its event lines start with (the page's console lines are
    /// marked, among Chromium's own).
    prefix: &'static str,
    _profile: Option<tempfile::TempDir>,
}

impl Peer {
    /// Waits for the event line `what` (e.g. "open p2p").
    fn wait_event(&self, what: &str) -> String {
        self.proc.wait_line(&format!("{}{what}", self.prefix))
    }
}

/// A lab with cone NATs and STUN, and p2pd `h1` in it (`--trust any`: the
/// other stack has no stable key).
fn lab_with_p2pd(extra: &[&str]) -> (Lab, p2p_testkit::Signald, Daemon) {
    let mut lab = Lab::build(Nat::Cone);
    lab.start_coturn();
    let s = lab.signald_for_stacks(&[Lab::stun()]);
    let a = lab.daemon("h1", "h1", &[&["--trust", "any"], extra].concat());
    (lab, s, a)
}

/// The peer's `hello`s arrive, then `ECHOES` lines sent from `a` come back
/// echoed, each once and in order.
fn hellos_and_echoes(a: &Daemon, tail: &Tail, round: &str) {
    hellos_then_echoes(a, tail, round, HELLOS, ECHOES);
}

/// The peer's `hellos` (`hello 0`, ...) arrive, then `echoes` lines sent
/// from `a` come back as `echo:<line>`, each once and in order: what both
/// test peers (`interop/aiortc_peer.py`, `interop/peer.html`) do.
pub(crate) fn hellos_then_echoes(
    a: &Daemon,
    tail: &Tail,
    round: &str,
    hellos: usize,
    echoes: usize,
) {
    for i in 0..hellos {
        assert_eq!(tail.next_str(), format!("hello {i}"), "{round}: hello {i}");
    }
    echo_lines(a, tail, round, echoes);
}

/// A stream to a peer that does not serve streams (the other stack's
/// descriptions lack p2pd's `a=x-p2pd-streams:1`) is refused at once, no
/// channel is opened, and the message channel carries on: the next echoes
/// come back, in order, with nothing extra among them.
pub(crate) fn refuses_streams(a: &Daemon, peer: &str, tail: &Tail, round: &str) {
    let started = std::time::Instant::now();
    let err = a.refused(
        &["connect", &format!("{peer}/anything"), "--allow-unverified"],
        "does not serve streams",
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{err}: not at once"
    );
    echo_lines(a, tail, &format!("{round}, after a refused stream"), 3);
}

/// `ECHOES` lines sent from `a` come back echoed, each once and in order.
fn echoes(a: &Daemon, tail: &Tail, round: &str) {
    echo_lines(a, tail, round, ECHOES);
}

fn echo_lines(a: &Daemon, tail: &Tail, round: &str, n: usize) {
    let input: String = (0..n).map(|i| format!("{round} {i}\n")).collect();
    let out = a.ctl_stdin(&["send"], input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..n {
        assert_eq!(
            tail.next_str(),
            format!("echo:{round} {i}"),
            "{round}: echo {i} lost or out of order"
        );
    }
}

/// p2pd `h1` (with `extra` flags) paired with the other stack's peer, which
/// answered p2pd's offer.
struct Open {
    lab: Lab,
    _signald: p2p_testkit::Signald,
    a: Daemon,
    peer: Peer,
    /// `p2pctl tail` on `a`, and the same with `--json` (events).
    tail: Tail,
    events: Tail,
}

/// p2pd pairs and offers, the other stack answers, and a first round of
/// hellos and echoes (`round`) comes through.
fn p2pd_offers(stack: &Stack, extra: &[&str], round: &str) -> Open {
    let (lab, signald, a) = lab_with_p2pd(extra);
    let peer = stack.start(&lab, None);
    let tail = Tail::start(&a, &[]);
    let events = Tail::start(&a, &["--json"]);
    a.ok(&["pair", stack.id(), "--timeout", "30s"]);
    peer.wait_event("open p2p");
    hellos_and_echoes(&a, &tail, round);
    refuses_streams(&a, stack.id(), &tail, round);
    Open {
        lab,
        _signald: signald,
        a,
        peer,
        tail,
        events,
    }
}

/// The other stack pairs and offers; p2pd answers.
fn p2pd_answers(stack: &Stack) {
    let (lab, _s, a) = lab_with_p2pd(&[]);
    let tail = Tail::start(&a, &[]);
    let peer = stack.start(&lab, Some("h1"));
    a.wait_open_with(stack.id());
    peer.wait_event("open p2p");
    hellos_and_echoes(&a, &tail, "p2pd answers");
    refuses_streams(&a, stack.id(), &tail, "p2pd answers");
}

#[test]
fn interop_aiortc_answers_p2pd() {
    lab_or_skip!();
    if let Some(stack) = Stack::aiortc() {
        p2pd_offers(&stack, &[], "p2pd offers");
    }
}

#[test]
fn interop_aiortc_offers_and_p2pd_answers() {
    lab_or_skip!();
    if let Some(stack) = Stack::aiortc() {
        p2pd_answers(&stack);
    }
}

#[test]
fn interop_chromium_answers_p2pd() {
    lab_or_skip!();
    if let Some(stack) = Stack::chromium() {
        p2pd_offers(&stack, &[], "p2pd offers");
    }
}

#[test]
fn interop_chromium_offers_and_p2pd_answers() {
    lab_or_skip!();
    if let Some(stack) = Stack::chromium() {
        p2pd_answers(&stack);
    }
}

/// Router A's mapping changes under an open link with aiortc. p2pd
/// restarts ICE through signald, but aiortc 1.4 cannot restart ICE: it
/// answers with its old credentials. p2pd ends the link as soon as it sees
/// that answer (`failed`), not at `--ice-restart-timeout` (a minute here,
/// longer than any wait of the test), and resets: both sides are then
/// ready, and pairing again works.
#[test]
fn interop_aiortc_without_ice_restart_resets_at_once_and_pairs_again() {
    lab_or_skip!();
    let Some(stack) = Stack::aiortc() else {
        return;
    };
    let fast = [
        "--ice-disconnected-timeout",
        "1s",
        "--ice-restart-timeout",
        "60s",
    ];
    // Every field bound: one left to `..` would drop with the temporary.
    let Open {
        lab,
        _signald,
        a,
        peer,
        tail,
        events,
    } = p2pd_offers(&stack, &fast, "before");
    let resets = a.status().counters.resets;

    lab.rebind_r1();
    events.wait_event("ice_restarting");
    // A real restart offer (new credentials) reached aiortc through signald.
    peer.wait_event("restart-offer ufrag-changed=true");
    let ev = events.wait_event("peer_disconnected");
    assert_eq!(ev["reason"], "failed", "{ev}");
    // The log says why (read from its pipe a moment after the event).
    a.proc().wait_line("it cannot restart ICE");
    a.wait_idle();
    assert_eq!(a.status().counters.resets, resets + 1);
    peer.wait_event("closed");

    a.ok(&["pair", "py", "--timeout", "30s"]);
    hellos_and_echoes(&a, &tail, "after");
}

/// Router A's mapping changes under an open link with Chromium: p2pd
/// restarts ICE through signald, Chromium answers the restart over the same
/// connection, and what was sent meanwhile comes back in order, with no
/// reset.
#[test]
fn interop_chromium_follows_an_ice_restart_after_a_network_change() {
    lab_or_skip!();
    let Some(stack) = Stack::chromium() else {
        return;
    };
    let fast = ["--ice-disconnected-timeout", "1s"];
    // Every field bound: one left to `..` would drop with the temporary.
    let Open {
        lab,
        _signald,
        a,
        peer,
        tail,
        events,
    } = p2pd_offers(&stack, &fast, "before");
    let resets = a.status().counters.resets;

    lab.rebind_r1();
    events.wait_event("ice_restarting");
    // Sent while the path is down: queued, then delivered on the new one.
    echoes(&a, &tail, "during");
    events.wait_event("ice_restarted");
    peer.wait_event("kept h1");
    peer.wait_event("restart-offer ufrag-changed=true");
    echoes(&a, &tail, "after");
    let st = a.status();
    assert_eq!(st.counters.resets, resets, "restarted, not reset");
    assert!(st.counters.ice_restarts >= 1);
    assert_eq!(st.link, p2p_proto::control::LinkState::Open);
}
