//! File helpers shared by the client (ACL edits), the gateway's management API (state file),
//! `sgw init` and enrollment.
//!
//! Files are written whole: a temp file in the same directory, created exclusively (never
//! through a symlink) with its final mode, owned and filled through its descriptor, then renamed
//! over the target. Nothing is changed by path after the rename, so a user who can write the
//! directory can't redirect a chmod or chown to another file.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What a new file's mode and owner should be.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// An existing file keeps its permission bits; a new one gets this mode.
    KeepOr(u32),
    /// Exactly this mode; with `own`, the directory's owner too: root writing into a directory
    /// the service user owns (the .deb's /etc/sgw) leaves files that user can read.
    Exactly { mode: u32, own: bool },
}

/// Temp file, fsync, rename over, fsync the directory: a crash leaves either the old file or
/// the new one, never a mix. Keeps the old file's permissions; a new file gets `new_mode`.
pub fn write_atomic(path: &Path, data: &[u8], new_mode: u32) -> std::io::Result<()> {
    write_inner(path, data, Mode::KeepOr(new_mode))
}

/// [`write_atomic`] with exactly `mode` from the first byte, whatever an older file had, owned
/// by the directory's owner (when we may chown: as root).
pub fn write_owned(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    write_inner(path, data, Mode::Exactly { mode, own: true })
}

/// A secret for whoever runs us: 0600 from the first byte, our owner (never handed over).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_inner(
        path,
        data,
        Mode::Exactly {
            mode: 0o600,
            own: false,
        },
    )
}

/// Gives an open file its directory's owner, best effort (only root may; others keep theirs).
pub fn own_like_dir(file: &File, dir: &Path) {
    if let (Ok(d), Ok(f)) = (std::fs::metadata(dir), file.metadata()) {
        if (d.uid(), d.gid()) != (f.uid(), f.gid()) {
            let _ = std::os::unix::fs::fchown(file, Some(d.uid()), Some(d.gid()));
        }
    }
}

fn write_inner(path: &Path, data: &[u8], mode: Mode) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let bits = match mode {
        // The file itself, not what a symlink there points at; never setuid/setgid bits.
        Mode::KeepOr(m) => std::fs::symlink_metadata(path)
            .ok()
            .filter(|old| old.file_type().is_file())
            .map_or(m, |old| old.mode() & 0o777),
        Mode::Exactly { mode, .. } => mode,
    };
    let result = (|| {
        // create_new: O_EXCL, which also refuses a symlink planted at the temp name.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(bits)
            .open(&tmp)?;
        // The umask may have taken bits away; set them on the descriptor, before any data.
        f.set_permissions(std::fs::Permissions::from_mode(bits))?;
        if matches!(mode, Mode::Exactly { own: true, .. }) {
            own_like_dir(&f, &dir);
        }
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_ok() {
        // Durability of the rename, best effort: the new file is in place either way, so an
        // error here must not make a caller undo what is already on disk.
        let _ = File::open(&dir).and_then(|d| d.sync_all());
    }
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_replaces_a_looser_file_and_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        // A symlink at the target is replaced, and what it pointed at is untouched.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("ca.pem");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write_owned(&link, b"pem", 0o644).unwrap();
        assert!(!std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::metadata(&victim).unwrap().mode() & 0o777, 0o640);
        // write_atomic keeps an existing file's mode.
        let acl = dir.path().join("acl.list");
        std::fs::write(&acl, "x").unwrap();
        std::fs::set_permissions(&acl, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&acl, b"y", 0o644).unwrap();
        assert_eq!(std::fs::metadata(&acl).unwrap().mode() & 0o777, 0o640);
    }
}
