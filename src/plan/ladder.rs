//! **Which rung**: the one pure function that picks how to reach the target —
//! none < live < soft-reboot < kexec < reboot — the lowest rung that is both *complete* (the
//! host runs only the target's code afterwards) and *safe* here, within the admin's bounds.
//! Every rung below the chosen one carries the reasons it was rejected.
//!
//! | rung | needs |
//! |---|---|
//! | none | nothing differs (`/usr`, content outside it, `/etc` defaults, units, kernel) |
//! | live | kernel identity and boot-time files unchanged, nothing outside `/usr` changed, no host state ruling it out, and every process running replaced code belongs to a unit that can be restarted (no deferred units, no user sessions) |
//! | soft-reboot | kernel identity unchanged (boot digest, kernel arguments apart from `ostree=`, SELinux policy: ostree's and bootc's rule), boot-time files unchanged, systemd ≥ 254 |
//! | kexec | kexec possible (not disabled, no lockdown refusal, supported image); with a TPM2-unlocked volume only when the admin allows it |
//! | reboot | always possible; taken only with `--reboot-fallback` |

use serde::{Deserialize, Serialize};

/// The rungs, lowest first.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Rung {
    None,
    Live,
    SoftReboot,
    Kexec,
    Reboot,
}

impl Rung {
    pub(crate) const ALL: [Rung; 5] = [
        Rung::None,
        Rung::Live,
        Rung::SoftReboot,
        Rung::Kexec,
        Rung::Reboot,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Rung::None => "none",
            Rung::Live => "live",
            Rung::SoftReboot => "soft-reboot",
            Rung::Kexec => "kexec",
            Rung::Reboot => "reboot",
        }
    }
}

impl std::str::FromStr for Rung {
    type Err = String;
    fn from_str(s: &str) -> Result<Rung, String> {
        Rung::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown rung {s:?}; one of: {}",
                    Rung::ALL.map(Rung::name).join(", ")
                )
            })
    }
}

/// Everything the decision needs, gathered beforehand (see `cli` for where each comes from).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LadderInputs {
    /// The two deployments are identical in every part the diff looks at.
    pub(crate) identical: bool,
    /// Kernel identity differences (boot digest, version, kernel arguments, SELinux policy).
    pub(crate) kernel_changes: Vec<String>,
    /// Files only the initramfs reads changed (e.g. prepare-root.conf).
    pub(crate) boot_time_changes: Vec<String>,
    /// Top-level content outside `/usr` that changed.
    pub(crate) outside_usr: Vec<String>,
    /// Host states that rule out a live apply (rpm-ostree live, admin unlock, another
    /// stateroot, transient `/etc` or root).
    pub(crate) live_host_states: Vec<String>,
    /// Host states that rule out a soft-reboot (transient `/etc` or root: fastswitch does not
    /// rebuild prepare-root's overlays in `/run/nextroot`).
    pub(crate) soft_reboot_host_states: Vec<String>,
    /// Units a live apply would have to defer (dbus, logind, display managers,
    /// `RefuseManualStop=`, …), with why.
    pub(crate) deferred_units: Vec<String>,
    /// Processes running replaced code that no restartable unit owns (user sessions, scopes).
    pub(crate) unowned_stale: Vec<String>,
    /// Services were not examined (`--no-services`): the live rung is judged on files alone.
    pub(crate) services_unchecked: bool,
    /// Why soft-reboot is impossible on this host (`None` = possible): e.g. systemd < 254.
    pub(crate) soft_reboot_unavailable: Option<String>,
    /// Why kexec is impossible on this host (`None` = possible): disabled, lockdown, arch.
    pub(crate) kexec_unavailable: Option<String>,
    /// Volumes unlocked through a TPM2 token (`/etc/crypttab` `tpm2-device=`): a kexec'd initrd
    /// may not unseal them (PCR 11 is extended by systemd at each boot phase).
    pub(crate) tpm2_volumes: Vec<String>,
}

