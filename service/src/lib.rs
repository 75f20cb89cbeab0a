//! Living under a service manager, as signald and p2pd both do: readiness
//! notifications ([`notify`]), telling whether stderr is the journal
//! ([`stderr_is_journal`]), and installing the log output ([`init_logging`],
//! chosen by a [`LogFormat`] flag).
//!
//! Each is a few lines of a stable protocol, written here rather than taken
//! from a crate so that abstract `@` notify sockets work. What only one
//! binary needs (signald's socket activation, p2pd's daemonizing) stays in
//! that binary.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, IsTerminal};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;

use tracing_subscriber::EnvFilter;

/// Sends `state` (e.g. `READY=1`, `STOPPING=1`) to the service manager when
/// `NOTIFY_SOCKET` names one; a leading `@` is an abstract socket. This is
/// sd_notify(3) in a few lines. Returns whether anything was sent.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    notify_to(&path, state)?;
    Ok(true)
}

/// Sends `state` as one datagram to the socket `path` (`@NAME`: abstract).
fn notify_to(path: &OsStr, state: &str) -> io::Result<()> {
    let addr = match path.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(path)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
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

/// Where log lines go: the value of a binary's `--log-format` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
    /// Straight to the systemd journal, with structured fields.
    Journald,
}

/// Installs the global subscriber, filtered by `filter` (each binary reads
/// its own variable, e.g. `SIGNALD_LOG` or `P2PD_LOG`), writing to `file`
/// or else stderr. Text carries colours only on a terminal.
///
/// The format is `format`, or by default journald when stderr is the
/// journal stream (and no `file` is given), else text. When journald is
/// wanted but cannot be reached (no `/run/systemd/journal/socket`), text is
/// installed instead and the reason returned: the caller logs that warning
/// itself, so that it carries the binary's own target.
///
/// # Panics
/// When a global subscriber is already installed.
#[must_use = "a journald fallback should be logged"]
pub fn init_logging(
    format: Option<LogFormat>,
    filter: EnvFilter,
    file: Option<File>,
) -> Option<io::Error> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::prelude::*;
    let to_file = file.is_some();
    let writer = || match &file {
        Some(f) => BoxMakeWriter::new(Arc::new(f.try_clone().expect("duplicating the log file"))),
        None => BoxMakeWriter::new(io::stderr),
    };
    let wanted = format.unwrap_or(if !to_file && stderr_is_journal() {
        LogFormat::Journald
    } else {
        LogFormat::Text
    });
    let registry = tracing_subscriber::registry().with(filter);
    let mut fallback = None;
    match wanted {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                registry.with(layer).init();
                return None;
            }
            Err(e) => fallback = Some(e),
        },
        LogFormat::Json => {
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_writer(writer()),
                )
                .init();
            return None;
        }
        LogFormat::Text => {}
    }
    // Colours only for a person at a terminal: never into a file, a pipe or
    // the journal's stream.
    let text = tracing_subscriber::fmt::layer()
        .with_writer(writer())
        .with_ansi(!to_file && io::stderr().is_terminal());
    registry.with(text).init();
    fallback
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

        let name = format!("p2p-service-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
