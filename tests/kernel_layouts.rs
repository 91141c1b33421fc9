//! Every kernel layout ostree supports, deployed by the real `ostree admin deploy`: fastswitch's
//! boot digest must equal the bootcsum ostree wrote into the BLS `linux` path, the kernel files
//! it finds must be the ones ostree copied, and a change on the kernel side must decide kexec.

mod common;
use common::*;
use serde_json::Value;

const CSUM_A: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const CSUM_B: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// A tree with no kernel at all (the layouts add theirs).
fn bare() -> Tree {
    let t = Tree::minimal("unused");
    t.remove("usr/lib/modules");
    t
}

/// The BLS entry of deployment `index` of `status --json`: (bootcsum from the `linux` path,
/// full text).
fn bls(s: &Sysroot, v: &Value, index: usize) -> (String, String) {
    let d = &v["deployments"][index];
    let file = d["boot_entry"]
        .as_str()
        .expect("deployment has a BLS entry");
    let text = std::fs::read_to_string(s.path().join("boot/loader/entries").join(file)).unwrap();
    let linux = text
        .lines()
        .find_map(|l| l.strip_prefix("linux "))
        .unwrap()
        .to_owned();
    let stateroot = d["stateroot"].as_str().unwrap();
    let csum = linux
        .split('/')
        .find_map(|c| c.strip_prefix(&format!("{stateroot}-")))
        .unwrap()
        .to_owned();
    (csum, text)
}

/// Deploy `t` with the real ostree; returns (status JSON, ostree's bootcsum, BLS text).
fn deploy(s: &Sysroot, branch: &str, t: &Tree) -> (Value, String, String) {
    s.commit(branch, t);
    s.deploy("os", branch, &["root=/dev/vda"]);
    let v = s.json(&["status"]);
    let (csum, text) = bls(s, &v, 0);
    (v, csum, text)
}

fn fresh() -> Sysroot {
    let s = Sysroot::new();
    s.os_init("os");
    s
}

struct Layout {
    name: &'static str,
    build: fn(&Tree),
    /// Expected `kernel.layout` and whether ostree writes `fdtdir` / `devicetree`.
    layout: &'static str,
    bls_key: Option<&'static str>,
}

