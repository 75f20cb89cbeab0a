//! `p2pctl unexpose NAME`: stop serving NAME (open streams carry on).

use std::process::ExitCode;

use p2p_proto::control::{OkBody, Reply, Request};

use crate::client::{Client, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The service's name.
    pub name: String,
}

pub async fn run(mut client: Client, args: Args) -> Result<ExitCode> {
    let reply = client
        .call(&Request::Unexpose {
            name: args.name.clone(),
        })
        .await?;
    if let Reply::Ok {
        body: OkBody::Unexposed { was_exposed },
        ..
    } = reply
        && !was_exposed
    {
        eprintln!("p2pctl: {} was not exposed", args.name);
    }
    Ok(ExitCode::SUCCESS)
}
