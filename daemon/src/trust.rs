//! The trust store: which key each known peer ID must present, kept in a
//! `known_peers` file (like SSH's `known_hosts`), and the policy for peers
//! it does not name.
//!
//! The file has one peer per line, fields separated by spaces:
//!
//! ```text
//! # ID  FINGERPRINT  ADDED  [COMMENT...]
//! bob   sha256:…     2026-12-01T21:34:44Z  laptop in the office
//! ```
//!
//! `#` starts a comment line; blank lines are ignored. A line that cannot be
//! read pins nothing and is reported (log and `status.trust.problems`); the
//! file is re-read whenever it changes, so hand edits and configuration
//! management apply without a restart. p2pd rewrites the file atomically
//! when it pins or unpins, keeping every other line as it was. A file (or
//! directory) that another user could write is not trusted at all.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use p2p_proto::control::{Pin, TrustPolicy};
use p2p_proto::identity::Fingerprint;

/// What identifies one version of the file on disk.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
    /// Owner and mode too: a file made writable by others stops pinning.
    uid: u32,
    mode: u32,
}

enum Line {
    Pin(Pin),
    /// A comment, a blank line, or a line that could not be read: written
    /// back as it was.
    Other(String),
}

pub struct TrustStore {
    path: PathBuf,
    policy: TrustPolicy,
    lines: Vec<Line>,
    /// The version read; `None` when the file does not exist.
    stamp: Option<Stamp>,
    problems: Vec<String>,
}

impl TrustStore {
    /// The store at `path` (which need not exist yet) under `policy`.
    pub fn open(path: PathBuf, policy: TrustPolicy) -> TrustStore {
        let mut s = TrustStore {
            path,
            policy,
            lines: Vec::new(),
            stamp: None,
            problems: Vec::new(),
        };
        s.reload(true);
        s
    }

    pub fn policy(&self) -> TrustPolicy {
        self.policy
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines that pin nothing because they could not be read.
    pub fn problems(&mut self) -> Vec<String> {
        self.reload(false);
        self.problems.clone()
    }

    /// The fingerprint pinned for `id`.
    pub fn get(&mut self, id: &str) -> Option<Fingerprint> {
        self.reload(false);
        self.pins().find(|p| p.id == id).map(|p| p.fingerprint)
    }

    /// Every pin.
    pub fn list(&mut self) -> Vec<Pin> {
        self.reload(false);
        self.pins().cloned().collect()
    }

    fn pins(&self) -> impl Iterator<Item = &Pin> {
        self.lines.iter().filter_map(|l| match l {
            Line::Pin(p) => Some(p),
            Line::Other(_) => None,
        })
    }

    /// Pins `fp` for `id`, replacing any pin; returns the one replaced.
    pub fn set(
        &mut self,
        id: &str,
        fp: Fingerprint,
        comment: Option<String>,
    ) -> std::io::Result<(Pin, Option<Fingerprint>)> {
        self.reload(false);
        let replaced = self.pins().find(|p| p.id == id).map(|p| p.fingerprint);
        let pin = Pin {
            id: id.to_string(),
            fingerprint: fp,
            added: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            comment: comment
                .map(|c| c.replace(['\n', '\r'], " "))
                .filter(|c| !c.trim().is_empty()),
        };
        let mut lines = self.without(id);
        lines.push(Line::Pin(pin.clone()));
        self.write(lines)?;
        Ok((pin, replaced))
    }

    /// Removes the pin of `id`; whether there was one.
    pub fn remove(&mut self, id: &str) -> std::io::Result<bool> {
        self.reload(false);
        if self.pins().all(|p| p.id != id) {
            return Ok(false);
        }
        let lines = self.without(id);
        self.write(lines)?;
        Ok(true)
    }

    fn without(&self, id: &str) -> Vec<Line> {
        self.lines
            .iter()
            .filter(|l| !matches!(l, Line::Pin(p) if p.id == id))
            .map(|l| match l {
                Line::Pin(p) => Line::Pin(p.clone()),
                Line::Other(t) => Line::Other(t.clone()),
            })
            .collect()
    }

    /// Replaces the file with `lines` (a private file beside it, renamed
    /// over it), then takes them as the current content.
    fn write(&mut self, lines: Vec<Line>) -> std::io::Result<()> {
        let mut text = String::new();
        if lines.is_empty() || !matches!(lines.first(), Some(Line::Other(t)) if t.starts_with('#'))
        {
            text.push_str("# p2pd known peers: ID FINGERPRINT ADDED [COMMENT]\n");
        }
        for l in &lines {
            match l {
                Line::Pin(p) => {
                    text.push_str(&format!("{} {} {}", p.id, p.fingerprint, p.added));
                    if let Some(c) = &p.comment {
                        text.push(' ');
                        text.push_str(c);
                    }
                    text.push('\n');
                }
                Line::Other(t) => {
                    text.push_str(t);
                    text.push('\n');
                }
            }
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = crate::paths::temp_beside(&self.path);
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        self.reload(true);
        Ok(())
    }

    /// Re-reads the file if it changed since it was read (or with `force`).
    fn reload(&mut self, force: bool) {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.stamp = None;
                self.lines.clear();
                self.problems.clear();
                return;
            }
            Err(e) => {
                self.lines.clear();
                self.problems = vec![format!("cannot read {}: {e}", self.path.display())];
                return;
            }
        };
        let stamp = Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            ino: meta.ino(),
            uid: meta.uid(),
            mode: meta.mode(),
        };
        if !force && self.stamp == Some(stamp) {
            return;
        }
        self.stamp = Some(stamp);
        self.problems.clear();
        if let Some(why) = unsafe_to_trust(&self.path, &meta) {
            self.lines.clear();
            self.problems.push(why);
        } else {
            match std::fs::read_to_string(&self.path) {
                Ok(text) => {
                    let (lines, problems) = parse(&text);
                    self.lines = lines;
                    self.problems = problems;
                }
                Err(e) => {
                    self.lines.clear();
                    self.problems
                        .push(format!("cannot read {}: {e}", self.path.display()));
                }
            }
        }
        for p in &self.problems {
            tracing::warn!(file = %self.path.display(), "trust store: {p}");
        }
    }
}

