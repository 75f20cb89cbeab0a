//! The trust store: which key each known peer ID must present, kept in a
//! `known_peers` file (like SSH's `known_hosts`), and the policy for peers
//! it does not name.
//!
//! The file has one peer per line, fields separated by any run of spaces
//! or tabs (so the aligned table `p2pctl trust --list` prints can be pasted
//! in):
//!
//! ```text
//! # ID  FINGERPRINT  ADDED  [COMMENT...]
//! bob   sha256:…     2026-12-01T21:34:44Z  laptop in the office
//! ```
//!
//! `#` starts a comment line; blank lines are ignored. The file is re-read
//! whenever it changes, so hand edits and configuration management apply
//! without a restart. p2pd rewrites it atomically when it pins or unpins,
//! keeping every other line as it was.
//!
//! The link's core never touches the file: it decides from a [`Pins`]
//! snapshot the engine hands it (again whenever the file changed, or after
//! the engine wrote it), and asks the engine to write a pin as an effect.
//!
//! The store fails closed: when it cannot be fully trusted (a file or
//! directory another user could write, a file that cannot be read or is
//! not UTF-8, a line that does not parse, two different keys for one ID),
//! it is [`Broken`]: it pins nothing, every pairing is refused under every
//! policy, and p2pd never writes it, until it is fixed. A missing file is
//! an empty store.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use p2p_proto::control::{ErrorBody, ErrorCode, OkBody, Pin, TrustPolicy};
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

/// Why the trust store cannot be used, file and line: p2pd refuses every
/// pairing and every edit of the store until it is fixed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the trust store {} cannot be trusted ({}): p2pd refuses every pairing, and will not write it, until it is fixed", file.display(), problems.join("; "))]
pub struct Broken {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

/// Why p2pd could not write the trust store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// It is broken: p2pd never writes it until it is fixed.
    #[error(transparent)]
    Broken(#[from] Broken),
    /// Writing it failed.
    #[error("could not write the trust store {}: {message}", file.display())]
    Io { file: PathBuf, message: String },
}

/// What [`TrustStore::pin_first`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstPin {
    /// The key is pinned now.
    Added,
    /// The same key was pinned already (by hand, or by another pairing).
    AlreadyPinned,
    /// Another key was pinned for that ID meanwhile: it stays.
    Conflict(Fingerprint),
}

/// `p2pctl trust`, `untrust` and `trust --list`.
#[derive(Debug)]
pub enum TrustEdit {
    Trust {
        peer: String,
        fingerprint: Fingerprint,
        comment: Option<String>,
    },
    Untrust {
        peer: String,
    },
    List,
}

/// What the trust store says at one moment, and under which policy: what
/// the link's core decides from. Plain data: no file behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    policy: TrustPolicy,
    pins: Result<Vec<Pin>, Broken>,
}

impl Pins {
    /// A usable store holding `pins`.
    pub fn new(policy: TrustPolicy, pins: Vec<Pin>) -> Pins {
        Pins {
            policy,
            pins: Ok(pins),
        }
    }

    /// A store that cannot be used (tests; the engine reads it so).
    #[cfg(test)]
    pub fn broken(policy: TrustPolicy, broken: Broken) -> Pins {
        Pins {
            policy,
            pins: Err(broken),
        }
    }

    pub fn policy(&self) -> TrustPolicy {
        self.policy
    }

