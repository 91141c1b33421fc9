//! fastswitch's own copy of a live target's `usr`: a tree of hardlinks to the target
//! deployment's files under `<sysroot>/ostree/fastswitch/live/<deployment>/usr`.
//!
//! Why not bind the deployment's `usr` itself: ostree owns that directory. When a newer
//! deployment is staged (`ostree admin deploy --stage`, `rpm-ostree upgrade`, `bootc upgrade`),
//! ostree deletes the previously staged deployment — and with it every file the live `/usr`
//! shows, so the running system loses `/usr` under its feet. A hardlinked copy that ostree does
//! not know about keeps the same inodes (the stale-process scan, which compares `(dev, ino)`, is
//! unaffected; no file data is copied) and survives the removal of the deployment and the
//! repository prune that follows: an unlinked object lives on as long as our link does.
//!
//! Writing there needs a writable sysroot. Hosts that mount it read-only (ostree's
//! `sysroot.readonly`, Fedora CoreOS) are handled as ostree itself handles them: the work runs in
//! a thread with its own mount namespace, where the sysroot mount is made writable; the host's
//! mount stays read-only.

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where live trees live, below the physical sysroot.
pub(crate) fn live_dir(sysroot: &Path) -> PathBuf {
    sysroot.join("ostree/fastswitch/live")
}

/// The `usr` of the live tree for deployment `id`.
pub(crate) fn live_usr(sysroot: &Path, id: &str) -> PathBuf {
    live_dir(sysroot).join(id).join("usr")
}

/// Does the live copy of deployment `id`'s `usr` exist (complete: [`link_tree`] renames it into
/// place only when done)?
pub(crate) fn is_ready(sysroot: &Path, id: &str) -> bool {
    live_usr(sysroot, id).is_dir()
}

/// Is a mount whose mountinfo `root` is `root` a bind of a live tree's `usr`?
pub(crate) fn is_live_usr_root(root: &str) -> bool {
    root.ends_with("/usr") && root.contains("/ostree/fastswitch/live/")
}

/// What [`link_tree`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub(crate) dirs: u64,
    pub(crate) links: u64,
}

/// Run `f` on a thread pool whose threads may write to `sysroot`. When it is writable, that is
/// a plain pool. When its mount is read-only, every pool thread first unshares its mount
/// namespace (private propagation) and remounts the sysroot read-write there, as ostree does for
/// its own writes; the host's mount stays read-only. Parallel because linking or removing a
/// `/usr` of tens of thousands of entries is syscall-bound.
pub(crate) fn with_writable_sysroot<T: Send>(
    sysroot: &Path,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let st = nix::sys::statvfs::statvfs(sysroot)
        .with_context(|| format!("statvfs {}", sysroot.display()))?;
    let read_only = st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY);
    let setup_error = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
    let mut builder = rayon::ThreadPoolBuilder::new().num_threads(threads);
    if read_only {
        let sysroot = sysroot.to_path_buf();
        let slot = setup_error.clone();
        builder = builder.start_handler(move |_| {
            if let Err(e) = writable_namespace(&sysroot) {
                slot.lock().unwrap().get_or_insert(format!("{e:#}"));
            }
        });
    }
    let pool = builder
        .build()
        .context("starting the threads that write the live copy")?;
    let result = pool.install(f);
    drop(pool);
    if let Some(e) = setup_error.lock().unwrap().take() {
        bail!("{e}");
    }
    result
}

/// This thread only: a private mount namespace where `sysroot` is writable.
fn writable_namespace(sysroot: &Path) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    // CLONE_NEWNS implies CLONE_FS: only this thread moves to the new namespace.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("unshare(CLONE_NEWNS) to write to the read-only sysroot")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making the private mount namespace's mounts private")?;
    mount(
        None::<&str>,
        sysroot,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_SILENT,
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "remounting {} read-write in a private mount namespace (is the filesystem itself read-only?)",
            sysroot.display()
        )
    })
}

