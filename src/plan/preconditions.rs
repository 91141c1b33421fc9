//! Host states that ostree, rpm-ostree and bootc leave behind, and which way of switching each
//! one rules out. Pure: it reads the discovered [`Host`] and the two deployments, nothing else.
//!
//! | state | where it is recorded | live | kexec |
//! |---|---|---|---|
//! | finalization locked | `locked` in `/run/ostree/staged-deployment`, or `/run/ostree/staged-deployment-locked` | refused without `--unlock` | refused without `--unlock` |
//! | rpm-ostree live apply | `/run/ostree/deployment-state/<id>/rpmostree-is-live.stamp` | refused | fine |
//! | `ostree admin unlock` | `unlocked-development`/`unlocked-transient` there, origin `unlocked=hotfix` | refused | fine |
//! | target in another stateroot | the deployments' stateroots | refused | fine |
//! | transient `/etc` | `transient-etc` in `/run/ostree-booted` | refused | fine |
//! | transient root | `root.transient` in `/run/ostree-booted` | refused | fine |
//!
//! A refused live apply is not the end of `switch`: the ladder ([`super::ladder`]) takes the
//! next rung and says why live was rejected.

use super::ladder::Rung;
use crate::discover::{Deployment, Host};
use serde::{Deserialize, Serialize};

/// One host state that stands in the way of a rung.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HostBlocker {
    /// The admin asked that the staged deployment not be finalized until unlocked.
    FinalizationLocked { deployment: String },
    /// rpm-ostree applied a change live: `/usr` is rpm-ostree's overlay, not the deployment.
    RpmOstreeLive { deployment: String },
    /// `ostree admin unlock`: `/usr` is a writable overlay (`development`, `transient`,
    /// `hotfix`).
    Unlocked { deployment: String, mode: String },
    /// `/var` belongs to a stateroot: a live switch into another one would run the target
    /// with the wrong `/var`.
    OtherStateroot { from: String, to: String },
    /// `/etc` is an overlay of `usr/etc` whose upper vanishes at reboot (`etc.transient`):
    /// the target boots with its own defaults and no 3-way merge, which a live merge cannot
    /// reproduce.
    TransientEtc { upper: String },
    /// `/` is an overlay with a tmpfs upper (`root.transient`): runtime writes under `/usr`
    /// would be hidden by a bind over it, and the target boots without them.
    TransientRoot,
}

impl HostBlocker {
    /// Does this state rule out `rung`? `unlock` is the admin's explicit `--unlock`.
    pub fn blocks(&self, rung: Rung, unlock: bool) -> bool {
        match self {
            // Every rung that switches (all but none) uses the staged deployment.
            HostBlocker::FinalizationLocked { .. } => !unlock && rung != Rung::None,
            _ => rung == Rung::Live,
        }
    }

    /// One sentence: what the state is, and what ends it.
    pub fn describe(&self) -> String {
        match self {
            HostBlocker::FinalizationLocked { deployment } => format!(
                "finalization of the staged deployment {deployment} is locked (bootc --download-only, rpm-ostree --lock-finalization or ostree admin deploy --lock-finalization): pass --unlock to unlock it and switch anyway, or unlock it with `ostree admin lock-finalization --unlock` (ostree ≥ 2023.8)"
            ),
            HostBlocker::RpmOstreeLive { deployment } => format!(
                "rpm-ostree applied changes live to the booted deployment {deployment} (/usr is its overlay, not the deployment): undo them with `rpm-ostree apply-live --reset`, or switch with `fastswitch kexec`"
            ),
            HostBlocker::Unlocked { deployment, mode } => {
                let ends = if mode == "hotfix" {
                    "it lasts until another deployment boots"
                } else {
                    "it lasts until the next boot"
                };
                format!(
                    "the booted deployment {deployment} is unlocked ({mode}, `ostree admin unlock`): /usr is a writable overlay, not the deployment, and {ends}; switch with `fastswitch kexec`"
                )
            }
            HostBlocker::OtherStateroot { from, to } => format!(
                "the target is in stateroot {to:?}, the booted deployment in {from:?}: /var belongs to a stateroot, so only a boot can switch between them (`fastswitch kexec`)"
            ),
            HostBlocker::TransientEtc { upper } => format!(
                "/etc is transient on this host (etc.transient in prepare-root.conf; its changes live in {upper} and vanish at boot): the target boots with its own /etc defaults, which a live 3-way merge would not reproduce; switch with `fastswitch kexec`"
            ),
            HostBlocker::TransientRoot => "the root is transient on this host (root.transient in prepare-root.conf): writes under /usr since boot would be hidden by the live bind and gone after a boot; switch with `fastswitch kexec`".to_owned(),
        }
    }
}