    /// Whether the store can be used at all.
    pub fn check(&self) -> Result<(), Broken> {
        self.pins.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// The key pinned for `id`; none while the store is broken (callers
    /// refuse on [`Pins::check`] first).
    pub fn get(&self, id: &str) -> Option<Fingerprint> {
        let pins = self.pins.as_ref().ok()?;
        pins.iter().find(|p| p.id == id).map(|p| p.fingerprint)
    }
}

pub struct TrustStore {
    path: PathBuf,
    policy: TrustPolicy,
    lines: Vec<Line>,
    /// The version read; `None` when the file does not exist.
    stamp: Option<Stamp>,
    problems: Vec<String>,
    /// Counts the times the content was (re)read: a snapshot handed out
    /// at another count is out of date.
    reads: u64,
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
            reads: 0,
        };
        s.reload(true);
        s
    }

    /// Carries out a `trust`, `untrust` or `trust --list` request. The
    /// engine then hands the link the new content, which ends a link whose
    /// pin went away.
    pub fn edit(&mut self, edit: TrustEdit) -> Result<OkBody, ErrorBody> {
        let store_failed = |e: WriteError| ErrorBody {
            code: ErrorCode::StoreFailed,
            message: e.to_string(),
        };
        match edit {
            TrustEdit::Trust {
                peer,
                fingerprint,
                comment,
            } => self
                .set(&peer, fingerprint, comment)
                .map(|(trusted, replaced)| OkBody::Trust { trusted, replaced })
                .map_err(store_failed),
            TrustEdit::Untrust { peer } => self
                .remove(&peer)
                .map(|was_trusted| OkBody::Untrust { was_trusted })
                .map_err(store_failed),
            TrustEdit::List => self
                .list()
                .map(|peers| OkBody::TrustList { peers })
                .map_err(|broken| ErrorBody {
                    code: ErrorCode::StoreFailed,
                    message: broken.to_string(),
                }),
        }
    }

    /// What the store says now (re-read if the file changed).
    pub fn snapshot(&mut self) -> Pins {
        let pins = self.list();
        Pins {
            policy: self.policy,
            pins,
        }
    }

    /// How many times the content was read: changes when the file did
    /// (after [`TrustStore::refresh`]) or when p2pd wrote it.
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// Re-reads the file if it changed since it was last read.
    pub fn refresh(&mut self) {
        self.reload(false);
    }

    pub fn policy(&self) -> TrustPolicy {
        self.policy
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the store cannot be trusted (file, line), one message each;
    /// empty when it can.
    pub fn problems(&mut self) -> Vec<String> {
        self.reload(false);
        self.problems.clone()
    }

    /// Whether the store can be used now (re-read if it changed).
    pub fn check(&mut self) -> Result<(), Broken> {
        self.reload(false);
        match self.problems.is_empty() {
            true => Ok(()),
            false => Err(Broken {
                file: self.path.clone(),
                problems: self.problems.clone(),
            }),
        }
    }

    /// The fingerprint pinned for `id`; none while the store is broken.
    /// (The link decides from a [`Pins`] snapshot instead.)
    #[cfg(test)]
    pub fn get(&mut self, id: &str) -> Option<Fingerprint> {
        self.check().ok()?;
        self.pins().find(|p| p.id == id).map(|p| p.fingerprint)
    }

    /// Every pin.
    pub fn list(&mut self) -> Result<Vec<Pin>, Broken> {
        self.check()?;
        Ok(self.pins().cloned().collect())
    }

    fn pins(&self) -> impl Iterator<Item = &Pin> {
        self.lines.iter().filter_map(|l| match l {
            Line::Pin(p) => Some(p),
            Line::Other(_) => None,
        })
    }

    /// A broken store is never written: the error says why.
    fn writable(&mut self) -> Result<(), WriteError> {
        Ok(self.check()?)
    }

    /// Pins `fp` for `id` unless a pin for `id` exists by now: first
    /// contact (`--trust tofu`) never overwrites a pin added meanwhile,
    /// by hand or otherwise.
    pub fn pin_first(
        &mut self,
        id: &str,
        fp: Fingerprint,
        comment: &str,
    ) -> Result<FirstPin, WriteError> {
        self.writable()?;
        let pinned = self.pins().find(|p| p.id == id).map(|p| p.fingerprint);
        match pinned {
            Some(pinned) if pinned == fp => Ok(FirstPin::AlreadyPinned),
            Some(pinned) => Ok(FirstPin::Conflict(pinned)),
            None => {
                self.set(id, fp, Some(comment.to_string()))?;
                Ok(FirstPin::Added)
            }
        }
    }

    /// Pins `fp` for `id`, replacing any pin; returns the one replaced.
    pub fn set(
        &mut self,
        id: &str,
        fp: Fingerprint,
        comment: Option<String>,
    ) -> Result<(Pin, Option<Fingerprint>), WriteError> {
        self.writable()?;
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
    pub fn remove(&mut self, id: &str) -> Result<bool, WriteError> {
        self.writable()?;
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
    fn write(&mut self, lines: Vec<Line>) -> Result<(), WriteError> {
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
        let failed = |e: std::io::Error| WriteError::Io {
            file: self.path.clone(),
            message: e.to_string(),
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(failed)?;
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
        result.map_err(failed)?;
        self.reload(true);
        Ok(())
    }

    /// Re-reads the file if it changed since it was read (or with `force`).
    fn reload(&mut self, force: bool) {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.stamp.is_some() || !self.lines.is_empty() || !self.problems.is_empty() {
                    self.reads += 1;
                }
                self.stamp = None;
                self.lines.clear();
                self.problems.clear();
                return;
            }
            Err(e) => {
                let why = vec![format!("cannot read it: {e}")];
                if self.problems != why {
                    self.reads += 1;
                }
                self.lines.clear();
                self.stamp = None;
                self.problems = why;
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
        self.reads += 1;
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
                    self.problems.push(format!("cannot read it: {e}"));
                }
            }
        }
        for p in &self.problems {
            tracing::error!(file = %self.path.display(), "trust store broken, every pairing refused until it is fixed: {p}");
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
            "it is writable by other users (owner uid {}, mode {:o}): chmod 600 {} and make it ours",
            meta.uid(),
            meta.mode() & 0o777,
            path.display()
        ));
    }
    let dir = path.parent()?;
    match std::fs::metadata(dir) {
        Ok(d) if !owner_ok(&d) || (d.mode() & 0o022 != 0 && d.mode() & 0o1000 == 0) => {
            Some(format!(
                "it is in a directory other users can write: chmod 700 {}",
                dir.display()
            ))
        }
        _ => None,
    }
}

