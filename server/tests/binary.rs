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
        &["--coalesce", "5ms"][..],
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

#[tokio::test]
async fn metrics_listen_and_the_limit_flags() {
    let p = spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--trusted-proxy",
            "::1",
            "--max-queue-bytes",
            "65536",
        ],
        &[("SIGNALD_MAX_CONNS_PER_IP", "1")],
    );
    // Printed before the readiness line.
    let log = p.proc().log();
    let metrics: std::net::SocketAddr = log
        .lines()
        .find_map(|l| l.strip_prefix("signald metrics on "))
        .unwrap_or_else(|| panic!("no metrics address in:\n{log}"))
        .trim()
        .parse()
        .unwrap();
    let addr: std::net::SocketAddr = p.addr().parse().unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    assert_eq!(
        util::next_frame(&mut ws, true).await.unwrap()["type"],
        "welcome"
    );
    // SIGNALD_MAX_CONNS_PER_IP=1: a second connection from here is refused.
    let (status, _) = util::http_get(addr, "/healthz").await;
    assert!(status.contains("429"), "{status}");
    let (status, body) = util::http_get(metrics, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        body.contains("\nsignald_refused_total{reason=\"conns_per_ip\"} 1\n"),
        "{body}"
    );
    drop(ws);
    util::eventually("the main listener answers again", || async {
        util::http_get(addr, "/healthz").await.0.contains("200")
    })
    .await;
    assert!(util::http_get(addr, "/metrics").await.0.contains("404"));
}

#[tokio::test]
async fn bad_limit_flags_fail_with_one_clear_line() {
    for args in [
        &["--trusted-proxy", "10.0.0.0/33"][..],
        &["--trusted-proxy", "example.com"][..],
        &["--registrations-per-ip", "-1"][..],
        &["--max-queue-bytes", "0"][..],
        &["--max-buffered-bytes", "0"][..],
        &["--metrics-listen", "nowhere"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_signald"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.trim().is_empty(), "{args:?}");
    }
}
