//! The soft-reboot rung's `/run/nextroot`, mounted for real in a private mount namespace: the
//! deployment at the next root, `/usr` read-only, `/var`, `/sysroot`, `/boot`, all private — so
//! that when systemd unmounts the (shared) `/sysroot` during the soft reboot, the next root's
//! submounts survive (the prototype's pitfall 1: with plain binds they vanished with it).

mod common;
use common::cfs::{dumpfile, mkcomposefs};
use common::{ostree, run};
use fastswitch::system::composefs::ComposefsImage;
use fastswitch::system::mounts::{Mounts, NextRoot, RealMounts};
use std::path::{Path, PathBuf};
use std::process::Command;

const CHILD_ENV: &str = "FASTSWITCH_NEXTROOT_TEST_DIR";

fn mountinfo_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_str().unwrap();
    text.lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|mp| mp == d || mp.starts_with(&format!("{d}/")))
        })
        .map(str::to_owned)
        .collect()
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-ec").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// Runs inside `unshare --mount` (started by the test below); does nothing useful alone.
#[test]
#[ignore = "run by nextroot_survives_the_sysroot_unmount inside a private mount namespace"]
fn nextroot_child() {
    let top = PathBuf::from(std::env::var(CHILD_ENV).expect("started by the parent test"));
    let sysroot = top.join("sysroot");
    let deploy = sysroot.join("ostree/deploy/os/deploy/abc.0");
    for d in ["usr/bin", "etc", "var", "sysroot", "boot", "proc"] {
        std::fs::create_dir_all(deploy.join(d)).unwrap();
    }
    std::fs::write(deploy.join("usr/bin/marker"), b"target\n").unwrap();
    std::fs::create_dir_all(sysroot.join("ostree/deploy/os/var/lib")).unwrap();
    std::fs::create_dir_all(sysroot.join("boot/loader.0")).unwrap();
    // A booted host's /sysroot is a shared mount.
    sh(&format!(
        "mount --bind {s} {s} && mount --make-shared {s}",
        s = sysroot.display()
    ));
    let next = NextRoot {
        dir: top.join("run/nextroot"),
        deployment: deploy.clone(),
        var: sysroot.join("ostree/deploy/os/var"),
        sysroot: sysroot.clone(),
        boot: Some(sysroot.join("boot")),
        composefs: None,
    };
    RealMounts.prepare_nextroot(&next).unwrap();
    let lines = mountinfo_under(&next.dir);
    let at = |sub: &str| {
        let p = if sub.is_empty() {
            next.dir.clone()
        } else {
            next.dir.join(sub)
        };
        lines
            .iter()
            .find(|l| l.split(' ').nth(4) == p.to_str())
            .unwrap_or_else(|| panic!("nothing mounted at {}: {lines:#?}", p.display()))
            .clone()
    };
    for sub in ["", "usr", "var", "sysroot", "boot"] {
        let l = at(sub);
        assert!(!l.contains("shared:"), "{sub}: not private: {l}");
    }
    assert!(at("usr")
        .split(' ')
        .nth(5)
        .unwrap()
        .split(',')
        .any(|o| o == "ro"));
    assert!(!at("var")
        .split(' ')
        .nth(5)
        .unwrap()
        .split(',')
        .any(|o| o == "ro"));
    assert_eq!(
        std::fs::read(next.dir.join("usr/bin/marker")).unwrap(),
        b"target\n"
    );
    assert!(next.dir.join("var/lib").is_dir());
    assert!(
        std::fs::write(next.dir.join("usr/x"), b"").is_err(),
        "/usr must be read-only"
    );
    // Nothing propagated back into the deployment inside /sysroot.
    assert!(
        mountinfo_under(&deploy).is_empty(),
        "{:#?}",
        mountinfo_under(&deploy)
    );

    // What systemd does during the soft reboot: unmount /sysroot. The next root keeps all of it.
    sh(&format!("umount -l {}", sysroot.display()));
    let after = mountinfo_under(&next.dir);
    assert_eq!(after.len(), 5, "{after:#?}");

    // Preparing again replaces an abandoned next root; detach_tree removes it all.
    RealMounts.prepare_nextroot(&next).unwrap();
    assert_eq!(mountinfo_under(&next.dir).len(), 5);
    RealMounts.detach_tree(&next.dir).unwrap();
    assert!(mountinfo_under(&next.dir).is_empty());

    // On a composefs root: `/` is the deployment's image (committed by the real ostree CLI,
    // its image by composefs-rs), /etc the deployment's, read-write; /usr no mount of its own
    // and read-only; everything private.
    let repo = top.join("repo");
    run(ostree()
        .arg(format!("--repo={}", repo.display()))
        .args(["init", "--mode=bare"]));
    let commit = run(ostree()
        .arg(format!("--repo={}", repo.display()))
        .args(["commit", "--no-xattrs", "--branch=os"])
        .arg(format!("--tree=dir={}", deploy.display())))
    .trim()
    .to_owned();
    let farm = repo.join("objects-cfs");
    std::fs::write(
        deploy.join(".ostree.cfs"),
        mkcomposefs(&dumpfile(&repo, &commit, &farm)),
    )
    .unwrap();
    std::fs::write(deploy.join("etc/hostname"), b"next\n").unwrap();
    let cfs = NextRoot {
        composefs: Some(ComposefsImage {
            image: deploy.join(".ostree.cfs"),
            objects: farm,
            require_verity: false,
            expected_digest: None,
        }),
        ..next.clone()
    };
    RealMounts.prepare_nextroot(&cfs).unwrap();
    let lines = mountinfo_under(&next.dir);
    let at = |sub: &str| {
        let p = next.dir.join(sub);
        let p = if sub.is_empty() { next.dir.clone() } else { p };
        lines
            .iter()
            .find(|l| l.split(' ').nth(4) == p.to_str())
            .cloned()
    };
    let root = at("").unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(root.contains(" - overlay composefs "), "{root}");
    assert!(at("usr").is_none(), "{lines:#?}");
    for sub in ["", "etc", "var", "sysroot", "boot"] {
        let l = at(sub).unwrap_or_else(|| panic!("nothing at {sub}: {lines:#?}"));
        assert!(!l.contains("shared:"), "{sub}: not private: {l}");
    }
    assert_eq!(
        std::fs::read(next.dir.join("usr/bin/marker")).unwrap(),
        b"target\n"
    );
    assert!(std::fs::write(next.dir.join("usr/x"), b"").is_err());
    assert_eq!(
        std::fs::read(next.dir.join("etc/hostname")).unwrap(),
        b"next\n"
    );
    std::fs::write(next.dir.join("etc/written"), b"rw").unwrap();
    assert!(deploy.join("etc/written").exists());
    assert!(mountinfo_under(&top.join("run/fastswitch/.private")).is_empty());
    RealMounts.detach_tree(&next.dir).unwrap();
    assert!(mountinfo_under(&next.dir).is_empty());
    println!("NEXTROOT-CHILD-OK");
}

#[test]
fn nextroot_survives_the_sysroot_unmount() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root for mount namespaces (CI runs as root)"
    );
    let top = tempfile::tempdir().unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "nextroot_child", "--ignored", "--nocapture"])
        .env(CHILD_ENV, top.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("NEXTROOT-CHILD-OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
