//! The verbs behind the CLI: each one is discover → diff → plan → (execute) → report, with the
//! side-effect implementations chosen here and passed down explicitly.

use super::{ApplyLiveOpts, Output, PairOpts, ResetOpts, ServiceOpts};
use crate::diff::{self, DecisionKind, DeploymentDiff};
use crate::discover::{self, Host, HostPaths};
use crate::exec::journal::Journal;
use crate::exec::live::{self, LiveEnv};
use crate::exec::report::Phase;
use crate::exit::{refuse, ExitCode};
use crate::plan::ladder::Rung;
use crate::plan::preconditions;
use crate::plan::{self, Plan, Step};
use crate::services;
use crate::system::{lock, mounts, privileges, systemd};
use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Live-apply state for `status`: JSON and human lines.
pub struct LiveStatus {
    pub json: serde_json::Value,
    pub lines: Vec<String>,
}

pub fn live_state(paths: &HostPaths) -> Result<Option<LiveStatus>> {
    let journal = Journal::for_host(paths)?;
    // The journal is private to root (0700 directories): another user sees that it cannot tell.
    let denied = |e: &anyhow::Error| {
        e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
        })
    };
    let unreadable = || LiveStatus {
        lines: vec![format!(
            "live: unknown (the live-apply journal in {} is readable by root only)",
            journal.dir.display()
        )],
        json: serde_json::json!({"readable": false}),
    };
    let loaded = match journal.load() {
        Err(e) if denied(&e) => return Ok(Some(unreadable())),
        other => other?,
    };
    let Some(st) = loaded else {
        let stale = match journal.stale_persistent() {
            Err(e) if denied(&e) => return Ok(Some(unreadable())),
            other => other?,
        };
        return Ok(stale.map(|old| LiveStatus {
            lines: vec![format!(
                "live: a live apply of {} in an earlier boot ({}) left /etc changes; run `fastswitch recover`",
                old.target, old.boot_id
            )],
            json: serde_json::json!({
                "booted": old.booted,
                "target": old.target,
                "recover_pending": true,
                "record_boot_id": old.boot_id,
                "etc_changes": old.etc_backups.len(),
            }),
        }));
    };
    // What /usr really shows, not just what the journal says.
    let usr_is_target = live::same_inode(&paths.root.join("usr"), &st.target_path.join("usr"));
    let mut lines = vec![format!(
        "live: booted {} running {} since {} (unix time){}",
        st.booted,
        st.target,
        st.started_at,
        if st.is_complete() {
            ""
        } else {
            " — INCOMPLETE"
        }
    )];
    if st.resetting {
        lines.push("live: a reset was interrupted; re-run `fastswitch reset` to finish".into());
    } else if let Some(s) = st.interrupted_step() {
        lines.push(format!(
            "live: interrupted at step {}; re-run `fastswitch apply-live` to finish, or `fastswitch reset`",
            s.name
        ));
    }
    lines.push(format!(
        "live: /usr shows {}; {} /etc path(s) backed up for reset (written by the merge or systemd-sysusers)",
        if usr_is_target {
            "the target"
        } else {
            "the booted deployment"
        },
        st.etc_backups.len()
    ));
    let json = serde_json::json!({
        "booted": st.booted,
        "target": st.target,
        "started_at": st.started_at,
        "finished_at": st.finished_at,
        "complete": st.is_complete(),
        "interrupted_step": st.interrupted_at(),
        "resetting": st.resetting,
        "usr_is_target": usr_is_target,
        "etc_changes": st.etc_backups.len(),
        "recover_pending": false,
        "steps": st.steps,
    });
    Ok(Some(LiveStatus { json, lines }))
}

/// Whether the running kernel has a kexec kernel loaded; `None` with `--root` (another system).
pub fn kexec_status(paths: &HostPaths) -> Option<crate::status::KexecStatus> {
    if paths.root != Path::new("/") {
        return None;
    }
    let k = crate::system::kexec::RealKexec::default();
    crate::system::kexec::KexecLoader::is_loaded(&k)
        .ok()
        .map(|loaded| crate::status::KexecStatus { loaded })
}

