//! The HTTP side of the listener: reads one request head, decides what it
//! asks for (`/healthz`, `/metrics`, the WebSocket upgrade on `/ws`, or an
//! error), and writes the answer. signald completes the upgrade itself, so
//! that no library buffer outlives the handshake.
//!
//! Reading is linear in the head's length however it is cut into reads:
//! each read only searches its own bytes (and the three before them) for
//! the blank line. Parsing is a pure function of the head's bytes, so
//! property tests can feed it anything.

use std::io;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tungstenite::handshake::derive_accept_key;

/// Longest request head accepted, the blank line included.
pub const MAX_HEAD: usize = 8 * 1024;

/// Most header lines in a head (browsers send about 15, proxies add some).
const MAX_HEADERS: usize = 64;

/// An answer other than the upgrade, with what is sent for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A WebSocket handshake that breaks RFC 6455; the body says how.
    BadRequest(&'static str),
    /// `GET /ws` that is not a WebSocket upgrade at all.
    UpgradeRequired,
    /// An upgrade for a WebSocket version other than 13.
    UnsupportedVersion,
    NotFound,
    MethodNotAllowed,
    HeadTooLarge,
    /// A per-IP limit; the body names it.
    TooManyRequests(&'static str),
    /// A global limit.
    Unavailable(&'static str),
}

impl Reply {
    pub fn status(self) -> &'static str {
        match self {
            Reply::BadRequest(_) => "400 Bad Request",
            Reply::UpgradeRequired | Reply::UnsupportedVersion => "426 Upgrade Required",
            Reply::NotFound => "404 Not Found",
            Reply::MethodNotAllowed => "405 Method Not Allowed",
            Reply::HeadTooLarge => "431 Request Header Fields Too Large",
            Reply::TooManyRequests(_) => "429 Too Many Requests",
            Reply::Unavailable(_) => "503 Service Unavailable",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Reply::BadRequest(b) | Reply::TooManyRequests(b) | Reply::Unavailable(b) => b,
            Reply::UpgradeRequired | Reply::UnsupportedVersion => {
                "/ws takes a WebSocket (version 13) upgrade\n"
            }
            Reply::NotFound => "not found; the WebSocket is at /ws\n",
            Reply::MethodNotAllowed => "only GET is served\n",
            Reply::HeadTooLarge => "request head too large\n",
        }
    }

    /// Header lines the answer needs beside the usual ones.
    fn extra_headers(self) -> &'static str {
        match self {
            // RFC 6455 4.4: name the version this server speaks.
            Reply::UnsupportedVersion => "Sec-WebSocket-Version: 13\r\n",
            _ => "",
        }
    }
}

/// What the request asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// A valid WebSocket upgrade on `/ws`: its query string and the
    /// `Sec-WebSocket-Accept` value to answer with.
    Upgrade {
        query: Option<String>,
        accept: String,
        /// The token of an `Authorization: Bearer TOKEN` header (RFC
        /// 6750): `Ok(None)` without one, `Err` for a malformed one or two.
        bearer: Result<Option<String>, &'static str>,
    },
    Healthz,
    Metrics,
    /// Answered with this, then closed.
    Refuse(Reply),
}

/// A parsed head: the route, and every `X-Forwarded-For` value in order
/// (believed only when the peer is a trusted proxy).
#[derive(Debug)]
pub struct Request<'h> {
    pub route: Route,
    pub forwarded_for: Vec<&'h str>,
}

/// Finds the end of a request head in a buffer that only grows, looking
/// at each byte about once.
#[derive(Debug, Default)]
pub struct HeadScan {
    scanned: usize,
    /// Bytes looked at so far (the linearity is tested).
    examined: usize,
}

impl HeadScan {
    /// `buf` is everything read so far; returns the head's length (blank
    /// line included) once it holds `\r\n\r\n`.
    pub fn feed(&mut self, buf: &[u8]) -> Option<usize> {
        // The blank line may straddle the previous read: start 3 bytes back.
        let from = self.scanned.saturating_sub(3).min(buf.len());
        self.examined += buf.len() - from;
        self.scanned = buf.len();
        buf[from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| from + p + 4)
    }
}

