//! The HTTP side of the listener: reads one request head, then either
//! answers it (`/healthz`, `/metrics`, errors) or completes the WebSocket
//! upgrade on `/ws` itself, so that no library buffer outlives the handshake.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Longest request head accepted.
const MAX_HEAD: usize = 8 * 1024;

/// What the request asked for.
pub enum Route {
    /// A valid WebSocket upgrade on `/ws`: its query string, and any bytes
    /// the client sent after the head.
    Upgrade {
        query: Option<String>,
        rest: Vec<u8>,
    },
    Healthz,
    Metrics,
    /// Answered with this status line and body, then closed.
    Refuse(&'static str, &'static str),
}

/// Reads the request head and decides its route.
pub async fn read_route<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> io::Result<Route> {
    let mut buf = Vec::with_capacity(1024);
    let head_len = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Route::Refuse(
                "431 Request Header Fields Too Large",
                "request head too large\n",
            ));
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Ok(Route::Refuse("400 Bad Request", "malformed request\n")),
    }
    let target = req.path.unwrap_or("");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    let method = req.method.unwrap_or("");
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let route = match (method, path) {
        ("GET", "/healthz") => Route::Healthz,
        ("GET", "/metrics") => Route::Metrics,
        ("GET", "/ws") => {
            let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            let connection = header("connection").is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            });
            let version = header("sec-websocket-version").is_some_and(|v| v.trim() == "13");
            match header("sec-websocket-key") {
                Some(key) if upgrade && connection && version => {
                    let accept = derive_accept_key(key.trim().as_bytes());
                    let resp = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                         Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                    );
                    stream.write_all(resp.as_bytes()).await?;
                    Route::Upgrade {
                        query,
                        rest: buf[head_len..].to_vec(),
                    }
                }
                _ => Route::Refuse(
                    "426 Upgrade Required",
                    "/ws takes a WebSocket (version 13) upgrade\n",
                ),
            }
        }
        ("GET", _) => Route::Refuse("404 Not Found", "not found; the WebSocket is at /ws\n"),
        _ => Route::Refuse("405 Method Not Allowed", "only GET is served\n"),
    };
    Ok(route)
}

/// Writes a complete HTTP response and closes the write side.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\nCache-Control: no-store\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}
