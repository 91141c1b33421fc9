//! Run a kexec [`Plan`]: finalize the staged deployment (so it has a BLS entry and an `ostree=`
//! bootlink), load the kernel of its BLS entry with `kexec_file_load`, and hand off through
//! systemd's `kexec.target` so services stop in order and filesystems are unmounted.

#[cfg(test)]
mod hand_off_tests;
pub mod prepared;

use super::report::{Report, StepDetail, StepOutcome, StepReport, REPORT_SCHEMA_VERSION};
use crate::discover::{self, Deployment, HostPaths};
use crate::exit::{refuse, ExitCode};
use crate::plan::{Plan, Step};
use crate::system::kexec::KexecLoader;
use crate::system::systemd::Systemd;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub(crate) struct KexecEnv<'a> {
    pub(crate) paths: &'a HostPaths,
    /// For the soft-reboot rung's `/run/nextroot`.
    pub(crate) mounts: &'a dyn crate::system::mounts::Mounts,
    /// The host the plan was made from; re-reads after finalization reuse its kernel digests.
    pub(crate) host: &'a discover::Host,
    pub(crate) systemd: &'a dyn Systemd,
    pub(crate) loader: &'a dyn KexecLoader,
    pub(crate) progress: &'a mut dyn FnMut(&str),
}

/// A BLS path (`/ostree/…` relative to the boot directory, or `/boot/ostree/…` when ostree
/// wrote it for a `/boot` on the root filesystem) inside the host's boot directory.
pub(crate) fn boot_path(boot: &Path, bls_path: &str) -> PathBuf {
    let rel = bls_path.trim_start_matches('/');
    let rel = rel.strip_prefix("boot/").unwrap_or(rel);
    boot.join(rel)
}

/// Kernel, initrds and command line of a written (finalized) deployment, from its BLS entry.
pub(crate) fn boot_files(
    paths: &HostPaths,
    d: &Deployment,
) -> Result<(PathBuf, Vec<PathBuf>, String)> {
    let e = d.boot_entry.as_ref().with_context(|| {
        format!(
            "deployment {} has no boot entry (is it still staged and not finalized?)",
            d.id
        )
    })?;
    let linux = e
        .linux
        .as_deref()
        .with_context(|| format!("boot entry {} has no `linux` line; cannot kexec", e.file))?;
    let options = e
        .options
        .as_deref()
        .with_context(|| format!("boot entry {} has no `options` line; cannot kexec", e.file))?;
    if e.ostree_karg().is_none() {
        bail!(
            "boot entry {} has no ostree= argument; ostree-prepare-root would not find the root",
            e.file
        );
    }
    let kernel = boot_path(&paths.boot, linux);
    let initrds = e.initrd.iter().map(|i| boot_path(&paths.boot, i)).collect();
    Ok((kernel, initrds, options.to_owned()))
}

