//! The typed result of running a plan: per-step status and timings, unit outcomes, conflicts.

use crate::diff::{Decision, DeploymentRef};
use crate::exec::unit_jobs::UnitOutcome;
use crate::exit::ExitCode;
use crate::plan::Verb;
use crate::services::Action;
use serde::Serialize;
use std::path::PathBuf;

pub const REPORT_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    Done,
    /// Already done by an earlier, interrupted run of the same plan.
    AlreadyDone,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: &'static str,
    pub outcome: StepOutcome,
    pub duration_ms: u64,
    /// Step-specific facts (e.g. lazy unmount, files written, unit outcomes).
    pub detail: StepDetail,
}

/// What a step reports besides its time: one variant per kind of step (and per way a step can
/// end). Serialized untagged, so `steps[].detail` is the plain object, array or `null` scripts
/// read; each variant's fields are in alphabetical order, the order that JSON has always had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum StepDetail {
    /// Nothing to add: daemon-reload, the kexec unload, a step an earlier run already did.
    None,
    /// `unlock_finalization`: the staged deployment's file whose lock was removed.
    Unlocked { staged_deployment: PathBuf },
    /// `link_usr`: the live copy of the target's usr was made.
    LinkedUsr { dirs: u64, links: u64 },
    /// `link_usr`: a copy made earlier was reused (`reused` is always true).
    ReusedUsr { reused: bool },
    /// `swap_usr`: `/usr` already showed the target's usr (`already_mounted` is always true).
    AlreadyMounted { already_mounted: bool },
    /// `swap_usr`: an earlier live apply's bind was replaced in place (`replaced` is always
    /// true).
    ReplacedUsr {
        old_detached_lazily: bool,
        replaced: bool,
        usr_binds: u32,
    },
    /// `swap_usr`: the target's usr was bound over `/usr`.
    BoundUsr { usr_binds: u32 },
    /// `swap_composefs_usr`: the usr of the target's composefs image was mounted over `/usr`,
    /// in place of an earlier live apply's mount (`replaced`) or on top.
    ComposefsUsr {
        composefs: PathBuf,
        old_detached_lazily: bool,
        /// The repository ref that keeps the target commit's objects from ostree's prune while
        /// the image reads them (`fastswitch/live`; `reset` and the next boot drop it).
        pinned_ref: String,
        replaced: bool,
        usr_binds: u32,
        verity: bool,
    },
    /// `prune_usr_copies`: live copies no mount showed any more.
    Pruned { removed: Vec<String> },
    /// `merge_etc`: how many `/etc` paths were written.
    MergedEtc { changed: u64 },
    /// `sysusers`, `tmpfiles`: the configuration files the tool was run on.
    ConfigFiles { files: Vec<String> },
    /// `services`: every unit's action and job result.
    Services(Vec<UnitOutcome>),
    /// `unmount_usr` (reset): binds popped, whether `/usr` was busy, live copies removed.
    Unmounted {
        lazy: bool,
        removed_live_trees: Vec<String>,
        unmounted: u32,
    },
    /// `restore_etc` (reset): paths restored, and those kept because the admin changed them.
    Restored {
        kept_admin_changes: Vec<String>,
        restored: u64,
    },
    /// `finalize_staged`: the boot entry ostree wrote.
    Finalized { boot_entry: Option<String> },
    /// `kexec_load`: what was loaded, or that the kernel `prepare` loaded was reused.
    KexecLoaded {
        cmdline: String,
        initrds: Vec<PathBuf>,
        kernel: PathBuf,
        /// Why the prepared kernel could not be reused (`None` when it was).
        reload_reason: Option<String>,
        reused_prepared: bool,
    },
    /// `prepare_nextroot`: the deployment mounted at `/run/nextroot`.
    Nextroot {
        deployment: PathBuf,
        nextroot: PathBuf,
    },
}

/// One phase before the first step (discover, diff parts, facts, stale scan, plan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Phase {
    pub phase: String,
    pub ms: u64,
    /// `stale_scan`: how the paths whose mapped identity could not decide were compared
    /// between the running and the target tree (on a composefs root: by content checksum).
    /// `diff.etc`: how the `/etc` merge plan compared files of two trees (by inode when one
    /// object is in both, else by bytes; `checksum` is 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compared: Option<crate::services::stale::Compared>,
}

