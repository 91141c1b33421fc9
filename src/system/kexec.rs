//! The thin kexec layer: the `kexec_file_load(2)` syscall, the kernel's kexec state files, and
//! failures mapped to what an operator should do.
//!
//! Only `kexec_file_load` is used (never `kexec_load`, which lockdown refuses outright): the kernel
//! parses the image itself and can verify its signature. Loading replaces any image loaded before,
//! so loading again is safe. Executing the loaded kernel is not done here: that goes through
//! `systemctl kexec`, so that systemd stops services, syncs and unmounts first.
//!
//! [`RealKexec`] implements [`KexecLoader`]; it checks the kernel with [`crate::kernel_image`]
//! before the syscall, unwraps UKIs (mainline kernels do not take them: `.linux` becomes the kernel
//! fd, `.ucode` + `.initrd` the start of the initrd) and concatenates several initrds into one
//! sealed memfd (the kernel unpacks concatenated cpio archives). A bzImage is passed by its own fd,
//! so an IMA appraisal policy still sees the file's `security.ima` xattr.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use serde::Serialize;

use crate::kernel_image::{self, FileCheckError, ImageError, KernelImage};

/// `KEXEC_FILE_UNLOAD`: unload the loaded image (fds -1, no cmdline).
pub const KEXEC_FILE_UNLOAD: libc::c_ulong = 0x1;
/// `KEXEC_FILE_ON_CRASH`: load as the kdump image (not used by fastswitch).
pub const KEXEC_FILE_ON_CRASH: libc::c_ulong = 0x2;
/// `KEXEC_FILE_NO_INITRAMFS`: there is no initrd; `initrd_fd` is ignored.
pub const KEXEC_FILE_NO_INITRAMFS: libc::c_ulong = 0x4;

/// The EFI variable that says whether the firmware booted with Secure Boot.
const SECURE_BOOT_VAR: &str = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

// --- the syscall ----------------------------------------------------------------------------------

/// `kexec_file_load(kernel_fd, initrd_fd, cmdline_len, cmdline, flags)`.
///
/// `cmdline_len` passed to the kernel includes the terminating NUL, as the kernel requires.
/// `KEXEC_FILE_NO_INITRAMFS` is added when `initrd` is `None`. A `cmdline` containing a NUL byte
/// is refused with `EINVAL` before the call (the kernel would cut it there).
pub fn kexec_file_load(
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
pub fn kexec_file_unload() -> nix::Result<()> {
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

// --- kernel state files ---------------------------------------------------------------------------

/// The kernel lockdown mode (`/sys/kernel/security/lockdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lockdown {
    None,
    Integrity,
    Confidentiality,
}

impl Lockdown {
    /// Lockdown is on: an unsigned kernel is refused with EPERM.
    pub fn is_active(self) -> bool {
        self != Lockdown::None
    }
}

impl std::fmt::Display for Lockdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lockdown::None => "none",
            Lockdown::Integrity => "integrity",
            Lockdown::Confidentiality => "confidentiality",
        })
    }
}

/// The active mode in `none [integrity] confidentiality`: the bracketed word.
pub fn parse_lockdown(content: &str) -> Option<Lockdown> {
    let start = content.find('[')? + 1;
    let end = start + content[start..].find(']')?;
    match &content[start..end] {
        "none" => Some(Lockdown::None),
        "integrity" => Some(Lockdown::Integrity),
        "confidentiality" => Some(Lockdown::Confidentiality),
        _ => None,
    }
}

/// A `0`/`1` sysfs or sysctl flag.
pub fn parse_flag(content: &str) -> Option<bool> {
    match content.trim() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// A sysctl integer (`kexec_load_limit_reboot`: -1 is unlimited).
pub fn parse_int(content: &str) -> Option<i64> {
    content.trim().parse().ok()
}

/// The `SecureBoot` EFI variable as read from efivarfs: 4 attribute bytes, then the value byte.
pub fn parse_secure_boot(efivar: &[u8]) -> Option<bool> {
    match efivar.get(4) {
        Some(0) => Some(false),
        Some(1) => Some(true),
        _ => None,
    }
}

/// Read a state file; `Ok(None)` if it does not exist (the feature is not in this kernel).
fn read_state(path: &Path) -> Result<Option<String>, KexecError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KexecError::Io {
            path: path.to_path_buf(),
            action: "read kernel kexec state from",
            source: e,
        }),
    }
}

fn bad_state(path: &Path, content: &str, expected: &str) -> KexecError {
    KexecError::StateFile {
        path: path.to_path_buf(),
        detail: format!(
            "unexpected content {:?}, expected {expected}",
            content.trim()
        ),
    }
}

