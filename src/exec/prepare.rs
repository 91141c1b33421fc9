//! `fastswitch prepare`, run by `fastswitch-prepare.path` when ostree stages a deployment: do
//! now, while nobody waits, the slow part of the rung the staged deployment will take, so that
//! the admin's `switch` or `apply-live` later only swaps and hands off.
//!
//! - A different kernel or kernel arguments: load the kernel for kexec
//!   ([`super::kexec::prepared`]).
//! - The same kernel and arguments (a live apply or a soft reboot): make fastswitch's hardlinked
//!   copy of the deployment's `usr` ([`crate::system::live_tree`]); `apply-live` then reuses it
//!   instead of linking tens of thousands of files while the admin waits.
//!
//! Either way it removes the live copies nothing needs any more (not mounted, not the staged
//! deployment's): an `apply-live` that reuses a prepared copy leaves that to `prepare` (the next
//! staging) and `reset`. Exactly one of the two parts has work for a given staged deployment.

use super::kexec::prepared::{self, KexecPrepareReport};
use crate::discover::Host;
use crate::system::kexec::KexecLoader;
use crate::system::live_tree;
use crate::system::mounts::Mounts;
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;

pub(crate) const PREPARE_SCHEMA_VERSION: u32 = 2;

/// What `fastswitch prepare` did (`--json`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PrepareReport {
    pub(crate) schema_version: u32,
    pub(crate) kexec: KexecPrepareReport,
    pub(crate) live_copy: LiveCopyReport,
    pub(crate) duration_ms: u64,
}

/// The live-copy part of [`PrepareReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct LiveCopyReport {
    /// `linked`, `already_linked`, `not_needed`.
    pub(crate) outcome: &'static str,
    /// `<checksum>.<serial>` of the staged deployment.
    pub(crate) deployment: Option<String>,
    /// Directories and hardlinks made (0 unless `linked`).
    pub(crate) dirs: u64,
    pub(crate) links: u64,
    /// Live copies removed because nothing mounts them and no staged deployment is theirs.
    pub(crate) pruned: Vec<String>,
    pub(crate) reason: String,
    pub(crate) duration_ms: u64,
}

/// Prepare both parts for the staged deployment of `host` (see the module comment).
pub(crate) fn prepare(
    host: &Host,
    loader: &dyn KexecLoader,
    mounts: &dyn Mounts,
    boot_id: &str,
    load_kernel: bool,
) -> Result<PrepareReport> {
    let t0 = Instant::now();
    let kexec = prepared::prepare_staged(host, loader, boot_id, load_kernel)?;
    let live_copy = prepare_live_copy(host, mounts)?;
    Ok(PrepareReport {
        schema_version: PREPARE_SCHEMA_VERSION,
        kexec,
        live_copy,
        duration_ms: t0.elapsed().as_millis() as u64,
    })
}

