//! The live-apply journal: one JSON file, `<run>/fastswitch/state.json`, rewritten atomically
//! (temp file + fsync + rename + directory fsync) before and after every step. It lives in
//! `/run`, so it is gone after a reboot, exactly like the live `/usr` bind it describes.
//!
//! `/etc` is different: it is persistent, so what a live apply changed there must survive a
//! power cut. While `/etc` changes are recorded, a copy of the state (with the boot id) and the
//! backups live in `<root>/var/lib/fastswitch/`; at the next boot `fastswitch recover`
//! (`fastswitch-recover.service`) undoes them if the old deployment booted again.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub(crate) const STATE_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StepStatus {
    Started,
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub(crate) name: String,
    pub(crate) status: StepStatus,
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
    /// `/proc/sys/kernel/random/boot_id` of the boot that made these changes.
    #[serde(default)]
    pub boot_id: String,
    /// A `reset` started (and, if the state is still here, did not finish).
    #[serde(default)]
    pub resetting: bool,
    /// What is bound over `/usr`: fastswitch's live copy of the target's `usr`
    /// ([`crate::system::live_tree`]); `None` in records of versions that bound the
    /// deployment's own `usr` (`target_path`/usr).
    #[serde(default)]
    pub usr_source: Option<PathBuf>,
    /// `usr_source` is a composefs image (`.ostree.cfs`) whose `usr` is mounted over `/usr`,
    /// not a directory bound there.
    #[serde(default)]
    pub usr_composefs: bool,
}

