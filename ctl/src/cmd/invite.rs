//! `p2pctl invite [--ttl 10m] [--for ID] [--json]`: a one-time code for a
//! peer to pair with us without copying fingerprints (`p2pctl pair ID
//! --code CODE` on their side); `--list` and `--cancel CODE|N` manage the
//! open ones. Invites live in the daemon's memory only.

use std::process::ExitCode;
use std::time::Duration;

use p2p_proto::control::{InviteInfo, OkBody, Reply, Request};

use crate::client::{Client, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// How long the code is valid (e.g. 10m, 1h; at most 24h).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Only this peer ID may use the code.
    #[arg(long = "for", value_name = "ID")]
    pub for_peer: Option<String>,
    /// Print JSON instead.
    #[arg(long)]
    pub json: bool,
    /// List the open invites instead.
    #[arg(long, conflicts_with_all = ["cancel", "for_peer"])]
    pub list: bool,
    /// Cancel an open invite, given its code or its number.
    #[arg(long, value_name = "CODE|N", conflicts_with = "for_peer")]
    pub cancel: Option<String>,
}

pub async fn run(mut client: Client, args: Args) -> Result<ExitCode> {
    if let Some(which) = args.cancel {
        client.call(&Request::InviteCancel { code: which }).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.list {
        let Reply::Ok {
            body: OkBody::Invites { invites },
            ..
        } = client.call(&Request::InviteList).await?
        else {
            return Err(anyhow::anyhow!("p2pd answered invite_list with something else").into());
        };
        let text = if args.json {
            serde_json::to_string_pretty(&invites).map_err(anyhow::Error::from)? + "\n"
        } else if invites.is_empty() {
            "no open invites (p2pctl invite makes one)\n".into()
        } else {
            invites.iter().map(line).collect()
        };
        super::out(&text)?;
        return Ok(ExitCode::SUCCESS);
    }
    let Reply::Ok {
        body: OkBody::Invite { invite },
        ..
    } = client
        .call(&Request::Invite {
            ttl_ms: Some(args.ttl.as_millis() as u64),
            for_peer: args.for_peer,
        })
        .await?
    else {
        return Err(anyhow::anyhow!("p2pd answered invite with something else").into());
    };
    if args.json {
        let text = serde_json::to_string_pretty(&invite).map_err(anyhow::Error::from)?;
        super::out(&format!("{text}\n"))?;
    } else {
        super::out(&format!("{}\n", invite.code))?;
        let me = match client.call(&Request::Id).await? {
            Reply::Ok {
                body: OkBody::Identity { identity },
                ..
            } => identity.id,
            _ => None,
        };
        eprintln!(
            "p2pctl: {} (one use); on the other side: p2pctl pair {} --code {}",
            validity(&invite),
            me.as_deref().unwrap_or("OUR-ID"),
            invite.code
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn validity(i: &InviteInfo) -> String {
    let left = humantime::format_duration(Duration::from_secs(i.expires_in_ms.div_ceil(1000)));
    match &i.for_peer {
        Some(p) => format!("valid for {left}, for {p} only"),
        None => format!("valid for {left}"),
    }
}

fn line(i: &InviteInfo) -> String {
    format!("{}  {}\n", i.code, validity(i))
}
