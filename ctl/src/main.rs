//! p2pctl: the scriptable command line for p2pd.
//!
//! One file per command under `cmd/`; this file parses flags, runs the
//! command, and is the only place that prints a fatal error. Exit codes:
//! 0 success, 1 the daemon refused, 2 usage error, 3 no daemon answering,
//! 4 a stream failed after it opened (`connect`, `accept`; the message says
//! why: the link was lost, the far side aborted).

mod client;
mod cmd;
mod pipe;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::CtlError;

#[derive(Parser, Debug)]
#[command(
    name = "p2pctl",
    version,
    about = "Control p2pd: pair with a peer, send and receive messages over the data channel",
    propagate_version = true
)]
pub struct Cli {
    /// p2pd's control socket (default: $XDG_RUNTIME_DIR/p2pd/p2pd.sock, else
    /// /tmp/p2pd-$UID/p2pd.sock).
    #[arg(long, env = "P2PD_SOCKET", global = true)]
    pub socket: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show the daemon's state.
    Status(cmd::status::Args),
    /// Pair with a peer; by default waits until the data channel is open.
    Pair(cmd::pair::Args),
    /// Send TEXT as one message, or each line of stdin as a message.
    Send(cmd::send::Args),
    /// Print received messages, one per line.
    Tail(cmd::tail::Args),
    /// End the current pairing.
    Unpair(cmd::unpair::Args),
    /// Print our ID and key fingerprint, the token a peer trusts.
    Id(cmd::id::Args),
    /// Make a one-time code for a peer to pair with us (or --list, --cancel).
    Invite(cmd::invite::Args),
    /// Pin a peer's key (or list the pinned peers with --list).
    Trust(cmd::trust::Args),
    /// Remove a peer's pin.
    Untrust(cmd::untrust::Args),
    /// Serve streams to a named service from the listed peers (or --list).
    Expose(cmd::expose::Args),
    /// Stop serving a named service.
    Unexpose(cmd::unexpose::Args),
    /// Join stdin/stdout to a stream to PEER/SERVICE (pairs first when idle).
    Connect(cmd::connect::Args),
    /// Wait for one stream from a peer to SERVICE; join it to stdin/stdout.
    Accept(cmd::accept::Args),
    // The brackets are usage notation in --help, not doc links.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Listen on [ADDR:]PORT and open a stream to PEER/SERVICE per connection.
    Forward(cmd::forward::Args),
    /// Print a shell completion script (bash, zsh, fish, …) on stdout.
    Completions(cmd::completions::Args),
    /// Print the p2pctl(1) man page (roff) on stdout.
    Man(cmd::completions::ManArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(p2p_proto::control::default_socket_path);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("p2pctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cmd::run(cli.command, &socket)) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p2pctl: {}", one_line(&e));
            ExitCode::from(match e {
                CtlError::NoDaemon { .. } | CtlError::NotOurs { .. } => 3,
                CtlError::Usage(_) => 2,
                CtlError::Refused(_) | CtlError::Other(_) => 1,
            })
        }
    }
}

/// The whole error chain on one line.
fn one_line(e: &CtlError) -> String {
    match e {
        CtlError::Other(e) => format!("{e:#}"),
        other => other.to_string(),
    }
}

/// A closed stdout (`p2pctl tail | head`) is a normal way to stop.
fn is_broken_pipe(e: &CtlError) -> bool {
    match e {
        CtlError::Other(e) => e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
