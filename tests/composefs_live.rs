//! `apply-live` and `reset` end to end on a composefs root, as root, inside a private mount
//! namespace (the test re-runs itself under `unshare --mount --propagation private`).
//!
//! The host: a sysroot made by the real `ostree` CLI (booted v1, staged v2), each deployment
//! with an `.ostree.cfs` image (tests/common/cfs.rs); the running root is the booted image
//! mounted as ostree-prepare-root mounts a composefs root (`system::composefs::mount`: EROFS +
//! read-only overlay named `composefs`, data-only layer the objects), with the deployment's
//! `/etc` and the stateroot's `/var` bound on it, and `/run/ostree-booted` naming the booted deployment with `composefs`
//! set. fastswitch finds the composefs root from the mount table and the file, mounts the
//! staged image's `usr` over the root's `/usr` (not a bind of the checkout), merges `/etc`,
//! reports it, and `reset` takes it off again.

mod common;
use common::cfs::{dumpfile, mkcomposefs};
use common::*;
use fastswitch::discover::state::encode;
use fastswitch::system::composefs::{attach, mount, ComposefsImage};
use fastswitch::system::mounts::{parse_mountinfo, stack_at, MountEntry};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

const IN_NS: &str = "FASTSWITCH_COMPOSEFS_LIVE_IN_NS";
const TEST: &str = "apply_live_and_reset_on_a_composefs_root";

#[test]
fn apply_live_and_reset_on_a_composefs_root() {
    in_private_mount_namespace(TEST, IN_NS, in_private_namespace);
}

fn stack(p: &Path) -> Vec<MountEntry> {
    stack_at(
        &parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap()),
        p,
    )
}

/// The image of `commit` (with ostree's empty `/etc`, `/var`, … mount points).
fn image(s: &Sysroot, commit: &str, farm: &Path) -> Box<[u8]> {
    mkcomposefs(&dumpfile(&s.repo(), commit, farm))
}

