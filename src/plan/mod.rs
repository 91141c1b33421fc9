//! The Plan: a typed, serialisable list of what the executor will do, built purely from a
//! [`DeploymentDiff`] (and, for services, the runtime facts gathered beforehand). `--dry-run`
//! prints it; the executor walks the very same value, step by step, journaling each one.

pub mod facts;
pub mod ladder;
pub mod preconditions;

use crate::diff::{etc, Decision, DecisionKind, DeploymentDiff, DeploymentRef};
use crate::services::ServiceAction;
use preconditions::HostBlocker;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Bumped on any incompatible change of the plan JSON.
pub const PLAN_SCHEMA_VERSION: u32 = 1;

/// Which command the plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verb {
    ApplyLive,
    Kexec,
    SoftReboot,
    /// Undo a live apply (and unload a prepared kexec kernel): [`reset_plan`].
    Reset,
}

/// One journaled step. Names are stable (`Step::name`) and used by the fault hook and reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Unlock finalization of the staged deployment (the admin passed `--unlock`): set
    /// `locked` to false in `/run/ostree/staged-deployment` and remove the legacy lock file,
    /// as `ostree admin lock-finalization --unlock` does, so it is finalized at shutdown.
    UnlockFinalization,
    /// Make fastswitch's own hardlinked copy of the target's `usr` (`dest`), which survives
    /// ostree removing the target deployment when a newer one is staged
    /// ([`crate::system::live_tree`]).
    LinkUsr { source: PathBuf, dest: PathBuf },
    /// Bind the target's `usr` read-only over `/usr` in one atomic mount operation.
    SwapUsr { source: PathBuf, target: PathBuf },
    /// On a composefs host, when the target deployment has an `.ostree.cfs` image: mount it as
    /// ostree-prepare-root mounts the root (EROFS + overlay over the repository's objects,
    /// `verity=require` when the host requires fs-verity), take its `usr` with `open_tree` and
    /// attach that read-only over `/usr` in one atomic mount operation.
    SwapComposefsUsr {
        image: crate::system::composefs::ComposefsImage,
        target: PathBuf,
    },
    /// Last: remove fastswitch's copies of `usr` no mount shows any more (the one just
    /// replaced, those of earlier boots). Best effort. Planned only when this run links the
    /// copy itself: when `fastswitch prepare` made it at staging, pruning is prepare's job too.
    PruneUsrCopies,
    /// Carry out ostree's 3-way merge on the live `/etc`.
    MergeEtc {
        etc_dir: PathBuf,
        new_defaults: PathBuf,
        actions: Vec<etc::EtcAction>,
    },
    /// Create users/groups the target's new `sysusers.d` entries declare.
    Sysusers { files: Vec<String> },
    /// Create runtime dirs the target's new `tmpfiles.d` entries declare.
    Tmpfiles { files: Vec<String> },
    /// `Reload` systemd's unit files (daemon-reload).
    DaemonReload,
    /// Stop, reload, restart, start units, in that order.
    Services { actions: Vec<ServiceAction> },
    /// Finalize the staged deployment now (writes its BLS entry and bootlink).
    FinalizeStaged,
    /// Load the target kernel with `kexec_file_load`.
    KexecLoad {
        kernel: PathBuf,
        initrds: Vec<PathBuf>,
        /// Kernel arguments without `ostree=`; the bootlink is read from the BLS entry after
        /// finalization.
        kargs: Vec<String>,
    },
    /// Start `kexec.target` so systemd shuts down in order and boots the loaded kernel.
    KexecReboot,
    /// Mount the (finalized) target deployment at `/run/nextroot` as ostree-prepare-root would
    /// mount it as `/`.
    PrepareNextroot {
        nextroot: crate::system::mounts::NextRoot,
    },
    /// Point `/run/ostree-booted` at the new root and start `soft-reboot.target`: systemd
    /// stops userspace and starts it again from `/run/nextroot`; kernel and firmware stay.
    SoftReboot,
    /// `reset`: unload the kernel `kexec --load-only` (or an interrupted switch) left loaded.
    KexecUnload,
    /// `reset`: detach every fastswitch bind from `/usr`, so it shows the booted deployment.
    UnmountUsr,
    /// `reset`: put back every `/etc` file the live apply changed, newest first; files the
    /// admin changed since are kept.
    RestoreEtc,
}

