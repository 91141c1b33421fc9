//! Compare two deployments and decide what it takes to switch: nothing, a live apply, or a
//! kexec. Everything is computed on the two physical deployment directories, never through `/`.
//!
//! - [`usr`]: the `/usr` tree diff (equal to `ostree diff` restricted to `/usr`);
//! - [`etc`]: ostree's 3-way `/etc` merge, as per-path actions on the live `/etc`;
//! - [`crate::units::changes`]: unit files, drop-ins and enablement links;
//! - [`kernel`]: boot digest, kernel version, kargs minus `ostree=`, SELinux policy.

pub mod etc;
pub mod kernel;
pub mod outside;
pub mod repo;
pub mod usr;

/// The unit part of a diff, for callers above `diff` ([`diff_deployments_then`]).
pub(crate) use crate::units::UnitFileChange;
mod walk;

use crate::discover::{Deployment, Host};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Bumped on any incompatible change of the diff JSON.
pub(crate) const DIFF_SCHEMA_VERSION: u32 = 1;

/// Which deployment, as shown in diff, plan and report JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRef {
    pub index: usize,
    pub id: String,
    pub stateroot: String,
    pub path: PathBuf,
    pub booted: bool,
    pub staged: bool,
}

impl From<&Deployment> for DeploymentRef {
    fn from(d: &Deployment) -> Self {
        DeploymentRef {
            index: d.index,
            id: d.id.clone(),
            stateroot: d.stateroot.clone(),
            path: d.path.clone(),
            booted: d.booted,
            staged: d.staged,
        }
    }
}

/// What it takes to make `to` the running system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// The trees are equal.
    None,
    /// Userspace only: bind `/usr`, merge `/etc`, restart services.
    Live,
    /// Something below userspace changed: boot the new kernel (kexec).
    Kexec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub kind: DecisionKind,
    /// Human-readable reasons; the typed ones are in `kernel.reasons`.
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct KernelDiff {
    pub from: kernel::KernelIdentity,
    pub to: kernel::KernelIdentity,
    pub reasons: Vec<kernel::KernelReason>,
}

/// The full comparison of two deployments.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeploymentDiff {
    pub schema_version: u32,
    pub from: DeploymentRef,
    pub to: DeploymentRef,
    pub decision: Decision,
    pub(crate) kernel: KernelDiff,
    pub usr: usr::UsrDiff,
    /// Top-level content outside `/usr` that differs ([`outside`]); a live apply cannot swap it.
    pub(crate) outside_usr: Vec<outside::OutsideChange>,
    pub(crate) etc: etc::EtcPlan,
    pub(crate) units: Vec<crate::units::changes::UnitFileChange>,
    /// How long each part of the diff took.
    pub(crate) timings: DiffTimings,
}

/// Milliseconds per part of [`diff_deployments`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct DiffTimings {
    pub(crate) kernel_ms: u64,
    pub(crate) usr_ms: u64,
    pub(crate) outside_usr_ms: u64,
    pub(crate) etc_ms: u64,
    /// How the `/etc` plan compared files.
    pub(crate) etc_compared: etc::EtcCompared,
    pub(crate) units_ms: u64,
}

