//! Socket activation: the listener a service manager passes to signald
//! (`LISTEN_FDS`), checked before it is trusted. Readiness notifications
//! and log output, shared with p2pd, live in the `p2p-service` crate.

use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};

use anyhow::{Context, bail};

/// First descriptor passed by socket activation (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Takes the TCP listener passed by socket activation, if `LISTEN_PID` is
/// this process and `LISTEN_FDS` is 1, and clears those variables.
///
/// # Safety
/// Changes the environment: call it before any other thread exists.
pub unsafe fn take_activated_listener() -> anyhow::Result<Option<TcpListener>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    // SAFETY: the caller promises a single-threaded process.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    match fds.parse::<u32>() {
        Ok(0) => return Ok(None),
        Ok(1) => {}
        Ok(n) => bail!("socket activation passed {n} sockets; signald takes exactly one"),
        Err(_) => bail!("LISTEN_FDS={fds:?} is not a number"),
    }
    let fd = LISTEN_FDS_START;
    let int_opt = |level, name| -> io::Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: reads one int option into a local of the right size.
        let r = unsafe { libc::getsockopt(fd, level, name, (&raw mut v).cast(), &mut len) };
        if r == 0 {
            Ok(v)
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let domain = int_opt(libc::SOL_SOCKET, libc::SO_DOMAIN)
        .context("socket activation: fd 3 is not a socket")?;
    let kind = int_opt(libc::SOL_SOCKET, libc::SO_TYPE)?;
    let listening = int_opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)?;
    if !(domain == libc::AF_INET || domain == libc::AF_INET6)
        || kind != libc::SOCK_STREAM
        || listening == 0
    {
        bail!(
            "socket activation: fd 3 is not a listening TCP socket \
             (use ListenStream=ADDRESS:PORT in signald.socket)"
        );
    }
    // SAFETY: fd 3 was handed to this process and nothing else owns it.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    // SAFETY: sets FD_CLOEXEC on a descriptor we own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}