fn in_private_namespace() {
    let s = Sysroot::new();
    s.os_init("fx");
    let t1 = Tree::minimal("6.1.0-test");
    t1.write("usr/bin/hello", b"#!/bin/sh\necho v1\n");
    t1.write("usr/etc/demo/a.conf", b"a v1\n");
    let c1 = s.commit("fx/v1", &t1);
    s.deploy("fx", "fx/v1", &["root=/dev/vda", "rw"]);
    let booted = s.json(&["status"])["deployments"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let t2 = t1.fork();
    t2.write("usr/bin/hello", b"#!/bin/sh\necho v2\n");
    t2.write("usr/etc/demo/a.conf", b"a v2\n");
    let c2 = s.commit("fx/v2", &t2);
    let staged = s.stage("fx", &c2, "fx/v2", None);
    let (booted_dir, staged_dir) = (s.deploy_dir("fx", &booted), s.deploy_dir("fx", &staged));
    let farm = s.repo().join("objects-cfs");
    // `ostree admin deploy` made the booted directory immutable (ostree writes its image before
    // that); only the mount of it matters here, so it lives beside.
    let work = tempfile::tempdir().unwrap();
    let booted_cfs = work.path().join("booted.cfs");
    std::fs::write(&booted_cfs, image(&s, &c1, &farm)).unwrap();
    std::fs::write(staged_dir.join(".ostree.cfs"), image(&s, &c2, &farm)).unwrap();

    // The running root: the booted image as composefs, its /etc bound on it.
    let (lower, root) = (work.path().join("cfsroot-lower"), work.path().join("root"));
    for d in [&lower, &root] {
        std::fs::create_dir(d).unwrap();
    }
    let booted_image = ComposefsImage {
        image: booted_cfs,
        objects: farm.clone(),
        require_verity: false,
        expected_digest: None,
    };
    attach(&mount(&booted_image, &lower).unwrap(), &root).unwrap();
    for (from, to) in [
        (booted_dir.join("etc"), "etc"),
        (s.path().join("ostree/deploy/fx/var"), "var"),
    ] {
        run(Command::new("mount")
            .arg("--bind")
            .arg(from)
            .arg(root.join(to)));
    }
    let m = std::fs::metadata(&booted_dir).unwrap();
    std::fs::write(
        s.run().join("ostree-booted"),
        encode::booted_composefs(m.dev(), m.ino(), false, None),
    )
    .unwrap();
    let fs = |args: &[&str]| {
        let out = s
            .fastswitch()
            .arg("--root")
            .arg(&root)
            .args(args)
            .output()
            .unwrap();
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "fastswitch {args:?}: {e}\n{o}");
        serde_json::from_str::<serde_json::Value>(&o)
            .unwrap_or_else(|e| panic!("fastswitch {args:?}: bad JSON ({e}):\n{o}"))
    };
    let usr = root.join("usr");
    let hello = usr.join("bin/hello");
    assert_eq!(std::fs::read(&hello).unwrap(), b"#!/bin/sh\necho v1\n");

    let st = fs(&["status", "--json"]);
    assert_eq!(st["composefs"]["mode"], "unverified", "{st}");
    assert_eq!(st["composefs"]["mount_table"], true, "{st}");

    let r = fs(&["apply-live", "--no-services", "--json"]);
    let steps: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["swap_composefs_usr", "merge_etc"], "{r}");
    assert_eq!(
        r["steps"][0]["detail"],
        serde_json::json!({
            "composefs": staged_dir.join(".ostree.cfs"),
            "old_detached_lazily": false,
            "pinned_ref": "fastswitch/live",
            "replaced": false,
            "usr_binds": 1,
            "verity": false,
        }),
        "{r}"
    );
    // /usr is the staged image's usr: a composefs overlay, not a bind of the checkout.
    assert_eq!(std::fs::read(&hello).unwrap(), b"#!/bin/sh\necho v2\n");
    let top = stack(&usr);
    assert!(
        top.last().is_some_and(MountEntry::is_composefs_usr),
        "{top:?}"
    );
    assert_ne!(
        std::fs::metadata(&hello).unwrap().dev(),
        std::fs::metadata(staged_dir.join("usr/bin/hello"))
            .unwrap()
            .dev(),
        "/usr shows the checkout's files, not the composefs mount's"
    );
    assert_eq!(
        std::fs::read(root.join("etc/demo/a.conf")).unwrap(),
        b"a v2\n"
    );
    assert!(
        !s.path()
            .join("ostree/fastswitch/live")
            .join(&staged)
            .exists(),
        "a composefs apply links no copy of the checkout"
    );
    let st = fs(&["status", "--json"]);
    assert_eq!(st["live"]["usr_is_target"], true, "{st}");
    assert_eq!(
        st["live"]["usr_source"],
        serde_json::json!(staged_dir.join(".ostree.cfs")),
        "{st}"
    );

    // A second apply of the same target: nothing to do, nothing stacked.
    let out = s
        .fastswitch()
        .arg("--root")
        .arg(&root)
        .args(["apply-live", "--no-services", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(stack(&usr).len(), 1);

    // The image reads file contents from the repository's objects: while it is live, a ref
    // keeps ostree's prune from removing them. With the branch's own ref gone, the real
    // `ostree prune` keeps the live commit; after reset (below) it removes it.
    let repo_arg = format!("--repo={}", s.repo().display());
    let ostree_ok = |args: &[&str]| run(ostree().arg(&repo_arg).args(args));
    assert_eq!(ostree_ok(&["rev-parse", "fastswitch/live"]).trim(), c2);
    ostree_ok(&["refs", "--delete", "fx/v2"]);
    ostree_ok(&["prune", "--refs-only"]);
    assert_eq!(
        ostree_ok(&["cat", &c2, "/usr/bin/hello"]),
        "#!/bin/sh\necho v2\n"
    );

    let r = fs(&["reset", "--no-services", "--json"]);
    let unmount = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "unmount_usr")
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(unmount["detail"]["unmounted"], 1, "{r}");
    assert!(stack(&usr).is_empty(), "{:?}", stack(&usr));
    assert_eq!(std::fs::read(&hello).unwrap(), b"#!/bin/sh\necho v1\n");
    assert_eq!(
        std::fs::read(root.join("etc/demo/a.conf")).unwrap(),
        b"a v1\n"
    );
    assert_eq!(
        unmount["detail"]["removed_live_trees"],
        serde_json::json!([s.repo().join("refs/heads/fastswitch/live")]),
        "{r}"
    );
    ostree_ok(&["prune", "--refs-only"]);
    let gone = ostree()
        .arg(&repo_arg)
        .args(["show", &c2])
        .output()
        .unwrap();
    assert!(
        !gone.status.success(),
        "the commit reset unpinned survived a prune: {gone:?}"
    );
    // The scratch mounts are gone too: nothing of fastswitch's is mounted anywhere.
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!table.contains("fastswitch/.private"), "{table}");
}
