//! `fastswitch switch`: gather the facts the ladder needs, let [`ladder::choose`] pick the rung,
//! and carry that rung out (or print its plan with `--dry-run`).

use super::render::{print_plan, short};
use super::verbs::{booted_host, preflight, progress, run_kexec, run_live, KexecMode, LiveRun};
use super::{Output, SwitchOpts};
use crate::diff::{self, DeploymentDiff};
use crate::discover::{Host, HostPaths};
use crate::exec::journal::Journal;
use crate::exit::{refuse, ExitCode};
use crate::plan::facts;
use crate::plan::ladder::{self, Ladder, LadderBounds, Rung};
use crate::plan::preconditions::{self, HostBlocker};
use crate::plan::{self, Plan};
use crate::system::systemd::{self, Systemd};
use crate::system::{mounts, privileges};
use anyhow::{Context, Result};

/// Long because it is the verb's whole story in order — preflight, one discovery, one diff,
/// the facts, the ladder — ending in one `match` over the rungs whose arms are calls.
pub(crate) fn switch(paths: &HostPaths, opts: &SwitchOpts, o: &mut Output<'_>) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    // Before the diff spawns worker threads. Each rung checks its own capabilities before its
    // first change; without root there is nothing to lock (every rung that changes something
    // is refused for lack of them).
    let _lock = if !opts.dry_run && nix::unistd::geteuid().is_root() {
        Some(preflight(paths, &[])?)
    } else {
        None
    };
    let host = booted_host(paths)?;
    let journal = Journal::for_host(paths)?;
    let live = journal.running_target()?;
    let (from, to) = diff::select_running_pair(&host, live.as_deref(), None, opts.to.as_deref())?;
    if let Some(note) = diff::gone_live_target_note(&host, live.as_deref()) {
        progress(&note);
    }
    let mut host_states = preconditions::blockers(&host, from, to);
    if opts.allow_unverified_usr {
        preconditions::allow_unverified_usr(&mut host_states);
    }
    let locked = preconditions::blocking(&host_states, Rung::Kexec, opts.unlock);
    if !locked.is_empty() {
        return Err(refuse(
            ExitCode::Refused,
            preconditions::refusal_text("switch", &locked),
        ));
    }
    let d = diff::diff_deployments(from, to)?;
    let sd = match systemd::SystemdDbus::connect() {
        Ok(sd) => Some(sd),
        Err(e) if opts.dry_run => {
            progress(&format!("{e:#}: planning without systemd's facts"));
            None
        }
        Err(e) => return Err(e.context("connecting to systemd on the system bus")),
    };
    let sd_ref: Option<&dyn Systemd> = sd.as_ref().map(|s| s as &dyn Systemd);
    let (inputs, services) = facts::ladder_inputs(
        &d,
        &host_states,
        &facts::FactSources {
            root: &paths.root,
            live_active: journal.load()?.is_some(),
            systemd: sd_ref,
            services: (!opts.services.no_services).then_some(&opts.services.include[..]),
        },
    )?;
    let bounds = LadderBounds {
        min: opts.min_rung.unwrap_or(Rung::None),
        max: opts.max_rung.unwrap_or(Rung::Reboot),
        allow_reboot: opts.reboot_fallback,
        allow_tpm_kexec: opts.allow_tpm_kexec,
    };
    let ladder = ladder::choose(&inputs, &bounds);
    let Some(rung) = ladder.chosen else {
        return Err(refuse(
            ExitCode::RebootNeeded,
            no_rung_text(&from.id, &to.id, &ladder),
        ));
    };
    progress(&format!(
        "switch {} → {}: {}",
        short(&from.id),
        short(&to.id),
        rung.name()
    ));
    for r in ladder.rejections_below(rung) {
        progress(&format!("  rejected {r}"));
    }
    match rung {
        Rung::None => nothing_to_do(paths, &d, host_states, ladder, o),
        Rung::Live => {
            if !opts.dry_run {
                crate::exec::live::check_can_apply(&journal)?;
            }
            let run = LiveRun {
                host: &host,
                d: &d,
                host_states,
                services: (!opts.services.no_services).then_some(services),
                ladder: Some(ladder),
                dry_run: opts.dry_run,
                unlock: opts.unlock,
            };
            run_live(paths, run, sd_ref, (started, Vec::new()), o)
        }
        Rung::SoftReboot => {
            let sd = sd.context("a soft reboot needs systemd on the system bus")?;
            soft_reboot(paths, &host, &d, &host_states, ladder, &sd, opts, o)
        }
        Rung::Kexec => {
            if !opts.dry_run {
                privileges::require(&[(
                    caps::Capability::CAP_SYS_BOOT,
                    "load a kernel with kexec_file_load",
                )])?;
            }
            run_kexec(
                paths,
                &host,
                &d,
                to,
                KexecMode {
                    dry_run: opts.dry_run,
                    load_only: false,
                    reboot_fallback: opts.reboot_fallback,
                    unlock: opts.unlock,
                    ladder: Some(ladder),
                },
                o,
            )
        }
        Rung::Reboot => reboot(ladder, sd.as_ref(), opts.dry_run, o),
    }
}

