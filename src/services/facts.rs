//! The runtime facts the service decision needs, gathered from systemd and the `/proc` scan,
//! then [`decide`](super::decide) over them. The only place that asks systemd about units
//! for a plan; verbs call [`plan_services`].

use super::{
    decide, scan_stale, DecideOptions, ProcessOwner, ScanConfig, ServiceAction, StaleScan,
};
use super::{UnitFacts, PID1_UNIT};
use crate::system::systemd::Systemd;
use crate::units::changes::{unit_pattern_matches, UnitChange, UnitFileChange};
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The service decision and what gathering its facts cost.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServicePlan {
    pub(crate) actions: Vec<ServiceAction>,
    /// `(part, milliseconds)`: `stale_scan`, `unit_facts`.
    pub(crate) timings: Vec<(&'static str, u64)>,
}

/// Facts from the `/proc` scan (processes mapping files of `from_usr` that `to_usr` replaces)
/// and from systemd, then the pure decision.
pub(crate) fn plan_services(
    units: &[UnitFileChange],
    from_usr: PathBuf,
    to_usr: PathBuf,
    sd: &dyn Systemd,
    include: &[String],
) -> Result<ServicePlan> {
    let mut cfg = ScanConfig::new(from_usr, to_usr);
    cfg.proc_root = Path::new("/proc").to_path_buf();
    let t = Instant::now();
    let scan = scan_stale(&cfg).context("scanning /proc for processes using replaced files")?;
    let scan_ms = t.elapsed().as_millis() as u64;
    let t = Instant::now();
    let facts = unit_facts_for(units, &scan, sd)?;
    let facts_ms = t.elapsed().as_millis() as u64;
    Ok(ServicePlan {
        actions: decide(
            units,
            &scan.processes,
            &facts,
            &DecideOptions {
                include: include.to_vec(),
            },
        ),
        timings: vec![("stale_scan", scan_ms), ("unit_facts", facts_ms)],
    })
}

/// Runtime facts only for the units the decision can touch: the changed ones (templates and
/// drop-in globs expanded against the loaded units), the enabling targets, the owners of stale
/// processes, and the units that trigger any of those. Reading every loaded unit's properties
/// costs tens of seconds on a slow machine.
fn unit_facts_for(
    units: &[UnitFileChange],
    scan: &StaleScan,
    sd: &dyn Systemd,
) -> Result<Vec<UnitFacts>> {
    let active = sd.active_states().context("listing systemd units")?;
    let mut want: BTreeSet<String> = BTreeSet::new();
    for ch in units {
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
            ProcessOwner::SystemUnit { unit } => {
                want.insert(unit.clone());
            }
            ProcessOwner::Pid1 => {
                want.insert(PID1_UNIT.to_owned());
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
