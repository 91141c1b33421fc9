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
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
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
pub(crate) fn link_tree(src: &Path, dest: &Path) -> Result<LinkStats> {
    let tmp = dest.with_extension("tmp");
    if tmp.symlink_metadata().is_ok() {
        remove_tree(&tmp)
            .with_context(|| format!("removing the unfinished copy {}", tmp.display()))?;
    }
    let dirs = std::sync::Mutex::new(Vec::new());
    let links = AtomicU64::new(0);
    link_dir(src, &tmp, &dirs, &links)?;
    // Timestamps last: creating entries changes a directory's mtime.
    let dirs = dirs.into_inner().unwrap();
    dirs.par_iter()
        .try_for_each(|(dest, meta)| set_times(dest, meta))?;
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    Ok(LinkStats {
        dirs: dirs.len() as u64,
        links: links.into_inner(),
    })
}

type DirTimes = std::sync::Mutex<Vec<(PathBuf, std::fs::Metadata)>>;

fn link_dir(src: &Path, dest: &Path, dirs: &DirTimes, links: &AtomicU64) -> Result<()> {
    let meta = std::fs::symlink_metadata(src).with_context(|| format!("stat {}", src.display()))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dest)
        .with_context(|| format!("creating {}", dest.display()))?;
    copy_dir_metadata(src, &meta, dest)?;
    let mut subdirs = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry.with_context(|| format!("reading {}", src.display()))?;
        let from = entry.path();
        let to = dest.join(entry.file_name());
        if entry
            .file_type()
            .with_context(|| format!("stat {}", from.display()))?
            .is_dir()
        {
            subdirs.push((from, to));
        } else {
            files.push((from, to));
        }
    }
    dirs.lock().unwrap().push((dest.to_path_buf(), meta));
    let link = |(from, to): &(PathBuf, PathBuf)| {
        std::fs::hard_link(from, to)
            .with_context(|| format!("linking {} to {}", from.display(), to.display()))
    };
    if files.len() > 64 {
        files.par_iter().try_for_each(link)?;
    } else {
        files.iter().try_for_each(link)?;
    }
    links.fetch_add(files.len() as u64, Ordering::Relaxed);
    subdirs
        .par_iter()
        .try_for_each(|(from, to)| link_dir(from, to, dirs, links))
}

/// Owner (when not already ours), xattrs, mode.
fn copy_dir_metadata(src: &Path, meta: &std::fs::Metadata, dest: &Path) -> Result<()> {
    if (meta.uid(), meta.gid())
        != (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    {
        std::os::unix::fs::lchown(dest, Some(meta.uid()), Some(meta.gid()))
            .with_context(|| format!("chown {}", dest.display()))?;
    }
    match xattr::list(src) {
        Ok(names) => {
            for name in names {
                if let Some(value) = xattr::get(src, &name)
                    .with_context(|| format!("reading xattr {name:?} of {}", src.display()))?
                {
                    xattr::set(dest, &name, &value)
                        .with_context(|| format!("setting xattr {name:?} on {}", dest.display()))?;
                }
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {}
        Err(e) => {
            return Err(e).with_context(|| format!("listing xattrs of {}", src.display()));
        }
    }
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .with_context(|| format!("chmod {}", dest.display()))
}

fn set_times(dest: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    utimensat(
        nix::fcntl::AT_FDCWD,
        dest,
        &TimeSpec::new(meta.atime(), meta.atime_nsec()),
        &TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
        UtimensatFlags::NoFollowSymlink,
    )
    .with_context(|| format!("setting the timestamps of {}", dest.display()))
}

/// `rm -rf`, in parallel on the current rayon pool.
pub(crate) fn remove_tree(dir: &Path) -> Result<()> {
    let mut subdirs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let path = entry.path();
        if entry
            .file_type()
            .with_context(|| format!("stat {}", path.display()))?
            .is_dir()
        {
            subdirs.push(path);
        } else {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    subdirs.par_iter().try_for_each(|d| remove_tree(d))?;
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
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

/// Remove the live trees no mount shows any more (`in_use`: mountinfo `root` fields of the
/// mounts in PID 1's namespace). Processes that still run files of a removed tree keep them:
/// an unlinked file lives until its last user closes it. Returns the removed directories.
pub(crate) fn remove_unused(sysroot: &Path, in_use: &[String]) -> Result<Vec<PathBuf>> {
    let dir = live_dir(sysroot);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut unused = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
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
        let dest = t.path().join("dest");
        let stats = link_tree(&src, &dest).unwrap();
        assert_eq!(stats, LinkStats { dirs: 3, links: 4 });
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
        let removed =
            remove_unused(sysroot, &["/ostree/fastswitch/live/aaa.0/usr".to_string()]).unwrap();
        assert_eq!(removed, vec![live_dir(sysroot).join("ccc.0")]);
        assert!(live_usr(sysroot, "aaa.0").join("bin/x").exists());
    }
}