fn layouts() -> Vec<Layout> {
    vec![
        Layout {
            name: "usr/lib/modules with initramfs.img",
            build: |t| {
                t.write("usr/lib/modules/6.1.0/vmlinuz", b"kernel A\n");
                t.write("usr/lib/modules/6.1.0/initramfs.img", b"initramfs A\n");
            },
            layout: "usr_lib_modules",
            bls_key: None,
        },
        Layout {
            name: "usr/lib/modules with `initramfs` (no .img)",
            build: |t| {
                t.write("usr/lib/modules/6.1.0/vmlinuz", b"kernel A\n");
                t.write("usr/lib/modules/6.1.0/initramfs", b"initramfs A\n");
            },
            layout: "usr_lib_modules",
            bls_key: None,
        },
        Layout {
            name: "usr/lib/modules without initramfs",
            build: |t| t.write("usr/lib/modules/6.1.0/vmlinuz", b"kernel A\n"),
            layout: "usr_lib_modules",
            bls_key: None,
        },
        Layout {
            name: "usr/lib/modules with a devicetree file",
            build: |t| {
                t.write("usr/lib/modules/6.1.0/vmlinuz", b"kernel A\n");
                t.write("usr/lib/modules/6.1.0/initramfs.img", b"initramfs A\n");
                t.write("usr/lib/modules/6.1.0/devicetree", b"dt A\n");
                // devicetree wins over dtb/
                t.write("usr/lib/modules/6.1.0/dtb/x.dtb", b"ignored\n");
            },
            layout: "usr_lib_modules",
            bls_key: Some("devicetree "),
        },
        Layout {
            name: "usr/lib/modules with a dtb/ directory (nested, unsorted, a symlink)",
            build: |t| {
                let k = "usr/lib/modules/6.1.0";
                t.write(&format!("{k}/vmlinuz"), b"kernel A\n");
                t.write(&format!("{k}/initramfs.img"), b"initramfs A\n");
                t.write(&format!("{k}/dtb/zz.dtb"), b"zz\n");
                t.write(&format!("{k}/dtb/vendor/b.dtb"), b"vb\n");
                t.write(&format!("{k}/dtb/vendor/a.dtb"), b"va\n");
                t.write(&format!("{k}/dtb/Upper.dtb"), b"U\n");
                t.write(&format!("{k}/dtb/a.dtb"), b"a\n");
                t.write(&format!("{k}/dtb/overlays/o.dtbo"), b"o\n");
                t.symlink("a.dtb", &format!("{k}/dtb/link.dtb"));
            },
            layout: "usr_lib_modules",
            bls_key: Some("fdtdir "),
        },
        Layout {
            name: "legacy usr/lib/ostree-boot",
            build: |t| {
                t.write(
                    &format!("usr/lib/ostree-boot/vmlinuz-6.1.0-{CSUM_A}"),
                    b"kernel A\n",
                );
                t.write(
                    &format!("usr/lib/ostree-boot/initramfs-6.1.0.img-{CSUM_A}"),
                    b"initramfs A\n",
                );
            },
            layout: "usr_lib_ostree_boot",
            bls_key: None,
        },
        Layout {
            name: "legacy usr/lib/ostree-boot with a devicetree",
            build: |t| {
                t.write(
                    &format!("usr/lib/ostree-boot/vmlinuz-6.1.0-{CSUM_A}"),
                    b"kernel A\n",
                );
                t.write(
                    &format!("usr/lib/ostree-boot/devicetree-6.1.0-{CSUM_A}"),
                    b"dt\n",
                );
            },
            layout: "usr_lib_ostree_boot",
            bls_key: Some("devicetree "),
        },
        Layout {
            name: "legacy boot/ in the deployment root",
            build: |t| {
                t.write(&format!("boot/vmlinuz-6.1.0-{CSUM_A}"), b"kernel A\n");
                t.write(
                    &format!("boot/initramfs-6.1.0.img-{CSUM_A}"),
                    b"initramfs A\n",
                );
            },
            layout: "boot",
            bls_key: None,
        },
        Layout {
            name: "modules kernel without initramfs + legacy with one: legacy wins",
            build: |t| {
                t.write("usr/lib/modules/6.1.0/vmlinuz", b"kernel M\n");
                t.write(
                    &format!("usr/lib/ostree-boot/vmlinuz-6.1.0-{CSUM_A}"),
                    b"kernel A\n",
                );
                t.write(
                    &format!("usr/lib/ostree-boot/initramfs-6.1.0.img-{CSUM_A}"),
                    b"initramfs A\n",
                );
            },
            layout: "usr_lib_ostree_boot",
            bls_key: None,
        },
        Layout {
            name: "modules kernel with initramfs + legacy: modules wins",
            build: |t| {
                t.write("usr/lib/modules/6.1.0/vmlinuz", b"kernel M\n");
                t.write("usr/lib/modules/6.1.0/initramfs.img", b"initramfs M\n");
                t.write(
                    &format!("usr/lib/ostree-boot/vmlinuz-6.1.0-{CSUM_A}"),
                    b"kernel A\n",
                );
                t.write(
                    &format!("usr/lib/ostree-boot/initramfs-6.1.0.img-{CSUM_A}"),
                    b"initramfs A\n",
                );
            },
            layout: "usr_lib_modules",
            bls_key: None,
        },
        Layout {
            name: "empty usr/lib/ostree-boot hides boot/ (as in ostree); modules kernel used",
            build: |t| {
                t.write("usr/lib/modules/6.1.0/vmlinuz", b"kernel M\n");
                std::fs::create_dir_all(t.path().join("usr/lib/ostree-boot")).unwrap();
                t.write(&format!("boot/vmlinuz-6.1.0-{CSUM_A}"), b"kernel A\n");
                t.write(
                    &format!("boot/initramfs-6.1.0.img-{CSUM_A}"),
                    b"initramfs A\n",
                );
            },
            layout: "usr_lib_modules",
            bls_key: None,
        },
    ]
}

