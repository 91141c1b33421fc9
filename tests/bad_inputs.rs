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
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
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
            "no `nosuch` deployment",
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
    let root = nix::unistd::geteuid().is_root();
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
        let out = cmd.output().unwrap();
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
    let _held = fastswitch::system::lock::acquire(&lockdir).unwrap();
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
