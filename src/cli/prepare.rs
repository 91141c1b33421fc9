//! `fastswitch prepare`: right after staging (run by `fastswitch-prepare.path`), load the staged
//! deployment's kernel, or link its live copy of `usr` ([`crate::exec::prepare`]), so that
//! `switch` and `apply-live` only swap and hand off.

use super::{Output, PrepareOpts};
use crate::discover::HostPaths;
use crate::exit::ExitCode;
use anyhow::Result;

pub(crate) fn prepare(
    paths: &HostPaths,
    opts: &PrepareOpts,
    o: &mut Output<'_>,
) -> Result<ExitCode> {
    let rep = crate::ops::prepare::prepare(paths, !opts.no_kexec)?;
    if o.json {
        o.json_value(&rep)?;
        return Ok(ExitCode::Ok);
    }
    let k = &rep.kexec;
    let l = &rep.live_copy;
    let dep = |d: &Option<String>| d.as_deref().map(|d| format!(" {d}")).unwrap_or_default();
    writeln!(
        o.out,
        "kexec: {}{}: {} ({} ms)",
        k.outcome,
        dep(&k.deployment),
        k.reason,
        k.duration_ms
    )?;
    writeln!(
        o.out,
        "live copy: {}{}: {} ({} ms)",
        l.outcome,
        dep(&l.deployment),
        l.reason,
        l.duration_ms
    )?;
    for p in &l.pruned {
        writeln!(o.out, "  removed the unused live copy {p}")?;
    }
    Ok(ExitCode::Ok)
}
