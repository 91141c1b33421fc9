//! Mount operations: the atomic read-only bind of a deployment's `usr` over `/usr`, its undo,
//! entering PID 1's mount namespace, and reading mountinfo.
//!
//! The swap uses the new mount API: `open_tree(OPEN_TREE_CLONE)` makes a detached copy of the
//! source mount, `mount_setattr(MOUNT_ATTR_RDONLY)` makes it read-only while still detached, and
//! one `move_mount` attaches it over `/usr`. Nobody can observe a half-swapped or writable tree.

use super::proc_text::unescape_octal;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

// Kernel ABI constants (include/uapi/linux/mount.h, fcntl.h).
const OPEN_TREE_CLONE: libc::c_uint = 0x1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
/// Linux ≥ 6.5: attach beneath the top mount of the target (include/uapi/linux/mount.h).
const MOVE_MOUNT_BENEATH: libc::c_uint = 0x200;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const AT_EMPTY_PATH: libc::c_uint = 0x1000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .with_context(|| format!("path {} contains a NUL byte", p.display()))
}

fn last_err(what: &str, p: &Path) -> anyhow::Error {
    anyhow::Error::new(std::io::Error::last_os_error()).context(format!("{what} {}", p.display()))
}

/// `open_tree(AT_FDCWD, source, OPEN_TREE_CLONE)`: a detached bind mount of `source`.
#[allow(unsafe_code)]
fn open_tree_clone(source: &Path) -> Result<OwnedFd> {
    let c = cpath(source)?;
    // SAFETY: c is a valid NUL-terminated string for the duration of the call; the return value
    // is checked and, when non-negative, is a new file descriptor we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_err("open_tree(OPEN_TREE_CLONE)", source));
    }
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH, attr)` on a detached clone of `what`.
#[allow(unsafe_code)]
fn mount_setattr(fd: &OwnedFd, attr: &MountAttr, name: &str, what: &Path) -> Result<()> {
    // SAFETY: the empty path literal is NUL-terminated, attr lives across the call and its size
    // is passed; fd is a valid descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            AT_EMPTY_PATH,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(last_err(
            &format!("mount_setattr({name}) on the clone of"),
            what,
        ));
    }
    Ok(())
}

/// Make a detached clone read-only (`MOUNT_ATTR_RDONLY`).
fn set_readonly(fd: &OwnedFd, what: &Path) -> Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    mount_setattr(fd, &attr, "MOUNT_ATTR_RDONLY", what)
}

/// `move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`.
fn move_mount_to(fd: &OwnedFd, target: &Path) -> Result<()> {
    move_mount_flags(fd, target, 0)
        .map_err(|e| anyhow::Error::new(e).context(format!("move_mount onto {}", target.display())))
}

/// `move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH | extra)`; the raw errno.
#[allow(unsafe_code)]
fn move_mount_flags(
    fd: &OwnedFd,
    target: &Path,
    extra: libc::c_uint,
) -> std::result::Result<(), std::io::Error> {
    let c = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: both strings are NUL-terminated and live across the call; fd is valid.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | extra,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

const MS_PRIVATE: u64 = 1 << 18;

/// Make a detached clone private (`MS_PRIVATE`), so it joins no peer group when attached:
/// submounts made below it never propagate back.
fn set_private(fd: &OwnedFd, what: &Path) -> Result<()> {
    let attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: MS_PRIVATE,
        userns_fd: 0,
    };
    mount_setattr(fd, &attr, "MS_PRIVATE", what)
}

/// A private, detached clone of `source` attached at `target`, read-only if asked.
fn attach_private_clone(source: &Path, target: &Path, read_only: bool) -> Result<()> {
    let fd = open_tree_clone(source)?;
    set_private(&fd, source)?;
    if read_only {
        set_readonly(&fd, source)?;
    }
    move_mount_to(&fd, target)
}

/// The target deployment laid out at `/run/nextroot` the way ostree-prepare-root mounts a
/// deployment as `/`, for systemd's soft-reboot to switch into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextRoot {
    /// `/run/nextroot`.
    pub dir: PathBuf,
    /// The deployment directory (becomes `/`; its `etc` is the deployment's merged `/etc`).
    pub deployment: PathBuf,
    /// The stateroot's `var` (becomes `/var`).
    pub var: PathBuf,
    /// The physical sysroot (becomes `/sysroot`).
    pub sysroot: PathBuf,
    /// The boot directory, bound at `/boot` only when it lives on the root filesystem (as
    /// ostree-prepare-root does); a boot partition is mounted by the new userspace from fstab.
    pub boot: Option<PathBuf>,
    /// On a composefs root, the deployment's image: `/` is then that image mounted as
    /// ostree-prepare-root mounts it (not the checkout), with the deployment's `etc` bound on
    /// it read-write, and no `/usr` mount of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composefs: Option<super::composefs::ComposefsImage>,
}

/// One line of mountinfo that matters to us.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    pub mount_id: i32,
    pub(crate) parent_id: i32,
    /// Path of the mount's root inside its filesystem (e.g. `/ostree/deploy/x/deploy/<id>/usr`).
    pub(crate) root: String,
    pub mount_point: PathBuf,
    pub(crate) read_only: bool,
    pub fs_type: String,
    /// The mount source (`/dev/vda3`, `composefs`, …).
    #[serde(default)]
    pub(crate) source: String,
}

impl MountEntry {
    /// fastswitch's composefs `/usr`: the `usr` of a composefs overlay (source `composefs`),
    /// attached by itself. A composefs root shows root `/` at `/`; `ostree admin unlock`'s
    /// overlay on `/usr` has root `/` and source `overlay`.
    pub fn is_composefs_usr(&self) -> bool {
        self.fs_type == "overlay"
            && self.root == "/usr"
            && (self.source == "composefs" || self.source.starts_with("composefs:"))
    }
}

/// Parse `/proc/<pid>/mountinfo` text (pure).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            if f.len() < 6 {
                return None;
            }
            Some(MountEntry {
                mount_id: f[0].parse().ok()?,
                parent_id: f[1].parse().ok()?,
                root: unescape_octal(f[3], |_| true),
                mount_point: PathBuf::from(unescape_octal(f[4], |_| true)),
                read_only: f[5].split(',').any(|o| o == "ro"),
                fs_type: post.split(' ').next().unwrap_or("").to_owned(),
                source: unescape_octal(post.split(' ').nth(1).unwrap_or(""), |_| true),
            })
        })
        .collect()
}

/// The mounts stacked at `mount_point`, bottom first, in the caller's namespace.
pub(crate) fn mounts_at(mount_point: &Path) -> Result<Vec<MountEntry>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let all = parse_mountinfo(&text);
    Ok(stack_at(&all, mount_point))
}

/// Pure: the stack of mounts at a mount point, bottom first (each one's parent is the previous).
pub fn stack_at(all: &[MountEntry], mount_point: &Path) -> Vec<MountEntry> {
    let at: Vec<&MountEntry> = all
        .iter()
        .filter(|m| m.mount_point == mount_point)
        .collect();
    let mut stack: Vec<MountEntry> = Vec::new();
    // bottom: the one whose parent is not itself mounted at the same point
    let mut cur = at
        .iter()
        .find(|m| !at.iter().any(|p| p.mount_id == m.parent_id))
        .copied();
    // Real mountinfo has unique ids and no cycles; bound the walk anyway so malformed input
    // (duplicate ids, a mount that is its own parent) cannot loop forever.
    while let Some(m) = cur {
        if stack.len() >= at.len() {
            break;
        }
        stack.push(m.clone());
        cur = at
            .iter()
            .find(|c| c.parent_id == m.mount_id && c.mount_id != m.mount_id)
            .copied();
    }
    stack
}

/// The narrow interface the executor uses for mounts.
pub trait Mounts {
    /// Atomically make `source` (a deployment's `usr`) visible read-only at `target` (`/usr`).
    fn bind_usr(&self, source: &Path, target: &Path) -> Result<()>;
    /// Atomically make `source` visible read-only at `target` *in place of* the mount on top of
    /// it (Linux ≥ 6.5, `MOVE_MOUNT_BENEATH`): the new tree is attached beneath the top mount,
    /// then the top mount is detached, so the stack at `target` does not grow. `Ok(None)` when
    /// the kernel cannot (older than 6.5: `EINVAL`): the caller stacks instead. `Ok(Some(lazy))`
    /// when replaced; `lazy` when the old mount was busy and detached lazily.
    fn replace_usr(&self, source: &Path, target: &Path) -> Result<Option<bool>>;
    /// Mount the composefs `image` (as [`super::composefs::mount`] does, with `scratch` a
    /// private directory for the layers while they are built) and attach its `usr` read-only
    /// at `target` in one `move_mount`: on top of the stack, or with `replace` in place of the
    /// top mount as [`Mounts::replace_usr`] does (`Ok(None)`: the kernel cannot, nothing was
    /// attached). `Ok(Some(lazy))` when attached (`lazy`: the replaced mount was busy).
    fn composefs_usr(
        &self,
        image: &super::composefs::ComposefsImage,
        scratch: &Path,
        target: &Path,
        replace: bool,
    ) -> Result<Option<bool>>;
    /// Mount the next root for a soft reboot (see [`NextRoot`]). Any earlier mount at
    /// `next.dir` is detached first. Every mount is a private clone, `/usr` is read-only.
    fn prepare_nextroot(&self, next: &NextRoot) -> Result<()>;
    /// Detach everything mounted at and below `dir` (an abandoned next root).
    fn detach_tree(&self, dir: &Path) -> Result<()>;
    /// Detach the top mount at `target`; lazily (MNT_DETACH) when busy. Returns true if lazy.
    fn unmount_top(&self, target: &Path) -> Result<bool>;
    /// The mount stack at `target`, bottom first.
    fn stack(&self, target: &Path) -> Result<Vec<MountEntry>>;
    /// Make fastswitch's own hardlinked copy `dest` of a deployment's `usr` unless it exists
    /// ([`super::live_tree::ensure`]); `None` when it existed.
    fn ensure_live_usr(
        &self,
        sysroot: &Path,
        source: &Path,
        dest: &Path,
    ) -> Result<Option<super::live_tree::LinkStats>>;
    /// Remove the live copies of `usr` that no mount shows, but those of the deployments in
    /// `keep`, and the ref pinning a composefs live target when no composefs `/usr` is mounted
    /// ([`super::live_tree::remove_unused`]).
    fn remove_unused_live_trees(&self, sysroot: &Path, keep: &[String]) -> Result<Vec<PathBuf>>;
    /// Keep the objects of `commit` (a composefs live target's) from ostree's prune with a
    /// repository ref ([`super::live_tree::pin_commit`]).
    fn pin_live_commit(&self, sysroot: &Path, commit: &str) -> Result<()>;
}

/// Real syscalls in the current mount namespace.
#[derive(Debug, Default)]
pub struct RealMounts;

impl Mounts for RealMounts {
    fn bind_usr(&self, source: &Path, target: &Path) -> Result<()> {
        if !source.is_dir() {
            bail!("{} is not a directory", source.display());
        }
        let fd = open_tree_clone(source)?;
        set_readonly(&fd, source)?;
        move_mount_to(&fd, target)
    }

    fn replace_usr(&self, source: &Path, target: &Path) -> Result<Option<bool>> {
        if !source.is_dir() {
            bail!("{} is not a directory", source.display());
        }
        let fd = open_tree_clone(source)?;
        set_readonly(&fd, source)?;
        match move_mount_flags(&fd, target, MOVE_MOUNT_BENEATH) {
            Ok(()) => {}
            // Unknown flag before Linux 6.5; also the answer when nothing is mounted on target.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "move_mount(MOVE_MOUNT_BENEATH) of {} beneath {}",
                    source.display(),
                    target.display()
                )))
            }
        }
        self.unmount_top(target).map(Some)
    }

    fn composefs_usr(
        &self,
        image: &super::composefs::ComposefsImage,
        scratch: &Path,
        target: &Path,
        replace: bool,
    ) -> Result<Option<bool>> {
        let fd = super::composefs::usr_clone(image, scratch)?;
        set_readonly(&fd, &image.image)?;
        if !replace {
            move_mount_to(&fd, target)?;
            return Ok(Some(false));
        }
        match move_mount_flags(&fd, target, MOVE_MOUNT_BENEATH) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "move_mount(MOVE_MOUNT_BENEATH) of the usr of {} beneath {}",
                    image.image.display(),
                    target.display()
                )))
            }
        }
        self.unmount_top(target).map(Some)
    }

    fn prepare_nextroot(&self, next: &NextRoot) -> Result<()> {
        std::fs::create_dir_all(&next.dir)
            .with_context(|| format!("creating {}", next.dir.display()))?;
        self.detach_tree(&next.dir)?;
        let sub = |src: &Path, name: &str, ro: bool| {
            let dst = next.dir.join(name);
            attach_private_clone(src, &dst, ro)
                .with_context(|| format!("mounting {} at {}", src.display(), dst.display()))
        };
        if let Some(img) = &next.composefs {
            // As ostree-prepare-root with composefs: the image is `/`, the deployment's etc
            // is bound on it read-write; /usr is the image's.
            let scratch = next
                .dir
                .parent()
                .unwrap_or(Path::new("/"))
                .join("fastswitch/.private/nextroot-lower");
            std::fs::create_dir_all(&scratch)
                .with_context(|| format!("creating {}", scratch.display()))?;
            let root = super::composefs::mount(img, &scratch)?;
            set_private(&root, &img.image)?;
            move_mount_to(&root, &next.dir).with_context(|| {
                format!(
                    "mounting the composefs image {} at {}",
                    img.image.display(),
                    next.dir.display()
                )
            })?;
            sub(&next.deployment.join("etc"), "etc", false)?;
        } else {
            // The deployment lives inside the shared /sysroot mount: a plain bind would join
            // its peer group, and systemd's unmount of /sysroot during the soft reboot would
            // then propagate into /run/nextroot and tear its submounts down. Private clones
            // cannot.
            attach_private_clone(&next.deployment, &next.dir, false).with_context(|| {
                format!(
                    "mounting {} at {}",
                    next.deployment.display(),
                    next.dir.display()
                )
            })?;
            sub(&next.deployment.join("usr"), "usr", true)?;
        }
        sub(&next.var, "var", false)?;
        sub(&next.sysroot, "sysroot", false)?;
        if let Some(b) = &next.boot {
            sub(b, "boot", false)?;
        }
        Ok(())
    }

    fn detach_tree(&self, dir: &Path) -> Result<()> {
        use nix::mount::{umount2, MntFlags};
        // MNT_DETACH takes the whole subtree below the top mount with it.
        for _ in 0..64 {
            if mounts_at(dir)?.is_empty() {
                return Ok(());
            }
            umount2(dir, MntFlags::MNT_DETACH)
                .with_context(|| format!("umount -l {}", dir.display()))?;
        }
        bail!("{} still has mounts after 64 detaches", dir.display())
    }

    fn unmount_top(&self, target: &Path) -> Result<bool> {
        use nix::mount::{umount2, MntFlags};
        match umount2(target, MntFlags::empty()) {
            Ok(()) => Ok(false),
            Err(nix::errno::Errno::EBUSY) => {
                umount2(target, MntFlags::MNT_DETACH)
                    .with_context(|| format!("umount -l {}", target.display()))?;
                Ok(true)
            }
            Err(e) => Err(e).with_context(|| format!("umount {}", target.display())),
        }
    }

    fn ensure_live_usr(
        &self,
        sysroot: &Path,
        source: &Path,
        dest: &Path,
    ) -> Result<Option<super::live_tree::LinkStats>> {
        super::live_tree::ensure(sysroot, dest, source)
    }

    fn remove_unused_live_trees(&self, sysroot: &Path, keep: &[String]) -> Result<Vec<PathBuf>> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .context("reading /proc/self/mountinfo")?;
        let entries = parse_mountinfo(&text);
        let composefs_live = entries.iter().any(MountEntry::is_composefs_usr);
        let roots: Vec<String> = entries.into_iter().map(|m| m.root).collect();
        super::live_tree::remove_unused(sysroot, &roots, keep, composefs_live)
    }

    fn pin_live_commit(&self, sysroot: &Path, commit: &str) -> Result<()> {
        super::live_tree::pin_commit(sysroot, commit)
    }

    fn stack(&self, target: &Path) -> Result<Vec<MountEntry>> {
        mounts_at(target)
    }
}

/// Enter PID 1's mount namespace if the caller is in another one (e.g. started from a unit with
/// `PrivateMounts=`), so the swap is seen system-wide. Must run before any thread is spawned.
/// Returns whether a switch happened.
pub(crate) fn enter_pid1_mount_namespace(proc_root: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let own = proc_root.join("self/ns/mnt");
    let init = proc_root.join("1/ns/mnt");
    let a = std::fs::metadata(&own).with_context(|| format!("stat {}", own.display()))?;
    let b = std::fs::metadata(&init).with_context(|| format!("stat {}", init.display()))?;
    if (a.dev(), a.ino()) == (b.dev(), b.ino()) {
        return Ok(false);
    }
    let f = std::fs::File::open(&init).with_context(|| format!("opening {}", init.display()))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNS).context(
        "setns into PID 1's mount namespace (needs CAP_SYS_ADMIN and a single-threaded process)",
    )?;
    std::env::set_current_dir("/").context("chdir / after setns")?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 254:0 /ostree/deploy/debian/deploy/aaa.0 / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 254:0 /ostree/deploy/debian/deploy/aaa.0/usr /usr ro,relatime shared:2 - ext4 /dev/vda rw
90 23 254:0 /ostree/deploy/debian/deploy/bbb.0/usr /usr ro,relatime shared:40 - ext4 /dev/vda rw
91 22 0:5 / /dev\\040x rw - devtmpfs udev rw";

    #[test]
    fn stack_bottom_first() {
        let all = parse_mountinfo(SAMPLE);
        assert_eq!(all[3].mount_point, PathBuf::from("/dev x"));
        let s = stack_at(&all, Path::new("/usr"));
        assert_eq!(s.iter().map(|m| m.mount_id).collect::<Vec<_>>(), [23, 90]);
        assert!(s[1].read_only);
        // Found by the fuzzer: `\\400` is not a byte; keep it literally instead of overflowing.
        let odd = parse_mountinfo("1 1 0:1 \\400 / rw - x\n");
        assert_eq!(odd[0].root, "\\400");
        assert_eq!(s[1].root, "/ostree/deploy/debian/deploy/bbb.0/usr");
    }

    // Found by fuzzing (fuzz/regressions/mountinfo/stack-at-duplicate-mount-id): a repeated
    // mount ID made the parent chain a cycle, and stack_at looped forever, growing its Vec.
    #[test]
    fn stack_at_terminates_on_duplicate_or_cyclic_mount_ids() {
        for text in [
            "1 0 0:1 / /x rw - x\n1 1 0:1 / /x rw - x\n",
            "1 0 0:1 / /x rw - x\n2 1 0:1 / /x rw - x\n1 2 0:1 / /x rw - x\n",
        ] {
            let all = parse_mountinfo(text);
            let s = stack_at(&all, Path::new("/x"));
            assert!(!s.is_empty() && s.len() <= all.len(), "{text:?}: {s:?}");
            assert_eq!(s[0].parent_id, 0);
        }
    }
}
