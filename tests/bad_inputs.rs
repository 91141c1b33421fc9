//! The bad-input corpus: each case breaks one thing in a real-ostree fixture, runs fastswitch,
//! and checks the exit code, a fragment of the error that names what is wrong, and that nothing
//! changed: the sysroot, the run directory and the mount table are the same before and after.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

/// A booted fixture with a staged userspace-only change, ready to be broken.
struct Fx {
    s: Sysroot,
    booted: String,
    staged: String,
}

fn fixture() -> Fx {
    let s = Sysroot::new();
    s.os_init("fx");
    let t1 = Tree::minimal("6.1.0-test");
    t1.write("usr/etc/demo/a.conf", b"a v1\n");
    t1.write(
        "usr/lib/systemd/system/demo.service",
        b"[Unit]\nDescription=demo\n[Service]\nExecStart=/usr/bin/hello\n",
    );
    s.commit("fx/v1", &t1);
    s.deploy("fx", "fx/v1", &["root=/dev/vda", "rw"]);
    let booted = s.json(&["status"])["deployments"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.mark_booted("fx", &booted);
    let t2 = t1.fork();
    t2.write("usr/bin/hello", b"#!/bin/sh\necho v2\n");
    t2.write("usr/etc/demo/a.conf", b"a v2\n");
    t2.write("usr/etc/demo/b.conf", b"b v2\n");
    let c2 = s.commit("fx/v2", &t2);
    let staged = s.stage("fx", &c2, "fx/v2", None);
    Fx { s, booted, staged }
}

/// Everything that must not change: every path under the sysroot with type, mode, size, mtime
/// and link target, plus the mount table. Taking the run lock creates `run/fastswitch/lock`
/// (and its directory): that is not a change of the system, so it is left out.
fn state(s: &Sysroot) -> String {
    let tree = run(Command::new("bash").arg("-c").arg(format!(
        "cd {} && {{ find . -path ./run/fastswitch/lock -prune -o ! -type d -printf '%p %y %m %s %T@ %l\\n'; \
         find . -type d ! -path ./run/fastswitch -printf '%p %y %m\\n'; }} | sort",
        s.path().display()
    )));
    let mounts = mounts_touching(s.path());
    format!("{tree}\n--- mounts\n{mounts}")
}

struct Case {
    name: &'static str,
    /// Break the fixture.
    setup: Box<dyn Fn(&Fx)>,
    /// fastswitch arguments (the fixture's --sysroot/--run-dir/--root are added).
    args: &'static [&'static str],
    code: i32,
    fragment: &'static str,
    /// Run as an unprivileged user.
    unprivileged: bool,
}

fn case(
    name: &'static str,
    args: &'static [&'static str],
    code: i32,
    fragment: &'static str,
    setup: impl Fn(&Fx) + 'static,
) -> Case {
    Case {
        name,
        setup: Box::new(setup),
        args,
        code,
        fragment,
        unprivileged: false,
    }
}

fn staged_dir(f: &Fx) -> std::path::PathBuf {
    f.s.deploy_dir("fx", &f.staged)
}
fn booted_dir(f: &Fx) -> std::path::PathBuf {
    f.s.deploy_dir("fx", &f.booted)
}
fn staged_kernel(f: &Fx) -> std::path::PathBuf {
    staged_dir(f).join("usr/lib/modules/6.1.0-test/vmlinuz")
}
fn staged_initramfs(f: &Fx) -> std::path::PathBuf {
    staged_dir(f).join("usr/lib/modules/6.1.0-test/initramfs.img")
}
/// Replace a hardlinked repo object by a private copy before writing (never corrupt the repo).
fn rewrite(p: &Path, data: &[u8]) {
    let _ = std::fs::remove_file(p);
    std::fs::write(p, data).unwrap();
}
fn staged_file(f: &Fx) -> std::path::PathBuf {
    f.s.run().join("ostree/staged-deployment")
}
fn bls_entries(f: &Fx) -> Vec<std::path::PathBuf> {
    let dir = f.s.path().join("boot/loader/entries");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}
