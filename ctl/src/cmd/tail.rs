//! `p2pctl tail [-n N] [--json] [--no-follow]`: received messages, one per
//! line, flushed as they come so that `p2pctl tail | while read -r l` reacts
//! at once. Text messages print as text, binary ones as their raw bytes;
//! `--json` prints every event object (messages with timestamps and sender,
//! pairing and connection changes), binary payloads in base64.

use std::process::ExitCode;

use base64::Engine as _;
use std::borrow::Cow;

use p2p_proto::control::Request;
use tokio::io::{AsyncWriteExt, BufWriter};

use crate::client::{Client, Result, decode_event};

/// The part of an event (`p2p_proto::control::Event`) that plain output
/// needs, decoded without building the whole event: this is the hot path
/// of `p2pctl tail`.
#[derive(serde::Deserialize)]
struct PlainView<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    data_b64: Option<Cow<'a, str>>,
    #[serde(default)]
    missed: Option<u64>,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// First replay up to N messages from the daemon's history.
    #[arg(short = 'n', long = "lines", default_value_t = 0)]
    pub n: usize,
    /// Print full events as JSON objects, one per line.
    #[arg(long)]
    pub json: bool,
    /// Exit after the replay instead of following new messages.
    #[arg(long)]
    pub no_follow: bool,
}

pub async fn run(mut client: Client, args: Args) -> Result<ExitCode> {
    client
        .call(&Request::Tail {
            replay: args.n,
            follow: !args.no_follow,
        })
        .await?;
    let mut out = BufWriter::with_capacity(64 * 1024, tokio::io::stdout());
    let io = |e: std::io::Error| anyhow::Error::new(e).context("writing to stdout");
    loop {
        let Some(raw) = client.reader.next_event_line().await? else {
            break;
        };
        if args.json {
            out.write_all(raw).await.map_err(io)?;
            out.write_all(b"\n").await.map_err(io)?;
        } else {
            let event: PlainView = decode_event(raw)?;
            match (event.event.as_ref(), event.text, event.data_b64) {
                ("message", Some(text), _) => {
                    out.write_all(text.as_bytes()).await.map_err(io)?;
                    out.write_all(b"\n").await.map_err(io)?;
                }
                ("message", None, Some(b64)) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64.as_bytes())
                        .map_err(|e| anyhow::anyhow!("bad binary message from p2pd: {e}"))?;
                    out.write_all(&bytes).await.map_err(io)?;
                    out.write_all(b"\n").await.map_err(io)?;
                }
                ("lagged", _, _) => {
                    out.flush().await.map_err(io)?;
                    eprintln!(
                        "p2pctl: this tail was too slow and missed {} messages",
                        event.missed.unwrap_or(0)
                    );
                }
                _ => {}
            }
        }
        if !client.reader.has_buffered_input() {
            out.flush().await.map_err(io)?;
        }
    }
    out.flush().await.map_err(io)?;
    if !args.no_follow {
        return Err(anyhow::anyhow!("p2pd closed the connection (did it stop?)").into());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_proto::control::{Event, EventKind};

    /// The light view must read what the daemon writes.
    #[test]
    fn plain_view_reads_the_daemons_events() {
        let line = Event {
            ts_ms: 1,
            kind: EventKind::Message {
                from: "a".into(),
                text: Some("tab\there \"q\"".into()),
                data_b64: None,
            },
        }
        .to_line();
        let v: PlainView = decode_event(line.trim_end().as_bytes()).unwrap();
        assert_eq!(v.event, "message");
        assert_eq!(v.text.as_deref(), Some("tab\there \"q\""));
        let line = Event {
            ts_ms: 1,
            kind: EventKind::Lagged { missed: 7 },
        }
        .to_line();
        let v: PlainView = decode_event(line.trim_end().as_bytes()).unwrap();
        assert_eq!((v.event.as_ref(), v.missed), ("lagged", Some(7)));
    }
}
