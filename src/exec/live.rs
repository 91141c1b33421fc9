//! Run a live-apply [`Plan`] and undo it (`reset`). Every step is journaled before and after it
//! runs, and every step is idempotent, so re-running after a crash converges to the same target.

use super::etc_apply;
use super::journal::{
    fault_point, now_secs, EtcBackup, Journal, LiveState, StepRecord, StepStatus, UnitTouch,
    STATE_SCHEMA_VERSION,
};
use super::report::{Report, StepDetail, StepOutcome, StepReport, REPORT_SCHEMA_VERSION};
use crate::diff::etc::EtcActionKind;
use crate::discover::HostPaths;
use crate::exit::{refuse, ExitCode};
use crate::plan::{Plan, Step};
use crate::services::ServiceAction;
use crate::system::mounts::{MountEntry, Mounts};
use crate::system::systemd::Systemd;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

/// What the executor is handed: where things are, and the side-effect interfaces.
pub struct LiveEnv<'a> {
    pub(crate) paths: &'a HostPaths,
    pub(crate) journal: Journal,
    pub(crate) mounts: &'a dyn Mounts,
    /// `None` when the caller asked not to manage services (`--no-services`).
    pub(crate) systemd: Option<&'a dyn Systemd>,
    /// systemd-sysusers and systemd-tmpfiles.
    pub(crate) tools: &'a dyn crate::system::tools::ConfigTools,
    /// For `reset`: unload a kernel that `fastswitch kexec --load-only` (or an interrupted
    /// switch) left loaded. `None` when the running kernel is not the host's (`--root`).
    pub(crate) kexec: Option<&'a dyn crate::system::kexec::KexecLoader>,
    /// Progress lines for humans (stderr).
    pub(crate) progress: &'a mut dyn FnMut(&str),
}

/// Whether two paths are the same file (device and inode).
pub(crate) fn same_inode(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => false,
    }
}

fn fresh_state(plan: &Plan) -> LiveState {
    LiveState {
        schema_version: STATE_SCHEMA_VERSION,
        booted: plan.from.id.clone(),
        target: plan.to.id.clone(),
        target_path: plan.to.path.clone(),
        started_at: now_secs(),
        finished_at: None,
        steps: Vec::new(),
        usr_binds: 0,
        etc_backups: Vec::new(),
        unit_actions: Vec::new(),
        boot_id: String::new(),
        resetting: false,
        // Known before any step runs, so a record interrupted anywhere names what /usr shows.
        usr_source: plan.steps.iter().find_map(|s| match s {
            Step::SwapUsr { source, .. } => Some(source.clone()),
            Step::SwapComposefsUsr { image, .. } => Some(image.image.clone()),
            _ => None,
        }),
        usr_composefs: plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::SwapComposefsUsr { .. })),
    }
}

fn set_step(
    st: &mut LiveState,
    name: &str,
    status: StepStatus,
    ms: Option<u64>,
    detail: Option<String>,
) {
    st.steps.retain(|s| s.name != name);
    st.steps.push(StepRecord {
        name: name.to_owned(),
        status,
        duration_ms: ms,
        detail,
    });
}

/// Refuse a live apply while an earlier boot's `/etc` changes wait for `recover`, or while a
/// reset is unfinished. Nothing is changed either way.
pub(crate) fn check_can_apply(journal: &Journal) -> Result<()> {
    if let Some(old) = journal.stale_persistent()? {
        return Err(refuse(
            ExitCode::Refused,
            format!(
                "a live apply of {} in an earlier boot ({}) left /etc changes that were never undone ({}); run `fastswitch recover` (fastswitch-recover.service does at boot), then apply again; nothing was changed",
                old.target,
                old.boot_id,
                journal.persistent_state_path().display()
            ),
        ));
    }
    if let Some(s) = journal.load()?.filter(|s| s.resetting) {
        return Err(refuse(
            ExitCode::Interrupted,
            format!(
                "a reset of the live apply of {} was interrupted; run `fastswitch reset` again first; nothing was changed",
                s.target
            ),
        ));
    }
    Ok(())
}

