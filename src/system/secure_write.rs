//! Creating files and directories so that no one but their final owner can read a byte of
//! them, at any moment.
//!
//! A regular file is written into an anonymous `O_TMPFILE` in its target directory (no one can
//! open it by path), given its final owner, security xattrs and mode on the descriptor, fsynced,
//! and only then linked under a random name (`linkat` of `/proc/self/fd/N`) and renamed over the
//! target — like libglnx's `glnx_file_copy_at`, which ostree's own copies use. Where the
//! filesystem has no `O_TMPFILE`, the file is created under a random name with mode 0 and
//! `O_EXCL`, so that no one but root can open it until the last step gives it its final mode.
//!
//! The order on the descriptor is: content, `fchown`, xattrs, `fchmod`. `fchown` clears
//! `security.capability`, and writing content into a file clears it too, so the xattrs come
//! after both; the mode comes last so a named (fallback) file stays mode 0 until it has its
//! final owner and label.
//!
//! Directories are created `0700` (owned by root, so no one else can enter them), then given
//! their owner, xattrs and mode. Symlinks carry no secret and are created directly.
//!
//! fastswitch's own state directories (`/run/fastswitch`, `/var/lib/fastswitch`) are `0700`
//! and the files in them `0600` ([`private_dir`], [`write_private_file`]).

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, Mode, OFlags};
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The owner, mode and xattrs an entry gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryMeta {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Permission bits, including setuid/setgid/sticky (`& 0o7777`).
    pub(crate) mode: u32,
    /// Extended attributes (the SELinux label among them).
    pub(crate) xattrs: Vec<(OsString, Vec<u8>)>,
}

impl EntryMeta {
    /// The owner, mode and xattrs of `path` (not followed if it is a symlink; a symlink's
    /// xattrs are not read).
    pub(crate) fn of(path: &Path) -> Result<EntryMeta> {
        let m =
            std::fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
        let xattrs = if m.file_type().is_symlink() {
            Vec::new()
        } else {
            read_xattrs(path)?
        };
        Ok(EntryMeta {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
            xattrs,
        })
    }

    /// Owned by this process's effective user and group, with `mode`, no xattrs.
    pub(crate) fn private(mode: u32) -> EntryMeta {
        EntryMeta {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mode,
            xattrs: Vec::new(),
        }
    }
}

fn read_xattrs(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing xattrs of {}", path.display())),
    };
    let mut out = Vec::new();
    for name in names {
        if let Some(v) = xattr::get(path, &name)
            .with_context(|| format!("reading xattr {:?} of {}", name, path.display()))?
        {
            out.push((name, v));
        }
    }
    Ok(out)
}

/// Open a directory (the last component is not followed if it is a symlink).
pub(crate) fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening directory {}", path.display()))
}

/// A name no one else uses in `dir`: `.fastswitch-<pid>-<counter>-<time>`.
fn temp_name() -> OsString {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    OsString::from(format!(
        ".fastswitch-{}-{}-{:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos
    ))
}

fn describe(dir: &impl AsFd, name: &OsStr) -> String {
    let d = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd()))
        .unwrap_or_else(|_| PathBuf::from("?"));
    d.join(name).display().to_string()
}

/// Give an open entry its owner, xattrs and then its mode.
fn set_meta(fd: &OwnedFd, meta: &EntryMeta, what: &dyn Fn() -> String) -> Result<()> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(meta.uid)),
        Some(rustix::fs::Gid::from_raw(meta.gid)),
    )
    .with_context(|| format!("chown {}", what()))?;
    for (name, value) in &meta.xattrs {
        rustix::fs::fsetxattr(fd, name.as_os_str(), value, rustix::fs::XattrFlags::empty())
            .with_context(|| format!("setting xattr {:?} on {}", name, what()))?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777))
        .with_context(|| format!("chmod {}", what()))
}

/// Write `name` in `dir` with `content` and `meta`, atomically replacing whatever file or symlink
/// was there; no one but root can open the new file before it has its final owner, xattrs and
/// mode. Not durable by itself: fsync `dir` to make the rename survive a power cut.
pub(crate) fn write_file_at(
    dir: &impl AsFd,
    name: &OsStr,
    meta: &EntryMeta,
    content: &mut dyn Read,
) -> Result<()> {
    write_file_inner(dir, name, meta, content, true)
}

