//! `apply-live` (and the live rung of `switch`): discover, diff from what userspace runs, check
//! the host states, decide services, build the live plan, then print it or carry it out.

use super::{connect_systemd, diff_phases, phase, preflight, Progress, ServiceChoice};
use crate::diff::{self, DecisionKind, DeploymentDiff};
use crate::discover::{Host, HostPaths};
use crate::exec::journal::Journal;
use crate::exec::live::{self, LiveEnv};
use crate::exec::report::{short, Phase, Report};
use crate::exit::{refuse, ExitCode};
use crate::plan::ladder::{Ladder, Rung};
use crate::plan::preconditions::{self, HostBlocker};
use crate::plan::{self, Plan};
use crate::services;
use crate::system::{mounts, privileges, systemd};
use anyhow::{Context, Result};
use std::time::Instant;

/// What `apply-live` was asked.
pub(crate) struct LiveOptions {
    pub(crate) from: Option<String>,
    pub(crate) to: Option<String>,
    pub(crate) dry_run: bool,
    pub(crate) unlock: bool,
    pub(crate) allow_unverified_usr: bool,
    pub(crate) services: ServiceChoice,
}

/// How a live apply ended, for the CLI to render.
#[derive(Debug)]
pub(crate) enum LiveOutcome {
    /// The target is what runs: the plan of nothing (no steps; the decision says why).
    NothingToDo(Plan),
    /// `--dry-run`: the plan, not carried out.
    DryRun(Plan),
    /// The executor's report; its `outcome` is the exit code.
    Applied(Report),
}

/// `apply-live`: preflight, discover, diff, plan, then a dry run or the executor; long because
/// each phase is timed into the report's `phases` in the order it runs.
pub(crate) fn apply_live(
    paths: &HostPaths,
    opts: &LiveOptions,
    progress: Progress<'_>,
) -> Result<LiveOutcome> {
    let started = Instant::now();
    let mut phases = Vec::new();
    let t = Instant::now();
    let _lock = if opts.dry_run {
        None
    } else {
        Some(preflight(
            paths,
            &[(caps::Capability::CAP_SYS_ADMIN, "bind-mount the new /usr")],
            progress,
        )?)
    };
    phases.push(phase("preflight", t));
    // Connecting to systemd is round trips through the bus (hello, match rules, subscribe):
    // it runs while the host is read and the deployments are compared, after the preflight
    // (which needs a single-threaded process). Its rest, if any, is the `systemd_connect`
    // phase below. A command that ends before the services are planned leaves it unused.
    let manage = opts.services.is_some();
    let connecting = std::thread::Builder::new()
        .name("systemd-connect".into())
        .spawn(move || connect_systemd(manage))
        .context("spawning the systemd connection")?;
    let t = Instant::now();
    let host = super::booted_host(paths)?;
    phases.push(phase("discover", t));
    let t = Instant::now();
    let journal = Journal::for_host(paths)?;
    live::check_can_apply(&journal)?;
    let live = journal.running_target()?;
    let (from, to) = diff::select_running_pair(
        &host,
        live.as_deref(),
        opts.from.as_deref(),
        opts.to.as_deref(),
    )?;
    if opts.from.is_none() {
        if let Some(note) = diff::gone_live_target_note(&host, live.as_deref()) {
            progress(&note);
        }
    }
    let mut host_states = preconditions::blockers(&host, from, to);
    if opts.allow_unverified_usr {
        preconditions::allow_unverified_usr(&mut host_states);
    }
    let blocking = preconditions::blocking(&host_states, Rung::Live, opts.unlock);
    if !blocking.is_empty() {
        return Err(refuse(
            ExitCode::Refused,
            preconditions::refusal_text("apply-live", &blocking),
        ));
    }
    phases.push(phase("host_states", t));
    // The /proc scan needs only the two trees: it runs while the deployments are compared
    // (its own time is still the `stale_scan` phase). Unused if the diff ends the command.
    let scanning = if opts.services.is_some() {
        let (from_usr, to_usr) = (from.path.join("usr"), to.path.join("usr"));
        Some(
            std::thread::Builder::new()
                .name("stale-scan".into())
                .spawn(move || services::scan_processes(from_usr, to_usr))
                .context("spawning the /proc scan")?,
        )
    } else {
        None
    };
    // As soon as the unit changes are known (beside the rest of the diff): the systemd
    // connection, the /proc scan, and systemd's facts about the units the decision can touch.
    let include = opts.services.clone();
    let services_after_units = move |units: &[diff::UnitFileChange]| {
        let t = Instant::now();
        let sd = connecting
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let connect_ms = t.elapsed().as_millis() as u64;
        let planned = match (&sd, &include, scanning) {
            (Ok(Some(sd)), Some(include), Some(scanning)) => {
                let scanned = scanning
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p));
                Some(services::plan_services_after(units, scanned, sd, include))
            }
            _ => None,
        };
        (sd, connect_ms, planned)
    };
    let t = Instant::now();
    let (d, after_units) = diff::diff_deployments_then(from, to, services_after_units)?;
    phases.extend(diff_phases(&d));
    progress(&format!(
        "diff {} → {} in {} ms: {:?}",
        short(&from.id),
        short(&to.id),
        t.elapsed().as_millis(),
        d.decision.kind
    ));
    match d.decision.kind {
        DecisionKind::Kexec => {
            return Err(refuse(
                ExitCode::RebootNeeded,
                format!(
                    "the kernel changed ({}); a live apply cannot switch kernels: use `fastswitch switch` (kexec) or reboot",
                    d.decision.reasons.join("; ")
                ),
            ))
        }
        DecisionKind::None => return Ok(LiveOutcome::NothingToDo(nothing_plan(paths, &d, host_states))),
        DecisionKind::Live => {}
    }
    let (sd, connect_ms, planned) =
        after_units.context("the unit diff succeeded but its follow-up did not run")?;
    let sd = sd?;
    if sd.is_some() {
        phases.push(Phase {
            phase: "systemd_connect".into(),
            ms: connect_ms,
            compared: None,
        });
    }
    let services = match planned {
        Some(sp) => Some(plan_services(sp?, &mut phases)),
        None => None,
    };
    let run = LiveRun {
        host: &host,
        d: &d,
        host_states,
        services,
        ladder: None,
        dry_run: opts.dry_run,
        unlock: opts.unlock,
    };
    run_live(
        paths,
        run,
        sd.as_ref().map(|s| s as &dyn systemd::Systemd),
        (started, phases),
        progress,
    )
}