/// Long for the resume rules at its start (one `match` over the journal it finds) and the
/// step loop; both belong together.
///
/// Execute a live plan. The caller holds the run lock and checked privileges.
pub(crate) fn apply_live(plan: &Plan, booted_id: &str, env: &mut LiveEnv<'_>) -> Result<Report> {
    let t0 = Instant::now();
    check_can_apply(&env.journal)?;
    let prior = env.journal.load()?;
    let mut st = match prior {
        Some(s) if s.target == plan.to.id && s.is_complete() => {
            (env.progress)(&format!("{} is already live; nothing to do", plan.to.id));
            return Ok(report(plan, Vec::new(), t0, ExitCode::NothingToDo, Vec::new()));
        }
        Some(s) if s.target == plan.to.id => {
            let at = s.interrupted_at().unwrap_or_else(|| "start".into());
            (env.progress)(&format!("resuming the interrupted live apply of {} (was at step {at})", plan.to.id));
            s
        }
        Some(s) if !s.is_complete() => {
            return Err(refuse(
                ExitCode::Interrupted,
                format!(
                    "a live apply of {} was interrupted at step {}; run `fastswitch reset` first, then apply {}",
                    s.target,
                    s.interrupted_step().map(|x| x.name.as_str()).unwrap_or("?"),
                    plan.to.id
                ),
            ))
        }
        Some(s) => {
            // A newer target on top of a completed live apply: keep the original backups and
            // the list of units to restart on reset. The plan runs from the live target, not
            // the booted deployment: the record keeps naming the booted one (what reset and
            // the bind check compare against).
            let mut n = fresh_state(plan);
            n.booted = s.booted;
            n.usr_binds = s.usr_binds;
            n.etc_backups = s.etc_backups;
            n.unit_actions = s.unit_actions;
            n
        }
        None => fresh_state(plan),
    };
    for step in &plan.steps {
        if let Step::MergeEtc {
            etc_dir, actions, ..
        } = step
        {
            etc_apply::preflight(etc_dir, actions)
                .map_err(|e| refuse(ExitCode::Refused, format!("{e:#}; nothing was changed")))?;
        }
    }
    if st.booted != booted_id {
        bail!(
            "{} records booted deployment {} but {} is booted; remove it (stale state)",
            env.journal.state_path().display(),
            st.booted,
            booted_id
        );
    }
    // The record reaches disk with the first step's "started" (walk), before anything changes.
    let mut out = StepOutputs::default();
    let reports = walk(plan, Some(&mut st), env, &mut out, |name| {
        format!(
            "step {name} failed; the system is partly switched to {}: fix the cause and re-run, or run `fastswitch reset` to return to {}",
            plan.to.id, plan.from.id
        )
    })?;
    let failed_units = out.failed_units;
    // One write for the last step's "done" and the finish.
    st.finished_at = Some(now_secs());
    env.journal.save(&st)?;
    let code = if failed_units.is_empty() {
        ExitCode::Ok
    } else {
        ExitCode::AppliedWithFailures
    };
    let mut r = report(plan, reports, t0, code, failed_units);
    r.journal_ms = env.journal.saving_ms();
    r.journal_in_waiting_ms = out.journal_in_waiting_us / 1000;
    Ok(r)
}

/// What steps hand back besides their report: units whose job failed, `/etc` paths kept
/// because the admin changed them after the apply (reset).
#[derive(Debug, Default)]
struct StepOutputs {
    failed_units: Vec<String>,
    kept_etc: Vec<String>,
    /// Journal writes made inside steps that wait on systemd or tools, µs.
    journal_in_waiting_us: u64,
}

/// The step loop apply-live and reset share: each step not yet done is journaled as started,
/// run, and journaled as done (or failed, with the error), with the fault hook around it.
/// Without a record (`st` is `None`: a reset that only unloads a kexec kernel) steps run
/// unjournaled.
///
/// A step's "done" goes to disk with the next step's "started", in one write, and the last
/// step's with the caller's next write (apply's finish; reset clears the record): a crash in
/// between leaves the step recorded as started, which the re-run redoes (every step is
/// idempotent, as it must be for a crash just before its "done" anyway). The record is saved
/// before every step's "before" fault point, so nothing changes before it is on disk.
fn walk(
    plan: &Plan,
    mut st: Option<&mut LiveState>,
    env: &mut LiveEnv<'_>,
    out: &mut StepOutputs,
    failure: impl Fn(&str) -> String,
) -> Result<Vec<StepReport>> {
    let mut reports = Vec::new();
    for step in &plan.steps {
        let name = step.name();
        if st.as_ref().is_some_and(|st| st.step_done(name)) {
            reports.push(StepReport {
                step: name,
                outcome: StepOutcome::AlreadyDone,
                duration_ms: 0,
                detail: StepDetail::None,
            });
            continue;
        }
        (env.progress)(&format!("{name}…"));
        if let Some(st) = st.as_deref_mut() {
            journal_etc_entries(step, st, env);
            set_step(st, name, StepStatus::Started, None, None);
            env.journal.save(st)?;
        }
        fault_point(name, "before");
        let ts = Instant::now();
        let journal_before = env.journal.saving_us();
        let result = run_step(step, st.as_deref_mut(), env, out);
        let ms = ts.elapsed().as_millis() as u64;
        if super::report::WAITING_STEPS.contains(&name) {
            // Journal writes inside a waiting step are fastswitch's own work, not waiting.
            out.journal_in_waiting_us += env.journal.saving_us() - journal_before;
        }
        match result {
            Ok(detail) => {
                fault_point(name, "after");
                if let Some(st) = st.as_deref_mut() {
                    set_step(st, name, StepStatus::Done, Some(ms), None);
                }
                (env.progress)(&format!("{name} done in {ms} ms"));
                reports.push(StepReport {
                    step: name,
                    outcome: StepOutcome::Done,
                    duration_ms: ms,
                    detail,
                });
            }
            Err(e) => {
                if let Some(st) = st.as_deref_mut() {
                    set_step(
                        st,
                        name,
                        StepStatus::Failed,
                        Some(ms),
                        Some(format!("{e:#}")),
                    );
                    env.journal.save(st)?;
                }
                return Err(e.context(failure(name)));
            }
        }
    }
    Ok(reports)
}

