//! apply-live and reset for real, as root, inside a private mount namespace (`unshare -m`), on a
//! sysroot made by the real ostree CLI. The booted deployment's directory serves as the fake
//! root: its `usr` is where the target's `usr` gets bound, its `etc` is the live /etc.
//!
//! Each scenario runs as one shell script under `unshare --mount --propagation private`, so the
//! binds live exactly as long as the script, and the host's mount table is never touched.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Scenario {
    s: Sysroot,
    staged: String,
    root: PathBuf,
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// v1 booted, v2 staged: a changed binary, a new library dir, and /etc defaults that exercise
/// every merge action; the admin has edited the booted /etc.
fn scenario() -> Scenario {
    let s = Sysroot::new();
    s.os_init("fx");
    let t1 = Tree::minimal("6.1.0-test");
    t1.write("usr/etc/demo/changed.conf", b"default v1\n");
    t1.write("usr/etc/demo/edited.conf", b"default v1\n");
    t1.write("usr/etc/demo/removed.conf", b"default v1\n");
    t1.write("usr/etc/demo/same.conf", b"same\n");
    t1.write("usr/share/demo/version", b"1\n");
    s.commit("fx/v1", &t1);
    s.deploy("fx", "fx/v1", &["root=/dev/vda", "rw"]);
    let v = s.json(&["status"]);
    let booted = v["deployments"][0]["id"].as_str().unwrap().to_owned();
    s.mark_booted("fx", &booted);
    let root = s.deploy_dir("fx", &booted);
    assert_eq!(s.json(&["status"])["deployments"][0]["booted"], true);
    // The admin's edits on the live /etc.
    std::fs::write(root.join("etc/demo/edited.conf"), b"admin edit\n").unwrap();
    std::fs::write(root.join("etc/local-only.conf"), b"mine\n").unwrap();

    let t2 = t1.fork();
    t2.write("usr/bin/hello", b"#!/bin/sh\necho hello v2\n");
    t2.write("usr/share/demo/version", b"2\n");
    t2.write("usr/lib/demo/new.so", b"new library\n");
    t2.write("usr/etc/demo/changed.conf", b"default v2\n");
    t2.write("usr/etc/demo/edited.conf", b"default v2\n");
    t2.remove("usr/etc/demo/removed.conf");
    t2.write("usr/etc/demo/added.conf", b"added in v2\n");
    t2.chmod("usr/etc/demo/added.conf", 0o640);
    let c2 = s.commit("fx/v2", &t2);
    let staged = s.stage("fx", &c2, "fx/v2", None);
    Scenario { s, staged, root }
}

/// Run `script` in a private mount namespace with FS=<fastswitch with fixture args>, ROOT, OUT.
fn in_namespace(sc: &Scenario, out: &Path, script: &str) -> std::process::Output {
    // Like ostree-prepare-root, make the running root a bind of the booted deployment, so
    // binding over <root>/usr leaves the physical deployment directory untouched.
    let fake = out.join("fake-root");
    std::fs::create_dir_all(&fake).unwrap();
    let fs = format!(
        "{} --sysroot {} --run-dir {} --root {}",
        env!("CARGO_BIN_EXE_fastswitch"),
        sc.s.path().display(),
        sc.s.run().display(),
        fake.display()
    );
    let full = format!(
        "set -u\nmount --bind {} {}\nFS=\"{fs}\"\nROOT={}\nOUT={}\n{script}",
        sc.root.display(),
        fake.display(),
        fake.display(),
        out.display()
    );
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c", &full])
        .output()
        .expect("running unshare")
}

fn read_json(p: &Path) -> Value {
    let t = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{}: {e}\n{t}", p.display()))
}

/// A snapshot of a tree: path, type, mode, content hash — to compare bit for bit.
fn snapshot(dir: &Path) -> String {
    run(Command::new("bash").arg("-c").arg(format!(
        "cd {} && find . -printf '%p %y %m %U:%G %l\\n' | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum",
        dir.display()
    )))
}

const APPLY_THEN_CHECK: &str = r#"
$FS apply-live --no-services --json > $OUT/apply.json; echo $? > $OUT/apply.rc
cat $ROOT/usr/share/demo/version > $OUT/version.after
grep -c " $ROOT/usr " /proc/self/mountinfo > $OUT/usr_mounts.after || true
$FS status --json > $OUT/status.json
$FS apply-live --no-services --json > $OUT/again.json; echo $? > $OUT/again.rc
$FS reset --no-services --json > $OUT/reset.json; echo $? > $OUT/reset.rc
cat $ROOT/usr/share/demo/version > $OUT/version.reset
grep -c " $ROOT/usr " /proc/self/mountinfo > $OUT/usr_mounts.reset || true
$FS reset --no-services --json > $OUT/reset2.json; echo $? > $OUT/reset2.rc
"#;

