//! Cluster nodes for the tests: the configuration of an in-process node,
//! and real `signald --cluster` processes for the tests that kill, stop or
//! starve a node. Short timings: heartbeat 100 ms, dead after 1 s.

use std::net::SocketAddr;
use std::time::Duration;

use p2p_testkit::Signald;
use signald::ClusterConfig;

use super::redis::Redis;
use super::{Client, WAIT, Ws};

pub const HEARTBEAT: Duration = Duration::from_millis(100);
pub const DEAD_AFTER: Duration = Duration::from_secs(1);

pub fn config(url: &str, node: &str) -> ClusterConfig {
    ClusterConfig {
        url: url.to_string(),
        ca: None,
        prefix: signald::DEFAULT_PREFIX.to_string(),
        node_id: node.to_string(),
        heartbeat: HEARTBEAT,
        dead_after: DEAD_AFTER,
        // signald's default `--coalesce`.
        gather: Duration::from_micros(300),
    }
}

/// A real signald process in the cluster on `redis`.
pub struct Node {
    pub s: Signald,
    pub name: String,
}

impl Node {
    pub fn start(redis: &Redis, name: &str, extra: &[&str]) -> Node {
        Node::start_on(&redis.url(), name, extra)
    }

    /// A node on the Redis at `url` (credentials, `rediss://`).
    pub fn start_on(url: &str, name: &str, extra: &[&str]) -> Node {
        Node::start_timed(url, name, "1s", extra)
    }

    /// A node declared dead after `dead_after` instead of 1 s: for a test
    /// that needs Redis away for a while without anyone fencing.
    pub fn start_timed(url: &str, name: &str, dead_after: &str, extra: &[&str]) -> Node {
        let args = [
            &[
                "--listen",
                "127.0.0.1:0",
                "--cluster",
                url,
                "--node-id",
                name,
                "--cluster-heartbeat",
                "100ms",
                "--cluster-dead-after",
                dead_after,
            ],
            extra,
        ]
        .concat();
        Node {
            s: Signald::start_with(&args),
            name: name.to_string(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.s.addr().parse().expect("an address")
    }

    pub fn url(&self) -> String {
        self.s.url()
    }

    /// Connects with `query` and reads the `welcome`.
    pub async fn client(&self, query: &str) -> Client {
        client_at(self.addr(), query).await
    }

    /// Connects without reading.
    pub async fn raw(&self, query: &str) -> Ws {
        raw_at(self.addr(), query).await
    }

    pub async fn metric(&self, name: &str) -> f64 {
        super::metric_at(self.addr(), name).await
    }

    pub fn signal(&self, sig: i32) {
        self.s.proc().signal(sig);
    }

    /// SIGSTOP, returning once the node is really stopped.
    pub fn stop(&self) {
        self.s.proc().stop();
    }
}

pub async fn raw_at(addr: SocketAddr, query: &str) -> Ws {
    let url = super::url_at(addr, query);
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .expect("connect");
    ws
}

pub async fn client_at(addr: SocketAddr, query: &str) -> Client {
    let mut c = Client {
        ws: raw_at(addr, query).await,
        id: String::new(),
    };
    let w = c.recv().await;
    assert_eq!(w["type"], "welcome", "{w}");
    c.id = w["id"].as_str().expect("welcome.id").to_string();
    c
}