/// The `/etc` entries a step is about to change (`merge_etc`'s actions, the user databases
/// `sysusers` edits), added to the record that goes to disk with the step's start, before any
/// file is touched: a crash in between is then undone correctly (a path that did not exist is
/// recorded as added; an entry whose backup was never taken had its file never touched). An
/// entry journaled by an earlier run stays as it is.
fn journal_etc_entries(step: &Step, st: &mut LiveState, env: &LiveEnv<'_>) {
    let backup_dir = env.journal.backup_dir();
    let mut journal = |path: String, live: std::path::PathBuf, backup: std::path::PathBuf| {
        if !st.etc_backups.iter().any(|b| b.path == path) {
            let existed = std::fs::symlink_metadata(&live).is_ok();
            st.etc_backups.push(EtcBackup {
                path,
                backup: existed.then_some(backup),
                written: None,
            });
        }
    };
    match step {
        Step::MergeEtc {
            etc_dir, actions, ..
        } => {
            for a in actions {
                let changes = matches!(
                    a.action,
                    EtcActionKind::Add | EtcActionKind::TakeNewDefault | EtcActionKind::Remove
                );
                if changes && a.path != "/etc" {
                    let rel = a.path.trim_start_matches("/etc/");
                    journal(a.path.clone(), etc_dir.join(rel), backup_dir.join(rel));
                }
            }
        }
        Step::Sysusers { .. } => {
            let etc_dir = env.paths.root.join("etc");
            for name in SYSUSERS_DATABASES {
                journal(
                    format!("/etc/{name}"),
                    etc_dir.join(name),
                    backup_dir.join(name),
                );
            }
        }
        _ => {}
    }
}

fn report(
    plan: &Plan,
    steps: Vec<StepReport>,
    t0: Instant,
    code: ExitCode,
    failed_units: Vec<String>,
) -> Report {
    Report {
        schema_version: REPORT_SCHEMA_VERSION,
        verb: plan.verb,
        from: plan.from.clone(),
        to: plan.to.clone(),
        decision: plan.decision.clone(),
        steps,
        total_ms: t0.elapsed().as_millis() as u64,
        outcome: code,
        exit_code: code.code(),
        etc_conflicts: plan.etc_conflicts.clone(),
        failed_units,
        phases: vec![],
        wall_ms: 0,
        waited_ms: 0,
        own_ms: 0,
        journal_ms: 0,
        journal_in_waiting_ms: 0,
        reset: false,
    }
}

