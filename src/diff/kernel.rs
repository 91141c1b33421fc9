//! Kernel identity of a deployment and the reasons two identities differ.
//!
//! A live apply is only sound when everything below userspace is the same: ostree's soft-reboot
//! rule (same `bootcsum`, same kernel arguments apart from `ostree=`) plus bootc's SELinux policy
//! rule. Each difference is a named [`KernelReason`], so the decision says *why* a kexec is needed.

use crate::discover::{kernel::hex, Deployment};
use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::Path;

/// What identifies the boot-level state of one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct KernelIdentity {
    /// Kernel release (directory under `usr/lib/modules`, or the `<kver>` of a legacy
    /// `vmlinuz-<kver>-<bootcsum>`), if the tree has a kernel.
    pub(crate) version: Option<String>,
    /// ostree's `bootcsum`: sha256 over vmlinuz, initramfs, devicetree or `dtb/`, or the
    /// checksum in a legacy kernel's file name.
    pub(crate) boot_digest: Option<String>,
    pub(crate) has_initramfs: bool,
    /// Kernel arguments without `ostree=`.
    pub(crate) kargs: Vec<String>,
    /// sha256 of the SELinux policy file(s) in `usr/etc/selinux/*/policy/`, if any.
    pub(crate) selinux_policy: Option<String>,
}

/// One reason the kernel-level state differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum KernelReason {
    /// The bootcsum differs: vmlinuz, initramfs, devicetree or `dtb/` content (or a legacy
    /// kernel's checksum name).
    BootDigestChanged {
        from: Option<String>,
        to: Option<String>,
    },
    KernelVersionChanged {
        from: Option<String>,
        to: Option<String>,
    },
    /// Kernel arguments (minus `ostree=`) differ.
    KargsChanged {
        added: Vec<String>,
        removed: Vec<String>,
    },
    /// The SELinux policy differs (it is only loaded at boot).
    SelinuxPolicyChanged {
        from: Option<String>,
        to: Option<String>,
    },
}

impl KernelReason {
    pub(crate) fn describe(&self) -> String {
        let short = |s: &Option<String>| {
            s.as_deref()
                .map(|x| x.get(..12).unwrap_or(x).to_owned())
                .unwrap_or_else(|| "none".into())
        };
        match self {
            KernelReason::BootDigestChanged { from, to } => {
                format!(
                    "boot digest (ostree bootcsum: vmlinuz+initramfs+device trees) {} → {}",
                    short(from),
                    short(to)
                )
            }
            KernelReason::KernelVersionChanged { from, to } => format!(
                "kernel version {} → {}",
                from.as_deref().unwrap_or("none"),
                to.as_deref().unwrap_or("none")
            ),
            KernelReason::KargsChanged { added, removed } => format!(
                "kernel arguments changed (added: [{}], removed: [{}])",
                added.join(" "),
                removed.join(" ")
            ),
            KernelReason::SelinuxPolicyChanged { from, to } => {
                format!("SELinux policy {} → {}", short(from), short(to))
            }
        }
    }
}

/// Read the identity of a deployment (the kernel was already found by discovery).
pub(crate) fn identity(d: &Deployment) -> Result<KernelIdentity> {
    Ok(KernelIdentity {
        version: d.kernel.as_ref().map(|k| k.version.clone()),
        boot_digest: d.kernel.as_ref().map(|k| k.boot_digest.clone()),
        has_initramfs: d.kernel.as_ref().is_some_and(|k| k.initramfs.is_some()),
        kargs: d.kargs_without_ostree(),
        selinux_policy: selinux_policy_digest(&d.path)
            .with_context(|| format!("SELinux policy of deployment {}", d.id))?,
    })
}

/// sha256 over every `usr/etc/selinux/<type>/policy/policy.*` file, in name order.
pub(crate) fn selinux_policy_digest(deploy_dir: &Path) -> Result<Option<String>> {
    let base = deploy_dir.join("usr/etc/selinux");
    let types = match std::fs::read_dir(&base) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", base.display())),
    };
    let mut files = Vec::new();
    for t in types {
        let t = t.with_context(|| format!("reading {}", base.display()))?;
        let pol = t.path().join("policy");
        if let Ok(rd) = std::fs::read_dir(&pol) {
            for f in rd.flatten() {
                if f.file_name().to_string_lossy().starts_with("policy.") && f.path().is_file() {
                    files.push(f.path());
                }
            }
        }
    }
    if files.is_empty() {
        return Ok(None);
    }
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        h.update(crate::system::files::read(
            f,
            crate::system::files::Follow::Yes,
        )?);
    }
    Ok(Some(hex(&h.finalize())))
}

/// Pure: the reasons `to` cannot be reached without booting its kernel.
pub(crate) fn compare(from: &KernelIdentity, to: &KernelIdentity) -> Vec<KernelReason> {
    let mut r = Vec::new();
    if from.version != to.version {
        r.push(KernelReason::KernelVersionChanged {
            from: from.version.clone(),
            to: to.version.clone(),
        });
    }
    if from.boot_digest != to.boot_digest {
        r.push(KernelReason::BootDigestChanged {
            from: from.boot_digest.clone(),
            to: to.boot_digest.clone(),
        });
    }
    if from.kargs != to.kargs {
        let added = to
            .kargs
            .iter()
            .filter(|a| !from.kargs.contains(a))
            .cloned()
            .collect::<Vec<_>>();
        let removed = from
            .kargs
            .iter()
            .filter(|a| !to.kargs.contains(a))
            .cloned()
            .collect::<Vec<_>>();
        r.push(KernelReason::KargsChanged { added, removed });
    }
    if from.selinux_policy != to.selinux_policy {
        r.push(KernelReason::SelinuxPolicyChanged {
            from: from.selinux_policy.clone(),
            to: to.selinux_policy.clone(),
        });
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(v: &str, d: &str, kargs: &[&str]) -> KernelIdentity {
        KernelIdentity {
            version: Some(v.into()),
            boot_digest: Some(d.into()),
            has_initramfs: true,
            kargs: kargs.iter().map(|s| s.to_string()).collect(),
            selinux_policy: None,
        }
    }

    #[test]
    fn equal_is_no_reason() {
        assert!(compare(&id("6.1", "aa", &["rw"]), &id("6.1", "aa", &["rw"])).is_empty());
    }

    #[test]
    fn each_difference_is_named() {
        let r = compare(
            &id("6.1", "aa", &["rw", "quiet"]),
            &id("6.2", "bb", &["rw", "x=1"]),
        );
        assert_eq!(r.len(), 3);
        assert!(matches!(r[0], KernelReason::KernelVersionChanged { .. }));
        assert!(matches!(r[1], KernelReason::BootDigestChanged { .. }));
        assert_eq!(
            r[2],
            KernelReason::KargsChanged {
                added: vec!["x=1".into()],
                removed: vec!["quiet".into()]
            }
        );
        // Order of kargs matters to the kernel (later wins), so a reorder is a change.
        assert_eq!(
            compare(&id("6.1", "aa", &["a", "b"]), &id("6.1", "aa", &["b", "a"])).len(),
            1
        );
        let mut p = id("6.1", "aa", &[]);
        p.selinux_policy = Some("x".into());
        assert!(matches!(
            compare(&id("6.1", "aa", &[]), &p)[0],
            KernelReason::SelinuxPolicyChanged { .. }
        ));
    }
}