pub(super) fn short(id: &str) -> String {
    crate::exec::report::short(id)
}

fn write_diff_human(out: &mut dyn Write, d: &DeploymentDiff) -> std::io::Result<()> {
    writeln!(out, "from {} ({})", short(&d.from.id), d.from.stateroot)?;
    writeln!(
        out,
        "to   {} ({}){}",
        short(&d.to.id),
        d.to.stateroot,
        if d.to.staged { " staged" } else { "" }
    )?;
    writeln!(out, "decision: {}", decision_words(d.decision.kind))?;
    for r in &d.decision.reasons {
        writeln!(out, "  - {r}")?;
    }
    let c = &d.usr.counts;
    writeln!(
        out,
        "/usr: {} added, {} removed, {} modified",
        c.added, c.removed, c.modified
    )?;
    const MAX: usize = 40;
    for e in d.usr.entries.iter().take(MAX) {
        let letter = match e.change {
            diff::usr::Change::Added => 'A',
            diff::usr::Change::Removed => 'D',
            diff::usr::Change::Modified => 'M',
        };
        writeln!(out, "  {letter} {}", e.path)?;
    }
    if d.usr.entries.len() > MAX {
        writeln!(out, "  … {} more (see --json)", d.usr.entries.len() - MAX)?;
    }
    if !d.outside_usr.is_empty() {
        writeln!(out, "outside /usr:")?;
        for c in &d.outside_usr {
            let letter = match c.change {
                diff::usr::Change::Added => 'A',
                diff::usr::Change::Removed => 'D',
                diff::usr::Change::Modified => 'M',
            };
            writeln!(out, "  {letter} {}", c.path)?;
        }
    }
    if !d.etc.actions.is_empty() {
        writeln!(out, "/etc: {}", etc_counts(&d.etc.actions))?;
        for a in &d.etc.actions {
            writeln!(out, "  {:<22} {}", etc_action_words(a.action), a.path)?;
        }
    }
    if !d.units.is_empty() {
        writeln!(out, "units: {} changed", d.units.len())?;
        for u in &d.units {
            writeln!(out, "  {} {}", u.unit, unit_change_words(&u.change))?;
        }
    }
    Ok(())
}

/// The decision in words.
pub(super) fn decision_words(k: DecisionKind) -> &'static str {
    match k {
        DecisionKind::None => "nothing to do (the trees are the same)",
        DecisionKind::Live => "live (apply-live can switch without a reboot)",
        DecisionKind::Kexec => "kexec (the kernel changed: a new kernel must boot)",
    }
}

/// The verb as typed on the command line.
pub(super) fn verb_words(v: plan::Verb) -> &'static str {
    match v {
        plan::Verb::ApplyLive => "apply-live",
        plan::Verb::Kexec => "kexec",
        plan::Verb::SoftReboot => "soft-reboot",
        plan::Verb::Switch => "switch",
    }
}

/// Whether a merge action writes the live `/etc` (and is backed up for `reset`).
fn etc_writes(a: diff::etc::EtcActionKind) -> bool {
    use diff::etc::EtcActionKind as K;
    matches!(a, K::Add | K::TakeNewDefault | K::Remove)
}

/// `N to change, M kept as they are`: the same split in `diff`, the plan and the report.
fn etc_counts(actions: &[diff::etc::EtcAction]) -> String {
    let change = actions.iter().filter(|a| etc_writes(a.action)).count();
    format!(
        "{change} path(s) to change, {} kept as they are",
        actions.len() - change
    )
}

/// An /etc merge action in words.
pub(super) fn etc_action_words(a: diff::etc::EtcActionKind) -> &'static str {
    use diff::etc::EtcActionKind as K;
    match a {
        K::Add => "add",
        K::TakeNewDefault => "take the new default",
        K::Remove => "remove",
        K::KeepLocal => "keep your edit",
        K::KeepLocalOnly => "keep your file",
        K::KeepRemoved => "keep it removed",
    }
}

