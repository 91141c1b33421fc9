//! Carry out the service decision as systemd jobs: the execution policy. Decides nothing about
//! *which* units to touch (that is [`crate::services::decide`]); it decides *how*: stops, then
//! `daemon-reexec`, then reloads, then restarts in small batches, then starts — each batch
//! issued, then all its jobs awaited through systemd's `JobRemoved` signal, failures collected
//! without aborting the rest.

use crate::services::{Action, ServiceAction};
use crate::system::systemd::{JobOp, JobResult, LowercaseFirst, Systemd};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Restarts issued at once before waiting (a restart storm can trip start limits and starve the
/// machine; needrestart#340).
pub(crate) const RESTART_BATCH: usize = 4;
/// Stops, reloads and starts issued at once.
pub(crate) const OTHER_BATCH: usize = 16;

/// What happened to one unit's action. The fields are in alphabetical order: the order the
/// report's JSON has always had them in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitOutcome {
    pub action: Action,
    pub duration_ms: u64,
    pub error: Option<String>,
    pub result: JobResult,
    pub unit: String,
}

impl UnitOutcome {
    pub(crate) fn is_failure(&self) -> bool {
        !(self.result.is_success() || self.result == JobResult::NotExecuted)
    }
}

/// Carry out `actions`: stops, then `daemon-reexec`, then reloads, then restarts (at most
/// [`RESTART_BATCH`] at a time), then starts. Each batch is issued, then awaited. Failures are
/// recorded and do not stop the rest; deferred and manual actions are recorded, not executed.
pub(crate) fn execute(actions: &[ServiceAction], sd: &dyn Systemd) -> Vec<UnitOutcome> {
    let of = |kind: Action| -> Vec<&ServiceAction> {
        let mut v: Vec<&ServiceAction> = actions.iter().filter(|a| a.action == kind).collect();
        v.sort_by(|a, b| a.unit.cmp(&b.unit));
        v
    };
    let mut out = Vec::new();
    run_batches(
        sd,
        JobOp::Stop,
        Action::Stop,
        &of(Action::Stop),
        OTHER_BATCH,
        &mut out,
    );
    // One re-exec serves every reason for it (decide emits a single `init.scope` entry).
    if let Some(a) = of(Action::DaemonReexec).first() {
        let started = Instant::now();
        let res = sd.daemon_reexec();
        out.push(UnitOutcome {
            unit: a.unit.clone(),
            action: Action::DaemonReexec,
            result: if res.is_ok() {
                JobResult::Done
            } else {
                JobResult::CallFailed
            },
            duration_ms: millis(started.elapsed()),
            error: res.err().map(|e| format!("daemon-reexec: {e:#}")),
        });
    }
    run_batches(
        sd,
        JobOp::Reload,
        Action::Reload,
        &of(Action::Reload),
        OTHER_BATCH,
        &mut out,
    );
    run_batches(
        sd,
        JobOp::Restart,
        Action::Restart,
        &of(Action::Restart),
        RESTART_BATCH,
        &mut out,
    );
    run_batches(
        sd,
        JobOp::Start,
        Action::Start,
        &of(Action::Start),
        OTHER_BATCH,
        &mut out,
    );
    for kind in [Action::Deferred, Action::NeedsRestart] {
        for a in of(kind) {
            out.push(UnitOutcome {
                unit: a.unit.clone(),
                action: kind,
                result: JobResult::NotExecuted,
                duration_ms: 0,
                error: None,
            });
        }
    }
    out
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn run_batches(
    sd: &dyn Systemd,
    op: JobOp,
    action: Action,
    units: &[&ServiceAction],
    batch: usize,
    out: &mut Vec<UnitOutcome>,
) {
    for chunk in units.chunks(batch.max(1)) {
        let mut slots: Vec<Option<UnitOutcome>> = vec![None; chunk.len()];
        let mut pending = Vec::new();
        let mut pending_slot = Vec::new();
        for (i, a) in chunk.iter().enumerate() {
            let issued = Instant::now();
            match sd.enqueue(op, &a.unit) {
                Ok(job) => {
                    pending.push(job);
                    pending_slot.push(i);
                }
                Err(e) => {
                    slots[i] = Some(UnitOutcome {
                        unit: a.unit.clone(),
                        action,
                        result: JobResult::CallFailed,
                        duration_ms: millis(issued.elapsed()),
                        error: Some(format!("{op:?} {}: {e:#}", a.unit).to_lowercase_first()),
                    })
                }
            }
        }
        let outcomes = sd.wait(pending);
        for (slot, o) in pending_slot.into_iter().zip(outcomes) {
            slots[slot] = Some(UnitOutcome {
                error: (!o.result.is_success()).then(|| {
                    format!(
                        "{op:?} job {} for {} ended with result {:?}",
                        o.job, o.unit, o.result
                    )
                    .to_lowercase_first()
                }),
                unit: o.unit,
                action,
                result: o.result,
                duration_ms: millis(o.duration),
            });
        }
        out.extend(slots.into_iter().flatten());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::Reason;
    use crate::testing::RecordingSystemd;

    fn act(unit: &str, action: Action) -> ServiceAction {
        ServiceAction {
            unit: unit.into(),
            action,
            reasons: vec![Reason::NewlyEnabled { by: "x".into() }],
        }
    }

    #[test]
    fn execute_orders_batches_and_collects_failures() {
        let sd = RecordingSystemd {
            unreachable: vec!["gone.service"],
            ..Default::default()
        };
        let mut actions = vec![
            act("new.service", Action::Start),
            act("dbus.service", Action::Deferred),
            act("session-1.scope", Action::NeedsRestart),
        ];
        for i in (1..=6).rev() {
            actions.push(act(&format!("r{i}.service"), Action::Restart));
        }
        actions.push(act("fail.service", Action::Restart));
        actions.push(act("cfg.service", Action::Reload));
        actions.push(act("old.service", Action::Stop));
        actions.push(act("gone.service", Action::Stop));
        actions.push(act("init.scope", Action::DaemonReexec));

        let out = execute(&actions, &sd);
        assert_eq!(
            *sd.log.borrow(),
            vec![
                "enqueue Stop gone.service",
                "enqueue Stop old.service",
                "wait 1",
                "daemon-reexec",
                "enqueue Reload cfg.service",
                "wait 1",
                "enqueue Restart fail.service",
                "enqueue Restart r1.service",
                "enqueue Restart r2.service",
                "enqueue Restart r3.service",
                "wait 4",
                "enqueue Restart r4.service",
                "enqueue Restart r5.service",
                "enqueue Restart r6.service",
                "wait 3",
                "enqueue Start new.service",
                "wait 1",
            ]
        );
        let summary: Vec<(&str, Action, JobResult)> = out
            .iter()
            .map(|o| (o.unit.as_str(), o.action, o.result))
            .collect();
        use Action::*;
        assert_eq!(
            summary,
            vec![
                ("gone.service", Stop, JobResult::CallFailed),
                ("old.service", Stop, JobResult::Done),
                ("init.scope", DaemonReexec, JobResult::Done),
                ("cfg.service", Reload, JobResult::Done),
                ("fail.service", Restart, JobResult::Failed),
                ("r1.service", Restart, JobResult::Done),
                ("r2.service", Restart, JobResult::Done),
                ("r3.service", Restart, JobResult::Done),
                ("r4.service", Restart, JobResult::Done),
                ("r5.service", Restart, JobResult::Done),
                ("r6.service", Restart, JobResult::Done),
                ("new.service", Start, JobResult::Done),
                ("dbus.service", Deferred, JobResult::NotExecuted),
                ("session-1.scope", NeedsRestart, JobResult::NotExecuted),
            ]
        );
        let gone = &out[0];
        assert!(gone.is_failure());
        assert!(
            gone.error
                .as_deref()
                .unwrap()
                .contains("no such unit gone.service"),
            "{gone:?}"
        );
        let fail = &out[4];
        assert!(
            fail.error.as_deref().unwrap().contains("Failed"),
            "{fail:?}"
        );
        assert_eq!(fail.duration_ms, 3);
        assert!(!out[12].is_failure() && out[12].error.is_none());
        let json = serde_json::to_value(&out[4]).unwrap();
        assert_eq!(json["action"], "restart");
        assert_eq!(json["result"], "failed");
    }
}
