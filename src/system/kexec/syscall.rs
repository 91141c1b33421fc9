//! The `kexec_file_load(2)` syscall and nothing else.

use nix::errno::Errno;
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd};

/// `KEXEC_FILE_UNLOAD`: unload the loaded image (fds -1, no cmdline).
pub(crate) const KEXEC_FILE_UNLOAD: libc::c_ulong = 0x1;
/// `KEXEC_FILE_NO_INITRAMFS`: there is no initrd; `initrd_fd` is ignored.
pub(crate) const KEXEC_FILE_NO_INITRAMFS: libc::c_ulong = 0x4;

// --- the syscall ----------------------------------------------------------------------------------

/// `kexec_file_load(kernel_fd, initrd_fd, cmdline_len, cmdline, flags)`.
///
/// `cmdline_len` passed to the kernel includes the terminating NUL, as the kernel requires.
/// `KEXEC_FILE_NO_INITRAMFS` is added when `initrd` is `None`. A `cmdline` containing a NUL byte
/// is refused with `EINVAL` before the call (the kernel would cut it there).
pub(crate) fn kexec_file_load(
    kernel: BorrowedFd<'_>,
    initrd: Option<BorrowedFd<'_>>,
    cmdline: &str,
    flags: libc::c_ulong,
) -> nix::Result<()> {
    let cmdline = CString::new(cmdline).map_err(|_| Errno::EINVAL)?;
    let (initrd_fd, flags) = match initrd {
        Some(fd) => (fd.as_raw_fd(), flags),
        None => (-1, flags | KEXEC_FILE_NO_INITRAMFS),
    };
    raw_kexec_file_load(kernel.as_raw_fd(), initrd_fd, Some(&cmdline), flags)
}

/// Unload the currently loaded kexec image (`KEXEC_FILE_UNLOAD`). Succeeds if none is loaded.
pub(crate) fn kexec_file_unload() -> nix::Result<()> {
    raw_kexec_file_load(-1, -1, None, KEXEC_FILE_UNLOAD)
}

#[allow(unsafe_code)]
fn raw_kexec_file_load(
    kernel_fd: libc::c_int,
    initrd_fd: libc::c_int,
    cmdline: Option<&CStr>,
    flags: libc::c_ulong,
) -> nix::Result<()> {
    let (len, ptr) = match cmdline {
        Some(c) => (c.to_bytes_with_nul().len(), c.as_ptr()),
        None => (0, std::ptr::null()),
    };
    // SAFETY: kexec_file_load(2) takes two fds (or -1), a byte count, a pointer to that many
    // readable bytes (or 0 and NULL) and flags. `ptr`/`len` describe `cmdline` including its NUL,
    // which stays borrowed for the whole call; the kernel only reads through the pointer and keeps
    // no reference to it. The fds are plain integers to the kernel (an invalid one gives EBADF).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            libc::c_long::from(kernel_fd),
            libc::c_long::from(initrd_fd),
            len as libc::c_ulong,
            ptr,
            flags,
        )
    };
    Errno::result(ret).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsFd;

    /// The real syscall with an undefined flag: the kernel checks permission, then flags, so this
    /// fails with EPERM (no CAP_SYS_BOOT) or EINVAL, or ENOSYS where seccomp or the kernel lacks
    /// it. It can never load or unload anything.
    #[test]
    fn syscall_is_wired_and_refuses_unknown_flags() {
        let r = raw_kexec_file_load(-1, -1, None, 0x8000_0000);
        match r {
            Err(Errno::EPERM | Errno::EINVAL | Errno::ENOSYS) => {}
            other => panic!("unexpected result {other:?}"),
        }
        // A cmdline with a NUL never reaches the kernel.
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("k")).unwrap();
        assert_eq!(
            kexec_file_load(f.as_fd(), None, "a\0b", 0x8000_0000),
            Err(Errno::EINVAL)
        );
    }
}
