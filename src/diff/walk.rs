//! Low-level tree-reading primitives shared by [`super::usr`] and [`super::etc`].
//!
//! Everything here works relative to directory file descriptors and never follows a symlink:
//! directories are opened with `O_NOFOLLOW | O_DIRECTORY`, metadata comes from `fstatat(…,
//! AT_SYMLINK_NOFOLLOW)`, symlink targets from `readlinkat`, xattrs from `flistxattr` (for
//! directory fds) or `llistxattr` (for paths). Listings are read with raw `getdents64` into a
//! per-thread buffer and keep every name of one directory in a single buffer, so reading a
//! small directory costs one `getdents64` call (on filesystems known to fill the buffer
//! greedily, see [`FsTraits`]) and two allocations however many entries it has.

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, Mode, OFlags, RawDir, Stat};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::ffi::{CStr, OsString};
use std::io::Read;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The type of a filesystem object, as recorded in diffs and plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FileType {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (never followed).
    Symlink,
    /// Device node, FIFO or socket.
    Other,
}

impl FileType {
    /// The type encoded in the `S_IFMT` bits of an `st_mode`.
    pub(crate) fn from_mode(mode: u32) -> FileType {
        match mode & libc::S_IFMT {
            libc::S_IFREG => FileType::File,
            libc::S_IFDIR => FileType::Dir,
            libc::S_IFLNK => FileType::Symlink,
            _ => FileType::Other,
        }
    }

    fn from_dirent(t: rustix::fs::FileType) -> Option<FileType> {
        use rustix::fs::FileType as T;
        Some(match t {
            T::RegularFile => FileType::File,
            T::Directory => FileType::Dir,
            T::Symlink => FileType::Symlink,
            T::Fifo | T::Socket | T::CharacterDevice | T::BlockDevice => FileType::Other,
            T::Unknown => return None,
        })
    }
}

/// The `lstat` fields the diffs compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) size: u64,
    pub(crate) rdev: u64,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

impl Meta {
    fn from_stat(st: &Stat) -> Meta {
        Meta {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: u64::try_from(st.st_size).unwrap_or(0),
            rdev: st.st_rdev,
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }

    pub(crate) fn file_type(&self) -> FileType {
        FileType::from_mode(self.mode)
    }

    /// Permission bits including setuid/setgid/sticky.
    pub(crate) fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    /// `S_IFMT` bits.
    pub(crate) fn fmt(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub(crate) fn same_inode(&self, other: &Meta) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Open a directory without following a symlink at `path` itself.
pub(crate) fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(path, DIR_FLAGS, Mode::empty())
        .with_context(|| format!("opening directory {}", path.display()))
}

/// Open the directory `name` inside `dir`, refusing symlinks.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())
}

/// `fstat` of an open descriptor.
pub(crate) fn stat_fd(fd: BorrowedFd<'_>) -> rustix::io::Result<Meta> {
    rustix::fs::fstat(fd).map(|st| Meta::from_stat(&st))
}

/// `lstat` of `name` inside `dir`.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<Meta> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map(|st| Meta::from_stat(&st))
}

/// The target of the symlink `name` inside `dir`.
pub(crate) fn readlink_at(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OsString> {
    rustix::fs::readlinkat(dir, name, Vec::new())
        .map(|c| OsString::from(std::ffi::OsStr::from_bytes(c.as_bytes())))
}

/// What the filesystem holding a tree guarantees about `getdents64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FsTraits {
    /// `d_ino` equals `st_ino` and is unique per device. overlayfs and FUSE may break this,
    /// so the same-inode shortcut is not taken there.
    pub(crate) dirent_inodes: bool,
    /// The filesystem fills the `getdents64` buffer until it is full or the directory ends
    /// (ext2/3/4, XFS, btrfs, tmpfs all do), so a batch that left room for one more entry of
    /// maximal size was the last one and the EOF call can be skipped.
    pub(crate) greedy_getdents: bool,
}

impl FsTraits {
    /// Nothing assumed: every listing reads to the end-of-directory call.
    pub(crate) const CONSERVATIVE: FsTraits = FsTraits {
        dirent_inodes: false,
        greedy_getdents: false,
    };

    pub(crate) fn of(fd: BorrowedFd<'_>) -> FsTraits {
        const EXT_SUPER_MAGIC: i64 = 0xEF53;
        const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
        const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
        const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
        let Ok(s) = rustix::fs::fstatfs(fd) else {
            return FsTraits::CONSERVATIVE;
        };
        // `f_type`'s integer type differs between architectures.
        #[allow(clippy::unnecessary_cast)]
        let t = s.f_type as i64;
        FsTraits {
            dirent_inodes: t != OVERLAYFS_SUPER_MAGIC && t != FUSE_SUPER_MAGIC,
            greedy_getdents: [
                EXT_SUPER_MAGIC,
                XFS_SUPER_MAGIC,
                BTRFS_SUPER_MAGIC,
                TMPFS_MAGIC,
            ]
            .contains(&t),
        }
    }

