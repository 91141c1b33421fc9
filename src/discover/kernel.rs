//! The kernel of a deployment, found exactly as ostree's `get_kernel_from_tree()`
//! (`src/libostree/ostree-sysroot-deploy.c`) finds it, and its boot checksum (`bootcsum`, the
//! checksum in the BLS `linux` path `/ostree/<stateroot>-<bootcsum>/…`):
//!
//! - **`usr/lib/modules/<kver>/`**: the first directory (in `readdir` order, as ostree) holding
//!   a regular `vmlinuz`; initramfs is `initramfs.img`, else `initramfs`; the device tree is the
//!   file `devicetree`, else the directory `dtb/`. bootcsum = sha256 over the contents of
//!   vmlinuz, initramfs, then `devicetree` or every file under `dtb/` (names sorted bytewise at
//!   each level, directories recursed in place, symlinks followed, dangling ones skipped).
//! - **legacy** `usr/lib/ostree-boot/`, else `boot/` (the first of the two that exists):
//!   `vmlinuz-<kver>-<sha256>`, `initramfs-<kver>-<sha256>`, `devicetree-<kver>-<sha256>` (the
//!   first of each in `readdir` order); bootcsum is the checksum in the kernel's name, and the
//!   initramfs and device tree must carry the same one.
//! - both present: the legacy layout wins when it has an initramfs and the modules layout has
//!   none; otherwise the modules layout.
//!
//! Every file is opened through [`crate::system::files`] relative to directory descriptors, so
//! a FIFO or device node is refused instead of read.
//!
//! Hashing a kernel and its initramfs (tens of MB) is the slowest part of discovery, and ostree
//! has already done it: the bootcsum is in the deployment's boot entry (`linux
//! /ostree/<stateroot>-<bootcsum>/…`, `ostree=/ostree/boot.N/<stateroot>/<bootcsum>/<serial>`)
//! and, for a staged deployment, in `/run/ostree/staged-deployment`. [`find_kernel_recorded`]
//! takes that record instead of hashing (the files are still located, so a tree without a
//! kernel is still seen), and [`verify_boot_digest`] hashes the tree when it matters: before a
//! kernel is loaded for kexec.

use crate::system::files::{self, Follow};
use anyhow::{bail, Context, Result};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where in the tree the kernel was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum KernelLayout {
    /// `usr/lib/modules/<kver>/vmlinuz`.
    UsrLibModules,
    /// `usr/lib/ostree-boot/vmlinuz-<kver>-<bootcsum>`.
    UsrLibOstreeBoot,
    /// `boot/vmlinuz-<kver>-<bootcsum>` in the deployment root.
    Boot,
}

/// Where a [`KernelFiles::boot_digest`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DigestSource {
    /// Hashed from the tree's files (ostree's algorithm).
    Computed,
    /// The checksum in a legacy kernel's file name (what ostree itself uses).
    FileName,
    /// The bootcsum ostree wrote into the deployment's boot entry.
    BootEntry,
    /// `target.bootcsum` of `/run/ostree/staged-deployment`.
    StagedState,
}

/// The kernel files of one deployment tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelFiles {
    pub(crate) layout: KernelLayout,
    /// Kernel release: the directory name under `usr/lib/modules`, or the `<kver>` of a legacy
    /// `vmlinuz-<kver>-<bootcsum>`.
    pub version: String,
    pub(crate) vmlinuz: PathBuf,
    pub(crate) initramfs: Option<PathBuf>,
    /// A `devicetree` file, or a `dtb/` directory (see [`KernelFiles::devicetree_is_dir`]).
    pub(crate) devicetree: Option<PathBuf>,
    /// The device tree is a directory of device trees (`dtb/`, ostree writes `fdtdir`).
    pub(crate) devicetree_is_dir: bool,
    /// ostree's bootcsum for this tree (hex sha256).
    pub boot_digest: String,
    /// Where `boot_digest` comes from: only [`DigestSource::Computed`] and
    /// [`DigestSource::FileName`] were read from the tree; a recorded one is checked against
    /// the tree by [`verify_boot_digest`].
    pub(crate) digest_source: DigestSource,
}

const DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

fn cstr(name: &OsStr) -> Result<std::ffi::CString> {
    std::ffi::CString::new(name.as_bytes()).with_context(|| format!("NUL in file name {name:?}"))
}

/// `openat(dir, name, O_DIRECTORY)` following symlinks (as glnx_opendirat(…, TRUE)); `None` on
/// ENOENT.
fn opendir_at(dir: BorrowedFd<'_>, name: &Path, shown: &Path) -> Result<Option<OwnedFd>> {
    match rustix::fs::openat(dir, name, DIR, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(std::io::Error::from(e))
            .with_context(|| format!("opening directory {}", shown.display())),
    }
}