fn bootlink(f: &Fx) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&bls_entries(f)[0]).unwrap();
    let arg = text
        .split_whitespace()
        .find_map(|a| a.strip_prefix("ostree="))
        .unwrap()
        .to_owned();
    let sub = std::fs::read_link(f.s.path().join(format!("ostree/boot.{}", &arg[13..14]))).unwrap();
    let rest: Vec<&str> = arg.split('/').collect();
    f.s.path()
        .join("ostree")
        .join(sub)
        .join(rest[3])
        .join(rest[4])
        .join(rest[5])
}
/// A minimal PE header for a given machine type (0x8664 x86-64, 0xaa64 arm64).
fn pe_with_machine(machine: u16) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    b[0] = b'M';
    b[1] = b'Z';
    b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    b[0x80..0x84].copy_from_slice(b"PE\0\0");
    b[0x84..0x86].copy_from_slice(&machine.to_le_bytes());
    b
}

/// Run a command, killing it (and failing the test) if it has not exited after `secs`
/// seconds: a hang on some input must fail, not stall CI.
fn output_within(cmd: &mut Command, secs: u64, what: &str) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        out.read_to_end(&mut b).ok();
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        err.read_to_end(&mut b).ok();
        b
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("{what}: fastswitch still running after {secs} s (hang); killed");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

