//! Compare two parsed versions of one unit: nothing to do, reload, or restart.
//!
//! Decides, following NixOS switch-to-configuration-ng's `compare_units`:
//! - `[Install]` never matters at runtime (enablement is diffed from `*.wants/` links instead);
//! - cosmetic and manager-only `[Unit]` keys are ignored: `Description`, `Documentation`,
//!   `OnFailure`, `OnSuccess`, `OnFailureJobMode`, `IgnoreOnIsolate`, `StopWhenUnneeded`,
//!   `RefuseManualStart`, `RefuseManualStop`, `AllowIsolate`, `CollectMode`, `SourcePath`, and
//!   every `X-*` key except the two trigger keys;
//! - `[Unit] X-Reload-Triggers` added or changed, `[Service] ExecReload` added or changed, and
//!   `[Mount] Options` changed (a remount) mean **reload**;
//! - removing `ExecReload` (or `X-Reload-Triggers`) means nothing: the running process is
//!   unaffected;
//! - anything else, including `[Unit] X-Restart-Triggers`, means **restart**.
//!
//! One deliberate difference: an empty assignment (`Key=` with nothing after it) is treated as
//! "not set", so a drop-in that only resets an unset list is not a change.
//!
//! The verdict carries the first key (in section/key order) that decided it.

use serde::{Deserialize, Serialize};

use super::parse::Unit;

/// `[Unit]` keys whose change never needs a restart (from switch-to-configuration-ng).
pub(crate) const IGNORED_UNIT_KEYS: &[&str] = &[
    "Description",
    "Documentation",
    "OnFailure",
    "OnSuccess",
    "OnFailureJobMode",
    "IgnoreOnIsolate",
    "StopWhenUnneeded",
    "RefuseManualStart",
    "RefuseManualStop",
    "AllowIsolate",
    "CollectMode",
    "SourcePath",
];

/// What a unit change asks of the running unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum UnitComparison {
    /// No runtime-relevant difference.
    Equal,
    NeedsRestart {
        reason: KeyChange,
    },
    NeedsReload {
        reason: KeyChange,
    },
}

impl UnitComparison {
    pub fn is_equal(&self) -> bool {
        matches!(self, UnitComparison::Equal)
    }
}

