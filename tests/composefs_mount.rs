//! `system::composefs` against the real kernel, as root, inside a private mount namespace (the
//! test re-runs itself under `unshare --mount --propagation private`, as `stale_scan` does).
//!
//! Fixture: a commit by the real `ostree` CLI, deployed as a hardlink checkout, and its
//! composefs image built as ostree does (every non-empty file external, redirected to its
//! object by the ostree checksum, all mtimes 0), written by the upstream Rust composefs library
//! from a composefs dumpfile (`ostree ls -R -C`). One difference from ostree's own image,
//! because composefs-rs cannot write an arbitrary redirect: the redirect is `/xx/<62 hex>`
//! without `.file`, so the data-only layer is a hardlink farm `objects-cfs/xx/<62>` sharing the
//! inodes of `objects/xx/<62>.file` (see shared/research/composefs-probe.md).
//!
//! Checks: the image mounts file-backed with the overlay options ostree-prepare-root uses; files
//! read back byte for byte, symlinks resolve, a binary from it runs; the mount table shows a
//! composefs overlay (what `discover::composefs` detects) and no EROFS layer left attached;
//! `open_tree` of its `usr` attaches on a plain directory and reads the same; `verity=require`
//! really reaches the kernel (this host has no fs-verity, so external files then fail with EIO).
//!
//! And the stale scan on such a root: processes run two binaries from the mounted image (the
//! booted commit); a second commit changes one of them. Their `exe` and `maps` show the
//! overlay's identity, which is neither checkout's, so the scan decides by the commits' content
//! checksums and reports exactly the process running the changed binary.

mod common;
use common::cfs::{dumpfile, mkcomposefs};
use common::*;
use fastswitch::discover::composefs::{parse_mount, root_mount_id};
use fastswitch::services::stale::{scan_stale, ScanConfig, StaleKind, StaleWhy};
use fastswitch::system::composefs::{attach, clone_subtree, mount, ComposefsImage};
use fastswitch::system::mounts::{parse_mountinfo, stack_at, Mounts, RealMounts};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const IN_NS: &str = "FASTSWITCH_COMPOSEFS_MOUNT_IN_NS";
const TEST: &str = "composefs_image_mounts_like_prepare_root";

