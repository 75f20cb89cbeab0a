//! `p2pctl pair ID`: pair with a peer. By default it returns once the data
//! channel is open, so that a following `p2pctl send` works; `--no-wait`
//! returns once signald has made the pairing.

use std::process::ExitCode;
use std::time::Duration;

use p2p_proto::control::{LinkState, OkBody, Path, PeerTrust, Reply, Request};
use p2p_proto::identity::Fingerprint;

use crate::client::{Client, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The peer's ID at signald.
    pub id: String,
    /// Return as soon as the pairing is made, before the channel opens.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up if the channel is not open by then (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// The peer's invite code (from `p2pctl invite` there): pairs with a key
    /// we do not know yet, proven by the code, and pins it.
    #[arg(long, value_name = "CODE")]
    pub code: Option<String>,
}

pub async fn run(mut client: Client, args: Args) -> Result<ExitCode> {
    let reply = client
        .call(&Request::Pair {
            peer_id: args.id.clone(),
            wait: !args.no_wait,
            timeout_ms: Some(args.timeout.as_millis() as u64),
            code: args.code,
        })
        .await?;
    if let Reply::Ok {
        body: OkBody::Pair { pair },
        ..
    } = reply
    {
        let mut line = match (pair.state, &pair.path) {
            (LinkState::Open, Some(path)) => {
                format!(
                    "paired with {}: channel open, {}",
                    pair.peer_id,
                    describe(path)
                )
            }
            (LinkState::Open, None) => format!("paired with {}: channel open", pair.peer_id),
            _ => format!("paired with {}: connecting", pair.peer_id),
        };
        if let Some(trust) = pair.trust {
            line.push_str(", ");
            line.push_str(&key(trust, pair.fingerprint.as_ref()));
        }
        line.push('\n');
        super::out(&line)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// How far the peer's key is trusted, in words: `key pinned`, `key
/// sha256:… pinned on first contact (--trust tofu)`, `UNVERIFIED key …`.
pub fn key(trust: PeerTrust, fp: Option<&Fingerprint>) -> String {
    let fp = fp.map(|f| f.to_string()).unwrap_or_else(|| "(none)".into());
    match trust {
        PeerTrust::Pinned => "key pinned".into(),
        PeerTrust::Tofu => format!("key {fp} pinned on first contact (--trust tofu)"),
        PeerTrust::Invite => format!("key {fp} proven by the invite code and pinned"),
        PeerTrust::Unverified => format!("UNVERIFIED key {fp} (--trust any)"),
    }
}

/// `host 127.0.0.1:5000 -> host 127.0.0.1:5001, rtt 0.2 ms`
pub fn describe(p: &Path) -> String {
    let mut s = format!(
        "{} {} -> {} {}",
        p.local_type, p.local_address, p.remote_type, p.remote_address
    );
    if let Some(rtt) = p.rtt_ms {
        s.push_str(&format!(", rtt {rtt:.1} ms"));
    }
    s
}
