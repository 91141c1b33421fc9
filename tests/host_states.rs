//! Host layouts and states that real hosts have and the first test guest did not: a boot
//! partition (the boot entries are under the mounted `/boot`, `<sysroot>/boot` is empty), and the
//! states ostree, rpm-ostree and bootc leave behind (finalization locked, rpm-ostree live,
//! `ostree admin unlock`, another stateroot, transient `/etc` or root). Each refusal exits 6,
//! names the state and what ends it, and changes nothing.

mod common;
use common::*;
use fastswitch::discover::state::encode;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Fx {
    s: Sysroot,
    booted: String,
    staged: String,
}

/// A booted deployment and a staged userspace-only change, both by the real `ostree` CLI.
fn fixture() -> Fx {
    let s = Sysroot::new();
    s.os_init("fx");
    let t1 = Tree::minimal("6.1.0-test");
    t1.write("usr/etc/demo/a.conf", b"a v1\n");
    s.commit("fx/v1", &t1);
    s.deploy("fx", "fx/v1", &["root=/dev/vda", "rw"]);
    let booted = s.json(&["status"])["deployments"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.mark_booted("fx", &booted);
    let t2 = t1.fork();
    t2.write("usr/bin/hello", b"#!/bin/sh\necho v2\n");
    let c2 = s.commit("fx/v2", &t2);
    let staged = s.stage("fx", &c2, "fx/v2", None);
    Fx { s, booted, staged }
}

impl Fx {
    fn booted_dir(&self) -> PathBuf {
        self.s.deploy_dir("fx", &self.booted)
    }
    fn state_dir(&self) -> PathBuf {
        self.s
            .run()
            .join("ostree/deployment-state")
            .join(&self.booted)
    }
    fn run_fs(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = self
            .s
            .fastswitch()
            .arg("--root")
            .arg(self.booted_dir())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Every path under the fixture with type, mode, size, mtime and link target (directories
/// without mtime: taking the run lock creates `run/fastswitch`, which is not a change of the
/// system), and the mount table.
fn snapshot(root: &Path) -> String {
    let tree = run(Command::new("bash").arg("-c").arg(format!(
        "cd {} && {{ find . -path ./run/fastswitch -prune -o ! -type d -printf '%p %y %m %s %T@ %l\\n'; \
         find . -path ./run/fastswitch -prune -o -type d -printf '%p %y %m\\n'; }} | sort",
        root.display()
    )));
    let mounts = mounts_touching(root);
    format!("{tree}\n--- mounts\n{mounts}")
}

/// Run `args` on a fixture broken by `setup`; expect exit 6, `fragment` in stderr, no change.
fn refused(name: &str, args: &[&str], fragment: &str, setup: impl Fn(&Fx)) {
    let f = fixture();
    setup(&f);
    let before = snapshot(f.s.path());
    let (code, _, stderr) = f.run_fs(args);
    assert_eq!(code, Some(6), "{name}: {args:?}: {stderr}");
    assert!(
        stderr.contains(fragment),
        "{name}: {args:?}: stderr lacks {fragment:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    let after = snapshot(f.s.path());
    if after != before {
        let b: std::collections::BTreeSet<&str> = before.lines().collect();
        let a: std::collections::BTreeSet<&str> = after.lines().collect();
        panic!(
            "{name}: {args:?} changed something: gone {:?}, new {:?}",
            b.difference(&a).collect::<Vec<_>>(),
            a.difference(&b).collect::<Vec<_>>()
        );
    }
}

fn lock_staged(f: &Fx) {
    let st = f.s.run().join("ostree/staged-deployment");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(
        &st,
        fastswitch::discover::state::with_locked(&bytes, true).unwrap(),
    )
    .unwrap();
}

#[test]
fn boot_partition_entries_are_read_from_the_mounted_boot() {
    let f = fixture();
    // Move the boot directory out of the sysroot, as on a host with a boot partition: the
    // running root's /boot holds `loader`, <sysroot>/boot is an empty mount point.
    let root = tempfile::tempdir().unwrap();
    let sys_boot = f.s.path().join("boot");
    run(Command::new("mv")
        .arg(&sys_boot)
        .arg(root.path().join("boot")));
    std::fs::create_dir(&sys_boot).unwrap();
    let status = |with_root: bool| {
        let mut c = f.s.fastswitch();
        if with_root {
            c.arg("--root").arg(root.path());
        }
        let out = run(c.args(["status", "--json"]));
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let st = status(true);
    assert_eq!(
        st["boot_dir"].as_str().unwrap(),
        root.path().join("boot").to_str().unwrap()
    );
    let deps = st["deployments"].as_array().unwrap();
    assert_eq!(deps.len(), 2, "{st}");
    assert_eq!(deps[1]["id"], f.booted.as_str());
    assert!(deps[1]["booted"].as_bool().unwrap());
    assert!(deps[1]["boot_entry"].as_str().is_some());
    // The same sysroot read through its own (empty) boot directory finds only the staged one:
    // exactly what fastswitch did before it looked at the mounted /boot.
    let st = status(false);
    assert_eq!(st["boot_dir"].as_str().unwrap(), sys_boot.to_str().unwrap());
    assert_eq!(st["deployments"].as_array().unwrap().len(), 1, "{st}");
    // diff works through the mounted /boot too.
    let out = run(f
        .s
        .fastswitch()
        .arg("--root")
        .arg(root.path())
        .args(["diff", "--json"]));
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["decision"]["kind"], "live", "{d}");
}

#[test]
fn finalization_locked_refuses_every_switching_verb() {
    for args in [
        &["apply-live", "--no-services"][..],
        &["apply-live", "--dry-run", "--no-services"],
        &["kexec", "--dry-run"],
        &["kexec", "--load-only"],
        &["switch", "--dry-run"],
    ] {
        refused(
            "locked (staged-deployment key)",
            args,
            "finalization of the staged deployment",
            lock_staged,
        );
    }
    refused(
        "locked (legacy file)",
        &["apply-live", "--no-services"],
        "pass --unlock",
        |f| std::fs::write(f.s.run().join("ostree/staged-deployment-locked"), b"").unwrap(),
    );
}

#[test]
fn unlock_is_a_step_of_the_plan() {
    let f = fixture();
    lock_staged(&f);
    let st = f.s.json(&["status"]);
    assert_eq!(st["finalization_locked"], true);
    let (code, out, err) = f.run_fs(&[
        "apply-live",
        "--dry-run",
        "--no-services",
        "--unlock",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["steps"][0]["step"], "unlock_finalization", "{plan}");
    assert_eq!(plan["host_states"][0]["state"], "finalization_locked");
    // The unlock itself, as `ostree admin lock-finalization --unlock` does it.
    std::fs::write(f.s.run().join("ostree/staged-deployment-locked"), b"").unwrap();
    let paths = fastswitch::discover::HostPaths::resolve(
        Some(f.s.path().into()),
        Some(f.booted_dir()),
        Some(f.s.run()),
    );
    fastswitch::system::ostree_state::unlock_finalization(&paths).unwrap();
    assert!(!f.s.run().join("ostree/staged-deployment-locked").exists());
    let st = f.s.json(&["status"]);
    assert_eq!(st["finalization_locked"], false);
    assert_eq!(st["deployments"][0]["id"], f.staged.as_str());
    assert_eq!(st["deployments"][0]["staged"], true);
}

#[test]
fn overlays_on_usr_refuse_a_live_apply() {
    refused(
        "rpm-ostree live",
        &["apply-live", "--no-services"],
        "rpm-ostree apply-live --reset",
        |f| {
            std::fs::create_dir_all(f.state_dir()).unwrap();
            std::fs::write(f.state_dir().join("rpmostree-is-live.stamp"), b"").unwrap();
        },
    );
    for flag in ["unlocked-transient", "unlocked-development"] {
        refused(
            flag,
            &["apply-live", "--no-services"],
            "ostree admin unlock",
            |f| {
                std::fs::create_dir_all(f.state_dir()).unwrap();
                std::fs::write(f.state_dir().join(flag), b"").unwrap();
            },
        );
    }
    refused(
        "hotfix",
        &["apply-live", "--dry-run", "--no-services"],
        "unlocked (hotfix",
        |f| {
            let origin = f
                .booted_dir()
                .with_file_name(format!("{}.origin", f.booted));
            let text = std::fs::read_to_string(&origin).unwrap();
            std::fs::write(&origin, format!("{text}unlocked=hotfix\n")).unwrap();
        },
    );
    // status shows them.
    let f = fixture();
    std::fs::create_dir_all(f.state_dir()).unwrap();
    std::fs::write(f.state_dir().join("unlocked-transient"), b"").unwrap();
    std::fs::write(f.state_dir().join("rpmostree-is-live.stamp"), b"").unwrap();
    let st = f.s.json(&["status"]);
    assert_eq!(st["deployments"][1]["unlocked"], "transient", "{st}");
    assert_eq!(st["deployments"][1]["rpm_ostree_live"], true, "{st}");
}

#[test]
fn transient_etc_or_root_refuse_a_live_apply() {
    let mark = |f: &Fx, root: bool, etc: Option<&str>| {
        let m = std::fs::metadata(f.booted_dir()).unwrap();
        std::fs::write(
            f.s.run().join("ostree-booted"),
            encode::booted_transient(m.dev(), m.ino(), root, etc),
        )
        .unwrap();
    };
    refused(
        "etc.transient",
        &["apply-live", "--no-services"],
        "/etc is transient",
        |f| mark(f, false, Some("/run/ostree/transient-etc.Ab12Cd")),
    );
    refused(
        "root.transient",
        &["apply-live", "--no-services"],
        "root is transient",
        |f| mark(f, true, None),
    );
    let f = fixture();
    mark(&f, true, Some("/run/ostree/transient-etc.x"));
    let st = f.s.json(&["status"]);
    assert_eq!(st["root_transient"], true);
    assert_eq!(st["transient_etc"], "/run/ostree/transient-etc.x");
    // A clean host: none of it.
    let f = fixture();
    let st = f.s.json(&["status"]);
    assert_eq!(
        (
            &st["root_transient"],
            &st["transient_etc"],
            &st["finalization_locked"]
        ),
        (
            &serde_json::json!(false),
            &serde_json::Value::Null,
            &serde_json::json!(false)
        )
    );
}

#[test]
fn target_in_another_stateroot_is_not_applied_live() {
    refused(
        "other stateroot",
        &["apply-live", "--no-services"],
        "/var belongs to a stateroot",
        |f| {
            f.s.os_init("other");
            std::fs::create_dir_all(f.s.path().join("ostree/deploy/other/deploy")).unwrap();
            let t = Tree::minimal("6.1.0-test");
            t.write("usr/bin/other", b"other\n");
            let c = f.s.commit("other/v1", &t);
            f.s.stage("other", &c, "other/v1", None);
        },
    );
}

/// A booted v1 and a staged v2 that differs from v1 by `change`.
fn fixture_with(change: impl Fn(&Tree)) -> Fx {
    let s = Sysroot::new();
    s.os_init("fx");
    let t1 = Tree::minimal("6.1.0-test");
    t1.write("opt/vendor/app.conf", b"v1\n");
    t1.symlink("usr/bin", "bin");
    s.commit("fx/v1", &t1);
    s.deploy("fx", "fx/v1", &["root=/dev/vda", "rw"]);
    let booted = s.json(&["status"])["deployments"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.mark_booted("fx", &booted);
    let t2 = t1.fork();
    t2.write("usr/bin/hello", b"#!/bin/sh\necho v2\n");
    change(&t2);
    let c2 = s.commit("fx/v2", &t2);
    let staged = s.stage("fx", &c2, "fx/v2", None);
    Fx { s, booted, staged }
}

#[test]
fn content_outside_usr_or_boot_time_config_is_never_applied_live() {
    type Change = Box<dyn Fn(&Tree)>;
    let cases: Vec<(&str, Change, Option<&str>)> = vec![
        ("only /usr changed", Box::new(|_| {}), None),
        (
            "a file under /opt changed",
            Box::new(|t| t.write("opt/vendor/app.conf", b"v2\n")),
            Some("content outside /usr changed (/opt)"),
        ),
        (
            "a new top-level directory",
            Box::new(|t| t.write("srv/www/index.html", b"hi\n")),
            Some("content outside /usr changed (/srv)"),
        ),
        (
            "a top-level symlink retargeted",
            Box::new(|t| {
                t.remove("bin");
                t.symlink("usr/sbin", "bin");
            }),
            Some("content outside /usr changed (/bin)"),
        ),
        (
            "prepare-root.conf changed",
            Box::new(|t| {
                t.write(
                    "usr/lib/ostree/prepare-root.conf",
                    b"[etc]\ntransient=true\n",
                )
            }),
            Some("/usr/lib/ostree/prepare-root.conf changed"),
        ),
    ];
    for (name, change, reason) in cases {
        let f = fixture_with(change);
        let d = f.s.json(&["diff"]);
        let reasons = d["decision"]["reasons"].to_string();
        match reason {
            None => assert_eq!(d["decision"]["kind"], "live", "{name}: {d}"),
            Some(r) => {
                assert_eq!(d["decision"]["kind"], "kexec", "{name}: {reasons}");
                assert!(reasons.contains(r), "{name}: {reasons}");
                // apply-live refuses with the reason, exit 5, and changes nothing.
                let before = snapshot(f.s.path());
                let (code, _, err) = f.run_fs(&["apply-live", "--no-services"]);
                assert_eq!(code, Some(5), "{name}: {err}");
                assert!(err.contains(r), "{name}: {err}");
                assert_eq!(snapshot(f.s.path()), before, "{name}");
            }
        }
        let outside: Vec<&str> = d["outside_usr"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            outside.is_empty(),
            reason.is_none() || name.contains("prepare-root"),
            "{name}: {outside:?}"
        );
        let _ = &f.staged;
    }
}

/// `switch --dry-run` on fixtures: the ladder's verdict for every rung is in the plan JSON.
/// (No system bus on a build machine: the soft-reboot rung is rejected as unreachable, and
/// services are not examined; the VM scenarios check both with a real systemd.)
#[test]
fn switch_dry_run_explains_every_rung() {
    let f = fixture();
    let (code, out, err) = f.run_fs(&["switch", "--dry-run", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    let l = &p["ladder"];
    assert_eq!(l["chosen"], "live", "{l}");
    assert_eq!(l["rungs"][0]["rung"], "none");
    assert_eq!(
        l["rungs"][0]["reasons"][0],
        "the target differs from the running system"
    );
    assert_eq!(l["rungs"][1]["possible"], true);
    assert_eq!(p["steps"][0]["step"], "link_usr");
    assert_eq!(p["steps"][1]["step"], "swap_usr");

    // Content outside /usr: not live; soft-reboot impossible without systemd; kexec above the
    // bound: refused with every rung's reason, exit 5, nothing changed.
    let f = fixture_with(|t| t.write("opt/vendor/app.conf", b"v2\n"));
    let before = snapshot(f.s.path());
    let (code, _, err) = f.run_fs(&["switch", "--dry-run", "--max-rung", "live"]);
    assert_eq!(code, Some(5), "{err}");
    for want in [
        "live: content outside /usr changed (/opt)",
        "soft-reboot: systemd is not reachable",
        "kexec: above --max-rung live",
        "reboot: above --max-rung live",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
    assert_eq!(snapshot(f.s.path()), before);
}

#[test]
fn tpm2_unlocked_volume_needs_an_explicit_kexec() {
    let f = fixture_with(|t| t.write("usr/lib/modules/6.1.0-test/vmlinuz", b"kernel image v2\n"));
    let ct = f.booted_dir().join("etc/crypttab");
    std::fs::write(&ct, "luks-root UUID=abc none tpm2-device=auto,discard\n").unwrap();
    let (code, _, err) = f.run_fs(&["switch", "--dry-run"]);
    assert_eq!(code, Some(5), "{err}");
    assert!(
        err.contains("luks-root unlock(s) through a TPM2 token"),
        "{err}"
    );
    assert!(err.contains("--allow-tpm-kexec"), "{err}");
    assert!(err.contains("soft-reboot: kernel changed"), "{err}");
    // Allowed: the kexec rung is taken (the fixture's fake kernel image then fails the image
    // check, which is the next safety net, exit 6).
    let (code, _, err) = f.run_fs(&["switch", "--dry-run", "--allow-tpm-kexec"]);
    assert_eq!(code, Some(6), "{err}");
    assert!(err.contains("switch") && err.contains(": kexec"), "{err}");
}

/// `--json` output is JSON on every path, "nothing to do" included.
#[test]
fn nothing_to_do_is_json_too() {
    let s = Sysroot::new();
    s.os_init("fx");
    let t1 = Tree::minimal("6.1.0-test");
    let c1 = s.commit("fx/v1", &t1);
    s.deploy("fx", "fx/v1", &["root=/dev/vda", "rw"]);
    let booted = s.json(&["status"])["deployments"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.mark_booted("fx", &booted);
    s.stage("fx", &c1, "fx/v1", None);
    let root = s.deploy_dir("fx", &booted);
    for args in [
        &["kexec", "--dry-run", "--json"][..],
        &["switch", "--dry-run", "--json"],
        &["apply-live", "--dry-run", "--no-services", "--json"],
    ] {
        let out = s
            .fastswitch()
            .arg("--root")
            .arg(&root)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        assert_eq!(v["decision"]["kind"], "none", "{args:?}: {v}");
        assert!(v["steps"].as_array().unwrap().is_empty(), "{args:?}: {v}");
    }
}

/// `status --json` and `diff --json` carry the ladder `switch` would follow (default bounds,
/// services not examined; with `--root` this host's systemd is not asked).
#[test]
fn status_and_diff_json_carry_the_ladder() {
    let f = fixture();
    for verb in ["diff", "status"] {
        let (code, out, err) = f.run_fs(&[verb, "--json"]);
        assert_eq!(code, Some(0), "{verb}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let l = &v["ladder"];
        assert_eq!(l["chosen"], "live", "{verb}: {v}");
        assert_eq!(l["rungs"][0]["rung"], "none");
        assert_eq!(
            l["rungs"][0]["reasons"][0],
            "the target differs from the running system"
        );
        assert_eq!(l["rungs"][2]["rung"], "soft-reboot");
        assert_eq!(l["rungs"][2]["possible"], false);
        assert!(
            l["rungs"][2]["reasons"]
                .to_string()
                .contains("systemd is not reachable"),
            "{verb}: {l}"
        );
    }
    // The diff's own fields are still at the top level.
    let (_, out, _) = f.run_fs(&["diff", "--json"]);
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["decision"]["kind"], "live");

    // A kernel change: not live, not soft-reboot (kernel changed), kexec chosen.
    let f = fixture_with(|t| t.write("usr/lib/modules/6.1.0-test/vmlinuz", b"kernel image v2\n"));
    let (code, out, err) = f.run_fs(&["diff", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    let l = &d["ladder"];
    assert_eq!(l["chosen"], "kexec", "{l}");
    assert_eq!(l["rungs"][1]["possible"], false, "{l}");
    assert!(
        l["rungs"][2]["reasons"]
            .to_string()
            .contains("kernel changed"),
        "{l}"
    );

    // Nothing staged or pending: status has no ladder.
    let s = Sysroot::new();
    s.os_init("fx");
    let t1 = Tree::minimal("6.1.0-test");
    s.commit("fx/v1", &t1);
    s.deploy("fx", "fx/v1", &["root=/dev/vda", "rw"]);
    let st = s.json(&["status"]);
    assert!(st["ladder"].is_null(), "{st}");
}

/// A composefs root with fs-verity and a signed image (`/run/ostree-booted` as
/// ostree-prepare-root writes it): apply-live refuses to bind the plain checkout over `/usr`
/// (exit 6, naming what is given up and the flag, nothing changed); `switch` skips live and
/// soft-reboot for the same reason; `--allow-unverified-usr` lets the live rung through and the
/// plan still says what it gives up; `status` shows the mode.
#[test]
fn verified_composefs_needs_an_explicit_plain_usr() {
    let key = "/etc/ostree/initramfs-root-binding.key";
    let mark = |f: &Fx| {
        let m = std::fs::metadata(f.booted_dir()).unwrap();
        std::fs::write(
            f.s.run().join("ostree-booted"),
            encode::booted_composefs(m.dev(), m.ino(), true, Some(key)),
        )
        .unwrap();
    };
    refused(
        "signed composefs",
        &["apply-live", "--no-services"],
        "--allow-unverified-usr to give that up",
        mark,
    );
    let f = fixture();
    mark(&f);
    let (code, _, err) = f.run_fs(&["apply-live", "--no-services"]);
    assert_eq!(code, Some(6), "{err}");
    for want in [
        "composefs with fs-verity required",
        key,
        "plain hardlinked checkout",
        "no fs-verity digest and no signature",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }

    // switch: live and soft-reboot are rejected for it (kexec, the next rung, is kept out by
    // the bound: the fixture's kernel is not a real image).
    let (code, _, err) = f.run_fs(&["switch", "--dry-run", "--max-rung", "soft-reboot"]);
    assert_eq!(code, Some(5), "{err}");
    for want in [
        "live: the root is composefs with fs-verity required",
        "soft-reboot: the root is composefs with fs-verity required",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
    assert_eq!(err.matches("--allow-unverified-usr").count(), 2, "{err}");

    let (code, out, err) = f.run_fs(&[
        "apply-live",
        "--no-services",
        "--dry-run",
        "--allow-unverified-usr",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("--allow-unverified-usr given"), "{out}");
    let (code, out, err) = f.run_fs(&["switch", "--dry-run", "--json", "--allow-unverified-usr"]);
    assert_eq!(code, Some(0), "{err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["ladder"]["chosen"], "live", "{p}");
    assert_eq!(p["host_states"][0]["state"], "composefs_verified", "{p}");
    assert_eq!(p["host_states"][0]["allowed"], true, "{p}");

    let st = f.s.json(&["status"]);
    assert_eq!(st["composefs"]["mode"], "signed", "{st}");
    assert_eq!(st["composefs"]["verity"], true, "{st}");
    assert_eq!(st["composefs"]["signed"], key, "{st}");
    let text = run(f.s.fastswitch().arg("status"));
    assert!(
        text.contains("composefs: signed (fs-verity required"),
        "{text}"
    );
    // Without verity nothing is refused; the plan says what the plain bind means.
    let f = fixture();
    let m = std::fs::metadata(f.booted_dir()).unwrap();
    std::fs::write(
        f.s.run().join("ostree-booted"),
        encode::booted_composefs(m.dev(), m.ino(), false, None),
    )
    .unwrap();
    let (code, out, err) = f.run_fs(&["apply-live", "--no-services", "--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("host state: the root is composefs without fs-verity and the target has no .ostree.cfs image: a live apply binds the target's plain hardlinked checkout over /usr"),
        "{out}"
    );
    assert_eq!(f.s.json(&["status"])["composefs"]["mode"], "unverified");
    // A plain host says off.
    let f = fixture();
    assert_eq!(f.s.json(&["status"])["composefs"]["mode"], "off");
    assert!(run(f.s.fastswitch().arg("status")).contains("composefs: off"));
}

/// The staged commit of [`fixture`] again, but with `ostree.composefs.digest.v0` in its metadata
/// (as ostree records its image's fs-verity digest) and an `.ostree.cfs` in the deployment.
fn fixture_with_image(digest: &[u8; 32]) -> Fx {
    let s = Sysroot::new();
    s.os_init("fx");
    let t1 = Tree::minimal("6.1.0-test");
    s.commit("fx/v1", &t1);
    s.deploy("fx", "fx/v1", &["root=/dev/vda", "rw"]);
    let booted = s.json(&["status"])["deployments"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.mark_booted("fx", &booted);
    let t2 = t1.fork();
    t2.write("usr/bin/hello", b"#!/bin/sh\necho v2\n");
    let bytes: Vec<String> = digest.iter().map(|b| format!("0x{b:02x}")).collect();
    let c2 = run(ostree()
        .arg(format!("--repo={}", s.repo().display()))
        .args(["commit", "--no-xattrs", "--branch=fx/v2"])
        .arg(format!(
            "--add-metadata=ostree.composefs.digest.v0=[byte {}]",
            bytes.join(", ")
        ))
        .arg(format!("--tree=dir={}", t2.path().display())))
    .trim()
    .to_owned();
    let staged = s.stage("fx", &c2, "fx/v2", None);
    std::fs::write(s.deploy_dir("fx", &staged).join(".ostree.cfs"), b"image").unwrap();
    Fx { s, booted, staged }
}

/// An ed25519 key pair made by `openssl`; returns (private key PEM path, base64 public key).
fn openssl_key(dir: &Path, name: &str) -> (PathBuf, String) {
    use base64::Engine;
    let pem = dir.join(format!("{name}.pem"));
    run(Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&pem));
    let der = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&pem)
        .output()
        .unwrap()
        .stdout;
    let raw = &der[der.len() - 32..];
    (pem, base64::engine::general_purpose::STANDARD.encode(raw))
}

/// `ostree sign` (ed25519) as ostree writes it: the signature of the commit object's bytes,
/// here made by `openssl pkeyutl` (this machine's ostree is built without ed25519), in the
/// commit's detached metadata `<commit>.commitmeta` (encoded by zvariant).
fn sign_commit(repo: &Path, commit: &str, pem: &Path) {
    let object = repo
        .join("objects")
        .join(&commit[..2])
        .join(format!("{}.commit", &commit[2..]));
    let sig = Command::new("openssl")
        .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
        .arg(pem)
        .arg("-in")
        .arg(&object)
        .output()
        .unwrap();
    assert!(sig.status.success(), "{sig:?}");
    assert_eq!(sig.stdout.len(), 64);
    std::fs::write(
        object.with_extension("commitmeta"),
        fastswitch::discover::signature::encode_commitmeta(&[sig.stdout]),
    )
    .unwrap();
}

/// A composefs root whose staged deployment has an `.ostree.cfs` image goes live by mounting
/// that image, keeping the booted root's guarantees:
/// - without fs-verity: the image, no verity; with fs-verity: the image with `verity=require`;
/// - signed: only when the target commit (the real ostree object) carries a valid ed25519
///   signature (made by openssl, an implementation independent of fastswitch's) by a key of
///   the key file, and then with the digest the commit records as the expected image digest;
///   a signature by another key or none is refused (exit 6, naming why, nothing changed);
/// - `status` shows the image.
#[test]
fn composefs_target_image_goes_live_with_the_booted_guarantees() {
    let digest: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let key = "/etc/ostree/initramfs-root-binding.key";
    let mark = |f: &Fx, verity: bool, signed: Option<&str>| {
        let m = std::fs::metadata(f.booted_dir()).unwrap();
        std::fs::write(
            f.s.run().join("ostree-booted"),
            encode::booted_composefs(m.dev(), m.ino(), verity, signed),
        )
        .unwrap();
    };
    let plan = |f: &Fx| {
        let (code, out, err) = f.run_fs(&["apply-live", "--no-services", "--dry-run", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let f = fixture_with_image(&digest);
    let image = f.s.deploy_dir("fx", &f.staged).join(".ostree.cfs");
    let objects = f.s.repo().join("objects");
    for verity in [false, true] {
        mark(&f, verity, None);
        let p = plan(&f);
        let steps: Vec<&str> = p["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_str().unwrap())
            .collect();
        assert_eq!(steps, ["swap_composefs_usr"], "{p}");
        assert_eq!(
            p["steps"][0]["image"],
            serde_json::json!({"image": image, "objects": objects, "require_verity": verity}),
            "{p}"
        );
    }
    let st = f.s.json(&["status"]);
    assert_eq!(st["deployments"][0]["composefs_image"], true, "{st}");
    assert_eq!(st["deployments"][1]["composefs_image"], false, "{st}");

    // Signed: the key file in the running root, the commit signed by its key.
    let keys = tempfile::tempdir().unwrap();
    let (pem, public) = openssl_key(keys.path(), "trusted");
    let key_file = f.booted_dir().join(key.trim_start_matches('/'));
    std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
    std::fs::write(&key_file, format!("{public}\n")).unwrap();
    mark(&f, true, Some(key));
    // Not signed yet: refused, naming why.
    let (code, _, err) = f.run_fs(&["apply-live", "--no-services"]);
    assert_eq!(code, Some(6), "{err}");
    assert!(err.contains("no detached metadata"), "{err}");
    sign_commit(&f.s.repo(), &f.staged[..64], &pem);
    let p = plan(&f);
    assert_eq!(p["steps"][0]["image"]["expected_digest"], hex, "{p}");
    assert_eq!(p["steps"][0]["image"]["require_verity"], true, "{p}");
    assert_eq!(
        p["host_states"][0]["signature"]["signature"], "valid",
        "{p}"
    );
    assert_eq!(
        p["host_states"][0]["signature"]["composefs_digest"], hex,
        "{p}"
    );
    // Signed by a key the key file does not hold: refused, nothing changed.
    let (other, _) = openssl_key(keys.path(), "other");
    sign_commit(&f.s.repo(), &f.staged[..64], &other);
    let before = snapshot(f.s.path());
    let (code, _, err) = f.run_fs(&["apply-live", "--no-services"]);
    assert_eq!(code, Some(6), "{err}");
    assert!(
        err.contains("none of the commit's 1 ed25519 signature(s) is valid")
            && err.contains("--allow-unverified-usr"),
        "{err}"
    );
    assert_eq!(snapshot(f.s.path()), before);
    // Allowed: the image is mounted with verity but no trusted digest, and the plan says so.
    let (code, out, err) = f.run_fs(&[
        "apply-live",
        "--no-services",
        "--dry-run",
        "--json",
        "--allow-unverified-usr",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(p["steps"][0]["image"]["expected_digest"].is_null(), "{p}");
    assert_eq!(
        p["host_states"][0]["signature"]["signature"], "invalid",
        "{p}"
    );
}
