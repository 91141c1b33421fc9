//! `reset`: undo this boot's live apply and unload a kexec kernel left loaded, as the reset
//! plan ([`crate::exec::live::plan_reset`]) walked by the executor.

use super::{connect_systemd, preflight, Progress};
use crate::discover::{self, HostPaths};
use crate::exec::journal::Journal;
use crate::exec::live::{self, LiveEnv};
use crate::exec::report::Report;
use crate::plan::Plan;
use crate::system::kexec::{KexecLoader, RealKexec};
use crate::system::{mounts, systemd};
use anyhow::{Context, Result};
use std::path::Path;

/// How a reset ended, for the CLI to render.
pub(crate) enum ResetOutcome {
    /// `--dry-run`: the reset plan, not carried out.
    DryRun(Plan),
    /// No live apply on this boot and no kexec kernel loaded.
    NothingToDo,
    /// The executor's report; its `outcome` is the exit code.
    Done(Report),
}

/// `manage_services`: stop and restart units as the journal says (not `--no-services`).
pub(crate) fn reset(
    paths: &HostPaths,
    dry_run: bool,
    manage_services: bool,
    progress: Progress<'_>,
) -> Result<ResetOutcome> {
    let journal = Journal::for_host(paths)?;
    // Only the running kernel's kexec state belongs to this host; with --root it does not.
    let kexec = RealKexec::default();
    let kexec_loaded = paths.root == Path::new("/") && kexec.is_loaded().unwrap_or(false);
    let loaded = kexec_loaded.then_some(&kexec as &dyn KexecLoader);
    if dry_run {
        let host = discover::load(paths)?;
        let booted = host.booted().with_context(|| {
            format!("no booted deployment found in {}", paths.sysroot.display())
        })?;
        let plan = live::plan_reset(&booted.into(), &journal, loaded, manage_services)?;
        return Ok(ResetOutcome::DryRun(plan));
    }
    let applied = journal.load()?.is_some();
    if !applied && !kexec_loaded {
        return Ok(ResetOutcome::NothingToDo);
    }
    let mut needs = Vec::new();
    if kexec_loaded {
        needs.push((caps::Capability::CAP_SYS_BOOT, "unload the kexec kernel"));
    }
    if applied {
        needs.push((caps::Capability::CAP_SYS_ADMIN, "unmount the live /usr"));
    }
    let _lock = preflight(paths, &needs, progress)?;
    let host = discover::load(paths)?;
    let booted = host
        .booted()
        .with_context(|| format!("no booted deployment found in {}", paths.sysroot.display()))?;
    let sd = connect_systemd(manage_services)?;
    let mut env = LiveEnv {
        paths,
        journal,
        mounts: &mounts::RealMounts,
        systemd: sd.as_ref().map(|s| s as &dyn systemd::Systemd),
        tools: &crate::system::tools::RealTools,
        kexec: loaded,
        progress,
    };
    Ok(ResetOutcome::Done(live::reset(&booted.into(), &mut env)?))
}
