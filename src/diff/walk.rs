//! Low-level tree-reading primitives shared by [`super::usr`] and [`super::etc`].
//!
//! Everything here works relative to directory file descriptors and never follows a symlink:
//! directories are opened with `O_NOFOLLOW | O_DIRECTORY`, metadata comes from `fstatat(…,
//! AT_SYMLINK_NOFOLLOW)`, symlink targets from `readlinkat`, xattrs from `flistxattr` (for
//! directory fds) or `llistxattr` (for paths). Listings keep every name of one directory in a
//! single buffer, so reading a directory costs two allocations however many entries it has.

use anyhow::{Context, Result};
use nix::dir::{Dir, Type};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::ffi::{CStr, OsString};
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The type of a filesystem object, as recorded in diffs and plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
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
    pub fn from_mode(mode: u32) -> FileType {
        match mode & libc::S_IFMT {
            libc::S_IFREG => FileType::File,
            libc::S_IFDIR => FileType::Dir,
            libc::S_IFLNK => FileType::Symlink,
            _ => FileType::Other,
        }
    }

    fn from_dirent(t: Option<Type>) -> Option<FileType> {
        Some(match t? {
            Type::File => FileType::File,
            Type::Directory => FileType::Dir,
            Type::Symlink => FileType::Symlink,
            Type::Fifo | Type::CharacterDevice | Type::BlockDevice | Type::Socket => {
                FileType::Other
            }
        })
    }
}

/// The `lstat` fields the diffs compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub rdev: u64,
    pub dev: u64,
    pub ino: u64,
}

impl Meta {
    fn from_stat(st: &FileStat) -> Meta {
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

    pub fn file_type(&self) -> FileType {
        FileType::from_mode(self.mode)
    }

    /// Permission bits including setuid/setgid/sticky.
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    /// `S_IFMT` bits.
    pub fn fmt(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub fn same_inode(&self, other: &Meta) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

/// Open a directory without following a symlink at `path` itself.
pub(crate) fn open_dir(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening directory {}", path.display()))
}

/// Open the directory `name` inside `dir`, refusing symlinks.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// `fstat` of an open descriptor.
pub(crate) fn stat_fd(fd: BorrowedFd<'_>) -> nix::Result<Meta> {
    fstat(fd).map(|st| Meta::from_stat(&st))
}

/// `lstat` of `name` inside `dir`.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<Meta> {
    fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).map(|st| Meta::from_stat(&st))
}

/// The target of the symlink `name` inside `dir`.
pub(crate) fn readlink_at(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<OsString> {
    nix::fcntl::readlinkat(dir, name)
}

/// One directory entry of a [`Listing`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ent {
    off: u32,
    len: u32,
    /// `d_ino`: the inode number as seen by `getdents`.
    pub ino: u64,
    /// `d_type`, or `None` when the filesystem reports `DT_UNKNOWN`.
    pub dtype: Option<FileType>,
}

/// The entries of one directory (without `.` and `..`), sorted by name bytes.
pub(crate) struct Listing {
    /// Every name followed by a NUL, back to back.
    names: Vec<u8>,
    ents: Vec<Ent>,
}

impl Listing {
    /// Read all entries of the open directory `fd` (which stays open; the listing uses a dup).
    pub fn read(fd: &OwnedFd) -> nix::Result<Listing> {
        let mut dir = Dir::from_fd(nix::unistd::dup(fd)?)?;
        let mut names = Vec::with_capacity(1024);
        let mut ents = Vec::with_capacity(32);
        for e in dir.iter() {
            let e = e?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let off = u32::try_from(names.len()).map_err(|_| nix::Error::E2BIG)?;
            names.extend_from_slice(name);
            names.push(0);
            ents.push(Ent {
                off,
                len: name.len() as u32,
                ino: e.ino(),
                dtype: FileType::from_dirent(e.file_type()),
            });
        }
        let buf = &names;
        ents.sort_unstable_by(|a, b| name_of(buf, a).cmp(name_of(buf, b)));
        Ok(Listing { names, ents })
    }

