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

impl Scenario {
    /// The stateroot's persistent /var (where /var/lib/fastswitch lives).
    fn var(&self) -> PathBuf {
        self.s.path().join("ostree/deploy/fx/var")
    }
}

/// v1 booted, v2 staged: a changed binary, a new library dir, and /etc defaults that exercise
/// every merge action; the admin has edited the booted /etc.
fn scenario() -> Scenario {
    scenario_with(|_, _| {})
}

/// [`scenario`], with `edit` called on v1 (`(Some(v1), None)`) before it is committed, and on v2
/// (`(None, Some(v2))`, a fork of the edited v1) before it is committed.
fn scenario_with(edit: impl Fn(Option<&Tree>, Option<&Tree>)) -> Scenario {
    let s = Sysroot::new();
    s.os_init("fx");
    let t1 = Tree::minimal("6.1.0-test");
    t1.write("usr/etc/demo/changed.conf", b"default v1\n");
    t1.write("usr/etc/demo/edited.conf", b"default v1\n");
    t1.write("usr/etc/demo/removed.conf", b"default v1\n");
    t1.write("usr/etc/demo/same.conf", b"same\n");
    t1.write("usr/share/demo/version", b"1\n");
    t1.write("usr/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n");
    t1.write("usr/etc/group", b"root:x:0:\n");
    edit(Some(&t1), None);
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
    // A new system user: systemd-sysusers rewrites the user databases in /etc.
    t2.write(
        "usr/lib/sysusers.d/demo.conf",
        b"u demo-fx - \"fixture demo user\"\n",
    );
    edit(None, Some(&t2));
    let c2 = s.commit("fx/v2", &t2);
    let staged = s.stage("fx", &c2, "fx/v2", None);
    Scenario { s, staged, root }
}

