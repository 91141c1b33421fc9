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
//! | composefs root with fs-verity, target with an `.ostree.cfs` image | `composefs.verity` in `/run/ostree-booted`, `verity=require` on the root overlay | fine: the target's image is mounted with `verity=require` (soft-reboot refused without `--allow-unverified-usr`) | fine |
//! | composefs root with a signed image, or a target without an image | `composefs.signed`, or no `<deployment>/.ostree.cfs` | refused without `--allow-unverified-usr` (soft-reboot too) | fine |
//! | composefs root without fs-verity | `composefs` in `/run/ostree-booted`, the root overlay | fine (the target's image is mounted when it has one; else the plan says what the plain bind means) | fine |
//!
//! A refused live apply is not the end of `switch`: the ladder ([`super::ladder`]) takes the
//! next rung and says why live was rejected.

use super::ladder::Rung;
use crate::discover::composefs::{self, ComposefsMode};
use crate::discover::signature::CommitSignature;
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
    /// `/` is composefs with fs-verity required (`mode` verity), or also a signed image
    /// (`mode` signed, `signed` the key file). A soft reboot mounts the target's plain
    /// hardlinked checkout as `/`: files that no fs-verity digest or signature checks. A live
    /// apply mounts the target's composefs image (`target_image`) with `verity=require`, which
    /// keeps fs-verity but not the signature (fastswitch does not check commit signatures);
    /// without an image it would bind the plain checkout over `/usr`. What gives a guarantee up
    /// is ruled out unless the admin passed `--allow-unverified-usr` (`allowed`).
    ComposefsVerified {
        mode: ComposefsMode,
        signed: Option<String>,
        #[serde(default)]
        allowed: bool,
        /// The target deployment has an `.ostree.cfs` image.
        #[serde(default)]
        target_image: bool,
        /// Signed mode: the target commit's signature check and the image digest it binds
        /// ([`crate::discover::signature`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<CommitSignature>,
    },
    /// `/` is composefs without fs-verity: nothing is ruled out. A live apply mounts the
    /// target's composefs image over `/usr` when it has one (`target_image`), else binds its
    /// plain checkout; a soft reboot mounts the plain checkout as `/`.
    ComposefsUnverified {
        #[serde(default)]
        target_image: bool,
    },
}

impl HostBlocker {
    /// Does this state rule out `rung`? `unlock` is the admin's explicit `--unlock`.
    pub(crate) fn blocks(&self, rung: Rung, unlock: bool) -> bool {
        match self {
            // Every rung that switches (all but none) uses the staged deployment.
            HostBlocker::FinalizationLocked { .. } => !unlock && rung != Rung::None,
            // Both rungs that would run the target from its plain checkout.
            HostBlocker::ComposefsVerified { allowed, .. } => {
                !allowed
                    && matches!(rung, Rung::Live | Rung::SoftReboot)
                    && !(rung == Rung::Live && self.live_keeps_guarantees())
            }
            HostBlocker::ComposefsUnverified { .. } => false,
            _ => rung == Rung::Live,
        }
    }

    /// A live apply keeps what the booted root guarantees: the target's image is mounted with
    /// fs-verity required, and on a signed host only when its commit's signature checks (the
    /// image must then have the digest the signature binds).
    fn live_keeps_guarantees(&self) -> bool {
        match self {
            HostBlocker::ComposefsVerified {
                mode,
                target_image,
                signature,
                ..
            } => {
                *target_image
                    && match mode {
                        ComposefsMode::Signed => signature
                            .as_ref()
                            .and_then(CommitSignature::digest)
                            .is_some(),
                        _ => true,
                    }
            }
            _ => false,
        }
    }