/// The bootcsum in a BLS `linux` path: the `<stateroot>-<bootcsum>` directory ostree copied
/// the kernel to (`/ostree/<stateroot>-<bootcsum>/vmlinuz-…`, or with a `/boot` prefix).
pub(crate) fn bootcsum_of_linux<'a>(linux: &'a str, stateroot: &str) -> Option<&'a str> {
    let mut parts = linux.trim_start_matches('/').split('/');
    let mut first = parts.next()?;
    if first == "boot" {
        first = parts.next()?;
    }
    if first != "ostree" {
        return None;
    }
    parts
        .next()?
        .strip_prefix(stateroot)?
        .strip_prefix('-')
        .filter(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The kernel a finalized boot entry points at must be the one fastswitch found in the tree
/// (and decided on): ostree names its directory after the same bootcsum.
pub fn check_entry_matches_tree(d: &Deployment) -> Result<()> {
    let Some(e) = d.boot_entry.as_ref() else {
        return Ok(());
    };
    let linux = e.linux.as_deref().unwrap_or_default();
    let entry_csum = bootcsum_of_linux(linux, &d.stateroot);
    let tree_csum = d.kernel.as_ref().map(|k| k.boot_digest.as_str());
    if entry_csum.is_none() || entry_csum != tree_csum {
        return Err(refuse(
            ExitCode::Refused,
            format!(
                "boot entry {} loads `{linux}`, but the kernel found in {} has bootcsum {}; not loading a kernel that differs from the one the decision was made on",
                e.file,
                d.path.display(),
                tree_csum.unwrap_or("none")
            ),
        ));
    }
    crate::discover::verify_kernel(d) // the tree's files, hashed: discovery took ostree's record
}

/// Load the target's kernel, unless `fastswitch prepare` loaded the same one at staging (same
/// bootcsum, initrd count and command line, files unchanged: see [`prepared::check_reuse`]).
/// Returns why it was (re)loaded, `None` when the prepared kernel was reused.
fn load_unless_prepared(
    env: &mut KexecEnv<'_>,
    d: &Deployment,
    kernel: &Path,
    initrds: &[PathBuf],
    cmdline: &str,
) -> Result<Option<String>> {
    let bootcsum = d
        .kernel
        .as_ref()
        .map(|k| k.boot_digest.as_str())
        .unwrap_or_default();
    let why = prepared::check_reuse(env.paths, env.loader, d, bootcsum, initrds, cmdline)?;
    let Some(why) = why else {
        (env.progress)("reusing the kernel loaded when the deployment was staged");
        return Ok(None);
    };
    (env.progress)(&format!(
        "loading {} with kexec_file_load…",
        kernel.display()
    ));
    env.loader.load(kernel, initrds, cmdline).map_err(|e| {
        let code = if e.needs_full_reboot() {
            ExitCode::RebootNeeded
        } else {
            ExitCode::Error
        };
        refuse(code, format!("{e}"))
    })?;
    if !env.loader.is_loaded().map_err(anyhow::Error::new)? {
        bail!("kexec_file_load succeeded but /sys/kernel/kexec_loaded is still 0");
    }
    Ok(Some(why))
}

fn step_report(step: &'static str, t: Instant, detail: StepDetail) -> StepReport {
    StepReport {
        step,
        outcome: StepOutcome::Done,
        duration_ms: t.elapsed().as_millis() as u64,
        detail,
    }
}

/// What ends the running userspace once the plan is prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandOff {
    /// `kexec.target`: the loaded kernel boots.
    Kexec,
    /// `soft-reboot.target`: userspace restarts from `/run/nextroot`.
    SoftReboot,
}