fn rc(out: &Path, name: &str) -> i32 {
    std::fs::read_to_string(out.join(name))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn apply_live_then_reset_in_a_private_namespace() {
    if !is_root() {
        eprintln!("skipped: needs root for mount namespaces (CI runs as root)");
        return;
    }
    let sc = scenario();
    let etc_before = snapshot(&sc.root.join("etc"));
    let usr_before = snapshot(&sc.root.join("usr"));

    // The dry run names every step and changes nothing.
    let plan = sc.s.json(&[
        "--root",
        sc.root.to_str().unwrap(),
        "apply-live",
        "--dry-run",
        "--no-services",
    ]);
    assert_eq!(plan["schema_version"], 1);
    assert_eq!(plan["decision"]["kind"], "live");
    assert_eq!(plan["to"]["id"], sc.staged.as_str());
    let steps: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["swap_usr", "merge_etc"]);
    let etc_actions: Vec<(String, String)> = plan["steps"][1]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["path"].as_str().unwrap().to_owned(),
                a["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for want in [
        ("/etc/demo/added.conf", "add"),
        ("/etc/demo/changed.conf", "take_new_default"),
        ("/etc/demo/removed.conf", "remove"),
        ("/etc/demo/edited.conf", "keep_local"),
    ] {
        assert!(
            etc_actions.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{want:?} not in {etc_actions:?}"
        );
    }
    assert_eq!(
        plan["etc_conflicts"],
        serde_json::json!(["/etc/demo/edited.conf"])
    );
    assert_eq!(
        snapshot(&sc.root.join("etc")),
        etc_before,
        "dry run changed /etc"
    );

    let out = tempfile::tempdir().unwrap();
    let o = in_namespace(&sc, out.path(), APPLY_THEN_CHECK);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);

    assert_eq!(rc(out.path(), "apply.rc"), 0, "{stderr}");
    let rep = read_json(&out.path().join("apply.json"));
    assert_eq!(rep["outcome"], "ok");
    assert_eq!(rep["steps"][0]["step"], "swap_usr");
    assert_eq!(rep["steps"][0]["outcome"], "done");
    assert_eq!(
        std::fs::read_to_string(out.path().join("version.after")).unwrap(),
        "2\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("usr_mounts.after"))
            .unwrap()
            .trim(),
        "1",
        "exactly one bind on /usr"
    );
    let st = read_json(&out.path().join("status.json"));
    assert_eq!(st["live"]["target"], sc.staged.as_str());
    assert_eq!(st["live"]["complete"], true);
    assert_eq!(
        rc(out.path(), "again.rc"),
        3,
        "a second apply-live to the same target is nothing to do"
    );

    assert_eq!(rc(out.path(), "reset.rc"), 0, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(out.path().join("version.reset")).unwrap(),
        "1\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("usr_mounts.reset"))
            .unwrap()
            .trim(),
        "0"
    );
    assert_eq!(
        rc(out.path(), "reset2.rc"),
        3,
        "reset without live state is nothing to do"
    );
    // Outside the namespace nothing was ever mounted, and reset restored /etc bit for bit.
    assert_eq!(snapshot(&sc.root.join("usr")), usr_before);
    assert_eq!(snapshot(&sc.root.join("etc")), etc_before);
}

