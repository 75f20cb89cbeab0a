//! Living under a service manager: readiness notifications (`sd_notify`),
//! a listener passed by socket activation, and the choice of log output.
//!
//! Each is a few lines of a stable protocol, written here rather than taken
//! from a crate so that abstract `@` notify sockets work and the listener
//! is checked before it is trusted.

use std::ffi::OsStr;
use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use anyhow::{Context, bail};

/// Sends `state` (e.g. `READY=1`) to the service manager when
/// `NOTIFY_SOCKET` names one; a leading `@` is an abstract socket. Returns
/// whether anything was sent.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    notify_to(&path, state)?;
    Ok(true)
}

fn notify_to(path: &OsStr, state: &str) -> io::Result<()> {
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(path)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

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

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// Straight to the systemd journal, with structured fields.
    Journald,
}

/// True when stderr is the journal stream systemd set up: `JOURNAL_STREAM`
/// is `DEV:INODE` of fd 2 (systemd.exec(5)).
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the buffer on success, which we check.
    if unsafe { libc::fstat(2, st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded.
    let st = unsafe { st.assume_init() };
    dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino)
}

/// Installs the global subscriber: `format`, or journald when stderr is the
/// journal stream, else text. When the journal cannot be reached (no
/// `/run/systemd/journal/socket`), falls back to text on stderr and says so.
pub fn init_logging(format: Option<LogFormat>, filter: tracing_subscriber::EnvFilter) {
    use tracing_subscriber::prelude::*;
    let wanted = format.unwrap_or(if stderr_is_journal() {
        LogFormat::Journald
    } else {
        LogFormat::Text
    });
    let registry = tracing_subscriber::registry().with(filter);
    let mut fallback = None;
    match wanted {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => return registry.with(layer).init(),
            Err(e) => fallback = Some(e),
        },
        LogFormat::Json => {
            return registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_writer(std::io::stderr),
                )
                .init();
        }
        LogFormat::Text => {}
    }
    registry
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    if let Some(e) = fallback {
        tracing::warn!("journald not reachable ({e}); logging text to stderr");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("signald-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
