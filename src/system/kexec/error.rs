//! Why a kexec load failed, and the errno of a failed `kexec_file_load` mapped to what an
//! operator should do.

use super::state::{KexecStatus, Lockdown};
use crate::kernel_image::{FileCheckError, ImageError};
use nix::errno::Errno;
use std::io;
use std::path::{Path, PathBuf};

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
    pub(crate) fn needs_full_reboot(&self) -> bool {
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
pub(crate) fn map_errno(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