#[test]
fn boot_digest_equals_ostree_bootcsum_for_every_layout() {
    let mut failures = Vec::new();
    for l in layouts() {
        let s = fresh();
        let t = bare();
        (l.build)(&t);
        let (v, csum, text) = deploy(&s, "os/l", &t);
        let dep = &v["deployments"][0];
        let dir = s.deploy_dir("os", dep["id"].as_str().unwrap());
        let kf = fastswitch::discover::kernel::find_kernel(&dir)
            .unwrap()
            .unwrap();
        let k = serde_json::to_value(&kf).unwrap();
        if dep["kernel"]["boot_digest"] != csum.as_str() || kf.boot_digest != csum {
            failures.push(format!(
                "{}: fastswitch status {} ostree {csum}",
                l.name, dep["kernel"]["boot_digest"]
            ));
        }
        if k["boot_digest"] != csum.as_str() {
            failures.push(format!(
                "{}: fastswitch {} ostree {csum}",
                l.name, k["boot_digest"]
            ));
        }
        if k["layout"] != l.layout {
            failures.push(format!("{}: layout {}", l.name, k["layout"]));
        }
        // The files ostree copied to /boot are the ones fastswitch found.
        let bootdir = s.path().join("boot/ostree").join(format!("os-{csum}"));
        let linux = text.lines().find_map(|l| l.strip_prefix("linux ")).unwrap();
        let copied = std::fs::read(s.path().join("boot").join(linux.trim_start_matches('/')))
            .unwrap_or_else(|e| panic!("{}: {linux}: {e}", l.name));
        let found = std::fs::read(k["vmlinuz"].as_str().unwrap()).unwrap();
        if copied != found {
            failures.push(format!("{}: vmlinuz differs from {linux}", l.name));
        }
        let has_initrd = text.lines().any(|l| l.starts_with("initrd "));
        if has_initrd == k["initramfs"].is_null() {
            failures.push(format!("{}: initramfs {}", l.name, k["initramfs"]));
        }
        match l.bls_key {
            Some(key) => {
                if !text.lines().any(|x| x.starts_with(key)) {
                    failures.push(format!("{}: ostree wrote no {key:?}:\n{text}", l.name));
                }
                if k["devicetree"].is_null() {
                    failures.push(format!("{}: no devicetree found", l.name));
                }
                assert_eq!(k["devicetree_is_dir"], key == "fdtdir ", "{}", l.name);
            }
            None => assert!(k["devicetree"].is_null(), "{}", l.name),
        }
        assert!(bootdir.is_dir(), "{}", l.name);
        // The kexec path's check: the finalized entry points at the tree's kernel.
        let host = fastswitch::discover::load(&fastswitch::discover::HostPaths::resolve(
            Some(s.path().to_owned()),
            Some(s.path().to_owned()),
            Some(s.run()),
        ))
        .unwrap();
        if let Err(e) = fastswitch::exec::kexec::check_entry_matches_tree(&host.deployments[0]) {
            failures.push(format!("{}: {e}", l.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Deploy `a` then `b` with ostree, diff index 1 → 0; returns the diff JSON after checking
/// both digests against ostree's bootcsums.
fn diff_pair(a: &Tree, b: &Tree) -> Value {
    let s = fresh();
    deploy(&s, "os/a", a);
    let (v, _, _) = deploy(&s, "os/b", b);
    for i in 0..2 {
        let (csum, _) = bls(&s, &v, i);
        assert_eq!(v["deployments"][i]["kernel"]["boot_digest"], csum.as_str());
    }
    s.json(&["diff", "--from", "1", "--to", "0"])
}

fn assert_kexec(d: &Value, what: &str) {
    assert_eq!(d["decision"]["kind"], "kexec", "{what}: {d}");
    assert!(
        d.to_string().contains("boot_digest_changed"),
        "{what}: no boot_digest_changed reason: {d}"
    );
}

#[test]
fn legacy_kernel_change_decides_kexec() {
    for dir in ["usr/lib/ostree-boot", "boot"] {
        let a = bare();
        a.write(&format!("{dir}/vmlinuz-6.1.0-{CSUM_A}"), b"kernel A\n");
        a.write(
            &format!("{dir}/initramfs-6.1.0.img-{CSUM_A}"),
            b"initramfs A\n",
        );
        let b = bare();
        b.write(&format!("{dir}/vmlinuz-6.1.0-{CSUM_B}"), b"kernel B\n");
        b.write(
            &format!("{dir}/initramfs-6.1.0.img-{CSUM_B}"),
            b"initramfs B\n",
        );
        assert_kexec(&diff_pair(&a, &b), dir);
        // Same kernel, userspace change only: live.
        let c = a.fork();
        c.write("usr/bin/hello", b"#!/bin/sh\necho v2\n");
        let d = diff_pair(&a, &c);
        assert_eq!(d["decision"]["kind"], "live", "{dir}: {d}");
    }
}

#[test]
fn dtb_changes_decide_kexec() {
    let k = "usr/lib/modules/6.1.0";
    let base = || {
        let t = bare();
        t.write(&format!("{k}/vmlinuz"), b"kernel A\n");
        t.write(&format!("{k}/initramfs.img"), b"initramfs A\n");
        t
    };
    let a = base();
    a.write(&format!("{k}/dtb/board.dtb"), b"board v1\n");
    // changed file in dtb/
    let b = a.fork();
    b.write(&format!("{k}/dtb/board.dtb"), b"board v2\n");
    assert_kexec(&diff_pair(&a, &b), "dtb file changed");
    // file added to dtb/
    let c = a.fork();
    c.write(&format!("{k}/dtb/vendor/new.dtb"), b"new\n");
    assert_kexec(&diff_pair(&a, &c), "dtb file added");
    // dtb/ added where there was none
    assert_kexec(&diff_pair(&base(), &a), "dtb/ added");
}