/// Run `script` in a private mount namespace with FS=<fastswitch with fixture args>, FSARGS=<the
/// fixture args alone>, ROOT, OUT.
fn in_namespace(sc: &Scenario, out: &Path, script: &str) -> std::process::Output {
    // Like ostree-prepare-root, make the running root a bind of the booted deployment, so
    // binding over <root>/usr leaves the physical deployment directory untouched.
    let fake = out.join("fake-root");
    std::fs::create_dir_all(&fake).unwrap();
    let fsargs = format!(
        "--sysroot {} --run-dir {} --root {}",
        sc.s.path().display(),
        sc.s.run().display(),
        fake.display()
    );
    let fs = format!("{} {fsargs}", env!("CARGO_BIN_EXE_fastswitch"));
    // ...and bind the stateroot's /var over its var, as ostree-prepare-root does.
    let full = format!(
        "set -u\nmount --bind {} {}\nmount --bind {} {}/var\nFS=\"{fs}\"\nFSARGS=\"{fsargs}\"\nROOT={}\nOUT={}\n{script}",
        sc.root.display(),
        fake.display(),
        sc.var().display(),
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
    assert_eq!(
        steps,
        [
            "link_usr",
            "swap_usr",
            "merge_etc",
            "sysusers",
            "prune_usr_copies"
        ]
    );
    let etc_actions: Vec<(String, String)> = plan["steps"][2]["actions"]
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
    assert_eq!(rep["steps"][0]["step"], "link_usr");
    assert_eq!(rep["steps"][1]["step"], "swap_usr");
    assert_eq!(rep["steps"][1]["outcome"], "done");
    // Every millisecond is accounted for: the phases before the steps, and own time.
    let phases: Vec<&str> = rep["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    for want in [
        "discover",
        "diff.kernel",
        "diff.usr",
        "diff.etc",
        "diff.units",
        "plan",
    ] {
        assert!(phases.contains(&want), "{want} not in {phases:?}");
    }
    let (wall, own, waited) = (
        rep["wall_ms"].as_u64().unwrap(),
        rep["own_ms"].as_u64().unwrap(),
        rep["waited_ms"].as_u64().unwrap(),
    );
    assert_eq!(own + waited, wall, "{rep}");
    assert!(wall >= rep["total_ms"].as_u64().unwrap(), "{rep}");
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

/// Linux ≥ 6.5 has `MOVE_MOUNT_BENEATH`, which lets a second apply-live replace the bind.
fn kernel_has_move_mount_beneath() -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut it = rel.trim().split(|c: char| !c.is_ascii_digit());
    let major: u32 = it.next().unwrap().parse().unwrap();
    let minor: u32 = it.next().unwrap().parse().unwrap();
    (major, minor) >= (6, 5)
}

#[test]
fn second_apply_live_replaces_the_bind_where_the_kernel_can() {
    if !is_root() {
        panic!("needs root for mount namespaces (CI runs as root)");
    }
    let sc = scenario();
    let usr_before = snapshot(&sc.root.join("usr"));
    // A third deployment, v3: staged after v2 was applied live.
    let t3 = Tree::minimal("6.1.0-test");
    t3.write("usr/share/demo/version", b"3\n");
    let c3 = sc.s.commit("fx/v3", &t3);
    let staged_file = sc.s.run().join("ostree/staged-deployment");
    let v2_state = std::fs::read(&staged_file).unwrap();
    let v3 = sc.s.stage("fx", &c3, "fx/v3", None);
    let out = tempfile::tempdir().unwrap();
    std::fs::copy(&staged_file, out.path().join("staged-v3")).unwrap();
    std::fs::write(&staged_file, v2_state).unwrap();
    let o = in_namespace(
        &sc,
        out.path(),
        &format!(
            r#"
$FS apply-live --no-services --json > $OUT/a1.json; echo $? > $OUT/a1.rc
grep -c " $ROOT/usr " /proc/self/mountinfo > $OUT/m1 || true
cp $OUT/staged-v3 {staged}
$FS apply-live --no-services --json > $OUT/a2.json; echo $? > $OUT/a2.rc
grep -c " $ROOT/usr " /proc/self/mountinfo > $OUT/m2 || true
cat $ROOT/usr/share/demo/version > $OUT/version2
$FS reset --no-services --json > $OUT/reset.json; echo $? > $OUT/reset.rc
grep -c " $ROOT/usr " /proc/self/mountinfo > $OUT/m3 || true
cat $ROOT/usr/share/demo/version > $OUT/version3
"#,
            staged = staged_file.display()
        ),
    );
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    assert_eq!(rc(out.path(), "a1.rc"), 0, "{stderr}");
    assert_eq!(rc(out.path(), "a2.rc"), 0, "{stderr}");
    let a2 = read_json(&out.path().join("a2.json"));
    assert_eq!(a2["to"]["id"], v3.as_str());
    let n = |f: &str| read(out.path(), f).trim().to_owned();
    assert_eq!(n("m1"), "1");
    assert_eq!(n("version2"), "3");
    if kernel_has_move_mount_beneath() {
        assert_eq!(n("m2"), "1", "one bind after two apply-lives: {a2}");
        let swap = a2["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == "swap_usr")
            .unwrap();
        assert_eq!(swap["detail"]["replaced"], true, "{a2}");
    } else {
        assert_eq!(n("m2"), "2", "stacked binds on Linux < 6.5: {a2}");
    }
    assert_eq!(rc(out.path(), "reset.rc"), 0, "{stderr}");
    assert_eq!(n("m3"), "0");
    assert_eq!(n("version3"), "1");
    assert_eq!(snapshot(&sc.root.join("usr")), usr_before);
}

/// The staging hazard: after a live apply of the staged deployment, staging a newer one makes
/// ostree delete the previously staged deployment directory — which a bind of its `usr` would
/// have emptied under the running system. /usr shows fastswitch's own hardlinked copy instead,
/// so it keeps working; the next apply-live plans from the booted deployment (and says so),
/// reset returns to it, and no copy is left behind. The sysroot is mounted read-only during
/// the first apply (ostree's `sysroot.readonly`, Fedora CoreOS) and stays read-only.
#[test]
fn staging_a_newer_deployment_after_apply_live_keeps_usr() {
    if !is_root() {
        panic!("needs root for mount namespaces (CI runs as root)");
    }
    let sc = scenario();
    let usr_before = snapshot(&sc.root.join("usr"));
    let t3 = Tree::minimal("6.1.0-test");
    t3.write("usr/share/demo/version", b"3\n");
    let c3 = sc.s.commit("fx/v3", &t3);
    let staged_file = sc.s.run().join("ostree/staged-deployment");
    let v2_state = std::fs::read(&staged_file).unwrap();
    let v3 = sc.s.stage("fx", &c3, "fx/v3", None);
    let out = tempfile::tempdir().unwrap();
    std::fs::copy(&staged_file, out.path().join("staged-v3")).unwrap();
    std::fs::write(&staged_file, v2_state).unwrap();
    let v2_dir = sc.s.deploy_dir("fx", &sc.staged);
    let live_dir = sc.s.path().join("ostree/fastswitch/live");
    let o = in_namespace(
        &sc,
        out.path(),
        &format!(
            r#"
SYSROOT={sysroot}
mount --bind $SYSROOT $SYSROOT && mount -o remount,bind,ro $SYSROOT
# The fixture's /run lies inside its sysroot: keep it writable, as the real /run is.
mount --bind {run} {run} && mount -o remount,bind,rw {run}
$FS apply-live --no-services --json > $OUT/a1.json; echo $? > $OUT/a1.rc
findmnt -no OPTIONS $SYSROOT | cut -d, -f1 > $OUT/sysroot-opts
# What `ostree admin deploy --stage` does to the previously staged deployment.
mount -o remount,bind,rw $SYSROOT
chattr -i {v2_dir} 2>/dev/null; rm -rf {v2_dir}
cp $OUT/staged-v3 {staged}
cat $ROOT/usr/share/demo/version > $OUT/version-after-rm
$FS status --json > $OUT/status.json
$FS apply-live --no-services --json > $OUT/a2.json 2> $OUT/a2.err; echo $? > $OUT/a2.rc
cat $ROOT/usr/share/demo/version > $OUT/version2
ls {live_dir} > $OUT/live2
$FS reset --no-services --json > $OUT/reset.json; echo $? > $OUT/reset.rc
cat $ROOT/usr/share/demo/version > $OUT/version3
ls {live_dir} > $OUT/live3
"#,
            sysroot = sc.s.path().display(),
            v2_dir = v2_dir.display(),
            staged = staged_file.display(),
            live_dir = live_dir.display(),
            run = sc.s.run().display(),
        ),
    );
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    let n = |f: &str| read(out.path(), f).trim().to_owned();
    assert_eq!(rc(out.path(), "a1.rc"), 0, "{stderr}");
    let a1 = read_json(&out.path().join("a1.json"));
    assert_eq!(a1["steps"][0]["step"], "link_usr", "{a1}");
    assert!(
        a1["steps"][0]["detail"]["links"].as_u64().unwrap() > 0,
        "{a1}"
    );
    assert_eq!(
        n("sysroot-opts"),
        "ro",
        "the host's sysroot mount stays read-only"
    );
    assert_eq!(
        n("version-after-rm"),
        "2",
        "/usr survives the removal of its deployment"
    );
    let st = read_json(&out.path().join("status.json"));
    assert_eq!(st["live"]["target_deployment_present"], false, "{st}");
    assert_eq!(st["live"]["usr_is_target"], true, "{st}");
    assert_eq!(rc(out.path(), "a2.rc"), 0, "{}", n("a2.err"));
    let a2 = read_json(&out.path().join("a2.json"));
    assert_eq!(a2["to"]["id"], v3.as_str(), "{a2}");
    assert!(
        n("a2.err").contains("planning from the booted deployment"),
        "{}",
        n("a2.err")
    );
    assert_eq!(n("version2"), "3");
    assert_eq!(n("live2"), v3, "only the live copy /usr shows is kept");
    assert_eq!(rc(out.path(), "reset.rc"), 0, "{stderr}");
    assert_eq!(n("version3"), "1");
    assert_eq!(n("live3"), "", "reset leaves no live copy");
    assert_eq!(snapshot(&sc.root.join("usr")), usr_before);
}

/// Two apply-lives in a row where the first target stays a deployment (deployed with
/// `ostree admin deploy --retain`, not staged): the second plan runs from the live target, and
/// the live record must keep naming the booted deployment, so the second apply neither refuses
/// ("stale state") nor mistakes the first bind for the booted /usr.
#[test]
fn second_apply_live_from_a_retained_live_target() {
    if !is_root() {
        panic!("needs root for mount namespaces (CI runs as root)");
    }
    let sc = scenario();
    let usr_before = snapshot(&sc.root.join("usr"));
    // v2 as a finalized (pending) deployment instead of the staged one.
    std::fs::remove_file(sc.s.run().join("ostree/staged-deployment")).unwrap();
    std::fs::remove_dir_all(sc.s.deploy_dir("fx", &sc.staged)).unwrap();
    let dir = sc.s.deploy_dir("fx", &sc.staged);
    std::fs::remove_file(dir.with_file_name(format!("{}.origin", sc.staged))).unwrap();
    sc.s.deploy("fx", "fx/v2", &["root=/dev/vda", "rw"]);
    let t3 = Tree::minimal("6.1.0-test");
    t3.write("usr/share/demo/version", b"3\n");
    sc.s.commit("fx/v3", &t3);
    let out = tempfile::tempdir().unwrap();
    let o = in_namespace(
        &sc,
        out.path(),
        &format!(
            r#"
$FS apply-live --no-services --json > $OUT/a1.json; echo $? > $OUT/a1.rc
ostree admin deploy --retain --sysroot={sysroot} --os=fx --karg-none --karg=root=/dev/vda --karg=rw fx/v3
$FS apply-live --no-services --json > $OUT/a2.json 2> $OUT/a2.err; echo $? > $OUT/a2.rc
grep -c " $ROOT/usr " /proc/self/mountinfo > $OUT/m2 || true
cat $ROOT/usr/share/demo/version > $OUT/version2
$FS reset --no-services --json > $OUT/reset.json; echo $? > $OUT/reset.rc
grep -c " $ROOT/usr " /proc/self/mountinfo > $OUT/m3 || true
cat $ROOT/usr/share/demo/version > $OUT/version3
"#,
            sysroot = sc.s.path().display()
        ),
    );
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    let n = |f: &str| read(out.path(), f).trim().to_owned();
    assert_eq!(rc(out.path(), "a1.rc"), 0, "{stderr}");
    let a1 = read_json(&out.path().join("a1.json"));
    assert_eq!(rc(out.path(), "a2.rc"), 0, "{}", n("a2.err"));
    let a2 = read_json(&out.path().join("a2.json"));
    assert_eq!(
        a2["from"]["id"], a1["to"]["id"],
        "from the live target: {a2}"
    );
    assert_ne!(a2["to"]["id"], a1["to"]["id"], "{a2}");
    assert_eq!(n("version2"), "3");
    if kernel_has_move_mount_beneath() {
        assert_eq!(n("m2"), "1", "one bind after two apply-lives: {a2}");
        let swap = a2["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == "swap_usr")
            .unwrap();
        assert_eq!(swap["detail"]["replaced"], true, "{a2}");
    } else {
        assert_eq!(n("m2"), "2", "stacked binds on Linux < 6.5: {a2}");
    }
    assert_eq!(rc(out.path(), "reset.rc"), 0, "{stderr}");
    assert_eq!(n("m3"), "0");
    assert_eq!(n("version3"), "1");
    assert_eq!(snapshot(&sc.root.join("usr")), usr_before);
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

/// Shell function `snap DIR`: the same listing as [`snapshot`], from inside a namespace.
const SNAP_FN: &str = r#"snap() { (cd "$1" && find . -printf '%p %y %m %U:%G %l\n' | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
"#;

/// The result of one kill: what the script recorded.
struct Killed {
    rc: i32,
    status: Value,
    version_killed: String,
    stderr: String,
}

fn read(out: &Path, name: &str) -> String {
    std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `status` tells the truth after a kill: whether /usr shows the target, and whether the run
/// finished.
fn check_status_truth(k: &Killed, point: &str) {
    let live = &k.status["live"];
    if live.is_null() {
        assert_eq!(
            k.version_killed, "1\n",
            "{point}: no live state but /usr is not the booted one"
        );
        return;
    }
    assert_eq!(
        live["usr_is_target"].as_bool().unwrap(),
        k.version_killed == "2\n",
        "{point}: status says usr_is_target={} but /usr shows version {}",
        live["usr_is_target"],
        k.version_killed.trim()
    );
}

/// Kill apply-live at every fault point (each step before/after, each journal write
/// before/after); then status must tell the truth, a re-run must converge to the target with
/// the /etc a clean run gives, and reset must return /etc bit for bit.
#[test]
fn killed_at_every_point_converges() {
    if !is_root() {
        eprintln!("skipped: needs root for mount namespaces (CI runs as root)");
        return;
    }
    let sc = scenario();
    let etc_before = snapshot(&sc.root.join("etc"));
    // The /etc a clean apply gives, for comparison.
    let out = tempfile::tempdir().unwrap();
    let o = in_namespace(
        &sc,
        out.path(),
        &format!("{SNAP_FN}$FS apply-live --no-services --json > $OUT/a.json || exit 1\nsnap $ROOT/etc > $OUT/etc.applied\n$FS reset --no-services --json > $OUT/r.json || exit 1"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let etc_applied = read(out.path(), "etc.applied");
    assert_ne!(etc_applied, etc_before);
    assert_eq!(snapshot(&sc.root.join("etc")), etc_before);

    let mut points: Vec<String> = Vec::new();
    for step in ["link_usr", "swap_usr", "merge_etc", "sysusers"] {
        for when in ["before", "after"] {
            points.push(format!("{step}:{when}"));
        }
    }
    let mut covered = 0;
    let mut n = 1;
    let mut idx = 0;
    loop {
        // Step points first, then journal writes until a run survives its "before".
        let point = if idx < points.len() {
            points[idx].clone()
        } else {
            let w = if (idx - points.len()).is_multiple_of(2) {
                "before"
            } else {
                "after"
            };
            format!("journal-write-{n}:{w}")
        };
        let out = tempfile::tempdir().unwrap();
        let script = format!(
            r#"{SNAP_FN}FASTSWITCH_FAULT={point} $FS apply-live --no-services --json > $OUT/killed.json; echo $? > $OUT/killed.rc
cat $ROOT/usr/share/demo/version > $OUT/version.killed
$FS status --json > $OUT/status.json
$FS apply-live --no-services --json > $OUT/rerun.json; echo $? > $OUT/rerun.rc
cat $ROOT/usr/share/demo/version > $OUT/version.rerun
grep -c " $ROOT/usr " /proc/self/mountinfo > $OUT/usr_mounts || true
snap $ROOT/etc > $OUT/etc.rerun
$FS reset --no-services --json > $OUT/reset.json; echo $? > $OUT/reset.rc
cat $ROOT/usr/share/demo/version > $OUT/version.reset
"#
        );
        let o = in_namespace(&sc, out.path(), &script);
        let k = Killed {
            rc: rc(out.path(), "killed.rc"),
            status: read_json(&out.path().join("status.json")),
            version_killed: read(out.path(), "version.killed"),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        };
        let stderr = &k.stderr;
        if k.rc != 137 {
            // Past the last journal write: the run finished.
            assert!(
                point.starts_with("journal-write-") && point.ends_with(":before"),
                "{point} did not kill: rc {}\n{stderr}",
                k.rc
            );
            assert_eq!(k.rc, 0, "{stderr}");
            assert_eq!(rc(out.path(), "reset.rc"), 0, "{stderr}");
            break;
        }
        check_status_truth(&k, &point);
        // A run killed after its last journal write is complete: the re-run has nothing to do.
        let want = if k.status["live"]["complete"] == true {
            3
        } else {
            0
        };
        assert_eq!(
            rc(out.path(), "rerun.rc"),
            want,
            "{point}: re-run\n{stderr}"
        );
        assert_eq!(read(out.path(), "version.rerun"), "2\n", "{point}");
        assert_eq!(
            read(out.path(), "usr_mounts").trim(),
            "1",
            "{point}: one bind, not two"
        );
        assert_eq!(
            read(out.path(), "etc.rerun"),
            etc_applied,
            "{point}: /etc after the re-run"
        );
        assert_eq!(rc(out.path(), "reset.rc"), 0, "{point}: reset\n{stderr}");
        assert_eq!(read(out.path(), "version.reset"), "1\n", "{point}");
        assert_eq!(
            snapshot(&sc.root.join("etc")),
            etc_before,
            "{point}: reset restores /etc"
        );
        assert!(
            !sc.var().join("lib/fastswitch/state.json").exists()
                && !sc.var().join("lib/fastswitch/etc-backup").exists(),
            "{point}: reset leaves no persistent record"
        );
        covered += 1;
        if idx >= points.len() && point.ends_with(":after") {
            n += 1;
        }
        idx += 1;
    }
    // One write per step (link_usr, swap_usr, merge_etc, sysusers, tmpfiles), one for the finish.
    assert!(n >= 7, "expected at least 6 journal writes, saw {}", n - 1);
    eprintln!(
        "apply-live kill points covered: {covered} ({} journal writes)",
        n - 1
    );
}

/// Kill reset at every point (each journal write, the unmount, each restored /etc entry, the
/// final clear); status tells the truth, apply-live refuses until the reset is finished, and
/// re-running reset returns /usr and /etc to the booted deployment.
#[test]
fn killed_reset_converges() {
    if !is_root() {
        eprintln!("skipped: needs root for mount namespaces (CI runs as root)");
        return;
    }
    let sc = scenario();
    let etc_before = snapshot(&sc.root.join("etc"));
    let mut fixed: Vec<String> = vec!["unmount_usr:before".into(), "unmount_usr:after".into()];
    for i in 1..=3 {
        fixed.push(format!("etc-restore-{i}:before"));
        fixed.push(format!("etc-restore-{i}:after"));
    }
    fixed.push("journal-clear:before".into());
    let mut covered = 0;
    let mut idx = 0;
    let mut n = 1;
    loop {
        let point = if idx < fixed.len() {
            fixed[idx].clone()
        } else {
            let w = if (idx - fixed.len()).is_multiple_of(2) {
                "before"
            } else {
                "after"
            };
            format!("journal-write-{n}:{w}")
        };
        let out = tempfile::tempdir().unwrap();
        let script = format!(
            r#"$FS apply-live --no-services --json > $OUT/apply.json || exit 1
FASTSWITCH_FAULT={point} $FS reset --no-services --json > $OUT/killed.json; echo $? > $OUT/killed.rc
cat $ROOT/usr/share/demo/version > $OUT/version.killed
$FS status --json > $OUT/status.json
$FS apply-live --no-services --json > $OUT/apply2.json 2> $OUT/apply2.err; echo $? > $OUT/apply2.rc
$FS reset --no-services --json > $OUT/rerun.json; echo $? > $OUT/rerun.rc
cat $ROOT/usr/share/demo/version > $OUT/version.rerun
grep -c " $ROOT/usr " /proc/self/mountinfo > $OUT/usr_mounts || true
"#
        );
        let o = in_namespace(&sc, out.path(), &script);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{point}: apply-live failed\n{stderr}");
        let k = Killed {
            rc: rc(out.path(), "killed.rc"),
            status: read_json(&out.path().join("status.json")),
            version_killed: read(out.path(), "version.killed"),
            stderr: stderr.clone(),
        };
        if k.rc != 137 {
            assert!(
                point.starts_with("journal-write-") && point.ends_with(":before"),
                "{point} did not kill: rc {}\n{stderr}",
                k.rc
            );
            assert_eq!(k.rc, 0, "{stderr}");
            break;
        }
        check_status_truth(&k, &point);
        let live = &k.status["live"];
        if !live.is_null() && point != "journal-write-1:before" {
            assert_eq!(live["resetting"], true, "{point}");
            assert_eq!(live["interrupted_step"], "reset", "{point}");
            assert_eq!(
                rc(out.path(), "apply2.rc"),
                8,
                "{point}: apply-live must refuse mid-reset"
            );
            assert!(read(out.path(), "apply2.err").contains("run `fastswitch reset` again"));
            assert_eq!(
                rc(out.path(), "rerun.rc"),
                0,
                "{point}: reset re-run\n{stderr}"
            );
        }
        assert_eq!(read(out.path(), "version.rerun"), "1\n", "{point}");
        assert_eq!(read(out.path(), "usr_mounts").trim(), "0", "{point}");
        assert_eq!(
            snapshot(&sc.root.join("etc")),
            etc_before,
            "{point}: /etc restored"
        );
        assert!(
            !sc.var().join("lib/fastswitch/state.json").exists(),
            "{point}: no persistent record left"
        );
        covered += 1;
        if idx >= fixed.len() && point.ends_with(":after") {
            n += 1;
        }
        idx += 1;
    }
    assert!(
        n >= 5,
        "expected at least 4 reset journal writes, saw {}",
        n - 1
    );
    eprintln!(
        "reset kill points covered: {covered} ({} journal writes)",
        n - 1
    );
}

/// A power cut after a live apply, simulated in a namespace: the binds vanish with it, /run is
/// emptied, and the next "boot" has another boot id (bound over /proc/sys/kernel/random/boot_id).
/// The old deployment booted again, so `recover` restores /etc; apply-live refuses until then.
#[test]
fn recover_after_a_power_cut_restores_etc() {
    if !is_root() {
        eprintln!("skipped: needs root for mount namespaces (CI runs as root)");
        return;
    }
    let sc = scenario();
    let etc_before = snapshot(&sc.root.join("etc"));
    // journal-write-4 is the write that records merge_etc as done, with sysusers started and
    // the user databases it edits journaled: 1 link_usr started, 2 swap_usr, 3 merge_etc (with
    // its /etc entries), 4 sysusers.
    for point in ["merge_etc:after", "journal-write-4:after", "none"] {
        let out = tempfile::tempdir().unwrap();
        let o = in_namespace(
            &sc,
            out.path(),
            &format!("FASTSWITCH_FAULT={point} $FS apply-live --no-services --json > $OUT/a.json; echo $? > $OUT/a.rc"),
        );
        assert!(o.status.success());
        let want_rc = if point == "none" { 0 } else { 137 };
        assert_eq!(rc(out.path(), "a.rc"), want_rc, "{point}");
        assert_ne!(
            snapshot(&sc.root.join("etc")),
            etc_before,
            "{point}: /etc changed"
        );
        if point.starts_with("journal-write-") {
            let st = read_json(&sc.s.run().join("fastswitch/state.json"));
            let status = |name: &str| {
                st["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["name"] == name)
                    .map(|s| s["status"].clone())
            };
            assert_eq!(status("merge_etc"), Some("done".into()), "{point}: {st}");
            assert_eq!(status("sysusers"), Some("started".into()), "{point}: {st}");
            let journaled: Vec<&str> = st["etc_backups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["path"].as_str().unwrap())
                .collect();
            assert!(journaled.contains(&"/etc/passwd"), "{point}: {st}");
        }
        // The power cut: /run is a tmpfs, gone.
        std::fs::remove_dir_all(sc.s.run().join("fastswitch")).unwrap();
        let bid = out.path().join("boot_id");
        std::fs::write(&bid, "0f0f0f0f-1111-2222-3333-444444444444\n").unwrap();
        let script = format!(
            r#"mount --bind {} /proc/sys/kernel/random/boot_id
$FS status --json > $OUT/status.json
$FS apply-live --no-services --json > $OUT/refused.json 2> $OUT/refused.err; echo $? > $OUT/refused.rc
$FS recover --json > $OUT/recover.json; echo $? > $OUT/recover.rc
$FS recover --json > $OUT/recover2.json; echo $? > $OUT/recover2.rc
"#,
            bid.display()
        );
        let o = in_namespace(&sc, out.path(), &script);
        let stderr = String::from_utf8_lossy(&o.stderr);
        let st = read_json(&out.path().join("status.json"));
        assert_eq!(st["live"]["recover_pending"], true, "{point}: {st}");
        assert_eq!(rc(out.path(), "refused.rc"), 6, "{point}\n{stderr}");
        assert!(read(out.path(), "refused.err").contains("fastswitch recover"));
        assert_eq!(rc(out.path(), "recover.rc"), 0, "{point}\n{stderr}");
        let rep = read_json(&out.path().join("recover.json"));
        assert_eq!(rep["action"], "restored_etc", "{point}: {rep}");
        assert_eq!(rep["kept_admin_changes"], serde_json::json!([]));
        assert_eq!(rc(out.path(), "recover2.rc"), 3, "{point}: recover is done");
        assert_eq!(
            snapshot(&sc.root.join("etc")),
            etc_before,
            "{point}: recover restores /etc"
        );
        assert!(!sc.var().join("lib/fastswitch/state.json").exists());
    }
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

/// The unprivileged watcher: as `nobody`, it lists the given directories recursively as fast as
/// it can, opens every regular file it finds (retrying the ones it may not open), keeps each
/// open descriptor and re-reads it from the start on every round, so a file that was readable
/// for a moment is read in full later. It stops when the stop file appears or after the given
/// number of seconds, and prints what it saw.
const WATCHER: &str = r#"
use strict; use warnings; use Fcntl;
$| = 1;
my ($stop, $secs, @roots) = @ARGV;
my (%held, %best);
my ($rounds, $attempts, $opens) = (0, 0, 0);
my $end = time + $secs;
sub scan {
    my ($d) = @_;
    opendir(my $dh, $d) or return;
    my @e = readdir($dh);
    closedir($dh);
    for my $n (@e) {
        next if $n eq '.' || $n eq '..';
        my $p = "$d/$n";
        my @st = lstat($p) or next;
        if (-d _) { scan($p); next; }
        next unless -f _;
        my $key = "$p\t$st[1]";
        next if $held{$key};
        $attempts++;
        if (sysopen(my $fh, $p, O_RDONLY | O_NONBLOCK | O_NOFOLLOW)) {
            $held{$key} = $fh; $opens++;
        }
    }
}
print "ready\n";
while (!-e $stop && time < $end) {
    $rounds++;
    scan($_) for @roots;
    for my $k (keys %held) {
        my $buf = '';
        sysseek($held{$k}, 0, 0);
        sysread($held{$k}, $buf, 65536);
        $best{$k} = $buf if length($buf) > length($best{$k} // '');
    }
}
my ($bytes, $secret) = (0, 0);
for my $k (sort keys %held) {
    my $c = $best{$k} // '';
    $bytes += length($c);
    $secret += length($c) if $c =~ /SECRET/;
    my ($p) = split /\t/, $k;
    print "opened\t$p\t", length($c), "\t", ($c =~ /SECRET/ ? "secret" : "public"), "\n";
}
print "rounds=$rounds attempts=$attempts opens=$opens bytes=$bytes secret_bytes=$secret\n";
"#;

/// Secrets in the fixture /etc: replaced, removed, added (also in a new 0700 directory), and the
/// shadow databases that systemd-sysusers rewrites; fastswitch backs them up, writes them,
/// restores them on reset and on recover. No byte of them may ever be readable by `nobody`,
/// and nothing of fastswitch's state may even be opened by it.
#[test]
fn no_secret_is_ever_readable_by_another_user() {
    if !is_root() {
        eprintln!("skipped: needs root for mount namespaces and setpriv (CI runs as root)");
        return;
    }
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    let secret = |t: &Tree, rel: &str, content: &[u8], mode: u32| {
        t.write(rel, content);
        t.chmod(rel, mode);
    };
    let sc = scenario_with(|v1, v2| {
        if let Some(t) = v1 {
            secret(t, "usr/etc/demo/changed.key", b"SECRET changed v1\n", 0o600);
            secret(t, "usr/etc/demo/removed.key", b"SECRET removed v1\n", 0o640);
            secret(
                t,
                "usr/etc/shadow",
                b"root:SECRET-root-hash:19000:0:99999:7:::\n",
                0o640,
            );
            secret(t, "usr/etc/gshadow", b"root:SECRET-group-hash::\n", 0o600);
        }
        if let Some(t) = v2 {
            secret(t, "usr/etc/demo/changed.key", b"SECRET changed v2\n", 0o600);
            t.remove("usr/etc/demo/removed.key");
            secret(t, "usr/etc/demo/added.key", b"SECRET added v2\n", 0o600);
            secret(t, "usr/etc/private/token", b"SECRET token v2\n", 0o600);
            t.chmod("usr/etc/private", 0o700);
        }
    });
    // Everything on the way must be traversable by nobody, or the test could not fail.
    for d in [sc.s.path().to_path_buf(), sc.s.run()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let watch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(watch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = watch.path().join("watch.pl");
    std::fs::write(&script, WATCHER).unwrap();
    let stop = watch.path().join("stop");
    let mut watcher = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "perl",
        ])
        .arg(&script)
        .arg(&stop)
        .arg("300")
        .arg(sc.root.join("etc"))
        .arg(sc.var().join("lib"))
        .arg(sc.s.run())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv");
    let mut lines = std::io::BufReader::new(watcher.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    // apply-live, reset, apply-live again, then a power cut and recover at the next "boot".
    let out = tempfile::tempdir().unwrap();
    let o = in_namespace(
        &sc,
        out.path(),
        r#"set -e
$FS apply-live --no-services --json > $OUT/a1.json
test -e $ROOT/etc/private/token
# Another user's `status` cannot read the journal, and says so instead of failing.
NOBODY="setpriv --reuid=nobody --regid=nogroup --clear-groups"
if $NOBODY test -x ${FS%% *}; then
  $NOBODY $FS status --json > $OUT/nobody-status.json
fi
$FS reset --no-services --json > $OUT/r.json
test ! -e $ROOT/etc/private/token
$FS apply-live --no-services --json > $OUT/a2.json
"#,
    );
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let ok1 = o.status.success();
    std::fs::remove_dir_all(sc.s.run().join("fastswitch")).unwrap();
    let bid = out.path().join("boot_id");
    std::fs::write(&bid, "0f0f0f0f-1111-2222-3333-444444444444\n").unwrap();
    let o = in_namespace(
        &sc,
        out.path(),
        &format!(
            "set -e\nmount --bind {} /proc/sys/kernel/random/boot_id\n$FS recover --json > $OUT/recover.json\ntest ! -e $ROOT/etc/private/token\n",
            bid.display()
        ),
    );
    let stderr2 = String::from_utf8_lossy(&o.stderr).into_owned();
    let ok2 = o.status.success();
    std::fs::write(&stop, b"").unwrap();
    let report: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(watcher.wait().unwrap().success());
    eprintln!("watcher:\n{}", report.join("\n"));
    assert!(ok1, "apply-live/reset/apply-live failed:\n{stderr}");
    assert!(ok2, "recover failed:\n{stderr2}");
    let rep = read_json(&out.path().join("recover.json"));
    assert_eq!(rep["action"], "restored_etc", "{rep}");

    let summary = report.last().unwrap();
    let field = |name: &str| -> u64 {
        summary
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(field("rounds") > 10, "the watcher barely ran: {summary}");
    let leaks: Vec<&String> = report.iter().filter(|l| l.ends_with("\tsecret")).collect();
    assert!(
        leaks.is_empty() && field("secret_bytes") == 0,
        "nobody read secrets: {summary}\n{leaks:#?}"
    );
    let state: Vec<&String> = report
        .iter()
        .filter(|l| l.contains("/lib/fastswitch/") || l.contains("/run/fastswitch/"))
        .collect();
    assert!(
        state.is_empty(),
        "nobody opened fastswitch state: {state:#?}"
    );
    let nobody_status = out.path().join("nobody-status.json");
    if nobody_status.exists() {
        let st = read_json(&nobody_status);
        assert_eq!(st["live"]["readable"], false, "{st}");
    } else {
        eprintln!("the test binary is not executable by nobody: unprivileged status not checked");
    }
}

/// The shipped binary has no fault hook: `FASTSWITCH_FAULT` changes nothing, while the test
/// build (which every kill-point test and the VM scenarios use) still dies at the point.
/// scripts/test runs this with FASTSWITCH_RELEASE_BIN=the `/usr/bin/fastswitch` of the .deb it
/// built (a plain `cargo build`: the feature is off whatever the profile).
#[test]
fn release_binary_ignores_the_fault_hook() {
    let Some(release) = std::env::var_os("FASTSWITCH_RELEASE_BIN") else {
        eprintln!("skipped: set FASTSWITCH_RELEASE_BIN to a release build (scripts/test does)");
        return;
    };
    assert!(is_root(), "needs root for mount namespaces");
    let release = std::fs::canonicalize(release).unwrap();
    let sc = scenario();
    let out = tempfile::tempdir().unwrap();
    let o = in_namespace(
        &sc,
        out.path(),
        &format!(
            r#"FASTSWITCH_FAULT=swap_usr:before $FS apply-live --no-services --json > $OUT/test.json; echo $? > $OUT/test.rc
$FS reset --no-services --json > $OUT/reset.json; echo $? > $OUT/reset.rc
for p in swap_usr:before journal-write-1:before merge_etc:after:stop; do
  FASTSWITCH_FAULT=$p timeout 60 {} $FSARGS apply-live --no-services --json > $OUT/release.json; echo $? >> $OUT/release.rc
  {} $FSARGS reset --no-services --json > /dev/null
done
"#,
            release.display(),
            release.display()
        ),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        rc(out.path(), "test.rc"),
        137,
        "test build honours the hook\n{stderr}"
    );
    assert_eq!(rc(out.path(), "reset.rc"), 0, "{stderr}");
    assert_eq!(
        read(out.path(), "release.rc"),
        "0\n0\n0\n",
        "the release build ignores FASTSWITCH_FAULT\n{stderr}"
    );
}
