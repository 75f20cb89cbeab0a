//! The node's inbox reader: one task per incarnation reads the node's
//! stream (`XREAD BLOCK` on a connection of its own: a blocking read would
//! hold up every command behind it on a shared one) and applies each entry
//! to the local table in stream order, which is the order Redis made the
//! changes. It is the only writer of the cached pairings, apart from a
//! connection forgetting its own when it ends and a fence forgetting all.
//!
//! After each batch it records how far it got (what a script's caller
//! waits for) and, in the round trip of its next read, trims what it
//! applied from the stream.
//!
//! Nothing read here is trusted because it came from Redis: whoever can
//! write to Redis could put anything in an inbox. A relayed frame reaches
//! a client only if it is one a client of this node could have been sent
//! by its peer (an `offer`, `answer` or `candidate` from exactly the peer
//! of the pairing it names, within the size limit); IDs and incarnations
//! must be well formed; a `peer_disconnected` goes out only for the
//! pairing the client is in. Anything else is counted
//! (`signald_cluster_rejected_total`) and dropped, and the client hears
//! nothing of it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use p2p_proto::signal::{DisconnectReason, Relayable, ServerMsg, valid_id};
use redis::AsyncConnectionConfig;
use redis::Value;
use redis::aio::MultiplexedConnection;
use serde::Deserialize;
use tracing::{debug, warn};
use tungstenite::Utf8Bytes;

use super::local::Live;
use super::relay::Batched;
use super::{CONNECT_TIMEOUT, Inner, Remote, Throttled, relay};
use crate::directory::slot::{Kick, Slot};
use crate::directory::{Link, Peer};

/// How long one read blocks when the inbox is empty (a new entry wakes it
/// at once); the connection's response timeout is this plus a margin.
const BLOCK_MS: u64 = 1000;

/// Entries per read: a batch is applied under one lock.
const BATCH: usize = 1024;

/// Applied entries are trimmed from the inbox once this many bytes of
/// frames (or [`TRIM_ENTRIES`] entries) have piled up, or the inbox is
/// quiet: a trim is a command of its own for Redis, as costly as the
/// `XADD` of a batch, and under load one per read doubled Redis's work.
const TRIM_BYTES: usize = 256 * 1024;
const TRIM_ENTRIES: usize = 64;

/// One operation of a control event (see `scripts`; the wire names are
/// short because every event is stored in Redis).
#[derive(Deserialize)]
#[serde(tag = "o", rename_all = "snake_case")]
enum Op {
    /// Client `id` on connection `conn` is paired with `peer`.
    Paired {
        id: String,
        #[serde(rename = "c")]
        conn: String,
        #[serde(rename = "p")]
        peer: String,
        /// The peer's incarnation.
        #[serde(rename = "pn")]
        peer_inc: String,
        #[serde(rename = "pc")]
        peer_conn: String,
        #[serde(rename = "e")]
        pairing: String,
        #[serde(rename = "i")]
        initiator: bool,
    },
    /// Pairing `pairing` of client `id` ends; with a notice (`reason`,
    /// naming `peer`) or, for the side that ended it, without.
    End {
        id: String,
        #[serde(rename = "c")]
        conn: String,
        #[serde(rename = "e")]
        pairing: String,
        #[serde(rename = "r")]
        reason: Option<String>,
        #[serde(rename = "p")]
        peer: Option<String>,
    },
    /// Client `id` on connection `conn` was replaced on another node.
    Kick {
        id: String,
        #[serde(rename = "c")]
        conn: String,
    },
}

fn reason(r: &str) -> Option<DisconnectReason> {
    Some(match r {
        "left" => DisconnectReason::Left,
        "timeout" => DisconnectReason::Timeout,
        "unpaired" => DisconnectReason::Unpaired,
        "replaced" => DisconnectReason::Replaced,
        _ => return None,
    })
}

fn field<'a>(map: &'a HashMap<String, Value>, k: &str) -> Option<&'a [u8]> {
    match map.get(k)? {
        Value::BulkString(b) => Some(b),
        _ => None,
    }
}

fn num(b: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(b?).ok()?.parse().ok()
}