/// `<sys>/kernel/kexec_loaded`: a kernel is loaded and `systemctl kexec` (or a plain
/// `systemctl reboot`) will start it.
pub fn is_loaded(sys: &Path) -> Result<bool, KexecError> {
    let path = sys.join("kernel/kexec_loaded");
    let content = read_state(&path)?.ok_or_else(|| KexecError::StateFile {
        path: path.clone(),
        detail: "missing: the running kernel was built without kexec support \
                 (CONFIG_KEXEC_CORE); a full reboot is needed"
            .into(),
    })?;
    parse_flag(&content).ok_or_else(|| bad_state(&path, &content, "0 or 1"))
}

/// `<proc>/sys/kernel/kexec_load_disabled`: once 1, no kexec load is possible until reboot.
/// A missing file reads as "not disabled".
pub fn load_disabled(proc: &Path) -> Result<bool, KexecError> {
    let path = proc.join("sys/kernel/kexec_load_disabled");
    match read_state(&path)? {
        None => Ok(false),
        Some(content) => parse_flag(&content).ok_or_else(|| bad_state(&path, &content, "0 or 1")),
    }
}

/// `<proc>/sys/kernel/kexec_load_limit_reboot` (Linux 6.6+): loads left, -1 unlimited; `None` if
/// the kernel has no such limit.
pub fn load_limit_reboot(proc: &Path) -> Result<Option<i64>, KexecError> {
    let path = proc.join("sys/kernel/kexec_load_limit_reboot");
    match read_state(&path)? {
        None => Ok(None),
        Some(content) => parse_int(&content)
            .map(Some)
            .ok_or_else(|| bad_state(&path, &content, "an integer")),
    }
}

/// `<sys>/kernel/security/lockdown`; `None` if the lockdown LSM is not enabled.
pub fn lockdown(sys: &Path) -> Result<Option<Lockdown>, KexecError> {
    let path = sys.join("kernel/security/lockdown");
    match read_state(&path)? {
        None => Ok(None),
        Some(content) => parse_lockdown(&content)
            .map(Some)
            .ok_or_else(|| bad_state(&path, &content, "none, integrity or confidentiality in []")),
    }
}

/// Secure Boot state from efivarfs; `None` on a non-EFI boot or when efivarfs is not mounted.
pub fn secure_boot(sys: &Path) -> Option<bool> {
    let path = sys.join("firmware/efi/efivars").join(SECURE_BOOT_VAR);
    std::fs::read(path).ok().and_then(|b| parse_secure_boot(&b))
}

/// Everything that decides whether a kexec load can work, as read before trying.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KexecStatus {
    /// A kernel is loaded (`/sys/kernel/kexec_loaded`).
    pub loaded: bool,
    /// `kernel.kexec_load_disabled`.
    pub load_disabled: bool,
    /// `kernel.kexec_load_limit_reboot`, if the kernel has it.
    pub load_limit_reboot: Option<i64>,
    /// Lockdown mode, if the lockdown LSM is enabled.
    pub lockdown: Option<Lockdown>,
    /// Secure Boot as the firmware reports it, on EFI systems.
    pub secure_boot: Option<bool>,
    /// This process has CAP_SYS_BOOT in its effective set (`None` if that could not be read).
    pub cap_sys_boot: Option<bool>,
}

impl KexecStatus {
    /// A reason why any load is certain to fail, known without trying.
    pub fn blocker(&self) -> Option<KexecError> {
        if self.cap_sys_boot == Some(false) {
            return Some(KexecError::PermissionDenied {
                cap_sys_boot: Some(false),
            });
        }
        if self.load_disabled {
            return Some(KexecError::Disabled);
        }
        if self.load_limit_reboot == Some(0) {
            return Some(KexecError::LimitReached);
        }
        None
    }
}

// --- errors ---------------------------------------------------------------------------------------

