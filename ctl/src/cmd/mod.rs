//! One module per command: an `Args` struct and `run`.

pub mod accept;
pub mod completions;
pub mod connect;
pub mod expose;
pub mod forward;
pub mod id;
pub mod invite;
pub mod pair;
pub mod send;
pub mod status;
pub mod tail;
pub mod trust;
pub mod unexpose;
pub mod unpair;
pub mod untrust;

use std::path::Path;
use std::process::ExitCode;

use crate::Command;
use crate::client::{Client, Result};

pub async fn run(command: Command, socket: &Path) -> Result<ExitCode> {
    // These describe p2pctl itself: no daemon needed.
    match command {
        Command::Completions(args) => return completions::run(args),
        Command::Man(args) => return completions::man(args),
        // Arguments clap cannot check are checked before connecting, so a
        // usage error is one whether or not a daemon runs.
        Command::Trust(ref args) => args.check()?,
        Command::Expose(ref args) => args.check()?,
        Command::Connect(ref args) => {
            connect::peer_and_service(&args.to)?;
        }
        Command::Forward(ref args) => {
            connect::peer_and_service(&args.to)?;
        }
        _ => {}
    }
    let client = Client::connect(socket).await?;
    match command {
        Command::Completions(_) | Command::Man(_) => unreachable!("handled above"),
        Command::Status(args) => status::run(client, args).await,
        Command::Pair(args) => pair::run(client, args).await,
        Command::Send(args) => send::run(client, args).await,
        Command::Tail(args) => tail::run(client, args).await,
        Command::Unpair(args) => unpair::run(client, args).await,
        Command::Id(args) => id::run(client, args).await,
        Command::Invite(args) => invite::run(client, args).await,
        Command::Trust(args) => trust::run(client, args).await,
        Command::Untrust(args) => untrust::run(client, args).await,
        Command::Expose(args) => expose::run(client, args).await,
        Command::Unexpose(args) => unexpose::run(client, args).await,
        Command::Connect(args) => connect::run(client, args).await,
        Command::Accept(args) => accept::run(client, args).await,
        Command::Forward(args) => forward::run(client, args).await,
    }
}

/// Writes `text` to stdout. Unlike `print!`, a closed stdout is an error
/// (which `main` turns into a quiet exit 0), not a panic.
pub fn out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| anyhow::Error::new(e).context("writing to stdout").into())
}
