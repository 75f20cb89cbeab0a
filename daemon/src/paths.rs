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

/// Reads a token file, which must hold one valid token.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
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
        Err(e) if path.exists() => return Err(e),
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
}
