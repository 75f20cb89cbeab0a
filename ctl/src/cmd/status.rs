//! `p2pctl status [--json]`: the daemon's state. `--json` prints the
//! daemon's own `Status` object unchanged (documented in docs/control.md);
//! the summary is derived from the same value.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use p2p_proto::control::{LinkState, OkBody, Reply, Request, ServerState, Status, TrustPolicy};

use crate::client::{Client, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the full status object as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(mut client: Client, args: Args) -> Result<ExitCode> {
    let Reply::Ok {
        body: OkBody::Status { status },
        ..
    } = client.call(&Request::Status).await?
    else {
        return Err(anyhow::anyhow!("p2pd answered status with something else").into());
    };
    if args.json {
        let text = serde_json::to_string_pretty(&status).map_err(anyhow::Error::from)?;
        super::out(&format!("{text}\n"))?;
    } else {
        super::out(&summary(&status))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn ago(ms: u64) -> String {
    // Whole seconds are precise enough for people.
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

pub fn summary(s: &Status) -> String {
    let mut out = String::new();
    let id = s.id.as_deref().unwrap_or("(not assigned yet)");
    let server = match s.server.state {
        ServerState::Connected => format!("connected for {}", ago(s.server.since_ms)),
        ServerState::Connecting => "connecting".to_string(),
        ServerState::Disconnected => format!(
            "disconnected for {} ({})",
            ago(s.server.since_ms),
            s.server.last_error.as_deref().unwrap_or("unknown reason")
        ),
    };
    let _ = writeln!(out, "id:       {id}");
    let _ = writeln!(
        out,
        "key:      {}",
        s.identity
            .clone()
            .unwrap_or_else(|| s.fingerprint.to_string())
    );
    let t = &s.trust;
    let policy = match t.policy {
        TrustPolicy::Known => "known (only pinned peers)".to_string(),
        TrustPolicy::Tofu => "tofu (the first key seen for an ID is pinned)".to_string(),
        TrustPolicy::Any => "any: unknown peers are accepted UNVERIFIED".to_string(),
    };
    let _ = writeln!(
        out,
        "trust:    {policy}; {} pinned in {}",
        t.pinned, t.known_peers
    );
    for p in &t.problems {
        let _ = writeln!(out, "warning:  trust store: {p}");
    }
    let _ = writeln!(out, "server:   {} {server}", s.server.url);
    let peer = match (&s.peer, s.link) {
        (None, _) => "none (ready to pair)".to_string(),
        (Some(p), LinkState::Open) => {
            let mut line = format!(
                "{} (channel open for {})",
                p.id,
                ago(p.open_for_ms.unwrap_or(0))
            );
            if let Some(path) = &p.path {
                line.push_str(&format!(", {}", super::pair::describe(path)));
            }
            if let Some(trust) = p.trust {
                line.push_str(&format!(
                    ", {}",
                    super::pair::key(trust, p.fingerprint.as_ref())
                ));
            }
            line
        }
        (Some(p), LinkState::Requested) => format!("{} (pair requested)", p.id),
        (Some(p), _) => format!(
            "{} (connecting, ICE {})",
            p.id,
            s.ice_connection_state.as_deref().unwrap_or("new")
        ),
    };
    let _ = writeln!(out, "peer:     {peer}");
    let c = &s.counters;
    let _ = writeln!(
        out,
        "messages: {} sent ({} bytes), {} received ({} bytes)",
        c.messages_sent, c.bytes_sent, c.messages_received, c.bytes_received
    );
    for svc in &s.services {
        let _ = writeln!(out, "expose:   {}", super::expose::describe(svc));
    }
    let unverified = super::expose::unverified_note;
    for a in &s.accepts {
        let _ = writeln!(
            out,
            "accept:   {} from {}{}, waiting",
            a.service,
            a.peer_id,
            unverified(a.allow_unverified)
        );
    }
    for f in &s.forwards {
        let _ = writeln!(
            out,
            "forward:  {} -> {}/{}{}, {} open, {} in all",
            f.listen,
            f.peer_id,
            f.service,
            match f.allow_unverified {
                true => " (to an UNVERIFIED peer allowed)",
                false => "",
            },
            f.open_connections,
            f.connections
        );
    }
    for st in &s.streams {
        let arrow = match st.direction {
            p2p_proto::control::StreamDirection::Out => "to",
            p2p_proto::control::StreamDirection::In => "from",
        };
        let _ = writeln!(
            out,
            "stream:   #{} {} {arrow} {} ({}), {}, {} bytes in, {} out",
            st.id,
            st.service,
            st.peer_id,
            st.local,
            ago(st.age_ms),
            st.bytes_in,
            st.bytes_out
        );
    }
    if c.missed_by_subscribers > 0 {
        let _ = writeln!(
            out,
            "warning:  slow tail followers missed {} events",
            c.missed_by_subscribers
        );
    }
    out
}
