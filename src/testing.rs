//! Shared test support (unit tests only): recording stand-ins for the narrow traits in
//! [`crate::system`], so the executor's order and refusals are tested without root.

use crate::system::systemd::{JobOp, JobOutcome, JobResult, PendingJob, Systemd, UnitFacts};
use anyhow::{bail, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A recording stand-in for systemd: logs every call, "fails" the units named `fail*`.
#[derive(Default)]
pub(crate) struct RecordingSystemd {
    /// Every call, in order.
    pub log: RefCell<Vec<String>>,
    /// Units whose job cannot even be queued.
    pub unreachable: Vec<&'static str>,
}

impl Systemd for RecordingSystemd {
    fn daemon_reload(&self) -> Result<()> {
        self.log.borrow_mut().push("daemon-reload".into());
        Ok(())
    }
    fn daemon_reexec(&self) -> Result<()> {
        self.log.borrow_mut().push("daemon-reexec".into());
        Ok(())
    }
    fn enqueue(&self, op: JobOp, unit: &str) -> Result<PendingJob> {
        self.log.borrow_mut().push(format!("enqueue {op:?} {unit}"));
        if self.unreachable.contains(&unit) {
            bail!("no such unit {unit}");
        }
        Ok(PendingJob {
            op,
            unit: unit.into(),
            job: format!("/job/{unit}"),
            issued: Instant::now(),
        })
    }
    fn wait(&self, jobs: Vec<PendingJob>) -> Vec<JobOutcome> {
        self.log.borrow_mut().push(format!("wait {}", jobs.len()));
        jobs.into_iter()
            .map(|j| JobOutcome {
                result: if j.unit.starts_with("fail") {
                    JobResult::Failed
                } else {
                    JobResult::Done
                },
                duration: Duration::from_millis(3),
                op: j.op,
                unit: j.unit,
                job: j.job,
            })
            .collect()
    }
    fn list_units(&self) -> Result<Vec<UnitFacts>> {
        Ok(vec![])
    }
    fn active_states(&self) -> Result<HashMap<String, String>> {
        Ok(HashMap::new())
    }
    fn unit_facts(&self, _: &[String]) -> Result<Vec<UnitFacts>> {
        Ok(vec![])
    }
    fn start_unit_no_wait(&self, unit: &str, mode: &str) -> Result<()> {
        self.log
            .borrow_mut()
            .push(format!("start-no-wait {unit} {mode}"));
        Ok(())
    }
    fn version(&self) -> Result<String> {
        Ok("257".into())
    }
}