/// Why a kexec load or unload failed, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum KexecError {
    #[error(
        "kexec is disabled until the next reboot (kernel.kexec_load_disabled=1, which cannot be \
         undone): a full reboot is needed"
    )]
    Disabled,

    #[error(
        "the kernel's kexec load limit is used up (kernel.kexec_load_limit_reboot=0): a full \
         reboot is needed"
    )]
    LimitReached,

    #[error(
        "{}: the kernel rejected an unsigned image (lockdown={lockdown}{}): a full reboot is \
         needed; kexec under lockdown needs a kernel signed with a key in the platform (UEFI \
         db/MOK) or secondary keyring",
        kernel.display(),
        secure_boot_note(*secure_boot)
    )]
    LockdownRejected {
        kernel: PathBuf,
        lockdown: Lockdown,
        secure_boot: Option<bool>,
    },

    #[error(
        "{}: the kernel rejected the image's signature ({errno}): kexec with signature \
         enforcement needs a kernel signed with a key in the platform (UEFI db/MOK) or secondary \
         keyring; a full reboot is needed",
        kernel.display()
    )]
    SignatureRejected { kernel: PathBuf, errno: Errno },

    #[error(
        "permission denied (EPERM{}): loading a kexec kernel needs CAP_SYS_BOOT; run fastswitch \
         as root on the host (not in a container), and in a systemd unit keep CAP_SYS_BOOT in \
         CapabilityBoundingSet= and do not filter @reboot with SystemCallFilter=",
        match cap_sys_boot { Some(false) => ", CAP_SYS_BOOT is not in the effective set", _ => "" }
    )]
    PermissionDenied { cap_sys_boot: Option<bool> },

    #[error(
        "{}: the running kernel does not accept this image format (ENOEXEC): it needs an x86_64 \
         bzImage with boot protocol 2.12+ (a UKI must be unwrapped first); a full reboot is needed",
        kernel.display()
    )]
    ImageNotAccepted { kernel: PathBuf },

    #[error(
        "{}: the running kernel rejected the load arguments (EINVAL): the {cmdline_len}-byte \
         command line may exceed the new kernel's limit, or this kernel does not know a flag",
        kernel.display()
    )]
    InvalidArgument { kernel: PathBuf, cmdline_len: usize },

    #[error("another kexec load or exec is in progress (EBUSY): retry in a moment")]
    Busy,

    #[error(
        "the running kernel has no kexec_file_load (ENOSYS): it was built without \
         CONFIG_KEXEC_FILE, or a seccomp filter blocks the call; a full reboot is needed"
    )]
    NotSupported,

    #[error(
        "not enough memory to stage the new kernel and initrd (ENOMEM): free memory and retry, \
         or do a full reboot"
    )]
    OutOfMemory,

    #[error(
        "kexec_file_load failed{}: {errno}; a full reboot is needed",
        kernel.as_ref().map(|k| format!(" for {}", k.display())).unwrap_or_default()
    )]
    Other {
        kernel: Option<PathBuf>,
        errno: Errno,
    },

    #[error(transparent)]
    Image(#[from] FileCheckError),

    #[error("{}: {error}", kernel.display())]
    Cmdline { kernel: PathBuf, error: ImageError },

    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("{}: {detail}", path.display())]
    StateFile { path: PathBuf, detail: String },

    #[error("cannot stage the {what} in a memfd: {source}")]
    Memfd {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn secure_boot_note(secure_boot: Option<bool>) -> &'static str {
    match secure_boot {
        Some(true) => ", Secure Boot on",
        Some(false) => ", Secure Boot off",
        None => "",
    }
}

impl KexecError {
    /// Kexec cannot work this boot (or for this kernel): fall back to a full reboot rather than
    /// retrying. Only [`KexecError::Busy`] and [`KexecError::OutOfMemory`] are worth a retry.
    pub fn needs_full_reboot(&self) -> bool {
        !matches!(self, KexecError::Busy | KexecError::OutOfMemory)
    }
}

/// Errnos that mean "the signature check failed" (as kexec-tools treats them), plus ENODATA,
/// which `verify_pefile_signature` returns for an unsigned image under enforcement.
fn is_signature_errno(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::EKEYREJECTED
            | Errno::ENOKEY
            | Errno::ENOPKG
            | Errno::EBADMSG
            | Errno::ELIBBAD
            | Errno::EMSGSIZE
            | Errno::ENODATA
    )
}

/// Map a failed `kexec_file_load` to an actionable error, using the state read around the call.
/// `kernel` and `cmdline_len` describe a load; `None` means an unload.
pub fn map_errno(
    errno: Errno,
    status: &KexecStatus,
    kernel: Option<&Path>,
    cmdline_len: usize,
) -> KexecError {
    let kernel_path = || kernel.map(Path::to_path_buf).unwrap_or_default();
    match errno {
        Errno::EPERM => {
            if let Some(blocker) = status.blocker() {
                return blocker;
            }
            match (status.lockdown, kernel) {
                (Some(lockdown), Some(kernel)) if lockdown.is_active() => {
                    KexecError::LockdownRejected {
                        kernel: kernel.to_path_buf(),
                        lockdown,
                        secure_boot: status.secure_boot,
                    }
                }
                _ => KexecError::PermissionDenied {
                    cap_sys_boot: status.cap_sys_boot,
                },
            }
        }
        e if kernel.is_some() && is_signature_errno(e) => KexecError::SignatureRejected {
            kernel: kernel_path(),
            errno: e,
        },
        Errno::ENOEXEC if kernel.is_some() => KexecError::ImageNotAccepted {
            kernel: kernel_path(),
        },
        Errno::EINVAL if kernel.is_some() => KexecError::InvalidArgument {
            kernel: kernel_path(),
            cmdline_len,
        },
        Errno::EBUSY => KexecError::Busy,
        Errno::ENOSYS => KexecError::NotSupported,
        Errno::ENOMEM => KexecError::OutOfMemory,
        errno => KexecError::Other {
            kernel: kernel.map(Path::to_path_buf),
            errno,
        },
    }
}

