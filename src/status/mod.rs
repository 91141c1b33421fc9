//! `fastswitch status`: the deployments with their marks, as JSON (stable, versioned) or as
//! text in the style of `ostree admin status`.

use crate::discover::{Deployment, Host, HostPaths};
use serde::Serialize;
use std::io::Write;
use std::path::Path;

pub(crate) mod ladder;
pub(crate) mod live;

/// Bumped on any incompatible change of the JSON below.
pub(crate) const STATUS_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub(crate) struct StatusJson {
    pub schema_version: u32,
    pub(crate) sysroot: String,
    /// The boot directory read for boot entries: the mounted `/boot` on a booted host that
    /// has the `loader` link there (a boot partition), else `<sysroot>/boot`.
    pub(crate) boot_dir: String,
    pub(crate) ostree_booted: bool,
    /// Finalization of the staged deployment is locked (it will not be applied at shutdown).
    pub(crate) finalization_locked: bool,
    /// `/run/ostree-booted`'s `root.transient` and `transient-etc` (`etc.transient`).
    pub(crate) root_transient: bool,
    pub(crate) transient_etc: Option<String>,
    /// Whether `/` is composefs and with which guarantees (`mode`: off, unverified, verity,
    /// signed), from `/run/ostree-booted`'s composefs keys and the mount table.
    pub(crate) composefs: crate::discover::composefs::Composefs,
    pub(crate) deployments: Vec<DeploymentJson>,
    /// Live-apply state from `/run/fastswitch`, when a live apply happened this boot (or a
    /// record of an earlier boot waits for `fastswitch recover`).
    pub(crate) live: Option<live::LiveJson>,
    /// The running kernel's kexec state; absent when `--root` names another system.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kexec: Option<KexecJson>,
    /// How `switch` would reach the staged (else pending) deployment from what runs now, with
    /// every lower rung's rejection (default bounds; services not examined); `null` when the
    /// host is not ostree-booted or has nothing to switch to.
    pub(crate) ladder: Option<crate::plan::ladder::Ladder>,
    /// Why the ladder could not be worked out (e.g. the diff could not read a file as this
    /// user); `status` itself still succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ladder_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct KexecJson {
    /// A kernel is loaded for `systemctl kexec` (`/sys/kernel/kexec_loaded`).
    pub(crate) loaded: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct DeploymentJson {
    pub index: usize,
    pub id: String,
    pub stateroot: String,
    pub(crate) checksum: String,
    pub(crate) serial: u32,
    pub booted: bool,
    pub staged: bool,
    pub(crate) pending: bool,
    pub(crate) rollback: bool,
    pub(crate) pinned: bool,
    pub(crate) origin: Option<OriginJson>,
    pub(crate) kernel: Option<KernelJson>,
    pub(crate) kargs: Vec<String>,
    /// The BLS entry file, absent for a staged deployment.
    pub(crate) boot_entry: Option<String>,
    /// `ostree admin unlock` state (`development`, `transient`, `hotfix`), if unlocked.
    pub(crate) unlocked: Option<String>,
    /// rpm-ostree applied changes live to it this boot.
    pub(crate) rpm_ostree_live: bool,
    /// It has a composefs image (`.ostree.cfs`).
    pub(crate) composefs_image: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct OriginJson {
    pub(crate) refspec: Option<String>,
    pub(crate) container_image_reference: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct KernelJson {
    pub(crate) version: String,
    pub(crate) boot_digest: String,
    pub(crate) has_initramfs: bool,
}

/// Whether the running kernel has a kexec kernel loaded; `None` with `--root` (another system).
pub(crate) fn kexec_state(paths: &HostPaths) -> Option<KexecJson> {
    if paths.root != Path::new("/") {
        return None;
    }
    let k = crate::system::kexec::RealKexec::default();
    crate::system::kexec::KexecLoader::is_loaded(&k)
        .ok()
        .map(|loaded| KexecJson { loaded })
}

fn deployment_json(d: &Deployment) -> DeploymentJson {
    DeploymentJson {
        index: d.index,
        id: d.id.clone(),
        stateroot: d.stateroot.clone(),
        checksum: d.checksum.clone(),
        serial: d.serial,
        booted: d.booted,
        staged: d.staged,
        pending: d.pending,
        rollback: d.rollback,
        pinned: d.pinned,
        origin: d.origin.as_ref().map(|o| OriginJson {
            refspec: o.refspec.clone(),
            container_image_reference: o.container_image_reference.clone(),
        }),
        kernel: d.kernel.as_ref().map(|k| KernelJson {
            version: k.version.clone(),
            boot_digest: k.boot_digest.clone(),
            has_initramfs: k.initramfs.is_some(),
        }),
        kargs: d.kargs.clone(),
        boot_entry: d.boot_entry.as_ref().map(|e| e.file.clone()),
        unlocked: d.unlocked.clone(),
        rpm_ostree_live: d.rpm_ostree_live,
        composefs_image: d.composefs_image,
    }
}

pub(crate) fn to_json(
    host: &Host,
    live: Option<live::LiveJson>,
    kexec: Option<KexecJson>,
) -> StatusJson {
    StatusJson {
        schema_version: STATUS_SCHEMA_VERSION,
        sysroot: host.paths.sysroot.display().to_string(),
        boot_dir: host.paths.boot.display().to_string(),
        ostree_booted: host.ostree_booted,
        finalization_locked: host.finalization_locked,
        root_transient: host.booted_state.as_ref().is_some_and(|b| b.root_transient),
        transient_etc: host
            .booted_state
            .as_ref()
            .and_then(|b| b.transient_etc.clone()),
        composefs: composefs_of(host),
        deployments: host.deployments.iter().map(deployment_json).collect(),
        live,
        kexec,
        ladder: None,
        ladder_error: None,
    }
}

/// The composefs state of the running root (off when the host is not ostree-booted).
pub(crate) fn composefs_of(host: &Host) -> crate::discover::composefs::Composefs {
    let none = crate::discover::BootedState::default();
    crate::discover::composefs::composefs(host.booted_state.as_ref().unwrap_or(&none))
}

/// Human output, modelled on `ostree admin status`.
///
/// Long: one `writeln!` per line of the output, in output order.
pub(crate) fn write_human(
    out: &mut dyn Write,
    host: &Host,
    live_lines: &[String],
) -> std::io::Result<()> {
    if host.deployments.is_empty() {
        writeln!(out, "No deployments.")?;
    }
    for d in &host.deployments {
        let mark = if d.booted { '*' } else { ' ' };
        let tag = if d.staged {
            " (staged)"
        } else if d.pending {
            " (pending)"
        } else if d.rollback {
            " (rollback)"
        } else {
            ""
        };
        let lock = if d.staged && host.finalization_locked {
            " (finalization locked)"
        } else {
            ""
        };
        writeln!(out, "{mark} {} {}{tag}{lock}", d.stateroot, d.id)?;
        if let Some(u) = &d.unlocked {
            writeln!(out, "    Unlocked: {u}")?;
        }
        if d.rpm_ostree_live {
            writeln!(out, "    rpm-ostree live changes applied")?;
        }
        if d.composefs_image
            && composefs_of(host).mode != crate::discover::composefs::ComposefsMode::Off
        {
            writeln!(out, "    composefs image: .ostree.cfs")?;
        }
        if let Some(o) = &d.origin {
            if let Some(r) = &o.refspec {
                writeln!(out, "    origin refspec: {r}")?;
            } else if let Some(c) = &o.container_image_reference {
                writeln!(out, "    origin: {c}")?;
            }
        } else {
            writeln!(out, "    origin: <unknown origin type>")?;
        }
        if d.pinned {
            writeln!(out, "    Pinned: yes")?;
        }
        match &d.kernel {
            Some(k) => writeln!(
                out,
                "    kernel: {} (boot digest {}{})",
                k.version,
                &k.boot_digest[..12],
                if k.initramfs.is_some() {
                    ""
                } else {
                    ", no initramfs"
                }
            )?,
            None => writeln!(
                out,
                "    kernel: none found (usr/lib/modules, usr/lib/ostree-boot, boot)"
            )?,
        }
        if !d.kargs.is_empty() {
            writeln!(out, "    kargs: {}", d.kargs.join(" "))?;
        }
    }
    if host.ostree_booted {
        writeln!(out, "{}", composefs_of(host).describe())?;
    }
    if let Some(b) = &host.booted_state {
        if b.root_transient {
            writeln!(out, "root: transient (root.transient)")?;
        }
        if let Some(e) = &b.transient_etc {
            writeln!(out, "/etc: transient (upper in {e})")?;
        }
    }
    for l in live_lines {
        writeln!(out, "{l}")?;
    }
    if host.ostree_booted && host.booted().is_none() {
        writeln!(
            out,
            "warning: {} exists but no deployment matches the booted root",
            host.paths.ostree_booted_file().display()
        )?;
    }
    Ok(())
}
