//! p2pd's entry point: flags, optional daemonizing (before any runtime
//! exists), logging, readiness, then the runtime. Only this file prints
//! fatal errors.
//!
//! Readiness is told two ways, both once the control socket accepts: to a
//! service manager by `sd_notify` (`READY=1`, then `STOPPING=1` on
//! shutdown) when `NOTIFY_SOCKET` is set, and with `--daemonize` to the
//! launching process through a pipe, so that it exits 0 only when the
//! daemon serves and otherwise prints the daemon's startup error and exits 1.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser};
use p2p_service::LogFormat;
use p2pd::Cli;

/// Flags of the binary: the daemon's own, plus where logs go.
#[derive(Parser, Debug)]
#[command(
    name = "p2pd",
    version,
    about = "Keeps a signaling link and a WebRTC data channel to one peer; controlled by p2pctl"
)]
struct Args {
    #[command(flatten)]
    cli: Cli,

    /// Append logs to this file instead of stderr. With --daemonize the
    /// default is p2pd.log in the state directory
    /// ($XDG_STATE_HOME/p2pd/p2pd.log, ~/.local/state/p2pd/p2pd.log).
    #[arg(long, env = "P2PD_LOG_FILE")]
    log_file: Option<PathBuf>,

    /// Log output: text or json, or journald. Default: journald when stderr
    /// is the journal (JOURNAL_STREAM), else text.
    #[arg(long, env = "P2PD_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,