impl Step {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Step::UnlockFinalization => "unlock_finalization",
            Step::LinkUsr { .. } => "link_usr",
            Step::SwapUsr { .. } => "swap_usr",
            Step::SwapComposefsUsr { .. } => "swap_composefs_usr",
            Step::PruneUsrCopies => "prune_usr_copies",
            Step::MergeEtc { .. } => "merge_etc",
            Step::Sysusers { .. } => "sysusers",
            Step::Tmpfiles { .. } => "tmpfiles",
            Step::DaemonReload => "daemon_reload",
            Step::Services { .. } => "services",
            Step::FinalizeStaged => "finalize_staged",
            Step::KexecLoad { .. } => "kexec_load",
            Step::KexecReboot => "kexec_reboot",
            Step::PrepareNextroot { .. } => "prepare_nextroot",
            Step::SoftReboot => "soft_reboot",
            Step::KexecUnload => "kexec_unload",
            Step::UnmountUsr => "unmount_usr",
            Step::RestoreEtc => "restore_etc",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub schema_version: u32,
    pub verb: Verb,
    pub from: DeploymentRef,
    pub to: DeploymentRef,
    pub decision: Decision,
    /// Ordered steps; empty when the decision is `none` or the verb cannot do the decision.
    pub steps: Vec<Step>,
    /// /etc paths where the admin's edit is kept although the default changed.
    pub etc_conflicts: Vec<String>,
    /// Host states ostree, rpm-ostree or bootc left that matter for this switch
    /// ([`preconditions`]); the verb refused if one of them rules out its rung.
    #[serde(default)]
    pub host_states: Vec<HostBlocker>,
    /// `switch`: every rung's verdict, and why each lower rung was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ladder: Option<ladder::Ladder>,
}

/// `/usr/lib/sysusers.d/*.conf` and `/usr/lib/tmpfiles.d/*.conf` files the target adds or
/// changes (pure, from the /usr diff).
fn config_snippets(diff: &DeploymentDiff, dir: &str) -> Vec<String> {
    diff.usr
        .entries
        .iter()
        .filter(|e| e.change != crate::diff::usr::Change::Removed)
        .map(|e| e.path.clone())
        .filter(|p| p.starts_with(dir) && p.ends_with(".conf"))
        .collect()
}

/// Inputs the live plan needs besides the diff.
#[derive(Debug, Clone)]
pub(crate) struct LiveInputs {
    /// The running system's root (`/`).
    pub(crate) root: PathBuf,
    /// The physical sysroot, where the live copy of the target's `usr` is made.
    pub(crate) sysroot: PathBuf,
    /// Service actions decided by [`crate::services`]; `None` when services are not managed
    /// (`--no-services`): the plan then has no daemon-reload and no unit jobs.
    pub(crate) services: Option<Vec<ServiceAction>>,
    /// Host states found by [`preconditions::blockers`].
    pub host_states: Vec<HostBlocker>,
    /// Unlock a locked finalization first (`--unlock`).
    pub(crate) unlock_finalization: bool,
    /// The live copy of the target's `usr` exists already (made by `fastswitch prepare` when
    /// the deployment was staged, [`crate::system::live_tree::is_ready`]): linking it costs
    /// nothing, and this run leaves pruning older copies to the next `prepare` or `reset`.
    pub(crate) live_copy_ready: bool,
    /// The target's composefs image to mount over `/usr`
    /// ([`preconditions::composefs_usr`]); `None` binds the plain checkout's `usr`.
    pub(crate) composefs_usr: Option<crate::system::composefs::ComposefsImage>,
}

