//! The verbs behind the CLI: each one is discover → diff → plan → (execute) → report, with the
//! side-effect implementations chosen here and passed down explicitly.

use super::render::{print_plan, short, write_diff_human};
use super::{ApplyLiveOpts, Output, PairOpts, ResetOpts, ServiceOpts};
use crate::diff::{self, DecisionKind, DeploymentDiff};
use crate::discover::{self, Host, HostPaths};
use crate::exec::journal::Journal;
use crate::exec::live::{self, LiveEnv};
use crate::exec::report::Phase;
use crate::exit::{refuse, ExitCode};
use crate::plan;
use crate::plan::ladder::Rung;
use crate::plan::preconditions;
use crate::services;
use crate::system::{lock, mounts, privileges, systemd};
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;

/// `diff --json`: the diff with the ladder it gives (default bounds, services not examined).
#[derive(serde::Serialize)]
struct DiffJson<'a> {
    #[serde(flatten)]
    diff: &'a DeploymentDiff,
    ladder: crate::plan::ladder::Ladder,
}

pub(crate) fn diff(paths: &HostPaths, pair: &PairOpts, o: &mut Output<'_>) -> Result<ExitCode> {
    let host = discover::load(paths)?;
    let (from, to) = diff::select_pair(&host, pair.from.as_deref(), pair.to.as_deref())?;
    let d = diff::diff_deployments(from, to)?;
    if o.json {
        let host_states = preconditions::blockers(&host, from, to);
        let ladder = crate::status::ladder::for_diff(paths, &d, &host_states)?;
        o.json_value(&DiffJson { diff: &d, ladder })?;
    } else {
        write_diff_human(o.out, &d)?;
    }
    Ok(ExitCode::Ok)
}

/// A finished phase of the command, for the report.
pub(super) fn phase(name: &str, since: Instant) -> Phase {
    Phase {
        phase: name.to_owned(),
        ms: since.elapsed().as_millis() as u64,
    }
}

/// The diff's own part timings as phases.
pub(super) fn diff_phases(d: &DeploymentDiff) -> Vec<Phase> {
    d.timings
        .parts()
        .into_iter()
        .map(|(name, ms)| Phase {
            phase: format!("diff.{name}"),
            ms,
        })
        .collect()
}

pub(super) fn progress(msg: &str) {
    eprintln!("fastswitch: {msg}");
}

/// Facts from systemd and the /proc scan, then the pure decision ([`services::plan_services`]);
/// the gathering costs go to `phases`.
pub(super) fn plan_services(
    d: &DeploymentDiff,
    include: &[String],
    sd: &dyn systemd::Systemd,
    phases: &mut Vec<Phase>,
) -> Result<Vec<services::ServiceAction>> {
    let sp = services::plan_services(
        &d.units,
        d.from.path.join("usr"),
        d.to.path.join("usr"),
        sd,
        include,
    )?;
    phases.extend(sp.timings.iter().map(|&(name, ms)| Phase {
        phase: name.to_owned(),
        ms,
    }));
    Ok(sp.actions)
}

/// Before any thread exists (setns needs a single-threaded process): a verb that changes the
/// running system works in PID 1's mount namespace, so its mounts are seen system-wide.
fn enter_host_namespace(paths: &HostPaths) -> Result<()> {
    if paths.root == Path::new("/") && mounts::enter_pid1_mount_namespace(Path::new("/proc"))? {
        progress("entered PID 1's mount namespace");
    }
    Ok(())
}

/// The one preflight of a verb that changes the system, run before discovery: the
/// capabilities it needs (each with why), PID 1's mount namespace, then the run lock in the
/// journal directory, held until the returned lock drops.
pub(super) fn preflight(
    paths: &HostPaths,
    needs: &[(caps::Capability, &str)],
) -> Result<lock::RunLock> {
    privileges::require(needs)?;
    enter_host_namespace(paths)?;
    lock::acquire(&Journal::for_host(paths)?.dir)
}

/// A real systemd connection unless services are not managed.
fn connect_systemd(sopts: &ServiceOpts) -> Result<Option<systemd::SystemdDbus>> {
    if sopts.no_services {
        return Ok(None);
    }
    Ok(Some(systemd::SystemdDbus::connect().context(
        "connecting to systemd on the system bus (use --no-services to apply without touching services)",
    )?))
}