/// Names in a directory in `readdir` order, without `.` and `..`, with their `d_type`.
fn list(dir: BorrowedFd<'_>, shown: &Path) -> Result<Vec<(OsString, rustix::fs::FileType)>> {
    let fd = rustix::fs::openat(dir, c".", DIR, Mode::empty())
        .map_err(std::io::Error::from)
        .with_context(|| format!("opening directory {}", shown.display()))?;
    let mut d = rustix::fs::Dir::read_from(&fd)
        .map_err(std::io::Error::from)
        .with_context(|| format!("reading directory {}", shown.display()))?;
    let mut out = Vec::new();
    for ent in &mut d {
        let ent = ent
            .map_err(std::io::Error::from)
            .with_context(|| format!("reading directory {}", shown.display()))?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push((OsStr::from_bytes(name).to_owned(), ent.file_type()));
    }
    Ok(out)
}

fn hash_into(h: &mut Sha256, mut f: std::fs::File, shown: &Path) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", shown.display()))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

/// Open a regular file in `dir` for hashing; `None` when absent (ENOENT, including a dangling
/// symlink, which ostree's `ot_openat_ignore_enoent` skips too).
fn open_for_hash(dir: BorrowedFd<'_>, name: &Path, shown: &Path) -> Result<Option<std::fs::File>> {
    match files::open_regular_at(dir, name, shown, Follow::Yes) {
        Ok(f) => Ok(f),
        Err(files::FileError::Dangling { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// ostree's `checksum_dir_recurse`: contents of every non-directory, names sorted with
/// `strcmp` at each level, directories recursed where they sort.
fn checksum_dir_recurse(
    dir: BorrowedFd<'_>,
    name: &Path,
    shown: &Path,
    h: &mut Sha256,
) -> Result<()> {
    let fd = opendir_at(dir, name, shown)?
        .with_context(|| format!("{} does not exist", shown.display()))?;
    let mut names: Vec<OsString> = list(fd.as_fd(), shown)?.into_iter().map(|e| e.0).collect();
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for n in names {
        let child = shown.join(&n);
        let c = cstr(&n)?;
        let st = rustix::fs::statat(&fd, &c, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(std::io::Error::from)
            .with_context(|| format!("stat {}", child.display()))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            checksum_dir_recurse(fd.as_fd(), Path::new(&n), &child, h)?;
        } else if let Some(f) = open_for_hash(fd.as_fd(), Path::new(&n), &child)? {
            hash_into(h, f, &child)?;
        }
    }
    Ok(())
}

/// `get_kernel_from_tree_usrlib_modules`. With `recorded`, the files are located but not
/// hashed, and the recorded checksum is the digest.
/// Long: it follows libostree's function step by step, in its order, so the two can be
/// compared line by line.
fn from_usrlib_modules(
    root: BorrowedFd<'_>,
    deploy_dir: &Path,
    recorded: Option<(&str, DigestSource)>,
) -> Result<Option<KernelFiles>> {
    let mshown = deploy_dir.join("usr/lib/modules");
    let Some(mfd) = opendir_at(root, Path::new("usr/lib/modules"), &mshown)? else {
        return Ok(None);
    };
    let mut found = None;
    for (name, ty) in list(mfd.as_fd(), &mshown)? {
        let c = cstr(&name)?;
        let is_dir = match ty {
            rustix::fs::FileType::Unknown => {
                rustix::fs::statat(&mfd, &c, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                    .unwrap_or(false)
            }
            t => t == rustix::fs::FileType::Directory,
        };
        if !is_dir {
            continue;
        }
        let vm = Path::new(&name).join("vmlinuz");
        match rustix::fs::statat(&mfd, &vm, AtFlags::empty()) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                found = Some(name);
                break;
            }
            Ok(_) | Err(Errno::NOENT) => continue,
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("stat {}", mshown.join(&vm).display()))
            }
        }
    }
    let Some(kver) = found else {
        return Ok(None);
    };
    let kdir = mshown.join(&kver);
    let kfd = opendir_at(mfd.as_fd(), Path::new(&kver), &kdir)?
        .with_context(|| format!("{} vanished", kdir.display()))?;
    // `None`: the digest is recorded, only locate the files (each is still opened, so a FIFO
    // or device node in their place is refused as when hashing).
    let mut h = recorded.is_none().then(Sha256::new);
    let mut hash = |f: std::fs::File, p: &Path| match h.as_mut() {
        Some(h) => hash_into(h, f, p),
        None => Ok(()),
    };
    let vmlinuz = kdir.join("vmlinuz");
    let f = files::open_regular_at(kfd.as_fd(), Path::new("vmlinuz"), &vmlinuz, Follow::Yes)?
        .with_context(|| format!("{} vanished", vmlinuz.display()))?;
    hash(f, &vmlinuz)?;
    let mut initramfs = None;
    for n in ["initramfs.img", "initramfs"] {
        let p = kdir.join(n);
        if let Some(f) = open_for_hash(kfd.as_fd(), Path::new(n), &p)? {
            hash(f, &p)?;
            initramfs = Some(p);
            break;
        }
    }
    let (mut devicetree, mut devicetree_is_dir) = (None, false);
    let dt = kdir.join("devicetree");
    if let Some(f) = open_for_hash(kfd.as_fd(), Path::new("devicetree"), &dt)? {
        hash(f, &dt)?;
        devicetree = Some(dt);
    } else {
        let dtb = kdir.join("dtb");
        match rustix::fs::statat(&kfd, c"dtb", AtFlags::empty()) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                if let Some(h) = h.as_mut() {
                    checksum_dir_recurse(kfd.as_fd(), Path::new("dtb"), &dtb, h)?;
                }
                devicetree = Some(dtb);
                devicetree_is_dir = true;
            }
            Ok(_) | Err(Errno::NOENT) => {}
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("stat {}", dtb.display()))
            }
        }
    }
    Ok(Some(KernelFiles {
        layout: KernelLayout::UsrLibModules,
        version: kver.to_string_lossy().into_owned(),
        vmlinuz,
        initramfs,
        devicetree,
        devicetree_is_dir,
        boot_digest: match (h, recorded) {
            (Some(h), _) => hex(&h.finalize()),
            (None, Some((c, _))) => c.to_owned(),
            (None, None) => unreachable!("a hasher exists whenever nothing is recorded"),
        },
        digest_source: recorded.map_or(DigestSource::Computed, |r| r.1),
    }))
}