/// Reads incarnation `inc_no`'s inbox from after `last` until the node is
/// fenced or stops.
pub async fn run(i: Arc<Inner>, inc: Arc<str>, inc_no: u64, mut last: String) {
    let key = relay::inbox_key(&i.cfg.prefix, &inc);
    let mut con: Option<MultiplexedConnection> = None;
    let mut seen = i.seen.subscribe();
    // Applied entries not yet trimmed: how many and their frames' bytes.
    let mut untrimmed = (0usize, 0usize);
    // The last read found nothing new.
    let mut quiet = false;
    let mut misread = Throttled::default();
    loop {
        if !i.local.is_current(inc_no) {
            return;
        }
        let c = match &mut con {
            Some(c) => c,
            None => match connect(&i).await {
                Ok(c) => con.insert(c),
                Err(e) => {
                    debug!("inbox connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // What was applied is trimmed in the same round trip as a read:
        // the node that owns an inbox is the only one that trims it, and
        // nothing it applied is needed again. `~` frees whole stream
        // nodes only, which costs Redis less than an exact cut.
        let trim =
            untrimmed.0 >= TRIM_ENTRIES || untrimmed.1 >= TRIM_BYTES || (quiet && untrimmed.0 > 0);
        let mut pipe = redis::pipe();
        if trim {
            pipe.cmd("XTRIM")
                .arg(&key)
                .arg("MINID")
                .arg("~")
                .arg(&last)
                .ignore();
        }
        pipe.cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last);
        let read = pipe.query_async::<(Value,)>(c);
        let res = tokio::select! {
            r = read => r,
            _ = seen.wait_for(|(n, _)| *n != inc_no) => return,
        };
        let entries = match res.map(|(reply,)| entries(reply)) {
            Ok(Some(entries)) => entries,
            failed => {
                i.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
                match failed {
                    Err(e) => debug!("reading the inbox: {e}"),
                    _ if misread.now() => {
                        warn!("reading the inbox: a reply that is not a stream's entries")
                    }
                    _ => {}
                }
                con = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if trim {
            untrimmed = (0, 0);
        }
        quiet = entries.is_empty();
        let Some(end) = entries.last().map(|e| e.id.clone()) else {
            continue;
        };
        let applied = i.local.apply(inc_no, |live| {
            for e in &entries {
                apply(&i, live, &e.fields);
            }
        });
        if applied.is_none() {
            return;
        }
        i.outboxes.make_room_with(|| i.local.table());
        last = end;
        if let Some(pos) = relay::entry_pos(&last) {
            i.seen.send_if_modified(|s| {
                let now = s.0 == inc_no && s.1 < pos;
                if now {
                    s.1 = pos;
                }
                now
            });
        }
        untrimmed.0 += entries.len();
        untrimmed.1 += entries
            .iter()
            .map(|e| entry_bytes(&e.fields))
            .sum::<usize>();
    }
}

/// One inbox entry: its ID and its fields.
struct Entry {
    id: String,
    fields: HashMap<String, Value>,
}

/// The entries of an `XREAD` reply, taken apart in place (`None` for a
/// reply of another shape). redis-rs's `StreamReadReply` copies the whole
/// reply before it reads it: every frame of every batch once more.
fn entries(reply: Value) -> Option<Vec<Entry>> {
    fn text(v: Value) -> Option<String> {
        match v {
            Value::BulkString(b) => String::from_utf8(b).ok(),
            Value::SimpleString(s) => Some(s),
            _ => None,
        }
    }
    let streams: Vec<Value> = match reply {
        // Nothing new within the block.
        Value::Nil => return Some(Vec::new()),
        // RESP2: `[[key, entries], ...]`.
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect::<Option<_>>()?,
        // RESP3 (`?protocol=resp3` in the URL): `{key: entries, ...}`.
        Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
        _ => return None,
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(items) = stream else {
            return None;
        };
        for item in items {
            let Value::Array(item) = item else {
                return None;
            };
            let [id, fields]: [Value; 2] = item.try_into().ok()?;
            let fields = match fields {
                Value::Array(f) => f,
                // An entry deleted meanwhile.
                Value::Nil => Vec::new(),
                _ => return None,
            };
            let mut map = HashMap::with_capacity(fields.len() / 2);
            let mut fields = fields.into_iter();
            while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                map.insert(text(k)?, v);
            }
            out.push(Entry {
                id: text(id)?,
                fields: map,
            });
        }
    }
    Some(out)
}

/// The bytes of an entry's values.
fn entry_bytes(map: &HashMap<String, Value>) -> usize {
    map.values()
        .map(|v| match v {
            Value::BulkString(b) => b.len(),
            _ => 0,
        })
        .sum()
}

async fn connect(i: &Inner) -> redis::RedisResult<MultiplexedConnection> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(Duration::from_millis(BLOCK_MS) + CONNECT_TIMEOUT));
    i.client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// Applies one inbox entry.
fn apply(i: &Inner, live: &Live, map: &HashMap<String, Value>) {
    match field(map, "k") {
        Some(b"b") => {
            let Some(batch) = field(map, "f") else {
                return reject(i, "batch");
            };
            for f in relay::decode(batch) {
                match f {
                    Ok(f) => relayed(i, live, f),
                    Err(()) => return reject(i, "batch"),
                }
            }
        }
        // One frame an entry: what nodes before batching wrote.
        Some(b"r") => match single(map) {
            Some(f) => relayed(i, live, f),
            None => reject(i, "relayed frame"),
        },
        Some(b"x") => {
            let ops: Vec<Op> = match field(map, "j").map(serde_json::from_slice) {
                Some(Ok(ops)) => ops,
                other => {
                    warn!("inbox: unreadable event ({:?})", other.map(|r| r.err()));
                    return;
                }
            };
            for op in ops {
                control(i, live, op);
            }
        }
        Some(b"hello") => {}
        other => warn!("inbox: unknown entry kind {other:?}"),
    }
}

/// An entry of one relayed frame.
fn single(map: &HashMap<String, Value>) -> Option<Batched<'_>> {
    Some(Batched {
        id: field(map, "i").and_then(|b| std::str::from_utf8(b).ok())?,
        conn: num(field(map, "c"))?,
        pairing: num(field(map, "e"))?,
        frame: field(map, "f")?,
    })
}

/// A frame from a peer on another node: delivered only to the connection
/// and pairing it was sent for.
fn relayed(i: &Inner, live: &Live, f: Batched<'_>) {
    let Batched {
        id,
        conn,
        pairing,
        frame,
    } = f;
    let Some(slot) = live.get(conn, id) else {
        i.counters.stale_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if slot.link().as_ref().is_none_or(|l| l.pairing != pairing) {
        i.counters.stale_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Some(text) = relayable(i, slot, frame) else {
        i.counters.rejected.fetch_add(1, Ordering::Relaxed);
        warn!("inbox: a relayed frame for {id} that its peer could not have sent; dropped");
        return;
    };
    i.counters.relayed_in.fetch_add(1, Ordering::Relaxed);
    deliver(i, live, slot, text.into());
}

/// The frame as text, if it is what `slot`'s peer could have had relayed
/// to it: UTF-8, within the size limit, an `offer`, `answer` or `candidate`
/// whose `from` is the peer of the current pairing.
fn relayable(i: &Inner, slot: &Slot, frame: &[u8]) -> Option<String> {
    if frame.len() > i.max_frame {
        return None;
    }
    let text = std::str::from_utf8(frame).ok()?;
    let (_, from) = Relayable::parse_relayed(text)?;
    let link = slot.link();
    match link.as_ref().map(|l| &l.peer) {
        Some(Peer::Elsewhere(r)) if *r.id == *from.as_str() => Some(text.to_owned()),
        _ => None,
    }
}

fn reject(i: &Inner, what: &str) {
    i.counters.rejected.fetch_add(1, Ordering::Relaxed);
    warn!("inbox: malformed {what}; dropped");
}

fn deliver(i: &Inner, live: &Live, slot: &Arc<Slot>, frame: Utf8Bytes) {
    i.outboxes.deliver(slot, frame, &mut live.view());
}

fn control(i: &Inner, live: &Live, op: Op) {
    match op {
        Op::Paired {
            id,
            conn,
            peer: peer_id,
            peer_inc,
            peer_conn,
            pairing,
            initiator,
        } => {
            let (Ok(conn), Ok(peer_conn), Ok(pairing)) =
                (conn.parse(), peer_conn.parse::<u64>(), pairing.parse())
            else {
                return reject(i, "paired");
            };
            // An incarnation is a node ID, a dot, eight hex digits.
            if !valid_id(&peer_id) || peer_id == id || !super::valid_node_name(&peer_inc, 64 + 9) {
                return reject(i, "paired");
            }
            let Some(slot) = live.get(conn, &id) else {
                return;
            };
            let peer = match live.get(peer_conn, &peer_id) {
                Some(s) if *peer_inc == *live.inc() => Peer::Here(s.clone()),
                // A local peer already gone is a remote one nobody reads:
                // its release, next in the inbox, ends this pairing.
                _ => Peer::Elsewhere(Arc::new(Remote::new(
                    &i.cfg.prefix,
                    &peer_id,
                    &peer_inc,
                    peer_conn,
                ))),
            };
            *slot.link() = Some(Link { peer, pairing });
            let frame = ServerMsg::Paired { peer_id, initiator };
            deliver(i, live, slot, frame.to_json().into());
        }
        Op::End {
            id,
            conn,
            pairing,
            reason: r,
            peer: p,
        } => {
            let (Ok(conn), Ok(pairing)) = (conn.parse(), pairing.parse::<u64>()) else {
                return reject(i, "end");
            };
            let Some(slot) = live.get(conn, &id) else {
                return;
            };
            // Only the pairing the client is in ends, and a notice must
            // name its peer; otherwise nothing changes.
            let notice = {
                let mut link = slot.link();
                let Some(l) = link.as_ref().filter(|l| l.pairing == pairing) else {
                    return;
                };
                let peer_id = match &l.peer {
                    Peer::Here(s) => s.id(),
                    Peer::Elsewhere(r) => r.id(),
                };
                let notice = match (r.as_deref(), p) {
                    (None, None) => None,
                    (Some(r), Some(p)) => match reason(r) {
                        Some(r) if *p == **peer_id => Some((r, p)),
                        _ => return reject(i, "end notice"),
                    },
                    _ => return reject(i, "end notice"),
                };
                link.take();
                notice
            };
            if let Some((r, p)) = notice {
                let notice = ServerMsg::PeerDisconnected {
                    peer_id: p,
                    reason: r,
                };
                deliver(i, live, slot, notice.to_json().into());
            }
        }
        Op::Kick { id, conn } => {
            let Ok(conn) = conn.parse() else {
                return reject(i, "kick");
            };
            if let Some(slot) = live.get(conn, &id) {
                slot.end(Kick::Replaced);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        let fields = fields
            .iter()
            .flat_map(|(k, v)| [bulk(k), bulk(v)])
            .collect();
        Value::Array(vec![bulk(id), Value::Array(fields)])
    }

    /// An entry's ID and its fields, sorted.
    type Read = (String, Vec<(String, String)>);

    fn read(reply: Value) -> Option<Vec<Read>> {
        let mut got: Vec<_> = entries(reply)?
            .into_iter()
            .map(|e| {
                let mut f: Vec<_> = e
                    .fields
                    .into_iter()
                    .map(|(k, v)| match v {
                        Value::BulkString(b) => (k, String::from_utf8(b).unwrap()),
                        other => (k, format!("{other:?}")),
                    })
                    .collect();
                f.sort();
                (e.id, f)
            })
            .collect();
        got.sort();
        Some(got)
    }

    #[test]
    fn a_read_reply_comes_apart_as_its_entries_in_either_protocol() {
        let items = || {
            Value::Array(vec![
                entry("1-0", &[("k", "b"), ("f", "frames")]),
                entry("1-1", &[("k", "x"), ("j", "[]")]),
            ])
        };
        let want = Some(vec![
            (
                "1-0".to_string(),
                vec![("f".into(), "frames".into()), ("k".into(), "b".into())],
            ),
            (
                "1-1".to_string(),
                vec![("j".into(), "[]".into()), ("k".into(), "x".into())],
            ),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("sd:in:n1.0"), items()])]);
        assert_eq!(read(resp2), want);
        let resp3 = Value::Map(vec![(bulk("sd:in:n1.0"), items())]);
        assert_eq!(read(resp3), want);
        assert_eq!(read(Value::Nil), Some(Vec::new()));
    }

    #[test]
    fn a_reply_of_another_shape_is_refused() {
        for bad in [
            Value::Int(1),
            Value::Array(vec![bulk("key only")]),
            Value::Array(vec![Value::Array(vec![bulk("k"), Value::Int(3)])]),
            Value::Array(vec![Value::Array(vec![
                bulk("k"),
                Value::Array(vec![Value::Array(vec![bulk("1-0")])]),
            ])]),
            Value::Array(vec![Value::Array(vec![
                bulk("k"),
                Value::Array(vec![Value::Array(vec![
                    Value::Int(1),
                    Value::Array(vec![]),
                ])]),
            ])]),
        ] {
            assert!(entries(bad.clone()).is_none(), "{bad:?}");
        }
    }
}