    /// One sentence: what the state is, and what ends it.
    pub(crate) fn describe(&self) -> String {
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
            HostBlocker::ComposefsVerified {
                mode,
                signed,
                allowed,
                target_image,
                signature,
            } => {
                let what = match (mode, signed) {
                    (ComposefsMode::Signed, Some(key)) => format!(
                        "fs-verity required and its image bound to a commit signature checked with {key}"
                    ),
                    _ => "fs-verity required".to_owned(),
                };
                let given_up = match mode {
                    ComposefsMode::Signed => "no fs-verity digest and no signature",
                    _ => "no fs-verity digest",
                };
                let soft = format!(
                    "a soft reboot would mount the target's plain hardlinked checkout as /, whose files {given_up} checks ({})",
                    if *allowed { "--allow-unverified-usr given" } else { "refused without --allow-unverified-usr" }
                );
                if !*target_image {
                    return if *allowed {
                        format!(
                            "the root is composefs with {what}; --allow-unverified-usr given: the target has no .ostree.cfs image, so until the next boot /usr is its plain hardlinked checkout (bound over /usr live, or / after a soft reboot), whose files {given_up} checks"
                        )
                    } else {
                        format!(
                            "the root is composefs with {what}: the target has no .ostree.cfs image, so a live apply would bind its plain hardlinked checkout over /usr (a soft reboot would mount it as /), whose files {given_up} checks until the next boot; pass --allow-unverified-usr to give that up, or switch with `fastswitch kexec`"
                        )
                    };
                }
                match (mode, signature) {
                    (ComposefsMode::Signed, Some(CommitSignature::Valid { key_file, composefs_digest })) => format!(
                        "the root is composefs with {what}: the target's commit is signed by a key in {key_file} and binds the image digest {composefs_digest}, so a live apply mounts its .ostree.cfs over /usr with fs-verity required, once the image's measured fs-verity digest is that one; {soft}"
                    ),
                    (ComposefsMode::Signed, sig) => {
                        let why = match sig {
                            Some(CommitSignature::Invalid { reason, .. }) => format!("its signature does not check: {reason}"),
                            _ => "its signature was not checked".to_owned(),
                        };
                        if *allowed {
                            format!(
                                "the root is composefs with {what}; the target's commit is not trusted ({why}); --allow-unverified-usr given: a live apply mounts its .ostree.cfs over /usr with fs-verity required but no trusted digest; {soft}"
                            )
                        } else {
                            format!(
                                "the root is composefs with {what}: the target's commit is not trusted ({why}), so its .ostree.cfs could only be mounted with no trusted digest; pass --allow-unverified-usr to give the signature up until the next boot, or switch with `fastswitch kexec` (the boot checks it); {soft}"
                            )
                        }
                    }
                    _ => format!(
                        "the root is composefs with {what}: a live apply mounts the target's .ostree.cfs image over /usr with fs-verity required, as the boot would; {soft}"
                    ),
                }
            }
            HostBlocker::ComposefsUnverified { target_image: true } => "the root is composefs without fs-verity: a live apply mounts the target's .ostree.cfs image over /usr as the boot would (a soft reboot mounts the target's plain checkout as /; the files are the same ostree objects, unchecked either way)".to_owned(),
            HostBlocker::ComposefsUnverified { target_image: false } => "the root is composefs without fs-verity and the target has no .ostree.cfs image: a live apply binds the target's plain hardlinked checkout over /usr (a soft reboot mounts it as /); the files are the same ostree objects, unchecked either way, and /usr is composefs again after the next boot".to_owned(),
        }
    }
}

/// `--allow-unverified-usr`: the admin accepts running the target from its plain checkout on a
/// composefs host with fs-verity or a signed image. The state stays in the plan, marked allowed,
/// so the plan still says what is given up.
pub(crate) fn allow_unverified_usr(states: &mut [HostBlocker]) {
    for s in states {
        if let HostBlocker::ComposefsVerified { allowed, .. } = s {
            *allowed = true;
        }
    }
}

/// Every host state that matters for switching from `from` to `to`.
pub(crate) fn blockers(host: &Host, from: &Deployment, to: &Deployment) -> Vec<HostBlocker> {
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
        let c = composefs::composefs(bs);
        match c.mode {
            ComposefsMode::Off => {}
            ComposefsMode::Unverified => out.push(HostBlocker::ComposefsUnverified {
                target_image: to.composefs_image,
            }),
            mode @ (ComposefsMode::Verity | ComposefsMode::Signed) => {
                out.push(HostBlocker::ComposefsVerified {
                    mode,
                    signed: c.signed,
                    allowed: false,
                    target_image: to.composefs_image,
                    signature: to.composefs_signature.clone(),
                })
            }
        }
    }
    out
}

/// Pure: the composefs image a live apply mounts over `/usr`, when the running root is composefs
/// and the target deployment has an `.ostree.cfs`: with the booted root's data-only layer
/// (`datadir+=`, else `<sysroot>/ostree/repo/objects`) and `verity=require` when the booted root
/// requires fs-verity; on a signed host, with the image digest the target's valid commit
/// signature binds (none when it does not check: mounting it then needs
/// `--allow-unverified-usr`). `None` on any other host: the plain checkout's `usr` is bound.
pub(crate) fn composefs_usr(
    c: &composefs::Composefs,
    to: &Deployment,
    sysroot: &std::path::Path,
) -> Option<crate::system::composefs::ComposefsImage> {
    (c.mode != ComposefsMode::Off && to.composefs_image).then(|| {
        crate::system::composefs::ComposefsImage {
            image: to.path.join(crate::system::composefs::IMAGE_NAME),
            objects: c
                .objects
                .clone()
                .unwrap_or_else(|| sysroot.join("ostree/repo/objects")),
            require_verity: c.verity,
            expected_digest: match c.mode {
                ComposefsMode::Signed => to
                    .composefs_signature
                    .as_ref()
                    .and_then(CommitSignature::digest)
                    .map(str::to_owned),
                _ => None,
            },
        }
    })
}