/// Execute the plan up to (not including) the hand-off; returns the report and the hand-off
/// that is due. The caller prints the report, then calls [`hand_off`].
///
/// One arm per kexec-plan step, each the whole effect of its step next to the report it
/// leaves (as `live::run_step`); long for that reason.
pub(crate) fn prepare(plan: &Plan, env: &mut KexecEnv<'_>) -> Result<(Report, Option<HandOff>)> {
    let t0 = Instant::now();
    let mut steps = Vec::new();
    let mut hand_off_due = None;
    let mut host = env.host.clone();
    for step in &plan.steps {
        let t = Instant::now();
        super::journal::fault_point(step.name(), "before");
        match step {
            Step::UnlockFinalization => {
                crate::system::ostree_state::unlock_finalization(env.paths)?;
                steps.push(step_report(
                    "unlock_finalization",
                    t,
                    StepDetail::Unlocked {
                        staged_deployment: env.paths.staged_file(),
                    },
                ));
            }
            Step::FinalizeStaged => {
                (env.progress)(
                    "finalizing the staged deployment (ostree-finalize-staged.service)…",
                );
                // Start first: right after staging, the .path unit may not have started it yet,
                // and stopping an inactive unit would silently do nothing.
                let started = env.systemd.start("ostree-finalize-staged.service")?;
                if !started.result.is_success() {
                    bail!(
                        "starting ostree-finalize-staged.service: job {:?}",
                        started.result
                    );
                }
                let stopped = env.systemd.stop("ostree-finalize-staged.service")?;
                if !stopped.result.is_success() {
                    bail!("stopping ostree-finalize-staged.service (which runs `ostree admin finalize-staged`): job {:?}", stopped.result);
                }
                host = discover::load_reusing(env.paths, Some(&host))?;
                // The stop job succeeds even when `ostree admin finalize-staged` fails (the unit
                // is then `failed`): say so, rather than only what is missing afterwards.
                let failed = || {
                    let state = env
                        .systemd
                        .active_states()
                        .ok()
                        .and_then(|m| m.get("ostree-finalize-staged.service").cloned());
                    match state.as_deref() {
                        Some("failed") => "ostree-finalize-staged.service failed (its `ostree admin finalize-staged` exited with an error, e.g. writing the bootloader configuration)".to_owned(),
                        _ => "ostree-finalize-staged.service ran".to_owned(),
                    }
                };
                let d = host
                    .deployments
                    .iter()
                    .find(|d| d.id == plan.to.id)
                    .with_context(|| {
                        format!(
                            "{}, and deployment {} is neither staged nor in a boot entry any more; see `journalctl -b -u ostree-finalize-staged`",
                            failed(),
                            plan.to.id
                        )
                    })?;
                if d.staged || d.boot_entry.is_none() {
                    bail!(
                        "{}, but deployment {} is still staged; see `journalctl -b -u ostree-finalize-staged`",
                        failed(),
                        plan.to.id
                    );
                }
                steps.push(step_report(
                    "finalize_staged",
                    t,
                    StepDetail::Finalized {
                        boot_entry: d.boot_entry.as_ref().map(|e| e.file.clone()),
                    },
                ));
            }
            Step::KexecLoad { .. } => {
                host = discover::load_reusing(env.paths, Some(&host))?;
                let d = host
                    .deployments
                    .iter()
                    .find(|d| d.id == plan.to.id)
                    .with_context(|| format!("deployment {} not found", plan.to.id))?;
                let (kernel, initrds, cmdline) = boot_files(env.paths, d)?;
                check_entry_matches_tree(d)?;
                let reload_reason = load_unless_prepared(env, d, &kernel, &initrds, &cmdline)?;
                steps.push(step_report(
                    "kexec_load",
                    t,
                    StepDetail::KexecLoaded {
                        cmdline,
                        initrds,
                        kernel,
                        reused_prepared: reload_reason.is_none(),
                        reload_reason,
                    },
                ));
            }
            Step::KexecReboot => hand_off_due = Some(HandOff::Kexec),
            Step::PrepareNextroot { nextroot } => {
                (env.progress)(&format!(
                    "mounting {} at {}…",
                    nextroot.deployment.display(),
                    nextroot.dir.display()
                ));
                env.mounts.prepare_nextroot(nextroot)?;
                steps.push(step_report(
                    "prepare_nextroot",
                    t,
                    StepDetail::Nextroot {
                        deployment: nextroot.deployment.clone(),
                        nextroot: nextroot.dir.clone(),
                    },
                ));
            }
            Step::SoftReboot => hand_off_due = Some(HandOff::SoftReboot),
            other => bail!("step {} does not belong in a kexec plan", other.name()),
        }
        super::journal::fault_point(step.name(), "after");
    }
    let report = Report {
        schema_version: REPORT_SCHEMA_VERSION,
        verb: plan.verb,
        from: plan.from.clone(),
        to: plan.to.clone(),
        decision: plan.decision.clone(),
        steps,
        total_ms: t0.elapsed().as_millis() as u64,
        outcome: ExitCode::Ok,
        exit_code: 0,
        etc_conflicts: plan.etc_conflicts.clone(),
        failed_units: vec![],
        phases: vec![],
        wall_ms: 0,
        waited_ms: 0,
        own_ms: 0,
        journal_ms: 0,
        journal_in_waiting_ms: 0,
        reset: false,
    };
    Ok((report, hand_off_due))
}

