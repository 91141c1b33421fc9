//! The typed result of running a plan: per-step status and timings, unit outcomes, conflicts.

use crate::diff::{Decision, DeploymentRef};
use crate::exit::ExitCode;
use crate::plan::Verb;
use serde::Serialize;

pub const REPORT_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    Done,
    /// Already done by an earlier, interrupted run of the same plan.
    AlreadyDone,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: &'static str,
    pub outcome: StepOutcome,
    pub duration_ms: u64,
    /// Step-specific facts (e.g. lazy unmount, files written, unit outcomes).
    pub detail: serde_json::Value,
}

/// One phase before the first step (discover, diff parts, facts, stale scan, plan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Phase {
    pub phase: String,
    pub ms: u64,
}

/// Steps whose time is spent waiting on systemd (daemon-reload, unit jobs, the hand-off) or on
/// child tools (systemd-sysusers, systemd-tmpfiles, ostree's finalization, the kernel's
/// kexec_file_load): not fastswitch's own work.
pub const WAITING_STEPS: [&str; 6] = [
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
    /// Phases before the first step, in order.
    pub phases: Vec<Phase>,
    /// From the start of the command to the report: phases + steps.
    pub wall_ms: u64,
    /// Time spent waiting on systemd and child tools ([`WAITING_STEPS`]).
    pub waited_ms: u64,
    /// `wall_ms - waited_ms`: fastswitch's own work.
    pub own_ms: u64,
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
            .sum();
        self.phases = phases;
        self.wall_ms = wall_ms.max(self.total_ms);
        self.own_ms = self.wall_ms.saturating_sub(self.waited_ms);
    }

    pub fn write_human(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{:?} {} → {}",
            self.verb,
            short(&self.from.id),
            short(&self.to.id)
        )?;
        for p in &self.phases {
            writeln!(out, "  {:<16} {:>8} ms", p.phase, p.ms)?;
        }
        for s in &self.steps {
            writeln!(
                out,
                "  {:<16} {:>8} ms  {}",
                s.step,
                s.duration_ms,
                match s.outcome {
                    StepOutcome::Done => "done",
                    StepOutcome::AlreadyDone => "already done",
                    StepOutcome::Failed => "FAILED",
                }
            )?;
        }
        for c in &self.etc_conflicts {
            writeln!(out, "  kept your edit of {c} (its default changed too)")?;
        }
        for u in &self.failed_units {
            writeln!(out, "  unit job failed: {u}")?;
        }
        if self.wall_ms > 0 {
            writeln!(
                out,
                "total {} ms (fastswitch's own work {} ms, waiting on systemd and tools {} ms)",
                self.wall_ms, self.own_ms, self.waited_ms
            )
        } else {
            writeln!(out, "total {} ms", self.total_ms)
        }
    }
}

pub fn short(id: &str) -> String {
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
            detail: serde_json::Value::Null,
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
        };
        let phases = vec![
            Phase {
                phase: "discover".into(),
                ms: 30,
            },
            Phase {
                phase: "diff".into(),
                ms: 70,
            },
        ];
        rep.account(phases, 3500);
        assert_eq!((rep.wall_ms, rep.waited_ms, rep.own_ms), (3500, 3300, 200));
        let mut text = Vec::new();
        rep.write_human(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("discover"), "{text}");
        assert!(text.contains("own work 200 ms"), "{text}");
    }
}
