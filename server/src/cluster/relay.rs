//! Frames between nodes: a relayed frame goes into the peer's node's inbox
//! (`XADD`, tagged with the peer's connection and the pairing's epoch), and
//! inbox entry IDs are read back as positions.
//!
//! Why a stream and not pub/sub: the inbox also carries the control events
//! the scripts add (`paired`, the end of a pairing, a kick), and one stream
//! keeps a frame after the `paired` it follows and before the notice that
//! ends its pairing, whatever connection each came by; a node that loses
//! its Redis connection for a moment reads on from where it was instead of
//! losing what was sent meanwhile. The receiving node delivers a frame only
//! if the connection and epoch still match (a frame of an ended pairing is
//! stale, counted and dropped).

use redis::aio::ConnectionManager;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Remote;

/// The inbox stream of incarnation `inc`, under the cluster's key prefix.
pub fn inbox_key(prefix: &str, inc: &str) -> String {
    format!("{prefix}in:{inc}")
}

/// Adds a relayed frame to `to`'s node's inbox. `NOMKSTREAM`: the inbox of
/// a node reaped meanwhile is not made again (the frame is stale anyway).
pub async fn send(
    redis: &ConnectionManager,
    to: &Remote,
    epoch: u64,
    frame: &Utf8Bytes,
) -> redis::RedisResult<()> {
    let mut con = redis.clone();
    redis::cmd("XADD")
        .arg(&to.inbox)
        .arg("NOMKSTREAM")
        .arg("*")
        .arg("k")
        .arg("r")
        .arg("i")
        .arg(&*to.id)
        .arg("c")
        .arg(to.conn)
        .arg("e")
        .arg(epoch)
        .arg("f")
        .arg(frame.as_bytes())
        .query_async::<redis::Value>(&mut con)
        .await
        .map(drop)
}

/// A stream entry ID `MS-SEQ` as a comparable position.
pub fn entry_pos(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_order_as_positions() {
        assert_eq!(entry_pos("1700000000000-3"), Some((1700000000000, 3)));
        assert!(entry_pos("5-10") > entry_pos("5-9"));
        assert!(entry_pos("6-0") > entry_pos("5-9"));
        assert_eq!(entry_pos(""), None);
        assert_eq!(entry_pos("x-1"), None);
    }
}