/// One arm per [`Step`] kind, each the whole effect of that step, so it reads next to the
/// journal record it leaves; long for that reason (splitting would scatter the journaling).
fn run_step(
    step: &Step,
    st: Option<&mut LiveState>,
    env: &mut LiveEnv<'_>,
    out: &mut StepOutputs,
) -> Result<StepDetail> {
    if let Step::KexecUnload = step {
        let k = env
            .kexec
            .context("unloading the kexec kernel needs the running kernel's kexec interface")?;
        k.unload()
            .map_err(anyhow::Error::new)
            .context("unloading the kexec kernel")?;
        (env.progress)("unloaded the kexec kernel: `systemctl kexec` will not switch deployments now (a finalized deployment stays the default for the next boot)");
        return Ok(StepDetail::None);
    }
    let st = st.with_context(|| format!("step {} needs a live-apply record", step.name()))?;
    match step {
        Step::UnmountUsr => unmount_usr(st, env),
        Step::RestoreEtc => restore_etc(st, env, &mut out.kept_etc),
        Step::UnlockFinalization => {
            crate::system::ostree_state::unlock_finalization(env.paths)?;
            Ok(StepDetail::Unlocked {
                staged_deployment: env.paths.staged_file(),
            })
        }
        Step::LinkUsr { source, dest } => {
            let made = env
                .mounts
                .ensure_live_usr(&env.paths.sysroot, source, dest)?;
            Ok(match made {
                Some(n) => StepDetail::LinkedUsr {
                    dirs: n.dirs,
                    links: n.links,
                },
                None => StepDetail::ReusedUsr { reused: true },
            })
        }
        Step::SwapUsr { source, target } => {
            if same_inode(target, source) {
                return Ok(StepDetail::AlreadyMounted {
                    already_mounted: true,
                });
            }
            // A newer target over an earlier live apply: replace that bind in place where the
            // kernel can (Linux ≥ 6.5), so /usr keeps exactly one fastswitch bind.
            let top_is_ours = env
                .mounts
                .stack(target)?
                .last()
                .is_some_and(|m| is_fastswitch_bind(m, &st.booted));
            if top_is_ours {
                let replaced = env.mounts.replace_usr(source, target).with_context(|| {
                    format!(
                        "replacing the bind over {} by {}",
                        target.display(),
                        source.display()
                    )
                })?;
                if let Some(lazy) = replaced {
                    if !same_inode(target, source) {
                        bail!(
                            "after replacing the bind, {} still does not show {}",
                            target.display(),
                            source.display()
                        );
                    }
                    return Ok(StepDetail::ReplacedUsr {
                        old_detached_lazily: lazy,
                        replaced: true,
                        usr_binds: st.usr_binds,
                    });
                }
                (env.progress)("this kernel has no MOVE_MOUNT_BENEATH (Linux < 6.5): stacking the new /usr bind over the previous one");
            }
            env.mounts.bind_usr(source, target).with_context(|| {
                format!("binding {} over {}", source.display(), target.display())
            })?;
            st.usr_binds += 1;
            if !same_inode(target, source) {
                bail!(
                    "after the bind, {} still does not show {}",
                    target.display(),
                    source.display()
                );
            }
            Ok(StepDetail::BoundUsr {
                usr_binds: st.usr_binds,
            })
        }
        Step::SwapComposefsUsr { image, target } => swap_composefs_usr(st, env, image, target),
        Step::PruneUsrCopies => {
            let removed = remove_unused_live_trees(env);
            Ok(StepDetail::Pruned { removed })
        }
        Step::MergeEtc {
            etc_dir,
            new_defaults,
            actions,
        } => {
            let backup_dir = env.journal.backup_dir();
            let mut written = 0;
            // Every entry was journaled with the step's start ([`journal_etc_entries`]).
            for a in actions {
                if let Some(rec) = etc_apply::apply_action(etc_dir, new_defaults, &backup_dir, a)? {
                    written += 1;
                    if let Some(b) = st.etc_backups.iter_mut().find(|b| b.path == a.path) {
                        b.written = rec.written;
                    }
                }
            }
            Ok(StepDetail::MergedEtc { changed: written })
        }
        Step::Sysusers { files } => {
            // systemd-sysusers edits the user and group databases in /etc: back them up and
            // journal them like any merged file, so reset and recover undo new users too.
            let etc_dir = env.paths.root.join("etc");
            // The databases were journaled with the step's start ([`journal_etc_entries`]):
            // take the backups not taken yet (this run's, or those of a run that died before
            // taking them; systemd-sysusers has not run since, so the files are original).
            let mut to_back_up = Vec::new();
            for name in SYSUSERS_DATABASES {
                let path = format!("/etc/{name}");
                let b = st
                    .etc_backups
                    .iter()
                    .find(|b| b.path == path)
                    .with_context(|| format!("{path} was not journaled before systemd-sysusers"))?;
                if let Some(backup) = &b.backup {
                    to_back_up.push((path, etc_dir.join(name), backup.clone()));
                }
            }
            for (path, live, backup) in &to_back_up {
                etc_apply::backup_once(live, backup)
                    .with_context(|| format!("backing up {path} before systemd-sysusers"))?;
            }
            env.tools
                .sysusers(&env.paths.root, files)
                .context("creating users and groups for the new sysusers.d entries")?;
            for b in st.etc_backups.iter_mut() {
                if let Some(name) = b.path.strip_prefix("/etc/") {
                    if SYSUSERS_DATABASES.contains(&name) {
                        b.written = etc_apply::fingerprint(&etc_dir.join(name));
                    }
                }
            }
            Ok(StepDetail::ConfigFiles {
                files: files.clone(),
            })
        }
        Step::Tmpfiles { files } => {
            env.tools
                .tmpfiles_create(&env.paths.root, files)
                .context("creating runtime directories for the new tmpfiles.d entries")?;
            Ok(StepDetail::ConfigFiles {
                files: files.clone(),
            })
        }
        Step::DaemonReload => {
            let sd = env.systemd.context(
                "daemon-reload needs systemd, but services are not managed (--no-services)",
            )?;
            sd.daemon_reload().context("systemd daemon-reload")?;
            Ok(StepDetail::None)
        }
        Step::Services { actions } => {
            let sd = env.systemd.context(
                "service actions need systemd, but services are not managed (--no-services)",
            )?;
            let outcomes = super::unit_jobs::execute(actions, sd);
            for o in &outcomes {
                if o.is_failure() {
                    out.failed_units.push(o.unit.clone());
                }
                if o.action.is_executed() && !st.unit_actions.iter().any(|t| t.unit == o.unit) {
                    st.unit_actions.push(UnitTouch {
                        unit: o.unit.clone(),
                        action: o.action,
                    });
                }
            }
            Ok(StepDetail::Services(outcomes))
        }
        Step::FinalizeStaged
        | Step::KexecLoad { .. }
        | Step::KexecReboot
        | Step::PrepareNextroot { .. }
        | Step::SoftReboot
        | Step::KexecUnload => {
            bail!("step {} does not belong in a live apply", step.name())
        }
    }
}

/// The files `systemd-sysusers` may create or rewrite: the databases, the previous versions it
/// keeps as `<name>-` (like the shadow tools), and the lock file.
const SYSUSERS_DATABASES: [&str; 9] = [
    "passwd",
    "group",
    "shadow",
    "gshadow",
    "passwd-",
    "group-",
    "shadow-",
    "gshadow-",
    ".pwd.lock",
];