/// Pure: the live-apply plan. When the decision is not `live`, the plan has no steps.
pub(crate) fn live_plan(diff: &DeploymentDiff, inputs: &LiveInputs) -> Plan {
    let mut steps = Vec::new();
    if diff.decision.kind == DecisionKind::Live {
        if inputs.unlock_finalization && locked(&inputs.host_states) {
            steps.push(Step::UnlockFinalization);
        }
        if let Some(image) = &inputs.composefs_usr {
            // The image pins its own tree (an open EROFS file over the repository's objects):
            // no hardlinked copy to make or prune.
            steps.push(Step::SwapComposefsUsr {
                image: image.clone(),
                target: inputs.root.join("usr"),
            });
        } else {
            let live_usr = crate::system::live_tree::live_usr(&inputs.sysroot, &diff.to.id);
            steps.push(Step::LinkUsr {
                source: diff.to.path.join("usr"),
                dest: live_usr.clone(),
            });
            steps.push(Step::SwapUsr {
                source: live_usr,
                target: inputs.root.join("usr"),
            });
        }
        if !diff.etc.actions.is_empty() {
            steps.push(Step::MergeEtc {
                etc_dir: inputs.root.join("etc"),
                new_defaults: diff.to.path.join("usr/etc"),
                actions: diff.etc.actions.clone(),
            });
        }
        let sysusers = config_snippets(diff, "/usr/lib/sysusers.d/");
        if !sysusers.is_empty() {
            steps.push(Step::Sysusers { files: sysusers });
        }
        let tmpfiles = config_snippets(diff, "/usr/lib/tmpfiles.d/");
        if !tmpfiles.is_empty() {
            steps.push(Step::Tmpfiles { files: tmpfiles });
        }
        if let Some(services) = &inputs.services {
            if !diff.units.is_empty() {
                steps.push(Step::DaemonReload);
            }
            if !services.is_empty() {
                steps.push(Step::Services {
                    actions: services.clone(),
                });
            }
        }
        if !inputs.live_copy_ready && inputs.composefs_usr.is_none() {
            steps.push(Step::PruneUsrCopies);
        }
    }
    Plan {
        schema_version: PLAN_SCHEMA_VERSION,
        verb: Verb::ApplyLive,
        from: diff.from.clone(),
        to: diff.to.clone(),
        decision: diff.decision.clone(),
        steps,
        etc_conflicts: diff.etc.conflicts.iter().map(|c| c.path.clone()).collect(),
        host_states: inputs.host_states.clone(),
        ladder: None,
    }
}

/// What `reset` undoes, read from the live-apply journal by the executor.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResetInputs {
    /// The target of the live apply in this boot; `None` when there is none.
    pub(crate) live_target: Option<String>,
    /// Undo of each unit action the apply executed (a started unit is stopped, a restarted one
    /// restarted again); `None` when services are not managed (`--no-services`).
    pub(crate) services: Option<Vec<ServiceAction>>,
    /// A kexec kernel is loaded (only the running kernel's state counts).
    pub(crate) kexec_loaded: bool,
}

/// Pure: the reset plan, from the booted deployment back to itself. Unload a loaded kexec
/// kernel; then, when a live apply happened: /usr, /etc, daemon-reload and the units it
/// touched, in that order. No steps when there is nothing to reset.
pub(crate) fn reset_plan(booted: &DeploymentRef, inputs: &ResetInputs) -> Plan {
    let mut steps = Vec::new();
    if inputs.kexec_loaded {
        steps.push(Step::KexecUnload);
    }
    let reasons = match &inputs.live_target {
        Some(target) => {
            steps.push(Step::UnmountUsr);
            steps.push(Step::RestoreEtc);
            if let Some(services) = &inputs.services {
                steps.push(Step::DaemonReload);
                steps.push(Step::Services {
                    actions: services.clone(),
                });
            }
            vec![format!("reset live apply of {target}")]
        }
        None if inputs.kexec_loaded => {
            vec!["no live-apply state; a kexec kernel is loaded".to_string()]
        }
        None => vec!["no live-apply state: the booted deployment is what runs".to_string()],
    };
    Plan {
        schema_version: PLAN_SCHEMA_VERSION,
        verb: Verb::Reset,
        from: booted.clone(),
        to: booted.clone(),
        decision: Decision {
            kind: if inputs.live_target.is_some() {
                DecisionKind::Live
            } else {
                DecisionKind::None
            },
            reasons,
        },
        steps,
        etc_conflicts: vec![],
        host_states: vec![],
        ladder: None,
    }
}

fn locked(states: &[HostBlocker]) -> bool {
    states
        .iter()
        .any(|s| matches!(s, HostBlocker::FinalizationLocked { .. }))
}