/// Reads the file's lines. Any line that does not parse, and a second
/// pin with another key for one ID, is a problem: the store is broken.
/// (The same pin twice is not; the second line is kept as it is.)
fn parse(text: &str) -> (Vec<Line>, Vec<String>) {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    let mut seen: std::collections::HashMap<String, (usize, Fingerprint)> = Default::default();
    for (n, raw) in text.lines().enumerate() {
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            lines.push(Line::Other(raw.to_string()));
            continue;
        }
        match parse_pin(t) {
            Ok(pin) => match seen.get(&pin.id) {
                None => {
                    seen.insert(pin.id.clone(), (n + 1, pin.fingerprint));
                    lines.push(Line::Pin(pin));
                }
                Some((_, first)) if *first == pin.fingerprint => {
                    lines.push(Line::Other(raw.to_string()));
                }
                Some((at, _)) => {
                    problems.push(format!(
                        "line {}: a second key for {} (line {at} pins another)",
                        n + 1,
                        pin.id
                    ));
                    lines.push(Line::Other(raw.to_string()));
                }
            },
            Err(e) => {
                problems.push(format!("line {}: {e}", n + 1));
                lines.push(Line::Other(raw.to_string()));
            }
        }
    }
    (lines, problems)
}

/// The first three fields (separated by any run of whitespace) and the
/// rest of the line, trimmed.
fn fields(t: &str) -> ([&str; 3], &str) {
    let mut rest = t;
    let mut out = [""; 3];
    for f in &mut out {
        rest = rest.trim_start();
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        *f = &rest[..end];
        rest = &rest[end..];
    }
    (out, rest.trim())
}

fn parse_pin(t: &str) -> Result<Pin, String> {
    let ([id, fp, added], comment) = fields(t);
    if added.is_empty() {
        return Err("expected ID FINGERPRINT ADDED [COMMENT]".into());
    }
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
        comment: Some(comment.to_string()).filter(|c| !c.is_empty()),
    })
}

#[cfg(test)]
mod tests;
