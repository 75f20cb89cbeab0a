//! `p2pctl unpair`: end the current pairing. Not being paired is a note on
//! stderr, not an error: the state asked for is reached either way.

use std::process::ExitCode;

use p2p_proto::control::{OkBody, Reply, Request};

use crate::client::{Client, Result};

#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(mut client: Client, _args: Args) -> Result<ExitCode> {
    if let Reply::Ok {
        body: OkBody::Unpair { was_paired: false },
        ..
    } = client.call(&Request::Unpair).await?
    {
        eprintln!("p2pctl: not paired");
    }
    Ok(ExitCode::SUCCESS)
}
