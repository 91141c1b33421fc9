//! The live part of `status`: what the live-apply journal ([`crate::exec::journal`]) and the
//! mounted `/usr` say about a live apply of this boot (or a record of an earlier boot that
//! waits for `fastswitch recover`), as typed JSON and as text lines built side by side.

use crate::discover::HostPaths;
use crate::exec::journal::{Journal, LiveState, StepRecord};
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;

/// Live-apply state for `status`: JSON and human lines.
pub(crate) struct LiveStatus {
    pub(crate) json: LiveJson,
    pub(crate) lines: Vec<String>,
}

/// `status.live` in the JSON. Fields are in alphabetical order: the JSON keeps the key order
/// it had when it was built as a `serde_json::Value` (whose maps sort their keys).
#[derive(Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub(crate) enum LiveJson {
    /// The journal is private to root; this user cannot tell. `readable` is always false.
    Unreadable { readable: bool },
    /// A live apply of an earlier boot left `/etc` changes for `fastswitch recover`.
    EarlierBoot {
        booted: String,
        etc_changes: usize,
        record_boot_id: String,
        /// Always true.
        recover_pending: bool,
        target: String,
    },
    /// This boot's live apply.
    ThisBoot {
        booted: String,
        complete: bool,
        etc_changes: usize,
        finished_at: Option<u64>,
        interrupted_step: Option<String>,
        /// Always false.
        recover_pending: bool,
        resetting: bool,
        started_at: u64,
        #[serde(serialize_with = "sorted_keys")]
        steps: Vec<StepRecord>,
        target: String,
        target_deployment_present: bool,
        usr_is_target: bool,
        usr_source: PathBuf,
    },
}

/// The steps with their keys sorted, as they were printed before `status.live` was typed.
fn sorted_keys<S: serde::Serializer>(steps: &[StepRecord], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::Error;
    serde_json::to_value(steps)
        .map_err(S::Error::custom)?
        .serialize(s)
}

/// The journal is private to root (0700 directories): another user sees that it cannot tell.
fn denied(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    })
}

/// The live state of the host at `paths`: `None` when no live apply happened this boot and no
/// earlier boot's record waits.
pub(crate) fn live_state(paths: &HostPaths) -> Result<Option<LiveStatus>> {
    let journal = Journal::for_host(paths)?;
    let unreadable = || LiveStatus {
        lines: vec![format!(
            "live: unknown (the live-apply journal in {} is readable by root only)",
            journal.dir.display()
        )],
        json: LiveJson::Unreadable { readable: false },
    };
    let loaded = match journal.load() {
        Err(e) if denied(&e) => return Ok(Some(unreadable())),
        other => other?,
    };
    if let Some(st) = loaded {
        // What /usr really shows, not just what the journal says.
        let usr = paths.root.join("usr");
        let usr_is_target = if st.usr_composefs {
            crate::system::mounts::mounts_at(&usr)
                .ok()
                .and_then(|s| s.last().map(|m| m.is_composefs_usr()))
                .unwrap_or(false)
        } else {
            crate::exec::live::same_inode(&usr, &st.usr_shown())
        };
        return Ok(Some(this_boot(&st, usr_is_target)));
    }
    let stale = match journal.stale_persistent() {
        Err(e) if denied(&e) => return Ok(Some(unreadable())),
        other => other?,
    };
    Ok(stale.as_ref().map(earlier_boot))
}

/// A record of an earlier boot's live apply.
fn earlier_boot(old: &LiveState) -> LiveStatus {
    LiveStatus {
        lines: vec![format!(
            "live: a live apply of {} in an earlier boot ({}) left /etc changes; run `fastswitch recover`",
            old.target, old.boot_id
        )],
        json: LiveJson::EarlierBoot {
            booted: old.booted.clone(),
            etc_changes: old.etc_backups.len(),
            record_boot_id: old.boot_id.clone(),
            recover_pending: true,
            target: old.target.clone(),
        },
    }
}