/// `[Service] ExecStart= changed`.
fn key_words(k: &crate::units::compare::KeyChange) -> String {
    use crate::units::compare::Change;
    let what = match k.change {
        Change::Added => "added",
        Change::Removed => "removed",
        Change::Modified => "changed",
    };
    match &k.key {
        Some(key) => format!("[{}] {key}= {what}", k.section),
        None => format!("[{}] {what}", k.section),
    }
}

/// Why a unit is acted on, in words.
fn reason_words(r: &services::Reason) -> String {
    use services::Reason as R;
    let p = |p: &std::path::Path| p.display().to_string();
    match r {
        R::UnitFileChanged { unit, .. } => format!("{unit} changed"),
        R::UnitRemoved { masked: true, .. } => "masked in the target".into(),
        R::UnitRemoved { .. } => "removed from the target".into(),
        R::NewlyEnabled { by } => format!("newly wanted by {by}"),
        R::StaleExe { pid, path } => format!("pid {pid} runs the replaced {}", p(path)),
        R::StaleMapping { pid, path } => format!("pid {pid} maps the replaced {}", p(path)),
        R::StaleScript { pid, path } => {
            format!("pid {pid} runs the replaced script {}", p(path))
        }
        R::SocketActivates { service } => format!("restarted for {service}"),
        R::ActivatedBySocket { socket } => format!("{socket} starts it again on demand"),
        R::SocketRestarted { socket } => format!("it holds {socket}, which is restarted"),
        R::Deferred { why } => {
            use services::DeferWhy as W;
            match why {
                W::Protected { class } => format!("never restarted live: {class}"),
                W::RefuseManualStop => "RefuseManualStop=yes".into(),
                W::RefuseManualStart => "RefuseManualStart=yes".into(),
                W::RestartIfChangedOff => "X-RestartIfChanged=no".into(),
                W::OnlyManualStart => "X-OnlyManualStart=yes".into(),
                W::StopOnRemovalOff => "X-StopOnRemoval=no".into(),
                W::PerConnectionInstance => {
                    "a per-connection instance: new connections get the new code".into()
                }
            }
        }
    }
}

/// A unit-file change in words.
pub(super) fn unit_change_words(c: &crate::units::diff::UnitChange) -> String {
    use crate::units::diff::{Dependency, UnitChange};
    let dep = |d: &Dependency| match d {
        Dependency::Wants => "wants",
        Dependency::Requires => "requires",
        Dependency::Upholds => "upholds",
    };
    match c {
        UnitChange::Added => "added".into(),
        UnitChange::Removed { masked: true } => "masked".into(),
        UnitChange::Removed { masked: false } => "removed".into(),
        UnitChange::Modified { comparison } => {
            use crate::units::compare::UnitComparison as C;
            match comparison {
                C::Equal => "changed (nothing that needs a restart)".into(),
                C::NeedsRestart { reason } => {
                    format!("changed ({}): needs a restart", key_words(reason))
                }
                C::NeedsReload { reason } => {
                    format!("changed ({}): a reload is enough", key_words(reason))
                }
            }
        }
        UnitChange::Enabled { by, dependency } => {
            format!("enabled: {by} now {} it", dep(dependency))
        }
        UnitChange::Disabled { by, dependency } => {
            format!("disabled: {by} no longer {} it", dep(dependency))
        }
    }
}

