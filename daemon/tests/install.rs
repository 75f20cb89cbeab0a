//! scripts/install.sh and scripts/uninstall.sh into a temporary prefix,
//! with the binaries of this build (`--from`; a release build would take
//! many minutes here). Both run twice: they must be idempotent, and the
//! prefix must end empty.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    p2p_testkit::manifest_dir().join("..")
}

/// The directory holding this build's binaries; signald and p2pctl must be
/// there too (`cargo test --workspace` builds them all).
fn bin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_p2pd"))
        .parent()
        .unwrap()
        .to_path_buf();
    for b in ["signald", "p2pctl"] {
        assert!(
            dir.join(b).is_file(),
            "{b} is not built in {}: cargo build -p signald -p p2pctl",
            dir.display()
        );
    }
    dir
}

fn script(name: &str, args: &[&str], prefix: &Path) -> String {
    let out = Command::new(repo().join("scripts").join(name))
        .args(args)
        .arg("--prefix")
        .arg(prefix)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn round_trip(mode: &[&str], units: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix");
    let from = bin_dir();
    let from = from.to_str().unwrap();
    let mut args = mode.to_vec();
    args.extend(["--from", from]);
    script("install.sh", &args, &prefix);
    script("install.sh", &args, &prefix);

    let mut listed: Vec<PathBuf> = script("install.sh", &[mode, &["--list"]].concat(), &prefix)
        .lines()
        .map(PathBuf::from)
        .collect();
    listed.sort();
    assert_eq!(files_under(&prefix), listed, "installed files vs --list");
    for b in ["signald", "p2pd", "p2pctl"] {
        let p = prefix.join("bin").join(b);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{}", p.display());
        let man = std::fs::read_to_string(prefix.join(format!("share/man/man1/{b}.1"))).unwrap();
        assert!(man.contains(&format!(".TH {b} 1")), "{b}.1:\n{man}");
    }
    let v = Command::new(prefix.join("bin/p2pctl"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(v.status.success());
    let bash =
        std::fs::read_to_string(prefix.join("share/bash-completion/completions/p2pctl")).unwrap();
    assert!(bash.contains("complete"), "{bash}");
    for u in units {
        let text = std::fs::read_to_string(prefix.join(u)).unwrap();
        let exec = text.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert!(
            exec.starts_with(&format!("ExecStart={}/bin/", prefix.display())),
            "{u}: {exec}"
        );
    }

    script("uninstall.sh", mode, &prefix);
    script("uninstall.sh", mode, &prefix);
    assert!(prefix.is_dir(), "the prefix itself stays");
    let left: Vec<_> = std::fs::read_dir(&prefix).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn system_install_and_uninstall_into_a_prefix() {
    round_trip(
        &[],
        &[
            "lib/systemd/system/signald.service",
            "lib/systemd/system/signald-activated.service",
            "lib/systemd/user/p2pd.service",
        ],
    );
}

#[test]
fn user_install_and_uninstall_into_a_prefix() {
    round_trip(&["--user"], &["share/systemd/user/p2pd.service"]);
}
