//! `p2pctl forward [ADDR:]PORT PEER/SERVICE`: p2pd listens on ADDR:PORT
//! (127.0.0.1 unless given) and opens a stream to PEER's SERVICE for each
//! connection, until this command is stopped (Ctrl-C, SIGTERM).

use std::process::ExitCode;

use p2p_proto::control::{OkBody, Reply, Request};

use crate::client::{Client, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    // The brackets are usage notation in --help, not doc links.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Where to listen: PORT (on 127.0.0.1), ADDR:PORT or [V6]:PORT; port 0
    /// takes a free one (printed).
    pub listen: String,
    /// PEER/SERVICE: the peer's ID and the name of a service it exposes.
    pub to: String,
    /// Open streams even though the peer's key is not verified.
    #[arg(long)]
    pub allow_unverified: bool,
}

pub async fn run(mut client: Client, args: Args) -> Result<ExitCode> {
    let (peer_id, service) = super::connect::peer_and_service(&args.to)?;
    let reply = client
        .call(&Request::Forward {
            listen: args.listen,
            peer_id,
            service,
            allow_unverified: args.allow_unverified,
        })
        .await?;
    if let Reply::Ok {
        body: OkBody::Forward { forward },
        ..
    } = reply
    {
        super::out(&format!(
            "forwarding {} to {}/{}\n",
            forward.listen, forward.peer_id, forward.service
        ))?;
    }
    // The forward lives as long as this connection: until we are stopped,
    // or p2pd hangs up (it is shutting down).
    let mut signals = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(anyhow::Error::from)?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(ExitCode::SUCCESS),
        _ = signals.recv() => Ok(ExitCode::SUCCESS),
        _ = client.reader.next_reply() => {
            eprintln!("p2pctl: p2pd stopped the forward (it is shutting down)");
            Ok(ExitCode::from(crate::pipe::STREAM_FAILED))
        }
    }
}
