//! Carry out the Plan's `/etc` actions on the live `/etc`.
//!
//! Every replaced or removed entry is backed up first under `/var/lib/fastswitch/etc-backup/`
//! (persistent, so `fastswitch recover` can undo the changes after a power cut).
//! New content is written to a temporary name in the same directory and renamed over the old
//! one, with mode, owner and xattrs (the SELinux label among them) taken from the new default.
//! Parent directories are opened one component at a time with `O_NOFOLLOW`, so a symlink inside
//! `/etc` is never followed out of it.

use crate::diff::etc::{EtcAction, EtcActionKind};
use crate::exec::journal::EtcBackup;
use crate::system::secure_write::{self, EntryMeta};
use anyhow::{bail, Context, Result};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Relative path inside /etc for an action path like `/etc/a/b`.
fn rel_of(path: &str) -> Result<PathBuf> {
    let rel = path
        .strip_prefix("/etc/")
        .with_context(|| format!("{path} is not under /etc"))?;
    let p = PathBuf::from(rel);
    if p.components().any(|c| !matches!(c, Component::Normal(_))) || rel.is_empty() {
        bail!("refusing /etc path {path:?}: it must be a plain relative path without `..`");
    }
    Ok(p)
}

/// Open `base/rel`'s parent directory without following any symlink on the way.
fn open_parent_nofollow(base: &Path, rel: &Path) -> Result<OwnedFd> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    let mut fd: OwnedFd = std::fs::File::open(base)
        .with_context(|| format!("opening {}", base.display()))?
        .into();
    let parent = rel.parent().unwrap_or(Path::new(""));
    let mut walked = base.to_path_buf();
    for comp in parent.components() {
        walked.push(comp);
        fd = openat(&fd, comp.as_os_str(), flags, Mode::empty()).with_context(|| {
            format!(
                "opening {} (a symlink or non-directory in /etc is not followed)",
                walked.display()
            )
        })?;
    }
    Ok(fd)
}

fn fd_path(fd: &OwnedFd, name: &std::ffi::OsStr) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())).join(name)
}

/// Copy `src` (file, dir or symlink; never followed) to `dst` with its owner, mode and xattrs.
/// No one but root can read the copy before it has them (see [`secure_write`]): `/etc` holds
/// secrets (`shadow`, keys), and so do the backups.
fn copy_entry(src: &Path, dst: &Path) -> Result<()> {
    let meta = EntryMeta::of(src)?;
    let ft = std::fs::symlink_metadata(src)
        .with_context(|| format!("stat {}", src.display()))?
        .file_type();
    // The parent is `/proc/self/fd/N` (opened without following symlinks), a directory this
    // copy made, or one under the private backup directory: followed as it is.
    let parent_path = dst.parent().context("copy target has no parent")?;
    let parent: OwnedFd = std::fs::File::open(parent_path)
        .with_context(|| format!("opening {}", parent_path.display()))?
        .into();
    let name = dst.file_name().context("copy target has no file name")?;
    if ft.is_symlink() {
        let t = std::fs::read_link(src).with_context(|| format!("readlink {}", src.display()))?;
        secure_write::create_symlink_at(&parent, name, &t, &meta)
    } else if ft.is_dir() {
        secure_write::create_dir_at(&parent, name, &meta)
    } else if ft.is_file() {
        let mut inp = crate::system::files::open_regular(src, crate::system::files::Follow::No)?;
        secure_write::write_file_at(&parent, name, &meta, &mut inp)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))
    } else {
        bail!(
            "{} is neither a file, a directory nor a symlink; not copied",
            src.display()
        );
    }
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    copy_entry(src, dst)?;
    if std::fs::symlink_metadata(src)?.is_dir() {
        for e in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))
        }
        Ok(_) => std::fs::remove_file(p).with_context(|| format!("removing {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("stat {}", p.display())),
    }
}

/// Give directory `dst` the mode, owner and xattrs of `src`.
fn copy_dir_metadata(src: &Path, dst: &Path) -> Result<()> {
    secure_write::set_dir_meta(dst, &EntryMeta::of(src)?)
}

