//! `diff_usr` on deployments made by the real ostree CLI, compared with `ostree diff
//! <c1> <c2>` restricted to `/usr` (as sets of (letter, path)), plus the kinds of each change.
//! Needs root (ostree's bare repo chowns objects); skipped with a message otherwise.

mod common;
use common::*;
use fastswitch::diff::usr::{diff_usr, UsrDiff};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
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

/// Commit with xattrs (the shared helper passes `--no-xattrs`).
fn commit_with_xattrs(s: &Sysroot, branch: &str, tree: &Tree) -> String {
    run(ostree()
        .arg(format!("--repo={}", s.repo().display()))
        .args(["commit", &format!("--branch={branch}")])
        .arg(format!("--tree=dir={}", tree.path().display())))
    .trim()
    .to_owned()
}

struct Pair {
    s: Sysroot,
    c1: String,
    c2: String,
    d1: PathBuf,
    d2: PathBuf,
}

fn deploy_pair(v1: &Tree, v2: &Tree) -> Pair {
    let s = Sysroot::new();
    s.os_init("os");
    let c1 = commit_with_xattrs(&s, "os/v1", v1);
    let c2 = commit_with_xattrs(&s, "os/v2", v2);
    s.deploy("os", "os/v1", &[]);
    s.deploy("os", "os/v2", &[]);
    let d1 = s.deploy_dir("os", &format!("{c1}.0"));
    let d2 = s.deploy_dir("os", &format!("{c2}.0"));
    assert!(d1.join("usr").is_dir() && d2.join("usr").is_dir());
    Pair { s, c1, c2, d1, d2 }
}

/// `ostree diff` between two commits, restricted to `/usr`.
fn ostree_truth(p: &Pair) -> BTreeSet<(String, String)> {
    let out = run(ostree()
        .arg(format!("--repo={}", p.s.repo().display()))
        .args(["diff", &p.c1, &p.c2]));
    out.lines()
        .filter_map(|l| {
            let (letter, path) = l.split_once(char::is_whitespace)?;
            let path = path.trim();
            (path == "/usr" || path.starts_with("/usr/"))
                .then(|| (letter.to_owned(), path.to_owned()))
        })
        .collect()
}

fn ours(d: &UsrDiff) -> BTreeSet<(String, String)> {
    d.entries
        .iter()
        .map(|e| {
            let letter = match serde_json::to_value(e.change).unwrap().as_str().unwrap() {
                "added" => "A",
                "removed" => "D",
                "modified" => "M",
                other => panic!("unknown change {other}"),
            };
            (letter.to_owned(), e.path.clone())
        })
        .collect()
}

fn entry<'a>(v: &'a Value, path: &str) -> &'a Value {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap_or_else(|| panic!("{path} not in diff:\n{v:#}"))
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    xattr::set(p, name, value).unwrap_or_else(|e| panic!("setxattr {}: {e}", p.display()));
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

