//! `prepare`, run by `fastswitch-prepare.path` when a deployment is staged: the real kexec and
//! mount implementations around [`crate::exec::prepare`].

use crate::discover::{self, HostPaths};
use crate::exec::journal::Journal;
use crate::exec::prepare::PrepareReport;
use crate::exit::{refuse, ExitCode};
use crate::system::{kexec::RealKexec, lock, mounts::RealMounts, privileges};
use anyhow::Result;
use std::path::Path;

/// `load_kernel`: false for `--no-kexec` (the shipped unit): only the live copy, and unloading
/// a kernel prepared for a deployment that is gone.
pub(crate) fn prepare(paths: &HostPaths, load_kernel: bool) -> Result<PrepareReport> {
    if paths.root != Path::new("/") {
        return Err(refuse(
            ExitCode::Usage,
            "prepare loads a kernel into the running kernel; it cannot work with --root",
        ));
    }
    privileges::require(&[
        (caps::Capability::CAP_SYS_BOOT, "load a kexec kernel"),
        (
            caps::Capability::CAP_SYS_ADMIN,
            "link the live copy of /usr (remounting a read-only sysroot writable in a private namespace)",
        ),
    ])?;
    let journal = Journal::for_host(paths)?;
    let _lock = lock::acquire(&journal.dir, lock::Role::Prepare, None)?;
    let host = discover::load(paths)?;
    let loader = RealKexec {
        prepared_record: Some(crate::exec::kexec::prepared::record_path(paths)),
        ..RealKexec::default()
    };
    let report =
        crate::exec::prepare::prepare(&host, &loader, &RealMounts, &journal.boot_id, load_kernel)?;
    if report.live_copy.outcome == "linked" {
        crate::system::live_tree::commit(&paths.sysroot)?;
    }
    Ok(report)
}