/// Link the staged deployment's live copy when it boots the booted kernel with the booted
/// kargs, then prune the copies nothing needs.
fn prepare_live_copy(host: &Host, mounts: &dyn Mounts) -> Result<LiveCopyReport> {
    let t0 = Instant::now();
    let sysroot = &host.paths.sysroot;
    let staged = host.staged();
    let mut r = LiveCopyReport {
        outcome: "not_needed",
        deployment: staged.map(|d| d.id.clone()),
        dirs: 0,
        links: 0,
        pruned: vec![],
        reason: String::new(),
        duration_ms: 0,
    };
    match (staged, host.booted()) {
        (None, _) => r.reason = "no staged deployment".into(),
        (Some(d), None) => {
            r.reason = format!(
                "no booted deployment to compare {} with: this host was not booted by ostree",
                d.id
            )
        }
        (Some(d), Some(b)) => {
            let kernel =
                |x: &crate::discover::Deployment| x.kernel.as_ref().map(|k| k.boot_digest.clone());
            let composefs_root = host.booted_state.as_ref().is_some_and(|bs| {
                crate::discover::composefs::composefs(bs).mode
                    != crate::discover::composefs::ComposefsMode::Off
            });
            if kernel(d) != kernel(b) || d.kargs_without_ostree() != b.kargs_without_ostree() {
                r.reason = format!(
                    "deployment {} boots another kernel or other kernel arguments: neither a live apply nor a soft reboot can reach it, so it needs no live copy",
                    d.id
                );
            } else if composefs_root && d.composefs_image {
                r.reason = format!(
                    "the root is composefs and deployment {} has an .ostree.cfs image: a live apply mounts that image, so it needs no live copy",
                    d.id
                );
            } else {
                let dest = live_tree::live_usr(sysroot, &d.id);
                match mounts.ensure_live_usr(sysroot, &d.path.join("usr"), &dest)? {
                    Some(n) => {
                        r.outcome = "linked";
                        (r.dirs, r.links) = (n.dirs, n.links);
                        r.reason = format!(
                            "linked {} for `apply-live` to reuse (hardlinks: no file data copied)",
                            dest.display()
                        );
                    }
                    None => {
                        r.outcome = "already_linked";
                        r.reason = format!("{} exists", dest.display());
                    }
                }
            }
        }
    }
    let keep: Vec<String> = staged.map(|d| d.id.clone()).into_iter().collect();
    r.pruned = mounts
        .remove_unused_live_trees(sysroot, &keep)?
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    r.duration_ms = t0.elapsed().as_millis() as u64;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::kexec::prepared::fixture::host;
    use crate::system::kexec::recording::{KexecCall, RecordingKexec};
    use crate::testing::RecordingMounts;

    /// `host` with real deployment trees under its sysroot, so the live copy has files to link.
    fn with_trees(dir: &std::path::Path, staged_digest: &str) -> Host {
        let mut h = host(dir, staged_digest);
        for d in &mut h.deployments {
            d.path = h
                .paths
                .sysroot
                .join("ostree/deploy/debian/deploy")
                .join(&d.id);
            std::fs::create_dir_all(d.path.join("usr/bin")).unwrap();
            std::fs::write(d.path.join("usr/bin/tool"), &d.id).unwrap();
        }
        h
    }

    #[test]
    fn same_kernel_links_the_live_copy_once_and_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let h = with_trees(dir.path(), "old");
        let loader = RecordingKexec::default();
        let mounts = RecordingMounts::default();
        // A copy of an earlier staging that nothing mounts any more.
        let stale = live_tree::live_usr(&h.paths.sysroot, "c22.0");
        std::fs::create_dir_all(&stale).unwrap();

        let r = prepare(&h, &loader, &mounts, "boot1", true).unwrap();
        assert_eq!(r.kexec.outcome, "not_needed");
        assert!(loader.calls().is_empty(), "{:?}", loader.calls());
        assert_eq!(r.live_copy.outcome, "linked", "{r:?}");
        assert_eq!(r.live_copy.deployment.as_deref(), Some("a11.0"));
        assert_eq!((r.live_copy.dirs, r.live_copy.links), (2, 1));
        let copy = live_tree::live_usr(&h.paths.sysroot, "a11.0");
        assert_eq!(std::fs::read(copy.join("bin/tool")).unwrap(), b"a11.0");
        assert_eq!(
            r.live_copy.pruned,
            [stale.parent().unwrap().display().to_string()]
        );
        assert!(!stale.exists());
        // What apply-live's plan then sees: the copy is ready.
        assert!(live_tree::is_ready(&h.paths.sysroot, "a11.0"));

        // Run again (the path unit fires on every change): nothing to link, the copy is kept.
        let r = prepare(&h, &loader, &mounts, "boot1", true).unwrap();
        assert_eq!(r.live_copy.outcome, "already_linked");
        assert!(r.live_copy.pruned.is_empty());
        assert!(copy.join("bin/tool").exists());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["schema_version"], PREPARE_SCHEMA_VERSION);
        assert_eq!(v["live_copy"]["outcome"], "already_linked");
        assert_eq!(v["kexec"]["outcome"], "not_needed");
    }

    /// On a composefs root a staged deployment with an `.ostree.cfs` goes live by mounting the
    /// image: no copy is linked (and stale copies are still pruned).
    #[test]
    fn composefs_image_needs_no_live_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = with_trees(dir.path(), "old");
        h.booted_state = Some(
            crate::discover::state::parse_booted(
                &crate::discover::state::encode::booted_composefs(1, 2, false, None),
            )
            .unwrap(),
        );
        let stale = live_tree::live_usr(&h.paths.sysroot, "c22.0");
        std::fs::create_dir_all(&stale).unwrap();
        for d in &mut h.deployments {
            d.composefs_image = true;
        }
        let r = prepare(
            &h,
            &RecordingKexec::default(),
            &RecordingMounts::default(),
            "b",
            true,
        )
        .unwrap();
        assert_eq!(r.live_copy.outcome, "not_needed", "{r:?}");
        assert!(r.live_copy.reason.contains(".ostree.cfs"), "{r:?}");
        assert!(!live_tree::is_ready(&h.paths.sysroot, "a11.0"));
        assert!(!stale.exists());
        // Without the image the copy is linked as on any host.
        for d in &mut h.deployments {
            d.composefs_image = false;
        }
        let r = prepare(
            &h,
            &RecordingKexec::default(),
            &RecordingMounts::default(),
            "b",
            true,
        )
        .unwrap();
        assert_eq!(r.live_copy.outcome, "linked", "{r:?}");
    }

    #[test]
    fn new_kernel_loads_it_and_makes_no_live_copy() {
        let dir = tempfile::tempdir().unwrap();
        let h = with_trees(dir.path(), "new");
        let loader = RecordingKexec::default();
        let mounts = RecordingMounts::default();
        let r = prepare(&h, &loader, &mounts, "boot1", true).unwrap();
        assert_eq!(r.kexec.outcome, "loaded");
        assert!(matches!(loader.calls()[..], [KexecCall::Load { .. }]));
        assert_eq!(r.live_copy.outcome, "not_needed");
        assert!(r.live_copy.reason.contains("another kernel"), "{r:?}");
        assert!(!live_tree::live_dir(&h.paths.sysroot).exists());
    }

    #[test]
    fn nothing_staged_prunes_every_unmounted_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = with_trees(dir.path(), "old");
        h.deployments.retain(|d| !d.staged);
        h.staged_state = None;
        let old = live_tree::live_usr(&h.paths.sysroot, "a11.0");
        std::fs::create_dir_all(&old).unwrap();
        let r = prepare(
            &h,
            &RecordingKexec::default(),
            &RecordingMounts::default(),
            "b",
            true,
        )
        .unwrap();
        assert_eq!(r.live_copy.outcome, "not_needed");
        assert_eq!(r.live_copy.reason, "no staged deployment");
        assert_eq!(r.live_copy.pruned.len(), 1);
        assert!(!old.exists());
    }
}
