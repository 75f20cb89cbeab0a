//! The systemd units in systemd/ for signald, checked offline with
//! `systemd-analyze verify` (clean) and `security --offline=true` (the
//! exposure ratings docs/operations.md promises). Skipped with one printed
//! line where systemd-analyze is absent (`apt-get install systemd`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Copies units into a temp dir with ExecStart pointing at the built binary
/// (verify insists that the command exists).
fn stage(units: &[&str]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let src = p2p_testkit::manifest_dir().join("../systemd");
    let paths = units
        .iter()
        .map(|u| {
            let text = std::fs::read_to_string(src.join(u)).unwrap();
            let text = text.replace("/usr/local/bin/signald", env!("CARGO_BIN_EXE_signald"));
            let p = dir.path().join(u);
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect();
    (dir, paths)
}

/// The overall exposure rating, e.g. 1.2 from "… signald.service: 1.2 OK 🙂".
fn exposure(tool: &Path, unit: &Path) -> f64 {
    let out = Command::new(tool)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no rating in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let after = line.rsplit_once(": ").unwrap().1;
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn standalone_unit_verifies_and_rates_ok() {
    let Some(tool) = p2p_testkit::systemd_analyze("signald units") else {
        return;
    };
    let (_dir, units) = stage(&["signald.service"]);
    p2p_testkit::systemd_verify(&tool, &units, None);
    let level = exposure(&tool, &units[0]);
    assert!(level <= 1.5, "signald.service exposure {level} > 1.5");
}

#[test]
fn socket_activated_units_verify_and_rate_safe() {
    let Some(tool) = p2p_testkit::systemd_analyze("signald units") else {
        return;
    };
    let (_dir, units) = stage(&["signald.socket", "signald-activated.service"]);
    p2p_testkit::systemd_verify(&tool, &units, None);
    let level = exposure(&tool, &units[1]);
    assert!(
        level <= 0.2,
        "signald-activated.service exposure {level} > 0.2"
    );
}