/// Start `kexec.target` (like `systemctl kexec`): systemd stops services in order, unmounts,
/// runs ostree's shutdown work, and boots the loaded kernel. Never `reboot(2)` directly.
///
/// For a soft reboot, first point `/run/ostree-booted` at the new root (it survives in `/run`,
/// and ostree picks the booted deployment by its `backing-root-device-inode`), then start
/// `soft-reboot.target` (like `systemctl soft-reboot`). If that fails (systemd refuses the job),
/// the old `/run/ostree-booted` is put back and the next root mounted at `/run/nextroot` is
/// detached: on systemd ≥ 254 a plain `systemctl reboot` soft-reboots by itself into whatever
/// `/run/nextroot` holds, so a left-over tree would turn the admin's next reboot into a soft
/// reboot.
pub(crate) fn hand_off(
    sd: &dyn Systemd,
    mounts: &dyn crate::system::mounts::Mounts,
    how: HandOff,
    plan: &Plan,
    paths: &HostPaths,
) -> Result<()> {
    match how {
        HandOff::Kexec => sd
            .start_unit_no_wait("kexec.target", "replace-irreversibly")
            .context("starting kexec.target"),
        HandOff::SoftReboot => {
            let started = start_soft_reboot(sd, plan, paths);
            if started.is_err() {
                for step in &plan.steps {
                    if let Step::PrepareNextroot { nextroot } = step {
                        if let Err(e) = mounts.detach_tree(&nextroot.dir) {
                            return started.map_err(|err| {
                                err.context(format!(
                                    "and detaching {} failed too ({e:#}): run `umount -R {}` before the next reboot",
                                    nextroot.dir.display(),
                                    nextroot.dir.display()
                                ))
                            });
                        }
                    }
                }
            }
            started
        }
    }
}

/// Point `/run/ostree-booted` at the target and start `soft-reboot.target`; on a refusal, put
/// the old `/run/ostree-booted` back.
fn start_soft_reboot(sd: &dyn Systemd, plan: &Plan, paths: &HostPaths) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let booted = paths.ostree_booted_file();
    let old = crate::system::files::read(&booted, crate::system::files::Follow::Yes)
        .with_context(|| format!("reading {}", booted.display()))?;
    let m = std::fs::metadata(&plan.to.path)
        .with_context(|| format!("stat {}", plan.to.path.display()))?;
    let new = discover::state::with_backing_root(&old, m.dev(), m.ino())
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("rewriting {}", booted.display()))?;
    crate::system::ostree_state::replace_run_file(&booted, &new)?;
    if let Err(e) = sd.start_unit_no_wait("soft-reboot.target", "replace-irreversibly") {
        crate::system::ostree_state::replace_run_file(&booted, &old)?;
        return Err(e.context("starting soft-reboot.target"));
    }
    Ok(())
}

#[cfg(test)]
mod csum_tests {
    use super::bootcsum_of_linux;

    #[test]
    fn bootcsum_from_linux_paths() {
        let c = "a1".repeat(32);
        for l in [
            format!("/ostree/os-{c}/vmlinuz-6.1"),
            format!("/boot/ostree/os-{c}/vmlinuz-6.1"),
            format!("ostree/os-{c}/vmlinuz"),
        ] {
            assert_eq!(bootcsum_of_linux(&l, "os"), Some(c.as_str()), "{l}");
        }
        assert_eq!(
            bootcsum_of_linux(&format!("/ostree/other-{c}/v"), "os"),
            None
        );
        assert_eq!(bootcsum_of_linux("/vmlinuz", "os"), None);
        assert_eq!(bootcsum_of_linux("/ostree/os-abc/vmlinuz", "os"), None);
    }
}

/// The kexec executor against recording fakes (no root, no kexec): `switch` reusing or
/// reloading the kernel `prepare` loaded, refusals with their exit codes, and a soft-reboot
/// plan up to its hand-off. The real syscall is exercised by the VM scenarios.
#[cfg(test)]
mod tests {
    use super::prepared::{self, fixture};
    use super::*;
    use crate::diff::{Decision, DecisionKind};
    use crate::exit::code_for;
    use crate::plan::{Verb, PLAN_SCHEMA_VERSION};
    use crate::system::kexec::recording::{KexecCall, RecordingKexec};
    use crate::system::kexec::KexecError;
    use crate::system::mounts::NextRoot;
    use crate::testing::{RecordingMounts, RecordingSystemd};