impl DiffTimings {
    pub(crate) fn parts(&self) -> [(&'static str, u64); 5] {
        [
            ("kernel", self.kernel_ms),
            ("usr", self.usr_ms),
            ("outside_usr", self.outside_usr_ms),
            ("etc", self.etc_ms),
            ("units", self.units_ms),
        ]
    }
}

/// Files under `/usr` that only the initramfs reads, at boot: a change to one of them takes a
/// boot, like a kernel change. (ostree-prepare-root reads its configuration before the root is
/// mounted; changing it live changes nothing until the next boot.)
pub(crate) const BOOT_TIME_USR_FILES: [&str; 1] = ["/usr/lib/ostree/prepare-root.conf"];

/// Pure: the decision from the parts.
pub fn decision(
    usr: &usr::UsrDiff,
    outside_usr: &[outside::OutsideChange],
    units_changed: usize,
    etc_actions: usize,
    kernel: &[kernel::KernelReason],
) -> Decision {
    let mut boot_reasons: Vec<String> = kernel.iter().map(|r| r.describe()).collect();
    if !outside_usr.is_empty() {
        boot_reasons.push(format!(
            "content outside /usr changed ({}): a live apply swaps only /usr",
            outside_usr
                .iter()
                .map(|c| c.path.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for f in BOOT_TIME_USR_FILES {
        if usr.get(f).is_some() {
            boot_reasons.push(format!(
                "{f} changed: ostree-prepare-root reads it only at boot"
            ));
        }
    }
    if !boot_reasons.is_empty() {
        return Decision {
            kind: DecisionKind::Kexec,
            reasons: boot_reasons,
        };
    }
    if usr.entries.is_empty() {
        return Decision {
            kind: DecisionKind::None,
            reasons: vec![
                "the two deployments have identical /usr, content outside it, and kernel".into(),
            ],
        };
    }
    let c = &usr.counts;
    let mut reasons = vec![format!(
        "/usr: {} added, {} removed, {} modified; kernel unchanged",
        c.added, c.removed, c.modified
    )];
    if units_changed > 0 {
        reasons.push(format!("{units_changed} systemd unit change(s)"));
    }
    if etc_actions > 0 {
        reasons.push(format!("{etc_actions} /etc merge action(s)"));
    }
    Decision {
        kind: DecisionKind::Live,
        reasons,
    }
}

/// Pick `from`/`to` by the user's selectors: from = booted, to = staged else pending.
pub(crate) fn select_pair<'h>(
    host: &'h Host,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(&'h Deployment, &'h Deployment)> {
    use crate::exit::{refuse, ExitCode};
    let from = match from {
        Some(sel) => host.select(sel)?,
        None => host.booted().ok_or_else(|| {
            refuse(
                ExitCode::Refused,
                format!(
                    "no booted deployment in {} (not an ostree-booted host, or a sysroot mounted elsewhere): pass --from",
                    host.paths.sysroot.display()
                ),
            )
        })?,
    };
    let to = match to {
        Some(sel) => host.select(sel)?,
        None => host.staged().or_else(|| host.pending()).ok_or_else(|| {
            refuse(
                ExitCode::Refused,
                "no staged or pending deployment to switch to: stage one first (e.g. `ostree admin deploy --stage`, `rpm-ostree install`, `bootc upgrade`), or pass --to",
            )
        })?,
    };
    Ok((from, to))
}

/// The pair a switch of the running system compares. As [`select_pair`], except that `from`
/// defaults to what userspace runs: `live_target` (the target of a live apply completed in this
/// boot) when there is one, else the booted deployment.
pub(crate) fn select_running_pair<'h>(
    host: &'h Host,
    live_target: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(&'h Deployment, &'h Deployment)> {
    let (booted, to) = select_pair(host, from, to)?;
    // A live target that is gone (ostree removed it when a newer deployment was staged; /usr
    // still shows fastswitch's own copy of it): plan from the booted deployment. The callers
    // say so ([`gone_live_target_note`]).
    let running = match (from, live_target) {
        (None, Some(id)) => host.deployments.iter().find(|d| d.id == id),
        _ => None,
    };
    Ok((running.unwrap_or(booted), to))
}

/// What `apply-live` and `switch` say when the live target is no longer a deployment: they plan
/// from the booted deployment instead. `None` when the live target is still there (or none).
pub(crate) fn gone_live_target_note(host: &Host, live_target: Option<&str>) -> Option<String> {
    let id = live_target?;
    if host.deployments.iter().any(|d| d.id == id) {
        return None;
    }
    let booted = host.booted().map(|b| b.id.as_str()).unwrap_or("?");
    Some(format!(
        "userspace runs {id} (a live apply), whose deployment ostree removed when a newer one was staged (/usr shows fastswitch's own copy of it); planning from the booted deployment {booted}: /etc files the live apply changed count as local edits, so they are kept and listed as conflicts"
    ))
}

/// Compare two deployments of a host. `local_etc` is the admin's current `/etc`: for the booted
/// deployment that is its own `etc` directory (the live /etc is a bind of it).
pub(crate) fn diff_deployments(from: &Deployment, to: &Deployment) -> Result<DeploymentDiff> {
    diff_deployments_then(from, to, |_| ()).map(|(d, _)| d)
}

/// [`diff_deployments`], running `after_units` on the unit changes as soon as they are known,
/// beside the rest of the diff (`apply-live` asks systemd about the changed units there). Its
/// value is `None` when the unit diff failed (the error is the diff's).
pub(crate) fn diff_deployments_then<T: Send>(
    from: &Deployment,
    to: &Deployment,
    after_units: impl FnOnce(&[crate::units::UnitFileChange]) -> T + Send,
) -> Result<(DeploymentDiff, Option<T>)> {
    // The unit diff needs nothing from the other parts: it runs beside them, and its result
    // (or error) is taken where it comes in the order of the parts.
    std::thread::scope(|sc| {
        let units = sc.spawn(|| {
            let t = std::time::Instant::now();
            let units = crate::units::changes::diff_units(&from.path, &to.path)
                .with_context(|| format!("comparing systemd units of {} and {}", from.id, to.id));
            let ms = t.elapsed().as_millis() as u64;
            let then = units.as_ref().ok().map(|u| after_units(u));
            ((units, ms), then)
        });
        let mut then = None;
        let d = diff_parts(from, to, || {
            let (units, t) = units
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            then = t;
            units
        })?;
        Ok((d, then))
    })
}

/// [`diff_deployments`]' parts in order; `units` waits for the unit diff.
fn diff_parts(
    from: &Deployment,
    to: &Deployment,
    units: impl FnOnce() -> (Result<Vec<crate::units::UnitFileChange>>, u64),
) -> Result<DeploymentDiff> {
    let ms = |t: std::time::Instant| t.elapsed().as_millis() as u64;
    let mut timings = DiffTimings::default();
    let t = std::time::Instant::now();
    let kfrom = kernel::identity(from)?;
    let kto = kernel::identity(to)?;
    let reasons = kernel::compare(&kfrom, &kto);
    timings.kernel_ms = ms(t);
    let t = std::time::Instant::now();
    let usr = usr::diff_usr(&from.path, &to.path)
        .with_context(|| format!("comparing /usr of {} and {}", from.id, to.id))?;
    timings.usr_ms = ms(t);
    let t = std::time::Instant::now();
    let outside_usr = outside::diff_outside_usr(&from.path, &to.path).with_context(|| {
        format!(
            "comparing the content outside /usr of {} and {}",
            from.id, to.id
        )
    })?;
    timings.outside_usr_ms = ms(t);
    let t = std::time::Instant::now();
    // The new defaults differ from the old ones exactly at the `/usr` entries at or below
    // /usr/etc (none: they are the same).
    let changed_defaults: Vec<&Path> = usr
        .entries
        .iter()
        .filter_map(|e| Path::new(&e.path).strip_prefix("/usr/etc").ok())
        .collect();
    let defaults = if changed_defaults.is_empty() {
        etc::NewDefaults::Same
    } else {
        etc::NewDefaults::Changed(&changed_defaults)
    };
    let (etc, etc_compared) = etc::plan_etc_counted(
        &from.path.join("usr/etc"),
        &from.path.join("etc"),
        &to.path.join("usr/etc"),
        defaults,
    )
    .map_err(|e| match e.downcast_ref::<etc::EtcMergeError>() {
        // ostree itself would refuse this merge: bad input, not a failure of ours.
        Some(m) => crate::exit::refuse(
            crate::exit::ExitCode::Refused,
            format!("{m}; nothing was changed"),
        ),
        None => e,
    })
    .with_context(|| format!("planning the /etc merge from {} to {}", from.id, to.id))?;
    timings.etc_ms = ms(t);
    timings.etc_compared = etc_compared;
    let (units, units_ms) = units();
    let units = units?;
    timings.units_ms = units_ms;
    let etc_changes = etc
        .actions
        .iter()
        .filter(|a| {
            matches!(
                a.action,
                etc::EtcActionKind::Add
                    | etc::EtcActionKind::TakeNewDefault
                    | etc::EtcActionKind::Remove
            )
        })
        .count();
    let decision = decision(&usr, &outside_usr, units.len(), etc_changes, &reasons);
    Ok(DeploymentDiff {
        schema_version: DIFF_SCHEMA_VERSION,
        from: from.into(),
        to: to.into(),
        decision,
        kernel: KernelDiff {
            from: kfrom,
            to: kto,
            reasons,
        },
        usr,
        outside_usr,
        etc,
        units,
        timings,
    })
}