/// v1 and v2 trees covering every kind of change ostree can record.
fn trees() -> (Tree, Tree) {
    let v1 = Tree::minimal("6.1.0");
    // Unchanged bulk, to exercise the same-inode path.
    for d in 0..5 {
        for f in 0..20 {
            v1.write(
                &format!("usr/share/bulk/d{d}/f{f}"),
                format!("{d}/{f}\n").as_bytes(),
            );
        }
    }
    v1.write("usr/bin/content", b"version 1\n");
    v1.write("usr/bin/samesize", b"AAAA\n");
    v1.write("usr/bin/modeonly", b"mode\n");
    v1.chmod("usr/bin/modeonly", 0o644);
    v1.write("usr/bin/owner", b"owner\n");
    v1.write("usr/bin/removed", b"bye\n");
    v1.symlink("content", "usr/lib/link");
    v1.symlink("content", "usr/lib/link2file");
    v1.write("usr/share/f2d", b"file that becomes a dir\n");
    v1.write("usr/share/d2f/child", b"child\n");
    v1.write("usr/share/d2f/sub/grandchild", b"gc\n");
    v1.write("usr/share/rmdir/a", b"a\n");
    v1.write("usr/share/rmdir/sub/b", b"b\n");
    v1.write("usr/share/meta/keep", b"keep\n");
    v1.chmod("usr/share/meta", 0o755);
    v1.write("usr/share/ownerdir/keep", b"keep\n");
    v1.write("usr/share/x/file", b"xattr file\n");
    v1.write("usr/share/xdir/keep", b"keep\n");
    // Names whose byte order differs from component order ("a-b" < "a/…" bytewise).
    v1.write("usr/share/order/a/b", b"1\n");
    v1.write("usr/share/order/a-b", b"1\n");
    set_xattr(
        &v1.path().join("usr/share/x/file"),
        "user.fastswitch",
        b"one",
    );
    set_xattr(&v1.path().join("usr/share/xdir"), "user.fastswitch", b"one");

    let v2 = v1.fork();
    v2.write("usr/bin/content", b"version 2, longer\n");
    v2.write("usr/bin/samesize", b"BBBB\n");
    v2.chmod("usr/bin/modeonly", 0o755);
    v2.remove("usr/bin/removed");
    v2.write("usr/bin/added", b"hello\n");
    v2.symlink("samesize", "usr/lib/link");
    v2.remove("usr/lib/link2file");
    v2.write("usr/lib/link2file", b"now a file\n");
    v2.remove("usr/share/f2d");
    v2.write("usr/share/f2d/inside", b"inside\n");
    v2.remove("usr/share/d2f");
    v2.write("usr/share/d2f", b"dir became a file\n");
    v2.remove("usr/share/rmdir");
    v2.write("usr/share/newdir/one", b"1\n");
    v2.write("usr/share/newdir/sub/two", b"2\n");
    v2.symlink("one", "usr/share/newdir/sub/link");
    v2.chmod("usr/share/meta", 0o700);
    v2.write("usr/share/order/a/b", b"2\n");
    v2.write("usr/share/order/a-b", b"2\n");
    set_xattr(
        &v2.path().join("usr/share/x/file"),
        "user.fastswitch",
        b"two",
    );
    set_xattr(&v2.path().join("usr/share/xdir"), "user.fastswitch", b"two");
    chown(&v2.path().join("usr/bin/owner"), 1234, 1234);
    chown(&v2.path().join("usr/share/ownerdir"), 1234, 0);
    (v1, v2)
}

