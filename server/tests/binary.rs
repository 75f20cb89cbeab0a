//! The built `signald` binary: flags, env, readiness line, SIGTERM.

use p2p_testkit::Signald;
use serde_json::json;
use tokio::process::Command;

use crate::util;

/// The built signald with `args` and `env`, once it printed its address.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> Signald {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_signald"));
    cmd.args(args).env("SIGNALD_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Signald::spawn(cmd)
}

#[tokio::test]
async fn flags_env_readiness_and_sigterm() {
    let mut p = spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--ping-interval",
            "100ms",
            "--ice-server",
            "stun:127.0.0.1:3478",
        ],
        &[("SIGNALD_PING_TIMEOUT", "2s"), ("SIGNALD_MAX_CLIENTS", "3")],
    );
    assert!(!p.addr().ends_with(":0"), "{}", p.addr());
    let url = |q: &str| format!("ws://{}/ws?{q}", p.addr());
    let mut clients = Vec::new();
    for id in ["a", "b", "c"] {
        let (mut ws, _) = tokio_tungstenite::connect_async(url(&format!("id={id}")))
            .await
            .unwrap();
        let w = util::next_frame(&mut ws, true).await.unwrap();
        assert_eq!(w["ping_interval_ms"], 100);
        assert_eq!(w["ping_timeout_ms"], 2000);
        assert_eq!(w["ice_servers"], json!([{"urls":["stun:127.0.0.1:3478"]}]));
        clients.push(ws);
    }
    let (mut full, _) = tokio_tungstenite::connect_async(url("")).await.unwrap();
    assert_eq!(
        util::next_frame(&mut full, true).await.unwrap()["code"],
        "server_full"
    );
    util::expect_close(&mut full, 1013).await;

    p.proc().signal(libc::SIGTERM);
    for ws in &mut clients {
        util::expect_close(ws, 1001).await;
    }
    let status = p.proc_mut().wait_exit();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn bad_flags_fail_with_one_clear_line() {
    for args in [
        &["--ping-interval", "2s", "--ping-timeout", "1s"][..],
        &["--ice-server", "http://x"][..],
        &["--ping-interval", "soon"][..],
        &[
            "--listen",
            "127.0.0.1:0",
            "--turn-secret-file",
            "/nonexistent",
        ][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_signald"))
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.trim().is_empty(), "{args:?}");
    }
}