/// Steps whose time is spent waiting on systemd (daemon-reload, unit jobs, the hand-off) or on
/// child tools (systemd-sysusers, systemd-tmpfiles, ostree's finalization, the kernel's
/// kexec_file_load): not fastswitch's own work.
pub(crate) const WAITING_STEPS: [&str; 6] = [
    "daemon_reload",
    "services",
    "sysusers",
    "tmpfiles",
    "finalize_staged",
    "kexec_load",
];

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub verb: Verb,
    pub from: DeploymentRef,
    pub to: DeploymentRef,
    pub decision: Decision,
    pub steps: Vec<StepReport>,
    pub total_ms: u64,
    /// `applied`, `applied_with_failures`, `nothing_to_do`, …
    pub outcome: ExitCode,
    pub exit_code: i32,
    pub etc_conflicts: Vec<String>,
    /// Units whose job failed.
    pub failed_units: Vec<String>,
    /// Phases before the first step, in order. Not a partition of the time: `apply-live` scans
    /// `/proc` (`stale_scan`) while the deployments are compared (`diff.*`), so phases may
    /// overlap; `wall_ms` is what they took together with the steps.
    pub phases: Vec<Phase>,
    /// From the start of the command to the report: phases + steps.
    pub wall_ms: u64,
    /// Time spent waiting on systemd and child tools ([`WAITING_STEPS`]).
    pub waited_ms: u64,
    /// `wall_ms - waited_ms`: fastswitch's own work.
    pub own_ms: u64,
    /// Of `own_ms`: writing the journal durably before, in and after the steps (what a power
    /// cut or a kill leaves to `reset` and `recover`).
    pub journal_ms: u64,
    /// The part of `journal_ms` made inside waiting steps (sysusers backs up the user
    /// databases): not counted as waiting.
    #[serde(skip)]
    pub journal_in_waiting_ms: u64,
    /// The report of `fastswitch reset` (undoing a live apply or unloading a kexec kernel);
    /// `verb` stays what was undone.
    pub reset: bool,
}

impl Report {
    /// Account for the whole command: the phases before the steps, the wall time since the
    /// command started, what of it was waiting, and fastswitch's own time (pure).
    pub fn account(&mut self, phases: Vec<Phase>, wall_ms: u64) {
        self.waited_ms = self
            .steps
            .iter()
            .filter(|s| WAITING_STEPS.contains(&s.step))
            .map(|s| s.duration_ms)
            .sum::<u64>()
            .saturating_sub(self.journal_in_waiting_ms);
        self.phases = phases;
        self.wall_ms = wall_ms.max(self.total_ms);
        self.own_ms = self.wall_ms.saturating_sub(self.waited_ms);
    }

    /// What happened, in words: the first line of the human report.
    pub(crate) fn title(&self) -> String {
        let (from, to) = (short(&self.from.id), short(&self.to.id));
        let failed = self.outcome != ExitCode::Ok && self.outcome != ExitCode::NothingToDo;
        if self.reset {
            let undone: Vec<&str> = self
                .steps
                .iter()
                .filter_map(|s| match s.step {
                    "kexec_unload" => Some("unloaded the kexec kernel"),
                    "unmount_usr" => Some("undid the live apply"),
                    _ => None,
                })
                .collect();
            return match (undone.is_empty(), failed) {
                (true, _) => format!("reset: nothing to undo; {from} runs"),
                (false, false) => format!("reset: {}; {from} runs again", undone.join(", ")),
                (false, true) => format!(
                    "reset: {} with failures; {from} runs again",
                    undone.join(", ")
                ),
            };
        }
        let done = if failed { " with failures" } else { "" };
        match self.verb {
            Verb::ApplyLive => format!("apply-live: {to} now runs live on {from}{done}"),
            Verb::Kexec if self.steps.iter().any(|s| s.step == "kexec_load") => {
                format!("kexec: {to}'s kernel is loaded to replace {from}{done}")
            }
            Verb::SoftReboot => {
                format!("soft-reboot: {to} is prepared to replace {from}{done}")
            }
            Verb::Kexec => format!("kexec: {to} is prepared to replace {from}{done}"),
            Verb::Reset => format!("reset: {from} runs{done}"),
        }
    }

