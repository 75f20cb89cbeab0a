//! `p2pctl send [TEXT]...`: TEXT (the words joined by spaces) as one
//! message, or, without TEXT, each line of stdin as one message until EOF.
//!
//! Stdin is streamed over one connection with pipelined requests: up to
//! [`WINDOW`] requests are in flight, each acknowledged once the daemon has
//! handed the message to the data channel. The first refusal stops the
//! stream, and the exit code is 1 unless every line was handed over:
//! nothing is dropped silently.

use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine as _;
use p2p_proto::control::{MAX_LINE_BYTES, Request};
use p2p_proto::lines::{LineRead, read_line_capped};
use tokio::io::BufReader;
use tokio::sync::Semaphore;

use crate::client::{Client, CtlError, ReplyReader, RequestWriter, Result};

/// Requests in flight before the sender waits for acknowledgements.
const WINDOW: usize = 4096;
/// Longest stdin line accepted (the daemon refuses messages over 64 KiB
/// with a clear error; this only bounds memory).
const MAX_STDIN_LINE: usize = MAX_LINE_BYTES / 2;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The message; without it, stdin is sent line by line.
    pub text: Vec<String>,
    /// Send only if the open channel is to this peer ID and its key is
    /// verified (pinned); otherwise nothing is sent (`wrong_peer`).
    #[arg(long, value_name = "ID")]
    pub to: Option<String>,
}

pub async fn run(mut client: Client, args: Args) -> Result<ExitCode> {
    if !args.text.is_empty() {
        client
            .call(&Request::Send {
                text: Some(args.text.join(" ")),
                data_b64: None,
                to: args.to,
            })
            .await?;
        return Ok(ExitCode::SUCCESS);
    }
    let Client { reader, writer } = client;
    let window = Arc::new(Semaphore::new(WINDOW));
    let (written, acks) = tokio::join!(
        write_stdin(writer, window.clone(), args.to),
        read_acks(reader, window)
    );
    let acks = acks?;
    let written = written?;
    if let Some((line, err)) = acks.first_error {
        let more = match acks.failed {
            1 => String::new(),
            n => format!(", {} more refused", n - 1),
        };
        return Err(CtlError::Other(anyhow::anyhow!(
            "line {line} not sent: {err} ({} of {written} lines handed over{more})",
            acks.ok,
        )));
    }
    if acks.ok != written {
        return Err(CtlError::Other(anyhow::anyhow!(
            "p2pd acknowledged {} of {written} lines",
            acks.ok
        )));
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends every stdin line; returns how many were written. Stops early once
/// the reader saw a refusal (it closes the semaphore).
async fn write_stdin(
    mut writer: RequestWriter,
    window: Arc<Semaphore>,
    to: Option<String>,
) -> Result<u64> {
    let mut stdin = BufReader::with_capacity(256 * 1024, tokio::io::stdin());
    let mut line = Vec::new();
    let mut count = 0u64;
    loop {
        if stdin.buffer().is_empty() {
            writer.flush().await?;
        }
        let read = read_line_capped(&mut stdin, &mut line, MAX_STDIN_LINE)
            .await
            .map_err(|e| anyhow::Error::new(e).context("reading stdin"))?;
        let req = match read {
            LineRead::Eof => break,
            LineRead::TooLong => {
                writer.finish().await?;
                return Err(CtlError::Other(anyhow::anyhow!(
                    "line {} is longer than {MAX_STDIN_LINE} bytes; not sent (lines before it were)",
                    count + 1
                )));
            }
            LineRead::Line => match std::str::from_utf8(&line) {
                Ok(text) => Request::Send {
                    text: Some(text.to_string()),
                    data_b64: None,
                    to: to.clone(),
                },
                // Not UTF-8: send the bytes as a binary message.
                Err(_) => Request::Send {
                    text: None,
                    data_b64: Some(base64::engine::general_purpose::STANDARD.encode(&line)),
                    to: to.clone(),
                },
            },
        };
        match window.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => break, // a refusal arrived: stop sending
        }
        writer.write(&req).await?;
        count += 1;
    }
    writer.finish().await?;
    Ok(count)
}

struct Acks {
    ok: u64,
    failed: u64,
    first_error: Option<(u64, String)>,
}

/// Counts acknowledgements until the daemon closes its side.
async fn read_acks(mut reader: ReplyReader, window: Arc<Semaphore>) -> Result<Acks> {
    let mut acks = Acks {
        ok: 0,
        failed: 0,
        first_error: None,
    };
    let mut n = 0u64;
    loop {
        let Some(reply) = reader.next_ack().await? else {
            break;
        };
        n += 1;
        // Requests already in flight after a refusal are still answered
        // (and may succeed): count them all so the report is exact.
        match reply {
            Ok(_) => {
                acks.ok += 1;
                window.add_permits(1);
            }
            Err(e) => {
                acks.failed += 1;
                if acks.first_error.is_none() {
                    acks.first_error = Some((n, e.message));
                    window.close();
                }
            }
        }
    }
    Ok(acks)
}