    pub fn len(&self) -> usize {
        self.ents.len()
    }

    pub fn ent(&self, i: usize) -> &Ent {
        &self.ents[i]
    }

    /// The name bytes of entry `i` (no NUL).
    pub fn name(&self, i: usize) -> &[u8] {
        name_of(&self.names, &self.ents[i])
    }

    /// The name of entry `i` as a C string, for `*at` calls.
    pub fn cname(&self, i: usize) -> &CStr {
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

/// Open a regular file `name` inside `dir` for reading, refusing symlinks.
pub(crate) fn open_file_at(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<std::fs::File> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map(std::fs::File::from)
}

/// Open a regular file by path for reading, refusing a symlink as the last component.
pub(crate) fn open_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
}

/// Where to read extended attributes from.
#[derive(Clone, Copy)]
pub(crate) enum XattrSource<'a> {
    /// An open descriptor (used for directories).
    Fd(BorrowedFd<'a>),
    /// A path; a symlink at the last component is not followed (`l*xattr`).
    Path(&'a CStr),
}

#[allow(unsafe_code)]
fn sys_listxattr(src: XattrSource<'_>, buf: &mut [u8]) -> isize {
    let ptr = buf.as_mut_ptr().cast::<libc::c_char>();
    // SAFETY: `ptr` points to `buf.len()` writable bytes that outlive the call (a zero length
    // only queries the size and writes nothing); the descriptor is borrowed, so it is open, and
    // the path is a valid NUL-terminated string.
    unsafe {
        match src {
            XattrSource::Fd(fd) => libc::flistxattr(fd.as_raw_fd(), ptr, buf.len()),
            XattrSource::Path(p) => libc::llistxattr(p.as_ptr(), ptr, buf.len()),
        }
    }
}

#[allow(unsafe_code)]
fn sys_getxattr(src: XattrSource<'_>, name: &CStr, buf: &mut [u8]) -> isize {
    let ptr = buf.as_mut_ptr().cast::<libc::c_void>();
    // SAFETY: as in `sys_listxattr`; `name` is a valid NUL-terminated string.
    unsafe {
        match src {
            XattrSource::Fd(fd) => libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), ptr, buf.len()),
            XattrSource::Path(p) => libc::lgetxattr(p.as_ptr(), name.as_ptr(), ptr, buf.len()),
        }
    }
}

fn last_errno() -> nix::Error {
    nix::Error::last()
}

/// Call a size-query-then-fill xattr syscall into `out`, retrying when the value grows.
fn fill(out: &mut Vec<u8>, mut call: impl FnMut(&mut [u8]) -> isize) -> nix::Result<()> {
    loop {
        let want = call(&mut []);
        if want < 0 {
            return Err(last_errno());
        }
        out.resize(want as usize, 0);
        if want == 0 {
            return Ok(());
        }
        let got = call(out);
        if got >= 0 {
            out.truncate(got as usize);
            return Ok(());
        }
        let err = last_errno();
        if err != nix::Error::ERANGE {
            return Err(err);
        }
    }
}

/// A canonical snapshot of all extended attributes of an object: names sorted, each followed
/// by its value length and value, so two snapshots are equal iff the xattr sets are equal.
/// Filesystems without xattr support yield an empty snapshot.
pub(crate) fn xattr_snapshot(src: XattrSource<'_>, out: &mut Vec<u8>) -> nix::Result<()> {
    out.clear();
    let mut names = Vec::new();
    match fill(&mut names, |b| sys_listxattr(src, b)) {
        Ok(()) => {}
        Err(nix::Error::ENOTSUP) => return Ok(()),
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
        let cname = CStr::from_bytes_with_nul(name).map_err(|_| nix::Error::EINVAL)?;
        match fill(&mut value, |b| sys_getxattr(src, cname, b)) {
            Ok(()) => {}
            // Removed between list and get.
            Err(nix::Error::ENODATA) => continue,
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
        let l = Listing::read(&fd).unwrap();
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