/// The live plan of nothing (the target is what runs).
pub(crate) fn nothing_plan(
    paths: &HostPaths,
    d: &DeploymentDiff,
    host_states: Vec<HostBlocker>,
) -> Plan {
    plan::live_plan(
        d,
        &plan::LiveInputs {
            root: paths.root.clone(),
            sysroot: paths.sysroot.clone(),
            services: Some(vec![]),
            host_states,
            unlock_finalization: false,
            live_copy_ready: crate::system::live_tree::is_ready(&paths.sysroot, &d.to.id),
            composefs_usr: None,
        },
    )
}

/// The service decision made while the diff ran (facts from systemd and the /proc scan, then
/// the pure decision, [`services::plan_services_after`]); its gathering costs go to `phases`.
fn plan_services(
    sp: services::facts::ServicePlan,
    phases: &mut Vec<Phase>,
) -> Vec<services::ServiceAction> {
    phases.extend(sp.timings.iter().map(|&(name, ms)| Phase {
        phase: name.to_owned(),
        ms,
        compared: (name == "stale_scan").then_some(sp.compared),
    }));
    sp.actions
}

/// A live apply decided by `apply-live` or `switch`: its diff, host states and service
/// decision, made once.
pub(crate) struct LiveRun<'a> {
    pub(crate) host: &'a Host,
    pub(crate) d: &'a DeploymentDiff,
    pub(crate) host_states: Vec<HostBlocker>,
    /// `None`: services not managed (`--no-services`).
    pub(crate) services: Option<Vec<services::ServiceAction>>,
    /// `switch`: the ladder that chose live, shown with the plan.
    pub(crate) ladder: Option<Ladder>,
    pub(crate) dry_run: bool,
    pub(crate) unlock: bool,
}

/// Build the live plan, return it (`--dry-run`) or carry it out. The caller holds the run lock
/// ([`preflight`]) unless this is a dry run.
pub(crate) fn run_live(
    paths: &HostPaths,
    run: LiveRun<'_>,
    sd: Option<&dyn systemd::Systemd>,
    (started, mut phases): (Instant, Vec<Phase>),
    progress: Progress<'_>,
) -> Result<LiveOutcome> {
    let t = Instant::now();
    let mut plan = plan::live_plan(
        run.d,
        &plan::LiveInputs {
            root: paths.root.clone(),
            sysroot: paths.sysroot.clone(),
            services: run.services,
            host_states: run.host_states,
            unlock_finalization: run.unlock,
            live_copy_ready: crate::system::live_tree::is_ready(&paths.sysroot, &run.d.to.id),
            composefs_usr: run.host.booted_state.as_ref().and_then(|bs| {
                let to = run.host.deployments.iter().find(|x| x.id == run.d.to.id)?;
                crate::plan::preconditions::composefs_usr(
                    &crate::discover::composefs::composefs(bs),
                    to,
                    &paths.sysroot,
                )
            }),
        },
    );
    plan.ladder = run.ladder;
    phases.push(phase("plan", t));
    if run.dry_run {
        return Ok(LiveOutcome::DryRun(plan));
    }
    privileges::require(&[(caps::Capability::CAP_SYS_ADMIN, "bind-mount the new /usr")])?;
    let journal = Journal::for_host(paths)?;
    let booted = run
        .host
        .booted()
        .context("no booted deployment on this host")?;
    let mut env = LiveEnv {
        paths,
        journal,
        mounts: &mounts::RealMounts,
        systemd: sd,
        tools: &crate::system::tools::RealTools,
        kexec: None,
        progress,
    };
    let mut report = live::apply_live(&plan, &booted.id, &mut env)?;
    report.account(phases, started.elapsed().as_millis() as u64);
    Ok(LiveOutcome::Applied(report))
}
