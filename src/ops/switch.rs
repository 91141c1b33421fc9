//! `switch`: gather the facts the ladder needs, let [`ladder::choose`] pick the rung, and carry
//! that rung out (or return its plan with `--dry-run`).

use super::kexec::{run_kexec, KexecMode, KexecOutcome};
use super::live::{nothing_plan, run_live, LiveOutcome, LiveRun};
use super::{preflight, Progress, ServiceChoice};
use crate::diff::{self, DeploymentDiff};
use crate::discover::{Host, HostPaths};
use crate::exec::journal::Journal;
use crate::exec::report::short;
use crate::exit::{refuse, ExitCode};
use crate::plan::facts;
use crate::plan::ladder::{self, Ladder, LadderBounds, Rung};
use crate::plan::preconditions::{self, HostBlocker};
use crate::plan::{self, Plan};
use crate::system::systemd::{self, Systemd};
use crate::system::{mounts, privileges};
use anyhow::{Context, Result};

/// What `switch` was asked.
pub(crate) struct SwitchOptions {
    pub(crate) to: Option<String>,
    pub(crate) dry_run: bool,
    pub(crate) bounds: LadderBounds,
    pub(crate) allow_unverified_usr: bool,
    pub(crate) unlock: bool,
    pub(crate) services: ServiceChoice,
}

/// How a switch ended, for the CLI to render.
pub(crate) enum SwitchOutcome {
    /// The none rung: the live plan of nothing, with its ladder.
    NothingToDo(Plan),
    /// The live rung.
    Live(LiveOutcome),
    /// The soft-reboot or kexec rung.
    Staged(KexecOutcome),
    /// The reboot rung with `--dry-run`: the ladder that chose it.
    RebootPlanned(Ladder),
    /// The reboot rung: `reboot.target` is started.
    RebootStarted,
}

/// Long because it is the verb's whole story in order — preflight, one discovery, one diff,
/// the facts, the ladder — ending in one `match` over the rungs whose arms are calls.
pub(crate) fn switch(
    paths: &HostPaths,
    opts: &SwitchOptions,
    progress: Progress<'_>,
) -> Result<SwitchOutcome> {
    let started = std::time::Instant::now();
    // Before the diff spawns worker threads. Each rung checks its own capabilities before its
    // first change; without root there is nothing to lock (every rung that changes something
    // is refused for lack of them).
    let _lock = if !opts.dry_run && nix::unistd::geteuid().is_root() {
        Some(preflight(paths, &[], progress)?)
    } else {
        None
    };
    let host = super::booted_host(paths)?;
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
            services: opts.services.as_deref(),
        },
    )?;
    let ladder = ladder::choose(&inputs, &opts.bounds);
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
        Rung::None => {
            let mut p = nothing_plan(paths, &d, host_states);
            p.ladder = Some(ladder);
            Ok(SwitchOutcome::NothingToDo(p))
        }
        Rung::Live => {
            if !opts.dry_run {
                crate::exec::live::check_can_apply(&journal)?;
            }
            let run = LiveRun {
                host: &host,
                d: &d,
                host_states,
                services: opts.services.is_some().then_some(services),
                ladder: Some(ladder),
                dry_run: opts.dry_run,
                unlock: opts.unlock,
            };
            run_live(paths, run, sd_ref, (started, Vec::new()), progress).map(SwitchOutcome::Live)
        }
        Rung::SoftReboot => {
            let sd = sd.context("a soft reboot needs systemd on the system bus")?;
            soft_reboot(paths, &host, &d, &host_states, ladder, sd, opts, progress)
                .map(SwitchOutcome::Staged)
        }
        Rung::Kexec => {
            if !opts.dry_run {
                privileges::require(&[(
                    caps::Capability::CAP_SYS_BOOT,
                    "load a kernel with kexec_file_load",
                )])?;
            }
            let mode = KexecMode {
                dry_run: opts.dry_run,
                load_only: false,
                reboot_fallback: opts.bounds.allow_reboot,
                unlock: opts.unlock,
                ladder: Some(ladder),
            };
            run_kexec(paths, &host, &d, to, mode, progress).map(SwitchOutcome::Staged)
        }
        Rung::Reboot => reboot(ladder, sd.as_ref(), opts.dry_run, progress),
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

/// The reboot rung (`--reboot-fallback`): start `reboot.target`, or return the ladder.
fn reboot(
    ladder: Ladder,
    sd: Option<&systemd::SystemdDbus>,
    dry_run: bool,
    progress: Progress<'_>,
) -> Result<SwitchOutcome> {
    if dry_run {
        return Ok(SwitchOutcome::RebootPlanned(ladder));
    }
    let sd = sd.context("a reboot needs systemd on the system bus")?;
    progress("rebooting through firmware, as --reboot-fallback allows");
    sd.start_unit_no_wait("reboot.target", "replace-irreversibly")
        .context("starting reboot.target")?;
    Ok(SwitchOutcome::RebootStarted)
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
    sd: systemd::SystemdDbus,
    opts: &SwitchOptions,
    progress: Progress<'_>,
) -> Result<KexecOutcome> {
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
        // As for a live apply: the target's image when the root is composefs and it has one
        // (with no trusted digest only when --allow-unverified-usr let that through).
        composefs: host.booted_state.as_ref().and_then(|bs| {
            let to = host.deployments.iter().find(|x| x.id == d.to.id)?;
            crate::plan::preconditions::composefs_usr(
                &crate::discover::composefs::composefs(bs),
                to,
                &paths.sysroot,
            )
        }),
    };
    let mut plan = plan::soft_reboot_plan(d, nextroot, host_states, opts.unlock);
    plan.ladder = Some(ladder);
    if opts.dry_run {
        return Ok(KexecOutcome::DryRun(plan));
    }
    privileges::require(&[(
        caps::Capability::CAP_SYS_ADMIN,
        "mount the target at /run/nextroot",
    )])?;
    let loader = crate::system::kexec::RealKexec::default();
    super::kexec::prepare(paths, host, plan, sd, &loader, progress)
}