/// Digest of what was written (file content hash, symlink target, or "dir").
pub(crate) fn fingerprint(p: &Path) -> Option<String> {
    let m = std::fs::symlink_metadata(p).ok()?;
    if m.file_type().is_symlink() {
        return Some(format!("symlink:{}", std::fs::read_link(p).ok()?.display()));
    }
    if m.is_dir() {
        return Some("dir".into());
    }
    if !m.is_file() {
        // A FIFO, socket or device node: never opened (a FIFO would block the read).
        return Some(format!("special:{:o}:{}", m.mode(), m.rdev()));
    }
    use sha2::Digest;
    let data = crate::system::files::read(p, crate::system::files::Follow::No).ok()?;
    Some(format!(
        "sha256:{}",
        crate::discover::kernel::hex(&sha2::Sha256::digest(&data))
    ))
}

/// Copy `live` to `backup` unless a backup is already there (the first one is the original),
/// durably.
pub(crate) fn backup_once(live: &Path, backup: &Path) -> Result<()> {
    if std::fs::symlink_metadata(backup).is_ok() {
        return Ok(());
    }
    let dir = backup.parent().context("backup path has no parent")?;
    secure_write::create_dir_all_private(dir)?;
    copy_tree(live, backup)?;
    crate::exec::journal::sync_dir(dir)
}

/// Apply one action. Idempotent: re-running after a crash converges (a backup is taken only
/// once, so the original survives).
///
/// Long: `/etc` itself, then the backup, then the write or removal through a parent opened
/// without following symlinks; kept in one function so that order stays visible.
pub(crate) fn apply_action(
    etc_dir: &Path,
    new_defaults: &Path,
    backup_dir: &Path,
    action: &EtcAction,
) -> Result<Option<EtcBackup>> {
    if action.path == "/etc" {
        // Only /etc's own metadata can change (ostree's merge never replaces the directory).
        if matches!(action.action, EtcActionKind::TakeNewDefault) {
            // Not journaled: reset leaves /etc's own mode and owner as the default set them.
            copy_dir_metadata(new_defaults, etc_dir)?;
        }
        return Ok(None);
    }
    let rel = rel_of(&action.path)?;
    let name = rel.file_name().context("empty /etc path")?.to_owned();
    let replace = match action.action {
        EtcActionKind::Add | EtcActionKind::TakeNewDefault => true,
        EtcActionKind::Remove => false,
        _ => return Ok(None),
    };
    let parent = open_parent_nofollow(etc_dir, &rel).with_context(|| {
        format!(
            "{} for {}",
            action.path,
            if replace { "writing" } else { "removing" }
        )
    })?;
    let live = fd_path(&parent, &name);
    let existed = std::fs::symlink_metadata(&live).is_ok();
    let backup_path = backup_dir.join(&rel);
    let mut backup = None;
    if existed {
        backup_once(&live, &backup_path).with_context(|| format!("backing up {}", action.path))?;
        backup = Some(backup_path.clone());
    }
    if replace {
        let src = new_defaults.join(&rel);
        let tmp_name = format!(".fastswitch-tmp-{}", name.to_string_lossy());
        let tmp = fd_path(&parent, std::ffi::OsStr::new(&tmp_name));
        remove_any(&tmp)?;
        let src_is_dir = std::fs::symlink_metadata(&src)
            .with_context(|| format!("stat {}", src.display()))?
            .is_dir();
        if src_is_dir {
            // A directory default: create it (children get their own actions).
            let live_is_dir = std::fs::symlink_metadata(&live)
                .map(|m| m.is_dir())
                .unwrap_or(false);
            if live_is_dir {
                // Same directory, new mode/owner/xattrs from the default.
                copy_dir_metadata(&src, &live)?;
            } else {
                copy_entry(&src, &tmp)?;
                remove_any(&live)?;
                std::fs::rename(&tmp, &live)
                    .with_context(|| format!("renaming into {}", action.path))?;
            }
        } else {
            copy_entry(&src, &tmp)
                .with_context(|| format!("writing the new default of {}", action.path))?;
            if std::fs::symlink_metadata(&live)
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                remove_any(&live)?;
            }
            std::fs::rename(&tmp, &live)
                .with_context(|| format!("renaming the new {} into place", action.path))?;
        }
    } else {
        remove_any(&live)?;
    }
    // Make the rename (or removal) durable before the journal says it happened.
    nix::unistd::fsync(&parent)
        .with_context(|| format!("fsync the directory of {}", action.path))?;
    Ok(Some(EtcBackup {
        path: action.path.clone(),
        backup: if existed { backup } else { None },
        written: if replace { fingerprint(&live) } else { None },
    }))
}

