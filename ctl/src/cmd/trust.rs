//! `p2pctl trust ID FINGERPRINT [--comment TEXT]` (or `trust ID@FINGERPRINT`,
//! the token `p2pctl id` prints on the peer) pins a peer's key;
//! `p2pctl trust --list [--json]` lists the pins. Changes apply at once.

use std::process::ExitCode;

use p2p_proto::control::{OkBody, Pin, Reply, Request};
use p2p_proto::identity::{Fingerprint, parse_token};

use crate::client::{Client, CtlError, Result};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["peer", "list"])))]
pub struct Args {
    /// The peer's ID, or its whole `ID@FINGERPRINT` token.
    pub peer: Option<String>,
    /// The peer's fingerprint (sha256:… as `p2pctl id` prints it, or the
    /// SDP form AB:CD:…), unless PEER is a token.
    pub fingerprint: Option<String>,
    /// A note kept beside the pin.
    #[arg(long, conflicts_with = "list")]
    pub comment: Option<String>,
    /// List the pinned peers instead.
    #[arg(long, conflicts_with_all = ["peer", "fingerprint"])]
    pub list: bool,
    /// With --list: print them as JSON.
    #[arg(long, requires = "list")]
    pub json: bool,
}

fn usage(msg: String) -> CtlError {
    CtlError::Usage(msg)
}

impl Args {
    /// The peer and fingerprint asked for (without --list).
    fn pin(&self) -> Result<Option<(String, Fingerprint)>> {
        let Some(peer) = &self.peer else {
            return Ok(None);
        };
        let pin = match &self.fingerprint {
            Some(fp) => {
                if !p2p_proto::signal::valid_id(peer) {
                    return Err(usage(format!("{peer:?} is not a valid peer ID")));
                }
                (peer.clone(), Fingerprint::parse(fp).map_err(usage)?)
            }
            None => parse_token(peer).map_err(|e| {
                usage(format!(
                    "{e} (give ID FINGERPRINT, or the ID@FINGERPRINT token)"
                ))
            })?,
        };
        Ok(Some(pin))
    }

    /// Fails with a usage error (exit 2) before anything is sent.
    pub fn check(&self) -> Result<()> {
        self.pin().map(|_| ())
    }
}

pub async fn run(mut client: Client, args: Args) -> Result<ExitCode> {
    if args.list {
        let Reply::Ok {
            body: OkBody::TrustList { peers },
            ..
        } = client.call(&Request::TrustList).await?
        else {
            return Err(anyhow::anyhow!("p2pd answered trust_list with something else").into());
        };
        let text = if args.json {
            serde_json::to_string_pretty(&peers).map_err(anyhow::Error::from)? + "\n"
        } else {
            table(&peers)
        };
        super::out(&text)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (peer_id, fingerprint) = args.pin()?.expect("clap requires PEER without --list");
    let reply = client
        .call(&Request::Trust {
            peer_id: peer_id.clone(),
            fingerprint,
            comment: args.comment,
        })
        .await?;
    if let Reply::Ok {
        body: OkBody::Trust { trusted, replaced },
        ..
    } = reply
    {
        match replaced {
            Some(old) if old != trusted.fingerprint => eprintln!(
                "p2pctl: {peer_id} was pinned to {old}; it is now {}",
                trusted.fingerprint
            ),
            _ => {}
        }
        super::out(&format!("trusted {peer_id} {}\n", trusted.fingerprint))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn table(peers: &[Pin]) -> String {
    if peers.is_empty() {
        return "no trusted peers (p2pctl trust ID FINGERPRINT adds one)\n".into();
    }
    // The header is a comment line, so the listing pasted into
    // known_peers is a valid store.
    let w = peers.iter().map(|p| p.id.len()).max().unwrap_or(4).max(4);
    let mut out = format!(
        "{:w$}  {:50}  {:20}  COMMENT\n",
        "# ID", "FINGERPRINT", "ADDED"
    );
    for p in peers {
        out.push_str(&format!(
            "{:w$}  {:50}  {:20}  {}\n",
            p.id,
            p.fingerprint.to_string(),
            p.added,
            p.comment.as_deref().unwrap_or("")
        ));
    }
    out
}
