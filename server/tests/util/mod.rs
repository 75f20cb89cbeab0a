//! Helpers: an in-process server on 127.0.0.1:0 and a WebSocket test client
//! that awaits frames under a timeout (never sleeps to synchronise).

#![allow(dead_code)]

pub mod cluster;
pub mod redis;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use signald::Config;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A server running in this process, or several cluster nodes on one
/// Redis, which clients are spread over in turn (a round-robin load
/// balancer); stopped (1001 to all) on `stop`.
pub struct Server {
    /// The (first) node's address.
    pub addr: SocketAddr,
    /// Every node's address; one for a single server.
    pub addrs: Vec<SocketAddr>,
    next: AtomicUsize,
    /// Where `/metrics` is served when not on `addr` (`--metrics-listen`).
    pub metrics_addr: Option<SocketAddr>,
    stop: Vec<oneshot::Sender<()>>,
    task: Vec<JoinHandle<anyhow::Result<()>>>,
    // In a mutex: a process handle is not `Sync`, a shared `Server` must be.
    redis: Option<std::sync::Mutex<redis::Redis>>,
}

pub async fn start(cfg: Config) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(signald::run(listener, cfg, async {
        rx.await.ok();
    }));
    Server {
        addr,
        addrs: vec![addr],
        next: AtomicUsize::new(0),
        metrics_addr: None,
        stop: vec![tx],
        task: vec![task],
        redis: None,
    }
}

/// Three nodes in this process on a Redis of their own, each with `cfg`
/// and a short heartbeat (100 ms, dead after 1 s); `None` (after one
/// `SKIPPED` line) where redis-server is not installed.
pub async fn start_cluster(test: &str, cfg: Config) -> Option<Server> {
    start_cluster_of(test, cfg, 3).await
}

/// Like [`start_cluster`], with `nodes` nodes: one node runs the
/// cluster's code for two clients of the same node.
pub async fn start_cluster_of(test: &str, cfg: Config, nodes: usize) -> Option<Server> {
    let redis = redis::Redis::start(test)?;
    let mut srv = Server {
        addr: "127.0.0.1:1".parse().expect("an address"),
        addrs: Vec::new(),
        next: AtomicUsize::new(0),
        metrics_addr: None,
        stop: Vec::new(),
        task: Vec::new(),
        redis: None,
    };
    for n in 1..=nodes {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        srv.addrs.push(listener.local_addr().expect("local addr"));
        let cfg = Config {
            cluster: Some(cluster::config(&redis.url(), &format!("n{n}"))),
            ..cfg.clone()
        };
        let node = signald::Signald::new(cfg)
            .await
            .expect("joining the cluster");
        let (tx, rx) = oneshot::channel();
        srv.task
            .push(tokio::spawn(node.serve(listener, None, async {
                rx.await.ok();
            })));
        srv.stop.push(tx);
    }
    srv.addr = srv.addrs[0];
    srv.redis = Some(std::sync::Mutex::new(redis));
    Some(srv)
}

/// A server with `/metrics` on a listener of its own, which no per-IP
/// limit applies to: tests that exhaust the limits from 127.0.0.1 can
/// still read the counters.
pub async fn start_with_metrics(cfg: Config) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let metrics_addr = Some(metrics.local_addr().expect("local addr"));
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(signald::serve(listener, Some(metrics), cfg, async {
        rx.await.ok();
    }));
    Server {
        addr,
        addrs: vec![addr],
        next: AtomicUsize::new(0),
        metrics_addr,
        stop: vec![tx],
        task: vec![task],
        redis: None,
    }
}

pub async fn start_default() -> Server {
    start(Config::default()).await
}

impl Server {
    /// The next node's address (always the same for one server).
    pub fn next_addr(&self) -> SocketAddr {
        self.addrs[self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len()]
    }

    /// The next node's WebSocket URL (always the same for one server).
    pub fn url(&self, query: &str) -> String {
        url_at(self.next_addr(), query)
    }

    /// The URL of a cluster's Redis.
    pub fn redis_url(&self) -> Option<String> {
        let r = self.redis.as_ref()?;
        Some(r.lock().unwrap_or_else(|e| e.into_inner()).url())
    }

    /// Whether this is a cluster of several nodes.
    pub fn is_cluster(&self) -> bool {
        self.addrs.len() > 1
    }

    /// Connects and reads the `welcome`.
    pub async fn client(&self, query: &str) -> Client {
        let mut c = Client {
            ws: self.raw(query).await,
            id: String::new(),
        };
        let w = c.recv().await;
        assert_eq!(w["type"], "welcome", "{w}");
        c.id = w["id"].as_str().expect("welcome.id").to_string();
        c
    }

    /// Connects with the given ID and reads the `welcome`.
    pub async fn named(&self, id: &str) -> Client {
        let c = self.client(&format!("id={id}")).await;
        assert_eq!(c.id, id);
        c
    }

    /// Connects with `Authorization: Bearer TOKEN` and `query`, without
    /// reading anything.
    pub async fn raw_with_bearer(&self, query: &str, token: &str) -> Ws {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = self.url(query).into_client_request().expect("a request");
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {token}").parse().expect("a header value"),
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect timed out")
            .expect("connect");
        ws
    }

