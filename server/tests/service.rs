//! signald under a service manager: `sd_notify` readiness and stopping,
//! socket activation, and TURN REST credentials in `welcome` with the
//! secret kept out of the logs. Runs the built binary.

use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use std::os::unix::process::CommandExt;

use base64::Engine;
use hmac::{Hmac, Mac};
use p2p_testkit::Signald;
use serde_json::json;
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};

use crate::util::{self, WAIT};

fn signald() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_signald"));
    cmd.env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("JOURNAL_STREAM")
        .kill_on_drop(true);
    cmd
}

/// signald for the tests that wait for its readiness line.
fn signald_std() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_signald"));
    cmd.env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("JOURNAL_STREAM");
    cmd
}

async fn recv_notify(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, sock.recv(&mut buf))
        .await
        .expect("a notification in time")
        .expect("recv");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("pid") as libc::pid_t;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

#[tokio::test]
async fn notify_ready_only_once_listening_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    // A port known before start, so the test can connect on READY alone.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = signald()
        .args(["--listen", &addr])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("SIGNALD_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(recv_notify(&notify).await.trim(), "READY=1");
    // READY means the listener accepts: connect at once, no retry.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("connect right after READY=1");
    assert_eq!(
        util::next_frame(&mut ws, true).await.unwrap()["type"],
        "welcome"
    );
    sigterm(&child);
    assert_eq!(recv_notify(&notify).await.trim(), "STOPPING=1");
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn abstract_notify_socket_is_reached() {
    let name = format!("signald-notify-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let std_sock = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
    std_sock.set_nonblocking(true).unwrap();
    let notify = UnixDatagram::from_std(std_sock).unwrap();
    let mut cmd = signald_std();
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .env("SIGNALD_LOG", "warn");
    let mut s = Signald::spawn(cmd);
    assert_eq!(recv_notify(&notify).await.trim(), "READY=1");
    s.proc().signal(libc::SIGTERM);
    s.proc_mut().wait_exit();
}

#[tokio::test]
async fn socket_activation_takes_fd_3() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = std::process::Command::new("/bin/sh");
    // LISTEN_PID must be signald's own PID: `exec` keeps the shell's.
    cmd.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_signald"))
        // Would fail if used: proves the passed socket is taken instead.
        .args(["--listen", "192.0.2.1:1"])
        .env("SIGNALD_LOG", "warn");
    // SAFETY: dup2 is async-signal-safe; fd 3 is then the listener, without
    // FD_CLOEXEC, as systemd passes it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut s = Signald::spawn(cmd);
    drop(listener);
    assert_eq!(s.addr(), addr.to_string());
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?id=act"))
        .await
        .unwrap();
    assert_eq!(util::next_frame(&mut ws, true).await.unwrap()["id"], "act");
    s.proc().signal(libc::SIGTERM);
    assert!(s.proc_mut().wait_exit().success());
}

fn hmac_sha1_b64(key: &[u8], msg: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    mac.update(msg.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn turn_rest_credentials_per_client_and_never_logged() {
    const SECRET: &str = "turn-shared-secret-3f9a7c";
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("turn-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let mut cmd = signald_std();
    cmd.args(["--listen", "127.0.0.1:0", "--turn-ttl", "10m"])
        .arg("--turn-secret-file")
        .arg(&secret_file)
        .args(["--ice-server", "stun:127.0.0.1:3478"])
        .args(["--ice-server", "turn:127.0.0.1:3478?transport=udp"])
        .args(["--ice-server", "turns:127.0.0.1:5349,static,fixed"])
        .env("SIGNALD_LOG", "debug");
    let mut s = Signald::spawn(cmd);
    let addr = s.addr().to_string();
    let mut seen = Vec::new();
    for id in ["alice", "bob", "alice"] {
        let before = unix_now();
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?id={id}"))
            .await
            .unwrap();
        let w = util::next_frame(&mut ws, true).await.unwrap();
        let after = unix_now();
        let servers = w["ice_servers"].as_array().unwrap();
        assert_eq!(servers.len(), 3);
        assert_eq!(servers[0], json!({"urls": ["stun:127.0.0.1:3478"]}));
        assert_eq!(
            servers[2],
            json!({"urls": ["turns:127.0.0.1:5349"], "username": "static", "credential": "fixed"})
        );
        let turn = &servers[1];
        assert_eq!(turn["urls"], json!(["turn:127.0.0.1:3478?transport=udp"]));
        let user = turn["username"].as_str().unwrap();
        let (expiry, who) = user.split_once(':').unwrap();
        assert_eq!(who, id);
        let expiry: u64 = expiry.parse().unwrap();
        assert!((before + 600..=after + 600).contains(&expiry), "{expiry}");
        let cred = turn["credential"].as_str().unwrap();
        assert_eq!(cred, hmac_sha1_b64(SECRET.as_bytes(), user));
        seen.push(cred.to_string());
        ws.close(None).await.ok();
    }
    s.proc().signal(libc::SIGTERM);
    assert!(s.proc_mut().wait_exit().success());
    let log = s.proc().log();
    assert!(log.contains("registered"), "debug logging was on:\n{log}");
    assert!(!log.contains(SECRET), "secret in the log:\n{log}");
    for cred in &seen {
        assert!(
            !log.contains(cred.as_str()),
            "credential in the log:\n{log}"
        );
    }
}

#[tokio::test]
async fn turn_secret_without_a_turn_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("s");
    std::fs::write(&secret_file, "x").unwrap();
    let out = signald()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--ice-server",
            "stun:127.0.0.1:3478",
        ])
        .arg("--turn-secret-file")
        .arg(&secret_file)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("turn:"), "{err}");
}