/// `apply-live`: preflight, discover, diff, plan, then a dry-run print or the executor; long
/// because each phase is timed into the report's `phases` in the order it runs.
pub(crate) fn apply_live(
    paths: &HostPaths,
    opts: &ApplyLiveOpts,
    o: &mut Output<'_>,
) -> Result<ExitCode> {
    let started = Instant::now();
    let mut phases = Vec::new();
    let _lock = if opts.dry_run {
        None
    } else {
        Some(preflight(
            paths,
            &[(caps::Capability::CAP_SYS_ADMIN, "bind-mount the new /usr")],
        )?)
    };
    let t = Instant::now();
    let host = booted_host(paths)?;
    phases.push(phase("discover", t));
    let journal = Journal::for_host(paths)?;
    live::check_can_apply(&journal)?;
    let live = journal.running_target()?;
    let (from, to) = diff::select_running_pair(
        &host,
        live.as_deref(),
        opts.pair.from.as_deref(),
        opts.pair.to.as_deref(),
    )?;
    if opts.pair.from.is_none() {
        if let Some(note) = diff::gone_live_target_note(&host, live.as_deref()) {
            progress(&note);
        }
    }
    let mut host_states = preconditions::blockers(&host, from, to);
    if opts.allow_unverified_usr {
        preconditions::allow_unverified_usr(&mut host_states);
    }
    let blocking = preconditions::blocking(&host_states, Rung::Live, opts.unlock);
    if !blocking.is_empty() {
        return Err(refuse(
            ExitCode::Refused,
            preconditions::refusal_text("apply-live", &blocking),
        ));
    }
    let t = Instant::now();
    let d = diff::diff_deployments(from, to)?;
    phases.extend(diff_phases(&d));
    progress(&format!(
        "diff {} → {} in {} ms: {:?}",
        short(&from.id),
        short(&to.id),
        t.elapsed().as_millis(),
        d.decision.kind
    ));
    match d.decision.kind {
        DecisionKind::Kexec => {
            return Err(refuse(
                ExitCode::RebootNeeded,
                format!(
                    "the kernel changed ({}); a live apply cannot switch kernels: use `fastswitch switch` (kexec) or reboot",
                    d.decision.reasons.join("; ")
                ),
            ))
        }
        DecisionKind::None => {
            if !o.json {
                writeln!(o.out, "nothing to do: {} and {} are identical", short(&from.id), short(&to.id))?;
            } else {
                o.json_value(&plan::live_plan(&d, &plan::LiveInputs { root: paths.root.clone(), sysroot: paths.sysroot.clone(), services: Some(vec![]), host_states, unlock_finalization: false }))?;
            }
            return Ok(ExitCode::NothingToDo);
        }
        DecisionKind::Live => {}
    }
    let sd = connect_systemd(&opts.services)?;
    let services = match &sd {
        Some(sd) => Some(plan_services(&d, &opts.services.include, sd, &mut phases)?),
        None => None,
    };
    let run = LiveRun {
        host: &host,
        d: &d,
        host_states,
        services,
        ladder: None,
        dry_run: opts.dry_run,
        unlock: opts.unlock,
    };
    run_live(
        paths,
        run,
        sd.as_ref().map(|s| s as &dyn systemd::Systemd),
        (started, phases),
        o,
    )
}

/// A live apply decided by `apply-live` or `switch`: its diff, host states and service
/// decision, made once.
pub(super) struct LiveRun<'a> {
    pub(crate) host: &'a Host,
    pub(crate) d: &'a DeploymentDiff,
    pub(crate) host_states: Vec<preconditions::HostBlocker>,
    /// `None`: services not managed (`--no-services`).
    pub(crate) services: Option<Vec<services::ServiceAction>>,
    /// `switch`: the ladder that chose live, shown with the plan.
    pub(crate) ladder: Option<crate::plan::ladder::Ladder>,
    pub(crate) dry_run: bool,
    pub(crate) unlock: bool,
}

/// Build the live plan, print it (`--dry-run`) or carry it out and report. The caller holds
/// the run lock ([`preflight`]) unless this is a dry run.
pub(super) fn run_live(
    paths: &HostPaths,
    run: LiveRun<'_>,
    sd: Option<&dyn systemd::Systemd>,
    (started, mut phases): (Instant, Vec<Phase>),
    o: &mut Output<'_>,
) -> Result<ExitCode> {
    let t = Instant::now();
    let mut plan = plan::live_plan(
        run.d,
        &plan::LiveInputs {
            root: paths.root.clone(),
            sysroot: paths.sysroot.clone(),
            services: run.services,
            host_states: run.host_states,
            unlock_finalization: run.unlock,
        },
    );
    plan.ladder = run.ladder;
    phases.push(phase("plan", t));
    if run.dry_run {
        print_plan(o, &plan)?;
        return Ok(ExitCode::Ok);
    }
    privileges::require(&[(caps::Capability::CAP_SYS_ADMIN, "bind-mount the new /usr")])?;
    let journal = Journal::for_host(paths)?;
    let booted = run
        .host
        .booted()
        .context("no booted deployment on this host")?;
    let real_mounts = mounts::RealMounts;
    let mut prog = progress;
    let mut env = LiveEnv {
        paths,
        journal,
        mounts: &real_mounts,
        systemd: sd,
        tools: &crate::system::tools::RealTools,
        kexec: None,
        progress: &mut prog,
    };
    let mut report = live::apply_live(&plan, &booted.id, &mut env)?;
    report.account(phases, started.elapsed().as_millis() as u64);
    if o.json {
        o.json_value(&report)?;
    } else {
        report.write_human(o.out)?;
    }
    Ok(report.outcome)
}

