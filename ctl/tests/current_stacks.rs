//! Interop with the WebRTC stacks people install today, on loopback:
//! aiortc from PyPI (`interop/requirements.txt`, in the virtual environment
//! `scripts/test` makes and names in `P2P_AIORTC_PYTHON`). It speaks
//! protocol 1 with `interop/aiortc_peer.py`, as the NAT lab's interop
//! tests do with Debian's aiortc 1.4; here p2pd binds 127.0.0.1 and
//! signald has no ICE server.
//!
//! aiortc 1.16 names its certificate by three hash functions
//! (`a=fingerprint:sha-256`, `sha-384`, `sha-512`), which p2pd refused
//! before vendor patch 15 in both roles. aiortc cannot restart ICE, so
//! there is no restart case here (the NAT lab has aiortc 1.4's).

use std::path::PathBuf;
use std::process::Command;

use p2p_testkit::{Daemon, Proc, Signald, Tail, skip};

const HELLOS: usize = 20;
const ECHOES: usize = 200;

/// The venv's python, or `None` after one skip line.
fn current_aiortc() -> Option<PathBuf> {
    let Some(py) = std::env::var_os("P2P_AIORTC_PYTHON").map(PathBuf::from) else {
        skip(
            "interop current aiortc",
            "P2P_AIORTC_PYTHON is not set (scripts/test makes the virtual environment from ctl/tests/interop/requirements.txt)",
        );
        return None;
    };
    let version = Command::new(&py)
        .args(["-c", "import aiortc, websockets; print(aiortc.__version__)"])
        .output()
        .ok()
        .filter(|o| o.status.success());
    match version {
        Some(v) => {
            eprintln!("aiortc {}", String::from_utf8_lossy(&v.stdout).trim());
            Some(py)
        }
        None => {
            skip(
                "interop current aiortc",
                &format!("{} cannot import aiortc", py.display()),
            );
            None
        }
    }
}

/// aiortc's peer as `py`, pairing with `pair` if given.
fn aiortc(py: &PathBuf, s: &Signald, pair: Option<&str>) -> Proc {
    let script = p2p_testkit::manifest_dir().join("tests/interop/aiortc_peer.py");
    let mut cmd = Command::new(py);
    cmd.arg(script)
        .args(["--url", &s.url(), "--id", "py"])
        .args(["--hellos", &HELLOS.to_string()]);
    if let Some(p) = pair {
        cmd.args(["--pair", p]);
    }
    let proc = Proc::spawn("aiortc", cmd);
    proc.wait_line("welcome py");
    proc
}

/// The hellos arrive, then `ECHOES` lines come back echoed, in order.
fn hellos_and_echoes(a: &Daemon, tail: &Tail, round: &str) {
    crate::interop::hellos_then_echoes(a, tail, round, HELLOS, ECHOES);
}

/// Both roles under both policies that admit a peer without a pinned key.
#[test]
fn current_aiortc_pairs_in_both_roles_under_tofu_and_any() {
    let Some(py) = current_aiortc() else { return };
    for trust in ["tofu", "any"] {
        let s = Signald::start();
        let a = Daemon::start_with(&s.url(), "p2pd", &["--trust", trust]);
        let tail = Tail::start(&a, &[]);
        // aiortc offers, p2pd answers.
        let peer = aiortc(&py, &s, Some("p2pd"));
        let st = a.wait_open_with("py");
        let shown = st.peer.and_then(|p| p.trust).map(|t| format!("{t:?}"));
        peer.wait_line("open p2p");
        hellos_and_echoes(&a, &tail, &format!("{trust}, aiortc offers"));
        eprintln!("{trust}: aiortc offered, p2pd shows trust {shown:?}");
        // `unpair` reaches aiortc, which closes.
        a.ok(&["unpair"]);
        peer.wait_line("peer_disconnected unpaired");
        peer.wait_line("closed");
        a.wait_idle();
        if trust == "tofu" {
            // aiortc makes a new key for every connection: the one pinned
            // on first contact no longer matches, and p2pd says so.
            a.refused(&["pair", "py"], "does not match the one pinned");
            a.wait_idle();
            a.ok(&["untrust", "py"]);
        }
        // p2pd offers, aiortc answers.
        let out = a.ok(&["pair", "py"]);
        assert!(out.contains("channel open"), "{out}");
        peer.wait_line("open p2p");
        hellos_and_echoes(&a, &tail, &format!("{trust}, p2pd offers"));
        a.ok(&["unpair"]);
        peer.wait_line("closed");
        a.wait_idle();
    }
}

/// aiortc closing its peer connection (an SCTP ABORT and a DTLS close
/// alert; its WebSocket stays, so signald says nothing) ends p2pd's link
/// at once, not after the restart bound (a minute here).
#[test]
fn current_aiortc_closing_its_connection_ends_the_link_at_once() {
    let Some(py) = current_aiortc() else { return };
    let s = Signald::start();
    let a = Daemon::start_with(
        &s.url(),
        "p2pd",
        &["--trust", "any", "--ice-restart-timeout", "60s"],
    );
    let tail = Tail::start(&a, &[]);
    let events = Tail::start(&a, &["--json"]);
    let peer = aiortc(&py, &s, Some("p2pd"));
    a.wait_open_with("py");
    hellos_and_echoes(&a, &tail, "before");
    a.ok(&["send", "close your connection"]);
    peer.wait_line("closed");
    let ev = events.wait_event("peer_disconnected");
    assert_eq!(ev["reason"], "channel_closed", "{ev}");
    a.wait_idle();
}