/// A request head as read: complete (with any bytes the client sent after
/// it), or over [`MAX_HEAD`].
pub enum Head {
    Complete { buf: Vec<u8>, len: usize },
    TooLarge,
}

/// Reads until the end of the request head.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut scan = HeadScan::default();
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match scan.feed(&buf) {
            Some(len) if len <= MAX_HEAD => return Ok(Head::Complete { buf, len }),
            Some(_) => return Ok(Head::TooLarge),
            // No blank line in MAX_HEAD bytes: whatever follows is too long.
            None if buf.len() >= MAX_HEAD => return Ok(Head::TooLarge),
            None => {}
        }
    }
}

/// Decides what a complete head asks for.
pub fn parse(head: &[u8]) -> Request<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let refuse = |reply| Request {
        route: Route::Refuse(reply),
        forwarded_for: Vec::new(),
    };
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return refuse(Reply::BadRequest("malformed request\n")),
    }
    let forwarded_for = values(&req, "x-forwarded-for")
        .into_iter()
        .flatten()
        .collect();
    let target = req.path.unwrap_or("");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    let route = match (req.method.unwrap_or(""), path) {
        ("GET", "/healthz") => Route::Healthz,
        ("GET", "/metrics") => Route::Metrics,
        ("GET", "/ws") => match upgrade(&req) {
            Ok(accept) => Route::Upgrade {
                query,
                accept,
                bearer: bearer(&req),
            },
            Err(reply) => Route::Refuse(reply),
        },
        ("GET", _) => Route::Refuse(Reply::NotFound),
        _ => Route::Refuse(Reply::MethodNotAllowed),
    };
    Request {
        route,
        forwarded_for,
    }
}

/// Every value of header `name`, trimmed; `None` for one that is not UTF-8.
fn values<'h>(req: &httparse::Request<'_, 'h>, name: &str) -> Vec<Option<&'h str>> {
    req.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| std::str::from_utf8(h.value).ok().map(str::trim))
        .collect()
}

/// The token of the request's `Authorization: Bearer TOKEN` header. A
/// token in a header stays out of the request line, which reverse proxies
/// log; the query form stays for clients that cannot set headers
/// (browsers). Its rules are the query's (`id::parse_ask`).
fn bearer(req: &httparse::Request<'_, '_>) -> Result<Option<String>, &'static str> {
    match values(req, "authorization").as_slice() {
        [] => Ok(None),
        [Some(v)] => match v.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                Ok(Some(token.trim().to_string()))
            }
            _ => Err("the Authorization header must be `Bearer TOKEN`"),
        },
        [_] => Err("the Authorization header is not UTF-8"),
        _ => Err("more than one Authorization header"),
    }
}