pub fn reset(paths: &HostPaths, opts: &ResetOpts, o: &mut Output<'_>) -> Result<ExitCode> {
    let journal = Journal::for_host(paths)?;
    // Only the running kernel's kexec state belongs to this host; with --root it does not.
    let kexec = crate::system::kexec::RealKexec::default();
    let kexec_loaded = paths.root == Path::new("/")
        && crate::system::kexec::KexecLoader::is_loaded(&kexec).unwrap_or(false);
    if opts.dry_run {
        let host = discover::load(paths)?;
        let booted = host.booted().with_context(|| {
            format!("no booted deployment found in {}", paths.sysroot.display())
        })?;
        let plan = live::plan_reset(
            &booted.into(),
            &journal,
            kexec_loaded.then_some(&kexec as &dyn crate::system::kexec::KexecLoader),
            !opts.services.no_services,
        )?;
        print_plan(o, &plan)?;
        return Ok(ExitCode::Ok);
    }
    if journal.load()?.is_none() && !kexec_loaded {
        if o.json {
            o.json_value(&serde_json::json!({"schema_version": 1, "outcome": "nothing_to_do", "exit_code": 3}))?;
        } else {
            writeln!(
                o.out,
                "nothing to reset: no live apply on this boot and no kexec kernel loaded"
            )?;
        }
        return Ok(ExitCode::NothingToDo);
    }
    let mut needs = Vec::new();
    if kexec_loaded {
        needs.push((caps::Capability::CAP_SYS_BOOT, "unload the kexec kernel"));
    }
    if journal.load()?.is_some() {
        needs.push((caps::Capability::CAP_SYS_ADMIN, "unmount the live /usr"));
    }
    let _lock = preflight(paths, &needs)?;
    let host = discover::load(paths)?;
    let booted = host
        .booted()
        .with_context(|| format!("no booted deployment found in {}", paths.sysroot.display()))?;
    let sd = connect_systemd(&opts.services)?;
    let sd_ref: Option<&dyn systemd::Systemd> = sd.as_ref().map(|s| s as &dyn systemd::Systemd);
    let real_mounts = mounts::RealMounts;
    let mut prog = progress;
    let mut env = LiveEnv {
        paths,
        journal,
        mounts: &real_mounts,
        systemd: sd_ref,
        tools: &crate::system::tools::RealTools,
        kexec: kexec_loaded.then_some(&kexec as &dyn crate::system::kexec::KexecLoader),
        progress: &mut prog,
    };
    let report = live::reset(&booted.into(), &mut env)?;
    if o.json {
        o.json_value(&report)?;
    } else {
        report.write_human(o.out)?;
    }
    Ok(report.outcome)
}

pub(crate) fn recover(paths: &HostPaths, o: &mut Output<'_>) -> Result<ExitCode> {
    let journal = Journal::for_host(paths)?;
    if journal.stale_persistent()?.is_none() {
        let rep = crate::exec::recover::recover(&journal, &paths.root.join("etc"), "")?;
        if o.json {
            o.json_value(&rep)?;
        } else {
            rep.write_human(o.out)?;
        }
        return Ok(rep.outcome);
    }
    // Not [`preflight`]: recovery writes files only and runs at boot from a unit that need not
    // hold CAP_SYS_ADMIN, which entering PID 1's mount namespace takes.
    privileges::require(&[(
        caps::Capability::CAP_DAC_OVERRIDE,
        "restore files in /etc and /var/lib/fastswitch",
    )])?;
    let _lock = lock::acquire(&journal.dir)?;
    let host = discover::load(paths)?;
    let booted = host
        .booted()
        .with_context(|| format!("no booted deployment found in {}", paths.sysroot.display()))?;
    let rep = crate::exec::recover::recover(&journal, &paths.root.join("etc"), &booted.id)?;
    // No live apply survives a reboot: the live copies of /usr of earlier boots go too.
    use crate::system::mounts::Mounts;
    if let Err(e) = crate::system::mounts::RealMounts.remove_unused_live_trees(&paths.sysroot) {
        eprintln!("fastswitch: warning: could not remove unused live copies of /usr: {e:#}");
    }
    if o.json {
        o.json_value(&rep)?;
    } else {
        rep.write_human(o.out)?;
    }
    Ok(rep.outcome)
}