#[tokio::test]
async fn journald_without_a_journal_falls_back_to_text() {
    if std::path::Path::new("/run/systemd/journal/socket").exists() {
        // A journal is there to log to: nothing to fall back from.
        return;
    }
    let mut cmd = signald_std();
    cmd.args(["--listen", "127.0.0.1:0", "--log-format", "journald"])
        .env("SIGNALD_LOG", "info");
    let mut s = Signald::spawn(cmd);
    s.proc().signal(libc::SIGTERM);
    assert!(s.proc_mut().wait_exit().success());
    let err = s.proc().log();
    assert!(err.contains("journald not reachable"), "{err}");
    assert!(err.contains("listening"), "text logging goes on: {err}");
}

/// Issue 21, item 8: TURN credentials are not for anyone who opens a
/// WebSocket. One address gets `--turn-per-ip` of them (then welcomes
/// without the TURN server that needs them, counted), another address has
/// its own allowance, and a client that stays gets fresh ones at half
/// their lifetime, in an `ice_servers` frame.
#[tokio::test]
async fn turn_credentials_are_an_allowance_per_address_renewed_while_connected() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    const SECRET: &str = "turn-shared-secret-3f9a7c";
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("turn-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let mut cmd = signald_std();
    cmd.args(["--listen", "127.0.0.1:0", "--turn-ttl", "2s"])
        .args(["--turn-per-ip", "2"])
        .args(["--ping-interval", "500ms", "--ping-timeout", "2s"])
        .arg("--turn-secret-file")
        .arg(&secret_file)
        .args(["--ice-server", "stun:127.0.0.1:3478"])
        .args(["--ice-server", "turn:127.0.0.1:3478"]);
    let s = Signald::spawn(cmd);
    let addr: std::net::SocketAddr = s.addr().parse().unwrap();
    let welcome_from = |from: &'static str, id: &'static str| async move {
        let stream = util::connect_from(from, addr).await;
        let url = format!("ws://{addr}/ws?id={id}");
        let mut ws = util::upgrade_on(stream, &url, &[]).await.unwrap();
        let w = util::next_frame(&mut ws, true).await.unwrap();
        assert_eq!(w["type"], "welcome");
        (ws, w["ice_servers"].as_array().unwrap().clone())
    };
    let (mut kept, first) = welcome_from("127.0.0.1", "kept").await;
    assert_eq!(first.len(), 2);
    let first_user = first[1]["username"].as_str().unwrap().to_string();
    let (_second, servers) = welcome_from("127.0.0.1", "second").await;
    assert!(servers[1]["credential"].is_string());
    let (_third, servers) = welcome_from("127.0.0.1", "third").await;
    assert_eq!(
        servers,
        vec![json!({"urls": ["stun:127.0.0.1:3478"]})],
        "the allowance is used: no TURN server without credentials"
    );
    assert_eq!(
        util::metric_at(addr, "signald_turn_withheld_total").await,
        1.0
    );
    let (_other, servers) = welcome_from("127.0.0.2", "other").await;
    assert!(servers[1]["credential"].is_string(), "another address");

    // The client that stays answers pings and gets fresh credentials.
    let mut renewed = Vec::new();
    while renewed.len() < 2 {
        let v = util::next_frame(&mut kept, false).await.unwrap();
        match v["type"].as_str() {
            Some("ping") => kept
                .send(Message::text(r#"{"type":"pong"}"#))
                .await
                .unwrap(),
            Some("ice_servers") => {
                let turn = v["ice_servers"][1].clone();
                let user = turn["username"].as_str().unwrap().to_string();
                assert_eq!(
                    turn["credential"].as_str().unwrap(),
                    hmac_sha1_b64(SECRET.as_bytes(), &user)
                );
                assert_eq!(
                    v["ice_servers"][0],
                    json!({"urls": ["stun:127.0.0.1:3478"]})
                );
                renewed.push(user);
            }
            other => panic!("unexpected {other:?}: {v}"),
        }
    }
    let expiry = |u: &str| u.split_once(':').unwrap().0.parse::<u64>().unwrap();
    assert!(renewed.iter().all(|u| u.ends_with(":kept")));
    assert!(
        expiry(&renewed[0]) > expiry(&first_user),
        "{renewed:?} after {first_user}"
    );
    assert!(expiry(&renewed[1]) >= expiry(&renewed[0]), "{renewed:?}");
}
