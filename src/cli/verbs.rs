//! The verbs behind the CLI: each turns its options into the library's, calls the operation
//! ([`crate::ops`]) and renders the typed outcome as text or JSON.

use super::render::{print_plan, short, write_diff_human};
use super::{ApplyLiveOpts, KexecOpts, Output, PairOpts, ResetOpts, ServiceOpts};
use crate::diff::{self, DeploymentDiff};
use crate::discover::{self, HostPaths};
use crate::exit::ExitCode;
use crate::ops::kexec::{KexecOptions, KexecOutcome};
use crate::ops::live::{LiveOptions, LiveOutcome};
use crate::ops::reset::ResetOutcome;
use crate::ops::ServiceChoice;
use crate::plan::preconditions;
use crate::plan::Plan;
use anyhow::Result;

/// Progress lines for humans, on stderr.
pub(super) fn progress(msg: &str) {
    eprintln!("fastswitch: {msg}");
}

impl ServiceOpts {
    pub(super) fn choice(&self) -> ServiceChoice {
        (!self.no_services).then(|| self.include.clone())
    }
}

/// `diff --json`: the diff with the ladder it gives (default bounds, services not examined).
#[derive(serde::Serialize)]
struct DiffJson<'a> {
    #[serde(flatten)]
    diff: &'a DeploymentDiff,
    ladder: crate::plan::ladder::Ladder,
}

pub(crate) fn diff(paths: &HostPaths, pair: &PairOpts, o: &mut Output<'_>) -> Result<ExitCode> {
    let host = discover::load(paths)?;
    let (from, to) = diff::select_pair(&host, pair.from.as_deref(), pair.to.as_deref())?;
    let d = diff::diff_deployments(from, to)?;
    if o.json {
        let host_states = preconditions::blockers(&host, from, to);
        let ladder = crate::status::ladder::for_diff(paths, &d, &host_states)?;
        o.json_value(&DiffJson { diff: &d, ladder })?;
    } else {
        write_diff_human(o.out, &d)?;
    }
    Ok(ExitCode::Ok)
}

/// Nothing differs: the plan of nothing as JSON, else one line.
pub(super) fn nothing_to_do(o: &mut Output<'_>, plan: &Plan) -> Result<ExitCode> {
    if o.json {
        o.json_value(plan)?;
    } else {
        writeln!(
            o.out,
            "nothing to do: {} and {} are identical",
            short(&plan.from.id),
            short(&plan.to.id)
        )?;
    }
    Ok(ExitCode::NothingToDo)
}

pub(crate) fn apply_live(
    paths: &HostPaths,
    opts: &ApplyLiveOpts,
    o: &mut Output<'_>,
) -> Result<ExitCode> {
    let lopts = LiveOptions {
        from: opts.pair.from.clone(),
        to: opts.pair.to.clone(),
        dry_run: opts.dry_run,
        unlock: opts.unlock,
        allow_unverified_usr: opts.allow_unverified_usr,
        services: opts.services.choice(),
    };
    let outcome = crate::ops::live::apply_live(paths, &lopts, &mut progress)?;
    render_live(o, outcome)
}

pub(super) fn render_live(o: &mut Output<'_>, outcome: LiveOutcome) -> Result<ExitCode> {
    match outcome {
        LiveOutcome::NothingToDo(plan) => nothing_to_do(o, &plan),
        LiveOutcome::DryRun(plan) => print_plan(o, &plan).map(|()| ExitCode::Ok),
        LiveOutcome::Applied(report) => {
            if o.json {
                o.json_value(&report)?;
            } else {
                report.write_human(o.out)?;
            }
            Ok(report.outcome)
        }
    }
}

pub(crate) fn reset(paths: &HostPaths, opts: &ResetOpts, o: &mut Output<'_>) -> Result<ExitCode> {
    let outcome = crate::ops::reset::reset(
        paths,
        opts.dry_run,
        !opts.services.no_services,
        &mut progress,
    )?;
    match outcome {
        ResetOutcome::DryRun(plan) => print_plan(o, &plan).map(|()| ExitCode::Ok),
        ResetOutcome::NothingToDo => {
            if o.json {
                o.json_value(&serde_json::json!({"schema_version": 1, "outcome": "nothing_to_do", "exit_code": 3}))?;
            } else {
                writeln!(
                    o.out,
                    "nothing to reset: no live apply on this boot and no kexec kernel loaded"
                )?;
            }
            Ok(ExitCode::NothingToDo)
        }
        ResetOutcome::Done(report) => {
            if o.json {
                o.json_value(&report)?;
            } else {
                report.write_human(o.out)?;
            }
            Ok(report.outcome)
        }
    }
}

pub(crate) fn recover(paths: &HostPaths, o: &mut Output<'_>) -> Result<ExitCode> {
    let rep = crate::ops::recover::recover(paths, &mut progress)?;
    if o.json {
        o.json_value(&rep)?;
    } else {
        rep.write_human(o.out)?;
    }
    Ok(rep.outcome)
}

pub(crate) fn kexec(paths: &HostPaths, opts: &KexecOpts, o: &mut Output<'_>) -> Result<ExitCode> {
    let kopts = KexecOptions {
        to: opts.to.clone(),
        dry_run: opts.dry_run,
        load_only: opts.load_only,
        unlock: opts.unlock,
    };
    let outcome = crate::ops::kexec::kexec(paths, &kopts, &mut progress)?;
    render_kexec(o, outcome)
}

/// Show the outcome; a due hand-off starts only after the report is out.
pub(super) fn render_kexec(o: &mut Output<'_>, outcome: KexecOutcome) -> Result<ExitCode> {
    match outcome {
        KexecOutcome::NothingToDo(plan) => nothing_to_do(o, &plan),
        KexecOutcome::DryRun(plan) => print_plan(o, &plan).map(|()| ExitCode::Ok),
        KexecOutcome::RebootStarted => Ok(ExitCode::RebootNeeded),
        KexecOutcome::Prepared(report, hand_off) => {
            if o.json {
                o.json_value(&report)?;
            } else {
                report.write_human(o.out)?;
            }
            o.out.flush()?;
            if let Some(h) = hand_off {
                h.start(&mut progress)?;
            }
            Ok(ExitCode::Ok)
        }
    }
}
