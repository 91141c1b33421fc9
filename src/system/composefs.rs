//! Mount a deployment's composefs image the way ostree-prepare-root mounts the root
//! (`otcore_mount_rootfs` in ostree's `src/libotcore/otcore-prepare-root.c`, through
//! libcomposefs's `lcfs_mount_image`):
//!
//! 1. the EROFS metadata image `<deployment>/.ostree.cfs`, file-backed (no loop device; Linux
//!    ≥ 6.12), read-only, at a private scratch directory (ostree uses
//!    `/run/ostree/.private/cfsroot-lower`);
//! 2. a read-only overlay named `composefs` with that EROFS as its one lower layer
//!    (`lowerdir+=`), the repository's objects as a data-only layer (`datadir+=`; files
//!    redirect to `xx/<checksum>.file`), `metacopy=on`, `redirect_dir=on`, and `verity=require`
//!    when the host requires fs-verity (Linux ≥ 6.7 for `lowerdir+`/`datadir+`);
//! 3. the EROFS mount detached again (`MNT_DETACH`): the overlay keeps it alive.
//!
//! The overlay comes back as a detached mount (`fsmount`), attached nowhere; [`clone_subtree`]
//! takes its `usr` with `open_tree(OPEN_TREE_CLONE)` for a swap, and [`attach`] puts a detached
//! mount at a path. Only syscalls (the new mount API through rustix); nothing here decides
//! whether to use it — that is [`crate::plan::preconditions`]'s and the live executor's.
//!
//! Not done (yet): the expected image digest of a signed commit (libcomposefs compares the
//! image's fs-verity digest, `FS_IOC_MEASURE_VERITY`, before mounting), and the loop-device
//! fallback for kernels without file-backed EROFS.

use anyhow::{Context, Result};
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    open_tree, unmount, FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags,
    UnmountFlags,
};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The name of a deployment's composefs image (`OSTREE_COMPOSEFS_NAME`).
pub(crate) const IMAGE_NAME: &str = ".ostree.cfs";

/// What to mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComposefsImage {
    /// The EROFS metadata image (`<deployment>/.ostree.cfs`).
    pub image: PathBuf,
    /// The data-only layer the image's redirects resolve in (`<sysroot>/ostree/repo/objects`).
    pub objects: PathBuf,
    /// `verity=require`: every file's content must match the fs-verity digest in the image.
    pub require_verity: bool,
}

impl ComposefsImage {
    /// The image of the deployment directory `<sysroot>/ostree/deploy/<os>/deploy/<id>`, with
    /// its repository's objects, when the deployment has one.
    pub fn of_deployment(deploy: &Path, require_verity: bool) -> Option<ComposefsImage> {
        let image = deploy.join(IMAGE_NAME);
        let ostree = deploy.parent()?.parent()?.parent()?.parent()?;
        let objects = ostree.join("repo/objects");
        (image.is_file() && objects.is_dir()).then_some(ComposefsImage {
            image,
            objects,
            require_verity,
        })
    }
}

fn io_ctx(what: String) -> impl FnOnce(rustix::io::Errno) -> anyhow::Error {
    move |e| anyhow::Error::new(std::io::Error::from(e)).context(what)
}

/// A new read-only filesystem of `fstype` from string options, as a detached mount.
fn fs_mount(fstype: &str, options: &[(&str, Option<&str>)], what: &str) -> Result<OwnedFd> {
    let fs = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(io_ctx(format!("fsopen({fstype}) for {what}")))?;
    for (key, value) in options {
        match value {
            Some(v) => fsconfig_set_string(fs.as_fd(), *key, *v),
            None => fsconfig_set_flag(fs.as_fd(), *key),
        }
        .map_err(io_ctx(format!(
            "{fstype} option {key}{} for {what}",
            value.map(|v| format!("={v}")).unwrap_or_default()
        )))?;
    }
    fsconfig_create(fs.as_fd()).map_err(io_ctx(format!(
        "creating the {fstype} filesystem for {what} (file-backed EROFS needs Linux ≥ 6.12, overlay lowerdir+/datadir+ ≥ 6.7)"
    )))?;
    fsmount(
        fs.as_fd(),
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY,
    )
    .map_err(io_ctx(format!("fsmount({fstype}) for {what}")))
}

/// Attach the detached mount `fd` at `target` (`move_mount`, `MOVE_MOUNT_F_EMPTY_PATH`).
pub fn attach(fd: &OwnedFd, target: &Path) -> Result<()> {
    move_mount(
        fd.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(io_ctx(format!("attaching a mount at {}", target.display())))
}

/// Mount `img` as ostree-prepare-root does (see the module documentation); `scratch` is an
/// empty private directory for the EROFS layer while the overlay is built (left empty after).
/// Returns the overlay as a detached read-only mount.
pub fn mount(img: &ComposefsImage, scratch: &Path) -> Result<OwnedFd> {
    let image = img
        .image
        .to_str()
        .with_context(|| format!("{} is not UTF-8", img.image.display()))?;
    let objects = img
        .objects
        .to_str()
        .with_context(|| format!("{} is not UTF-8", img.objects.display()))?;
    let lower = fs_mount(
        "erofs",
        &[("source", Some(image)), ("ro", None)],
        &format!("the composefs image {image}"),
    )?;
    attach(&lower, scratch)?;
    let scratch_s = scratch
        .to_str()
        .with_context(|| format!("{} is not UTF-8", scratch.display()))?;
    let mut opts: Vec<(&str, Option<&str>)> = vec![
        ("source", Some("composefs")),
        ("metacopy", Some("on")),
        ("redirect_dir", Some("on")),
        ("lowerdir+", Some(scratch_s)),
        ("datadir+", Some(objects)),
    ];
    if img.require_verity {
        opts.push(("verity", Some("require")));
    }
    let overlay = fs_mount(
        "overlay",
        &opts,
        &format!("the composefs overlay of {image} over {objects}"),
    );
    // The overlay holds the EROFS layer; its mount point goes either way.
    unmount(scratch, UnmountFlags::DETACH).map_err(io_ctx(format!(
        "detaching the EROFS layer at {}",
        scratch.display()
    )))?;
    overlay
}

/// A detached, read-only clone of `rel` (e.g. `usr`) inside the mounted tree `root`
/// (`open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`), ready to [`attach`] over `/usr`. Tested with
/// `root` attached in this mount namespace first (`tests/composefs_mount.rs`); the clone pins
/// the overlay, so `root` may be detached afterwards.
pub fn clone_subtree(root: &OwnedFd, rel: &str) -> Result<OwnedFd> {
    open_tree(
        root.as_fd(),
        rel,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .map_err(io_ctx(format!("open_tree of {rel} in a composefs mount")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_of_a_deployment() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("ostree/deploy/os/deploy/abc.0");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::create_dir_all(t.path().join("ostree/repo/objects")).unwrap();
        assert_eq!(ComposefsImage::of_deployment(&d, false), None);
        std::fs::write(d.join(IMAGE_NAME), b"").unwrap();
        let img = ComposefsImage::of_deployment(&d, true).unwrap();
        assert_eq!(img.image, d.join(".ostree.cfs"));
        assert_eq!(img.objects, t.path().join("ostree/repo/objects"));
        assert!(img.require_verity);
    }
}
