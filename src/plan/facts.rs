//! The facts [`ladder::choose`] needs, gathered: from the diff, the host states, systemd (its
//! version; the service decision when the live rung is otherwise possible), the running
//! kernel's kexec state and `/etc/crypttab`. `switch` plans with them; `status --json` and
//! `diff --json` show the ladder they give.

use super::ladder::{self, Ladder, LadderBounds, LadderInputs, Rung};
use super::preconditions::{self, HostBlocker};
use crate::diff::{self, DeploymentDiff};
use crate::services::{self, Action, DeferWhy, Reason, ServiceAction};
use crate::system::files::{read_to_string_opt, Follow};
use crate::system::systemd::Systemd;
use anyhow::{Context, Result};
use std::path::Path;

/// Where the host facts come from.
pub(crate) struct FactSources<'a> {
    /// The running system's root: the kexec state is read only when it is `/` (this host).
    pub(crate) root: &'a Path,
    /// A live apply is active in this boot (its journal exists).
    pub(crate) live_active: bool,
    /// systemd on the system bus; `None`: not reachable (the soft-reboot rung is rejected,
    /// services are not examined).
    pub(crate) systemd: Option<&'a dyn Systemd>,
    /// Decide services (scan `/proc`, ask systemd) with these `--include` patterns when the
    /// live rung is otherwise possible; `None`: not examined (`--no-services`, `diff`,
    /// `status`), the live rung is judged on files alone.
    pub(crate) services: Option<&'a [String]>,
}

/// The ladder's inputs and, when services were examined, their decision (reused by the live
/// rung: no second scan).
pub(crate) fn ladder_inputs(
    d: &DeploymentDiff,
    host_states: &[HostBlocker],
    src: &FactSources<'_>,
) -> Result<(LadderInputs, Vec<ServiceAction>)> {
    let mut i = from_diff(d, host_states, src.live_active);
    let mut actions = Vec::new();
    match (src.systemd, src.services) {
        (Some(sd), Some(include)) if live_otherwise_possible(&i) => {
            actions = services::plan_services(
                &d.units,
                d.from.path.join("usr"),
                d.to.path.join("usr"),
                sd,
                include,
            )?
            .actions;
            for a in &actions {
                match a.action {
                    Action::Deferred => i.deferred_units.push(deferred_text(a)),
                    Action::NeedsRestart => i.unowned_stale.push(a.unit.clone()),
                    _ => {}
                }
            }
        }
        _ => i.services_unchecked = true,
    }
    i.soft_reboot_unavailable = match src.systemd {
        None => Some("systemd is not reachable on the system bus".into()),
        Some(sd) => soft_reboot_unsupported(&sd.version()?),
    };
    // Only the running kernel's kexec state belongs to this host; with --root it does not.
    if src.root == Path::new("/") {
        i.kexec_unavailable = running_kexec_blocker();
    }
    let crypttab = src.root.join("etc/crypttab");
    if let Some(text) = read_to_string_opt(&crypttab, Follow::Yes)
        .with_context(|| format!("reading {}", crypttab.display()))?
    {
        i.tpm2_volumes = ladder::tpm2_volumes(&text);
    }
    Ok((i, actions))
}

/// The ladder within the default bounds, services not examined: what `status --json` and
/// `diff --json` show.
pub(crate) fn default_ladder(
    d: &DeploymentDiff,
    host_states: &[HostBlocker],
    src: &FactSources<'_>,
) -> Result<Ladder> {
    let (inputs, _) = ladder_inputs(d, host_states, src)?;
    Ok(ladder::choose(&inputs, &LadderBounds::default()))
}

/// Pure: the inputs the diff and the host states give.
fn from_diff(d: &DeploymentDiff, host_states: &[HostBlocker], live_active: bool) -> LadderInputs {
    let mut i = LadderInputs {
        identical: d.decision.kind == diff::DecisionKind::None,
        kernel_changes: d.kernel.reasons.iter().map(|r| r.describe()).collect(),
        boot_time_changes: diff::BOOT_TIME_USR_FILES
            .iter()
            .filter(|f| d.usr.get(f).is_some())
            .map(|f| f.to_string())
            .collect(),
        outside_usr: d.outside_usr.iter().map(|c| c.path.clone()).collect(),
        ..Default::default()
    };
    add_host_states(&mut i, host_states);
    if live_active {
        i.soft_reboot_host_states.push(
            "a live apply is active: run `fastswitch reset` first (its /etc backups belong to this root)"
                .into(),
        );
    }
    i
}

/// Pure: the host states that rule out the live and the soft-reboot rung, as their reasons.
fn add_host_states(i: &mut LadderInputs, host_states: &[HostBlocker]) {
    for s in preconditions::blocking(host_states, Rung::Live, true) {
        i.live_host_states.push(s.describe());
        match s {
            HostBlocker::TransientEtc { .. } | HostBlocker::TransientRoot => i
                .soft_reboot_host_states
                .push(format!("{} (fastswitch does not rebuild prepare-root's transient overlays in /run/nextroot)", s.describe())),
            HostBlocker::OtherStateroot { .. } => i.soft_reboot_host_states.push(
                "the target is in another stateroot: after a soft reboot, ostree-system-generator would mount /var from the `ostree=` argument of the running kernel, which names the old stateroot".into(),
            ),
            _ => {}
        }
    }
    // Composefs with fs-verity rules out the soft reboot (the plain checkout as /) even where
    // the live rung keeps fs-verity by mounting the target's image.
    for s in host_states {
        if matches!(s, HostBlocker::ComposefsVerified { .. }) && s.blocks(Rung::SoftReboot, false) {
            i.soft_reboot_host_states.push(s.describe());
        }
    }
}

