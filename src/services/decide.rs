//! Decide, purely, what to do with each unit after a deployment switch.
//!
//! Inputs: the unit-level changes between the two deployments, the stale processes found by the
//! `/proc` scan, a snapshot of systemd's runtime facts, and the admin's options. Output: one
//! [`ServiceAction`] per unit, with every reason that led to it, in execution order (stop,
//! re-exec, reload, restart, start; then the deferred and the manual ones), alphabetical within.
//!
//! Rules:
//! - a changed unit that is active is restarted (or reloaded when only `ExecReload`-class keys
//!   changed, or it says `X-ReloadIfChanged=yes`); inactive units are left alone. Targets,
//!   paths, slices, devices and scopes are never restarted (daemon-reload applies them); mounts,
//!   automounts and swaps are only remounted (reload) — a mount change that needs more is
//!   reported as [`Action::NeedsRestart`] rather than unmounting a live filesystem;
//! - a removed (or masked) unit that is active is stopped, unless `X-StopOnRemoval=no`;
//! - a unit newly wanted/required by an *active* unit (typically `multi-user.target`) is started
//!   when it is not running yet;
//! - a stale process restarts exactly the system unit whose cgroup it lives in; a stale PID 1
//!   means `daemon-reexec`; user sessions and user managers are reported as
//!   [`Action::NeedsRestart`], never touched;
//! - a service activated by an active socket (and not pulled in by an active target on its own,
//!   nor marked `X-NotSocketActivated=yes`) is stopped and its socket restarted, so the socket
//!   starts the new code on demand; a per-connection instance (`Accept=yes`) is only reported;
//! - a changed socket that is restarted first stops the active services it triggers (they hold
//!   its listening socket);
//! - never restarted, only reported as [`Action::Deferred`]: D-Bus, logind, gettys, user
//!   managers and sessions, display managers, units with `RefuseManualStop=yes`, units marked
//!   `X-RestartIfChanged=no` or `X-OnlyManualStart=yes`. [`DecideOptions::include`] lifts the
//!   name-based deferral for the units it names (systemd itself still refuses a manual stop of a
//!   `RefuseManualStop=yes` unit, so that one stays deferred).
//! - left alone entirely: ostree's own staging units ([`ostree_staging_unit`]). They exist for
//!   the staged deployment this switch applies and do their work when they are *stopped* at
//!   shutdown; a restart would finalize or unhold it now. Their stale mappings are harmless
//!   (the hold process sits in `pause()`), and a changed definition takes effect through
//!   `daemon-reload` at that stop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::stale::{ProcessOwner, StaleKind, StaleProcess};
use crate::units::{unit_pattern_matches, UnitChange, UnitComparison, UnitFileChange, UnitFlags};

/// The unit name used for PID 1's own action (its cgroup is `/init.scope`).
pub const PID1_UNIT: &str = "init.scope";

pub use crate::system::systemd::UnitFacts;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecideOptions {
    /// Units (exact names or `*` globs) the admin wants handled even though they are deferred
    /// by name.
    pub(crate) include: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Stop,
    DaemonReexec,
    Reload,
    Restart,
    Start,
    /// Needs a restart that policy forbids doing live; reported only.
    Deferred,
    /// Needs a restart that cannot be done through systemd (user sessions, foreign processes,
    /// mounts); reported only.
    NeedsRestart,
}