/// The admin's bounds and permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LadderBounds {
    pub(crate) min: Rung,
    pub(crate) max: Rung,
    /// `--reboot-fallback`: a firmware reboot may be the answer.
    pub(crate) allow_reboot: bool,
    /// `--allow-tpm-kexec`: kexec although a TPM2-unlocked volume may not unlock.
    pub(crate) allow_tpm_kexec: bool,
}

impl Default for LadderBounds {
    fn default() -> Self {
        LadderBounds {
            min: Rung::None,
            max: Rung::Reboot,
            allow_reboot: false,
            allow_tpm_kexec: false,
        }
    }
}

/// One rung's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RungVerdict {
    pub(crate) rung: Rung,
    /// Complete and safe here (before the admin's bounds).
    pub(crate) possible: bool,
    /// Why it is not possible, or why it was not taken although possible (bounds).
    pub reasons: Vec<String>,
}

/// The ladder's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ladder {
    /// The rung to take; `None` when no rung within the bounds is possible.
    pub(crate) chosen: Option<Rung>,
    /// Every rung, lowest first.
    pub(crate) rungs: Vec<RungVerdict>,
}

impl Ladder {
    #[cfg(test)]
    pub(crate) fn verdict(&self, rung: Rung) -> &RungVerdict {
        &self.rungs[rung as usize]
    }

    /// Reasons every rung below `rung` was rejected, as "rung: reason" lines.
    pub(crate) fn rejections_below(&self, rung: Rung) -> Vec<String> {
        self.rungs
            .iter()
            .filter(|v| v.rung < rung)
            .flat_map(|v| {
                v.reasons
                    .iter()
                    .map(move |r| format!("{}: {r}", v.rung.name()))
            })
            .collect()
    }
}

fn blockers(inputs: &LadderInputs, rung: Rung) -> Vec<String> {
    let i = inputs;
    let mut r = Vec::new();
    let kernel = |r: &mut Vec<String>| {
        r.extend(
            i.kernel_changes
                .iter()
                .map(|k| format!("kernel changed: {k}")),
        );
        r.extend(
            i.boot_time_changes
                .iter()
                .map(|b| format!("boot-time file changed: {b}")),
        );
    };
    match rung {
        Rung::None => {
            if !i.identical {
                r.push("the target differs from the running system".into());
            }
        }
        Rung::Live => {
            kernel(&mut r);
            if !i.outside_usr.is_empty() {
                r.push(format!(
                    "content outside /usr changed ({}); a live apply swaps only /usr",
                    i.outside_usr.join(", ")
                ));
            }
            r.extend(i.live_host_states.iter().cloned());
            r.extend(i.deferred_units.iter().map(|u| {
                format!("{u} would have to be deferred: old and new code would run side by side")
            }));
            r.extend(
                i.unowned_stale.iter().map(|p| {
                    format!("{p} runs replaced code and belongs to no restartable service")
                }),
            );
        }
        Rung::SoftReboot => {
            kernel(&mut r);
            r.extend(i.soft_reboot_host_states.iter().cloned());
            if let Some(why) = &i.soft_reboot_unavailable {
                r.push(why.clone());
            }
        }
        Rung::Kexec => {
            if let Some(why) = &i.kexec_unavailable {
                r.push(why.clone());
            }
        }
        Rung::Reboot => {}
    }
    r
}