fn cases() -> Vec<Case> {
    vec![
        case(
            "zeroed kernel",
            &["kexec", "--dry-run"],
            6,
            "vmlinuz",
            |f| rewrite(&staged_kernel(f), &vec![0u8; 8192]),
        ),
        case(
            "text file as kernel",
            &["kexec", "--dry-run"],
            6,
            "vmlinuz",
            |f| rewrite(&staged_kernel(f), b"not a kernel at all\n"),
        ),
        case(
            "truncated kernel (2 bytes)",
            &["kexec", "--dry-run"],
            6,
            "vmlinuz",
            |f| rewrite(&staged_kernel(f), b"MZ"),
        ),
        case(
            "wrong-arch kernel (arm64 PE)",
            &["kexec", "--dry-run"],
            6,
            "vmlinuz",
            |f| rewrite(&staged_kernel(f), &pe_with_machine(0xaa64)),
        ),
        case("empty kernel", &["kexec", "--dry-run"], 6, "vmlinuz", |f| {
            rewrite(&staged_kernel(f), b"")
        }),
        case(
            "missing initramfs",
            &["kexec", "--dry-run"],
            6,
            "vmlinuz",
            |f| std::fs::remove_file(staged_initramfs(f)).unwrap(),
        ),
        case(
            "BLS entry without ostree=",
            &["status"],
            1,
            "no `ostree=`",
            |f| {
                for e in bls_entries(f) {
                    let t = std::fs::read_to_string(&e).unwrap();
                    let t: String = t
                        .lines()
                        .map(|l| {
                            if l.starts_with("options") {
                                "options root=/dev/vda rw\n".to_owned()
                            } else {
                                format!("{l}\n")
                            }
                        })
                        .collect();
                    rewrite(&e, t.as_bytes());
                }
            },
        ),
        case(
            "bootlink pointing outside the sysroot",
            &["status"],
            1,
            "outside",
            |f| {
                let bl = bootlink(f);
                std::fs::remove_file(&bl).unwrap();
                std::os::unix::fs::symlink("/etc", &bl).unwrap();
            },
        ),
        case(
            "ostree= bootlink is a directory, not a symlink",
            &["status"],
            1,
            "not a symbolic link",
            |f| {
                let bl = bootlink(f);
                std::fs::remove_file(&bl).unwrap();
                std::fs::create_dir(&bl).unwrap();
            },
        ),
        case(
            "boot/loader is a directory",
            &["status"],
            1,
            "loader",
            |f| {
                let l = f.s.path().join("boot/loader");
                std::fs::remove_file(&l).unwrap();
                std::fs::create_dir(&l).unwrap();
            },
        ),
        case(
            "malformed GVariant in ostree-booted",
            &["status"],
            1,
            "ostree-booted",
            |f| rewrite(&f.s.run().join("ostree-booted"), b"\x01\x02\x03garbage\xff"),
        ),
        case(
            "JSON instead of GVariant in staged-deployment",
            &["diff"],
            1,
            "staged-deployment",
            |f| rewrite(&staged_file(f), b"{\"target\":{\"name\":\"x\"}}"),
        ),
        case(
            "staged deployment directory deleted",
            &["diff"],
            1,
            "does not exist",
            |f| {
                let d = staged_dir(f);
                run(Command::new("rm").arg("-rf").arg(&d));
            },
        ),
        case("garbage origin file", &["status"], 1, "origin", |f| {
            let o = booted_dir(f).with_file_name(format!("{}.origin", f.booted));
            rewrite(&o, b"\x00\x01 this is not a key file\n");
        }),
        case(
            "deployment name with ..",
            &["status"],
            1,
            "deployment name",
            |f| {
                rewrite(
                    &staged_file(f),
                    &fastswitch::discover::state::encode::staged(
                        "../../etc.0",
                        "fx",
                        "00",
                        None,
                        false,
                    ),
                )
            },
        ),
        case(
            "deployment name with /",
            &["status"],
            1,
            "deployment name",
            |f| {
                let bad = format!("{}/x.0", "a".repeat(64));
                rewrite(
                    &staged_file(f),
                    &fastswitch::discover::state::encode::staged(&bad, "fx", "00", None, false),
                )
            },
        ),
        case("stateroot with ..", &["status"], 1, "stateroot", |f| {
            rewrite(
                &staged_file(f),
                &fastswitch::discover::state::encode::staged(&f.staged, "..", "00", None, false),
            )
        }),
        case(
            "/etc directory is a symlink pointing outside /etc",
            &["apply-live", "--no-services"],
            6,
            "newly defaults to directory",
            |f| {
                let demo = booted_dir(f).join("etc/demo");
                run(Command::new("rm").arg("-rf").arg(&demo));
                std::os::unix::fs::symlink("/tmp", &demo).unwrap();
            },
        ),
        case(
            "unit file with invalid syntax in the target",
            &["diff"],
            1,
            "demo.service",
            |f| {
                rewrite(
                &staged_dir(f).join("usr/lib/systemd/system/demo.service"),
                b"[Unit]\nDescription=demo\nthis line has no equals sign\n[Service]\nExecStart=/usr/bin/hello\n",
            )
            },
        ),
        case(
            "legacy kernel and initramfs checksums differ in the target",
            &["diff"],
            1,
            "mismatched kernel checksum vs initrd",
            |f| {
                let b = staged_dir(f).join("usr/lib/ostree-boot");
                std::fs::create_dir_all(&b).unwrap();
                std::fs::write(b.join(format!("vmlinuz-6.2-{}", "a".repeat(64))), b"k").unwrap();
                std::fs::write(
                    b.join(format!("initramfs-6.2.img-{}", "b".repeat(64))),
                    b"i",
                )
                .unwrap();
            },
        ),
        case(
            "no staged or pending deployment",
            &["apply-live", "--dry-run", "--no-services"],
            6,
            "no staged or pending",
            |f| {
                std::fs::remove_file(staged_file(f)).unwrap();
            },
        ),
        case(
            "unknown deployment selector",
            &["diff", "--to", "nosuch"],
            1,
            "no `nosuch` deployment in",
            |_| {},
        ),
        case(
            "deployment index too large for any integer",
            &["diff", "--from", "99999999999999999999999"],
            1,
            "`99999999999999999999999` is out of range",
            |_| {},
        ),
        case(
            "deployment index out of range lists what is accepted",
            &["diff", "--to", "7"],
            1,
            "accepted: booted, staged, pending, rollback, an index 0..=1",
            |_| {},
        ),
        case(
            "not ostree-booted",
            &["apply-live", "--no-services"],
            6,
            "not ostree-booted",
            |f| {
                std::fs::remove_file(f.s.run().join("ostree-booted")).unwrap();
            },
        ),
        case(
            "kernel arguments changed",
            &["apply-live", "--no-services"],
            5,
            "kernel arguments",
            |f| {
                rewrite(
                    &staged_file(f),
                    &fastswitch::discover::state::encode::staged(
                        &f.staged,
                        "fx",
                        "00",
                        Some(&["root=/dev/vda", "rw", "new=1"]),
                        false,
                    ),
                )
            },
        ),
        case(
            "interrupted run at another target",
            &["apply-live", "--no-services"],
            8,
            "reset",
            |f| {
                let dir = f.s.run().join("fastswitch");
                std::fs::create_dir_all(&dir).unwrap();
                let st = serde_json::json!({
                    "schema_version": 1, "booted": f.booted, "target": "f".repeat(64) + ".0",
                    "target_path": "/nonexistent", "started_at": 1, "finished_at": null,
                    "steps": [{"name": "swap_usr", "status": "started", "duration_ms": null, "detail": null}],
                    "usr_binds": 0, "etc_backups": [], "unit_actions": []
                });
                std::fs::write(dir.join("state.json"), st.to_string()).unwrap();
            },
        ),
        case("corrupt live state file", &["status"], 1, "corrupt", |f| {
            let dir = f.s.run().join("fastswitch");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("state.json"), b"{ half a json").unwrap();
        }),
        case(
            "corrupt persistent /etc record",
            &["apply-live", "--no-services"],
            1,
            "var/lib/fastswitch/state.json is corrupt",
            |f| {
                let dir = booted_dir(f).join("var/lib/fastswitch");
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("state.json"), b"\0\0\0\0").unwrap();
            },
        ),
        case(
            "/etc changes of an earlier boot not recovered",
            &["apply-live", "--no-services"],
            6,
            "run `fastswitch recover`",
            |f| {
                let dir = booted_dir(f).join("var/lib/fastswitch");
                std::fs::create_dir_all(&dir).unwrap();
                let st = serde_json::json!({
                    "schema_version": 1, "booted": f.booted, "target": f.staged,
                    "target_path": staged_dir(f), "started_at": 1, "finished_at": 2,
                    "steps": [], "usr_binds": 1, "unit_actions": [],
                    "etc_backups": [{"path": "/etc/demo/b.conf", "backup": null, "written": null}],
                    "boot_id": "00000000-0000-0000-0000-000000000000", "resetting": false
                });
                std::fs::write(dir.join("state.json"), st.to_string()).unwrap();
            },
        ),
        case(
            "apply-live after an interrupted reset",
            &["apply-live", "--no-services"],
            8,
            "run `fastswitch reset` again",
            |f| {
                let dir = f.s.run().join("fastswitch");
                std::fs::create_dir_all(&dir).unwrap();
                let st = serde_json::json!({
                    "schema_version": 1, "booted": f.booted, "target": f.staged,
                    "target_path": staged_dir(f), "started_at": 1, "finished_at": 2,
                    "steps": [], "usr_binds": 0, "etc_backups": [], "unit_actions": [],
                    "resetting": true
                });
                std::fs::write(dir.join("state.json"), st.to_string()).unwrap();
            },
        ),
        Case {
            unprivileged: true,
            ..case(
                "no permission (unprivileged user)",
                &["apply-live", "--no-services"],
                6,
                "CAP_SYS_ADMIN",
                |_| {},
            )
        },
    ]
}

