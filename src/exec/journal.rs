//! The live-apply journal: one JSON file, `<run>/fastswitch/state.json`, rewritten atomically
//! (temp file + fsync + rename) before and after every step. It lives in `/run`, so it is gone
//! after a reboot, exactly like the live `/usr` bind it describes.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const STATE_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Started,
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub status: StepStatus,
    pub duration_ms: Option<u64>,
    pub detail: Option<String>,
}

/// What a live apply changed, so `reset` can undo it and a re-run can converge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveState {
    pub schema_version: u32,
    /// `<checksum>.<serial>` of the booted deployment.
    pub booted: String,
    /// `<checksum>.<serial>` of the deployment now live (or being applied).
    pub target: String,
    /// The target deployment directory whose `usr` is bound over `/usr`.
    pub target_path: PathBuf,
    /// Unix seconds when the apply started.
    pub started_at: u64,
    pub finished_at: Option<u64>,
    pub steps: Vec<StepRecord>,
    /// How many binds fastswitch has stacked on `/usr` this boot (reset removes them all).
    pub usr_binds: u32,
    /// Files in `/etc` that were replaced or removed, with their backup path, and files added.
    pub etc_backups: Vec<EtcBackup>,
    /// What the apply did to units (first action per unit), so reset can undo it: a started
    /// unit is stopped, a stopped one started, a restarted or reloaded one restarted.
    #[serde(default)]
    pub unit_actions: Vec<UnitTouch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitTouch {
    pub unit: String,
    pub action: crate::services::Action,
}

impl UnitTouch {
    /// The action that undoes this one once the old /usr is back.
    pub fn inverse(&self) -> Option<crate::services::Action> {
        use crate::services::Action::*;
        match self.action {
            Start => Some(Stop),
            Stop => Some(Start),
            Restart | Reload => Some(Restart),
            DaemonReexec => Some(DaemonReexec),
            Deferred | NeedsRestart => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcBackup {
    /// Absolute path in the live /etc, e.g. `/etc/demo/extra.conf`.
    pub path: String,
    /// Where the previous version was saved; `None` when the apply created the path.
    pub backup: Option<PathBuf>,
    /// sha256 (files) or target (symlinks) of what the apply wrote, to detect later admin edits.
    pub written: Option<String>,
}

impl LiveState {
    /// The step that was started but never finished, if the previous run died mid-way.
    pub fn interrupted_step(&self) -> Option<&StepRecord> {
        self.steps
            .iter()
            .rev()
            .find(|s| s.status == StepStatus::Started)
    }

    pub fn step_done(&self, name: &str) -> bool {
        self.steps
            .iter()
            .any(|s| s.name == name && s.status == StepStatus::Done)
    }

    pub fn is_complete(&self) -> bool {
        self.finished_at.is_some()
    }
}

/// Where the journal and backups live: `<run>/fastswitch`.
#[derive(Debug, Clone)]
pub struct Journal {
    pub dir: PathBuf,
}

impl Journal {
    pub fn new(run: &Path) -> Journal {
        Journal {
            dir: run.join("fastswitch"),
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn backup_dir(&self) -> PathBuf {
        self.dir.join("etc-backup")
    }

    pub fn load(&self) -> Result<Option<LiveState>> {
        let p = self.state_path();
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!(
                    "{} is corrupt; inspect it, then remove it or run `fastswitch reset`",
                    p.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Atomically replace the state file.
    pub fn save(&self, st: &LiveState) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let p = self.state_path();
        let tmp = self.dir.join(".state.json.tmp");
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        serde_json::to_writer_pretty(&mut f, st)?;
        f.write_all(b"\n")?;
        f.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
        std::fs::rename(&tmp, &p)
            .with_context(|| format!("renaming {} to {}", tmp.display(), p.display()))?;
        Ok(())
    }

    pub fn clear(&self) -> Result<()> {
        for p in [self.state_path(), self.backup_dir()] {
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
            }
        }
        Ok(())
    }
}

/// Test-only fault hook: when `FASTSWITCH_FAULT` names `<step>:before` or `<step>:after`, the
/// process kills itself with SIGKILL at that point, as a crash or power cut would.
pub fn fault_point(step: &str, when: &str) {
    if let Ok(v) = std::env::var("FASTSWITCH_FAULT") {
        if v == format!("{step}:{when}") {
            eprintln!("fastswitch: FASTSWITCH_FAULT={v}: killing myself");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_roundtrip_and_interrupted() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::new(d.path());
        assert!(j.load().unwrap().is_none());
        let mut st = LiveState {
            schema_version: STATE_SCHEMA_VERSION,
            booted: "a.0".into(),
            target: "b.0".into(),
            target_path: "/x".into(),
            started_at: 1,
            finished_at: None,
            steps: vec![],
            usr_binds: 0,
            etc_backups: vec![],
            unit_actions: vec![],
        };
        st.steps.push(StepRecord {
            name: "swap_usr".into(),
            status: StepStatus::Started,
            duration_ms: None,
            detail: None,
        });
        j.save(&st).unwrap();
        let back = j.load().unwrap().unwrap();
        assert_eq!(back.interrupted_step().unwrap().name, "swap_usr");
        std::fs::write(j.state_path(), b"{ not json").unwrap();
        assert!(j.load().unwrap_err().to_string().contains("corrupt"));
        j.clear().unwrap();
        assert!(j.load().unwrap().is_none());
    }
}
