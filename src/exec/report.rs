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
}

impl Report {
    pub fn write_human(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{:?} {} → {}",
            self.verb,
            short(&self.from.id),
            short(&self.to.id)
        )?;
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
        writeln!(out, "total {} ms", self.total_ms)
    }
}

pub fn short(id: &str) -> String {
    match id.split_once('.') {
        Some((c, s)) if c.len() > 12 => format!("{}….{}", &c[..12], s),
        _ => id.to_owned(),
    }
}