#[test]
fn bad_input_corpus() {
    let root = is_root();
    let mut ran = 0;
    let mut failures = Vec::new();
    for c in cases() {
        if c.unprivileged && !root {
            eprintln!(
                "skipped {:?}: needs root to drop to an unprivileged user",
                c.name
            );
            continue;
        }
        let f = fixture();
        (c.setup)(&f);
        let before = state(&f.s);
        let root_dir = booted_dir(&f);
        let mut cmd = if c.unprivileged {
            let mut s = Command::new("setpriv");
            s.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--",
            ]);
            s.arg(env!("CARGO_BIN_EXE_fastswitch"));
            s
        } else {
            Command::new(env!("CARGO_BIN_EXE_fastswitch"))
        };
        cmd.arg("--sysroot")
            .arg(f.s.path())
            .arg("--run-dir")
            .arg(f.s.run())
            .arg("--root")
            .arg(&root_dir);
        cmd.args(c.args);
        let out = output_within(&mut cmd, 20, c.name);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let after = state(&f.s);
        let mut problems = Vec::new();
        if out.status.code() != Some(c.code) {
            problems.push(format!("exit {:?}, expected {}", out.status.code(), c.code));
        }
        if !stderr.contains(c.fragment) {
            problems.push(format!("stderr lacks {:?}", c.fragment));
        }
        if stderr.contains("panicked") {
            problems.push("panicked".into());
        }
        if before != after {
            problems.push("something changed on disk or in the mount table".into());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n  stderr: {}",
                c.name,
                problems.join("; "),
                stderr.trim()
            ));
        }
        ran += 1;
    }
    eprintln!("bad-input cases run: {ran}");
    assert!(
        failures.is_empty(),
        "{} of {ran} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        ran >= 20,
        "the corpus must have at least 20 cases, ran {ran}"
    );
}

