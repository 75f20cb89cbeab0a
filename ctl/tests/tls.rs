//! `wss://`: signald's own TLS with a throw-away CA made here, p2pd
//! verifying it with and without `--server-ca`, and SIGHUP swapping the
//! certificate under connected clients.

use p2p_proto::control::ServerState;
use p2p_testkit::tls::Ca;
use p2p_testkit::{Daemon, Signald, Tail};

fn tls_signald(cert: &std::path::Path, key: &std::path::Path) -> Signald {
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    Signald::start_plus(&["--tls-cert", &cert, "--tls-key", &key])
}

#[test]
fn daemons_pair_over_wss_and_an_unknown_ca_is_refused_in_plain_words() {
    let ca = Ca::new("p2p test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.issue(dir.path(), "signald");
    let s = tls_signald(&cert, &key);
    let ca_pem = ca.pem().display().to_string();
    let a = Daemon::start_with(&s.wss_url(), "alice", &["--server-ca", &ca_pem]);
    let b = Daemon::start_with(&s.wss_url(), "bob", &["--server-ca", &ca_pem]);
    a.pair(&b);
    let tail = Tail::start(&b, &[]);
    a.ok(&["send", "over wss"]);
    assert_eq!(tail.next_str(), "over wss");

    // Without --server-ca the private CA is not trusted: said plainly, and
    // retried with the usual backoff.
    let c = Daemon::builder(&s.wss_url(), "carol").spawn();
    let st = c.wait_status("refusing the certificate", |st| {
        st.server
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("not signed by a certificate authority we trust"))
    });
    assert_ne!(st.server.state, ServerState::Connected);
    let err = st.server.last_error.unwrap();
    assert!(err.contains("--server-ca"), "{err}");
    // It keeps trying (each failure is logged as one attempt).
    for _ in 0..2 {
        c.proc().wait_line("signaling down");
    }
}

#[test]
fn sighup_swaps_the_certificate_without_dropping_connected_clients() {
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = old_ca.issue(dir.path(), "signald");
    let s = tls_signald(&cert, &key);
    let old_pem = old_ca.pem().display().to_string();
    let new_pem = new_ca.pem().display().to_string();
    let a = Daemon::start_with(&s.wss_url(), "alice", &["--server-ca", &old_pem]);

    // New files in place, then SIGHUP.
    let (new_cert, new_key) = new_ca.issue(dir.path(), "next");
    std::fs::rename(&new_cert, &cert).unwrap();
    std::fs::rename(&new_key, &key).unwrap();
    s.proc().signal(libc::SIGHUP);
    s.proc().wait_line("TLS certificate reloaded");

    // A client of the new CA connects; one of the old CA does not.
    let b = Daemon::start_with(&s.wss_url(), "bob", &["--server-ca", &new_pem]);
    let c = Daemon::builder(&s.wss_url(), "carol")
        .args(&["--server-ca", &old_pem])
        .spawn();
    c.wait_status("refusing the new certificate", |st| {
        st.server
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("not signed"))
    });
    // alice never noticed: same connection, and it still pairs.
    let st = a.status();
    assert_eq!(st.server.state, ServerState::Connected);
    assert_eq!(st.server.reconnects, 0);
    a.pair(&b);

    // A broken file is refused and the current certificate stays.
    std::fs::write(&cert, "garbage").unwrap();
    s.proc().signal(libc::SIGHUP);
    s.proc().wait_line("not reloaded, the old one stays");
    let d = Daemon::start_with(&s.wss_url(), "dave", &["--server-ca", &new_pem]);
    assert_eq!(d.status().server.state, ServerState::Connected);
}

#[test]
fn server_ca_needs_a_wss_server_and_a_readable_file() {
    let s = Signald::start();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.pem").display().to_string();
    for (server, args) in [
        (s.url(), vec!["--server-ca", missing.as_str()]),
        (s.wss_url(), vec!["--server-ca", missing.as_str()]),
    ] {
        let out = std::process::Command::new(p2p_testkit::bin("p2pd"))
            .args(["--server", &server, "--socket"])
            .arg(dir.path().join("p2pd.sock"))
            .args(&args)
            .env("XDG_STATE_HOME", dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{server} {args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("p2pd: ") && err.contains("--server-ca"),
            "{err}"
        );
    }
}
