//! The `/proc` stale scan against real processes and a real over-mount, as root, inside a
//! private mount namespace (the test re-runs itself under `unshare --mount --propagation
//! private`, so the host's mount table is never touched).
//!
//! Fixture: `A/usr` holds a copied `sleep` binary, a second copy that the target tree shares by
//! hardlink (ostree's "unchanged object"), and two shell scripts (one changed, one shared).
//! Real processes run them. Then `B/usr` — a different `sleep`, the same hardlinked copy, a
//! changed script — is bind-mounted over `A/usr`, the way fastswitch binds the staged `/usr`
//! over `/usr`. The scan must report exactly the process running the replaced binary and the
//! shell running the replaced script, and nothing else.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fastswitch::services::stale::{scan_stale, ScanConfig, StaleKind, StaleWhy};

mod common;
use common::in_private_mount_namespace;

const IN_NS: &str = "FASTSWITCH_STALE_SCAN_IN_NS";
const TEST: &str = "stale_scan_sees_overmounted_usr";

/// (what is stale, its path, why) for one stale file of a process.
type StaleEntry = (StaleKind, PathBuf, StaleWhy);

#[test]
fn stale_scan_sees_overmounted_usr() {
    in_private_mount_namespace(TEST, IN_NS, in_private_namespace);
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

fn copy_sleep(to: &Path) {
    let src = ["/usr/bin/sleep", "/bin/sleep"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("a sleep binary");
    std::fs::copy(src, to).unwrap();
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Wait until `pid` maps (or runs) `path`, i.e. its exec is done.
fn wait_until_maps(pid: u32, path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let needle = path.to_string_lossy().into_owned();
    loop {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if maps.contains(&needle) || String::from_utf8_lossy(&cmdline).contains(&needle) {
            return;
        }
        assert!(Instant::now() < deadline, "pid {pid} never mapped {needle}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bind(src: &Path, dst: &Path) {
    use nix::mount::{mount, MsFlags};
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .unwrap_or_else(|e| panic!("bind {} on {}: {e}", src.display(), dst.display()));
}

fn in_private_namespace() {
    use nix::mount::{mount, MsFlags};
    // Belt and braces: `unshare --propagation private` already did this.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("making / private in the test's mount namespace");

    // Under target/ (not /tmp, which may be noexec), canonical so argv and maps agree.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let base: PathBuf = tmp.path().canonicalize().unwrap();
    let a = base.join("A/usr");
    let b = base.join("B/usr");
    let old = base.join("old-usr");
    for d in [
        a.join("bin"),
        a.join("lib"),
        b.join("bin"),
        b.join("lib"),
        old.clone(),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    // Replaced: a different inode (and content) in B.
    copy_sleep(&a.join("bin/sleep"));
    copy_sleep(&b.join("bin/sleep"));
    std::fs::OpenOptions::new()
        .append(true)
        .open(b.join("bin/sleep"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"\0v2"))
        .unwrap();
    // Unchanged: the same inode in both trees, like an ostree object.
    copy_sleep(&a.join("bin/sleep-same"));
    std::fs::hard_link(a.join("bin/sleep-same"), b.join("bin/sleep-same")).unwrap();
    // Scripts run by a real interpreter. They block opening a FIFO nobody writes to, so the
    // shell stays alive without children of its own.
    let fifo = base.join("never-written");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let f = fifo.display();
    write(
        &a.join("lib/changed.sh"),
        &format!("read x < {f}\nexit 0\n"),
    );
    write(
        &b.join("lib/changed.sh"),
        &format!("read y < {f}\nexit 0\n"),
    );
    write(&a.join("lib/same.sh"), &format!("read x < {f}\nexit 0\n"));
    std::fs::hard_link(a.join("lib/same.sh"), b.join("lib/same.sh")).unwrap();

    let spawn = |prog: &Path, args: &[&Path]| -> Child {
        Command::new(prog)
            .args(args)
            .args(if args.is_empty() {
                &["300"][..]
            } else {
                &[][..]
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", prog.display()))
    };
    let mut procs = Procs(Vec::new());
    procs.0.push(spawn(&a.join("bin/sleep"), &[]));
    procs.0.push(spawn(&a.join("bin/sleep-same"), &[]));
    procs
        .0
        .push(spawn(Path::new("/bin/sh"), &[&a.join("lib/changed.sh")]));
    procs
        .0
        .push(spawn(Path::new("/bin/sh"), &[&a.join("lib/same.sh")]));
    let pids: Vec<u32> = procs.0.iter().map(Child::id).collect();
    wait_until_maps(pids[0], &a.join("bin/sleep"));
    wait_until_maps(pids[1], &a.join("bin/sleep-same"));
    wait_until_maps(pids[2], &a.join("lib/changed.sh"));
    wait_until_maps(pids[3], &a.join("lib/same.sh"));

    // Keep a handle on the old tree before covering it, as the booted deployment stays
    // reachable under /sysroot on a real host.
    bind(&a, &old);
    let config = ScanConfig {
        usr_prefix: a.clone(),
        ..ScanConfig::new(&old, &a)
    };

    // Before the swap nothing is stale: the target path still shows the running files.
    let before = scan_stale(&config).unwrap();
    assert_eq!(
        before.processes,
        vec![],
        "nothing may be stale before the over-mount"
    );

    bind(&b, &a);
    let after = scan_stale(&config).unwrap();
    let got: Vec<(u32, Vec<StaleEntry>)> = after
        .processes
        .iter()
        .map(|p| {
            (
                p.pid,
                p.files
                    .iter()
                    .map(|f| (f.kind, f.path.clone(), f.why))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                pids[0],
                vec![(StaleKind::Exe, a.join("bin/sleep"), StaleWhy::Replaced)]
            ),
            (
                pids[2],
                vec![(
                    StaleKind::Script,
                    a.join("lib/changed.sh"),
                    StaleWhy::Replaced
                )]
            ),
        ],
        "exactly the replaced binary's and the replaced script's processes; skipped: {:?}",
        after.skipped
    );

    drop(procs);
    for m in [&a, &old] {
        nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
}