    /// The staged deployment of `h` as finalization leaves it, with the command line
    /// `prepare` predicted for it.
    fn finalized(h: &discover::Host) -> (Deployment, PathBuf, Vec<PathBuf>, String) {
        let mut d = h.deployments[0].clone();
        d.staged = false;
        let k = d.kernel.clone().unwrap();
        let cmdline = "root=/dev/vda ostree=/ostree/boot.1/debian/new/0 quiet".to_owned();
        (d, k.vmlinuz, vec![k.initramfs.unwrap()], cmdline)
    }

    fn run_load(
        h: &discover::Host,
        loader: &RecordingKexec,
        cmdline: &str,
    ) -> Result<Option<String>> {
        let (mounts, sd) = (RecordingMounts::default(), RecordingSystemd::default());
        let mut progress = |_: &str| {};
        let mut env = KexecEnv {
            paths: &h.paths,
            mounts: &mounts,
            host: h,
            systemd: &sd,
            loader,
            progress: &mut progress,
        };
        let (d, kernel, initrds, _) = finalized(h);
        load_unless_prepared(&mut env, &d, &kernel, &initrds, cmdline)
    }

    #[test]
    fn switch_reuses_the_prepared_kernel_only_when_it_is_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let h = fixture::host(dir.path(), "new");
        let loader = RecordingKexec::default();
        let (_, kernel, initrds, cmdline) = finalized(&h);

        // Nothing prepared: switch loads.
        let why = run_load(&h, &loader, &cmdline).unwrap();
        assert_eq!(why.as_deref(), Some("nothing was prepared at staging"));
        assert_eq!(loader.calls().len(), 1);

        // Prepared in this boot with the command line finalization writes: reused, no load.
        let boot_id = crate::exec::journal::current_boot_id().unwrap();
        let loader = RecordingKexec::default();
        let r = prepared::prepare_staged(&h, &loader, &boot_id, true).unwrap();
        assert_eq!(r.outcome, "loaded", "{r:?}");
        assert_eq!(run_load(&h, &loader, &cmdline).unwrap(), None);
        assert_eq!(loader.calls().len(), 1, "{:?}", loader.calls());

        // The boot entry says otherwise: loaded again, with the entry's command line.
        let other = cmdline.replace("quiet", "debug");
        let why = run_load(&h, &loader, &other).unwrap().unwrap();
        assert!(why.contains("command line"), "{why}");
        assert_eq!(
            loader.calls().last(),
            Some(&KexecCall::Load {
                kernel,
                initrds,
                cmdline: other
            })
        );

