//! Human renderers: the words for diffs, plans and their parts. JSON comes from the same typed
//! values through serde ([`Output::json_value`]).

use super::Output;
use crate::diff::{self, DecisionKind, DeploymentDiff};
use crate::plan::{self, Plan, Step};
use crate::services;
use anyhow::Result;
use std::io::Write;

pub(crate) fn short(id: &str) -> String {
    crate::exec::report::short(id)
}

pub(crate) fn write_diff_human(out: &mut dyn Write, d: &DeploymentDiff) -> std::io::Result<()> {
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
pub(crate) fn decision_words(k: DecisionKind) -> &'static str {
    match k {
        DecisionKind::None => "nothing to do (the trees are the same)",
        DecisionKind::Live => "live (apply-live can switch without a reboot)",
        DecisionKind::Kexec => "kexec (the kernel changed: a new kernel must boot)",
    }
}

/// The verb as typed on the command line.
pub(crate) fn verb_words(v: plan::Verb) -> &'static str {
    match v {
        plan::Verb::ApplyLive => "apply-live",
        plan::Verb::Kexec => "kexec",
        plan::Verb::SoftReboot => "soft-reboot",
        plan::Verb::Reset => "reset",
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
pub(crate) fn etc_action_words(a: diff::etc::EtcActionKind) -> &'static str {
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
pub(crate) fn unit_change_words(c: &crate::units::changes::UnitChange) -> String {
    use crate::units::changes::{Dependency, UnitChange};
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

pub(crate) fn print_plan(o: &mut Output<'_>, p: &Plan) -> Result<()> {
    if o.json {
        return o.json_value(p);
    }
    write_plan_human(o.out, p)
}

/// One `match` arm per step kind (long only for that).
///
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
            Step::LinkUsr { source, dest } => writeln!(
                o.out,
                "{}. link {} as {} (fastswitch's own copy: it outlives the deployment)",
                i + 1,
                source.display(),
                dest.display()
            )?,
            Step::PruneUsrCopies => writeln!(
                o.out,
                "{}. remove fastswitch's copies of /usr that no mount shows any more",
                i + 1
            )?,
            Step::SwapUsr { source, target } => writeln!(
                o.out,
                "{}. bind {} read-only over {}",
                i + 1,
                source.display(),
                target.display()
            )?,
            Step::SwapComposefsUsr { image, target } => writeln!(
                o.out,
                "{}. mount the composefs image {} (objects {}{}) and put its usr read-only over {}",
                i + 1,
                image.image.display(),
                image.objects.display(),
                if image.require_verity { ", fs-verity required" } else { "" },
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
            Step::KexecUnload => writeln!(
                o.out,
                "{}. unload the kexec kernel (`systemctl kexec` then boots nothing new)",
                i + 1
            )?,
            Step::UnmountUsr => writeln!(
                o.out,
                "{}. detach fastswitch's binds from /usr: it shows the booted deployment again",
                i + 1
            )?,
            Step::RestoreEtc => writeln!(
                o.out,
                "{}. put back the /etc files the live apply changed (keeping any you edited since)",
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