/// Pure: pick the rung. A rung is *possible* when nothing above rules it out; the choice is the
/// lowest possible rung within `[min, max]`, where kexec with a TPM2-unlocked volume needs
/// `allow_tpm_kexec` and reboot needs `allow_reboot`.
pub(crate) fn choose(inputs: &LadderInputs, bounds: &LadderBounds) -> Ladder {
    let mut chosen = None;
    let mut rungs = Vec::new();
    for rung in Rung::ALL {
        let mut reasons = blockers(inputs, rung);
        let possible = reasons.is_empty();
        if possible && chosen.is_none() {
            if rung < bounds.min {
                reasons.push(format!("below --min-rung {}", bounds.min.name()));
            } else if rung > bounds.max {
                reasons.push(format!("above --max-rung {}", bounds.max.name()));
            } else if rung == Rung::Kexec
                && !inputs.tpm2_volumes.is_empty()
                && !bounds.allow_tpm_kexec
            {
                reasons.push(format!(
                    "{} unlock(s) through a TPM2 token; after a kexec the PCRs are not reset and the new initrd may not unseal the key: pass --allow-tpm-kexec to kexec anyway",
                    inputs.tpm2_volumes.join(", ")
                ));
            } else if rung == Rung::Reboot && !bounds.allow_reboot {
                reasons.push(
                    "a firmware reboot is taken only with --reboot-fallback (or reboot yourself)"
                        .into(),
                );
            } else {
                chosen = Some(rung);
            }
        } else if possible {
            // Above the chosen rung: possible, not needed.
        }
        rungs.push(RungVerdict {
            rung,
            possible,
            reasons,
        });
    }
    Ladder { chosen, rungs }
}

/// Parse `/etc/crypttab` text (pure): the volumes whose options ask for a TPM2 token
/// (`tpm2-device=`).
pub(crate) fn tpm2_volumes(crypttab: &str) -> Vec<String> {
    crypttab
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let opts = f.get(3)?;
            opts.split(',')
                .any(|o| o.starts_with("tpm2-device="))
                .then(|| f[0].to_owned())
        })
        .collect()
}