#[test]
fn composefs_image_mounts_like_prepare_root() {
    if std::env::var_os(IN_NS).is_some() {
        in_private_namespace();
        return;
    }
    if !is_root() {
        eprintln!("skipping {TEST}: needs root (mounts in a private mount namespace)");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(&exe)
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(IN_NS, "1")
        .output()
        .expect("running unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the namespaced run failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "the namespaced run did not run the test:\n{stdout}\n{stderr}"
    );
}

/// Kills the fixture processes however the test ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Wait until `pid` maps `path`, i.e. its exec is done.
fn wait_until_maps(pid: u32, path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let needle = path.to_string_lossy().into_owned();
    loop {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        if maps.contains(&needle) {
            return;
        }
        assert!(Instant::now() < deadline, "pid {pid} never mapped {needle}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mount_line(path: &Path) -> fastswitch::discover::composefs::RootMount {
    let id = root_mount_id(path).unwrap();
    parse_mount(
        &std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
        id,
    )
    .unwrap()
}

fn in_private_namespace() {
    let s = Sysroot::new();
    s.os_init("cfs");
    let t = Tree::minimal("6.1.0-test");
    std::fs::copy("/usr/bin/true", t.path().join("usr/bin/true")).unwrap();
    for name in ["sleep-changed", "sleep-same"] {
        std::fs::copy("/usr/bin/sleep", t.path().join("usr/bin").join(name)).unwrap();
    }
    let numbers: String = (1..=2000).map(|i| format!("{i}\n")).collect();
    t.write("usr/share/cfs/numbers.txt", numbers.as_bytes());
    t.write("usr/share/cfs/small.txt", b"small\n");
    t.write("usr/share/cfs/empty", b"");
    t.symlink("numbers.txt", "usr/share/cfs/link");
    let commit = s.commit("cfs/v1", &t);
    std::fs::create_dir_all(s.path().join("ostree/deploy/cfs/deploy")).unwrap();
    let id = s.stage("cfs", &commit, "cfs/v1", None);
    let deploy = s.deploy_dir("cfs", &id);
    let farm = s.repo().join("objects-cfs");
    let image = mkcomposefs(&dumpfile(&s.repo(), &commit, &farm));
    std::fs::write(deploy.join(".ostree.cfs"), &image).unwrap();
    // The target: one binary changed (bytes appended to the ELF file), the rest the same.
    let t2 = t.fork();
    let mut changed = std::fs::read(t2.path().join("usr/bin/sleep-changed")).unwrap();
    changed.extend_from_slice(b"\0fastswitch v2");
    t2.write("usr/bin/sleep-changed", &changed);
    let commit2 = s.commit("cfs/v2", &t2);
    let target = s.deploy_dir("cfs", &s.stage("cfs", &commit2, "cfs/v2", None));

    let found = ComposefsImage::of_deployment(&deploy, false).unwrap();
    assert_eq!(found.objects, s.repo().join("objects"));
    let img = ComposefsImage {
        objects: farm.clone(),
        ..found
    };
    let work = tempfile::tempdir().unwrap();
    let scratch = work.path().join("cfsroot-lower");
    let mnt = work.path().join("root");
    for d in [&scratch, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    let root = mount(&img, &scratch).unwrap();
    attach(&root, &mnt).unwrap();

    // Files read back as in the checkout, the symlink resolves, a binary runs.
    for rel in [
        "usr/share/cfs/numbers.txt",
        "usr/share/cfs/small.txt",
        "usr/share/cfs/empty",
        "usr/share/cfs/link",
        "usr/bin/true",
        "usr/lib/os-release",
    ] {
        assert_eq!(
            std::fs::read(mnt.join(rel)).unwrap(),
            std::fs::read(deploy.join(rel)).unwrap(),
            "{rel}"
        );
    }
    assert_eq!(
        std::fs::read_link(mnt.join("usr/share/cfs/link")).unwrap(),
        Path::new("numbers.txt")
    );
    let st = Command::new(mnt.join("usr/bin/true")).status().unwrap();
    assert!(st.success(), "usr/bin/true from the composefs mount: {st}");
    // The overlay's own identity, not the object's: what the stale scan cannot compare.
    let (ovl, obj) = (
        std::fs::metadata(mnt.join("usr/share/cfs/numbers.txt")).unwrap(),
        std::fs::metadata(deploy.join("usr/share/cfs/numbers.txt")).unwrap(),
    );
    assert_ne!(ovl.dev(), obj.dev());

    // The mount table: a read-only composefs overlay; the EROFS layer is no longer attached.
    let m = mount_line(&mnt);
    assert_eq!(
        (m.fs_type.as_str(), m.source.as_str()),
        ("overlay", "composefs"),
        "{m:?}"
    );
    assert!(m.looks_composefs() && !m.requires_verity(), "{m:?}");
    for o in ["ro", "metacopy=on", "redirect_dir=on"] {
        assert!(m.super_options.iter().any(|x| x == o), "{o}: {m:?}");
    }
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !table.contains(&format!(" {} ", scratch.display())),
        "the EROFS layer is still attached:\n{table}"
    );

    // The stale scan over processes running from the composefs mount.
    let mut procs = Procs(Vec::new());
    for name in ["sleep-changed", "sleep-same"] {
        let bin = mnt.join("usr/bin").join(name);
        let child = Command::new(&bin).arg("300").spawn().unwrap();
        wait_until_maps(child.id(), &bin);
        procs.0.push(child);
    }
    let running = std::fs::metadata(format!("/proc/{}/exe", procs.0[0].id())).unwrap();
    let checkout = std::fs::metadata(deploy.join("usr/bin/sleep-changed")).unwrap();
    assert_ne!(
        (running.dev(), running.ino()),
        (checkout.dev(), checkout.ino()),
        "the process shows the checkout's identity, not the overlay's"
    );
    let scan = scan_stale(&ScanConfig {
        usr_prefix: mnt.join("usr"),
        ..ScanConfig::new(deploy.join("usr"), target.join("usr"))
    })
    .unwrap();
    type Stale = (StaleKind, String, StaleWhy);
    let ours: Vec<(u32, Vec<Stale>)> = scan
        .processes
        .iter()
        .filter(|p| procs.0.iter().any(|c| c.id() == p.pid))
        .map(|p| {
            let files = p
                .files
                .iter()
                .map(|f| (f.kind, f.path.display().to_string(), f.why))
                .collect();
            (p.pid, files)
        })
        .collect();
    let changed_path = mnt.join("usr/bin/sleep-changed").display().to_string();
    assert_eq!(
        ours,
        [(
            procs.0[0].id(),
            vec![(StaleKind::Exe, changed_path.clone(), StaleWhy::Replaced),]
        )],
        "{scan:?}"
    );
    // sleep-same: one inode in both checkouts; sleep-changed: the commits' checksums differ.
    assert_eq!(scan.compared.checksum, 1, "{:?}", scan.compared);
    assert_eq!(scan.compared.identity, 1, "{:?}", scan.compared);
    assert_eq!(scan.compared.bytes, 0, "{:?}", scan.compared);
    drop(procs);

    // open_tree of its usr, attached on a plain directory (a composefs host's /usr is no mount
    // of its own): the same files, the composefs overlay with root /usr.
    let sim_usr = work.path().join("sim/usr");
    std::fs::create_dir_all(&sim_usr).unwrap();
    let usr = clone_subtree(&root, "usr").unwrap();
    attach(&usr, &sim_usr).unwrap();
    assert_eq!(
        std::fs::read(sim_usr.join("share/cfs/numbers.txt")).unwrap(),
        numbers.as_bytes()
    );
    let m = mount_line(&sim_usr);
    assert!(m.looks_composefs(), "{m:?}");
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.contains(&format!(" /usr {} ", sim_usr.display()))),
        "the clone's root is not /usr:\n{table}"
    );
    // The clone outlives the full mount (it pins the overlay).
    rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::DETACH).unwrap();
    drop(root);
    assert_eq!(
        std::fs::read(sim_usr.join("share/cfs/small.txt")).unwrap(),
        b"small\n"
    );

    // What apply-live does on a composefs host (`Mounts::composefs_usr`): over a /usr that
    // shows the booted tree (a plain bind here), the image's usr goes on top in one move; a
    // newer one replaces it in place (Linux ≥ 6.5); the mount table lists it as fastswitch's
    // composefs usr; popping it shows the booted tree again.
    let live_usr = work.path().join("live/usr");
    std::fs::create_dir_all(&live_usr).unwrap();
    let m = RealMounts;
    m.bind_usr(&deploy.join("usr"), &live_usr).unwrap();
    let scratch_dir = work.path().join("run/fastswitch/.private/composefs");
    let top = |p: &Path| {
        stack_at(
            &parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap()),
            p,
        )
    };
    assert_eq!(
        m.composefs_usr(&img, &scratch_dir, &live_usr, false)
            .unwrap(),
        Some(false)
    );
    let stack = top(&live_usr);
    assert_eq!(stack.len(), 2, "{stack:?}");
    assert!(
        stack[1].is_composefs_usr() && !stack[0].is_composefs_usr(),
        "{stack:?}"
    );
    assert_eq!(
        std::fs::read(live_usr.join("share/cfs/numbers.txt")).unwrap(),
        numbers.as_bytes()
    );
    let ro = std::fs::write(live_usr.join("share/cfs/x"), b"x").unwrap_err();
    assert_eq!(ro.raw_os_error(), Some(libc::EROFS), "{ro}");
    // The scratch directories are private (0700) and nothing stays mounted on them.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&scratch_dir)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    for d in ["lower", "root"] {
        assert!(top(&scratch_dir.join(d)).is_empty(), "{d} still mounted");
    }
    // The target commit's image (its changed binary) in place of the first.
    let farm2 = s.repo().join("objects-cfs");
    std::fs::write(
        target.join(".ostree.cfs"),
        mkcomposefs(&dumpfile(&s.repo(), &commit2, &farm2)),
    )
    .unwrap();
    let img2 = ComposefsImage {
        image: target.join(".ostree.cfs"),
        ..img.clone()
    };
    let replaced = m
        .composefs_usr(&img2, &scratch_dir, &live_usr, true)
        .unwrap();
    assert_eq!(replaced, Some(false), "MOVE_MOUNT_BENEATH on this kernel");
    let stack = top(&live_usr);
    assert_eq!(stack.len(), 2, "replaced in place, not stacked: {stack:?}");
    assert_eq!(
        std::fs::read(live_usr.join("bin/sleep-changed")).unwrap(),
        changed
    );
    assert!(!m.unmount_top(&live_usr).unwrap());
    assert_eq!(top(&live_usr).len(), 1);
    assert!(!m.unmount_top(&live_usr).unwrap());
    // A missing image: an error naming it, nothing attached.
    let e = m
        .composefs_usr(
            &ComposefsImage {
                image: work.path().join("gone.cfs"),
                ..img.clone()
            },
            &scratch_dir,
            &live_usr,
            false,
        )
        .unwrap_err();
    assert!(format!("{e:#}").contains("gone.cfs"), "{e:#}");
    assert!(top(&live_usr).is_empty());

    // verity=require reaches the kernel: without fs-verity (this host) or digests (this
    // image), external files cannot be opened; empty files (no data) still read.
    let verity_mnt = work.path().join("verity");
    std::fs::create_dir(&verity_mnt).unwrap();
    let v = mount(
        &ComposefsImage {
            require_verity: true,
            ..img.clone()
        },
        &scratch,
    )
    .unwrap();
    attach(&v, &verity_mnt).unwrap();
    assert!(mount_line(&verity_mnt).requires_verity());
    let e = std::fs::read(verity_mnt.join("usr/share/cfs/numbers.txt")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(
        std::fs::read(verity_mnt.join("usr/share/cfs/empty")).unwrap(),
        b""
    );

    // A missing image is an error naming it.
    let e = mount(
        &ComposefsImage {
            image: work.path().join("missing.cfs"),
            ..img.clone()
        },
        &scratch,
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("missing.cfs"), "{e:#}");
    // A signed host's expected image digest is measured (FS_IOC_MEASURE_VERITY) before anything
    // is mounted; without fs-verity here, that fails and says why.
    let e = mount(
        &ComposefsImage {
            expected_digest: Some("00".repeat(32)),
            ..img.clone()
        },
        &scratch,
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("measuring the fs-verity digest of")
            && format!("{e:#}").contains(".ostree.cfs"),
        "{e:#}"
    );
    assert!(std::fs::read_dir(&scratch).unwrap().next().is_none());
    for d in [&sim_usr, &verity_mnt] {
        let _ = rustix::mount::unmount(d, rustix::mount::UnmountFlags::DETACH);
    }
}
