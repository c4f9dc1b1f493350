//! The ACL file behind a running client: reload (SIGHUP, file change) and runtime edits
//! (admin API, `sgw acl add|remove`) that are written back atomically.
//!
//! Edits work on the file's text, so comments and layout survive: a rule is added as a new
//! line, a removed rule's line is deleted. The new text is parsed in full before anything is
//! written; the write goes to a temporary file in the same directory, is fsynced and renamed
//! over the old one, so a crash leaves either the old file or the new one, never a mix.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::acl::{parse_rule, same_rule, Acl, AclError};
use crate::config::Policy;

#[derive(Debug, thiserror::Error)]
pub enum AclEditError {
    #[error("bad rule: {0}")]
    BadRule(#[from] crate::acl::RuleError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Acl(#[from] AclError),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// What identifies a file version without reading it: changed by any write or rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
    })
}

pub struct AclFile {
    path: PathBuf,
    policy: Policy,
    /// Serialises edits and remembers the version last loaded or written.
    seen: Mutex<Option<Stamp>>,
}

impl AclFile {
    pub fn new(path: PathBuf, policy: Policy) -> AclFile {
        let seen = Mutex::new(stamp(&path));
        AclFile { path, policy, seen }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the file as it is now.
    pub fn load(&self) -> Result<Acl, AclError> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        *seen = stamp(&self.path);
        Acl::load(&self.path, self.policy)
    }

    /// True once if the file changed since it was last loaded or written here.
    pub fn changed(&self) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamp(&self.path);
        if now != *seen && now.is_some() {
            *seen = now;
            return true;
        }
        false
    }

    /// Inserts `rule` before line `before` (1-based), or appends it. Returns the new rule set
    /// and the rule's line.
    pub fn add(&self, rule: &str, before: Option<usize>) -> Result<(Acl, usize), AclEditError> {
        let rule = rule.trim();
        parse_rule(rule)?;
        self.edit(|lines| {
            let at = match before {
                None => lines.len(),
                Some(b) if (1..=lines.len() + 1).contains(&b) => b - 1,
                Some(b) => {
                    return Err(AclEditError::Invalid(format!(
                        "line {b} is outside the file (1..={})",
                        lines.len() + 1
                    )))
                }
            };
            lines.insert(at, rule.to_owned());
            Ok(at + 1)
        })
    }

    /// Removes the rule in force at `line`, or the first rule in force that is the same as
    /// `rule`. Returns the new rule set and the removed line.
    pub fn remove(
        &self,
        rule: Option<&str>,
        line: Option<usize>,
    ) -> Result<(Acl, usize), AclEditError> {
        let wanted = match rule {
            Some(r) => Some(parse_rule(r.trim())?),
            None => None,
        };
        let policy = self.policy;
        let file = self.path.display().to_string();
        self.edit(|lines| {
            let current = Acl::parse(&file, &lines.join("\n"), policy)?;
            let found = match (&wanted, line) {
                (_, Some(l)) => current.rule_at(l).map(|r| r.line).ok_or_else(|| {
                    AclEditError::NotFound(format!("no rule in force at line {l}"))
                })?,
                (Some(w), None) => current
                    .rules
                    .iter()
                    .find(|r| same_rule(r, w))
                    .map(|r| r.line)
                    .ok_or_else(|| {
                        AclEditError::NotFound(format!("no rule in force is `{}`", w.text))
                    })?,
                (None, None) => return Err(AclEditError::Invalid("give a rule or a line".into())),
            };
            lines.remove(found - 1);
            Ok(found)
        })
    }

    /// Reads the file, applies `f` to its lines, checks the result parses, writes it back
    /// atomically and returns the new rule set.
    fn edit(
        &self,
        f: impl FnOnce(&mut Vec<String>) -> Result<usize, AclEditError>,
    ) -> Result<(Acl, usize), AclEditError> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let io = |e: std::io::Error| AclEditError::Io {
            path: self.path.display().to_string(),
            message: e.to_string(),
        };
        let text = std::fs::read_to_string(&self.path).map_err(io)?;
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let line = f(&mut lines)?;
        let mut new_text = lines.join("\n");
        new_text.push('\n');
        let acl = Acl::parse(&self.path.display().to_string(), &new_text, self.policy)?;
        crate::fsutil::write_atomic(&self.path, new_text.as_bytes(), 0o644).map_err(io)?;
        *seen = stamp(&self.path);
        Ok((acl, line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_keep_comments_and_are_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("acl.list");
        std::fs::write(&p, "# site rules\nacl allow a:1   # a\nacl deny :22\n").unwrap();
        let f = AclFile::new(p.clone(), Policy::Deny);
        assert!(!f.changed());
        let (acl, line) = f.add("acl allow b:2", None).unwrap();
        assert_eq!((line, acl.rules.len()), (4, 3));
        let (acl, line) = f.add("acl deny b:2", Some(1)).unwrap();
        assert_eq!(line, 1);
        assert_eq!(acl.rules[0].text, "acl deny b:2");
        assert!(matches!(
            f.add("acl allow b:0", None),
            Err(AclEditError::BadRule(_))
        ));
        assert!(matches!(
            f.add("acl allow b:1", Some(99)),
            Err(AclEditError::Invalid(_))
        ));
        let (acl, line) = f.remove(Some("acl   allow a:1"), None).unwrap();
        assert_eq!((line, acl.rules.len()), (3, 3));
        assert!(matches!(
            f.remove(Some("acl allow a:1"), None),
            Err(AclEditError::NotFound(_))
        ));
        let (_, line) = f.remove(None, Some(1)).unwrap();
        assert_eq!(line, 1);
        assert!(
            matches!(f.remove(None, Some(1)), Err(AclEditError::NotFound(_))),
            "line 1 is a comment now"
        );
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text, "# site rules\nacl deny :22\nacl allow b:2\n");
        assert!(!f.changed(), "own writes are not reported as changes");
        std::fs::write(&p, "acl allow c:3\n").unwrap();
        assert!(f.changed());
        assert!(!f.changed());
        assert_eq!(f.load().unwrap().rules.len(), 1);
        // No stray temp files.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