impl LiveState {
    /// The tree a completed apply shows at `/usr`.
    pub(crate) fn usr_shown(&self) -> PathBuf {
        self.usr_source
            .clone()
            .unwrap_or_else(|| self.target_path.join("usr"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitTouch {
    pub unit: String,
    pub action: crate::services::Action,
}

impl UnitTouch {
    /// The action that undoes this one once the old /usr is back.
    pub(crate) fn inverse(&self) -> Option<crate::services::Action> {
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
    pub(crate) fn interrupted_step(&self) -> Option<&StepRecord> {
        self.steps
            .iter()
            .rev()
            .find(|s| s.status == StepStatus::Started)
    }

    /// The step to name for an interrupted run: `reset` while resetting.
    pub(crate) fn interrupted_at(&self) -> Option<String> {
        if self.resetting {
            return Some("reset".into());
        }
        self.interrupted_step().map(|s| s.name.clone())
    }

    pub(crate) fn step_done(&self, name: &str) -> bool {
        self.steps
            .iter()
            .any(|s| s.name == name && s.status == StepStatus::Done)
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.finished_at.is_some()
    }
}

/// Where the journal and backups live: `<run>/fastswitch` (this boot) and
/// `<root>/var/lib/fastswitch` (what must survive a reboot: `/etc` backups).
#[derive(Debug)]
pub struct Journal {
    pub(crate) dir: PathBuf,
    pub(crate) persist_dir: PathBuf,
    /// The current boot's id, stamped into every saved state.
    pub boot_id: String,
    writes: std::cell::Cell<u32>,
    /// Time spent in [`Journal::save`], µs.
    saving_us: std::cell::Cell<u64>,
    /// What this process last wrote to the persistent copy: the fields `recover` and `status`
    /// read from it ([`Journal::persistent_key`]).
    persisted: std::cell::RefCell<Option<Vec<u8>>>,
}

/// The current boot id (`/proc/sys/kernel/random/boot_id`).
pub fn current_boot_id() -> Result<String> {
    let p = "/proc/sys/kernel/random/boot_id";
    Ok(std::fs::read_to_string(p)
        .with_context(|| format!("reading {p}"))?
        .trim()
        .to_owned())
}

/// Write `data` to `path` atomically and durably, mode 0600 in a 0700 directory (see
/// [`crate::system::secure_write::write_private_file`]): anonymous temp file, fsync, link and
/// rename, fsync of the directory (so the rename itself survives a power cut).
fn write_durably(path: &Path, data: &[u8]) -> Result<()> {
    crate::system::secure_write::write_private_file(path, data)
}

/// fsync a directory, making renames and creations in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))
}

fn remove_if_exists(p: &Path) -> Result<()> {
    let r = if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

fn load_json(p: &Path) -> Result<Option<LiveState>> {
    match crate::system::files::read_opt(p, crate::system::files::Follow::No)? {
        Some(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!(
                "{} is corrupt; inspect it, then remove it or run `fastswitch reset`",
                p.display()
            )
        })?)),
        None => Ok(None),
    }
}

impl Journal {
    pub fn new(run: &Path, root: &Path, boot_id: &str) -> Journal {
        Journal {
            dir: run.join("fastswitch"),
            persist_dir: root.join("var/lib/fastswitch"),
            boot_id: boot_id.to_owned(),
            writes: std::cell::Cell::new(0),
            saving_us: std::cell::Cell::new(0),
            persisted: std::cell::RefCell::new(None),
        }
    }

    /// The journal of this host, stamped with the current boot id.
    pub(crate) fn for_host(paths: &crate::discover::HostPaths) -> Result<Journal> {
        Ok(Journal::new(&paths.run, &paths.root, &current_boot_id()?))
    }

    pub(crate) fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The persistent copy, present while `/etc` changes are recorded.
    pub(crate) fn persistent_state_path(&self) -> PathBuf {
        self.persist_dir.join("state.json")
    }

    pub(crate) fn backup_dir(&self) -> PathBuf {
        self.persist_dir.join("etc-backup")
    }

    pub(crate) fn load(&self) -> Result<Option<LiveState>> {
        load_json(&self.state_path())
    }

    /// The deployment userspace runs when a live apply of this boot completed: its target;
    /// `None` when userspace runs the booted deployment. `apply-live`, `switch` and the
    /// status ladder diff from here.
    pub(crate) fn running_target(&self) -> Result<Option<String>> {
        Ok(self
            .load()?
            .filter(|st| st.is_complete())
            .map(|st| st.target))
    }

    pub(crate) fn load_persistent(&self) -> Result<Option<LiveState>> {
        load_json(&self.persistent_state_path())
    }

    /// Before reset or recover copy a record's backups into /etc as root: every backup must lie
    /// in [`Journal::backup_dir`], so a record naming another file is refused.
    pub(crate) fn check_backups(&self, st: &LiveState) -> Result<()> {
        let dir = self.backup_dir();
        for b in &st.etc_backups {
            if let Some(backup) = &b.backup {
                let inside = backup.starts_with(&dir)
                    && backup
                        .components()
                        .all(|c| !matches!(c, std::path::Component::ParentDir));
                anyhow::ensure!(
                    inside,
                    "the live-apply record names the backup of {} at {}, outside {}; refusing to restore from it (inspect {}, then remove it)",
                    b.path,
                    backup.display(),
                    dir.display(),
                    self.dir.display()
                );
            }
        }
        Ok(())
    }

    /// A persistent record left by an earlier boot (its `/etc` changes were never undone).
    pub(crate) fn stale_persistent(&self) -> Result<Option<LiveState>> {
        Ok(self
            .load_persistent()?
            .filter(|st| st.boot_id != self.boot_id))
    }

    /// Atomically and durably replace the state file, and the persistent copy while `/etc`
    /// changes are recorded. Each call is one numbered journal write for the fault hook.
    ///
    /// The persistent copy (on disk, unlike the state file in `/run`) is what a later boot's
    /// `recover` restores `/etc` from, and all it reads of it are the boot id, the two
    /// deployments and the `/etc` backups: it is written again only when one of those changed
    /// since this process last wrote it, not for every step's status.
    pub fn save(&self, st: &LiveState) -> Result<()> {
        let t = std::time::Instant::now();
        let r = self.save_inner(st);
        self.saving_us
            .set(self.saving_us.get() + t.elapsed().as_micros() as u64);
        r
    }

    /// Milliseconds this process spent saving the journal.
    pub(crate) fn saving_ms(&self) -> u64 {
        self.saving_us.get() / 1000
    }

    /// How many times this process saved the journal.
    #[cfg(test)]
    pub(crate) fn writes(&self) -> u32 {
        self.writes.get()
    }

    /// The same in µs.
    pub(crate) fn saving_us(&self) -> u64 {
        self.saving_us.get()
    }

    fn save_inner(&self, st: &LiveState) -> Result<()> {
        let n = self.writes.get() + 1;
        self.writes.set(n);
        let point = format!("journal-write-{n}");
        fault_point(&point, "before");
        let mut st = st.clone();
        st.boot_id = self.boot_id.clone();
        let mut data = serde_json::to_vec_pretty(&st)?;
        data.push(b'\n');
        if st.etc_backups.is_empty() {
            remove_if_exists(&self.persistent_state_path())?;
            *self.persisted.borrow_mut() = None;
        } else {
            let key = Self::persistent_key(&st)?;
            if self.persisted.borrow().as_ref() != Some(&key) {
                write_durably(&self.persistent_state_path(), &data)?;
                *self.persisted.borrow_mut() = Some(key);
            }
        }
        write_durably(&self.state_path(), &data)?;
        fault_point(&point, "after");
        Ok(())
    }

    /// The fields of a record that `recover` and `status` read from the persistent copy.
    fn persistent_key(st: &LiveState) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(&(
            &st.boot_id,
            &st.booted,
            &st.target,
            &st.etc_backups,
        ))?)
    }

