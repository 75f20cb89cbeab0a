//! A service to expose: its checks, and p2pd's `--expose` syntax.

use p2p_proto::control::{Target, check_service};

/// A service to expose, as p2pd's options or `expose` give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub target: Target,
    pub peers: Vec<String>,
    pub allow_unverified: bool,
}

impl ServiceSpec {
    /// Checks a service as `expose` gives it.
    pub fn new(
        name: String,
        target: Target,
        peers: Vec<String>,
        allow_unverified: bool,
    ) -> Result<ServiceSpec, String> {
        check_service(&name)?;
        if peers.is_empty() {
            return Err(format!(
                "service {name} names no peer: say who may use it (--peer ID)"
            ));
        }
        for p in &peers {
            p2p_proto::signal::check_id(p)?;
        }
        Ok(ServiceSpec {
            name,
            target,
            peers,
            allow_unverified,
        })
    }

    /// Parses p2pd's `--expose NAME:PEER[+PEER…][:allow-unverified]=TARGET`:
    /// no commas (the `P2PD_EXPOSE` list is comma-separated), and the
    /// target last, so an IPv6 literal or a unix path is taken whole.
    pub fn parse_flag(s: &str) -> Result<ServiceSpec, String> {
        let usage = "expected NAME:PEER[+PEER...][:allow-unverified]=TARGET, e.g. ssh:alice+bob=tcp:127.0.0.1:22";
        let (head, target) = s.split_once('=').ok_or_else(|| format!("{s:?}: {usage}"))?;
        let target = Target::parse(target)?;
        let mut parts = head.split(':');
        let name = parts.next().unwrap_or_default().to_string();
        let peers = parts.next().ok_or_else(|| format!("{s:?}: {usage}"))?;
        let allow_unverified = match parts.next() {
            None => false,
            Some("allow-unverified") => true,
            Some(other) => return Err(format!("{s:?}: unknown option {other:?}; {usage}")),
        };
        if parts.next().is_some() {
            return Err(format!("{s:?}: {usage}"));
        }
        let peers = peers.split('+').map(str::to_string).collect();
        ServiceSpec::new(name, target, peers, allow_unverified)
    }
}