    /// Connects without reading anything.
    pub async fn raw(&self, query: &str) -> Ws {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(self.url(query)))
            .await
            .expect("connect timed out")
            .expect("connect");
        ws
    }

    /// Two clients, `a` paired with `b` (a is the initiator); `paired` read.
    pub async fn pair(&self, a: &str, b: &str) -> (Client, Client) {
        let mut ca = self.named(a).await;
        let mut cb = self.named(b).await;
        ca.send(json!({"type":"pair","peer_id":b})).await;
        let pa = ca.recv().await;
        assert_eq!(pa, json!({"type":"paired","peer_id":b,"initiator":true}));
        let pb = cb.recv().await;
        assert_eq!(pb, json!({"type":"paired","peer_id":a,"initiator":false}));
        (ca, cb)
    }

    /// Fetches an HTTP path; returns (status line, body).
    pub async fn http_get(&self, path: &str) -> (String, String) {
        http_get(self.addr, path).await
    }

    /// The value of one metric line (`name` includes any labels); of a
    /// cluster, the sum over its nodes (each counts its own clients).
    pub async fn metric(&self, name: &str) -> f64 {
        let mut sum = 0.0;
        let addrs = match self.metrics_addr {
            Some(m) => vec![m],
            None => self.addrs.clone(),
        };
        for addr in addrs {
            sum += metric_at(addr, name).await;
        }
        sum
    }

    pub async fn stop(mut self) {
        for tx in self.stop.drain(..) {
            tx.send(()).ok();
        }
        for task in self.task.drain(..) {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server did not stop")
                .expect("server task")
                .expect("server result");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for task in &self.task {
            task.abort();
        }
    }
}

/// One metric of the server at `addr`.
pub async fn metric_at(addr: SocketAddr, name: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no metric {name} in\n{body}"))
        .parse()
        .expect("metric value")
}

/// The WebSocket URL of the node at `addr`.
pub fn url_at(addr: SocketAddr, query: &str) -> String {
    if query.is_empty() {
        format!("ws://{addr}/ws")
    } else {
        format!("ws://{addr}/ws?{query}")
    }
}

/// A test client.
pub struct Client {
    pub ws: Ws,
    pub id: String,
}

/// Reads the next non-ping text frame as JSON (or the close code).
pub async fn next_frame(ws: &mut Ws, skip_pings: bool) -> Result<Value, Option<u16>> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a frame");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("server sent JSON");
                if skip_pings && v["type"] == "ping" {
                    continue;
                }
                return Ok(v);
            }
            Some(Ok(Message::Close(f))) => return Err(f.map(|f| u16::from(f.code))),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            Some(Err(_)) | None => return Err(None),
        }
    }
}

impl Client {
    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::text(s.to_string()))
            .await
            .expect("send");
    }

    /// The next frame other than `ping`.
    pub async fn recv(&mut self) -> Value {
        match next_frame(&mut self.ws, true).await {
            Ok(v) => v,
            Err(code) => panic!("connection closed ({code:?}) while waiting for a frame"),
        }
    }

    /// The next frame, `ping` included.
    pub async fn recv_any(&mut self) -> Value {
        match next_frame(&mut self.ws, false).await {
            Ok(v) => v,
            Err(code) => panic!("connection closed ({code:?}) while waiting for a frame"),
        }
    }

    /// Expects an `error` frame with `code`.
    pub async fn expect_error(&mut self, code: &str) {
        let v = self.recv().await;
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["code"], code, "{v}");
        assert!(v["message"].is_string(), "{v}");
    }

    /// Expects the close frame with `code`, skipping pings only.
    pub async fn expect_close(&mut self, code: u16) {
        expect_close(&mut self.ws, code).await;
    }

    /// A round trip that proves every earlier frame was handled: an
    /// `unpair`-free probe, `offer` while unpaired gives `not_paired`.
    pub async fn probe_unpaired(&mut self) {
        self.send(json!({"type":"offer","sdp":"probe"})).await;
        self.expect_error("not_paired").await;
    }
}

pub async fn expect_close(ws: &mut Ws, code: u16) {
    match next_frame(ws, true).await {
        Ok(v) => panic!("expected close {code}, got frame {v}"),
        Err(got) => assert_eq!(got, Some(code), "close code"),
    }
}

/// Fetches an HTTP path from `addr`; returns (status line, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    http_raw(addr, req.as_bytes()).await
}

/// Sends `request` as it is; returns the answer's (status line, body).
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let s = TcpStream::connect(addr).await.expect("connect");
    http_on(s, request).await
}

/// Sends `request` on `s`; returns the answer's (status line, body).
pub async fn http_on(mut s: TcpStream, request: &[u8]) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("http timed out")
        .expect("read");
    let out = String::from_utf8_lossy(&out);
    let (head, body) = out.split_once("\r\n\r\n").expect("http head");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// A TCP connection to `addr` from the loopback address `from`
/// (127.0.0.2, ...: one more client address on the same machine).
pub async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(from.parse().expect("an address"), 0))
        .expect("bind the source address");
    sock.connect(addr).await.expect("connect")
}

/// A WebSocket upgrade on `stream` with extra request headers: the
/// client, or the HTTP status it was refused with.
pub async fn upgrade_on(
    stream: TcpStream,
    url: &str,
    headers: &[(&'static str, &str)],
) -> Result<Ws, u16> {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().expect("a request");
    for (k, v) in headers {
        req.headers_mut()
            .insert(*k, v.parse().expect("a header value"));
    }
    let res = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("upgrade timed out");
    match res {
        Ok((ws, _)) => Ok(ws),
        Err(Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("upgrade failed without an HTTP status: {e}"),
    }
}

/// Connects to `srv` as a plain client: the client, or the HTTP status.
pub async fn try_connect(srv: &Server, query: &str) -> Result<Ws, u16> {
    let stream = TcpStream::connect(srv.addr).await.expect("connect");
    upgrade_on(stream, &srv.url(query), &[]).await
}

/// Polls `probe` until it holds, for at most [`WAIT`]: for states that
/// only show from outside (a count given back when a socket closes).
pub async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !probe().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn close_code(c: u16) -> CloseCode {
    CloseCode::from(c)
}
