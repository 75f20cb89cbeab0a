//! Tests that need something this machine may lack say so in one line.

use std::path::PathBuf;

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