/// Pure: the kexec plan. `finalize` when the target is staged (it has no BLS entry and no
/// bootlink until finalized); the kernel and initrd named here are the target tree's, checked
/// before anything irreversible; the load itself uses the BLS entry written by finalization.
pub(crate) fn kexec_plan(
    diff: &DeploymentDiff,
    kernel: Option<(PathBuf, Vec<PathBuf>)>,
    load_only: bool,
    host_states: &[HostBlocker],
    unlock_finalization: bool,
) -> Plan {
    let mut steps = Vec::new();
    if diff.decision.kind != DecisionKind::None {
        if diff.to.staged && unlock_finalization && locked(host_states) {
            steps.push(Step::UnlockFinalization);
        }
        if diff.to.staged {
            steps.push(Step::FinalizeStaged);
        }
        if let Some((k, initrds)) = kernel {
            steps.push(Step::KexecLoad {
                kernel: k,
                initrds,
                kargs: diff.kernel.to.kargs.clone(),
            });
        }
        if !load_only {
            steps.push(Step::KexecReboot);
        }
    }
    Plan {
        schema_version: PLAN_SCHEMA_VERSION,
        verb: Verb::Kexec,
        from: diff.from.clone(),
        to: diff.to.clone(),
        decision: diff.decision.clone(),
        steps,
        etc_conflicts: diff.etc.conflicts.iter().map(|c| c.path.clone()).collect(),
        host_states: host_states.to_vec(),
        ladder: None,
    }
}