impl Action {
    /// Whether [`crate::exec::unit_jobs::execute`] carries it out.
    pub(crate) fn is_executed(self) -> bool {
        !matches!(self, Action::Deferred | Action::NeedsRestart)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// The unit's definition changed (`unit` is the changed name: the unit, its template or a
    /// drop-in glob).
    UnitFileChanged {
        unit: String,
        paths: Vec<PathBuf>,
        comparison: UnitComparison,
    },
    UnitRemoved {
        paths: Vec<PathBuf>,
        masked: bool,
    },
    NewlyEnabled {
        by: String,
    },
    StaleExe {
        pid: u32,
        path: PathBuf,
    },
    StaleMapping {
        pid: u32,
        path: PathBuf,
    },
    StaleScript {
        pid: u32,
        path: PathBuf,
    },
    /// The socket is restarted on behalf of this service (which is stopped).
    SocketActivates {
        service: String,
    },
    /// The service is stopped, not restarted: this active socket starts it again on demand.
    ActivatedBySocket {
        socket: String,
    },
    /// The service is stopped because this socket, which it holds, is restarted.
    SocketRestarted {
        socket: String,
    },
    Deferred {
        why: DeferWhy,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeferWhy {
    /// A unit that is never restarted live (`class`: dbus, logind, getty, user, display-manager).
    Protected {
        class: String,
    },
    RefuseManualStop,
    RefuseManualStart,
    /// `X-RestartIfChanged=no`
    RestartIfChangedOff,
    /// `X-OnlyManualStart=yes`
    OnlyManualStart,
    /// `X-StopOnRemoval=no`
    StopOnRemovalOff,
    /// A per-connection instance of an `Accept=yes` socket: new connections get the new code.
    PerConnectionInstance,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAction {
    pub unit: String,
    pub action: Action,
    pub reasons: Vec<Reason>,
}

/// The protection class of units never restarted live, if `unit` is one.
pub fn protected_class(unit: &str) -> Option<&'static str> {
    const CLASSES: &[(&str, &[&str])] = &[
        (
            "dbus",
            &["dbus.service", "dbus-broker.service", "dbus-daemon.service"],
        ),
        ("logind", &["systemd-logind.service"]),
        (
            "getty",
            &[
                "getty@*.service",
                "serial-getty@*.service",
                "autovt@*.service",
                "container-getty@*.service",
                "console-getty.service",
            ],
        ),
        ("user", &["user@*.service", "session-*.scope"]),
        (
            "display_manager",
            &[
                "display-manager.service",
                "gdm.service",
                "sddm.service",
                "lightdm.service",
                "greetd.service",
                "xdm.service",
                "lxdm.service",
            ],
        ),
    ];
    CLASSES
        .iter()
        .find(|(_, pats)| pats.iter().any(|p| glob_match(p, unit)))
        .map(|(class, _)| *class)
}

/// `*` matches any run of characters; everything else literally.
fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|i| rest.is_char_boundary(*i))
                .any(|i| glob_match(tail, &rest[i..]))
        }
    }
}

/// Whether `unit` is one of ostree's units for a staged deployment, which a switch never
/// stops or restarts:
/// - `ostree-finalize-staged.service` (`Type=oneshot`, `RemainAfterExit=yes`) finalizes the
///   staged deployment in its `ExecStop=`: stopping or restarting it writes the bootloader
///   entries now, mid-switch, instead of at shutdown;
/// - `ostree-finalize-staged-hold.service` runs `ostree admin finalize-staged --hold`, which
///   staging starts: it loads the sysroot (holding `/boot` open) and then only waits in
///   `pause()` for the SIGTERM of shutdown. It maps libostree, libglib, libssl, zlib… so any
///   update of those makes it "stale", yet it runs none of that code again; restarting it
///   releases `/boot` (an automounted `/boot` may then expire before the finalize step needs
///   it) and gains nothing.
pub fn ostree_staging_unit(unit: &str) -> bool {
    matches!(
        unit,
        "ostree-finalize-staged.service" | "ostree-finalize-staged-hold.service"
    )
}

fn unit_type(unit: &str) -> &str {
    unit.rsplit_once('.').map_or("", |(_, s)| s)
}

fn is_instance(unit: &str) -> bool {
    unit.split_once('@')
        .is_some_and(|(_, rest)| !rest.starts_with('.'))
}

/// What is wanted of one unit before resolution.
#[derive(Debug, Default)]
struct Wants {
    stop: bool,
    reexec: bool,
    reload: bool,
    restart: bool,
    start: bool,
    needs_restart: bool,
    /// Deferred for a reason that `include` can lift.
    deferred_by_name: Option<DeferWhy>,
    /// Deferred for a reason `include` cannot lift.
    deferred: Option<DeferWhy>,
    reasons: Vec<Reason>,
    flags: Option<UnitFlags>,
}

impl Wants {
    fn reason(&mut self, r: Reason) {
        if !self.reasons.contains(&r) {
            self.reasons.push(r);
        }
    }
}

