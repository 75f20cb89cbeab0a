//! systemd/p2pd.service, checked offline as a user unit with
//! `systemd-analyze verify --user`. Skipped with one printed line where
//! systemd-analyze is absent (`apt-get install systemd`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn systemd_analyze() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("systemd-analyze"))
            .find(|f| f.is_file())
    });
    if found.is_none() {
        // Straight to stderr: the test harness would hide a println!.
        use std::io::Write;
        writeln!(
            std::io::stderr(),
            "SKIPPED p2pd unit: systemd-analyze not found (apt-get install systemd)"
        )
        .ok();
    }
    found
}

#[test]
fn user_unit_verifies() {
    let Some(tool) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/p2pd.service");
    let text = std::fs::read_to_string(src)
        .unwrap()
        .replace("/usr/local/bin/p2pd", env!("CARGO_BIN_EXE_p2pd"));
    let unit = dir.path().join("p2pd.service");
    std::fs::write(&unit, text).unwrap();
    // A user manager needs a runtime directory to resolve %t, even offline.
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let out = Command::new(tool)
        .args(["verify", "--user", "--man=no"])
        .arg(&unit)
        .env("XDG_RUNTIME_DIR", &run)
        .env("HOME", dir.path())
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "{}\n{err}",
        out.status
    );
}
