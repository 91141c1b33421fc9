//! `kexec` (and the kexec and soft-reboot rungs of `switch`): check the host states and the
//! target's kernel, build the kexec plan, then print it or prepare it (finalize, load) and
//! hand the machine over to systemd once the caller has shown the report.

use super::{preflight, Progress};
use crate::diff::{self, DecisionKind, DeploymentDiff};
use crate::discover::{self, Host, HostPaths};
use crate::exec::kexec::{HandOff, KexecEnv};
use crate::exec::report::Report;
use crate::exit::{refuse, ExitCode};
use crate::plan::ladder::{Ladder, Rung};
use crate::plan::preconditions;
use crate::plan::{self, Plan};
use crate::system::kexec::{KexecLoader, RealKexec};
use crate::system::mounts;
use crate::system::systemd::{self, Systemd};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// What `kexec` was asked.
pub(crate) struct KexecOptions {
    pub(crate) to: Option<String>,
    pub(crate) dry_run: bool,
    pub(crate) load_only: bool,
    pub(crate) unlock: bool,
}

/// How a kexec (or soft reboot) ended, for the CLI to render.
pub(crate) enum KexecOutcome {
    /// Nothing differs: the kexec plan of nothing (no steps; the decision says why).
    NothingToDo(Plan),
    /// `--dry-run`: the plan, not carried out.
    DryRun(Plan),
    /// kexec was impossible and `--reboot-fallback` started `reboot.target`.
    RebootStarted,
    /// The plan ran up to the hand-off: show the report, then start the hand-off, if due.
    Prepared(Report, Option<Box<PendingHandOff>>),
}

/// The last step, taken after the report is shown: systemd takes the machine over.
pub(crate) struct PendingHandOff {
    how: HandOff,
    sd: systemd::SystemdDbus,
    plan: Plan,
    paths: HostPaths,
}

impl PendingHandOff {
    pub(crate) fn start(self, progress: Progress<'_>) -> Result<()> {
        progress(match self.how {
            HandOff::Kexec => {
                "starting kexec.target: systemd stops services in order, then boots the loaded kernel"
            }
            HandOff::SoftReboot => {
                "starting soft-reboot.target: userspace stops and starts again in the target; the kernel stays"
            }
        });
        crate::exec::kexec::hand_off(
            &self.sd,
            &mounts::RealMounts,
            self.how,
            &self.plan,
            &self.paths,
        )
    }
}

/// `kexec`: preflight, one discovery, one diff, then [`run_kexec`].
pub(crate) fn kexec(
    paths: &HostPaths,
    opts: &KexecOptions,
    progress: Progress<'_>,
) -> Result<KexecOutcome> {
    let _lock = if opts.dry_run {
        None
    } else {
        Some(preflight(
            paths,
            &[(
                caps::Capability::CAP_SYS_BOOT,
                "load a kernel with kexec_file_load",
            )],
            progress,
        )?)
    };
    let host = super::booted_host(paths)?;
    let (from, to) = diff::select_pair(&host, None, opts.to.as_deref())?;
    let d = diff::diff_deployments(from, to)?;
    if d.decision.kind == DecisionKind::None {
        return Ok(KexecOutcome::NothingToDo(plan::kexec_plan(
            &d,
            None,
            opts.load_only,
            &[],
            false,
        )));
    }
    let mode = KexecMode {
        dry_run: opts.dry_run,
        load_only: opts.load_only,
        reboot_fallback: false,
        unlock: opts.unlock,
        ladder: None,
    };
    run_kexec(paths, &host, &d, to, mode, progress)
}

/// Kernel and initramfs of the target's tree, checked before anything irreversible.
pub(crate) fn checked_tree_kernel(to: &discover::Deployment) -> Result<(PathBuf, Vec<PathBuf>)> {
    let k = to.kernel.as_ref().ok_or_else(|| {
        refuse(
            ExitCode::Refused,
            format!(
                "deployment {} has no kernel (no regular usr/lib/modules/*/vmlinuz, nor a kernel in usr/lib/ostree-boot or boot, in {}); nothing to kexec",
                to.id,
                to.path.display()
            ),
        )
    })?;
    let img = crate::kernel_image::inspect_file(&k.vmlinuz)
        .map_err(|e| refuse(ExitCode::Refused, format!("{e}; nothing was loaded")))?;
    if img.arch != std::env::consts::ARCH {
        return Err(refuse(
            ExitCode::Refused,
            format!(
                "{}: kernel is for {}, this machine is {}",
                k.vmlinuz.display(),
                img.arch,
                std::env::consts::ARCH
            ),
        ));
    }
    let initrd = k.initramfs.as_ref().ok_or_else(|| {
        refuse(
            ExitCode::Refused,
            format!(
                "deployment {} has no initramfs next to {}; ostree-prepare-root must run from one, so it cannot be kexec'd",
                to.id,
                k.vmlinuz.display()
            ),
        )
    })?;
    crate::kernel_image::check_initramfs_file(initrd)
        .map_err(|e| refuse(ExitCode::Refused, format!("{e}; nothing was loaded")))?;
    Ok((k.vmlinuz.clone(), vec![initrd.clone()]))
}

