//! `p2pctl id [--json] [--rotate]`: our ID and key fingerprint as one token
//! to give a peer (`p2pctl trust TOKEN` on their side). `--rotate` makes a
//! new key: every peer must then trust the new token.

use std::process::ExitCode;

use p2p_proto::control::{OkBody, Reply, Request};

use crate::client::{Client, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the identity object as JSON.
    #[arg(long)]
    pub json: bool,
    /// Make a new key (peers that pinned the old one will refuse us until
    /// they trust the new token).
    #[arg(long)]
    pub rotate: bool,
}

pub async fn run(mut client: Client, args: Args) -> Result<ExitCode> {
    let req = if args.rotate {
        Request::RotateId
    } else {
        Request::Id
    };
    let Reply::Ok {
        body: OkBody::Identity { identity },
        ..
    } = client.call(&req).await?
    else {
        return Err(anyhow::anyhow!("p2pd answered id with something else").into());
    };
    if args.json {
        let text = serde_json::to_string_pretty(&identity).map_err(anyhow::Error::from)?;
        super::out(&format!("{text}\n"))?;
    } else {
        match &identity.token {
            Some(token) => super::out(&format!("{token}\n"))?,
            // No ID yet (signald picks one at the first connection).
            None => super::out(&format!("{}\n", identity.fingerprint))?,
        }
        if args.rotate {
            eprintln!("p2pctl: new key made; peers must trust the token above");
        }
    }
    Ok(ExitCode::SUCCESS)
}
