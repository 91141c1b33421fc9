//! A kexec kernel loaded when the deployment was staged (`fastswitch prepare`, run by
//! `fastswitch-prepare.path` on `/run/ostree/staged-deployment`), so that `switch` only has to
//! finalize and hand off.
//!
//! Before finalization the staged deployment has no BLS entry and no `ostree=` bootlink, so the
//! kernel and initramfs are loaded from the deployment's tree (ostree copies the same bytes to
//! `/boot/ostree/<stateroot>-<bootcsum>/` at finalization: the directory is named after their
//! checksum) and the command line carries the bootlink ostree will write: `ostree=/ostree/boot.<the
//! other bootversion>/<stateroot>/<bootcsum>/0` (the staged deployment comes first in the new
//! list, so its bootserial is 0). What was loaded is recorded in
//! `<run>/fastswitch/kexec-prepared.json`; `switch` reuses the loaded kernel only when, after
//! finalization, the boot entry names the same bootcsum, the same number of initrds and exactly
//! the recorded command line, and the loaded files are unchanged; otherwise it loads again.
//! Any load or unload through [`crate::system::kexec::RealKexec`] drops the record.

use crate::discover::{Deployment, Host, HostPaths};
use crate::system::kexec::{KexecError, KexecLoader};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The record's file name in `<run>/fastswitch`.
pub(crate) const RECORD: &str = crate::system::kexec::PREPARED_RECORD;

pub(crate) fn record_path(paths: &HostPaths) -> PathBuf {
    paths.run.join("fastswitch").join(RECORD)
}

/// Identity of a loaded file at load time: if any of it changed, the file may have too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileId {
    pub path: PathBuf,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime_ns: i128,
}