/// Checks a `GET /ws` as RFC 6455 4.2.1 asks; returns the accept value.
fn upgrade(req: &httparse::Request<'_, '_>) -> Result<String, Reply> {
    let upgrades = values(req, "upgrade");
    let websocket = upgrades
        .iter()
        .any(|v| v.is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    let connection = values(req, "connection").into_iter().flatten().any(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    if !websocket || !connection {
        return Err(Reply::UpgradeRequired);
    }
    if upgrades.len() != 1 {
        return Err(Reply::BadRequest("more than one Upgrade header\n"));
    }
    if req.version != Some(1) {
        return Err(Reply::BadRequest("a WebSocket upgrade needs HTTP/1.1\n"));
    }
    match values(req, "sec-websocket-version").as_slice() {
        [Some("13")] => {}
        [] | [_] => return Err(Reply::UnsupportedVersion),
        _ => {
            return Err(Reply::BadRequest(
                "more than one Sec-WebSocket-Version header\n",
            ));
        }
    }
    let keys = values(req, "sec-websocket-key");
    let [Some(key)] = keys.as_slice() else {
        return Err(Reply::BadRequest(
            "exactly one Sec-WebSocket-Key header is required\n",
        ));
    };
    // RFC 6455 4.1: the key is 16 random bytes, base64-encoded (24 chars).
    match STANDARD.decode(key) {
        Ok(bytes) if bytes.len() == 16 => Ok(derive_accept_key(key.as_bytes())),
        _ => Err(Reply::BadRequest(
            "Sec-WebSocket-Key must be the base64 of 16 bytes\n",
        )),
    }
}

/// Completes the upgrade: `101 Switching Protocols`.
pub async fn accept<S: AsyncWrite + Unpin>(stream: &mut S, accept: &str) -> io::Result<()> {
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(resp.as_bytes()).await
}

/// Writes a refusal and closes the write side.
pub async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, reply: Reply) -> io::Result<()> {
    write_response(
        stream,
        reply.status(),
        reply.extra_headers(),
        "text/plain; charset=utf-8",
        reply.body(),
    )
    .await
}

/// Writes a `200 OK` and closes the write side.
pub async fn ok<S: AsyncWrite + Unpin>(
    stream: &mut S,
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    write_response(stream, "200 OK", "", content_type, body).await
}

async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    extra_headers: &str,
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    let resp = format!(
        "HTTP/1.1 {status}\r\n{extra_headers}Content-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn head(lines: &[&str]) -> Vec<u8> {
        let mut s = String::new();
        for l in lines {
            s.push_str(l);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    fn ws(extra: &[&str]) -> Vec<u8> {
        let mut lines = vec![
            "GET /ws?id=a HTTP/1.1",
            "Host: x",
            "Upgrade: websocket",
            "Connection: keep-alive, Upgrade",
            "Sec-WebSocket-Version: 13",
        ];
        lines.extend_from_slice(extra);
        head(&lines)
    }

    fn route(h: &[u8]) -> Route {
        parse(h).route
    }

    #[test]
    fn the_rfc_example_is_accepted() {
        assert_eq!(
            route(&ws(&[&format!("Sec-WebSocket-Key: {KEY}")])),
            Route::Upgrade {
                query: Some("id=a".into()),
                // RFC 6455 1.3.
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
                bearer: Ok(None),
            }
        );
    }

    #[test]
    fn a_bearer_token_comes_from_one_authorization_header() {
        let key = format!("Sec-WebSocket-Key: {KEY}");
        let bearer = |extra: &[&str]| match route(&ws(&[&[key.as_str()], extra].concat())) {
            Route::Upgrade { bearer, .. } => bearer,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            bearer(&["Authorization: Bearer 0123456789abcdef"]),
            Ok(Some("0123456789abcdef".into()))
        );
        assert_eq!(
            bearer(&["authorization: bearer  0123456789abcdef "]),
            Ok(Some("0123456789abcdef".into()))
        );
        assert!(bearer(&["Authorization: Basic dXNlcjpwdw=="]).is_err());
        assert!(bearer(&["Authorization: Bearer a", "Authorization: Bearer b"]).is_err());
    }

    #[test]
    fn strict_handshake() {
        let bad = |h: Vec<u8>| matches!(route(&h), Route::Refuse(Reply::BadRequest(_)));
        // Not base64 of 16 bytes.
        for key in [
            "",
            "abc",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ==AA==",
            "dGhlIHNhbXBsZSBub25jZX==",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "!!!!!!!!!!!!!!!!!!!!!!==",
        ] {
            assert!(bad(ws(&[&format!("Sec-WebSocket-Key: {key}")])), "{key:?}");
        }
        let key = format!("Sec-WebSocket-Key: {KEY}");
        assert!(bad(ws(&[])), "no key");
        assert!(bad(ws(&[&key, &key])), "two keys");
        assert!(
            bad(ws(&[&key, "Upgrade: websocket"])),
            "two Upgrade headers"
        );
        assert!(bad(ws(&[&key, "upgrade: h2c"])), "two Upgrade headers");
        assert!(
            bad(ws(&[&key, "Sec-WebSocket-Version: 13"])),
            "two versions"
        );
        let http10 = head(&[
            "GET /ws HTTP/1.0",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            &key,
        ]);
        assert!(bad(http10));
        let v8 = head(&[
            "GET /ws HTTP/1.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 8",
            &key,
        ]);
        assert_eq!(route(&v8), Route::Refuse(Reply::UnsupportedVersion));
        assert_eq!(
            route(&head(&["GET /ws HTTP/1.1", "Host: x"])),
            Route::Refuse(Reply::UpgradeRequired)
        );
        assert_eq!(
            route(&head(&["GET /ws HTTP/1.1", "Upgrade: websocket", &key])),
            Route::Refuse(Reply::UpgradeRequired),
            "no Connection: upgrade"
        );
        assert_eq!(route(&head(&["GET /healthz HTTP/1.1"])), Route::Healthz);
        assert_eq!(route(&head(&["GET /metrics HTTP/1.0"])), Route::Metrics);
        assert_eq!(
            route(&head(&["POST /ws HTTP/1.1"])),
            Route::Refuse(Reply::MethodNotAllowed)
        );
        assert_eq!(
            route(&head(&["GET /x HTTP/1.1"])),
            Route::Refuse(Reply::NotFound)
        );
        let h = head(&[
            "GET /healthz HTTP/1.1",
            "X-Forwarded-For: 192.0.2.1, 10.0.0.1",
            "x-forwarded-for:  10.0.0.2 ",
        ]);
        let xff = parse(&h);
        assert_eq!(xff.forwarded_for, ["192.0.2.1, 10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn a_head_fed_byte_by_byte_is_scanned_once() {
        let mut h = ws(&[&format!("Sec-WebSocket-Key: {KEY}")]);
        // Drop the blank line, then pad to exactly the limit.
        h.truncate(h.len() - 2);
        let fill = MAX_HEAD - h.len() - "X-Pad: \r\n\r\n".len();
        h.extend_from_slice(format!("X-Pad: {}\r\n\r\n", "a".repeat(fill)).as_bytes());
        assert_eq!(h.len(), MAX_HEAD);
        let mut scan = HeadScan::default();
        let mut found = None;
        for n in 1..=h.len() {
            found = scan.feed(&h[..n]);
            if found.is_some() {
                assert_eq!(n, h.len());
            }
        }
        assert_eq!(found, Some(MAX_HEAD));
        // Each byte at most four times (itself and as one of the 3 before).
        assert!(scan.examined <= 4 * MAX_HEAD, "{}", scan.examined);
        assert!(matches!(route(&h), Route::Upgrade { .. }));
    }

    /// Builds an upgrade head from parts, headers in the given order.
    fn build(lines: &[String]) -> Vec<u8> {
        let mut s = String::from("GET /ws HTTP/1.1\r\n");
        for l in lines {
            s.push_str(l);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    fn case_mix(name: &str, mask: u64) -> String {
        name.chars()
            .enumerate()
            .map(|(i, c)| {
                if mask >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    }

    proptest! {
        #![proptest_config(cfg())]

        /// However the bytes are cut into reads, the scan finds the first
        /// blank line, the same as one search of everything, and looks at
        /// each byte a bounded number of times.
        #[test]
        fn scan_agrees_with_one_search(
            parts in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..64),
                    Just(b"\r\n".to_vec()),
                    Just(b"\r\n\r\n".to_vec()),
                    Just(b"\r".to_vec()),
                ],
                0..40,
            ),
            cuts in proptest::collection::vec(1usize..50, 1..200),
        ) {
            let all: Vec<u8> = parts.concat();
            let expect = all.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
            let mut scan = HeadScan::default();
            let (mut n, mut reads, mut got) = (0, 0, None);
            for c in cuts.iter().cycle() {
                if n >= all.len() {
                    break;
                }
                n = (n + c).min(all.len());
                reads += 1;
                if let Some(end) = scan.feed(&all[..n]) {
                    got = Some(end);
                    break;
                }
            }
            prop_assert_eq!(got, expect);
            prop_assert!(scan.examined <= all.len() + 3 * reads);
        }

        /// Any bytes at all: an answer, never a panic; an upgrade only with
        /// one valid key.
        #[test]
        fn any_head_gets_an_answer(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut h = bytes;
            h.extend_from_slice(b"\r\n\r\n");
            if let Route::Upgrade { accept, .. } = parse(&h).route {
                prop_assert_eq!(accept.len(), 28);
            }
        }

        /// Text that looks like HTTP, headers shuffled and recased.
        #[test]
        fn header_soup_gets_an_answer(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("Upgrade: websocket".to_string()),
                    Just("Connection: Upgrade".to_string()),
                    Just("Sec-WebSocket-Version: 13".to_string()),
                    Just(format!("Sec-WebSocket-Key: {KEY}")),
                    "[A-Za-z-]{1,20}: [ -~]{0,40}",
                    "[ -~]{0,40}",
                ],
                0..12,
            ),
        ) {
            let h = build(&lines);
            let r = parse(&h).route;
            // An empty line ends the head: what follows it is not a header.
            let head = lines.iter().take_while(|l| !l.is_empty());
            let count = |name: &str| head.clone().filter(|l| {
                l.split_once(':').is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
            }).count();
            if let Route::Upgrade { .. } = r {
                prop_assert_eq!(count("upgrade"), 1);
                prop_assert_eq!(count("sec-websocket-key"), 1);
                prop_assert_eq!(count("sec-websocket-version"), 1);
            }
        }

        /// Every valid handshake is accepted, whatever the key, the order
        /// and case of the headers, and other headers around them.
        #[test]
        fn valid_upgrades_are_accepted(
            key in any::<[u8; 16]>(),
            extra in proptest::collection::vec("X-[A-Za-z]{1,10}: [ -~]{0,30}", 0..5),
            order in any::<u64>(),
            case in any::<u64>(),
        ) {
            let key = STANDARD.encode(key);
            let mut lines = vec![
                format!("{}: websocket", case_mix("Upgrade", case)),
                format!("{}: Upgrade", case_mix("Connection", case >> 7)),
                format!("{}: 13", case_mix("Sec-WebSocket-Version", case >> 13)),
                format!("{}: {key}", case_mix("Sec-WebSocket-Key", case >> 29)),
            ];
            lines.extend(extra);
            // A shuffle driven by `order`.
            let n = lines.len();
            for i in (1..n).rev() {
                lines.swap(i, (order >> ((i * 3) % 60)) as usize % (i + 1));
            }
            prop_assert_eq!(
                parse(&build(&lines)).route,
                Route::Upgrade { query: None, accept: derive_accept_key(key.as_bytes()), bearer: Ok(None) }
            );
        }

        /// A key that is not the base64 of exactly 16 bytes is refused.
        #[test]
        fn other_keys_are_400(raw in proptest::collection::vec(any::<u8>(), 0..40), text in "[ -~]{0,30}") {
            for key in [STANDARD.encode(&raw), text] {
                let ok = STANDARD.decode(key.trim()).is_ok_and(|k| k.len() == 16);
                let h = build(&[
                    "Upgrade: websocket".into(),
                    "Connection: Upgrade".into(),
                    "Sec-WebSocket-Version: 13".into(),
                    format!("Sec-WebSocket-Key: {key}"),
                ]);
                let r = parse(&h).route;
                prop_assert_eq!(matches!(r, Route::Upgrade { .. }), ok, "{:?} {:?}", key, r);
                if !ok {
                    prop_assert!(matches!(r, Route::Refuse(Reply::BadRequest(_))), "{:?}", r);
                }
            }
        }
    }
}
