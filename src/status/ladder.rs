//! The ladder `status --json` and `diff --json` show: how `switch` would reach a deployment
//! from what runs now (default bounds, services not examined). Facts come from this host only:
//! systemd is asked when `--root` is `/`, best effort; an unreadable journal counts as none.

use crate::diff::{self, DeploymentDiff};
use crate::discover::{Host, HostPaths};
use crate::exec::journal::Journal;
use crate::plan::facts::{self, FactSources};
use crate::plan::ladder::Ladder;
use crate::plan::preconditions::{self, HostBlocker};
use crate::system::systemd::{self, Systemd};
use anyhow::Result;
use std::path::Path;

/// The ladder of a diff already made (`diff --json`).
pub(crate) fn for_diff(
    paths: &HostPaths,
    d: &DeploymentDiff,
    host_states: &[HostBlocker],
) -> Result<Ladder> {
    let sd = if paths.root == Path::new("/") {
        systemd::SystemdDbus::connect().ok()
    } else {
        None
    };
    let live_active = Journal::for_host(paths)
        .and_then(|j| j.load())
        .is_ok_and(|st| st.is_some());
    facts::default_ladder(
        d,
        host_states,
        &FactSources {
            root: &paths.root,
            live_active,
            systemd: sd.as_ref().map(|s| s as &dyn Systemd),
            services: None,
        },
    )
}

/// `status --json`: the ladder from what userspace runs to the staged (else pending)
/// deployment, when the host is ostree-booted and has one; `None` otherwise.
pub(crate) fn to_next(paths: &HostPaths, host: &Host) -> Result<Option<Ladder>> {
    if !host.ostree_booted
        || host.booted().is_none()
        || (host.staged().is_none() && host.pending().is_none())
    {
        return Ok(None);
    }
    let live = Journal::for_host(paths)
        .and_then(|j| j.running_target())
        .ok()
        .flatten();
    let (from, to) = diff::select_running_pair(host, live.as_deref(), None, None)?;
    let d = diff::diff_deployments(from, to)?;
    let host_states = preconditions::blockers(host, from, to);
    for_diff(paths, &d, &host_states).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No ladder without a booted deployment and one to switch to; asking costs no diff.
    #[test]
    fn a_host_with_nothing_to_switch_to_has_no_ladder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        std::fs::create_dir_all(root.join("ostree/deploy")).unwrap();
        let paths = HostPaths::resolve(
            Some(root.clone()),
            Some(root.clone()),
            Some(root.join("run")),
        );
        let host = crate::discover::load(&paths).unwrap();
        assert!(host.deployments.is_empty());
        assert_eq!(to_next(&paths, &host).unwrap(), None);
    }
}