impl FileId {
    pub(crate) fn of(path: &Path) -> Result<FileId> {
        let m = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        Ok(FileId {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

/// What `prepare` loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PreparedKexec {
    /// `<checksum>.<serial>` of the staged deployment.
    pub(crate) deployment: String,
    /// ostree's bootcsum of its kernel + initramfs.
    pub(crate) bootcsum: String,
    /// Kernel first, then the initrds, as loaded.
    pub(crate) files: Vec<FileId>,
    pub(crate) cmdline: String,
    /// The boot this was loaded in (a loaded kernel does not outlive it).
    pub boot_id: String,
}

pub(crate) fn read(path: &Path) -> Result<Option<PreparedKexec>> {
    match std::fs::read(path) {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The `ostree=` bootlink ostree writes when it finalizes `d` as the first deployment of the new
/// list: the other bootversion, bootserial 0.
pub(crate) fn predicted_bootlink(
    d: &Deployment,
    bootcsum: &str,
    bootversion: Option<u8>,
) -> String {
    let next = 1 - bootversion.unwrap_or(0).min(1);
    format!("/ostree/boot.{next}/{}/{bootcsum}/0", d.stateroot)
}

/// The staged deployment's kargs with `ostree=` replaced in place by `bootlink` (appended when
/// there is none), as ostree writes the BLS `options` line.
pub(crate) fn predicted_cmdline(kargs: &[String], bootlink: &str) -> String {
    let link = format!("ostree={bootlink}");
    let mut out: Vec<&str> = Vec::with_capacity(kargs.len() + 1);
    let mut replaced = false;
    for a in kargs {
        if a.starts_with("ostree=") {
            if !replaced {
                out.push(&link);
                replaced = true;
            }
        } else {
            out.push(a);
        }
    }
    if !replaced {
        out.push(&link);
    }
    out.join(" ")
}

/// Why the recorded kernel cannot stand for the one `switch` is about to load, or `None` when
/// it can. Pure apart from `files_now`, the current identity of the recorded files.
pub(crate) fn mismatch(
    rec: &PreparedKexec,
    d: &Deployment,
    bootcsum: &str,
    initrd_count: usize,
    cmdline: &str,
    boot_id: &str,
    files_now: &[Option<FileId>],
) -> Option<String> {
    if rec.boot_id != boot_id {
        return Some("it was loaded in another boot".into());
    }
    if rec.deployment != d.id {
        return Some(format!("it was loaded for deployment {}", rec.deployment));
    }
    if rec.bootcsum != bootcsum {
        return Some(format!(
            "it has bootcsum {}, the boot entry {bootcsum}",
            rec.bootcsum
        ));
    }
    if rec.files.len() != initrd_count + 1 {
        return Some(format!(
            "it was loaded with {} initrd(s), the boot entry has {initrd_count}",
            rec.files.len().saturating_sub(1)
        ));
    }
    if rec.cmdline != cmdline {
        return Some(format!(
            "its command line `{}` differs from the boot entry's `{cmdline}`",
            rec.cmdline
        ));
    }
    for (was, now) in rec.files.iter().zip(files_now) {
        if now.as_ref() != Some(was) {
            return Some(format!(
                "{} changed since it was loaded",
                was.path.display()
            ));
        }
    }
    None
}

/// Whether the kernel loaded at staging is the one `switch` would load now (`Ok(None)`: reuse
/// it) or why not. `d` is the finalized target, `bootcsum` its entry's (already checked
/// against the tree), `initrds`/`cmdline` from its boot entry.
pub(crate) fn check_reuse(
    paths: &HostPaths,
    loader: &dyn KexecLoader,
    d: &Deployment,
    bootcsum: &str,
    initrds: &[PathBuf],
    cmdline: &str,
) -> Result<Option<String>> {
    let Some(rec) = read(&record_path(paths))? else {
        return Ok(Some("nothing was prepared at staging".into()));
    };
    if !loader.is_loaded().map_err(anyhow::Error::new)? {
        return Ok(Some("no kernel is loaded any more".into()));
    }
    let boot_id = super::super::journal::current_boot_id()?;
    let now: Vec<Option<FileId>> = rec.files.iter().map(|f| FileId::of(&f.path).ok()).collect();
    Ok(mismatch(
        &rec,
        d,
        bootcsum,
        initrds.len(),
        cmdline,
        &boot_id,
        &now,
    ))
}

/// What `fastswitch prepare` did about the kexec kernel (the `kexec` part of
/// [`crate::exec::prepare::PrepareReport`]).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct KexecPrepareReport {
    /// `loaded`, `already_loaded`, `not_needed`, `unloaded`, `skipped` (`--no-kexec`).
    pub outcome: &'static str,
    pub(crate) deployment: Option<String>,
    pub(crate) kernel: Option<PathBuf>,
    pub(crate) initrds: Vec<PathBuf>,
    pub(crate) cmdline: Option<String>,
    pub(crate) reason: String,
    pub duration_ms: u64,
}

impl KexecPrepareReport {
    fn new(outcome: &'static str, reason: impl Into<String>) -> Self {
        KexecPrepareReport {
            outcome,
            deployment: None,
            kernel: None,
            initrds: vec![],
            cmdline: None,
            reason: reason.into(),
            duration_ms: 0,
        }
    }
}

/// A recorded kernel whose deployment is neither staged any more nor finalized has a bootlink
/// that will never exist: unload it (a plain `systemctl reboot` would boot it on systemd 254+).
fn drop_stale(host: &Host, loader: &dyn KexecLoader, rec: &PreparedKexec) -> Result<bool> {
    let alive = host
        .deployments
        .iter()
        .any(|d| d.id == rec.deployment && (d.staged || d.boot_entry.is_some()));
    if alive || !loader.is_loaded().map_err(anyhow::Error::new)? {
        return Ok(false);
    }
    loader
        .unload()
        .map_err(anyhow::Error::new)
        .context("unloading the kexec kernel prepared for a deployment that is gone")?;
    Ok(true)
}

/// The kargs ostree will write for the staged `d`, `ostree=` still in its place: the override
/// it was staged with, else the full `options` of its merge deployment (as
/// `ostree_sysroot_stage_tree` and finalization pick them).
fn finalized_kargs(host: &Host, d: &Deployment) -> Vec<String> {
    let Some(st) = &host.staged_state else {
        return d.kargs.clone();
    };
    if let Some(k) = &st.kargs {
        return k.clone();
    }
    let same = |o: &&Deployment| !o.staged && o.stateroot == st.osname;
    let merge = st
        .merge_deployment
        .as_ref()
        .and_then(|m| host.deployments.iter().filter(same).find(|o| &o.id == m))
        .or_else(|| host.deployments.iter().filter(same).find(|o| o.booted))
        .or_else(|| host.deployments.iter().find(same));
    merge.map_or_else(|| d.kargs.clone(), |m| m.kargs.clone())
}

/// Load the staged deployment's kernel now, for `switch` to reuse. Changes nothing when there
/// is nothing staged, when the staged deployment boots the same kernel with the same kargs as
/// the booted one (no kexec needed), or when its finalization is locked (it would not get its
/// bootlink at shutdown). Unloads a kernel prepared earlier for a deployment that is gone.
///
/// Long: the reasons not to load, in the order they are checked (each early return is one
/// `not_needed` with its reason), then the load and its record.
pub(crate) fn prepare_staged(
    host: &Host,
    loader: &dyn KexecLoader,
    boot_id: &str,
    load_kernel: bool,
) -> Result<KexecPrepareReport> {
    let t0 = Instant::now();
    let paths = &host.paths;
    let record = record_path(paths);
    let rec = read(&record)?;
    let staged = host.staged();
    let mut unloaded = false;
    if let Some(r) = &rec {
        if staged.is_none_or(|d| d.id != r.deployment) {
            unloaded = drop_stale(host, loader, r)?;
        }
    }
    let not_needed = |reason: String| {
        let mut r = if unloaded {
            KexecPrepareReport::new(
                "unloaded",
                format!("{reason}; unloaded the kernel prepared for a deployment that is gone"),
            )
        } else {
            KexecPrepareReport::new("not_needed", reason)
        };
        r.deployment = staged.map(|d| d.id.clone());
        r.duration_ms = t0.elapsed().as_millis() as u64;
        r
    };
    let Some(d) = staged else {
        return Ok(not_needed("no staged deployment".into()));
    };
    if !load_kernel {
        let mut r = not_needed(format!(
            "not loading the kernel of {} at staging (--no-kexec, as the shipped fastswitch-prepare.service runs): `switch` loads it itself",
            d.id
        ));
        if r.outcome == "not_needed" {
            r.outcome = "skipped";
        }
        return Ok(r);
    }
    if host.finalization_locked {
        return Ok(not_needed(format!(
            "finalization of {} is locked: it gets no boot entry at shutdown",
            d.id
        )));
    }
    let Some(k) = d.kernel.as_ref() else {
        return Ok(not_needed(format!("deployment {} has no kernel", d.id)));
    };
    let Some(initramfs) = k.initramfs.as_ref() else {
        return Ok(not_needed(format!(
            "deployment {} has no initramfs next to {}",
            d.id,
            k.vmlinuz.display()
        )));
    };
    if let Some(b) = host.booted() {
        let same_kernel = b.kernel.as_ref().map(|bk| &bk.boot_digest) == Some(&k.boot_digest);
        if same_kernel && b.kargs_without_ostree() == d.kargs_without_ostree() {
            return Ok(not_needed(format!(
                "deployment {} boots the same kernel with the same kargs as the booted one: no kexec needed",
                d.id
            )));
        }
    }
    if let Some(st) = &host.staged_state {
        if !st.overlay_initrds.is_empty() {
            return Ok(not_needed(format!(
                "deployment {} has overlay initrds; switch loads it from its boot entry",
                d.id
            )));
        }
    }
    let bootlink = predicted_bootlink(d, &k.boot_digest, host.bootversion);
    let cmdline = predicted_cmdline(&finalized_kargs(host, d), &bootlink);
    let kernel = k.vmlinuz.clone();
    let initrds = vec![initramfs.clone()];
    let files = std::iter::once(&kernel)
        .chain(&initrds)
        .map(|p| FileId::of(p))
        .collect::<Result<Vec<_>>>()?;
    let want = PreparedKexec {
        deployment: d.id.clone(),
        bootcsum: k.boot_digest.clone(),
        files,
        cmdline: cmdline.clone(),
        boot_id: boot_id.to_owned(),
    };
    let mut report = KexecPrepareReport::new("loaded", "");
    if rec.as_ref() == Some(&want) && loader.is_loaded().map_err(anyhow::Error::new)? {
        report.outcome = "already_loaded";
        report.reason = "the same kernel, initrd and command line are loaded".into();
    } else {
        loader
            .load(&kernel, &initrds, &cmdline)
            .map_err(|e: KexecError| {
                let code = if e.needs_full_reboot() {
                    crate::exit::ExitCode::RebootNeeded
                } else {
                    crate::exit::ExitCode::Error
                };
                crate::exit::refuse(code, format!("preparing the kexec of {}: {e}", d.id))
            })?;
        let json = serde_json::to_vec_pretty(&want)?;
        crate::system::secure_write::write_private_file(&record, &json)?;
        report.reason = format!(
            "loaded for `switch`; ostree is expected to write the bootlink {bootlink} at finalization"
        );
    }
    report.deployment = Some(d.id.clone());
    report.kernel = Some(kernel);
    report.initrds = initrds;
    report.cmdline = Some(cmdline);
    report.duration_ms = t0.elapsed().as_millis() as u64;
    Ok(report)
}

/// A host with a booted and a staged deployment, for the tests of `prepare` and of `switch`'s
/// reuse of what it loaded (`super::tests`).
#[cfg(test)]
pub(crate) mod fixture {
    use super::*;

    pub(crate) fn dep(id: &str) -> Deployment {
        let (checksum, serial) = id.split_once('.').unwrap();
        Deployment {
            index: 0,
            id: id.into(),
            stateroot: "debian".into(),
            checksum: checksum.into(),
            serial: serial.parse().unwrap(),
            path: PathBuf::from("/x"),
            booted: false,
            staged: true,
            pending: false,
            rollback: false,
            pinned: false,
            origin: None,
            kernel: None,
            boot_entry: None,
            kargs: vec![],
            unlocked: None,
            rpm_ostree_live: false,
            composefs_image: false,
            composefs_signature: None,
            dev_ino: (0, 0),
        }
    }

    use crate::discover::kernel::{KernelFiles, KernelLayout};
    use crate::discover::state::StagedState;

    pub(crate) fn kernel(dir: &Path, digest: &str) -> KernelFiles {
        let k = dir.join(format!("vmlinuz-{digest}"));
        let i = dir.join(format!("initramfs-{digest}.img"));
        std::fs::write(&k, digest).unwrap();
        std::fs::write(&i, digest).unwrap();
        KernelFiles {
            layout: KernelLayout::UsrLibModules,
            version: "6.1".into(),
            vmlinuz: k,
            initramfs: Some(i),
            devicetree: None,
            devicetree_is_dir: false,
            boot_digest: digest.into(),
            digest_source: crate::discover::kernel::DigestSource::Computed,
        }
    }

    /// A booted deployment with kernel `old` and a staged one with kernel `staged_digest`.
    pub(crate) fn host(dir: &Path, staged_digest: &str) -> Host {
        let paths = HostPaths {
            sysroot: dir.join("sysroot"),
            root: dir.to_path_buf(),
            run: dir.join("run"),
            boot: dir.join("boot"),
        };
        let mut booted = dep("b00.0");
        booted.staged = false;
        booted.booted = true;
        booted.kernel = Some(kernel(dir, "old"));
        booted.kargs = vec![
            "root=/dev/vda".into(),
            "ostree=/ostree/boot.0/debian/old/0".into(),
            "quiet".into(),
        ];
        let mut staged = dep("a11.0");
        staged.kernel = Some(kernel(dir, staged_digest));
        staged.kargs = vec!["root=/dev/vda".into(), "quiet".into()];
        Host {
            paths,
            ostree_booted: true,
            booted_state: None,
            staged_state: Some(StagedState {
                name: "a11.0".into(),
                osname: "debian".into(),
                bootcsum: staged_digest.into(),
                kargs: None,
                merge_deployment: Some("b00.0".into()),
                overlay_initrds: vec![],
                locked: false,
            }),
            bootversion: Some(0),
            finalization_locked: false,
            deployments: vec![staged, booted],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{dep, host};
    use super::*;
    use crate::system::kexec::recording::{KexecCall, RecordingKexec};

    #[test]
    fn prepare_loads_once_switch_reuses_and_a_gone_deployment_is_unloaded() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path(), "new");
        let loader = RecordingKexec::default();
        let r = prepare_staged(&h, &loader, "boot1", true).unwrap();
        assert_eq!(r.outcome, "loaded", "{r:?}");
        // The merge deployment's options with ostree= replaced in place.
        let cmdline = "root=/dev/vda ostree=/ostree/boot.1/debian/new/0 quiet";
        let k = h.deployments[0].kernel.clone().unwrap();
        assert_eq!(
            loader.calls(),
            vec![KexecCall::Load {
                kernel: k.vmlinuz.clone(),
                initrds: vec![k.initramfs.clone().unwrap()],
                cmdline: cmdline.into()
            }]
        );
        // Staged again with nothing new: nothing loaded again.
        let r = prepare_staged(&h, &loader, "boot1", true).unwrap();
        assert_eq!(r.outcome, "already_loaded");
        assert_eq!(loader.calls().len(), 1);

        // What switch sees after finalization: the same bootcsum, one initrd, that cmdline.
        let d = &h.deployments[0];
        let initrd = [PathBuf::from("/boot/initramfs")];
        let reuse = |cmdline: &str, boot: &str| {
            let rec = read(&record_path(&h.paths)).unwrap().unwrap();
            let now: Vec<_> = rec.files.iter().map(|f| FileId::of(&f.path).ok()).collect();
            mismatch(&rec, d, "new", initrd.len(), cmdline, boot, &now)
        };
        assert_eq!(reuse(cmdline, "boot1"), None);
        assert!(reuse(
            "root=/dev/vda ostree=/ostree/boot.0/debian/new/0 quiet",
            "boot1"
        )
        .is_some());
        std::fs::write(&k.vmlinuz, "rebuilt").unwrap();
        assert!(reuse(cmdline, "boot1").unwrap().contains("changed"));

        // The staged deployment went away before finalization: its kernel is unloaded.
        let mut gone = h.clone();
        gone.deployments.remove(0);
        gone.staged_state = None;
        let r = prepare_staged(&gone, &loader, "boot1", true).unwrap();
        assert_eq!(r.outcome, "unloaded", "{r:?}");
        assert_eq!(loader.calls().last(), Some(&KexecCall::Unload));
    }

    /// `--no-kexec` (the shipped unit): a new kernel is not loaded, but a kernel an earlier
    /// `prepare` loaded for a deployment that is gone is still unloaded.
    #[test]
    fn no_kexec_loads_nothing_and_still_unloads_a_gone_deployments_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path(), "new");
        let loader = RecordingKexec::default();
        let r = prepare_staged(&h, &loader, "boot1", false).unwrap();
        assert_eq!(r.outcome, "skipped", "{r:?}");
        assert!(r.reason.contains("--no-kexec"), "{r:?}");
        assert!(loader.calls().is_empty());
        assert!(read(&record_path(&h.paths)).unwrap().is_none());

        assert_eq!(
            prepare_staged(&h, &loader, "boot1", true).unwrap().outcome,
            "loaded"
        );
        let mut gone = h.clone();
        gone.deployments.remove(0);
        gone.staged_state = None;
        let r = prepare_staged(&gone, &loader, "boot1", false).unwrap();
        assert_eq!(r.outcome, "unloaded", "{r:?}");
        assert_eq!(loader.calls().last(), Some(&KexecCall::Unload));
    }

    #[test]
    fn prepare_loads_nothing_when_no_kexec_is_needed_or_finalization_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let loader = RecordingKexec::default();
        let same = host(dir.path(), "old");
        assert_eq!(
            prepare_staged(&same, &loader, "b", true).unwrap().outcome,
            "not_needed"
        );
        let mut locked = host(dir.path(), "new");
        locked.finalization_locked = true;
        assert_eq!(
            prepare_staged(&locked, &loader, "b", true).unwrap().outcome,
            "not_needed"
        );
        let mut none = host(dir.path(), "new");
        none.deployments.remove(0);
        none.staged_state = None;
        assert_eq!(
            prepare_staged(&none, &loader, "b", true).unwrap().outcome,
            "not_needed"
        );
        assert!(loader.calls().is_empty());
    }

    #[test]
    fn bootlink_flips_the_bootversion() {
        let d = dep("abc.0");
        assert_eq!(
            predicted_bootlink(&d, "ff", Some(0)),
            "/ostree/boot.1/debian/ff/0"
        );
        assert_eq!(
            predicted_bootlink(&d, "ff", Some(1)),
            "/ostree/boot.0/debian/ff/0"
        );
        assert_eq!(
            predicted_bootlink(&d, "ff", None),
            "/ostree/boot.1/debian/ff/0"
        );
    }

    #[test]
    fn cmdline_replaces_ostree_in_place_or_appends() {
        let k = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            predicted_cmdline(
                &k(&["root=UUID=1", "ostree=/ostree/boot.0/debian/aa/0", "quiet"]),
                "/ostree/boot.1/debian/bb/0"
            ),
            "root=UUID=1 ostree=/ostree/boot.1/debian/bb/0 quiet"
        );
        assert_eq!(predicted_cmdline(&k(&["quiet"]), "/l"), "quiet ostree=/l");
    }