/// Why no rung within the bounds can switch: every rung's reasons.
fn no_rung_text(from: &str, to: &str, ladder: &Ladder) -> String {
    let mut msg = format!(
        "no way to switch {} → {} within the allowed rungs; nothing was changed:",
        short(from),
        short(to)
    );
    for v in &ladder.rungs {
        for r in &v.reasons {
            msg.push_str(&format!("\n  {}: {r}", v.rung.name()));
        }
    }
    msg
}

/// The none rung: the target is what runs. With `--json`, the plan of nothing and its ladder.
fn nothing_to_do(
    paths: &HostPaths,
    d: &DeploymentDiff,
    host_states: Vec<HostBlocker>,
    ladder: Ladder,
    o: &mut Output<'_>,
) -> Result<ExitCode> {
    if o.json {
        let mut p = plan::live_plan(
            d,
            &plan::LiveInputs {
                root: paths.root.clone(),
                sysroot: paths.sysroot.clone(),
                services: Some(vec![]),
                host_states,
                unlock_finalization: false,
            },
        );
        p.ladder = Some(ladder);
        o.json_value(&p)?;
    } else {
        writeln!(
            o.out,
            "nothing to do: {} and {} are identical",
            short(&d.from.id),
            short(&d.to.id)
        )?;
    }
    Ok(ExitCode::NothingToDo)
}

/// The reboot rung (`--reboot-fallback`): start `reboot.target`, or show the ladder.
fn reboot(
    ladder: Ladder,
    sd: Option<&systemd::SystemdDbus>,
    dry_run: bool,
    o: &mut Output<'_>,
) -> Result<ExitCode> {
    if dry_run {
        if o.json {
            o.json_value(&ladder)?;
        } else {
            writeln!(o.out, "rung: reboot (through firmware, --reboot-fallback)")?;
            for r in ladder.rejections_below(Rung::Reboot) {
                writeln!(o.out, "  rejected {r}")?;
            }
        }
        return Ok(ExitCode::Ok);
    }
    let sd = sd.context("a reboot needs systemd on the system bus")?;
    progress("rebooting through firmware, as --reboot-fallback allows");
    sd.start_unit_no_wait("reboot.target", "replace-irreversibly")
        .context("starting reboot.target")?;
    Ok(ExitCode::RebootNeeded)
}

/// The soft-reboot rung: finalize the staged target, mount it at `/run/nextroot`, point
/// `/run/ostree-booted` at it, start `soft-reboot.target`.
#[allow(clippy::too_many_arguments)]
fn soft_reboot(
    paths: &HostPaths,
    host: &Host,
    d: &DeploymentDiff,
    host_states: &[HostBlocker],
    ladder: Ladder,
    sd: &systemd::SystemdDbus,
    opts: &SwitchOpts,
    o: &mut Output<'_>,
) -> Result<ExitCode> {
    let boot_on_root = paths
        .sysroot
        .join("boot/loader")
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink());
    let nextroot = mounts::NextRoot {
        dir: paths.run.join("nextroot"),
        deployment: d.to.path.clone(),
        var: paths
            .sysroot
            .join("ostree/deploy")
            .join(&d.to.stateroot)
            .join("var"),
        sysroot: paths.sysroot.clone(),
        boot: boot_on_root.then(|| paths.sysroot.join("boot")),
    };
    let mut plan: Plan = plan::soft_reboot_plan(d, nextroot, host_states, opts.unlock);
    plan.ladder = Some(ladder);
    if opts.dry_run {
        print_plan(o, &plan)?;
        return Ok(ExitCode::Ok);
    }
    privileges::require(&[(
        caps::Capability::CAP_SYS_ADMIN,
        "mount the target at /run/nextroot",
    )])?;
    let real_mounts = mounts::RealMounts;
    let loader = crate::system::kexec::RealKexec::default();
    let mut prog = progress;
    let mut env = crate::exec::kexec::KexecEnv {
        paths,
        mounts: &real_mounts,
        host,
        systemd: sd,
        loader: &loader as &dyn crate::system::kexec::KexecLoader,
        progress: &mut prog,
    };
    let (report, hand_off) = crate::exec::kexec::prepare(&plan, &mut env)?;
    if o.json {
        o.json_value(&report)?;
    } else {
        report.write_human(o.out)?;
    }
    o.out.flush()?;
    if let Some(how) = hand_off {
        progress("starting soft-reboot.target: userspace stops and starts again in the target; the kernel stays");
        crate::exec::kexec::hand_off(sd, &real_mounts, how, &plan, paths)?;
    }
    Ok(ExitCode::Ok)
}
