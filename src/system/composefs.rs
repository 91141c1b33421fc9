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
    /// The fs-verity digest (hex) the image file itself must have, from a signed commit
    /// ([`crate::discover::signature`]): measured before mounting, as libcomposefs does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_digest: Option<String>,
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
            expected_digest: None,
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

/// `FS_IOC_MEASURE_VERITY` (include/uapi/linux/fsverity.h): `_IOWR('f', 134, struct
/// fsverity_digest)`.
const FS_IOC_MEASURE_VERITY: libc::c_ulong = 0xc004_6686;
const FS_VERITY_HASH_ALG_SHA256: u16 = 1;

#[repr(C)]
struct FsverityDigest {
    digest_algorithm: u16,
    digest_size: u16,
    digest: [u8; 64],
}

/// The fs-verity digest of the open file `f` (hex), as the kernel measures it
/// (`FS_IOC_MEASURE_VERITY`); an error when the file has no fs-verity or the filesystem none.
#[allow(unsafe_code)]
pub fn measure_verity(f: &std::fs::File, what: &Path) -> Result<String> {
    use std::os::fd::AsRawFd;
    let mut d = FsverityDigest {
        digest_algorithm: 0,
        digest_size: 64,
        digest: [0; 64],
    };
    // SAFETY: the fd is open for the call; `d` is a live, correctly sized fsverity_digest
    // whose digest_size tells the kernel how many digest bytes it may write.
    let r = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            FS_IOC_MEASURE_VERITY,
            &mut d as *mut FsverityDigest,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        let why = match e.raw_os_error() {
            Some(libc::ENODATA) => "the file has no fs-verity enabled",
            Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) => {
                "its filesystem or this kernel has no fs-verity"
            }
            _ => "FS_IOC_MEASURE_VERITY failed",
        };
        return Err(anyhow::Error::new(e).context(format!(
            "measuring the fs-verity digest of {}: {why}",
            what.display()
        )));
    }
    if d.digest_algorithm != FS_VERITY_HASH_ALG_SHA256 || d.digest_size != 32 {
        anyhow::bail!(
            "{} has an fs-verity digest of algorithm {} ({} bytes); composefs uses SHA-256",
            what.display(),
            d.digest_algorithm,
            d.digest_size
        );
    }
    Ok(d.digest[..32].iter().map(|b| format!("{b:02x}")).collect())
}

/// Mount `img` as ostree-prepare-root does (see the module documentation); `scratch` is an
/// empty private directory for the EROFS layer while the overlay is built (left empty after).
/// With an expected digest, the image file is opened, its fs-verity digest measured and
/// compared first, and the EROFS is mounted from that same open file
/// (`/proc/self/fd/N`), so what was measured is what is mounted.
/// Returns the overlay as a detached read-only mount.
pub fn mount(img: &ComposefsImage, scratch: &Path) -> Result<OwnedFd> {
    let opened;
    let fd_path;
    let image = match &img.expected_digest {
        None => img
            .image
            .to_str()
            .with_context(|| format!("{} is not UTF-8", img.image.display()))?,
        Some(want) => {
            use std::os::fd::AsRawFd;
            opened = std::fs::File::open(&img.image)
                .with_context(|| format!("opening the composefs image {}", img.image.display()))?;
            let got = measure_verity(&opened, &img.image)?;
            if !got.eq_ignore_ascii_case(want) {
                anyhow::bail!(
                    "the composefs image {} has fs-verity digest {got}, but its signed commit binds {want}: not mounting it",
                    img.image.display()
                );
            }
            fd_path = format!("/proc/self/fd/{}", opened.as_raw_fd());
            fd_path.as_str()
        }
    };
    let objects = img
        .objects
        .to_str()
        .with_context(|| format!("{} is not UTF-8", img.objects.display()))?;
    let lower = fs_mount(
        "erofs",
        &[("source", Some(image)), ("ro", None)],
        &format!("the composefs image {}", img.image.display()),
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
        &format!(
            "the composefs overlay of {} over {objects}",
            img.image.display()
        ),
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

/// The `usr` of `img`'s composefs tree as a detached mount, ready to attach over `/usr`: the
/// overlay is mounted ([`mount`]), attached at `<scratch>/root` just long enough for
/// [`clone_subtree`] (the kernels this runs on cannot clone from a detached tree), and detached
/// again; the clone pins it. `scratch` is created mode 0700 (ostree uses
/// `/run/ostree/.private` the same way); leftovers of an interrupted run are detached first.
pub fn usr_clone(img: &ComposefsImage, scratch: &Path) -> Result<OwnedFd> {
    use std::os::unix::fs::DirBuilderExt;
    let lower = scratch.join("lower");
    let root = scratch.join("root");
    for d in [scratch, &lower, &root] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .with_context(|| format!("creating {}", d.display()))?;
    }
    for d in [&lower, &root] {
        // Nothing is mounted there unless an earlier run was killed mid-way (EINVAL then).
        let _ = unmount(d.as_path(), UnmountFlags::DETACH);
    }
    let overlay = mount(img, &lower)?;
    attach(&overlay, &root)?;
    let usr = clone_subtree(&overlay, "usr");
    unmount(root.as_path(), UnmountFlags::DETACH)
        .map_err(io_ctx(format!("detaching {}", root.display())))?;
    usr.with_context(|| {
        format!(
            "taking usr from the composefs image {}",
            img.image.display()
        )
    })
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
