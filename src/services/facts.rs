//! The runtime facts the service decision needs, gathered from systemd and the `/proc` scan,
//! then [`decide`](super::decide) over them. The only place that asks systemd about units
//! for a plan; verbs call [`plan_services`].

use super::{
    decide, scan_stale, DecideOptions, ProcessOwner, ScanConfig, ServiceAction, StaleScan,
};
use super::{stale::Compared, UnitFacts, PID1_UNIT};
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
    /// How the stale scan compared the paths identities could not decide.
    pub(crate) compared: Compared,
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
    plan_services_after(units, scan_processes(from_usr, to_usr), sd, include)
}

/// The `/proc` scan of [`plan_services`] on its own, with its milliseconds: it needs only the
/// two trees, so `apply-live` runs it while the deployments are compared.
pub(crate) fn scan_processes(from_usr: PathBuf, to_usr: PathBuf) -> Result<(StaleScan, u64)> {
    let mut cfg = ScanConfig::new(from_usr, to_usr);
    cfg.proc_root = Path::new("/proc").to_path_buf();
    let t = Instant::now();
    let scan = scan_stale(&cfg).context("scanning /proc for processes using replaced files")?;
    Ok((scan, t.elapsed().as_millis() as u64))
}

/// [`plan_services`] given the scan ([`scan_processes`]).
pub(crate) fn plan_services_after(
    units: &[UnitFileChange],
    scanned: Result<(StaleScan, u64)>,
    sd: &dyn Systemd,
    include: &[String],
) -> Result<ServicePlan> {
    let (scan, scan_ms) = scanned?;
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
        compared: scan.compared,
    })
}