/// Why a file others could write pins nothing: they could pin their own key
/// for any peer.
fn unsafe_to_trust(path: &Path, meta: &std::fs::Metadata) -> Option<String> {
    // SAFETY: getuid has no preconditions and cannot fail.
    let me = unsafe { libc::getuid() };
    let owner_ok = |m: &std::fs::Metadata| m.uid() == me || m.uid() == 0;
    if !owner_ok(meta) || meta.mode() & 0o022 != 0 {
        return Some(format!(
            "{} is writable by other users (owner uid {}, mode {:o}); it pins nothing until that is fixed",
            path.display(),
            meta.uid(),
            meta.mode() & 0o777
        ));
    }
    let dir = path.parent()?;
    match std::fs::metadata(dir) {
        Ok(d) if !owner_ok(&d) || (d.mode() & 0o022 != 0 && d.mode() & 0o1000 == 0) => {
            Some(format!(
                "{} is in a directory other users can write ({}); it pins nothing until that is fixed",
                path.display(),
                dir.display()
            ))
        }
        _ => None,
    }
}

/// Reads the file's lines; unreadable ones are kept verbatim and reported.
fn parse(text: &str) -> (Vec<Line>, Vec<String>) {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, raw) in text.lines().enumerate() {
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            lines.push(Line::Other(raw.to_string()));
            continue;
        }
        match parse_pin(t) {
            Ok(pin) if seen.insert(pin.id.clone()) => lines.push(Line::Pin(pin)),
            Ok(pin) => {
                problems.push(format!(
                    "line {}: a second pin for {} (the first one holds)",
                    n + 1,
                    pin.id
                ));
                lines.push(Line::Other(raw.to_string()));
            }
            Err(e) => {
                problems.push(format!("line {}: {e}", n + 1));
                lines.push(Line::Other(raw.to_string()));
            }
        }
    }
    (lines, problems)
}

fn parse_pin(t: &str) -> Result<Pin, String> {
    let mut fields = t.splitn(4, char::is_whitespace).filter(|f| !f.is_empty());
    let (Some(id), Some(fp), Some(added)) = (fields.next(), fields.next(), fields.next()) else {
        return Err("expected ID FINGERPRINT ADDED [COMMENT]".into());
    };
    if !p2p_proto::signal::valid_id(id) {
        return Err(format!("{id:?} is not a valid ID"));
    }
    let fingerprint = Fingerprint::parse(fp)?;
    humantime::parse_rfc3339(added)
        .map_err(|e| format!("{added:?} is not an RFC 3339 time: {e}"))?;
    Ok(Pin {
        id: id.to_string(),
        fingerprint,
        added: added.to_string(),
        comment: fields
            .next()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty()),
    })
}

#[cfg(test)]
mod tests;