/// Pure: the systemd version from the manager's `Version` property (`"257.13-1~deb13u1"`,
/// `"252"`, `"systemd 254 (254.5-1.fc39)"`): the first run of digits.
pub(crate) fn systemd_major(version: &str) -> Option<u32> {
    let start = version.find(|c: char| c.is_ascii_digit())?;
    let digits: String = version[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The first systemd release with `systemctl soft-reboot`.
pub(crate) const SOFT_REBOOT_SYSTEMD: u32 = 254;

#[cfg(test)]
mod tests {
    use super::*;

    fn live_change() -> LadderInputs {
        LadderInputs::default()
    }

    #[test]
    fn identical_is_none() {
        let l = choose(
            &LadderInputs {
                identical: true,
                ..Default::default()
            },
            &LadderBounds::default(),
        );
        assert_eq!(l.chosen, Some(Rung::None));
        assert!(l.rungs.iter().all(|r| r.possible));
    }

    #[test]
    fn userspace_change_is_live_and_none_is_rejected_with_a_reason() {
        let l = choose(&live_change(), &LadderBounds::default());
        assert_eq!(l.chosen, Some(Rung::Live));
        assert_eq!(
            l.rejections_below(Rung::Live),
            ["none: the target differs from the running system"]
        );
    }

    #[test]
    fn deferred_units_or_user_sessions_take_soft_reboot() {
        let i = LadderInputs {
            deferred_units: vec!["dbus.service (protected: dbus)".into()],
            unowned_stale: vec!["pid 812 (session-2.scope)".into()],
            ..Default::default()
        };
        let l = choose(&i, &LadderBounds::default());
        assert_eq!(l.chosen, Some(Rung::SoftReboot));
        let live = &l.verdict(Rung::Live).reasons;
        assert_eq!(live.len(), 2);
        assert!(live[0].contains("dbus.service"));
        assert!(live[1].contains("session-2.scope"));
    }

    #[test]
    fn old_systemd_goes_to_kexec_and_says_why() {
        let i = LadderInputs {
            deferred_units: vec!["dbus.service".into()],
            soft_reboot_unavailable: Some("systemd 252 has no soft-reboot (needs ≥ 254)".into()),
            ..Default::default()
        };
        let l = choose(&i, &LadderBounds::default());
        assert_eq!(l.chosen, Some(Rung::Kexec));
        assert_eq!(
            l.verdict(Rung::SoftReboot).reasons,
            ["systemd 252 has no soft-reboot (needs ≥ 254)"]
        );
    }

    #[test]
    fn kernel_change_skips_live_and_soft_reboot() {
        let i = LadderInputs {
            kernel_changes: vec!["boot digest a → b".into()],
            ..Default::default()
        };
        let l = choose(&i, &LadderBounds::default());
        assert_eq!(l.chosen, Some(Rung::Kexec));
        assert!(!l.verdict(Rung::Live).possible && !l.verdict(Rung::SoftReboot).possible);
        // Content outside /usr only: a soft reboot mounts the whole new root.
        let i = LadderInputs {
            outside_usr: vec!["/opt".into()],
            ..Default::default()
        };
        assert_eq!(
            choose(&i, &LadderBounds::default()).chosen,
            Some(Rung::SoftReboot)
        );
    }

    #[test]
    fn no_kexec_means_reboot_only_when_asked() {
        let i = LadderInputs {
            kernel_changes: vec!["version 6.1 → 6.12".into()],
            kexec_unavailable: Some("kexec is disabled (kernel.kexec_load_disabled=1)".into()),
            ..Default::default()
        };
        let l = choose(&i, &LadderBounds::default());
        assert_eq!(l.chosen, None);
        assert!(l.verdict(Rung::Reboot).reasons[0].contains("--reboot-fallback"));
        let b = LadderBounds {
            allow_reboot: true,
            ..Default::default()
        };
        assert_eq!(choose(&i, &b).chosen, Some(Rung::Reboot));
    }

    #[test]
    fn tpm2_prefers_soft_reboot_and_guards_kexec() {
        let mut i = LadderInputs {
            deferred_units: vec!["dbus.service".into()],
            tpm2_volumes: vec!["luks-root".into()],
            ..Default::default()
        };
        assert_eq!(
            choose(&i, &LadderBounds::default()).chosen,
            Some(Rung::SoftReboot)
        );
        i.kernel_changes = vec!["boot digest a → b".into()];
        let l = choose(&i, &LadderBounds::default());
        assert_eq!(l.chosen, None, "{l:?}");
        assert!(l.verdict(Rung::Kexec).reasons[0].contains("--allow-tpm-kexec"));
        let b = LadderBounds {
            allow_tpm_kexec: true,
            ..Default::default()
        };
        assert_eq!(choose(&i, &b).chosen, Some(Rung::Kexec));
    }

    #[test]
    fn bounds() {
        let b = LadderBounds {
            min: Rung::Kexec,
            ..Default::default()
        };
        let l = choose(&live_change(), &b);
        assert_eq!(l.chosen, Some(Rung::Kexec));
        assert!(l.verdict(Rung::Live).reasons[0].contains("below --min-rung kexec"));
        let b = LadderBounds {
            max: Rung::Live,
            ..Default::default()
        };
        let i = LadderInputs {
            kernel_changes: vec!["x".into()],
            ..Default::default()
        };
        let l = choose(&i, &b);
        assert_eq!(l.chosen, None);
        assert!(l
            .verdict(Rung::Kexec)
            .reasons
            .last()
            .unwrap()
            .contains("above --max-rung live"));
    }

    #[test]
    fn crypttab_and_systemd_version() {
        let ct = "# <name> <device> <key> <options>\n\
                  luks-root UUID=1 none tpm2-device=auto,discard\n\
                  swap /dev/sdb2 /dev/urandom swap\n\
                  data UUID=2 none luks\n";
        assert_eq!(tpm2_volumes(ct), ["luks-root"]);
        assert_eq!(systemd_major("257.13-1~deb13u1"), Some(257));
        assert_eq!(systemd_major("252"), Some(252));
        assert_eq!(systemd_major("systemd 254 (254.5-1.fc39)"), Some(254));
        assert_eq!(systemd_major("unknown"), None);
    }
}