    pub fn write_human(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        writeln!(out, "{}", self.title())?;
        for s in &self.steps {
            let outcome = match s.outcome {
                StepOutcome::Done => "done",
                StepOutcome::AlreadyDone => "already done",
            };
            let words = step_words(s);
            let sep = if words.is_empty() { "" } else { ": " };
            writeln!(
                out,
                "  {:<16} {:>8} ms  {outcome}{sep}{words}",
                s.step, s.duration_ms
            )?;
            if let StepDetail::Services(outcomes) = &s.detail {
                write_unit_outcomes(out, outcomes)?;
            }
        }
        for c in &self.etc_conflicts {
            if self.reset {
                writeln!(
                    out,
                    "  kept {c}: it was changed after the live apply, so it was not restored"
                )?;
            } else {
                writeln!(out, "  kept your edit of {c} (its default changed too)")?;
            }
        }
        for u in &self.failed_units {
            writeln!(out, "  unit job failed: {u}")?;
        }
        if !self.phases.is_empty() {
            writeln!(out, "before the steps:")?;
            for p in &self.phases {
                writeln!(out, "  {:<16} {:>8} ms", p.phase, p.ms)?;
            }
        }
        if self.wall_ms > 0 {
            let journal = if self.journal_ms > 0 {
                format!(", of it journal writes {} ms;", self.journal_ms)
            } else {
                ",".into()
            };
            writeln!(
                out,
                "took {} ms (fastswitch's own work {} ms{journal} waiting on systemd and tools {} ms)",
                self.wall_ms, self.own_ms, self.waited_ms
            )
        } else {
            writeln!(out, "took {} ms", self.total_ms)
        }
    }
}

/// A step's detail in words (empty when it has nothing to add).
fn step_words(s: &StepReport) -> String {
    match &s.detail {
        StepDetail::AlreadyMounted { .. } => "the target's /usr was already mounted".into(),
        StepDetail::ReplacedUsr {
            old_detached_lazily,
            ..
        } => format!(
            "replaced the earlier live /usr{}",
            if *old_detached_lazily {
                " (old one detached lazily)"
            } else {
                ""
            }
        ),
        StepDetail::BoundUsr { .. } => "the target's /usr is mounted read-only over /usr".into(),
        StepDetail::MergedEtc { changed } => format!("{changed} /etc path(s) written"),
        StepDetail::ConfigFiles { files } => files.join(" "),
        StepDetail::Unmounted {
            unmounted, lazy, ..
        } => format!(
            "{unmounted} live /usr mount(s) removed{}",
            if *lazy {
                " (busy: detached lazily)"
            } else {
                ""
            }
        ),
        StepDetail::Restored { restored, .. } => format!("{restored} /etc path(s) restored"),
        StepDetail::Services(outcomes) => format!("{} unit(s)", outcomes.len()),
        _ => String::new(),
    }
}

/// The unit outcomes of a `services` step, one line per kind of outcome, naming every unit.
fn write_unit_outcomes(
    out: &mut dyn std::io::Write,
    outcomes: &[UnitOutcome],
) -> std::io::Result<()> {
    use std::collections::BTreeMap;
    let mut groups: BTreeMap<(u8, String), Vec<String>> = BTreeMap::new();
    for o in outcomes.iter().cloned() {
        let ok = o.result.is_success();
        let key = match (o.action, ok) {
            (Action::Deferred, _) => (6, "deferred (restart it yourself)".to_owned()),
            (Action::NeedsRestart, _) => (7, "needs a restart systemd cannot do".to_owned()),
            (a, true) => (action_rank(a), done_word(a).to_owned()),
            (a, false) => (0, format!("FAILED to {}", action_word(a))),
        };
        let name = if ok || !o.action.is_executed() {
            o.unit
        } else {
            format!(
                "{} ({})",
                o.unit,
                o.error
                    .unwrap_or_else(|| format!("{:?}", o.result).to_lowercase())
            )
        };
        groups.entry(key).or_default().push(name);
    }
    for ((_, what), units) in groups {
        writeln!(out, "    {what}: {}", units.join(", "))?;
    }
    Ok(())
}

fn action_rank(a: Action) -> u8 {
    match a {
        Action::Stop => 1,
        Action::DaemonReexec => 2,
        Action::Reload => 3,
        Action::Restart => 4,
        Action::Start => 5,
        Action::Deferred => 6,
        Action::NeedsRestart => 7,
    }
}

/// The infinitive of a unit action: `restart`, `reload`, …
pub(crate) fn action_word(a: Action) -> &'static str {
    match a {
        Action::Stop => "stop",
        Action::DaemonReexec => "re-execute systemd",
        Action::Reload => "reload",
        Action::Restart => "restart",
        Action::Start => "start",
        Action::Deferred => "defer (not live)",
        Action::NeedsRestart => "restart by hand",
    }
}

fn done_word(a: Action) -> &'static str {
    match a {
        Action::Stop => "stopped",
        Action::DaemonReexec => "re-executed",
        Action::Reload => "reloaded",
        Action::Restart => "restarted",
        Action::Start => "started",
        Action::Deferred => "deferred",
        Action::NeedsRestart => "needs a restart",
    }
}