    /// What holds for both of two trees.
    pub(crate) fn both(self, other: FsTraits) -> FsTraits {
        FsTraits {
            dirent_inodes: self.dirent_inodes && other.dirent_inodes,
            greedy_getdents: self.greedy_getdents && other.greedy_getdents,
        }
    }
}

/// Size of a `linux_dirent64` record for a name of `len` bytes (as `filldir64` computes it).
fn dirent_reclen(len: usize) -> usize {
    (19 + len + 1 + 7) & !7
}

/// The largest possible record: a 255-byte name.
const MAX_DIRENT: usize = (19 + 255 + 1 + 7) & !7;

/// One directory entry of a [`Listing`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ent {
    off: u32,
    len: u32,
    /// `d_ino`: the inode number as seen by `getdents`.
    pub(crate) ino: u64,
    /// `d_type`, or `None` when the filesystem reports `DT_UNKNOWN`.
    pub(crate) dtype: Option<FileType>,
}

/// The entries of one directory (without `.` and `..`), sorted by name bytes.
pub(crate) struct Listing {
    /// Every name followed by a NUL, back to back.
    names: Vec<u8>,
    ents: Vec<Ent>,
}

thread_local! {
    /// `getdents64` buffer, reused by every listing on this thread.
    static DIRENT_BUF: RefCell<Vec<MaybeUninit<u8>>> =
        RefCell::new(vec![MaybeUninit::uninit(); 32 * 1024]);
}

impl Listing {
    /// Read all entries of the freshly opened directory `fd` with raw `getdents64` calls (no
    /// `fdopendir`, no dup); `fd` must be at offset 0, as a new descriptor is. With
    /// `greedy_getdents` (see [`FsTraits`]) a batch that left room for another entry ends the
    /// listing without the extra empty call.
    pub(crate) fn read(fd: BorrowedFd<'_>, traits: FsTraits) -> rustix::io::Result<Listing> {
        DIRENT_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            // RawDir may skip up to 7 bytes to align the buffer.
            let room = buf.len() - 8;
            let mut names = Vec::with_capacity(512);
            let mut ents = Vec::with_capacity(32);
            let mut dir = RawDir::new(fd, &mut buf[..]);
            let mut batch = 0;
            loop {
                if dir.is_buffer_empty() {
                    if traits.greedy_getdents && batch > 0 && batch + MAX_DIRENT <= room {
                        break;
                    }
                    batch = 0;
                }
                let Some(e) = dir.next() else { break };
                let e = e?;
                let name = e.file_name().to_bytes();
                batch += dirent_reclen(name.len());
                if name == b"." || name == b".." {
                    continue;
                }
                let off = u32::try_from(names.len()).map_err(|_| Errno::TOOBIG)?;
                names.extend_from_slice(name);
                names.push(0);
                ents.push(Ent {
                    off,
                    len: name.len() as u32,
                    ino: e.ino(),
                    dtype: FileType::from_dirent(e.file_type()),
                });
            }
            let b = &names;
            ents.sort_unstable_by(|x, y| name_of(b, x).cmp(name_of(b, y)));
            Ok(Listing { names, ents })
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.ents.len()
    }

    pub(crate) fn ent(&self, i: usize) -> &Ent {
        &self.ents[i]
    }

    /// The name bytes of entry `i` (no NUL).
    pub(crate) fn name(&self, i: usize) -> &[u8] {
        name_of(&self.names, &self.ents[i])
    }

    /// The name of entry `i` as a C string, for `*at` calls.
    pub(crate) fn cname(&self, i: usize) -> &CStr {
        let e = &self.ents[i];
        let start = e.off as usize;
        let end = start + e.len as usize + 1;
        CStr::from_bytes_with_nul(&self.names[start..end])
            .expect("listing names are NUL-terminated without interior NULs")
    }
}

fn name_of<'a>(buf: &'a [u8], e: &Ent) -> &'a [u8] {
    let start = e.off as usize;
    &buf[start..start + e.len as usize]
}

const CHUNK: usize = 64 * 1024;

thread_local! {
    static CONTENT_BUFS: RefCell<(Vec<u8>, Vec<u8>)> =
        RefCell::new((vec![0u8; CHUNK], vec![0u8; CHUNK]));
}

/// Fill `buf` as far as the reader allows; returns the number of bytes read (short only at EOF).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Whether two readers yield the same bytes. Uses per-thread buffers: no allocation.
pub(crate) fn same_bytes(a: &mut impl Read, b: &mut impl Read) -> std::io::Result<bool> {
    CONTENT_BUFS.with(|bufs| {
        let mut bufs = bufs.borrow_mut();
        let (ba, bb) = &mut *bufs;
        loop {
            let na = read_full(a, ba)?;
            let nb = read_full(b, bb)?;
            if na != nb || ba[..na] != bb[..nb] {
                return Ok(false);
            }
            if na < CHUNK {
                return Ok(true);
            }
        }
    })
}