/// Decide the service actions. See the module documentation for the rules. Long because the
/// rules are applied in their documented order of precedence in one pass; splitting it by rule
/// would hide that order (a candidate for splitting per input: unit changes, stale processes).
pub fn decide(
    changes: &[UnitFileChange],
    stale: &[StaleProcess],
    facts: &[UnitFacts],
    options: &DecideOptions,
) -> Vec<ServiceAction> {
    let facts: BTreeMap<&str, &UnitFacts> = facts.iter().map(|f| (f.name.as_str(), f)).collect();
    let active = |u: &str| facts.get(u).is_some_and(|f| f.is_active());
    let mut units: BTreeMap<String, Wants> = BTreeMap::new();

    // 1. Unit file changes.
    for ch in changes {
        let paths: Vec<PathBuf> = ch.files.iter().map(|f| f.path.clone()).collect();
        // The concrete active units this entry covers.
        let targets: Vec<&str> = facts
            .keys()
            .copied()
            .filter(|u| unit_pattern_matches(&ch.unit, u) && active(u))
            .filter(|u| !ostree_staging_unit(u))
            .collect();
        match &ch.change {
            UnitChange::Modified { comparison } if !comparison.is_equal() => {
                for t in targets {
                    let w = units.entry(t.to_string()).or_default();
                    w.reason(Reason::UnitFileChanged {
                        unit: ch.unit.clone(),
                        paths: paths.clone(),
                        comparison: comparison.clone(),
                    });
                    if ch.unit == t {
                        w.flags = Some(ch.flags.clone());
                    }
                    let reload_only = matches!(comparison, UnitComparison::NeedsReload { .. });
                    match unit_type(t) {
                        "target" | "path" | "slice" | "device" | "scope" => {}
                        "mount" | "automount" | "swap" => {
                            if reload_only && unit_type(t) == "mount" {
                                w.reload = true;
                            } else {
                                w.needs_restart = true;
                            }
                        }
                        "service" => {
                            if !ch.flags.restart_if_changed {
                                w.deferred = Some(DeferWhy::RestartIfChangedOff);
                            } else if ch.flags.only_manual_start {
                                w.deferred = Some(DeferWhy::OnlyManualStart);
                            }
                            if reload_only || ch.flags.reload_if_changed {
                                w.reload = true;
                            } else {
                                w.restart = true;
                            }
                        }
                        _ => {
                            // socket, timer: no process state worth keeping; reload does not
                            // apply to them.
                            w.restart = true;
                        }
                    }
                }
            }
            UnitChange::Modified { .. } | UnitChange::Added | UnitChange::Disabled { .. } => {}
            UnitChange::Removed { masked } => {
                for t in targets {
                    let w = units.entry(t.to_string()).or_default();
                    w.reason(Reason::UnitRemoved {
                        paths: paths.clone(),
                        masked: *masked,
                    });
                    if ch.flags.stop_on_removal {
                        w.stop = true;
                    } else {
                        w.deferred = Some(DeferWhy::StopOnRemovalOff);
                        w.stop = true;
                    }
                }
            }
            UnitChange::Enabled { by, .. } => {
                if active(by) && !active(&ch.unit) && !ch.unit.contains("@.") {
                    let w = units.entry(ch.unit.clone()).or_default();
                    w.reason(Reason::NewlyEnabled { by: by.clone() });
                    w.start = true;
                    if ch.flags.refuse_manual_start {
                        w.deferred = Some(DeferWhy::RefuseManualStart);
                    }
                }
            }
        }
    }

    // 2. Stale processes.
    for p in stale {
        let (unit, runnable) = match &p.owner {
            ProcessOwner::Pid1 => (PID1_UNIT.to_string(), true),
            ProcessOwner::SystemUnit { unit } => (unit.clone(), unit_type(unit) == "service"),
            ProcessOwner::User { unit } => (unit.clone(), false),
            ProcessOwner::Other { cgroup } => (cgroup.clone(), false),
        };
        if let ProcessOwner::SystemUnit { unit } = &p.owner {
            if ostree_staging_unit(unit) {
                continue;
            }
            // The process is there, but systemd says the unit is down: nothing to restart.
            if facts
                .get(unit.as_str())
                .is_some_and(|f| matches!(f.active_state.as_str(), "inactive" | "failed"))
            {
                continue;
            }
        }
        let w = units.entry(unit).or_default();
        for f in &p.files {
            let (pid, path) = (p.pid, f.path.clone());
            w.reason(match f.kind {
                StaleKind::Exe => Reason::StaleExe { pid, path },
                StaleKind::Mapping => Reason::StaleMapping { pid, path },
                StaleKind::Script => Reason::StaleScript { pid, path },
            });
        }
        match (&p.owner, runnable) {
            (ProcessOwner::Pid1, _) => w.reexec = true,
            (_, true) => w.restart = true,
            (_, false) => w.needs_restart = true,
        }
    }

    // 3. Socket activation.
    let services: Vec<String> = units
        .iter()
        .filter(|(u, w)| unit_type(u) == "service" && w.restart && !w.stop)
        .map(|(u, _)| u.clone())
        .collect();
    for svc in services {
        let Some(f) = facts.get(svc.as_str()) else {
            continue;
        };
        let sockets: Vec<&String> = f
            .triggered_by
            .iter()
            .filter(|s| unit_type(s) == "socket")
            .collect();
        if sockets.is_empty() {
            continue;
        }
        let w = units.get_mut(&svc).expect("collected above");
        if is_instance(&svc) && !f.wanted_by_active_target {
            w.restart = false;
            w.deferred = Some(DeferWhy::PerConnectionInstance);
            w.needs_restart = true;
            continue;
        }
        let not_socket_activated = w.flags.as_ref().is_some_and(|fl| fl.not_socket_activated);
        let active_sockets: Vec<&String> = sockets.into_iter().filter(|s| active(s)).collect();
        if not_socket_activated || f.wanted_by_active_target || active_sockets.is_empty() {
            continue;
        }
        w.restart = false;
        w.stop = true;
        for s in &active_sockets {
            w.reason(Reason::ActivatedBySocket {
                socket: s.to_string(),
            });
        }
        for s in active_sockets {
            let sw = units.entry(s.clone()).or_default();
            sw.restart = true;
            sw.reason(Reason::SocketActivates {
                service: svc.clone(),
            });
        }
    }
    // A socket being restarted: the active services it triggers hold its listening socket.
    let restarting_sockets: Vec<String> = units
        .iter()
        .filter(|(u, w)| unit_type(u) == "socket" && w.restart)
        .map(|(u, _)| u.clone())
        .collect();
    for sock in restarting_sockets {
        for f in facts.values() {
            if f.triggered_by.contains(&sock) && f.is_active() && !is_instance(&f.name) {
                let w = units.entry(f.name.clone()).or_default();
                if !w.stop {
                    w.stop = true;
                    w.restart = false;
                }
                w.reason(Reason::SocketRestarted {
                    socket: sock.clone(),
                });
            }
        }
    }

    // 4. Resolve one action per unit, applying deferral.
    let included = |u: &str| options.include.iter().any(|p| glob_match(p, u));
    let mut out = Vec::new();
    for (unit, mut w) in units {
        let action = if w.reexec {
            Action::DaemonReexec
        } else if w.stop {
            Action::Stop
        } else if w.restart {
            Action::Restart
        } else if w.reload {
            Action::Reload
        } else if w.start {
            Action::Start
        } else if w.needs_restart {
            Action::NeedsRestart
        } else {
            continue;
        };
        let f = facts.get(unit.as_str());
        if matches!(action, Action::Stop | Action::Restart) {
            if let Some(class) = protected_class(&unit) {
                w.deferred_by_name = Some(DeferWhy::Protected {
                    class: class.to_string(),
                });
            }
            if f.is_some_and(|f| f.refuse_manual_stop)
                || w.flags.as_ref().is_some_and(|fl| fl.refuse_manual_stop)
            {
                w.deferred = Some(DeferWhy::RefuseManualStop);
            }
        }
        if action == Action::Start && f.is_some_and(|f| f.refuse_manual_start) {
            w.deferred = Some(DeferWhy::RefuseManualStart);
        }
        if action == Action::Reload {
            // Deferral flags are about restarts; a reload is what they ask for instead.
            w.deferred = None;
        }
        let deferred = w
            .deferred
            .clone()
            .or_else(|| w.deferred_by_name.clone().filter(|_| !included(&unit)));
        let action = match deferred {
            Some(why) => {
                w.reason(Reason::Deferred { why });
                if action == Action::NeedsRestart {
                    Action::NeedsRestart
                } else {
                    Action::Deferred
                }
            }
            None => action,
        };
        out.push(ServiceAction {
            unit,
            action,
            reasons: w.reasons,
        });
    }
    out.sort_by(|a, b| a.action.cmp(&b.action).then_with(|| a.unit.cmp(&b.unit)));
    out
}

