//! The upgrade as RFC 6455 asks for it, through the real listener: a bad
//! `Sec-WebSocket-Key` or a repeated header is 400, and a head sent one
//! byte per write still completes.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::util::{self, WAIT, start_default};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade(lines: &[&str]) -> Vec<u8> {
    let mut s = String::from("GET /ws?id=raw HTTP/1.1\r\nHost: x\r\n");
    for l in lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

const STD: [&str; 3] = [
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Version: 13",
];

#[tokio::test]
async fn bad_keys_and_repeated_headers_get_400() {
    let srv = start_default().await;
    let key = format!("Sec-WebSocket-Key: {KEY}");
    for bad in [
        "Sec-WebSocket-Key: not-base64!",
        // 15 and 17 bytes.
        "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA",
        "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=",
        "Sec-WebSocket-Key: ",
    ] {
        let (status, _) = util::http_raw(srv.addr, &upgrade(&[&STD[..], &[bad]].concat())).await;
        assert!(status.contains("400"), "{bad}: {status}");
    }
    for (what, lines) in [
        ("no key", STD.to_vec()),
        ("two keys", [&STD[..], &[&key, &key]].concat()),
        (
            "two Upgrade",
            [&STD[..], &[&key, "Upgrade: websocket"]].concat(),
        ),
        (
            "two versions",
            [&STD[..], &[&key, "Sec-WebSocket-Version: 13"]].concat(),
        ),
    ] {
        let (status, _) = util::http_raw(srv.addr, &upgrade(&lines)).await;
        assert!(status.contains("400"), "{what}: {status}");
    }
    // Another version: 426, naming the one spoken.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let v8 = upgrade(&[
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 8",
        &key,
    ]);
    s.write_all(&v8).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 426"), "{out}");
    assert!(out.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{out}");
    // The same key, properly sent, is accepted.
    let mut ws = raw_upgrade(srv.addr, &upgrade(&[&STD[..], &[&key]].concat()), 64).await;
    let w = util::next_frame(&mut ws, true).await.unwrap();
    assert_eq!(w["id"], "raw");
}

/// Sends `head` in writes of `step` bytes, reads the 101 and returns the
/// WebSocket (the welcome not yet read).
async fn raw_upgrade(addr: std::net::SocketAddr, head: &[u8], step: usize) -> util::Ws {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for chunk in head.chunks(step) {
        s.write_all(chunk).await.unwrap();
    }
    // Read the answer's head a byte at a time: the welcome follows at once
    // and belongs to the WebSocket.
    let mut resp = Vec::new();
    tokio::time::timeout(WAIT, async {
        while !resp.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(s.read(&mut b).await.unwrap(), 1, "closed after {resp:?}");
            resp.push(b[0]);
        }
    })
    .await
    .expect("no answer within the handshake timeout");
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 101 "), "{resp}");
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(s);
    WebSocketStream::from_raw_socket(stream, Role::Client, None).await
}

#[tokio::test]
async fn an_8_kib_head_sent_byte_by_byte_completes() {
    let srv = start_default().await;
    let key = format!("Sec-WebSocket-Key: {KEY}");
    let mut head = upgrade(&[&STD[..], &[&key]].concat());
    head.truncate(head.len() - 2);
    let fill = 8 * 1024 - head.len() - "X-Pad: \r\n\r\n".len();
    head.extend_from_slice(format!("X-Pad: {}\r\n\r\n", "p".repeat(fill)).as_bytes());
    assert_eq!(head.len(), 8 * 1024);
    // 8192 writes of one byte each, well within the 10 s head timeout.
    let mut ws = raw_upgrade(srv.addr, &head, 1).await;
    assert_eq!(util::next_frame(&mut ws, true).await.unwrap()["id"], "raw");
    // One byte more is over the limit.
    let long = [
        &b"GET /ws HTTP/1.1\r\nX: "[..],
        &vec![b'y'; 8 * 1024 - 24],
        b"\r\n\r\n",
    ]
    .concat();
    assert_eq!(long.len(), 8 * 1024 + 1);
    let (status, _) = util::http_raw(srv.addr, &long).await;
    assert!(status.contains("431"), "{status}");
}