/// The service decision is worth its cost only when nothing else rules the live rung out.
fn live_otherwise_possible(i: &LadderInputs) -> bool {
    !i.identical
        && i.kernel_changes.is_empty()
        && i.boot_time_changes.is_empty()
        && i.outside_usr.is_empty()
        && i.live_host_states.is_empty()
}

/// Why systemd `version` cannot soft-reboot, if it cannot.
fn soft_reboot_unsupported(version: &str) -> Option<String> {
    match ladder::systemd_major(version) {
        Some(n) if n >= ladder::SOFT_REBOOT_SYSTEMD => None,
        _ => Some(format!(
            "systemd {version} has no soft-reboot (needs systemd ≥ {})",
            ladder::SOFT_REBOOT_SYSTEMD
        )),
    }
}

/// Why the running kernel cannot kexec, if it cannot (disabled, lockdown, …).
fn running_kexec_blocker() -> Option<String> {
    let k = crate::system::kexec::RealKexec::default();
    match k.status() {
        Ok(st) => st.blocker().map(|b| b.to_string()),
        Err(e) => Some(e.to_string()),
    }
}

fn deferred_text(a: &ServiceAction) -> String {
    let why = a.reasons.iter().find_map(|r| match r {
        Reason::Deferred { why } => Some(match why {
            DeferWhy::Protected { class } => format!("never restarted live: {class}"),
            DeferWhy::RefuseManualStop => "RefuseManualStop=yes".into(),
            DeferWhy::RefuseManualStart => "RefuseManualStart=yes".into(),
            DeferWhy::RestartIfChangedOff => "X-RestartIfChanged=no".into(),
            DeferWhy::OnlyManualStart => "X-OnlyManualStart=yes".into(),
            DeferWhy::StopOnRemovalOff => "X-StopOnRemoval=no".into(),
            DeferWhy::PerConnectionInstance => "a per-connection instance".into(),
        }),
        _ => None,
    });
    match why {
        Some(w) => format!("{} ({w})", a.unit),
        None => a.unit.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::composefs::ComposefsMode;

    /// On a composefs host with fs-verity the ladder skips live and soft-reboot, each rejection
    /// naming what is given up and the flag; with the flag, live is taken again.
    #[test]
    fn verified_composefs_in_the_ladder() {
        let mut states = vec![HostBlocker::ComposefsVerified {
            mode: ComposefsMode::Signed,
            signed: Some("/etc/ostree/initramfs-root-binding.key".into()),
            allowed: false,
            target_image: false,
            signature: None,
        }];
        let ladder_with = |states: &[HostBlocker]| {
            let mut i = LadderInputs::default();
            add_host_states(&mut i, states);
            ladder::choose(&i, &LadderBounds::default())
        };
        let l = ladder_with(&states);
        assert_eq!(l.chosen, Some(Rung::Kexec));
        for rung in [Rung::Live, Rung::SoftReboot] {
            let v = l.verdict(rung);
            assert!(!v.possible, "{rung:?}");
            assert!(
                v.reasons
                    .iter()
                    .any(|r| r.contains("--allow-unverified-usr")
                        && r.contains("plain hardlinked checkout")
                        && r.contains("no signature")),
                "{rung:?}: {:?}",
                v.reasons
            );
        }
        preconditions::allow_unverified_usr(&mut states);
        assert_eq!(ladder_with(&states).chosen, Some(Rung::Live));
        // Without verity nothing is ruled out.
        for target_image in [false, true] {
            assert_eq!(
                ladder_with(&[HostBlocker::ComposefsUnverified { target_image }]).chosen,
                Some(Rung::Live)
            );
        }
        // fs-verity and a target image: live keeps verity (mounts the image), so the ladder
        // takes it; the soft reboot stays ruled out, saying why.
        let verity_image = [HostBlocker::ComposefsVerified {
            mode: ComposefsMode::Verity,
            signed: None,
            allowed: false,
            target_image: true,
            signature: None,
        }];
        let l = ladder_with(&verity_image);
        assert_eq!(l.chosen, Some(Rung::Live));
        let soft = l.verdict(Rung::SoftReboot);
        assert!(
            !soft.possible
                && soft
                    .reasons
                    .iter()
                    .any(|r| r.contains("plain hardlinked checkout as /")),
            "{:?}",
            soft.reasons
        );
    }

    #[test]
    fn soft_reboot_needs_systemd_254() {
        assert_eq!(soft_reboot_unsupported("257.9-1"), None);
        assert_eq!(soft_reboot_unsupported("254"), None);
        let why = soft_reboot_unsupported("252.39-1~deb12u1").unwrap();
        assert!(
            why.contains("systemd 252.39-1~deb12u1 has no soft-reboot"),
            "{why}"
        );
    }
}