/// This boot's live apply; `usr_is_target`: `/usr` shows the tree the journal names.
fn this_boot(st: &LiveState, usr_is_target: bool) -> LiveStatus {
    let mut lines = vec![format!(
        "live: booted {} running {} since {} (unix time){}",
        st.booted,
        st.target,
        st.started_at,
        if st.is_complete() {
            ""
        } else {
            " — INCOMPLETE"
        }
    )];
    if st.resetting {
        lines.push("live: a reset was interrupted; re-run `fastswitch reset` to finish".into());
    } else if let Some(s) = st.interrupted_step() {
        lines.push(format!(
            "live: interrupted at step {}; re-run `fastswitch apply-live` to finish, or `fastswitch reset`",
            s.name
        ));
    }
    lines.push(format!(
        "live: /usr shows {}; {} /etc path(s) backed up for reset (written by the merge or systemd-sysusers)",
        if usr_is_target {
            "the target"
        } else {
            "the booted deployment"
        },
        st.etc_backups.len()
    ));
    if !st.target_path.is_dir() {
        lines.push(format!(
            "live: the deployment {} is gone (a newer one was staged); /usr shows fastswitch's own copy {}; `fastswitch reset` returns to the booted deployment",
            st.target,
            st.usr_shown().display()
        ));
    }
    let json = LiveJson::ThisBoot {
        booted: st.booted.clone(),
        complete: st.is_complete(),
        etc_changes: st.etc_backups.len(),
        finished_at: st.finished_at,
        interrupted_step: st.interrupted_at(),
        recover_pending: false,
        resetting: st.resetting,
        started_at: st.started_at,
        steps: st.steps.clone(),
        target: st.target.clone(),
        target_deployment_present: st.target_path.is_dir(),
        usr_is_target,
        usr_source: st.usr_shown(),
    };
    LiveStatus { json, lines }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::journal::{EtcBackup, StepStatus, STATE_SCHEMA_VERSION};

    fn state(target_path: PathBuf) -> LiveState {
        LiveState {
            schema_version: STATE_SCHEMA_VERSION,
            booted: "aaa.0".into(),
            target: "bbb.0".into(),
            target_path,
            started_at: 1700,
            finished_at: None,
            steps: vec![
                StepRecord {
                    name: "bind-usr".into(),
                    status: StepStatus::Done,
                    duration_ms: Some(3),
                    detail: None,
                },
                StepRecord {
                    name: "merge-etc".into(),
                    status: StepStatus::Started,
                    duration_ms: None,
                    detail: Some("x".into()),
                },
            ],
            usr_binds: 1,
            etc_backups: vec![EtcBackup {
                path: "passwd".into(),
                backup: None,
                written: None,
            }],
            unit_actions: vec![],
            boot_id: String::new(),
            resetting: false,
            usr_source: None,
            usr_composefs: false,
        }
    }

    /// The typed JSON prints exactly what the `serde_json::json!` it replaced printed.
    #[test]
    fn this_boot_json_is_the_former_untyped_json_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path().to_owned());
        let former = serde_json::json!({
            "booted": st.booted,
            "target": st.target,
            "started_at": st.started_at,
            "finished_at": st.finished_at,
            "complete": st.is_complete(),
            "interrupted_step": st.interrupted_at(),
            "resetting": st.resetting,
            "usr_is_target": true,
            "usr_source": st.usr_shown(),
            "target_deployment_present": st.target_path.is_dir(),
            "etc_changes": st.etc_backups.len(),
            "recover_pending": false,
            "steps": st.steps,
        });
        let got = this_boot(&st, true);
        assert_eq!(
            serde_json::to_string(&got.json).unwrap(),
            serde_json::to_string(&former).unwrap()
        );
        assert_eq!(
            got.lines,
            [
                "live: booted aaa.0 running bbb.0 since 1700 (unix time) — INCOMPLETE".to_owned(),
                "live: interrupted at step merge-etc; re-run `fastswitch apply-live` to finish, or `fastswitch reset`".into(),
                "live: /usr shows the target; 1 /etc path(s) backed up for reset (written by the merge or systemd-sysusers)".into(),
            ]
        );
    }

    #[test]
    fn earlier_boot_json_is_the_former_untyped_json_byte_for_byte() {
        let mut st = state(PathBuf::from("/nonexistent"));
        st.boot_id = "old-boot".into();
        let former = serde_json::json!({
            "booted": st.booted,
            "target": st.target,
            "recover_pending": true,
            "record_boot_id": st.boot_id,
            "etc_changes": st.etc_backups.len(),
        });
        let got = earlier_boot(&st);
        assert_eq!(
            serde_json::to_string(&got.json).unwrap(),
            serde_json::to_string(&former).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&LiveJson::Unreadable { readable: false }).unwrap(),
            r#"{"readable":false}"#
        );
    }

    /// From the journal on disk: nothing, this boot's apply (a gone deployment named), then
    /// only an earlier boot's record.
    #[test]
    fn live_state_reads_the_journal_of_this_boot_and_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let run = dir.path().join("run");
        std::fs::create_dir_all(root.join("usr")).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        let paths = HostPaths::resolve(Some(root.clone()), Some(root.clone()), Some(run.clone()));
        assert!(live_state(&paths).unwrap().is_none());

        let mut st = state(dir.path().join("gone-deployment"));
        st.finished_at = Some(1800);
        st.steps.truncate(1);
        Journal::for_host(&paths).unwrap().save(&st).unwrap();
        let live = live_state(&paths).unwrap().unwrap();
        let LiveJson::ThisBoot {
            complete,
            usr_is_target,
            target_deployment_present,
            interrupted_step,
            ..
        } = live.json
        else {
            panic!("not this boot's: {:?}", live.json)
        };
        assert!(complete && !usr_is_target && !target_deployment_present);
        assert_eq!(interrupted_step, None);
        assert!(live.lines[0].ends_with("(unix time)"), "{:?}", live.lines);
        assert!(live.lines[1].contains("/usr shows the booted deployment"));
        assert!(live.lines[2].contains("bbb.0 is gone"), "{:?}", live.lines);

        // A reboot: /run is empty, the persistent record names another boot.
        std::fs::remove_file(run.join("fastswitch/state.json")).unwrap();
        let earlier = Journal::new(&run, &root, "an-earlier-boot");
        earlier.save(&st).unwrap();
        std::fs::remove_file(run.join("fastswitch/state.json")).unwrap();
        let live = live_state(&paths).unwrap().unwrap();
        assert_eq!(
            live.json,
            LiveJson::EarlierBoot {
                booted: "aaa.0".into(),
                etc_changes: 1,
                record_boot_id: "an-earlier-boot".into(),
                recover_pending: true,
                target: "bbb.0".into(),
            }
        );
        assert!(live.lines[0].contains("run `fastswitch recover`"));
    }
}
