//! `fastswitch prepare`: right after staging (run by `fastswitch-prepare.path`), load the staged
//! deployment's kernel, or link its live copy of `usr` ([`crate::exec::prepare`]), so that
//! `switch` and `apply-live` only swap and hand off.

use super::Output;
use crate::discover::{self, HostPaths};
use crate::exit::{refuse, ExitCode};
use crate::system::{kexec::RealKexec, lock, privileges};
use anyhow::Result;
use std::path::Path;

pub(crate) fn prepare(paths: &HostPaths, o: &mut Output<'_>) -> Result<ExitCode> {
    if paths.root != Path::new("/") {
        return Err(refuse(
            ExitCode::Usage,
            "prepare loads a kernel into the running kernel; it cannot work with --root",
        ));
    }
    privileges::require(&[(caps::Capability::CAP_SYS_BOOT, "load a kexec kernel")])?;
    let journal = crate::exec::journal::Journal::for_host(paths)?;
    let _lock = lock::acquire(&journal.dir)?;
    let host = discover::load(paths)?;
    let loader = RealKexec {
        prepared_record: Some(crate::exec::kexec::prepared::record_path(paths)),
        ..RealKexec::default()
    };
    let rep = crate::exec::prepare::prepare(
        &host,
        &loader,
        &crate::system::mounts::RealMounts,
        &journal.boot_id,
    )?;
    if o.json {
        o.json_value(&rep)?;
    } else {
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
    }
    Ok(ExitCode::Ok)
}
