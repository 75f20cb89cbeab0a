//! Where p2pd keeps its files: the control socket, the state directory
//! (key, trust store, ID tokens) and the token itself.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

pub use p2p_proto::control::default_socket_path as default_socket;
use p2p_proto::control::socket_dir_problem;

/// Creates `dir` with mode 0700 if it is missing, and makes sure it can
/// be trusted: a real directory (not a symlink), ours, writable by nobody
/// else ([`socket_dir_problem`]). With `tighten`, an existing directory of
/// ours open to others is made 0700 (for directories that are p2pd's own;
/// a directory the user named is left as it is, but refused if others can
/// write it).
pub fn ensure_private_dir(dir: &Path, tighten: bool) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let meta = fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    // SAFETY: getuid has no preconditions and cannot fail.
    let ours = meta.uid() == unsafe { libc::getuid() };
    if tighten && ours && meta.is_dir() && mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).with_context(|| {
            format!("{} is mode {mode:o}; could not make it 0700", dir.display())
        })?;
    }
    if let Some(why) = socket_dir_problem(dir) {
        bail!("refusing {why}");
    }
    Ok(())
}

/// Refuses a secret (our key, an ID token) or the state directory that
/// holds them when it is not ours alone: a symlink, another type than
/// expected, another owner, or a mode that lets others in. The message
/// says how to fix it, and p2pd does not fix it behind the user's back
/// (like sshd's StrictModes): whoever could read the key could pose as us,
/// and whoever could write it could have swapped it. A missing path is
/// fine (p2pd creates it, 0600 or 0700).
pub fn check_private(path: &Path, what: &str, is_dir: bool) -> anyhow::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("checking {what} {}", path.display())),
    };
    let p = path.display();
    let kind = if is_dir { "directory" } else { "file" };
    if meta.file_type().is_symlink() {
        bail!(
            "{what} {p} is a symlink; it must be the {kind} itself (replace the link with its target)"
        );
    }
    if meta.is_dir() != is_dir || !(is_dir || meta.is_file()) {
        bail!("{what} {p} is not a {kind}");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let me = unsafe { libc::getuid() };
    if meta.uid() != me {
        bail!(
            "{what} {p} belongs to uid {}, not to us (uid {me}): chown {me} {p}, or use another --state-dir",
            meta.uid()
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        let (want, others) = match (is_dir, mode & 0o022 != 0) {
            (true, _) => ("700", "other users can look into it"),
            (false, true) => ("600", "other users can write it"),
            (false, false) => ("600", "other users can read it"),
        };
        bail!("{what} {p} is mode {mode:o}: {others}; chmod {want} {p}");
    }
    Ok(())
}

/// `$XDG_STATE_HOME/p2pd`, else `~/.local/state/p2pd`: our key, the trust
/// store and ID tokens.
pub fn default_state_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME").map(PathBuf::from) {
        Some(d) if d.is_absolute() => d,
        _ => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".local").join("state"),
            None => bail!("neither XDG_STATE_HOME nor HOME is set; pass --state-dir"),
        },
    };
    Ok(base.join("p2pd"))
}

/// Reads a token file, which must hold one valid token and be ours alone.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    check_private(path, "the token file", false)?;
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    let token = text.trim().to_string();
    if !p2p_proto::signal::valid_token(&token) {
        bail!(
            "token file {} does not hold a token (16-128 printable ASCII characters, no spaces)",
            path.display()
        );
    }
    Ok(token)
}

/// Reads the token at `path`, or makes a random one and stores it there with
/// mode 0600 so that a restart reclaims the same ID.
pub fn read_or_create_token(path: &Path) -> anyhow::Result<String> {
    match read_token(path) {
        Ok(t) => return Ok(t),
        Err(e) if path.symlink_metadata().is_ok() => return Err(e),
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        ensure_private_dir(dir, true)?;
    }
    let token = random_token()?;
    let mut f = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        // Another instance won the race: use its token.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return read_token(path),
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    };
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("reading random bytes: {e}"))?;
    use base64::Engine;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// A name for a temporary file beside `path` that no other process or
/// thread picks: `.NAME.PID-RANDOM.tmp`.
pub fn temp_beside(path: &Path) -> PathBuf {
    let mut r = [0u8; 6];
    // Without randomness the PID alone still separates processes.
    let _ = getrandom::fill(&mut r);
    let suffix: String = r.iter().map(|b| format!("{b:02x}")).collect();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}-{suffix}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_made_once_and_private() {
        let dir = std::env::temp_dir().join(format!("p2pd-token-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let f = dir.join("state").join("a.token");
        let t1 = read_or_create_token(&f).unwrap();
        let t2 = read_or_create_token(&f).unwrap();
        assert_eq!(t1, t2);
        assert!(p2p_proto::signal::valid_token(&t1));
        let mode = fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Secrets that others could read or swap are refused with the fix,
    /// and left as they are (no chmod behind the user's back).
    #[test]
    fn secrets_and_their_directory_must_be_ours_alone() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("identity.pem");
        assert!(
            check_private(&key, "our key", false).is_ok(),
            "missing is fine"
        );
        fs::write(&key, "k").unwrap();
        for (mode, fix) in [
            (0o600, None),
            (0o400, None),
            (0o640, Some("other users can read it; chmod 600")),
            (0o606, Some("other users can write it; chmod 600")),
        ] {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
            let r = check_private(&key, "our key", false);
            match fix {
                None => assert!(r.is_ok(), "{mode:o}: {r:?}"),
                Some(fix) => {
                    let e = r.unwrap_err().to_string();
                    assert!(
                        e.contains(fix) && e.contains(&key.display().to_string()),
                        "{e}"
                    );
                    let now = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
                    assert_eq!(now, mode, "left as it was");
                }
            }
        }
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(&key, &link).unwrap();
        let e = check_private(&link, "our key", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a symlink"), "{e}");
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        let e = check_private(&state, "the state directory", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chmod 700"), "{e}");
        assert!(
            check_private(&key, "the state directory", true).is_err(),
            "a file"
        );
        // A token file others can read is refused where it is read.
        let token = dir.path().join("a.token");
        fs::write(&token, "0123456789abcdefXYZ\n").unwrap();
        fs::set_permissions(&token, fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_or_create_token(&token).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