/// How the kexec path runs (shared by `kexec` and `switch`).
#[derive(Debug, Clone)]
pub(crate) struct KexecMode {
    pub(crate) dry_run: bool,
    pub(crate) load_only: bool,
    pub(crate) reboot_fallback: bool,
    pub(crate) unlock: bool,
    /// `switch`: the ladder that chose kexec, shown with the plan.
    pub(crate) ladder: Option<Ladder>,
}

/// The kexec path from a diff made: refusals, the kernel checks, the plan, then the dry run or
/// the prepared load. The caller holds the run lock ([`preflight`]) unless this is a dry run.
pub(crate) fn run_kexec(
    paths: &HostPaths,
    host: &Host,
    d: &DeploymentDiff,
    to: &discover::Deployment,
    mode: KexecMode,
    progress: Progress<'_>,
) -> Result<KexecOutcome> {
    let from = host
        .deployments
        .iter()
        .find(|x| x.id == d.from.id && x.stateroot == d.from.stateroot)
        .context("the diff's source deployment is gone from the host")?;
    let host_states = preconditions::blockers(host, from, to);
    let blocking = preconditions::blocking(&host_states, Rung::Kexec, mode.unlock);
    if !blocking.is_empty() {
        return Err(refuse(
            ExitCode::Refused,
            preconditions::refusal_text("kexec", &blocking),
        ));
    }
    let tree_kernel = checked_tree_kernel(to)?;
    let loader = RealKexec::default();
    let mut plan = plan::kexec_plan(
        d,
        Some(tree_kernel),
        mode.load_only,
        &host_states,
        mode.unlock,
    );
    plan.ladder = mode.ladder;
    if mode.dry_run {
        return Ok(KexecOutcome::DryRun(plan));
    }
    let blocker = match loader.status() {
        Ok(st) => st.blocker(),
        Err(e) => Some(e),
    };
    let sd = systemd::SystemdDbus::connect().context("connecting to systemd on the system bus")?;
    if let Some(b) = blocker {
        if mode.reboot_fallback {
            progress(&format!("kexec is impossible here ({b}); rebooting through firmware as --reboot-fallback asks"));
            sd.start_unit_no_wait("reboot.target", "replace-irreversibly")
                .context("starting reboot.target")?;
            return Ok(KexecOutcome::RebootStarted);
        }
        return Err(refuse(
            ExitCode::RebootNeeded,
            format!("{b} (use --reboot-fallback to reboot through firmware instead)"),
        ));
    }
    prepare(paths, host, plan, sd, &loader, progress)
}

/// Run a kexec or soft-reboot plan up to its hand-off with the real implementations.
pub(crate) fn prepare(
    paths: &HostPaths,
    host: &Host,
    plan: Plan,
    sd: systemd::SystemdDbus,
    loader: &dyn KexecLoader,
    progress: Progress<'_>,
) -> Result<KexecOutcome> {
    let mut env = KexecEnv {
        paths,
        mounts: &mounts::RealMounts,
        host,
        systemd: &sd,
        loader,
        progress,
    };
    let (report, how) = crate::exec::kexec::prepare(&plan, &mut env)?;
    let pending = how.map(|how| {
        Box::new(PendingHandOff {
            how,
            sd,
            plan,
            paths: paths.clone(),
        })
    });
    Ok(KexecOutcome::Prepared(report, pending))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::code_for;

    fn deployment(
        dir: &std::path::Path,
        kernel: Option<discover::KernelFiles>,
    ) -> discover::Deployment {
        discover::Deployment {
            index: 0,
            id: "abc.0".into(),
            stateroot: "os".into(),
            checksum: "abc".into(),
            serial: 0,
            path: dir.to_owned(),
            booted: false,
            staged: true,
            pending: false,
            rollback: false,
            pinned: false,
            origin: None,
            kernel,
            boot_entry: None,
            kargs: vec![],
            unlocked: None,
            rpm_ostree_live: false,
            composefs_image: false,
            composefs_signature: None,
            dev_ino: (0, 0),
        }
    }

    /// Each refusal names the deployment or file and leaves nothing loaded.
    #[test]
    fn a_target_without_a_usable_kernel_is_refused_before_anything_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let err = checked_tree_kernel(&deployment(dir.path(), None)).unwrap_err();
        assert_eq!(code_for(&err), ExitCode::Refused);
        assert!(
            format!("{err:#}").contains("deployment abc.0 has no kernel"),
            "{err:#}"
        );

        let vmlinuz = dir.path().join("vmlinuz");
        std::fs::write(&vmlinuz, b"not a kernel image").unwrap();
        let kernel = discover::KernelFiles {
            layout: discover::kernel::KernelLayout::UsrLibModules,
            version: "6.1.0".into(),
            vmlinuz: vmlinuz.clone(),
            initramfs: None,
            devicetree: None,
            devicetree_is_dir: false,
            boot_digest: "0".repeat(64),
            digest_source: discover::DigestSource::Computed,
        };
        let err = checked_tree_kernel(&deployment(dir.path(), Some(kernel))).unwrap_err();
        assert_eq!(code_for(&err), ExitCode::Refused);
        let msg = format!("{err:#}");
        assert!(msg.ends_with("; nothing was loaded"), "{msg}");
        assert!(msg.contains(&vmlinuz.display().to_string()), "{msg}");
    }
}
