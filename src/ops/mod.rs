//! Operations: what each verb that changes the system does, between the CLI (options in,
//! rendering out) and the executor ([`crate::exec`]). Each runs preflight, discovery, one diff,
//! the plan and the executor with the real side-effect implementations, and returns a typed
//! outcome for the CLI to render. Progress lines for humans go through the caller's
//! `progress`; nothing here writes to stdout.

pub(crate) mod kexec;
pub(crate) mod live;
pub(crate) mod prepare;
pub(crate) mod recover;
pub(crate) mod reset;
pub(crate) mod switch;

use crate::diff::DeploymentDiff;
use crate::discover::{self, Host, HostPaths};
use crate::exec::journal::Journal;
use crate::exec::report::Phase;
use crate::exit::{refuse, ExitCode};
use crate::system::{lock, mounts, privileges, systemd};
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;

/// Where progress lines go (the CLI prints them to stderr).
pub(crate) type Progress<'a> = &'a mut dyn FnMut(&str);

/// Which services a live apply manages: `None` for none (`--no-services`), else the units
/// (`--include`) to restart besides the ones the decision picks.
pub(crate) type ServiceChoice = Option<Vec<String>>;

/// The host, refused unless it is ostree-booted with a booted deployment.
pub(crate) fn booted_host(paths: &HostPaths) -> Result<Host> {
    let host = discover::load(paths)?;
    if !host.ostree_booted || host.booted().is_none() {
        return Err(refuse(
            ExitCode::Refused,
            format!(
                "this host is not ostree-booted ({} is missing or matches no deployment)",
                paths.ostree_booted_file().display()
            ),
        ));
    }
    Ok(host)
}

/// Before any thread exists (setns needs a single-threaded process): a verb that changes the
/// running system works in PID 1's mount namespace, so its mounts are seen system-wide.
fn enter_host_namespace(paths: &HostPaths, progress: Progress<'_>) -> Result<()> {
    if paths.root == Path::new("/") && mounts::enter_pid1_mount_namespace(Path::new("/proc"))? {
        progress("entered PID 1's mount namespace");
    }
    Ok(())
}

/// The one preflight of a verb that changes the system, run before discovery: the
/// capabilities it needs (each with why), PID 1's mount namespace, then the run lock in the
/// journal directory, held until the returned lock drops.
pub(crate) fn preflight(
    paths: &HostPaths,
    needs: &[(caps::Capability, &str)],
    progress: Progress<'_>,
) -> Result<lock::RunLock> {
    privileges::require(needs)?;
    enter_host_namespace(paths, progress)?;
    lock::acquire(
        &Journal::for_host(paths)?.dir,
        lock::Role::Other,
        Some(progress),
    )
}

/// A real systemd connection unless services are not managed.
fn connect_systemd(manage: bool) -> Result<Option<systemd::SystemdDbus>> {
    if !manage {
        return Ok(None);
    }
    Ok(Some(systemd::SystemdDbus::connect().context(
        "connecting to systemd on the system bus (use --no-services to apply without touching services)",
    )?))
}

/// A finished phase of the command, for the report.
pub(crate) fn phase(name: &str, since: Instant) -> Phase {
    Phase {
        phase: name.to_owned(),
        ms: since.elapsed().as_millis() as u64,
        compared: None,
    }
}

/// The diff's own part timings as phases.
fn diff_phases(d: &DeploymentDiff) -> Vec<Phase> {
    d.timings
        .parts()
        .into_iter()
        .map(|(name, ms)| Phase {
            phase: format!("diff.{name}"),
            ms,
            // The /etc plan compares files too: by inode, or by bytes (no content checksums).
            compared: (name == "etc").then_some(crate::services::stale::Compared {
                identity: d.timings.etc_compared.identity,
                checksum: 0,
                bytes: d.timings.etc_compared.bytes,
            }),
        })
        .collect()
}

/// The operations' early answers, which need neither root nor a booted ostree host: the
/// refusals and the nothing-to-do outcomes, on an empty `--root`.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::code_for;

    fn empty_host() -> (tempfile::TempDir, HostPaths) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let run = dir.path().join("run");
        std::fs::create_dir_all(root.join("ostree/deploy")).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        let paths = HostPaths::resolve(Some(root.clone()), Some(root), Some(run));
        (dir, paths)
    }

    fn quiet(_: &str) {}

    #[test]
    fn a_host_that_is_not_ostree_booted_is_refused_naming_the_file() {
        let (_dir, paths) = empty_host();
        let err = booted_host(&paths).unwrap_err();
        assert_eq!(code_for(&err), ExitCode::Refused);
        assert!(
            format!("{err:#}").contains(&paths.ostree_booted_file().display().to_string()),
            "{err:#}"
        );
    }

    #[test]
    fn reset_without_a_live_apply_has_nothing_to_do() {
        let (_dir, paths) = empty_host();
        let got = reset::reset(&paths, false, true, &mut quiet).unwrap();
        assert!(matches!(got, reset::ResetOutcome::NothingToDo));
    }

    #[test]
    fn recover_without_a_record_has_nothing_to_do() {
        let (_dir, paths) = empty_host();
        let rep = recover::recover(&paths, &mut quiet).unwrap();
        assert_eq!(rep.outcome, ExitCode::NothingToDo);
    }

    /// Dry runs take no lock and need no capability: they reach discovery and are refused there.
    #[test]
    fn dry_runs_on_a_host_that_is_not_ostree_booted_are_refused() {
        let (_dir, paths) = empty_host();
        let live = live::LiveOptions {
            from: None,
            to: None,
            dry_run: true,
            unlock: false,
            allow_unverified_usr: false,
            services: None,
        };
        let err = live::apply_live(&paths, &live, &mut quiet).unwrap_err();
        assert_eq!(code_for(&err), ExitCode::Refused, "{err:#}");
        assert!(format!("{err:#}").contains("not ostree-booted"), "{err:#}");
        let k = kexec::KexecOptions {
            to: None,
            dry_run: true,
            load_only: false,
            unlock: false,
        };
        let err = kexec::kexec(&paths, &k, &mut quiet)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(code_for(&err), ExitCode::Refused, "{err:#}");
    }
}
