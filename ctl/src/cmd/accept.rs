//! `p2pctl accept SERVICE --peer ID`: the one-shot receiving end, like
//! `nc -l`: waits for one stream from that peer to SERVICE (a name that is
//! not exposed), joins it to stdin and stdout, and exits when it ends.

use std::process::ExitCode;
use std::time::Duration;

use p2p_proto::control::Request;

use crate::client::{Client, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The name the peer connects to (`p2pctl connect US/SERVICE` there).
    pub service: String,
    /// The only peer whose stream is taken.
    #[arg(long, value_name = "ID")]
    pub peer: String,
    /// Take the stream even though the peer's key is not verified.
    #[arg(long)]
    pub allow_unverified: bool,
    /// Give up if no stream came by then (default: wait as long as it takes).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// No progress line on stderr (it is shown only on a terminal).
    #[arg(long, short)]
    pub quiet: bool,
}

pub async fn run(mut client: Client, args: Args) -> Result<ExitCode> {
    client
        .call(&Request::Accept {
            service: args.service,
            peer_id: args.peer,
            allow_unverified: args.allow_unverified,
            timeout_ms: args.timeout.map(|t| t.as_millis() as u64),
        })
        .await?;
    crate::pipe::run(client, args.quiet).await
}
