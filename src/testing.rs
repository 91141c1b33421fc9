//! Shared test support (unit tests only): recording stand-ins for the narrow traits in
//! [`crate::system`], so the executor's order and refusals are tested without root.

use crate::system::mounts::{MountEntry, Mounts, NextRoot};
use crate::system::systemd::{JobOp, JobOutcome, JobResult, PendingJob, Systemd, UnitFacts};
use crate::system::tools::ConfigTools;
use anyhow::{bail, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A recording stand-in for systemd: logs every call, "fails" the units named `fail*`.
#[derive(Default)]
pub(crate) struct RecordingSystemd {
    /// Every call, in order.
    pub log: RefCell<Vec<String>>,
    /// Units whose job cannot even be queued.
    pub unreachable: Vec<&'static str>,
    /// This many `daemon_reload` calls fail first.
    pub fail_reloads: std::cell::Cell<u32>,
}

impl Systemd for RecordingSystemd {
    fn daemon_reload(&self) -> Result<()> {
        self.log.borrow_mut().push("daemon-reload".into());
        if self.fail_reloads.get() > 0 {
            self.fail_reloads.set(self.fail_reloads.get() - 1);
            bail!("injected daemon-reload failure");
        }
        Ok(())
    }
    fn daemon_reexec(&self) -> Result<()> {
        self.log.borrow_mut().push("daemon-reexec".into());
        Ok(())
    }
    fn enqueue(&self, op: JobOp, unit: &str) -> Result<PendingJob> {
        self.log.borrow_mut().push(format!("enqueue {op:?} {unit}"));
        if self.unreachable.contains(&unit) {
            bail!("no such unit {unit}");
        }
        Ok(PendingJob {
            op,
            unit: unit.into(),
            job: format!("/job/{unit}"),
            issued: Instant::now(),
        })
    }
    fn wait(&self, jobs: Vec<PendingJob>) -> Vec<JobOutcome> {
        self.log.borrow_mut().push(format!("wait {}", jobs.len()));
        jobs.into_iter()
            .map(|j| JobOutcome {
                result: if j.unit.starts_with("fail") {
                    JobResult::Failed
                } else {
                    JobResult::Done
                },
                duration: Duration::from_millis(3),
                op: j.op,
                unit: j.unit,
                job: j.job,
            })
            .collect()
    }
    fn active_states(&self) -> Result<HashMap<String, String>> {
        Ok(HashMap::new())
    }
    fn unit_facts(
        &self,
        _: &[String],
        _: Option<&HashMap<String, String>>,
    ) -> Result<Vec<UnitFacts>> {
        Ok(vec![])
    }
    fn start_unit_no_wait(&self, unit: &str, mode: &str) -> Result<()> {
        self.log
            .borrow_mut()
            .push(format!("start-no-wait {unit} {mode}"));
        if self.unreachable.contains(&unit) {
            bail!("job for {unit} refused");
        }
        Ok(())
    }
    fn version(&self) -> Result<String> {
        Ok("257".into())
    }
}

/// A stand-in for the mount syscalls that works on plain directories, without root: a bind of
/// `source` over `target` moves `target` aside and puts a symlink to `source` in its place (so
/// the executor's own check, "does `target` show `source`'s inode", holds); unmounting the top
/// undoes that. Every call is logged; `fail_binds` makes `bind_usr` fail that many times first.
#[derive(Default)]
pub(crate) struct RecordingMounts {
    pub log: RefCell<Vec<String>>,
    pub fail_binds: std::cell::Cell<u32>,
    stacks: RefCell<HashMap<PathBuf, Vec<MountEntry>>>,
}

impl RecordingMounts {
    fn aside(target: &Path, depth: usize) -> PathBuf {
        target.with_extension(format!("under-{depth}"))
    }
}

impl Mounts for RecordingMounts {
    fn bind_usr(&self, source: &Path, target: &Path) -> Result<()> {
        self.log
            .borrow_mut()
            .push(format!("bind {} {}", source.display(), target.display()));
        if self.fail_binds.get() > 0 {
            self.fail_binds.set(self.fail_binds.get() - 1);
            bail!("injected bind failure");
        }
        let mut stacks = self.stacks.borrow_mut();
        let stack = stacks.entry(target.to_path_buf()).or_default();
        std::fs::rename(target, Self::aside(target, stack.len()))?;
        std::os::unix::fs::symlink(source, target)?;
        stack.push(MountEntry {
            mount_id: 100 + stack.len() as i32,
            parent_id: 1,
            root: source.display().to_string(),
            mount_point: target.to_path_buf(),
            read_only: true,
            fs_type: "fake".into(),
            source: source.display().to_string(),
        });
        Ok(())
    }
    fn replace_usr(&self, _: &Path, _: &Path) -> Result<Option<bool>> {
        self.log.borrow_mut().push("replace (unsupported)".into());
        Ok(None)
    }
    /// Like `bind_usr` with the image's deployment `usr` as what `target` shows, and a mount
    /// entry as the kernel lists a composefs `usr` (overlay, source `composefs`, root `/usr`).
    fn composefs_usr(
        &self,
        image: &crate::system::composefs::ComposefsImage,
        _scratch: &Path,
        target: &Path,
        replace: bool,
    ) -> Result<Option<bool>> {
        if replace {
            self.log
                .borrow_mut()
                .push("replace composefs (unsupported)".into());
            return Ok(None);
        }
        self.log.borrow_mut().push(format!(
            "composefs {} {} verity={}",
            image.image.display(),
            target.display(),
            image.require_verity
        ));
        let mut stacks = self.stacks.borrow_mut();
        let stack = stacks.entry(target.to_path_buf()).or_default();
        std::fs::rename(target, Self::aside(target, stack.len()))?;
        let shown = image.image.with_file_name("usr");
        std::os::unix::fs::symlink(&shown, target)?;
        stack.push(MountEntry {
            mount_id: 100 + stack.len() as i32,
            parent_id: 1,
            root: "/usr".into(),
            mount_point: target.to_path_buf(),
            read_only: true,
            fs_type: "overlay".into(),
            source: "composefs".into(),
        });
        Ok(Some(false))
    }
    fn prepare_nextroot(&self, next: &NextRoot) -> Result<()> {
        self.log
            .borrow_mut()
            .push(format!("nextroot {}", next.dir.display()));
        Ok(())
    }
    fn detach_tree(&self, dir: &Path) -> Result<()> {
        self.log
            .borrow_mut()
            .push(format!("detach {}", dir.display()));
        Ok(())
    }
    fn unmount_top(&self, target: &Path) -> Result<bool> {
        self.log
            .borrow_mut()
            .push(format!("unmount {}", target.display()));
        let mut stacks = self.stacks.borrow_mut();
        let stack = stacks.entry(target.to_path_buf()).or_default();
        if stack.pop().is_none() {
            bail!("nothing mounted at {}", target.display());
        }
        std::fs::remove_file(target)?;
        std::fs::rename(Self::aside(target, stack.len()), target)?;
        Ok(false)
    }
    fn stack(&self, target: &Path) -> Result<Vec<MountEntry>> {
        Ok(self
            .stacks
            .borrow()
            .get(target)
            .cloned()
            .unwrap_or_default())
    }
    /// The real thing: it only links files in the test's temporary sysroot.
    fn ensure_live_usr(
        &self,
        sysroot: &Path,
        source: &Path,
        dest: &Path,
    ) -> Result<Option<crate::system::live_tree::LinkStats>> {
        self.log
            .borrow_mut()
            .push(format!("link {} {}", source.display(), dest.display()));
        crate::system::live_tree::ensure(sysroot, dest, source)
    }
    /// The real thing, against the fake mount table.
    fn remove_unused_live_trees(&self, sysroot: &Path, keep: &[String]) -> Result<Vec<PathBuf>> {
        let stacks = self.stacks.borrow();
        let entries: Vec<&MountEntry> = stacks.values().flatten().collect();
        let composefs_live = entries.iter().any(|m| m.is_composefs_usr());
        let roots: Vec<String> = entries.iter().map(|m| m.root.clone()).collect();
        crate::system::live_tree::remove_unused(sysroot, &roots, keep, composefs_live)
    }
    /// The real thing: it writes the ref in the test's temporary sysroot.
    fn pin_live_commit(&self, sysroot: &Path, commit: &str) -> Result<()> {
        self.log.borrow_mut().push(format!("pin {commit}"));
        crate::system::live_tree::pin_commit(sysroot, commit)
    }
}

/// `systemd-sysusers`/`-tmpfiles` stand-in: logs the files it was given.
#[derive(Default)]
pub(crate) struct RecordingTools {
    pub log: RefCell<Vec<String>>,
    /// `sysusers` or `tmpfiles`: that tool fails once.
    pub fail_once: std::cell::Cell<Option<&'static str>>,
}

impl RecordingTools {
    fn fails(&self, tool: &str) -> Result<()> {
        if self.fail_once.get() == Some(tool) {
            self.fail_once.set(None);
            bail!("injected {tool} failure");
        }
        Ok(())
    }
}

impl ConfigTools for RecordingTools {
    fn sysusers(&self, _: &Path, files: &[String]) -> Result<()> {
        self.log
            .borrow_mut()
            .push(format!("sysusers {}", files.join(" ")));
        self.fails("sysusers")
    }
    fn tmpfiles_create(&self, _: &Path, files: &[String]) -> Result<()> {
        self.log
            .borrow_mut()
            .push(format!("tmpfiles {}", files.join(" ")));
        self.fails("tmpfiles")
    }
}

/// A repository and deployment checkouts made by the real `ostree` CLI (bare-user mode, so no
/// root is needed), laid out as a sysroot: `<dir>/ostree/repo` and
/// `<dir>/ostree/deploy/os/deploy/<commit>.0`.
pub(crate) struct OstreeRepo {
    pub dir: tempfile::TempDir,
}

impl OstreeRepo {
    pub fn new() -> OstreeRepo {
        let r = OstreeRepo {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(r.repo()).unwrap();
        r.run(&["init", "--mode=bare-user"]);
        r
    }

    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("ostree/repo")
    }

    /// `ostree --repo=… <args>`, panicking with its stderr on failure; returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let mut cmd = std::process::Command::new("ostree");
        cmd.arg(format!("--repo={}", self.repo().display()))
            .args(args);
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Commit the directory `tree` (owned by root:root, no xattrs) on `branch`.
    pub fn commit(&self, tree: &Path, branch: &str) -> String {
        self.run(&[
            "commit",
            "--no-xattrs",
            "--owner-uid=0",
            "--owner-gid=0",
            "-b",
            branch,
            &format!("--tree=dir={}", tree.display()),
        ])
        .trim()
        .to_owned()
    }

    /// A hardlink checkout of `commit` as the deployment directory `<commit>.0`.
    pub fn deploy(&self, commit: &str) -> PathBuf {
        self.deploy_as(commit, 0, true)
    }

    /// A checkout of `commit` as the deployment directory `<commit>.<serial>`: hardlinks to
    /// the objects as ostree deploys, or (`hardlink` false) copies, so that no two deployments
    /// share an inode.
    pub fn deploy_as(&self, commit: &str, serial: u32, hardlink: bool) -> PathBuf {
        let parent = self.dir.path().join("ostree/deploy/os/deploy");
        std::fs::create_dir_all(&parent).unwrap();
        let d = parent.join(format!("{commit}.{serial}"));
        let d_arg = d.display().to_string();
        let mut args = vec!["checkout", "-U"];
        if hardlink {
            args.push("-H");
        } else {
            args.push("--force-copy");
        }
        args.extend([commit, d_arg.as_str()]);
        self.run(&args);
        d
    }
}

/// Write `data` at `root/rel`, creating the parents.
pub(crate) fn write_file(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}