/// Undo one recorded change: restore the backup, or remove what the apply added. An entry the
/// admin changed after the apply (fingerprint differs) is kept and returned as `Err(path)`.
pub(crate) fn restore(etc_dir: &Path, b: &EtcBackup) -> Result<std::result::Result<(), String>> {
    let rel = rel_of(&b.path)?;
    let name = rel.file_name().context("empty /etc path")?.to_owned();
    let parent = match open_parent_nofollow(etc_dir, &rel) {
        Ok(p) => p,
        Err(_) if b.backup.is_none() => return Ok(Ok(())),
        Err(e) => return Err(e),
    };
    let live = fd_path(&parent, &name);
    if let Some(src) = &b.backup {
        if std::fs::symlink_metadata(src).is_err() {
            // Journaled, but the run died before taking the backup, hence before touching
            // the live entry (the backup always comes first): nothing to undo.
            return Ok(Ok(()));
        }
    }
    let now = fingerprint(&live);
    let already_restored = match &b.backup {
        Some(src) => now.is_some() && now == fingerprint(src),
        None => now.is_none(),
    };
    if already_restored {
        // A reset interrupted after this entry: nothing left to do.
        return Ok(Ok(()));
    }
    if b.written.is_some() && now != b.written {
        return Ok(Err(b.path.clone()));
    }
    match &b.backup {
        Some(src) => {
            let tmp = fd_path(
                &parent,
                std::ffi::OsStr::new(&format!(".fastswitch-tmp-{}", name.to_string_lossy())),
            );
            remove_any(&tmp)?;
            copy_tree(src, &tmp).with_context(|| format!("restoring {}", b.path))?;
            if std::fs::symlink_metadata(&live)
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                remove_any(&live)?;
            }
            std::fs::rename(&tmp, &live).with_context(|| format!("restoring {}", b.path))?;
        }
        None => remove_any(&live)?,
    }
    nix::unistd::fsync(&parent).with_context(|| format!("fsync the directory of {}", b.path))?;
    Ok(Ok(()))
}

/// Before anything changes: every `/etc` action's parent directories must be real directories
/// (or not exist yet, when an earlier action creates them), never symlinks. A symlink in the
/// way — possibly pointing outside /etc — refuses the whole apply.
pub(crate) fn preflight(etc_dir: &Path, actions: &[EtcAction]) -> Result<()> {
    for a in actions {
        if !matches!(
            a.action,
            EtcActionKind::Add | EtcActionKind::TakeNewDefault | EtcActionKind::Remove
        ) {
            continue;
        }
        if a.path == "/etc" {
            continue;
        }
        let rel = rel_of(&a.path)?;
        let mut walked = etc_dir.to_path_buf();
        for comp in rel.parent().unwrap_or(Path::new("")).components() {
            walked.push(comp);
            match std::fs::symlink_metadata(&walked) {
                Ok(m) if m.file_type().is_symlink() => bail!(
                    "{} is a symlink (to {}); fastswitch does not follow symlinks in /etc, so it cannot apply {} there. Replace the symlink by a directory, or drop the change",
                    walked.display(),
                    std::fs::read_link(&walked).map(|t| t.display().to_string()).unwrap_or_default(),
                    a.path
                ),
                Ok(m) if !m.is_dir() => bail!(
                    "{} is not a directory, so {} cannot be applied below it",
                    walked.display(),
                    a.path
                ),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(e).with_context(|| format!("stat {}", walked.display())),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn fingerprint_never_opens_special_files() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("initctl");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let t = std::time::Instant::now();
        assert!(fingerprint(&fifo).unwrap().starts_with("special:10600:"));
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        std::fs::write(d.path().join("f"), b"x").unwrap();
        assert!(fingerprint(&d.path().join("f"))
            .unwrap()
            .starts_with("sha256:"));
    }
}