#[test]
fn merged_etc_is_what_the_plan_said() {
    if !is_root() {
        eprintln!("skipped: needs root for mount namespaces (CI runs as root)");
        return;
    }
    let sc = scenario();
    let out = tempfile::tempdir().unwrap();
    let o = in_namespace(
        &sc,
        out.path(),
        "$FS apply-live --no-services --json > $OUT/apply.json; echo $? > $OUT/apply.rc",
    );
    assert!(o.status.success());
    assert_eq!(
        rc(out.path(), "apply.rc"),
        0,
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let etc = sc.root.join("etc/demo");
    assert_eq!(
        std::fs::read_to_string(etc.join("changed.conf")).unwrap(),
        "default v2\n"
    );
    assert_eq!(
        std::fs::read_to_string(etc.join("edited.conf")).unwrap(),
        "admin edit\n"
    );
    assert_eq!(
        std::fs::read_to_string(etc.join("added.conf")).unwrap(),
        "added in v2\n"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(etc.join("added.conf"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    assert!(!etc.join("removed.conf").exists());
    assert_eq!(
        std::fs::read_to_string(sc.root.join("etc/local-only.conf")).unwrap(),
        "mine\n"
    );
    // The journal says where we are; the namespace is gone, so the next run finds no bind but
    // the journal is complete: status still tells the truth about the recorded state.
    let st = sc.s.json(&["--root", sc.root.to_str().unwrap(), "status"]);
    assert_eq!(st["live"]["complete"], true);
}

#[test]
fn killed_at_every_step_converges() {
    if !is_root() {
        eprintln!("skipped: needs root for mount namespaces (CI runs as root)");
        return;
    }
    let mut points = 0;
    for step in ["swap_usr", "merge_etc"] {
        for when in ["before", "after"] {
            let sc = scenario();
            let etc_before = snapshot(&sc.root.join("etc"));
            let out = tempfile::tempdir().unwrap();
            let script = format!(
                r#"FASTSWITCH_FAULT={step}:{when} $FS apply-live --no-services --json > $OUT/killed.json; echo $? > $OUT/killed.rc
$FS status --json > $OUT/status.json
$FS apply-live --no-services --json > $OUT/rerun.json; echo $? > $OUT/rerun.rc
cat $ROOT/usr/share/demo/version > $OUT/version
grep -c " $ROOT/usr " /proc/self/mountinfo > $OUT/usr_mounts || true
cp -a $ROOT/etc $OUT/etc-applied
$FS reset --no-services --json > $OUT/reset.json; echo $? > $OUT/reset.rc
"#
            );
            let o = in_namespace(&sc, out.path(), &script);
            let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
            assert_eq!(
                rc(out.path(), "killed.rc"),
                137,
                "{step}:{when} should die by SIGKILL\n{stderr}"
            );
            let st = read_json(&out.path().join("status.json"));
            assert_eq!(st["live"]["complete"], false, "{step}:{when}");
            assert_eq!(st["live"]["interrupted_step"], step, "{step}:{when}");
            assert_eq!(rc(out.path(), "rerun.rc"), 0, "{step}:{when}\n{stderr}");
            assert_eq!(
                std::fs::read_to_string(out.path().join("version")).unwrap(),
                "2\n",
                "{step}:{when}"
            );
            assert_eq!(
                std::fs::read_to_string(out.path().join("usr_mounts"))
                    .unwrap()
                    .trim(),
                "1",
                "{step}:{when}: one bind, not two"
            );
            let applied = out.path().join("etc-applied/demo");
            assert_eq!(
                std::fs::read_to_string(applied.join("changed.conf")).unwrap(),
                "default v2\n"
            );
            assert_eq!(
                std::fs::read_to_string(applied.join("edited.conf")).unwrap(),
                "admin edit\n"
            );
            assert!(!applied.join("removed.conf").exists());
            assert_eq!(rc(out.path(), "reset.rc"), 0, "{step}:{when}\n{stderr}");
            assert_eq!(
                snapshot(&sc.root.join("etc")),
                etc_before,
                "{step}:{when}: reset restores /etc"
            );
            points += 1;
        }
    }
    eprintln!("kill points covered: {points}");
}

#[test]
fn refusals_change_nothing() {
    let sc = scenario();
    let root = sc.root.to_str().unwrap().to_owned();
    let etc_before = snapshot(&sc.root.join("etc"));
    // Kernel changed → exit 5 naming the reason, even in a dry run.
    let s2 = &sc.s;
    let t3 = Tree::minimal("6.1.0-test");
    t3.write(
        "usr/lib/modules/6.1.0-test/initramfs.img",
        b"new initramfs\n",
    );
    let c3 = s2.commit("fx/v3", &t3);
    s2.stage("fx", &c3, "fx/v3", None);
    let o = s2
        .fastswitch()
        .args(["--root", &root, "apply-live", "--dry-run", "--no-services"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("boot digest"));
    // Not ostree-booted → exit 6.
    std::fs::remove_file(s2.run().join("ostree-booted")).unwrap();
    let o = s2
        .fastswitch()
        .args(["--root", &root, "apply-live", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not ostree-booted"));
    assert_eq!(snapshot(&sc.root.join("etc")), etc_before);
}