/// Pure: the soft-reboot plan: unlock finalization when asked, finalize the staged target, mount
/// it at `/run/nextroot`, switch.
pub(crate) fn soft_reboot_plan(
    diff: &DeploymentDiff,
    nextroot: crate::system::mounts::NextRoot,
    host_states: &[HostBlocker],
    unlock_finalization: bool,
) -> Plan {
    let mut steps = Vec::new();
    if diff.decision.kind != DecisionKind::None {
        if diff.to.staged && unlock_finalization && locked(host_states) {
            steps.push(Step::UnlockFinalization);
        }
        if diff.to.staged {
            steps.push(Step::FinalizeStaged);
        }
        steps.push(Step::PrepareNextroot { nextroot });
        steps.push(Step::SoftReboot);
    }
    Plan {
        schema_version: PLAN_SCHEMA_VERSION,
        verb: Verb::SoftReboot,
        from: diff.from.clone(),
        to: diff.to.clone(),
        decision: diff.decision.clone(),
        steps,
        etc_conflicts: diff.etc.conflicts.iter().map(|c| c.path.clone()).collect(),
        host_states: host_states.to_vec(),
        ladder: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::Action;

    fn booted() -> DeploymentRef {
        DeploymentRef {
            index: 0,
            id: "aaa.0".into(),
            stateroot: "os".into(),
            path: "/sysroot/ostree/deploy/os/deploy/aaa.0".into(),
            booted: true,
            staged: false,
        }
    }

    fn names(p: &Plan) -> Vec<&'static str> {
        p.steps.iter().map(Step::name).collect()
    }

    #[test]
    fn reset_plan_undoes_what_the_journal_names_in_order() {
        let undo = vec![ServiceAction {
            unit: "demo.service".into(),
            action: Action::Stop,
            reasons: vec![],
        }];
        let all = reset_plan(
            &booted(),
            &ResetInputs {
                live_target: Some("bbb.0".into()),
                services: Some(undo.clone()),
                kexec_loaded: true,
            },
        );
        assert_eq!(all.verb, Verb::Reset);
        assert_eq!(
            (&all.from.id, &all.to.id),
            (&"aaa.0".into(), &"aaa.0".into())
        );
        assert_eq!(
            names(&all),
            [
                "kexec_unload",
                "unmount_usr",
                "restore_etc",
                "daemon_reload",
                "services"
            ]
        );
        assert_eq!(all.steps[4], Step::Services { actions: undo });
        assert_eq!(all.decision.kind, DecisionKind::Live);
        assert!(all.decision.reasons[0].contains("bbb.0"));

        let no_services = reset_plan(
            &booted(),
            &ResetInputs {
                live_target: Some("bbb.0".into()),
                services: None,
                kexec_loaded: false,
            },
        );
        assert_eq!(names(&no_services), ["unmount_usr", "restore_etc"]);

        let kexec_only = reset_plan(
            &booted(),
            &ResetInputs {
                kexec_loaded: true,
                ..Default::default()
            },
        );
        assert_eq!(names(&kexec_only), ["kexec_unload"]);
        assert_eq!(kexec_only.decision.kind, DecisionKind::None);

        let nothing = reset_plan(&booted(), &ResetInputs::default());
        assert!(nothing.steps.is_empty());
        // The JSON names the verb.
        let v = serde_json::to_value(&nothing).unwrap();
        assert_eq!(v["verb"], "reset");
    }

    fn identity() -> crate::diff::kernel::KernelIdentity {
        crate::diff::kernel::KernelIdentity {
            version: Some("6.1.0".into()),
            boot_digest: Some("b00t".into()),
            has_initramfs: true,
            kargs: vec![],
            selinux_policy: None,
        }
    }

    /// A live change of one binary, with no /etc, unit or sysusers changes.
    fn live_diff() -> DeploymentDiff {
        let to = DeploymentRef {
            index: 1,
            id: "bbb.0".into(),
            path: "/sysroot/ostree/deploy/os/deploy/bbb.0".into(),
            booted: false,
            staged: true,
            ..booted()
        };
        DeploymentDiff {
            schema_version: 1,
            from: booted(),
            to,
            decision: Decision {
                kind: DecisionKind::Live,
                reasons: vec![],
            },
            kernel: crate::diff::KernelDiff {
                from: identity(),
                to: identity(),
                reasons: vec![],
            },
            usr: Default::default(),
            outside_usr: vec![],
            etc: Default::default(),
            units: vec![],
            timings: Default::default(),
        }
    }

    /// Pruning older live copies is planned by the run that links the copy; when `prepare` made
    /// it at staging, the copy is only reused and pruning stays prepare's (or reset's) job.
    #[test]
    fn live_plan_prunes_only_when_it_links_the_copy_itself() {
        let inputs = |ready| LiveInputs {
            root: "/".into(),
            sysroot: "/sysroot".into(),
            services: None,
            host_states: vec![],
            unlock_finalization: false,
            live_copy_ready: ready,
            composefs_usr: None,
        };
        let linking = live_plan(&live_diff(), &inputs(false));
        assert_eq!(
            names(&linking),
            ["link_usr", "swap_usr", "prune_usr_copies"]
        );
        assert_eq!(
            linking.steps[0],
            Step::LinkUsr {
                source: "/sysroot/ostree/deploy/os/deploy/bbb.0/usr".into(),
                dest: "/sysroot/ostree/fastswitch/live/bbb.0/usr".into(),
            }
        );
        let prepared = live_plan(&live_diff(), &inputs(true));
        assert_eq!(names(&prepared), ["link_usr", "swap_usr"]);
    }

    /// On a composefs host with a target image, the plan mounts the image: no copy to link
    /// or prune, one swap step naming the image, its data layer and verity.
    #[test]
    fn live_plan_mounts_the_target_composefs_image() {
        let image = crate::system::composefs::ComposefsImage {
            image: "/sysroot/ostree/deploy/os/deploy/bbb.0/.ostree.cfs".into(),
            objects: "/sysroot/ostree/repo/objects".into(),
            require_verity: true,
            expected_digest: None,
        };
        for ready in [false, true] {
            let p = live_plan(
                &live_diff(),
                &LiveInputs {
                    root: "/".into(),
                    sysroot: "/sysroot".into(),
                    services: None,
                    host_states: vec![],
                    unlock_finalization: false,
                    live_copy_ready: ready,
                    composefs_usr: Some(image.clone()),
                },
            );
            assert_eq!(names(&p), ["swap_composefs_usr"]);
            let json = serde_json::to_value(&p.steps[0]).unwrap();
            assert_eq!(
                json,
                serde_json::json!({
                    "step": "swap_composefs_usr",
                    "image": {
                        "image": "/sysroot/ostree/deploy/os/deploy/bbb.0/.ostree.cfs",
                        "objects": "/sysroot/ostree/repo/objects",
                        "require_verity": true,
                    },
                    "target": "/usr",
                })
            );
        }
    }
}