#[test]
fn usr_diff_matches_ostree_diff() {
    require_root!();
    let (v1, v2) = trees();
    let p = deploy_pair(&v1, &v2);
    let d = diff_usr(&p.d1, &p.d2).unwrap();
    let truth = ostree_truth(&p);
    assert_eq!(ours(&d), truth, "ours:\n{:#?}", d.entries);

    // Sanity of the ground truth itself: the semantics we claim to mirror.
    for expected in [
        ("D", "/usr/share/rmdir"),
        ("A", "/usr/share/newdir"),
        ("A", "/usr/share/newdir/sub/link"),
        ("M", "/usr/share/f2d"),
        ("M", "/usr/share/d2f"),
        ("M", "/usr/share/meta"),
        ("M", "/usr/share/xdir"),
    ] {
        assert!(
            truth.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?}"
        );
    }
    assert!(
        !truth.iter().any(|(_, p)| p.starts_with("/usr/share/rmdir/")
            || p.starts_with("/usr/share/f2d/")
            || p.starts_with("/usr/share/d2f/")
            || p.starts_with("/usr/share/bulk"))
    );

    let v = serde_json::to_value(&d).unwrap();
    let kinds = |path: &str| entry(&v, path)["kinds"].clone();
    assert_eq!(kinds("/usr/bin/content"), json!(["content"]));
    assert_eq!(kinds("/usr/bin/samesize"), json!(["content"]));
    assert_eq!(kinds("/usr/bin/modeonly"), json!(["mode"]));
    assert_eq!(kinds("/usr/bin/owner"), json!(["owner"]));
    assert_eq!(kinds("/usr/share/ownerdir"), json!(["owner"]));
    assert_eq!(kinds("/usr/lib/link"), json!(["symlink_target"]));
    assert_eq!(kinds("/usr/share/meta"), json!(["mode"]));
    assert_eq!(kinds("/usr/share/x/file"), json!(["xattrs"]));
    assert_eq!(kinds("/usr/share/xdir"), json!(["xattrs"]));
    assert_eq!(
        entry(&v, "/usr/share/f2d"),
        &json!({"path": "/usr/share/f2d", "change": "modified", "kinds": ["type"],
                "from_type": "file", "to_type": "dir"})
    );
    assert_eq!(
        entry(&v, "/usr/share/d2f"),
        &json!({"path": "/usr/share/d2f", "change": "modified", "kinds": ["type"],
                "from_type": "dir", "to_type": "file"})
    );
    assert_eq!(
        entry(&v, "/usr/lib/link2file"),
        &json!({"path": "/usr/lib/link2file", "change": "modified", "kinds": ["type"],
                "from_type": "symlink", "to_type": "file"})
    );
    assert_eq!(
        entry(&v, "/usr/share/rmdir"),
        &json!({"path": "/usr/share/rmdir", "change": "removed", "kinds": [],
                "from_type": "dir", "to_type": null})
    );
    assert_eq!(
        entry(&v, "/usr/share/newdir/sub/link"),
        &json!({"path": "/usr/share/newdir/sub/link", "change": "added", "kinds": [],
                "from_type": null, "to_type": "symlink"})
    );
    assert_eq!(
        v["counts"],
        json!({
            "added": truth.iter().filter(|(l, _)| l == "A").count(),
            "removed": truth.iter().filter(|(l, _)| l == "D").count(),
            "modified": truth.iter().filter(|(l, _)| l == "M").count(),
        })
    );
    // Sorted component-wise: parents first, "a/b" before "a-b".
    let paths: Vec<&str> = d.entries.iter().map(|e| e.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort_by(|a, b| Path::new(a).cmp(Path::new(b)));
    assert_eq!(paths, sorted);
    let ia = paths
        .iter()
        .position(|p| *p == "/usr/share/order/a/b")
        .unwrap();
    let ib = paths
        .iter()
        .position(|p| *p == "/usr/share/order/a-b")
        .unwrap();
    assert!(ia < ib, "{paths:?}");
    assert_eq!(d.get("/usr/bin/owner").unwrap().path, "/usr/bin/owner");
    assert!(d.get("/usr/share/bulk").is_none());
}

/// A copy of each deployment (no shared inodes) forces the stat/read path; the diff must be
/// identical to the hardlinked one.
#[test]
fn copied_trees_give_the_same_diff() {
    require_root!();
    let (v1, v2) = trees();
    let p = deploy_pair(&v1, &v2);
    let fast = diff_usr(&p.d1, &p.d2).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (src, dst) in [(&p.d1, &a), (&p.d2, &b)] {
        std::fs::create_dir(dst).unwrap();
        run(Command::new("cp").arg("-a").arg(src.join("usr")).arg(dst));
    }
    let ino = |p: &Path| std::fs::symlink_metadata(p).unwrap().ino();
    let rel = "usr/share/bulk/d0/f0";
    assert_eq!(
        ino(&p.d1.join(rel)),
        ino(&p.d2.join(rel)),
        "deployments share inodes"
    );
    assert_ne!(ino(&a.join(rel)), ino(&b.join(rel)), "copies do not");
    let slow = diff_usr(&a, &b).unwrap();
    assert_eq!(
        serde_json::to_value(&slow).unwrap(),
        serde_json::to_value(&fast).unwrap()
    );

    // Copying changes nothing ostree records, so a copy equals its original.
    assert!(diff_usr(&p.d1, &a).unwrap().is_empty());
    // One edit in the copy (same size, same inode) is found by reading.
    std::fs::write(b.join(rel), b"XXX\n").unwrap();
    assert_eq!(std::fs::read(p.d2.join(rel)).unwrap().len(), 4);
    let d = diff_usr(&p.d2, &b).unwrap();
    assert_eq!(ours(&d), [("M".to_owned(), format!("/{rel}"))].into());
    assert_eq!(
        serde_json::to_value(&d.entries[0]).unwrap()["kinds"],
        json!(["content"])
    );
}

