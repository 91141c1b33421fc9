//! After a reboot: undo the `/etc` changes of a live apply that did not survive it.
//!
//! A live apply binds the new `/usr` (gone with the boot) and merges `/etc` (persistent). If the
//! host then boots the *old* deployment again — a power cut or crash before the staged
//! deployment was finalized, or an admin who dropped it — that `/etc` holds defaults of a
//! `/usr` that no longer runs. `fastswitch-recover.service` runs [`recover`] early at boot: it
//! reads the persistent record `/var/lib/fastswitch/state.json` and, when the booted
//! deployment is the one the apply started from, restores the backups. When the new deployment
//! booted, its `/etc` was merged from the live one at finalization, so the record is dropped.

use super::etc_apply;
use super::journal::Journal;
use crate::exit::ExitCode;
use anyhow::Result;
use serde::Serialize;
use std::path::Path;

pub const RECOVER_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoverAction {
    /// No record, or the record belongs to this boot (use `reset` for that).
    None,
    /// The old deployment booted: its `/etc` was restored from the backups.
    RestoredEtc,
    /// The live apply's target booted: nothing to undo.
    TargetBooted,
    /// Some third deployment booted: the record no longer applies to the running `/etc`.
    OtherDeploymentBooted,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecoverReport {
    pub schema_version: u32,
    pub action: RecoverAction,
    /// Boot id of the boot that made the changes.
    pub record_boot_id: Option<String>,
    pub record_booted: Option<String>,
    pub record_target: Option<String>,
    pub booted: String,
    pub restored: usize,
    /// Entries changed after the live apply (by the admin); left as they are.
    pub kept_admin_changes: Vec<String>,
    pub duration_ms: u64,
    pub outcome: ExitCode,
    pub exit_code: i32,
}

/// Undo (or drop) a persistent record from an earlier boot. `etc_dir` is the live `/etc`,
/// `booted_id` the booted deployment's `<checksum>.<serial>`.
pub(crate) fn recover(journal: &Journal, etc_dir: &Path, booted_id: &str) -> Result<RecoverReport> {
    let t0 = std::time::Instant::now();
    let mut rep = RecoverReport {
        schema_version: RECOVER_SCHEMA_VERSION,
        action: RecoverAction::None,
        record_boot_id: None,
        record_booted: None,
        record_target: None,
        booted: booted_id.to_owned(),
        restored: 0,
        kept_admin_changes: vec![],
        duration_ms: 0,
        outcome: ExitCode::NothingToDo,
        exit_code: ExitCode::NothingToDo.code(),
    };
    let Some(st) = journal.stale_persistent()? else {
        return Ok(rep);
    };
    journal.check_backups(&st)?;
    rep.record_boot_id = Some(st.boot_id.clone());
    rep.record_booted = Some(st.booted.clone());
    rep.record_target = Some(st.target.clone());
    rep.action = if booted_id == st.booted {
        for b in st.etc_backups.iter().rev() {
            match etc_apply::restore(etc_dir, b)? {
                Ok(()) => rep.restored += 1,
                Err(path) => rep.kept_admin_changes.push(path),
            }
        }
        RecoverAction::RestoredEtc
    } else if booted_id == st.target {
        RecoverAction::TargetBooted
    } else {
        RecoverAction::OtherDeploymentBooted
    };
    // Only the persistent record and backups: this boot's /run state is not touched.
    journal.clear_persistent()?;
    rep.outcome = ExitCode::Ok;
    rep.exit_code = ExitCode::Ok.code();
    rep.duration_ms = t0.elapsed().as_millis() as u64;
    Ok(rep)
}

impl RecoverReport {
    pub fn write_human(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        use super::report::short;
        let rec = format!(
            "the live apply of {} (from {}, boot {})",
            short(self.record_target.as_deref().unwrap_or("?")),
            short(self.record_booted.as_deref().unwrap_or("?")),
            self.record_boot_id.as_deref().unwrap_or("?"),
        );
        match self.action {
            RecoverAction::None => writeln!(
                out,
                "nothing to recover: no /etc changes left by a live apply of an earlier boot"
            )?,
            RecoverAction::RestoredEtc => {
                writeln!(
                    out,
                    "{} booted again: restored {} /etc path(s) changed by {rec}",
                    short(&self.booted),
                    self.restored
                )?;
                for k in &self.kept_admin_changes {
                    writeln!(out, "  kept {k}: it was changed after the live apply")?;
                }
            }
            RecoverAction::TargetBooted => writeln!(
                out,
                "{} booted: {rec} became permanent; nothing to undo",
                short(&self.booted)
            )?,
            RecoverAction::OtherDeploymentBooted => writeln!(
                out,
                "{} booted, neither side of {rec}; dropped its record, /etc left alone",
                short(&self.booted)
            )?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::journal::{EtcBackup, LiveState, STATE_SCHEMA_VERSION};

    /// A record from boot "boot-a": /etc/new.conf added by the apply, /etc/old.conf replaced.
    fn setup(d: &Path) -> std::path::PathBuf {
        let etc = d.join("root/etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("new.conf"), "added\n").unwrap();
        std::fs::write(etc.join("old.conf"), "new default\n").unwrap();
        let j = Journal::new(&d.join("run"), &d.join("root"), "boot-a");
        let backup = j.backup_dir().join("old.conf");
        std::fs::create_dir_all(backup.parent().unwrap()).unwrap();
        std::fs::write(&backup, "original\n").unwrap();
        let st = LiveState {
            schema_version: STATE_SCHEMA_VERSION,
            booted: "old.0".into(),
            target: "new.0".into(),
            target_path: "/x".into(),
            started_at: 1,
            finished_at: Some(2),
            steps: vec![],
            usr_binds: 1,
            etc_backups: vec![
                EtcBackup {
                    path: "/etc/new.conf".into(),
                    backup: None,
                    written: etc_apply::fingerprint(&etc.join("new.conf")),
                },
                EtcBackup {
                    path: "/etc/old.conf".into(),
                    backup: Some(backup),
                    written: etc_apply::fingerprint(&etc.join("old.conf")),
                },
            ],
            unit_actions: vec![],
            boot_id: String::new(),
            resetting: false,
            usr_source: None,
            usr_composefs: false,
        };
        j.save(&st).unwrap();
        etc
    }

    fn next_boot(d: &Path, id: &str) -> Journal {
        // /run is a tmpfs: gone with the boot.
        let _ = std::fs::remove_dir_all(d.join("run"));
        Journal::new(&d.join("run"), &d.join("root"), id)
    }

    #[test]
    fn same_boot_is_not_recovered() {
        let d = tempfile::tempdir().unwrap();
        let etc = setup(d.path());
        let j = Journal::new(&d.path().join("run"), &d.path().join("root"), "boot-a");
        let r = recover(&j, &etc, "old.0").unwrap();
        assert_eq!(r.action, RecoverAction::None);
        assert_eq!(r.exit_code, 3);
        assert!(j.persistent_state_path().exists(), "record kept for reset");
    }

    #[test]
    fn old_deployment_booted_restores_etc() {
        let d = tempfile::tempdir().unwrap();
        let etc = setup(d.path());
        let j = next_boot(d.path(), "boot-b");
        let r = recover(&j, &etc, "old.0").unwrap();
        assert_eq!(r.action, RecoverAction::RestoredEtc);
        assert_eq!(r.restored, 2);
        assert!(!etc.join("new.conf").exists());
        assert_eq!(
            std::fs::read_to_string(etc.join("old.conf")).unwrap(),
            "original\n"
        );
        assert!(!j.persistent_state_path().exists());
        assert!(!j.backup_dir().exists());
        assert_eq!(recover(&j, &etc, "old.0").unwrap().exit_code, 3);
    }

    #[test]
    fn admin_edit_after_the_apply_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let etc = setup(d.path());
        std::fs::write(etc.join("old.conf"), "admin edit\n").unwrap();
        let j = next_boot(d.path(), "boot-b");
        let r = recover(&j, &etc, "old.0").unwrap();
        assert_eq!(r.kept_admin_changes, ["/etc/old.conf"]);
        assert_eq!(
            std::fs::read_to_string(etc.join("old.conf")).unwrap(),
            "admin edit\n"
        );
    }

    #[test]
    fn target_or_other_booted_drops_the_record_and_keeps_etc() {
        for (booted, want) in [
            ("new.0", RecoverAction::TargetBooted),
            ("third.0", RecoverAction::OtherDeploymentBooted),
        ] {
            let d = tempfile::tempdir().unwrap();
            let etc = setup(d.path());
            let j = next_boot(d.path(), "boot-b");
            let r = recover(&j, &etc, booted).unwrap();
            assert_eq!(r.action, want);
            assert_eq!(r.exit_code, 0);
            assert!(etc.join("new.conf").exists(), "{booted}: /etc untouched");
            assert!(!j.persistent_state_path().exists());
        }
    }
}