fn write_file_inner(
    dir: &impl AsFd,
    name: &OsStr,
    meta: &EntryMeta,
    content: &mut dyn Read,
    try_tmpfile: bool,
) -> Result<()> {
    let what = || describe(dir, name);
    let flags = OFlags::WRONLY | OFlags::CLOEXEC;
    let anonymous = if try_tmpfile {
        rustix::fs::openat(dir, ".", flags | OFlags::TMPFILE, Mode::empty())
    } else {
        Err(rustix::io::Errno::OPNOTSUPP)
    };
    let (fd, named) = match anonymous {
        Ok(fd) => (fd, None),
        // No O_TMPFILE on this filesystem (or kernel): a named file only root can open.
        Err(e)
            if e == rustix::io::Errno::OPNOTSUPP
                || e == rustix::io::Errno::ISDIR
                || e == rustix::io::Errno::INVAL =>
        {
            let tmp = temp_name();
            let fd = rustix::fs::openat(
                dir,
                tmp.as_os_str(),
                flags | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
                Mode::empty(),
            )
            .with_context(|| format!("creating a temporary file for {}", what()))?;
            (fd, Some(tmp))
        }
        Err(e) => {
            return Err(e).with_context(|| format!("creating a temporary file for {}", what()))
        }
    };
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::from(fd.try_clone()?);
        std::io::copy(content, &mut f).with_context(|| format!("writing {}", what()))?;
        f.flush()?;
        set_meta(&fd, meta, &what)?;
        rustix::fs::fsync(&fd).with_context(|| format!("fsync {}", what()))?;
        Ok(())
    })();
    let tmp = match (result, named) {
        (Ok(()), Some(tmp)) => tmp,
        (Err(e), Some(tmp)) => {
            let _ = rustix::fs::unlinkat(dir, tmp.as_os_str(), AtFlags::empty());
            return Err(e);
        }
        (Err(e), None) => return Err(e),
        (Ok(()), None) => {
            // Link the anonymous file under a fresh name, then rename it over the target.
            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH (root has it); /proc/self/fd works for
            // anyone but needs /proc.
            let tmp = temp_name();
            rustix::fs::linkat(&fd, "", dir, tmp.as_os_str(), AtFlags::EMPTY_PATH)
                .or_else(|_| {
                    rustix::fs::linkat(
                        rustix::fs::CWD,
                        format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
                        dir,
                        tmp.as_os_str(),
                        AtFlags::SYMLINK_FOLLOW,
                    )
                })
                .with_context(|| format!("linking {} into place", what()))?;
            tmp
        }
    };
    rustix::fs::renameat(dir, tmp.as_os_str(), dir, name).map_err(|e| {
        let _ = rustix::fs::unlinkat(dir, tmp.as_os_str(), AtFlags::empty());
        anyhow::Error::new(e).context(format!("renaming into {}", what()))
    })
}

/// Create directory `name` in `dir` (it must not exist) with `meta`: made `0700`, then given its
/// owner, xattrs and mode.
pub(crate) fn create_dir_at(dir: &impl AsFd, name: &OsStr, meta: &EntryMeta) -> Result<()> {
    let what = || describe(dir, name);
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))
        .with_context(|| format!("mkdir {}", what()))?;
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", what()))?;
    set_meta(&fd, meta, &what)
}

/// Give the existing directory `path` (not followed if a symlink) `meta`'s owner, xattrs and
/// mode; while it changes, its mode is never looser than both the old and the new one.
pub(crate) fn set_dir_meta(path: &Path, meta: &EntryMeta) -> Result<()> {
    let fd = open_dir(path)?;
    let old = rustix::fs::fstat(&fd).with_context(|| format!("stat {}", path.display()))?;
    let both = old.st_mode & meta.mode & 0o7777;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(both))
        .with_context(|| format!("chmod {}", path.display()))?;
    set_meta(&fd, meta, &|| path.display().to_string())
}

/// Create symlink `name` → `target` in `dir` (it must not exist), owned by `meta`'s user and
/// group.
pub(crate) fn create_symlink_at(
    dir: &impl AsFd,
    name: &OsStr,
    target: &Path,
    meta: &EntryMeta,
) -> Result<()> {
    let what = || describe(dir, name);
    rustix::fs::symlinkat(target, dir, name).with_context(|| format!("symlink {}", what()))?;
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(meta.uid)),
        Some(rustix::fs::Gid::from_raw(meta.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .with_context(|| format!("chown {}", what()))
}

/// Make `path` a directory that only this user can enter (`0700`, owned by the effective
/// user), creating it (and missing parents, with the default mode) if needed. An existing
/// directory with another owner or a looser mode is fixed, and that is reported on stderr. A
/// symlink is refused.
pub(crate) fn private_dir(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    match rustix::fs::mkdir(path, Mode::from_raw_mode(0o700)) {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    }
    let fd = open_dir(path).with_context(|| {
        format!(
            "{} must be a directory (fastswitch does not follow a symlink there)",
            path.display()
        )
    })?;
    let st = rustix::fs::fstat(&fd).with_context(|| format!("stat {}", path.display()))?;
    let me = EntryMeta::private(0o700);
    if st.st_uid != me.uid || st.st_gid != me.gid {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(me.uid)),
            Some(rustix::fs::Gid::from_raw(me.gid)),
        )
        .with_context(|| format!("chown {}", path.display()))?;
        eprintln!(
            "fastswitch: {} was owned by {}:{}; changed to {}:{}",
            path.display(),
            st.st_uid,
            st.st_gid,
            me.uid,
            me.gid
        );
    }
    let mode = st.st_mode & 0o7777;
    if mode != 0o700 {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))
            .with_context(|| format!("chmod {}", path.display()))?;
        // A freshly made directory under a restrictive umask is not worth a report.
        if mode & !0o700 != 0 {
            eprintln!(
                "fastswitch: {} had mode {mode:04o}; tightened to 0700",
                path.display()
            );
        }
    }
    Ok(())
}

