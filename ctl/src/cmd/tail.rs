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
    #[arg(long, conflicts_with = "nul")]
    pub json: bool,
    /// Print each message's exact bytes followed by a NUL byte, unescaped
    /// (for `xargs -0`, `read -d ''`); a message that holds a NUL byte
    /// itself stops tail with an error (use --json).
    #[arg(short = '0', long = "null", id = "nul")]
    pub nul: bool,
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
            let payload: Option<Cow<'_, [u8]>> =
                match (event.event.as_ref(), &event.text, &event.data_b64) {
                    ("message", Some(text), _) => Some(Cow::Borrowed(text.as_bytes())),
                    ("message", None, Some(b64)) => Some(Cow::Owned(
                        base64::engine::general_purpose::STANDARD
                            .decode(b64.as_bytes())
                            .map_err(|e| anyhow::anyhow!("bad binary message from p2pd: {e}"))?,
                    )),
                    _ => None,
                };
            if let Some(bytes) = payload {
                if args.nul {
                    if bytes.contains(&0) {
                        out.flush().await.map_err(io)?;
                        return Err(anyhow::anyhow!(
                            "a message holds a NUL byte, which -0 cannot delimit (use --json)"
                        )
                        .into());
                    }
                    out.write_all(&bytes).await.map_err(io)?;
                    out.write_all(b"\0").await.map_err(io)?;
                } else {
                    let line = escape(&bytes);
                    out.write_all(line.as_bytes()).await.map_err(io)?;
                    out.write_all(b"\n").await.map_err(io)?;
                }
            }
            if event.event == "lagged" {
                out.flush().await.map_err(io)?;
                eprintln!(
                    "p2pctl: this tail was too slow and missed {} messages",
                    event.missed.unwrap_or(0)
                );
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

/// One message as one printable line: `\\`, `\n`, `\r`, `\t`, other
/// control characters (C0, DEL, C1) as `\xHH`, and bytes that are not
/// UTF-8 as `\xHH` too. Nothing a peer sends can end the line early or
/// reach the terminal as a control sequence.
pub fn escape(bytes: &[u8]) -> Cow<'_, str> {
    let clean = |c: char| !c.is_control() && c != '\\';
    if let Ok(text) = std::str::from_utf8(bytes)
        && text.chars().all(clean)
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    Cow::Owned(out)
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

    #[test]
    fn one_message_is_one_line_and_never_drives_the_terminal() {
        assert_eq!(escape(b"plain text, ok"), "plain text, ok");
        assert!(matches!(escape(b"plain"), Cow::Borrowed(_)));
        assert_eq!(escape(b"a\nFAKE"), "a\\nFAKE");
        assert_eq!(escape(b"b\x1b[31mred"), "b\\x1b[31mred");
        assert_eq!(escape(b"tab\there\r\\"), "tab\\there\\r\\\\");
        assert_eq!(escape(b"\xff\xfe\x00bin"), "\\xff\\xfe\\x00bin");
        // C1 controls (CSI is U+009B) are escaped as their UTF-8 bytes.
        assert_eq!(escape("x\u{9b}2J".as_bytes()), "x\\xc2\\x9b2J");
        assert_eq!(escape("é ✓".as_bytes()), "é ✓");
    }
}
