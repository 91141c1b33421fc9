//! `fastswitch switch`: the options as ladder bounds, [`crate::ops::switch`], then the rung's
//! outcome rendered.

use super::verbs::{nothing_to_do, progress, render_kexec, render_live};
use super::{Output, SwitchOpts};
use crate::discover::HostPaths;
use crate::exit::ExitCode;
use crate::ops::switch::{SwitchOptions, SwitchOutcome};
use crate::plan::ladder::{LadderBounds, Rung};
use anyhow::Result;

pub(crate) fn switch(paths: &HostPaths, opts: &SwitchOpts, o: &mut Output<'_>) -> Result<ExitCode> {
    let sopts = SwitchOptions {
        to: opts.to.clone(),
        dry_run: opts.dry_run,
        bounds: LadderBounds {
            min: opts.min_rung.unwrap_or(Rung::None),
            max: opts.max_rung.unwrap_or(Rung::Reboot),
            allow_reboot: opts.reboot_fallback,
            allow_tpm_kexec: opts.allow_tpm_kexec,
        },
        allow_unverified_usr: opts.allow_unverified_usr,
        unlock: opts.unlock,
        services: opts.services.choice(),
    };
    match crate::ops::switch::switch(paths, &sopts, &mut progress)? {
        SwitchOutcome::NothingToDo(plan) => nothing_to_do(o, &plan),
        SwitchOutcome::Live(outcome) => render_live(o, outcome),
        SwitchOutcome::Staged(outcome) => render_kexec(o, outcome),
        SwitchOutcome::RebootPlanned(ladder) => {
            if o.json {
                o.json_value(&ladder)?;
            } else {
                writeln!(o.out, "rung: reboot (through firmware, --reboot-fallback)")?;
                for r in ladder.rejections_below(Rung::Reboot) {
                    writeln!(o.out, "  rejected {r}")?;
                }
            }
            Ok(ExitCode::Ok)
        }
        SwitchOutcome::RebootStarted => Ok(ExitCode::RebootNeeded),
    }
}
