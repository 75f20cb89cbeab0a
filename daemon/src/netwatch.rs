//! Changes of the host's own network: an address added or removed, the
//! default route changed (a laptop leaving one network for another, a
//! VPN coming up). The link checks its path at once then, rather than
//! wait for the data flow (`crate::stall`) or ICE to notice.
//!
//! The kernel tells us on a netlink socket (`NETLINK_ROUTE`, the address
//! and route groups); we read only the fixed message headers, to keep
//! address changes and changes of a default route of the main table, and
//! coalesce what comes within `SETTLE` into one report. No crate: a
//! subscription and two header fields are all we need, and the netlink
//! crates would bring a full message model for them.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// Changes within this of each other are one change (a move brings
/// several messages: the old address goes, a new one comes, routes
/// follow).
const SETTLE: Duration = Duration::from_millis(100);

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RT_TABLE_MAIN: u8 = 254;
/// `struct nlmsghdr` and `struct rtmsg`, in bytes.
const NLMSG_HDR: usize = 16;
const RTMSG: usize = 12;

/// Whether one netlink message says the host's network changed in a way
/// that may move our path: any address, or a default route (destination
/// length 0) of the main table.
fn relevant(kind: u16, body: &[u8]) -> bool {
    match kind {
        RTM_NEWADDR | RTM_DELADDR => true,
        RTM_NEWROUTE | RTM_DELROUTE => {
            // rtmsg: family, dst_len, src_len, tos, table, ...
            body.len() >= RTMSG && body[1] == 0 && body[4] == RT_TABLE_MAIN
        }
        _ => false,
    }
}

/// Whether a datagram from the socket holds a relevant message.
fn any_relevant(mut buf: &[u8]) -> bool {
    let mut found = false;
    while buf.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        if len < NLMSG_HDR || len > buf.len() {
            break;
        }
        found |= relevant(kind, &buf[NLMSG_HDR..len]);
        // Messages are aligned to 4 bytes.
        let next = (len + 3) & !3;
        if next >= buf.len() {
            break;
        }
        buf = &buf[next..];
    }
    found
}

/// A netlink socket subscribed to address and route changes.
fn subscribe() -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_nl is valid; the fields are set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = (libc::RTMGRP_IPV4_IFADDR
        | libc::RTMGRP_IPV6_IFADDR
        | libc::RTMGRP_IPV4_ROUTE
        | libc::RTMGRP_IPV6_ROUTE) as u32;
    // SAFETY: `addr` is a valid sockaddr_nl of the size given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Reports each settled change of the host's network on `tx` until the
/// receiver is gone. Without netlink (another OS, a sandbox) it logs why
/// once and reports nothing: the data flow and ICE still notice moves.
pub fn start(tx: mpsc::Sender<()>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let registered = subscribe().and_then(|fd| {
            // SAFETY: the OwnedFd is moved into the AsyncFd, so its
            // descriptor stays open and the same for the AsyncFd's life.
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
        });
        let fd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the host's addresses and routes (netlink); moves are noticed from the path alone");
                return;
            }
        };
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // Wait for a relevant message, then let the change settle.
            let mut changed = false;
            while !changed {
                if !read_some(&fd, &mut buf, &mut changed).await {
                    return;
                }
            }
            let settle = tokio::time::sleep(SETTLE);
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    _ = &mut settle => break,
                    ok = read_some(&fd, &mut buf, &mut changed) => if !ok { return },
                }
            }
            tracing::info!("the host's addresses or routes changed");
            if tx.send(()).await.is_err() {
                return;
            }
        }
    })
}

/// Reads what the socket has; sets `changed` if any of it matters. False
/// when the socket failed for good.
async fn read_some(fd: &AsyncFd<OwnedFd>, buf: &mut [u8], changed: &mut bool) -> bool {
    let Ok(mut guard) = fd.readable().await else {
        return false;
    };
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe {
            libc::recv(
                fd.get_ref().as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    true
                }
                std::io::ErrorKind::Interrupted => continue,
                // The kernel dropped messages (ENOBUFS): something changed.
                _ if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    *changed = true;
                    continue;
                }
                _ => {
                    tracing::warn!(error = %e, "netlink: stopped watching the host's network");
                    false
                }
            };
        }
        *changed |= any_relevant(&buf[..n as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDR + body.len()) as u32;
        let mut m = len.to_ne_bytes().to_vec();
        m.extend(kind.to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend(body);
        while !m.len().is_multiple_of(4) {
            m.push(0);
        }
        m
    }

    #[test]
    fn addresses_and_default_routes_matter_other_routes_do_not() {
        let default_main = [2u8, 0, 0, 0, RT_TABLE_MAIN, 0, 0, 0, 0, 0, 0, 0];
        let subnet = [2u8, 24, 0, 0, RT_TABLE_MAIN, 0, 0, 0, 0, 0, 0, 0];
        let local_table = [2u8, 0, 0, 0, 255, 0, 0, 0, 0, 0, 0, 0];
        assert!(any_relevant(&message(RTM_NEWADDR, &[0; 8])));
        assert!(any_relevant(&message(RTM_DELADDR, &[0; 8])));
        assert!(any_relevant(&message(RTM_DELROUTE, &default_main)));
        assert!(!any_relevant(&message(RTM_NEWROUTE, &subnet)));
        assert!(!any_relevant(&message(RTM_NEWROUTE, &local_table)));
        // Several in one datagram: one that matters is enough.
        let mut both = message(RTM_NEWROUTE, &subnet);
        both.extend(message(RTM_NEWADDR, &[0; 8]));
        assert!(any_relevant(&both));
        // Garbage is nothing.
        assert!(!any_relevant(&[1, 2, 3]));
        assert!(!any_relevant(&message(RTM_NEWROUTE, &[0; 3])));
    }
}
