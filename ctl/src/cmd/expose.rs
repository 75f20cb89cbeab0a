//! `p2pctl expose NAME TARGET --peer ID...`: serve streams to NAME from
//! the listed peers by connecting to TARGET (`tcp:HOST:PORT`,
//! `tcp:[::1]:22`, `unix:/PATH`), until `unexpose` or p2pd exits;
//! `--list` shows what is exposed.

use std::process::ExitCode;

use p2p_proto::control::{OkBody, Reply, Request, ServiceInfo, Target};

use crate::client::{Client, CtlError, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The service's name, what peers connect to (PEER/NAME).
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
    // The brackets are usage notation in --help, not doc links.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// What it reaches here: tcp:HOST:PORT, tcp:[V6]:PORT or unix:/PATH.
    #[arg(required_unless_present = "list")]
    pub target: Option<String>,
    /// A peer ID that may open streams to it (repeat for more).
    #[arg(long = "peer", value_name = "ID")]
    pub peers: Vec<String>,
    /// Peers whose key is not verified may open streams too (shown in status).
    #[arg(long)]
    pub allow_unverified: bool,
    /// List the exposed services instead.
    #[arg(long, conflicts_with_all = ["name", "target", "peers", "allow_unverified"])]
    pub list: bool,
    /// With --list: print JSON.
    #[arg(long, requires = "list")]
    pub json: bool,
}

impl Args {
    /// What clap cannot check: a target that parses, and at least one peer.
    pub fn check(&self) -> Result<()> {
        if self.list {
            return Ok(());
        }
        if let Some(t) = &self.target {
            Target::parse(t).map_err(CtlError::Usage)?;
        }
        if self.peers.is_empty() {
            return Err(CtlError::Usage(
                "say who may use the service: --peer ID (repeatable)".into(),
            ));
        }
        Ok(())
    }
}

pub async fn run(mut client: Client, args: Args) -> Result<ExitCode> {
    if args.list {
        let reply = client.call(&Request::ExposeList).await?;
        if let Reply::Ok {
            body: OkBody::Services { services },
            ..
        } = reply
        {
            if args.json {
                super::out(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&services).map_err(anyhow::Error::from)?
                ))?;
            } else {
                for s in &services {
                    super::out(&format!("{}\n", describe(s)))?;
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(name), Some(target)) = (args.name, args.target) else {
        unreachable!("clap requires both without --list");
    };
    let target = Target::parse(&target).map_err(CtlError::Usage)?;
    let reply = client
        .call(&Request::Expose {
            name,
            target,
            peers: args.peers,
            allow_unverified: args.allow_unverified,
        })
        .await?;
    if let Reply::Ok {
        body: OkBody::Exposed { exposed },
        ..
    } = reply
    {
        super::out(&format!("exposed {}\n", describe(&exposed)))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// How an opt-in to unverified peers is shown, wherever it is.
pub fn unverified_note(allowed: bool) -> &'static str {
    match allowed {
        true => " (UNVERIFIED peers allowed)",
        false => "",
    }
}

/// `ssh -> tcp:127.0.0.1:22 for alice, bob (UNVERIFIED peers allowed), 1 open`
pub fn describe(s: &ServiceInfo) -> String {
    let mut line = format!("{} -> {} for {}", s.name, s.target, s.peers.join(", "));
    line.push_str(unverified_note(s.allow_unverified));
    if s.open_streams > 0 {
        line.push_str(&format!(", {} open", s.open_streams));
    }
    line
}