const FILE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY);

/// Open a regular file `name` inside `dir` for reading, refusing symlinks and (with
/// `O_NONBLOCK` and a type check on the descriptor) anything swapped in that is not a regular
/// file, so a FIFO can never block the walk.
pub(crate) fn open_file_at(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<std::fs::File> {
    regular_only(rustix::fs::openat(
        dir,
        name,
        FILE_FLAGS | OFlags::NONBLOCK,
        Mode::empty(),
    )?)
}

/// Keep `fd` only if it is a regular file; clear the `O_NONBLOCK` it was opened with.
fn regular_only(fd: OwnedFd) -> rustix::io::Result<std::fs::File> {
    let st = rustix::fs::fstat(&fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Errno::INVAL);
    }
    let fl = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, fl.difference(OFlags::NONBLOCK))?;
    Ok(std::fs::File::from(fd))
}

/// Open the regular file `rel` below the directory `root`, one directory descriptor per
/// component (never following a symlink), so `root` + `rel` may be longer than `PATH_MAX`.
pub(crate) fn open_file_beneath(root: &Path, rel: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsFd;
    let mut dir = open_dir(root)?;
    let comps: Vec<&std::ffi::OsStr> = rel.iter().collect();
    let Some((last, parents)) = comps.split_last() else {
        anyhow::bail!("{}: empty path below it", root.display());
    };
    for c in parents {
        dir = open_dir_at(dir.as_fd(), &std::ffi::CString::new(c.as_bytes())?)?;
    }
    Ok(open_file_at(
        dir.as_fd(),
        &std::ffi::CString::new(last.as_bytes())?,
    )?)
}

/// Where to read extended attributes from.
#[derive(Clone, Copy)]
pub(crate) enum XattrSource<'a> {
    /// An open descriptor (used for directories).
    Fd(BorrowedFd<'a>),
    /// A path; a symlink at the last component is not followed (`l*xattr`).
    Path(&'a CStr),
    /// `/proc/self/fd/N` of an `O_PATH | O_NOFOLLOW` descriptor: the magic link is followed
    /// to the object itself (also a symlink), whatever the length of its real path.
    Proc(&'a CStr),
}

impl XattrSource<'_> {
    fn list_len(self) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Fd(fd) => rustix::fs::flistxattr_query(fd),
            XattrSource::Path(p) => rustix::fs::llistxattr_query(p),
            XattrSource::Proc(p) => rustix::fs::listxattr_query(p),
        }
    }

    fn list(self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Fd(fd) => rustix::fs::flistxattr(fd, buf),
            XattrSource::Path(p) => rustix::fs::llistxattr(p, buf),
            XattrSource::Proc(p) => rustix::fs::listxattr(p, buf),
        }
    }

    fn value_len(self, name: &CStr) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Fd(fd) => rustix::fs::fgetxattr_query(fd, name),
            XattrSource::Path(p) => rustix::fs::lgetxattr_query(p, name),
            XattrSource::Proc(p) => rustix::fs::getxattr_query(p, name),
        }
    }

    fn value(self, name: &CStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Fd(fd) => rustix::fs::fgetxattr(fd, name, buf),
            XattrSource::Path(p) => rustix::fs::lgetxattr(p, name, buf),
            XattrSource::Proc(p) => rustix::fs::getxattr(p, name, buf),
        }
    }
}

/// Size query, then fill `out`; retried when the data grew in between.
fn fill(
    out: &mut Vec<u8>,
    mut len: impl FnMut() -> rustix::io::Result<usize>,
    mut get: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<()> {
    loop {
        let want = len()?;
        out.resize(want, 0);
        if want == 0 {
            return Ok(());
        }
        match get(out) {
            Ok(got) => {
                out.truncate(got);
                return Ok(());
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// [`xattr_snapshot`] of `name` inside `dir` without following a symlink there and without
/// building its full path (which may exceed `PATH_MAX`): through an `O_PATH | O_NOFOLLOW`
/// descriptor and its `/proc/self/fd/N` link. `Err(NOENT)` from `/proc` itself (not mounted)
/// is reported as `Ok(false)` so the caller can fall back to the path.
pub(crate) fn xattr_snapshot_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    out: &mut Vec<u8>,
) -> rustix::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let link = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| Errno::INVAL)?;
    match xattr_snapshot(XattrSource::Proc(&link), out) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) if rustix::fs::stat("/proc/self/fd").is_err() => Ok(false),
        Err(e) => Err(e),
    }
}

