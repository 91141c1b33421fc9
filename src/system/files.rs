//! The one way fastswitch opens a file it only reads and does not control (boot entries,
//! origin files, `/run/ostree*` state, its own state files, kernel files, unit files in a
//! target tree): anything but a regular file is refused with an error naming the path and
//! what is there, so a FIFO can never block a command and a device node is never opened.
//!
//! How: the path is first opened with `O_PATH` (no read access, so opening a FIFO, socket or
//! device has no effect and cannot block), the type is taken from `fstat` of that descriptor,
//! and only a regular file is then opened for reading with `O_RDONLY | O_NONBLOCK | O_NOCTTY`;
//! the second descriptor must be the same inode (else the file was swapped in between) and
//! `O_NONBLOCK` is cleared. Absence is reported as `Ok(None)` only when nothing is at the path;
//! a dangling symlink is an error that names its target.

use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;
use std::fs::File;
use std::io::Read;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

/// Why a read-only input could not be opened. Every variant names the path.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error("{path} does not exist")]
    Missing { path: PathBuf },
    #[error("{path} is a dangling symbolic link (to {target}); expected a regular file")]
    Dangling { path: PathBuf, target: String },
    #[error("{path} is a {kind}, not a regular file; refusing to read it")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path} changed while it was being opened (now a {kind}); refusing to read it")]
    Swapped { path: PathBuf, kind: &'static str },
    #[error("{action} {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl From<FileError> for std::io::Error {
    fn from(e: FileError) -> std::io::Error {
        let kind = match &e {
            FileError::Missing { .. } => std::io::ErrorKind::NotFound,
            FileError::Dangling { .. }
            | FileError::NotRegular { .. }
            | FileError::Swapped { .. } => std::io::ErrorKind::InvalidInput,
            FileError::Io { source, .. } => source.kind(),
        };
        std::io::Error::new(kind, e)
    }
}

/// Whether a symlink as the last path component is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Follow {
    /// Follow it (the file may legitimately be a symlink; a dangling one is an error).
    Yes,
    /// Refuse it (`O_NOFOLLOW`): used for fastswitch's own state files.
    No,
}

/// Human name of the `S_IFMT` bits of a mode.
pub(crate) fn kind_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symbolic link",
        libc::S_IFIFO => "FIFO (named pipe)",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        _ => "file of unknown type",
    }
}

fn io(path: &Path, action: &'static str, e: Errno) -> FileError {
    FileError::Io {
        path: path.to_path_buf(),
        action,
        source: e.into(),
    }
}

/// Open `name` relative to `dir` (an absolute `name` ignores `dir`) for reading, refusing
/// anything but a regular file. `shown` is the path used in errors. `Ok(None)`: nothing is at
/// that path (or a parent directory is missing).
pub(crate) fn open_regular_at(
    dir: BorrowedFd<'_>,
    name: &Path,
    shown: &Path,
    follow: Follow,
) -> Result<Option<File>, FileError> {
    let nofollow = if follow == Follow::No {
        OFlags::NOFOLLOW
    } else {
        OFlags::empty()
    };
    let probe = match rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::CLOEXEC | nofollow,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => {
            // Nothing there, or a symlink pointing nowhere?
            return match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                    let target = rustix::fs::readlinkat(dir, name, Vec::new())
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_else(|_| "?".into());
                    Err(FileError::Dangling {
                        path: shown.to_path_buf(),
                        target,
                    })
                }
                _ => Ok(None),
            };
        }
        Err(e) => return Err(io(shown, "opening", e)),
    };
    let st = rustix::fs::fstat(&probe).map_err(|e| io(shown, "stat", e))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(FileError::NotRegular {
            path: shown.to_path_buf(),
            kind: kind_name(st.st_mode),
        });
    }
    let fd = match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC | nofollow,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => return Err(io(shown, "opening", e)),
    };
    let st2 = rustix::fs::fstat(&fd).map_err(|e| io(shown, "stat", e))?;
    if st2.st_mode & libc::S_IFMT != libc::S_IFREG
        || (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino)
    {
        return Err(FileError::Swapped {
            path: shown.to_path_buf(),
            kind: kind_name(st2.st_mode),
        });
    }
    let fl = rustix::fs::fcntl_getfl(&fd).map_err(|e| io(shown, "fcntl", e))?;
    rustix::fs::fcntl_setfl(&fd, fl.difference(OFlags::NONBLOCK))
        .map_err(|e| io(shown, "fcntl", e))?;
    Ok(Some(File::from(fd)))
}