/// The same commit deployed twice shares every file; the diff is empty, and so is a
/// deployment compared with itself.
#[test]
fn same_commit_twice_is_empty() {
    require_root!();
    let (v1, _) = trees();
    let s = Sysroot::new();
    s.os_init("os");
    let c = commit_with_xattrs(&s, "os/v1", &v1);
    s.deploy("os", "os/v1", &[]);
    s.deploy("os", "os/v1", &[]);
    let (d0, d1) = (
        s.deploy_dir("os", &format!("{c}.0")),
        s.deploy_dir("os", &format!("{c}.1")),
    );
    let d = diff_usr(&d0, &d1).unwrap();
    assert!(d.is_empty(), "{:#?}", d.entries);
    assert_eq!(
        serde_json::to_value(&d).unwrap(),
        json!({"entries": [], "counts": {"added": 0, "removed": 0, "modified": 0}})
    );
    assert!(diff_usr(&d0, &d0).unwrap().is_empty());
}

#[test]
fn errors_name_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("a")).unwrap();
    std::fs::create_dir_all(tmp.path().join("b/usr")).unwrap();
    let err = diff_usr(&tmp.path().join("a"), &tmp.path().join("b")).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&tmp.path().join("a/usr").display().to_string()),
        "{msg}"
    );

    // /usr must be a real directory, not a symlink to one.
    std::os::unix::fs::symlink("../b/usr", tmp.path().join("a/usr")).unwrap();
    let err = diff_usr(&tmp.path().join("a"), &tmp.path().join("b")).unwrap_err();
    assert!(format!("{err:#}").contains("a/usr"), "{err:#}");
}

/// The repo checksums the walk prunes with are the ones the real ostree CLI shows
/// (`ostree ls -C -d`), so pruning is really active on ostree deployments.
#[test]
fn pruning_reads_the_checksums_ostree_shows() {
    require_root!();
    let (v1, v2) = trees();
    let p = deploy_pair(&v1, &v2);
    use fastswitch::diff::repo::Repo;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let (repo, c1) = Repo::of_deployment(&p.d1).expect("repo of the deployment");
    assert_eq!(c1, p.c1);
    for (commit, dir) in [(&p.c1, "/usr"), (&p.c2, "/usr")] {
        let u = repo.usr(commit).expect("usr checksums from the commit");
        let ls = run(ostree()
            .arg(format!("--repo={}", p.s.repo().display()))
            .args(["ls", "-C", "-d", commit, dir]));
        assert!(
            ls.contains(&hex(&u.tree)) && ls.contains(&hex(&u.meta)),
            "{dir} of {commit}: {ls}"
        );
        // One level down: every subdirectory's checksums, by name.
        let sub = repo.subdirs(&u.tree).expect("dirtree of /usr");
        assert!(sub.contains_key(b"share".as_slice()), "{:?}", sub.keys());
        let share = sub[b"share".as_slice()];
        let ls = run(ostree()
            .arg(format!("--repo={}", p.s.repo().display()))
            .args(["ls", "-C", "-d", commit, "/usr/share"]));
        assert!(ls.contains(&hex(&share.tree)), "{ls}");
    }
    // Unchanged subtrees have equal checksums (and are skipped), changed ones differ.
    let s1 = repo.subdirs(&repo.usr(&p.c1).unwrap().tree).unwrap();
    let s2 = repo.subdirs(&repo.usr(&p.c2).unwrap().tree).unwrap();
    assert_ne!(s1[b"bin".as_slice()], s2[b"bin".as_slice()]);
    let b1 = repo.subdirs(&s1[b"share".as_slice()].tree).unwrap();
    let b2 = repo.subdirs(&s2[b"share".as_slice()].tree).unwrap();
    assert_eq!(b1[b"bulk".as_slice()], b2[b"bulk".as_slice()]);
}