/// Create `path` and its missing parents as directories with mode `0700` (existing ones are
/// left as they are).
pub(crate) fn create_dir_all_private(path: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all_private(parent)?;
    }
    match rustix::fs::mkdir(path, Mode::from_raw_mode(0o700)) {
        Ok(()) => {
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .with_context(|| format!("chmod {}", path.display()))
        }
        Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// Replace `path` with `data`, mode `0600`, in a [`private_dir`], atomically and durably (the
/// file, then the directory, are fsynced).
pub(crate) fn write_private_file(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().context("state path has no parent")?;
    let name = path.file_name().context("state path has no file name")?;
    private_dir(dir)?;
    let dfd = open_dir(dir)?;
    write_file_at(&dfd, name, &EntryMeta::private(0o600), &mut &data[..])?;
    rustix::fs::fsync(&dfd).with_context(|| format!("fsync {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn file_gets_content_mode_and_replaces_the_target() {
        let d = tempfile::tempdir().unwrap();
        let dfd = open_dir(d.path()).unwrap();
        let target = d.path().join("secret");
        std::fs::write(&target, "old").unwrap();
        let meta = EntryMeta::private(0o600);
        write_file_at(&dfd, OsStr::new("secret"), &meta, &mut &b"new secret"[..]).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new secret");
        assert_eq!(mode(&target), 0o600);
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [OsString::from("secret")], "no temporary left");
        // Setuid bits survive (the mode is set after the owner).
        write_file_at(
            &dfd,
            OsStr::new("suid"),
            &EntryMeta::private(0o4755),
            &mut &b"#!/bin/sh\n"[..],
        )
        .unwrap();
        assert_eq!(mode(&d.path().join("suid")), 0o4755);
    }

    #[test]
    fn without_o_tmpfile_a_mode_0_file_is_renamed() {
        let d = tempfile::tempdir().unwrap();
        let dfd = open_dir(d.path()).unwrap();
        let meta = EntryMeta::private(0o640);
        write_file_inner(&dfd, OsStr::new("k"), &meta, &mut &b"key"[..], false).unwrap();
        assert_eq!(std::fs::read(d.path().join("k")).unwrap(), b"key");
        assert_eq!(mode(&d.path().join("k")), 0o640);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn dirs_and_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let dfd = open_dir(d.path()).unwrap();
        create_dir_at(&dfd, OsStr::new("sub"), &EntryMeta::private(0o750)).unwrap();
        assert_eq!(mode(&d.path().join("sub")), 0o750);
        set_dir_meta(&d.path().join("sub"), &EntryMeta::private(0o711)).unwrap();
        assert_eq!(mode(&d.path().join("sub")), 0o711);
        create_symlink_at(
            &dfd,
            OsStr::new("l"),
            Path::new("sub"),
            &EntryMeta::private(0o777),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_link(d.path().join("l")).unwrap(),
            Path::new("sub")
        );
    }

    #[test]
    fn private_dir_is_created_and_tightened() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/state");
        private_dir(&p).unwrap();
        assert_eq!(mode(&p), 0o700);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&p).unwrap();
        assert_eq!(mode(&p), 0o700, "a looser directory is tightened");
        write_private_file(&p.join("state.json"), b"{}").unwrap();
        assert_eq!(mode(&p.join("state.json")), 0o600);
        std::os::unix::fs::symlink(&p, d.path().join("link")).unwrap();
        assert!(
            private_dir(&d.path().join("link")).is_err(),
            "symlink refused"
        );
        create_dir_all_private(&p.join("x/y")).unwrap();
        assert_eq!(mode(&p.join("x")), 0o700);
        assert_eq!(mode(&p.join("x/y")), 0o700);
    }
}
