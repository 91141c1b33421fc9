//! Which services to stop, reload, restart or start after a deployment switch — and which not.
//!
//! [`facts`] gathers systemd's unit facts and runs the decision;
//! [`stale`] scans `/proc` for processes still running code the switch replaces (the only I/O
//! here); [`decide`] is the pure decision over unit changes, stale processes and systemd's
//! runtime facts. Executing the result is [`crate::exec::unit_jobs::execute`].

pub mod decide;
pub mod facts;
pub mod stale;

pub use decide::{
    by_action, decide, ostree_staging_unit, protected_class, Action, DecideOptions, DeferWhy,
    Reason, ServiceAction, UnitFacts, PID1_UNIT,
};
pub(crate) use facts::{plan_services, plan_services_after, scan_processes};
pub(crate) use stale::{scan_stale, ProcessOwner, ScanConfig, StaleScan};