/// Is this mount one of ours: a live copy of a target's usr, or (records of earlier versions) a
/// deployment's usr other than the booted one?
/// `swap_composefs_usr`: the target's composefs `usr` over `/usr`, in place of an earlier live
/// apply's mount where the kernel can (as `swap_usr` does), checked in the mount table after.
fn swap_composefs_usr(
    st: &mut LiveState,
    env: &mut LiveEnv<'_>,
    image: &crate::system::composefs::ComposefsImage,
    target: &Path,
) -> Result<StepDetail> {
    let scratch = env.paths.run.join("fastswitch/.private/composefs");
    let what = || {
        format!(
            "mounting the usr of the composefs image {} (objects {}{}) over {}",
            image.image.display(),
            image.objects.display(),
            if image.require_verity {
                ", fs-verity required"
            } else {
                ""
            },
            target.display()
        )
    };
    // Pin first: from the moment the image is mounted, its files are read from the objects.
    let commit = st.target.split('.').next().unwrap_or_default();
    env.mounts
        .pin_live_commit(&env.paths.sysroot, commit)
        .with_context(|| format!("keeping the objects of {} from ostree's prune", st.target))?;
    let top_is_ours = env
        .mounts
        .stack(target)?
        .last()
        .is_some_and(|m| is_fastswitch_bind(m, &st.booted));
    let mut replaced = None;
    if top_is_ours {
        replaced = env
            .mounts
            .composefs_usr(image, &scratch, target, true)
            .with_context(what)?;
        if replaced.is_none() {
            (env.progress)("this kernel has no MOVE_MOUNT_BENEATH (Linux < 6.5): stacking the new /usr mount over the previous one");
        }
    }
    if replaced.is_none() {
        env.mounts
            .composefs_usr(image, &scratch, target, false)
            .with_context(what)?;
        st.usr_binds += 1;
    }
    let top = env.mounts.stack(target)?.last().cloned();
    if !top.as_ref().is_some_and(MountEntry::is_composefs_usr) {
        bail!(
            "after mounting the composefs image {}, {} does not show a composefs usr (top mount: {top:?})",
            image.image.display(),
            target.display()
        );
    }
    Ok(StepDetail::ComposefsUsr {
        composefs: image.image.clone(),
        old_detached_lazily: replaced.unwrap_or(false),
        pinned_ref: crate::system::live_tree::LIVE_REF.to_owned(),
        replaced: replaced.is_some(),
        usr_binds: st.usr_binds,
        verity: image.require_verity,
    })
}

fn is_fastswitch_bind(m: &MountEntry, booted_id: &str) -> bool {
    m.is_composefs_usr()
        || crate::system::live_tree::is_live_usr_root(&m.root)
        || (m.root.ends_with("/usr")
            && m.root.contains("/deploy/")
            && !m.root.ends_with(&format!("/deploy/{booted_id}/usr")))
}

/// Remove the live copies no mount shows any more (the one replaced just now, those of earlier
/// boots). Best effort: a failure is reported, never fatal — the copies only cost disk space.
fn remove_unused_live_trees(env: &mut LiveEnv<'_>) -> Vec<String> {
    match env.mounts.remove_unused_live_trees(&env.paths.sysroot, &[]) {
        Ok(removed) => removed.iter().map(|p| p.display().to_string()).collect(),
        Err(e) => {
            (env.progress)(&format!(
                "warning: could not remove unused live copies of /usr: {e:#}"
            ));
            Vec::new()
        }
    }
}