    #[test]
    fn mismatch_names_each_difference() {
        let d = dep("abc.0");
        let f = |p: &str| FileId {
            path: p.into(),
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
        };
        let rec = PreparedKexec {
            deployment: "abc.0".into(),
            bootcsum: "cs".into(),
            files: vec![f("/k"), f("/i")],
            cmdline: "a ostree=/l".into(),
            boot_id: "b1".into(),
        };
        let now = vec![Some(f("/k")), Some(f("/i"))];
        assert_eq!(mismatch(&rec, &d, "cs", 1, "a ostree=/l", "b1", &now), None);
        let m = |bootcsum, n, cmdline, boot, now: &[Option<FileId>]| {
            mismatch(&rec, &d, bootcsum, n, cmdline, boot, now).unwrap()
        };
        assert!(m("cs", 1, "a ostree=/l", "b2", &now).contains("another boot"));
        assert!(m("cx", 1, "a ostree=/l", "b1", &now).contains("bootcsum"));
        assert!(m("cs", 2, "a ostree=/l", "b1", &now).contains("initrd"));
        assert!(m("cs", 1, "a ostree=/m", "b1", &now).contains("command line"));
        let mut changed = f("/i");
        changed.mtime_ns = 5;
        assert!(m(
            "cs",
            1,
            "a ostree=/l",
            "b1",
            &[Some(f("/k")), Some(changed)]
        )
        .contains("/i changed"));
        assert!(m("cs", 1, "a ostree=/l", "b1", &[Some(f("/k")), None]).contains("/i changed"));
        let other = dep("def.0");
        assert!(mismatch(&rec, &other, "cs", 1, "a ostree=/l", "b1", &now)
            .unwrap()
            .contains("abc.0"));
    }
}