/// Make `dest` a copy of the tree `src` in which every non-directory is a hardlink to the file
/// in `src` (symlinks are linked, not followed) and every directory has the mode, owner,
/// extended attributes (SELinux labels) and timestamps of its original (systemd's
/// `ConditionNeedsUpdate=` reads the mtime of `/usr`). `dest` must not exist; its parent must.
/// Built under `<dest>.tmp` and renamed, so `dest` only ever appears complete. Both must be on
/// one mount (hardlinks cannot cross mounts). Runs in parallel on the current rayon pool.
///
/// Every call is relative to an open directory (`linkat`, `mkdirat`, `fchown`, `futimens`, …):
/// the kernel resolves one name per call, not the ten or so components of a path below
/// `/sysroot/ostree/deploy/<os>/deploy/<id>/usr` — which counts where syscalls are expensive
/// (a TCG guest) and tens of thousands are made.
pub(crate) fn link_tree(src: &Path, dest: &Path) -> Result<LinkStats> {
    let tmp = dest.with_extension("tmp");
    if tmp.symlink_metadata().is_ok() {
        remove_tree(&tmp)
            .with_context(|| format!("removing the unfinished copy {}", tmp.display()))?;
    }
    let src_dir =
        open_dir(rustix::fs::CWD, src).with_context(|| format!("opening {}", src.display()))?;
    rustix::fs::mkdir(&tmp, rustix::fs::Mode::from_raw_mode(0o700))
        .with_context(|| format!("creating {}", tmp.display()))?;
    let tmp_dir =
        open_dir(rustix::fs::CWD, &tmp).with_context(|| format!("opening {}", tmp.display()))?;
    let dirs = AtomicU64::new(0);
    let links = AtomicU64::new(0);
    link_dir(
        &Pair {
            src: &src_dir,
            dest: &tmp_dir,
            src_path: src,
            dest_path: &tmp,
        },
        &dirs,
        &links,
    )?;
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    Ok(LinkStats {
        dirs: dirs.into_inner(),
        links: links.into_inner(),
    })
}

/// Open a directory below `at` without following a symlink.
fn open_dir(at: impl AsFd, name: impl rustix::path::Arg) -> rustix::io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
}

/// The entries of an open directory, split into subdirectories and everything else.
fn entries(dir: &File, path: &Path) -> Result<(Vec<CString>, Vec<CString>)> {
    use rustix::fs::FileType;
    let mut subdirs = Vec::new();
    let mut others = Vec::new();
    let reading = || format!("reading {}", path.display());
    for entry in rustix::fs::Dir::read_from(dir).with_context(reading)? {
        let entry = entry.with_context(reading)?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => {
                let st = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                    .with_context(|| format!("stat {}", child(path, name).display()))?;
                FileType::from_raw_mode(st.st_mode) == FileType::Directory
            }
            _ => false,
        };
        if is_dir {
            subdirs.push(name.to_owned());
        } else {
            others.push(name.to_owned());
        }
    }
    Ok((subdirs, others))
}

fn child(dir: &Path, name: &CStr) -> PathBuf {
    dir.join(std::ffi::OsStr::from_bytes(name.to_bytes()))
}

/// An original directory and its copy, open, with their paths for messages.
struct Pair<'a> {
    src: &'a File,
    dest: &'a File,
    src_path: &'a Path,
    dest_path: &'a Path,
}

