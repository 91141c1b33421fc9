//! The composefs-booted Debian 13 guest (`tests/vm/composefs.rs`, vm/NOTES.md "composefs
//! guest"): its root is mounted in the initrd as ostree-prepare-root mounts a composefs root,
//! fastswitch finds that from the mount table, and a staged deployment gets its `.ostree.cfs`
//! image made the same way, which mounts and serves the target's files; `apply-live` then
//! mounts that image and swaps its `usr` over `/usr` (a composefs overlay, not a bind of the
//! checkout), restarting only the service whose binary changed.
//!
//! This test binary is also the image builder in the guest: with `FASTSWITCH_CFS_BUILD` set it
//! builds that deployment's image and returns (see `vm::composefs::build_in_guest`).

mod vm;

use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use vm::composefs::{self as cfs, DATADIR, HELLO_V2_REF, LAYERED_REF, LIB_V2_REF};
use vm::{fastswitch_json, ostree_stage, ostree_status, Guest, Image, ScenarioResult, Vm};

#[test]
#[ignore = "VM scenario: run by scripts/test"]
fn composefs_debian13() {
    if let Some(deploy) = std::env::var_os(cfs::BUILD_ENV) {
        cfs::guest_build_image(Path::new(&deploy));
        return;
    }
    let guest = Guest::Debian13;
    let mut result = ScenarioResult::new("composefs", guest);
    let image = cfs::image(&Image::get_guest(guest));
    result.set("conversion", image.manifest["composefs"].clone());
    let mut vm = Vm::boot_with(
        &image,
        vm::VmOptions::new("composefs").tool(std::env::current_exe().unwrap(), "cfs-build"),
    );
    result.set("boot", vm.boot_report());
    let os = image.os();
    let booted = ostree_status(&vm)
        .into_iter()
        .find(|d| d.booted)
        .unwrap_or_else(|| vm.fail("ostree admin status shows no booted deployment"));
    assert_eq!(booted.checksum, image.booted_checksum(), "{booted:?}");
    let deploy = format!(
        "/ostree/deploy/{os}/deploy/{}.{}",
        booted.checksum, booted.serial
    );

    // The root: a read-only composefs overlay over the deployment's EROFS image, with the
    // hardlink farm as the data-only layer; the EROFS layer itself is no longer attached.
    let root = vm.exec_ok("findmnt -n -o FSTYPE,SOURCE,VFS-OPTIONS,FS-OPTIONS --mountpoint /");
    let f: Vec<&str> = root.split_whitespace().collect();
    assert_eq!(f[..2], ["overlay", "composefs"], "{root}");
    assert!(f[2].split(',').any(|o| o == "ro"), "{root}");
    let fs_opts: Vec<&str> = f[3].split(',').collect();
    for o in [
        "ro",
        "lowerdir+=/run/ostree/.private/cfsroot-lower",
        &format!("datadir+={DATADIR}"),
        "redirect_dir=on",
        "metacopy=on",
    ] {
        assert!(fs_opts.contains(&o), "{o} missing: {root}");
    }
    let table = vm.exec_ok("cat /proc/self/mountinfo");
    assert!(
        !table
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/run/ostree/.private/cfsroot-lower")),
        "the EROFS layer is still attached:\n{table}"
    );
    // How the EROFS layer is backed (file-backed on 6.12 unless mount(8) set up a loop device).
    let loops = vm.exec_ok("losetup -n -O BACK-FILE -l 2>/dev/null || true");
    result.set(
        "erofs_backing",
        if loops.contains(".ostree.cfs") {
            "loop device"
        } else {
            "file"
        },
    );
    // fs-verity is not used (the images carry no digests); record whether this kernel and the
    // root file system could do it.
    let v = vm.exec_ok(
        "test -e /sys/fs/ext4/features/verity && echo kernel; dumpe2fs -h /dev/vda3 2>/dev/null | grep -q '^Filesystem features:.* verity' && echo fs; true",
    );
    result.set(
        "fs_verity",
        serde_json::json!({
            "ext4_kernel_support": v.lines().any(|l| l == "kernel"),
            "root_fs_feature": v.lines().any(|l| l == "fs"),
        }),
    );
    // /usr is no mount of its own; /etc is the deployment's, read-write; /sysroot the physical
    // root; /var the stateroot's.
    let mounts = vm.exec_ok(
        "for m in /usr /etc /sysroot /var; do echo \"$m $(findmnt -n -o SOURCE,VFS-OPTIONS --mountpoint $m || echo none)\"; done",
    );
    let line = |m: &str| {
        mounts
            .lines()
            .find(|l| l.starts_with(&format!("{m} ")))
            .unwrap()
            .to_string()
    };
    assert!(line("/usr").ends_with(" none"), "{mounts}");
    assert!(
        line("/etc").contains(&format!("[{deploy}/etc] rw")),
        "{mounts}"
    );
    assert!(
        line("/sysroot").starts_with("/sysroot /dev/vda3 "),
        "{mounts}"
    );
    assert!(
        line("/var").contains(&format!("[/ostree/deploy/{os}/var] rw")),
        "{mounts}"
    );
    // Files come from the image: same bytes as the checkout, the overlay's own identity; the
    // demo services run from it.
    let ids = vm.exec_ok(&format!(
        "set -e; cmp /usr/bin/demo-hello /sysroot{deploy}/usr/bin/demo-hello; \
         stat -c '%d %i' /usr/bin/demo-hello /sysroot{deploy}/usr/bin/demo-hello; \
         systemctl is-active demo-hello.service demo-lib.service"
    ));
    let l: Vec<&str> = ids.lines().collect();
    assert_ne!(
        l[0].split(' ').next(),
        l[1].split(' ').next(),
        "same device: {ids}"
    );
    assert_eq!(l[2..], ["active", "active"], "{ids}");

    // fastswitch: composefs, unverified, found from the mount table (Debian's
    // ostree-prepare-root writes no composefs keys to /run/ostree-booted).
    let st = fastswitch_json(&vm, "status --json");
    let c = &st["composefs"];
    assert_eq!(c["mode"], "unverified", "{st}");
    assert_eq!(c["mount_table"], true, "{st}");
    assert_eq!(c["booted_file"], false, "{st}");
    assert_eq!(c["verity"], false, "{st}");

    // A staged deployment gets its image too, made the same way; it mounts like the root and
    // serves the target's files (test/hello-v2 changes demo-hello).
    let stage = ostree_stage(&vm, HELLO_V2_REF, "");
    result.secs("stage_s", stage);
    let staged = ostree_status(&vm)
        .into_iter()
        .find(|d| d.staged)
        .unwrap_or_else(|| vm.fail("no staged deployment"));
    let target = format!(
        "/sysroot/ostree/deploy/{os}/deploy/{}.{}",
        staged.checksum, staged.serial
    );
    let built = cfs::build_in_guest(&vm, &target);
    result.set("staged_image_build", built.trim());
    let check = vm.exec_ok(&format!(
        "set -e; t={target}; m=$(mktemp -d); mkdir $m/lower $m/root
unshare -m --propagation private sh -c \"set -e
mount -t erofs -o ro $t/.ostree.cfs $m/lower
mount -t overlay composefs -o ro,metacopy=on,redirect_dir=on,lowerdir+=$m/lower,datadir+={DATADIR} $m/root
cmp $m/root/usr/bin/demo-hello $t/usr/bin/demo-hello
cmp -s $m/root/usr/bin/demo-hello /usr/bin/demo-hello && echo same || echo changed
cmp $m/root/usr/lib/os-release $t/usr/lib/os-release
ls $m/root/etc | wc -l\"
rmdir $m/lower $m/root $m"
    ));
    let c: Vec<&str> = check.lines().collect();
    assert_eq!(c, ["changed", "0"], "{check}");
    let st = fastswitch_json(&vm, "status --json");
    assert_eq!(st["composefs"]["mode"], "unverified", "{st}");
    assert_eq!(st["composefs"]["objects"], DATADIR, "{st}");
    let staged_json = st["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["staged"] == true)
        .unwrap_or_else(|| vm.fail(&format!("status shows no staged deployment: {st}")));
    assert_eq!(staged_json["composefs_image"], true, "{st}");

    // apply-live mounts the target's image with the root's data directory and swaps its usr
    // over /usr: /usr becomes the composefs overlay (root /usr), not a bind of the checkout;
    // only demo-hello (its binary changed) restarts.
    let pids = |vm: &Vm| {
        vm.exec_ok("for u in demo-hello demo-lib demo-reload demo-other; do systemctl show -P MainPID $u; done")
    };
    let before = pids(&vm);
    let report = fastswitch_json(&vm, "apply-live --json");
    assert_eq!(report["outcome"], "ok", "{report}");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert!(steps.contains(&"swap_composefs_usr"), "{report}");
    assert!(!steps.contains(&"link_usr"), "{report}");
    result.set("apply_live_steps", report["steps"].clone());
    result.set("apply_live_phases", report["phases"].clone());
    result.set("apply_live_own_ms", report["own_ms"].clone());
    result.set("apply_live_wall_ms", report["wall_ms"].clone());
    let usr =
        vm.exec_ok("findmnt -n --nofsroot -o FSTYPE,SOURCE,FSROOT,VFS-OPTIONS --mountpoint /usr");
    let u: Vec<&str> = usr.split_whitespace().collect();
    assert_eq!(u[..3], ["overlay", "composefs", "/usr"], "{usr}");
    assert!(u[3].split(',').any(|o| o == "ro"), "{usr}");
    let after = pids(&vm);
    let (b, a): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    assert_ne!(a[0], b[0], "demo-hello got a new PID");
    assert_eq!(a[1..], b[1..], "the other demo services kept their PIDs");
    let v = vm.exec_ok(&format!(
        "for i in $(seq 50); do [ \"$(cat /run/demo/hello.version)\" = v2 ] && break; sleep 0.1; done; \
         cat /run/demo/hello.version; cmp /usr/bin/demo-hello {target}/usr/bin/demo-hello && echo same"
    ));
    assert_eq!(v.lines().collect::<Vec<_>>(), ["v2", "same"], "{v}");
    // The image reads its files from the repository's objects: a ref keeps them from ostree's
    // prune while it is live.
    let to_commit = report["to"]["id"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap();
    let pinned = vm.exec_ok("ostree rev-parse fastswitch/live");
    assert_eq!(pinned.trim(), to_commit, "the live commit is pinned");

    // reset takes the composefs usr off /usr again: the booted image shows, demo-hello runs v1.
    let reset = fastswitch_json(&vm, "reset --json");
    assert_eq!(reset["outcome"], "ok", "{reset}");
    let unmount = reset["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "unmount_usr")
        .unwrap_or_else(|| vm.fail(&format!("no unmount_usr step: {reset}")));
    assert_eq!(unmount["detail"]["unmounted"], 1, "{reset}");
    result.set("reset_steps", reset["steps"].clone());
    let back = vm.exec_ok(&format!(
        "findmnt -n --mountpoint /usr >/dev/null && echo mounted || echo none; \
         for i in $(seq 50); do [ \"$(cat /run/demo/hello.version)\" = v1 ] && break; sleep 0.1; done; \
         cat /run/demo/hello.version; cmp /usr/bin/demo-hello /sysroot{deploy}/usr/bin/demo-hello && echo same"
    ));
    assert_eq!(
        back.lines().collect::<Vec<_>>(),
        ["none", "v1", "same"],
        "{back}"
    );
    let st = fastswitch_json(&vm, "status --json");
    assert!(
        st["live"].is_null(),
        "nothing is live after the reset: {st}"
    );
    assert!(
        !vm.exec("ostree rev-parse fastswitch/live").success(),
        "reset dropped the pin"
    );

    // S1 on composefs: a layered package (new binary, config default, enabled service,
    // sysusers/tmpfiles) goes live over the composefs usr; its service starts and answers,
    // nothing else restarts; reset stops it and takes the usr off again.
    let case = Instant::now();
    let (_, layered_dir) = stage_with_image(&vm, &os, LAYERED_REF, &mut result, "s1");
    let before = pids(&vm);
    let report = apply_live_composefs(&vm, &mut result, "s1");
    assert_eq!(
        service_outcomes(&report),
        [("demo-extra.service".to_string(), "start".to_string())],
        "only the layered package's service is started: {report}"
    );
    let facts = vm.exec_ok(&format!(
        "set -e; cmp /usr/bin/demo-extra {layered_dir}/usr/bin/demo-extra; cat /etc/demo/extra.conf; \
         getent passwd demo-extra >/dev/null && echo user-ok; systemctl is-active demo-extra; \
         for i in $(seq 50); do [ -e /run/demo-extra/extra.data ] && break; sleep 0.1; done; \
         cat /run/demo-extra/extra.data"
    ));
    assert_eq!(
        facts.lines().collect::<Vec<_>>(),
        [
            "greeting=hello-from-layered",
            "user-ok",
            "active",
            "greeting=hello-from-layered"
        ],
        "{facts}"
    );
    assert_eq!(pids(&vm), before, "no collateral restarts");
    let reset = reset_composefs(&vm, &mut result, "s1");
    assert_eq!(
        service_outcomes(&reset),
        [("demo-extra.service".to_string(), "stop".to_string())],
        "{reset}"
    );
    let back = vm.exec_ok(
        "test ! -e /usr/bin/demo-extra && echo gone; systemctl is-active demo-extra || true",
    );
    assert_eq!(
        back.lines().collect::<Vec<_>>(),
        ["gone", "inactive"],
        "{back}"
    );
    assert_eq!(pids(&vm), before, "reset restarted nothing else");
    result.secs("s1_s", case.elapsed());

    // S4 on composefs: only libdemo.so changed; exactly demo-lib (which maps it) restarts.
    // /proc/PID/maps shows the overlay's identities, which neither tree has: the scan decides
    // by the two commits' content checksums, and only libdemo.so differs.
    let case = Instant::now();
    let (lib_staged, lib_dir) = stage_with_image(&vm, &os, LIB_V2_REF, &mut result, "s4");
    let before = pids(&vm);
    let report = apply_live_composefs(&vm, &mut result, "s4");
    assert_eq!(
        service_outcomes(&report),
        [("demo-lib.service".to_string(), "restart".to_string())],
        "exactly the library's service restarts: {report}"
    );
    let compared = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "stale_scan")
        .map(|p| p["compared"].clone())
        .unwrap_or_else(|| vm.fail(&format!("no stale_scan phase: {report}")));
    assert_eq!(compared["checksum"], 1, "libdemo.so by checksum: {report}");
    assert_eq!(compared["bytes"], 0, "nothing compared by bytes: {report}");
    assert!(
        compared["identity"].as_u64().unwrap() > 0,
        "unchanged mapped files are one object in both trees: {report}"
    );
    let after = pids(&vm);
    let (b, a): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    assert_ne!(a[1], b[1], "demo-lib got a new PID");
    assert_eq!(
        [a[0], a[2], a[3]],
        [b[0], b[2], b[3]],
        "the other demo services kept their PIDs"
    );
    let v = vm.exec_ok(&format!(
        "for i in $(seq 50); do [ \"$(cat /run/demo/lib.version)\" = v2 ] && break; sleep 0.1; done; \
         cat /run/demo/lib.version; cmp /usr/lib/demo/libdemo.so {lib_dir}/usr/lib/demo/libdemo.so && echo same"
    ));
    assert_eq!(v.lines().collect::<Vec<_>>(), ["v2", "same"], "{v}");
    let reset = reset_composefs(&vm, &mut result, "s4");
    assert_eq!(
        service_outcomes(&reset),
        [("demo-lib.service".to_string(), "restart".to_string())],
        "{reset}"
    );
    let v = vm.exec_ok(&format!(
        "for i in $(seq 50); do [ \"$(cat /run/demo/lib.version)\" = v1 ] && break; sleep 0.1; done; \
         cat /run/demo/lib.version; cmp /usr/lib/demo/libdemo.so /sysroot{deploy}/usr/lib/demo/libdemo.so && echo same"
    ));
    assert_eq!(v.lines().collect::<Vec<_>>(), ["v1", "same"], "{v}");
    result.secs("s4_s", case.elapsed());
    // The kexec switch below boots this last staged target.
    let (staged, target) = (lib_staged, lib_dir);

    // switch by kexec (live and soft-reboot bounded out): the staged deployment (test/cfs-lib-v2)
    // is finalized,
    // its kernel booted without firmware, and its initrd mounts its .ostree.cfs as the root.
    // The plan first, then finalize + load (where a failure shows), then the hand-off.
    // Debian's ostree finalizes through its grub2 backend, whose grub-mkconfig runs grub-probe
    // on `/`, which cannot resolve the source `composefs` ("failed to get canonical path"):
    // finalization fails on this guest. Fedora CoreOS boots BLS entries without grub-mkconfig;
    // here ostree writes only the BLS entries (`sysroot.bootloader none`), which is all a kexec
    // reads (vm/NOTES.md, composefs guest).
    vm.exec_ok("ostree config --repo=/sysroot/ostree/repo set sysroot.bootloader none");
    let plan = fastswitch_json(&vm, "switch --min-rung kexec --dry-run --json");
    assert_eq!(plan["ladder"]["chosen"], "kexec", "{plan}");
    let t = Instant::now();
    let loaded = vm.exec(&format!(
        "{} kexec --load-only --json",
        vm::GUEST_FASTSWITCH
    ));
    assert!(
        loaded.success(),
        "kexec --load-only: {}\n{}\n{}",
        loaded.stdout,
        loaded.stderr,
        vm.exec("journalctl -b -u ostree-finalize-staged.service -o cat | tail -20")
            .stdout
    );
    result.secs("kexec_load_only_s", t.elapsed());
    let old_boot = vm.boot_id();
    let t = Instant::now();
    vm.exec_ok(&format!(
        "nohup {} switch --min-rung kexec --json > /var/tmp/switch.json 2> /var/tmp/switch.err < /dev/null &",
        vm::GUEST_FASTSWITCH
    ));
    let boot = vm.wait_for_new_boot(&old_boot, Duration::from_secs(900));
    result.secs("kexec_switch_s", t.elapsed());
    result.secs("kexec_to_running_s", boot.to_running);
    let report: serde_json::Value = serde_json::from_str(&vm.exec_ok("cat /var/tmp/switch.json"))
        .unwrap_or_else(|e| {
            vm.fail(&format!(
                "switch report: {e}; stderr: {}",
                vm.exec_ok("cat /var/tmp/switch.err")
            ))
        });
    assert_eq!(report["outcome"], "ok", "{report}");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    // Finalized by the --load-only run: the switch loads the kernel again (a `--load-only` load
    // is not a kernel prepared at staging, `reload_reason` says so) and hands off.
    assert_eq!(steps, ["kexec_load"], "{report}");
    result.set("kexec_switch_steps", report["steps"].clone());
    let now = ostree_status(&vm)
        .into_iter()
        .find(|d| d.booted)
        .unwrap_or_else(|| vm.fail("no booted deployment after the kexec"));
    assert_eq!(now.checksum, staged.checksum, "{now:?}");
    let root = vm.exec_ok("findmnt -n -o FSTYPE,SOURCE --mountpoint /");
    assert_eq!(
        root.split_whitespace().collect::<Vec<_>>(),
        ["overlay", "composefs"],
        "{root}"
    );
    let v = vm.exec_ok(&format!(
        "for i in $(seq 100); do [ \"$(cat /run/demo/lib.version 2>/dev/null)\" = v2 ] && break; sleep 0.1; done; \
         cat /run/demo/lib.version; cmp /usr/lib/demo/libdemo.so {target}/usr/lib/demo/libdemo.so && echo same; \
         cat /run/demo/hello.version"
    ));
    assert_eq!(v.lines().collect::<Vec<_>>(), ["v2", "same", "v1"], "{v}");
    let st = fastswitch_json(&vm, "status --json");
    assert_eq!(st["composefs"]["mode"], "unverified", "{st}");
    vm.discard();
}

/// Stage `refspec` and give the staged deployment its `.ostree.cfs` (as `ostree admin deploy`
/// does on a composefs host); its figures go to `<case>_stage_s` and `<case>_image_build`.
/// Returns the staged deployment and its directory.
fn stage_with_image(
    vm: &Vm,
    os: &str,
    refspec: &str,
    result: &mut ScenarioResult,
    case: &str,
) -> (vm::ostree::Deployment, String) {
    result.secs(&format!("{case}_stage_s"), ostree_stage(vm, refspec, ""));
    let staged = ostree_status(vm)
        .into_iter()
        .find(|d| d.staged)
        .unwrap_or_else(|| vm.fail(&format!("{refspec}: no staged deployment")));
    let dir = format!(
        "/sysroot/ostree/deploy/{os}/deploy/{}.{}",
        staged.checksum, staged.serial
    );
    let t = Instant::now();
    let built = cfs::build_in_guest(vm, &dir);
    result.secs(&format!("{case}_image_build_s"), t.elapsed());
    result.set(&format!("{case}_image_build"), built.trim());
    (staged, dir)
}

/// `apply-live --json` on the composefs host: it swaps the target image's usr over `/usr`
/// (no bind of the checkout), and `/usr` is then that read-only composefs overlay. Records the
/// figures as `<case>_apply_live`.
fn apply_live_composefs(vm: &Vm, result: &mut ScenarioResult, case: &str) -> Value {
    let report = fastswitch_json(vm, "apply-live --json");
    assert_eq!(report["outcome"], "ok", "{case}: {report}");
    let steps = report["steps"].as_array().unwrap();
    let step = |name: &str| steps.iter().find(|s| s["step"] == name);
    let swap = step("swap_composefs_usr")
        .unwrap_or_else(|| vm.fail(&format!("{case}: no swap_composefs_usr: {report}")));
    assert!(step("link_usr").is_none(), "{case}: {report}");
    let usr =
        vm.exec_ok("findmnt -n --nofsroot -o FSTYPE,SOURCE,FSROOT,VFS-OPTIONS --mountpoint /usr");
    let u: Vec<&str> = usr.split_whitespace().collect();
    assert_eq!(u[..3], ["overlay", "composefs", "/usr"], "{case}: {usr}");
    assert!(u[3].split(',').any(|o| o == "ro"), "{case}: {usr}");
    result.set(
        &format!("{case}_apply_live"),
        serde_json::json!({
            "wall_ms": report["wall_ms"],
            "own_ms": report["own_ms"],
            "swap_composefs_usr_ms": swap["duration_ms"],
            "services": service_outcomes(&report),
            "phases": report["phases"],
            "steps": steps.iter().map(|s| (s["step"].clone(), s["duration_ms"].clone())).collect::<Vec<_>>(),
        }),
    );
    report
}

/// `reset --json`: the composefs usr comes off `/usr` again. Records `<case>_reset`.
fn reset_composefs(vm: &Vm, result: &mut ScenarioResult, case: &str) -> Value {
    let reset = fastswitch_json(vm, "reset --json");
    assert_eq!(reset["outcome"], "ok", "{case}: {reset}");
    let steps = reset["steps"].as_array().unwrap();
    let unmount = steps
        .iter()
        .find(|s| s["step"] == "unmount_usr")
        .unwrap_or_else(|| vm.fail(&format!("{case}: no unmount_usr step: {reset}")));
    assert_eq!(unmount["detail"]["unmounted"], 1, "{case}: {reset}");
    let usr = vm.exec_ok("findmnt -n --mountpoint /usr >/dev/null && echo mounted || echo none");
    assert_eq!(usr.trim(), "none", "{case}: /usr after the reset");
    result.set(
        &format!("{case}_reset"),
        serde_json::json!({
            "total_ms": reset["total_ms"],
            "services": service_outcomes(&reset),
            "steps": steps.iter().map(|s| (s["step"].clone(), s["duration_ms"].clone())).collect::<Vec<_>>(),
        }),
    );
    reset
}

/// The unit jobs a report's `services` step ran: `(unit, action)`.
fn service_outcomes(report: &Value) -> Vec<(String, String)> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == "services")
        .flat_map(|s| s["detail"].as_array().unwrap().iter())
        .map(|o| {
            (
                o["unit"].as_str().unwrap().to_owned(),
                o["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}
