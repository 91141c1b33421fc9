//! `recover`, run at boot by `fastswitch-recover.service`: undo the `/etc` changes a live
//! apply of an earlier boot left, when the old deployment booted again.

use super::Progress;
use crate::discover::{self, HostPaths};
use crate::exec::journal::Journal;
use crate::exec::recover::RecoverReport;
use crate::system::mounts::Mounts;
use crate::system::{lock, mounts, privileges};
use anyhow::{Context, Result};

pub(crate) fn recover(paths: &HostPaths, progress: Progress<'_>) -> Result<RecoverReport> {
    let journal = Journal::for_host(paths)?;
    if journal.stale_persistent()?.is_none() {
        return crate::exec::recover::recover(&journal, &paths.root.join("etc"), "");
    }
    // Not [`super::preflight`]: recovery writes files only and runs at boot from a unit that
    // need not hold CAP_SYS_ADMIN, which entering PID 1's mount namespace takes.
    privileges::require(&[(
        caps::Capability::CAP_DAC_OVERRIDE,
        "restore files in /etc and /var/lib/fastswitch",
    )])?;
    let _lock = lock::acquire(&journal.dir, lock::Role::Other, Some(&mut *progress))?;
    let host = discover::load(paths)?;
    let booted = host
        .booted()
        .with_context(|| format!("no booted deployment found in {}", paths.sysroot.display()))?;
    let rep = crate::exec::recover::recover(&journal, &paths.root.join("etc"), &booted.id)?;
    // No live apply survives a reboot: the live copies of /usr of earlier boots go too.
    if let Err(e) = mounts::RealMounts.remove_unused_live_trees(&paths.sysroot, &[]) {
        progress(&format!(
            "warning: could not remove unused live copies of /usr: {e:#}"
        ));
    }
    Ok(rep)
}
