//! `fastswitch prepare`: load the staged deployment's kernel right after staging (run by
//! `fastswitch-prepare.path`), so that `switch` only finalizes and hands off.

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
    let rep = crate::exec::kexec::prepared::prepare_staged(&host, &loader, &journal.boot_id)?;
    if o.json {
        o.json_value(&rep)?;
    } else {
        writeln!(
            o.out,
            "{}{}: {} ({} ms)",
            rep.outcome,
            rep.deployment
                .as_deref()
                .map(|d| format!(" {d}"))
                .unwrap_or_default(),
            rep.reason,
            rep.duration_ms
        )?;
    }
    Ok(ExitCode::Ok)
}
