//! Changes to ostree's runtime state files that fastswitch makes on the admin's explicit request.

use crate::discover::{state, HostPaths};
use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

/// Unlock finalization of the staged deployment, as `ostree admin lock-finalization --unlock`
/// (`ostree_sysroot_change_finalization()`) does: rewrite `<run>/ostree/staged-deployment` with
/// `locked` false (every other key kept, GVariant re-encoded), replacing it atomically, then
/// remove the legacy `staged-deployment-locked` file. `ostree-finalize-staged.service` then
/// finalizes it at shutdown (or when fastswitch starts it for a kexec).
pub fn unlock_finalization(paths: &HostPaths) -> Result<()> {
    let staged = paths.staged_file();
    let bytes = super::files::read(&staged, super::files::Follow::Yes)
        .with_context(|| format!("reading {}", staged.display()))?;
    let new = state::with_locked(&bytes, false)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("rewriting {}", staged.display()))?;
    replace_run_file(&staged, &new)?;
    let legacy = paths.staged_locked_file();
    match std::fs::remove_file(&legacy) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", legacy.display())),
    }
}

/// Replace a small runtime state file atomically (temp file in the same directory, fsync,
/// rename), mode 0644 like ostree's own.
pub(crate) fn replace_run_file(path: &std::path::Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.fastswitch-tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