fn link_dir(p: &Pair<'_>, dirs: &AtomicU64, links: &AtomicU64) -> Result<()> {
    let st = rustix::fs::fstat(p.src).with_context(|| format!("stat {}", p.src_path.display()))?;
    copy_dir_metadata(p, &st)?;
    let (subdirs, files) = entries(p.src, p.src_path)?;
    let link = |name: &CString| {
        rustix::fs::linkat(p.src, name, p.dest, name, rustix::fs::AtFlags::empty()).with_context(
            || {
                format!(
                    "linking {} to {}",
                    child(p.src_path, name).display(),
                    child(p.dest_path, name).display()
                )
            },
        )
    };
    if files.len() > 64 {
        files.par_iter().try_for_each(link)?;
    } else {
        files.iter().try_for_each(link)?;
    }
    links.fetch_add(files.len() as u64, Ordering::Relaxed);
    subdirs.par_iter().try_for_each(|name| {
        let (src_path, dest_path) = (child(p.src_path, name), child(p.dest_path, name));
        let src = open_dir(p.src, name.as_c_str())
            .with_context(|| format!("opening {}", src_path.display()))?;
        rustix::fs::mkdirat(p.dest, name, rustix::fs::Mode::from_raw_mode(0o700))
            .with_context(|| format!("creating {}", dest_path.display()))?;
        let dest = open_dir(p.dest, name.as_c_str())
            .with_context(|| format!("opening {}", dest_path.display()))?;
        let sub = Pair {
            src: &src,
            dest: &dest,
            src_path: &src_path,
            dest_path: &dest_path,
        };
        link_dir(&sub, dirs, links)
    })?;
    // Timestamps last: creating the entries above changed this directory's mtime, and nothing
    // below it changes it any more.
    let ts = |sec: i64, nsec: i64| rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    let times = rustix::fs::Timestamps {
        last_access: ts(st.st_atime as i64, st.st_atime_nsec as i64),
        last_modification: ts(st.st_mtime as i64, st.st_mtime_nsec as i64),
    };
    rustix::fs::futimens(p.dest, &times)
        .with_context(|| format!("setting the timestamps of {}", p.dest_path.display()))?;
    dirs.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Owner (when not already ours), xattrs, mode.
fn copy_dir_metadata(p: &Pair<'_>, st: &rustix::fs::Stat) -> Result<()> {
    use xattr::FileExt;
    if (st.st_uid, st.st_gid)
        != (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    {
        rustix::fs::fchown(
            p.dest,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
        )
        .with_context(|| format!("chown {}", p.dest_path.display()))?;
    }
    match p.src.list_xattr() {
        Ok(names) => {
            for name in names {
                if let Some(value) = p.src.get_xattr(&name).with_context(|| {
                    format!("reading xattr {name:?} of {}", p.src_path.display())
                })? {
                    p.dest.set_xattr(&name, &value).with_context(|| {
                        format!("setting xattr {name:?} on {}", p.dest_path.display())
                    })?;
                }
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {}
        Err(e) => {
            return Err(e).with_context(|| format!("listing xattrs of {}", p.src_path.display()));
        }
    }
    rustix::fs::fchmod(p.dest, rustix::fs::Mode::from_raw_mode(st.st_mode & 0o7777))
        .with_context(|| format!("chmod {}", p.dest_path.display()))
}

/// `rm -rf`, in parallel on the current rayon pool, relative to open directories as
/// [`link_tree`].
pub(crate) fn remove_tree(dir: &Path) -> Result<()> {
    let fd =
        open_dir(rustix::fs::CWD, dir).with_context(|| format!("opening {}", dir.display()))?;
    remove_contents(&fd, dir)?;
    drop(fd);
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}

fn remove_contents(dir: &File, path: &Path) -> Result<()> {
    use rustix::fs::AtFlags;
    let (subdirs, others) = entries(dir, path)?;
    let unlink = |name: &CString| {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())
            .with_context(|| format!("removing {}", child(path, name).display()))
    };
    if others.len() > 64 {
        others.par_iter().try_for_each(unlink)?;
    } else {
        others.iter().try_for_each(unlink)?;
    }
    subdirs.par_iter().try_for_each(|name| {
        let sub_path = child(path, name);
        let sub = open_dir(dir, name.as_c_str())
            .with_context(|| format!("opening {}", sub_path.display()))?;
        remove_contents(&sub, &sub_path)?;
        drop(sub);
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
            .with_context(|| format!("removing {}", sub_path.display()))
    })
}

/// Make sure the live tree `usr` (a [`live_usr`] path) exists, linking it from
/// `deployment_usr` if needed. Returns `None` when it already existed (an earlier run made it).
pub(crate) fn ensure(
    sysroot: &Path,
    usr: &Path,
    deployment_usr: &Path,
) -> Result<Option<LinkStats>> {
    if usr.is_dir() {
        return Ok(None);
    }
    if !deployment_usr.is_dir() {
        bail!(
            "{} is not a directory: the target deployment is gone (was a newer one staged?); re-run `fastswitch apply-live` to plan again",
            deployment_usr.display()
        );
    }
    let parent = usr.parent().expect("live_usr has a parent").to_path_buf();
    with_writable_sysroot(sysroot, || {
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        link_tree(deployment_usr, usr).map(Some)
    })
}

/// Commit the filesystem holding `sysroot`'s live copies (`syncfs`). `prepare` calls it after
/// linking a copy: its tens of thousands of new links are metadata the filesystem has yet to
/// commit, and the next `fsync` anyone makes commits them with its own, which would be the
/// first durable journal write of an `apply-live` run seconds later. Done at staging, nobody
/// waits for it.
pub(crate) fn commit(sysroot: &Path) -> Result<()> {
    let dir =
        std::fs::File::open(sysroot).with_context(|| format!("opening {}", sysroot.display()))?;
    rustix::fs::syncfs(&dir)
        .map_err(std::io::Error::from)
        .with_context(|| format!("syncfs {}", sysroot.display()))
}

/// The repository ref that keeps a composefs live target's objects: ostree's cleanup prunes
/// every object no ref and no deployment reaches, and a composefs `/usr` reads its files'
/// contents from the repository's objects by path, when a file is opened. Without the ref,
/// staging a newer deployment (which deletes the previously staged one) would prune the files
/// only the live target has, under the running system. A plain live `/usr` needs none: its
/// hardlinked copy keeps the data (see the module documentation).
pub(crate) const LIVE_REF: &str = "fastswitch/live";

/// `<sysroot>/ostree/repo/refs/heads/fastswitch/live`.
pub(crate) fn live_ref_path(sysroot: &Path) -> PathBuf {
    sysroot.join("ostree/repo/refs/heads").join(LIVE_REF)
}

/// Point the [`LIVE_REF`] at `commit`, written as ostree writes a ref (the checksum and a
/// newline, replaced atomically by a rename), in a writable view of a read-only sysroot.
pub(crate) fn pin_commit(sysroot: &Path, commit: &str) -> Result<()> {
    if commit.is_empty() || !commit.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!("{commit:?} is not an ostree commit checksum; not pinning it");
    }
    let path = live_ref_path(sysroot);
    if std::fs::read_to_string(&path).is_ok_and(|c| c.trim() == commit) {
        return Ok(());
    }
    let dir = path.parent().expect("the ref has a parent").to_path_buf();
    with_writable_sysroot(sysroot, || {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(".live.tmp");
        std::fs::write(&tmp, format!("{commit}\n"))
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming into {}", path.display()))
    })
    .with_context(|| format!("pinning commit {commit} with the ref {LIVE_REF}"))
}

/// Remove the [`LIVE_REF`]; returns its path when there was one.
pub(crate) fn unpin(sysroot: &Path) -> Result<Option<PathBuf>> {
    let path = live_ref_path(sysroot);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    with_writable_sysroot(sysroot, || {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        // ostree lists refs by walking refs/heads; an empty directory is harmless, but leave none.
        let _ = std::fs::remove_dir(path.parent().expect("the ref has a parent"));
        Ok(())
    })?;
    Ok(Some(path))
}

/// Remove the live trees no mount shows any more (`in_use`: mountinfo `root` fields of the
/// mounts in PID 1's namespace), except those of the deployments in `keep` (`<checksum>.<serial>`:
/// the copy `fastswitch prepare` made for the staged deployment). Processes that still run files
/// of a removed tree keep them: an unlinked file lives until its last user closes it. Returns the
/// removed directories. When no composefs `/usr` is mounted (`composefs_live` false), the
/// [`LIVE_REF`] that kept a composefs live target's objects goes too, and its path is returned
/// with them.
pub(crate) fn remove_unused(
    sysroot: &Path,
    in_use: &[String],
    keep: &[String],
    composefs_live: bool,
) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if !composefs_live {
        removed.extend(unpin(sysroot)?);
    }
    removed.extend(remove_unused_trees(sysroot, in_use, keep)?);
    Ok(removed)
}

fn remove_unused_trees(sysroot: &Path, in_use: &[String], keep: &[String]) -> Result<Vec<PathBuf>> {
    let dir = live_dir(sysroot);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut unused = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep.contains(&name) {
            continue;
        }
        let needle = format!("/ostree/fastswitch/live/{name}/");
        let mounted = in_use
            .iter()
            .any(|root| format!("{root}/").contains(&needle));
        if !mounted {
            unused.push(entry.path());
        }
    }
    if unused.is_empty() {
        return Ok(unused);
    }
    with_writable_sysroot(sysroot, || {
        unused
            .par_iter()
            .try_for_each(|d| remove_tree(d).with_context(|| format!("removing {}", d.display())))
    })?;
    Ok(unused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn live_usr_roots() {
        assert!(is_live_usr_root("/ostree/fastswitch/live/abc.0/usr"));
        assert!(is_live_usr_root("/root/ostree/fastswitch/live/abc.0/usr"));
        assert!(!is_live_usr_root("/ostree/deploy/os/deploy/abc.0/usr"));
        assert!(!is_live_usr_root("/ostree/fastswitch/live/abc.0/usr/lib"));
    }

    #[test]
    fn link_tree_shares_inodes_and_keeps_directory_metadata() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("lib/sub")).unwrap();
        std::fs::write(src.join("lib/a.so"), b"a").unwrap();
        std::fs::write(src.join("lib/sub/b"), b"b").unwrap();
        std::os::unix::fs::symlink("lib/a.so", src.join("link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", src.join("dangling")).unwrap();
        std::fs::set_permissions(src.join("lib"), std::fs::Permissions::from_mode(0o750)).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::open(&src)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(old))
            .unwrap();
        // many files in one directory (linked in parallel), an xattr and (as root) an owner
        for i in 0..100 {
            std::fs::write(src.join(format!("lib/sub/f{i}")), b"").unwrap();
        }
        xattr::set(src.join("lib"), "user.fastswitch-test", b"label").unwrap();
        let root = nix::unistd::geteuid().is_root();
        if root {
            std::os::unix::fs::lchown(src.join("lib/sub"), Some(1234), Some(4321)).unwrap();
        }
        let dest = t.path().join("dest");
        let stats = link_tree(&src, &dest).unwrap();
        assert_eq!(
            stats,
            LinkStats {
                dirs: 3,
                links: 104
            }
        );
        assert_eq!(
            xattr::get(dest.join("lib"), "user.fastswitch-test").unwrap(),
            Some(b"label".to_vec())
        );
        if root {
            let m = std::fs::metadata(dest.join("lib/sub")).unwrap();
            assert_eq!((m.uid(), m.gid()), (1234, 4321));
        }
        let ino = |p: &Path| std::fs::symlink_metadata(p).unwrap().ino();
        for rel in ["lib/a.so", "lib/sub/b", "link", "dangling"] {
            assert_eq!(ino(&src.join(rel)), ino(&dest.join(rel)), "{rel}");
        }
        assert!(std::fs::symlink_metadata(dest.join("link"))
            .unwrap()
            .file_type()
            .is_symlink());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&dest.join("lib")), 0o750);
        assert_eq!(
            std::fs::metadata(&dest).unwrap().modified().unwrap(),
            old,
            "the mtime of the top directory (ConditionNeedsUpdate= reads /usr's)"
        );
        assert!(!dest.with_extension("tmp").exists());
        // A second copy next to an unfinished one: the leftover is replaced.
        let dest2 = t.path().join("dest2");
        std::fs::create_dir_all(dest2.with_extension("tmp").join("junk")).unwrap();
        link_tree(&src, &dest2).unwrap();
        assert!(!dest2.join("junk").exists());
        // remove_tree takes a copy away and leaves the original
        remove_tree(&dest).unwrap();
        assert!(!dest.exists());
        assert_eq!(std::fs::read(src.join("lib/a.so")).unwrap(), b"a");
        assert!(src.join("lib/sub/f99").exists());
    }

    #[test]
    fn ensure_reuses_and_remove_unused_keeps_mounted_trees() {
        let t = tempfile::tempdir().unwrap();
        let sysroot = t.path();
        let dep = sysroot.join("ostree/deploy/os/deploy/aaa.0/usr");
        std::fs::create_dir_all(dep.join("bin")).unwrap();
        std::fs::write(dep.join("bin/x"), b"x").unwrap();
        let live = live_usr(sysroot, "aaa.0");
        assert!(ensure(sysroot, &live, &dep).unwrap().is_some());
        assert!(ensure(sysroot, &live, &dep).unwrap().is_none());
        let gone = sysroot.join("ostree/deploy/os/deploy/bbb.0/usr");
        let err = ensure(sysroot, &live_usr(sysroot, "bbb.0"), &gone).unwrap_err();
        assert!(format!("{err:#}").contains("bbb.0/usr"), "{err:#}");
        std::fs::create_dir_all(live_dir(sysroot).join("ccc.0/usr")).unwrap();
        std::fs::create_dir_all(live_dir(sysroot).join("ddd.0/usr")).unwrap();
        let in_use = ["/ostree/fastswitch/live/aaa.0/usr".to_string()];
        let removed = remove_unused(sysroot, &in_use, &["ddd.0".to_string()], false).unwrap();
        assert_eq!(removed, vec![live_dir(sysroot).join("ccc.0")]);
        assert!(live_usr(sysroot, "aaa.0").join("bin/x").exists());
        assert!(live_usr(sysroot, "ddd.0").is_dir(), "kept");
    }

    #[test]
    fn the_live_ref_stays_while_a_composefs_usr_is_mounted() {
        let t = tempfile::tempdir().unwrap();
        let sysroot = t.path();
        let c = "a".repeat(64);
        pin_commit(sysroot, &c).unwrap();
        let ref_path = sysroot.join("ostree/repo/refs/heads/fastswitch/live");
        assert_eq!(
            std::fs::read_to_string(&ref_path).unwrap(),
            format!("{c}\n")
        );
        pin_commit(sysroot, &c).unwrap(); // the same commit again: unchanged
        assert!(pin_commit(sysroot, "../x").is_err());
        assert!(remove_unused(sysroot, &[], &[], true).unwrap().is_empty());
        assert!(ref_path.exists(), "kept while a composefs /usr is mounted");
        assert_eq!(
            remove_unused(sysroot, &[], &[], false).unwrap(),
            vec![ref_path.clone()]
        );
        assert!(!ref_path.exists() && !ref_path.parent().unwrap().exists());
        assert!(unpin(sysroot).unwrap().is_none());
    }
}
