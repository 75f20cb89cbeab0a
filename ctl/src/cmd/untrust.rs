//! `p2pctl untrust ID`: removes a peer's pin. An open link to that peer
//! ends at once; under `--trust known` it cannot pair again until trusted.

use std::process::ExitCode;

use p2p_proto::control::{OkBody, Reply, Request};

use crate::client::{Client, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The peer's ID.
    pub peer: String,
}

pub async fn run(mut client: Client, args: Args) -> Result<ExitCode> {
    if let Reply::Ok {
        body: OkBody::Untrust { was_trusted: false },
        ..
    } = client
        .call(&Request::Untrust {
            peer_id: args.peer.clone(),
        })
        .await?
    {
        // The state asked for holds: a note, not an error.
        eprintln!("p2pctl: {} was not trusted", args.peer);
    }
    Ok(ExitCode::SUCCESS)
}