    /// Forget everything: this boot's state, the persistent copy and the backups.
    pub(crate) fn clear(&self) -> Result<()> {
        fault_point("journal-clear", "before");
        self.clear_persistent()?;
        remove_if_exists(&self.state_path())
    }

    /// Drop the persistent copy (first, so a crash never leaves a record without backups),
    /// then the backups.
    pub(crate) fn clear_persistent(&self) -> Result<()> {
        *self.persisted.borrow_mut() = None;
        remove_if_exists(&self.persistent_state_path())?;
        if self.persist_dir.is_dir() {
            sync_dir(&self.persist_dir)?;
        }
        remove_if_exists(&self.backup_dir())
    }
}

/// Test-only fault hook, compiled only with the `fault-injection` feature (tests; never the
/// release build). `FASTSWITCH_FAULT=<point>:<when>` (`when` is `before` or `after`)
/// makes the process kill itself with SIGKILL at that point, as a crash would;
/// `<point>:<when>:stop` stops it with SIGSTOP instead, so a test can cut the power of a VM
/// while fastswitch sits exactly there. Points: each plan step by name (`swap_usr`, …,
/// `finalize_staged`, `kexec_load`), `journal-write-<n>` for the n-th journal write of the run,
/// `etc-restore-<n>` for reset's n-th restored `/etc` entry, and `journal-clear`.
#[cfg(feature = "fault-injection")]
pub(crate) fn fault_point(point: &str, when: &str) {
    let Ok(v) = std::env::var("FASTSWITCH_FAULT") else {
        return;
    };
    let here = format!("{point}:{when}");
    if v == here {
        eprintln!("fastswitch: FASTSWITCH_FAULT={v}: killing myself");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    } else if v == format!("{here}:stop") {
        eprintln!(
            "fastswitch: FASTSWITCH_FAULT={v}: stopped (pid {})",
            std::process::id()
        );
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
}

/// Without the `fault-injection` feature the hook is not there: the environment is not read.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn fault_point(_point: &str, _when: &str) {}

pub(crate) fn now_secs() -> u64 {
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
        let j = Journal::new(&d.path().join("run"), &d.path().join("root"), "boot-a");
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
            boot_id: String::new(),
            resetting: false,
            usr_source: None,
            usr_composefs: false,
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
        assert_eq!(back.boot_id, "boot-a", "saved with the current boot id");
        assert!(
            !j.persistent_state_path().exists(),
            "no persistent copy without /etc changes"
        );
        st.etc_backups.push(EtcBackup {
            path: "/etc/a".into(),
            backup: None,
            written: None,
        });
        j.save(&st).unwrap();
        assert_eq!(
            j.load_persistent().unwrap().unwrap(),
            j.load().unwrap().unwrap()
        );
        // A step's status alone: the state file changes, the persistent copy is not written
        // again (same file, still the step as it was).
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let before = ino(&j.persistent_state_path());
        st.steps[0].status = StepStatus::Done;
        j.save(&st).unwrap();
        assert_eq!(ino(&j.persistent_state_path()), before);
        assert_eq!(j.load().unwrap().unwrap().steps[0].status, StepStatus::Done);
        assert_eq!(
            j.load_persistent().unwrap().unwrap().steps[0].status,
            StepStatus::Started
        );
        // Another backup: written again, whole.
        st.etc_backups.push(EtcBackup {
            path: "/etc/b".into(),
            backup: None,
            written: None,
        });
        j.save(&st).unwrap();
        assert_ne!(ino(&j.persistent_state_path()), before);
        assert_eq!(
            j.load_persistent().unwrap().unwrap(),
            j.load().unwrap().unwrap()
        );
        st.etc_backups.pop();
        assert!(j.stale_persistent().unwrap().is_none(), "same boot");
        let later = Journal::new(&d.path().join("run"), &d.path().join("root"), "boot-b");
        assert_eq!(later.stale_persistent().unwrap().unwrap().boot_id, "boot-a");
        j.check_backups(&st).unwrap();
        st.etc_backups[0].backup = Some(j.backup_dir().join("a"));
        j.check_backups(&st).unwrap();
        st.etc_backups[0].backup = Some("/etc/shadow".into());
        assert!(j
            .check_backups(&st)
            .unwrap_err()
            .to_string()
            .contains("outside"));
        st.etc_backups[0].backup = Some(j.backup_dir().join("../../../etc/shadow"));
        assert!(j
            .check_backups(&st)
            .unwrap_err()
            .to_string()
            .contains("outside"));
        std::fs::write(j.state_path(), b"{ not json").unwrap();
        assert!(j.load().unwrap_err().to_string().contains("corrupt"));
        j.clear().unwrap();
        assert!(j.load().unwrap().is_none());
    }
}
