//! File helpers shared by the client (ACL edits) and the gateway's management API (state
//! file).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// [`write_atomic`] for a secret: mode 0600 from the first byte, whatever an older file had.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_inner(path, data, 0o600, false)
}

/// Temp file in the same directory, fsync, rename over, fsync the directory: a crash leaves
/// either the old file or the new one, never a mix. Keeps the old file's permissions; a new
/// file gets `new_mode`.
pub fn write_atomic(path: &Path, data: &[u8], new_mode: u32) -> std::io::Result<()> {
    write_inner(path, data, new_mode, true)
}

fn write_inner(path: &Path, data: &[u8], new_mode: u32, keep_mode: bool) -> std::io::Result<()> {
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
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        let perms = match std::fs::metadata(path) {
            Ok(m) if keep_mode => m.permissions(),
            _ => std::fs::Permissions::from_mode(new_mode),
        };
        f.set_permissions(perms)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
