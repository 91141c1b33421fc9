//! The kernel's kexec state files (sysfs, sysctl, efivarfs), parsed, and the policy read from
//! them: [`KexecStatus::blocker`], a reason any load is certain to fail.

use super::KexecError;
use serde::Serialize;
use std::io;
use std::path::Path;

/// The EFI variable that says whether the firmware booted with Secure Boot.
const SECURE_BOOT_VAR: &str = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

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
    pub(crate) fn is_active(self) -> bool {
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
pub(crate) fn parse_lockdown(content: &str) -> Option<Lockdown> {
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
pub(crate) fn parse_flag(content: &str) -> Option<bool> {
    match content.trim() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// A sysctl integer (`kexec_load_limit_reboot`: -1 is unlimited).
pub(crate) fn parse_int(content: &str) -> Option<i64> {
    content.trim().parse().ok()
}

/// The `SecureBoot` EFI variable as read from efivarfs: 4 attribute bytes, then the value byte.
pub(crate) fn parse_secure_boot(efivar: &[u8]) -> Option<bool> {
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
pub(crate) fn is_loaded(sys: &Path) -> Result<bool, KexecError> {
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
pub(crate) fn load_disabled(proc: &Path) -> Result<bool, KexecError> {
    let path = proc.join("sys/kernel/kexec_load_disabled");
    match read_state(&path)? {
        None => Ok(false),
        Some(content) => parse_flag(&content).ok_or_else(|| bad_state(&path, &content, "0 or 1")),
    }
}

/// `<proc>/sys/kernel/kexec_load_limit_reboot` (Linux 6.6+): loads left, -1 unlimited; `None` if
/// the kernel has no such limit.
pub(crate) fn load_limit_reboot(proc: &Path) -> Result<Option<i64>, KexecError> {
    let path = proc.join("sys/kernel/kexec_load_limit_reboot");
    match read_state(&path)? {
        None => Ok(None),
        Some(content) => parse_int(&content)
            .map(Some)
            .ok_or_else(|| bad_state(&path, &content, "an integer")),
    }
}

/// `<sys>/kernel/security/lockdown`; `None` if the lockdown LSM is not enabled.
pub(crate) fn lockdown(sys: &Path) -> Result<Option<Lockdown>, KexecError> {
    let path = sys.join("kernel/security/lockdown");
    match read_state(&path)? {
        None => Ok(None),
        Some(content) => parse_lockdown(&content)
            .map(Some)
            .ok_or_else(|| bad_state(&path, &content, "none, integrity or confidentiality in []")),
    }
}

/// Secure Boot state from efivarfs; `None` on a non-EFI boot or when efivarfs is not mounted.
pub(crate) fn secure_boot(sys: &Path) -> Option<bool> {
    let path = sys.join("firmware/efi/efivars").join(SECURE_BOOT_VAR);
    std::fs::read(path).ok().and_then(|b| parse_secure_boot(&b))
}

/// Everything that decides whether a kexec load can work, as read before trying.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct KexecStatus {
    /// A kernel is loaded (`/sys/kernel/kexec_loaded`).
    pub(crate) loaded: bool,
    /// `kernel.kexec_load_disabled`.
    pub(crate) load_disabled: bool,
    /// `kernel.kexec_load_limit_reboot`, if the kernel has it.
    pub(crate) load_limit_reboot: Option<i64>,
    /// Lockdown mode, if the lockdown LSM is enabled.
    pub(crate) lockdown: Option<Lockdown>,
    /// Secure Boot as the firmware reports it, on EFI systems.
    pub(crate) secure_boot: Option<bool>,
    /// This process has CAP_SYS_BOOT in its effective set (`None` if that could not be read).
    pub(crate) cap_sys_boot: Option<bool>,
}

impl KexecStatus {
    /// A reason why any load is certain to fail, known without trying.
    pub(crate) fn blocker(&self) -> Option<KexecError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn secure_boot_var() {
        let dir = tempfile::tempdir().unwrap();
        let vars = dir.path().join("firmware/efi/efivars");
        std::fs::create_dir_all(&vars).unwrap();
        std::fs::write(vars.join(SECURE_BOOT_VAR), [6, 0, 0, 0, 1]).unwrap();
        assert_eq!(secure_boot(dir.path()), Some(true));
        assert_eq!(secure_boot(&dir.path().join("none")), None);
    }
}