/// `ostree_validate_structureof_checksum_string`: 64 lower-case hex digits.
fn is_checksum(s: &[u8]) -> bool {
    s.len() == 64
        && s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// A legacy file name: (name, `<prefix>-<kver>` part, checksum).
type LegacyName = (OsString, Vec<u8>, Vec<u8>);

/// `get_kernel_from_tree_legacy_layouts`.
fn from_legacy(root: BorrowedFd<'_>, deploy_dir: &Path) -> Result<Option<KernelFiles>> {
    let mut opened = None;
    for (rel, layout) in [
        ("usr/lib/ostree-boot", KernelLayout::UsrLibOstreeBoot),
        ("boot", KernelLayout::Boot),
    ] {
        let shown = deploy_dir.join(rel);
        if let Some(fd) = opendir_at(root, Path::new(rel), &shown)? {
            opened = Some((fd, shown, layout));
            break;
        }
    }
    let Some((bfd, bdir, layout)) = opened else {
        return Ok(None);
    };
    // kernel, initramfs, devicetree
    let mut slots: [Option<LegacyName>; 3] = [None, None, None];
    for (name, _) in list(bfd.as_fd(), &bdir)? {
        let b = name.as_bytes();
        let idx = if slots[0].is_none() && b.starts_with(b"vmlinuz-") {
            0
        } else if slots[1].is_none() && b.starts_with(b"initramfs-") {
            1
        } else if slots[2].is_none() && b.starts_with(b"devicetree-") {
            2
        } else {
            continue;
        };
        let dash = b.iter().rposition(|&c| c == b'-').unwrap_or(0);
        if is_checksum(&b[dash + 1..]) {
            slots[idx] = Some((name.clone(), b[..dash].to_vec(), b[dash + 1..].to_vec()));
        }
        if slots.iter().all(Option::is_some) {
            break;
        }
    }
    let [kernel, initrd, dt] = slots;
    let Some((kname, knamever, kcsum)) = kernel else {
        return Ok(None);
    };
    if let Some((iname, _, icsum)) = &initrd {
        if *icsum != kcsum {
            bail!(
                "{}: mismatched kernel checksum vs initrd ({} vs {}); ostree refuses this tree",
                bdir.display(),
                kname.to_string_lossy(),
                iname.to_string_lossy()
            );
        }
    }
    if let Some((dname, _, dcsum)) = &dt {
        if *dcsum != kcsum {
            bail!(
                "{}: mismatched kernel checksum vs device tree ({} vs {}); ostree refuses this tree",
                bdir.display(),
                kname.to_string_lossy(),
                dname.to_string_lossy()
            );
        }
    }
    let version = String::from_utf8_lossy(knamever.strip_prefix(b"vmlinuz-").unwrap_or(&knamever))
        .into_owned();
    Ok(Some(KernelFiles {
        layout,
        version,
        vmlinuz: bdir.join(&kname),
        initramfs: initrd.map(|i| bdir.join(i.0)),
        devicetree: dt.map(|d| bdir.join(d.0)),
        devicetree_is_dir: false,
        boot_digest: String::from_utf8_lossy(&kcsum).into_owned(),
        digest_source: DigestSource::FileName,
    }))
}

/// Find the kernel of a deployment directory as ostree does (see the module docs), hashing it.
/// `Ok(None)` when no layout holds a kernel (ostree refuses to deploy such a tree).
pub fn find_kernel(deploy_dir: &Path) -> Result<Option<KernelFiles>> {
    find_kernel_recorded(deploy_dir, None)
}

/// [`find_kernel`], taking the bootcsum ostree recorded for this deployment (`recorded`, when
/// it is a checksum) instead of hashing the kernel, initramfs and device trees.
pub(crate) fn find_kernel_recorded(
    deploy_dir: &Path,
    recorded: Option<(&str, DigestSource)>,
) -> Result<Option<KernelFiles>> {
    let recorded = recorded.filter(|(c, _)| is_checksum(c.as_bytes()));
    let root = rustix::fs::open(deploy_dir, DIR, Mode::empty())
        .map_err(std::io::Error::from)
        .with_context(|| format!("opening directory {}", deploy_dir.display()))?;
    let modules = from_usrlib_modules(root.as_fd(), deploy_dir, recorded)?;
    let legacy = from_legacy(root.as_fd(), deploy_dir)?;
    Ok(match (modules, legacy) {
        (m, None) => m,
        (Some(m), Some(l)) if m.initramfs.is_none() && l.initramfs.is_some() => Some(l),
        (Some(m), Some(_)) => Some(m),
        (None, l) => l,
    })
}

/// Check a recorded boot digest against the tree: hash the kernel files of `deploy_dir` as
/// ostree does and compare. A digest read from the tree (hashed, or a legacy file name) needs
/// no check. The error names the deployment, both checksums and where the record came from.
pub(crate) fn verify_boot_digest(deploy_dir: &Path, k: &KernelFiles) -> Result<()> {
    if matches!(
        k.digest_source,
        DigestSource::Computed | DigestSource::FileName
    ) {
        return Ok(());
    }
    let found = find_kernel(deploy_dir)?;
    let found_digest = found.as_ref().map(|f| f.boot_digest.as_str());
    if found_digest != Some(k.boot_digest.as_str()) {
        let source = match k.digest_source {
            DigestSource::BootEntry => "the boot entry",
            _ => "the staged-deployment state",
        };
        bail!(
            "the kernel files in {} hash to bootcsum {}, but {source} records {}: the tree no longer holds the kernel ostree deployed",
            deploy_dir.display(),
            found_digest.unwrap_or("none (no kernel found)"),
            k.boot_digest
        );
    }
    Ok(())
}

/// Lower-case hex of a byte string.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_over_kernel_then_initramfs() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("usr/lib/modules/6.1.0-test");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("vmlinuz"), "kernel\n").unwrap();
        std::fs::write(k.join("initramfs.img"), "initrd\n").unwrap();
        let kf = find_kernel(d.path()).unwrap().unwrap();
        assert_eq!(kf.version, "6.1.0-test");
        // sha256("kernel\ninitrd\n"), the bootcsum ostree 2022.7 wrote for these files
        assert_eq!(
            kf.boot_digest,
            "ff6d610a0f0d84602d9e2878eb3a16a850f2d31faa2f14108006723892a17899"
        );
        std::fs::remove_file(k.join("initramfs.img")).unwrap();
        assert!(find_kernel(d.path()).unwrap().unwrap().initramfs.is_none());
    }

    /// A recorded bootcsum is taken without hashing; the files are still located; the check
    /// before a kexec load hashes the tree and refuses a record that does not match it.
    #[test]
    fn recorded_digest_is_taken_and_verified_lazily() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("usr/lib/modules/6.1.0-test");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("vmlinuz"), "kernel\n").unwrap();
        std::fs::write(k.join("initramfs.img"), "initrd\n").unwrap();
        let truth = "ff6d610a0f0d84602d9e2878eb3a16a850f2d31faa2f14108006723892a17899";
        let other = "ab".repeat(32);
        let kf = find_kernel_recorded(d.path(), Some((&other, DigestSource::BootEntry)))
            .unwrap()
            .unwrap();
        assert_eq!(kf.boot_digest, other);
        assert_eq!(kf.digest_source, DigestSource::BootEntry);
        assert_eq!(kf.initramfs, Some(k.join("initramfs.img")));
        let e = verify_boot_digest(d.path(), &kf).unwrap_err().to_string();
        assert!(
            e.contains(truth) && e.contains(&other) && e.contains("boot entry"),
            "{e}"
        );
        let kf = find_kernel_recorded(d.path(), Some((truth, DigestSource::StagedState)))
            .unwrap()
            .unwrap();
        verify_boot_digest(d.path(), &kf).unwrap();
        // Not a checksum: hashed instead.
        let kf = find_kernel_recorded(d.path(), Some(("abc", DigestSource::BootEntry)))
            .unwrap()
            .unwrap();
        assert_eq!(
            (kf.boot_digest.as_str(), kf.digest_source),
            (truth, DigestSource::Computed)
        );
        // A FIFO where the initramfs was is refused without hashing too.
        std::fs::remove_file(k.join("initramfs.img")).unwrap();
        nix::unistd::mkfifo(
            &k.join("initramfs.img"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert!(find_kernel_recorded(d.path(), Some((truth, DigestSource::BootEntry))).is_err());
    }

    #[test]
    fn two_kernels_first_in_readdir_order_none_is_none() {
        let d = tempfile::tempdir().unwrap();
        assert!(find_kernel(d.path()).unwrap().is_none());
        for v in ["a", "b"] {
            let k = d.path().join("usr/lib/modules").join(v);
            std::fs::create_dir_all(&k).unwrap();
            std::fs::write(k.join("vmlinuz"), v).unwrap();
        }
        let first = std::fs::read_dir(d.path().join("usr/lib/modules"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name();
        assert_eq!(
            find_kernel(d.path()).unwrap().unwrap().version,
            first.to_string_lossy()
        );
    }

    #[test]
    fn dtb_directory_sorted_and_recursed() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("usr/lib/modules/6.1");
        std::fs::create_dir_all(k.join("dtb/vendor")).unwrap();
        std::fs::write(k.join("vmlinuz"), "K").unwrap();
        std::fs::write(k.join("dtb/b.dtb"), "B").unwrap();
        std::fs::write(k.join("dtb/a.dtb"), "A").unwrap();
        std::fs::write(k.join("dtb/vendor/c.dtb"), "C").unwrap();
        std::os::unix::fs::symlink("nowhere", k.join("dtb/dangling")).unwrap();
        let kf = find_kernel(d.path()).unwrap().unwrap();
        assert!(kf.devicetree_is_dir);
        // a.dtb, b.dtb, (dangling skipped), vendor/c.dtb
        assert_eq!(kf.boot_digest, hex(&Sha256::digest(b"KABC")));
        // A single devicetree file wins over dtb/.
        std::fs::write(k.join("devicetree"), "D").unwrap();
        let kf = find_kernel(d.path()).unwrap().unwrap();
        assert!(!kf.devicetree_is_dir);
        assert_eq!(kf.boot_digest, hex(&Sha256::digest(b"KD")));
    }

    #[test]
    fn legacy_layouts() {
        let d = tempfile::tempdir().unwrap();
        let c = "ab".repeat(32);
        let b = d.path().join("usr/lib/ostree-boot");
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join(format!("vmlinuz-6.1.0-{c}")), "K").unwrap();
        std::fs::write(b.join(format!("initramfs-6.1.0.img-{c}")), "I").unwrap();
        let kf = find_kernel(d.path()).unwrap().unwrap();
        assert_eq!(kf.layout, KernelLayout::UsrLibOstreeBoot);
        assert_eq!(
            (kf.version.as_str(), kf.boot_digest.as_str()),
            ("6.1.0", c.as_str())
        );
        // A modules kernel without initramfs loses against a legacy one with it.
        let m = d.path().join("usr/lib/modules/6.2");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("vmlinuz"), "M").unwrap();
        assert_eq!(
            find_kernel(d.path()).unwrap().unwrap().layout,
            KernelLayout::UsrLibOstreeBoot
        );
        std::fs::write(m.join("initramfs.img"), "MI").unwrap();
        assert_eq!(
            find_kernel(d.path()).unwrap().unwrap().layout,
            KernelLayout::UsrLibModules
        );
        std::fs::remove_dir_all(d.path().join("usr/lib/modules")).unwrap();
        std::fs::write(b.join(format!("devicetree-6.1.0-{}", "cd".repeat(32))), "D").unwrap();
        let e = find_kernel(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("mismatched kernel checksum vs device tree"),
            "{e}"
        );
    }
}