/// [`open_regular_at`] for a path (relative paths are relative to the working directory).
pub(crate) fn open_regular_opt(path: &Path, follow: Follow) -> Result<Option<File>, FileError> {
    open_regular_at(CWD, path, path, follow)
}

/// Like [`open_regular_opt`], but a missing file is an error too.
pub(crate) fn open_regular(path: &Path, follow: Follow) -> Result<File, FileError> {
    open_regular_opt(path, follow)?.ok_or_else(|| FileError::Missing {
        path: path.to_path_buf(),
    })
}

fn read_all(mut f: File, shown: &Path) -> Result<Vec<u8>, FileError> {
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|source| FileError::Io {
        path: shown.to_path_buf(),
        action: "reading",
        source,
    })?;
    Ok(buf)
}

/// The whole content of a regular file; `Ok(None)` when nothing is at `path`.
pub(crate) fn read_opt(path: &Path, follow: Follow) -> Result<Option<Vec<u8>>, FileError> {
    open_regular_opt(path, follow)?
        .map(|f| read_all(f, path))
        .transpose()
}

/// The whole content of a regular file; missing is an error.
pub(crate) fn read(path: &Path, follow: Follow) -> Result<Vec<u8>, FileError> {
    read_all(open_regular(path, follow)?, path)
}

/// [`read`] as UTF-8 text.
pub(crate) fn read_to_string(path: &Path, follow: Follow) -> Result<String, FileError> {
    utf8(read(path, follow)?, path)
}

/// [`read_opt`] as UTF-8 text.
pub(crate) fn read_to_string_opt(path: &Path, follow: Follow) -> Result<Option<String>, FileError> {
    read_opt(path, follow)?.map(|b| utf8(b, path)).transpose()
}

fn utf8(b: Vec<u8>, path: &Path) -> Result<String, FileError> {
    String::from_utf8(b).map_err(|e| FileError::Io {
        path: path.to_path_buf(),
        action: "reading",
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::time::{Duration, Instant};

    fn err(p: &Path) -> String {
        read(p, Follow::Yes).unwrap_err().to_string()
    }

    #[test]
    fn regular_missing_dangling() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"data").unwrap();
        assert_eq!(read(&f, Follow::Yes).unwrap(), b"data");
        let missing = d.path().join("nope");
        assert!(read_opt(&missing, Follow::Yes).unwrap().is_none());
        assert!(err(&missing).contains("does not exist"));
        assert!(read_opt(&d.path().join("nodir/x"), Follow::Yes)
            .unwrap()
            .is_none());
        let dl = d.path().join("dangling");
        symlink("/nonexistent/target", &dl).unwrap();
        let e = read_opt(&dl, Follow::Yes).unwrap_err().to_string();
        assert!(
            e.contains("dangling symbolic link") && e.contains("/nonexistent/target"),
            "{e}"
        );
        let l = d.path().join("link");
        symlink(&f, &l).unwrap();
        assert_eq!(read(&l, Follow::Yes).unwrap(), b"data");
        let e = read(&l, Follow::No).unwrap_err().to_string();
        assert!(e.contains("symbolic link") && e.contains("link"), "{e}");
    }

    #[test]
    fn special_files_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let sock = d.path().join("sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = Instant::now();
        for (p, kind) in [
            (fifo.as_path(), "FIFO"),
            (sock.as_path(), "socket"),
            (Path::new("/dev/null"), "character device"),
            (d.path(), "directory"),
        ] {
            let e = err(p);
            assert!(e.contains(kind) && e.contains(&*p.to_string_lossy()), "{e}");
        }
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