pub(crate) fn short(id: &str) -> String {
    match id.split_once('.') {
        Some((c, s)) if c.len() > 12 => format!("{}….{}", &c[..12], s),
        _ => id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_time_is_wall_minus_waiting() {
        let step = |name: &'static str, ms| StepReport {
            step: name,
            outcome: StepOutcome::Done,
            duration_ms: ms,
            detail: StepDetail::None,
        };
        let r = DeploymentRef {
            index: 0,
            id: "a.0".into(),
            stateroot: "os".into(),
            path: "/x".into(),
            booted: true,
            staged: false,
        };
        let mut rep = Report {
            schema_version: REPORT_SCHEMA_VERSION,
            verb: Verb::ApplyLive,
            from: r.clone(),
            to: r,
            decision: Decision {
                kind: crate::diff::DecisionKind::Live,
                reasons: vec![],
            },
            steps: vec![
                step("swap_usr", 5),
                step("merge_etc", 40),
                step("daemon_reload", 3000),
                step("services", 300),
            ],
            total_ms: 3400,
            outcome: ExitCode::Ok,
            exit_code: 0,
            etc_conflicts: vec![],
            failed_units: vec![],
            phases: vec![],
            wall_ms: 0,
            waited_ms: 0,
            own_ms: 0,
            journal_ms: 0,
            journal_in_waiting_ms: 0,
            reset: false,
        };
        let phases = vec![
            Phase {
                phase: "discover".into(),
                ms: 30,
                compared: None,
            },
            Phase {
                phase: "diff".into(),
                ms: 70,
                compared: None,
            },
        ];
        rep.account(phases, 3500);
        assert_eq!((rep.wall_ms, rep.waited_ms, rep.own_ms), (3500, 3300, 200));
        let mut text = Vec::new();
        rep.write_human(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("discover"), "{text}");
        assert!(text.contains("own work 200 ms"), "{text}");
        // Journal writes inside a waiting step are own work.
        rep.journal_in_waiting_ms = 100;
        rep.account(rep.phases.clone(), 3500);
        assert_eq!((rep.waited_ms, rep.own_ms), (3200, 300));
    }

    /// The typed details print exactly the JSON the ad-hoc objects printed before them (keys,
    /// shapes, order), so the scripts and VM checks reading `steps[].detail` keep working.
    /// The stale scan's phase says how the scan compared the paths identities could not decide;
    /// other phases carry no such key.
    #[test]
    fn stale_scan_phase_shows_how_paths_were_compared() {
        let scan = Phase {
            phase: "stale_scan".into(),
            ms: 5,
            compared: Some(crate::services::stale::Compared {
                identity: 3,
                checksum: 1,
                bytes: 0,
            }),
        };
        assert_eq!(
            serde_json::to_value(&scan).unwrap(),
            serde_json::json!({"phase": "stale_scan", "ms": 5,
                "compared": {"identity": 3, "checksum": 1, "bytes": 0}})
        );
        let plan = Phase {
            phase: "plan".into(),
            ms: 1,
            compared: None,
        };
        assert_eq!(
            serde_json::to_value(&plan).unwrap(),
            serde_json::json!({"phase": "plan", "ms": 1})
        );
    }

    #[test]
    fn step_details_keep_their_json() {
        use serde_json::json;
        let same = |d: StepDetail, v: serde_json::Value| {
            assert_eq!(
                serde_json::to_string(&d).unwrap(),
                serde_json::to_string(&v).unwrap()
            )
        };
        same(StepDetail::None, serde_json::Value::Null);
        same(
            StepDetail::ReplacedUsr {
                old_detached_lazily: false,
                replaced: true,
                usr_binds: 1,
            },
            json!({"usr_binds": 1, "replaced": true, "old_detached_lazily": false}),
        );
        same(
            StepDetail::KexecLoaded {
                cmdline: "root=/dev/vda".into(),
                initrds: vec!["/boot/initrd".into()],
                kernel: "/boot/vmlinuz".into(),
                reload_reason: None,
                reused_prepared: true,
            },
            json!({"kernel": "/boot/vmlinuz", "initrds": ["/boot/initrd"],
                   "cmdline": "root=/dev/vda", "reused_prepared": true, "reload_reason": null}),
        );
        same(
            StepDetail::Restored {
                kept_admin_changes: vec!["/etc/a".into()],
                restored: 2,
            },
            json!({"restored": 2, "kept_admin_changes": ["/etc/a"]}),
        );
        let outcome = UnitOutcome {
            action: Action::Restart,
            duration_ms: 4,
            error: None,
            result: crate::system::systemd::JobResult::Done,
            unit: "a.service".into(),
        };
        same(
            StepDetail::Services(vec![outcome.clone()]),
            serde_json::to_value(vec![outcome]).unwrap(),
        );
    }
}
