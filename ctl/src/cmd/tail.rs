//! `p2pctl tail [-n N] [--json] [--no-follow]`: received messages, one per
//! line, flushed as they come so that `p2pctl tail | while read -r l` reacts
//! at once. Text messages print as text, binary ones as their raw bytes;
//! `--json` prints every event object (messages with timestamps and sender,
//! pairing and connection changes), binary payloads in base64.

use std::process::ExitCode;

use base64::Engine as _;
use p2p_proto::control::{EventKind, Request};
use tokio::io::{AsyncWriteExt, BufWriter};

use crate::client::{Client, Result};

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
        let Some((event, raw)) = client.reader.read_event().await? else {
            break;
        };
        if args.json {
            out.write_all(raw).await.map_err(io)?;
            out.write_all(b"\n").await.map_err(io)?;
        } else {
            match event.kind {
                EventKind::Message {
                    text: Some(text), ..
                } => {
                    out.write_all(text.as_bytes()).await.map_err(io)?;
                    out.write_all(b"\n").await.map_err(io)?;
                }
                EventKind::Message {
                    data_b64: Some(b64),
                    ..
                } => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| anyhow::anyhow!("bad binary message from p2pd: {e}"))?;
                    out.write_all(&bytes).await.map_err(io)?;
                    out.write_all(b"\n").await.map_err(io)?;
                }
                EventKind::Lagged { missed } => {
                    out.flush().await.map_err(io)?;
                    eprintln!("p2pctl: this tail was too slow and missed {missed} messages");
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
