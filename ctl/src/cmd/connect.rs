//! `p2pctl connect PEER/SERVICE`: joins stdin and stdout to a new stream to
//! PEER's SERVICE, like `nc`; usable as ssh's ProxyCommand
//! (`ssh -o ProxyCommand='p2pctl connect %h/ssh' alice`). When p2pd is idle
//! it pairs with PEER first; that pairing ends with its last stream.

use std::process::ExitCode;
use std::time::Duration;

use p2p_proto::control::Request;

use crate::client::{Client, CtlError, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// PEER/SERVICE: the peer's ID and the name of a service it exposes.
    pub to: String,
    /// Open the stream even though the peer's key is not verified (pinned
    /// only on this first contact, or not at all under --trust any).
    #[arg(long)]
    pub allow_unverified: bool,
    /// Give up if the stream is not open by then (pairing included).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// No progress line on stderr (it is shown only on a terminal).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Splits `PEER/SERVICE`.
pub fn peer_and_service(to: &str) -> Result<(String, String)> {
    match to.split_once('/') {
        Some((peer, service)) if !peer.is_empty() && !service.is_empty() => {
            Ok((peer.to_string(), service.to_string()))
        }
        _ => Err(CtlError::Usage(format!(
            "{to:?}: expected PEER/SERVICE, e.g. alice/ssh"
        ))),
    }
}

pub async fn run(mut client: Client, args: Args) -> Result<ExitCode> {
    let (peer_id, service) = peer_and_service(&args.to)?;
    client
        .call(&Request::Connect {
            peer_id,
            service,
            allow_unverified: args.allow_unverified,
            timeout_ms: Some(args.timeout.as_millis() as u64),
        })
        .await?;
    crate::pipe::run(client, args.quiet).await
}