/// Kernel and initramfs of the target's tree, checked before anything irreversible.
fn checked_tree_kernel(
    to: &discover::Deployment,
) -> Result<(std::path::PathBuf, Vec<std::path::PathBuf>)> {
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

/// The kexec path, shared by `kexec` and `switch`.
/// How the kexec path runs.
#[derive(Debug, Clone)]
pub(super) struct KexecMode {
    pub(crate) dry_run: bool,
    pub(crate) load_only: bool,
    pub(crate) reboot_fallback: bool,
    pub(crate) unlock: bool,
    /// `switch`: the ladder that chose kexec, shown with the plan.
    pub(crate) ladder: Option<crate::plan::ladder::Ladder>,
}

/// The caller holds the run lock ([`preflight`]) unless this is a dry run.
pub(super) fn run_kexec(
    paths: &HostPaths,
    host: &Host,
    d: &DeploymentDiff,
    to: &discover::Deployment,
    mode: KexecMode,
    o: &mut Output<'_>,
) -> Result<ExitCode> {
    use crate::system::kexec::{KexecLoader, RealKexec};
    use crate::system::systemd::Systemd;
    let KexecMode {
        dry_run,
        load_only,
        reboot_fallback,
        unlock,
        ladder,
    } = mode;
    let from = host
        .deployments
        .iter()
        .find(|x| x.id == d.from.id && x.stateroot == d.from.stateroot)
        .context("the diff's source deployment is gone from the host")?;
    let host_states = preconditions::blockers(host, from, to);
    let blocking = preconditions::blocking(&host_states, Rung::Kexec, unlock);
    if !blocking.is_empty() {
        return Err(refuse(
            ExitCode::Refused,
            preconditions::refusal_text("kexec", &blocking),
        ));
    }
    let tree_kernel = checked_tree_kernel(to)?;
    let loader = RealKexec::default();
    let mut plan = plan::kexec_plan(d, Some(tree_kernel), load_only, &host_states, unlock);
    plan.ladder = ladder;
    if dry_run {
        print_plan(o, &plan)?;
        return Ok(ExitCode::Ok);
    }
    let blocker = match loader.status() {
        Ok(st) => st.blocker(),
        Err(e) => Some(e),
    };
    let sd = systemd::SystemdDbus::connect().context("connecting to systemd on the system bus")?;
    if let Some(b) = blocker {
        if reboot_fallback {
            progress(&format!("kexec is impossible here ({b}); rebooting through firmware as --reboot-fallback asks"));
            sd.start_unit_no_wait("reboot.target", "replace-irreversibly")
                .context("starting reboot.target")?;
            return Ok(ExitCode::RebootNeeded);
        }
        return Err(refuse(
            ExitCode::RebootNeeded,
            format!("{b} (use --reboot-fallback to reboot through firmware instead)"),
        ));
    }
    let mut prog = progress;
    let real_mounts = mounts::RealMounts;
    let mut env = crate::exec::kexec::KexecEnv {
        paths,
        mounts: &real_mounts,
        host,
        systemd: &sd,
        loader: &loader as &dyn KexecLoader,
        progress: &mut prog,
    };
    let (report, hand_off) = crate::exec::kexec::prepare(&plan, &mut env)?;
    if o.json {
        o.json_value(&report)?;
    } else {
        report.write_human(o.out)?;
    }
    o.out.flush()?;
    if let Some(how) = hand_off {
        progress(
            "starting kexec.target: systemd stops services in order, then boots the loaded kernel",
        );
        crate::exec::kexec::hand_off(&sd, &real_mounts, how, &plan, paths)?;
    }
    Ok(ExitCode::Ok)
}

pub(super) fn booted_host(paths: &HostPaths) -> Result<Host> {
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

pub(crate) fn kexec(
    paths: &HostPaths,
    opts: &super::KexecOpts,
    o: &mut Output<'_>,
) -> Result<ExitCode> {
    let _lock = if opts.dry_run {
        None
    } else {
        Some(preflight(
            paths,
            &[(
                caps::Capability::CAP_SYS_BOOT,
                "load a kernel with kexec_file_load",
            )],
        )?)
    };
    let host = booted_host(paths)?;
    let (from, to) = diff::select_pair(&host, None, opts.to.as_deref())?;
    let d = diff::diff_deployments(from, to)?;
    if d.decision.kind == DecisionKind::None {
        if o.json {
            // The plan of nothing: no steps, the decision says why.
            o.json_value(&plan::kexec_plan(&d, None, opts.load_only, &[], false))?;
        } else {
            writeln!(
                o.out,
                "nothing to do: {} and {} are identical",
                short(&from.id),
                short(&to.id)
            )?;
        }
        return Ok(ExitCode::NothingToDo);
    }
    run_kexec(
        paths,
        &host,
        &d,
        to,
        KexecMode {
            dry_run: opts.dry_run,
            load_only: opts.load_only,
            reboot_fallback: false,
            unlock: opts.unlock,
            ladder: None,
        },
        o,
    )
}