pub fn diff(paths: &HostPaths, pair: &PairOpts, o: &mut Output<'_>) -> Result<ExitCode> {
    let host = discover::load(paths)?;
    let (from, to) = diff::select_pair(&host, pair.from.as_deref(), pair.to.as_deref())?;
    let d = diff::diff_deployments(from, to)?;
    if o.json {
        o.json_value(&d)?;
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

/// Runtime facts only for the units the decision can touch: the changed ones (templates and
/// drop-in globs expanded against the loaded units), the enabling targets, the owners of stale
/// processes, and the units that trigger any of those. Reading every loaded unit's properties
/// costs tens of seconds on a slow machine.
fn unit_facts_for(
    d: &DeploymentDiff,
    scan: &services::StaleScan,
    sd: &dyn systemd::Systemd,
) -> Result<Vec<services::UnitFacts>> {
    use crate::units::diff::{unit_pattern_matches, UnitChange};
    use std::collections::BTreeSet;
    let active = sd.active_states().context("listing systemd units")?;
    let mut want: BTreeSet<String> = BTreeSet::new();
    for ch in &d.units {
        want.extend(
            active
                .keys()
                .filter(|u| unit_pattern_matches(&ch.unit, u))
                .cloned(),
        );
        let concrete = !ch.unit.contains('*') && !ch.unit.contains("@.");
        if concrete {
            want.insert(ch.unit.clone());
        }
        if let UnitChange::Enabled { by, .. } | UnitChange::Disabled { by, .. } = &ch.change {
            want.insert(by.clone());
        }
    }
    for p in &scan.processes {
        match &p.owner {
            services::ProcessOwner::SystemUnit { unit } => {
                want.insert(unit.clone());
            }
            services::ProcessOwner::Pid1 => {
                want.insert(services::PID1_UNIT.to_owned());
            }
            _ => {}
        }
    }
    let names: Vec<String> = want.iter().cloned().collect();
    let mut facts = sd
        .unit_facts(&names)
        .context("reading unit states from systemd")?;
    let triggers: Vec<String> = facts
        .iter()
        .flat_map(|f| f.triggered_by.iter().cloned())
        .filter(|t| !want.contains(t))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !triggers.is_empty() {
        facts.extend(
            sd.unit_facts(&triggers)
                .context("reading trigger units from systemd")?,
        );
    }
    Ok(facts)
}

/// Facts from systemd and the /proc scan, then the pure decision.
pub(super) fn plan_services(
    d: &DeploymentDiff,
    sopts: &ServiceOpts,
    sd: Option<&dyn systemd::Systemd>,
    phases: &mut Vec<Phase>,
) -> Result<Vec<services::ServiceAction>> {
    let Some(sd) = sd else {
        return Ok(Vec::new());
    };
    let mut cfg = services::ScanConfig::new(d.from.path.join("usr"), d.to.path.join("usr"));
    cfg.proc_root = Path::new("/proc").to_path_buf();
    let t = Instant::now();
    let scan =
        services::scan_stale(&cfg).context("scanning /proc for processes using replaced files")?;
    phases.push(phase("stale_scan", t));
    let t = Instant::now();
    let facts = unit_facts_for(d, &scan, sd)?;
    phases.push(phase("unit_facts", t));
    Ok(services::decide(
        &d.units,
        &scan.processes,
        &facts,
        &services::DecideOptions {
            include: sopts.include.clone(),
        },
    ))
}

pub(super) fn print_plan(o: &mut Output<'_>, p: &Plan) -> Result<()> {
    if o.json {
        return o.json_value(p);
    }
    write_plan_human(o.out, p)
}

/// The human dry run: what would be done, step by step, in words.
pub fn write_plan_human(out: &mut dyn Write, p: &Plan) -> Result<()> {
    let o = Output { json: false, out };
    writeln!(
        o.out,
        "dry run, nothing changed: {} {} → {}",
        verb_words(p.verb),
        short(&p.from.id),
        short(&p.to.id)
    )?;
    writeln!(o.out, "decision: {}", decision_words(p.decision.kind))?;
    for r in &p.decision.reasons {
        writeln!(o.out, "  - {r}")?;
    }
    for h in &p.host_states {
        writeln!(o.out, "host state: {}", h.describe())?;
    }
    if let Some(l) = &p.ladder {
        if let Some(r) = l.chosen {
            writeln!(o.out, "rung: {}", r.name())?;
            for line in l.rejections_below(r) {
                writeln!(o.out, "  rejected {line}")?;
            }
        }
    }
    for (i, s) in p.steps.iter().enumerate() {
        match s {
            Step::UnlockFinalization => writeln!(
                o.out,
                "{}. unlock finalization of the staged deployment (--unlock)",
                i + 1
            )?,
            Step::SwapUsr { source, target } => writeln!(
                o.out,
                "{}. bind {} read-only over {}",
                i + 1,
                source.display(),
                target.display()
            )?,
            Step::MergeEtc { actions, .. } => {
                writeln!(o.out, "{}. merge /etc: {}", i + 1, etc_counts(actions))?;
                for a in actions {
                    writeln!(o.out, "     {:<22} {}", etc_action_words(a.action), a.path)?;
                }
            }
            Step::Services { actions } => {
                writeln!(o.out, "{}. units: {} to act on", i + 1, actions.len())?;
                for a in actions {
                    let why: Vec<String> = a.reasons.iter().map(reason_words).collect();
                    let why = if why.is_empty() { String::new() } else { format!(" ({})", why.join("; ")) };
                    writeln!(o.out, "     {:<22} {}{why}", crate::exec::report::action_word(a.action), a.unit)?;
                }
            }
            Step::Sysusers { files } => writeln!(o.out, "{}. systemd-sysusers {}", i + 1, files.join(" "))?,
            Step::Tmpfiles { files } => {
                writeln!(o.out, "{}. systemd-tmpfiles --create {}", i + 1, files.join(" "))?
            }
            Step::DaemonReload => writeln!(o.out, "{}. systemd daemon-reload", i + 1)?,
            Step::FinalizeStaged => writeln!(
                o.out,
                "{}. finalize the staged deployment (ostree-finalize-staged.service): writes its boot entry",
                i + 1
            )?,
            Step::KexecLoad { kernel, initrds, kargs } => writeln!(
                o.out,
                "{}. kexec_file_load {} (initrd {}) with kargs `{}` + the ostree= bootlink of the new boot entry",
                i + 1,
                kernel.display(),
                initrds.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                kargs.join(" ")
            )?,
            Step::KexecReboot => writeln!(
                o.out,
                "{}. start kexec.target: orderly shutdown, then the new kernel",
                i + 1
            )?,
            Step::PrepareNextroot { nextroot } => writeln!(
                o.out,
                "{}. mount {} at {} (/usr read-only, /var {}, /sysroot{}), private, as ostree-prepare-root would",
                i + 1,
                nextroot.deployment.display(),
                nextroot.dir.display(),
                nextroot.var.display(),
                if nextroot.boot.is_some() { ", /boot" } else { "" }
            )?,
            Step::SoftReboot => writeln!(
                o.out,
                "{}. point /run/ostree-booted at the new root, start soft-reboot.target: userspace restarts in the target, the kernel stays",
                i + 1
            )?,
        }
    }
    for c in &p.etc_conflicts {
        writeln!(
            o.out,
            "note: your edit of {c} is kept although its default changed"
        )?;
    }
    Ok(())
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

pub fn apply_live(paths: &HostPaths, opts: &ApplyLiveOpts, o: &mut Output<'_>) -> Result<ExitCode> {
    let started = Instant::now();
    let mut phases = Vec::new();
    let root_is_host = paths.root == Path::new("/");
    if !opts.dry_run {
        privileges::require(&[(caps::Capability::CAP_SYS_ADMIN, "bind-mount the new /usr")])?;
        // Before any thread exists: the swap must happen in PID 1's namespace on a real host.
        if root_is_host && mounts::enter_pid1_mount_namespace(Path::new("/proc"))? {
            progress("entered PID 1's mount namespace");
        }
    }
    let t = Instant::now();
    let host = discover::load(paths)?;
    phases.push(phase("discover", t));
    if !host.ostree_booted {
        return Err(refuse(
            ExitCode::Refused,
            format!(
                "this host is not ostree-booted ({} is missing); apply-live only works on the running system",
                paths.ostree_booted_file().display()
            ),
        ));
    }
    let booted = host.booted().ok_or_else(|| {
        refuse(
            ExitCode::Refused,
            format!(
                "{} exists but no deployment matches the booted root",
                paths.ostree_booted_file().display()
            ),
        )
    })?;
    let _lock = if opts.dry_run {
        None
    } else {
        Some(lock::acquire(&Journal::for_host(paths)?.dir)?)
    };
    let journal = Journal::for_host(paths)?;
    live::check_can_apply(&journal)?;
    // After a completed live apply, the running userspace is that target: diff from there.
    let live_from = match journal.load()? {
        Some(st) if st.is_complete() => host.deployments.iter().find(|d| d.id == st.target),
        _ => None,
    };
    let (_, to) = diff::select_pair(&host, opts.pair.from.as_deref(), opts.pair.to.as_deref())?;
    let from = match (&opts.pair.from, live_from) {
        (None, Some(l)) => l,
        _ => diff::select_pair(&host, opts.pair.from.as_deref(), opts.pair.to.as_deref())?.0,
    };
    let host_states = preconditions::blockers(&host, from, to);
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
                o.json_value(&plan::live_plan(&d, &plan::LiveInputs { root: paths.root.clone(), services: vec![], host_states, unlock_finalization: false }))?;
            }
            return Ok(ExitCode::NothingToDo);
        }
        DecisionKind::Live => {}
    }
    let sd = connect_systemd(&opts.services)?;
    let sd_ref: Option<&dyn systemd::Systemd> = sd.as_ref().map(|s| s as &dyn systemd::Systemd);
    let services = plan_services(&d, &opts.services, sd_ref, &mut phases)?;
    let t = Instant::now();
    let mut plan = plan::live_plan(
        &d,
        &plan::LiveInputs {
            root: paths.root.clone(),
            services,
            host_states,
            unlock_finalization: opts.unlock,
        },
    );
    if sd_ref.is_none() {
        plan.steps
            .retain(|s| !matches!(s, Step::DaemonReload | Step::Services { .. }));
    }
    phases.push(phase("plan", t));
    if opts.dry_run {
        print_plan(o, &plan)?;
        return Ok(ExitCode::Ok);
    }
    let real_mounts = mounts::RealMounts;
    let mut prog = progress;
    let mut env = LiveEnv {
        paths,
        journal,
        mounts: &real_mounts,
        systemd: sd_ref,
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
    if kexec_loaded {
        privileges::require(&[(caps::Capability::CAP_SYS_BOOT, "unload the kexec kernel")])?;
    }
    if journal.load()?.is_some() {
        privileges::require(&[(caps::Capability::CAP_SYS_ADMIN, "unmount the live /usr")])?;
    }
    if paths.root == Path::new("/") && mounts::enter_pid1_mount_namespace(Path::new("/proc"))? {
        progress("entered PID 1's mount namespace");
    }
    let _lock = lock::acquire(&journal.dir)?;
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

pub fn recover(paths: &HostPaths, o: &mut Output<'_>) -> Result<ExitCode> {
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
    pub dry_run: bool,
    pub load_only: bool,
    pub reboot_fallback: bool,
    pub unlock: bool,
    /// `switch`: the ladder that chose kexec, shown with the plan.
    pub ladder: Option<crate::plan::ladder::Ladder>,
}

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
    let _lock = lock::acquire(&Journal::for_host(paths)?.dir)?;
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
        crate::exec::kexec::hand_off(&sd, how, &plan, paths)?;
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

pub fn kexec(paths: &HostPaths, opts: &super::KexecOpts, o: &mut Output<'_>) -> Result<ExitCode> {
    if !opts.dry_run {
        privileges::require(&[(
            caps::Capability::CAP_SYS_BOOT,
            "load a kernel with kexec_file_load",
        )])?;
    }
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
