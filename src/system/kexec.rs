//! The thin kexec layer: the `kexec_file_load(2)` syscall, the kernel's kexec state files, and
//! failures mapped to what an operator should do.
//!
//! Only `kexec_file_load` is used (never `kexec_load`, which lockdown refuses outright): the kernel
//! parses the image itself and can verify its signature. Loading replaces any image loaded before,
//! so loading again is safe. Executing the loaded kernel is not done here: that goes through
//! `systemctl kexec`, so that systemd stops services, syncs and unmounts first.
//!
//! [`RealKexec`] implements [`KexecLoader`]. The jobs live in submodules: [`syscall`] (the raw
//! call), [`state`] (the kernel's state files and what they forbid), [`error`] (failures and
//! errno → advice), [`load_files`] (checking the kernel, unwrapping a UKI, building the initrd).

pub mod error;
pub mod load_files;
#[cfg(test)]
pub mod recording;
pub mod state;
pub mod syscall;

pub(crate) use error::{map_errno, KexecError};
pub(crate) use load_files::{prepare_load, PreparedLoad};
pub(crate) use state::{
    is_loaded, load_disabled, load_limit_reboot, lockdown, secure_boot, KexecStatus,
};
pub(crate) use syscall::{kexec_file_load, kexec_file_unload};

use nix::errno::Errno;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// The file in `<run>/fastswitch` that describes a kernel `fastswitch prepare` loaded (see
/// `crate::exec::kexec::prepared`). Any other load or unload makes it stale, so
/// [`RealKexec`] removes it.
pub(crate) const PREPARED_RECORD: &str = "kexec-prepared.json";

/// Loads (or unloads) the kernel that the next `systemctl kexec` will start.
pub(crate) trait KexecLoader {
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
    pub(crate) sys_root: PathBuf,
    pub(crate) proc_root: PathBuf,
    /// The [`PREPARED_RECORD`] removed before every load and unload (`None`: none).
    pub(crate) prepared_record: Option<PathBuf>,
}

impl Default for RealKexec {
    fn default() -> Self {
        Self {
            sys_root: PathBuf::from("/sys"),
            proc_root: PathBuf::from("/proc"),
            prepared_record: Some(Path::new("/run/fastswitch").join(PREPARED_RECORD)),
        }
    }
}

impl RealKexec {
    #[cfg(test)]
    pub(crate) fn new(sys_root: impl Into<PathBuf>, proc_root: impl Into<PathBuf>) -> Self {
        Self {
            sys_root: sys_root.into(),
            proc_root: proc_root.into(),
            prepared_record: None,
        }
    }

    /// Check the kernel, initrds and cmdline and open (or build) the fds, without loading.
    pub fn prepare(
        &self,
        kernel: &Path,
        initrds: &[PathBuf],
        cmdline: &str,
    ) -> Result<PreparedLoad, KexecError> {
        prepare_load(kernel, initrds, cmdline)
    }

    /// The loaded kernel is about to change: what the record describes will not be loaded.
    fn forget_prepared(&self) -> Result<(), KexecError> {
        let Some(p) = &self.prepared_record else {
            return Ok(());
        };
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(KexecError::Io {
                path: p.clone(),
                action: "remove",
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Read everything that decides whether a load can work.
    pub(crate) fn status(&self) -> Result<KexecStatus, KexecError> {
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

impl KexecLoader for RealKexec {
    fn load(&self, kernel: &Path, initrds: &[PathBuf], cmdline: &str) -> Result<(), KexecError> {
        if let Ok(status) = self.status() {
            if let Some(blocker) = status.blocker() {
                return Err(blocker);
            }
        }
        let prepared = self.prepare(kernel, initrds, cmdline)?;
        self.forget_prepared()?;
        kexec_file_load(
            prepared.kernel_fd.as_fd(),
            prepared.initrd_fd.as_ref().map(AsFd::as_fd),
            &prepared.cmdline,
            0,
        )
        .map_err(|errno| self.map_failure(errno, Some(kernel), cmdline.len() + 1))
    }

    fn unload(&self) -> Result<(), KexecError> {
        self.forget_prepared()?;
        kexec_file_unload().map_err(|errno| self.map_failure(errno, None, 0))
    }

    fn is_loaded(&self) -> Result<bool, KexecError> {
        is_loaded(&self.sys_root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::kexec::state::Lockdown;

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
}