/// What the journal says `reset` has to undo, for [`crate::plan::reset_plan`].
fn reset_inputs(
    st: Option<&LiveState>,
    kexec_loaded: bool,
    manage_services: bool,
) -> crate::plan::ResetInputs {
    crate::plan::ResetInputs {
        live_target: st.map(|s| s.target.clone()),
        services: manage_services.then(|| {
            st.map(|s| {
                s.unit_actions
                    .iter()
                    .filter_map(|t| {
                        Some(ServiceAction {
                            unit: t.unit.clone(),
                            action: t.inverse()?,
                            reasons: vec![],
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
        }),
        kexec_loaded,
    }
}

/// The reset plan for this host now: from the journal, the kexec state (`kexec`: the running
/// kernel's, `None` with `--root`) and whether services are managed. `reset --dry-run` prints
/// it; [`reset`] walks it.
pub(crate) fn plan_reset(
    booted: &crate::diff::DeploymentRef,
    journal: &Journal,
    kexec: Option<&dyn crate::system::kexec::KexecLoader>,
    manage_services: bool,
) -> Result<Plan> {
    let kexec_loaded = match kexec {
        Some(k) => k.is_loaded().map_err(anyhow::Error::new)?,
        None => false,
    };
    let st = journal.load()?;
    Ok(crate::plan::reset_plan(
        booted,
        &reset_inputs(st.as_ref(), kexec_loaded, manage_services),
    ))
}

/// Undo a live apply: build the reset [`Plan`] and walk it with the same step loop as apply.
/// The record is marked `resetting` before the first step, so an interrupted reset is re-run
/// (its finished steps skipped), never mistaken for an apply. Returns the report (outcome
/// `nothing_to_do` when there was nothing to reset).
pub fn reset(booted: &crate::diff::DeploymentRef, env: &mut LiveEnv<'_>) -> Result<Report> {
    let t0 = Instant::now();
    let plan = plan_reset(booted, &env.journal, env.kexec, env.systemd.is_some())?;
    let mut out = StepOutputs::default();
    let failure = |name: &str| {
        format!("reset step {name} failed: fix the cause and re-run `fastswitch reset`")
    };
    let steps = match env.journal.load()? {
        None => walk(&plan, None, env, &mut out, failure)?,
        Some(mut st) => {
            env.journal.check_backups(&st)?;
            if !st.resetting {
                // The apply's step records give way to the reset's (on disk with the first
                // step's "started", before anything is undone).
                st.resetting = true;
                st.steps.clear();
            }
            let steps = walk(&plan, Some(&mut st), env, &mut out, failure)?;
            env.journal.clear()?;
            steps
        }
    };
    let code = if steps.is_empty() {
        ExitCode::NothingToDo
    } else if out.failed_units.is_empty() {
        ExitCode::Ok
    } else {
        ExitCode::AppliedWithFailures
    };
    let mut plan = plan;
    plan.etc_conflicts = std::mem::take(&mut out.kept_etc);
    let mut rep = report(&plan, steps, t0, code, out.failed_units);
    rep.reset = true;
    rep.journal_ms = env.journal.saving_ms();
    rep.journal_in_waiting_ms = out.journal_in_waiting_us / 1000;
    Ok(rep)
}

/// `reset`'s /usr step: pop every fastswitch bind, then remove the live copies no mount shows.
fn unmount_usr(st: &mut LiveState, env: &mut LiveEnv<'_>) -> Result<StepDetail> {
    let usr = env.paths.root.join("usr");
    let mut popped = 0;
    let mut lazy = false;
    loop {
        let stack = env.mounts.stack(&usr)?;
        match stack.last() {
            Some(top) if is_fastswitch_bind(top, &st.booted) => {
                lazy |= env.mounts.unmount_top(&usr)?;
                popped += 1;
            }
            _ => break,
        }
        if popped > 64 {
            bail!(
                "{} still has fastswitch binds after 64 unmounts",
                usr.display()
            );
        }
    }
    if lazy {
        (env.progress)("/usr was busy: detached lazily; processes started before keep the old files open until they exit");
    }
    st.usr_binds = 0;
    let removed = remove_unused_live_trees(env);
    Ok(StepDetail::Unmounted {
        lazy,
        removed_live_trees: removed,
        unmounted: popped,
    })
}

/// `reset`'s /etc step: restore newest first; each restored entry leaves the journal, so a
/// re-run after a crash restores exactly what is left.
fn restore_etc(
    st: &mut LiveState,
    env: &mut LiveEnv<'_>,
    kept: &mut Vec<String>,
) -> Result<StepDetail> {
    let etc_dir = env.paths.root.join("etc");
    let mut restored = 0;
    let mut n = 0;
    let first_kept = kept.len();
    while let Some(b) = st.etc_backups.last().cloned() {
        n += 1;
        fault_point(&format!("etc-restore-{n}"), "before");
        match etc_apply::restore(&etc_dir, &b)? {
            Ok(()) => restored += 1,
            Err(path) => kept.push(path),
        }
        fault_point(&format!("etc-restore-{n}"), "after");
        st.etc_backups.pop();
        env.journal.save(st)?;
    }
    for k in &kept[first_kept..] {
        (env.progress)(&format!("kept {k}: it was changed after the live apply"));
    }
    Ok(StepDetail::Restored {
        kept_admin_changes: kept[first_kept..].to_vec(),
        restored,
    })
}

/// The executor against recording fakes of the mounts, systemd and the child tools: apply,
/// resume after a failure at each step, and reset, all without root. (The real syscalls are
/// exercised by `tests/apply_live.rs` as root and by the VM scenarios.)
#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{Decision, DecisionKind, DeploymentRef};
    use crate::plan::{Verb, PLAN_SCHEMA_VERSION};
    use crate::services::{Action, Reason};
    use crate::testing::{RecordingMounts, RecordingSystemd, RecordingTools};

    struct Host {
        _dir: tempfile::TempDir,
        paths: HostPaths,
        plan: Plan,
    }

    fn dep(root: &Path, id: &str, booted: bool) -> DeploymentRef {
        let path = root.join("sysroot/ostree/deploy/fx/deploy").join(id);
        std::fs::create_dir_all(path.join("usr/bin")).unwrap();
        std::fs::write(path.join("usr/bin/hello"), id).unwrap();
        DeploymentRef {
            index: usize::from(!booted),
            id: id.into(),
            stateroot: "fx".into(),
            path,
            booted,
            staged: !booted,
        }
    }

    fn live_usr(sysroot: &Path) -> std::path::PathBuf {
        crate::system::live_tree::live_usr(sysroot, "bbb.0")
    }

    /// A root whose `/usr` is a plain directory, and a plan: link and swap /usr, sysusers,
    /// tmpfiles, daemon-reload, restart one service.
    fn host() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("usr")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let paths = HostPaths {
            sysroot: dir.path().join("sysroot"),
            root: root.clone(),
            run: dir.path().join("run"),
            boot: dir.path().join("sysroot/boot"),
        };
        let from = dep(dir.path(), "aaa.0", true);
        let to = dep(dir.path(), "bbb.0", false);
        let plan = Plan {
            schema_version: PLAN_SCHEMA_VERSION,
            verb: Verb::ApplyLive,
            decision: Decision {
                kind: DecisionKind::Live,
                reasons: vec![],
            },
            steps: vec![
                Step::LinkUsr {
                    source: to.path.join("usr"),
                    dest: live_usr(&paths.sysroot),
                },
                Step::SwapUsr {
                    source: live_usr(&paths.sysroot),
                    target: root.join("usr"),
                },
                Step::Sysusers {
                    files: vec!["/usr/lib/sysusers.d/demo.conf".into()],
                },
                Step::Tmpfiles {
                    files: vec!["/usr/lib/tmpfiles.d/demo.conf".into()],
                },
                Step::DaemonReload,
                Step::Services {
                    actions: vec![ServiceAction {
                        unit: "demo.service".into(),
                        action: Action::Restart,
                        reasons: vec![Reason::NewlyEnabled { by: "x".into() }],
                    }],
                },
            ],
            from,
            to,
            etc_conflicts: vec![],
            host_states: vec![],
            ladder: None,
        };
        Host {
            _dir: dir,
            paths,
            plan,
        }
    }

    struct Fakes {
        mounts: RecordingMounts,
        systemd: RecordingSystemd,
        tools: RecordingTools,
    }

    fn fakes() -> Fakes {
        Fakes {
            mounts: RecordingMounts::default(),
            systemd: RecordingSystemd::default(),
            tools: RecordingTools::default(),
        }
    }

    fn env<'a>(h: &'a Host, f: &'a Fakes, progress: &'a mut dyn FnMut(&str)) -> LiveEnv<'a> {
        LiveEnv {
            paths: &h.paths,
            journal: Journal::new(&h.paths.run, &h.paths.root, "boot-1"),
            mounts: &f.mounts,
            systemd: Some(&f.systemd),
            tools: &f.tools,
            kexec: None,
            progress,
        }
    }

    fn outcomes(r: &Report) -> Vec<(&'static str, StepOutcome)> {
        r.steps.iter().map(|s| (s.step, s.outcome)).collect()
    }

    #[test]
    fn apply_runs_every_step_in_order_and_journals_completion() {
        let h = host();
        let f = fakes();
        let mut quiet = |_: &str| {};
        let mut e = env(&h, &f, &mut quiet);
        let r = apply_live(&h.plan, "aaa.0", &mut e).unwrap();
        assert_eq!(r.outcome, ExitCode::Ok);
        assert!(r.steps.iter().all(|s| s.outcome == StepOutcome::Done));
        assert!(same_inode(
            &h.paths.root.join("usr"),
            &live_usr(&h.paths.sysroot)
        ));
        // /usr shows the deployment's very files, and keeps them when ostree removes the
        // deployment (a newer one staged).
        let hello = h.paths.root.join("usr/bin/hello");
        assert!(same_inode(&hello, &h.plan.to.path.join("usr/bin/hello")));
        std::fs::remove_dir_all(&h.plan.to.path).unwrap();
        assert_eq!(std::fs::read_to_string(&hello).unwrap(), "bbb.0");
        assert_eq!(
            *f.tools.log.borrow(),
            [
                "sysusers /usr/lib/sysusers.d/demo.conf",
                "tmpfiles /usr/lib/tmpfiles.d/demo.conf"
            ]
        );
        assert_eq!(
            *f.systemd.log.borrow(),
            ["daemon-reload", "enqueue Restart demo.service", "wait 1"]
        );
        let st = e.journal.load().unwrap().unwrap();
        assert!(st.is_complete());
        assert_eq!(st.target, "bbb.0");
        // One journal write per step (its "started" carries the step before's "done" and the
        // /etc entries the step changes: merge_etc's, the user databases sysusers edits), and
        // one for the finish.
        assert_eq!(
            e.journal.writes() as usize,
            h.plan.steps.len() + 1,
            "{:?}",
            outcomes(&r)
        );
        // Applying the same plan again is a no-op.
        let r = apply_live(&h.plan, "aaa.0", &mut e).unwrap();
        assert_eq!(r.outcome, ExitCode::NothingToDo);
        assert_eq!(f.mounts.log.borrow().len(), 2, "{:?}", f.mounts.log);
    }

    /// A failure at each step in turn: the error names the step, the journal records it as
    /// failed, and the next run skips what was done and finishes.
    #[test]
    fn resume_after_a_failure_at_each_step() {
        for failing in 1..5 {
            let h = host();
            let f = fakes();
            let mut quiet = |_: &str| {};
            let mut e = env(&h, &f, &mut quiet);
            // The step at `failing` fails once; the ones before it succeed.
            let name = h.plan.steps[failing].name();
            match name {
                "swap_usr" => f.mounts.fail_binds.set(1),
                "sysusers" | "tmpfiles" => f.tools.fail_once.set(Some(name)),
                "daemon_reload" => f.systemd.fail_reloads.set(1),
                other => unreachable!("{other}"),
            }
            let err = apply_live(&h.plan, "aaa.0", &mut e).unwrap_err();
            assert!(
                format!("{err:#}").contains(&format!("step {name} failed")),
                "{err:#}"
            );
            let st = e.journal.load().unwrap().unwrap();
            let rec = st.steps.iter().find(|r| r.name == name).unwrap();
            assert_eq!(rec.status, StepStatus::Failed, "{st:?}");
            assert!(
                rec.detail.as_deref().unwrap().contains("injected"),
                "{st:?}"
            );
            for done in &h.plan.steps[..failing] {
                assert!(st.step_done(done.name()), "{failing}: {}", done.name());
            }
            assert!(!st.step_done(name));
            // Resumed: earlier steps are already done, the rest run.
            let r = apply_live(&h.plan, "aaa.0", &mut e).unwrap();
            assert_eq!(r.outcome, ExitCode::Ok, "{failing}");
            let got = outcomes(&r);
            for (i, (step, outcome)) in got.iter().enumerate() {
                let want = if i < failing {
                    StepOutcome::AlreadyDone
                } else {
                    StepOutcome::Done
                };
                assert_eq!(*outcome, want, "{failing}: {step}");
            }
            assert!(e.journal.load().unwrap().unwrap().is_complete());
            assert!(same_inode(
                &h.paths.root.join("usr"),
                &live_usr(&h.paths.sysroot)
            ));
        }
    }

    #[test]
    fn reset_pops_the_bind_reloads_restarts_and_clears_the_journal() {
        let h = host();
        let f = fakes();
        let mut quiet = |_: &str| {};
        let mut e = env(&h, &f, &mut quiet);
        apply_live(&h.plan, "aaa.0", &mut e).unwrap();
        assert!(live_usr(&h.paths.sysroot).is_dir());
        f.systemd.log.borrow_mut().clear();
        let r = reset(&h.plan.from, &mut e).unwrap();
        assert_eq!(r.outcome, ExitCode::Ok, "{:?}", outcomes(&r));
        assert!(!h.paths.root.join("usr").is_symlink());
        assert!(
            !crate::system::live_tree::live_dir(&h.paths.sysroot)
                .join("bbb.0")
                .exists(),
            "reset removes the live copy no mount shows any more"
        );
        assert!(f
            .mounts
            .stack(&h.paths.root.join("usr"))
            .unwrap()
            .is_empty());
        let log = f.systemd.log.borrow().clone();
        assert_eq!(log[0], "daemon-reload", "{log:?}");
        assert!(
            log.iter().any(|l| l.contains("demo.service")),
            "the restarted unit is restarted again on reset: {log:?}"
        );
        assert!(e.journal.load().unwrap().is_none());
        // Nothing left to reset.
        let r = reset(&h.plan.from, &mut e).unwrap();
        assert_eq!(r.outcome, ExitCode::NothingToDo);
    }

    /// On a composefs host: the swap mounts the target's image (no copy linked), the step's
    /// JSON says so, the journal records the image as what `/usr` shows, a second target
    /// stacks on a kernel without `MOVE_MOUNT_BENEATH` (the fake), and reset pops both mounts.
    #[test]
    fn composefs_swap_then_reset() {
        let mut h = host();
        let image = crate::system::composefs::ComposefsImage {
            image: h.plan.to.path.join(".ostree.cfs"),
            objects: h.paths.sysroot.join("ostree/repo/objects"),
            require_verity: true,
            expected_digest: None,
        };
        h.plan.steps.splice(
            0..2,
            [Step::SwapComposefsUsr {
                image: image.clone(),
                target: h.paths.root.join("usr"),
            }],
        );
        let f = fakes();
        let mut quiet = |_: &str| {};
        let mut e = env(&h, &f, &mut quiet);
        let r = apply_live(&h.plan, "aaa.0", &mut e).unwrap();
        assert_eq!(r.outcome, ExitCode::Ok);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["steps"][0]["step"], "swap_composefs_usr");
        assert_eq!(
            json["steps"][0]["detail"],
            serde_json::json!({
                "composefs": image.image,
                "old_detached_lazily": false,
                "pinned_ref": "fastswitch/live",
                "replaced": false,
                "usr_binds": 1,
                "verity": true,
            })
        );
        // The target commit is pinned by a ref, as ostree writes refs, before the mount.
        let pin = h
            .paths
            .sysroot
            .join("ostree/repo/refs/heads/fastswitch/live");
        assert_eq!(std::fs::read_to_string(&pin).unwrap(), "bbb\n");
        assert_eq!(f.mounts.log.borrow()[0], "pin bbb");
        let usr = h.paths.root.join("usr");
        assert_eq!(
            std::fs::read_to_string(usr.join("bin/hello")).unwrap(),
            "bbb.0"
        );
        assert!(!live_usr(&h.paths.sysroot).exists(), "no copy is linked");
        let st = e.journal.load().unwrap().unwrap();
        assert!(st.usr_composefs && st.usr_source.as_deref() == Some(image.image.as_path()));
        assert_eq!(
            f.mounts.log.borrow()[1],
            format!(
                "composefs {} {} verity=true",
                image.image.display(),
                usr.display()
            )
        );

        // A newer target over it: replacing is not possible here, so it stacks.
        let mut h2 = host();
        h2.plan.from = h.plan.to.clone();
        h2.plan.to = dep(h._dir.path(), "ccc.0", false);
        h2.plan.steps = vec![Step::SwapComposefsUsr {
            image: crate::system::composefs::ComposefsImage {
                image: h2.plan.to.path.join(".ostree.cfs"),
                ..image.clone()
            },
            target: usr.clone(),
        }];
        let r = apply_live(&h2.plan, "aaa.0", &mut e).unwrap();
        assert_eq!(r.outcome, ExitCode::Ok);
        assert_eq!(
            std::fs::read_to_string(usr.join("bin/hello")).unwrap(),
            "ccc.0"
        );
        assert_eq!(f.mounts.log.borrow()[2], "pin ccc");
        assert_eq!(std::fs::read_to_string(&pin).unwrap(), "ccc\n");
        assert!(f.mounts.log.borrow()[3].starts_with("replace composefs"));
        assert_eq!(f.mounts.stack(&usr).unwrap().len(), 2);

        let r = reset(&h.plan.from, &mut e).unwrap();
        assert_eq!(r.outcome, ExitCode::Ok, "{:?}", outcomes(&r));
        let json = serde_json::to_value(&r).unwrap();
        let unmount = json["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == "unmount_usr")
            .unwrap();
        assert_eq!(unmount["detail"]["unmounted"], 2, "{unmount}");
        // No composefs /usr is mounted any more: the pin goes with the mounts.
        assert_eq!(
            unmount["detail"]["removed_live_trees"],
            serde_json::json!([pin]),
            "{unmount}"
        );
        assert!(!pin.exists());
        assert!(f.mounts.stack(&usr).unwrap().is_empty());
        assert!(!usr.is_symlink());
        assert!(e.journal.load().unwrap().is_none());
    }
}