/// The blockers that rule out `rung`, given `--unlock`.
pub(crate) fn blocking(blockers: &[HostBlocker], rung: Rung, unlock: bool) -> Vec<&HostBlocker> {
    blockers.iter().filter(|b| b.blocks(rung, unlock)).collect()
}

/// The refusal text for a rung ruled out by `blocking`: every reason, one per line.
pub(crate) fn refusal_text(what: &str, blocking: &[&HostBlocker]) -> String {
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
    use std::path::{Path, PathBuf};

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
            composefs_image: false,
            composefs_signature: None,
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

    fn composefs_host(bytes: &[u8]) -> (Host, Deployment, Deployment) {
        let (b, t) = pair();
        let bs = crate::discover::state::parse_booted(bytes).unwrap();
        (host(vec![t.clone(), b.clone()], false, Some(bs)), b, t)
    }

    #[test]
    fn verified_composefs_rules_out_live_and_soft_reboot_until_allowed() {
        use crate::discover::state::encode;
        let key = "/etc/ostree/initramfs-root-binding.key";
        for (bytes, mode) in [
            (
                encode::booted_composefs(1, 2, true, None),
                ComposefsMode::Verity,
            ),
            (
                encode::booted_composefs(1, 2, true, Some(key)),
                ComposefsMode::Signed,
            ),
        ] {
            let (h, b, t) = composefs_host(&bytes);
            let mut bl = blockers(&h, &b, &t);
            assert_eq!(bl.len(), 1, "{bl:?}");
            assert!(
                matches!(&bl[0], HostBlocker::ComposefsVerified { mode: m, allowed: false, .. } if *m == mode),
                "{bl:?}"
            );
            // --unlock is not the flag that allows it.
            assert_eq!(blocking(&bl, Rung::Live, true).len(), 1);
            assert_eq!(blocking(&bl, Rung::SoftReboot, true).len(), 1);
            assert!(blocking(&bl, Rung::Kexec, false).is_empty());
            assert!(blocking(&bl, Rung::Reboot, false).is_empty());
            let text = refusal_text("apply-live", &blocking(&bl, Rung::Live, false));
            assert!(
                text.contains("plain hardlinked checkout")
                    && text.contains("--allow-unverified-usr")
                    && text.contains("no fs-verity digest"),
                "{text}"
            );
            assert_eq!(text.contains(key), mode == ComposefsMode::Signed, "{text}");
            assert_eq!(
                text.contains("no signature"),
                mode == ComposefsMode::Signed,
                "{text}"
            );
            allow_unverified_usr(&mut bl);
            assert!(blocking(&bl, Rung::Live, false).is_empty());
            assert!(blocking(&bl, Rung::SoftReboot, false).is_empty());
            // Still in the plan, saying what was given up.
            let d = bl[0].describe();
            assert!(
                d.contains("--allow-unverified-usr given")
                    && d.contains("plain hardlinked checkout"),
                "{d}"
            );
        }
    }

    /// With an `.ostree.cfs` in the target, a verity host's live apply mounts it with
    /// `verity=require`: live is no longer ruled out (soft-reboot still is); a signed host stays
    /// refused (fastswitch checks no signature) until allowed.
    #[test]
    fn a_target_image_keeps_verity_live() {
        use crate::discover::state::encode;
        let key = "/etc/ostree/initramfs-root-binding.key";
        for (bytes, live_blocked) in [
            (encode::booted_composefs(1, 2, true, None), false),
            (encode::booted_composefs(1, 2, true, Some(key)), true),
        ] {
            let (mut h, b, mut t) = composefs_host(&bytes);
            t.composefs_image = true;
            t.path = "/sysroot/ostree/deploy/os/deploy/t.0".into();
            let bl = blockers(&h, &b, &t);
            assert_eq!(
                blocking(&bl, Rung::Live, false).len(),
                usize::from(live_blocked)
            );
            assert_eq!(blocking(&bl, Rung::SoftReboot, false).len(), 1, "{bl:?}");
            let d = bl[0].describe();
            assert_eq!(
                d.contains(
                    "mounts the target's .ostree.cfs image over /usr with fs-verity required"
                ),
                !live_blocked,
                "{d}"
            );
            assert_eq!(d.contains("signature was not checked"), live_blocked, "{d}");
            // The image to mount: the booted root's data-only layer, verity as the root has it.
            h.booted_state.as_mut().unwrap().root_mount = crate::discover::composefs::parse_mount(
                "25 1 0:23 / / ro - overlay composefs ro,lowerdir+=/run/x,datadir+=/sysroot/ostree/repo/objects,metacopy=on,verity=require\n",
                25,
            );
            let c = crate::discover::composefs::composefs(h.booted_state.as_ref().unwrap());
            let img = composefs_usr(&c, &t, Path::new("/elsewhere")).unwrap();
            assert_eq!(
                img.image,
                Path::new("/sysroot/ostree/deploy/os/deploy/t.0/.ostree.cfs")
            );
            assert_eq!(img.objects, Path::new("/sysroot/ostree/repo/objects"));
            assert!(img.require_verity);
            // Without the mount line the repository under the sysroot is the data layer.
            h.booted_state.as_mut().unwrap().root_mount = None;
            let c = crate::discover::composefs::composefs(h.booted_state.as_ref().unwrap());
            let img = composefs_usr(&c, &t, Path::new("/s")).unwrap();
            assert_eq!(img.objects, Path::new("/s/ostree/repo/objects"));
            // No image in the target, or a plain host: nothing to mount.
            t.composefs_image = false;
            assert_eq!(composefs_usr(&c, &t, Path::new("/s")), None);
        }
        // Signed: live only with a valid signature, whose digest the image must then have.
        let (h, b, mut t) = composefs_host(&encode::booted_composefs(1, 2, true, Some(key)));
        t.composefs_image = true;
        let digest = "ab".repeat(32);
        for (sig, live_blocked) in [
            (
                Some(CommitSignature::Valid {
                    key_file: key.into(),
                    composefs_digest: digest.clone(),
                }),
                false,
            ),
            (
                Some(CommitSignature::Invalid {
                    key_file: key.into(),
                    reason: "the commit has no ostree.sign.ed25519 signature".into(),
                }),
                true,
            ),
            (None, true),
        ] {
            t.composefs_signature = sig.clone();
            let mut bl = blockers(&h, &b, &t);
            assert_eq!(
                blocking(&bl, Rung::Live, false).len(),
                usize::from(live_blocked),
                "{sig:?}"
            );
            assert_eq!(blocking(&bl, Rung::SoftReboot, false).len(), 1);
            let d = bl[0].describe();
            assert_eq!(d.contains(&digest), !live_blocked, "{d}");
            assert_eq!(
                d.contains("no ostree.sign.ed25519 signature"),
                sig.as_ref().is_some_and(|s| s.digest().is_none()),
                "{d}"
            );
            let c = crate::discover::composefs::composefs(h.booted_state.as_ref().unwrap());
            let img = composefs_usr(&c, &t, Path::new("/s")).unwrap();
            assert_eq!(
                img.expected_digest.as_deref(),
                sig.as_ref().and_then(CommitSignature::digest)
            );
            assert!(img.require_verity);
            allow_unverified_usr(&mut bl);
            assert!(blocking(&bl, Rung::Live, false).is_empty());
            assert!(bl[0].describe().contains("--allow-unverified-usr given"));
        }
        let plain = crate::discover::composefs::composefs(&BootedState::default());
        let (_, _, mut t) = composefs_host(&encode::booted_composefs(1, 2, false, None));
        t.composefs_image = true;
        assert_eq!(composefs_usr(&plain, &t, Path::new("/s")), None);
    }

    #[test]
    fn unverified_composefs_is_said_but_rules_nothing_out() {
        use crate::discover::state::encode;
        let (h, b, t) = composefs_host(&encode::booted_composefs(1, 2, false, None));
        let bl = blockers(&h, &b, &t);
        assert_eq!(
            bl,
            vec![HostBlocker::ComposefsUnverified {
                target_image: false
            }]
        );
        for rung in Rung::ALL {
            assert!(blocking(&bl, rung, false).is_empty(), "{rung:?}");
        }
        assert!(bl[0].describe().contains("without fs-verity"));
        // A plain host (the key absent, no composefs mount): nothing.
        let (h, b, t) = composefs_host(&encode::booted(1, 2));
        assert!(blockers(&h, &b, &t).is_empty());
    }
}
