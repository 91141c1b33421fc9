//! `plan_etc` against ostree's own `/etc` merge. A deployment's `etc` is edited the way an
//! admin would, the target commit is deployed with the real `ostree admin deploy` (which
//! merges the first deployment's `/etc` changes into the new one), and the plan, applied by a
//! tiny test-only applier to a copy of the edited `etc`, must produce exactly ostree's merged
//! `etc` (paths, types, content, symlink targets, mode, owner). The plan itself is asserted on
//! its JSON. Needs root (ostree's bare repo and chown); skipped with a message otherwise.

mod common;
use common::*;
use fastswitch::diff::etc::{plan_etc, plan_etc_with, EtcMergeError, EtcPlan, NewDefaults};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (ostree bare repos and chown)");
            return;
        }
    };
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn write(p: &Path, content: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// Every entry below `root`: type, mode, owner, and content or symlink target.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<String, String>) {
        let p = root.join(rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let what = if m.file_type().is_symlink() {
            format!("symlink -> {}", std::fs::read_link(&p).unwrap().display())
        } else if m.is_dir() {
            "dir".to_owned()
        } else {
            format!(
                "file {:?}",
                String::from_utf8_lossy(&std::fs::read(&p).unwrap())
            )
        };
        let mode = if m.file_type().is_symlink() {
            String::new()
        } else {
            format!(" mode {:o}", m.mode() & 0o7777)
        };
        out.insert(
            format!("/{}", rel.display()),
            format!("{what}{mode} owner {}:{}", m.uid(), m.gid()),
        );
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                walk(root, &rel.join(e.unwrap().file_name()), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

/// Test-only applier: carries out the actions in order. `remove` of a directory uses
/// `rmdir`, so it fails unless children were removed first.
fn apply(plan: &Value, etc: &Path, new_defaults: &Path) {
    for a in plan["actions"].as_array().unwrap() {
        let path = a["path"].as_str().unwrap();
        let rel = path.strip_prefix("/etc").unwrap().trim_start_matches('/');
        let dst = etc.join(rel);
        let existing = std::fs::symlink_metadata(&dst).ok();
        match a["action"].as_str().unwrap() {
            "remove" => {
                let m = existing.unwrap_or_else(|| panic!("remove of absent {path}"));
                if m.is_dir() {
                    std::fs::remove_dir(&dst)
                        .unwrap_or_else(|e| panic!("rmdir {path} (children first?): {e}"));
                } else {
                    std::fs::remove_file(&dst).unwrap();
                }
            }
            "add" | "take_new_default" => {
                let src = new_defaults.join(rel);
                let sm = std::fs::symlink_metadata(&src).unwrap();
                if sm.is_dir() {
                    match &existing {
                        Some(m) if m.is_dir() => {}
                        Some(_) => {
                            std::fs::remove_file(&dst).unwrap();
                            std::fs::create_dir(&dst).unwrap();
                        }
                        None => std::fs::create_dir(&dst)
                            .unwrap_or_else(|e| panic!("mkdir {path} (parents first?): {e}")),
                    }
                    chmod(&dst, sm.mode() & 0o7777);
                } else {
                    match &existing {
                        Some(m) if m.is_dir() => std::fs::remove_dir(&dst)
                            .unwrap_or_else(|e| panic!("rmdir {path} before replacing: {e}")),
                        Some(_) => std::fs::remove_file(&dst).unwrap(),
                        None => {}
                    }
                    if sm.file_type().is_symlink() {
                        std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst)
                            .unwrap();
                    } else {
                        std::fs::copy(&src, &dst).unwrap();
                        chmod(&dst, sm.mode() & 0o7777);
                    }
                }
                chown(&dst, sm.uid(), sm.gid());
            }
            "keep_local" | "keep_local_only" | "keep_removed" => {}
            other => panic!("unknown action {other}"),
        }
    }
}

fn copy_tree(src: &Path, dst: &Path) {
    run(Command::new("cp").arg("-a").arg(src).arg(dst));
}

/// Checks the ordering contract: removes first, children before parents; then the rest,
/// parents before children.
fn assert_ordered(plan: &Value) {
    let actions = plan["actions"].as_array().unwrap();
    let is_remove = |a: &Value| a["action"] == "remove";
    let first_other = actions
        .iter()
        .position(|a| !is_remove(a))
        .unwrap_or(actions.len());
    assert!(
        actions[first_other..].iter().all(|a| !is_remove(a)),
        "{plan:#}"
    );
    let paths = |s: &[Value]| -> Vec<PathBuf> {
        s.iter()
            .map(|a| PathBuf::from(a["path"].as_str().unwrap()))
            .collect()
    };
    let removes = paths(&actions[..first_other]);
    assert!(removes.windows(2).all(|w| w[0] > w[1]), "{removes:?}");
    let others = paths(&actions[first_other..]);
    assert!(others.windows(2).all(|w| w[0] < w[1]), "{others:?}");
}

/// `plan_etc` from `d1`'s defaults to `d2`'s with `local` as the admin's /etc, checked against
/// the plan `diff` and `apply-live` make: the old defaults with only the paths the real `/usr`
/// diff of the two deployments lists read from the new ones. The two must be equal.
fn plan_checked(d1: &Path, d2: &Path, local: &Path) -> EtcPlan {
    let (old, new) = (d1.join("usr/etc"), d2.join("usr/etc"));
    let full = plan_etc(&old, local, &new).unwrap();
    let usr = fastswitch::diff::usr::diff_usr(d1, d2).unwrap();
    let changed: Vec<&Path> = usr
        .entries
        .iter()
        .filter_map(|e| Path::new(&e.path).strip_prefix("/usr/etc").ok())
        .collect();
    assert!(!changed.is_empty(), "the fixtures change defaults");
    let patched = plan_etc_with(&old, local, &new, NewDefaults::Changed(&changed)).unwrap();
    assert_eq!(
        serde_json::to_value(&patched).unwrap(),
        serde_json::to_value(&full).unwrap(),
        "changed defaults: {changed:?}"
    );
    full
}

struct Fixture {
    _s: Sysroot,
    /// The deployment whose `etc` the admin edited (the merge source).
    d1: PathBuf,
    /// ostree's deployment of the target: `usr/etc` = new defaults, `etc` = merged.
    d2: PathBuf,
}

/// Commit `v1`, deploy it, let `edit` change its `etc`, then commit and deploy `v2`.
fn deploy_with_edits(v1: &Tree, v2: &Tree, edit: impl FnOnce(&Path)) -> Fixture {
    let s = Sysroot::new();
    s.os_init("os");
    let c1 = s.commit("os/v1", v1);
    s.deploy("os", "os/v1", &[]);
    let d1 = s.deploy_dir("os", &format!("{c1}.0"));
    edit(&d1.join("etc"));
    let c2 = s.commit("os/v2", v2);
    s.deploy("os", "os/v2", &[]);
    let d2 = s.deploy_dir("os", &format!("{c2}.0"));
    Fixture { _s: s, d1, d2 }
}

fn trees() -> (Tree, Tree) {
    let v1 = Tree::minimal("6.1.0");
    for f in [
        "unchanged.conf",
        "take-new.conf",
        "edited.conf",
        "edited-only.conf",
        "deleted.conf",
        "deleted-same.conf",
        "removed-default.conf",
        "removed-edited.conf",
        "modeonly.conf",
        "owner.conf",
        "d2f/x",
        "d2f/y/z",
        "rmdir/a",
        "rmdir/sub/b",
        "rmdir-kept/f",
        "dirmode/f",
        "dirmode-parent/f",
        "admin-chmod-dir/f",
        "deep/a/b/c.conf",
        "f2d",
    ] {
        v1.write(&format!("usr/etc/{f}"), format!("{f} v1\n").as_bytes());
    }
    v1.symlink("unchanged.conf", "usr/etc/link");
    v1.symlink("unchanged.conf", "usr/etc/link-edited");
    v1.symlink("/usr/lib/os-release", "usr/etc/abs-link");

    let v2 = v1.fork();
    for f in [
        "take-new.conf",
        "edited.conf",
        "deleted.conf",
        "modeonly.conf",
        "deep/a/b/c.conf",
    ] {
        v2.write(&format!("usr/etc/{f}"), format!("{f} v2\n").as_bytes());
    }
    v2.remove("usr/etc/removed-default.conf");
    v2.remove("usr/etc/removed-edited.conf");
    v2.write("usr/etc/newdefault.conf", b"new\n");
    v2.write("usr/etc/newdir/a", b"a\n");
    v2.write("usr/etc/newdir/sub/b", b"b\n");
    v2.write("usr/etc/collide.conf", b"theirs\n");
    v2.write("usr/etc/collide-same.conf", b"same\n");
    v2.symlink("take-new.conf", "usr/etc/link");
    v2.symlink("/usr/share/elsewhere", "usr/etc/abs-link");
    v2.remove("usr/etc/f2d");
    v2.write("usr/etc/f2d/child", b"child\n");
    v2.remove("usr/etc/d2f");
    v2.write("usr/etc/d2f", b"now a file\n");
    v2.remove("usr/etc/rmdir");
    v2.remove("usr/etc/rmdir-kept");
    v2.chmod("usr/etc/dirmode", 0o700);
    v2.chmod("usr/etc/dirmode-parent", 0o750);
    v2.write("usr/etc/localdir-collide/theirs", b"theirs\n");
    (v1, v2)
}

fn admin_edits(etc: &Path) {
    write(&etc.join("edited.conf"), "admin\n");
    write(&etc.join("edited-only.conf"), "admin\n");
    write(&etc.join("removed-edited.conf"), "admin\n");
    std::fs::remove_file(etc.join("deleted.conf")).unwrap();
    std::fs::remove_file(etc.join("deleted-same.conf")).unwrap();
    write(&etc.join("local-only.conf"), "mine\n");
    write(&etc.join("collide.conf"), "mine\n");
    write(&etc.join("collide-same.conf"), "same\n");
    chmod(&etc.join("collide-same.conf"), 0o644);
    chmod(&etc.join("modeonly.conf"), 0o600);
    chown(&etc.join("owner.conf"), 1234, 1234);
    std::fs::remove_file(etc.join("link-edited")).unwrap();
    std::os::unix::fs::symlink("edited.conf", etc.join("link-edited")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/outside", etc.join("local-abs-link")).unwrap();
    write(&etc.join("rmdir-kept/mine"), "mine\n");
    write(&etc.join("dirmode-parent/mine"), "mine\n");
    chmod(&etc.join("admin-chmod-dir"), 0o700);
    write(&etc.join("localdir-collide/mine"), "mine\n");
}

fn act(path: &str, action: &str, from: Option<&str>, to: Option<&str>) -> Value {
    json!({"path": path, "action": action, "from_type": from, "to_type": to})
}

#[test]
fn plan_matches_ostree_merge() {
    require_root!();
    let (v1, v2) = trees();
    let f = deploy_with_edits(&v1, &v2, admin_edits);
    let (local, new) = (f.d1.join("etc"), f.d2.join("usr/etc"));
    let plan = serde_json::to_value(plan_checked(&f.d1, &f.d2, &local)).unwrap();
    assert_ordered(&plan);
    let (d, fl) = (Some("dir"), Some("file"));
    let sl = Some("symlink");
    assert_eq!(
        plan["actions"],
        json!([
            act("/etc/rmdir-kept/f", "remove", fl, None),
            act("/etc/rmdir/sub/b", "remove", fl, None),
            act("/etc/rmdir/sub", "remove", d, None),
            act("/etc/rmdir/a", "remove", fl, None),
            act("/etc/rmdir", "remove", d, None),
            act("/etc/removed-default.conf", "remove", fl, None),
            act("/etc/d2f/y/z", "remove", fl, None),
            act("/etc/d2f/y", "remove", d, None),
            act("/etc/d2f/x", "remove", fl, None),
            act("/etc/abs-link", "take_new_default", sl, sl),
            // ostree reverts a directory whose only local change is its own mode.
            act("/etc/admin-chmod-dir", "take_new_default", d, d),
            act("/etc/collide.conf", "keep_local_only", fl, fl),
            act("/etc/d2f", "take_new_default", d, fl),
            act("/etc/deep/a/b/c.conf", "take_new_default", fl, fl),
            act("/etc/deleted.conf", "keep_removed", None, None),
            act("/etc/dirmode", "take_new_default", d, d),
            act("/etc/edited.conf", "keep_local", fl, fl),
            act("/etc/f2d", "take_new_default", fl, d),
            act("/etc/f2d/child", "add", None, fl),
            act("/etc/link", "take_new_default", sl, sl),
            // A local-only directory equal to the colliding new default directory is no
            // conflict: the two merge, children by children.
            act("/etc/localdir-collide/theirs", "add", None, fl),
            act("/etc/modeonly.conf", "keep_local", fl, fl),
            act("/etc/newdefault.conf", "add", None, fl),
            act("/etc/newdir", "add", None, d),
            act("/etc/newdir/a", "add", None, fl),
            act("/etc/newdir/sub", "add", None, d),
            act("/etc/newdir/sub/b", "add", None, fl),
            act("/etc/removed-edited.conf", "keep_local", fl, fl),
            act("/etc/take-new.conf", "take_new_default", fl, fl),
        ]),
        "{plan:#}"
    );
    assert_eq!(
        plan["conflicts"],
        json!([
            {"path": "/etc/admin-chmod-dir", "action": "take_new_default",
             "reason": "local_change_discarded"},
            {"path": "/etc/collide.conf", "action": "keep_local_only",
             "reason": "local_only_collides"},
            {"path": "/etc/deleted.conf", "action": "keep_removed",
             "reason": "removed_locally_default_changed"},
            {"path": "/etc/edited.conf", "action": "keep_local", "reason": "both_changed"},
            {"path": "/etc/modeonly.conf", "action": "keep_local", "reason": "both_changed"},
            {"path": "/etc/removed-edited.conf", "action": "keep_local",
             "reason": "both_changed"},
        ]),
        "{plan:#}"
    );

    // The strongest check: applying the plan yields ostree's merged /etc.
    let tmp = tempfile::tempdir().unwrap();
    let applied = tmp.path().join("etc");
    copy_tree(&local, &applied);
    apply(&plan, &applied, &new);
    let (ours, ostree_merged) = (snapshot(&applied), snapshot(&f.d2.join("etc")));
    assert_eq!(ours, ostree_merged);
    // Nothing was followed out of /etc, and the admin's absolute symlink is intact.
    assert_eq!(
        ours["/local-abs-link"],
        "symlink -> /nonexistent/outside owner 0:0"
    );
    // Sanity of the ground truth: the corner cases really are ostree's behaviour.
    assert!(ostree_merged["/dirmode-parent"].starts_with("dir mode 755"));
    assert!(ostree_merged["/admin-chmod-dir"].starts_with("dir mode 755"));
    assert!(ostree_merged.contains_key("/rmdir-kept/mine"));

    // Idempotent: planning again from the applied /etc changes nothing more.
    let again = serde_json::to_value(plan_checked(&f.d1, &f.d2, &applied)).unwrap();
    let changes: Vec<&Value> = again["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| ["add", "remove", "take_new_default"].contains(&a["action"].as_str().unwrap()))
        .collect();
    assert!(changes.is_empty(), "{again:#}");
}

/// Unedited /etc: every default change is taken, nothing is a conflict.
#[test]
fn unedited_etc_follows_defaults() {
    require_root!();
    let (v1, v2) = trees();
    let f = deploy_with_edits(&v1, &v2, |_| {});
    let new = f.d2.join("usr/etc");
    let plan = plan_checked(&f.d1, &f.d2, &f.d1.join("etc"));
    let v = serde_json::to_value(&plan).unwrap();
    assert_eq!(v["conflicts"], json!([]), "{v:#}");
    assert!(plan.actions.iter().all(|a| {
        let k = serde_json::to_value(a.action).unwrap();
        ["add", "remove", "take_new_default"].contains(&k.as_str().unwrap())
    }));
    let tmp = tempfile::tempdir().unwrap();
    let applied = tmp.path().join("etc");
    copy_tree(&f.d1.join("etc"), &applied);
    apply(&v, &applied, &new);
    assert_eq!(snapshot(&applied), snapshot(&f.d2.join("etc")));
    // With no local edits the merged /etc is just the new defaults.
    assert_eq!(snapshot(&applied), snapshot(&new));
}

/// A locally modified file whose new default is a directory: ostree refuses to deploy, and
/// plan_etc refuses with a typed error naming the path.
#[test]
fn modified_file_newly_directory_is_refused_like_ostree() {
    require_root!();
    let v1 = Tree::minimal("6.1.0");
    v1.write("usr/etc/becomes-dir", b"file\n");
    v1.write("usr/etc/other.conf", b"x\n");
    let v2 = v1.fork();
    v2.remove("usr/etc/becomes-dir");
    v2.write("usr/etc/becomes-dir/inside", b"inside\n");

    let s = Sysroot::new();
    s.os_init("os");
    let c1 = s.commit("os/v1", &v1);
    s.deploy("os", "os/v1", &[]);
    let d1 = s.deploy_dir("os", &format!("{c1}.0"));
    write(&d1.join("etc/becomes-dir"), "admin edit\n");
    let c2 = s.commit("os/v2", &v2);

    // ostree itself refuses.
    let out = ostree()
        .args([
            "admin",
            "deploy",
            &format!("--sysroot={}", s.path().display()),
            "--os=os",
            "--karg-none",
            "os/v2",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Modified config file newly defaults to directory"),
        "{stderr}"
    );

    // The new defaults, checked out without deploying.
    let tmp = tempfile::tempdir().unwrap();
    let new = tmp.path().join("usretc");
    run(ostree()
        .arg(format!("--repo={}", s.repo().display()))
        .args(["checkout", "-H", "--subpath=/usr/etc", &c2])
        .arg(&new));
    let err = plan_etc(&d1.join("usr/etc"), &d1.join("etc"), &new).unwrap_err();
    assert_eq!(
        err.downcast_ref::<EtcMergeError>(),
        Some(&EtcMergeError::ModifiedConfigNewlyDirectory {
            path: "/etc/becomes-dir".into()
        }),
        "{err:#}"
    );
    assert!(format!("{err}").contains("'/etc/becomes-dir'"));

    // Unmodified, the same change is just a new default.
    std::fs::write(d1.join("etc/becomes-dir"), "file\n").unwrap();
    let plan = plan_etc(&d1.join("usr/etc"), &d1.join("etc"), &new).unwrap();
    assert_eq!(
        serde_json::to_value(&plan).unwrap()["actions"],
        json!([
            act(
                "/etc/becomes-dir",
                "take_new_default",
                Some("file"),
                Some("dir")
            ),
            act("/etc/becomes-dir/inside", "add", None, Some("file")),
        ])
    );
}

/// Local changes below a directory whose new default is a symlink: ostree would follow the
/// symlink to write the local file; the plan refuses instead (no root needed: plain trees).
#[test]
fn local_changes_below_a_new_default_symlink_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, local, new) = (
        tmp.path().join("old"),
        tmp.path().join("local"),
        tmp.path().join("new"),
    );
    write(&old.join("d/f"), "default\n");
    write(&local.join("d/f"), "admin\n");
    std::fs::create_dir_all(&new).unwrap();
    std::os::unix::fs::symlink("/usr/share/somewhere", new.join("d")).unwrap();
    let err = plan_etc(&old, &local, &new).unwrap_err();
    assert_eq!(
        err.downcast_ref::<EtcMergeError>(),
        Some(&EtcMergeError::NewDefaultNotDirectory {
            path: "/etc/d".into()
        }),
        "{err:#}"
    );
    // Unedited, the directory simply becomes the new default symlink.
    write(&local.join("d/f"), "default\n");
    let v = serde_json::to_value(plan_etc(&old, &local, &new).unwrap()).unwrap();
    assert_eq!(
        v["actions"],
        json!([
            act("/etc/d/f", "remove", Some("file"), None),
            act("/etc/d", "take_new_default", Some("dir"), Some("symlink")),
        ])
    );
}

#[test]
fn errors_name_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    let err = plan_etc(&a, &b, &a).unwrap_err();
    assert!(
        format!("{err:#}").contains(&b.display().to_string()),
        "{err:#}"
    );
    // A symlinked root is refused, not followed.
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let err = plan_etc(&a, &b, &a).unwrap_err();
    assert!(format!("{err:#}").contains("not a directory"), "{err:#}");
}