#[test]
fn second_run_while_locked_is_refused_with_the_pid() {
    let f = fixture();
    let lockdir = f.s.run().join("fastswitch");
    let _held =
        fastswitch::system::lock::acquire(&lockdir, fastswitch::system::lock::Role::Other, None)
            .unwrap();
    let before = state(&f.s);
    let out =
        f.s.fastswitch()
            .arg("--root")
            .arg(booted_dir(&f))
            .args(["apply-live", "--no-services"])
            .output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if nix::unistd::geteuid().is_root() {
        assert_eq!(out.status.code(), Some(7), "{stderr}");
        assert!(
            stderr.contains(&format!("PID {}", std::process::id())),
            "{stderr}"
        );
    } else {
        assert_eq!(out.status.code(), Some(6), "{stderr}");
    }
    assert_eq!(state(&f.s), before);
}

/// The kinds of non-regular file that can sit where fastswitch expects a regular one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    Fifo,
    Socket,
    CharDevice,
    Directory,
    DanglingSymlink,
}

const SPECIALS: [Special; 5] = [
    Special::Fifo,
    Special::Socket,
    Special::CharDevice,
    Special::Directory,
    Special::DanglingSymlink,
];

/// Replace whatever is at `p` by a special file of kind `k`.
fn make_special(p: &Path, k: Special) {
    if p.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false) {
        std::fs::remove_dir_all(p).unwrap();
    } else {
        let _ = std::fs::remove_file(p);
    }
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    match k {
        Special::Fifo => nix::unistd::mkfifo(p, Mode::from_bits_truncate(0o644)).unwrap(),
        // mknod makes the socket inode as bind(2) would, without bind's 108-byte path limit.
        Special::Socket => mknod(p, SFlag::S_IFSOCK, Mode::from_bits_truncate(0o644), 0).unwrap(),
        // The same device as /dev/null: reading it would succeed with nothing, which is also
        // wrong; it must be refused like the others.
        Special::CharDevice => mknod(
            p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o644),
            makedev(1, 3),
        )
        .unwrap(),
        Special::Directory => {
            std::fs::create_dir(p).unwrap();
            std::fs::write(p.join("inside"), b"x").unwrap();
        }
        Special::DanglingSymlink => {
            std::os::unix::fs::symlink("/nonexistent/fastswitch-test-target", p).unwrap()
        }
    }
}

/// Where fastswitch reads a file it does not control, and the command that reads it.
struct Place {
    name: &'static str,
    path: fn(&Fx) -> std::path::PathBuf,
    args: &'static [&'static str],
}

fn places() -> Vec<Place> {
    vec![
        Place {
            name: "BLS entry",
            path: |f| bls_entries(f)[0].clone(),
            args: &["status"],
        },
        Place {
            name: "origin file",
            path: |f| booted_dir(f).with_file_name(format!("{}.origin", f.booted)),
            args: &["status"],
        },
        Place {
            name: "run/ostree-booted",
            path: |f| f.s.run().join("ostree-booted"),
            args: &["status"],
        },
        Place {
            name: "run/ostree/staged-deployment",
            path: staged_file,
            args: &["diff"],
        },
        Place {
            name: "live state run/fastswitch/state.json",
            path: |f| f.s.run().join("fastswitch/state.json"),
            args: &["status"],
        },
        Place {
            name: "persistent state var/lib/fastswitch/state.json",
            path: |f| booted_dir(f).join("var/lib/fastswitch/state.json"),
            args: &["apply-live", "--no-services"],
        },
        Place {
            name: "unit file in the target",
            path: |f| staged_dir(f).join("usr/lib/systemd/system/demo.service"),
            args: &["diff"],
        },
        Place {
            name: "initramfs in the target",
            path: staged_initramfs,
            args: &["diff"],
        },
        Place {
            name: "kernel in the target",
            path: staged_kernel,
            args: &["kexec", "--dry-run"],
        },
    ]
}