/// A canonical snapshot of all extended attributes of an object: names sorted, each followed
/// by its value length and value, so two snapshots are equal iff the xattr sets are equal.
/// Filesystems without xattr support yield an empty snapshot.
pub(crate) fn xattr_snapshot(src: XattrSource<'_>, out: &mut Vec<u8>) -> rustix::io::Result<()> {
    out.clear();
    let mut names = Vec::new();
    match fill(&mut names, || src.list_len(), |b| src.list(b)) {
        Ok(()) => {}
        Err(Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    }
    if names.is_empty() {
        return Ok(());
    }
    let mut list: Vec<&[u8]> = names
        .split_inclusive(|&c| c == 0)
        .filter(|n| n.len() > 1)
        .collect();
    list.sort_unstable();
    let mut value = Vec::new();
    for name in list {
        let cname = CStr::from_bytes_with_nul(name).map_err(|_| Errno::INVAL)?;
        match fill(&mut value, || src.value_len(cname), |b| src.value(cname, b)) {
            Ok(()) => {}
            // Removed between list and get.
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(e),
        }
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        out.extend_from_slice(&value);
    }
    Ok(())
}

/// The bytes of a path as a C string (paths from the OS have no interior NUL).
pub(crate) fn cpath(p: &[u8]) -> Result<std::ffi::CString> {
    std::ffi::CString::new(p).with_context(|| {
        format!(
            "path contains a NUL byte: {}",
            Path::new(std::ffi::OsStr::from_bytes(p)).display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn listing_is_sorted_and_skips_dots() {
        let t = tempfile::tempdir().unwrap();
        for n in ["b", "a", "c.d", "a-b"] {
            std::fs::write(t.path().join(n), n).unwrap();
        }
        std::fs::create_dir(t.path().join("dir")).unwrap();
        let fd = open_dir(t.path()).unwrap();
        let l = Listing::read(fd.as_fd(), FsTraits::of(fd.as_fd())).unwrap();
        let names: Vec<&[u8]> = (0..l.len()).map(|i| l.name(i)).collect();
        assert_eq!(names, [&b"a"[..], b"a-b", b"b", b"c.d", b"dir"]);
        let i = names.iter().position(|n| *n == b"dir").unwrap();
        // DT_UNKNOWN is allowed, a wrong type is not.
        assert!(matches!(l.ent(i).dtype, Some(FileType::Dir) | None));
        assert_eq!(l.cname(0).to_bytes(), b"a");
        let m = lstat_at(fd.as_fd(), l.cname(0)).unwrap();
        assert_eq!(m.ino, l.ent(0).ino);
        assert_eq!(m.file_type(), FileType::File);
    }

    /// Directories larger than one `getdents64` batch are read completely, with and without
    /// the greedy shortcut, on the filesystem under the temp dir and on tmpfs if present.
    #[test]
    fn large_directories_are_listed_completely() {
        let mut roots = vec![tempfile::tempdir().unwrap()];
        if Path::new("/dev/shm").is_dir() {
            if let Ok(t) = tempfile::tempdir_in("/dev/shm") {
                roots.push(t);
            }
        }
        for t in &roots {
            // 40 KiB of 200-byte names: two batches of the 32 KiB buffer, the second short.
            let mut want: Vec<String> = (0..200)
                .map(|i| format!("{i:04}{}", "n".repeat(196)))
                .collect();
            for n in &want {
                std::fs::write(t.path().join(n), "").unwrap();
            }
            want.sort();
            let fd = open_dir(t.path()).unwrap();
            let traits = FsTraits::of(fd.as_fd());
            for tr in [traits, FsTraits::CONSERVATIVE] {
                let fd = open_dir(t.path()).unwrap();
                let l = Listing::read(fd.as_fd(), tr).unwrap();
                let got: Vec<String> = (0..l.len())
                    .map(|i| String::from_utf8(l.name(i).to_vec()).unwrap())
                    .collect();
                assert_eq!(got, want, "{tr:?} on {}", t.path().display());
            }
        }
    }

    #[test]
    fn reclen_matches_the_kernel() {
        assert_eq!(dirent_reclen(1), 24);
        assert_eq!(dirent_reclen(4), 24);
        assert_eq!(dirent_reclen(5), 32);
        assert_eq!(MAX_DIRENT, 280);
    }

    #[test]
    fn same_bytes_compares_across_chunks() {
        let a = vec![7u8; CHUNK * 2 + 3];
        let mut b = a.clone();
        assert!(same_bytes(&mut &a[..], &mut &b[..]).unwrap());
        b[CHUNK + 1] = 8;
        assert!(!same_bytes(&mut &a[..], &mut &b[..]).unwrap());
        assert!(!same_bytes(&mut &a[..], &mut &a[..CHUNK]).unwrap());
        assert!(same_bytes(&mut &a[..CHUNK], &mut &a[..CHUNK]).unwrap());
    }
}