/// Which setting differs, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChange {
    pub(crate) section: String,
    /// `None` when a whole (empty) section appeared or disappeared.
    pub(crate) key: Option<String>,
    pub(crate) change: Change,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Change {
    Added,
    Removed,
    Modified,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Effect {
    Nothing,
    Reload,
    Restart,
}

fn effect_of(section: &str, key: &str, change: Change) -> Effect {
    match (section, key, change) {
        ("Install", _, _) => Effect::Nothing,
        ("Unit", "X-Reload-Triggers", Change::Removed) => Effect::Nothing,
        ("Unit", "X-Reload-Triggers", _) => Effect::Reload,
        ("Unit", "X-Restart-Triggers", _) => Effect::Restart,
        ("Unit", k, _) if IGNORED_UNIT_KEYS.contains(&k) || k.starts_with("X-") => Effect::Nothing,
        ("Service", "ExecReload", Change::Removed) => Effect::Nothing,
        ("Service", "ExecReload", _) => Effect::Reload,
        ("Mount", "Options", _) => Effect::Reload,
        _ => Effect::Restart,
    }
}

/// Compare the running unit's definition (`old`) with the target's (`new`).
pub fn compare_units(old: &Unit, new: &Unit) -> UnitComparison {
    let mut first_reload: Option<KeyChange> = None;
    let empty = Default::default();
    let sections: std::collections::BTreeSet<&String> =
        old.sections.keys().chain(new.sections.keys()).collect();
    for section in sections {
        let (o, n) = (old.sections.get(section), new.sections.get(section));
        // A section appearing or vanishing with no keys in it: systemd still treats the unit as
        // different (switch-to-configuration-ng restarts); `[Unit]`/`[Install]` carry nothing.
        if o.is_none() != n.is_none()
            && o.or(n).is_some_and(|s| s.values().all(Vec::is_empty))
            && !matches!(section.as_str(), "Unit" | "Install")
        {
            return UnitComparison::NeedsRestart {
                reason: KeyChange {
                    section: section.clone(),
                    key: None,
                    change: if o.is_none() {
                        Change::Added
                    } else {
                        Change::Removed
                    },
                },
            };
        }
        let (o, n) = (o.unwrap_or(&empty), n.unwrap_or(&empty));
        let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
        for key in keys {
            let ov = o.get(key).filter(|v| !v.is_empty());
            let nv = n.get(key).filter(|v| !v.is_empty());
            let change = match (ov, nv) {
                (None, None) => continue,
                (Some(a), Some(b)) if a == b => continue,
                (Some(_), Some(_)) => Change::Modified,
                (None, Some(_)) => Change::Added,
                (Some(_), None) => Change::Removed,
            };
            let kc = || KeyChange {
                section: section.clone(),
                key: Some(key.clone()),
                change,
            };
            match effect_of(section, key, change) {
                Effect::Nothing => {}
                Effect::Reload => {
                    first_reload.get_or_insert_with(kc);
                }
                Effect::Restart => return UnitComparison::NeedsRestart { reason: kc() },
            }
        }
    }
    match first_reload {
        Some(reason) => UnitComparison::NeedsReload { reason },
        None => UnitComparison::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn u(text: &str) -> Unit {
        Unit::parse(text, Path::new("/t.service")).unwrap()
    }

    fn restart(section: &str, key: Option<&str>, change: Change) -> UnitComparison {
        UnitComparison::NeedsRestart {
            reason: KeyChange {
                section: section.into(),
                key: key.map(Into::into),
                change,
            },
        }
    }

    fn reload(section: &str, key: &str, change: Change) -> UnitComparison {
        UnitComparison::NeedsReload {
            reason: KeyChange {
                section: section.into(),
                key: Some(key.into()),
                change,
            },
        }
    }

    const BASE: &str = "[Unit]\nDescription=Foo\nAfter=network.target\n\n[Service]\nExecStart=/usr/bin/foo\nExecReload=/bin/kill -HUP $MAINPID\n\n[Install]\nWantedBy=multi-user.target\n";

    #[test]
    fn table() {
        use Change::*;
        let cases: &[(&str, &str, &str, UnitComparison)] = &[
            ("identical", BASE, BASE, UnitComparison::Equal),
            (
                "description only",
                BASE,
                &BASE.replace("Description=Foo", "Description=Bar"),
                UnitComparison::Equal,
            ),
            (
                "documentation added, X- key changed",
                BASE,
                &BASE.replace(
                    "Description=Foo",
                    "Description=Foo\nDocumentation=man:foo(8)\nX-Vendor=1",
                ),
                UnitComparison::Equal,
            ),
            (
                "install section only",
                BASE,
                &BASE.replace("multi-user.target", "graphical.target"),
                UnitComparison::Equal,
            ),
            (
                "RefuseManualStop and OnFailure are manager-only",
                BASE,
                &BASE.replace(
                    "After=",
                    "RefuseManualStop=yes\nOnFailure=x.service\nAfter=",
                ),
                UnitComparison::Equal,
            ),
            (
                "ExecStart changed",
                BASE,
                &BASE.replace("/usr/bin/foo", "/usr/bin/foo -v"),
                restart("Service", Some("ExecStart"), Modified),
            ),
            (
                "ordering dependency changed",
                BASE,
                &BASE.replace("After=network.target", "After=network-online.target"),
                restart("Unit", Some("After"), Modified),
            ),
            (
                "ExecReload changed",
                BASE,
                &BASE.replace("-HUP", "-USR1"),
                reload("Service", "ExecReload", Modified),
            ),
            (
                "ExecReload added",
                &BASE.replace("ExecReload=/bin/kill -HUP $MAINPID\n", ""),
                BASE,
                reload("Service", "ExecReload", Added),
            ),
            (
                "ExecReload removed is a no-op",
                BASE,
                &BASE.replace("ExecReload=/bin/kill -HUP $MAINPID\n", ""),
                UnitComparison::Equal,
            ),
            (
                "reload plus restart is restart",
                BASE,
                &BASE
                    .replace("-HUP", "-USR1")
                    .replace("/usr/bin/foo", "/usr/bin/bar"),
                restart("Service", Some("ExecStart"), Modified),
            ),
            (
                "X-Reload-Triggers added",
                BASE,
                &BASE.replace("After=", "X-Reload-Triggers=/a\nAfter="),
                reload("Unit", "X-Reload-Triggers", Added),
            ),
            (
                "X-Reload-Triggers removed is a no-op",
                &BASE.replace("After=", "X-Reload-Triggers=/a\nAfter="),
                BASE,
                UnitComparison::Equal,
            ),
            (
                "X-Restart-Triggers changed",
                &BASE.replace("After=", "X-Restart-Triggers=/a\nAfter="),
                &BASE.replace("After=", "X-Restart-Triggers=/b\nAfter="),
                restart("Unit", Some("X-Restart-Triggers"), Modified),
            ),
            (
                "mount options are a remount",
                "[Mount]\nWhat=/dev/sda1\nWhere=/srv\nOptions=ro\n",
                "[Mount]\nWhat=/dev/sda1\nWhere=/srv\nOptions=rw\n",
                reload("Mount", "Options", Modified),
            ),
            (
                "mount source changed",
                "[Mount]\nWhat=/dev/sda1\nWhere=/srv\n",
                "[Mount]\nWhat=/dev/sdb1\nWhere=/srv\n",
                restart("Mount", Some("What"), Modified),
            ),
            (
                "new section",
                BASE,
                &format!("{BASE}[Socket]\nListenStream=80\n"),
                restart("Socket", Some("ListenStream"), Added),
            ),
            (
                "new empty section",
                BASE,
                &format!("{BASE}[X-Foo]\n"),
                restart("X-Foo", None, Added),
            ),
            (
                "whole [Unit] section with cosmetic keys removed",
                BASE,
                &BASE.replace("[Unit]\nDescription=Foo\nAfter=network.target\n", ""),
                restart("Unit", Some("After"), Removed),
            ),
            (
                "reset of an unset list is not a change",
                BASE,
                &BASE.replace("[Service]\n", "[Service]\nExecStartPre=\n"),
                UnitComparison::Equal,
            ),
            (
                "key removed",
                BASE,
                &BASE.replace("ExecStart=/usr/bin/foo\n", ""),
                restart("Service", Some("ExecStart"), Removed),
            ),
        ];
        for (name, old, new, want) in cases {
            assert_eq!(&compare_units(&u(old), &u(new)), want, "case {name:?}");
        }
    }

    #[test]
    fn order_of_repeated_values_matters() {
        let a = u("[Service]\nExecStartPre=/a\nExecStartPre=/b\n");
        let b = u("[Service]\nExecStartPre=/b\nExecStartPre=/a\n");
        assert!(matches!(
            compare_units(&a, &b),
            UnitComparison::NeedsRestart { .. }
        ));
    }

    #[test]
    fn serialises_snake_case() {
        let c = reload("Service", "ExecReload", Change::Added);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"result":"needs_reload","reason":{"section":"Service","key":"ExecReload","change":"added"}}"#
        );
    }
}