/// What must happen for a special file at a place: (exit code, fragment of stderr).
/// `None`: the file's absence is legitimate there and is treated as absent (documented next to
/// each), so the command must just not hang.
fn expected(place: &str, k: Special, path: &Path) -> Option<(i32, String)> {
    // The message names the path as read (the BLS entry through `loader.N`): match its name.
    let shown = path.file_name().unwrap().to_string_lossy();
    let kind = match k {
        Special::Fifo => "is a FIFO",
        Special::Socket => "is a socket",
        Special::CharDevice => "is a character device",
        Special::Directory => "is a directory",
        Special::DanglingSymlink => "is a dangling symbolic link",
    };
    match (place, k) {
        // A unit symlink pointing nowhere is a unit that does not exist (as systemd has it).
        ("unit file in the target", Special::DanglingSymlink) => None,
        // ostree skips an initramfs it cannot open (ENOENT): the tree has none (and
        // `kexec` refuses it for that).
        ("initramfs in the target", Special::DanglingSymlink) => None,
        // fastswitch's own state files are never symlinks (O_NOFOLLOW).
        (p, Special::DanglingSymlink) if p.contains("state.json") => {
            Some((1, format!("{shown} is a symbolic link")))
        }
        // ostree only takes `usr/lib/modules/<kver>` whose `vmlinuz` is a regular file
        // (following symlinks): anything else is no kernel, which kexec refuses naming the tree.
        ("kernel in the target", _) => Some((6, "has no kernel".into())),
        _ => Some((1, format!("{shown} {kind}"))),
    }
}

#[test]
fn special_files_everywhere_never_hang_and_name_the_path() {
    let root = is_root();
    let mut failures = Vec::new();
    let mut ran = 0;
    for place in places() {
        for k in SPECIALS {
            if k == Special::CharDevice && !root {
                eprintln!("skipped {} / {k:?}: mknod needs root", place.name);
                continue;
            }
            let f = fixture();
            let p = (place.path)(&f);
            make_special(&p, k);
            let before = state(&f.s);
            let mut cmd = f.s.fastswitch();
            cmd.arg("--root").arg(booted_dir(&f)).args(place.args);
            let what = format!("{} / {k:?}", place.name);
            let t = std::time::Instant::now();
            let out = output_within(&mut cmd, 20, &what);
            let secs = t.elapsed().as_secs_f64();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let mut problems = Vec::new();
            match expected(place.name, k, &p) {
                Some((code, fragment)) => {
                    if out.status.code() != Some(code) {
                        problems.push(format!("exit {:?}, expected {code}", out.status.code()));
                    }
                    if !stderr.contains(&fragment) {
                        problems.push(format!("stderr lacks {fragment:?}"));
                    }
                }
                None => {
                    if out.status.code().is_none() {
                        problems.push("killed by a signal".into());
                    }
                }
            }
            if stderr.contains("panicked") {
                problems.push("panicked".into());
            }
            if state(&f.s) != before {
                problems.push("something changed on disk or in the mount table".into());
            }
            eprintln!(
                "{what}: exit {:?} in {secs:.2} s: {}",
                out.status.code(),
                stderr.lines().last().unwrap_or("")
            );
            if !problems.is_empty() {
                failures.push(format!(
                    "{what}: {}\n  stderr: {}",
                    problems.join("; "),
                    stderr.trim()
                ));
            }
            ran += 1;
        }
    }
    eprintln!("special-file cases run: {ran}");
    assert!(
        failures.is_empty(),
        "{} of {ran} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