        // The prepared kernel was unloaded behind fastswitch's back: loaded again.
        loader.unload().unwrap();
        let why = run_load(&h, &loader, &cmdline).unwrap().unwrap();
        assert!(why.contains("no kernel is loaded"), "{why}");
    }

    #[test]
    fn a_failed_load_refuses_with_the_exit_code_its_cause_needs() {
        let dir = tempfile::tempdir().unwrap();
        let h = fixture::host(dir.path(), "new");
        let (_, _, _, cmdline) = finalized(&h);
        let failing = |e: fn() -> KexecError| RecordingKexec {
            fail_load: Some(Box::new(e)),
            ..Default::default()
        };
        // kexec disabled until reboot: only a firmware reboot reaches the target.
        let err = run_load(&h, &failing(|| KexecError::Disabled), &cmdline).unwrap_err();
        assert_eq!(code_for(&err), ExitCode::RebootNeeded, "{err:#}");
        // Busy: a retry may work, so a plain error.
        let err = run_load(&h, &failing(|| KexecError::Busy), &cmdline).unwrap_err();
        assert_eq!(code_for(&err), ExitCode::Error, "{err:#}");
        // `prepare` refuses the same way and writes no record.
        let err =
            prepared::prepare_staged(&h, &failing(|| KexecError::Disabled), "b", true).unwrap_err();
        assert_eq!(code_for(&err), ExitCode::RebootNeeded, "{err:#}");
        assert!(prepared::read(&prepared::record_path(&h.paths))
            .unwrap()
            .is_none());
    }

    #[test]
    fn an_entry_naming_another_kernel_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let h = fixture::host(dir.path(), "new");
        let (mut d, ..) = finalized(&h);
        d.boot_entry = Some(crate::discover::bls::BootEntry {
            file: "ostree-1-debian.conf".into(),
            linux: Some(format!("/ostree/debian-{}/vmlinuz-6.1", "a".repeat(64))),
            ..Default::default()
        });
        let err = check_entry_matches_tree(&d).unwrap_err();
        assert_eq!(code_for(&err), ExitCode::Refused, "{err:#}");
        assert!(format!("{err}").contains("ostree-1-debian.conf"), "{err}");
    }

    fn plan(h: &discover::Host, verb: Verb, steps: Vec<Step>) -> Plan {
        let r = |d: &Deployment| crate::diff::DeploymentRef {
            index: d.index,
            id: d.id.clone(),
            stateroot: d.stateroot.clone(),
            path: d.path.clone(),
            booted: d.booted,
            staged: d.staged,
        };
        Plan {
            schema_version: PLAN_SCHEMA_VERSION,
            verb,
            from: r(&h.deployments[1]),
            to: r(&h.deployments[0]),
            decision: Decision {
                kind: DecisionKind::Kexec,
                reasons: vec![],
            },
            steps,
            etc_conflicts: vec![],
            host_states: vec![],
            ladder: None,
        }
    }

    #[test]
    fn a_soft_reboot_plan_mounts_nextroot_and_leaves_the_hand_off_due() {
        let dir = tempfile::tempdir().unwrap();
        let h = fixture::host(dir.path(), "new");
        let (mounts, sd, loader) = (
            RecordingMounts::default(),
            RecordingSystemd::default(),
            RecordingKexec::default(),
        );
        let mut progress = |_: &str| {};
        let mut env = KexecEnv {
            paths: &h.paths,
            mounts: &mounts,
            host: &h,
            systemd: &sd,
            loader: &loader,
            progress: &mut progress,
        };
        let next = NextRoot {
            dir: dir.path().join("run/nextroot"),
            deployment: h.deployments[0].path.clone(),
            var: dir.path().join("var"),
            sysroot: dir.path().join("sysroot"),
            boot: None,
            composefs: None,
        };
        let p = plan(
            &h,
            Verb::SoftReboot,
            vec![
                Step::PrepareNextroot {
                    nextroot: next.clone(),
                },
                Step::SoftReboot,
            ],
        );
        let (rep, due) = prepare(&p, &mut env).unwrap();
        assert_eq!(due, Some(HandOff::SoftReboot));
        let steps: Vec<_> = rep.steps.iter().map(|s| s.step).collect();
        assert_eq!(steps, ["prepare_nextroot"]);
        assert_eq!(
            rep.steps[0].detail,
            StepDetail::Nextroot {
                deployment: next.deployment.clone(),
                nextroot: next.dir.clone(),
            }
        );
        assert!(
            mounts
                .log
                .borrow()
                .iter()
                .any(|l| l.starts_with("nextroot ")),
            "{:?}",
            mounts.log.borrow()
        );
        assert!(sd.log.borrow().is_empty(), "no hand-off before the report");
        assert!(loader.calls().is_empty());

        // A live step in a kexec plan is refused before anything runs.
        let p = plan(&h, Verb::Kexec, vec![Step::DaemonReload, Step::KexecReboot]);
        let err = prepare(&p, &mut env).unwrap_err();
        assert!(
            format!("{err}").contains("does not belong in a kexec plan"),
            "{err}"
        );
        assert!(sd.log.borrow().is_empty());
    }
}