/// Every host state that matters for switching from `from` to `to`.
pub fn blockers(host: &Host, from: &Deployment, to: &Deployment) -> Vec<HostBlocker> {
    let mut out = Vec::new();
    if to.staged && host.finalization_locked {
        out.push(HostBlocker::FinalizationLocked {
            deployment: to.id.clone(),
        });
    }
    // The running /usr is the booted deployment's unless rpm-ostree or an unlock overlaid it.
    if let Some(b) = host.booted() {
        if b.rpm_ostree_live {
            out.push(HostBlocker::RpmOstreeLive {
                deployment: b.id.clone(),
            });
        }
        if let Some(mode) = &b.unlocked {
            out.push(HostBlocker::Unlocked {
                deployment: b.id.clone(),
                mode: mode.clone(),
            });
        }
    }
    if from.stateroot != to.stateroot {
        out.push(HostBlocker::OtherStateroot {
            from: from.stateroot.clone(),
            to: to.stateroot.clone(),
        });
    }
    if let Some(bs) = &host.booted_state {
        if let Some(upper) = &bs.transient_etc {
            out.push(HostBlocker::TransientEtc {
                upper: upper.clone(),
            });
        }
        if bs.root_transient {
            out.push(HostBlocker::TransientRoot);
        }
    }
    out
}

/// The blockers that rule out `rung`, given `--unlock`.
pub fn blocking(blockers: &[HostBlocker], rung: Rung, unlock: bool) -> Vec<&HostBlocker> {
    blockers.iter().filter(|b| b.blocks(rung, unlock)).collect()
}

/// The refusal text for a rung ruled out by `blocking`: every reason, one per line.
pub fn refusal_text(what: &str, blocking: &[&HostBlocker]) -> String {
    let mut s = format!("{what} refused; nothing was changed:");
    for b in blocking {
        s.push_str("\n  - ");
        s.push_str(&b.describe());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{BootedState, HostPaths};
    use std::path::PathBuf;

    fn dep(id: &str, stateroot: &str) -> Deployment {
        Deployment {
            index: 0,
            id: id.into(),
            stateroot: stateroot.into(),
            checksum: id.into(),
            serial: 0,
            path: PathBuf::from("/x"),
            booted: false,
            staged: false,
            pending: false,
            rollback: false,
            pinned: false,
            origin: None,
            kernel: None,
            boot_entry: None,
            kargs: vec![],
            unlocked: None,
            rpm_ostree_live: false,
            dev_ino: (0, 0),
        }
    }

    fn host(deps: Vec<Deployment>, locked: bool, bs: Option<BootedState>) -> Host {
        Host {
            paths: HostPaths::resolve(
                Some("/s".into()),
                Some("/r".into()),
                Some("/nonexistent-run".into()),
            ),
            ostree_booted: true,
            booted_state: bs,
            staged_state: None,
            bootversion: Some(0),
            finalization_locked: locked,
            deployments: deps,
        }
    }

    fn pair() -> (Deployment, Deployment) {
        let mut b = dep("b.0", "os");
        b.booted = true;
        let mut t = dep("t.0", "os");
        t.staged = true;
        (b, t)
    }

    #[test]
    fn clean_host_blocks_nothing() {
        let (b, t) = pair();
        let h = host(
            vec![t.clone(), b.clone()],
            false,
            Some(BootedState::default()),
        );
        assert!(blockers(&h, &b, &t).is_empty());
    }

    #[test]
    fn locked_finalization_blocks_both_rungs_until_unlock() {
        let (b, t) = pair();
        let h = host(vec![t.clone(), b.clone()], true, None);
        let bl = blockers(&h, &b, &t);
        assert_eq!(
            bl,
            vec![HostBlocker::FinalizationLocked {
                deployment: "t.0".into()
            }]
        );
        assert_eq!(blocking(&bl, Rung::Live, false).len(), 1);
        assert_eq!(blocking(&bl, Rung::Kexec, false).len(), 1);
        assert!(blocking(&bl, Rung::Kexec, true).is_empty());
        assert!(blocking(&bl, Rung::Live, true).is_empty());
        // Not staged (a pending deployment): the lock is about finalization only.
        let mut p = t.clone();
        p.staged = false;
        assert!(blockers(&h, &b, &p).is_empty());
    }

    #[test]
    fn overlays_and_other_stateroot_block_live_only() {
        let (mut b, mut t) = pair();
        b.rpm_ostree_live = true;
        b.unlocked = Some("transient".into());
        t.stateroot = "other".into();
        let bs = BootedState {
            root_transient: true,
            transient_etc: Some("/run/ostree/transient-etc.abc".into()),
            ..BootedState::default()
        };
        let h = host(vec![t.clone(), b.clone()], false, Some(bs));
        let bl = blockers(&h, &b, &t);
        let kinds: Vec<String> = bl
            .iter()
            .map(|x| {
                serde_json::to_value(x).unwrap()["state"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "rpm_ostree_live",
                "unlocked",
                "other_stateroot",
                "transient_etc",
                "transient_root"
            ]
        );
        assert_eq!(blocking(&bl, Rung::Live, true).len(), 5);
        assert!(blocking(&bl, Rung::Kexec, false).is_empty());
        let text = refusal_text("apply-live", &blocking(&bl, Rung::Live, false));
        assert!(text.contains("rpm-ostree apply-live --reset"), "{text}");
        assert!(text.contains("/run/ostree/transient-etc.abc"), "{text}");
    }
}