// --- the loader -----------------------------------------------------------------------------------

/// Loads (or unloads) the kernel that the next `systemctl kexec` will start.
pub trait KexecLoader {
    /// Load `kernel` (a bzImage or a UKI) with `initrds` concatenated in order (after a UKI's own
    /// `.ucode`/`.initrd`) and `cmdline`. Replaces any kernel loaded before.
    fn load(&self, kernel: &Path, initrds: &[PathBuf], cmdline: &str) -> Result<(), KexecError>;
    /// Unload the loaded kernel, if any.
    fn unload(&self) -> Result<(), KexecError>;
    /// A kernel is loaded.
    fn is_loaded(&self) -> Result<bool, KexecError>;
}

/// The real loader: syscalls, and state read from `sys_root` (normally `/sys`) and `proc_root`
/// (normally `/proc`).
#[derive(Debug, Clone)]
pub struct RealKexec {
    pub sys_root: PathBuf,
    pub proc_root: PathBuf,
}

impl Default for RealKexec {
    fn default() -> Self {
        Self {
            sys_root: PathBuf::from("/sys"),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// The fds and cmdline for one `kexec_file_load`, ready to go.
#[derive(Debug)]
pub struct PreparedLoad {
    /// What was checked: the kernel (or, for a UKI, the kernel inside it).
    pub image: KernelImage,
    pub kernel_fd: OwnedFd,
    pub initrd_fd: Option<OwnedFd>,
    pub cmdline: String,
}

/// One piece of the initrd.
enum InitrdPiece<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

impl RealKexec {
    pub fn new(sys_root: impl Into<PathBuf>, proc_root: impl Into<PathBuf>) -> Self {
        Self {
            sys_root: sys_root.into(),
            proc_root: proc_root.into(),
        }
    }

    /// Read everything that decides whether a load can work.
    pub fn status(&self) -> Result<KexecStatus, KexecError> {
        Ok(KexecStatus {
            loaded: is_loaded(&self.sys_root)?,
            load_disabled: load_disabled(&self.proc_root)?,
            load_limit_reboot: load_limit_reboot(&self.proc_root)?,
            lockdown: lockdown(&self.sys_root)?,
            secure_boot: secure_boot(&self.sys_root),
            cap_sys_boot: caps::has_cap(
                None,
                caps::CapSet::Effective,
                caps::Capability::CAP_SYS_BOOT,
            )
            .ok(),
        })
    }

    /// Check the kernel, initrds and cmdline and open (or build) the fds, without loading
    /// anything. Every refusal here names the file at fault.
    pub fn prepare(
        &self,
        kernel: &Path,
        initrds: &[PathBuf],
        cmdline: &str,
    ) -> Result<PreparedLoad, KexecError> {
        let mut file = super::files::open_regular(kernel, super::files::Follow::Yes)
            .map_err(|e| io_error(kernel, "open the kernel", e.into()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .and_then(|_| file.rewind())
            .map_err(|e| io_error(kernel, "read the kernel", e))?;
        let image = kernel_image::inspect(&bytes).map_err(|e| FileCheckError::new(kernel, e))?;
        image
            .check_cmdline(cmdline)
            .map_err(|error| KexecError::Cmdline {
                kernel: kernel.to_path_buf(),
                error,
            })?;
        for initrd in initrds {
            kernel_image::check_initramfs_file(initrd)?;
        }

        let mut pieces: Vec<InitrdPiece<'_>> = Vec::new();
        let kernel_fd = match &image.uki {
            None => OwnedFd::from(file),
            Some(parts) => {
                let linux = slice(&bytes, parts.linux, kernel)?;
                for span in &parts.initrds {
                    pieces.push(InitrdPiece::Bytes(slice(&bytes, *span, kernel)?));
                }
                sealed_memfd("fastswitch-kernel", "kernel", &[InitrdPiece::Bytes(linux)])?
            }
        };
        pieces.extend(initrds.iter().map(|p| InitrdPiece::File(p)));
        pieces.retain(|p| !matches!(p, InitrdPiece::Bytes(b) if b.is_empty()));
        let initrd_fd = match pieces.as_slice() {
            [] => None,
            [InitrdPiece::File(path)] => Some(OwnedFd::from(
                super::files::open_regular(path, super::files::Follow::Yes)
                    .map_err(|e| io_error(path, "open the initrd", e.into()))?,
            )),
            _ => Some(sealed_memfd("fastswitch-initrd", "initrd", &pieces)?),
        };
        Ok(PreparedLoad {
            image,
            kernel_fd,
            initrd_fd,
            cmdline: cmdline.to_string(),
        })
    }

    fn map_failure(&self, errno: Errno, kernel: Option<&Path>, cmdline_len: usize) -> KexecError {
        // Best effort: the state explains EPERM; if it cannot be read, map with what we have.
        let status = self.status().unwrap_or_else(|_| KexecStatus {
            lockdown: lockdown(&self.sys_root).ok().flatten(),
            load_disabled: load_disabled(&self.proc_root).unwrap_or(false),
            ..KexecStatus::default()
        });
        map_errno(errno, &status, kernel, cmdline_len)
    }
}

fn io_error(path: &Path, action: &'static str, source: io::Error) -> KexecError {
    KexecError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

fn slice<'a>(
    bytes: &'a [u8],
    span: kernel_image::Span,
    kernel: &Path,
) -> Result<&'a [u8], KexecError> {
    span.slice(bytes).ok_or_else(|| {
        FileCheckError::new(
            kernel,
            ImageError::Corrupt {
                detail: format!("section range {span:?} is not inside the file"),
            },
        )
        .into()
    })
}

/// A sealed memfd holding `pieces` back to back, each padded with NULs to a multiple of 4 bytes
/// so that every cpio archive starts aligned (the kernel's unpacker skips the NULs).
fn sealed_memfd(
    name: &str,
    what: &'static str,
    pieces: &[InitrdPiece<'_>],
) -> Result<OwnedFd, KexecError> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};

    let memfd_err = |source: io::Error| KexecError::Memfd { what, source };
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
        .map_err(|e| memfd_err(e.into()))?;
    let mut out = File::from(fd);
    let mut written: u64 = 0;
    let last = pieces.len().saturating_sub(1);
    for (i, piece) in pieces.iter().enumerate() {
        let n = match piece {
            InitrdPiece::Bytes(b) => {
                out.write_all(b).map_err(memfd_err)?;
                b.len() as u64
            }
            InitrdPiece::File(path) => {
                let mut f = super::files::open_regular(path, super::files::Follow::Yes)
                    .map_err(|e| io_error(path, "open the initrd", e.into()))?;
                io::copy(&mut f, &mut out).map_err(|e| io_error(path, "copy the initrd", e))?
            }
        };
        written += n;
        let pad = (4 - written % 4) % 4;
        if i != last && pad != 0 {
            out.write_all(&[0; 3][..pad as usize]).map_err(memfd_err)?;
            written += pad;
        }
    }
    let seals = SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_SEAL;
    fcntl(&out, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| memfd_err(e.into()))?;
    Ok(OwnedFd::from(out))
}

impl KexecLoader for RealKexec {
    fn load(&self, kernel: &Path, initrds: &[PathBuf], cmdline: &str) -> Result<(), KexecError> {
        if let Ok(status) = self.status() {
            if let Some(blocker) = status.blocker() {
                return Err(blocker);
            }
        }
        let prepared = self.prepare(kernel, initrds, cmdline)?;
        kexec_file_load(
            prepared.kernel_fd.as_fd(),
            prepared.initrd_fd.as_ref().map(AsFd::as_fd),
            &prepared.cmdline,
            0,
        )
        .map_err(|errno| self.map_failure(errno, Some(kernel), cmdline.len() + 1))
    }

    fn unload(&self) -> Result<(), KexecError> {
        kexec_file_unload().map_err(|errno| self.map_failure(errno, None, 0))
    }

    fn is_loaded(&self) -> Result<bool, KexecError> {
        is_loaded(&self.sys_root)
    }
}

/// One call a [`RecordingKexec`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KexecCall {
    Load {
        kernel: PathBuf,
        initrds: Vec<PathBuf>,
        cmdline: String,
    },
    Unload,
}

/// A [`KexecLoader`] for tests of the code that drives kexec: records every call, tracks the
/// loaded state, and fails loads with `fail_load` when set (the error is built per call).
#[derive(Default)]
pub struct RecordingKexec {
    pub calls: Mutex<Vec<KexecCall>>,
    pub loaded: Mutex<bool>,
    pub fail_load: Option<Box<dyn Fn() -> KexecError + Send + Sync>>,
}

impl RecordingKexec {
    pub fn calls(&self) -> Vec<KexecCall> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl KexecLoader for RecordingKexec {
    fn load(&self, kernel: &Path, initrds: &[PathBuf], cmdline: &str) -> Result<(), KexecError> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(KexecCall::Load {
                kernel: kernel.to_path_buf(),
                initrds: initrds.to_vec(),
                cmdline: cmdline.to_string(),
            });
        if let Some(fail) = &self.fail_load {
            return Err(fail());
        }
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = true;
        Ok(())
    }

    fn unload(&self) -> Result<(), KexecError> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(KexecCall::Unload);
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = false;
        Ok(())
    }

    fn is_loaded(&self) -> Result<bool, KexecError> {
        Ok(*self.loaded.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_image::synth::{self, BzImage};
    use crate::kernel_image::ImageKind;

    fn read_all(fd: OwnedFd) -> Vec<u8> {
        let mut f = File::from(fd);
        let mut v = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn lockdown_parsing() {
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality\n"),
            Some(Lockdown::Integrity)
        );
        assert_eq!(
            parse_lockdown("[none] integrity confidentiality\n"),
            Some(Lockdown::None)
        );
        assert_eq!(
            parse_lockdown("none integrity [confidentiality]"),
            Some(Lockdown::Confidentiality)
        );
        assert_eq!(parse_lockdown("none integrity confidentiality"), None);
        assert_eq!(parse_lockdown("[bogus]"), None);
        assert!(!Lockdown::None.is_active());
        assert!(Lockdown::Confidentiality.is_active());
    }

    #[test]
    fn flag_and_int_parsing() {
        assert_eq!(parse_flag("1\n"), Some(true));
        assert_eq!(parse_flag("0"), Some(false));
        assert_eq!(parse_flag("2\n"), None);
        assert_eq!(parse_flag(""), None);
        assert_eq!(parse_int("-1\n"), Some(-1));
        assert_eq!(parse_int("0\n"), Some(0));
        assert_eq!(parse_int("x"), None);
        assert_eq!(parse_secure_boot(&[6, 0, 0, 0, 1]), Some(true));
        assert_eq!(parse_secure_boot(&[6, 0, 0, 0, 0]), Some(false));
        assert_eq!(parse_secure_boot(&[6, 0, 0, 0]), None);
    }

    /// A fake /sys and /proc with the given kexec state.
    fn fake_roots(
        loaded: Option<&str>,
        disabled: Option<&str>,
        lockdown: Option<&str>,
    ) -> (tempfile::TempDir, RealKexec) {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let proc = dir.path().join("proc");
        std::fs::create_dir_all(sys.join("kernel/security")).unwrap();
        std::fs::create_dir_all(proc.join("sys/kernel")).unwrap();
        if let Some(v) = loaded {
            std::fs::write(sys.join("kernel/kexec_loaded"), v).unwrap();
        }
        if let Some(v) = disabled {
            std::fs::write(proc.join("sys/kernel/kexec_load_disabled"), v).unwrap();
        }
        if let Some(v) = lockdown {
            std::fs::write(sys.join("kernel/security/lockdown"), v).unwrap();
        }
        (dir, RealKexec::new(sys, proc))
    }

    #[test]
    fn state_files() {
        let (_d, k) = fake_roots(
            Some("1\n"),
            Some("0\n"),
            Some("none [integrity] confidentiality\n"),
        );
        assert!(KexecLoader::is_loaded(&k).unwrap());
        assert!(!load_disabled(&k.proc_root).unwrap());
        assert_eq!(lockdown(&k.sys_root).unwrap(), Some(Lockdown::Integrity));
        assert_eq!(load_limit_reboot(&k.proc_root).unwrap(), None);
        assert_eq!(secure_boot(&k.sys_root), None);
        std::fs::write(
            k.proc_root.join("sys/kernel/kexec_load_limit_reboot"),
            "0\n",
        )
        .unwrap();
        let status = k.status().unwrap();
        assert!(status.loaded);
        assert!(!status.load_disabled);
        assert_eq!(status.load_limit_reboot, Some(0));
        assert_eq!(status.lockdown, Some(Lockdown::Integrity));
        let with_cap = KexecStatus {
            cap_sys_boot: Some(true),
            ..status
        };
        assert!(matches!(with_cap.blocker(), Some(KexecError::LimitReached)));
        let unlimited = KexecStatus {
            load_limit_reboot: Some(-1),
            ..with_cap.clone()
        };
        assert!(unlimited.blocker().is_none());
        let disabled = KexecStatus {
            load_disabled: true,
            ..with_cap
        };
        assert!(matches!(disabled.blocker(), Some(KexecError::Disabled)));

        let (_d, k) = fake_roots(Some("0\n"), Some("1\n"), None);
        assert!(!is_loaded(&k.sys_root).unwrap());
        assert!(load_disabled(&k.proc_root).unwrap());
        assert_eq!(lockdown(&k.sys_root).unwrap(), None);

        // Missing kexec_loaded: no kexec in this kernel; garbage: named with its path.
        let (_d, k) = fake_roots(None, None, Some("garbage"));
        let e = is_loaded(&k.sys_root).unwrap_err();
        assert!(matches!(e, KexecError::StateFile { .. }));
        assert!(
            e.to_string().contains("kexec_loaded") && e.to_string().contains("CONFIG_KEXEC_CORE")
        );
        assert!(!load_disabled(&k.proc_root).unwrap());
        let e = lockdown(&k.sys_root).unwrap_err();
        assert!(e.to_string().contains("security/lockdown"), "{e}");
        let (_d, k) = fake_roots(Some("yes"), None, None);
        assert!(matches!(
            is_loaded(&k.sys_root),
            Err(KexecError::StateFile { .. })
        ));
    }

    #[test]
    fn secure_boot_var() {
        let (_d, k) = fake_roots(Some("0"), None, None);
        let vars = k.sys_root.join("firmware/efi/efivars");
        std::fs::create_dir_all(&vars).unwrap();
        std::fs::write(vars.join(SECURE_BOOT_VAR), [6, 0, 0, 0, 1]).unwrap();
        assert_eq!(secure_boot(&k.sys_root), Some(true));
    }

    #[test]
    fn errno_mapping() {
        let kernel = Path::new("/boot/vmlinuz-new");
        let plain = KexecStatus {
            cap_sys_boot: Some(true),
            ..Default::default()
        };
        let locked = KexecStatus {
            lockdown: Some(Lockdown::Integrity),
            secure_boot: Some(true),
            ..plain.clone()
        };

        let e = map_errno(Errno::EPERM, &locked, Some(kernel), 10);
        assert!(matches!(
            e,
            KexecError::LockdownRejected {
                lockdown: Lockdown::Integrity,
                ..
            }
        ));
        let msg = e.to_string();
        assert!(
            msg.contains("unsigned image (lockdown=integrity, Secure Boot on)"),
            "{msg}"
        );
        assert!(msg.contains("a full reboot is needed") && msg.contains("/boot/vmlinuz-new"));

        let disabled = KexecStatus {
            load_disabled: true,
            ..locked.clone()
        };
        assert!(matches!(
            map_errno(Errno::EPERM, &disabled, Some(kernel), 10),
            KexecError::Disabled
        ));
        assert!(KexecError::Disabled
            .to_string()
            .contains("until the next reboot"));

        let no_cap = KexecStatus {
            cap_sys_boot: Some(false),
            ..locked.clone()
        };
        let e = map_errno(Errno::EPERM, &no_cap, Some(kernel), 10);
        assert!(matches!(
            e,
            KexecError::PermissionDenied {
                cap_sys_boot: Some(false)
            }
        ));
        assert!(e.to_string().contains("CAP_SYS_BOOT"));

        assert!(matches!(
            map_errno(Errno::EPERM, &plain, Some(kernel), 10),
            KexecError::PermissionDenied { .. }
        ));
        let none_lockdown = KexecStatus {
            lockdown: Some(Lockdown::None),
            ..plain.clone()
        };
        assert!(matches!(
            map_errno(Errno::EPERM, &none_lockdown, Some(kernel), 10),
            KexecError::PermissionDenied { .. }
        ));

        for errno in [
            Errno::EKEYREJECTED,
            Errno::ENOKEY,
            Errno::EBADMSG,
            Errno::ENODATA,
        ] {
            let e = map_errno(errno, &locked, Some(kernel), 10);
            assert!(matches!(e, KexecError::SignatureRejected { errno: got, .. } if got == errno));
            assert!(e.to_string().contains("signature"), "{e}");
        }
        assert!(matches!(
            map_errno(Errno::ENOEXEC, &plain, Some(kernel), 10),
            KexecError::ImageNotAccepted { .. }
        ));
        let e = map_errno(Errno::EINVAL, &plain, Some(kernel), 4000);
        assert!(matches!(
            e,
            KexecError::InvalidArgument {
                cmdline_len: 4000,
                ..
            }
        ));
        assert!(matches!(
            map_errno(Errno::EBUSY, &plain, Some(kernel), 1),
            KexecError::Busy
        ));
        assert!(!KexecError::Busy.needs_full_reboot());
        assert!(matches!(
            map_errno(Errno::ENOSYS, &plain, None, 0),
            KexecError::NotSupported
        ));
        assert!(matches!(
            map_errno(Errno::ENOMEM, &plain, Some(kernel), 1),
            KexecError::OutOfMemory
        ));
        let e = map_errno(Errno::EBADF, &plain, None, 0);
        assert!(matches!(
            e,
            KexecError::Other {
                errno: Errno::EBADF,
                kernel: None
            }
        ));
        assert!(e.needs_full_reboot());
        // Unload: EINVAL is not about a cmdline.
        assert!(matches!(
            map_errno(Errno::EINVAL, &plain, None, 0),
            KexecError::Other {
                errno: Errno::EINVAL,
                ..
            }
        ));
    }

    #[test]
    fn prepare_bzimage_with_concatenated_initrds() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, BzImage::default().build()).unwrap();
        let a = dir.path().join("early.cpio");
        let b = dir.path().join("main.img");
        std::fs::write(&a, b"070701abc").unwrap(); // 9 bytes: padded to 12
        std::fs::write(&b, [0x28, 0xB5, 0x2F, 0xFD, 1, 2]).unwrap();
        let k = RealKexec::default();

        let p = k
            .prepare(&kernel, &[a.clone(), b.clone()], "root=/dev/vda ro")
            .unwrap();
        assert_eq!(p.image.kind, ImageKind::BzImage);
        assert_eq!(read_all(p.kernel_fd), std::fs::read(&kernel).unwrap());
        let mut want = b"070701abc\0\0\0".to_vec();
        want.extend_from_slice(&[0x28, 0xB5, 0x2F, 0xFD, 1, 2]);
        assert_eq!(read_all(p.initrd_fd.unwrap()), want);

        // One initrd: its own fd, no copy. None: no fd.
        let p = k.prepare(&kernel, std::slice::from_ref(&b), "").unwrap();
        assert_eq!(read_all(p.initrd_fd.unwrap()), std::fs::read(&b).unwrap());
        assert!(k.prepare(&kernel, &[], "").unwrap().initrd_fd.is_none());
    }

    #[test]
    fn prepare_unwraps_a_uki() {
        let dir = tempfile::tempdir().unwrap();
        let kernel_bytes = BzImage::default().build();
        let uki = dir.path().join("linux.efi");
        std::fs::write(&uki, synth::uki(&kernel_bytes)).unwrap();
        let extra = dir.path().join("extra.cpio");
        std::fs::write(&extra, b"070701extra").unwrap();

        let p = RealKexec::default()
            .prepare(&uki, std::slice::from_ref(&extra), "root=LABEL=root")
            .unwrap();
        assert_eq!(p.image.kind, ImageKind::Uki);
        assert_eq!(read_all(p.kernel_fd), kernel_bytes);
        // The UKI's .initrd (19 bytes, padded to 20), then the extra initrd.
        let mut want = b"070701-initrd-bytes\0".to_vec();
        want.extend_from_slice(b"070701extra");
        assert_eq!(read_all(p.initrd_fd.unwrap()), want);
    }

    #[test]
    fn memfd_is_sealed() {
        let fd = sealed_memfd("t", "initrd", &[InitrdPiece::Bytes(b"abc")]).unwrap();
        let mut f = File::from(fd);
        assert!(
            f.write_all(b"more").is_err(),
            "sealed memfd must refuse writes"
        );
    }

    #[test]
    fn prepare_refuses_bad_inputs_before_any_syscall() {
        let dir = tempfile::tempdir().unwrap();
        let k = RealKexec::default();
        let kernel = dir.path().join("vmlinuz");

        let e = k.prepare(&kernel, &[], "").unwrap_err();
        assert!(matches!(e, KexecError::Io { .. }));
        assert!(e.to_string().contains("vmlinuz"), "{e}");

        std::fs::write(&kernel, vec![0u8; 8192]).unwrap();
        match k.prepare(&kernel, &[], "").unwrap_err() {
            KexecError::Image(f) => {
                assert_eq!(f.image_error(), Some(&ImageError::Zeroed { len: 8192 }));
                assert!(f.to_string().starts_with(&kernel.display().to_string()));
            }
            other => panic!("{other:?}"),
        }

        std::fs::write(&kernel, BzImage::default().build()).unwrap();
        let e = k.prepare(&kernel, &[], &"x".repeat(3000)).unwrap_err();
        assert!(matches!(
            e,
            KexecError::Cmdline {
                error: ImageError::CmdlineTooLong { .. },
                ..
            }
        ));

        let empty = dir.path().join("initrd.img");
        std::fs::write(&empty, b"").unwrap();
        match k
            .prepare(&kernel, std::slice::from_ref(&empty), "")
            .unwrap_err()
        {
            KexecError::Image(f) => {
                assert_eq!(f.image_error(), Some(&ImageError::InitramfsEmpty));
                assert_eq!(f.path, empty);
            }
            other => panic!("{other:?}"),
        }
        match k
            .prepare(&kernel, &[dir.path().join("gone.img")], "")
            .unwrap_err()
        {
            KexecError::Image(f) => {
                assert!(matches!(f.problem, kernel_image::FileProblem::Missing));
            }
            other => panic!("{other:?}"),
        }
    }

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

    #[test]
    fn recording_loader() {
        let r = RecordingKexec::default();
        assert!(!r.is_loaded().unwrap());
        r.load(Path::new("/k"), &[PathBuf::from("/i")], "ro")
            .unwrap();
        assert!(r.is_loaded().unwrap());
        r.unload().unwrap();
        assert!(!r.is_loaded().unwrap());
        assert_eq!(
            r.calls(),
            vec![
                KexecCall::Load {
                    kernel: "/k".into(),
                    initrds: vec!["/i".into()],
                    cmdline: "ro".into()
                },
                KexecCall::Unload
            ]
        );
        let failing = RecordingKexec {
            fail_load: Some(Box::new(|| KexecError::Busy)),
            ..Default::default()
        };
        assert!(matches!(
            failing.load(Path::new("/k"), &[], ""),
            Err(KexecError::Busy)
        ));
        assert!(!failing.is_loaded().unwrap());
    }
}