/// The units an action list touches, by action (handy for summaries and assertions).
pub fn by_action(actions: &[ServiceAction]) -> BTreeMap<Action, BTreeSet<String>> {
    let mut m: BTreeMap<Action, BTreeSet<String>> = BTreeMap::new();
    for a in actions {
        m.entry(a.action).or_default().insert(a.unit.clone());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::stale::{StaleFile, StaleWhy};
    use crate::units::changes::{Dependency, FileChange};
    use crate::units::compare::{Change, KeyChange};

    fn fact(name: &str, state: &str) -> UnitFacts {
        UnitFacts {
            name: name.into(),
            active_state: state.into(),
            sub_state: if state == "active" { "running" } else { "dead" }.into(),
            ..Default::default()
        }
    }

    fn restart_cmp() -> UnitComparison {
        UnitComparison::NeedsRestart {
            reason: KeyChange {
                section: "Service".into(),
                key: Some("ExecStart".into()),
                change: Change::Modified,
            },
        }
    }

    fn reload_cmp() -> UnitComparison {
        UnitComparison::NeedsReload {
            reason: KeyChange {
                section: "Service".into(),
                key: Some("ExecReload".into()),
                change: Change::Modified,
            },
        }
    }

    fn change(unit: &str, change: UnitChange) -> UnitFileChange {
        UnitFileChange {
            unit: unit.into(),
            change,
            files: vec![FileChange {
                path: PathBuf::from(format!("/usr/lib/systemd/system/{unit}")),
                change: Change::Modified,
            }],
            flags: UnitFlags::default(),
        }
    }

    fn modified(unit: &str, c: UnitComparison) -> UnitFileChange {
        change(unit, UnitChange::Modified { comparison: c })
    }

    fn stale_in(pid: u32, owner: ProcessOwner, kind: StaleKind, path: &str) -> StaleProcess {
        StaleProcess {
            pid,
            comm: "x".into(),
            cgroup: String::new(),
            owner,
            files: vec![StaleFile {
                kind,
                path: path.into(),
                why: StaleWhy::Replaced,
            }],
        }
    }

    fn sys(unit: &str) -> ProcessOwner {
        ProcessOwner::SystemUnit { unit: unit.into() }
    }

    fn summary(actions: &[ServiceAction]) -> Vec<(String, Action)> {
        actions.iter().map(|a| (a.unit.clone(), a.action)).collect()
    }

    fn s(v: &[(&str, Action)]) -> Vec<(String, Action)> {
        v.iter().map(|(u, a)| (u.to_string(), *a)).collect()
    }

    struct Case {
        name: &'static str,
        changes: Vec<UnitFileChange>,
        stale: Vec<StaleProcess>,
        facts: Vec<UnitFacts>,
        include: Vec<&'static str>,
        want: Vec<(&'static str, Action)>,
    }

    #[test]
    fn table() {
        use Action::*;
        let socket_fact = |svc: &str, sock: &str| UnitFacts {
            triggered_by: vec![sock.into()],
            ..fact(svc, "active")
        };
        let cases = vec![
            Case {
                name: "changed active service restarts, inactive one does not",
                changes: vec![
                    modified("a.service", restart_cmp()),
                    modified("b.service", restart_cmp()),
                ],
                stale: vec![],
                facts: vec![fact("a.service", "active"), fact("b.service", "inactive")],
                include: vec![],
                want: vec![("a.service", Restart)],
            },
            Case {
                name: "cosmetic change does nothing; reload-only change reloads",
                changes: vec![
                    modified("a.service", UnitComparison::Equal),
                    modified("b.service", reload_cmp()),
                ],
                stale: vec![],
                facts: vec![fact("a.service", "active"), fact("b.service", "active")],
                include: vec![],
                want: vec![("b.service", Reload)],
            },
            Case {
                // Seen on a real security update (libssl3, zlib1g, …): staging starts
                // `ostree admin finalize-staged --hold`, which maps those libraries.
                name: "ostree's staging units are never restarted, stale or changed",
                changes: vec![
                    modified("ostree-finalize-staged.service", restart_cmp()),
                    modified("ostree-finalize-staged-hold.service", restart_cmp()),
                ],
                stale: vec![
                    stale_in(
                        90,
                        sys("ostree-finalize-staged-hold.service"),
                        StaleKind::Mapping,
                        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                    ),
                    stale_in(
                        91,
                        sys("ssh.service"),
                        StaleKind::Mapping,
                        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                    ),
                ],
                facts: vec![
                    fact("ostree-finalize-staged.service", "active"),
                    fact("ostree-finalize-staged-hold.service", "active"),
                    fact("ssh.service", "active"),
                ],
                include: vec![],
                want: vec![("ssh.service", Restart)],
            },
            Case {
                name: "reload and stale exe merge into one restart",
                changes: vec![modified("b.service", reload_cmp())],
                stale: vec![stale_in(7, sys("b.service"), StaleKind::Exe, "/usr/bin/b")],
                facts: vec![fact("b.service", "active")],
                include: vec![],
                want: vec![("b.service", Restart)],
            },
            Case {
                name: "removed active unit stops; removed inactive unit ignored",
                changes: vec![
                    change("gone.service", UnitChange::Removed { masked: false }),
                    change("idle.service", UnitChange::Removed { masked: true }),
                ],
                stale: vec![],
                facts: vec![
                    fact("gone.service", "active"),
                    fact("idle.service", "inactive"),
                ],
                include: vec![],
                want: vec![("gone.service", Stop)],
            },
            Case {
                name: "newly enabled under an active target starts; under an inactive one not",
                changes: vec![
                    change(
                        "new.service",
                        UnitChange::Enabled {
                            by: "multi-user.target".into(),
                            dependency: Dependency::Wants,
                        },
                    ),
                    change(
                        "gfx.service",
                        UnitChange::Enabled {
                            by: "graphical.target".into(),
                            dependency: Dependency::Wants,
                        },
                    ),
                    change("new.service", UnitChange::Added),
                ],
                stale: vec![],
                facts: vec![
                    fact("multi-user.target", "active"),
                    fact("graphical.target", "inactive"),
                ],
                include: vec![],
                want: vec![("new.service", Start)],
            },
            Case {
                name: "stale library restarts only the owning unit",
                changes: vec![],
                stale: vec![
                    stale_in(
                        10,
                        sys("a.service"),
                        StaleKind::Mapping,
                        "/usr/lib/libz.so.1",
                    ),
                    stale_in(
                        11,
                        sys("a.service"),
                        StaleKind::Mapping,
                        "/usr/lib/libz.so.1",
                    ),
                ],
                facts: vec![fact("a.service", "active"), fact("b.service", "active")],
                include: vec![],
                want: vec![("a.service", Restart)],
            },
            Case {
                name: "pid 1 re-execs; user processes are reported only",
                changes: vec![],
                stale: vec![
                    stale_in(
                        1,
                        ProcessOwner::Pid1,
                        StaleKind::Mapping,
                        "/usr/lib/systemd/libsystemd-shared-255.so",
                    ),
                    stale_in(
                        900,
                        ProcessOwner::User {
                            unit: "session-3.scope".into(),
                        },
                        StaleKind::Exe,
                        "/usr/bin/bash",
                    ),
                    stale_in(
                        901,
                        ProcessOwner::User {
                            unit: "user@1000.service".into(),
                        },
                        StaleKind::Exe,
                        "/usr/lib/systemd/systemd",
                    ),
                ],
                facts: vec![],
                include: vec![],
                want: vec![
                    ("init.scope", DaemonReexec),
                    ("session-3.scope", NeedsRestart),
                    ("user@1000.service", NeedsRestart),
                ],
            },
            Case {
                name: "protected units are deferred, include lifts it",
                changes: vec![
                    modified("dbus-broker.service", restart_cmp()),
                    modified("systemd-logind.service", restart_cmp()),
                    modified("getty@.service", restart_cmp()),
                    modified("gdm.service", restart_cmp()),
                ],
                stale: vec![],
                facts: vec![
                    fact("dbus-broker.service", "active"),
                    fact("systemd-logind.service", "active"),
                    fact("getty@tty1.service", "active"),
                    fact("getty@tty2.service", "active"),
                    fact("gdm.service", "active"),
                ],
                include: vec!["getty@tty2.service"],
                want: vec![
                    ("getty@tty2.service", Restart),
                    ("dbus-broker.service", Deferred),
                    ("gdm.service", Deferred),
                    ("getty@tty1.service", Deferred),
                    ("systemd-logind.service", Deferred),
                ],
            },
            Case {
                name: "reload of a protected unit is fine",
                changes: vec![modified("dbus.service", reload_cmp())],
                stale: vec![],
                facts: vec![fact("dbus.service", "active")],
                include: vec![],
                want: vec![("dbus.service", Reload)],
            },
            Case {
                name: "RefuseManualStop stays deferred even when included",
                changes: vec![],
                stale: vec![stale_in(5, sys("x.service"), StaleKind::Exe, "/usr/bin/x")],
                facts: vec![UnitFacts {
                    refuse_manual_stop: true,
                    ..fact("x.service", "active")
                }],
                include: vec!["x.service"],
                want: vec![("x.service", Deferred)],
            },
            Case {
                name: "socket-activated service: stop it, restart the socket",
                changes: vec![modified("cups.service", restart_cmp())],
                stale: vec![],
                facts: vec![
                    socket_fact("cups.service", "cups.socket"),
                    fact("cups.socket", "active"),
                ],
                include: vec![],
                want: vec![("cups.service", Stop), ("cups.socket", Restart)],
            },
            Case {
                name: "socket-triggered service also wanted by an active target restarts itself",
                changes: vec![],
                stale: vec![stale_in(
                    3,
                    sys("udevd.service"),
                    StaleKind::Exe,
                    "/usr/bin/udevadm",
                )],
                facts: vec![
                    UnitFacts {
                        wanted_by_active_target: true,
                        ..socket_fact("udevd.service", "udevd-control.socket")
                    },
                    fact("udevd-control.socket", "active"),
                ],
                include: vec![],
                want: vec![("udevd.service", Restart)],
            },
            Case {
                name: "per-connection instance is reported, not killed",
                changes: vec![],
                stale: vec![stale_in(
                    4,
                    sys("sshd@3-10.0.0.1:22-10.0.0.2:5555.service"),
                    StaleKind::Exe,
                    "/usr/sbin/sshd",
                )],
                facts: vec![
                    socket_fact("sshd@3-10.0.0.1:22-10.0.0.2:5555.service", "sshd.socket"),
                    fact("sshd.socket", "active"),
                ],
                include: vec![],
                want: vec![("sshd@3-10.0.0.1:22-10.0.0.2:5555.service", NeedsRestart)],
            },
            Case {
                name: "changed socket restarts and stops the service holding it",
                changes: vec![modified("foo.socket", restart_cmp())],
                stale: vec![],
                facts: vec![
                    fact("foo.socket", "active"),
                    socket_fact("foo.service", "foo.socket"),
                ],
                include: vec![],
                want: vec![("foo.service", Stop), ("foo.socket", Restart)],
            },
            Case {
                name:
                    "targets, slices and paths are not restarted; mounts are remounted or reported",
                changes: vec![
                    modified("multi-user.target", restart_cmp()),
                    modified("system.slice", restart_cmp()),
                    modified("srv.mount", restart_cmp()),
                    modified(
                        "data.mount",
                        UnitComparison::NeedsReload {
                            reason: KeyChange {
                                section: "Mount".into(),
                                key: Some("Options".into()),
                                change: Change::Modified,
                            },
                        },
                    ),
                    modified("logrotate.timer", restart_cmp()),
                ],
                stale: vec![],
                facts: vec![
                    fact("multi-user.target", "active"),
                    fact("system.slice", "active"),
                    fact("srv.mount", "active"),
                    fact("data.mount", "active"),
                    fact("logrotate.timer", "active"),
                ],
                include: vec![],
                want: vec![
                    ("data.mount", Reload),
                    ("logrotate.timer", Restart),
                    ("srv.mount", NeedsRestart),
                ],
            },
            Case {
                name: "type-level drop-in restarts every active service it covers",
                changes: vec![modified("*.service", restart_cmp())],
                stale: vec![],
                facts: vec![
                    fact("a.service", "active"),
                    fact("b.service", "inactive"),
                    fact("c.socket", "active"),
                ],
                include: vec![],
                want: vec![("a.service", Restart)],
            },
            Case {
                name: "stale process of a unit systemd reports as failed is ignored",
                changes: vec![],
                stale: vec![stale_in(
                    8,
                    sys("dead.service"),
                    StaleKind::Exe,
                    "/usr/bin/d",
                )],
                facts: vec![fact("dead.service", "failed")],
                include: vec![],
                want: vec![],
            },
        ];
        for c in cases {
            let got = decide(
                &c.changes,
                &c.stale,
                &c.facts,
                &DecideOptions {
                    include: c.include.iter().map(|s| s.to_string()).collect(),
                },
            );
            assert_eq!(summary(&got), s(&c.want), "case {:?}: {got:#?}", c.name);
        }
    }

    #[test]
    fn x_keys_are_honoured() {
        let mut keep = modified("keep.service", restart_cmp());
        keep.flags.restart_if_changed = false;
        let mut rel = modified("rel.service", restart_cmp());
        rel.flags.reload_if_changed = true;
        let mut stay = change("stay.service", UnitChange::Removed { masked: false });
        stay.flags.stop_on_removal = false;
        let mut refuse = change(
            "nostart.service",
            UnitChange::Enabled {
                by: "multi-user.target".into(),
                dependency: Dependency::Wants,
            },
        );
        refuse.flags.refuse_manual_start = true;
        let got = decide(
            &[keep, rel, stay, refuse],
            &[],
            &[
                fact("keep.service", "active"),
                fact("rel.service", "active"),
                fact("stay.service", "active"),
                fact("multi-user.target", "active"),
            ],
            &DecideOptions::default(),
        );
        assert_eq!(
            summary(&got),
            s(&[
                ("rel.service", Action::Reload),
                ("keep.service", Action::Deferred),
                ("nostart.service", Action::Deferred),
                ("stay.service", Action::Deferred),
            ])
        );
        let keep = got.iter().find(|a| a.unit == "keep.service").unwrap();
        assert!(keep.reasons.contains(&Reason::Deferred {
            why: DeferWhy::RestartIfChangedOff
        }));
    }

    #[test]
    fn reasons_are_merged_and_deduplicated() {
        let got = decide(
            &[modified("a.service", restart_cmp())],
            &[
                stale_in(10, sys("a.service"), StaleKind::Exe, "/usr/bin/a"),
                stale_in(10, sys("a.service"), StaleKind::Exe, "/usr/bin/a"),
                stale_in(11, sys("a.service"), StaleKind::Script, "/usr/lib/a.py"),
            ],
            &[fact("a.service", "active")],
            &DecideOptions::default(),
        );
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].reasons,
            vec![
                Reason::UnitFileChanged {
                    unit: "a.service".into(),
                    paths: vec!["/usr/lib/systemd/system/a.service".into()],
                    comparison: restart_cmp(),
                },
                Reason::StaleExe {
                    pid: 10,
                    path: "/usr/bin/a".into()
                },
                Reason::StaleScript {
                    pid: 11,
                    path: "/usr/lib/a.py".into()
                },
            ]
        );
        let json = serde_json::to_value(&got[0]).unwrap();
        assert_eq!(json["action"], "restart");
        assert_eq!(json["reasons"][1]["kind"], "stale_exe");
    }

    #[test]
    fn deterministic_order() {
        let facts: Vec<UnitFacts> = [
            "z.service",
            "a.service",
            "m.service",
            "gone.service",
            "r.service",
        ]
        .iter()
        .map(|u| fact(u, "active"))
        .collect();
        let changes = vec![
            modified("z.service", restart_cmp()),
            modified("a.service", restart_cmp()),
            modified("r.service", reload_cmp()),
            change("gone.service", UnitChange::Removed { masked: false }),
            modified("m.service", restart_cmp()),
        ];
        let a = decide(&changes, &[], &facts, &DecideOptions::default());
        let mut rev = changes.clone();
        rev.reverse();
        let b = decide(&rev, &[], &facts, &DecideOptions::default());
        assert_eq!(a, b);
        assert_eq!(
            summary(&a),
            s(&[
                ("gone.service", Action::Stop),
                ("r.service", Action::Reload),
                ("a.service", Action::Restart),
                ("m.service", Action::Restart),
                ("z.service", Action::Restart),
            ])
        );
    }

    #[test]
    fn globs_and_classes() {
        assert!(glob_match("getty@*.service", "getty@tty1.service"));
        assert!(!glob_match("getty@*.service", "serial-getty@ttyS0.service"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert_eq!(protected_class("serial-getty@ttyS0.service"), Some("getty"));
        assert_eq!(protected_class("session-4.scope"), Some("user"));
        assert_eq!(protected_class("sshd.service"), None);
    }
}