/// Open (creating with `mkdir`, when `create`) each component below `root` by directory
/// descriptor: absolute paths beyond `PATH_MAX` cannot be used.
fn open_deep(root: &Path, comps: &[String], create: bool) -> std::os::fd::OwnedFd {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut fd = rustix::fs::open(root, flags, Mode::empty()).unwrap();
    for c in comps {
        if create {
            match rustix::fs::mkdirat(&fd, c.as_str(), Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => panic!("mkdirat {c}: {e}"),
            }
        }
        fd = rustix::fs::openat(&fd, c.as_str(), flags, Mode::empty()).unwrap();
    }
    fd
}

fn write_at(dir: &std::os::fd::OwnedFd, name: &str, data: &[u8]) {
    use rustix::fs::{Mode, OFlags};
    let _ = rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty());
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    std::io::Write::write_all(&mut std::fs::File::from(fd), data).unwrap();
}

/// A `/usr` tree whose paths exceed 4096 bytes (25 levels of 200-byte names): `diff` must
/// equal `ostree diff` on it, through the binary and the library.
#[test]
fn paths_longer_than_path_max_match_ostree_diff() {
    require_root!();
    let comps: Vec<String> = (0..25)
        .map(|i| format!("{i:02}{}", "d".repeat(198)))
        .collect();
    let deep_rel = format!("/usr/share/deep/{}", comps.join("/"));
    assert!(deep_rel.len() > 5000);
    let mut share = vec!["usr".to_owned(), "share".to_owned(), "deep".to_owned()];
    share.extend(comps.iter().cloned());

    // Built twice from scratch: `cp -a` cannot copy such a tree.
    let v1 = Tree::minimal("6.1.0");
    let bottom = open_deep(v1.path(), &share, true);
    write_at(&bottom, "same", b"same\n");
    write_at(&bottom, "changed", b"v1\n");
    write_at(&bottom, "removed", b"gone in v2\n");
    rustix::fs::symlinkat("same", &bottom, "link").unwrap();
    let v2 = Tree::minimal("6.1.0");
    let bottom = open_deep(v2.path(), &share, true);
    write_at(&bottom, "same", b"same\n");
    write_at(&bottom, "changed", b"v2\n");
    write_at(&bottom, "added", b"new\n");
    rustix::fs::symlinkat("changed", &bottom, "link").unwrap();
    let sub = open_deep(
        v2.path(),
        &[share.clone(), vec!["newdir".into()]].concat(),
        true,
    );
    write_at(&sub, "f", b"f\n");
    drop((bottom, sub));

    let p = deploy_pair(&v1, &v2);
    let truth = ostree_truth(&p);
    for (letter, name) in [
        ("M", "changed"),
        ("D", "removed"),
        ("A", "added"),
        ("M", "link"),
        ("A", "newdir"),
    ] {
        assert!(
            truth.contains(&(letter.to_owned(), format!("{deep_rel}/{name}"))),
            "ostree diff lacks {letter} …/{name}: {truth:?}"
        );
    }
    let d = diff_usr(&p.d1, &p.d2).unwrap();
    assert_eq!(ours(&d), truth);

    // The binary, end to end (index 0 is v2, 1 is v1).
    let out =
        p.s.fastswitch()
            .args(["diff", "--from", "1", "--to", "0", "--json"])
            .output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fastswitch diff failed: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bin: BTreeSet<(String, String)> = v["usr"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let letter = match e["change"].as_str().unwrap() {
                "added" => "A",
                "removed" => "D",
                _ => "M",
            };
            (letter.to_owned(), e["path"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(bin, truth);
}