/// Runtime facts only for the units the decision can touch: the changed ones (templates and
/// drop-in globs expanded against the loaded units), the enabling targets, the owners of stale
/// processes, and the units that trigger any of those. Reading every loaded unit's properties
/// costs tens of seconds on a slow machine, and so does listing them all under emulation: the
/// list of loaded units is read only when a change is a template or glob that needs expanding;
/// otherwise systemd is asked only about the wanted units and the units that want them.
fn unit_facts_for(
    units: &[UnitFileChange],
    scan: &StaleScan,
    sd: &dyn Systemd,
) -> Result<Vec<UnitFacts>> {
    let concrete = |unit: &str| !unit.contains('*') && !unit.contains("@.");
    // A concrete name matches only itself (`unit_pattern_matches`), which is wanted anyway.
    let active = if units.iter().all(|ch| concrete(&ch.unit)) {
        None
    } else {
        Some(sd.active_states().context("listing systemd units")?)
    };
    let mut want: BTreeSet<String> = BTreeSet::new();
    for ch in units {
        if let Some(active) = &active {
            want.extend(
                active
                    .keys()
                    .filter(|u| unit_pattern_matches(&ch.unit, u))
                    .cloned(),
            );
        }
        if concrete(&ch.unit) {
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
        .unit_facts(&names, active.as_ref())
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
            sd.unit_facts(&triggers, active.as_ref())
                .context("reading trigger units from systemd")?,
        );
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::stale::StaleProcess;
    use crate::system::systemd::{facts_from_properties, JobOp, JobOutcome, PendingJob};
    use crate::units::changes::{Dependency, UnitFlags};
    use anyhow::bail;
    use std::cell::Cell;
    use std::collections::HashMap;
    use zbus::zvariant::{OwnedValue, Value};

    /// A service manager with a fixed set of loaded units: (name, ActiveState, WantedBy,
    /// TriggeredBy). It answers as systemd does: `ListUnits` lists the loaded units; the
    /// states of named units (`ListUnitsByNames`) are `inactive` for units it does not know.
    struct Manager {
        units: Vec<(
            &'static str,
            &'static str,
            Vec<&'static str>,
            Vec<&'static str>,
        )>,
        lists: Cell<u32>,
    }

    fn ov<'a>(v: impl Into<Value<'a>>) -> OwnedValue {
        OwnedValue::try_from(v.into()).unwrap()
    }

    impl Manager {
        fn props(&self, name: &str) -> HashMap<String, OwnedValue> {
            let (state, wanted, triggered) = self
                .units
                .iter()
                .find(|u| u.0 == name)
                .map(|u| (u.1, u.2.clone(), u.3.clone()))
                .unwrap_or(("inactive", vec![], vec![]));
            [
                ("ActiveState", ov(state)),
                ("SubState", ov("running")),
                ("WantedBy", ov(wanted)),
                ("TriggeredBy", ov(triggered)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
        }
        fn all(&self) -> HashMap<String, String> {
            self.units
                .iter()
                .map(|u| (u.0.to_string(), u.1.to_string()))
                .collect()
        }
    }

    impl Systemd for Manager {
        fn daemon_reload(&self) -> Result<()> {
            bail!("not part of gathering facts")
        }
        fn daemon_reexec(&self) -> Result<()> {
            bail!("not part of gathering facts")
        }
        fn enqueue(&self, _: JobOp, _: &str) -> Result<PendingJob> {
            bail!("not part of gathering facts")
        }
        fn wait(&self, _: Vec<PendingJob>) -> Vec<JobOutcome> {
            vec![]
        }
        fn active_states(&self) -> Result<HashMap<String, String>> {
            self.lists.set(self.lists.get() + 1);
            Ok(self.all())
        }
        fn unit_facts(
            &self,
            names: &[String],
            active: Option<&HashMap<String, String>>,
        ) -> Result<Vec<UnitFacts>> {
            let props: Vec<_> = names.iter().map(|n| self.props(n)).collect();
            let asked: HashMap<String, String>;
            let active = match active {
                Some(a) => a,
                None => {
                    let all = self.all();
                    asked = props
                        .iter()
                        .flat_map(|p| {
                            Vec::<String>::try_from(p["WantedBy"].try_clone().unwrap()).unwrap()
                        })
                        .map(|u| {
                            let s = all.get(&u).cloned().unwrap_or("inactive".into());
                            (u, s)
                        })
                        .collect();
                    &asked
                }
            };
            Ok(names
                .iter()
                .zip(&props)
                .map(|(n, p)| facts_from_properties(n, p, None, active))
                .collect())
        }
        fn start_unit_no_wait(&self, _: &str, _: &str) -> Result<()> {
            bail!("not part of gathering facts")
        }
        fn version(&self) -> Result<String> {
            Ok("252".into())
        }
    }

    /// The gathering as it was: every loaded unit listed first, for every read.
    fn listing_everything(
        units: &[UnitFileChange],
        scan: &StaleScan,
        sd: &Manager,
    ) -> Vec<UnitFacts> {
        let active = sd.all();
        let mut want: BTreeSet<String> = BTreeSet::new();
        for ch in units {
            want.extend(
                active
                    .keys()
                    .filter(|u| unit_pattern_matches(&ch.unit, u))
                    .cloned(),
            );
            if !ch.unit.contains('*') && !ch.unit.contains("@.") {
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
        let mut facts = sd.unit_facts(&names, Some(&active)).unwrap();
        let triggers: Vec<String> = facts
            .iter()
            .flat_map(|f| f.triggered_by.iter().cloned())
            .filter(|t| !want.contains(t))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        facts.extend(sd.unit_facts(&triggers, Some(&active)).unwrap());
        facts
    }

    fn change(unit: &str, change: UnitChange) -> UnitFileChange {
        UnitFileChange {
            unit: unit.into(),
            change,
            files: vec![],
            flags: UnitFlags::default(),
        }
    }

    fn stale(pid: u32, owner: ProcessOwner) -> StaleProcess {
        StaleProcess {
            pid,
            comm: "x".into(),
            cgroup: String::new(),
            owner,
            files: vec![],
        }
    }

    #[test]
    fn units_listed_only_to_expand_templates_and_the_same_facts() {
        let sd = Manager {
            units: vec![
                ("multi-user.target", "active", vec![], vec![]),
                ("printer.target", "inactive", vec![], vec![]),
                (
                    "cups.service",
                    "active",
                    vec!["printer.target", "multi-user.target"],
                    vec!["cups.socket"],
                ),
                ("cups.socket", "active", vec!["sockets.target"], vec![]),
                ("sockets.target", "active", vec![], vec![]),
                ("lpd.service", "active", vec!["printer.target"], vec![]),
                ("getty@tty1.service", "active", vec!["getty.target"], vec![]),
                (
                    "getty@tty2.service",
                    "inactive",
                    vec!["getty.target"],
                    vec![],
                ),
                ("getty.target", "active", vec!["multi-user.target"], vec![]),
                ("init.scope", "active", vec![], vec![]),
            ],
            lists: Cell::new(0),
        };
        let scan = StaleScan {
            processes: vec![
                stale(1, ProcessOwner::Pid1),
                stale(
                    40,
                    ProcessOwner::SystemUnit {
                        unit: "cups.service".into(),
                    },
                ),
                stale(
                    41,
                    ProcessOwner::User {
                        unit: "user@1000.service".into(),
                    },
                ),
            ],
            ..StaleScan::default()
        };
        // Concrete names only: no unit list; a wanted unit systemd has not loaded is inactive.
        let concrete = vec![
            change(
                "lpd.service",
                UnitChange::Enabled {
                    by: "printer.target".into(),
                    dependency: Dependency::Wants,
                },
            ),
            change("gone.service", UnitChange::Removed { masked: false }),
        ];
        let got = unit_facts_for(&concrete, &scan, &sd).unwrap();
        assert_eq!(sd.lists.get(), 0);
        assert_eq!(got, listing_everything(&concrete, &scan, &sd));
        let names: Vec<&str> = got.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "cups.service",
                "gone.service",
                "init.scope",
                "lpd.service",
                "printer.target",
                "cups.socket"
            ]
        );
        let cups = &got[0];
        assert!(cups.wanted_by_active_target, "{cups:?}");
        assert!(!got[3].wanted_by_active_target, "lpd: only printer.target");

        // A template and a glob need the loaded units: listed once, not once per read.
        let patterns = vec![
            change("getty@.service", UnitChange::Added),
            change("cups*.service", UnitChange::Added),
        ];
        let got = unit_facts_for(&patterns, &scan, &sd).unwrap();
        assert_eq!(sd.lists.get(), 1);
        assert_eq!(got, listing_everything(&patterns, &scan, &sd));
        assert!(got.iter().any(|f| f.name == "getty@tty2.service"));
    }
}
