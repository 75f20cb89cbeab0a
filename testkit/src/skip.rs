//! Tests that need something this machine may lack say so in one line.

use std::path::{Path, PathBuf};

/// Prints `SKIPPED what: why` straight to stderr (the test harness would
/// hide a `println!`), for a test that then returns early and passes.
pub fn skip(what: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {what}: {why}");
}

/// `systemd-analyze` on the PATH, or `None` after printing one skip line
/// for `what` (the unit-file tests; `scripts/test` installs it as root).
pub fn systemd_analyze(what: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("systemd-analyze"))
            .find(|f| f.is_file())
    });
    if found.is_none() {
        skip(what, "systemd-analyze not found (apt-get install systemd)");
    }
    found
}

/// `systemd-analyze verify` of `units`, which must pass with nothing on
/// stderr. With `user_home` they are user units, checked as a user manager
/// in that home would see them (it makes `run/` there for `%t`).
pub fn systemd_verify(tool: &Path, units: &[PathBuf], user_home: Option<&Path>) {
    let mut cmd = std::process::Command::new(tool);
    cmd.arg("verify");
    if let Some(home) = user_home {
        // A user manager needs a runtime directory to resolve %t, even offline.
        let run = home.join("run");
        std::fs::create_dir_all(&run).expect("making the runtime directory");
        cmd.arg("--user")
            .env("XDG_RUNTIME_DIR", &run)
            .env("HOME", home)
            .env_remove("XDG_CONFIG_HOME");
    }
    cmd.arg("--man=no")
        .args(units)
        .env("SYSTEMD_LOG_COLOR", "0");
    let out = cmd.output().expect("running systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "verify {units:?}: {}\n{err}",
        out.status
    );
}