    /// Print the man page (roff) on stdout and exit.
    #[arg(long, hide = true)]
    man: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.man {
        return match clap_mangen::Man::new(Args::command()).render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("p2pd: writing the man page: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            // One line on stderr, which is also the log file once detached.
            eprintln!("p2pd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let daemonize = args.cli.daemonize;
    let pidfile = args.cli.pidfile.clone();
    let mut cfg = args.cli.into_config()?;
    let mut log_file = args.log_file;
    let mut started = None;
    let mut own_pidfile = None;
    if daemonize {
        // The daemon runs in /: every path it is given must not depend on
        // where it was launched.
        cfg.socket = std::path::absolute(&cfg.socket).context("resolving --socket")?;
        let pidfile = pidfile
            .map(|p| std::path::absolute(&p).context("resolving --pidfile"))
            .transpose()?;
        if let Some(p) = &pidfile {
            check_pidfile(p)?;
        }
        let log_path = match log_file.take() {
            Some(p) => p,
            None => {
                p2pd::paths::ensure_private_dir(&cfg.state_dir, true)?;
                cfg.state_dir.join("p2pd.log")
            }
        };
        let log = open_log(&log_path)?;
        match detach(pidfile.as_deref(), log, &log_path)? {
            Detached::Parent(code) => return Ok(code),
            Detached::Daemon(pipe) => {
                started = Some(pipe);
                own_pidfile = pidfile;
            }
        }
    }
    let log = log_file.as_deref().map(open_log).transpose()?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("P2PD_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if let Some(e) = p2p_service::init_logging(args.log_format, filter, log) {
        tracing::warn!("journald not reachable ({e}); logging text instead");
    }

    let started = Arc::new(Mutex::new(started));
    let result = serve(cfg, started.clone());
    // Clean up before telling the launcher anything: once it hears from
    // us it exits, and whoever ran it may look at the pidfile right away.
    if let Some(p) = &own_pidfile {
        remove_quietly(p);
    }
    // Still holding the pipe means startup failed: tell the launcher why.
    let pipe = started.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let (Some(mut pipe), Err(e)) = (pipe, &result) {
        writeln!(pipe, "{e:#}").ok();
    }
    result.map(|()| ExitCode::SUCCESS)
}

/// Builds the runtime (after any fork: a runtime's threads do not survive
/// one) and runs the daemon.
fn serve(cfg: p2pd::Config, started: Arc<Mutex<Option<File>>>) -> anyhow::Result<()> {
    // One worker beside the main thread. The daemon drives one peer
    // connection, whose tasks (the crate's driver, the channel reader, the
    // control connections) hand each message on to the next: with a worker
    // per core they ran on different threads, and every hand-off woke a
    // sleeping one (perf: 14-16% of the sender in finish_task_switch;
    // strace: 13.5k epoll_waits in 2 s of transfer, 111 with one worker).
    // Seven alternating benchmark rounds on the 2-core machine, medians of
    // three runs each: 16 KiB messages 76-105 MB/s against 66-83, 100-byte
    // lines 188k-275k/s against 164k-195k. A current-thread runtime was a
    // little slower than one worker.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // The handlers go in before anything can announce readiness: a SIGTERM
    // right after READY=1 must mean a clean stop, not the default death.
    let shutdown = {
        let _in_runtime = rt.enter();
        shutdown_signal()?
    };
    rt.block_on(p2pd::run(cfg, shutdown, move || {
        if let Err(e) = p2p_service::notify("READY=1") {
            tracing::warn!("sd_notify READY=1: {e}");
        }
        if let Some(mut pipe) = started.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // The launcher exits 0 on this line; EOF without it means failure.
            if let Err(e) = pipe.write_all(b"ok\n") {
                tracing::warn!("telling the launcher we are ready: {e}");
            }
        }
    }))
}

fn remove_quietly(p: &Path) {
    match std::fs::remove_file(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %p.display(), "removing the pidfile: {e}"),
    }
}

enum Detached {
    /// The launching process, with the exit code it should end with.
    Parent(ExitCode),
    /// The daemon, with the pipe on which it reports readiness.
    Daemon(File),
}

/// Forks into the background with the `daemonize` crate: stdout and stderr
/// go to `log`, the PID to `pidfile` (locked: a second daemon with the same
/// pidfile fails). The launcher waits on a pipe until the daemon reports
/// readiness (exit 0) or fails (its error is printed, exit 1).
fn detach(pidfile: Option<&Path>, log: File, log_path: &Path) -> anyhow::Result<Detached> {
    let (mut read_end, write_end) = pipe()?;
    let mut d = daemonize::Daemonize::new()
        .working_directory("/")
        .umask(0o077)
        .stdout(log.try_clone().context("duplicating the log file")?)
        .stderr(log);
    if let Some(p) = pidfile {
        d = d.pid_file(p);
    }
    match d.execute() {
        daemonize::Outcome::Parent(Err(e)) => bail!("daemonizing: {e}"),
        daemonize::Outcome::Parent(Ok(_)) => {
            drop(write_end);
            let mut msg = String::new();
            read_end
                .read_to_string(&mut msg)
                .context("waiting for the daemon to start")?;
            if msg == "ok\n" {
                return Ok(Detached::Parent(ExitCode::SUCCESS));
            }
            let msg = msg.trim();
            if msg.is_empty() {
                eprintln!(
                    "p2pd: the daemon exited during startup; see {}",
                    log_path.display()
                );
            } else {
                eprintln!("p2pd: {msg}");
            }
            Ok(Detached::Parent(ExitCode::FAILURE))
        }
        daemonize::Outcome::Child(Err(e)) => {
            drop(read_end);
            let mut w = write_end;
            // The crate's error kinds are private; its text is stable.
            let why = match pidfile {
                Some(p) if e.to_string().starts_with("unable to lock pid file") => {
                    format!("another p2pd holds the pidfile {} ({e})", p.display())
                }
                _ => format!("daemonizing: {e}"),
            };
            writeln!(w, "{why}").ok();
            std::process::exit(1);
        }
        daemonize::Outcome::Child(Ok(_)) => {
            drop(read_end);
            Ok(Detached::Daemon(write_end))
        }
    }
}

fn pipe() -> anyhow::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors on success, which we own then.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating a pipe");
    }
    // SAFETY: fresh descriptors from pipe2, owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((File::from(r), File::from(w)))
}

fn open_log(path: &Path) -> anyhow::Result<File> {
    let path = std::path::absolute(path).context("resolving --log-file")?;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        // A symlink put in place of the log must not make us append to
        // (or create) some other file.
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("opening log file {}", path.display()))
}

/// The daemonize crate opens the pidfile itself (following symlinks), so
/// its directory must be one nobody else can put a symlink in, and the
/// pidfile itself no symlink.
fn check_pidfile(path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    if let Some(why) = p2p_proto::control::socket_dir_problem(dir) {
        bail!("refusing --pidfile {}: {why}", path.display());
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!("refusing --pidfile {}: it is a symlink", path.display())
        }
        _ => Ok(()),
    }
}

/// Installs the SIGTERM/SIGINT handlers now; the returned future resolves
/// on the first of them (after telling the service manager we are stopping).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if let Err(e) = p2p_service::notify("STOPPING=1") {
            tracing::warn!("sd_notify STOPPING=1: {e}");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }
}
